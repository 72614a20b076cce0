//! The scheduling columns of `users`: who is due, their page token, backoff, resync requests.

use serde::{Deserialize, Serialize};

use super::credentials::{SealedAccess, SealedRefresh};
use super::syncs::SyncOutcome;
use super::{Backend, Conn, Flag};

/// An admin's request to sync a user ahead of schedule (`ctl resync`), stored as 0, 1, 2 so
/// that the stronger request wins with `MAX`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resync {
    #[default]
    None = 0,
    /// As soon as possible, from the saved page token.
    Incremental = 1,
    /// As soon as possible, dropping the page token: a full re-listing.
    Full = 2,
}

impl TryFrom<i64> for Resync {
    type Error = String;

    fn try_from(n: i64) -> Result<Self, String> {
        match n {
            0 => Ok(Resync::None),
            1 => Ok(Resync::Incremental),
            2 => Ok(Resync::Full),
            other => Err(format!("unknown resync request level {other}")),
        }
    }
}

/// Slots a cycle's window is cut into: users are placed in `[0, SLOTS)` by [`slot_of`].
pub const SLOTS: i64 = 1 << 16;

/// The user's stable place in every cycle: slot `s` starts at `s / SLOTS` of the cycle's
/// spread window. The first two bytes of the sub's SHA-256 (stable across processes and
/// versions, unlike std's seeded hasher, and uniform whatever the subs look like). Computed in
/// Rust, not SQL (SQLite has no hash function): new users get it at sign-in, rows from
/// before migration 0012 from [`place_unplaced`] at start-up.
pub fn slot_of(sub: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(sub.as_bytes());
    i64::from(u16::from_be_bytes([digest[0], digest[1]]))
}

/// Gives up to `limit` users that have no slot yet (-1: from before migration 0012) theirs;
/// returns how many. Idempotent: another instance doing the same writes the same values.
pub async fn place_unplaced(conn: &mut Conn, limit: i64) -> Result<u64, sqlx::Error> {
    let subs: Vec<String> =
        sqlx::query_scalar("SELECT sub FROM users WHERE slot < 0 ORDER BY slot, sub LIMIT $1")
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
    for sub in &subs {
        sqlx::query("UPDATE users SET slot = $2 WHERE sub = $1")
            .bind(sub)
            .bind(slot_of(sub))
            .execute(&mut *conn)
            .await?;
    }
    Ok(subs.len() as u64)
}

/// Where a cycle's claims go on from: after this (slot, sub) in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub slot: i64,
    pub sub: String,
}

impl Cursor {
    /// Before every user (unplaced ones, slot -1, included).
    pub fn start() -> Cursor {
        Cursor {
            slot: -1,
            sub: String::new(),
        }
    }
}

/// A user ready to sync, with everything the sync needs loaded in the same query.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueUser {
    pub sub: String,
    /// Its place in a cycle ([`slot_of`]).
    pub slot: i64,
    pub page_token: Option<String>,
    pub failures: i64,
    #[sqlx(try_from = "i64", rename = "resync_requested")]
    pub resync: Resync,
    #[sqlx(flatten)]
    pub refresh_token: SealedRefresh,
    #[sqlx(flatten)]
    pub access: SealedAccess,
    /// Writes are queued for this user.
    #[sqlx(try_from = "Flag")]
    pub has_writes: bool,
    #[sqlx(flatten)]
    pub listing: Listing,
    /// Why the user is over a mirror limit, if it is.
    pub over_quota: Option<String>,
}

/// A full listing in progress (see migration 0004): resumed at `page` by the next sync.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Listing {
    /// The changes start token taken before the listing began; `None`: no listing in progress.
    #[sqlx(rename = "listing_start")]
    pub start: Option<String>,
    /// The files.list page token of the next page; `None` with `start` set: the first page.
    #[sqlx(rename = "listing_page")]
    pub page: Option<String>,
    /// The listing's number; items seen in it carry it.
    #[sqlx(rename = "listing_generation")]
    pub generation: i64,
}

/// The scheduling view of one user, for `ctl user`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, sqlx::FromRow)]
pub struct SyncState {
    pub page_token: Option<String>,
    pub next_sync_at: i64,
    pub failures: i64,
    pub last_sync_at: Option<i64>,
    #[sqlx(try_from = "i64", rename = "resync_requested")]
    pub resync: Resync,
    /// Syncs since the last recorded one that found nothing to do.
    pub idle_syncs: i64,
}

