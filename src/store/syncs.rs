//! `syncs`: one row per sync of a user, for `ctl user` and the metrics.

use serde::Serialize;
use sqlx::Row;

use super::Conn;

#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncRecord {
    pub sub: String,
    /// "full" or "incremental".
    pub kind: &'static str,
    pub started_at: i64,
    pub finished_at: i64,
    /// "ok", "failed", "reauth_required" or "cancelled".
    pub outcome: &'static str,
    pub added: i64,
    pub updated: i64,
    pub removed: i64,
    pub uploaded: i64,
    pub bytes_down: i64,
    pub bytes_up: i64,
    pub api_calls: i64,
    pub error: Option<String>,
}

pub async fn insert(conn: &mut Conn, r: &SyncRecord) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO syncs (sub, kind, started_at, finished_at, outcome, added, updated, removed, \
                            uploaded, bytes_down, bytes_up, api_calls, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&r.sub)
    .bind(r.kind)
    .bind(r.started_at)
    .bind(r.finished_at)
    .bind(r.outcome)
    .bind(r.added)
    .bind(r.updated)
    .bind(r.removed)
    .bind(r.uploaded)
    .bind(r.bytes_down)
    .bind(r.bytes_up)
    .bind(r.api_calls)
    .bind(&r.error)
    .execute(conn)
    .await?;
    Ok(())
}

/// A sync as read back (outcome and kind as stored strings).
#[derive(Debug, Clone, Serialize)]
pub struct StoredSync {
    pub kind: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub outcome: String,
    pub added: i64,
    pub updated: i64,
    pub removed: i64,
    pub uploaded: i64,
    pub bytes_down: i64,
    pub api_calls: i64,
    pub error: Option<String>,
}

pub async fn recent(
    conn: &mut Conn,
    sub: &str,
    limit: i64,
) -> Result<Vec<StoredSync>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT kind, started_at, finished_at, outcome, added, updated, removed, uploaded, \
                bytes_down, api_calls, error FROM syncs WHERE sub = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(sub)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredSync {
                kind: r.try_get("kind")?,
                started_at: r.try_get("started_at")?,
                finished_at: r.try_get("finished_at")?,
                outcome: r.try_get("outcome")?,
                added: r.try_get("added")?,
                updated: r.try_get("updated")?,
                removed: r.try_get("removed")?,
                uploaded: r.try_get("uploaded")?,
                bytes_down: r.try_get("bytes_down")?,
                api_calls: r.try_get("api_calls")?,
                error: r.try_get("error")?,
            })
        })
        .collect()
}
