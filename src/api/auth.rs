//! Bearer API keys. [`require_key`] runs before every route (and the 404/405 fallbacks): no
//! key, a wrong key or a revoked key gets 401 JSON and nothing else; the attempt is logged at
//! warn with the peer and, for a revoked key, its name, never the key. A valid key is put in
//! the request's extensions, where the extractors [`ApiKey`] (any valid key) and [`WriteKey`]
//! (a key created with `--write`; a read-only key gets 403) find it.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};
use crate::services::{AuthRefused, Authenticated};

/// A request made with a valid key (read-only or write).
#[derive(Debug, Clone)]
pub struct ApiKey(pub Authenticated);

/// A request made with a write key. Take it as a handler argument to refuse read-only keys
/// with 403 `read_only_key`.
#[derive(Debug, Clone)]
pub struct WriteKey(pub Authenticated);

/// Who is on the other end, for the log: the TCP peer, or the Unix socket.
fn peer(request: &Request) -> String {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unix socket".to_string(), |c| c.0.to_string())
}

/// The key of `Authorization: Bearer KEY`; `None` when absent or not a bearer token.
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

fn unauthorized(message: &str) -> Response {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response()
}

/// The key check in front of every route.
pub async fn require_key(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request.uri().path().to_string();
    let Some(key) = bearer(&request) else {
        tracing::warn!(peer = %peer(&request), route = %route, "data API request without a bearer key refused");
        return unauthorized("send an API key: Authorization: Bearer asd_...");
    };
    // Far longer than any key: not worth hashing, and not worth logging either.
    if key.len() > 256 {
        tracing::warn!(peer = %peer(&request), route = %route, "data API request with an oversized key refused");
        return unauthorized("the API key is not valid");
    }
    match state.services.authenticate(key).await {
        Ok(Ok(who)) => {
            request.extensions_mut().insert(ApiKey(who));
            next.run(request).await
        }
        Ok(Err(AuthRefused::Unknown)) => {
            tracing::warn!(peer = %peer(&request), route = %route, "data API request with an unknown key refused");
            unauthorized("the API key is not valid")
        }
        Ok(Err(AuthRefused::Revoked { name })) => {
            tracing::warn!(peer = %peer(&request), route = %route, key = %name, "data API request with a revoked key refused");
            unauthorized("the API key has been revoked")
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<ApiKey>().cloned().ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "send an API key")
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WriteKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let ApiKey(who) = ApiKey::from_request_parts(parts, state).await?;
        if !who.can_write {
            tracing::warn!(key = %who.name, route = %parts.uri.path(), "write with a read-only API key refused");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "read_only_key",
                format!(
                    "the API key {:?} is read-only; create one with `ctl api-key create NAME --write`",
                    who.name
                ),
            ));
        }
        Ok(WriteKey(who))
    }
}
