//! Access tokens for sync: taken from the database cache while valid, refreshed only when
//! missing or within [`REFRESH_MARGIN`] of expiry, single-flight per user, and sealed back into
//! the database so a restart does not force a refresh.
//!
//! `invalid_grant` on refresh means the grant is gone (revoked, expired, password change, too
//! many tokens): the user moves to `reauth_required`, once, and nothing calls Google for them
//! until a new sign-in. Transient failures are the caller's to retry.
//!
//! Cross-Account Protection: no token is handed out or refreshed for a user Google suspended
//! ([`TokenError::Suspended`]); tokens deleted on a revocation event are simply gone
//! ([`TokenError::Missing`]). Whenever a refresh token is stored or opened, the identifiers a
//! token-revoked event names it by are stored beside it ([`store_token_ids`]).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};

use crate::crypto::{CryptoError, Keyring, Purpose, Sealed};
use crate::google::oauth::{OAuthClient, TokenResponse};
use crate::google::risc::RefreshTokenIds;
use crate::google::GoogleError;
use crate::store::changes::{self, ChangeKind, NewChange};
use crate::store::credentials::StoredCredential;
use crate::store::users::UserState;
use crate::store::{self, credentials, users, Store};

/// Refresh this long before Google's expiry, so a token never expires mid-sync.
pub const REFRESH_MARGIN_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the user's grant was revoked or expired ({0}); waiting for a new sign-in")]
    Revoked(String),
    #[error("the stored credentials cannot be decrypted: {0}")]
    Broken(#[from] CryptoError),
    #[error("the user has no stored credentials")]
    Missing,
    /// Google disabled the account (Cross-Account Protection): no call until it is enabled.
    #[error("Google disabled the user's account ({0}); no call to Google until it is enabled")]
    Suspended(String),
    #[error(transparent)]
    Google(#[from] GoogleError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A usable access token and when it expires (unix ms).
#[derive(Clone)]
pub struct AccessToken {
    pub token: SecretString,
    pub expires_at: i64,
}

pub struct Tokens {
    oauth: OAuthClient,
    store: Store,
    keyring: Keyring,
    /// One lock per user with a refresh in flight: concurrent needs wait on it and then find
    /// the fresh token in the database. Entries live only while someone holds them.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Tokens {
    pub fn new(oauth: OAuthClient, store: Store, keyring: Keyring) -> Self {
        Self {
            oauth,
            store,
            keyring,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Revokes the user's grant at Google: the refresh token, and with it every token of the
    /// grant. `Ok(false)` when there is nothing to revoke (no credential, or one that no
    /// longer decrypts, which is logged); a failure to reach Google is an error.
    /// <https://developers.google.com/identity/protocols/oauth2/web-server#tokenrevoke>
    pub async fn revoke_grant(&self, sub: &str) -> Result<bool, TokenError> {
        let mut conn = self.store.pool().acquire().await?;
        let Some(cred) = credentials::get(&mut conn, sub).await? else {
            return Ok(false);
        };
        drop(conn);
        let refresh = match self.keyring.open(
            sub,
            Purpose::RefreshToken,
            &cred.refresh_token.key_id,
            &cred.refresh_token.bytes,
        ) {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(user = %sub, error = %e,
                    "the stored refresh token does not decrypt, so it cannot be revoked");
                return Ok(false);
            }
        };
        self.oauth.revoke(&refresh).await?;
        Ok(true)
    }

    /// Opens a cached, sealed access token if it is still good for at least the margin.
    pub fn usable_cached(
        &self,
        sub: &str,
        cached: Option<&(Sealed, i64)>,
        now: i64,
    ) -> Option<AccessToken> {
        let (sealed, expires_at) = cached?;
        if *expires_at - REFRESH_MARGIN_MS <= now {
            return None;
        }
        let token = self
            .keyring
            .open(sub, Purpose::AccessToken, &sealed.key_id, &sealed.bytes)
            .ok()?;
        Some(AccessToken {
            token,
            expires_at: *expires_at,
        })
    }

    /// Returns a valid access token, refreshing when needed. `rejected` is a token Drive just
    /// answered 401 to: it is not reused even if its expiry says it is fine.
    pub async fn fresh(
        &self,
        sub: &str,
        rejected: Option<&AccessToken>,
    ) -> Result<(AccessToken, bool), TokenError> {
        let lock = self
            .inflight
            .lock()
            .entry(sub.to_string())
            .or_default()
            .clone();
        let result = {
            let _guard = lock.lock().await;
            self.fresh_locked(sub, rejected).await
        };
        // Drop the map entry when no one else is waiting on it.
        let mut map = self.inflight.lock();
        if Arc::strong_count(&lock) == 2 {
            map.remove(sub);
        }
        result
    }

    async fn fresh_locked(
        &self,
        sub: &str,
        rejected: Option<&AccessToken>,
    ) -> Result<(AccessToken, bool), TokenError> {
        let mut conn = self.store.pool().acquire().await?;
        if let Some(reason) = users::security(&mut conn, sub)
            .await?
            .and_then(|s| s.suspended_by_google)
        {
            return Err(TokenError::Suspended(reason));
        }
        let cred = credentials::get(&mut conn, sub)
            .await?
            .ok_or(TokenError::Missing)?;
        drop(conn);
        let now = store::now_ms();
        if let Some(t) = self.usable_cached(sub, cred.access_token.as_ref(), now) {
            let same_as_rejected =
                rejected.is_some_and(|r| r.token.expose_secret() == t.token.expose_secret());
            if !same_as_rejected {
                // Someone refreshed while we waited.
                return Ok((t, false));
            }
        }
        let refresh = self.keyring.open(
            sub,
            Purpose::RefreshToken,
            &cred.refresh_token.key_id,
            &cred.refresh_token.bytes,
        )?;
        self.backfill_token_ids(sub, &cred, &refresh).await;
        let resp = match self.oauth.refresh(&refresh).await {
            Ok(r) => {
                crate::metrics::token_refresh("ok");
                r
            }
            Err(GoogleError::InvalidGrant { description }) => {
                crate::metrics::token_refresh("revoked");
                if !self.park(sub, &cred.refresh_token, &description).await? {
                    // A sign-in stored a new refresh token while this one was being refused
                    // (the user revoked and signed in again): carry on with that one.
                    return Box::pin(self.fresh_locked(sub, rejected)).await;
                }
                return Err(TokenError::Revoked(description));
            }
            Err(e) => {
                crate::metrics::token_refresh("error");
                return Err(e.into());
            }
        };
        self.store_refreshed(sub, resp, &cred.scopes).await
    }

    /// Seals and stores what a refresh returned; Google may rotate the refresh token, and the
    /// new one replaces the old in the same commit.
    async fn store_refreshed(
        &self,
        sub: &str,
        resp: TokenResponse,
        scopes_before: &str,
    ) -> Result<(AccessToken, bool), TokenError> {
        let obtained = store::now_ms();
        let expires_at = resp.expires_at_ms(obtained);
        let access = self
            .keyring
            .seal(sub, Purpose::AccessToken, &resp.access_token);
        let mut tx = self.store.begin_write().await?;
        credentials::put_access_token(tx.conn(), sub, &access, expires_at, resp.scope.as_deref())
            .await?;
        if let Some(new_refresh) = &resp.refresh_token {
            let sealed = self.keyring.seal(sub, Purpose::RefreshToken, new_refresh);
            credentials::put_refresh_token(
                tx.conn(),
                sub,
                &sealed,
                resp.scope.as_deref().unwrap_or(scopes_before),
                obtained,
                Some((&access, expires_at)),
            )
            .await?;
            store_token_ids(tx.conn(), sub, &sealed, new_refresh).await?;
        }
        tx.commit().await?;
        Ok((
            AccessToken {
                token: resp.access_token,
                expires_at,
            },
            true,
        ))
    }

    /// Stores the token-revoked identifiers of an opened refresh token when they are missing
    /// (a token stored before migration 0007) or stale. Best effort: a failure is logged, and
    /// the next opening tries again.
    async fn backfill_token_ids(&self, sub: &str, cred: &StoredCredential, refresh: &SecretString) {
        let ids = RefreshTokenIds::of(refresh.expose_secret());
        if cred.refresh_token_hash.as_deref() == Some(ids.hash.as_str()) {
            return;
        }
        let stored = async {
            let mut tx = self.store.begin_write().await?;
            let stored = credentials::set_token_ids(
                tx.conn(),
                sub,
                &cred.refresh_token,
                &ids.hash,
                &ids.prefix_hash,
            )
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(stored)
        }
        .await;
        if let Err(e) = stored {
            tracing::warn!(user = %sub, error = %e, "cannot store the refresh token's identifiers; retried at the next refresh");
        }
    }

    /// The grant is gone: mark the user, say so once, and stop calling Google for them. Only if
    /// `refused` is still the stored refresh token: a sign-in may have replaced it since we
    /// read it, and parking then would strand a user whose new grant is good (false).
    async fn park(&self, sub: &str, refused: &Sealed, why: &str) -> Result<bool, sqlx::Error> {
        let mut tx = self.store.begin_write().await?;
        let stored = credentials::get(tx.conn(), sub).await?;
        if stored.is_some_and(|c| c.refresh_token.bytes != refused.bytes) {
            return Ok(false);
        }
        let was = users::get(tx.conn(), sub).await?.map(|u| u.state);
        if matches!(was, Some(UserState::Paused | UserState::Forgotten)) {
            // An admin paused (or forgot) the user while this sync ran: that decision stands;
            // resuming will meet the refused token again and park the user then.
            return Ok(true);
        }
        let reason = format!("Google refused the refresh token: {why}");
        let now = store::now_ms();
        users::set_state(
            tx.conn(),
            sub,
            UserState::ReauthRequired,
            Some(&reason),
            now,
        )
        .await?;
        if was != Some(UserState::ReauthRequired) {
            let state = UserState::ReauthRequired.as_str();
            let change = NewChange::user(ChangeKind::UserReauthRequired, sub, state);
            changes::record(tx.conn(), &change, now).await?;
        }
        tx.commit().await?;
        if was != Some(UserState::ReauthRequired) {
            tracing::warn!(
                user = %sub,
                reason = %why,
                "user's Google grant is revoked or expired; syncing stops until the user signs in \
                 again in the app (nothing to do on the server)"
            );
        }
        Ok(true)
    }
}

/// Stores, beside the refresh token just sealed as `sealed`, the identifiers Google's
/// token-revoked events name it by (hashes only: the token itself is never stored in clear).
/// For sign-in and rotation, inside the transaction that stores the token.
pub async fn store_token_ids(
    conn: &mut store::Conn,
    sub: &str,
    sealed: &Sealed,
    refresh: &SecretString,
) -> Result<(), sqlx::Error> {
    let ids = RefreshTokenIds::of(refresh.expose_secret());
    credentials::set_token_ids(conn, sub, sealed, &ids.hash, &ids.prefix_hash).await?;
    Ok(())
}

/// What [`reseal_all`] did.
#[derive(Debug, Clone, Copy)]
pub struct Resealed {
    pub resealed: usize,
    pub total: usize,
}

/// Key rotation: re-encrypts every stored token not sealed under the keyring's current key
/// (the old key must still be in the ring, as a previous key), in one transaction. A cached
/// access token that no longer opens is dropped: it can be refreshed.
pub async fn reseal_all(store: &Store, keyring: &Keyring) -> anyhow::Result<Resealed> {
    use anyhow::Context;
    let current = keyring.current_id();
    let mut tx = store.begin_write().await?;
    let all = credentials::all_sealed(tx.conn()).await?;
    let mut resealed = 0;
    for (sub, cred) in &all {
        let up_to_date = cred.refresh_token.key_id == current
            && cred
                .access_token
                .as_ref()
                .is_none_or(|(a, _)| a.key_id == current);
        if up_to_date {
            continue;
        }
        let refresh = keyring
            .open(
                sub,
                Purpose::RefreshToken,
                &cred.refresh_token.key_id,
                &cred.refresh_token.bytes,
            )
            .with_context(|| format!("user {sub}: cannot decrypt the refresh token"))?;
        let access = cred.access_token.as_ref().and_then(|(a, _)| {
            keyring
                .open(sub, Purpose::AccessToken, &a.key_id, &a.bytes)
                .ok()
                .map(|t| keyring.seal(sub, Purpose::AccessToken, &t))
        });
        let refresh = keyring.seal(sub, Purpose::RefreshToken, &refresh);
        credentials::reseal(tx.conn(), sub, &refresh, access.as_ref()).await?;
        resealed += 1;
    }
    tx.commit().await?;
    Ok(Resealed {
        resealed,
        total: all.len(),
    })
}

/// Adds the values sealed since the last call to the key's persisted count, and warns when
/// the count nears what AES-GCM with random nonces allows. Returns the key's total.
pub async fn record_key_usage(store: &Store, keyring: &Keyring) -> Result<u64, sqlx::Error> {
    let sealed = keyring.take_encryptions();
    let persisted = async {
        let mut tx = store.begin_write().await?;
        let total = credentials::add_encryptions(tx.conn(), keyring.current_id(), sealed).await?;
        tx.commit().await?;
        Ok::<u64, sqlx::Error>(total)
    };
    let total = match persisted.await {
        Ok(total) => total,
        Err(e) => {
            // Counted next time instead of lost.
            keyring.untake_encryptions(sealed);
            return Err(e);
        }
    };
    if total >= crate::crypto::WARN_ENCRYPTIONS {
        tracing::warn!(
            key_id = keyring.current_id(),
            encryptions = total,
            limit = crate::crypto::NONCE_SAFE_ENCRYPTIONS,
            "the encryption key has sealed many values; rotate it (README: Key rotation) \
             before AES-GCM's random-nonce limit"
        );
    }
    Ok(total)
}
