//! Content reads: `GET /v1/users/{sub}/files/{file_id}/content` and
//! `GET /v1/users/{sub}/content?path=...`. Streamed from the mirror (never buffered whole),
//! with `ETag: "md5"`, `If-None-Match` → 304 (answered before the mirror is touched), and a
//! single `Range` → 206 (416 when it is past the end; several ranges are served as 200).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::reads::path as path_param;
use super::{parse_query, ApiError, ApiState};
use crate::services::data::{ContentItem, Item};

/// Longest `path` accepted.
const MAX_PATH: usize = 4096;

pub(super) async fn by_id(
    State(s): State<ApiState>,
    params: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (sub, file_id) = path_param(params)?;
    let item = s.services.content_item(&sub, Item::Id(&file_id)).await?;
    serve(&s, item, &headers).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathQuery {
    path: Option<String>,
}

pub(super) async fn by_path(
    State(s): State<ApiState>,
    params: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sub = path_param(params)?;
    let q: PathQuery = parse_query(raw.as_deref())?;
    let path = item_path(q.path)?;
    let item = s.services.content_item(&sub, Item::Path(&path)).await?;
    serve(&s, item, &headers).await
}

/// The `path` query parameter, checked: `docs/a.json` (a leading `/` is the same path).
pub(super) fn item_path(raw: Option<String>) -> Result<String, ApiError> {
    let raw = raw.unwrap_or_default();
    let path = raw.strip_prefix('/').unwrap_or(&raw);
    if path.is_empty() || path.len() > MAX_PATH || path.contains('\0') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("path must be 1 to {MAX_PATH} bytes, e.g. path=docs/a.json"),
        ));
    }
    Ok(path.to_string())
}

/// What the request's `Range` asks of content of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    All,
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

/// One range, `bytes=A-B`, `bytes=A-` or `bytes=-N`. Anything else (several ranges, other
/// units, garbage) is ignored, as RFC 9110 allows: the whole content is served.
fn wanted(header: Option<&str>, size: Option<u64>) -> Wanted {
    let (Some(spec), Some(size)) = (header.and_then(|h| h.strip_prefix("bytes=")), size) else {
        return Wanted::All;
    };
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(start), Some(last)) if start <= last => start..last.saturating_add(1).min(size),
        (Some(_), Some(_)) => return Wanted::All,
        (Some(start), None) if b.is_empty() => start..size,
        (None, Some(n)) if a.is_empty() => size.saturating_sub(n)..size,
        _ => return Wanted::All,
    };
    if range.start >= size || range.is_empty() {
        Wanted::Unsatisfiable
    } else {
        Wanted::Part(range)
    }
}

fn etag(item: &ContentItem) -> Option<String> {
    item.file.md5.as_ref().map(|md5| format!("\"{md5}\""))
}

/// `If-None-Match: "a", W/"b"` or `*` matches `etag`.
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    let Some(value) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    value
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

async fn serve(s: &ApiState, item: ContentItem, headers: &HeaderMap) -> Result<Response, ApiError> {
    let etag = etag(&item);
    if let Some(tag) = &etag {
        if none_match(headers, tag) {
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            insert(&mut r, header::ETAG, tag);
            return Ok(r);
        }
    }
    // If-Range with another validator: the content changed, send all of it.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| etag.as_deref() == Some(v));
    let range_header = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_ok);
    let size = item.file.size.and_then(|s| u64::try_from(s).ok());
    let range = match wanted(range_header, size) {
        Wanted::All => None,
        Wanted::Part(r) => Some(r),
        Wanted::Unsatisfiable => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the content is {} bytes", size.unwrap_or(0)),
            )
            .into_response();
            insert(
                &mut r,
                header::CONTENT_RANGE,
                &format!("bytes */{}", size.unwrap_or(0)),
            );
            return Ok(r);
        }
    };
    let partial = range.is_some();
    let content = s.services.read_content(&item, range).await?;
    let (start, end) = (content.range.start, content.range.end);
    let mut r = Response::new(Body::from_stream(content.body));
    if partial && end > start {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        insert(
            &mut r,
            header::CONTENT_RANGE,
            &format!("bytes {start}-{}/{}", end - 1, content.total),
        );
    }
    let mime = item
        .file
        .mime_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    insert(&mut r, header::CONTENT_TYPE, mime);
    insert(&mut r, header::CONTENT_LENGTH, &(end - start).to_string());
    insert(&mut r, header::ACCEPT_RANGES, "bytes");
    if let Some(tag) = &etag {
        insert(&mut r, header::ETAG, tag);
    }
    Ok(r)
}

/// Sets a header; a value that is not a valid header (a strange mime type from Drive) is left
/// out rather than failing the read.
fn insert(r: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        let w = |h: &str| wanted(Some(h), Some(100));
        assert_eq!(w("bytes=0-9"), Wanted::Part(0..10));
        assert_eq!(w("bytes=90-"), Wanted::Part(90..100));
        assert_eq!(w("bytes=-10"), Wanted::Part(90..100));
        assert_eq!(w("bytes=-1000"), Wanted::Part(0..100));
        assert_eq!(w("bytes=95-200"), Wanted::Part(95..100));
        assert_eq!(w("bytes=100-"), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=-0"), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=0-1,5-6"), Wanted::All);
        assert_eq!(w("items=0-1"), Wanted::All);
        assert_eq!(w("bytes=9-1"), Wanted::All);
        assert_eq!(w("bytes=x-"), Wanted::All);
        assert_eq!(wanted(None, Some(100)), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-1"), None), Wanted::All);
    }
}
