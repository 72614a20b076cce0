//! `changes` and `change_head`: the change feed the data API serves and webhooks deliver.
//!
//! Writers [`record`] a change inside the transaction that makes it, with no sequence number.
//! [`sequence`] (run by one sequencer at a time, cluster-wide: it holds the `change_head` row)
//! gives the rows that have committed meanwhile the next seqs, in a short transaction of its
//! own. Readers ([`after`]) only see sequenced rows, so a reader at cursor C that got seqs up
//! to N never misses a row: every seq ≤ N was visible, atomically, when N was.
//!
//! This is what defeats the classic trap of PostgreSQL sequences, which are drawn at INSERT,
//! not at commit: with `seq > cursor` over such ids, a transaction that drew id 7 and commits
//! after id 8 was read is skipped for ever. Here a late commit just gets a later seq. On SQLite
//! the single writer already makes insert order commit order; the same code serves both.

use serde::{Deserialize, Serialize};

use super::files::{self, FileRow};
use super::{Backend, Conn};

text_enum! {
    /// What changed. The text is the event type of the feed and of webhooks. New kinds need no
    /// migration (the column has no CHECK).
    pub enum ChangeKind {
        /// A file or folder appeared in the user's appDataFolder.
        FileAdded = "file.added",
        /// Its content, name or place changed.
        FileUpdated = "file.updated",
        FileRemoved = "file.removed",
        /// A sign-in was stored (first or again); `state` is the user's state after it.
        UserSignedIn = "user.signed_in",
        /// Google refused the user's refresh token: syncing stops until a new sign-in.
        UserReauthRequired = "user.reauth_required",
        UserPaused = "user.paused",
        UserResumed = "user.resumed",
        /// An admin forgot the user: grant revoked, mirror and rows deleted.
        UserForgotten = "user.forgotten",
        /// Google's Cross-Account Protection acted on the user (suspended, suspension lifted,
        /// tokens revoked, credential change required...): `detail` holds the event and the
        /// outcome, `state` the user's state after it.
        UserSecurityEvent = "user.security_event",
        /// A write of the data API (or `ctl push`) was carried out on Drive; `detail` holds
        /// its `write_id`. The file's own change comes just before it in the feed.
        WriteDone = "write.done",
        /// A write was not carried out: the file changed on Drive since the writer saw it.
        WriteConflict = "write.conflict",
        /// A write was given up: Drive refused it, or it failed too many times.
        WriteFailed = "write.failed",
    }
}

/// A change to record. File changes carry `file_id` (and the best-effort `path`, `md5`,
/// `version`); user changes carry the user's `state` after it.
///
/// ```ignore
/// changes::record(tx.conn(), &NewChange {
///     path: Some("docs/a.json"), md5: Some(&md5), version: Some(7),
///     ..NewChange::file(ChangeKind::FileUpdated, sub, file_id)
/// }, store::now_ms()).await?;
/// ```
#[derive(Debug, Clone)]
pub struct NewChange<'a> {
    pub kind: ChangeKind,
    pub sub: &'a str,
    pub file_id: Option<&'a str>,
    pub path: Option<&'a str>,
    pub md5: Option<&'a str>,
    pub version: Option<i64>,
    pub state: Option<&'a str>,
    /// Anything else, as a JSON object (e.g. a write's id and outcome).
    pub detail: Option<serde_json::Value>,
}

impl<'a> NewChange<'a> {
    /// A change with nothing but its kind and user.
    pub fn new(kind: ChangeKind, sub: &'a str) -> NewChange<'a> {
        NewChange {
            kind,
            sub,
            file_id: None,
            path: None,
            md5: None,
            version: None,
            state: None,
            detail: None,
        }
    }

    /// A change of a file.
    pub fn file(kind: ChangeKind, sub: &'a str, file_id: &'a str) -> NewChange<'a> {
        NewChange {
            file_id: Some(file_id),
            ..NewChange::new(kind, sub)
        }
    }

    /// A change of a user's state (`state`: the state after it).
    pub fn user(kind: ChangeKind, sub: &'a str, state: &'a str) -> NewChange<'a> {
        NewChange {
            state: Some(state),
            ..NewChange::new(kind, sub)
        }
    }
}

