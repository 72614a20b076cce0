//! Cross-Account Protection as the front doors see it: a user's flags and security history,
//! the counts of `ctl status` and the metrics, and the operator's acknowledgement of a
//! credential-change flag. The events themselves are received and acted on in [`crate::risc`].

use super::reports::{Acknowledged, SecurityCounts, SecurityView};
use super::{ServiceError, Services};
use crate::store::{self, security_events, users, Conn};

/// `ctl user` shows this many of a user's security events.
const EVENTS_SHOWN: i64 = 20;

impl Services {
    pub async fn security_counts(&self) -> Result<SecurityCounts, ServiceError> {
        let mut conn = self.store.pool().acquire().await?;
        self.security_counts_on(&mut conn).await
    }

    /// On the caller's connection: a caller that holds one must not wait for a second (many
    /// concurrent `status` requests would exhaust the pool).
    pub(super) async fn security_counts_on(
        &self,
        conn: &mut Conn,
    ) -> Result<SecurityCounts, ServiceError> {
        let (suspended_by_google, credential_change_required) = users::flag_counts(conn).await?;
        let day_ago = store::now_ms() - 86_400_000;
        Ok(SecurityCounts {
            suspended_by_google,
            credential_change_required,
            events_last_day: security_events::count_since(conn, day_ago).await?,
            pending_events: security_events::count_pending(conn).await?,
        })
    }

    pub(super) async fn security_view(
        &self,
        conn: &mut Conn,
        sub: &str,
    ) -> Result<SecurityView, ServiceError> {
        let flags = users::security(conn, sub).await?.unwrap_or_default();
        Ok(SecurityView {
            suspended_by_google: flags.suspended_by_google,
            credential_change_required_at: flags.credential_change_required_at,
            events: security_events::for_user(conn, sub, EVENTS_SHOWN).await?,
        })
    }

    /// Clears the user's credential-change flag once the operator has looked into it.
    pub async fn acknowledge(&self, sub: &str) -> Result<Acknowledged, ServiceError> {
        let mut tx = self.store.begin_write().await?;
        let flags = users::security(tx.conn(), sub)
            .await?
            .ok_or_else(|| ServiceError::UnknownUser(sub.to_string()))?;
        let cleared = flags.credential_change_required_at.is_some();
        users::set_credential_change_required(tx.conn(), sub, None).await?;
        tx.commit().await?;
        tracing::info!(user = %sub, cleared, "credential-change flag acknowledged by admin");
        Ok(Acknowledged {
            user: sub.to_string(),
            cleared,
        })
    }

    /// Refuses work that would call Google for a user Google suspended.
    pub(super) async fn check_not_suspended(&self, sub: &str) -> Result<(), ServiceError> {
        let mut conn = self.store.pool().acquire().await?;
        match users::security(&mut conn, sub)
            .await?
            .and_then(|s| s.suspended_by_google)
        {
            Some(reason) => Err(ServiceError::InvalidState(format!(
                "Google disabled {sub}'s account ({reason}): nothing calls Google for the user \
                 until Google enables it again"
            ))),
            None => Ok(()),
        }
    }
}
