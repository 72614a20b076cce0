//! `syncs`: one row per sync of a user, for `ctl user` and the metrics.

use serde::{Deserialize, Serialize};

use super::Conn;

text_enum! {
    /// How a sync ended.
    pub enum SyncOutcome {
        Ok = "ok",
        Failed = "failed",
        /// Google refused the refresh token: the user waits for a new sign-in.
        ReauthRequired = "reauth_required",
        /// Stopped by shutdown at a checkpoint; nothing committed is lost.
        Cancelled = "cancelled",
    }
}

text_enum! {
    /// What a sync walked: the whole listing, or the changes feed from the saved page token.
    pub enum SyncKind {
        Full = "full",
        Incremental = "incremental",
    }
}

/// One sync as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct SyncRecord {
    #[serde(skip)]
    #[sqlx(default)]
    pub sub: String,
    #[sqlx(try_from = "String")]
    pub kind: SyncKind,
    pub started_at: i64,
    pub finished_at: i64,
    #[sqlx(try_from = "String")]
    pub outcome: SyncOutcome,
    pub added: i64,
    pub updated: i64,
    pub removed: i64,
    pub uploaded: i64,
    pub bytes_down: i64,
    pub bytes_up: i64,
    pub api_calls: i64,
    pub error: Option<String>,
}

/// Inserts `records`, up to [`super::ROWS_PER_STATEMENT`] per statement.
pub async fn insert_many(conn: &mut Conn, records: &[&SyncRecord]) -> Result<(), sqlx::Error> {
    const COLUMNS: usize = 13;
    for chunk in records.chunks(super::ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO syncs (sub, kind, started_at, finished_at, outcome, added, updated, \
                                removed, uploaded, bytes_down, bytes_up, api_calls, error) \
             VALUES {}",
            super::values_rows(chunk.len(), COLUMNS, 1)
        );
        // Full chunks share one text, kept prepared; a shorter last one is not.
        let full = chunk.len() == super::ROWS_PER_STATEMENT;
        let mut q = sqlx::query(&sql).persistent(full);
        for r in chunk {
            q = q
                .bind(&r.sub)
                .bind(r.kind.as_str())
                .bind(r.started_at)
                .bind(r.finished_at)
                .bind(r.outcome.as_str())
                .bind(r.added)
                .bind(r.updated)
                .bind(r.removed)
                .bind(r.uploaded)
                .bind(r.bytes_down)
                .bind(r.bytes_up)
                .bind(r.api_calls)
                .bind(&r.error);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The last `limit` syncs of a user, newest first.
pub async fn recent(
    conn: &mut Conn,
    sub: &str,
    limit: i64,
) -> Result<Vec<SyncRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kind, started_at, finished_at, outcome, added, updated, removed, uploaded, \
                bytes_down, bytes_up, api_calls, error FROM syncs WHERE sub = $1 \
         ORDER BY id DESC LIMIT $2",
    )
    .bind(sub)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Deletes up to `batch` records finished before `before`, keeping each user's newest
/// `keep_per_user` whatever their age; returns how many went. Small batches: no long lock.
pub async fn prune(
    conn: &mut Conn,
    before: i64,
    keep_per_user: i64,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM syncs WHERE id IN ( \
             SELECT s.id FROM syncs s WHERE s.finished_at < $1 \
               AND (SELECT COUNT(*) FROM syncs n WHERE n.sub = s.sub AND n.id > s.id) >= $2 \
             LIMIT $3)",
    )
    .bind(before)
    .bind(keep_per_user)
    .bind(batch)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
