//! `pushes`: files an admin queued (`ctl push`) to be written into a user's appDataFolder on
//! the user's next sync.

use serde::Serialize;
use sqlx::Row;

use super::Conn;

#[derive(Debug, Clone, Serialize)]
pub struct Push {
    pub id: i64,
    pub name: String,
    pub mime_type: String,
    #[serde(skip)]
    pub content: Vec<u8>,
    pub base_file_id: Option<String>,
    pub base_version: Option<i64>,
    pub state: String,
    pub attempts: i64,
    pub error: Option<String>,
}

#[allow(clippy::too_many_arguments)]
pub async fn enqueue(
    conn: &mut Conn,
    sub: &str,
    name: &str,
    mime_type: &str,
    content: &[u8],
    base_file_id: Option<&str>,
    base_version: Option<i64>,
    now: i64,
) -> Result<i64, sqlx::Error> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO pushes (sub, name, mime_type, content, base_file_id, base_version, state, \
                             created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7) RETURNING id",
    )
    .bind(sub)
    .bind(name)
    .bind(mime_type)
    .bind(content)
    .bind(base_file_id)
    .bind(base_version)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(id)
}

pub async fn pending(conn: &mut Conn, sub: &str) -> Result<Vec<Push>, sqlx::Error> {
    list_where(conn, sub, "AND state = 'pending'").await
}

pub async fn all(conn: &mut Conn, sub: &str) -> Result<Vec<Push>, sqlx::Error> {
    list_where(conn, sub, "").await
}

async fn list_where(conn: &mut Conn, sub: &str, filter: &str) -> Result<Vec<Push>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT id, name, mime_type, content, base_file_id, base_version, state, attempts, error \
         FROM pushes WHERE sub = $1 {filter} ORDER BY id"
    ))
    .bind(sub)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Push {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                mime_type: r.try_get("mime_type")?,
                content: r.try_get("content")?,
                base_file_id: r.try_get("base_file_id")?,
                base_version: r.try_get("base_version")?,
                state: r.try_get("state")?,
                attempts: r.try_get("attempts")?,
                error: r.try_get("error")?,
            })
        })
        .collect()
}

/// Moves a push to `state` ("done", "conflict", "failed", or back to "pending" after a
/// failed attempt), counting the attempt.
pub async fn set_state(
    conn: &mut Conn,
    id: i64,
    state: &str,
    error: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE pushes SET state = $2, error = $3, attempts = attempts + 1, updated_at = $4 \
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(error)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
