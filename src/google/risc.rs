//! Cross-Account Protection (RISC): verifying the security event tokens (SETs) Google pushes.
//!
//! Google's page "Protect user accounts with Cross-Account Protection"
//! (<https://developers.google.com/identity/protocols/risc>, "Decode and validate the security
//! event token") asks a receiver to:
//! 1. take the issuer (`issuer`) and the signing keys' URI (`jwks_uri`) from the RISC
//!    configuration document, `https://accounts.google.com/.well-known/risc-configuration`
//!    ([`SetVerifier`] caches it like any Google document, by Cache-Control);
//! 2. read the key id from the token's header and find that key in the key set, answering
//!    400 when it is not there (the key set is cached and refetched on an unknown kid,
//!    rate-limited: [`super::jwks`]);
//! 3. verify the signature, that `aud` is one of our client ids and that `iss` is the
//!    configuration's issuer (a trailing slash aside: [`issuers`]). "You don't need to verify
//!    the token's expiration (exp) because security event tokens represent historical events
//!    and as such, don't expire."
//!
//! What this adds, and why:
//! - The algorithm must be RS256 (the page's samples pin it): `none` and HS256 keyed with a
//!   public key never reach a signature check.
//! - `iat` must not be in the future (beyond [`FUTURE_IAT_LEEWAY`]) nor older than the
//!   receiver's `max_event_age`. The page sets no such limit; ours bounds how long `jti`s must be
//!   remembered for de-duplication to be complete (a replay older than the limit is refused
//!   rather than compared).
//! - `events` must hold exactly one event (RFC 8417 §2.2: one logical event per SET), an
//!   object. Requiring `events` also keeps an ID token (signed with the same keys at Google)
//!   from passing as a SET (RFC 8417 §4.5, §4.6).
//! - `jti` must be a non-empty string: it is the de-duplication key (RFC 8417 §2.2; Google's
//!   page, "Handle security events": "unique to the stream").
//!
//! Event types and attributes are those of the page's "Supported event types" table; subjects
//! those of its "Handle security events" and "OAuth token identifiers" sections, with the
//! subject format named by `subject_type` (Google, the RISC profile drafts: `iss-sub`,
//! `id_token_claims`, `oauth_token`) or `format` (RFC 9493, the later RISC profile: `iss_sub`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha512};
use tokio::sync::Mutex;

use super::jwks::{KeyCache, KeyError};
use super::GoogleError;

/// Google's RISC configuration document.
pub const GOOGLE_CONFIGURATION_URI: &str =
    "https://accounts.google.com/.well-known/risc-configuration";
/// The delivery method to register (the page's `stream:update` example).
pub const DELIVERY_METHOD_PUSH: &str =
    "https://schemas.openid.net/secevent/risc/delivery-method/push";
/// A SET issued more than this far in the future is refused (clock skew between Google and us).
pub const FUTURE_IAT_LEEWAY: Duration = Duration::from_secs(300);
/// Configuration fetches allowed per minute (a flood of bad SETs cannot become a flood of
/// fetches while the document cannot be had).
const CONFIG_FETCHES_PER_MINUTE: u32 = 10;
/// Used when the configuration document carries no max-age.
const DEFAULT_CONFIG_MAX_AGE: Duration = Duration::from_secs(3600);
/// The longest `jti` accepted (it is stored and indexed).
pub const MAX_JTI_LEN: usize = 256;

/// The event types of the page's "Supported event types" table, by URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// "Re-secure the user's account by ending their currently open sessions."
    SessionsRevoked,
    /// All of the user's OAuth tokens: "delete any of the user's OAuth tokens you have stored".
    TokensRevoked,
    /// One refresh token, by identifier: "If you store the corresponding refresh token, delete
    /// it and request the user to re-consent next time an access token is needed."
    TokenRevoked,
    /// Attribute `reason`: `hijacking`, `bulk-account`, or none.
    AccountDisabled,
    AccountEnabled,
    AccountCredentialChangeRequired,
    /// Attribute `state`: "Log that a test token was received."
    Verification,
    /// Any other event type: acknowledged, recorded, not acted on.
    Unsupported,
}

impl EventType {
    pub const SUPPORTED: [EventType; 7] = [
        EventType::SessionsRevoked,
        EventType::TokensRevoked,
        EventType::TokenRevoked,
        EventType::AccountDisabled,
        EventType::AccountEnabled,
        EventType::AccountCredentialChangeRequired,
        EventType::Verification,
    ];

