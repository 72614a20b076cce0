//! The one handle the front doors share (admin socket, `ctl`/`dev`, the data API): every
//! operation on the running daemon has its home here, as a small method over the parts below
//! (scheduler, tokens, store, mirror), and answers a typed [`reports`] value or a
//! [`ServiceError`] that each front door turns into its own error shape.

mod api_keys;
pub mod data;
pub mod feed;
mod reload;
pub mod reports;
mod security;
mod users;
mod webhooks;
pub mod writes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::ResolvedConfig;
use crate::google::id_token::IdTokenVerifier;
use crate::google::RateLimit;
use crate::risc::Risc;
use crate::scheduler::resync::{ResyncReport, ResyncTarget, WaitError};
use crate::scheduler::{Scheduler, SyncEvent};
use crate::store::schedule::{self, Resync};
use crate::store::users::{self as user_rows, UserState};
use crate::store::{self, Store};
use crate::sync::mirror::Mirror;
use crate::telemetry::LogHandle;
use crate::tokens::Tokens;
pub use api_keys::{AuthRefused, Authenticated, KEY_PREFIX};
use reports::{RateLimitStatus, ResyncQueued, Status};
pub use users::Pause;
pub use webhooks::{message_id, payload};

/// Why an operation was refused or failed. Messages are for the caller: no token, no secret.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no user with sub {0:?}")]
    UnknownUser(String),
    /// The operation does not apply to the user's state (e.g. resuming a reauth_required user).
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidFilter(String),
    /// Google failed, or a waited-for sync failed: retry later.
    #[error("{0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

impl From<WaitError> for ServiceError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Database(e) => ServiceError::Database(e),
            other => ServiceError::Unavailable(other.to_string()),
        }
    }
}

/// The parts a [`Services`] is made of (built by `lifecycle`).
pub struct Parts {
    pub config: ResolvedConfig,
    pub store: Store,
    pub scheduler: Arc<Scheduler>,
    pub tokens: Arc<Tokens>,
    pub verifier: Arc<IdTokenVerifier>,
    pub limit: Arc<RateLimit>,
    pub mirror: Mirror,
    pub log: Option<LogHandle>,
    /// Cross-Account Protection (its audiences follow reloads of the client ids).
    pub risc: Arc<Risc>,
}

pub struct Services {
    store: Store,
    scheduler: Arc<Scheduler>,
    tokens: Arc<Tokens>,
    verifier: Arc<IdTokenVerifier>,
    limit: Arc<RateLimit>,
    mirror: Mirror,
    log: Option<LogHandle>,
    risc: Arc<Risc>,
    started: Instant,
    /// The configuration in force (replaced by reloads).
    config: Mutex<ResolvedConfig>,
    /// The data API's state: the change feed, API key uses.
    data: DataState,
}

/// What the data API's operations keep between calls.
struct DataState {
    feed: feed::ChangeFeed,
    /// When each API key's use was last written (`last_used_at` is coarse).
    key_uses: Mutex<HashMap<String, Instant>>,
}

