//! What the data API reads: users a page at a time, one user, a user's files with their paths,
//! a file's content from the mirror, and the change feed (see [`super::feed`]). The typed
//! results here are what the API sends as JSON (docs/openapi.json describes them).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{ServiceError, Services};
use crate::store::changes::{self, Change};
use crate::store::files::{self, FileRow, FOLDER_MIME};
use crate::store::users::{self, UserState, UserSummary};
use crate::store::{schedule, user_pages};
use crate::sync::mirror::Content;

/// `GET /v1/users` pages hold at most this many.
pub const MAX_PAGE: i64 = 1000;
/// The longest long poll of `GET /v1/changes`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Why a data read was refused, beyond [`ServiceError`].
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("no item {file_id:?} in the mirror of user {sub:?}")]
    UnknownFile { sub: String, file_id: String },
    #[error("no item at path {path:?} in the mirror of user {sub:?}")]
    UnknownPath { sub: String, path: String },
    #[error("{} items share the path {path:?}; read one by id", ids.len())]
    AmbiguousPath { path: String, ids: Vec<String> },
    #[error("{file_id:?} is a {kind} and has no content: read its metadata in the file list")]
    MetadataOnly { file_id: String, kind: ItemKind },
    #[error("the mirror has no content for {0:?} right now (a sync is replacing it); retry")]
    ContentMissing(String),
    #[error("{0}")]
    InvalidCursor(String),
    #[error("the cursor is older than the feed's retention: changes after it were pruned; resync (see docs/data-api.md)")]
    CursorExpired,
    #[error("{file_id:?} exists: a write to it must say which version it replaces (If-Match: \"MD5\" or \"VERSION\" from the file list, or * for any)")]
    PreconditionRequired { file_id: String },
    #[error("{0}")]
    PreconditionFailed(PreconditionFailed),
    #[error("{file_id:?} is a {kind}: only files can be written")]
    NotWritable { file_id: String, kind: ItemKind },
    #[error("no folder at {parent:?} to create {path:?} in (folders are not created by writes)")]
    NoParentFolder { path: String, parent: String },
    #[error("the content is over [sync] max_file_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error(
        "the mirror's disk is under its free-space floor ([sync] min_free_disk_bytes); retry later"
    )]
    InsufficientStorage,
    #[error("no write {0}")]
    UnknownWrite(i64),
}

/// A write's precondition did not hold: what the item is now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreconditionFailed {
    pub message: String,
    pub file_id: Option<String>,
    pub md5: Option<String>,
    pub version: Option<i64>,
}

impl std::fmt::Display for PreconditionFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<sqlx::Error> for DataError {
    fn from(e: sqlx::Error) -> Self {
        DataError::Service(ServiceError::Database(e))
    }
}

/// What an item of the appDataFolder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// Content is mirrored and can be read.
    File,
    Folder,
    /// A Google-native item (Docs editors and such): Drive has no content to serve.
    Native,
    /// Content this daemon does not mirror because it is over a limit (`[sync]
    /// max_file_bytes`, `max_user_bytes`, `max_files_per_user`; the user's `over_quota` says).
    Withheld,
}

impl std::fmt::Display for ItemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ItemKind::File => "file",
            ItemKind::Folder => "folder",
            ItemKind::Native => "Google-native item",
            ItemKind::Withheld => {
                "item whose content is over a limit of this daemon (not mirrored)"
            }
        })
    }
}

/// Drive's own types (folders, Docs editors files): no content to download.
const GOOGLE_APPS_MIME: &str = "application/vnd.google-apps.";

pub(super) fn kind_of(row: &FileRow) -> ItemKind {
    let mime = row.mime_type.as_deref().unwrap_or("");
    match (row.metadata_only, mime) {
        (_, FOLDER_MIME) => ItemKind::Folder,
        (true, m) if m.starts_with(GOOGLE_APPS_MIME) => ItemKind::Native,
        (true, _) => ItemKind::Withheld,
        (false, _) => ItemKind::File,
    }
}

