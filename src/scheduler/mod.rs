//! The scheduler: cycles over every due user, at most `concurrency` syncs at once, admin
//! resyncs ahead of scheduled work.
//!
//! A cycle streams due users from the database a page at a time (memory does not grow with
//! the number of users) and hands each to a worker task once a concurrency permit is free.
//! A user already syncing is skipped. A cycle fired by the schedule spreads its users over
//! the interval ([`Pacing`]): each user has a stable slot (`store::schedule::slot_of`) and
//! starts no earlier than its slot's time, so Google sees a flat rate rather than a burst on
//! every tick. [`schedule`] owns the cron schedule and fires cycles;
//! [`resync`] runs admin requests, which live in the database so that any instance can take
//! them.
//!
//! Shutdown has two stages ([`Shutdown`]): `stop` ends the taking of new users; running syncs
//! get the grace period to finish, then `abort` makes them stop at their next checkpoint (a
//! committed file or page), so nothing committed is lost and the next run resumes from there.
//! One user's running sync can be stopped the same way at once ([`Scheduler::cancel_user`]):
//! each sync runs with its own child of `abort`, kept in the `running` map.

pub mod resync;
pub mod schedule;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::google::RateLimit;
use crate::store::schedule::{self as due, Claim, Cursor, DueUser, SLOTS};
use crate::store::syncs::SyncOutcome;
use crate::store::{self, Store};
use crate::sync::{SyncEngine, SyncResult};
use schedule::{Schedule, Tick, Timer};

/// How often an instance says it is alive and re-counts the instances sharing the rate limit.
const PRESENCE_PERIOD: Duration = Duration::from_secs(2);
/// An instance not seen for this long (three missed beats) no longer has a share.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(6);

/// Users claimed per query during a cycle is the concurrency, but at least this many.
const MIN_CLAIM: usize = 16;

/// A spread cycle starts its last slot at this share of the interval: the syncs started last
/// get the rest to finish before the next tick (which skips its cycle while one runs).
const SPREAD_SHARE: f64 = 0.9;

/// A cycle spreads over an hour at most: a daily schedule at 03:00 was chosen for its hour,
/// and a schedule that fires once has no interval worth the name.
const MAX_SPREAD: Duration = Duration::from_secs(3600);

/// How a cycle starts its users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Every due user at once (`run_once`, which tests and `dev` step; `[sync] spread = false`).
    AtOnce,
    /// Slot `s` no earlier than `s / SLOTS` of `window` after the tick.
    Spread { window: Duration },
}

impl Pacing {
    /// Spread over [`SPREAD_SHARE`] of the interval from `tick` to `next` (unix ms), at most
    /// [`MAX_SPREAD`].
    pub fn over_interval(tick: i64, next: i64) -> Pacing {
        let interval = Duration::from_millis((next - tick).max(0) as u64);
        Pacing::Spread {
            window: interval.mul_f64(SPREAD_SHARE).min(MAX_SPREAD),
        }
    }

    /// The last slot whose time has come at `now` in the cycle of `tick` (both unix ms).
    fn last_slot_due(self, tick: i64, now: i64) -> i64 {
        match self {
            Pacing::AtOnce => SLOTS - 1,
            Pacing::Spread { window } => {
                let elapsed = (now - tick).max(0) as u128;
                let window = window.as_millis().max(1);
                (elapsed * SLOTS as u128 / window).min(SLOTS as u128 - 1) as i64
            }
        }
    }

    /// How long a claim loop that caught up with the due slots waits before claiming again:
    /// a thousandth of the window, so requests stay flat within each second, but at least
    /// 100 ms (few empty claims with few users) and at most a second.
    fn step(self) -> Duration {
        match self {
            Pacing::AtOnce => Duration::ZERO,
            Pacing::Spread { window } => {
                (window / 1000).clamp(Duration::from_millis(100), Duration::from_secs(1))
            }
        }
    }

    /// When the last slot is due (unix ms), in the cycle of `tick`.
    fn spread_until(self, tick: i64) -> i64 {
        match self {
            Pacing::AtOnce => tick,
            Pacing::Spread { window } => tick + window.as_millis() as i64,
        }
    }
}