    /// The event type URI; `None` for [`EventType::Unsupported`].
    pub fn uri(self) -> Option<&'static str> {
        Some(match self {
            EventType::SessionsRevoked => {
                "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked"
            }
            EventType::TokensRevoked => {
                "https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked"
            }
            EventType::TokenRevoked => {
                "https://schemas.openid.net/secevent/oauth/event-type/token-revoked"
            }
            EventType::AccountDisabled => {
                "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
            }
            EventType::AccountEnabled => {
                "https://schemas.openid.net/secevent/risc/event-type/account-enabled"
            }
            EventType::AccountCredentialChangeRequired => {
                "https://schemas.openid.net/secevent/risc/event-type/account-credential-change-required"
            }
            EventType::Verification => {
                "https://schemas.openid.net/secevent/risc/event-type/verification"
            }
            EventType::Unsupported => return None,
        })
    }

    pub fn from_uri(uri: &str) -> EventType {
        EventType::SUPPORTED
            .into_iter()
            .find(|t| t.uri() == Some(uri))
            .unwrap_or(EventType::Unsupported)
    }

    /// The last segment of the URI (`account-disabled`), or `unsupported`.
    pub fn name(self) -> &'static str {
        self.uri()
            .and_then(|u| u.rsplit('/').next())
            .unwrap_or("unsupported")
    }
}

/// How a token-revoked event names the token (the page's "OAuth token identifiers").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenIdentifierAlg {
    /// "The first 16 characters of the token."
    Prefix,
    /// "The double hash of the token using SHA-512", base64: see [`hash_base64_sha512_sha512`].
    HashBase64Sha512Sha512,
    Other(String),
}

/// Whom (or what) an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `iss-sub` / `iss_sub`: the Google account `sub` of issuer `iss`.
    IssSub { iss: String, sub: String },
    /// `id_token_claims`: the account `sub`, perhaps with its `email`.
    IdTokenClaims { sub: String, email: Option<String> },
    /// `oauth_token`: one token, by identifier. "token_type: Only refresh_token is supported."
    Token {
        token_type: String,
        alg: TokenIdentifierAlg,
        token: String,
    },
    /// A subject format we do not know: recorded, not acted on.
    Other { format: String },
}

impl Subject {
    /// The Google account the subject names directly, if it names one.
    pub fn account(&self) -> Option<&str> {
        match self {
            Subject::IssSub { sub, .. } | Subject::IdTokenClaims { sub, .. } => Some(sub),
            _ => None,
        }
    }
}

/// The one event of a verified SET.
#[derive(Debug, Clone)]
pub struct SetEvent {
    pub event_type: EventType,
    pub uri: String,
    pub subject: Option<Subject>,
    /// The subject object as sent (a token subject holds a hash or a prefix, never a token).
    pub subject_json: Option<Value>,
    /// account-disabled's `reason`.
    pub reason: Option<String>,
    /// verification's `state`.
    pub state: Option<String>,
}

/// A SET that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedSet {
    /// The configuration document's issuer, which `iss` equals.
    pub issuer: String,
    pub jti: String,
    /// Seconds since the epoch.
    pub iat: i64,
    /// Which of our client ids it was for.
    pub audience: String,
    pub event: SetEvent,
}

