//! The intake: `POST /authcode` receives the server auth code an app got from Google Sign-In and
//! turns it into a verified, stored user ([`signin`]); `POST /risc` receives Google's
//! Cross-Account Protection security events ([`risc`], RFC 8935 answers). Also `GET /healthz`
//! and `GET /readyz`.
//!
//! Every error is JSON `{"error": code, "message": text}`; messages never contain a token, a
//! code, or anything internal (those go to the log, without secrets).

pub mod admission;
mod risc;
pub mod signin;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::google::GoogleError;
use crate::store::Store;
use admission::{Admission, Refusal};
use signin::{SignIn, SignInError};

/// Bodies larger than this are refused (413; 400 at `/risc`): an auth code is a few hundred
/// bytes, a security event token one or two KiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest auth code we accept; Google's are far shorter.
const MAX_CODE_LEN: usize = 2048;
/// The whole body must arrive within this; a client trickling it is answered 408 and its
/// connection closed. (Trickled headers are hyper's `header_read_timeout`.)
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
pub struct IntakeState {
    pub signin: Arc<SignIn>,
    pub store: Store,
    pub admission: Arc<Admission>,
    /// Every sign-in in progress: shutdown waits for them (see `sign_in`).
    pub signins: TaskTracker,
    /// Cross-Account Protection: verifies and stores the SETs of `POST /risc`.
    pub risc: Arc<crate::risc::Risc>,
}

pub fn router(state: IntakeState) -> Router {
    Router::new()
        .route("/authcode", post(post_authcode))
        .route("/risc", post(risc::post_risc))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An error answer: HTTP status, a stable machine-readable code and a human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<serde_json::Value>,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: None,
            retry_after: None,
        }
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The human message the client is shown.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if let (Some(extra), Some(obj)) = (self.extra, body.as_object_mut()) {
            if let Some(extra) = extra.as_object() {
                obj.extend(extra.clone());
            }
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

/// What the app is told of each way a sign-in fails (and what the log says): one arm per
/// error, a table longer than a screen.
impl From<SignInError> for ApiError {
    fn from(e: SignInError) -> Self {
        use GoogleError as G;
        match e {
            SignInError::Google(G::InvalidGrant { .. }) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Google rejected the auth code: it is used, expired, or was issued for another client",
            ),
            SignInError::Google(G::Timeout { .. }) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "Google did not answer in time; try again",
            ),
            SignInError::Google(G::InvalidClient { error, description }) => {
                let setting = if error == "redirect_uri_mismatch" {
                    "[google] redirect_uri (\"\" for Android apps; it must match the one the app used)"
                } else {
                    "[google] client_secret_file (the Web application client whose id the app passes as serverClientId)"
                };
                tracing::error!(
                    google_error = %error,
                    description = %description,
                    setting,
                    "sign-in failed: Google refuses this server's OAuth configuration; fix the setting named here"
                );
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_misconfigured",
                    "the server's Google sign-in is misconfigured; its operator has been told in the log",
                )
            }
            SignInError::Google(ref g) => {
                tracing::warn!(error = %g, "sign-in failed at Google's token endpoint");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "Google is unavailable; try again",
                )
            }
            SignInError::IdToken(ref t) if t.is_upstream() => {
                tracing::warn!(error = %t, "sign-in failed: cannot fetch Google's signing keys");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "Google is unavailable; try again",
                )
            }
            SignInError::IdToken(t) => {
                tracing::warn!(error = %t, "sign-in refused: the ID token from Google did not verify");
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_id_token",
                    format!("the ID token did not verify: {t}"),
                )
            }
            SignInError::NoIdToken => ApiError::new(
                StatusCode::BAD_REQUEST,
                "no_id_token",
                "Google returned no ID token: request the openid and email scopes in the app",
            ),
            SignInError::MissingScopes(missing) => {
                let mut e = ApiError::new(
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    format!(
                        "the user did not grant every required scope; missing: {}",
                        missing.join(" ")
                    ),
                );
                e.extra = Some(json!({ "missing_scopes": missing }));
                e
            }
            SignInError::NoRefreshToken => ApiError::new(
                StatusCode::CONFLICT,
                "no_refresh_token",
                "no refresh token is stored for this user: sign in again requesting offline access \
                 with forced consent (requestServerAuthCode(serverClientId, true))",
            ),
            SignInError::Database(e) => {
                tracing::error!(error = %e, "sign-in failed: database error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the server cannot store the sign-in right now; try again",
                )
            }
        }
    }
}

#[derive(Deserialize)]
struct AuthCodeBody {
    #[serde(rename = "authCode")]
    auth_code: String,
}

