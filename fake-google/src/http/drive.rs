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
use crate::drive::store::{CreateError, Edit, MoveError, NewFile, DEFAULT_MIME};
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

pub(crate) fn file_selection(p: &HashMap<String, String>) -> Result<Sel, DriveError> {
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

pub(crate) fn json_file(f: &crate::DriveFile) -> Value {
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
    State(emu): State<Emulator>,
    Authed(account): Authed,
    Path(file_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> DriveResult {
    let p = params(q);
    let media = p.get("alt").map(String::as_str) == Some("media");
    let drive = account.drive.lock();
    if drive.is_root(&file_id) {
        if media {
            return Err(not_downloadable());
        }
        return ok_json(fields::apply(drive.folder_json(), &file_selection(&p)?));
    }
    let entry = drive
        .files
        .get(&file_id)
        .ok_or_else(|| DriveError::not_found(&file_id))?;
    if !media {
        let sel = file_selection(&p)?;
        return ok_json(fields::apply(json_file(&entry.file), &sel));
    }
    // Folders and Docs-editors files have no binary content to download.
    if entry.file.is_google_native() {
        return Err(not_downloadable());
    }
    let mime = HeaderValue::from_str(&entry.file.mime_type)
        .unwrap_or(HeaderValue::from_static(DEFAULT_MIME));
    let content = entry.content.clone();
    drop(drive);
    let resp = super::download::respond(mime, content, headers.get(header::RANGE))?;
    if resp.status() == StatusCode::PARTIAL_CONTENT {
        emu.stats.inc(crate::stats::Counter::MediaRanged);
    }
    Ok(resp)
}

/// 403 `fileNotDownloadable`, Drive's answer to `alt=media` on a folder or a Docs file
/// (<https://developers.google.com/drive/api/guides/manage-downloads>: "Only files with binary
/// content can be downloaded"; Docs-editors files need `files.export`).
fn not_downloadable() -> DriveError {
    DriveError::forbidden(
        "fileNotDownloadable",
        "Only files with binary content can be downloaded. Use Export with Docs Editors files.",
    )
}

/// Metadata a client may send on create or update.
#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Metadata {
    /// From `files.generateIds`; create only.
    id: Option<String>,
    name: Option<String>,
    mime_type: Option<String>,
    parents: Option<Vec<String>>,
    #[serde(flatten)]
    other: HashMap<String, Value>,
}

/// Fields Drive refuses to have written directly.
const NOT_WRITABLE: &[&str] = &[
    "kind",
    "size",
    "md5Checksum",
    "version",
    "headRevisionId",
    "spaces",
    "createdTime",
];

pub(crate) fn parse_metadata(raw: &[u8], creating: bool) -> Result<Metadata, DriveError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(Metadata::default());
    }
    let meta: Metadata = serde_json::from_slice(raw)
        .map_err(|e| DriveError::bad_request(format!("Invalid JSON payload received. {e}")))?;
    let unwritable = meta
        .other
        .keys()
        .any(|k| NOT_WRITABLE.contains(&k.as_str()))
        || (!creating && (meta.parents.is_some() || meta.id.is_some()));
    if unwritable {
        return Err(DriveError::forbidden(
            "fieldNotWritable",
            "The resource body includes fields which are not directly writable.",
        ));
    }
    Ok(meta)
}

/// New files must go into the appDataFolder or a folder inside it: the emulator has no other
/// space. Returns the single parent the client named.
fn the_parent(parents: &Option<Vec<String>>) -> Result<&str, DriveError> {
    match parents.as_deref() {
        None | Some([]) => Err(DriveError::forbidden(
            "insufficientFilePermissions",
            "The user does not have sufficient permissions for this file.",
        )),
        Some([p]) => Ok(p),
        Some(_) => Err(DriveError::forbidden(
            "cannotAddParent",
            "Increasing the number of parents is not allowed.",
        )),
    }
}

/// Drive's answers to a create the store refused.
pub(crate) fn create_error(e: CreateError) -> DriveError {
    match e {
        CreateError::ParentNotFound(p) => DriveError::not_found(&p),
        // Docs silent on the reason; "the value supplied is invalid" is badRequest in
        // https://developers.google.com/drive/api/guides/handle-errors#resolve_a_400_error_bad_request
        CreateError::ParentNotFolder(p) => {
            DriveError::bad_request(format!("The parent {p} is not a folder."))
        }
        CreateError::IdNotUsable => DriveError::id_not_usable(),
        CreateError::IdInUse => DriveError::id_in_use(),
    }
}

