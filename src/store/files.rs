//! `files`: the metadata of each mirrored item. The row is written after the content is in
//! place on disk, so a row always points at complete content. Folders and Google-native files
//! are rows without content (`metadata_only`); [`paths`] resolves each item's path from the
//! parent links.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Conn, Flag};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct FileRow {
    pub file_id: String,
    pub name: String,
    pub mime_type: Option<String>,
    pub size: Option<i64>,
    pub md5: Option<String>,
    pub version: Option<i64>,
    pub modified_time: Option<String>,
    /// Relative to the mirror's root: `SUB/FILE_ID` (empty for metadata-only items).
    pub local_path: String,
    /// The folder it is in; `None` (or an id that is no folder of the user's): the root.
    pub parent_id: Option<String>,
    /// No content is mirrored: a folder, a Google-native file, or anything Drive does not
    /// serve (`fileNotDownloadable`).
    #[sqlx(try_from = "Flag")]
    pub metadata_only: bool,
}

const COLUMNS: &str = "file_id, name, mime_type, size, md5, version, modified_time, local_path, \
                       parent_id, metadata_only";

/// Drive's folder type.
pub const FOLDER_MIME: &str = "application/vnd.google-apps.folder";

pub async fn list(conn: &mut Conn, sub: &str) -> Result<Vec<FileRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM files WHERE sub = $1 ORDER BY name, file_id"
    ))
    .bind(sub)
    .fetch_all(conn)
    .await
}

pub async fn by_id(conn: &mut Conn, sub: &str) -> Result<HashMap<String, FileRow>, sqlx::Error> {
    Ok(list(conn, sub)
        .await?
        .into_iter()
        .map(|f| (f.file_id.clone(), f))
        .collect())
}

pub async fn get(
    conn: &mut Conn,
    sub: &str,
    file_id: &str,
) -> Result<Option<FileRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM files WHERE sub = $1 AND file_id = $2"
    ))
    .bind(sub)
    .bind(file_id)
    .fetch_optional(conn)
    .await
}

/// The first file of that name (Drive allows several).
pub async fn by_name(
    conn: &mut Conn,
    sub: &str,
    name: &str,
) -> Result<Option<FileRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM files WHERE sub = $1 AND name = $2 ORDER BY file_id LIMIT 1"
    ))
    .bind(sub)
    .bind(name)
    .fetch_optional(conn)
    .await
}

pub async fn upsert(conn: &mut Conn, sub: &str, f: &FileRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO files (sub, file_id, name, mime_type, size, md5, version, modified_time, \
                            local_path, parent_id, metadata_only) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (sub, file_id) DO UPDATE SET name = excluded.name, \
             mime_type = excluded.mime_type, size = excluded.size, md5 = excluded.md5, \
             version = excluded.version, modified_time = excluded.modified_time, \
             local_path = excluded.local_path, parent_id = excluded.parent_id, \
             metadata_only = excluded.metadata_only",
    )
    .bind(sub)
    .bind(&f.file_id)
    .bind(&f.name)
    .bind(&f.mime_type)
    .bind(f.size)
    .bind(&f.md5)
    .bind(f.version)
    .bind(&f.modified_time)
    .bind(&f.local_path)
    .bind(&f.parent_id)
    .bind(f.metadata_only as i64)
    .execute(conn)
    .await?;
    Ok(())
}

/// Items with content on Drive that the mirror withholds (over a limit): metadata-only rows
/// that are not folders or Google-native files.
const WITHHELD: &str = "metadata_only = 1 \
     AND (mime_type IS NULL OR mime_type NOT LIKE 'application/vnd.google-apps.%')";

pub async fn withheld(conn: &mut Conn, sub: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM files WHERE sub = $1 AND {WITHHELD}"
    ))
    .bind(sub)
    .fetch_one(conn)
    .await
}

pub async fn list_withheld(conn: &mut Conn, sub: &str) -> Result<Vec<FileRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM files WHERE sub = $1 AND {WITHHELD} ORDER BY file_id"
    ))
    .bind(sub)
    .fetch_all(conn)
    .await
}

/// Marks the items of a listing page as seen by listing `generation`.
pub async fn mark_seen(
    conn: &mut Conn,
    sub: &str,
    ids: &[String],
    generation: i64,
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (3..ids.len() + 3).map(|i| format!("${i}")).collect();
    let sql = format!(
        "UPDATE files SET seen_generation = $2 WHERE sub = $1 AND file_id IN ({})",
        placeholders.join(", ")
    );
    let mut q = sqlx::query(&sql).bind(sub).bind(generation);
    for id in ids {
        q = q.bind(id);
    }
    q.execute(conn).await?;
    Ok(())
}

