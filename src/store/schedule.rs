//! The scheduling columns of `users`: who is due, their page token, backoff, resync requests.

use sqlx::Row;

use super::Conn;
use crate::crypto::Sealed;

/// A user ready to sync, with everything the sync needs loaded in the same query.
#[derive(Debug, Clone)]
pub struct DueUser {
    pub sub: String,
    pub page_token: Option<String>,
    pub failures: i64,
    /// 0 none, 1 resync, 2 full resync (admin request).
    pub resync_requested: i64,
    pub refresh_token: Sealed,
    pub access_token: Option<(Sealed, i64)>,
}

/// The next page of active users due at `now`, in `sub` order after `after` (keyset paging,
/// so memory stays flat however many users there are).
pub async fn due_page(
    conn: &mut Conn,
    after: &str,
    now: i64,
    limit: i64,
) -> Result<Vec<DueUser>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT u.sub, u.page_token, u.failures, u.resync_requested, \
                c.refresh_token, c.key_id, c.access_token, c.access_key_id, c.access_expires_at \
         FROM users u JOIN credentials c ON c.sub = u.sub \
         WHERE u.state = 'active' AND u.sub > $1 \
           AND (u.next_sync_at <= $2 OR u.resync_requested > 0) \
         ORDER BY u.sub LIMIT $3",
    )
    .bind(after)
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(due_user_from_row).collect()
}

/// Users with a pending admin resync request (any instance may have set it).
pub async fn resync_requested(conn: &mut Conn, limit: i64) -> Result<Vec<DueUser>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT u.sub, u.page_token, u.failures, u.resync_requested, \
                c.refresh_token, c.key_id, c.access_token, c.access_key_id, c.access_expires_at \
         FROM users u JOIN credentials c ON c.sub = u.sub \
         WHERE u.state = 'active' AND u.resync_requested > 0 ORDER BY u.sub LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(due_user_from_row).collect()
}

pub async fn due_user(conn: &mut Conn, sub: &str) -> Result<Option<DueUser>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT u.sub, u.page_token, u.failures, u.resync_requested, \
                c.refresh_token, c.key_id, c.access_token, c.access_key_id, c.access_expires_at \
         FROM users u JOIN credentials c ON c.sub = u.sub WHERE u.sub = $1",
    )
    .bind(sub)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(due_user_from_row).transpose()
}

fn due_user_from_row(r: &sqlx::any::AnyRow) -> Result<DueUser, sqlx::Error> {
    let access = match (
        r.try_get::<Option<Vec<u8>>, _>("access_token")?,
        r.try_get::<Option<String>, _>("access_key_id")?,
        r.try_get::<Option<i64>, _>("access_expires_at")?,
    ) {
        (Some(bytes), Some(key_id), Some(exp)) => Some((Sealed { key_id, bytes }, exp)),
        _ => None,
    };
    Ok(DueUser {
        sub: r.try_get("sub")?,
        page_token: r.try_get("page_token")?,
        failures: r.try_get("failures")?,
        resync_requested: r.try_get("resync_requested")?,
        refresh_token: Sealed {
            key_id: r.try_get("key_id")?,
            bytes: r.try_get("refresh_token")?,
        },
        access_token: access,
    })
}

pub async fn set_page_token(
    conn: &mut Conn,
    sub: &str,
    page_token: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET page_token = $2 WHERE sub = $1")
        .bind(sub)
        .bind(page_token)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records when the user may sync next and how many failures in a row it has had.
pub async fn set_schedule(
    conn: &mut Conn,
    sub: &str,
    next_sync_at: i64,
    failures: i64,
    last_sync_at: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET next_sync_at = $2, failures = $3, \
                last_sync_at = COALESCE($4, last_sync_at) WHERE sub = $1",
    )
    .bind(sub)
    .bind(next_sync_at)
    .bind(failures)
    .bind(last_sync_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// `ctl resync`: 1 = as soon as possible, 2 = also drop the page token and re-list.
pub async fn request_resync(conn: &mut Conn, sub: &str, full: bool) -> Result<bool, sqlx::Error> {
    let level: i64 = if full { 2 } else { 1 };
    let done = sqlx::query(
        "UPDATE users SET resync_requested = CASE WHEN resync_requested > $2 \
                THEN resync_requested ELSE $2 END WHERE sub = $1",
    )
    .bind(sub)
    .bind(level)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Taken when a sync starts: a full request drops the page token.
pub async fn take_resync_request(conn: &mut Conn, sub: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET page_token = CASE WHEN resync_requested = 2 THEN NULL ELSE page_token END, \
                resync_requested = 0 WHERE sub = $1",
    )
    .bind(sub)
    .execute(conn)
    .await?;
    Ok(())
}

/// `ctl resync --all`: every active user. Returns their subs.
pub async fn request_resync_all(conn: &mut Conn, full: bool) -> Result<Vec<String>, sqlx::Error> {
    let level: i64 = if full { 2 } else { 1 };
    sqlx::query(
        "UPDATE users SET resync_requested = CASE WHEN resync_requested > $1 \
                THEN resync_requested ELSE $1 END WHERE state = 'active'",
    )
    .bind(level)
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query("SELECT sub FROM users WHERE state = 'active' ORDER BY sub")
        .fetch_all(conn)
        .await?;
    rows.iter().map(|r| r.try_get("sub")).collect()
}
