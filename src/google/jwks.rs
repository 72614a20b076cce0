//! A cached JSON Web Key Set: Google's signing keys for ID tokens ([`super::id_token`]) and for
//! Cross-Account Protection's security event tokens ([`super::risc`]).
//!
//! The key set is cached for as long as its Cache-Control max-age says; an unknown `kid` (a key
//! rotation) triggers a refetch. Fetches are rate-limited ([`FETCHES_PER_MINUTE`], with that
//! burst, as jwks-rsa does), so a rotation right after a fetch is still picked up while a flood
//! of forged kids cannot turn into a flood of JWKS requests. If a fetch fails (or is not
//! allowed yet), the cached keys keep working, stale or not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use parking_lot::RwLock;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::GoogleError;

/// JWKS fetches allowed per minute, all at once if need be.
const FETCHES_PER_MINUTE: u32 = 10;
/// Used when the JWKS response carries no max-age.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// Google's key sets are a few KiB; a bigger answer is not a key set.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Why no key came back for a `kid`.
#[derive(Debug)]
pub enum KeyError {
    /// The key set (fresh, or cached when a refetch was not possible) has no such key.
    Unknown,
    /// The key set could not be fetched and no cached one has the key.
    Fetch(GoogleError),
}

struct KeySet {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Instant,
    max_age: Duration,
}

impl KeySet {
    fn fresh_key(&self, kid: &str) -> Option<DecodingKey> {
        (self.fetched_at.elapsed() < self.max_age)
            .then(|| self.keys.get(kid).cloned())
            .flatten()
    }
}

pub struct KeyCache {
    http: reqwest::Client,
    uri: String,
    /// The endpoint label of metrics and errors ("jwks", "risc_jwks").
    endpoint: &'static str,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching, so concurrent misses share one fetch.
    fetch_lock: Mutex<()>,
    fetches: governor::DefaultDirectRateLimiter,
}

impl KeyCache {
    pub fn new(http: reqwest::Client, uri: String, endpoint: &'static str) -> KeyCache {
        KeyCache {
            http,
            uri,
            endpoint,
            keys: RwLock::new(None),
            fetch_lock: Mutex::new(()),
            fetches: governor::RateLimiter::direct(governor::Quota::per_minute(
                std::num::NonZeroU32::new(FETCHES_PER_MINUTE).unwrap_or(std::num::NonZeroU32::MIN),
            )),
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The key `kid`: from the cache while it is fresh, else from a fetch (rate-limited).
    pub async fn key_for(&self, kid: &str) -> Result<DecodingKey, KeyError> {
        let cached = self.keys.read().clone();
        if let Some(key) = cached.as_ref().and_then(|s| s.fresh_key(kid)) {
            return Ok(key);
        }
        let _guard = self.fetch_lock.lock().await;
        // Someone else may have fetched while we waited.
        let cached = self.keys.read().clone();
        if let Some(key) = cached.as_ref().and_then(|s| s.fresh_key(kid)) {
            return Ok(key);
        }
        if self.fetches.check().is_ok() {
            match self.fetch().await {
                Ok(set) => {
                    let set = Arc::new(set);
                    *self.keys.write() = Some(set.clone());
                    return set.keys.get(kid).cloned().ok_or(KeyError::Unknown);
                }
                Err(e) => {
                    // Google's JWKS is down: keep using the keys we have. A kid we do not
                    // know may be a rotation we cannot see yet: Google's fault, not the token's.
                    tracing::warn!(error = %e, endpoint = self.endpoint,
                        "cannot refresh Google's JWKS; using cached keys");
                    return match cached.as_ref().and_then(|s| s.keys.get(kid)) {
                        Some(key) => Ok(key.clone()),
                        None => Err(KeyError::Fetch(e)),
                    };
                }
            }
        }
        cached
            .and_then(|s| s.keys.get(kid).cloned())
            .ok_or(KeyError::Unknown)
    }

    async fn fetch(&self) -> Result<KeySet, GoogleError> {
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<Jwk>,
        }
        #[derive(Deserialize)]
        struct Jwk {
            kid: String,
            kty: String,
            #[serde(default)]
            n: String,
            #[serde(default)]
            e: String,
        }
        let endpoint = self.endpoint;
        let resp = self.http.get(&self.uri).send().await.map_err(|e| {
            crate::metrics::google_call(endpoint, None);
            GoogleError::from_reqwest(endpoint, e)
        })?;
        let status = resp.status();
        crate::metrics::google_call(endpoint, Some(status.as_u16()));
        if !status.is_success() {
            return Err(GoogleError::Unavailable {
                endpoint,
                status: status.as_u16(),
                retry_after: None,
            });
        }
        let max_age = max_age(resp.headers()).unwrap_or(DEFAULT_MAX_AGE);
        let body = super::read_capped(endpoint, resp, MAX_JWKS_BYTES).await?;
        let jwks: Jwks =
            serde_json::from_slice(&body).map_err(|e| super::malformed(endpoint, &e))?;
        let mut keys = HashMap::new();
        for k in jwks.keys.into_iter().filter(|k| k.kty == "RSA") {
            match DecodingKey::from_rsa_components(&k.n, &k.e) {
                Ok(key) => {
                    keys.insert(k.kid, key);
                }
                Err(_) => tracing::warn!(kid = %k.kid, endpoint,
                    "ignoring an unusable key in Google's JWKS"),
            }
        }
        Ok(KeySet {
            keys,
            fetched_at: Instant::now(),
            max_age,
        })
    }
}

/// The max-age of a response's Cache-Control header.
pub(crate) fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_max_age)
}

fn parse_max_age(cache_control: &str) -> Option<Duration> {
    cache_control
        .split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            parse_max_age("public, max-age=21600, must-revalidate, no-transform"),
            Some(Duration::from_secs(21600))
        );
        assert_eq!(parse_max_age("no-cache"), None);
    }
}
