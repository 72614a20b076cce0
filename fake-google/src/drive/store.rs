//! One user's appDataFolder: files, their contents, and the changes feed.
//!
//! The feed keeps one entry per file (its latest change), keyed by a per-user sequence number;
//! page tokens are those numbers in decimal, like Drive's. Collapsing several changes of a file
//! into the latest is what Drive does too, and it keeps memory bounded by the number of files.
//! An idle user's `changes.list` is a single empty B-tree range query.

use bytes::Bytes;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

use crate::ids;

pub(crate) const FOLDER_MIME: &str = "application/vnd.google-apps.folder";
pub(crate) const SHORTCUT_MIME: &str = "application/vnd.google-apps.shortcut";
pub(crate) const NATIVE_PREFIX: &str = "application/vnd.google-apps.";
pub(crate) const DEFAULT_MIME: &str = "application/octet-stream";

/// A Drive v3 File resource, with Drive's JSON names (`size` and `version` are strings there).
///
/// Fields Drive leaves out for some kinds of file are empty here and absent from the JSON:
/// `md5Checksum` and `headRevisionId` exist only for files with binary content, `size` not for
/// folders or shortcuts
/// (<https://developers.google.com/drive/api/reference/rest/v3/files#File>).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DriveFile {
    pub kind: String,
    pub id: String,
    pub name: String,
    pub mime_type: String,
    pub parents: Vec<String>,
    /// 0 (and absent from the JSON) for folders.
    #[serde(default, deserialize_with = "as_string::deserialize")]
    pub size: u64,
    /// Empty (and absent from the JSON) for folders and Google-native files.
    #[serde(default)]
    pub md5_checksum: String,
    /// Strictly increasing with every change of the file.
    #[serde(deserialize_with = "as_string::deserialize")]
    pub version: u64,
    /// RFC 3339 with milliseconds, e.g. `2026-01-02T03:04:05.678Z`.
    pub modified_time: String,
    pub created_time: String,
    /// Empty (and absent from the JSON) for folders and Google-native files.
    #[serde(default)]
    pub head_revision_id: String,
    pub trashed: bool,
    pub spaces: Vec<String>,
}

impl Serialize for DriveFile {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            kind: &'a str,
            id: &'a str,
            name: &'a str,
            mime_type: &'a str,
            parents: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            size: Option<String>,
            #[serde(skip_serializing_if = "str::is_empty")]
            md5_checksum: &'a str,
            version: String,
            modified_time: &'a str,
            created_time: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            head_revision_id: &'a str,
            trashed: bool,
            spaces: &'a [String],
        }
        Wire {
            kind: &self.kind,
            id: &self.id,
            name: &self.name,
            mime_type: &self.mime_type,
            parents: &self.parents,
            size: has_size(&self.mime_type).then(|| self.size.to_string()),
            md5_checksum: &self.md5_checksum,
            version: self.version.to_string(),
            modified_time: &self.modified_time,
            created_time: &self.created_time,
            head_revision_id: &self.head_revision_id,
            trashed: self.trashed,
            spaces: &self.spaces,
        }
        .serialize(s)
    }
}

impl DriveFile {
    pub fn modified_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.modified_time)
            .ok()
            .map(|t| t.into())
    }

    pub fn created_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.created_time)
            .ok()
            .map(|t| t.into())
    }

    pub fn is_folder(&self) -> bool {
        self.mime_type == FOLDER_MIME
    }

    /// Folders, Docs, Sheets…: no binary content, so no md5 and no `alt=media`.
    pub fn is_google_native(&self) -> bool {
        is_native(&self.mime_type)
    }
}

/// `application/vnd.google-apps.*`: folders and Docs-editors files have no binary content
/// (<https://developers.google.com/drive/api/guides/mime-types>).
pub(crate) fn is_native(mime: &str) -> bool {
    mime.starts_with(NATIVE_PREFIX)
}