fn move_error(e: MoveError) -> DriveError {
    match e {
        MoveError::ParentNotFound(p) => DriveError::not_found(&p),
        MoveError::ParentNotFolder(p) => {
            DriveError::bad_request(format!("The parent {p} is not a folder."))
        }
        // Files have one parent since 2020; Drive refuses a second one with this error.
        MoveError::TooManyParents => DriveError::forbidden(
            "cannotAddParent",
            "Increasing the number of parents is not allowed.",
        ),
        // Docs silent; strictest plausible: refuse to orphan a file.
        MoveError::NoParent => DriveError::bad_request("A file must have exactly one parent."),
        // "You tried to add a parent that would create a cycle in the directory graph."
        // (https://developers.google.com/drive/api/guides/handle-errors)
        MoveError::Cycle => {
            DriveError::bad_request("The parent would create a cycle in the directory graph.")
        }
    }
}

/// Everything a create needs from the request, checked against the store before anything is
/// written (a resumable session checks at initiation, and again when the upload completes).
pub(crate) struct CreateSpec {
    pub(crate) meta: Metadata,
    /// The parent as the client named it; `None` means the appDataFolder (media uploads only).
    pub(crate) parent: Option<String>,
}

impl CreateSpec {
    /// `require_parent`: metadata-carrying creates must name the appDataFolder (or a folder in
    /// it), as an appdata-only client must.
    pub(crate) fn new(meta: Metadata, require_parent: bool) -> Result<Self, DriveError> {
        let parent = if require_parent {
            Some(the_parent(&meta.parents)?.to_string())
        } else {
            None
        };
        Ok(Self { meta, parent })
    }

    pub(crate) fn check(&self, drive: &crate::drive::store::Drive) -> Result<(), DriveError> {
        drive
            .check_parent(self.parent.as_deref())
            .map_err(create_error)?;
        drive.check_writable(self.parent.as_deref().unwrap_or("appDataFolder"))?;
        if let Some(id) = &self.meta.id {
            drive.check_new_id(id).map_err(create_error)?;
        }
        Ok(())
    }

    pub(crate) fn create(
        self,
        drive: &mut crate::drive::store::Drive,
        media: Bytes,
        media_type: Option<String>,
    ) -> Result<crate::DriveFile, DriveError> {
        drive.check_writable(self.parent.as_deref().unwrap_or("appDataFolder"))?;
        if !drive.has_room(media.len() as u64, None) {
            return Err(DriveError::storage_quota_exceeded());
        }
        let mime = self.meta.mime_type.or(media_type);
        let name = self.meta.name.unwrap_or_else(|| "Untitled".into());
        drive
            .create_with(NewFile {
                name: &name,
                mime: mime.as_deref(),
                content: media,
                parent: self.parent.as_deref(),
                id: self.meta.id.as_deref(),
            })
            .map_err(create_error)
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
        Some(_) => Err(DriveError::invalid_param("uploadType", "Invalid Value")),
        None => Err(DriveError::bad_request(
            "Upload requests must include an uploadType URL parameter and a URL path beginning with /upload/",
        )),
    }
}

