//! `webhook_endpoints` and `webhook_outbox`: the persisted outbox webhooks are delivered from.
//!
//! Each endpoint has a copy cursor into the change feed; [`fill`] copies the changes after it
//! into the outbox (one row per change the endpoint wants) and moves the cursor, in one
//! transaction, so a change is queued exactly once per endpoint. Deliverers [`claim`] due
//! rows with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, like the scheduler's users), so
//! several instances do not deliver the same message in the normal case; a row whose lease
//! expired (its instance died mid-delivery) is claimed again: at-least-once.

use serde::{Deserialize, Serialize};

use super::{Backend, Conn};

text_enum! {
    /// Where one message stands.
    pub enum DeliveryState {
        /// Waiting for its (next) attempt.
        Pending = "pending",
        /// The endpoint answered 2xx.
        Delivered = "delivered",
        /// Given up: retried for the whole retry period without a 2xx.
        Failed = "failed",
    }
}

/// A message to queue for an endpoint.
pub struct NewMessage<'a> {
    pub seq: i64,
    pub msg_id: &'a str,
    pub event: &'a str,
    pub body: &'a str,
}

/// Reads the endpoint's copy cursor, locking it (PostgreSQL) for the rest of the transaction;
/// a new endpoint starts at `start` (the feed's head: it gets what happens from now on).
pub async fn lock_cursor(
    conn: &mut Conn,
    backend: Backend,
    endpoint: &str,
    start: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhook_endpoints (name, last_seq) VALUES ($1, $2) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(endpoint)
    .bind(start)
    .execute(&mut *conn)
    .await?;
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    sqlx::query_scalar(&format!(
        "SELECT last_seq FROM webhook_endpoints WHERE name = $1{lock}"
    ))
    .bind(endpoint)
    .fetch_one(conn)
    .await
}