/// "Size in bytes of blobs and first party editor files. Won't be populated for files that
/// have no size, like shortcuts and folders."
/// (<https://developers.google.com/drive/api/reference/rest/v3/files#File.FIELDS.size>)
fn has_size(mime: &str) -> bool {
    mime != FOLDER_MIME && mime != SHORTCUT_MIME
}

/// Drive serialises int64 fields as JSON strings.
mod as_string {
    use serde::{de::Error, Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

pub(crate) struct Entry {
    pub(crate) file: DriveFile,
    pub(crate) content: Bytes,
    /// Creation order, the default listing order.
    pub(crate) order: u64,
}

pub(crate) struct ChangeRec {
    pub(crate) file_id: String,
    pub(crate) time: String,
}

/// Why a change page token was refused.
#[derive(Debug)]
pub(crate) struct BadPageToken;

pub(crate) struct ChangePage<'a> {
    /// (change record, the file if it still exists)
    pub(crate) changes: Vec<(&'a ChangeRec, Option<&'a DriveFile>)>,
    pub(crate) next_page_token: Option<u64>,
    pub(crate) new_start_page_token: Option<u64>,
}

/// What a create may be refused for; `http::drive` turns these into Drive's errors.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CreateError {
    ParentNotFound(String),
    ParentNotFolder(String),
    /// A client-supplied id that `files.generateIds` did not hand out (for this space).
    IdNotUsable,
    /// A client-supplied id that already names a file.
    IdInUse,
}

/// What a move (`addParents`/`removeParents`) may be refused for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MoveError {
    ParentNotFound(String),
    ParentNotFolder(String),
    /// The file would end up with more than one parent.
    TooManyParents,
    /// The file would end up with no parent.
    NoParent,
    /// A folder moved under itself or one of its descendants.
    Cycle,
}

/// A new file or folder. `parent` None is the appDataFolder; `id` None draws a fresh one.
pub(crate) struct NewFile<'a> {
    pub(crate) name: &'a str,
    pub(crate) mime: Option<&'a str>,
    pub(crate) content: Bytes,
    pub(crate) parent: Option<&'a str>,
    pub(crate) id: Option<&'a str>,
}

impl<'a> NewFile<'a> {
    pub(crate) fn root(name: &'a str, mime: Option<&'a str>, content: Bytes) -> Self {
        Self {
            name,
            mime,
            content,
            parent: None,
            id: None,
        }
    }
}

/// A change to an existing file; `None` leaves that part alone.
#[derive(Default)]
pub(crate) struct Edit<'a> {
    pub(crate) content: Option<Bytes>,
    pub(crate) name: Option<&'a str>,
    pub(crate) mime: Option<&'a str>,
    /// (addParents, removeParents), ids as the client sent them.
    pub(crate) reparent: Option<(Vec<String>, Vec<String>)>,
}

pub(crate) struct Drive {
    pub(crate) folder_id: String,
    pub(crate) files: HashMap<String, Entry>,
    /// The number the next change gets; also the current start page token.
    next_seq: u64,
    changes: BTreeMap<u64, ChangeRec>,
    latest: HashMap<String, u64>,
    /// Page tokens below this were invalidated.
    floor: u64,
    next_order: u64,
    /// Ids handed out by `files.generateIds` and not used yet, with the space they are for.
    generated: HashMap<String, String>,
    /// The user's storage quota in bytes (`set_storage_limit`); `None`: unlimited.
    pub(crate) storage_limit: Option<u64>,
    /// The app may read but not change the user's files (`set_read_only`).
    pub(crate) read_only: bool,
}

impl Default for Drive {
    fn default() -> Self {
        Self {
            folder_id: ids::folder_id(),
            files: HashMap::new(),
            next_seq: 1,
            changes: BTreeMap::new(),
            latest: HashMap::new(),
            floor: 1,
            next_order: 0,
            generated: HashMap::new(),
            storage_limit: None,
            read_only: false,
        }
    }
}

