//! What each event does, after Google's "Supported event types" table
//! (<https://developers.google.com/identity/protocols/risc#supported_event_types>) and what a
//! server that holds refresh tokens (and no sign-in sessions of its own) can do about it:
//!
//! | Event | Action |
//! | --- | --- |
//! | tokens-revoked | delete the refresh and access tokens; `reauth_required`; stop calls |
//! | token-revoked | the same, if the token named is the refresh token we hold |
//! | sessions-revoked | drop the cached access token (and stop a running sync that holds it) |
//! | account-disabled, `hijacking` | suspend; revoke the grant at Google; delete our tokens |
//! | account-disabled, other | suspend (no call to Google until enabled) |
//! | account-enabled | lift the suspension; deleted tokens stay deleted |
//! | account-credential-change-required | flag the user for the operator |
//! | verification | log the `state` |
//!
//! Every action and the event's record (`finish`) commit in one transaction; an event another
//! instance finished first is rolled back here. Only the hijacking case calls Google (the
//! revocation), between two transactions: the suspension commits first, so nothing calls
//! Google for the user while the revocation is retried.

use std::time::Duration;

use super::Risc;
use crate::google::risc::EventType;
use crate::store::changes::{self, ChangeKind, NewChange};
use crate::store::security_events::{self, EventKind, Outcome, SecurityEvent};
use crate::store::users::UserState;
use crate::store::{self, credentials, users, WriteTx};
use crate::tokens::TokenError;

/// Attempts at revoking a hijacked account's grant at Google before our tokens are deleted
/// anyway (the suspension already stops every call): about 20 minutes of tries.
const MAX_REVOKE_ATTEMPTS: i64 = 8;
/// The first retry of a failed attempt waits this long, doubling up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(5);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);

/// The stored kind of an event type.
pub(super) fn kind(t: EventType) -> EventKind {
    match t {
        EventType::SessionsRevoked => EventKind::SessionsRevoked,
        EventType::TokensRevoked => EventKind::TokensRevoked,
        EventType::TokenRevoked => EventKind::TokenRevoked,
        EventType::AccountDisabled => EventKind::AccountDisabled,
        EventType::AccountEnabled => EventKind::AccountEnabled,
        EventType::AccountCredentialChangeRequired => EventKind::CredentialChangeRequired,
        EventType::Verification => EventKind::Verification,
        EventType::Unsupported => EventKind::Unsupported,
    }
}

/// What acting on an event came to.
struct Done {
    /// The user it was about, when one of ours.
    sub: Option<String>,
    outcome: Outcome,
    detail: Option<String>,
    /// Users whose running syncs must stop now that it is committed.
    stop: Vec<String>,
}

impl Done {
    fn nobody(outcome: Outcome, detail: impl Into<String>) -> Done {
        Done {
            sub: None,
            outcome,
            detail: Some(detail.into()),
            stop: Vec::new(),
        }
    }

    fn user(sub: &str, outcome: Outcome, detail: Option<String>, stop: bool) -> Done {
        Done {
            sub: Some(sub.to_string()),
            outcome,
            detail,
            stop: if stop {
                vec![sub.to_string()]
            } else {
                Vec::new()
            },
        }
    }
}

enum Step {
    Done(Done),
    /// Another instance finished the event first; nothing was changed here.
    FinishedElsewhere,
    /// Try again later (Google could not be reached); why.
    Retry(String),
}

#[derive(Debug, thiserror::Error)]
enum ActError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl Risc {
    /// Acts on `e`. True when it is finished; false when it waits for another attempt.
    pub(super) async fn act(&self, e: &SecurityEvent) -> bool {
        let step = match self.step(e).await {
            Ok(step) => step,
            Err(err) => Step::Retry(err.to_string()),
        };
        match step {
            Step::Done(done) => {
                for sub in &done.stop {
                    self.scheduler.cancel_user(sub);
                }
                crate::metrics::risc_event(e.kind.as_str(), done.outcome.as_str());
                tracing::info!(
                    jti = %e.jti,
                    event = e.kind.as_str(),
                    user = done.sub.as_deref().unwrap_or("-"),
                    outcome = done.outcome.as_str(),
                    detail = done.detail.as_deref().unwrap_or(""),
                    "security event acted on"
                );
                true
            }
            Step::FinishedElsewhere => true,
            Step::Retry(why) => {
                self.postpone(e, &why).await;
                false
            }
        }
    }

