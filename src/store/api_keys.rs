//! `api_keys`: the data API's bearer keys. Only a hash of each key is stored (see
//! migrations/*/0006_data_api.sql); the key itself is shown once, when created.

use serde::{Deserialize, Serialize};

use super::{Conn, Flag};

/// A key as stored: never the key, not even its hash, leaves this module in a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ApiKey {
    pub name: String,
    #[sqlx(try_from = "Flag")]
    pub can_write: bool,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A key found by its hash, with the stored hash to compare in constant time.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredKey {
    #[sqlx(flatten)]
    pub key: ApiKey,
    pub key_hash: String,
}

/// Adds a key; false when a key of that name exists (revoked or not: names are not reused,
/// so that logs keep meaning one key).
pub async fn create(
    conn: &mut Conn,
    name: &str,
    key_hash: &str,
    can_write: bool,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO api_keys (name, key_hash, can_write, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(key_hash)
    .bind(can_write as i64)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn list(conn: &mut Conn) -> Result<Vec<ApiKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, can_write, created_at, last_used_at, revoked_at FROM api_keys ORDER BY name",
    )
    .fetch_all(conn)
    .await
}

pub async fn by_hash(conn: &mut Conn, key_hash: &str) -> Result<Option<StoredKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, can_write, created_at, last_used_at, revoked_at, key_hash FROM api_keys \
         WHERE key_hash = $1",
    )
    .bind(key_hash)
    .fetch_optional(conn)
    .await
}

/// Revokes the key `name`; `None` when there is no such key, else the key (already revoked
/// keys keep their first revocation time).
pub async fn revoke(conn: &mut Conn, name: &str, now: i64) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE name = $1")
        .bind(name)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    sqlx::query_as(
        "SELECT name, can_write, created_at, last_used_at, revoked_at FROM api_keys WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await
}

/// Records a use of the key, when the last recorded one is older than `stale_before`: one
/// write a minute per key at most, not one per request.
pub async fn touch(
    conn: &mut Conn,
    name: &str,
    now: i64,
    stale_before: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE api_keys SET last_used_at = $2 WHERE name = $1 \
         AND (last_used_at IS NULL OR last_used_at < $3)",
    )
    .bind(name)
    .bind(now)
    .bind(stale_before)
    .execute(conn)
    .await?;
    Ok(())
}
