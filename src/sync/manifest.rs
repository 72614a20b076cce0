//! `SUB/manifest.json` in the mirror: every item of the user with its path, for consumers
//! that read the files and nothing else. Rewritten (atomically) after every sync that changed
//! something, and whenever it is missing.

use std::collections::BTreeMap;

use serde::Serialize;

use super::mirror::Mirror;
use super::{SyncEngine, SyncError};
use crate::store::{self, files};

#[derive(Serialize)]
struct Manifest<'a> {
    sub: &'a str,
    /// When it was written (unix ms).
    generated_at: i64,
    /// Paths come from Drive's names and folders: best-effort (names are not unique).
    files: BTreeMap<&'a str, Entry<'a>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    path: &'a str,
    name: &'a str,
    mime_type: Option<&'a str>,
    size: Option<i64>,
    md5: Option<&'a str>,
    version: Option<i64>,
    modified_time: Option<&'a str>,
    /// A folder or a Google-native file: no content in the mirror.
    metadata_only: bool,
}

/// Writes the manifest when `changed` or when there is none yet.
pub(super) async fn refresh(
    engine: &SyncEngine,
    sub: &str,
    changed: bool,
) -> Result<(), SyncError> {
    let relative = Mirror::manifest_path(sub)?;
    if !changed && engine.mirror.exists(&relative).await {
        return Ok(());
    }
    let mut conn = engine.store.pool().acquire().await?;
    let rows = files::list(&mut conn, sub).await?;
    drop(conn);
    let paths = files::paths(&rows);
    let manifest = Manifest {
        sub,
        generated_at: store::now_ms(),
        files: rows
            .iter()
            .map(|r| {
                let entry = Entry {
                    path: paths.get(&r.file_id).map_or("", String::as_str),
                    name: &r.name,
                    mime_type: r.mime_type.as_deref(),
                    size: r.size,
                    md5: r.md5.as_deref(),
                    version: r.version,
                    modified_time: r.modified_time.as_deref(),
                    metadata_only: r.metadata_only,
                };
                (r.file_id.as_str(), entry)
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    engine.mirror.put(&relative, json.into()).await?;
    Ok(())
}
