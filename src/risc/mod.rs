//! Cross-Account Protection (RISC): Google's security events for the users whose refresh
//! tokens we hold, received, persisted, then acted on.
//! <https://developers.google.com/identity/protocols/risc>
//!
//! - [`Risc::receive`] (called by the intake's `POST /risc`) verifies a security event token
//!   ([`crate::google::risc::SetVerifier`]) and stores it in `security_events` before the
//!   intake answers 202: a `jti` already stored is a replay (or Google delivering again) and
//!   changes nothing. Then it wakes the processor.
//! - [`Risc::run`], a supervised task, works through the events not yet acted on, oldest first
//!   ([`actions`]): each action and its record in the user's history commit in one transaction,
//!   so an event is acted on exactly once however the process dies; a SIGKILL right after the
//!   202 leaves it pending, and the next start acts on it.
//! - Calls stop at once: the user's running sync on this instance is cancelled
//!   ([`Scheduler::cancel_user`]); the claim skips suspended users and `tokens` refuses them;
//!   and every [`WATCH_EVERY`] each instance cancels its own running syncs of users that must
//!   not be called (suspended, or whose tokens are gone), whoever processed the event.

mod actions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::ResolvedConfig;
use crate::google::risc::{
    SetError, SetPolicy, SetVerifier, Subject, TokenIdentifierAlg, TokenLookup, VerifiedSet,
};
use crate::scheduler::Scheduler;
use crate::store::security_events::{self, NewEvent};
use crate::store::{self, users, Store};
use crate::tokens::Tokens;

/// How often the processor looks for events (received by another instance, or due again after
/// a failed attempt) and for running syncs that must stop.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);
/// Events taken per query.
const BATCH: i64 = 50;
/// How often acted-on events older than `[risc] history_retention` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What became of a SET at `POST /risc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// Stored; it will be acted on.
    Accepted { jti: String },
    /// Its `jti` was stored already: acknowledged, ignored.
    Duplicate { jti: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("the body is not a security event token: {0}")]
    Body(&'static str),
    #[error(transparent)]
    Set(#[from] SetError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl ReceiveError {
    /// The RFC 8935 §2.4 error code answered with 400, or "unavailable" (503: not the SET's
    /// fault; Google delivers again).
    pub fn code(&self) -> &'static str {
        match self {
            ReceiveError::Body(_) => "invalid_request",
            ReceiveError::Set(e) => e.code(),
            ReceiveError::Database(_) => "unavailable",
        }
    }

    pub fn is_unavailable(&self) -> bool {
        self.code() == "unavailable"
    }
}

pub struct Risc {
    verifier: SetVerifier,
    store: Store,
    tokens: Arc<Tokens>,
    scheduler: Arc<Scheduler>,
    /// Sent by [`Risc::receive`] after an event is stored; received by [`Risc::run`].
    wakeup: Notify,
    enabled: bool,
    history_retention: Duration,
    /// Test builds only (`APPDATA_SYNCD_TEST_RISC_HOLD=1`): events are received and stored but
    /// not acted on, so a test can kill the process between the 202 and the action.
    hold: bool,
}

impl Risc {
    pub fn new(
        config: &ResolvedConfig,
        http: reqwest::Client,
        store: Store,
        tokens: Arc<Tokens>,
        scheduler: Arc<Scheduler>,
    ) -> Arc<Risc> {
        let r = &config.raw.risc;
        let policy = SetPolicy {
            audiences: audiences(config),
            max_age: r.max_event_age,
        };
        Arc::new(Risc {
            verifier: SetVerifier::new(http, r.configuration_uri.clone(), policy),
            store,
            tokens,
            scheduler,
            wakeup: Notify::new(),
            enabled: r.enabled,
            history_retention: r.history_retention,
            hold: hold_for_test(),
        })
    }

    /// Whether `POST /risc` is served (`[risc] enabled`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A reload's client ids: SETs must be for one of them.
    pub fn set_audiences(&self, config: &ResolvedConfig) {
        self.verifier.set_audiences(audiences(config));
    }

    /// Verifies and stores one SET (the body of `POST /risc`). `Ok` means 202.
    pub async fn receive(&self, body: &[u8]) -> Result<Receipt, ReceiveError> {
        let token = std::str::from_utf8(body)
            .map_err(|_| ReceiveError::Body("not UTF-8"))?
            .trim();
        let set = self.verifier.verify(token).await?;
        let stored = self.store_set(&set).await?;
        let receipt = if stored {
            self.wakeup.notify_one();
            Receipt::Accepted {
                jti: set.jti.clone(),
            }
        } else {
            Receipt::Duplicate {
                jti: set.jti.clone(),
            }
        };
        tracing::info!(
            jti = %set.jti,
            event = set.event.event_type.name(),
            user = set.event.subject.as_ref().and_then(Subject::account).unwrap_or("-"),
            duplicate = matches!(receipt, Receipt::Duplicate { .. }),
            "security event received"
        );
        Ok(receipt)
    }

