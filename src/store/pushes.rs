//! `pushes`: files an admin queued (`ctl push`) to be written into a user's appDataFolder on
//! the user's next sync.

use serde::{Deserialize, Serialize};

use super::Conn;

text_enum! {
    /// Where a queued upload stands.
    pub enum PushState {
        /// Waiting for the user's next sync (also after a failed attempt).
        Pending = "pending",
        Done = "done",
        /// The file changed on Drive since the push was queued: reported, never forced.
        Conflict = "conflict",
        /// Given up after too many failed attempts.
        Failed = "failed",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Push {
    pub id: i64,
    pub name: String,
    pub mime_type: String,
    #[serde(skip)]
    pub content: Vec<u8>,
    pub base_file_id: Option<String>,
    pub base_version: Option<i64>,
    #[sqlx(try_from = "String")]
    pub state: PushState,
    pub attempts: i64,
    pub error: Option<String>,
}

/// A push to queue: what to write, and which version of which file it replaces (none: a
/// file of that name did not exist).
pub struct NewPush<'a> {
    pub name: &'a str,
    pub mime_type: &'a str,
    pub content: &'a [u8],
    pub base_file_id: Option<&'a str>,
    pub base_version: Option<i64>,
}

pub async fn enqueue(
    conn: &mut Conn,
    sub: &str,
    push: &NewPush<'_>,
    now: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO pushes (sub, name, mime_type, content, base_file_id, base_version, state, \
                             created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7) RETURNING id",
    )
    .bind(sub)
    .bind(push.name)
    .bind(push.mime_type)
    .bind(push.content)
    .bind(push.base_file_id)
    .bind(push.base_version)
    .bind(now)
    .fetch_one(conn)
    .await
}

pub async fn pending(conn: &mut Conn, sub: &str) -> Result<Vec<Push>, sqlx::Error> {
    list_where(conn, sub, "AND state = 'pending'").await
}

pub async fn all(conn: &mut Conn, sub: &str) -> Result<Vec<Push>, sqlx::Error> {
    list_where(conn, sub, "").await
}

async fn list_where(conn: &mut Conn, sub: &str, filter: &str) -> Result<Vec<Push>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT id, name, mime_type, content, base_file_id, base_version, state, attempts, error \
         FROM pushes WHERE sub = $1 {filter} ORDER BY id"
    ))
    .bind(sub)
    .fetch_all(conn)
    .await
}

/// Moves a push to `state` (back to `Pending` after a failed attempt), counting the attempt.
pub async fn set_state(
    conn: &mut Conn,
    id: i64,
    state: PushState,
    error: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE pushes SET state = $2, error = $3, attempts = attempts + 1, updated_at = $4 \
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
