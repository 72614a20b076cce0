//! Google's HTTP APIs, as the daemon uses them: OAuth 2.0 ([`oauth`]: code exchange, refresh,
//! revoke), OpenID Connect ID tokens ([`id_token`]: JWKS-verified, keys cached by [`jwks`]),
//! Cross-Account Protection ([`risc`]: security event tokens; [`risc_api`]: the stream
//! management API) and Drive. Knows nothing of the database. Every URL comes from
//! configuration, so tests point them at fake-google.
//!
//! Errors are classified once, here ([`GoogleError`]), into what callers act on: retry later,
//! the grant is gone, our configuration is wrong, or the answer is unusable.

pub mod drive;
pub mod id_token;
pub mod jwks;
pub mod oauth;
pub mod risc;
pub mod risc_api;

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota};
use parking_lot::RwLock;

use reqwest::StatusCode;
use serde::Deserialize;

#[derive(Debug, Clone, thiserror::Error)]
pub enum GoogleError {
    #[error("Google {endpoint} did not answer in time")]
    Timeout { endpoint: &'static str },
    #[error("cannot reach Google {endpoint}: {reason}")]
    Network {
        endpoint: &'static str,
        reason: String,
    },
    /// 5xx, 429, or a 403 rate limit: worth retrying, after `retry_after` when Google says so.
    #[error("Google {endpoint} is unavailable or rate limiting (HTTP {status})")]
    Unavailable {
        endpoint: &'static str,
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Drive: 403 `rateLimitExceeded`, the project's per-minute quota is spent (for all its
    /// users; `userRateLimitExceeded`, one user's quota, is [`GoogleError::Unavailable`]).
    #[error(
        "Google {endpoint}: the project's per-minute quota is spent (HTTP 403 rateLimitExceeded)"
    )]
    ProjectQuota {
        endpoint: &'static str,
        retry_after: Option<Duration>,
    },
    /// The refresh token or auth code is no good: revoked, expired, used, or for another client.
    #[error("Google rejected the grant: {description}")]
    InvalidGrant { description: String },
    /// Our own OAuth client is misconfigured (client id or secret, or the redirect URI): an
    /// operator must fix the configuration; retrying cannot help.
    #[error("Google rejected this server's OAuth client ({error}: {description})")]
    InvalidClient { error: String, description: String },
    /// The access token was not accepted (401 from an API).
    #[error("Google {endpoint} did not accept the access token")]
    Unauthorized { endpoint: &'static str },
    /// Any other refusal; retrying will not help.
    #[error("Google {endpoint} refused the request (HTTP {status}, {error}): {description}")]
    Rejected {
        endpoint: &'static str,
        status: u16,
        error: String,
        description: String,
    },
    /// Drive: the file is gone (deleted between listing and download, say).
    #[error("Google {endpoint}: file not found")]
    NotFound { endpoint: &'static str },
    /// Drive: a file with the id we gave a create exists already.
    #[error("Google {endpoint}: a file with that id exists already")]
    AlreadyExists { endpoint: &'static str },
    /// Drive: the item has no binary content to download (a folder, a Google-native file).
    #[error("Google {endpoint}: the file has no content to download")]
    NotDownloadable { endpoint: &'static str },
    /// Drive: the saved changes page token is no longer valid; re-list from scratch.
    #[error("Google {endpoint}: the changes page token is invalid")]
    InvalidPageToken { endpoint: &'static str },
    #[error("Google {endpoint} sent a response that cannot be read: {reason}")]
    Malformed {
        endpoint: &'static str,
        reason: String,
    },
}

impl GoogleError {
    /// Transient: the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GoogleError::Timeout { .. }
                | GoogleError::Network { .. }
                | GoogleError::Unavailable { .. }
                | GoogleError::ProjectQuota { .. }
                | GoogleError::Malformed { .. }
        )
    }

    /// Google said the project or the user is over quota (429, or 403 rateLimitExceeded /
    /// userRateLimitExceeded): the caller should slow down, not only retry.
    pub fn is_rate_limit(&self) -> bool {
        matches!(
            self,
            GoogleError::Unavailable {
                status: 429 | 403,
                ..
            } | GoogleError::ProjectQuota { .. }
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GoogleError::Unavailable { retry_after, .. }
            | GoogleError::ProjectQuota { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn from_reqwest(endpoint: &'static str, e: reqwest::Error) -> GoogleError {
        if e.is_timeout() {
            GoogleError::Timeout { endpoint }
        } else if e.is_decode() || e.is_body() {
            GoogleError::Malformed {
                endpoint,
                reason: e.without_url().to_string(),
            }
        } else {
            GoogleError::Network {
                endpoint,
                reason: error_chain(&e.without_url()),
            }
        }
    }
}

/// A body that does not decode. serde_json quotes the offending string in its message
/// (`invalid type: string "ya29…", expected i64`), and in a token response that string may be a
/// token, so every quoted string is elided: the message keeps what was wrong and where.
pub(crate) fn malformed(endpoint: &'static str, e: &serde_json::Error) -> GoogleError {
    let message = e.to_string();
    let mut reason = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        reason.push(c);
        if c == '"' {
            // Quoted with Rust's escaping: skip to the closing quote that is not escaped.
            let mut escaped = false;
            for c in chars.by_ref() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => break,
                    _ => {}
                }
            }
            reason.push_str("…\"");
        }
    }
    GoogleError::Malformed { endpoint, reason }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Which HTTP version the clients speak to Google (`[google] http_version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HttpVersion {
    /// HTTP/1.1 only, on a pool of keep-alive connections.
    #[default]
    #[serde(rename = "1.1")]
    Http1,
    /// HTTP/2 (with prior knowledge: over TLS as Google serves it, or h2c in front of an
    /// emulator), requests multiplexed on few connections.
    #[serde(rename = "2")]
    Http2,
}

/// The HTTP clients every Google call goes through: rustls, pooled connections, never a
/// redirect (one would resend a client secret, a refresh token or a bearer token elsewhere).
#[derive(Clone)]
pub struct Http {
    /// JSON calls: bounded as a whole by the request timeout; gzip asked for, as Drive's
    /// performance guide wants (<https://developers.google.com/workspace/drive/api/guides/performance#gzip>).
    pub api: reqwest::Client,
    /// Content transfers: no limit on the whole (a big file takes as long as it takes), but
    /// on connecting and on each read, so a stalled transfer still ends; no gzip (content is
    /// streamed and resumed by byte ranges).
    pub media: reqwest::Client,
}

impl Http {
    pub fn new(timeout: Duration, version: HttpVersion) -> Http {
        let base = || {
            let b = reqwest::Client::builder()
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(256)
                .redirect(reqwest::redirect::Policy::none());
            match version {
                HttpVersion::Http1 => b.http1_only(),
                HttpVersion::Http2 => b.http2_prior_knowledge(),
            }
        };
        let api = base()
            .timeout(timeout)
            .gzip(true)
            // Drive compresses only for a User-Agent that says "gzip".
            .user_agent(concat!(
                "appdata-syncd/",
                env!("CARGO_PKG_VERSION"),
                " (gzip)"
            ))
            .build();
        let media = base()
            .read_timeout(timeout)
            .gzip(false)
            .user_agent(concat!("appdata-syncd/", env!("CARGO_PKG_VERSION")))
            .build();
        match (api, media) {
            (Ok(api), Ok(media)) => Http { api, media },
            // Fails only if the TLS backend cannot initialise, which is a broken build.
            (Err(e), _) | (_, Err(e)) => panic!("building the HTTP client: {e}"),
        }
    }
}

/// The client for Google's JSON endpoints (token, revoke, JWKS, Drive metadata).
pub fn http_client(timeout: Duration) -> reqwest::Client {
    Http::new(timeout, HttpVersion::default()).api
}

/// Reads a response body of at most `max` bytes: a Google answer bigger than any real one is
/// refused rather than buffered.
pub(crate) async fn read_capped(
    endpoint: &'static str,
    resp: reqwest::Response,
    max: usize,
) -> Result<bytes::Bytes, GoogleError> {
    use futures::StreamExt;
    let too_big = || GoogleError::Malformed {
        endpoint,
        reason: format!("the response is larger than {max} bytes"),
    };
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    let mut body = bytes::BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| GoogleError::from_reqwest(endpoint, e))?;
        if body.len() + chunk.len() > max {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Google's OAuth error body: `{"error": "...", "error_description": "..."}`.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct OAuthErrorBody {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_description: String,
}

/// The longest `Retry-After` believed. Google asks for seconds or minutes; a larger value is
/// nonsense, and one near `u64::MAX` would overflow the clock arithmetic of the retry loop.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// `Retry-After` in seconds (Google does not send the HTTP-date form), at most a day.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Classifies a non-success answer of the OAuth endpoints (token, revoke).
pub fn oauth_error(
    endpoint: &'static str,
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> GoogleError {
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return GoogleError::Unavailable {
            endpoint,
            status: status.as_u16(),
            retry_after: retry_after(headers),
        };
    }
    let parsed: OAuthErrorBody = serde_json::from_slice(body).unwrap_or_default();
    match parsed.error.as_str() {
        "invalid_grant" => GoogleError::InvalidGrant {
            description: parsed.error_description,
        },
        "invalid_client" | "unauthorized_client" | "redirect_uri_mismatch" => {
            GoogleError::InvalidClient {
                error: parsed.error,
                description: parsed.error_description,
            }
        }
        _ => GoogleError::Rejected {
            endpoint,
            status: status.as_u16(),
            error: if parsed.error.is_empty() {
                "unknown".into()
            } else {
                parsed.error
            },
            description: parsed.error_description,
        },
    }
}

/// The one rate limiter every call to Google passes, so the daemon as a whole stays under the
/// project's quota however many users sync at once. The ceiling can change on reload.
///
/// Adaptive (AIMD): when Google answers that we are over quota (429 or a 403 rate-limit
/// reason), the rate in force drops to 70 % (at most once a second, so one burst of refusals
/// counts once); then it climbs back by a fortieth of the ceiling each second. A project that
/// shares its quota with other services settles at its share instead of a storm of errors.
///
/// Drive's quotas are per minute, per project and per user, and exceeding one is answered
/// 403 (https://developers.google.com/workspace/drive/api/guides/limits; 429 comes from
/// "additional rate limit checks on the Drive backend"): `rateLimitExceeded` for the project,
/// `userRateLimitExceeded` for one user (handle-errors). So the project's 403 teaches the
/// limiter a minute budget: what Google accepted from us over the last 60 s. From then on calls wait while the last 60 s
/// hold that many, and go as soon as the window has room, instead of being refused and backing
/// off past the moment it reopens; a refusal never takes the rate below a sixtieth of it
/// either. The budget grows by a tenth each minute without a 403, so a raised quota or a
/// quieter neighbour is found again.
///
/// `[sync] max_requests_per_second` is the project's budget: the instances on one database
/// share it ([`RateLimit::share_among`]), so adding instances does not multiply what the
/// project sends Google.
pub struct RateLimit {
    limiter: RwLock<Arc<DefaultDirectRateLimiter>>,
    /// `[sync] max_requests_per_second`, for every instance together.
    budget: AtomicU32,
    /// The instances sharing the budget, this one included.
    sharers: AtomicU32,
    /// The ceiling: this instance's share of the budget.
    ceiling: AtomicU32,
    /// The rate in force (≤ the ceiling).
    current: AtomicU32,
    /// When the rate was last lowered, and last raised (or lowered: a decrease restarts the
    /// climb). Apart, so that climbing back never hides a refusal from `slow_down`.
    pace: parking_lot::Mutex<Pace>,
    last_minute: parking_lot::Mutex<LastMinute>,
    /// Calls that had to wait, and for how long in total (for metrics and `ctl status`).
    waits: AtomicU64,
    waited_us: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Pace {
    lowered: Instant,
    raised: Instant,
}

/// Calls let through and quota refusals over the last minute, in tenths of a second, and the
/// minute budget learned from the project's 403s.
struct LastMinute {
    /// tokio's clock, so tests can pause it.
    origin: tokio::time::Instant,
    /// (slice since `origin`, calls, refusals), oldest first.
    slices: VecDeque<(u64, u64, u64)>,
    /// The sum of `calls - refusals` (floored at 0) over `slices`, kept as they change: every
    /// call to Google reads it, and a minute holds up to 600 slices.
    accepted: u64,
    /// Calls Google accepts from us in 60 s, and when that was learned (or last grown).
    budget: Option<(u64, tokio::time::Instant)>,
}

/// A budget below this (one call a second) is not learned: too few calls to tell anything.
const MIN_BUDGET: u64 = 60;
/// The window of Drive's quotas.
const MINUTE: Duration = Duration::from_secs(60);
/// The window is counted in slices this long: a call leaves it at most this late.
const SLICE: Duration = Duration::from_millis(100);
/// A slice leaves the window once a minute has passed since its end.
const SLICES_KEPT: u64 = (MINUTE.as_millis() / SLICE.as_millis()) as u64 + 1;

impl LastMinute {
    fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            slices: VecDeque::new(),
            accepted: 0,
            budget: None,
        }
    }

    fn now(&self) -> u64 {
        (self.origin.elapsed().as_millis() / SLICE.as_millis()) as u64
    }

    fn add(&mut self, calls: u64, refused: u64) {
        let now = self.now();
        let slice = match self.slices.back_mut() {
            Some(slice) if slice.0 == now => slice,
            _ => {
                self.slices.push_back((now, 0, 0));
                self.slices.back_mut().expect("a slice was just pushed")
            }
        };
        let before = slice.1.saturating_sub(slice.2);
        slice.1 += calls;
        slice.2 += refused;
        self.accepted = self.accepted - before + slice.1.saturating_sub(slice.2);
        self.forget_older_than_a_minute(now);
    }

    fn forget_older_than_a_minute(&mut self, now: u64) {
        while self
            .slices
            .front()
            .is_some_and(|(s, _, _)| s + SLICES_KEPT <= now)
        {
            if let Some((_, c, r)) = self.slices.pop_front() {
                self.accepted -= c.saturating_sub(r);
            }
        }
    }

    /// Calls Google did not refuse for quota in the last minute.
    fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Google refused for the project's per-minute quota: what it accepted in the last minute
    /// is the budget.
    fn learn_budget(&mut self) {
        let accepted = self.accepted();
        if accepted >= MIN_BUDGET {
            self.budget = Some((accepted, tokio::time::Instant::now()));
        }
    }

    /// Counts a call and lets it go if the minute budget has room; else how long until the
    /// oldest slice leaves the window.
    fn admit(&mut self) -> Option<Duration> {
        let now = self.now();
        self.forget_older_than_a_minute(now);
        let accepted = self.accepted();
        if let Some((budget, since)) = &mut self.budget {
            if since.elapsed() >= MINUTE {
                *budget += (*budget / 10).max(1);
                *since = tokio::time::Instant::now();
            }
            if accepted >= *budget {
                let oldest = self.slices.front().map_or(now, |(s, _, _)| *s);
                let leaves = self.origin
                    + Duration::from_millis((oldest + SLICES_KEPT) * SLICE.as_millis() as u64);
                return Some(leaves.saturating_duration_since(tokio::time::Instant::now()));
            }
        }
        self.add(1, 0);
        None
    }
}

/// The rate after a refusal: this fraction of the rate in force.
const DECREASE: f64 = 0.7;
/// Decreases are this far apart at least (one burst of refusals counts once); increases come
/// this often.
const PACE_STEP: Duration = Duration::from_secs(1);
/// After a decrease the rate holds this long before it climbs again.
const HOLD_AFTER_DECREASE: Duration = Duration::from_secs(2);
/// Each step of the climb adds the ceiling divided by this.
const CLIMB_STEPS: u32 = 40;

impl RateLimit {
    pub fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        Self {
            limiter: RwLock::new(Arc::new(Self::build(per_second))),
            budget: AtomicU32::new(per_second),
            sharers: AtomicU32::new(1),
            ceiling: AtomicU32::new(per_second),
            current: AtomicU32::new(per_second),
            pace: parking_lot::Mutex::new(Pace {
                lowered: Instant::now()
                    .checked_sub(PACE_STEP)
                    .unwrap_or_else(Instant::now),
                raised: Instant::now(),
            }),
            last_minute: parking_lot::Mutex::new(LastMinute::new()),
            waits: AtomicU64::new(0),
            waited_us: AtomicU64::new(0),
        }
    }

    fn build(per_second: u32) -> DefaultDirectRateLimiter {
        let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        // A burst of a tenth of a second's worth: smooth, yet no idle gaps between calls.
        let burst = NonZeroU32::new((per_second / 10).max(1)).unwrap_or(NonZeroU32::MIN);
        governor::RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
    }

    /// A new budget (reload); the rate in force starts from this instance's share of it.
    pub fn set_rate(&self, per_second: u32) {
        let per_second = per_second.max(1);
        if self.budget.swap(per_second, Ordering::Relaxed) != per_second {
            let ceiling = self.share();
            self.ceiling.store(ceiling, Ordering::Relaxed);
            self.apply(ceiling);
        }
    }

    /// `instances` (at least this one) now share the budget: the ceiling becomes this
    /// instance's part of it, and the rate in force moves in proportion, so that a rate
    /// lowered by Google's refusals stays lowered by as much.
    pub fn share_among(&self, instances: u32) {
        let instances = instances.max(1);
        if self.sharers.swap(instances, Ordering::Relaxed) == instances {
            return;
        }
        let ceiling = self.share();
        let before = self.ceiling.swap(ceiling, Ordering::Relaxed).max(1);
        let current = u64::from(self.current_rate()) * u64::from(ceiling) / u64::from(before);
        tracing::info!(
            instances,
            rate = ceiling,
            budget = self.budget(),
            "the instances sharing the project's rate changed"
        );
        self.apply((current as u32).clamp(1, ceiling));
    }

    fn share(&self) -> u32 {
        (self.budget() / self.instances()).max(1)
    }

    /// The ceiling: this instance's share of the budget.
    pub fn rate(&self) -> u32 {
        self.ceiling.load(Ordering::Relaxed)
    }

    /// `[sync] max_requests_per_second`: the budget of every instance together.
    pub fn budget(&self) -> u32 {
        self.budget.load(Ordering::Relaxed)
    }

    /// The instances sharing the budget, this one included.
    pub fn instances(&self) -> u32 {
        self.sharers.load(Ordering::Relaxed).max(1)
    }

    /// The rate in force.
    pub fn current_rate(&self) -> u32 {
        self.current.load(Ordering::Relaxed)
    }

    /// Google said we are over quota: lower the rate in force (once per [`PACE_STEP`]), not
    /// below a sixtieth of what Google accepted in the last minute. `minute_quota`: it was
    /// the project's per-minute quota, so that is also the minute's budget.
    pub fn slow_down(&self, minute_quota: bool) {
        let minute_share = {
            let mut last_minute = self.last_minute.lock();
            last_minute.add(0, 1);
            if minute_quota {
                last_minute.learn_budget();
            }
            last_minute.accepted() as f64 / 60.0
        };
        let mut pace = self.pace.lock();
        if pace.lowered.elapsed() < PACE_STEP {
            return;
        }
        let current = self.current_rate() as f64;
        let lowered = (current * DECREASE)
            .max(minute_share)
            .min(current)
            .floor()
            .max(1.0) as u32;
        let now = Instant::now();
        *pace = Pace {
            lowered: now,
            raised: now,
        };
        drop(pace);
        tracing::info!(
            rate = lowered,
            "Google says we are over quota; slowing down"
        );
        self.apply(lowered);
    }

    /// Climbs back towards the ceiling, by 1/[`CLIMB_STEPS`] of it per [`PACE_STEP`], once
    /// [`HOLD_AFTER_DECREASE`] has passed since the last decrease.
    fn recover(&self) {
        let (ceiling, current) = (self.rate(), self.current_rate());
        if current >= ceiling {
            return;
        }
        let mut pace = self.pace.lock();
        if pace.lowered.elapsed() < HOLD_AFTER_DECREASE {
            return;
        }
        let steps = (pace.raised.elapsed().as_millis() / PACE_STEP.as_millis()) as u32;
        if steps == 0 {
            return;
        }
        let raised = current
            .saturating_add(steps.saturating_mul((ceiling / CLIMB_STEPS).max(1)))
            .min(ceiling);
        pace.raised = Instant::now();
        drop(pace);
        self.apply(raised);
    }

    fn apply(&self, per_second: u32) {
        self.current.store(per_second, Ordering::Relaxed);
        *self.limiter.write() = Arc::new(Self::build(per_second));
        crate::metrics::request_rate(per_second);
    }

    /// (calls that waited, total wait)
    pub fn waits(&self) -> (u64, Duration) {
        (
            self.waits.load(Ordering::Relaxed),
            Duration::from_micros(self.waited_us.load(Ordering::Relaxed)),
        )
    }

    pub async fn wait(&self) {
        self.recover();
        let started = Instant::now();
        let mut waited_for_budget = false;
        loop {
            let pause = self.last_minute.lock().admit();
            match pause {
                Some(pause) => {
                    waited_for_budget = true;
                    // At least a little: the oldest second may be leaving right now.
                    tokio::time::sleep(pause.max(Duration::from_millis(20))).await;
                }
                None => break,
            }
        }
        let limiter = self.limiter.read().clone();
        if limiter.check().is_ok() && !waited_for_budget {
            return;
        }
        limiter.until_ready().await;
        let waited = started.elapsed();
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.waited_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        crate::metrics::rate_limit_wait(waited);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on loopback that answers every request with `body` (and no Content-Length
    /// when `chunked`, so the cap must hold while streaming).
    async fn serve(body: Vec<u8>, chunked: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move {
                if chunked {
                    let stream = futures::stream::iter(
                        body.chunks(64 * 1024)
                            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                            .collect::<Vec<_>>(),
                    );
                    axum::body::Body::from_stream(stream)
                } else {
                    axum::body::Body::from(body)
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn an_answer_larger_than_any_real_one_is_refused_not_buffered() {
        for chunked in [false, true] {
            let url = serve(vec![b'x'; 2 * 1024 * 1024], chunked).await;
            let resp = http_client(Duration::from_secs(5))
                .get(&url)
                .send()
                .await
                .unwrap();
            let err = read_capped("token", resp, 256 * 1024).await.unwrap_err();
            assert!(
                matches!(&err, GoogleError::Malformed { reason, .. } if reason.contains("larger than")),
                "{err:?}"
            );
        }
        let url = serve(b"{}".to_vec(), true).await;
        let resp = http_client(Duration::from_secs(5))
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(
            &read_capped("token", resp, 256 * 1024).await.unwrap()[..],
            b"{}"
        );
    }

    #[test]
    fn instances_split_the_budget_and_a_lowered_rate_stays_lowered_in_proportion() {
        let limit = RateLimit::new(300);
        limit.share_among(3);
        assert_eq!((limit.rate(), limit.current_rate()), (100, 100));
        limit.slow_down(false);
        assert_eq!(limit.current_rate(), 70);
        limit.share_among(2);
        assert_eq!((limit.rate(), limit.current_rate()), (150, 105));
        limit.share_among(0);
        assert_eq!(
            (limit.rate(), limit.instances()),
            (300, 1),
            "at least this one"
        );
        limit.set_rate(600);
        assert_eq!(
            (limit.budget(), limit.rate(), limit.current_rate()),
            (600, 600, 600)
        );
        limit.share_among(1_000);
        assert_eq!(limit.rate(), 1, "never below one call a second");
    }

    #[test]
    fn the_rate_drops_on_refusals_once_a_second_and_climbs_back() {
        let ago = |d: Duration| Instant::now() - d;
        let limit = RateLimit::new(400);
        limit.slow_down(false);
        limit.slow_down(false);
        assert_eq!(limit.current_rate(), 280, "a burst of refusals counts once");
        limit.pace.lock().raised = ago(PACE_STEP * 2);
        limit.recover();
        assert_eq!(limit.current_rate(), 280, "it holds right after a decrease");
        limit.pace.lock().lowered = ago(HOLD_AFTER_DECREASE);
        limit.recover();
        assert_eq!(limit.current_rate(), 300, "two steps of 10");
        // A refusal while climbing still counts.
        limit.slow_down(false);
        assert_eq!(limit.current_rate(), 210);
        *limit.pace.lock() = Pace {
            lowered: ago(PACE_STEP * 100),
            raised: ago(PACE_STEP * 100),
        };
        limit.recover();
        assert_eq!(limit.current_rate(), 400, "never above the ceiling");
        limit.set_rate(10);
        assert_eq!((limit.rate(), limit.current_rate()), (10, 10));
    }

    #[test]
    fn refusals_never_take_the_rate_below_what_the_last_minute_accepted() {
        let limit = RateLimit::new(400);
        // Google accepted 200 a second for the last minute, then refuses.
        limit.last_minute.lock().add(12_000, 0);
        let mut rates = Vec::new();
        for _ in 0..4 {
            limit.slow_down(false);
            rates.push(limit.current_rate());
            limit.pace.lock().lowered = Instant::now() - PACE_STEP;
        }
        assert_eq!(rates, [280, 199, 199, 199], "{rates:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_minute_quota_refusal_makes_calls_wait_for_room_in_the_window() {
        let limit = RateLimit::new(1_000);
        for _ in 0..300 {
            limit.wait().await;
        }
        // Drive's 403: the 300 calls of the last minute are the budget.
        limit.slow_down(true);
        let before = tokio::time::Instant::now();
        limit.wait().await;
        assert!(
            before.elapsed() >= Duration::from_secs(59),
            "a call went before the window had room: {:?}",
            before.elapsed()
        );
        // A 429 teaches no budget.
        let limit = RateLimit::new(1_000);
        for _ in 0..300 {
            limit.wait().await;
        }
        limit.slow_down(false);
        let before = tokio::time::Instant::now();
        limit.wait().await;
        assert!(before.elapsed() < Duration::from_secs(1));
    }
}
