//! Admin resyncs: a request is a flag on the user's row ([`Resync`]), so whichever instance is
//! free takes it; the instance that was asked is woken at once ([`Scheduler::poke`]), others
//! find it within [`RESYNC_POLL`]. [`Scheduler::resync_and_wait`] asks and then follows the
//! syncs to their end, wherever they ran.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;

use super::{Scheduler, SyncEvent, SyncPhase};
use crate::store::schedule::{self as due, Claim, Resync};
use crate::store::syncs::{self, SyncOutcome};

/// Resync requests claimed per query.
const RESYNC_BATCH: i64 = 100;
/// How often to look for resync requests made on other instances.
const RESYNC_POLL: Duration = Duration::from_secs(5);
/// How often a waiter looks in the database for syncs that ran on other instances.
const WAIT_POLL: Duration = Duration::from_millis(500);
/// How long `resync --wait` follows syncs before giving up.
const WAIT_LIMIT: Duration = Duration::from_secs(3600);

/// Whom a resync is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncTarget {
    User(String),
    /// Every active user.
    All,
}

/// How the waited-for syncs ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResyncReport {
    pub synced: u64,
    pub failed: u64,
    pub failures: Vec<ResyncFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResyncFailure {
    pub sub: String,
    pub outcome: SyncOutcome,
    pub error: Option<String>,
}

impl ResyncReport {
    fn add(&mut self, sub: String, outcome: SyncOutcome, error: Option<String>) {
        if outcome == SyncOutcome::Ok {
            self.synced += 1;
        } else {
            self.failed += 1;
            self.failures.push(ResyncFailure {
                sub,
                outcome,
                error,
            });
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the daemon stopped before the syncs ended")]
    Stopped,
    #[error("gave up waiting after {0:?}")]
    TimedOut(Duration),
}

impl Scheduler {
    /// Asks the resync loop to look for requests now.
    pub fn poke(&self) {
        self.resync_wakeup.notify_one();
    }

    /// Records the request and wakes the resync loop; returns the subs it is for. The caller
    /// checks first that a single user exists and is active.
    pub async fn request_resync(
        &self,
        target: &ResyncTarget,
        kind: Resync,
    ) -> Result<Vec<String>, sqlx::Error> {
        let mut tx = self.store.begin_write().await?;
        let subs = match target {
            ResyncTarget::User(sub) => {
                due::request_resync(tx.conn(), sub, kind).await?;
                vec![sub.clone()]
            }
            ResyncTarget::All => due::request_resync_all(tx.conn(), kind).await?,
        };
        tx.commit().await?;
        self.poke();
        tracing::info!(users = subs.len(), kind = ?kind, "resync requested");
        Ok(subs)
    }

    /// Requests a resync and follows the syncs it causes to their end; `progress` hears each
    /// start and finish that runs on this instance.
    pub async fn resync_and_wait(
        &self,
        target: &ResyncTarget,
        kind: Resync,
        mut progress: impl FnMut(&SyncEvent),
    ) -> Result<ResyncReport, WaitError> {
        // Subscribe before asking, so no finish event can slip by.
        let mut events = self.subscribe();
        // Local syncs announce themselves; a sync another instance ran shows up as a new
        // record in the database, which is checked whenever no event came for a while.
        let mut pending: HashMap<String, i64> = HashMap::new();
        {
            let mut conn = self.store.pool().acquire().await?;
            let subs = match target {
                ResyncTarget::User(sub) => vec![sub.clone()],
                ResyncTarget::All => due::active_subs(&mut conn).await?,
            };
            for sub in subs {
                let (done, _) = due::syncs_done(&mut conn, &sub).await?;
                pending.insert(sub, done);
            }
        }
        self.request_resync(target, kind).await?;
        let mut report = ResyncReport::default();
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        while !pending.is_empty() {
            if tokio::time::Instant::now() > deadline {
                return Err(WaitError::TimedOut(WAIT_LIMIT));
            }
            match tokio::time::timeout(WAIT_POLL, events.recv()).await {
                Ok(Ok(event)) => {
                    if pending.contains_key(&event.sub) {
                        progress(&event);
                        if event.phase == SyncPhase::Finished {
                            pending.remove(&event.sub);
                            let outcome = event.outcome.unwrap_or(SyncOutcome::Failed);
                            report.add(event.sub, outcome, event.error);
                        }
                    }
                    continue;
                }
                Ok(Err(RecvError::Closed)) => return Err(WaitError::Stopped),
                Ok(Err(RecvError::Lagged(_))) | Err(_) => {}
            }
            self.collect_finished_elsewhere(&mut pending, &mut report)
                .await?;
        }
        Ok(report)
    }

    /// Moves the pending users with a sync finished since their baseline into `report`.
    async fn collect_finished_elsewhere(
        &self,
        pending: &mut HashMap<String, i64>,
        report: &mut ResyncReport,
    ) -> Result<(), sqlx::Error> {
        let mut conn = self.store.pool().acquire().await?;
        let mut done = Vec::new();
        for (sub, baseline) in pending.iter() {
            let (count, outcome) = due::syncs_done(&mut conn, sub).await?;
            if count <= *baseline {
                continue;
            }
            let outcome = outcome
                .and_then(|o| o.parse().ok())
                .unwrap_or(SyncOutcome::Failed);
            // Only syncs that did something are recorded, failures among them.
            let error = match outcome {
                SyncOutcome::Ok => None,
                _ => syncs::recent(&mut conn, sub, 1)
                    .await?
                    .into_iter()
                    .next()
                    .and_then(|r| r.error),
            };
            done.push((sub.clone(), outcome, error));
        }
        for (sub, outcome, error) in done {
            pending.remove(&sub);
            report.add(sub, outcome, error);
        }
        Ok(())
    }

    /// Runs pending resync requests (ahead of any queued cycle work) until `stop`.
    pub async fn resync_loop(self: Arc<Self>) -> anyhow::Result<()> {
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                _ = self.resync_wakeup.notified() => {}
                _ = tokio::time::sleep(RESYNC_POLL) => {}
                _ = self.shutdown.stop.cancelled() => break,
            }
            while tasks.try_join_next().is_some() {}
            let requested = match self.claim(Claim::Resync, RESYNC_BATCH).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim resync requests");
                    continue;
                }
            };
            let full_batch = requested.len() as i64 == RESYNC_BATCH;
            for user in requested {
                let Some(run) = self.clone().start_owned(&user.sub) else {
                    continue;
                };
                let me = self.clone();
                tasks.spawn(self.syncs.track_future(async move {
                    let permit = tokio::select! {
                        p = me.permits.clone().acquire_owned() => p.ok(),
                        _ = me.shutdown.stop.cancelled() => None,
                    };
                    match permit {
                        Some(_permit) => {
                            run.sync(user).await;
                        }
                        None => me.release_unstarted(vec![user.sub.clone()]).await,
                    }
                }));
            }
            if full_batch {
                // More requests are waiting: take them as soon as these are done.
                while tasks.join_next().await.is_some() {}
                self.poke();
            }
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}