pub async fn sync_state(conn: &mut Conn, sub: &str) -> Result<Option<SyncState>, sqlx::Error> {
    sqlx::query_as(
        "SELECT page_token, next_sync_at, failures, last_sync_at, resync_requested, idle_syncs \
         FROM users WHERE sub = $1",
    )
    .bind(sub)
    .fetch_optional(conn)
    .await
}

/// What a claim is for.
#[derive(Debug, Clone, Copy)]
pub enum Claim<'a> {
    /// Scheduled work of cycle `stamp` (its tick, unix ms): users due and not yet claimed in
    /// it, after `after` in (slot, sub) order and in a slot up to `last_slot` (the last one
    /// whose time has come). A cycle walks the users once with this cursor, so each claim
    /// reads only the rows it passes: without it every claim would re-read the users already
    /// claimed in the cycle, O(users) per claim and O(users²) per cycle.
    Cycle {
        stamp: i64,
        after: &'a Cursor,
        last_slot: i64,
    },
    /// Admin resync requests.
    Resync,
}

/// Claims up to `limit` users for `owner` until `lease_until`, and returns them loaded for
/// sync: active users with credentials that Google has not suspended (Cross-Account
/// Protection: nothing calls Google for a suspended user). On PostgreSQL concurrent instances
/// skip each other's locked rows (`FOR UPDATE SKIP LOCKED`), so every user goes to exactly one
/// of them; on SQLite the write lock does the same.
/// An expired lease (its owner died) is fair game.
/// Long because it is one statement (claim and load) assembled per backend and claim kind;
/// split, the parts would only make sense read together.
#[allow(clippy::too_many_arguments)]
pub async fn claim(
    conn: &mut Conn,
    backend: Backend,
    what: Claim<'_>,
    owner: &str,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<DueUser>, sqlx::Error> {
    // SQLite has no statistics (no ANALYZE) and would otherwise pick `users_due` (state) and
    // sort every active user for each claim; INDEXED BY makes it walk the (slot, sub) order
    // from the cursor (migration 0012), or only the users with a request (migration 0011).
    let start = Cursor::start();
    let (due, index, order, cycle, after, last_slot) = match what {
        Claim::Cycle {
            stamp,
            after,
            last_slot,
        } => (
            "(u.slot, u.sub) > ($6, $7) AND u.slot <= $8 AND u.last_cycle < $3 \
             AND (u.next_sync_at <= $4 OR u.resync_requested > 0)",
            "users_slot",
            "u.slot, u.sub",
            stamp,
            after,
            last_slot,
        ),
        // Any slot, from the start: the same placeholders as a cycle's claim.
        Claim::Resync => (
            "u.resync_requested > 0 AND (u.slot, u.sub) > ($6, $7) AND u.slot <= $8",
            "users_resync_requested",
            "u.sub",
            0,
            &start,
            SLOTS,
        ),
    };
    let (indexed_by, lock) = match backend {
        Backend::Postgres => (String::new(), "FOR UPDATE OF u SKIP LOCKED"),
        Backend::Sqlite => (format!("INDEXED BY {index}"), ""),
    };
    let claimed: Vec<String> = sqlx::query_scalar(&format!(
        "UPDATE users SET lease_owner = $1, lease_expires_at = $2, \
                last_cycle = CASE WHEN $3 > 0 THEN $3 ELSE last_cycle END \
         WHERE sub IN (SELECT u.sub FROM users u {indexed_by} \
                       JOIN credentials c ON c.sub = u.sub \
                       WHERE u.state = 'active' AND u.suspended_by_google IS NULL \
                         AND {due} \
                         AND (u.lease_owner IS NULL OR u.lease_owner = $1 \
                              OR u.lease_expires_at < $4) \
                       ORDER BY {order} LIMIT $5 {lock}) \
         RETURNING sub"
    ))
    .bind(owner)
    .bind(lease_until)
    .bind(cycle)
    .bind(now)
    .bind(limit)
    .bind(after.slot)
    .bind(&after.sub)
    .bind(last_slot)
    .fetch_all(&mut *conn)
    .await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (1..=claimed.len()).map(|i| format!("${i}")).collect();
    let query = format!(
        "SELECT u.sub, u.slot, u.page_token, u.failures, u.resync_requested, \
                c.refresh_token, c.key_id, c.access_token, c.access_key_id, c.access_expires_at, \
                u.listing_start, u.listing_page, u.listing_generation, u.over_quota, \
                EXISTS (SELECT 1 FROM writes w WHERE w.sub = u.sub AND w.state = 'pending') \
                    AS has_writes \
         FROM users u JOIN credentials c ON c.sub = u.sub WHERE u.sub IN ({}) \
         ORDER BY u.slot, u.sub",
        placeholders.join(", ")
    );
    // Not kept prepared: the text differs with the number claimed.
    let mut q = sqlx::query_as(&query).persistent(false);
    for sub in &claimed {
        q = q.bind(sub);
    }
    q.fetch_all(conn).await
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
            "UPDATE users SET lease_owner = NULL, lease_expires_at = NULL, last_cycle = 0 \
             WHERE sub = $1 AND lease_owner = $2",
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
        "INSERT INTO instances (id, version, started_at, last_seen_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
             started_at = excluded.started_at, last_seen_at = excluded.last_seen_at",
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

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Instance {
    pub id: String,
    pub version: String,
    pub started_at: i64,
    pub last_seen_at: i64,
}

/// Instances seen since `since`.
pub async fn live_instances(conn: &mut Conn, since: i64) -> Result<Vec<Instance>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, version, started_at, last_seen_at FROM instances \
         WHERE last_seen_at >= $1 ORDER BY id",
    )
    .bind(since)
    .fetch_all(conn)
    .await
}