/// The cycle this instance is starting users in, for `ctl status`: how far through its
/// slots it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleProgress {
    /// The cycle's tick (unix ms).
    pub tick: i64,
    /// When its last slot is due (unix ms); the tick itself when it starts everyone at once.
    pub spread_until: i64,
    /// Slots whose time has come, of `slots`.
    pub slots_due: i64,
    pub slots: i64,
    /// Users this instance claimed in it so far.
    pub claimed: u64,
}

/// The two stages of shutdown, as the scheduler sees them. `stop` is a child of `abort`, so
/// aborting also stops.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled first: take no new users.
    pub stop: CancellationToken,
    /// Cancelled when the grace period is over: running syncs stop at their next checkpoint.
    pub abort: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let abort = CancellationToken::new();
        Shutdown {
            stop: abort.child_token(),
            abort,
        }
    }
}

/// Totals of one cycle.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
            SyncOutcome::Ok => self.ok += 1,
            SyncOutcome::ReauthRequired => self.reauth_required += 1,
            SyncOutcome::Cancelled => self.cancelled += 1,
            SyncOutcome::Failed => self.failed += 1,
        }
        self.api_calls += r.counts.api_calls as u64;
        self.token_refreshes += r.counts.refreshes as u64;
        self.files_changed += (r.counts.added + r.counts.updated + r.counts.removed) as u64;
        self.bytes_down += r.counts.bytes_down as u64;
    }
}

/// Where a sync is, in a [`SyncEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncPhase {
    Started,
    Finished,
}

/// Sent when a user's sync starts and ends (for `ctl resync --wait`, `dev` and tests).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncEvent {
    pub sub: String,
    pub phase: SyncPhase,
    /// Set when finished.
    pub outcome: Option<SyncOutcome>,
    pub added: i64,
    pub updated: i64,
    pub removed: i64,
    pub uploaded: i64,
    pub conflicts: i64,
    pub error: Option<String>,
}

impl SyncEvent {
    fn started(sub: &str) -> SyncEvent {
        SyncEvent {
            sub: sub.to_string(),
            phase: SyncPhase::Started,
            outcome: None,
            added: 0,
            updated: 0,
            removed: 0,
            uploaded: 0,
            conflicts: 0,
            error: None,
        }
    }

    fn finished(r: &SyncResult) -> SyncEvent {
        SyncEvent {
            sub: r.record.sub.clone(),
            phase: SyncPhase::Finished,
            outcome: Some(r.record.outcome),
            added: r.counts.added,
            updated: r.counts.updated,
            removed: r.counts.removed,
            uploaded: r.counts.uploaded,
            conflicts: r.counts.conflicts,
            error: r.record.error.clone(),
        }
    }
}

pub struct Scheduler {
    engine: Arc<SyncEngine>,
    store: Store,
    concurrency: AtomicUsize,
    permits: Arc<Semaphore>,
    /// How long a claim holds a user before another instance may take it over.
    lease: Duration,
    /// Subs syncing right now on this instance, each with the token that stops its sync: a
    /// child of `shutdown.abort`, cancelled by [`Scheduler::cancel_user`] (Cross-Account
    /// Protection stopping every call for a user) or by abort; the sync sees it at its next
    /// checkpoint, retry pause or download read.
    running: Mutex<HashMap<String, CancellationToken>>,
    /// Wakes the resync loop (a local `ctl resync`).
    resync_wakeup: Notify,
    /// Sync start/finish events; receivers that lag just miss events.
    events: broadcast::Sender<SyncEvent>,
    last_cycle: Mutex<Option<CycleOutcome>>,
    /// The cycle starting users now, if any.
    progress: Mutex<Option<CycleProgress>>,
    cycle_running: AtomicBool,
    /// Scheduled cycles spread their users over the interval (`[sync] spread`).
    spread: AtomicBool,
    queued: AtomicUsize,
    shutdown: Shutdown,
    /// Every running sync, so that shutdown can wait for them.
    syncs: TaskTracker,
    /// Fires cycles on the schedule's ticks, once started.
    timer: Mutex<Option<Arc<Timer>>>,
}

