//! `users`: one row per Google account (keyed by `sub`), its profile and lifecycle state.

use serde::{Deserialize, Serialize};

use super::{Conn, Flag};

text_enum! {
    /// Lifecycle of a user. Only `Active` users are synced.
    pub enum UserState {
        Active = "active",
        /// Google refused the refresh token (revoked, expired, ...): waits for a new sign-in.
        ReauthRequired = "reauth_required",
        /// Paused by an admin.
        Paused = "paused",
        Forgotten = "forgotten",
    }
}

/// The profile claims of a verified ID token.
#[derive(Debug, Clone, Default, Serialize, Deserialize, sqlx::FromRow)]
pub struct Profile {
    pub sub: String,
    pub email: Option<String>,
    #[sqlx(try_from = "Flag")]
    pub email_verified: bool,
    pub name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub picture: Option<String>,
    pub locale: Option<String>,
}

impl From<Flag> for bool {
    fn from(f: Flag) -> bool {
        f.0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct User {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub profile: Profile,
    #[sqlx(try_from = "String")]
    pub state: UserState,
    pub last_error: Option<String>,
    /// Why the user's content is not all mirrored (a limit); `None` within limits.
    pub over_quota: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Creates the user, or refreshes the profile of an existing one (state untouched).
pub async fn upsert_profile(conn: &mut Conn, p: &Profile, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (sub, email, email_verified, name, given_name, family_name, picture, \
                            locale, state, created_at, updated_at, slot) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'active', $9, $9, $10) \
         ON CONFLICT (sub) DO UPDATE SET email = excluded.email, \
             email_verified = excluded.email_verified, name = excluded.name, \
             given_name = excluded.given_name, family_name = excluded.family_name, \
             picture = excluded.picture, locale = excluded.locale, updated_at = excluded.updated_at",
    )
    .bind(&p.sub)
    .bind(&p.email)
    .bind(p.email_verified as i64)
    .bind(&p.name)
    .bind(&p.given_name)
    .bind(&p.family_name)
    .bind(&p.picture)
    .bind(&p.locale)
    .bind(now)
    .bind(super::schedule::slot_of(&p.sub))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut Conn, sub: &str) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sub, email, email_verified, name, given_name, family_name, picture, locale, \
                state, last_error, over_quota, created_at, updated_at FROM users WHERE sub = $1",
    )
    .bind(sub)
    .fetch_optional(conn)
    .await
}

pub async fn set_state(
    conn: &mut Conn,
    sub: &str,
    state: UserState,
    last_error: Option<&str>,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE users SET state = $2, last_error = $3, updated_at = $4 WHERE sub = $1")
            .bind(sub)
            .bind(state.as_str())
            .bind(last_error)
            .bind(now)
            .execute(conn)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// One line of `ctl users`.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct UserSummary {
    pub sub: String,
    pub email: Option<String>,
    #[sqlx(try_from = "String")]
    pub state: UserState,
    pub last_sync_at: Option<i64>,
    pub last_error: Option<String>,
    pub files: i64,
    pub bytes: i64,
    /// Cross-Account Protection (migration 0007): the reason Google disabled the account.
    #[sqlx(default)]
    #[serde(default)]
    pub suspended_by_google: Option<String>,
    /// When Google said the user must change a credential (unix ms); `None`: no flag.
    #[sqlx(default)]
    #[serde(default)]
    pub credential_change_required_at: Option<i64>,
}

/// How many users are in each state (every state listed, zeros included).
pub async fn counts_by_state(conn: &mut Conn) -> Result<Vec<(UserState, i64)>, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) AS n FROM users GROUP BY state")
            .fetch_all(conn)
            .await?;
    Ok(UserState::ALL
        .iter()
        .map(|state| {
            let n = rows
                .iter()
                .find(|(s, _)| s == state.as_str())
                .map_or(0, |(_, n)| *n);
            (*state, n)
        })
        .collect())
}

pub async fn set_over_quota(
    conn: &mut Conn,
    sub: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET over_quota = $2 WHERE sub = $1")
        .bind(sub)
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

/// How many users are over a mirror limit.
pub async fn count_over_quota(conn: &mut Conn) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE over_quota IS NOT NULL")
        .fetch_one(conn)
        .await
}

/// How many users are in `state` and entered it (or changed otherwise) since `since`.
pub async fn count_changed_since(
    conn: &mut Conn,
    state: UserState,
    since: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE state = $1 AND updated_at >= $2")
        .bind(state.as_str())
        .bind(since)
        .fetch_one(conn)
        .await
}

/// Deletes the user and, by cascade, credentials, files, syncs and writes.
pub async fn delete(conn: &mut Conn, sub: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM users WHERE sub = $1")
        .bind(sub)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// What Cross-Account Protection says of a user (migration 0007).
#[derive(Debug, Clone, Default, Serialize, Deserialize, sqlx::FromRow)]
pub struct UserSecurity {
    /// The reason Google disabled the account; `None`: not suspended.
    pub suspended_by_google: Option<String>,
    /// The iat (unix ms) of the event that last set or cleared the suspension.
    pub suspension_changed_at: Option<i64>,
    /// When Google said the user must change a credential; `None`: no flag.
    pub credential_change_required_at: Option<i64>,
}

pub async fn security(conn: &mut Conn, sub: &str) -> Result<Option<UserSecurity>, sqlx::Error> {
    sqlx::query_as(
        "SELECT suspended_by_google, suspension_changed_at, credential_change_required_at \
         FROM users WHERE sub = $1",
    )
    .bind(sub)
    .fetch_optional(conn)
    .await
}

/// Suspends (`reason` set) or lifts the suspension (`None`) as of `event_at` (the SET's iat,
/// unix ms), unless a newer event already changed it. `false`: superseded (or no such user).
pub async fn set_suspension(
    conn: &mut Conn,
    sub: &str,
    reason: Option<&str>,
    event_at: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE users SET suspended_by_google = $2, suspension_changed_at = $3, updated_at = $4 \
         WHERE sub = $1 AND (suspension_changed_at IS NULL OR suspension_changed_at <= $3)",
    )
    .bind(sub)
    .bind(reason)
    .bind(event_at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Flags (`Some(at)`) or clears (`None`) "credential change required"; `false`: no such user.
pub async fn set_credential_change_required(
    conn: &mut Conn,
    sub: &str,
    at: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE users SET credential_change_required_at = $2 WHERE sub = $1")
        .bind(sub)
        .bind(at)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// How many users Google suspended, and how many are flagged for a credential change.
pub async fn flag_counts(conn: &mut Conn) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT COUNT(suspended_by_google), COUNT(credential_change_required_at) FROM users",
    )
    .fetch_one(conn)
    .await
}

/// Of `subs`, those whose calls to Google must stop: suspended by Google, or whose grant is
/// gone (reauth_required). A running sync of one of them is cancelled.
pub async fn stopped_among(conn: &mut Conn, subs: &[String]) -> Result<Vec<String>, sqlx::Error> {
    if subs.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (1..=subs.len()).map(|i| format!("${i}")).collect();
    let query = format!(
        "SELECT sub FROM users WHERE sub IN ({}) \
           AND (state = 'reauth_required' OR suspended_by_google IS NOT NULL) ORDER BY sub",
        placeholders.join(", ")
    );
    let mut q = sqlx::query_scalar(&query);
    for sub in subs {
        q = q.bind(sub);
    }
    q.fetch_all(conn).await
}
