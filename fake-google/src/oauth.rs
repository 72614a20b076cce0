//! OAuth 2.0: auth codes, grants, refresh and access tokens, and their revocation.
//!
//! A [`Grant`] is one consent of one user to one client: it owns one refresh token, and every
//! access token minted under it holds an `Arc` to it, so revoking the grant (one flag) kills
//! them all at once without scanning. Expiring all tokens of a user (or everyone) bumps an
//! epoch that tokens compare against, also O(1).
//!
//! Google's token endpoint: <https://developers.google.com/identity/protocols/oauth2/web-server#exchange-authorization-code>

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::emulator::Account;
use crate::keys::{self, Claims, IdTokenAttack, SigningKey};
use crate::{ids, Emulator, Error};

pub(crate) const DRIVE_APPDATA: &str = "https://www.googleapis.com/auth/drive.appdata";
pub(crate) const DRIVE: &str = "https://www.googleapis.com/auth/drive";
pub(crate) const USERINFO_EMAIL: &str = "https://www.googleapis.com/auth/userinfo.email";
pub(crate) const USERINFO_PROFILE: &str = "https://www.googleapis.com/auth/userinfo.profile";
const CODE_LIFETIME: Duration = Duration::from_secs(600);
/// "The refresh token has not been used for six months" ends it
/// (<https://developers.google.com/identity/protocols/oauth2#expiration>). Six months is taken
/// as 180 days, the shortest reading.
const REFRESH_IDLE_LIMIT: Duration = Duration::from_secs(180 * 24 * 3600);
/// "There is currently a limit of 100 refresh tokens per Google Account per OAuth 2.0 client
/// ID. If the limit is reached, creating a new refresh token automatically invalidates the
/// oldest refresh token without warning." (same page)
const REFRESH_TOKENS_PER_ACCOUNT: usize = 100;

/// A scope as Google reports it in token responses: full URLs for the userinfo scopes, which
/// the short OpenID names `email` and `profile` stand for, and for API scopes given short
/// (`drive.appdata`); `openid` stays as it is
/// (<https://developers.google.com/identity/protocols/oauth2/scopes#oauth2>,
/// <https://developers.google.com/identity/protocols/oauth2/web-server#exchange-authorization-code>:
/// `scope` is "the scopes of access granted by the access_token").
pub(crate) fn normalise_scope(s: &str) -> String {
    match s {
        "openid" => s.to_string(),
        "email" => USERINFO_EMAIL.to_string(),
        "profile" => USERINFO_PROFILE.to_string(),
        s if s.contains("://") => s.to_string(),
        s => format!("https://www.googleapis.com/auth/{s}"),
    }
}

/// Only sign-in scopes: exempt from the 7-day expiry of "Testing" consent screens.
fn identity_only(scopes: &[String]) -> bool {
    scopes
        .iter()
        .all(|s| s == "openid" || s == USERINFO_EMAIL || s == USERINFO_PROFILE)
}

/// What `mint_auth_code` takes: what the Android app asks Google Sign-In for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MintCode {
    pub sub: String,
    /// The Android client the code is for; `None` means the emulator's Android client.
    pub client_id: Option<String>,
    /// Granted scopes; default openid, email, profile and drive.appdata. Short names are
    /// accepted and reported as Google does (`email` → `…/auth/userinfo.email`, …).
    pub scopes: Option<Vec<String>>,
    /// Forces a new refresh token even if the user already consented.
    pub prompt_consent: bool,
    /// What the code is bound to; default "" (the Android case).
    pub redirect_uri: Option<String>,
    pub id_token_attack: Option<IdTokenAttack>,
}

/// A user signed in by `Emulator::bulk_sign_in`: what the daemon would hold after the code
/// exchange, and where the user's changes feed starts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BulkUser {
    pub sub: String,
    pub refresh_token: String,
    pub access_token: String,
    /// Seconds, as the token endpoint's `expires_in`.
    pub expires_in: u64,
    /// Space-separated, as the token endpoint reports them.
    pub scope: String,
    pub start_page_token: String,
}

