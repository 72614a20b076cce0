//! `security_events`: the security event tokens (SETs) accepted at `POST /risc`. One table is
//! the inbox the RISC processor works through (persisted before the 202, so a crash after it
//! loses nothing), the `jti` de-duplication (a unique column), and each user's security
//! history (`ctl user SUB`). See migration 0007.

use serde::{Deserialize, Serialize};

use super::Conn;

text_enum! {
    /// The event types of Google's "Supported event types" table, by the last segment of
    /// their URIs (<https://developers.google.com/identity/protocols/risc#supported_event_types>).
    pub enum EventKind {
        SessionsRevoked = "sessions-revoked",
        TokensRevoked = "tokens-revoked",
        TokenRevoked = "token-revoked",
        AccountDisabled = "account-disabled",
        AccountEnabled = "account-enabled",
        CredentialChangeRequired = "account-credential-change-required",
        Verification = "verification",
        /// Any other event type: recorded, not acted on.
        Unsupported = "unsupported",
    }
}

text_enum! {
    /// What acting on an event did to the user it names.
    pub enum Outcome {
        /// Received, not yet acted on.
        Pending = "pending",
        /// A verification event: its `state` was logged.
        Logged = "logged",
        /// No user of ours has that `sub`: acknowledged and dropped.
        UnknownUser = "unknown_user",
        /// A token-revoked event for a token that is not the refresh token we hold.
        NoMatchingToken = "no_matching_token",
        /// sessions-revoked: the cached access token was dropped; the next call refreshes.
        AccessTokenDropped = "access_token_dropped",
        /// The refresh and access tokens were deleted; the user must sign in again.
        TokensDeleted = "tokens_deleted",
        /// account-disabled (not hijacking): no call to Google for the user until enabled.
        Suspended = "suspended",
        /// account-disabled for hijacking: the grant revoked at Google, our tokens deleted, and
        /// the user suspended.
        SuspendedTokensRevoked = "suspended_tokens_revoked",
        /// account-enabled: the suspension is lifted.
        SuspensionCleared = "suspension_cleared",
        /// account-enabled for a user who was not suspended.
        NotSuspended = "not_suspended",
        /// An account-disabled or -enabled older than the one that last changed the user
        /// (delivered late): no change.
        Superseded = "superseded",
        /// account-credential-change-required: the user is flagged for the operator.
        Flagged = "flagged",
        /// An event type or subject format the daemon does not act on.
        Unsupported = "unsupported",
    }
}

impl Outcome {
    /// Whether the user is different after it (what the data API's feed reports).
    pub fn changed_user(self) -> bool {
        matches!(
            self,
            Outcome::AccessTokenDropped
                | Outcome::TokensDeleted
                | Outcome::Suspended
                | Outcome::SuspendedTokensRevoked
                | Outcome::SuspensionCleared
                | Outcome::Flagged
        )
    }
}

/// One accepted SET, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct SecurityEvent {
    pub id: i64,
    pub jti: String,
    #[sqlx(try_from = "String")]
    pub kind: EventKind,
    pub event_uri: String,
    /// The Google account it is about (for a token-revoked event: the user whose token matched).
    pub sub: Option<String>,
    /// The subject as sent, JSON (a token subject holds a hash or a prefix, never a token).
    pub subject: Option<String>,
    pub reason: Option<String>,
    pub state: Option<String>,
    /// The SET's iat, unix ms.
    pub issued_at: i64,
    pub received_at: i64,
    pub processed_at: Option<i64>,
    #[sqlx(try_from = "String")]
    pub outcome: Outcome,
    pub detail: Option<String>,
    pub attempts: i64,
}

/// A SET to store.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub jti: &'a str,
    pub kind: EventKind,
    pub event_uri: &'a str,
    pub sub: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub state: Option<&'a str>,
    pub issued_at: i64,
    pub received_at: i64,
}

const COLUMNS: &str = "id, jti, kind, event_uri, sub, subject, reason, state, issued_at, \
                       received_at, processed_at, outcome, detail, attempts";

/// Stores a SET; `false` when its `jti` is already stored (a replay, or Google delivering
/// again), in which case nothing changes.
pub async fn insert(conn: &mut Conn, e: &NewEvent<'_>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO security_events (jti, kind, event_uri, sub, subject, reason, state, \
                                      issued_at, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (jti) DO NOTHING",
    )
    .bind(e.jti)
    .bind(e.kind.as_str())
    .bind(e.event_uri)
    .bind(e.sub)
    .bind(e.subject)
    .bind(e.reason)
    .bind(e.state)
    .bind(e.issued_at)
    .bind(e.received_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Events not yet acted on whose next attempt is due, oldest first.
pub async fn due(conn: &mut Conn, now: i64, limit: i64) -> Result<Vec<SecurityEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM security_events \
         WHERE processed_at IS NULL AND next_attempt_at <= $1 ORDER BY id LIMIT $2"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn count_pending(conn: &mut Conn) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM security_events WHERE processed_at IS NULL")
        .fetch_one(conn)
        .await
}

/// Records what was done; `false` when the event was already finished (by another instance).
pub async fn finish(
    conn: &mut Conn,
    id: i64,
    sub: Option<&str>,
    outcome: Outcome,
    detail: Option<&str>,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE security_events SET processed_at = $2, outcome = $3, detail = $4, \
                sub = COALESCE($5, sub), attempts = attempts + 1 \
         WHERE id = $1 AND processed_at IS NULL",
    )
    .bind(id)
    .bind(now)
    .bind(outcome.as_str())
    .bind(detail)
    .bind(sub)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An attempt failed in a way worth retrying: try again at `next_attempt_at`.
pub async fn postpone(
    conn: &mut Conn,
    id: i64,
    next_attempt_at: i64,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE security_events SET attempts = attempts + 1, next_attempt_at = $2, detail = $3 \
         WHERE id = $1 AND processed_at IS NULL",
    )
    .bind(id)
    .bind(next_attempt_at)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// A user's security history, newest first.
pub async fn for_user(
    conn: &mut Conn,
    sub: &str,
    limit: i64,
) -> Result<Vec<SecurityEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM security_events WHERE sub = $1 ORDER BY id DESC LIMIT $2"
    ))
    .bind(sub)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Events received since `since` (unix ms).
pub async fn count_since(conn: &mut Conn, since: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM security_events WHERE received_at >= $1")
        .bind(since)
        .fetch_one(conn)
        .await
}

/// Deletes events acted on and received before `before`; returns how many.
pub async fn prune(conn: &mut Conn, before: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM security_events WHERE received_at < $1 AND processed_at IS NOT NULL",
    )
    .bind(before)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