/// The items a complete listing `generation` did not see: gone from Drive.
pub async fn unseen(
    conn: &mut Conn,
    sub: &str,
    generation: i64,
) -> Result<Vec<FileRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM files WHERE sub = $1 AND seen_generation < $2"
    ))
    .bind(sub)
    .bind(generation)
    .fetch_all(conn)
    .await
}

pub async fn delete(conn: &mut Conn, sub: &str, file_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM files WHERE sub = $1 AND file_id = $2")
        .bind(sub)
        .bind(file_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// How much is mirrored for one user: items, and bytes of content in the mirror.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, sqlx::FromRow)]
pub struct Totals {
    pub files: i64,
    pub bytes: i64,
}

pub async fn totals(conn: &mut Conn, sub: &str) -> Result<Totals, sqlx::Error> {
    sqlx::query_as(
        "SELECT COUNT(*) AS files, \
                CAST(COALESCE(SUM(CASE WHEN metadata_only = 0 THEN size ELSE 0 END), 0) AS BIGINT) \
                    AS bytes \
         FROM files WHERE sub = $1",
    )
    .bind(sub)
    .fetch_one(conn)
    .await
}

/// Deepest folder nesting followed when resolving a path; deeper (or a cycle) is cut there.
const MAX_DEPTH: usize = 64;

/// Each item's path from the root of the appDataFolder, by its parents' names: `docs/a.json`.
/// Best-effort, as Drive allows it to be: names are not unique (two items can share a path)
/// and may contain `/`. An item whose parent is not a folder we know sits at the root.
pub fn paths(rows: &[FileRow]) -> HashMap<String, String> {
    let by_id: HashMap<&str, &FileRow> = rows.iter().map(|r| (r.file_id.as_str(), r)).collect();
    let folder = |id: &str| {
        by_id
            .get(id)
            .filter(|r| r.mime_type.as_deref() == Some(FOLDER_MIME))
            .copied()
    };
    rows.iter()
        .map(|row| {
            let mut names = vec![row.name.as_str()];
            let mut seen = vec![row.file_id.as_str()];
            let mut next = row.parent_id.as_deref();
            while let Some(parent) = next.and_then(folder) {
                if seen.contains(&parent.file_id.as_str()) || names.len() >= MAX_DEPTH {
                    break;
                }
                seen.push(&parent.file_id);
                names.push(&parent.name);
                next = parent.parent_id.as_deref();
            }
            names.reverse();
            (row.file_id.clone(), names.join("/"))
        })
        .collect()
}

/// One item's path, as [`paths`] resolves it, walking its parents in the database (one query
/// per folder level): what a change of that item records.
pub async fn path_of(conn: &mut Conn, sub: &str, row: &FileRow) -> Result<String, sqlx::Error> {
    let mut names = vec![row.name.clone()];
    let mut seen = vec![row.file_id.clone()];
    let mut next = row.parent_id.clone();
    while let Some(id) = next.take() {
        if seen.contains(&id) || names.len() >= MAX_DEPTH {
            break;
        }
        let parent = get(&mut *conn, sub, &id).await?;
        let Some(parent) = parent.filter(|p| p.mime_type.as_deref() == Some(FOLDER_MIME)) else {
            break;
        };
        names.push(parent.name);
        seen.push(id);
        next = parent.parent_id;
    }
    names.reverse();
    Ok(names.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, name: &str, parent: Option<&str>, folder: bool) -> FileRow {
        FileRow {
            file_id: id.into(),
            name: name.into(),
            mime_type: Some(if folder { FOLDER_MIME } else { "text/plain" }.into()),
            size: None,
            md5: None,
            version: None,
            modified_time: None,
            local_path: String::new(),
            parent_id: parent.map(String::from),
            metadata_only: folder,
        }
    }

    #[test]
    fn paths_follow_parent_folders_and_survive_cycles() {
        let rows = vec![
            row("r", "settings.json", Some("appdata-root"), false),
            row("d", "docs", None, true),
            row("s", "2026", Some("d"), true),
            row("f", "a.json", Some("s"), false),
            row("x", "orphan.txt", Some("not-a-folder-we-know"), false),
            row("n", "under-a-file", Some("r"), false),
            row("c1", "loop1", Some("c2"), true),
            row("c2", "loop2", Some("c1"), true),
        ];
        let p = paths(&rows);
        assert_eq!(p["r"], "settings.json");
        assert_eq!(p["f"], "docs/2026/a.json");
        assert_eq!(p["x"], "orphan.txt");
        assert_eq!(p["n"], "under-a-file", "a file is not a folder");
        assert_eq!(p["c1"], "loop2/loop1");
    }
}
