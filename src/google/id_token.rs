//! Verification of Google ID tokens: RS256 signature against Google's JWKS, issuer, audience,
//! authorized party and time claims.
//! <https://developers.google.com/identity/sign-in/android/backend-auth#verify-the-integrity-of-the-id-token>
//!
//! The key set is cached for as long as its Cache-Control max-age says; an unknown `kid` (a key
//! rotation) triggers a refetch. Fetches are rate-limited ([`FETCHES_PER_MINUTE`], with that
//! burst, as jwks-rsa does), so a rotation right after a fetch is still picked up while a flood
//! of forged kids cannot turn into a flood of JWKS requests. If a fetch fails (or is not
//! allowed yet), the cached keys keep working, stale or not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::GoogleError;

const ISSUERS: [&str; 2] = ["accounts.google.com", "https://accounts.google.com"];
/// Allowed clock difference between Google and us.
pub const LEEWAY_SECS: u64 = 60;
/// JWKS fetches allowed per minute, all at once if need be.
const FETCHES_PER_MINUTE: u32 = 10;
/// Used when the JWKS response carries no max-age.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum IdTokenError {
    #[error("ID token is malformed or uses a disallowed algorithm")]
    Malformed,
    #[error("ID token is signed with an unknown key ({})", describe_kid(.0))]
    UnknownKey(String),
    #[error("ID token has an invalid {0}")]
    Invalid(&'static str),
    #[error("ID token signature does not verify")]
    BadSignature,
    #[error("ID token is expired")]
    Expired,
    #[error("cannot fetch Google's signing keys: {0}")]
    Jwks(#[from] GoogleError),
}

/// The kid as an error shows it. It comes from the not yet verified header: one that is not
/// shaped like a key id (Google's are 40 hex digits) is described, not echoed into logs and
/// sign-in answers.
fn describe_kid(kid: &str) -> String {
    let key_id = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if (1..=64).contains(&kid.len()) && kid.bytes().all(key_id) {
        format!("kid {kid:?}")
    } else {
        format!("a kid of {} bytes that is not a key id", kid.len())
    }
}

impl IdTokenError {
    /// The JWKS could not be fetched: not the token's fault.
    pub fn is_upstream(&self) -> bool {
        matches!(self, IdTokenError::Jwks(_))
    }
}

/// The `sub` of an ID token, NOT verified: never a reason to trust anything, only a hint of
/// whose grant a failed sign-in touched (see `intake::signin`).
pub fn unverified_sub(token: &str) -> Option<String> {
    use base64::Engine;
    #[derive(Deserialize)]
    struct Sub {
        sub: String,
    }
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Sub>(&json).ok().map(|s| s.sub)
}

/// The claims we use from a verified ID token.
#[derive(Debug, Clone, Deserialize)]
pub struct IdClaims {
    pub sub: String,
    pub aud: String,
    #[serde(default)]
    pub azp: Option<String>,
    pub iat: i64,
    pub exp: i64,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "bool_or_string")]
    pub email_verified: bool,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub family_name: Option<String>,
    #[serde(default)]
    pub picture: Option<String>,
    #[serde(default)]
    pub locale: Option<String>,
}

/// Google has sent email_verified both as a boolean and as "true".
fn bool_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Str(String),
    }
    Ok(match B::deserialize(d)? {
        B::Bool(b) => b,
        B::Str(s) => s == "true",
    })
}

struct KeySet {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Instant,
    max_age: Duration,
}

pub struct IdTokenVerifier {
    http: reqwest::Client,
    jwks_uri: String,
    audience: String,
    /// Allowed `azp` values; empty allows any. Replaced on config reload.
    allowed_azp: RwLock<Arc<Vec<String>>>,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching, so concurrent misses share one fetch.
    fetch_lock: Mutex<()>,
    fetches: governor::DefaultDirectRateLimiter,
}

impl IdTokenVerifier {
    pub fn new(
        http: reqwest::Client,
        jwks_uri: String,
        audience: String,
        allowed_azp: Vec<String>,
    ) -> Self {
        Self {
            http,
            jwks_uri,
            audience,
            allowed_azp: RwLock::new(Arc::new(allowed_azp)),
            keys: RwLock::new(None),
            fetch_lock: Mutex::new(()),
            fetches: governor::RateLimiter::direct(governor::Quota::per_minute(
                std::num::NonZeroU32::new(FETCHES_PER_MINUTE).unwrap_or(std::num::NonZeroU32::MIN),
            )),
        }
    }

    pub fn set_allowed_azp(&self, allowed: Vec<String>) {
        *self.allowed_azp.write() = Arc::new(allowed);
    }