fn md5_hex(content: &[u8]) -> String {
    hex::encode(Md5::digest(content))
}

impl Drive {
    /// Refuses a change when the app may not change the user's files: Drive's 403
    /// `insufficientFilePermissions` ("Resolve a 403 error: Insufficient file permissions",
    /// https://developers.google.com/drive/api/guides/handle-errors).
    pub(crate) fn check_writable(
        &self,
        file_id: &str,
    ) -> Result<(), crate::drive::error::DriveError> {
        if self.read_only {
            return Err(crate::drive::error::DriveError::forbidden(
                "insufficientFilePermissions",
                format!("The user does not have sufficient permissions for file {file_id}."),
            ));
        }
        Ok(())
    }

    /// Whether `adding` bytes of content (in place of the content of `replacing`) fit in the
    /// user's storage quota. Trashed files count, as they do at Drive.
    pub(crate) fn has_room(&self, adding: u64, replacing: Option<&str>) -> bool {
        let Some(limit) = self.storage_limit else {
            return true;
        };
        let used: u64 = self.files.values().map(|e| e.file.size).sum();
        let freed = replacing
            .and_then(|id| self.files.get(id))
            .map_or(0, |e| e.file.size);
        used.saturating_sub(freed).saturating_add(adding) <= limit
    }

