//! Operations on one user: read, pause and resume, queue a push, forget.

use std::time::Duration;

use super::reports::{
    CredentialView, FileList, Forgotten, StateChanged, SyncView, UserDetail, UserList,
};
use super::{ServiceError, Services};
use crate::store::changes::{self, ChangeKind, NewChange};
use crate::store::users::{self, User, UserState};
use crate::store::writes;
use crate::store::{self, credentials, files, schedule, syncs, user_pages};

/// The most users one `users` answer lists (and what a request without a limit gets).
const MAX_LISTED_USERS: i64 = 100_000;
/// How long `forget` waits for a sync of the user that is running to end.
const FORGET_WAITS_FOR_SYNC: Duration = Duration::from_secs(60);

/// What an admin wants of a user's syncing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    Pause,
    Resume,
}

impl Services {
    pub(super) async fn user_row(&self, sub: &str) -> Result<User, ServiceError> {
        let mut conn = self.store.pool().acquire().await?;
        users::get(&mut conn, sub)
            .await?
            .ok_or_else(|| ServiceError::UnknownUser(sub.to_string()))
    }

    /// Users (optionally in one state) after `after` by sub, at most `limit`; how many remain
    /// is counted only when some do.
    pub async fn users(
        &self,
        state: Option<UserState>,
        after: Option<&str>,
        limit: Option<i64>,
    ) -> Result<UserList, ServiceError> {
        let limit = limit.unwrap_or(MAX_LISTED_USERS).clamp(1, MAX_LISTED_USERS);
        let mut conn = self.store.pool().acquire().await?;
        let mut users = user_pages::page(&mut conn, state, after, limit + 1).await?;
        let mut remaining = 0;
        if users.len() as i64 > limit {
            users.truncate(limit as usize);
            if let Some(last) = users.last() {
                remaining = user_pages::count_after(&mut conn, state, &last.sub).await?;
            }
        }
        Ok(UserList { users, remaining })
    }

    pub async fn user(&self, sub: &str) -> Result<UserDetail, ServiceError> {
        let user = self.user_row(sub).await?;
        let mut conn = self.store.pool().acquire().await?;
        let state = schedule::sync_state(&mut conn, sub)
            .await?
            .unwrap_or_default();
        let totals = files::totals(&mut conn, sub).await?;
        let credentials = credentials::get(&mut conn, sub)
            .await?
            .map(|c| CredentialView {
                scopes: c.scopes,
                obtained_at: c.obtained_at,
                key_id: c.refresh_token.key_id,
                access_token_expires_at: c.access_token.map(|(_, exp)| exp),
            });
        Ok(UserDetail {
            user,
            sync: SyncView {
                has_page_token: state.page_token.is_some(),
                next_sync_at: state.next_sync_at,
                failures: state.failures,
                last_sync_at: state.last_sync_at,
                resync_requested: state.resync != schedule::Resync::None,
                syncing_now: self.scheduler.is_running(sub),
                idle_syncs: state.idle_syncs,
            },
            credentials,
            files: totals.files,
            bytes: totals.bytes,
            recent_syncs: syncs::recent(&mut conn, sub, 10).await?,
            writes: writes::recent(&mut conn, sub, 10).await?,
            security: self.security_view(&mut conn, sub).await?,
        })
    }

    pub async fn files(&self, sub: &str) -> Result<FileList, ServiceError> {
        self.user_row(sub).await?;
        let mut conn = self.store.pool().acquire().await?;
        Ok(FileList {
            files: files::list(&mut conn, sub).await?,
        })
    }

    /// Pauses or resumes an active or paused user; other states need a sign-in, not an admin.
    pub async fn set_paused(&self, sub: &str, want: Pause) -> Result<StateChanged, ServiceError> {
        let mut tx = self.store.begin_write().await?;
        let u = users::get(tx.conn(), sub)
            .await?
            .ok_or_else(|| ServiceError::UnknownUser(sub.to_string()))?;
        let target = match (want, u.state) {
            (Pause::Pause, UserState::Active | UserState::Paused) => UserState::Paused,
            (Pause::Resume, UserState::Paused | UserState::Active) => UserState::Active,
            (_, UserState::ReauthRequired) => {
                return Err(ServiceError::InvalidState(format!(
                    "user {sub} is reauth_required: it needs a new sign-in in the app, not an admin command"
                )))
            }
            (_, state) => {
                return Err(ServiceError::InvalidState(format!(
                    "user {sub} is {state}: nothing to do"
                )))
            }
        };
        let now = store::now_ms();
        users::set_state(tx.conn(), sub, target, u.last_error.as_deref(), now).await?;
        if target != u.state {
            let kind = match want {
                Pause::Pause => ChangeKind::UserPaused,
                Pause::Resume => ChangeKind::UserResumed,
            };
            let change = NewChange::user(kind, sub, target.as_str());
            changes::record(tx.conn(), &change, now).await?;
        }
        tx.commit().await?;
        tracing::info!(user = %sub, state = target.as_str(), "user state changed by admin");
        Ok(StateChanged {
            user: sub.to_string(),
            state: target,
        })
    }

    /// Revokes the grant at Google, then deletes the mirror and every row of the user. If
    /// Google cannot be reached, nothing is deleted and the user is as before.
    pub async fn forget(&self, sub: &str) -> Result<Forgotten, ServiceError> {
        let before = self.user_row(sub).await?;
        // Stop new syncs first, and let a running one end.
        self.set_state(sub, UserState::Forgotten, before.last_error.as_deref())
            .await?;
        self.scheduler
            .wait_until_idle(sub, FORGET_WAITS_FOR_SYNC)
            .await;
        let revoked = match self.tokens.revoke_grant(sub).await {
            Ok(revoked) => revoked,
            Err(e) => {
                self.set_state(sub, before.state, before.last_error.as_deref())
                    .await?;
                return Err(ServiceError::Unavailable(format!(
                    "cannot revoke the grant at Google, nothing deleted: {e}"
                )));
            }
        };
        self.mirror
            .remove_user(sub)
            .await
            .map_err(|e| ServiceError::Internal(format!("cannot delete the mirror: {e}")))?;
        let mut tx = self.store.begin_write().await?;
        users::delete(tx.conn(), sub).await?;
        let change = NewChange::user(
            ChangeKind::UserForgotten,
            sub,
            UserState::Forgotten.as_str(),
        );
        changes::record(tx.conn(), &change, store::now_ms()).await?;
        tx.commit().await?;
        tracing::info!(user = %sub, revoked, "user forgotten by admin: grant revoked, mirror and rows deleted");
        Ok(Forgotten {
            user: sub.to_string(),
            revoked,
            deleted: true,
        })
    }

    async fn set_state(
        &self,
        sub: &str,
        state: UserState,
        last_error: Option<&str>,
    ) -> Result<(), ServiceError> {
        let mut tx = self.store.begin_write().await?;
        users::set_state(tx.conn(), sub, state, last_error, store::now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }
}
