//! `files`: the metadata of each mirrored file. The row is written after the content is in
//! place on disk, so a row always points at complete content.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Conn;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct FileRow {
    pub file_id: String,
    pub name: String,
    pub mime_type: Option<String>,
    pub size: Option<i64>,
    pub md5: Option<String>,
    pub version: Option<i64>,
    pub modified_time: Option<String>,
    pub local_path: String,
}

const COLUMNS: &str = "file_id, name, mime_type, size, md5, version, modified_time, local_path";

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
        "INSERT INTO files (sub, file_id, name, mime_type, size, md5, version, modified_time, local_path) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (sub, file_id) DO UPDATE SET name = excluded.name, \
             mime_type = excluded.mime_type, size = excluded.size, md5 = excluded.md5, \
             version = excluded.version, modified_time = excluded.modified_time, \
             local_path = excluded.local_path",
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
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete(conn: &mut Conn, sub: &str, file_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM files WHERE sub = $1 AND file_id = $2")
        .bind(sub)
        .bind(file_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// How much is mirrored for one user.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, sqlx::FromRow)]
pub struct Totals {
    pub files: i64,
    pub bytes: i64,
}

pub async fn totals(conn: &mut Conn, sub: &str) -> Result<Totals, sqlx::Error> {
    sqlx::query_as(
        "SELECT COUNT(*) AS files, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes \
         FROM files WHERE sub = $1",
    )
    .bind(sub)
    .fetch_one(conn)
    .await
}