    pub async fn verify(&self, token: &str) -> Result<IdClaims, IdTokenError> {
        // decode_header rejects "none" and unknown algorithms; we then insist on RS256, so an
        // HS256 token "signed" with Google's public key never reaches an HMAC check.
        let header = jsonwebtoken::decode_header(token).map_err(|_| IdTokenError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(IdTokenError::Malformed);
        }
        let kid = header.kid.ok_or(IdTokenError::Malformed)?;
        let key = self.key_for(&kid).await?;

        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&ISSUERS);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        let data = jsonwebtoken::decode::<IdClaims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => IdTokenError::BadSignature,
                ErrorKind::ExpiredSignature => IdTokenError::Expired,
                ErrorKind::InvalidIssuer => IdTokenError::Invalid("issuer"),
                ErrorKind::InvalidAudience => IdTokenError::Invalid("audience"),
                ErrorKind::MissingRequiredClaim(_) => IdTokenError::Invalid("claim set"),
                _ => IdTokenError::Malformed,
            }
        })?;
        let claims = data.claims;
        let now = chrono::Utc::now().timestamp();
        if claims.iat > now + LEEWAY_SECS as i64 {
            return Err(IdTokenError::Invalid("issue time (in the future)"));
        }
        if claims.sub.is_empty() {
            return Err(IdTokenError::Invalid("subject"));
        }
        let allowed = self.allowed_azp.read().clone();
        if !allowed.is_empty() {
            match &claims.azp {
                Some(azp) if allowed.iter().any(|a| a == azp) => {}
                _ => return Err(IdTokenError::Invalid("authorized party (azp)")),
            }
        }
        Ok(claims)
    }

    async fn key_for(&self, kid: &str) -> Result<DecodingKey, IdTokenError> {
        let cached = self.keys.read().clone();
        if let Some(set) = &cached {
            let fresh = set.fetched_at.elapsed() < set.max_age;
            if let (true, Some(key)) = (fresh, set.keys.get(kid)) {
                return Ok(key.clone());
            }
        }
        let _guard = self.fetch_lock.lock().await;
        // Someone else may have fetched while we waited.
        let cached = self.keys.read().clone();
        if let Some(set) = &cached {
            if set.fetched_at.elapsed() < set.max_age {
                if let Some(key) = set.keys.get(kid) {
                    return Ok(key.clone());
                }
            }
        }
        if self.fetches.check().is_ok() {
            match self.fetch().await {
                Ok(set) => {
                    let set = Arc::new(set);
                    *self.keys.write() = Some(set.clone());
                    return set
                        .keys
                        .get(kid)
                        .cloned()
                        .ok_or_else(|| IdTokenError::UnknownKey(kid.to_string()));
                }
                Err(e) => {
                    // Google's JWKS is down: keep using the keys we have. A kid we do not
                    // know may be a rotation we cannot see yet: Google's fault, not the token's.
                    tracing::warn!(error = %e, "cannot refresh Google's JWKS; using cached keys");
                    return match cached.as_ref().and_then(|s| s.keys.get(kid)) {
                        Some(key) => Ok(key.clone()),
                        None => Err(IdTokenError::Jwks(e)),
                    };
                }
            }
        }
        cached
            .and_then(|s| s.keys.get(kid).cloned())
            .ok_or_else(|| IdTokenError::UnknownKey(kid.to_string()))
    }

    async fn fetch(&self) -> Result<KeySet, GoogleError> {
        const ENDPOINT: &str = "jwks";
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
        let resp = self.http.get(&self.jwks_uri).send().await.map_err(|e| {
            crate::metrics::google_call(ENDPOINT, None);
            GoogleError::from_reqwest(ENDPOINT, e)
        })?;
        let status = resp.status();
        crate::metrics::google_call(ENDPOINT, Some(status.as_u16()));
        if !status.is_success() {
            return Err(GoogleError::Unavailable {
                endpoint: ENDPOINT,
                status: status.as_u16(),
                retry_after: None,
            });
        }
        let max_age = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age)
            .unwrap_or(DEFAULT_MAX_AGE);
        // Google's key set is a few KiB; a bigger answer is not a key set.
        let body = super::read_capped(ENDPOINT, resp, 256 * 1024).await?;
        let jwks: Jwks =
            serde_json::from_slice(&body).map_err(|e| super::malformed(ENDPOINT, &e))?;
        let mut keys = HashMap::new();
        for k in jwks.keys.into_iter().filter(|k| k.kty == "RSA") {
            match DecodingKey::from_rsa_components(&k.n, &k.e) {
                Ok(key) => {
                    keys.insert(k.kid, key);
                }
                Err(_) => tracing::warn!(kid = %k.kid, "ignoring an unusable key in Google's JWKS"),
            }
        }
        Ok(KeySet {
            keys,
            fetched_at: Instant::now(),
            max_age,
        })
    }
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
