//! Handlers for the OAuth/OpenID endpoints: `/token`, `/revoke`, the JWKS, discovery and
//! userinfo. The logic lives in `crate::oauth`; this is request parsing and response shaping.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crate::drive::error::DriveError;
use crate::oauth::OAuthError;
use crate::stats::Endpoint;
use crate::Emulator;

fn form(body: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let (id, secret) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
    // RFC 6749 2.3.1: both parts are form-urlencoded inside Basic.
    let decode = |s: &str| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("x={s}"))
            .ok()
            .and_then(|v| v.into_iter().next())
            .map(|(_, v)| v)
    };
    Some((decode(id)?, decode(secret)?))
}

/// Google's token responses are never cached.
fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, max-age=0, must-revalidate"),
    );
    resp
}

pub(crate) async fn token(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = emu.token(&form(&body), basic_auth(&headers));
    no_store(match result {
        Ok(issued) => Json(issued.body).into_response(),
        Err(e) => e.into_response(),
    })
}

pub(crate) async fn revoke(
    State(emu): State<Emulator>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let mut params = form(&body);
    if !params.contains_key("token") {
        params = form(query.unwrap_or_default().as_bytes());
    }
    let Some(token) = params.get("token").filter(|t| !t.is_empty()) else {
        return OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: token",
        )
        .into_response();
    };
    match emu.revoke_token(token) {
        Ok(account) => {
            account.counters.inc(Endpoint::Revoke);
            Json(serde_json::json!({})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn certs(State(emu): State<Emulator>) -> Response {
    let max_age = emu.jwks_max_age_s.load(Ordering::Relaxed);
    let mut resp = Json(emu.jwks()).into_response();
    let cc = format!("public, max-age={max_age}, must-revalidate, no-transform");
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&cc).expect("ASCII header"),
    );
    resp
}

pub(crate) async fn discovery(State(emu): State<Emulator>) -> Json<serde_json::Value> {
    let b = &emu.base_url;
    Json(serde_json::json!({
        "issuer": crate::keys::ISSUER,
        "authorization_endpoint": format!("{b}/o/oauth2/v2/auth"),
        "device_authorization_endpoint": format!("{b}/device/code"),
        "token_endpoint": format!("{b}/token"),
        "userinfo_endpoint": format!("{b}/v1/userinfo"),
        "revocation_endpoint": format!("{b}/revoke"),
        "jwks_uri": format!("{b}/oauth2/v3/certs"),
        "response_types_supported": ["code", "token", "id_token", "code token", "code id_token",
            "token id_token", "code token id_token", "none"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "claims_supported": ["aud", "email", "email_verified", "exp", "family_name", "given_name",
            "iat", "iss", "name", "picture", "sub"],
        "code_challenge_methods_supported": ["plain", "S256"],
        "grant_types_supported": ["authorization_code", "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code",
            "urn:ietf:params:oauth:grant-type:jwt-bearer"],
    }))
}

/// `GET /v1/userinfo` (and `/oauth2/v3/userinfo`): the OpenID profile of the token's user.
pub(crate) async fn userinfo(State(emu): State<Emulator>, headers: HeaderMap) -> Response {
    let token = super::bearer(&headers);
    let Some((account, _)) = token.and_then(|t| emu.access_token(t)) else {
        return DriveError::unauthenticated().into_response();
    };
    let u = &account.user;
    Json(serde_json::json!({
        "sub": u.sub, "name": u.name, "given_name": u.given_name, "family_name": u.family_name,
        "picture": u.picture, "email": u.email, "email_verified": u.email_verified,
        "locale": u.locale,
    }))
    .into_response()
}