/// Reads `authCode` from a form (as the Android sample's UrlEncodedFormEntity sends it) or JSON.
/// Public for the fuzz harness (tests/fuzz).
pub fn parse_auth_code(headers: &HeaderMap, body: &[u8]) -> Result<SecretString, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let bad = |what: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("expected a field authCode with the server auth code: {what}"),
        )
    };
    let parsed: AuthCodeBody = match mime.as_str() {
        "application/x-www-form-urlencoded" => {
            let fields: Vec<(String, String)> =
                serde_urlencoded::from_bytes(body).map_err(|_| bad("the form does not parse"))?;
            let mut codes = fields.into_iter().filter(|(k, _)| k == "authCode");
            match (codes.next(), codes.next()) {
                (Some((_, code)), None) => AuthCodeBody { auth_code: code },
                (None, _) => return Err(bad("the field is missing")),
                (Some(_), Some(_)) => return Err(bad("the field appears more than once")),
            }
        }
        "application/json" => serde_json::from_slice(body)
            .map_err(|_| bad("the body is not a JSON object with a string authCode"))?,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send application/x-www-form-urlencoded or application/json",
            ))
        }
    };
    let code = parsed.auth_code;
    if code.is_empty() {
        return Err(bad("the field is empty"));
    }
    // Google's codes are URL-safe ASCII ("4/0Ab..."); anything else is not worth a round trip.
    let code_char = |b: u8| b.is_ascii_alphanumeric() || b"-_/.~+=".contains(&b);
    if code.len() > MAX_CODE_LEN || !code.bytes().all(code_char) {
        return Err(bad("the value is not an auth code"));
    }
    Ok(SecretString::from(code))
}

async fn post_authcode(
    State(state): State<IntakeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let result = match state
        .admission
        .check_client(state.admission.client(peer, &headers))
    {
        Err(refusal) => Err(refused(refusal)),
        // Only reading the body is bounded in time: once the code is redeemed at Google, the
        // sign-in runs to its end in a task of its own (see `sign_in`).
        Ok(()) => match tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(request, &())).await
        {
            Ok(body) => handle_authcode(&state, &headers, body).await,
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
            )),
        },
    };
    match &result {
        Ok(_) => crate::metrics::intake_request("ok", 200),
        Err(e) => crate::metrics::intake_request(e.code(), e.status.as_u16()),
    }
    match result {
        Err(e) if e.status == StatusCode::REQUEST_TIMEOUT => {
            // The unread rest of the body makes the connection useless; say so.
            let mut resp = e.into_response();
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            Ok(resp)
        }
        other => other,
    }
}

/// 503 (shed: try again in a second) or 429 (this client, later), with Retry-After.
fn refused(refusal: Refusal) -> ApiError {
    let (status, code, message, retry) = match refusal {
        Refusal::Overloaded => (
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many sign-ins at once; try again shortly".to_string(),
            Duration::from_secs(1),
        ),
        Refusal::TooManyFromClient { retry_after } => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many sign-ins from this address; try again later".to_string(),
            retry_after,
        ),
    };
    let mut e = ApiError::new(status, code, message);
    e.retry_after = Some(retry);
    e
}

async fn handle_authcode(
    state: &IntakeState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body must be at most {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body could not be read",
            )
        }
    })?;
    let code = parse_auth_code(headers, &body)?;
    let slot = state.admission.take_slot().map_err(refused)?;
    let done = sign_in(state, code, slot).await?;
    // What the app needs, and no more (no email: the answer may be logged on the way).
    Ok(Json(json!({ "status": done.state.as_str() })).into_response())
}

/// Runs the sign-in as a task of its own: once Google has issued a refresh token the sign-in
/// must end in the database or in a revocation, even if the client hangs up or the drain
/// period ends, and dropping this handler's future must not cut it short.
async fn sign_in(
    state: &IntakeState,
    code: SecretString,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<signin::SignedIn, ApiError> {
    let signin = state.signin.clone();
    let task = state.signins.spawn(async move {
        let started = std::time::Instant::now();
        let result = signin.sign_in(&code).await;
        drop(slot);
        match &result {
            Ok(done) => tracing::info!(
                user = %done.sub,
                new_refresh_token = done.new_refresh_token,
                state = done.state.as_str(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "sign-in stored"
            ),
            Err(e) => tracing::info!(error = %e, "sign-in refused"),
        }
        result
    });
    match task.await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => {
            tracing::error!(error = %e, "a sign-in task failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the sign-in failed; try again",
            ))
        }
    }
}

async fn readyz(State(state): State<IntakeState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: database unreachable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the database is unreachable",
            )
            .into_response()
        }
    }
}