    /// The appDataFolder itself, as `files.get("appDataFolder")` returns it.
    pub(crate) fn folder_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "drive#file",
            "id": self.folder_id,
            "name": "Application Data",
            "mimeType": FOLDER_MIME,
            "parents": [],
            "trashed": false,
            "spaces": ["appDataFolder"],
        })
    }

    /// Whether `id` names the appDataFolder itself (`appDataFolder` alias or its real id).
    pub(crate) fn is_root(&self, id: &str) -> bool {
        id == "appDataFolder" || id == self.folder_id
    }

    /// The folder id a client's parent reference names: the root, or a folder in the space.
    fn resolve_folder(&self, id: &str) -> Result<String, (bool, String)> {
        if self.is_root(id) {
            return Ok(self.folder_id.clone());
        }
        match self.files.get(id) {
            Some(e) if e.file.is_folder() => Ok(id.to_string()),
            Some(_) => Err((true, id.to_string())),
            None => Err((false, id.to_string())),
        }
    }

    fn record_change(&mut self, file_id: &str, time: &str) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(old) = self.latest.insert(file_id.to_string(), seq) {
            self.changes.remove(&old);
        }
        self.changes.insert(
            seq,
            ChangeRec {
                file_id: file_id.to_string(),
                time: time.to_string(),
            },
        );
        seq
    }

    /// Files in creation order, nested ones included.
    pub(crate) fn files_in_order(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.files.values().collect();
        v.sort_by_key(|e| e.order);
        v
    }

    pub(crate) fn first_named(&self, name: &str) -> Option<String> {
        self.files
            .values()
            .filter(|e| e.file.name == name)
            .min_by_key(|e| e.order)
            .map(|e| e.file.id.clone())
    }

    /// Hands out `count` ids usable by a later create in `space`.
    pub(crate) fn generate_ids(&mut self, count: usize, space: &str) -> Vec<String> {
        (0..count)
            .map(|_| {
                let id = ids::file_id();
                self.generated.insert(id.clone(), space.to_string());
                id
            })
            .collect()
    }

    /// Checks a client-supplied id without using it up (resumable sessions check early).
    pub(crate) fn check_new_id(&self, id: &str) -> Result<(), CreateError> {
        if self.files.contains_key(id) || self.is_root(id) {
            return Err(CreateError::IdInUse);
        }
        match self.generated.get(id) {
            Some(space) if space == "appDataFolder" => Ok(()),
            _ => Err(CreateError::IdNotUsable),
        }
    }

    /// Checks a parent reference without creating anything.
    pub(crate) fn check_parent(&self, parent: Option<&str>) -> Result<(), CreateError> {
        match parent {
            None => Ok(()),
            Some(p) => self.resolve_folder(p).map(|_| ()).map_err(|(file, id)| {
                if file {
                    CreateError::ParentNotFolder(id)
                } else {
                    CreateError::ParentNotFound(id)
                }
            }),
        }
    }

    /// Always succeeds: a new file in the appDataFolder with a fresh id.
    pub(crate) fn create(&mut self, name: &str, mime: Option<&str>, content: Bytes) -> DriveFile {
        self.create_with(NewFile::root(name, mime, content))
            .expect("the root exists and fresh ids are free")
    }

    pub(crate) fn create_with(&mut self, new: NewFile<'_>) -> Result<DriveFile, CreateError> {
        self.check_parent(new.parent)?;
        let parent = match new.parent {
            Some(p) => self.resolve_folder(p).expect("checked"),
            None => self.folder_id.clone(),
        };
        let id = match new.id {
            Some(id) => {
                self.check_new_id(id)?;
                // Used up: the same id cannot create a second file, even after a delete.
                self.generated.remove(id);
                id.to_string()
            }
            None => ids::file_id(),
        };
        let mime = new.mime.unwrap_or(DEFAULT_MIME);
        let native = is_native(mime);
        let content = if mime == FOLDER_MIME {
            Bytes::new()
        } else {
            new.content
        };
        let now = now_rfc3339();
        let seq = self.record_change(&id, &now);
        let file = DriveFile {
            kind: "drive#file".into(),
            id: id.clone(),
            name: new.name.to_string(),
            mime_type: mime.to_string(),
            parents: vec![parent],
            size: content.len() as u64,
            md5_checksum: if native {
                String::new()
            } else {
                md5_hex(&content)
            },
            version: seq,
            modified_time: now.clone(),
            created_time: now,
            head_revision_id: if native {
                String::new()
            } else {
                ids::revision_id()
            },
            trashed: false,
            spaces: vec!["appDataFolder".into()],
        };
        let order = self.next_order;
        self.next_order += 1;
        self.files.insert(
            id,
            Entry {
                file: file.clone(),
                content,
                order,
            },
        );
        Ok(file)
    }

    /// A copy of file `id` in the appDataFolder, named `name`, as `files.copy` makes it: a new
    /// id, the same content, so the same `size` and `md5Checksum` ("md5Checksum: The MD5
    /// checksum for the content of the file", https://developers.google.com/drive/api/reference/rest/v3/files#File).
    /// The content is shared with the original, not duplicated, and its md5 not computed again:
    /// copies make a large appDataFolder cheaply. `None` when there is no such file or it is a
    /// folder (Drive cannot copy folders either).
    pub(crate) fn copy(&mut self, id: &str, name: &str) -> Option<DriveFile> {
        let source = self.files.get(id)?;
        if source.file.mime_type == FOLDER_MIME {
            return None;
        }
        let (content, mime, md5) = (
            source.content.clone(),
            source.file.mime_type.clone(),
            source.file.md5_checksum.clone(),
        );
        let copy = self.create(name, Some(&mime), Bytes::new());
        let entry = self.files.get_mut(&copy.id).expect("just created");
        entry.file.size = content.len() as u64;
        entry.file.md5_checksum = md5;
        entry.content = content;
        Some(entry.file.clone())
    }

    /// Changes content and/or metadata; `None` when there is no such file.
    pub(crate) fn update(
        &mut self,
        id: &str,
        content: Option<Bytes>,
        name: Option<&str>,
        mime: Option<&str>,
    ) -> Option<DriveFile> {
        let edit = Edit {
            content,
            name,
            mime,
            reparent: None,
        };
        self.edit(id, edit).ok()?
    }

    /// The new parent after `addParents`/`removeParents`, checked; `None` if unchanged.
    fn reparent_target(
        &self,
        id: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Option<String>, MoveError> {
        let current = &self.files[id].file.parents;
        let mut parents = current.clone();
        for r in remove {
            let r = self.resolve_folder(r).unwrap_or_else(|(_, r)| r);
            parents.retain(|p| *p != r);
        }
        for a in add {
            let a = self.resolve_folder(a).map_err(|(file, a)| {
                if file {
                    MoveError::ParentNotFolder(a)
                } else {
                    MoveError::ParentNotFound(a)
                }
            })?;
            if !parents.contains(&a) {
                parents.push(a);
            }
        }
        let new = match parents.as_slice() {
            [] => return Err(MoveError::NoParent),
            [new] => new,
            _ => return Err(MoveError::TooManyParents),
        };
        if self.is_ancestor_or_self(id, new) {
            return Err(MoveError::Cycle);
        }
        Ok((current[0] != *new).then(|| new.clone()))
    }

    /// Whether `folder` is `id` or lies beneath it.
    fn is_ancestor_or_self(&self, id: &str, folder: &str) -> bool {
        let mut at = folder.to_string();
        loop {
            if at == id {
                return true;
            }
            match self.files.get(&at).and_then(|e| e.file.parents.first()) {
                Some(p) => at = p.clone(),
                None => return false,
            }
        }
    }

    /// Applies `edit` as one change. Outer `Err`: a refused move; `Ok(None)`: no such file.
    pub(crate) fn edit(
        &mut self,
        id: &str,
        edit: Edit<'_>,
    ) -> Result<Option<DriveFile>, MoveError> {
        if !self.files.contains_key(id) {
            return Ok(None);
        }
        let new_parent = match &edit.reparent {
            Some((add, remove)) => self.reparent_target(id, add, remove)?,
            None => None,
        };
        let now = now_rfc3339();
        let seq = self.record_change(id, &now);
        let entry = self.files.get_mut(id).expect("checked above");
        let f = &mut entry.file;
        if let Some(mime) = edit.mime {
            f.mime_type = mime.to_string();
        }
        if let Some(content) = edit.content {
            f.size = content.len() as u64;
            if !is_native(&f.mime_type) {
                f.md5_checksum = md5_hex(&content);
                f.head_revision_id = ids::revision_id();
            }
            entry.content = content;
        }
        if let Some(name) = edit.name {
            f.name = name.to_string();
        }
        if let Some(p) = new_parent {
            f.parents = vec![p];
        }
        f.version = seq;
        f.modified_time = now;
        Ok(Some(f.clone()))
    }

    /// `id` and everything beneath it, deepest last.
    fn subtree(&self, id: &str) -> Vec<String> {
        let mut out = vec![id.to_string()];
        let mut i = 0;
        while i < out.len() {
            let parent = out[i].clone();
            let mut kids: Vec<&Entry> = self
                .files
                .values()
                .filter(|e| e.file.parents.first() == Some(&parent))
                .collect();
            kids.sort_by_key(|e| e.order);
            out.extend(kids.into_iter().map(|e| e.file.id.clone()));
            i += 1;
        }
        out
    }

    /// Deletes the file and, for a folder, every descendant: "If the target is a folder, all
    /// descendants owned by the user are also deleted"
    /// (<https://developers.google.com/drive/api/reference/rest/v3/files/delete>). Each removed
    /// file gets its own change. Returns how many files went, 0 if there was no such file.
    pub(crate) fn delete_tree(&mut self, id: &str) -> usize {
        if !self.files.contains_key(id) {
            return 0;
        }
        let doomed = self.subtree(id);
        let now = now_rfc3339();
        for f in &doomed {
            self.files.remove(f);
            self.record_change(f, &now);
        }
        doomed.len()
    }

    pub(crate) fn delete(&mut self, id: &str) -> bool {
        self.delete_tree(id) > 0
    }

    pub(crate) fn start_page_token(&self) -> u64 {
        self.next_seq
    }

    /// Every page token handed out so far stops working.
    pub(crate) fn invalidate_page_tokens(&mut self) {
        // Skip a number so that the current start token, too, is below the floor.
        self.next_seq += 1;
        self.floor = self.next_seq;
    }

    pub(crate) fn parse_page_token(&self, token: &str) -> Result<u64, BadPageToken> {
        let t: u64 = token.parse().map_err(|_| BadPageToken)?;
        if t < self.floor || t > self.next_seq || !token.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadPageToken);
        }
        Ok(t)
    }

    pub(crate) fn changes_since(&self, token: u64, page_size: usize) -> ChangePage<'_> {
        let mut changes = Vec::new();
        let mut next_page_token = None;
        for (&seq, rec) in self.changes.range(token..) {
            if changes.len() == page_size {
                next_page_token = Some(seq);
                break;
            }
            let file = self.files.get(&rec.file_id).map(|e| &e.file);
            changes.push((rec, file));
        }
        ChangePage {
            changes,
            new_start_page_token: next_page_token.is_none().then_some(self.next_seq),
            next_page_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_collapse_and_tokens_advance() {
        let mut d = Drive::default();
        let start = d.start_page_token();
        let f = d.create("a", None, Bytes::from_static(b"1"));
        d.update(&f.id, Some(Bytes::from_static(b"22")), None, None);
        let g = d.create("b", None, Bytes::new());
        let page = d.changes_since(start, 100);
        assert_eq!(page.changes.len(), 2, "two changes of a collapse into one");
        assert_eq!(page.new_start_page_token, Some(d.start_page_token()));
        let page = d.changes_since(start, 1);
        assert_eq!(page.changes.len(), 1);
        assert!(page.next_page_token.is_some());
        assert!(d.delete(&g.id));
        assert!(d.parse_page_token("999").is_err());
        d.invalidate_page_tokens();
        assert!(d.parse_page_token(&start.to_string()).is_err());
        assert!(d
            .parse_page_token(&d.start_page_token().to_string())
            .is_ok());
    }

    #[test]
    fn folders_nest_move_and_delete_with_their_descendants() {
        let mut d = Drive::default();
        let folder = |name| NewFile::root(name, Some(FOLDER_MIME), Bytes::new());
        let a = d.create_with(folder("a")).unwrap();
        let b = d
            .create_with(NewFile {
                parent: Some(&a.id),
                ..folder("b")
            })
            .unwrap();
        let leaf = d
            .create_with(NewFile {
                parent: Some(&b.id),
                ..NewFile::root("x", None, Bytes::from_static(b"1"))
            })
            .unwrap();
        assert_eq!(leaf.parents, vec![b.id.clone()]);
        let into_self = Edit {
            reparent: Some((vec![b.id.clone()], vec!["appDataFolder".into()])),
            ..Edit::default()
        };
        assert_eq!(d.edit(&a.id, into_self), Err(MoveError::Cycle));
        let two = Edit {
            reparent: Some((vec!["appDataFolder".into()], vec![])),
            ..Edit::default()
        };
        assert_eq!(d.edit(&leaf.id, two), Err(MoveError::TooManyParents));
        let start = d.start_page_token();
        assert_eq!(d.delete_tree(&a.id), 3);
        assert!(d.files.is_empty());
        assert_eq!(d.changes_since(start, 100).changes.len(), 3);
        let ids = d.generate_ids(2, "appDataFolder");
        assert_eq!(d.check_new_id("1nope"), Err(CreateError::IdNotUsable));
        let made = d
            .create_with(NewFile {
                id: Some(&ids[0]),
                ..NewFile::root("y", None, Bytes::new())
            })
            .unwrap();
        assert_eq!(made.id, ids[0]);
        assert_eq!(d.check_new_id(&ids[0]), Err(CreateError::IdInUse));
    }
}
