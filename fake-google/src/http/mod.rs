//! The HTTP surface: one router for Google's endpoints and the control API, behind a front
//! layer that counts requests, authenticates Drive calls and injects faults.

pub(crate) mod control;
pub(crate) mod drive;
pub(crate) mod oauth;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use std::sync::Arc;

use self::drive::AuthOutcome;
use crate::drive::error::DriveError;
use crate::emulator::Account;
use crate::faults::{Family, Fault};
use crate::oauth::OAuthError;
use crate::stats::Endpoint;
use crate::Emulator;

/// Google caps simple and multipart uploads at 5 MB; a little slack for multipart framing.
const GOOGLE_BODY_LIMIT: usize = 5 * 1024 * 1024 + 64 * 1024;

pub(crate) fn router(emu: Emulator) -> Router {
    let google = Router::new()
        .route("/token", post(oauth::token))
        .route("/revoke", post(oauth::revoke).get(oauth::revoke))
        .route("/oauth2/v3/certs", get(oauth::certs))
        .route("/.well-known/openid-configuration", get(oauth::discovery))
        .route("/v1/userinfo", get(oauth::userinfo))
        .route("/oauth2/v3/userinfo", get(oauth::userinfo))
        .route(
            "/drive/v3/files",
            get(drive::files_list).post(drive::files_create_metadata),
        )
        .route(
            "/drive/v3/files/{file_id}",
            get(drive::files_get)
                .patch(drive::files_update_metadata)
                .delete(drive::files_delete),
        )
        .route("/upload/drive/v3/files", post(drive::files_create_upload))
        .route(
            "/upload/drive/v3/files/{file_id}",
            patch(drive::files_update_upload),
        )
        .route(
            "/drive/v3/changes/startPageToken",
            get(drive::start_page_token),
        )
        .route("/drive/v3/changes", get(drive::changes_list))
        .layer(DefaultBodyLimit::max(GOOGLE_BODY_LIMIT));
    google
        .merge(control::router().layer(DefaultBodyLimit::max(256 * 1024 * 1024)))
        .layer(from_fn_with_state(emu.clone(), front))
        .with_state(emu)
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn classify(
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Option<(Family, Option<Endpoint>)> {
    use Endpoint::*;
    let token = |ep| Some((Family::Token, Some(ep)));
    match path {
        "/token" => return token(Token),
        "/revoke" => return token(Revoke),
        "/oauth2/v3/certs" => return Some((Family::Jwks, Some(Jwks))),
        "/.well-known/openid-configuration" => return token(Discovery),
        "/v1/userinfo" | "/oauth2/v3/userinfo" => return token(Userinfo),
        _ => {}
    }
    let rest = path
        .strip_prefix("/drive/v3/")
        .or_else(|| path.strip_prefix("/upload/drive/v3/"))?;
    let m = method.clone();
    let ep = match (rest, m) {
        ("files", Method::GET) => Some(FilesList),
        ("files", Method::POST) => Some(FilesCreate),
        ("changes", Method::GET) => Some(ChangesList),
        ("changes/startPageToken", Method::GET) => Some(ChangesStartPageToken),
        (r, m) if r.starts_with("files/") && !r[6..].contains('/') => match m {
            Method::GET => {
                let media = query.is_some_and(|q| q.split('&').any(|kv| kv == "alt=media"));
                Some(if media { FilesDownload } else { FilesGet })
            }
            Method::PATCH => Some(FilesUpdate),
            Method::DELETE => Some(FilesDelete),
            _ => None,
        },
        _ => None,
    };
    Some((Family::Drive, ep))
}

/// Resolves the bearer token of a Drive call: the account (if the token is live) and whether
/// the call may proceed.
fn authenticate(emu: &Emulator, headers: &HeaderMap) -> AuthOutcome {
    let resolved = bearer(headers).and_then(|t| emu.access_token(t));
    AuthOutcome(match resolved {
        None => Err(DriveError::unauthenticated()),
        Some((_, false)) => Err(DriveError::insufficient_scopes()),
        Some((account, true)) => Ok(account),
    })
}

async fn front(State(emu): State<Emulator>, mut req: Request, next: Next) -> Response {
    let Some((family, endpoint)) = classify(req.method(), req.uri().path(), req.uri().query())
    else {
        return next.run(req).await;
    };
    if let Some(ep) = endpoint {
        emu.stats.requests.inc(ep);
    }
    let mut account = None;
    if family == Family::Drive {
        let outcome = authenticate(&emu, req.headers());
        if let Ok(a) = &outcome.0 {
            if let Some(ep) = endpoint {
                a.counters.inc(ep);
            }
            account = Some(a.clone());
        }
        req.extensions_mut().insert(outcome);
    }
    let resp = match emu.faults.get(family) {
        None => next.run(req).await,
        Some(fault) => faulty(&emu, family, fault, account, req, next).await,
    };
    emu.stats.status(resp.status().as_u16());
    resp
}

/// Serves `req` through the configured faults.
async fn faulty(
    emu: &Emulator,
    family: Family,
    fault: Fault,
    account: Option<Arc<Account>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(d) = fault.delay() {
        tokio::time::sleep(d).await;
    }
    let retry = fault.retry_after_s;
    if let Some(q) = fault.quota_rps {
        if !emu.faults.window(family).admit(q) {
            let status = if fault.error_status == Some(403) {
                403
            } else {
                429
            };
            return refusal(family, status, retry, false);
        }
    }
    if let (Some(q), Some(a)) = (fault.user_quota_rps, &account) {
        if !a.quota.admit(q) {
            return refusal(family, 403, retry, true);
        }
    }
    if fault.roll_error() {
        return refusal(family, fault.status(), retry, fault.status() == 403);
    }
    let resp = next.run(req).await;
    if fault.roll_reset() {
        return truncated(resp).await;
    }
    resp
}

/// An injected error, shaped like the family's real errors.
fn refusal(family: Family, status: u16, retry_after: Option<u64>, per_user: bool) -> Response {
    match family {
        Family::Drive => match status {
            403 if per_user => DriveError::user_rate_limited().with_retry_after(retry_after),
            403 => DriveError::rate_limited_403().with_retry_after(retry_after),
            s => DriveError::injected(s, retry_after),
        }
        .into_response(),
        Family::Token | Family::Jwks => {
            let (code, error, desc) = match status {
                429 | 403 => (status, "rate_limit_exceeded", "Rate Limit Exceeded"),
                500 => (500, "internal_failure", "Backend Error"),
                _ => (
                    503,
                    "temporarily_unavailable",
                    "The service is currently unavailable.",
                ),
            };
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut resp = OAuthError::new(status, error, desc).into_response();
            if let Some(s) = retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            resp
        }
    }
}

/// The response with a Content-Length promising more than is sent: the body stream fails
/// half way, and hyper drops the connection.
async fn truncated(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let promised = bytes.len() + 64;
    let half = bytes.slice(..bytes.len() / 2);
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
        Ok(half),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "fake-google: injected connection reset",
        )),
    ];
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(promised));
    axum::http::Response::from_parts(parts, Body::from_stream(futures::stream::iter(chunks)))
}