/// Why a SET was refused; [`SetError::code`] is the RFC 8935 §2.4 error code answered with
/// HTTP 400, except [`SetError::Upstream`] (our fetch of Google's documents failed: 503, so
/// Google delivers again later).
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("the body is not a security event token: {0}")]
    Malformed(&'static str),
    #[error("the security event token must be signed with RS256")]
    Algorithm,
    #[error("the security event token is signed with an unknown key ({})", super::id_token::describe_kid(.0))]
    UnknownKey(String),
    #[error("the security event token's signature does not verify")]
    BadSignature,
    #[error("the security event token's issuer is not Google's RISC issuer")]
    Issuer,
    #[error("the security event token is not for one of this server's OAuth clients")]
    Audience,
    #[error("the security event token's iat is {0}")]
    IssuedAt(&'static str),
    #[error("the security event token's event is invalid: {0}")]
    Event(&'static str),
    #[error("cannot fetch Google's RISC configuration or keys: {0}")]
    Upstream(#[from] GoogleError),
}

impl SetError {
    /// The RFC 8935 §2.4 error code (`err`) of the 400 answer.
    pub fn code(&self) -> &'static str {
        match self {
            SetError::Malformed(_)
            | SetError::Algorithm
            | SetError::IssuedAt(_)
            | SetError::Event(_) => "invalid_request",
            SetError::UnknownKey(_) => "invalid_key",
            SetError::BadSignature => "authentication_failed",
            SetError::Issuer => "invalid_issuer",
            SetError::Audience => "invalid_audience",
            SetError::Upstream(_) => "unavailable",
        }
    }

    /// Not the SET's fault: Google's documents could not be fetched.
    pub fn is_upstream(&self) -> bool {
        matches!(self, SetError::Upstream(_))
    }
}

/// What the receiver checks SETs against.
#[derive(Debug, Clone)]
pub struct SetPolicy {
    /// Our OAuth client ids: the web client and the Android clients.
    pub audiences: Vec<String>,
    /// SETs issued longer ago are refused (`[risc] max_event_age`).
    pub max_age: Duration,
}

/// The configuration document's parts we use, with the key cache of its `jwks_uri`.
struct Discovered {
    issuer: String,
    keys: Arc<KeyCache>,
    fetched_at: Instant,
    max_age: Duration,
}

pub struct SetVerifier {
    http: reqwest::Client,
    configuration_uri: String,
    policy: RwLock<Arc<SetPolicy>>,
    discovered: RwLock<Option<Arc<Discovered>>>,
    /// Held while fetching the configuration, so concurrent misses share one fetch.
    fetch_lock: Mutex<()>,
    fetches: governor::DefaultDirectRateLimiter,
}

/// The claims read after jsonwebtoken checked `iss`, `aud` and the signature.
#[derive(Deserialize)]
struct SetClaims {
    iat: i64,
    jti: String,
    aud: Value,
    events: Map<String, Value>,
}

impl SetVerifier {
    pub fn new(http: reqwest::Client, configuration_uri: String, policy: SetPolicy) -> Self {
        SetVerifier {
            http,
            configuration_uri,
            policy: RwLock::new(Arc::new(policy)),
            discovered: RwLock::new(None),
            fetch_lock: Mutex::new(()),
            fetches: governor::RateLimiter::direct(governor::Quota::per_minute(
                std::num::NonZeroU32::new(CONFIG_FETCHES_PER_MINUTE)
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )),
        }
    }

    /// New client ids (a reload of `[google] android_client_ids`).
    pub fn set_audiences(&self, audiences: Vec<String>) {
        let mut policy = (**self.policy.read()).clone();
        policy.audiences = audiences;
        *self.policy.write() = Arc::new(policy);
    }

    /// Verifies `token` (a compact JWS) as the page asks, plus the checks listed above.
    pub async fn verify(&self, token: &str) -> Result<VerifiedSet, SetError> {
        // decode_header refuses "none" and unknown algorithms; RS256 is then insisted on, so an
        // HS256 token "signed" with a public key never reaches an HMAC check.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| SetError::Malformed("not a signed JWT"))?;
        if header.alg != Algorithm::RS256 {
            return Err(SetError::Algorithm);
        }
        let kid = header.kid.ok_or(SetError::Malformed("no key id (kid)"))?;
        let discovered = self.discovered().await?;
        let key = discovered.keys.key_for(&kid).await.map_err(|e| match e {
            KeyError::Unknown => SetError::UnknownKey(kid.clone()),
            KeyError::Fetch(e) => SetError::Upstream(e),
        })?;
        let policy = self.policy.read().clone();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&issuers(&discovered.issuer));
        validation.set_audience(&policy.audiences);
        // "You don't need to verify the token's expiration (exp)": SETs do not expire.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["iss", "aud"]);
        let claims = jsonwebtoken::decode::<SetClaims>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => SetError::BadSignature,
                    ErrorKind::InvalidIssuer => SetError::Issuer,
                    ErrorKind::InvalidAudience => SetError::Audience,
                    ErrorKind::MissingRequiredClaim(c) if c == "aud" => SetError::Audience,
                    ErrorKind::MissingRequiredClaim(_) => SetError::Issuer,
                    _ => SetError::Malformed("the claims are not a security event token's"),
                }
            })?
            .claims;
        check_iat(claims.iat, &policy)?;
        if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_LEN {
            return Err(SetError::Malformed(
                "jti must be a string of 1 to 256 bytes",
            ));
        }
        let audience =
            matched_audience(&claims.aud, &policy.audiences).ok_or(SetError::Audience)?;
        Ok(VerifiedSet {
            issuer: discovered.issuer.clone(),
            jti: claims.jti,
            iat: claims.iat,
            audience,
            event: parse_events(claims.events)?,
        })
    }

    /// The configuration document, from the cache while fresh; refetched when stale (at most
    /// [`CONFIG_FETCHES_PER_MINUTE`]); a stale one serves while Google cannot be reached.
    async fn discovered(&self) -> Result<Arc<Discovered>, SetError> {
        let fresh = |d: &Option<Arc<Discovered>>| {
            d.as_ref()
                .filter(|d| d.fetched_at.elapsed() < d.max_age)
                .cloned()
        };
        if let Some(d) = fresh(&self.discovered.read()) {
            return Ok(d);
        }
        let _guard = self.fetch_lock.lock().await;
        let cached = self.discovered.read().clone();
        if let Some(d) = fresh(&cached) {
            return Ok(d);
        }
        if self.fetches.check().is_err() {
            return cached.ok_or(SetError::Upstream(GoogleError::Unavailable {
                endpoint: "risc_configuration",
                status: 0,
                retry_after: None,
            }));
        }
        match self.fetch_configuration(cached.as_deref()).await {
            Ok(d) => {
                let d = Arc::new(d);
                *self.discovered.write() = Some(d.clone());
                Ok(d)
            }
            Err(e) => match cached {
                Some(stale) => {
                    tracing::warn!(error = %e, "cannot refresh Google's RISC configuration; using the cached one");
                    Ok(stale)
                }
                None => Err(SetError::Upstream(e)),
            },
        }
    }

    async fn fetch_configuration(
        &self,
        previous: Option<&Discovered>,
    ) -> Result<Discovered, GoogleError> {
        const ENDPOINT: &str = "risc_configuration";
        #[derive(Deserialize)]
        struct Document {
            issuer: String,
            jwks_uri: String,
        }
        let resp = self
            .http
            .get(&self.configuration_uri)
            .send()
            .await
            .map_err(|e| {
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
        let max_age = super::jwks::max_age(resp.headers()).unwrap_or(DEFAULT_CONFIG_MAX_AGE);
        let body = super::read_capped(ENDPOINT, resp, 64 * 1024).await?;
        let doc: Document =
            serde_json::from_slice(&body).map_err(|e| super::malformed(ENDPOINT, &e))?;
        if doc.issuer.is_empty() || url::Url::parse(&doc.jwks_uri).is_err() {
            return Err(GoogleError::Malformed {
                endpoint: ENDPOINT,
                reason: "no issuer, or a jwks_uri that is not a URL".into(),
            });
        }
        // Keep the key cache (and its keys) while the key set stays where it was.
        let keys = match previous {
            Some(p) if p.keys.uri() == doc.jwks_uri => p.keys.clone(),
            _ => Arc::new(KeyCache::new(self.http.clone(), doc.jwks_uri, "risc_jwks")),
        };
        Ok(Discovered {
            issuer: doc.issuer,
            keys,
            fetched_at: Instant::now(),
            max_age,
        })
    }
}

/// The configuration's issuer, with and without a trailing slash: Google's live document says
/// `https://accounts.google.com`, the page's example SET `https://accounts.google.com/`. Both
/// name the same authority, and refusing Google's real SETs over a slash would lose them.
pub fn issuers(issuer: &str) -> [String; 2] {
    let bare = issuer.trim_end_matches('/');
    [bare.to_string(), format!("{bare}/")]
}

fn check_iat(iat: i64, policy: &SetPolicy) -> Result<(), SetError> {
    let now = chrono::Utc::now().timestamp();
    if iat > now.saturating_add(FUTURE_IAT_LEEWAY.as_secs() as i64) {
        return Err(SetError::IssuedAt("in the future"));
    }
    let max_age = i64::try_from(policy.max_age.as_secs()).unwrap_or(i64::MAX);
    if iat < now.saturating_sub(max_age) {
        return Err(SetError::IssuedAt("older than [risc] max_event_age"));
    }
    Ok(())
}

/// The first of our client ids `aud` names (a string, or an array of strings).
fn matched_audience(aud: &Value, ours: &[String]) -> Option<String> {
    let named: Vec<&str> = match aud {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    named
        .into_iter()
        .find(|a| ours.iter().any(|o| o == a))
        .map(String::from)
}

/// The `events` claim: exactly one event, an object; its subject and attributes read.
fn parse_events(events: Map<String, Value>) -> Result<SetEvent, SetError> {
    if events.len() != 1 {
        return Err(SetError::Event("events must hold exactly one event"));
    }
    let Some((uri, Value::Object(body))) = events.into_iter().next() else {
        return Err(SetError::Event("the event must be a JSON object"));
    };
    let event_type = EventType::from_uri(&uri);
    let text = |key: &str| -> Result<Option<String>, SetError> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(SetError::Event("an attribute is not a string")),
        }
    };
    let subject_json = body.get("subject").cloned();
    let subject = subject_json.as_ref().map(parse_subject).transpose()?;
    let needs_subject = !matches!(event_type, EventType::Verification | EventType::Unsupported);
    if needs_subject && subject.is_none() {
        return Err(SetError::Event("the event has no subject"));
    }
    Ok(SetEvent {
        event_type,
        reason: text("reason")?,
        state: text("state")?,
        uri,
        subject,
        subject_json,
    })
}

