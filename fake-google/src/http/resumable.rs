//! Resumable uploads, as <https://developers.google.com/drive/api/guides/manage-uploads#resumable>
//! describes them:
//!
//! 1. `POST /upload/drive/v3/files?uploadType=resumable` (or `PATCH …/files/{id}?…` to update)
//!    with the JSON metadata and optional `X-Upload-Content-Type`/`X-Upload-Content-Length`
//!    answers 200 with the session URI in `Location`.
//! 2. `PUT`s to that URI carry the whole body, or chunks with `Content-Range: bytes a-b/total`
//!    (`/*` while the total is unknown). Every chunk but the last is a multiple of 256 KiB.
//!    An incomplete upload answers `308 Resume Incomplete` with `Range: bytes=0-N` (no `Range`
//!    when nothing was received); the last byte answers 200 with the file resource.
//! 3. `PUT` with an empty body and `Content-Range: bytes */total` (or `*/*`) asks for the status.
//! 4. A session unknown or older than a week answers 404: "restart the upload".
//!
//! Where the guide is silent the emulator is strict and says so below. Sessions and their
//! bytes live in memory; the session id in the URI is the credential (the guide's `PUT`s carry
//! no `Authorization`).

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::drive::{self as handlers, params, CreateSpec, Metadata};
use super::{CutUpload, DropConnection};
use crate::drive::error::DriveError;
use crate::drive::fields::{self, Sel};
use crate::emulator::Account;
use crate::stats::Counter;
use crate::{ids, Emulator};

/// "Create chunks in multiples of 256 KB (256 x 1024 bytes) in size, except for the final
/// chunk that completes the upload."
const CHUNK_QUANTUM: usize = 256 * 1024;
/// Session URIs expire after one week.
const SESSION_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) type Sessions = Mutex<HashMap<String, Session>>;

enum Target {
    Create(CreateSpec),
    Update { file_id: String, meta: Metadata },
}

pub(crate) struct Session {
    account: Arc<Account>,
    /// Taken when the upload completes.
    target: Option<Target>,
    /// `X-Upload-Content-Type`.
    media_type: Option<String>,
    /// `X-Upload-Content-Length`, or the total a chunk's `Content-Range` gave.
    total: Option<u64>,
    received: Vec<u8>,
    expires_at: Instant,
    /// The `fields` of the initiation, applied to the final answer.
    sel: Sel,
    /// The final answer, once complete; later `PUT`s get it again.
    done: Option<serde_json::Value>,
}

type DriveResult = Result<Response, DriveError>;

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Step 1: opens a session. `file_id` is set for an update (`PATCH`).
pub(crate) fn initiate(
    emu: &Emulator,
    account: &Arc<Account>,
    p: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    file_id: Option<String>,
) -> DriveResult {
    let sel = handlers::file_selection(p)?;
    let total = match header_str(headers, "x-upload-content-length") {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| DriveError::bad_request("Invalid X-Upload-Content-Length header."))?,
        ),
    };
    let media_type = header_str(headers, "x-upload-content-type").map(str::to_string);
    let meta = handlers::parse_metadata(body, file_id.is_none())?;
    // Metadata is checked now, so a doomed upload fails before its bytes are sent.
    let target = {
        let drive = account.drive.lock();
        match &file_id {
            None => {
                let spec = CreateSpec::new(meta, true)?;
                spec.check(&drive)?;
                Target::Create(spec)
            }
            Some(id) => {
                handlers::check_update(&drive, id, true)?;
                Target::Update {
                    file_id: id.clone(),
                    meta,
                }
            }
        }
    };
    let upload_id = ids::upload_id();
    emu.record_secret(&upload_id);
    let path = match &file_id {
        None => "/upload/drive/v3/files".to_string(),
        Some(id) => format!("/upload/drive/v3/files/{id}"),
    };
    let location = format!(
        "{}{path}?uploadType=resumable&upload_id={upload_id}",
        emu.base_url
    );
    emu.uploads.lock().insert(
        upload_id,
        Session {
            account: account.clone(),
            target: Some(target),
            media_type,
            total,
            received: Vec::new(),
            expires_at: emu.now() + SESSION_LIFETIME,
            sel,
            done: None,
        },
    );
    emu.stats.inc(Counter::ResumableSessions);
    let location = HeaderValue::from_str(&location).expect("ASCII URL");
    Ok((StatusCode::OK, [(header::LOCATION, location)]).into_response())
}

/// What a `PUT` to the session carries, from its `Content-Range`.
#[derive(Debug, PartialEq)]
enum Put {
    /// `bytes */T` or `bytes */*`: a status query.
    Query { total: Option<u64> },
    /// `bytes a-b/T` or `bytes a-b/*`, or the whole upload when there is no Content-Range.
    Chunk { first: u64, total: Option<u64> },
}

fn parse_content_range(v: Option<&str>, body_len: usize) -> Result<Put, DriveError> {
    let bad = || DriveError::bad_request("Failed to parse Content-Range header.");
    let Some(v) = v else {
        return Ok(Put::Chunk {
            first: 0,
            total: Some(body_len as u64),
        });
    };
    let spec = v.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, total) = spec.split_once('/').ok_or_else(bad)?;
    let total = match total {
        "*" => None,
        t => Some(t.parse::<u64>().map_err(|_| bad())?),
    };
    if range == "*" {
        return Ok(Put::Query { total });
    }
    let (a, b) = range.split_once('-').ok_or_else(bad)?;
    let (a, b) = (
        a.parse::<u64>().map_err(|_| bad())?,
        b.parse::<u64>().map_err(|_| bad())?,
    );
    if b < a || b - a + 1 != body_len as u64 {
        return Err(DriveError::bad_request(
            "The Content-Range does not match the length of the body.",
        ));
    }
    Ok(Put::Chunk { first: a, total })
}

