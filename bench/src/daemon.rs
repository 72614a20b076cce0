//! The daemon under test: configured through [`Config`] the way tests/it/helpers.rs does,
//! built with [`App::build`] and served with [`App::run_until_stopped`] in this process. Cycles
//! are stepped with `Scheduler::run_once` or, when several daemons share a PostgreSQL database
//! (or the cycle is spread over an interval), `Scheduler::run_cycle` with one stamp for all;
//! the cron tick is set far in the future.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use appdata_syncd::config::Config;
use appdata_syncd::google::HttpVersion;
use appdata_syncd::lifecycle::App;
use appdata_syncd::scheduler::{CycleOutcome, Pacing, Scheduler, SyncPhase};
use appdata_syncd::services::reports::RateLimitStatus;
use appdata_syncd::services::Services;
use appdata_syncd::store::Store;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::google::FakeGoogle;
use crate::measure::Reservoir;

/// Sync times kept per cycle for p50/p99: a uniform sample beyond this many.
const SYNC_TIME_SAMPLES: usize = 100_000;

/// The two [sync] settings that bound cycle throughput.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Tuning {
    pub profile: &'static str,
    pub concurrency: usize,
    pub max_requests_per_second: u32,
}

impl Tuning {
    /// The daemon's own config defaults.
    pub fn defaults() -> Tuning {
        let sync = Config::default().sync;
        Tuning {
            profile: "defaults",
            concurrency: sync.concurrency,
            max_requests_per_second: sync.max_requests_per_second,
        }
    }

    /// Limiter effectively off and many users in flight: what the machine can do.
    pub fn raised() -> Tuning {
        Tuning {
            profile: "raised",
            concurrency: 256,
            max_requests_per_second: 1_000_000,
        }
    }
}

/// The daemon's token encryption key in every benchmark (`dir/encryption.key`); [`crate::seed`]
/// seals tokens with it too.
pub const BENCH_KEY: [u8; 32] = [42u8; 32];

/// The config every benchmark daemon starts from: [`Config::default`] with Google's endpoints
/// on the emulator and the token key written to `dir/encryption.key`. Callers set the rest.
pub fn emulator_config(dir: &Path, google: &FakeGoogle) -> anyhow::Result<Config> {
    let key = dir.join("encryption.key");
    std::fs::write(&key, BENCH_KEY).context("writing the encryption key")?;
    // Secrets readable by their owner only, as the daemon requires.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let base = &google.base;
    let mut config = Config::default();
    config.google.client_secret_file = Some(google.client_secret_file.clone());
    config.google.jwks_uri = format!("{base}/oauth2/v3/certs");
    config.google.revoke_uri = format!("{base}/revoke");
    config.google.drive_api_base = base.clone();
    config.google.android_client_ids = vec![google.android_client_id.clone()];
    config.store.encryption_key_file = Some(key);
    // Every sign-in of a benchmark comes from one loopback client, far faster than any app's:
    // the intake's admission limits (per client, at once, token calls) would measure themselves.
    config.intake.signins_per_client_per_minute = 1_000_000;
    config.intake.max_concurrent_signins = 4096;
    config.intake.token_calls_per_second = 1_000_000;
    Ok(config)
}

/// Which database a daemon uses, which of the daemons sharing it this one is, and how it
/// talks to Google.
#[derive(Clone, Copy)]
pub struct Placement<'a> {
    /// `[store] url`; `None`: the SQLite file in the scenario directory.
    pub database_url: Option<&'a str>,
    /// 0 for the first (or only) daemon.
    pub index: usize,
    /// `[google] http_version`: fixed at build, unlike [`Tuning`].
    pub http_version: HttpVersion,
}

/// `--http-version 1.1|2`, read through the daemon's own serde names so the two agree.
pub fn parse_http_version(s: &str) -> Result<HttpVersion, String> {
    serde_json::from_value(serde_json::Value::from(s))
        .map_err(|_| format!("{s:?}: expected 1.1 or 2"))
}

/// The string form of `v` (`"1.1"`, `"2"`), as config.toml spells it.
pub fn http_version_name(v: HttpVersion) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(String::from))
        .unwrap_or_else(|| format!("{v:?}"))
}

pub struct Daemon {
    /// `http://127.0.0.1:PORT` of the intake.
    pub intake: String,
    /// The data API's base URL, when the scenario set `[api] listen`.
    pub api: Option<String>,
    pub store: Store,
    pub scheduler: Arc<Scheduler>,
    services: Arc<Services>,
    /// Cancelled by [`Daemon::stop`]; `run_until_stopped` then drains and returns.
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    /// Builds and starts a daemon in `dir`, the scenario directory. Daemons sharing a database
    /// also share the key and the mirror (`dir/mirror`); each has its own state directory.
    pub async fn start(
        dir: &Path,
        google: &FakeGoogle,
        tuning: Tuning,
        place: Placement<'_>,
    ) -> anyhow::Result<Daemon> {
        Daemon::start_with(dir, google, tuning, place, |_| Ok(())).await
    }

