//! The error type of the in-process control API ([`crate::Emulator`] methods).
//!
//! The HTTP control endpoints map it onto status codes (404, 409, 400); the Google-shaped
//! endpoints have their own error bodies (see `http::oauth` and `drive::error`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no such user: {0}")]
    UnknownUser(String),
    #[error("user already exists: {0}")]
    UserExists(String),
    #[error("unknown client: {0}")]
    UnknownClient(String),
    #[error("file not found: {0}")]
    FileNotFound(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    fn status(&self) -> StatusCode {
        match self {
            Error::UnknownUser(_) | Error::FileNotFound(_) => StatusCode::NOT_FOUND,
            Error::UserExists(_) => StatusCode::CONFLICT,
            Error::UnknownClient(_) | Error::Invalid(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        (self.status(), Json(body)).into_response()
    }
}