pub(crate) struct PendingCode {
    account: Arc<Account>,
    azp: String,
    web_client_id: String,
    scopes: Vec<String>,
    prompt_consent: bool,
    redirect_uri: String,
    attack: Option<IdTokenAttack>,
    expires_at: Instant,
}

pub(crate) struct Grant {
    pub(crate) account: Arc<Account>,
    azp: String,
    scopes: Mutex<Vec<String>>,
    refresh_token: String,
    pub(crate) revoked: AtomicBool,
    /// When the refresh token stops working by age (`set_refresh_token_lifetime`).
    refresh_expires_at: Option<Instant>,
    /// Last issue or use of the refresh token, for the six-month idle limit.
    refresh_last_used: Mutex<Instant>,
}

#[derive(Clone)]
pub(crate) struct AccessToken {
    pub(crate) grant: Arc<Grant>,
    pub(crate) drive_scope: bool,
    expires_at: Instant,
    user_epoch: u64,
    global_epoch: u64,
}

/// An OAuth error body: `{"error": "...", "error_description": "..."}`.
#[derive(Debug, Clone)]
pub(crate) struct OAuthError {
    pub(crate) status: StatusCode,
    pub(crate) error: &'static str,
    pub(crate) description: String,
}

impl OAuthError {
    pub(crate) fn new(status: StatusCode, error: &'static str, d: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: d.into(),
        }
    }

    fn grant(d: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", d)
    }

    fn missing(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("Missing required parameter: {param}"),
        )
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({ "error": self.error, "error_description": self.description });
        (self.status, Json(body)).into_response()
    }
}

/// The result of a successful `/token` call.
pub(crate) struct Issued {
    pub(crate) body: serde_json::Value,
}

fn has_drive(scopes: &[String]) -> bool {
    scopes.iter().any(|s| s == DRIVE_APPDATA || s == DRIVE)
}

fn has_openid(scopes: &[String]) -> bool {
    scopes.iter().any(|s| s == "openid")
}

impl Emulator {
    /// Mints what the Android app's `getServerAuthCode()` would return.
    pub fn mint_auth_code(&self, req: MintCode) -> Result<String, Error> {
        let account = self.account(&req.sub)?;
        let azp = req
            .client_id
            .unwrap_or_else(|| self.clients.android_client_id.clone());
        if azp != self.clients.android_client_id && azp != self.clients.web_client_id {
            return Err(Error::UnknownClient(azp));
        }
        let scopes: Vec<String> = req
            .scopes
            .unwrap_or_else(|| {
                ["openid", "email", "profile", DRIVE_APPDATA]
                    .map(String::from)
                    .to_vec()
            })
            .iter()
            .map(|s| normalise_scope(s))
            .collect();
        let code = ids::auth_code();
        self.record_secret(&code);
        self.codes.lock().insert(
            code.clone(),
            PendingCode {
                account,
                azp,
                web_client_id: self.clients.web_client_id.clone(),
                scopes,
                prompt_consent: req.prompt_consent,
                redirect_uri: req.redirect_uri.unwrap_or_default(),
                attack: req.id_token_attack,
                expires_at: self.now() + CODE_LIFETIME,
            },
        );
        Ok(code)
    }

    /// Issues an access token directly, skipping the code exchange (and its RSA signature):
    /// for benchmarks that need many signed-in users quickly. The grant is a normal one.
    pub fn mint_access_token(
        &self,
        sub: &str,
        scopes: Option<Vec<String>>,
    ) -> Result<String, Error> {
        let account = self.account(sub)?;
        let scopes: Vec<String> = scopes
            .unwrap_or_else(|| vec![DRIVE_APPDATA.to_string()])
            .iter()
            .map(|s| normalise_scope(s))
            .collect();
        let grant = self.new_grant(
            &account,
            self.clients.android_client_id.clone(),
            scopes.clone(),
        );
        Ok(self.new_access_token(&grant, &scopes))
    }