fn parse_subject(value: &Value) -> Result<Subject, SetError> {
    let Value::Object(o) = value else {
        return Err(SetError::Event("the subject is not an object"));
    };
    let field = |key: &str| o.get(key).and_then(Value::as_str).map(str::to_string);
    let required = |key: &str| {
        field(key)
            .filter(|v| !v.is_empty())
            .ok_or(SetError::Event("the subject lacks a required member"))
    };
    let format = field("subject_type")
        .or_else(|| field("format"))
        .ok_or(SetError::Event("the subject has no subject_type"))?;
    Ok(match format.as_str() {
        "iss-sub" | "iss_sub" => Subject::IssSub {
            iss: required("iss")?,
            sub: required("sub")?,
        },
        "id_token_claims" => Subject::IdTokenClaims {
            sub: required("sub")?,
            email: field("email"),
        },
        "oauth_token" => Subject::Token {
            token_type: required("token_type")?,
            alg: match required("token_identifier_alg")?.as_str() {
                "prefix" => TokenIdentifierAlg::Prefix,
                "hash_base64_sha512_sha512" => TokenIdentifierAlg::HashBase64Sha512Sha512,
                other => TokenIdentifierAlg::Other(other.to_string()),
            },
            token: required("token")?,
        },
        _ => Subject::Other { format },
    })
}

