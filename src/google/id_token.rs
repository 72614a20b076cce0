//! Verification of Google ID tokens: RS256 signature against Google's JWKS, issuer, audience,
//! authorized party and time claims.
//! <https://developers.google.com/identity/sign-in/android/backend-auth#verify-the-integrity-of-the-id-token>
//!
//! The key set is cached and refetched on an unknown `kid`, rate-limited ([`super::jwks`]).

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation};
use parking_lot::RwLock;
use serde::Deserialize;

use super::jwks::{KeyCache, KeyError};
use super::GoogleError;

const ISSUERS: [&str; 2] = ["accounts.google.com", "https://accounts.google.com"];
/// Allowed clock difference between Google and us.
pub const LEEWAY_SECS: u64 = 60;

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
pub(crate) fn describe_kid(kid: &str) -> String {
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

pub struct IdTokenVerifier {
    audience: String,
    /// Allowed `azp` values; empty allows any. Replaced on config reload.
    allowed_azp: RwLock<Arc<Vec<String>>>,
    keys: KeyCache,
}

impl IdTokenVerifier {
    pub fn new(
        http: reqwest::Client,
        jwks_uri: String,
        audience: String,
        allowed_azp: Vec<String>,
    ) -> Self {
        Self {
            audience,
            allowed_azp: RwLock::new(Arc::new(allowed_azp)),
            keys: KeyCache::new(http, jwks_uri, "jwks"),
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
        let key = self.keys.key_for(&kid).await.map_err(|e| match e {
            KeyError::Unknown => IdTokenError::UnknownKey(kid.clone()),
            KeyError::Fetch(e) => IdTokenError::Jwks(e),
        })?;

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
}