/// `PUT /upload/drive/v3/files[/{id}]?uploadType=resumable&upload_id=…`.
pub(crate) async fn put(
    State(emu): State<Emulator>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    let p = params(q);
    let id = p.get("upload_id").cloned().unwrap_or_default();
    let mut sessions = emu.uploads.lock();
    let now = emu.now();
    match sessions.get(&id) {
        Some(s) if s.expires_at > now => {}
        Some(_) => {
            sessions.remove(&id);
            return DriveError::upload_session_not_found().into_response();
        }
        None => return DriveError::upload_session_not_found().into_response(),
    }
    let session = sessions.get_mut(&id).expect("checked above");
    let range = header_str(&headers, "content-range");
    let cut = extensions.get::<CutUpload>().map(|c| c.0);
    match step(&emu, session, range, body, cut) {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// Applies one `PUT` to the session.
fn step(
    emu: &Emulator,
    s: &mut Session,
    range: Option<&str>,
    body: Bytes,
    cut: Option<Option<u64>>,
) -> DriveResult {
    let put = parse_content_range(range, body.len())?;
    let total = match put {
        Put::Query { total } | Put::Chunk { total, .. } => total,
    };
    if let (Some(known), Some(t)) = (s.total, total) {
        if known != t {
            return Err(DriveError::bad_request(
                "The total size does not match the upload's.",
            ));
        }
    }
    if let Some(done) = &s.done {
        return Ok(Json(done.clone()).into_response());
    }
    s.total = s.total.or(total);
    let first = match put {
        Put::Query { .. } => {
            if !body.is_empty() {
                return Err(DriveError::bad_request("A status query has no body."));
            }
            emu.stats.inc(Counter::ResumableQueries);
            return answer(emu, s);
        }
        Put::Chunk { first, .. } => first,
    };
    // Docs silent on overlaps and gaps; strictest plausible: a chunk starts exactly at the
    // first byte not yet received, as the guide's resume procedure makes a client do.
    if first != s.received.len() as u64 {
        return Err(DriveError::bad_request(format!(
            "The chunk starts at byte {first}; the next byte expected is {}.",
            s.received.len()
        )));
    }
    let end = first + body.len() as u64;
    if s.total.is_some_and(|t| end > t) {
        return Err(DriveError::bad_request(
            "The chunk goes past the total size.",
        ));
    }
    let last = s.total == Some(end);
    // Docs silent on what a wrong chunk size gets; strictest plausible: refused.
    if !last && !body.len().is_multiple_of(CHUNK_QUANTUM) {
        return Err(DriveError::bad_request(
            "Chunks other than the last must be a multiple of 256 KiB (262144 bytes).",
        ));
    }
    emu.stats.inc(Counter::ResumableChunks);
    let kept = match cut {
        Some(None) => Some(body.len() / 2),
        Some(Some(limit)) if (limit as usize) < body.len() => Some(limit as usize),
        _ => None,
    };
    if let Some(kept) = kept {
        // The connection drops part way: what arrived is kept, no answer is sent.
        s.received.extend_from_slice(&body[..kept]);
        emu.stats.inc(Counter::ResumableCut);
        let mut resp = StatusCode::INTERNAL_SERVER_ERROR.into_response();
        resp.extensions_mut().insert(DropConnection);
        return Ok(resp);
    }
    s.received.extend_from_slice(&body);
    answer(emu, s)
}

/// 308 with the received range, or the final answer once every byte is in.
fn answer(emu: &Emulator, s: &mut Session) -> DriveResult {
    if s.total == Some(s.received.len() as u64) {
        return complete(emu, s);
    }
    let mut resp = Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::CONTENT_LENGTH, 0);
    if !s.received.is_empty() {
        resp = resp.header(header::RANGE, format!("bytes=0-{}", s.received.len() - 1));
    }
    Ok(resp
        .body(axum::body::Body::empty())
        .expect("valid response"))
}

fn complete(emu: &Emulator, s: &mut Session) -> DriveResult {
    let media = Bytes::from(std::mem::take(&mut s.received));
    // A session whose completion failed (its target is gone) is over.
    let Some(target) = s.target.take() else {
        return Err(DriveError::upload_session_not_found());
    };
    let file = match target {
        Target::Create(spec) => {
            let mut drive = s.account.drive.lock();
            spec.create(&mut drive, media, s.media_type.clone())?
        }
        Target::Update { file_id, meta } => {
            handlers::update_file(&s.account, &file_id, &HashMap::new(), meta, Some(media))?
        }
    };
    emu.stats.inc(Counter::ResumableCompleted);
    let body = fields::apply(handlers::json_file(&file), &s.sel);
    s.done = Some(body.clone());
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range(Some("bytes */100"), 0).unwrap(),
            Put::Query { total: Some(100) }
        );
        assert_eq!(
            parse_content_range(Some("bytes */*"), 0).unwrap(),
            Put::Query { total: None }
        );
        assert_eq!(
            parse_content_range(Some("bytes 0-9/*"), 10).unwrap(),
            Put::Chunk {
                first: 0,
                total: None
            }
        );
        assert_eq!(
            parse_content_range(None, 7).unwrap(),
            Put::Chunk {
                first: 0,
                total: Some(7)
            }
        );
        assert!(parse_content_range(Some("bytes 0-9/20"), 9).is_err());
        assert!(parse_content_range(Some("bytes=0-9/20"), 10).is_err());
    }
}