/// How many instances were seen since `since`.
pub async fn count_live_instances(conn: &mut Conn, since: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE last_seen_at >= $1")
        .bind(since)
        .fetch_one(conn)
        .await
}

/// Starts listing generation `generation` from `start` (the changes token taken first).
pub async fn begin_listing(
    conn: &mut Conn,
    sub: &str,
    start: &str,
    generation: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET listing_start = $2, listing_page = NULL, listing_generation = $3 \
         WHERE sub = $1",
    )
    .bind(sub)
    .bind(start)
    .bind(generation)
    .execute(conn)
    .await?;
    Ok(())
}

/// Where the listing goes on: the next page's token.
pub async fn save_listing_page(conn: &mut Conn, sub: &str, page: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET listing_page = $2 WHERE sub = $1")
        .bind(sub)
        .bind(page)
        .execute(conn)
        .await?;
    Ok(())
}

/// The listing is complete: the changes feed takes over from `start`.
pub async fn end_listing(conn: &mut Conn, sub: &str, start: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET page_token = $2, listing_start = NULL, listing_page = NULL \
         WHERE sub = $1",
    )
    .bind(sub)
    .bind(start)
    .execute(conn)
    .await?;
    Ok(())
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

/// Asks for a sync of `sub` ahead of schedule; a stronger request already pending stays.
pub async fn request_resync(conn: &mut Conn, sub: &str, kind: Resync) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE users SET resync_requested = CASE WHEN resync_requested > $2 \
                THEN resync_requested ELSE $2 END WHERE sub = $1",
    )
    .bind(sub)
    .bind(kind as i64)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Taken when a sync starts: a full request drops the page token.
pub async fn take_resync_request(conn: &mut Conn, sub: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET page_token = CASE WHEN resync_requested = 2 THEN NULL ELSE page_token END, \
                listing_start = CASE WHEN resync_requested = 2 THEN NULL ELSE listing_start END, \
                resync_requested = 0 WHERE sub = $1",
    )
    .bind(sub)
    .execute(conn)
    .await?;
    Ok(())
}

/// Asks for a sync of every active, unsuspended user ahead of schedule. Returns their subs.
pub async fn request_resync_all(conn: &mut Conn, kind: Resync) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query(
        "UPDATE users SET resync_requested = CASE WHEN resync_requested > $1 \
                THEN resync_requested ELSE $1 END \
         WHERE state = 'active' AND suspended_by_google IS NULL",
    )
    .bind(kind as i64)
    .execute(&mut *conn)
    .await?;
    active_subs(conn).await
}

/// Every active user Google has not suspended (those that sync), in sub order.
pub async fn active_subs(conn: &mut Conn) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT sub FROM users WHERE state = 'active' AND suspended_by_google IS NULL \
         ORDER BY sub",
    )
    .fetch_all(conn)
    .await
}

