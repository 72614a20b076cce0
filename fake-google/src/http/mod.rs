//! The HTTP surface: one router for Google's endpoints and the control API, behind a front
//! layer that counts requests, authenticates Drive calls and injects faults.

pub(crate) mod control;
pub(crate) mod download;
pub(crate) mod drive;
pub(crate) mod oauth;
pub(crate) mod resumable;
pub(crate) mod risc;

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
use crate::stats::{Counter, Endpoint};
use crate::Emulator;

/// Requests other than uploads are small JSON or forms.
const GOOGLE_BODY_LIMIT: usize = 5 * 1024 * 1024 + 64 * 1024;
/// Simple and multipart uploads are documented "for 5 MB or less", but no rejection above it
/// is (<https://developers.google.com/drive/api/guides/manage-uploads>), so uploads are only
/// bounded by what the emulator is willing to hold in memory.
const UPLOAD_BODY_LIMIT: usize = 256 * 1024 * 1024;

/// On a response: the serve loop drops the connection instead of sending it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DropConnection;

/// On a resumable `PUT`: the handler keeps this many bytes of the chunk (`None`: half, for
/// `reset_rate`; `upload_cut_after_bytes` otherwise) and drops the line.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CutUpload(pub(crate) Option<u64>);

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
        .route("/drive/v3/files/generateIds", get(drive::generate_ids))
        .route(
            "/upload/drive/v3/files",
            post(drive::files_create_upload)
                .put(resumable::put)
                .layer(DefaultBodyLimit::max(UPLOAD_BODY_LIMIT)),
        )
        .route(
            "/upload/drive/v3/files/{file_id}",
            patch(drive::files_update_upload)
                .put(resumable::put)
                .layer(DefaultBodyLimit::max(UPLOAD_BODY_LIMIT)),
        )
        .route(
            "/drive/v3/changes/startPageToken",
            get(drive::start_page_token),
        )
        .route("/drive/v3/changes", get(drive::changes_list))
        .route("/.well-known/risc-configuration", get(risc::configuration))
        .route("/risc/certs", get(risc::certs))
        .route("/v1beta/stream:update", post(risc::stream_update))
        .route("/v1beta/stream", get(risc::stream_get))
        .route("/v1beta/stream:verify", post(risc::stream_verify))
        .route("/v1beta/stream/status", get(risc::status_get))
        .route("/v1beta/stream/status:update", post(risc::status_update))
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
        "/.well-known/risc-configuration" => return token(RiscConfiguration),
        "/risc/certs" => return Some((Family::Jwks, Some(RiscJwks))),
        "/v1beta/stream:update" => return token(RiscStreamUpdate),
        "/v1beta/stream" => return token(RiscStreamGet),
        "/v1beta/stream:verify" => return token(RiscStreamVerify),
        "/v1beta/stream/status" => return token(RiscStatusGet),
        "/v1beta/stream/status:update" => return token(RiscStatusUpdate),
        _ => {}
    }
    let upload = path.starts_with("/upload/");
    let rest = path
        .strip_prefix("/drive/v3/")
        .or_else(|| path.strip_prefix("/upload/drive/v3/"))?;
    let m = method.clone();
    let ep = match (rest, m) {
        ("files", Method::GET) => Some(FilesList),
        ("files", Method::POST) => Some(FilesCreate),
        ("files/generateIds", Method::GET) => Some(FilesGenerateIds),
        (r, Method::PUT) if upload && (r == "files" || r.starts_with("files/")) => {
            Some(FilesResumable)
        }
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
    emu.stats.inc(match req.version() {
        axum::http::Version::HTTP_2 => Counter::Http2,
        _ => Counter::Http1,
    });
    let gzip = family == Family::Drive && wants_gzip(req.headers());
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
    let served = Served {
        family,
        endpoint,
        gzip,
    };
    let resp = match emu.faults.get(family) {
        None => served.finish(&emu, next.run(req).await).await,
        Some(fault) => faulty(&emu, served, fault, account, req, next).await,
    };
    emu.stats.status(resp.status().as_u16());
    resp
}

