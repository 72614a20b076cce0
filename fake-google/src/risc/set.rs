//! Security event tokens as Google's page shows them ("Handle security events"):
//!
//! ```json
//! { "iss": "https://accounts.google.com/", "aud": "123456789-abcedfgh.apps.googleusercontent.com",
//!   "iat": 1508184845, "jti": "756E69717565206964656E746966696572",
//!   "events": { "https://schemas.openid.net/secevent/risc/event-type/account-disabled": {
//!       "subject": { "subject_type": "iss-sub", "iss": "https://accounts.google.com/", "sub": "7375626A656374" },
//!       "reason": "hijacking" } } }
//! ```
//!
//! signed RS256 with a key of the configuration document's `jwks_uri`. The SET's `iss` is the
//! configuration document's issuer exactly (what receivers compare it with); the subject's
//! `iss` keeps the page's trailing slash. A token subject is the page's "OAuth token
//! identifiers": `token_type` `refresh_token`, `token_identifier_alg` `prefix` (the first 16
//! characters) or `hash_base64_sha512_sha512` (base64 of SHA-512 of SHA-512 of the token).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine;
use rsa::sha2::{Digest, Sha512};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::ISSUER;
use crate::keys::SigningKey;
use crate::{ids, Emulator, Error};

/// The event types of the page's "Supported event types" table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RiscEvent {
    SessionsRevoked,
    TokensRevoked,
    TokenRevoked,
    AccountDisabled,
    AccountEnabled,
    AccountCredentialChangeRequired,
    Verification,
}

impl RiscEvent {
    pub const ALL: [RiscEvent; 7] = [
        RiscEvent::SessionsRevoked,
        RiscEvent::TokensRevoked,
        RiscEvent::TokenRevoked,
        RiscEvent::AccountDisabled,
        RiscEvent::AccountEnabled,
        RiscEvent::AccountCredentialChangeRequired,
        RiscEvent::Verification,
    ];

    pub fn uri(self) -> &'static str {
        match self {
            RiscEvent::SessionsRevoked => {
                "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked"
            }
            RiscEvent::TokensRevoked => {
                "https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked"
            }
            RiscEvent::TokenRevoked => {
                "https://schemas.openid.net/secevent/oauth/event-type/token-revoked"
            }
            RiscEvent::AccountDisabled => {
                "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
            }
            RiscEvent::AccountEnabled => {
                "https://schemas.openid.net/secevent/risc/event-type/account-enabled"
            }
            RiscEvent::AccountCredentialChangeRequired => {
                "https://schemas.openid.net/secevent/risc/event-type/account-credential-change-required"
            }
            RiscEvent::Verification => {
                "https://schemas.openid.net/secevent/risc/event-type/verification"
            }
        }
    }

    pub fn name(self) -> &'static str {
        self.uri().rsplit('/').next().unwrap_or_default()
    }
}

/// How the subject names the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectFormat {
    /// `{"subject_type": "iss-sub", "iss": ..., "sub": ...}` (the page's example).
    IssSub,
    /// `{"subject_type": "id_token_claims", "sub": ..., "email": ...}`.
    IdTokenClaims,
    /// `{"subject_type": "oauth_token", "token_type": "refresh_token", ...}`: token-revoked's.
    OauthToken,
}

/// Ways to forge a SET that a receiver must refuse (or, for a replay, ignore).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetForgery {
    /// Signed by a key that is not in the RISC JWKS, under the current key's `kid`.
    WrongKey,
    /// Properly signed, under a `kid` that is in no JWKS.
    UnknownKid,
    /// `iss` is not Google's.
    WrongIssuer,
    /// `aud` is some other client.
    WrongAudience,
    /// Header `alg: none`, empty signature.
    AlgNone,
    /// HS256, HMAC keyed with the current public key's PEM.
    Hs256PublicKey,
    /// `iat` 30 days ago (older than any receiver's limit on event age).
    ExpiredIat,
    /// `iat` an hour in the future.
    FutureIat,
    /// Payload swapped (another `sub`) after signing.
    TamperedPayload,
    /// Properly signed, but no `events` claim: shaped like an ID token.
    NoEvents,
}