    async fn step(&self, e: &SecurityEvent) -> Result<Step, ActError> {
        match e.kind {
            EventKind::Verification => {
                let state = e.state.clone().unwrap_or_default();
                tracing::info!(jti = %e.jti, state = %state, "Cross-Account Protection verification event received");
                self.finish_alone(e, Done::nobody(Outcome::Logged, format!("state: {state}")))
                    .await
            }
            EventKind::Unsupported => {
                let detail = format!("event type {} is not acted on", e.event_uri);
                self.finish_alone(e, Done::nobody(Outcome::Unsupported, detail))
                    .await
            }
            EventKind::TokenRevoked => self.token_revoked(e).await,
            _ => {
                let Some(sub) = self.known_user(e).await? else {
                    let detail = "no user of ours is named by the subject";
                    return self
                        .finish_alone(e, Done::nobody(Outcome::UnknownUser, detail))
                        .await;
                };
                self.on_user(e, &sub).await
            }
        }
    }

    /// The events whose subject names a Google account of ours.
    async fn on_user(&self, e: &SecurityEvent, sub: &str) -> Result<Step, ActError> {
        let now = store::now_ms();
        let mut tx = self.store.begin_write().await?;
        let done = match e.kind {
            EventKind::SessionsRevoked => {
                let dropped = credentials::drop_access_token(tx.conn(), sub).await?;
                let detail = if dropped {
                    "the cached access token was dropped; the next call refreshes"
                } else {
                    "no access token was cached"
                };
                Done::user(sub, Outcome::AccessTokenDropped, Some(detail.into()), true)
            }
            EventKind::TokensRevoked => {
                revoke_locally(&mut tx, sub, "Google revoked the user's tokens", now).await?;
                Done::user(sub, Outcome::TokensDeleted, None, true)
            }
            EventKind::AccountDisabled if e.reason.as_deref() == Some("hijacking") => {
                drop(tx);
                return self.hijacked(e, sub).await;
            }
            EventKind::AccountDisabled => {
                let reason = e.reason.as_deref().unwrap_or("unspecified");
                let applied =
                    users::set_suspension(tx.conn(), sub, Some(reason), e.issued_at, now).await?;
                if applied {
                    Done::user(
                        sub,
                        Outcome::Suspended,
                        Some(format!("reason: {reason}")),
                        true,
                    )
                } else {
                    Done::user(sub, Outcome::Superseded, Some(superseded()), false)
                }
            }
            EventKind::AccountEnabled => self.account_enabled(&mut tx, e, sub, now).await?,
            EventKind::CredentialChangeRequired => {
                users::set_credential_change_required(tx.conn(), sub, Some(e.issued_at)).await?;
                Done::user(sub, Outcome::Flagged, None, false)
            }
            EventKind::TokenRevoked | EventKind::Verification | EventKind::Unsupported => {
                unreachable!("handled by step")
            }
        };
        self.finish(tx, e, done).await
    }

    async fn account_enabled(
        &self,
        tx: &mut WriteTx,
        e: &SecurityEvent,
        sub: &str,
        now: i64,
    ) -> Result<Done, ActError> {
        let was = users::security(tx.conn(), sub)
            .await?
            .and_then(|s| s.suspended_by_google);
        let applied = users::set_suspension(tx.conn(), sub, None, e.issued_at, now).await?;
        let has_tokens = credentials::exists(tx.conn(), sub).await?;
        Ok(match (applied, was) {
            (false, _) => Done::user(sub, Outcome::Superseded, Some(superseded()), false),
            (true, None) => Done::user(sub, Outcome::NotSuspended, None, false),
            (true, Some(reason)) => {
                let detail = if has_tokens {
                    format!("suspended for {reason}; syncing resumes")
                } else {
                    format!("suspended for {reason}; the tokens were deleted: the user must sign in again")
                };
                Done::user(sub, Outcome::SuspensionCleared, Some(detail), false)
            }
        })
    }

