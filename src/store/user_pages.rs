//! Users a page at a time (keyset paging on `sub`), with their file counts and flags: the data
//! API's `GET /v1/users` and `ctl users`.

use super::users::{UserState, UserSummary};
use super::Conn;

/// Users after `after` (by sub), optionally in one state, at most `limit`.
pub async fn page(
    conn: &mut Conn,
    state: Option<UserState>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<UserSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT u.sub, u.email, u.state, u.last_sync_at, u.last_error, \
                COUNT(f.file_id) AS files, \
                CAST(COALESCE(SUM(CASE WHEN f.metadata_only = 0 THEN f.size ELSE 0 END), 0) \
                    AS BIGINT) AS bytes, \
                u.suspended_by_google, u.credential_change_required_at \
         FROM users u LEFT JOIN files f ON f.sub = u.sub \
         WHERE ($1 IS NULL OR u.state = $1) AND ($2 IS NULL OR u.sub > $2) \
         GROUP BY u.sub, u.email, u.state, u.last_sync_at, u.last_error, \
                  u.suspended_by_google, u.credential_change_required_at \
         ORDER BY u.sub LIMIT $3",
    )
    .bind(state.map(UserState::as_str))
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// How many users (optionally in one state) come after `after` by sub: what a page left out.
pub async fn count_after(
    conn: &mut Conn,
    state: Option<UserState>,
    after: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE ($1 IS NULL OR state = $1) AND sub > $2")
        .bind(state.map(UserState::as_str))
        .bind(after)
        .fetch_one(conn)
        .await
}