/// `GET /v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserPage {
    pub users: Vec<UserSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/users/{sub}`: the profile, state, last sync and counts. Never a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserView {
    pub sub: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub picture: Option<String>,
    pub locale: Option<String>,
    pub state: UserState,
    pub last_error: Option<String>,
    /// Why some of the user's content is not mirrored (a limit); null within limits.
    pub over_quota: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_sync_at: Option<i64>,
    pub files: i64,
    pub bytes: i64,
    /// Cross-Account Protection: why Google disabled the account (nothing calls Google for
    /// the user meanwhile); null: not suspended.
    pub suspended_by_google: Option<String>,
    /// When Google said the user must change a credential (unix ms); null: no flag.
    pub credential_change_required_at: Option<i64>,
}

/// One item of `GET /v1/users/{sub}/files`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileView {
    pub id: String,
    pub name: String,
    /// From the appDataFolder's root through parent folders' names: best-effort (Drive names
    /// are not unique and may contain '/').
    pub path: String,
    /// Another item has the same path: read this one by id.
    pub path_ambiguous: bool,
    pub kind: ItemKind,
    pub metadata_only: bool,
    pub mime_type: Option<String>,
    pub size: Option<i64>,
    pub md5: Option<String>,
    pub version: Option<i64>,
    pub modified_time: Option<String>,
    pub parent_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileListing {
    pub files: Vec<FileView>,
}

/// How a content read names its item.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    Id(&'a str),
    /// A path as [`FileView::path`] gives it: `docs/a.json`.
    Path(&'a str),
}

/// An item with content to serve (its metadata first: the ETag and the size that a Range is
/// checked against come from here, before the mirror is touched).
#[derive(Debug, Clone)]
pub struct ContentItem {
    pub file: FileView,
    /// `SUB/FILE_ID` in the mirror.
    local_path: String,
}

/// One change of the feed, as `GET /v1/changes` and webhooks send it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedChange {
    /// Resume after this change with this cursor.
    pub cursor: String,
    /// `file.added`, `file.updated`, `file.removed`, `user.signed_in`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub sub: String,
    /// When it entered the feed (unix ms).
    pub at: i64,
    pub file_id: Option<String>,
    pub path: Option<String>,
    pub md5: Option<String>,
    pub version: Option<i64>,
    /// User changes: the user's state after it.
    pub state: Option<String>,
    pub detail: Option<serde_json::Value>,
}

impl From<Change> for FeedChange {
    fn from(c: Change) -> Self {
        FeedChange {
            cursor: encode_change_cursor(c.seq),
            kind: c.kind.as_str().to_string(),
            sub: c.sub,
            at: c.sequenced_at,
            file_id: c.file_id,
            path: c.path,
            md5: c.md5,
            version: c.version,
            state: c.state,
            detail: c.detail.and_then(|d| serde_json::from_str(&d).ok()),
        }
    }
}

/// `GET /v1/changes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangePage {
    pub changes: Vec<FeedChange>,
    /// Where to continue: the cursor of the last change returned, or the one given.
    pub next_cursor: String,
}

/// `GET /v1/changes/cursor`: the feed's head, to follow from now on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadCursor {
    pub cursor: String,
}

/// Change cursors are opaque to clients: `c1_` and the seq in hex.
pub fn encode_change_cursor(seq: i64) -> String {
    format!("c1_{seq:x}")
}

pub fn decode_change_cursor(cursor: &str) -> Result<i64, DataError> {
    cursor
        .strip_prefix("c1_")
        .filter(|hex| !hex.is_empty() && hex.len() <= 16)
        .and_then(|hex| i64::from_str_radix(hex, 16).ok())
        .filter(|seq| *seq >= 0)
        .ok_or_else(|| DataError::InvalidCursor(format!("{cursor:?} is not a change cursor")))
}

/// User-page cursors: `u1_` and the last sub, base64url.
fn encode_user_cursor(sub: &str) -> String {
    format!(
        "u1_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sub)
    )
}

