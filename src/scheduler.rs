//! The scheduler: cron-driven cycles over every due user, at most `concurrency` syncs at once,
//! admin resyncs ahead of scheduled work.
//!
//! A cycle streams due users from the database a page at a time (memory does not grow with
//! the number of users) and hands each to a worker task once a concurrency permit is free.
//! A user already syncing is skipped. Resync requests live in the database (so any instance
//! can take them); [`Scheduler::poke`] makes this instance look at once.
//!
//! Shutdown has two stages: `stop` ends the taking of new users; running syncs get the grace
//! period to finish, then `abort` makes them stop at their next checkpoint (a committed file
//! or page), so nothing committed is lost and the next run resumes from there.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{broadcast, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::store::schedule::{self, DueUser};
use crate::store::{self, Store};
use crate::sync::{SyncEngine, SyncResult};

/// Users read from the database per query during a cycle.
const PAGE: i64 = 500;
/// How often to look for resync requests made on other instances.
const RESYNC_POLL: Duration = Duration::from_secs(5);

/// Totals of one cycle.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CycleOutcome {
    pub started_at: i64,
    pub finished_at: i64,
    pub users: u64,
    pub ok: u64,
    pub failed: u64,
    pub reauth_required: u64,
    pub cancelled: u64,
    pub skipped_running: u64,
    pub api_calls: u64,
    pub token_refreshes: u64,
    pub files_changed: u64,
    pub bytes_down: u64,
}

impl CycleOutcome {
    fn add(&mut self, r: &SyncResult) {
        self.users += 1;
        match r.record.outcome {
            "ok" => self.ok += 1,
            "reauth_required" => self.reauth_required += 1,
            "cancelled" => self.cancelled += 1,
            _ => self.failed += 1,
        }
        self.api_calls += r.counts.api_calls as u64;
        self.token_refreshes += r.counts.refreshes as u64;
        self.files_changed += (r.counts.added + r.counts.updated + r.counts.removed) as u64;
        self.bytes_down += r.counts.bytes_down as u64;
    }
}

/// Sent when a user's sync starts and ends (for `ctl resync --wait` and tests).
#[derive(Debug, Clone, Serialize)]
pub struct SyncEvent {
    pub sub: String,
    /// "started" or "finished".
    pub phase: &'static str,
    pub outcome: Option<&'static str>,
    pub added: i64,
    pub updated: i64,
    pub removed: i64,
    pub uploaded: i64,
    pub conflicts: i64,
    pub error: Option<String>,
}

pub struct Scheduler {
    engine: Arc<SyncEngine>,
    store: Store,
    concurrency: AtomicUsize,
    permits: Arc<Semaphore>,
    /// Subs syncing right now on this instance.
    running: Mutex<HashSet<String>>,
    /// Wakes the resync loop (a local `ctl resync`).
    resync_wakeup: Notify,
    /// Sync start/finish events; receivers that lag just miss events.
    events: broadcast::Sender<SyncEvent>,
    last_cycle: Mutex<Option<CycleOutcome>>,
    cycle_running: std::sync::atomic::AtomicBool,
    queued: AtomicUsize,
}