/// Records `change` in the caller's transaction: it enters the feed (gets its seq) shortly
/// after that transaction commits, and never if it rolls back. Cheap: one INSERT.
pub async fn record(conn: &mut Conn, change: &NewChange<'_>, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO changes (kind, sub, file_id, path, md5, version, state, detail, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(change.kind.as_str())
    .bind(change.sub)
    .bind(change.file_id)
    .bind(change.path)
    .bind(change.md5)
    .bind(change.version)
    .bind(change.state)
    .bind(change.detail.as_ref().map(|d| d.to_string()))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a change of the item `row` (its path resolved now, before a removal deletes the
/// row), with `detail` (a write's id, for one the data API made).
pub async fn record_file(
    conn: &mut Conn,
    kind: ChangeKind,
    sub: &str,
    row: &FileRow,
    detail: Option<serde_json::Value>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let path = files::path_of(&mut *conn, sub, row).await?;
    let change = NewChange {
        path: Some(&path),
        md5: row.md5.as_deref(),
        version: row.version,
        detail,
        ..NewChange::file(kind, sub, &row.file_id)
    };
    record(conn, &change, now).await
}

/// A sequenced change, as the feed serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Change {
    pub seq: i64,
    #[sqlx(try_from = "String")]
    pub kind: ChangeKind,
    pub sub: String,
    pub file_id: Option<String>,
    pub path: Option<String>,
    pub md5: Option<String>,
    pub version: Option<i64>,
    pub state: Option<String>,
    pub detail: Option<String>,
    pub created_at: i64,
    pub sequenced_at: i64,
}

/// The feed's ends: the last seq given, and the last seq pruned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Head {
    pub last_seq: i64,
    pub pruned_through: i64,
}

pub async fn head(conn: &mut Conn) -> Result<Head, sqlx::Error> {
    sqlx::query_as("SELECT last_seq, pruned_through FROM change_head WHERE id = 1")
        .fetch_one(conn)
        .await
}

/// Sequenced changes after `cursor`, in seq order, at most `limit`.
pub async fn after(conn: &mut Conn, cursor: i64, limit: i64) -> Result<Vec<Change>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, kind, sub, file_id, path, md5, version, state, detail, created_at, \
                sequenced_at FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(cursor)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Whether committed changes wait for a seq (cheap: a partial index).
pub async fn has_unsequenced(conn: &mut Conn) -> Result<bool, sqlx::Error> {
    let one: Option<i64> = sqlx::query_scalar("SELECT id FROM changes WHERE seq IS NULL LIMIT 1")
        .fetch_optional(conn)
        .await?;
    Ok(one.is_some())
}

/// Gives up to `limit` committed, unsequenced changes the next seqs (in insertion order),
/// inside the caller's write transaction, and returns the new head. On PostgreSQL the
/// `change_head` row is locked first (`FOR UPDATE`), so sequencers of several instances take
/// turns and each sees every row committed before it got the lock; on SQLite the write
/// transaction is already exclusive. Commit promptly: the lock is held until then.
pub async fn sequence(
    conn: &mut Conn,
    backend: Backend,
    limit: i64,
    now: i64,
) -> Result<Head, sqlx::Error> {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let head: Head = sqlx::query_as(&format!(
        "SELECT last_seq, pruned_through FROM change_head WHERE id = 1{lock}"
    ))
    .fetch_one(&mut *conn)
    .await?;
    // Under READ COMMITTED this statement's snapshot is taken after the lock was granted:
    // it sees every change committed until then.
    let done = sqlx::query(
        "UPDATE changes SET seq = $1 + n.rn, sequenced_at = $2 \
         FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS rn FROM changes \
               WHERE seq IS NULL ORDER BY id LIMIT $3) AS n \
         WHERE changes.id = n.id",
    )
    .bind(head.last_seq)
    .bind(now)
    .bind(limit)
    .execute(&mut *conn)
    .await?;
    let given = done.rows_affected() as i64;
    if given == 0 {
        return Ok(head);
    }
    let last_seq = head.last_seq + given;
    sqlx::query("UPDATE change_head SET last_seq = $1 WHERE id = 1")
        .bind(last_seq)
        .execute(conn)
        .await?;
    Ok(Head { last_seq, ..head })
}

/// Deletes sequenced changes sequenced before `cutoff` (unix ms), at most `limit`, never
/// past `keep_from` (the oldest seq someone still needs: a webhook endpoint's copy cursor);
/// moves `pruned_through` up. Returns how many went.
pub async fn prune(
    conn: &mut Conn,
    backend: Backend,
    cutoff: i64,
    keep_from: i64,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let head: Head = sqlx::query_as(&format!(
        "SELECT last_seq, pruned_through FROM change_head WHERE id = 1{lock}"
    ))
    .fetch_one(&mut *conn)
    .await?;
    let through: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(seq) FROM (SELECT seq FROM changes WHERE seq IS NOT NULL \
                AND seq > $1 AND seq < $2 AND sequenced_at < $3 ORDER BY seq LIMIT $4) AS old",
    )
    .bind(head.pruned_through)
    .bind(keep_from)
    .bind(cutoff)
    .bind(limit)
    .fetch_one(&mut *conn)
    .await?;
    let Some(through) = through else {
        return Ok(0);
    };
    let done = sqlx::query("DELETE FROM changes WHERE seq IS NOT NULL AND seq <= $1")
        .bind(through)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE change_head SET pruned_through = $1 WHERE id = 1")
        .bind(through)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}