    /// [`Daemon::start`], with `configure` changing the config last (data-api: `[api]`).
    pub async fn start_with(
        dir: &Path,
        google: &FakeGoogle,
        tuning: Tuning,
        place: Placement<'_>,
        configure: impl FnOnce(&mut Config) -> anyhow::Result<()>,
    ) -> anyhow::Result<Daemon> {
        let mut config = emulator_config(dir, google)?;
        config.intake.listen = "127.0.0.1:0".parse()?;
        config.sync.data_dir = Some(dir.join("mirror"));
        let state_dir = match place.database_url {
            None => dir.to_path_buf(),
            Some(url) => {
                config.store.url = Some(url.to_string());
                // Not `bench-N`: at start-up a daemon takes back the leases of `HOST-PID`
                // instances whose pid is gone, and `bench-0` reads as dead pid 0.
                config.sync.instance_id = Some(format!("bench{}", place.index));
                dir.join(format!("instance{}", place.index))
            }
        };
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        config.admin.socket = state_dir.join("admin.sock");
        config.store.state_dir = Some(state_dir);
        // The benchmark steps cycles itself; the cron tick is far away.
        config.sync.schedule = "0 0 0 1 1 *".into();
        config.sync.concurrency = tuning.concurrency;
        config.sync.max_requests_per_second = tuning.max_requests_per_second;
        config.google.http_version = place.http_version;
        configure(&mut config)?;
        let app = App::build(config.resolve()?, None)
            .await
            .context("building the daemon")?;
        let intake = format!("http://{}", app.intake_addr());
        let api = app.api_url();
        let store = app.store().clone();
        let scheduler = app.scheduler().clone();
        let services = app.services().clone();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Ok(Daemon {
            intake,
            api,
            store,
            scheduler,
            services,
            shutdown,
            running,
        })
    }

    /// The handle the daemon's front doors share (API keys, resyncs, the change feed).
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Changes concurrency and the rate limit the way a config reload does.
    pub async fn tune(&self, t: Tuning) {
        self.scheduler.set_concurrency(t.concurrency);
        self.services.set_request_rate(t.max_requests_per_second);
        // Lowering concurrency retires permits from a spawned task; let it run.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// The rate limiter as `ctl status` shows it: the ceiling and the rate in force (AIMD).
    pub async fn rate_limit(&self) -> anyhow::Result<RateLimitStatus> {
        let status = self
            .services
            .status()
            .await
            .context("the daemon's status")?;
        Ok(status.rate_limit)
    }

    /// One full cycle over every due user.
    pub async fn cycle(&self) -> CycleOutcome {
        self.scheduler.run_once().await
    }

    /// The cycle of a schedule's tick `tick` (unix ms), its users started as `pacing` says.
    pub async fn cycle_at(&self, tick: i64, pacing: Pacing) -> CycleOutcome {
        self.scheduler.run_cycle(tick, pacing).await
    }

    /// One full cycle stamped `cycle` (daemons given the same stamp share its users), also
    /// timing each user from the scheduler's "started" event to its "finished" event, which
    /// comes after the sync's bookkeeping commit. Returns the outcome, the durations (ms; a
    /// uniform sample of [`SYNC_TIME_SAMPLES`] in larger cycles) and
    /// how many events the receiver missed (the channel holds 1024).
    pub async fn timed_cycle(&self, cycle: i64) -> anyhow::Result<(CycleOutcome, Vec<f64>, u64)> {
        let mut events = self.scheduler.subscribe();
        // Cancelled once the cycle is over; the timer then drains what is queued and returns.
        let done = CancellationToken::new();
        let timer = {
            let done = done.clone();
            tokio::spawn(async move {
                let mut started: HashMap<String, Instant> = HashMap::new();
                let mut durations = Reservoir::new(SYNC_TIME_SAMPLES);
                let mut missed = 0u64;
                loop {
                    let event = tokio::select! {
                        e = events.recv() => e,
                        () = done.cancelled() => match events.try_recv() {
                            Ok(e) => Ok(e),
                            Err(_) => break,
                        },
                    };
                    match event {
                        Ok(e) if e.phase == SyncPhase::Started => {
                            started.insert(e.sub, Instant::now());
                        }
                        Ok(e) => {
                            if let Some(t) = started.remove(&e.sub) {
                                durations.offer(t.elapsed().as_secs_f64() * 1000.0);
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => missed += n,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
                (durations.into_values(), missed)
            })
        };
        // Its own task, so that several daemons' claim loops run on all cores at once.
        let scheduler = self.scheduler.clone();
        let outcome = tokio::spawn(async move { scheduler.run_cycle(cycle, Pacing::AtOnce).await })
            .await
            .context("the cycle task panicked");
        done.cancel();
        let (durations, missed) = timer.await.unwrap_or_default();
        Ok((outcome?, durations, missed))
    }

    /// Per-user sync durations (ms, from the `syncs` table) of syncs started at or after `since`.
    pub async fn sync_times_ms(&self, since: i64) -> anyhow::Result<Vec<f64>> {
        let rows: Vec<i64> =
            sqlx::query_scalar("SELECT finished_at - started_at FROM syncs WHERE started_at >= $1")
                .bind(since)
                .fetch_all(self.store.pool())
                .await?;
        Ok(rows.into_iter().map(|ms| ms as f64).collect())
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.running.await?
    }
}