/// Google's `hash_base64_sha512_sha512` of `value`: base64 (standard alphabet, padded) of
/// SHA-512 of SHA-512 of its UTF-8 bytes. Stored for the refresh token (and for its first 16
/// characters) so a token-revoked event can be matched without keeping the token in clear.
pub fn hash_base64_sha512_sha512(value: &str) -> String {
    let inner = Sha512::digest(value.as_bytes());
    STANDARD.encode(Sha512::digest(inner))
}

/// What the stored refresh token is known by in token-revoked events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenIds {
    /// [`hash_base64_sha512_sha512`] of the token.
    pub hash: String,
    /// [`hash_base64_sha512_sha512`] of its first 16 characters (the `prefix` identifier).
    pub prefix_hash: String,
}

impl RefreshTokenIds {
    pub fn of(token: &str) -> RefreshTokenIds {
        let prefix: String = token.chars().take(16).collect();
        RefreshTokenIds {
            hash: hash_base64_sha512_sha512(token),
            prefix_hash: hash_base64_sha512_sha512(&prefix),
        }
    }
}

/// Which stored identifier a token subject is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLookup {
    /// Compare with [`RefreshTokenIds::hash`].
    Hash(String),
    /// Compare with [`RefreshTokenIds::prefix_hash`].
    PrefixHash(String),
}