/// Every instance ever seen (live or not).
pub async fn all_instances(conn: &mut Conn) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM instances ORDER BY id")
        .fetch_all(conn)
        .await
}

/// Forgets instances not seen since `since` (a dead one's row, long after its leases expired).
pub async fn prune_instances(conn: &mut Conn, since: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM instances WHERE last_seen_at < $1 \
         AND id NOT IN (SELECT lease_owner FROM users WHERE lease_owner IS NOT NULL)",
    )
    .bind(since)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
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

/// What a finished sync does to the user's `last_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastError<'a> {
    /// Leave it as it is (a cancelled sync says nothing new).
    Keep,
    /// A success clears it.
    Clear,
    Set(&'a str),
}

/// How a sync ended, as the user's row keeps it.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// Not before this (backoff after failures; 0: the next cycle).
    pub next_sync_at: i64,
    pub failures: i64,
    /// When it succeeded (`None`: it did not).
    pub last_ok: Option<i64>,
    pub last_error: LastError<'a>,
    pub outcome: SyncOutcome,
    /// Nothing changed and nothing failed: counted in `idle_syncs`, no row in `syncs`.
    pub idle: bool,
}

/// What finished syncs change on their users, in one statement for the whole batch (an idle
/// user-sync then costs a fraction of a statement): next sync time, failure count, last
/// success, last error, the count of syncs (idle ones apart), and the lease given back.
pub async fn finish_syncs(
    conn: &mut Conn,
    owner: &str,
    batch: &[(&str, Finished<'_>)],
) -> Result<(), sqlx::Error> {
    for chunk in batch.chunks(super::ROWS_PER_STATEMENT) {
        finish_chunk(conn, owner, chunk).await?;
    }
    Ok(())
}

async fn finish_chunk(
    conn: &mut Conn,
    owner: &str,
    chunk: &[(&str, Finished<'_>)],
) -> Result<(), sqlx::Error> {
    // A VALUES row per sync: sub, next_sync_at, failures, last_ok, change_error, error,
    // outcome, idle; both SQLite and PostgreSQL name its columns column1 to column8.
    const COLUMNS: usize = 8;
    let sql = format!(
        "UPDATE users SET next_sync_at = v.column2, failures = v.column3, \
                last_sync_at = COALESCE(v.column4, users.last_sync_at), \
                last_error = CASE WHEN v.column5 = 1 THEN v.column6 ELSE users.last_error END, \
                idle_syncs = CASE WHEN v.column8 = 1 THEN users.idle_syncs + 1 ELSE 0 END, \
                syncs_done = users.syncs_done + 1, last_outcome = v.column7, \
                lease_owner = CASE WHEN users.lease_owner = $1 THEN NULL \
                                   ELSE users.lease_owner END, \
                lease_expires_at = CASE WHEN users.lease_owner = $1 THEN NULL \
                                        ELSE users.lease_expires_at END \
         FROM (VALUES {}) AS v WHERE users.sub = v.column1",
        super::values_rows(chunk.len(), COLUMNS, 2)
    );
    // Full chunks share one text, kept prepared; a shorter last one is not.
    let full = chunk.len() == super::ROWS_PER_STATEMENT;
    let mut q = sqlx::query(&sql).persistent(full).bind(owner);
    for (sub, f) in chunk {
        let (change_error, error) = match f.last_error {
            LastError::Keep => (false, None),
            LastError::Clear => (true, None),
            LastError::Set(e) => (true, Some(e)),
        };
        q = q
            .bind(*sub)
            .bind(f.next_sync_at)
            .bind(f.failures)
            .bind(f.last_ok)
            .bind(change_error as i64)
            .bind(error)
            .bind(f.outcome.as_str())
            .bind(f.idle as i64);
    }
    q.execute(conn).await?;
    Ok(())
}

/// How many syncs of `sub` finished so far, and how the last one ended (for waiters).
pub async fn syncs_done(conn: &mut Conn, sub: &str) -> Result<(i64, Option<String>), sqlx::Error> {
    Ok(
        sqlx::query_as("SELECT syncs_done, last_outcome FROM users WHERE sub = $1")
            .bind(sub)
            .fetch_optional(conn)
            .await?
            .unwrap_or((0, None)),
    )
}