fn decode_user_cursor(cursor: &str) -> Result<String, DataError> {
    cursor
        .strip_prefix("u1_")
        .and_then(|b| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b)
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| DataError::InvalidCursor(format!("{cursor:?} is not a user cursor")))
}

impl Services {
    /// A page of users (optionally in one state), `limit` at most, after `cursor`.
    pub async fn user_page(
        &self,
        state: Option<UserState>,
        cursor: Option<&str>,
        limit: i64,
    ) -> Result<UserPage, DataError> {
        let after = cursor.map(decode_user_cursor).transpose()?;
        let limit = limit.clamp(1, MAX_PAGE);
        let mut conn = self.store.pool().acquire().await?;
        let mut users = user_pages::page(&mut conn, state, after.as_deref(), limit + 1).await?;
        let next_cursor = if users.len() as i64 > limit {
            users.truncate(limit as usize);
            users.last().map(|u| encode_user_cursor(&u.sub))
        } else {
            None
        };
        Ok(UserPage { users, next_cursor })
    }

    pub async fn user_view(&self, sub: &str) -> Result<UserView, DataError> {
        let u = self.user_row(sub).await?;
        let mut conn = self.store.pool().acquire().await?;
        let sync = schedule::sync_state(&mut conn, sub)
            .await?
            .unwrap_or_default();
        let totals = files::totals(&mut conn, sub).await?;
        let security = users::security(&mut conn, sub).await?.unwrap_or_default();
        let p = u.profile;
        Ok(UserView {
            sub: p.sub,
            email: p.email,
            email_verified: p.email_verified,
            name: p.name,
            given_name: p.given_name,
            family_name: p.family_name,
            picture: p.picture,
            locale: p.locale,
            state: u.state,
            last_error: u.last_error,
            over_quota: u.over_quota,
            created_at: u.created_at,
            updated_at: u.updated_at,
            last_sync_at: sync.last_sync_at,
            files: totals.files,
            bytes: totals.bytes,
            suspended_by_google: security.suspended_by_google,
            credential_change_required_at: security.credential_change_required_at,
        })
    }

    /// Every mirrored item of `sub`, with paths.
    pub async fn file_listing(&self, sub: &str) -> Result<FileListing, DataError> {
        let rows = self.file_rows(sub).await?;
        Ok(FileListing {
            files: views(&rows),
        })
    }

    pub(super) async fn file_rows(&self, sub: &str) -> Result<Vec<FileRow>, DataError> {
        let mut conn = self.store.pool().acquire().await?;
        let rows = files::list(&mut conn, sub).await?;
        if rows.is_empty() {
            drop(conn);
            self.user_row(sub).await?;
        }
        Ok(rows)
    }

    /// The item of `sub` that `item` names, if it has content to read.
    pub async fn content_item(&self, sub: &str, item: Item<'_>) -> Result<ContentItem, DataError> {
        let (file, local_path) = match item {
            Item::Id(file_id) => {
                let mut conn = self.store.pool().acquire().await?;
                let row = files::get(&mut conn, sub, file_id).await?;
                drop(conn);
                let Some(row) = row else {
                    self.user_row(sub).await?;
                    return Err(DataError::UnknownFile {
                        sub: sub.into(),
                        file_id: file_id.into(),
                    });
                };
                (
                    FileView::from_row(&row, String::new(), false),
                    row.local_path,
                )
            }
            Item::Path(path) => {
                let rows = self.file_rows(sub).await?;
                let all = views(&rows);
                let mut matching = all.into_iter().filter(|f| f.path == path);
                let (Some(one), None) = (matching.next(), matching.next()) else {
                    return Err(self.path_error(sub, path, &rows));
                };
                let local = rows
                    .iter()
                    .find(|r| r.file_id == one.id)
                    .map(|r| r.local_path.clone())
                    .unwrap_or_default();
                (one, local)
            }
        };
        if file.kind != ItemKind::File {
            return Err(DataError::MetadataOnly {
                file_id: file.id,
                kind: file.kind,
            });
        }
        Ok(ContentItem { file, local_path })
    }