/// What the front layer learnt about a request of a Google endpoint.
#[derive(Clone, Copy)]
struct Served {
    family: Family,
    endpoint: Option<Endpoint>,
    gzip: bool,
}

impl Served {
    /// Drive JSON is gzip-encoded when the client asked as Drive requires; media never is.
    async fn finish(self, emu: &Emulator, resp: Response) -> Response {
        let json = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        if self.family != Family::Drive || !json {
            return resp;
        }
        if !self.gzip {
            emu.stats.inc(Counter::JsonPlain);
            return resp;
        }
        emu.stats.inc(Counter::JsonGzip);
        gzipped(resp).await
    }
}

/// "In order to receive a gzip-encoded response you must do two things: Set an
/// Accept-Encoding header, and modify your user agent to contain the string gzip."
/// (<https://developers.google.com/drive/api/guides/performance#gzip>)
fn wants_gzip(headers: &HeaderMap) -> bool {
    let accepts = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        });
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.contains("gzip"));
    accepts && agent
}

async fn gzipped(resp: Response) -> Response {
    use std::io::Write;
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zipped = enc
        .write_all(&bytes)
        .and_then(|()| enc.finish())
        .expect("gzip into memory");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts
        .headers
        .insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    Response::from_parts(parts, Body::from(zipped))
}