impl Scheduler {
    pub fn new(
        engine: Arc<SyncEngine>,
        store: Store,
        concurrency: usize,
        lease: Duration,
        spread: bool,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        let concurrency = concurrency.max(1);
        Arc::new(Self {
            engine,
            store,
            lease,
            concurrency: AtomicUsize::new(concurrency),
            permits: Arc::new(Semaphore::new(concurrency)),
            running: Mutex::new(HashMap::new()),
            resync_wakeup: Notify::new(),
            events: broadcast::channel(1024).0,
            last_cycle: Mutex::new(None),
            progress: Mutex::new(None),
            cycle_running: false.into(),
            spread: spread.into(),
            queued: AtomicUsize::new(0),
            shutdown,
            syncs: TaskTracker::new(),
            timer: Mutex::new(None),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SyncEvent> {
        self.events.subscribe()
    }

    pub fn running(&self) -> usize {
        self.running.lock().len()
    }

    pub fn is_running(&self, sub: &str) -> bool {
        self.running.lock().contains_key(sub)
    }

    /// The subs syncing right now on this instance.
    pub fn running_subs(&self) -> Vec<String> {
        self.running.lock().keys().cloned().collect()
    }

    /// Stops `sub`'s sync on this instance now, if one runs: it ends as `cancelled` at once
    /// (between calls, in a retry pause, or mid-download), committing nothing more. True when
    /// one was running.
    pub fn cancel_user(&self, sub: &str) -> bool {
        let token = self.running.lock().get(sub).cloned();
        match token {
            Some(token) => {
                token.cancel();
                tracing::info!(user = %sub, "stopping the user's running sync");
                true
            }
            None => false,
        }
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn last_cycle(&self) -> Option<CycleOutcome> {
        self.last_cycle.lock().clone()
    }

    /// The cycle starting users now, if any.
    pub fn cycle_progress(&self) -> Option<CycleProgress> {
        self.progress.lock().clone()
    }

    /// Whether scheduled cycles spread their users over the interval (config reload).
    pub fn set_spread(&self, spread: bool) {
        self.spread.store(spread, Ordering::Relaxed);
    }

    /// How the cycle of `tick` starts its users.
    fn pacing(&self, tick: Tick) -> Pacing {
        match tick.next {
            Some(next) if self.spread.load(Ordering::Relaxed) => {
                Pacing::over_interval(tick.at, next)
            }
            _ => Pacing::AtOnce,
        }
    }

    /// This instance's id: the owner of the leases it takes.
    pub fn instance(&self) -> &str {
        &self.engine.instance
    }

    pub fn lease(&self) -> Duration {
        self.lease
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

    /// Starts firing a cycle on every tick of `schedule`, until [`Scheduler::stop_schedule`].
    pub async fn start_schedule(self: &Arc<Self>, schedule: Schedule) -> anyhow::Result<()> {
        // Weak: the timer lives inside the scheduler it calls.
        let me = Arc::downgrade(self);
        let on_tick: schedule::OnTick = Arc::new(move |tick| {
            let me = me.clone();
            Box::pin(async move {
                if let Some(me) = me.upgrade() {
                    me.run_cycle(tick.at, me.pacing(tick)).await;
                }
            })
        });
        let timer = Timer::start(schedule, on_tick).await?;
        *self.timer.lock() = Some(timer);
        Ok(())
    }

    /// A reload's new schedule: re-armed from now.
    pub async fn set_schedule(&self, schedule: Schedule) -> anyhow::Result<()> {
        let timer = self.timer.lock().clone();
        match timer {
            Some(timer) => timer.set_schedule(schedule).await,
            None => Ok(()),
        }
    }

    /// No cycle fires after this.
    pub async fn stop_schedule(&self) {
        let timer = self.timer.lock().take();
        if let Some(timer) = timer {
            timer.shutdown().await;
        }
    }

    /// The next cycle's tick (unix ms), for `ctl status`.
    pub fn next_cycle(&self) -> Option<i64> {
        self.timer.lock().as_ref().and_then(|t| t.next_tick())
    }

    /// Waits until every running sync has ended (after `stop`, no new one starts), or
    /// `limit`; true when none is left.
    pub async fn wait_for_syncs(&self, limit: Duration) -> bool {
        self.syncs.close();
        tokio::time::timeout(limit, self.syncs.wait()).await.is_ok()
    }

    /// One full cycle over every due user, as cycle "now", all started at once (tests and
    /// `dev` step cycles with this). Returns when all of them are done (or on `stop`).
    pub async fn run_once(self: &Arc<Self>) -> CycleOutcome {
        self.run_cycle(store::now_ms(), Pacing::AtOnce).await
    }

    /// Claims users due in `cycle` (its tick, unix ms) a batch at a time (other instances claim
    /// theirs meanwhile), each once its slot's time has come as `pacing` says, and syncs each,
    /// at most `concurrency` at once. Returns when all of them are done (or on `stop`).
    pub async fn run_cycle(self: &Arc<Self>, cycle: i64, pacing: Pacing) -> CycleOutcome {
        if self.shutdown.stop.is_cancelled() {
            return CycleOutcome::default();
        }
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
        let completed = self
            .start_all(cycle, pacing, &mut tasks, &mut outcome)
            .await;
        self.queued.store(0, Ordering::Relaxed);
        *self.progress.lock() = None;
        while let Some(done) = tasks.join_next().await {
            if let Ok(r) = done {
                outcome.add(&r);
            }
        }
        outcome.finished_at = store::now_ms();
        crate::metrics::cycle_finished(completed, outcome.finished_at);
        log_cycle(&outcome, clock.elapsed());
        *self.last_cycle.lock() = Some(outcome.clone());
        self.cycle_running.store(false, Ordering::SeqCst);
        outcome
    }

    /// Claims and starts every user due in `cycle`, walking them in slot order, each batch
    /// once its slots' time has come; between batches that caught up, waits a [`Pacing::step`].
    /// True when all were started (no database error, no stop).
    async fn start_all(
        self: &Arc<Self>,
        cycle: i64,
        pacing: Pacing,
        tasks: &mut JoinSet<SyncResult>,
        outcome: &mut CycleOutcome,
    ) -> bool {
        let batch = self.concurrency.load(Ordering::Relaxed).max(MIN_CLAIM) as i64;
        let mut progress = CycleProgress {
            tick: cycle,
            spread_until: pacing.spread_until(cycle),
            slots: SLOTS,
            ..Default::default()
        };
        // The cursor: claims walk the users in (slot, sub) order, each after the last one's end.
        let mut after = Cursor::start();
        loop {
            let last_slot = pacing.last_slot_due(cycle, store::now_ms());
            progress.slots_due = last_slot + 1;
            *self.progress.lock() = Some(progress.clone());
            let what = Claim::Cycle {
                stamp: cycle,
                after: &after,
                last_slot,
            };
            let claimed = match self.claim(what, batch).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim due users; cycle cut short");
                    return false;
                }
            };
            // Fewer than asked: no user due so far is left (or another instance holds it).
            let caught_up = (claimed.len() as i64) < batch;
            if let Some(last) = claimed.last() {
                after = Cursor {
                    slot: last.slot,
                    sub: last.sub.clone(),
                };
            }
            progress.claimed += claimed.len() as u64;
            if !self.start_batch(claimed.into(), tasks, outcome).await {
                return false;
            }
            if caught_up {
                if last_slot >= SLOTS - 1 {
                    return true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(pacing.step()) => {}
                    _ = self.shutdown.stop.cancelled() => return false,
                }
            }
        }
    }

    /// Starts a sync for each claimed user as permits free up. False when `stop` came first:
    /// the users not started are given back.
    async fn start_batch(
        self: &Arc<Self>,
        mut claimed: VecDeque<DueUser>,
        tasks: &mut JoinSet<SyncResult>,
        outcome: &mut CycleOutcome,
    ) -> bool {
        while let Some(user) = claimed.pop_front() {
            self.queued.store(claimed.len(), Ordering::Relaxed);
            while let Some(done) = tasks.try_join_next() {
                if let Ok(r) = done {
                    outcome.add(&r);
                }
            }
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => p.ok(),
                _ = self.shutdown.stop.cancelled() => None,
            };
            let Some(permit) = permit else {
                claimed.push_front(user);
                self.release_unstarted(claimed.into_iter().map(|u| u.sub).collect())
                    .await;
                return false;
            };
            match self.clone().start_owned(&user.sub) {
                Some(run) => {
                    tasks.spawn(self.syncs.track_future(async move {
                        let r = run.sync(user).await;
                        drop(permit);
                        r
                    }));
                }
                None => outcome.skipped_running += 1,
            }
        }
        true
    }

    async fn claim(&self, what: Claim<'_>, limit: i64) -> Result<Vec<DueUser>, sqlx::Error> {
        let now = store::now_ms();
        let until = now + self.lease.as_millis() as i64;
        let mut tx = self.store.begin_write().await?;
        let users = due::claim(
            tx.conn(),
            self.store.backend(),
            what,
            self.instance(),
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
            due::release_unstarted(tx.conn(), self.instance(), &subs).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, users = subs.len(), "cannot give back unstarted claims; they wait for their lease to expire");
        }
    }

    /// Renews this instance's leases every third of a lease, until `abort` (leases must
    /// outlive running syncs, so not until `stop`).
    pub async fn heartbeat_loop(self: Arc<Self>) -> anyhow::Result<()> {
        let period = (self.lease / 3).max(Duration::from_secs(1));
        loop {
            if let Err(e) = self.heartbeat().await {
                tracing::warn!(error = %e, "cannot renew leases; other instances may take over our users");
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.shutdown.abort.cancelled() => return Ok(()),
            }
        }
    }

    /// Says this instance is alive every [`PRESENCE_PERIOD`] and shares the project's rate
    /// `limit` among the instances alive, so that N instances send Google what one would:
    /// one that joins or dies is counted within seconds. Until `abort`, as the heartbeat.
    pub async fn presence_loop(self: Arc<Self>, limit: Arc<RateLimit>) -> anyhow::Result<()> {
        let started = store::now_ms();
        loop {
            match self.presence(started).await {
                Ok(instances) => limit.share_among(instances),
                // The share in force stays: a database that cannot be reached stops syncs
                // anyway.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot count the instances sharing the rate limit")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PRESENCE_PERIOD) => {}
                _ = self.shutdown.abort.cancelled() => return Ok(()),
            }
        }
    }

    /// Records this instance as alive and returns how many are (itself included).
    pub async fn presence(&self, started_at: i64) -> Result<u32, sqlx::Error> {
        let now = store::now_ms();
        let mut tx = self.store.begin_write().await?;
        due::heartbeat(
            tx.conn(),
            self.instance(),
            env!("CARGO_PKG_VERSION"),
            started_at,
            now,
        )
        .await?;
        let since = now - PRESENCE_TIMEOUT.as_millis() as i64;
        let alive = due::count_live_instances(tx.conn(), since).await?;
        tx.commit().await?;
        Ok(u32::try_from(alive).unwrap_or(u32::MAX).max(1))
    }

    /// Extends the leases this instance holds.
    pub async fn heartbeat(&self) -> Result<(), sqlx::Error> {
        let now = store::now_ms();
        let mut tx = self.store.begin_write().await?;
        due::renew_leases(
            tx.conn(),
            self.store.backend(),
            self.instance(),
            now,
            now + self.lease.as_millis() as i64,
        )
        .await?;
        tx.commit().await
    }

    /// Says this instance is gone (at a clean exit), so `ctl status` stops listing it.
    pub async fn deregister(&self) {
        if let Ok(mut tx) = self.store.begin_write().await {
            let _ = due::remove_instance(tx.conn(), self.instance()).await;
            let _ = tx.commit().await;
        }
    }

    /// At start-up: an earlier process on this host that died without cleaning up (SIGKILL,
    /// power loss) still holds leases; its pid is gone, so take them back now rather than
    /// after they expire. Instance ids are `HOST-PID` by default.
    pub async fn reclaim_dead_local_instances(&self) -> Result<(), sqlx::Error> {
        let me = self.instance();
        // Only the default ids (hostname-pid) say where an instance runs; with ids set in the
        // config, "worker-0" would read as a dead pid 0. Those wait for their leases to expire.
        let Some(host) = me.strip_suffix(&format!("-{}", std::process::id())) else {
            return Ok(());
        };
        let mut tx = self.store.begin_write().await?;
        for id in due::all_instances(tx.conn()).await? {
            let Some((other_host, pid)) = id.rsplit_once('-') else {
                continue;
            };
            let dead = other_host == host
                && id != me
                && pid
                    .parse::<u32>()
                    .is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
            if dead {
                let n = due::release_all(tx.conn(), &id).await?;
                due::remove_instance(tx.conn(), &id).await?;
                tracing::info!(instance = %id, leases = n, "took back the leases of a dead instance on this host");
            }
        }
        tx.commit().await
    }

    /// Marks `sub` running; `None` if it already is.
    fn start_owned(self: Arc<Self>, sub: &str) -> Option<OwnedRunningSync> {
        let cancel = {
            let mut running = self.running.lock();
            if running.contains_key(sub) {
                return None;
            }
            let cancel = self.shutdown.abort.child_token();
            running.insert(sub.to_string(), cancel.clone());
            cancel
        };
        Some(OwnedRunningSync {
            scheduler: self.clone(),
            sub: sub.to_string(),
            cancel,
        })
    }
}

fn log_cycle(outcome: &CycleOutcome, took: Duration) {
    tracing::info!(
        users = outcome.users,
        ok = outcome.ok,
        failed = outcome.failed,
        reauth_required = outcome.reauth_required,
        cancelled = outcome.cancelled,
        api_calls = outcome.api_calls,
        token_refreshes = outcome.token_refreshes,
        files_changed = outcome.files_changed,
        duration_ms = took.as_millis() as u64,
        "sync cycle finished"
    );
}

/// A sync in progress; dropping it (even by panic) frees the user for the next cycle.
struct OwnedRunningSync {
    scheduler: Arc<Scheduler>,
    sub: String,
    /// Stops this sync: this user's entry of `running`.
    cancel: CancellationToken,
}

impl OwnedRunningSync {
    async fn sync(self, user: DueUser) -> SyncResult {
        let scheduler = self.scheduler.clone();
        let _ = scheduler.events.send(SyncEvent::started(&user.sub));
        let r = scheduler.engine.sync_user(user, &self.cancel).await;
        // Free the user before anyone hears that its sync finished.
        drop(self);
        let _ = scheduler.events.send(SyncEvent::finished(&r));
        r
    }
}

impl Drop for OwnedRunningSync {
    fn drop(&mut self) {
        self.scheduler.running.lock().remove(&self.sub);
    }
}

impl Scheduler {
    /// Waits until `sub` is not syncing on this instance (at most `limit`).
    pub async fn wait_until_idle(&self, sub: &str, limit: Duration) {
        let mut events = self.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        while self.is_running(sub) {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => return,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_cycle_reaches_its_last_slot_at_nine_tenths_of_the_interval_an_hour_at_most() {
        let tick = 1_000_000;
        let every_minute = Pacing::over_interval(tick, tick + 60_000);
        assert_eq!(
            every_minute.last_slot_due(tick, tick - 5),
            0,
            "a clock behind the tick"
        );
        assert_eq!(every_minute.last_slot_due(tick, tick + 27_000), SLOTS / 2);
        assert_eq!(every_minute.last_slot_due(tick, tick + 54_000), SLOTS - 1);
        assert_eq!(every_minute.last_slot_due(tick, tick + 59_000), SLOTS - 1);
        assert_eq!(every_minute.step(), Duration::from_millis(100));
        let daily = Pacing::over_interval(tick, tick + 86_400_000);
        assert_eq!(daily.spread_until(tick), tick + 3_600_000);
        assert_eq!(daily.last_slot_due(tick, tick + 1_800_000), SLOTS / 2);
        assert_eq!(daily.step(), Duration::from_secs(1));
        assert_eq!(Pacing::AtOnce.last_slot_due(tick, tick), SLOTS - 1);
    }
}