    /// account-disabled for hijacking: "re-secure the user's account by ending their currently
    /// open sessions". A hijacker could have minted the grant we hold: suspend (committed first,
    /// so every call stops), revoke the grant at Google, delete our tokens.
    async fn hijacked(&self, e: &SecurityEvent, sub: &str) -> Result<Step, ActError> {
        let now = store::now_ms();
        let mut tx = self.store.begin_write().await?;
        let suspended =
            users::set_suspension(tx.conn(), sub, Some("hijacking"), e.issued_at, now).await?;
        tx.commit().await?;
        self.scheduler.cancel_user(sub);
        let revoke = match self.tokens.revoke_grant(sub).await {
            Ok(true) => "the grant was revoked at Google".to_string(),
            Ok(false) => "there was no usable refresh token to revoke".to_string(),
            Err(TokenError::Google(g))
                if g.is_transient() && e.attempts + 1 < MAX_REVOKE_ATTEMPTS =>
            {
                return Ok(Step::Retry(format!(
                    "cannot revoke the grant at Google yet: {g}"
                )));
            }
            // Our database, not Google: the tokens are still there to revoke next time.
            Err(TokenError::Database(db)) => return Err(db.into()),
            Err(err) => format!("revoking the grant at Google failed ({err}); deleted anyway"),
        };
        let mut tx = self.store.begin_write().await?;
        revoke_locally(&mut tx, sub, "Google disabled the account: hijacking", now).await?;
        let done = if suspended {
            Done::user(sub, Outcome::SuspendedTokensRevoked, Some(revoke), true)
        } else {
            let detail = format!("{revoke}; not suspended: {}", superseded());
            Done::user(sub, Outcome::TokensDeleted, Some(detail), true)
        };
        self.finish(tx, e, done).await
    }

    /// token-revoked: acts only if the token named is the refresh token we hold.
    async fn token_revoked(&self, e: &SecurityEvent) -> Result<Step, ActError> {
        let Some(id) = stored_token_id(e.subject.as_deref()) else {
            let detail = "the subject names no refresh token by an identifier we keep";
            return self
                .finish_alone(e, Done::nobody(Outcome::NoMatchingToken, detail))
                .await;
        };
        let now = store::now_ms();
        let mut tx = self.store.begin_write().await?;
        let subs = credentials::subs_with_token(tx.conn(), id.as_ref()).await?;
        let Some(first) = subs.first().cloned() else {
            drop(tx);
            let detail = "the token is not a refresh token we hold";
            return self
                .finish_alone(e, Done::nobody(Outcome::NoMatchingToken, detail))
                .await;
        };
        for sub in &subs {
            revoke_locally(&mut tx, sub, "Google revoked the user's refresh token", now).await?;
        }
        let detail =
            (subs.len() > 1).then(|| format!("the identifier matched users {}", subs.join(", ")));
        let done = Done {
            sub: Some(first),
            outcome: Outcome::TokensDeleted,
            detail,
            stop: subs,
        };
        self.finish(tx, e, done).await
    }

    /// The event's user, if the subject names one of ours.
    async fn known_user(&self, e: &SecurityEvent) -> Result<Option<String>, ActError> {
        let Some(sub) = &e.sub else {
            return Ok(None);
        };
        let mut conn = self.store.pool().acquire().await?;
        Ok(users::get(&mut conn, sub).await?.map(|u| u.profile.sub))
    }

    /// Records `done` in its own transaction (an event that changes no user).
    async fn finish_alone(&self, e: &SecurityEvent, done: Done) -> Result<Step, ActError> {
        let tx = self.store.begin_write().await?;
        self.finish(tx, e, done).await
    }