    /// Why no single item has `path`: none has it, or several have.
    pub(super) fn path_error(&self, sub: &str, path: &str, rows: &[FileRow]) -> DataError {
        let mut ids: Vec<String> = views(rows)
            .into_iter()
            .filter(|f| f.path == path)
            .map(|f| f.id)
            .collect();
        if ids.is_empty() {
            return DataError::UnknownPath {
                sub: sub.into(),
                path: path.into(),
            };
        }
        ids.sort();
        DataError::AmbiguousPath {
            path: path.into(),
            ids,
        }
    }

    /// The content of `item` (the bytes `range` asks for, clamped to the content; or all),
    /// streamed from the mirror.
    pub async fn read_content(
        &self,
        item: &ContentItem,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Content, DataError> {
        if item.local_path.is_empty() {
            return Err(DataError::ContentMissing(item.file.id.clone()));
        }
        let content = self
            .mirror
            .read(&item.local_path, range)
            .await
            .map_err(|e| ServiceError::Unavailable(format!("cannot read the mirror: {e}")))?;
        content.ok_or_else(|| DataError::ContentMissing(item.file.id.clone()))
    }

    /// Changes after `cursor` (from the oldest kept when `None`), at most `limit`; when there
    /// are none yet, waits up to `wait` for some.
    pub async fn changes_after(
        &self,
        cursor: Option<&str>,
        limit: i64,
        wait: Duration,
    ) -> Result<ChangePage, DataError> {
        let mut conn = self.store.pool().acquire().await?;
        let head = changes::head(&mut conn).await?;
        let from = match cursor {
            Some(c) => decode_change_cursor(c)?,
            None => head.pruned_through,
        };
        if from < head.pruned_through {
            return Err(DataError::CursorExpired);
        }
        if from > head.last_seq {
            return Err(DataError::InvalidCursor(
                "the cursor is ahead of the feed: it is not from this database".into(),
            ));
        }
        let limit = limit.clamp(1, MAX_PAGE);
        let deadline = Instant::now() + wait.min(MAX_WAIT);
        loop {
            let found = changes::after(&mut conn, from, limit).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !found.is_empty() || left.is_zero() || self.data.feed.is_closed() {
                let next_cursor = found.last().map_or_else(
                    || encode_change_cursor(from),
                    |c| encode_change_cursor(c.seq),
                );
                return Ok(ChangePage {
                    changes: found.into_iter().map(FeedChange::from).collect(),
                    next_cursor,
                });
            }
            // Give the connection back while waiting.
            drop(conn);
            self.data.feed.wait_past(from, left).await;
            conn = self.store.pool().acquire().await?;
        }
    }

    /// The cursor of the feed's head: changes from now on come after it.
    pub async fn change_head(&self) -> Result<HeadCursor, DataError> {
        let mut conn = self.store.pool().acquire().await?;
        let head = changes::head(&mut conn).await?;
        Ok(HeadCursor {
            cursor: encode_change_cursor(head.last_seq),
        })
    }
}

impl FileView {
    fn from_row(row: &FileRow, path: String, path_ambiguous: bool) -> FileView {
        FileView {
            id: row.file_id.clone(),
            name: row.name.clone(),
            path,
            path_ambiguous,
            kind: kind_of(row),
            metadata_only: row.metadata_only,
            mime_type: row.mime_type.clone(),
            size: row.size,
            md5: row.md5.clone(),
            version: row.version,
            modified_time: row.modified_time.clone(),
            parent_id: row.parent_id.clone(),
        }
    }
}

/// Every row as a [`FileView`], paths resolved and shared paths flagged.
pub(super) fn views(rows: &[FileRow]) -> Vec<FileView> {
    let paths = files::paths(rows);
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for p in paths.values() {
        *uses.entry(p.as_str()).or_default() += 1;
    }
    rows.iter()
        .map(|r| {
            let path = paths.get(&r.file_id).cloned().unwrap_or_default();
            let shared = uses.get(path.as_str()).copied().unwrap_or(0) > 1;
            FileView::from_row(r, path, shared)
        })
        .collect()
}
