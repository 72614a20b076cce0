//! The scheduling columns of `users`: who is due, their page token, backoff, resync requests.

use sqlx::Row;

use super::{Backend, Conn};
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
    /// Uploads are queued for this user.
    pub has_pushes: bool,
}

/// What a claim is for.
#[derive(Debug, Clone, Copy)]
pub enum Claim {
    /// Scheduled work of cycle `cycle` (its tick, unix ms): users due and not yet claimed in it.
    Cycle(i64),
    /// Admin resync requests.
    Resync,
}

/// Claims up to `limit` users for `owner` until `lease_until`, and returns them loaded for
/// sync. On PostgreSQL concurrent instances skip each other's locked rows (`FOR UPDATE SKIP
/// LOCKED`), so every user goes to exactly one of them; on SQLite the write lock does the same.
/// An expired lease (its owner died) is fair game.
#[allow(clippy::too_many_arguments)]
pub async fn claim(
    conn: &mut Conn,
    backend: Backend,
    what: Claim,
    owner: &str,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<DueUser>, sqlx::Error> {
    let (due, cycle) = match what {
        Claim::Cycle(cycle) => (
            "u.last_cycle < $3 AND (u.next_sync_at <= $4 OR u.resync_requested > 0)",
            cycle,
        ),
        Claim::Resync => ("u.resync_requested > 0", 0),
    };
    let lock = match backend {
        Backend::Postgres => "FOR UPDATE OF u SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let claimed: Vec<String> = sqlx::query_scalar(&format!(
        "UPDATE users SET lease_owner = $1, lease_expires_at = $2, \
                last_cycle = CASE WHEN $3 > 0 THEN $3 ELSE last_cycle END \
         WHERE sub IN (SELECT u.sub FROM users u JOIN credentials c ON c.sub = u.sub \
                       WHERE u.state = 'active' AND {due} \
                         AND (u.lease_owner IS NULL OR u.lease_owner = $1 \
                              OR u.lease_expires_at < $4) \
                       ORDER BY u.sub LIMIT $5 {lock}) \
         RETURNING sub"
    ))
    .bind(owner)
    .bind(lease_until)
    .bind(cycle)
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (1..=claimed.len()).map(|i| format!("${i}")).collect();
    let query = format!(
        "SELECT u.sub, u.page_token, u.failures, u.resync_requested, \
                c.refresh_token, c.key_id, c.access_token, c.access_key_id, c.access_expires_at, \
                EXISTS (SELECT 1 FROM pushes p WHERE p.sub = u.sub AND p.state = 'pending') \
                    AS has_pushes \
         FROM users u JOIN credentials c ON c.sub = u.sub WHERE u.sub IN ({}) ORDER BY u.sub",
        placeholders.join(", ")
    );
    let mut q = sqlx::query(&query);
    for sub in &claimed {
        q = q.bind(sub);
    }
    let rows = q.fetch_all(conn).await?;
    rows.iter().map(due_user_from_row).collect()
}

/// Gives back leases of users claimed but not synced (shutting down): others may take them
/// in this same cycle.
pub async fn release_unstarted(
    conn: &mut Conn,
    owner: &str,
    subs: &[String],
) -> Result<(), sqlx::Error> {
    for sub in subs {
        sqlx::query(
            "UPDATE users SET lease_owner = NULL, lease_expires_at = NULL, last_cycle = 0              WHERE sub = $1 AND lease_owner = $2",
        )
        .bind(sub)
        .bind(owner)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Extends every live lease `owner` holds; returns how many. On PostgreSQL the rows are
/// locked in sub order first, the order claims and the recorder use, so renewal and a batch
/// of outcomes of this same instance do not deadlock.
pub async fn renew_leases(
    conn: &mut Conn,
    backend: Backend,
    owner: &str,
    now: i64,
    lease_until: i64,
) -> Result<u64, sqlx::Error> {
    let ordered = match backend {
        Backend::Postgres => {
            " AND sub IN (SELECT sub FROM users WHERE lease_owner = $1 AND lease_expires_at >= $3 \
                          ORDER BY sub FOR UPDATE)"
        }
        Backend::Sqlite => "",
    };
    let done = sqlx::query(&format!(
        "UPDATE users SET lease_expires_at = $2 \
         WHERE lease_owner = $1 AND lease_expires_at >= $3{ordered}"
    ))
    .bind(owner)
    .bind(lease_until)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Records that `id` is alive.
pub async fn heartbeat(
    conn: &mut Conn,
    id: &str,
    version: &str,
    started_at: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO instances (id, version, started_at, last_seen_at) VALUES ($1, $2, $3, $4)          ON CONFLICT (id) DO UPDATE SET version = excluded.version,              started_at = excluded.started_at, last_seen_at = excluded.last_seen_at",
    )
    .bind(id)
    .bind(version)
    .bind(started_at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn remove_instance(conn: &mut Conn, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM instances WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Instance {
    pub id: String,
    pub version: String,
    pub started_at: i64,
    pub last_seen_at: i64,
}

/// Instances seen since `since`.
pub async fn live_instances(conn: &mut Conn, since: i64) -> Result<Vec<Instance>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, version, started_at, last_seen_at FROM instances          WHERE last_seen_at >= $1 ORDER BY id",
    )
    .bind(since)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Instance {
                id: r.try_get("id")?,
                version: r.try_get("version")?,
                started_at: r.try_get("started_at")?,
                last_seen_at: r.try_get("last_seen_at")?,
            })
        })
        .collect()
}

/// The newest sync record id of a user (0 when none), to tell a new sync from old ones.
pub async fn last_sync_id(conn: &mut Conn, sub: &str) -> Result<i64, sqlx::Error> {
    let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM syncs WHERE sub = $1")
        .bind(sub)
        .fetch_one(conn)
        .await?;
    Ok(id.unwrap_or(0))
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
        has_pushes: r
            .try_get::<bool, _>("has_pushes")
            .or_else(|_| r.try_get::<i64, _>("has_pushes").map(|n| n != 0))?,
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

/// Every instance ever seen (live or not).
pub async fn all_instances(conn: &mut Conn) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM instances ORDER BY id")
        .fetch_all(conn)
        .await
}

/// Frees every lease `owner` holds (it is known to be dead).
pub async fn release_all(conn: &mut Conn, owner: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE users SET lease_owner = NULL, lease_expires_at = NULL, last_cycle = 0 \
         WHERE lease_owner = $1",
    )
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// What a finished sync changes on the user, in one statement: next sync time, failure count,
/// last success, last error (`Some(None)` clears it, `None` keeps it), and the lease given back.
pub async fn finish_sync(
    conn: &mut Conn,
    sub: &str,
    owner: &str,
    next_sync_at: i64,
    failures: i64,
    last_ok: Option<i64>,
    last_error: Option<Option<&str>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET next_sync_at = $3, failures = $4, \
                last_sync_at = COALESCE($5, last_sync_at), \
                last_error = CASE WHEN $6 = 1 THEN $7 ELSE last_error END, \
                lease_owner = CASE WHEN lease_owner = $2 THEN NULL ELSE lease_owner END, \
                lease_expires_at = CASE WHEN lease_owner = $2 THEN NULL ELSE lease_expires_at END \
         WHERE sub = $1",
    )
    .bind(sub)
    .bind(owner)
    .bind(next_sync_at)
    .bind(failures)
    .bind(last_ok)
    .bind(last_error.is_some() as i64)
    .bind(last_error.flatten())
    .execute(conn)
    .await?;
    Ok(())
}