/// What `emit_risc_event` takes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmitEvent {
    /// The Google account the event is about (ignored for verification events).
    #[serde(default)]
    pub sub: String,
    pub event: RiscEvent,
    /// account-disabled: `hijacking`, `bulk-account`; absent: none given.
    #[serde(default)]
    pub reason: Option<String>,
    /// verification's `state`.
    #[serde(default)]
    pub state: Option<String>,
    /// Default: `oauth_token` for token-revoked, `iss_sub` otherwise.
    #[serde(default)]
    pub subject_format: Option<SubjectFormat>,
    /// `prefix` or `hash_base64_sha512_sha512` (the default).
    #[serde(default)]
    pub token_identifier_alg: Option<String>,
    /// The refresh token a token subject identifies. Default: the user's newest one.
    #[serde(default)]
    pub token: Option<String>,
    /// Default: the web client id.
    #[serde(default)]
    pub audience: Option<String>,
    /// Default: a fresh one. Give an earlier event's to model a replay with a new signature.
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default)]
    pub forgery: Option<SetForgery>,
    /// Seconds added to `iat` (negative: an event that happened earlier and is delivered
    /// late, as after Google's retries).
    #[serde(default)]
    pub iat_offset_s: Option<i64>,
    /// Whether the emulator also does what the event reports, as Google would have: a
    /// tokens-revoked event revokes the user's grants, a token-revoked one the grant of the
    /// token it names. Default true (never for a forgery).
    #[serde(default)]
    pub revoke_grants: Option<bool>,
}

impl EmitEvent {
    pub fn new(sub: &str, event: RiscEvent) -> EmitEvent {
        EmitEvent {
            sub: sub.to_string(),
            event,
            reason: None,
            state: None,
            subject_format: None,
            token_identifier_alg: None,
            token: None,
            audience: None,
            jti: None,
            forgery: None,
            iat_offset_s: None,
            revoke_grants: None,
        }
    }

    /// Reports the event without doing it: the user's grants stay as they are.
    pub fn no_side_effects(mut self) -> Self {
        self.revoke_grants = Some(false);
        self
    }

    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_string());
        self
    }

    pub fn forged(mut self, forgery: SetForgery) -> Self {
        self.forgery = Some(forgery);
        self
    }
}

/// A SET the emulator sent (or queued): its `jti` and the compact JWS.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Emitted {
    pub jti: String,
    pub set: String,
}

/// base64 of SHA-512 of SHA-512 of `token` (the page: "The double hash of the token using
/// SHA-512"), standard alphabet, padded.
pub fn hash_base64_sha512_sha512(token: &str) -> String {
    STANDARD.encode(Sha512::digest(Sha512::digest(token.as_bytes())))
}

impl Emulator {
    /// The event object (`events[URI]`) of `e`.
    fn event_body(&self, e: &EmitEvent) -> Result<Value, Error> {
        if e.event == RiscEvent::Verification {
            return Ok(json!({ "state": e.state.clone().unwrap_or_default() }));
        }
        let account = self.account(&e.sub)?;
        let default_format = match e.event {
            RiscEvent::TokenRevoked => SubjectFormat::OauthToken,
            _ => SubjectFormat::IssSub,
        };
        let subject = match e.subject_format.unwrap_or(default_format) {
            SubjectFormat::IssSub => {
                json!({"subject_type": "iss-sub", "iss": format!("{ISSUER}/"), "sub": e.sub})
            }
            SubjectFormat::IdTokenClaims => {
                json!({"subject_type": "id_token_claims", "sub": e.sub, "email": account.user.email})
            }
            SubjectFormat::OauthToken => {
                let token = match &e.token {
                    Some(t) => t.clone(),
                    None => self.newest_refresh_token(&account).ok_or_else(|| {
                        Error::Invalid(format!("{} holds no refresh token to identify", e.sub))
                    })?,
                };
                let alg = e
                    .token_identifier_alg
                    .clone()
                    .unwrap_or_else(|| "hash_base64_sha512_sha512".into());
                let value = match alg.as_str() {
                    "prefix" => token.chars().take(16).collect(),
                    _ => hash_base64_sha512_sha512(&token),
                };
                json!({"subject_type": "oauth_token", "token_type": "refresh_token",
                       "token_identifier_alg": alg, "token": value})
            }
        };
        let mut body = json!({ "subject": subject });
        if let Some(reason) = &e.reason {
            body["reason"] = reason.clone().into();
        }
        Ok(body)
    }