    /// Records `done` and commits `tx` with it; rolls back if another instance finished first.
    async fn finish(
        &self,
        mut tx: WriteTx,
        e: &SecurityEvent,
        done: Done,
    ) -> Result<Step, ActError> {
        let first = security_events::finish(
            tx.conn(),
            e.id,
            done.sub.as_deref(),
            done.outcome,
            done.detail.as_deref(),
            store::now_ms(),
        )
        .await?;
        if !first {
            return Ok(Step::FinishedElsewhere);
        }
        if let Some(sub) = done.sub.as_deref().filter(|_| done.outcome.changed_user()) {
            let state = users::get(tx.conn(), sub).await?.map(|u| u.state);
            let detail = serde_json::json!({
                "event": e.kind.as_str(),
                "outcome": done.outcome.as_str(),
                "reason": e.reason,
            });
            let change = NewChange {
                state: state.map(|s| s.as_str()),
                detail: Some(detail),
                ..NewChange::new(ChangeKind::UserSecurityEvent, sub)
            };
            changes::record(tx.conn(), &change, store::now_ms()).await?;
        }
        tx.commit().await?;
        Ok(Step::Done(done))
    }

    async fn postpone(&self, e: &SecurityEvent, why: &str) {
        let attempts = e.attempts.clamp(0, 16) as u32;
        let delay = (FIRST_RETRY_DELAY * 2u32.pow(attempts)).min(MAX_RETRY_DELAY);
        let next = store::now_ms() + delay.as_millis() as i64;
        tracing::warn!(jti = %e.jti, event = e.kind.as_str(), user = e.sub.as_deref().unwrap_or("-"),
            reason = %why, retry_in_s = delay.as_secs(), "cannot act on a security event yet");
        let postponed = async {
            let mut tx = self.store.begin_write().await?;
            security_events::postpone(tx.conn(), e.id, next, why).await?;
            tx.commit().await
        }
        .await;
        if let Err(err) = postponed {
            tracing::warn!(jti = %e.jti, error = %err, "cannot record the failed attempt; retrying shortly");
        }
    }
}

/// Deletes the user's tokens and marks the user `reauth_required` (a forgotten user, on its way
/// out, stays forgotten).
async fn revoke_locally(
    tx: &mut WriteTx,
    sub: &str,
    why: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    credentials::delete(tx.conn(), sub).await?;
    let state = users::get(tx.conn(), sub).await?.map(|u| u.state);
    if matches!(state, Some(s) if s != UserState::Forgotten) {
        let error =
            format!("{why} (Cross-Account Protection); the user must sign in again in the app");
        let reauth = UserState::ReauthRequired;
        users::set_state(tx.conn(), sub, reauth, Some(&error), now).await?;
        if state != Some(reauth) {
            let change = NewChange::user(ChangeKind::UserReauthRequired, sub, reauth.as_str());
            changes::record(tx.conn(), &change, now).await?;
        }
    }
    Ok(())
}

fn superseded() -> String {
    "a newer account-disabled or account-enabled event already changed the user".into()
}

/// The stored identifier a token-revoked event's subject was reduced to (see
/// `stored_subject`): which column, which value.
enum StoredTokenId {
    Hash(String),
    PrefixHash(String),
}

impl StoredTokenId {
    fn as_ref(&self) -> credentials::TokenId<'_> {
        match self {
            StoredTokenId::Hash(h) => credentials::TokenId::Hash(h),
            StoredTokenId::PrefixHash(h) => credentials::TokenId::PrefixHash(h),
        }
    }
}

fn stored_token_id(subject: Option<&str>) -> Option<StoredTokenId> {
    let json: serde_json::Value = serde_json::from_str(subject?).ok()?;
    let text = |key: &str| json.get(key).and_then(|v| v.as_str()).map(String::from);
    text("refresh_token_hash")
        .map(StoredTokenId::Hash)
        .or_else(|| text("refresh_token_prefix_hash").map(StoredTokenId::PrefixHash))
}
