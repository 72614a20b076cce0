//! `writes`: what is to be written into a user's appDataFolder on the next sync (`ctl push`,
//! the data API), with its precondition and outcome. The content is a spool file in the
//! mirror (`.spool/NAME`), never a database value.

use serde::{Deserialize, Serialize};

use super::{Conn, Flag};

text_enum! {
    pub enum WriteOp {
        /// Create a file, or replace a file's content.
        Put = "put",
        Delete = "delete",
    }
}

text_enum! {
    /// Where a write stands.
    pub enum WriteState {
        /// Waiting for the user's next sync (also after a failed attempt).
        Pending = "pending",
        Done = "done",
        /// The file changed on Drive since the writer saw it: reported, never forced.
        Conflict = "conflict",
        /// Given up after too many failed attempts, or refused by Drive.
        Failed = "failed",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Write {
    pub id: i64,
    pub sub: String,
    #[sqlx(try_from = "String")]
    pub op: WriteOp,
    /// The file written; for a create, the id generated for it (set before the first upload).
    pub file_id: Option<String>,
    #[sqlx(try_from = "Flag")]
    pub create_new: bool,
    pub name: Option<String>,
    pub parent_id: Option<String>,
    pub mime_type: Option<String>,
    #[serde(skip)]
    pub spool: Option<String>,
    pub size: Option<i64>,
    pub md5: Option<String>,
    pub base_md5: Option<String>,
    pub base_version: Option<i64>,
    #[sqlx(try_from = "Flag")]
    pub must_be_new: bool,
    #[sqlx(try_from = "String")]
    pub state: WriteState,
    pub attempts: i64,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A write to queue.
#[derive(Debug, Clone, Default)]
pub struct NewWrite {
    pub op: Option<WriteOp>,
    pub file_id: Option<String>,
    pub create_new: bool,
    pub name: Option<String>,
    pub parent_id: Option<String>,
    pub mime_type: Option<String>,
    pub spool: Option<String>,
    pub size: Option<i64>,
    pub md5: Option<String>,
    pub base_md5: Option<String>,
    pub base_version: Option<i64>,
    pub must_be_new: bool,
}

const COLUMNS: &str = "id, sub, op, file_id, create_new, name, parent_id, mime_type, spool, size, \
                       md5, base_md5, base_version, must_be_new, state, attempts, error, \
                       created_at, updated_at";

pub async fn insert(
    conn: &mut Conn,
    sub: &str,
    op: WriteOp,
    w: &NewWrite,
    now: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO writes (sub, op, file_id, create_new, name, parent_id, mime_type, spool, \
                             size, md5, base_md5, base_version, must_be_new, state, created_at, \
                             updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'pending', $14, $14) \
         RETURNING id",
    )
    .bind(sub)
    .bind(op.as_str())
    .bind(&w.file_id)
    .bind(w.create_new as i64)
    .bind(&w.name)
    .bind(&w.parent_id)
    .bind(&w.mime_type)
    .bind(&w.spool)
    .bind(w.size)
    .bind(&w.md5)
    .bind(&w.base_md5)
    .bind(w.base_version)
    .bind(w.must_be_new as i64)
    .bind(now)
    .fetch_one(conn)
    .await
}

pub async fn get(conn: &mut Conn, id: i64) -> Result<Option<Write>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM writes WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// The user's pending writes, oldest first: the order they are carried out in.
pub async fn pending(conn: &mut Conn, sub: &str) -> Result<Vec<Write>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM writes WHERE sub = $1 AND state = 'pending' ORDER BY id"
    ))
    .bind(sub)
    .fetch_all(conn)
    .await
}

/// The user's last `limit` writes, newest first.
pub async fn recent(conn: &mut Conn, sub: &str, limit: i64) -> Result<Vec<Write>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM writes WHERE sub = $1 ORDER BY id DESC LIMIT $2"
    ))
    .bind(sub)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Records the id generated for a create, before its first upload.
pub async fn set_file_id(conn: &mut Conn, id: i64, file_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE writes SET file_id = $2 WHERE id = $1 AND file_id IS NULL")
        .bind(id)
        .bind(file_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves a write to `state` (back to `Pending` after a failed attempt), counting the attempt.
pub async fn set_state(
    conn: &mut Conn,
    id: i64,
    state: WriteState,
    error: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE writes SET state = $2, error = $3, attempts = attempts + 1, updated_at = $4 \
         WHERE id = $1",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(error)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
