//! Handlers for Drive v3 (appDataFolder only): files.list/get/create/update/delete and the
//! changes feed. Authentication happened in the front layer (`super::front`), which hands over
//! an [`Authed`] or the Drive error to answer with.
//!
//! Reference: <https://developers.google.com/drive/api/reference/rest/v3>

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::drive::error::DriveError;
use crate::drive::fields::{self, Schema, Sel};
use crate::drive::store::DEFAULT_MIME;
use crate::drive::{multipart, query};
use crate::emulator::Account;
use crate::Emulator;

/// The authenticated caller of a Drive request, or why there is none.
#[derive(Clone)]
pub(crate) struct AuthOutcome(pub(crate) Result<Arc<Account>, DriveError>);

pub(crate) struct Authed(Arc<Account>);

impl<S: Send + Sync> FromRequestParts<S> for Authed {
    type Rejection = DriveError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, DriveError> {
        match parts.extensions.get::<AuthOutcome>() {
            Some(AuthOutcome(Ok(a))) => Ok(Authed(a.clone())),
            Some(AuthOutcome(Err(e))) => Err(e.clone()),
            None => Err(DriveError::unauthenticated()),
        }
    }
}

type DriveResult = Result<Response, DriveError>;

pub(crate) fn params(query: Option<String>) -> HashMap<String, String> {
    query
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(&q).ok())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn selection(
    p: &HashMap<String, String>,
    schema: Schema,
    default: &'static OnceLock<Sel>,
    default_spec: &str,
) -> Result<Sel, DriveError> {
    match p.get("fields") {
        Some(spec) if !spec.is_empty() => fields::parse(spec, schema),
        _ => Ok(default
            .get_or_init(|| fields::parse(default_spec, schema).expect("valid default"))
            .clone()),
    }
}

fn file_selection(p: &HashMap<String, String>) -> Result<Sel, DriveError> {
    static DEFAULT: OnceLock<Sel> = OnceLock::new();
    selection(p, Schema::File, &DEFAULT, "kind,id,name,mimeType")
}

fn page_size(p: &HashMap<String, String>) -> Result<usize, DriveError> {
    let Some(raw) = p.get("pageSize") else {
        return Ok(100);
    };
    match raw.parse::<i64>() {
        Ok(n @ 1..=1000) => Ok(n as usize),
        _ => Err(DriveError::invalid_param(
            "pageSize",
            format!("Invalid value '{raw}'. Values must be within the range: [1, 1000]"),
        )),
    }
}

/// Whether `spaces` (default `drive`) includes appDataFolder; unknown spaces are a 400.
fn wants_appdata(p: &HashMap<String, String>) -> Result<bool, DriveError> {
    let spaces = p.get("spaces").map(String::as_str).unwrap_or("drive");
    let mut appdata = false;
    for s in spaces.split(',').map(str::trim) {
        match s {
            "appDataFolder" => appdata = true,
            "drive" | "photos" => {}
            _ => return Err(DriveError::invalid_param("spaces", "Invalid Value")),
        }
    }
    Ok(appdata)
}

fn json_file(f: &crate::DriveFile) -> Value {
    serde_json::to_value(f).expect("DriveFile serialises")
}

fn ok_json(v: Value) -> DriveResult {
    Ok(Json(v).into_response())
}

#[derive(Clone, Copy)]
enum OrderKey {
    Name,
    Modified,
    Created,
}

fn order_by(p: &HashMap<String, String>) -> Result<Vec<(OrderKey, bool)>, DriveError> {
    let Some(spec) = p.get("orderBy") else {
        return Ok(vec![]);
    };
    let bad = || DriveError::invalid_param("orderBy", "Invalid Value");
    let mut keys = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let mut words = part.split_whitespace();
        let key = match words.next().ok_or_else(bad)? {
            "name" | "name_natural" => Some(OrderKey::Name),
            "modifiedTime" | "modifiedByMeTime" | "recency" => Some(OrderKey::Modified),
            "createdTime" => Some(OrderKey::Created),
            // Real Drive keys that cannot distinguish appdata files: accepted, no effect.
            "folder" | "quotaBytesUsed" | "starred" | "viewedByMeTime" | "sharedWithMeTime" => None,
            _ => return Err(bad()),
        };
        let desc = match words.next() {
            None => false,
            Some("desc") => true,
            Some("asc") => false,
            Some(_) => return Err(bad()),
        };
        if words.next().is_some() {
            return Err(bad());
        }
        if let Some(k) = key {
            keys.push((k, desc));
        }
    }
    Ok(keys)
}

