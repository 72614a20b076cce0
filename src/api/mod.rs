//! The data API: the operator's backend reads the mirrored appdata, follows the change feed
//! and is sent webhooks (docs/data-api.md, docs/openapi.json). A front door like the intake
//! and the admin socket: every handler is a call to [`Services`].
//!
//! - [`router`] builds the `/v1` routes behind the bearer-key check ([`auth`]); read routes are
//!   in [`reads`] and [`content`], write routes in [`writes`].
//! - [`webhooks`] is the deliverer task of the webhooks outbox.
//!
//! Every error is JSON `{"error": code, "message": text}` ([`ApiError`]).

pub mod auth;
mod content;
mod reads;
pub mod webhooks;
mod writes;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{middleware, Json, Router};
use serde_json::{json, Value};

use crate::services::data::DataError;
use crate::services::{ServiceError, Services};
pub use auth::{ApiKey, WriteKey};

/// Bodies larger than this are refused with 413 on routes that do not set their own limit
/// (reads take no body; a write route that streams sets `DefaultBodyLimit::disable()`).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler gets.
#[derive(Clone)]
pub struct ApiState {
    pub services: Arc<Services>,
}

/// The whole API: read and write routes behind the key check, JSON 404 and 405.
pub fn router(services: Arc<Services>) -> Router {
    let state = ApiState { services };
    Router::new()
        .merge(read_routes())
        .merge(write_routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .layer(middleware::map_response(count))
        .layer(middleware::from_fn(close_after_refused_body))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A request with a body that is refused may leave that body unread, and the server then
/// closes the connection: say so (`Connection: close`), or a client that keeps connections
/// alive sends its next request into a closed socket.
async fn close_after_refused_body(request: Request, next: Next) -> Response {
    let may_have_body = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
    );
    let mut response = next.run(request).await;
    let refused = response.status().is_client_error() || response.status().is_server_error();
    if may_have_body && refused {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn read_routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/users", get(reads::users))
        .route("/v1/users/{sub}", get(reads::user))
        .route("/v1/users/{sub}/files", get(reads::files))
        .route(
            "/v1/users/{sub}/files/{file_id}/content",
            get(content::by_id),
        )
        .route("/v1/users/{sub}/content", get(content::by_path))
        .route("/v1/changes", get(reads::changes))
        .route("/v1/changes/cursor", get(reads::change_head))
}

/// The write routes. A handler that writes takes a [`WriteKey`] argument: a read-only key is
/// refused with 403 before it runs. Uploads stream to the spool, so [`MAX_BODY_BYTES`] does not
/// apply to `PUT` (`[sync] max_file_bytes` does).
fn write_routes() -> Router<ApiState> {
    let upload = || DefaultBodyLimit::disable();
    Router::new()
        .route(
            "/v1/users/{sub}/content",
            put(writes::put_by_path)
                .layer(upload())
                .delete(writes::delete_by_path),
        )
        .route(
            "/v1/users/{sub}/files/{file_id}/content",
            put(writes::put_by_id)
                .layer(upload())
                .delete(writes::delete_by_id),
        )
        .route("/v1/writes/{id}", get(writes::write))
}

/// An error answer: status, stable code, human message, and extra fields for some codes.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    pub fn bad_query(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }

    fn with(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if let (Some(Value::Object(extra)), Some(obj)) = (self.extra, body.as_object_mut()) {
            obj.extend(extra);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"appdata-syncd\""),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use StatusCode as S;
        match e {
            ServiceError::UnknownUser(_) => {
                ApiError::new(S::NOT_FOUND, "unknown_user", e.to_string())
            }
            ServiceError::InvalidState(m) => ApiError::new(S::CONFLICT, "invalid_state", m),
            ServiceError::BadRequest(m) | ServiceError::InvalidFilter(m) => {
                ApiError::new(S::BAD_REQUEST, "bad_request", m)
            }
            ServiceError::Unavailable(m) => {
                tracing::warn!(error = %m, "data API: unavailable");
                ApiError::new(S::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            ServiceError::Database(e) => {
                tracing::warn!(error = %e, "data API: database error");
                ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; retry",
                )
            }
            ServiceError::Internal(m) => {
                tracing::error!(error = %m, "data API: internal error");
                ApiError::new(
                    S::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the daemon's log",
                )
            }
        }
    }
}

impl From<DataError> for ApiError {
    fn from(e: DataError) -> Self {
        use StatusCode as S;
        let message = e.to_string();
        match e {
            DataError::Service(e) => e.into(),
            DataError::UnknownFile { .. } => ApiError::new(S::NOT_FOUND, "unknown_file", message),
            DataError::UnknownPath { .. } => ApiError::new(S::NOT_FOUND, "unknown_path", message),
            DataError::AmbiguousPath { ids, .. } => {
                ApiError::new(S::CONFLICT, "ambiguous_path", message).with(json!({ "ids": ids }))
            }
            DataError::MetadataOnly { kind, .. } => {
                ApiError::new(S::CONFLICT, "metadata_only", message).with(json!({ "kind": kind }))
            }
            DataError::ContentMissing(_) => {
                ApiError::new(S::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            DataError::InvalidCursor(_) => ApiError::new(S::BAD_REQUEST, "invalid_cursor", message),
            DataError::CursorExpired => ApiError::new(S::GONE, "cursor_expired", message),
            DataError::PreconditionRequired { file_id } => {
                ApiError::new(S::PRECONDITION_REQUIRED, "precondition_required", message)
                    .with(json!({ "file_id": file_id }))
            }
            DataError::PreconditionFailed(now) => {
                ApiError::new(S::PRECONDITION_FAILED, "precondition_failed", message)
                    .with(json!({ "file_id": now.file_id, "md5": now.md5, "version": now.version }))
            }
            DataError::NotWritable { kind, .. } => {
                ApiError::new(S::CONFLICT, "not_writable", message).with(json!({ "kind": kind }))
            }
            DataError::NoParentFolder { .. } => {
                ApiError::new(S::NOT_FOUND, "unknown_parent", message)
            }
            DataError::TooLarge { limit } => {
                ApiError::new(S::PAYLOAD_TOO_LARGE, "too_large", message)
                    .with(json!({ "limit": limit }))
            }
            DataError::InsufficientStorage => {
                ApiError::new(S::INSUFFICIENT_STORAGE, "insufficient_storage", message)
            }
            DataError::UnknownWrite(_) => ApiError::new(S::NOT_FOUND, "unknown_write", message),
        }
    }
}

/// Counts every answer by status (`appdata_syncd_api_requests_total`), refusals included.
async fn count(response: Response) -> Response {
    crate::metrics::api_request(response.status().as_u16());
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see docs/data-api.md",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// Parses a query string into `T` (unknown parameters refused), as a 400 `invalid_query`.
pub(crate) fn parse_query<T: serde::de::DeserializeOwned>(
    raw: Option<&str>,
) -> Result<T, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::bad_query(format!("bad query string: {e}")))
}
