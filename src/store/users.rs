//! `users`: one row per Google account (keyed by `sub`), its profile and lifecycle state.

use serde::Serialize;
use sqlx::Row;

use super::Conn;

/// Lifecycle of a user. Only `Active` users are synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserState {
    Active,
    /// Google refused the refresh token (revoked, expired, ...): waits for a new sign-in.
    ReauthRequired,
    /// Paused by an admin.
    Paused,
    Forgotten,
}

impl UserState {
    pub fn as_str(self) -> &'static str {
        match self {
            UserState::Active => "active",
            UserState::ReauthRequired => "reauth_required",
            UserState::Paused => "paused",
            UserState::Forgotten => "forgotten",
        }
    }

    pub fn parse(s: &str) -> Option<UserState> {
        Some(match s {
            "active" => UserState::Active,
            "reauth_required" => UserState::ReauthRequired,
            "paused" => UserState::Paused,
            "forgotten" => UserState::Forgotten,
            _ => return None,
        })
    }
}

/// The profile claims of a verified ID token.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Profile {
    pub sub: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub picture: Option<String>,
    pub locale: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    #[serde(flatten)]
    pub profile: Profile,
    pub state: UserState,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Creates the user, or refreshes the profile of an existing one (state untouched).
pub async fn upsert_profile(conn: &mut Conn, p: &Profile, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (sub, email, email_verified, name, given_name, family_name, picture, \
                            locale, state, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'active', $9, $9) \
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
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut Conn, sub: &str) -> Result<Option<User>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT sub, email, email_verified, name, given_name, family_name, picture, locale, \
                state, last_error, created_at, updated_at FROM users WHERE sub = $1",
    )
    .bind(sub)
    .fetch_optional(conn)
    .await?;
    row.map(|r| user_from_row(&r)).transpose()
}

pub(crate) fn user_from_row(r: &sqlx::any::AnyRow) -> Result<User, sqlx::Error> {
    let state: String = r.try_get("state")?;
    Ok(User {
        profile: Profile {
            sub: r.try_get("sub")?,
            email: r.try_get("email")?,
            email_verified: r.try_get::<i64, _>("email_verified")? != 0,
            name: r.try_get("name")?,
            given_name: r.try_get("given_name")?,
            family_name: r.try_get("family_name")?,
            picture: r.try_get("picture")?,
            locale: r.try_get("locale")?,
        },
        state: UserState::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: format!("unknown user state {state:?}").into(),
        })?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
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
#[derive(Debug, Clone, Serialize)]
pub struct UserSummary {
    pub sub: String,
    pub email: Option<String>,
    pub state: String,
    pub last_sync_at: Option<i64>,
    pub last_error: Option<String>,
    pub files: i64,
    pub bytes: i64,
}

/// Users (optionally in one state) with their mirrored file counts, in `sub` order.
pub async fn list_summary(
    conn: &mut Conn,
    state: Option<UserState>,
    limit: i64,
) -> Result<Vec<UserSummary>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT u.sub, u.email, u.state, u.last_sync_at, u.last_error, \
                COUNT(f.file_id) AS files, CAST(COALESCE(SUM(f.size), 0) AS BIGINT) AS bytes \
         FROM users u LEFT JOIN files f ON f.sub = u.sub \
         WHERE ($1 IS NULL OR u.state = $1) \
         GROUP BY u.sub, u.email, u.state, u.last_sync_at, u.last_error \
         ORDER BY u.sub LIMIT $2",
    )
    .bind(state.map(|s| s.as_str()))
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(UserSummary {
                sub: r.try_get("sub")?,
                email: r.try_get("email")?,
                state: r.try_get("state")?,
                last_sync_at: r.try_get("last_sync_at")?,
                last_error: r.try_get("last_error")?,
                files: r.try_get("files")?,
                bytes: r.try_get("bytes")?,
            })
        })
        .collect()
}

/// (state, count) for every state that has users.
pub async fn counts_by_state(conn: &mut Conn) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM users GROUP BY state ORDER BY state")
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
        .collect()
}

/// Deletes the user and, by cascade, credentials, files, syncs and pushes.
pub async fn delete(conn: &mut Conn, sub: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM users WHERE sub = $1")
        .bind(sub)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The scheduling view of one user, for `ctl user`.
pub async fn sync_state(
    conn: &mut Conn,
    sub: &str,
) -> Result<Option<(Option<String>, i64, i64, Option<i64>, i64)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT page_token, next_sync_at, failures, last_sync_at, resync_requested \
         FROM users WHERE sub = $1",
    )
    .bind(sub)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok((
            r.try_get("page_token")?,
            r.try_get("next_sync_at")?,
            r.try_get("failures")?,
            r.try_get("last_sync_at")?,
            r.try_get("resync_requested")?,
        ))
    })
    .transpose()
}