/// files.list page tokens are opaque to clients; here, an offset behind a marker.
fn encode_list_token(offset: usize) -> String {
    B64.encode(format!("fg-list:{offset}"))
}

fn decode_list_token(token: &str) -> Option<usize> {
    let raw = B64.decode(token).ok()?;
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix("fg-list:")?
        .parse()
        .ok()
}

pub(crate) async fn files_list(
    State(_emu): State<Emulator>,
    Authed(account): Authed,
    RawQuery(q): RawQuery,
) -> DriveResult {
    static DEFAULT: OnceLock<Sel> = OnceLock::new();
    let p = params(q);
    let sel = selection(
        &p,
        Schema::FileList,
        &DEFAULT,
        "kind,incompleteSearch,nextPageToken,files(kind,id,name,mimeType)",
    )?;
    let size = page_size(&p)?;
    let appdata = wants_appdata(&p)?;
    let filter = match p.get("q").filter(|q| !q.trim().is_empty()) {
        Some(q) => {
            query::parse(q).ok_or_else(|| DriveError::invalid_param("q", "Invalid Value"))?
        }
        None => query::Query::default(),
    };
    let order = order_by(&p)?;
    let offset = match p.get("pageToken") {
        Some(t) => decode_list_token(t)
            .ok_or_else(|| DriveError::invalid_param("pageToken", "Invalid Value"))?,
        None => 0,
    };
    let (files, next) = {
        let drive = account.drive.lock();
        let mut matching: Vec<_> = if appdata {
            drive
                .files_in_order()
                .into_iter()
                .filter(|e| filter.matches(&e.file, &drive.folder_id))
                .map(|e| &e.file)
                .collect()
        } else {
            Vec::new()
        };
        for &(key, desc) in order.iter().rev() {
            matching.sort_by(|a, b| {
                let o = match key {
                    OrderKey::Name => a.name.cmp(&b.name),
                    OrderKey::Modified => a.modified_time.cmp(&b.modified_time),
                    OrderKey::Created => a.created_time.cmp(&b.created_time),
                };
                if desc {
                    o.reverse()
                } else {
                    o
                }
            });
        }
        let page: Vec<Value> = matching
            .iter()
            .skip(offset)
            .take(size)
            .map(|f| json_file(f))
            .collect();
        let next = (offset + size < matching.len()).then(|| encode_list_token(offset + size));
        (page, next)
    };
    let mut body = json!({ "kind": "drive#fileList", "incompleteSearch": false });
    if let Some(next) = next {
        body["nextPageToken"] = next.into();
    }
    body["files"] = Value::Array(files);
    ok_json(fields::apply(body, &sel))
}

pub(crate) async fn files_get(
    Authed(account): Authed,
    Path(file_id): Path<String>,
    RawQuery(q): RawQuery,
) -> DriveResult {
    let p = params(q);
    let media = p.get("alt").map(String::as_str) == Some("media");
    let drive = account.drive.lock();
    if drive.is_folder(&file_id) {
        if media {
            return Err(DriveError::forbidden(
                "fileNotDownloadable",
                "Only files with binary content can be downloaded. Use Export with Docs Editors files.",
            ));
        }
        return ok_json(fields::apply(drive.folder_json(), &file_selection(&p)?));
    }
    let entry = drive
        .files
        .get(&file_id)
        .ok_or_else(|| DriveError::not_found(&file_id))?;
    if media {
        let mime = HeaderValue::from_str(&entry.file.mime_type)
            .unwrap_or(HeaderValue::from_static(DEFAULT_MIME));
        return Ok(([(header::CONTENT_TYPE, mime)], entry.content.clone()).into_response());
    }
    let sel = file_selection(&p)?;
    ok_json(fields::apply(json_file(&entry.file), &sel))
}

/// Metadata a client may send on create or update.
#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: Option<String>,
    mime_type: Option<String>,
    parents: Option<Vec<String>>,
    #[serde(flatten)]
    other: HashMap<String, Value>,
}