impl Scheduler {
    pub fn new(engine: Arc<SyncEngine>, store: Store, concurrency: usize) -> Arc<Self> {
        let concurrency = concurrency.max(1);
        Arc::new(Self {
            engine,
            store,
            concurrency: AtomicUsize::new(concurrency),
            permits: Arc::new(Semaphore::new(concurrency)),
            running: Mutex::new(HashSet::new()),
            resync_wakeup: Notify::new(),
            events: broadcast::channel(1024).0,
            last_cycle: Mutex::new(None),
            cycle_running: false.into(),
            queued: AtomicUsize::new(0),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SyncEvent> {
        self.events.subscribe()
    }

    pub fn running(&self) -> usize {
        self.running.lock().len()
    }

    pub fn is_running(&self, sub: &str) -> bool {
        self.running.lock().contains(sub)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn last_cycle(&self) -> Option<CycleOutcome> {
        self.last_cycle.lock().clone()
    }

    pub fn engine(&self) -> &Arc<SyncEngine> {
        &self.engine
    }

    /// Changes how many users sync at once (config reload).
    pub fn set_concurrency(&self, n: usize) {
        let n = n.max(1);
        let old = self.concurrency.swap(n, Ordering::SeqCst);
        if n > old {
            self.permits.add_permits(n - old);
        } else if n < old {
            // Take the surplus permits out of circulation as they come free.
            let permits = self.permits.clone();
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned((old - n) as u32).await {
                    p.forget();
                }
            });
        }
    }

    /// Asks the resync loop to look for requests now.
    pub fn poke(&self) {
        self.resync_wakeup.notify_one();
    }

    /// One full cycle over every due user. Returns when all of them are done (or on `stop`).
    pub async fn run_once(
        self: &Arc<Self>,
        stop: &CancellationToken,
        abort: &CancellationToken,
    ) -> CycleOutcome {
        if self.cycle_running.swap(true, Ordering::SeqCst) {
            tracing::info!("previous cycle still running; skipping this one");
            return CycleOutcome::default();
        }
        let clock = Instant::now();
        let mut outcome = CycleOutcome {
            started_at: store::now_ms(),
            ..Default::default()
        };
        let mut tasks = JoinSet::new();
        let mut after = String::new();
        'pages: loop {
            let now = store::now_ms();
            let page = match self.store.pool().acquire().await {
                Ok(mut conn) => schedule::due_page(&mut conn, &after, now, PAGE).await,
                Err(e) => Err(e),
            };
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read due users; cycle cut short");
                    break;
                }
            };
            let Some(last) = page.last() else { break };
            after = last.sub.clone();
            self.queued.store(page.len(), Ordering::Relaxed);
            for user in page {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                while let Some(done) = tasks.try_join_next() {
                    if let Ok(r) = done {
                        outcome.add(&r);
                    }
                }
                let permit = tokio::select! {
                    p = self.permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break 'pages,
                    },
                    _ = stop.cancelled() => break 'pages,
                };
                if let Some(me) = self.clone().start_owned(&user.sub) {
                    let abort = abort.clone();
                    tasks.spawn(async move {
                        let r = me.sync(user, &abort).await;
                        drop(permit);
                        r
                    });
                } else {
                    outcome.skipped_running += 1;
                }
            }
        }
        self.queued.store(0, Ordering::Relaxed);
        while let Some(done) = tasks.join_next().await {
            if let Ok(r) = done {
                outcome.add(&r);
            }
        }
        outcome.finished_at = store::now_ms();
        tracing::info!(
            users = outcome.users,
            ok = outcome.ok,
            failed = outcome.failed,
            reauth_required = outcome.reauth_required,
            cancelled = outcome.cancelled,
            api_calls = outcome.api_calls,
            token_refreshes = outcome.token_refreshes,
            files_changed = outcome.files_changed,
            duration_ms = clock.elapsed().as_millis() as u64,
            "sync cycle finished"
        );
        *self.last_cycle.lock() = Some(outcome.clone());
        self.cycle_running.store(false, Ordering::SeqCst);
        outcome
    }

    /// Runs pending resync requests (ahead of any queued cycle work) until `stop`.
    pub async fn resync_loop(self: Arc<Self>, stop: CancellationToken, abort: CancellationToken) {
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                _ = self.resync_wakeup.notified() => {}
                _ = tokio::time::sleep(RESYNC_POLL) => {}
                _ = stop.cancelled() => break,
            }
            while tasks.try_join_next().is_some() {}
            let requested = match self.store.pool().acquire().await {
                Ok(mut conn) => schedule::resync_requested(&mut conn, 100).await,
                Err(e) => Err(e),
            };
            let requested = match requested {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read resync requests");
                    continue;
                }
            };
            for user in requested {
                let Some(run) = self.clone().start_owned(&user.sub) else {
                    continue;
                };
                let permits = self.permits.clone();
                let abort = abort.clone();
                tasks.spawn(async move {
                    let Ok(_permit) = permits.acquire_owned().await else {
                        return;
                    };
                    run.sync(user, &abort).await;
                });
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Marks `sub` running; `None` if it already is.
    fn start_owned(self: Arc<Self>, sub: &str) -> Option<OwnedRunningSync> {
        self.running
            .lock()
            .insert(sub.to_string())
            .then(|| OwnedRunningSync {
                scheduler: self.clone(),
                sub: sub.to_string(),
            })
    }

    async fn sync_one(&self, user: DueUser, abort: &CancellationToken) -> SyncResult {
        let sub = user.sub.clone();
        let _ = self.events.send(SyncEvent {
            sub: sub.clone(),
            phase: "started",
            outcome: None,
            added: 0,
            updated: 0,
            removed: 0,
            uploaded: 0,
            conflicts: 0,
            error: None,
        });
        let r = self.engine.sync_user(user, abort).await;
        let _ = self.events.send(SyncEvent {
            sub,
            phase: "finished",
            outcome: Some(r.record.outcome),
            added: r.counts.added,
            updated: r.counts.updated,
            removed: r.counts.removed,
            uploaded: r.counts.uploaded,
            conflicts: r.counts.conflicts,
            error: r.record.error.clone(),
        });
        r
    }
}

/// A sync in progress; dropping it (even by panic) frees the user for the next cycle.
struct OwnedRunningSync {
    scheduler: Arc<Scheduler>,
    sub: String,
}

impl OwnedRunningSync {
    async fn sync(self, user: DueUser, abort: &CancellationToken) -> SyncResult {
        self.scheduler.sync_one(user, abort).await
    }
}

impl Drop for OwnedRunningSync {
    fn drop(&mut self) {
        self.scheduler.running.lock().remove(&self.sub);
    }
}
