//! `credentials`: each user's sealed refresh token and cached access token. Values arrive and
//! leave sealed ([`crate::crypto::Sealed`]); this module never sees a plaintext token.

use super::Conn;
use crate::crypto::Sealed;

#[derive(Debug, Clone)]
pub struct StoredCredential {
    pub refresh_token: Sealed,
    pub scopes: String,
    pub obtained_at: i64,
    pub access_token: Option<(Sealed, i64)>,
}

/// The sealed refresh token columns of `credentials`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedRefresh {
    pub refresh_token: Vec<u8>,
    pub key_id: String,
}

impl From<&SealedRefresh> for Sealed {
    fn from(r: &SealedRefresh) -> Sealed {
        Sealed {
            key_id: r.key_id.clone(),
            bytes: r.refresh_token.clone(),
        }
    }
}

/// The cached access token columns of `credentials` (all three set, or none).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedAccess {
    pub access_token: Option<Vec<u8>>,
    pub access_key_id: Option<String>,
    pub access_expires_at: Option<i64>,
}

impl SealedAccess {
    /// The sealed token and its expiry (unix ms), when one is cached.
    pub fn get(&self) -> Option<(Sealed, i64)> {
        match (
            &self.access_token,
            &self.access_key_id,
            self.access_expires_at,
        ) {
            (Some(bytes), Some(key_id), Some(expires)) => Some((
                Sealed {
                    key_id: key_id.clone(),
                    bytes: bytes.clone(),
                },
                expires,
            )),
            _ => None,
        }
    }
}

#[derive(sqlx::FromRow)]
struct CredentialRow {
    #[sqlx(flatten)]
    refresh: SealedRefresh,
    scopes: String,
    obtained_at: i64,
    #[sqlx(flatten)]
    access: SealedAccess,
}

pub async fn get(conn: &mut Conn, sub: &str) -> Result<Option<StoredCredential>, sqlx::Error> {
    let row: Option<CredentialRow> = sqlx::query_as(
        "SELECT refresh_token, key_id, scopes, obtained_at, access_token, access_key_id, \
                access_expires_at FROM credentials WHERE sub = $1",
    )
    .bind(sub)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| StoredCredential {
        refresh_token: Sealed::from(&r.refresh),
        scopes: r.scopes,
        obtained_at: r.obtained_at,
        access_token: r.access.get(),
    }))
}

pub async fn exists(conn: &mut Conn, sub: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials WHERE sub = $1")
        .bind(sub)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// Stores a new refresh token (and the access token that came with it), unless a newer one is
/// already stored: of two racing sign-ins, the token Google issued last wins.
pub async fn put_refresh_token(
    conn: &mut Conn,
    sub: &str,
    refresh: &Sealed,
    scopes: &str,
    obtained_at: i64,
    access: Option<(&Sealed, i64)>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO credentials (sub, refresh_token, key_id, scopes, obtained_at, access_token, \
                                  access_key_id, access_expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (sub) DO UPDATE SET refresh_token = excluded.refresh_token, \
             key_id = excluded.key_id, scopes = excluded.scopes, \
             obtained_at = excluded.obtained_at, access_token = excluded.access_token, \
             access_key_id = excluded.access_key_id, \
             access_expires_at = excluded.access_expires_at \
         WHERE credentials.obtained_at <= excluded.obtained_at",
    )
    .bind(sub)
    .bind(&refresh.bytes)
    .bind(&refresh.key_id)
    .bind(scopes)
    .bind(obtained_at)
    .bind(access.map(|(s, _)| s.bytes.clone()))
    .bind(access.map(|(s, _)| s.key_id.clone()))
    .bind(access.map(|(_, exp)| exp))
    .execute(conn)
    .await?;
    Ok(())
}

/// Caches an access token; `scopes` is what Google says it covers.
pub async fn put_access_token(
    conn: &mut Conn,
    sub: &str,
    access: &Sealed,
    expires_at: i64,
    scopes: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE credentials SET access_token = $2, access_key_id = $3, access_expires_at = $4, \
                scopes = COALESCE($5, scopes) WHERE sub = $1",
    )
    .bind(sub)
    .bind(&access.bytes)
    .bind(&access.key_id)
    .bind(expires_at)
    .bind(scopes)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every sealed value with its owner, for `rotate-key`.
pub async fn all_sealed(conn: &mut Conn) -> Result<Vec<(String, StoredCredential)>, sqlx::Error> {
    let subs: Vec<String> = sqlx::query_scalar("SELECT sub FROM credentials ORDER BY sub")
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(subs.len());
    for sub in subs {
        if let Some(c) = get(conn, &sub).await? {
            out.push((sub, c));
        }
    }
    Ok(out)
}

/// Replaces the sealed values of one user (used by `rotate-key`).
pub async fn reseal(
    conn: &mut Conn,
    sub: &str,
    refresh: &Sealed,
    access: Option<&Sealed>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE credentials SET refresh_token = $2, key_id = $3, \
                access_token = $4, access_key_id = $5, \
                access_expires_at = CASE WHEN $4 IS NULL THEN NULL ELSE access_expires_at END \
         WHERE sub = $1",
    )
    .bind(sub)
    .bind(&refresh.bytes)
    .bind(&refresh.key_id)
    .bind(access.map(|s| s.bytes.clone()))
    .bind(access.map(|s| s.key_id.clone()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds `n` to the values sealed under `key_id`; returns the new total.
pub async fn add_encryptions(conn: &mut Conn, key_id: &str, n: u64) -> Result<u64, sqlx::Error> {
    let total: i64 = sqlx::query_scalar(
        "INSERT INTO key_usage (key_id, encryptions) VALUES ($1, $2) \
         ON CONFLICT (key_id) DO UPDATE SET encryptions = key_usage.encryptions + excluded.encryptions \
         RETURNING encryptions",
    )
    .bind(key_id)
    .bind(n as i64)
    .fetch_one(conn)
    .await?;
    Ok(total.max(0) as u64)
}