    /// `false` when the `jti` was stored already.
    async fn store_set(&self, set: &VerifiedSet) -> Result<bool, sqlx::Error> {
        let e = &set.event;
        let subject = e.subject.as_ref().map(stored_subject);
        let event = NewEvent {
            jti: &set.jti,
            kind: actions::kind(e.event_type),
            event_uri: &e.uri,
            sub: e.subject.as_ref().and_then(|s| account_of(s, &set.issuer)),
            subject: subject.as_deref(),
            reason: e.reason.as_deref(),
            state: e.state.as_deref(),
            issued_at: set.iat.saturating_mul(1000),
            received_at: store::now_ms(),
        };
        let mut tx = self.store.begin_write().await?;
        let stored = security_events::insert(tx.conn(), &event).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// The processor: acts on pending events, stops syncs that must stop, prunes old history;
    /// until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> anyhow::Result<()> {
        let mut pruned_at: Option<Instant> = None;
        loop {
            if !self.hold {
                self.process_due().await;
            }
            self.stop_calls_of_stopped_users().await;
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                self.prune().await;
                pruned_at = Some(Instant::now());
            }
            tokio::select! {
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = stop.cancelled() => return Ok(()),
            }
        }
    }

    /// Acts on every event that is due, oldest first; returns how many were finished. (Tests
    /// step the processor with this, as they step sync cycles.)
    pub async fn process_due(&self) -> usize {
        let mut finished = 0;
        loop {
            let due = async {
                let mut conn = self.store.pool().acquire().await?;
                security_events::due(&mut conn, store::now_ms(), BATCH).await
            }
            .await;
            let events = match due {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read pending security events; retrying shortly");
                    return finished;
                }
            };
            let full = events.len() as i64 == BATCH;
            for event in events {
                if self.act(&event).await {
                    finished += 1;
                }
            }
            if !full {
                return finished;
            }
        }
    }

    /// Cancels this instance's running syncs of users that must not be called any more: the
    /// event may have been acted on by another instance.
    async fn stop_calls_of_stopped_users(&self) {
        let running = self.scheduler.running_subs();
        if running.is_empty() {
            return;
        }
        let stopped = async {
            let mut conn = self.store.pool().acquire().await?;
            users::stopped_among(&mut conn, &running).await
        }
        .await;
        match stopped {
            Ok(subs) => {
                for sub in subs {
                    self.scheduler.cancel_user(&sub);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check running syncs against security events")
            }
        }
    }

    async fn prune(&self) {
        let before = store::now_ms() - self.history_retention.as_millis() as i64;
        let pruned = async {
            let mut tx = self.store.begin_write().await?;
            let n = security_events::prune(tx.conn(), before).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(n)
        }
        .await;
        match pruned {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                events = n,
                "pruned security events older than [risc] history_retention"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot prune old security events"),
        }
    }
}

/// The Google account a subject names, if it is one of Google's: an `iss-sub` subject of another
/// issuer names an account in someone else's namespace (trailing slashes aside: Google's page
/// writes `https://accounts.google.com/`, its configuration document `https://accounts.google.com`).
fn account_of<'s>(subject: &'s Subject, issuer: &str) -> Option<&'s str> {
    match subject {
        Subject::IssSub { iss, .. }
            if iss.trim_end_matches('/') != issuer.trim_end_matches('/') =>
        {
            None
        }
        other => other.account(),
    }
}

/// Our OAuth client ids: the web client's (the `aud` of SETs about sign-ins through the server
/// auth code) and the Android app's.
fn audiences(config: &ResolvedConfig) -> Vec<String> {
    let mut out = vec![config.client.client_id.clone()];
    out.extend(config.raw.google.android_client_ids.iter().cloned());
    out
}

/// The subject as stored: as sent, except that a token subject keeps only the hash its token
/// is looked up by (a `prefix` identifier is part of a token, and is never stored in clear).
fn stored_subject(subject: &Subject) -> String {
    let json = match subject {
        Subject::IssSub { iss, sub } => {
            serde_json::json!({"subject_type": "iss-sub", "iss": iss, "sub": sub})
        }
        Subject::IdTokenClaims { sub, email } => {
            serde_json::json!({"subject_type": "id_token_claims", "sub": sub, "email": email})
        }
        Subject::Token {
            token_type,
            alg,
            token,
        } => {
            let alg_name = match alg {
                TokenIdentifierAlg::Prefix => "prefix",
                TokenIdentifierAlg::HashBase64Sha512Sha512 => "hash_base64_sha512_sha512",
                TokenIdentifierAlg::Other(other) => other.as_str(),
            };
            let mut json = serde_json::json!({
                "subject_type": "oauth_token",
                "token_type": token_type,
                "token_identifier_alg": alg_name,
            });
            match TokenLookup::from_subject(token_type, alg, token) {
                Some(TokenLookup::Hash(h)) => json["refresh_token_hash"] = h.into(),
                Some(TokenLookup::PrefixHash(h)) => json["refresh_token_prefix_hash"] = h.into(),
                None => {}
            }
            json
        }
        Subject::Other { format } => serde_json::json!({ "subject_type": format }),
    };
    json.to_string()
}

#[cfg(debug_assertions)]
fn hold_for_test() -> bool {
    std::env::var_os("APPDATA_SYNCD_TEST_RISC_HOLD").is_some()
}

#[cfg(not(debug_assertions))]
fn hold_for_test() -> bool {
    false
}