    /// A signed-in user in one step, for benchmarks that seed users by the hundred thousand:
    /// the account, a grant with the default sign-in scopes (its refresh token) and an access
    /// token, as a code exchange leaves them, without the code or the ID token's signature.
    pub fn bulk_sign_in(&self, sub: &str) -> Result<BulkUser, Error> {
        self.create_user(crate::NewUser {
            sub: sub.to_string(),
            ..Default::default()
        })?;
        let account = self.account(sub)?;
        let scopes: Vec<String> = ["openid", "email", "profile", DRIVE_APPDATA]
            .iter()
            .map(|s| normalise_scope(s))
            .collect();
        let grant = self.new_grant(
            &account,
            self.clients.android_client_id.clone(),
            scopes.clone(),
        );
        let access_token = self.new_access_token(&grant, &scopes);
        let start_page_token = account.drive.lock().start_page_token().to_string();
        Ok(BulkUser {
            sub: sub.to_string(),
            refresh_token: grant.refresh_token.clone(),
            access_token,
            expires_in: self.access_lifetime_s.load(Ordering::Relaxed),
            scope: scopes.join(" "),
            start_page_token,
        })
    }

    fn new_grant(&self, account: &Arc<Account>, azp: String, scopes: Vec<String>) -> Arc<Grant> {
        let refresh_token = ids::refresh_token();
        self.record_secret(&refresh_token);
        let now = self.now();
        let lifetime = self.refresh_lifetime_s.load(Ordering::Relaxed);
        let refresh_expires_at =
            (lifetime > 0 && !identity_only(&scopes)).then(|| now + Duration::from_secs(lifetime));
        let grant = Arc::new(Grant {
            account: account.clone(),
            azp,
            scopes: Mutex::new(scopes),
            refresh_token: refresh_token.clone(),
            revoked: AtomicBool::new(false),
            refresh_expires_at,
            refresh_last_used: Mutex::new(now),
        });
        self.grant_ids.fetch_add(1, Ordering::Relaxed);
        self.refresh_tokens.insert(refresh_token, grant.clone());
        let oldest = {
            let mut grants = account.grants.lock();
            grants.push(grant.clone());
            // Every refresh token here belongs to the one web client, so the per-client limit
            // is a per-account one.
            (grants.len() > REFRESH_TOKENS_PER_ACCOUNT).then(|| grants.remove(0))
        };
        if let Some(old) = oldest {
            // Only the refresh token goes; its access tokens live out their hour.
            self.refresh_tokens.remove(&old.refresh_token);
        }
        grant
    }

    fn new_access_token(&self, grant: &Arc<Grant>, scopes: &[String]) -> String {
        let token = ids::access_token();
        self.record_secret(&token);
        let lifetime = self.access_lifetime_s.load(Ordering::Relaxed);
        self.access_tokens.insert(
            token.clone(),
            AccessToken {
                grant: grant.clone(),
                drive_scope: has_drive(scopes),
                expires_at: self.now() + Duration::from_secs(lifetime),
                user_epoch: grant.account.access_epoch.load(Ordering::Relaxed),
                global_epoch: self.global_access_epoch.load(Ordering::Relaxed),
            },
        );
        token
    }

    fn id_token(
        &self,
        account: &Account,
        azp: &str,
        access_token: &str,
        attack: Option<IdTokenAttack>,
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        let u = &account.user;
        let claims = Claims {
            iss: keys::ISSUER.into(),
            azp: azp.into(),
            aud: self.clients.web_client_id.clone(),
            sub: u.sub.clone(),
            email: u.email.clone(),
            email_verified: u.email_verified,
            at_hash: keys::at_hash(access_token),
            name: u.name.clone(),
            picture: u.picture.clone(),
            given_name: u.given_name.clone(),
            family_name: u.family_name.clone(),
            locale: u.locale.clone(),
            iat: now,
            exp: now + 3600,
        };
        let key = self.keys.read().current();
        let outcast = (attack == Some(IdTokenAttack::RotatedOutKey)).then(|| self.outcast_key());
        keys::mint(&key, claims, attack, outcast.as_deref())
    }