impl Services {
    pub fn new(parts: Parts) -> Arc<Services> {
        Arc::new(Services {
            data: DataState {
                feed: feed::ChangeFeed::new(parts.store.clone()),
                key_uses: Mutex::new(HashMap::new()),
            },
            store: parts.store,
            scheduler: parts.scheduler,
            tokens: parts.tokens,
            verifier: parts.verifier,
            limit: parts.limit,
            mirror: parts.mirror,
            log: parts.log,
            risc: parts.risc,
            started: Instant::now(),
            config: Mutex::new(parts.config),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The limiter of calls to Google (the instances share its budget).
    pub fn rate_limit(&self) -> &Arc<RateLimit> {
        &self.limit
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// The change feed: its sequencer and pruner tasks, and the head readers wait on.
    pub fn feed(&self) -> &feed::ChangeFeed {
        &self.data.feed
    }

    /// The configuration in force.
    pub fn config(&self) -> ResolvedConfig {
        self.config.lock().clone()
    }

    /// How long running syncs get to finish on shutdown (reloadable).
    pub fn shutdown_grace(&self) -> Duration {
        self.config.lock().raw.sync.shutdown_grace
    }

    /// A one-line summary for `systemctl status`.
    pub fn summary(&self) -> String {
        let running = self.scheduler.running();
        match self.scheduler.last_cycle() {
            Some(c) => format!(
                "syncing: {running} running; last cycle {} users, {} ok, {} failed",
                c.users, c.ok, c.failed
            ),
            None => format!("ready: {running} syncs running; no cycle yet"),
        }
    }

    pub async fn users_by_state(&self) -> Result<Vec<(UserState, i64)>, ServiceError> {
        let mut conn = self.store.pool().acquire().await?;
        Ok(user_rows::counts_by_state(&mut conn).await?)
    }

    /// The rate of calls to Google in force (the rate limiter's, lowered after quota refusals).
    pub fn current_request_rate(&self) -> u32 {
        self.limit.current_rate()
    }

    /// Free bytes on the mirror's file system (None for an object store, or when statvfs
    /// fails), and the floor under which downloads stop.
    pub fn mirror_free_space(&self) -> (Option<u64>, u64) {
        (
            self.mirror.free_space(),
            self.config().raw.sync.min_free_disk_bytes,
        )
    }

    pub async fn users_over_quota(&self) -> Result<i64, ServiceError> {
        let mut conn = self.store.pool().acquire().await?;
        Ok(user_rows::count_over_quota(&mut conn).await?)
    }

    pub async fn status(&self) -> Result<Status, ServiceError> {
        let users_by_state = self.users_by_state().await?.into_iter().collect();
        let mut conn = self.store.pool().acquire().await?;
        // An instance is live if it renewed within a lease (it renews every third of one).
        let since = store::now_ms() - self.scheduler.lease().as_millis() as i64 - 5_000;
        let instances = schedule::live_instances(&mut conn, since).await?;
        let day_ago = store::now_ms() - 86_400_000;
        let reauth_required_last_day =
            user_rows::count_changed_since(&mut conn, UserState::ReauthRequired, day_ago).await?;
        let (waits, waited) = self.limit.waits();
        let security = self.security_counts_on(&mut conn).await?;
        Ok(Status {
            security,
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
            database: self.config.lock().store_url.to_string(),
            instance: self.scheduler.instance().to_string(),
            instances,
            users_by_state,
            reauth_required_last_day,
            syncs_running: self.scheduler.running(),
            syncs_queued: self.scheduler.queued(),
            last_cycle: self.scheduler.last_cycle(),
            cycle: self.scheduler.cycle_progress(),
            next_cycle_at: self.scheduler.next_cycle(),
            rate_limit: RateLimitStatus {
                per_second: self.limit.rate(),
                budget_per_second: self.limit.budget(),
                instances: self.limit.instances(),
                current_per_second: self.limit.current_rate(),
                waits,
                waited_ms: waited.as_millis() as u64,
            },
        })
    }

    /// Asks for syncs ahead of schedule. A single user must exist and be active.
    pub async fn resync(
        &self,
        target: &ResyncTarget,
        kind: Resync,
    ) -> Result<ResyncQueued, ServiceError> {
        self.check_resyncable(target).await?;
        let subs = self.scheduler.request_resync(target, kind).await?;
        Ok(ResyncQueued {
            queued: subs.len(),
            full: kind == Resync::Full,
        })
    }

    /// Asks for syncs and follows them to their end; an error if any of them failed.
    pub async fn resync_and_wait(
        &self,
        target: &ResyncTarget,
        kind: Resync,
        progress: impl FnMut(&SyncEvent),
    ) -> Result<ResyncReport, ServiceError> {
        self.check_resyncable(target).await?;
        let report = self
            .scheduler
            .resync_and_wait(target, kind, progress)
            .await?;
        if report.failed > 0 {
            let failures = serde_json::to_string(&report.failures).unwrap_or_default();
            return Err(ServiceError::Unavailable(format!(
                "{} of {} syncs failed: {failures}",
                report.failed,
                report.failed + report.synced
            )));
        }
        Ok(report)
    }

    async fn check_resyncable(&self, target: &ResyncTarget) -> Result<(), ServiceError> {
        let ResyncTarget::User(sub) = target else {
            return Ok(());
        };
        let user = self.user_row(sub).await?;
        if user.state != UserState::Active {
            return Err(ServiceError::InvalidState(format!(
                "user {sub} is {}: only active users sync",
                user.state
            )));
        }
        self.check_not_suspended(sub).await
    }

    /// Changes the rate limit of calls to Google, as a reload of
    /// `[sync] max_requests_per_second` does.
    pub fn set_request_rate(&self, per_second: u32) {
        self.limit.set_rate(per_second);
    }

    pub fn set_log_filter(&self, filter: &str) -> Result<(), ServiceError> {
        let Some(log) = &self.log else {
            return Err(ServiceError::Internal(
                "this process's logging cannot be changed at run time".into(),
            ));
        };
        log.set_filter(filter)
            .map_err(|e| ServiceError::InvalidFilter(format!("{e:#}")))?;
        tracing::info!(filter = %filter, "log filter changed by admin");
        Ok(())
    }
}
