//! Who may start a sign-in now. Each `POST /authcode` costs a call to Google's token endpoint
//! with our client secret, so sign-ins are bounded three ways: at most `max_concurrent_signins`
//! at once (more are shed: 503 and Retry-After), at most `signins_per_client_per_minute` per
//! client address (429 and Retry-After), and token-endpoint calls against a budget of their own
//! (`token_calls_per_second`; 503), apart from the sync's. The client address is the peer's,
//! or, when the peer is one of `trusted_proxies`, the one its forwarding headers name.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::IntakeConfig;

/// Why a sign-in may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many sign-ins at once, or the token-endpoint budget is spent: try again shortly.
    Overloaded,
    /// This client signs in too often.
    TooManyFromClient { retry_after: Duration },
}

pub struct Admission {
    slots: Arc<Semaphore>,
    per_client: DefaultKeyedRateLimiter<IpAddr>,
    token_calls: DefaultDirectRateLimiter,
    trusted: Vec<ipnet::IpNet>,
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl Admission {
    pub fn new(config: &IntakeConfig) -> Admission {
        let per_minute = nonzero(config.signins_per_client_per_minute);
        Admission {
            slots: Arc::new(Semaphore::new(config.max_concurrent_signins.max(1))),
            per_client: governor::RateLimiter::keyed(Quota::per_minute(per_minute)),
            token_calls: governor::RateLimiter::direct(Quota::per_second(nonzero(
                config.token_calls_per_second,
            ))),
            trusted: config.trusted_proxies.clone(),
        }
    }

    /// Counts a sign-in attempt of `client` (before its body is read: a refusal is cheap).
    pub fn check_client(&self, client: IpAddr) -> Result<(), Refusal> {
        self.per_client.check_key(&client).map_err(|not_until| {
            let now = governor::clock::Clock::now(&governor::clock::DefaultClock::default());
            Refusal::TooManyFromClient {
                retry_after: not_until.wait_time_from(now).max(Duration::from_secs(1)),
            }
        })
    }

    /// A place for one sign-in, held until it ends, and a token-endpoint call from the budget.
    pub fn take_slot(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Overloaded)?;
        self.token_calls.check().map_err(|_| Refusal::Overloaded)?;
        Ok(permit)
    }

    /// Forgets clients not seen for a while (the per-client limiter keeps a state per address).
    pub fn forget_idle_clients(&self) {
        self.per_client.retain_recent();
        self.per_client.shrink_to_fit();
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy, in which case the
    /// nearest address in its forwarding chain that is not itself a trusted proxy.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.ip();
        if !self.is_trusted(peer) {
            return peer;
        }
        let chain = forwarded_for(headers);
        chain
            .iter()
            .rev()
            .find(|ip| !self.is_trusted(**ip))
            .or(chain.first())
            .copied()
            .unwrap_or(peer)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// The addresses of `Forwarded: for=...` (RFC 7239), or else of `X-Forwarded-For`, client
/// first. Unparsable entries (obfuscated identifiers, `unknown`) are skipped.
pub fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    let forwarded: Vec<IpAddr> = values("forwarded")
        .into_iter()
        .flat_map(|element| element.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("for")
                .then(|| parse_node(v))?
        })
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    values("x-forwarded-for")
        .into_iter()
        .filter_map(parse_node)
        .collect()
}

/// `192.0.2.60`, `"[2001:db8::1]:4711"`, `198.51.100.17:80`.
fn parse_node(raw: &str) -> Option<IpAddr> {
    let v = raw.trim().trim_matches('"');
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    v.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(trusted: &[&str]) -> Admission {
        let config = IntakeConfig {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            signins_per_client_per_minute: 2,
            max_concurrent_signins: 1,
            ..Default::default()
        };
        Admission::new(&config)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let a = admission(&["10.0.0.0/8"]);
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4")]);
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        assert_eq!(
            a.client(stranger, &spoofed),
            stranger.ip(),
            "not a proxy of ours"
        );
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let chain = headers(&[("x-forwarded-for", "198.51.100.7, 10.9.9.9")]);
        assert_eq!(a.client(proxy, &chain).to_string(), "198.51.100.7");
        let rfc = headers(&[(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.2",
        )]);
        assert_eq!(a.client(proxy, &rfc).to_string(), "2001:db8::1");
        // A spoofed head of the chain does not win over the address the proxy saw.
        let spoof_through = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.8")]);
        assert_eq!(a.client(proxy, &spoof_through).to_string(), "198.51.100.8");
    }

    #[test]
    fn sign_ins_are_bounded_per_client_and_at_once() {
        let a = admission(&[]);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        a.check_client(ip).unwrap();
        let first = a.take_slot().unwrap();
        assert_eq!(
            a.take_slot().unwrap_err(),
            Refusal::Overloaded,
            "one at once"
        );
        drop(first);
        let _second = a.take_slot().unwrap();
        a.check_client(ip).unwrap();
        assert!(matches!(
            a.check_client(ip),
            Err(Refusal::TooManyFromClient { .. })
        ));
        a.check_client("198.51.100.2".parse().unwrap()).unwrap();
    }
}
