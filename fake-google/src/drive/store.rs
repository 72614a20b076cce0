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
pub(crate) const DEFAULT_MIME: &str = "application/octet-stream";

/// A Drive v3 File resource, with Drive's JSON names (`size` and `version` are strings there).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DriveFile {
    pub kind: String,
    pub id: String,
    pub name: String,
    pub mime_type: String,
    pub parents: Vec<String>,
    #[serde(with = "as_string")]
    pub size: u64,
    pub md5_checksum: String,
    /// Strictly increasing with every change of the file.
    #[serde(with = "as_string")]
    pub version: u64,
    /// RFC 3339 with milliseconds, e.g. `2026-01-02T03:04:05.678Z`.
    pub modified_time: String,
    pub created_time: String,
    pub head_revision_id: String,
    pub trashed: bool,
    pub spaces: Vec<String>,
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
}

/// Drive serialises int64 fields as JSON strings.
mod as_string {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

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
        }
    }
}

fn md5_hex(content: &[u8]) -> String {
    hex::encode(Md5::digest(content))
}

impl Drive {
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

    /// Whether `id` names the folder (`appDataFolder` alias or its real id).
    pub(crate) fn is_folder(&self, id: &str) -> bool {
        id == "appDataFolder" || id == self.folder_id
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

    /// Files in creation order.
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

    pub(crate) fn create(&mut self, name: &str, mime: Option<&str>, content: Bytes) -> DriveFile {
        let id = ids::file_id();
        let now = now_rfc3339();
        let seq = self.record_change(&id, &now);
        let file = DriveFile {
            kind: "drive#file".into(),
            id: id.clone(),
            name: name.to_string(),
            mime_type: mime.unwrap_or(DEFAULT_MIME).to_string(),
            parents: vec![self.folder_id.clone()],
            size: content.len() as u64,
            md5_checksum: md5_hex(&content),
            version: seq,
            modified_time: now.clone(),
            created_time: now,
            head_revision_id: ids::revision_id(),
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
        file
    }

    /// Changes content and/or metadata; `None` when there is no such file.
    pub(crate) fn update(
        &mut self,
        id: &str,
        content: Option<Bytes>,
        name: Option<&str>,
        mime: Option<&str>,
    ) -> Option<DriveFile> {
        if !self.files.contains_key(id) {
            return None;
        }
        let now = now_rfc3339();
        let seq = self.record_change(id, &now);
        let entry = self.files.get_mut(id)?;
        let f = &mut entry.file;
        if let Some(content) = content {
            f.size = content.len() as u64;
            f.md5_checksum = md5_hex(&content);
            f.head_revision_id = ids::revision_id();
            entry.content = content;
        }
        if let Some(name) = name {
            f.name = name.to_string();
        }
        if let Some(mime) = mime {
            f.mime_type = mime.to_string();
        }
        f.version = seq;
        f.modified_time = now;
        Some(f.clone())
    }

    pub(crate) fn delete(&mut self, id: &str) -> bool {
        if self.files.remove(id).is_none() {
            return false;
        }
        self.record_change(id, &now_rfc3339());
        true
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
}