impl TokenLookup {
    /// The stored identifier that matches the subject's token, or `None` when the subject can
    /// match no refresh token of ours (another token type or algorithm, a malformed hash).
    pub fn from_subject(token_type: &str, alg: &TokenIdentifierAlg, token: &str) -> Option<Self> {
        if token_type != "refresh_token" {
            return None;
        }
        match alg {
            TokenIdentifierAlg::Prefix => (token.chars().count() <= 16)
                .then(|| Self::PrefixHash(hash_base64_sha512_sha512(token))),
            TokenIdentifierAlg::HashBase64Sha512Sha512 => {
                // Standard or URL-safe alphabet, padded or not: compared as the 64 bytes.
                let lenient = |alphabet| {
                    GeneralPurpose::new(
                        alphabet,
                        GeneralPurposeConfig::new()
                            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
                    )
                };
                let bytes = lenient(&base64::alphabet::STANDARD)
                    .decode(token)
                    .or_else(|_| lenient(&base64::alphabet::URL_SAFE).decode(token))
                    .ok()?;
                (bytes.len() == 64).then(|| Self::Hash(STANDARD.encode(bytes)))
            }
            TokenIdentifierAlg::Other(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_types_round_trip_through_their_uris() {
        for t in EventType::SUPPORTED {
            assert_eq!(EventType::from_uri(t.uri().unwrap()), t);
        }
        assert_eq!(EventType::AccountDisabled.name(), "account-disabled");
        assert_eq!(
            EventType::from_uri(
                "https://schemas.openid.net/secevent/risc/event-type/account-purged"
            ),
            EventType::Unsupported
        );
    }

    #[test]
    fn subjects_are_read_in_googles_and_rfc_9493s_spellings() {
        let google =
            json!({"subject_type": "iss-sub", "iss": "https://accounts.google.com/", "sub": "7"});
        let rfc = json!({"format": "iss_sub", "iss": "https://accounts.google.com", "sub": "7"});
        for s in [google, rfc] {
            assert_eq!(parse_subject(&s).unwrap().account(), Some("7"));
        }
        let claims = json!({"subject_type": "id_token_claims", "sub": "8", "email": "a@b"});
        assert_eq!(
            parse_subject(&claims).unwrap(),
            Subject::IdTokenClaims {
                sub: "8".into(),
                email: Some("a@b".into())
            }
        );
        assert!(parse_subject(&json!({"subject_type": "iss-sub", "iss": "x"})).is_err());
        assert!(parse_subject(&json!("7")).is_err());
    }

    #[test]
    fn a_token_hash_matches_in_either_base64_alphabet_and_a_prefix_by_its_hash() {
        // Made up, shaped like a Google refresh token; not a credential.
        let token = "1//0gAbCdEfGhIjKlMnOpQrStUvWxYz-_0123456789";
        let ids = RefreshTokenIds::of(token);
        let raw = STANDARD.decode(&ids.hash).unwrap();
        assert_eq!(raw.len(), 64);
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        for sent in [ids.hash.clone(), url_safe] {
            assert_eq!(
                TokenLookup::from_subject(
                    "refresh_token",
                    &TokenIdentifierAlg::HashBase64Sha512Sha512,
                    &sent
                ),
                Some(TokenLookup::Hash(ids.hash.clone()))
            );
        }
        assert_eq!(
            TokenLookup::from_subject("refresh_token", &TokenIdentifierAlg::Prefix, &token[..16]),
            Some(TokenLookup::PrefixHash(ids.prefix_hash))
        );
        assert_eq!(
            TokenLookup::from_subject("access_token", &TokenIdentifierAlg::Prefix, &token[..16]),
            None
        );
        assert_eq!(
            TokenLookup::from_subject(
                "refresh_token",
                &TokenIdentifierAlg::HashBase64Sha512Sha512,
                "AAAA"
            ),
            None
        );
    }

    #[test]
    fn exactly_one_event_with_a_subject_is_required() {
        let two = json!({"a": {}, "b": {}});
        let Value::Object(two) = two else {
            unreachable!()
        };
        assert!(parse_events(two).is_err());
        let uri = EventType::TokensRevoked.uri().unwrap();
        let Value::Object(bare) = json!({ uri: {} }) else {
            unreachable!()
        };
        assert!(parse_events(bare).is_err());
        let verification = EventType::Verification.uri().unwrap();
        let Value::Object(v) = json!({ verification: {"state": "s"} }) else {
            unreachable!()
        };
        assert_eq!(parse_events(v).unwrap().state.as_deref(), Some("s"));
    }
}