pub(crate) async fn files_create_upload(
    State(emu): State<Emulator>,
    Authed(account): Authed,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> DriveResult {
    let p = params(q);
    let sel = file_selection(&p)?;
    if p.get("uploadType").map(String::as_str) == Some("resumable") {
        return super::resumable::initiate(&emu, &account, &p, &headers, &body, None);
    }
    let up = upload(&p, &headers, body, true)?;
    let multipart = p.get("uploadType").map(String::as_str) == Some("multipart");
    let spec = CreateSpec::new(up.meta, multipart)?;
    let mut drive = account.drive.lock();
    let file = spec.create(&mut drive, up.media, up.media_type)?;
    ok_json(fields::apply(json_file(&file), &sel))
}

/// `POST /drive/v3/files`: metadata-only create: an empty file, or a folder (mimeType
/// `application/vnd.google-apps.folder`) when asked for one, as
/// <https://developers.google.com/drive/api/guides/folder#create_a_folder> describes.
pub(crate) async fn files_create_metadata(
    Authed(account): Authed,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> DriveResult {
    let p = params(q);
    let sel = file_selection(&p)?;
    let spec = CreateSpec::new(parse_metadata(&body, true)?, true)?;
    let mut drive = account.drive.lock();
    let file = spec.create(&mut drive, Bytes::new(), None)?;
    ok_json(fields::apply(json_file(&file), &sel))
}

/// `files.generateIds`: ids a later create in the same space may use
/// (<https://developers.google.com/drive/api/reference/rest/v3/files/generateIds>).
pub(crate) async fn generate_ids(Authed(account): Authed, RawQuery(q): RawQuery) -> DriveResult {
    static DEFAULT: OnceLock<Sel> = OnceLock::new();
    let p = params(q);
    let sel = selection(&p, Schema::GeneratedIds, &DEFAULT, "kind,space,ids")?;
    // count: "Value must be between 1 and 1000", default 10 (Drive's discovery document).
    let count = match p.get("count").map(|c| c.parse::<i64>()) {
        None => 10,
        Some(Ok(n @ 1..=1000)) => n as usize,
        Some(_) => {
            return Err(DriveError::invalid_param(
                "count",
                "Invalid value. Values must be within the range: [1, 1000]",
            ))
        }
    };
    let space = p.get("space").map(String::as_str).unwrap_or("drive");
    if space != "drive" && space != "appDataFolder" {
        return Err(DriveError::invalid_param("space", "Invalid Value"));
    }
    // "shortcuts are only supported in the drive space."
    match p.get("type").map(String::as_str) {
        None | Some("files") => {}
        Some("shortcuts") if space == "drive" => {}
        Some(_) => return Err(DriveError::invalid_param("type", "Invalid Value")),
    }
    let ids = account.drive.lock().generate_ids(count, space);
    ok_json(fields::apply(
        json!({ "kind": "drive#generatedIds", "space": space, "ids": ids }),
        &sel,
    ))
}

/// The `addParents`/`removeParents` query parameters of files.update (comma-separated ids).
fn reparent(p: &HashMap<String, String>) -> Option<(Vec<String>, Vec<String>)> {
    let list = |k: &str| -> Vec<String> {
        p.get(k)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let (add, remove) = (list("addParents"), list("removeParents"));
    (!add.is_empty() || !remove.is_empty()).then_some((add, remove))
}

pub(crate) fn update(
    account: &Account,
    file_id: &str,
    p: &HashMap<String, String>,
    meta: Metadata,
    media: Option<Bytes>,
) -> DriveResult {
    let sel = file_selection(p)?;
    let file = update_file(account, file_id, p, meta, media)?;
    ok_json(fields::apply(json_file(&file), &sel))
}

/// Whether `file_id` may be updated (with content when `media`), before any byte arrives.
pub(crate) fn check_update(
    drive: &crate::drive::store::Drive,
    file_id: &str,
    media: bool,
) -> Result<(), DriveError> {
    if drive.is_root(file_id) {
        return Err(DriveError::forbidden(
            "insufficientFilePermissions",
            "The user does not have sufficient permissions for this file.",
        ));
    }
    let entry = drive
        .files
        .get(file_id)
        .ok_or_else(|| DriveError::not_found(file_id))?;
    drive.check_writable(file_id)?;
    if media && entry.file.is_folder() {
        // Docs silent; strictest plausible: a folder has no content to replace.
        return Err(DriveError::bad_request(
            "A folder has no content to upload.",
        ));
    }
    Ok(())
}

pub(crate) fn update_file(
    account: &Account,
    file_id: &str,
    p: &HashMap<String, String>,
    meta: Metadata,
    media: Option<Bytes>,
) -> Result<crate::DriveFile, DriveError> {
    let mut drive = account.drive.lock();
    check_update(&drive, file_id, media.is_some())?;
    if let Some(m) = &media {
        if !drive.has_room(m.len() as u64, Some(file_id)) {
            return Err(DriveError::storage_quota_exceeded());
        }
    }
    let edit = Edit {
        content: media,
        name: meta.name.as_deref(),
        mime: meta.mime_type.as_deref(),
        reparent: reparent(p),
    };
    drive
        .edit(file_id, edit)
        .map_err(move_error)?
        .ok_or_else(|| DriveError::not_found(file_id))
}

pub(crate) async fn files_update_upload(
    State(emu): State<Emulator>,
    Authed(account): Authed,
    Path(file_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> DriveResult {
    let p = params(q);
    if p.get("uploadType").map(String::as_str) == Some("resumable") {
        return super::resumable::initiate(&emu, &account, &p, &headers, &body, Some(file_id));
    }
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
    if drive.is_root(&file_id) {
        return Err(DriveError::forbidden(
            "insufficientFilePermissions",
            "The user does not have sufficient permissions for this file.",
        ));
    }
    if drive.files.contains_key(&file_id) {
        drive.check_writable(&file_id)?;
    }
    // A folder goes with all its descendants, each with its own change.
    if drive.delete_tree(&file_id) == 0 {
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