/// Serves `req` through the configured faults. The order is Google's as far as it shows:
/// refusals (quotas, injected errors) happen before the request is served.
async fn faulty(
    emu: &Emulator,
    served: Served,
    fault: Fault,
    account: Option<Arc<Account>>,
    mut req: Request,
    next: Next,
) -> Response {
    let family = served.family;
    if let Some(d) = fault.delay() {
        tokio::time::sleep(d).await;
    }
    if let Some(to) = &fault.redirect_to {
        emu.stats.inc(Counter::RedirectsSent);
        let location = HeaderValue::from_str(to).expect("validated when set");
        return (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
    }
    if let Some(refused) = quota_refusal(emu, family, &fault, account.as_deref()) {
        return refused;
    }
    let retry = fault.retry_after_s;
    if fault.roll_error() {
        return refusal(family, fault.status(), retry, fault.status() == 403);
    }
    let reset = fault.roll_reset();
    if served.endpoint == Some(Endpoint::FilesResumable) {
        match (reset, fault.upload_cut_after_bytes) {
            (_, Some(limit)) => req.extensions_mut().insert(CutUpload(Some(limit))),
            (true, None) => req.extensions_mut().insert(CutUpload(None)),
            (false, None) => None,
        };
        if reset || fault.upload_cut_after_bytes.is_some() {
            return next.run(req).await;
        }
    }
    let resp = served.finish(emu, next.run(req).await).await;
    let created_or_updated = matches!(
        served.endpoint,
        Some(Endpoint::FilesCreate | Endpoint::FilesUpdate)
    );
    if created_or_updated && resp.status().is_success() && fault.roll_lost_answer() {
        // Done, but the client never hears so: a timeout or a dropped line after the fact.
        emu.stats.inc(Counter::AnswersLost);
        let mut lost = StatusCode::INTERNAL_SERVER_ERROR.into_response();
        lost.extensions_mut().insert(DropConnection);
        return lost;
    }
    let media = served.endpoint == Some(Endpoint::FilesDownload) && resp.status().is_success();
    if let (true, Some(limit)) = (media, fault.media_cut_after_bytes) {
        return cut_after(resp, limit).await;
    }
    match (media, fault.body_bytes_per_sec) {
        (true, Some(rate)) => throttled(resp, rate, reset).await,
        _ if reset => truncated(resp).await,
        _ => resp,
    }
}

/// The quota refusal for this request, if any quota is exceeded.
///
/// Drive documents its quotas per minute, per project and per user per project; going over
/// gives "403: User rate limit exceeded", and "additional rate limit checks on the Drive
/// backend might also generate a 429: Too many requests"
/// (<https://developers.google.com/drive/api/guides/limits>). The error bodies are those of
/// <https://developers.google.com/drive/api/guides/handle-errors> (403 `userRateLimitExceeded`,
/// 403 `rateLimitExceeded`, 429 `rateLimitExceeded`). Neither page mentions `Retry-After`, so
/// one is sent only when `retry_after_s` asks for it.
fn quota_refusal(
    emu: &Emulator,
    family: Family,
    fault: &Fault,
    account: Option<&Account>,
) -> Option<Response> {
    let retry = fault.retry_after_s;
    if let Some(q) = fault.quota_rps {
        if !emu.faults.window(family).admit(q) {
            let status = if fault.error_status == Some(403) {
                403
            } else {
                429
            };
            return Some(refusal(family, status, retry, false));
        }
    }
    if let (Some(q), Some(a)) = (fault.user_quota_rps, account) {
        if !a.quota.admit(q) {
            return Some(refusal(family, 403, retry, true));
        }
    }
    // Per minute: a request refused by one window counts in neither.
    let now = emu.clock_unix_s();
    let project = emu.faults.minute_window(family);
    if let Some(q) = fault.quota_per_minute {
        if !project.has_room(q, now) {
            let status = if fault.error_status == Some(429) {
                429
            } else {
                403
            };
            return Some(refusal(family, status, retry, false));
        }
    }
    let user = account.map(|a| &a.minute_quota);
    if let (Some(q), Some(w)) = (fault.user_quota_per_minute, user) {
        if !w.has_room(q, now) {
            return Some(refusal(family, 403, retry, true));
        }
    }
    if fault.quota_per_minute.is_some() {
        project.record(now);
    }
    if let (Some(_), Some(w)) = (fault.user_quota_per_minute, user) {
        w.record(now);
    }
    None
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

/// The body streamed at `rate` bytes per second (in tenth-of-a-second slices); with `cut`,
/// the stream fails half way and hyper drops the connection.
async fn throttled(resp: Response, rate: u64, cut: bool) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let len = bytes.len();
    let stop = if cut { len / 2 } else { len };
    let slice = (rate / 10).clamp(1, 1 << 20) as usize;
    let pause = std::time::Duration::from_secs_f64(slice as f64 / rate as f64);
    // State: the next offset; None once the injected failure was sent.
    let stream = futures::stream::unfold(Some(0usize), move |at| {
        let bytes = bytes.clone();
        async move {
            let at = at?;
            if at >= stop {
                return cut.then(|| (Err(reset_error()), None));
            }
            tokio::time::sleep(pause).await;
            let end = (at + slice).min(stop);
            Some((Ok(bytes.slice(at..end)), Some(end)))
        }
    });
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    axum::http::Response::from_parts(parts, Body::from_stream(stream))
}

fn reset_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "fake-google: injected connection reset",
    )
}

/// The response with a Content-Length promising more than is sent: the body stream fails
/// half way, and hyper drops the connection.
/// The first `limit` bytes of the body, then a dropped connection (when there is more).
async fn cut_after(resp: Response, limit: u64) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    if bytes.len() as u64 <= limit {
        return axum::http::Response::from_parts(parts, Body::from(bytes));
    }
    let promised = bytes.len();
    let head = bytes.slice(..limit as usize);
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![Ok(head), Err(reset_error())];
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(promised));
    axum::http::Response::from_parts(parts, Body::from_stream(futures::stream::iter(chunks)))
}

async fn truncated(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let promised = bytes.len() + 64;
    let half = bytes.slice(..bytes.len() / 2);
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![Ok(half), Err(reset_error())];
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(promised));
    axum::http::Response::from_parts(parts, Body::from_stream(futures::stream::iter(chunks)))
}
