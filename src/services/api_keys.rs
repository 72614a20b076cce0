//! The data API's bearer keys: create (the key is shown once), list, revoke, and
//! [`Services::authenticate`] for each request.
//!
//! A key is `asd_` and 32 random bytes, base64url: 256 bits, so the SHA-256 we keep cannot be
//! reversed by guessing, and needs no slow, salted hash. A request's key is hashed and looked
//! up by its hash; the stored hash is compared again in constant time.

use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::reports::{ApiKeyCreated, ApiKeyList};
use super::{ServiceError, Services};
use crate::store;
use crate::store::api_keys::{self, ApiKey};

/// Every key starts with this, so that a leaked one is easy to recognise (and to scan for).
pub const KEY_PREFIX: &str = "asd_";
/// `last_used_at` is written at most this often per key.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Who a request is: a valid, unrevoked key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub name: String,
    pub can_write: bool,
}

/// Why a presented key was refused. The name is known when the key was right but revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRefused {
    Unknown,
    Revoked { name: String },
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn check_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::BadRequest(
            "a key name is 1 to 64 letters, digits, '-', '_' or '.'".into(),
        ))
    }
}

impl Services {
    /// Creates a key named `name` (write keys may also write through the API) and returns it:
    /// the only time the key is ever shown.
    pub async fn create_api_key(
        &self,
        name: &str,
        can_write: bool,
    ) -> Result<ApiKeyCreated, ServiceError> {
        check_name(name)?;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let key = format!(
            "{KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let mut tx = self.store.begin_write().await?;
        let created =
            api_keys::create(tx.conn(), name, &hash(&key), can_write, store::now_ms()).await?;
        if !created {
            return Err(ServiceError::BadRequest(format!(
                "an API key named {name:?} exists (names are not reused, even once revoked)"
            )));
        }
        tx.commit().await?;
        tracing::info!(key = %name, can_write, "API key created by admin");
        Ok(ApiKeyCreated {
            name: name.to_string(),
            can_write,
            key,
        })
    }

    pub async fn api_keys(&self) -> Result<ApiKeyList, ServiceError> {
        let mut conn = self.store.pool().acquire().await?;
        Ok(ApiKeyList {
            keys: api_keys::list(&mut conn).await?,
        })
    }

    /// Revokes the key `name`: requests with it are refused from now on.
    pub async fn revoke_api_key(&self, name: &str) -> Result<ApiKey, ServiceError> {
        let mut tx = self.store.begin_write().await?;
        let key = api_keys::revoke(tx.conn(), name, store::now_ms())
            .await?
            .ok_or_else(|| ServiceError::BadRequest(format!("no API key named {name:?}")))?;
        tx.commit().await?;
        tracing::info!(key = %name, "API key revoked by admin");
        Ok(key)
    }

    /// Who `presented` (the bearer key of a request) is, or why it is refused.
    pub async fn authenticate(
        &self,
        presented: &str,
    ) -> Result<Result<Authenticated, AuthRefused>, ServiceError> {
        let wanted = hash(presented);
        let mut conn = self.store.pool().acquire().await?;
        let found = api_keys::by_hash(&mut conn, &wanted).await?;
        drop(conn);
        let Some(found) = found else {
            return Ok(Err(AuthRefused::Unknown));
        };
        if !bool::from(found.key_hash.as_bytes().ct_eq(wanted.as_bytes())) {
            return Ok(Err(AuthRefused::Unknown));
        }
        if found.key.revoked_at.is_some() {
            return Ok(Err(AuthRefused::Revoked {
                name: found.key.name,
            }));
        }
        self.touch_key(&found.key.name);
        Ok(Ok(Authenticated {
            name: found.key.name,
            can_write: found.key.can_write,
        }))
    }

    /// Records the key's use, at most once a minute, off the request's path.
    fn touch_key(&self, name: &str) {
        let now = Instant::now();
        {
            let mut uses = self.data.key_uses.lock();
            match uses.get(name) {
                Some(at) if now.duration_since(*at) < TOUCH_EVERY => return,
                _ => {
                    uses.insert(name.to_string(), now);
                }
            }
        }
        let (store, name) = (self.store.clone(), name.to_string());
        tokio::spawn(async move {
            let now = store::now_ms();
            let stale = now - TOUCH_EVERY.as_millis() as i64;
            let result = async {
                let mut tx = store.begin_write().await?;
                api_keys::touch(tx.conn(), &name, now, stale).await?;
                tx.commit().await
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(key = %name, error = %e, "cannot record an API key's use");
            }
        });
    }
}
