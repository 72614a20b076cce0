//! Drive's error body: `{"error": {"code", "message", "errors": [{domain, reason, message,
//! location?, locationType?}], "status"?}}`, plus the headers Google sends with some of them.
//!
//! Messages and reasons are Google's own, so clients that branch on them behave as in production.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Boxed so that `Result<_, DriveError>` stays small on the happy path.
#[derive(Clone, Debug)]
pub(crate) struct DriveError(Box<Detail>);

#[derive(Clone, Debug)]
pub(crate) struct Detail {
    status: StatusCode,
    message: String,
    /// `errors[0].message` when it differs from the top-level one (auth errors).
    item_message: Option<&'static str>,
    reason: &'static str,
    domain: &'static str,
    /// (location, locationType)
    location: Option<(String, &'static str)>,
    /// The gRPC-style status some errors carry (`UNAUTHENTICATED`, …).
    grpc_status: Option<&'static str>,
    www_authenticate: bool,
    retry_after: Option<u64>,
}

impl std::ops::Deref for DriveError {
    type Target = Detail;
    fn deref(&self) -> &Detail {
        &self.0
    }
}

impl std::ops::DerefMut for DriveError {
    fn deref_mut(&mut self) -> &mut Detail {
        &mut self.0
    }
}

impl DriveError {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self(Box::new(Detail {
            status,
            message: message.into(),
            item_message: None,
            reason,
            domain: "global",
            location: None,
            grpc_status: None,
            www_authenticate: false,
            retry_after: None,
        }))
    }

    fn at(mut self, location: impl Into<String>, kind: &'static str) -> Self {
        self.location = Some((location.into(), kind));
        self
    }

    pub(crate) fn unauthenticated() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "authError",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential. See \
             https://developers.google.com/identity/sign-in/web/devconsole-project.",
        )
        .at("Authorization", "header");
        e.grpc_status = Some("UNAUTHENTICATED");
        e.item_message = Some("Invalid Credentials");
        e.www_authenticate = true;
        e
    }

    pub(crate) fn insufficient_scopes() -> Self {
        let mut e = Self::new(
            StatusCode::FORBIDDEN,
            "insufficientPermissions",
            "Request had insufficient authentication scopes.",
        );
        e.grpc_status = Some("PERMISSION_DENIED");
        e.item_message = Some("Insufficient Permission");
        e
    }

    pub(crate) fn not_found(file_id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "notFound",
            format!("File not found: {file_id}."),
        )
        .at("fileId", "parameter")
    }

    /// 400 `invalid` on a query parameter.
    pub(crate) fn invalid_param(location: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message).at(location, "parameter")
    }

    /// 400 `invalidParameter` on `fields`, as Drive answers an unknown field selection.
    pub(crate) fn invalid_fields(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalidParameter", message).at("fields", "parameter")
    }

    /// 400 `required`: a mandatory query parameter is missing.
    pub(crate) fn required(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "required",
            format!("The query parameter '{param}' is required."),
        )
        .at(param, "parameter")
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "badRequest", message)
    }

    pub(crate) fn forbidden(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, reason, message)
    }

    /// The error an injected fault of `status` produces.
    pub(crate) fn injected(status: u16, retry_after: Option<u64>) -> Self {
        let mut e = match status {
            429 => Self::rate_limited(),
            403 => Self::user_rate_limited(),
            500 => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backendError",
                "Backend Error",
            ),
            _ => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backendError",
                "The service is currently unavailable.",
            ),
        };
        e.retry_after = retry_after;
        e
    }

    pub(crate) fn rate_limited() -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rateLimitExceeded",
            "Rate Limit Exceeded",
        );
        e.domain = "usageLimits";
        e
    }

    /// 403 with reason rateLimitExceeded, which Drive also sends for project-wide limits.
    pub(crate) fn rate_limited_403() -> Self {
        let mut e = Self::rate_limited();
        e.status = StatusCode::FORBIDDEN;
        e
    }

    pub(crate) fn user_rate_limited() -> Self {
        let mut e = Self::new(
            StatusCode::FORBIDDEN,
            "userRateLimitExceeded",
            "User Rate Limit Exceeded",
        );
        e.domain = "usageLimits";
        e
    }

    /// Content past the user's Drive storage quota. Drive's docs list no reason for it; this is
    /// the reason and message Drive answers uploads with, as Drive clients handle it
    /// (e.g. googleapis clients checking `errors[].reason == "storageQuotaExceeded"`).
    pub(crate) fn storage_quota_exceeded() -> Self {
        let mut e = Self::new(
            StatusCode::FORBIDDEN,
            "storageQuotaExceeded",
            "The user's Drive storage quota has been exceeded.",
        );
        e.domain = "usageLimits";
        e
    }

    /// A create with an id that `files.generateIds` did not hand out. Drive's docs name no
    /// reason for it; this is the reason and message Drive clients are seen to handle.
    pub(crate) fn id_not_usable() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "fileIdNotUsable",
            "The provided file ID is not usable.",
        )
    }

    /// A create with an id that already names a file (409 Conflict; reason as clients see it).
    pub(crate) fn id_in_use() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "fileIdInUse",
            "A file already exists with the provided ID.",
        )
    }

    /// An unknown or expired resumable session: "404 Not Found … the upload session has
    /// expired and the upload must be restarted from the beginning"
    /// (<https://developers.google.com/drive/api/guides/manage-uploads#resumable>).
    pub(crate) fn upload_session_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "notFound",
            "Upload session not found.",
        )
    }

    /// A `Range` beyond the content. Drive's docs are silent on the body; RFC 9110 §15.5.17
    /// gives the status and the `Content-Range: bytes */LEN` header (added by the caller).
    pub(crate) fn range_not_satisfiable() -> Self {
        Self::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "requestedRangeNotSatisfiable",
            "Request range not satisfiable",
        )
    }

    pub(crate) fn with_retry_after(mut self, secs: Option<u64>) -> Self {
        self.retry_after = secs;
        self
    }
}

impl IntoResponse for DriveError {
    fn into_response(self) -> Response {
        let this = *self.0;
        let mut item = serde_json::json!({
            "message": this.item_message.unwrap_or(&this.message),
            "domain": this.domain,
            "reason": this.reason,
        });
        if let Some((loc, kind)) = &this.location {
            item["location"] = loc.as_str().into();
            item["locationType"] = (*kind).into();
        }
        let mut error = serde_json::json!({
            "code": this.status.as_u16(),
            "message": this.message,
            "errors": [item],
        });
        if let Some(s) = this.grpc_status {
            error["status"] = s.into();
        }
        let mut resp = (this.status, Json(serde_json::json!({ "error": error }))).into_response();
        if this.www_authenticate {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"",
                ),
            );
        }
        if let Some(secs) = this.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
