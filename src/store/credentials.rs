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
    /// Google's `hash_base64_sha512_sha512` of the refresh token (migration 0007); `None` for a
    /// token stored before it, until the token is next opened.
    pub refresh_token_hash: Option<String>,
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
    refresh_token_hash: Option<String>,
}

pub async fn get(conn: &mut Conn, sub: &str) -> Result<Option<StoredCredential>, sqlx::Error> {
    let row: Option<CredentialRow> = sqlx::query_as(
        "SELECT refresh_token, key_id, scopes, obtained_at, access_token, access_key_id, \
                access_expires_at, refresh_token_hash FROM credentials WHERE sub = $1",
    )
    .bind(sub)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| StoredCredential {
        refresh_token: Sealed::from(&r.refresh),
        scopes: r.scopes,
        obtained_at: r.obtained_at,
        access_token: r.access.get(),
        refresh_token_hash: r.refresh_token_hash,
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
/// already stored: of two racing sign-ins, the token Google issued last wins. The identifiers
/// of the token it replaces are cleared (`tokens::store_token_ids` sets the new ones): a
/// token-revoked event for the old token must not match the new one.
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
             access_expires_at = excluded.access_expires_at, \
             refresh_token_hash = NULL, refresh_token_prefix_hash = NULL \
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

/// How a token-revoked event names a refresh token: by one of the two identifiers stored
/// beside it (see migration 0007).
#[derive(Debug, Clone, Copy)]
pub enum TokenId<'a> {
    /// Google's `hash_base64_sha512_sha512` of the whole token.
    Hash(&'a str),
    /// The same hash of its first 16 characters (`token_identifier_alg = prefix`).
    PrefixHash(&'a str),
}

/// Stores the identifiers of the refresh token sealed as `sealed`, if that is still the stored
/// token (a sign-in may have replaced it since it was opened). `true` when stored.
pub async fn set_token_ids(
    conn: &mut Conn,
    sub: &str,
    sealed: &Sealed,
    hash: &str,
    prefix_hash: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE credentials SET refresh_token_hash = $3, refresh_token_prefix_hash = $4 \
         WHERE sub = $1 AND refresh_token = $2",
    )
    .bind(sub)
    .bind(&sealed.bytes)
    .bind(hash)
    .bind(prefix_hash)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The users whose stored refresh token has identifier `id`.
pub async fn subs_with_token(conn: &mut Conn, id: TokenId<'_>) -> Result<Vec<String>, sqlx::Error> {
    let (column, value) = match id {
        TokenId::Hash(v) => ("refresh_token_hash", v),
        TokenId::PrefixHash(v) => ("refresh_token_prefix_hash", v),
    };
    sqlx::query_scalar(&format!(
        "SELECT sub FROM credentials WHERE {column} = $1 ORDER BY sub"
    ))
    .bind(value)
    .fetch_all(conn)
    .await
}

/// Deletes the user's refresh and access tokens; `true` when there were some.
pub async fn delete(conn: &mut Conn, sub: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM credentials WHERE sub = $1")
        .bind(sub)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets the cached access token, so the next call refreshes; `true` when one was cached.
pub async fn drop_access_token(conn: &mut Conn, sub: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE credentials SET access_token = NULL, access_key_id = NULL, \
                access_expires_at = NULL WHERE sub = $1 AND access_token IS NOT NULL",
    )
    .bind(sub)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