    /// Mints the SET for `e`, forged as it asks.
    pub(crate) fn mint_set(&self, e: &EmitEvent) -> Result<Emitted, Error> {
        let jti = e.jti.clone().unwrap_or_else(|| ids::url_safe(32));
        let now = chrono::Utc::now().timestamp() + e.iat_offset_s.unwrap_or(0);
        let mut claims = json!({
            "iss": ISSUER,
            "aud": e.audience.clone().unwrap_or_else(|| self.clients.web_client_id.clone()),
            "iat": now,
            "jti": jti,
            "events": { e.event.uri(): self.event_body(e)? },
        });
        let key = self.risc.with_keys(|k| k.current());
        let set = match e.forgery {
            None => key.sign_any(&key.kid, &claims),
            Some(forgery) => self.forge(&key, &mut claims, forgery),
        };
        Ok(Emitted { jti, set })
    }

    fn forge(&self, key: &SigningKey, claims: &mut Value, forgery: SetForgery) -> String {
        use SetForgery::*;
        let day = 86_400;
        match forgery {
            WrongKey => {
                let other = self.risc_outcast_key();
                other.sign_any(&key.kid, claims)
            }
            UnknownKid => key.sign_any(&format!("{}0", &ids::kid()[1..]), claims),
            WrongIssuer => {
                claims["iss"] = "https://accounts.evil.example.com".into();
                key.sign_any(&key.kid, claims)
            }
            WrongAudience => {
                claims["aud"] = "000000000000-wrongaudience.apps.googleusercontent.com".into();
                key.sign_any(&key.kid, claims)
            }
            AlgNone => {
                let header = json!({ "alg": "none", "kid": key.kid, "typ": "JWT" });
                format!(
                    "{}.{}.",
                    B64.encode(header.to_string()),
                    B64.encode(claims.to_string())
                )
            }
            Hs256PublicKey => key.hs256_with_public_pem(claims),
            ExpiredIat => {
                claims["iat"] = (chrono::Utc::now().timestamp() - 30 * day).into();
                key.sign_any(&key.kid, claims)
            }
            FutureIat => {
                claims["iat"] = (chrono::Utc::now().timestamp() + 3600).into();
                key.sign_any(&key.kid, claims)
            }
            TamperedPayload => {
                let jwt = key.sign_any(&key.kid, claims);
                let mut parts: Vec<String> = jwt.split('.').map(String::from).collect();
                let text = claims.to_string().replace("\"sub\":\"", "\"sub\":\"9");
                parts[1] = B64.encode(text);
                parts.join(".")
            }
            NoEvents => {
                if let Some(o) = claims.as_object_mut() {
                    o.remove("events");
                    o.insert("sub".into(), "1".into());
                    o.insert("exp".into(), (chrono::Utc::now().timestamp() + 3600).into());
                }
                key.sign_any(&key.kid, claims)
            }
        }
    }

    /// A key that is not (or no longer) in the RISC JWKS.
    fn risc_outcast_key(&self) -> std::sync::Arc<SigningKey> {
        if let Some(k) = self.risc.with_keys(|k| k.outcast()) {
            return k;
        }
        let key = SigningKey::generate().expect("RSA key generation");
        self.risc.with_keys(|k| k.set_outcast(key))
    }

    /// The RISC JWKS document.
    pub(crate) fn risc_jwks(&self) -> Value {
        self.risc.with_keys(|k| k.jwks())
    }

    /// A new SET signing key; the old one stays in the RISC JWKS for `grace`.
    pub fn rotate_risc_keys(&self, grace: std::time::Duration) {
        let next = SigningKey::generate().expect("RSA key generation");
        self.risc
            .with_keys(|k| k.rotate(next, std::time::Instant::now() + grace));
    }
}
