//! Writes: `PUT` and `DELETE` on `/v1/users/{sub}/content?path=...` and
//! `/v1/users/{sub}/files/{file_id}/content`, and `GET /v1/writes/{id}`. A write key is
//! required to write. The body is streamed to the spool, never held whole; the answer is the
//! write (202 while it waits for the user's sync, or its outcome with `sync=now`).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::content::item_path;
use super::reads::path as path_param;
use super::{parse_query, ApiError, ApiKey, ApiState, WriteKey};
use crate::services::data::Item;
use crate::services::writes::{WriteTarget, WriteView};
use crate::store::writes::WriteState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathWriteQuery {
    path: Option<String>,
    sync: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdWriteQuery {
    sync: Option<String>,
}

/// `sync=now`: carry the write out at once. Nothing else is a value of `sync`.
fn sync_now(raw: Option<&str>) -> Result<bool, ApiError> {
    match raw {
        None => Ok(false),
        Some("now") => Ok(true),
        Some(_) => Err(ApiError::bad_query("sync takes one value: now")),
    }
}

/// A path to write: a name in an existing folder (no empty segment).
fn write_path(raw: Option<String>) -> Result<String, ApiError> {
    let path = item_path(raw)?;
    if path.split('/').any(str::is_empty) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "a path to write names a file: no empty segment, no trailing /",
        ));
    }
    Ok(path)
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The body's type, which the file gets. Drive's own types (`application/vnd.google-apps.*`)
/// carry no content, and a multipart form is not the content itself: 415.
fn content_type(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let unsupported = |why: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type: {why}; send the file's own type, e.g. application/json"),
        )
    };
    let value = value
        .to_str()
        .map_err(|_| unsupported("not a media type"))?
        .trim();
    let essence = value.split(';').next().unwrap_or("").trim();
    let valid = essence.split_once('/').is_some_and(|(t, s)| {
        let token = |x: &str| !x.is_empty() && !x.contains(|c: char| c.is_whitespace() || c == '/');
        token(t) && token(s)
    });
    if !valid {
        return Err(unsupported("not a media type"));
    }
    let essence = essence.to_ascii_lowercase();
    if essence.starts_with("application/vnd.google-apps.") {
        return Err(unsupported("a Google-native type has no content to upload"));
    }
    if essence.starts_with("multipart/") {
        return Err(unsupported("a multipart body is not a file's content"));
    }
    Ok(Some(value.to_string()))
}

/// Content-Length, when sent (a chunked body has none).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    header_text(headers, header::CONTENT_LENGTH)
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "Content-Length is not a number",
                )
            })
        })
        .transpose()
}

async fn put(
    s: &ApiState,
    target: WriteTarget<'_>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mime_type = content_type(headers)?;
    let size = content_length(headers)?;
    let view = s
        .services
        .put_content(&target, mime_type.as_deref(), size, body.into_data_stream())
        .await?;
    answer(view)
}

pub(super) async fn put_by_path(
    State(s): State<ApiState>,
    _: WriteKey,
    params: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let sub = path_param(params)?;
    let q: PathWriteQuery = parse_query(raw.as_deref())?;
    let path = write_path(q.path)?;
    let target = target(
        &sub,
        Item::Path(&path),
        &headers,
        sync_now(q.sync.as_deref())?,
    );
    put(&s, target, &headers, body).await
}

pub(super) async fn put_by_id(
    State(s): State<ApiState>,
    _: WriteKey,
    params: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (sub, file_id) = path_param(params)?;
    let q: IdWriteQuery = parse_query(raw.as_deref())?;
    let target = target(
        &sub,
        Item::Id(&file_id),
        &headers,
        sync_now(q.sync.as_deref())?,
    );
    put(&s, target, &headers, body).await
}

pub(super) async fn delete_by_path(
    State(s): State<ApiState>,
    _: WriteKey,
    params: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sub = path_param(params)?;
    let q: PathWriteQuery = parse_query(raw.as_deref())?;
    let path = write_path(q.path)?;
    let target = target(
        &sub,
        Item::Path(&path),
        &headers,
        sync_now(q.sync.as_deref())?,
    );
    answer(s.services.delete_content(&target).await?)
}

pub(super) async fn delete_by_id(
    State(s): State<ApiState>,
    _: WriteKey,
    params: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (sub, file_id) = path_param(params)?;
    let q: IdWriteQuery = parse_query(raw.as_deref())?;
    let target = target(
        &sub,
        Item::Id(&file_id),
        &headers,
        sync_now(q.sync.as_deref())?,
    );
    answer(s.services.delete_content(&target).await?)
}

pub(super) async fn write(
    State(s): State<ApiState>,
    _: ApiKey,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<WriteView>, ApiError> {
    let id = path_param(id)?;
    Ok(Json(s.services.write_view(id).await?))
}

fn target<'a>(
    sub: &'a str,
    item: Item<'a>,
    headers: &'a HeaderMap,
    sync_now: bool,
) -> WriteTarget<'a> {
    WriteTarget {
        sub,
        item,
        if_match: header_text(headers, header::IF_MATCH),
        if_none_match: header_text(headers, header::IF_NONE_MATCH),
        sync_now,
    }
}

/// The write as it stands: 202 while it waits for a sync, 200 once done, and a 409 or 502
/// error (with the write) when it conflicted or failed.
fn answer(view: WriteView) -> Result<Response, ApiError> {
    let location = format!("/v1/writes/{}", view.id);
    let status = match view.state {
        WriteState::Pending => StatusCode::ACCEPTED,
        WriteState::Done => StatusCode::OK,
        WriteState::Conflict => {
            let message = view.error.clone().unwrap_or_default();
            return Err(ApiError::new(StatusCode::CONFLICT, "conflict", message)
                .with(json!({ "write": view })));
        }
        WriteState::Failed => {
            let message = view.error.clone().unwrap_or_default();
            return Err(
                ApiError::new(StatusCode::BAD_GATEWAY, "write_failed", message)
                    .with(json!({ "write": view })),
            );
        }
    };
    let etag = view.md5.as_ref().filter(|_| view.state == WriteState::Done);
    let etag = etag.map(|md5| format!("\"{md5}\""));
    let mut response = (status, Json(view)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    if let Some(v) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        headers.insert(header::ETAG, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_body_type_must_be_a_media_type_with_content() {
        let ok = |v: &str| content_type(&with_type(v)).ok().flatten();
        assert_eq!(ok("application/json"), Some("application/json".into()));
        assert_eq!(
            ok("text/plain; charset=utf-8"),
            Some("text/plain; charset=utf-8".into())
        );
        for bad in [
            "json",
            "application/",
            "/json",
            "a/b/c",
            "application/vnd.google-apps.document",
            "multipart/form-data; boundary=x",
        ] {
            let e = content_type(&with_type(bad)).err();
            assert_eq!(e.map(|e| e.code), Some("unsupported_media_type"), "{bad}");
        }
        assert_eq!(content_type(&HeaderMap::new()).ok(), Some(None));
    }
}
