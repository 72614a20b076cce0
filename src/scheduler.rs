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

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{broadcast, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::store::schedule::{self, Claim, DueUser};
use crate::store::{self, Store};
use crate::sync::{SyncEngine, SyncResult};

/// Users claimed per query during a cycle is the concurrency, but at least this many.
const MIN_CLAIM: usize = 16;
/// Resync requests claimed per query.
const RESYNC_BATCH: i64 = 100;
/// How often to look for resync requests made on other instances.
const RESYNC_POLL: Duration = Duration::from_secs(5);

/// Parses `schedule` the way tokio-cron-scheduler does (seconds first, day-of-month and
/// day-of-week both honoured).
pub fn parse_schedule(schedule: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::Cron::new(schedule)
        .with_seconds_required()
        .with_dom_and_dow()
        .parse()
}

/// Names the cycle a cron tick fired for (unix ms): the schedule's latest occurrence at or
/// before `now_ms`. Every instance fires on the same wall-clock tick but late by a varying
/// amount (the cron ticker polls every 500 ms; machines are loaded), so the firing time itself
/// cannot name the cycle they share. A tick fired more than a minute late falls back to the
/// current second.
pub fn cycle_of(schedule: &croner::Cron, now_ms: i64) -> i64 {
    let fallback = now_ms.div_euclid(1000) * 1000;
    let Some(now) = chrono::DateTime::from_timestamp_millis(now_ms) else {
        return fallback;
    };
    schedule
        .clone()
        .iter_after(now - chrono::Duration::seconds(60))
        .take_while(|tick| *tick <= now)
        .last()
        .map_or(fallback, |tick| tick.timestamp_millis())
}

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
    /// How long a claim holds a user before another instance may take it over.
    lease: Duration,
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
    pub fn new(
        engine: Arc<SyncEngine>,
        store: Store,
        concurrency: usize,
        lease: Duration,
    ) -> Arc<Self> {
        let concurrency = concurrency.max(1);
        Arc::new(Self {
            engine,
            store,
            lease,
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

    /// One full cycle over every due user, as cycle "now" (tests and `dev` step cycles with
    /// this). Returns when all of them are done (or on `stop`).
    pub async fn run_once(
        self: &Arc<Self>,
        stop: &CancellationToken,
        abort: &CancellationToken,
    ) -> CycleOutcome {
        self.run_cycle(store::now_ms(), stop, abort).await
    }

    /// Claims users due in `cycle` a batch at a time (other instances claim theirs meanwhile)
    /// and syncs each, at most `concurrency` at once.
    pub async fn run_cycle(
        self: &Arc<Self>,
        cycle: i64,
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
        let batch = self.concurrency.load(Ordering::Relaxed).max(MIN_CLAIM) as i64;
        'claims: loop {
            let mut claimed: VecDeque<DueUser> = match self.claim(Claim::Cycle(cycle), batch).await
            {
                Ok(c) if c.is_empty() => break,
                Ok(c) => c.into(),
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim due users; cycle cut short");
                    break;
                }
            };
            while let Some(user) = claimed.pop_front() {
                self.queued.store(claimed.len(), Ordering::Relaxed);
                while let Some(done) = tasks.try_join_next() {
                    if let Ok(r) = done {
                        outcome.add(&r);
                    }
                }
                let permit = tokio::select! {
                    p = self.permits.clone().acquire_owned() => p.ok(),
                    _ = stop.cancelled() => None,
                };
                let Some(permit) = permit else {
                    claimed.push_front(user);
                    self.release_unstarted(claimed.into_iter().map(|u| u.sub).collect())
                        .await;
                    break 'claims;
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

    async fn claim(&self, what: Claim, limit: i64) -> Result<Vec<DueUser>, sqlx::Error> {
        let now = store::now_ms();
        let until = now + self.lease.as_millis() as i64;
        let mut tx = self.store.begin_write().await?;
        let users = schedule::claim(
            tx.conn(),
            self.store.backend(),
            what,
            &self.engine.instance,
            now,
            until,
            limit,
        )
        .await?;
        tx.commit().await?;
        Ok(users)
    }

    async fn release_unstarted(&self, subs: Vec<String>) {
        if subs.is_empty() {
            return;
        }
        let released = async {
            let mut tx = self.store.begin_write().await?;
            schedule::release_unstarted(tx.conn(), &self.engine.instance, &subs).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, users = subs.len(), "cannot give back unstarted claims; they wait for their lease to expire");
        }
    }

    /// Extends the leases this instance holds and records it as alive; run every lease/3.
    pub async fn heartbeat(&self, started_at: i64) -> Result<(), sqlx::Error> {
        let now = store::now_ms();
        let mut tx = self.store.begin_write().await?;
        schedule::renew_leases(
            tx.conn(),
            self.store.backend(),
            &self.engine.instance,
            now,
            now + self.lease.as_millis() as i64,
        )
        .await?;
        schedule::heartbeat(
            tx.conn(),
            &self.engine.instance,
            env!("CARGO_PKG_VERSION"),
            started_at,
            now,
        )
        .await?;
        tx.commit().await
    }

    /// At start-up: an earlier process on this host that died without cleaning up (SIGKILL,
    /// power loss) still holds leases; its pid is gone, so take them back now rather than
    /// after they expire. Instance ids are `HOST-PID` by default.
    pub async fn reclaim_dead_local_instances(&self) -> Result<(), sqlx::Error> {
        let me = &self.engine.instance;
        // Only the default ids (hostname-pid) say where an instance runs; with ids set in the
        // config, "worker-0" would read as a dead pid 0. Those wait for their leases to expire.
        let Some(host) = me.strip_suffix(&format!("-{}", std::process::id())) else {
            return Ok(());
        };
        let mut tx = self.store.begin_write().await?;
        for id in schedule::all_instances(tx.conn()).await? {
            let Some((other_host, pid)) = id.rsplit_once('-') else {
                continue;
            };
            let dead = other_host == host
                && id != *me
                && pid
                    .parse::<u32>()
                    .is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
            if dead {
                let n = schedule::release_all(tx.conn(), &id).await?;
                schedule::remove_instance(tx.conn(), &id).await?;
                tracing::info!(instance = %id, leases = n, "took back the leases of a dead instance on this host");
            }
        }
        tx.commit().await
    }

    pub fn lease(&self) -> Duration {
        self.lease
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
                let (abort, stop) = (abort.clone(), stop.clone());
                tasks.spawn(async move {
                    let permit = tokio::select! {
                        p = me.permits.clone().acquire_owned() => p.ok(),
                        _ = stop.cancelled() => None,
                    };
                    match permit {
                        Some(_permit) => {
                            run.sync(user, &abort).await;
                        }
                        None => me.release_unstarted(vec![user.sub.clone()]).await,
                    }
                });
            }
            if full_batch {
                // More requests are waiting: take them as soon as these are done.
                while tasks.join_next().await.is_some() {}
                self.poke();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_tick_names_the_cycle_it_was_scheduled_for() {
        let every_30s = parse_schedule("*/30 * * * * *").unwrap();
        let tick = 1_790_000_010_000; // :30 of some minute (1_790_000_010 s is 30 mod 60)
        assert_eq!(tick / 1000 % 30, 0);
        for late_ms in [0, 1, 499, 500, 999, 2_500, 29_999] {
            assert_eq!(
                cycle_of(&every_30s, tick + late_ms),
                tick,
                "{late_ms} ms late"
            );
        }
        assert_eq!(cycle_of(&every_30s, tick + 30_000), tick + 30_000);
        let daily = parse_schedule("0 0 3 * * *").unwrap();
        let three_am = chrono::DateTime::parse_from_rfc3339("2026-11-29T03:00:00Z")
            .unwrap()
            .timestamp_millis();
        assert_eq!(cycle_of(&daily, three_am + 700), three_am);
        // More than a minute late: the current second.
        assert_eq!(cycle_of(&daily, three_am + 61_234), three_am + 61_000);
    }
}