/// Queues `messages` for `endpoint` and moves its copy cursor to `through` (the last change
/// looked at, queued or filtered out), in the caller's transaction (after [`lock_cursor`]).
pub async fn fill(
    conn: &mut Conn,
    endpoint: &str,
    messages: &[NewMessage<'_>],
    through: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    for m in messages {
        sqlx::query(
            "INSERT INTO webhook_outbox (endpoint, seq, msg_id, event, body, state, \
                                         next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6) ON CONFLICT (endpoint, seq) DO NOTHING",
        )
        .bind(endpoint)
        .bind(m.seq)
        .bind(m.msg_id)
        .bind(m.event)
        .bind(m.body)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("UPDATE webhook_endpoints SET last_seq = $2 WHERE name = $1 AND last_seq < $2")
        .bind(endpoint)
        .bind(through)
        .execute(conn)
        .await?;
    Ok(())
}

/// The lowest copy cursor among `endpoints`: changes after it are still to be queued, so the
/// feed's pruning must keep them. `None` when none of them has a cursor yet.
pub async fn min_cursor(conn: &mut Conn, endpoints: &[String]) -> Result<Option<i64>, sqlx::Error> {
    let mut lowest: Option<i64> = None;
    for name in endpoints {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM webhook_endpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(seq) = seq {
            lowest = Some(lowest.map_or(seq, |l| l.min(seq)));
        }
    }
    Ok(lowest)
}

/// A claimed message, ready to send.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Message {
    pub id: i64,
    pub seq: i64,
    pub msg_id: String,
    pub event: String,
    pub body: String,
    pub attempts: i64,
    pub created_at: i64,
}

/// Claims up to `limit` due messages of `endpoint` for `owner` until `lease_until`, oldest
/// first.
pub async fn claim(
    conn: &mut Conn,
    backend: Backend,
    endpoint: &str,
    owner: &str,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<Message>, sqlx::Error> {
    let lock = match backend {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let mut claimed: Vec<Message> = sqlx::query_as(&format!(
        "UPDATE webhook_outbox SET lease_owner = $2, lease_expires_at = $3 \
         WHERE id IN (SELECT id FROM webhook_outbox \
                      WHERE endpoint = $1 AND state = 'pending' AND next_attempt_at <= $4 \
                        AND (lease_owner IS NULL OR lease_expires_at < $4) \
                      ORDER BY seq LIMIT $5 {lock}) \
         RETURNING id, seq, msg_id, event, body, attempts, created_at"
    ))
    .bind(endpoint)
    .bind(owner)
    .bind(lease_until)
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    claimed.sort_by_key(|m| m.seq);
    Ok(claimed)
}

/// The endpoint answered 2xx.
pub async fn delivered(
    conn: &mut Conn,
    endpoint: &str,
    id: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_outbox SET state = 'delivered', attempts = attempts + 1, \
                finished_at = $2, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE webhook_endpoints SET last_success_at = $2 WHERE name = $1")
        .bind(endpoint)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// An attempt failed: retry at `retry_at`, or give up (`None`).
pub async fn attempt_failed(
    conn: &mut Conn,
    endpoint: &str,
    id: i64,
    error: &str,
    retry_at: Option<i64>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let (state, next) = match retry_at {
        Some(at) => (DeliveryState::Pending, at),
        None => (DeliveryState::Failed, now),
    };
    sqlx::query(
        "UPDATE webhook_outbox SET state = $2, attempts = attempts + 1, next_attempt_at = $3, \
                last_error = $4, lease_owner = NULL, lease_expires_at = NULL, \
                finished_at = CASE WHEN $2 = 'failed' THEN $5 ELSE finished_at END \
         WHERE id = $1",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(next)
    .bind(error)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE webhook_endpoints SET last_error = $2, last_error_at = $3 WHERE name = $1")
        .bind(endpoint)
        .bind(error)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Gives back leases `owner` holds on messages not sent (shutting down).
pub async fn release(conn: &mut Conn, owner: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhook_outbox SET lease_owner = NULL, lease_expires_at = NULL \
         WHERE lease_owner = $1 AND state = 'pending'",
    )
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes delivered and failed messages finished before `cutoff`, at most `limit`.
pub async fn prune(conn: &mut Conn, cutoff: i64, limit: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox \
             WHERE state <> 'pending' AND finished_at < $1 ORDER BY id LIMIT $2)",
    )
    .bind(cutoff)
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// One endpoint for `ctl webhooks`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
    /// The feed seq the outbox has been filled up to.
    pub copied_through: Option<i64>,
    pub last_success_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    /// When the oldest pending message was queued.
    pub oldest_pending_at: Option<i64>,
}

pub async fn stats(conn: &mut Conn, endpoint: &str) -> Result<EndpointStats, sqlx::Error> {
    let counts: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT state, COUNT(*) AS n, MIN(created_at) AS oldest FROM webhook_outbox \
         WHERE endpoint = $1 GROUP BY state",
    )
    .bind(endpoint)
    .fetch_all(&mut *conn)
    .await?;
    let mut s = EndpointStats::default();
    for (state, n, oldest) in counts {
        match state.parse::<DeliveryState>() {
            Ok(DeliveryState::Pending) => {
                s.pending = n;
                s.oldest_pending_at = oldest;
            }
            Ok(DeliveryState::Delivered) => s.delivered = n,
            Ok(DeliveryState::Failed) => s.failed = n,
            Err(_) => {}
        }
    }
    #[derive(sqlx::FromRow)]
    struct Endpoint {
        last_seq: i64,
        last_success_at: Option<i64>,
        last_error: Option<String>,
        last_error_at: Option<i64>,
    }
    let row: Option<Endpoint> = sqlx::query_as(
        "SELECT last_seq, last_success_at, last_error, last_error_at FROM webhook_endpoints \
         WHERE name = $1",
    )
    .bind(endpoint)
    .fetch_optional(conn)
    .await?;
    if let Some(e) = row {
        s.copied_through = Some(e.last_seq);
        s.last_success_at = e.last_success_at;
        s.last_error = e.last_error;
        s.last_error_at = e.last_error_at;
    }
    Ok(s)
}