    fn outcast_key(&self) -> Arc<SigningKey> {
        if let Some(k) = self.keys.write().outcast() {
            return k;
        }
        // Generated outside the lock: RSA key generation takes a while.
        let key = SigningKey::generate().expect("RSA key generation");
        self.keys.write().set_outcast(key)
    }

    /// Checks the client credentials of a `/token` call: 401 `invalid_client` for an unknown
    /// client or a wrong secret (error codes of
    /// <https://developers.google.com/identity/protocols/oauth2/web-server#exchange-authorization-code>
    /// and RFC 6749 §5.2; the descriptions are the ones Google sends).
    fn authenticate_client(
        &self,
        id: Option<&str>,
        secret: Option<&str>,
    ) -> Result<(), OAuthError> {
        let id = id.ok_or_else(|| OAuthError::missing("client_id"))?;
        if id != self.clients.web_client_id {
            return Err(OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "The OAuth client was not found.",
            ));
        }
        if secret != Some(self.clients.web_client_secret.as_str()) {
            return Err(OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Unauthorized",
            ));
        }
        Ok(())
    }

    /// `POST /token`. `basic` is the decoded HTTP Basic credentials, if any.
    pub(crate) fn token(
        &self,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
    ) -> Result<Issued, OAuthError> {
        let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let grant_type = get("grant_type").ok_or_else(|| OAuthError::missing("grant_type"))?;
        if grant_type != "authorization_code" && grant_type != "refresh_token" {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("Invalid grant_type: {grant_type}"),
            ));
        }
        match &basic {
            Some((id, secret)) => self.authenticate_client(Some(id), Some(secret))?,
            None => self.authenticate_client(get("client_id"), get("client_secret"))?,
        }
        if grant_type == "authorization_code" {
            let code = get("code").ok_or_else(|| OAuthError::missing("code"))?;
            let redirect_uri = form.get("redirect_uri").map(String::as_str).unwrap_or("");
            self.redeem_code(code, redirect_uri)
        } else {
            let rt = get("refresh_token").ok_or_else(|| OAuthError::missing("refresh_token"))?;
            self.refresh(rt)
        }
    }

    fn redeem_code(&self, code: &str, redirect_uri: &str) -> Result<Issued, OAuthError> {
        if !ids::is_well_formed_code(code) {
            return Err(OAuthError::grant("Malformed auth code."));
        }
        let pending = {
            let mut codes = self.codes.lock();
            match codes.get(code) {
                None => return Err(OAuthError::grant("Bad Request")),
                // A code is bound to the redirect_uri it was issued for; redeeming it with
                // another is 400 `redirect_uri_mismatch` (same page, RFC 6749 §4.1.3).
                Some(p) if p.redirect_uri != redirect_uri => {
                    return Err(OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "redirect_uri_mismatch",
                        "Bad Request",
                    ))
                }
                Some(_) => codes.remove(code).expect("present under the lock"),
            }
        };
        pending.account.counters.inc(crate::stats::Endpoint::Token);
        if pending.expires_at < self.now() || pending.web_client_id != self.clients.web_client_id {
            return Err(OAuthError::grant("Bad Request"));
        }
        let account = pending.account;
        // Google returns a refresh token only on first consent to this client (or when forced).
        let existing = (!pending.prompt_consent)
            .then(|| {
                account
                    .grants
                    .lock()
                    .iter()
                    .rev()
                    .find(|g| g.azp == pending.azp && !g.revoked.load(Ordering::Relaxed))
                    .cloned()
            })
            .flatten();
        let (grant, fresh) = match existing {
            Some(g) => {
                let mut scopes = g.scopes.lock();
                for s in &pending.scopes {
                    if !scopes.contains(s) {
                        scopes.push(s.clone());
                    }
                }
                drop(scopes);
                (g, false)
            }
            None => (
                self.new_grant(&account, pending.azp.clone(), pending.scopes.clone()),
                true,
            ),
        };
        let access = self.new_access_token(&grant, &pending.scopes);
        let id_token = self.id_token(&account, &pending.azp, &access, pending.attack);
        let mut body = serde_json::json!({
            "access_token": access,
            "expires_in": self.access_lifetime_s.load(Ordering::Relaxed),
        });
        if fresh {
            body["refresh_token"] = grant.refresh_token.clone().into();
        }
        body["scope"] = pending.scopes.join(" ").into();
        body["token_type"] = "Bearer".into();
        body["id_token"] = id_token.into();
        Ok(Issued { body })
    }

    fn refresh(&self, refresh_token: &str) -> Result<Issued, OAuthError> {
        let expired = || OAuthError::grant("Token has been expired or revoked.");
        let grant = self.refresh_tokens.get(refresh_token).ok_or_else(expired)?;
        grant.account.counters.inc(crate::stats::Endpoint::Token);
        if grant.revoked.load(Ordering::Relaxed) {
            return Err(expired());
        }
        let now = self.now();
        if grant.refresh_expires_at.is_some_and(|at| at <= now) {
            return Err(expired());
        }
        {
            let mut last = grant.refresh_last_used.lock();
            if now.duration_since(*last) > REFRESH_IDLE_LIMIT {
                return Err(expired());
            }
            *last = now;
        }
        let scopes = grant.scopes.lock().clone();
        let access = self.new_access_token(&grant, &scopes);
        let mut body = serde_json::json!({
            "access_token": access,
            "expires_in": self.access_lifetime_s.load(Ordering::Relaxed),
            "scope": scopes.join(" "),
            "token_type": "Bearer",
        });
        if has_openid(&scopes) {
            body["id_token"] = self
                .id_token(&grant.account, &grant.azp, &access, None)
                .into();
        }
        Ok(Issued { body })
    }

    fn revoke_grant(&self, grant: &Grant) {
        grant.revoked.store(true, Ordering::Relaxed);
        self.refresh_tokens.remove(&grant.refresh_token);
        grant
            .account
            .grants
            .lock()
            .retain(|g| !std::ptr::eq(Arc::as_ptr(g), grant));
    }

    /// `POST /revoke`: an access or refresh token, and with it the whole grant.
    pub(crate) fn revoke_token(&self, token: &str) -> Result<Arc<Account>, OAuthError> {
        let grant = self
            .refresh_tokens
            .get(token)
            .or_else(|| {
                self.access_tokens
                    .with(token, |t| t.map(|t| t.grant.clone()))
            })
            .filter(|g| !g.revoked.load(Ordering::Relaxed))
            .ok_or_else(|| {
                OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_token",
                    "Token expired or revoked",
                )
            })?;
        self.revoke_grant(&grant);
        Ok(grant.account.clone())
    }

    /// The refresh token of the user's newest live grant: the one a server that signed the
    /// user in holds.
    pub(crate) fn newest_refresh_token(&self, account: &Account) -> Option<String> {
        account
            .grants
            .lock()
            .iter()
            .rev()
            .find(|g| !g.revoked.load(Ordering::Relaxed))
            .map(|g| g.refresh_token.clone())
    }

    /// Revokes every grant of the user (as removing the app's access in their account).
    pub fn revoke_user(&self, sub: &str) {
        if let Ok(account) = self.account(sub) {
            let grants = std::mem::take(&mut *account.grants.lock());
            for g in grants {
                self.revoke_grant(&g);
            }
        }
    }

    /// Makes current access tokens of `sub` (or of everyone) expired.
    pub fn expire_access_tokens(&self, sub: Option<&str>) {
        match sub {
            Some(sub) => {
                if let Ok(a) = self.account(sub) {
                    a.access_epoch.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.global_access_epoch.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Resolves a bearer access token; `None` if unknown, expired or revoked.
    pub(crate) fn access_token(&self, token: &str) -> Option<(Arc<Account>, bool)> {
        self.access_tokens.with(token, |t| {
            let t = t?;
            let valid = !t.grant.revoked.load(Ordering::Relaxed)
                && t.expires_at > self.now()
                && t.user_epoch == t.grant.account.access_epoch.load(Ordering::Relaxed)
                && t.global_epoch == self.global_access_epoch.load(Ordering::Relaxed);
            valid.then(|| (t.grant.account.clone(), t.drive_scope))
        })
    }
}