/// Fields Drive refuses to have written directly.
const NOT_WRITABLE: &[&str] = &[
    "id",
    "kind",
    "size",
    "md5Checksum",
    "version",
    "headRevisionId",
    "spaces",
    "createdTime",
];

fn parse_metadata(raw: &[u8], creating: bool) -> Result<Metadata, DriveError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(Metadata::default());
    }
    let meta: Metadata = serde_json::from_slice(raw)
        .map_err(|e| DriveError::bad_request(format!("Invalid JSON payload received. {e}")))?;
    let unwritable = meta
        .other
        .keys()
        .any(|k| NOT_WRITABLE.contains(&k.as_str()))
        || (!creating && meta.parents.is_some());
    if unwritable {
        return Err(DriveError::forbidden(
            "fieldNotWritable",
            "The resource body includes fields which are not directly writable.",
        ));
    }
    Ok(meta)
}

/// New files must go into the appDataFolder: the emulator has no other space.
fn check_parents(parents: &Option<Vec<String>>, folder_id: &str) -> Result<(), DriveError> {
    match parents.as_deref() {
        None | Some([]) => Err(DriveError::forbidden(
            "insufficientFilePermissions",
            "The user does not have sufficient permissions for this file.",
        )),
        Some([p]) if p == "appDataFolder" || p == folder_id => Ok(()),
        Some([p]) => Err(DriveError::not_found(p)),
        Some(_) => Err(DriveError::forbidden(
            "cannotAddParent",
            "Increasing the number of parents is not allowed.",
        )),
    }
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// An upload body, split per `uploadType`.
struct Upload {
    meta: Metadata,
    media: Bytes,
    media_type: Option<String>,
}

fn upload(
    p: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
    creating: bool,
) -> Result<Upload, DriveError> {
    match p.get("uploadType").map(String::as_str) {
        Some("media") => Ok(Upload {
            meta: Metadata::default(),
            media: body,
            media_type: content_type(headers),
        }),
        Some("multipart") => {
            let ct = content_type(headers).unwrap_or_default();
            let boundary = multipart::boundary(&ct).ok_or_else(|| {
                DriveError::bad_request("Content-Type must be multipart/related with a boundary")
            })?;
            let related = multipart::parse(&body, &boundary)
                .ok_or_else(|| DriveError::bad_request("Malformed multipart body."))?;
            Ok(Upload {
                meta: parse_metadata(&related.metadata, creating)?,
                media: related.media,
                media_type: related.media_type,
            })
        }
        Some("resumable") => Err(DriveError::invalid_param(
            "uploadType",
            "Resumable uploads are not emulated by fake-google.",
        )),
        Some(_) => Err(DriveError::invalid_param("uploadType", "Invalid Value")),
        None => Err(DriveError::bad_request(
            "Upload requests must include an uploadType URL parameter and a URL path beginning with /upload/",
        )),
    }
}

pub(crate) async fn files_create_upload(
    Authed(account): Authed,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> DriveResult {
    let p = params(q);
    let sel = file_selection(&p)?;
    let up = upload(&p, &headers, body, true)?;
    let mut drive = account.drive.lock();
    let multipart = p.get("uploadType").map(String::as_str) == Some("multipart");
    if multipart {
        check_parents(&up.meta.parents, &drive.folder_id)?;
    }
    let mime = up.meta.mime_type.or(up.media_type);
    let name = up.meta.name.unwrap_or_else(|| "Untitled".into());
    let file = drive.create(&name, mime.as_deref(), up.media);
    ok_json(fields::apply(json_file(&file), &sel))
}

/// `POST /drive/v3/files`: metadata-only create (an empty file).
pub(crate) async fn files_create_metadata(
    Authed(account): Authed,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> DriveResult {
    let p = params(q);
    let sel = file_selection(&p)?;
    let meta = parse_metadata(&body, true)?;
    let mut drive = account.drive.lock();
    check_parents(&meta.parents, &drive.folder_id)?;
    let name = meta.name.unwrap_or_else(|| "Untitled".into());
    let file = drive.create(&name, meta.mime_type.as_deref(), Bytes::new());
    ok_json(fields::apply(json_file(&file), &sel))
}

fn update(
    account: &Account,
    file_id: &str,
    p: &HashMap<String, String>,
    meta: Metadata,
    media: Option<Bytes>,
) -> DriveResult {
    let sel = file_selection(p)?;
    let mut drive = account.drive.lock();
    if drive.is_folder(file_id) {
        return Err(DriveError::forbidden(
            "insufficientFilePermissions",
            "The user does not have sufficient permissions for this file.",
        ));
    }
    let file = drive
        .update(
            file_id,
            media,
            meta.name.as_deref(),
            meta.mime_type.as_deref(),
        )
        .ok_or_else(|| DriveError::not_found(file_id))?;
    ok_json(fields::apply(json_file(&file), &sel))
}

pub(crate) async fn files_update_upload(
    Authed(account): Authed,
    Path(file_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> DriveResult {
    let p = params(q);
    let up = upload(&p, &headers, body, false)?;
    update(&account, &file_id, &p, up.meta, Some(up.media))
}

pub(crate) async fn files_update_metadata(
    Authed(account): Authed,
    Path(file_id): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> DriveResult {
    let p = params(q);
    let meta = parse_metadata(&body, false)?;
    update(&account, &file_id, &p, meta, None)
}

pub(crate) async fn files_delete(
    Authed(account): Authed,
    Path(file_id): Path<String>,
) -> DriveResult {
    let mut drive = account.drive.lock();
    if drive.is_folder(&file_id) {
        return Err(DriveError::forbidden(
            "insufficientFilePermissions",
            "The user does not have sufficient permissions for this file.",
        ));
    }
    if !drive.delete(&file_id) {
        return Err(DriveError::not_found(&file_id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn start_page_token(
    Authed(account): Authed,
    RawQuery(q): RawQuery,
) -> DriveResult {
    static DEFAULT: OnceLock<Sel> = OnceLock::new();
    let p = params(q);
    let sel = selection(&p, Schema::StartPageToken, &DEFAULT, "kind,startPageToken")?;
    let token = account.drive.lock().start_page_token();
    ok_json(fields::apply(
        json!({ "kind": "drive#startPageToken", "startPageToken": token.to_string() }),
        &sel,
    ))
}

pub(crate) async fn changes_list(Authed(account): Authed, RawQuery(q): RawQuery) -> DriveResult {
    static DEFAULT: OnceLock<Sel> = OnceLock::new();
    let p = params(q);
    let sel = selection(
        &p,
        Schema::ChangeList,
        &DEFAULT,
        "kind,nextPageToken,newStartPageToken,\
         changes(kind,changeType,type,time,removed,fileId,file(kind,id,name,mimeType))",
    )?;
    let Some(token) = p.get("pageToken") else {
        return Err(DriveError::required("pageToken"));
    };
    let size = page_size(&p)?;
    let appdata = wants_appdata(&p)?;
    let include_removed = match p.get("includeRemoved").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(DriveError::invalid_param("includeRemoved", "Invalid Value")),
    };
    let body = {
        let drive = account.drive.lock();
        let start = drive
            .parse_page_token(token)
            .map_err(|_| DriveError::invalid_param("pageToken", "Invalid Value"))?;
        let mut body = json!({ "kind": "drive#changeList" });
        if !appdata {
            body["newStartPageToken"] = drive.start_page_token().to_string().into();
            body["changes"] = json!([]);
        } else {
            let page = drive.changes_since(start, size);
            let changes: Vec<Value> = page
                .changes
                .iter()
                .filter(|(_, f)| include_removed || f.is_some())
                .map(|(rec, f)| {
                    let mut c = json!({
                        "kind": "drive#change", "changeType": "file", "type": "file",
                        "time": rec.time, "removed": f.is_none(), "fileId": rec.file_id,
                    });
                    if let Some(f) = f {
                        c["file"] = json_file(f);
                    }
                    c
                })
                .collect();
            if let Some(n) = page.next_page_token {
                body["nextPageToken"] = n.to_string().into();
            }
            if let Some(n) = page.new_start_page_token {
                body["newStartPageToken"] = n.to_string().into();
            }
            body["changes"] = Value::Array(changes);
        }
        body
    };
    ok_json(fields::apply(body, &sel))
}
