//! The scenarios. Each starts a fresh [`World`] (temp dir, fake-google child, daemon), seeds
//! users through the real intake, then measures one phase between [`Window::open`] and
//! [`Window::close`]: wall time, CPU of this process and of the emulator, and peak RSS.
//! idle-cycle can also run on a fresh PostgreSQL database with several daemons sharing it;
//! [`quota`] (its own module) runs the daemon against a project quota, shared or not;
//! [`data_api`] (its own module) measures the data API's change feed, reads and webhooks.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use appdata_syncd::config::Config;
use appdata_syncd::google::HttpVersion;
use appdata_syncd::scheduler::CycleOutcome;
use appdata_syncd::store::now_ms;
use futures::StreamExt;
use serde_json::json;

use crate::daemon::{http_version_name, Daemon, Placement, Tuning};
use crate::database::{Backend, ScratchDatabase};
use crate::google::{FakeGoogle, Stats};
use crate::report::Report;
use crate::{measure, seed, statements};
use crate::{Profiles, TuningArgs};

mod data_api;
mod history;
mod quota;
mod spread;
pub use data_api::data_api;
pub use history::{history, HistoryArgs};
pub use quota::quota;
pub use spread::{spread, SpreadArgs};

/// What p50_ms/p99_ms measure, and how they differ from the `syncs` table's figures.
const SYNC_TIME: &str = "p50_ms/p99_ms: scheduler 'started' to 'finished' event, which includes \
     the sync's bookkeeping commit; *_syncs_table: the syncs row (ms resolution), which ends \
     before that commit";

/// Client concurrency used to seed users through the intake.
const SEED_CONCURRENCY: usize = 64;

/// Above this many users, `--seed auto` writes them straight into the database ([`seed`]).
const DIRECT_SEED_ABOVE: usize = 100_000;

/// How idle-cycle seeds its users (`--seed`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seeding {
    /// Direct above 100,000 users, through the intake up to that.
    Auto,
    Intake,
    Direct,
}

pub struct Env {
    pub parent_dir: Option<PathBuf>,
    pub keep: bool,
}

impl Env {
    /// A fresh state directory named `prefix...`, under `--dir` when given; deleted on drop.
    pub fn scratch_dir(&self, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
        let mut builder = tempfile::Builder::new();
        builder.prefix(prefix);
        Ok(match &self.parent_dir {
            Some(p) => {
                std::fs::create_dir_all(p)?;
                builder.tempdir_in(p)?
            }
            None => builder.tempdir()?,
        })
    }
}

/// One scenario's daemons, emulator and state directory.
struct World {
    dir: tempfile::TempDir,
    google: FakeGoogle,
    /// Seeds users through its intake and runs the first cycle.
    daemon: Daemon,
    /// Further instances on `daemon`'s database and mirror (PostgreSQL only).
    peers: Vec<Daemon>,
    /// The "Android app" posting auth codes to the intake.
    http: reqwest::Client,
}

/// The "Android app"'s HTTP client: many sign-ins in flight at once.
fn seed_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?)
}

struct Seeded {
    subs: Vec<String>,
    secs: f64,
    errors: u64,
}

impl World {
    async fn start(env: &Env, tuning: Tuning) -> anyhow::Result<World> {
        World::start_shared(env, tuning, None, 1, HttpVersion::default()).await
    }

    /// `instances` daemons on `database_url` (`None`: one daemon on SQLite), speaking
    /// `http_version` to fake-google.
    async fn start_shared(
        env: &Env,
        tuning: Tuning,
        database_url: Option<&str>,
        instances: usize,
        http_version: HttpVersion,
    ) -> anyhow::Result<World> {
        let dir = env.scratch_dir("appdata-syncd-bench-")?;
        let google = FakeGoogle::spawn(dir.path()).await?;
        let place = |index| Placement {
            database_url,
            index,
            http_version,
        };
        let daemon = Daemon::start(dir.path(), &google, tuning, place(0)).await?;
        let mut peers = Vec::new();
        // One after the other: each migrates the database at build.
        for index in 1..instances.max(1) {
            peers.push(Daemon::start(dir.path(), &google, tuning, place(index)).await?);
        }
        Ok(World {
            dir,
            google,
            daemon,
            peers,
            http: seed_client()?,
        })
    }

    /// One daemon on SQLite, `configure` changing its config last (it gets the scenario
    /// directory, for files the config names).
    async fn start_configured(
        env: &Env,
        tuning: Tuning,
        configure: impl FnOnce(&Path, &mut Config) -> anyhow::Result<()>,
    ) -> anyhow::Result<World> {
        let dir = env.scratch_dir("appdata-syncd-bench-")?;
        let google = FakeGoogle::spawn(dir.path()).await?;
        let place = Placement {
            database_url: None,
            index: 0,
            http_version: HttpVersion::default(),
        };
        let path = dir.path().to_path_buf();
        let daemon =
            Daemon::start_with(dir.path(), &google, tuning, place, |c| configure(&path, c)).await?;
        Ok(World {
            dir,
            google,
            daemon,
            peers: Vec::new(),
            http: seed_client()?,
        })
    }

    fn instances(&self) -> impl Iterator<Item = &Daemon> {
        std::iter::once(&self.daemon).chain(&self.peers)
    }

    async fn stop(self, env: &Env) -> anyhow::Result<()> {
        for peer in self.peers {
            peer.stop().await?;
        }
        self.daemon.stop().await?;
        self.google.stop().await;
        if env.keep {
            eprintln!("kept {}", self.dir.keep().display());
        }
        Ok(())
    }

    /// Creates the Google accounts and mints one auth code each (not timed).
    async fn mint_codes(&self, subs: &[String]) -> anyhow::Result<Vec<String>> {
        let results: Vec<anyhow::Result<String>> = futures::stream::iter(subs)
            .map(|sub| async move {
                self.google.create_user(sub).await?;
                self.google.mint_code(sub).await
            })
            .buffered(SEED_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// POSTs each code to /authcode as the Android sample does, `concurrency` at a time.
    /// Returns every request's latency (ms) and how many did not answer 200.
    async fn sign_in_all(&self, codes: Vec<String>, concurrency: usize) -> (Vec<f64>, u64) {
        let url = format!("{}/authcode", self.daemon.intake);
        let results: Vec<(f64, bool)> = futures::stream::iter(codes)
            .map(|code| {
                let req = self.http.post(&url).form(&[("authCode", code)]);
                async move {
                    let t = Instant::now();
                    let ok = match req.send().await {
                        Ok(resp) => {
                            let ok = resp.status() == reqwest::StatusCode::OK;
                            let _ = resp.bytes().await;
                            ok
                        }
                        Err(_) => false,
                    };
                    (t.elapsed().as_secs_f64() * 1000.0, ok)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let errors = results.iter().filter(|(_, ok)| !ok).count() as u64;
        (results.into_iter().map(|(ms, _)| ms).collect(), errors)
    }

    /// Signs `n` new users in through the intake.
    async fn seed(&self, prefix: &str, n: usize) -> anyhow::Result<Seeded> {
        let subs: Vec<String> = (0..n).map(|i| format!("{prefix}{i:07}")).collect();
        let t = Instant::now();
        let codes = self.mint_codes(&subs).await?;
        let (_, errors) = self.sign_in_all(codes, SEED_CONCURRENCY).await;
        Ok(Seeded {
            subs,
            secs: t.elapsed().as_secs_f64(),
            errors,
        })
    }

    /// Puts `content(i)` as file `name` in the appDataFolder of every user in `subs`.
    async fn put_files(
        &self,
        subs: &[&String],
        name: &str,
        content: impl Fn(usize) -> Vec<u8>,
    ) -> anyhow::Result<()> {
        let content = &content;
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(subs.iter().enumerate())
            .map(|(i, sub)| async move { self.google.put_file(sub, name, content(i)).await })
            .buffer_unordered(SEED_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }
}

/// What one measured phase cost.
struct Window {
    wall: Instant,
    cpu: Duration,
    emulator_cpu: Duration,
    rss_reset: bool,
    rss_before_mib: f64,
}

struct Measured {
    secs: f64,
    cpu_s: f64,
    emulator_cpu_s: f64,
    peak_rss_mib: f64,
    rss_before_mib: f64,
    rss_window: &'static str,
}

impl Window {
    fn open(google: &FakeGoogle) -> Window {
        let rss_reset = measure::reset_peak_rss();
        Window {
            rss_before_mib: measure::rss_mib().unwrap_or(0.0),
            wall: Instant::now(),
            cpu: measure::cpu_self(),
            emulator_cpu: google.cpu(),
            rss_reset,
        }
    }

    fn close(self, google: &FakeGoogle) -> Measured {
        Measured {
            secs: self.wall.elapsed().as_secs_f64(),
            cpu_s: (measure::cpu_self() - self.cpu).as_secs_f64(),
            emulator_cpu_s: google.cpu().saturating_sub(self.emulator_cpu).as_secs_f64(),
            peak_rss_mib: measure::peak_rss_mib(None).unwrap_or(0.0),
            rss_before_mib: self.rss_before_mib,
            rss_window: if self.rss_reset {
                "measured phase"
            } else {
                "whole run (clear_refs unavailable)"
            },
        }
    }
}

/// Fields every report ends with.
fn finish(r: &mut Report, m: &Measured, google: &FakeGoogle, stats: &Stats, users: f64) {
    r.set("cpu_s", m.cpu_s)
        .set("cpu_s_per_1000", m.cpu_s / users.max(1.0) * 1000.0)
        .set("emulator_cpu_s", m.emulator_cpu_s)
        .set("peak_rss_mib", m.peak_rss_mib)
        .set("peak_rss_window", m.rss_window)
        // Resident when the measured phase began (seeding leftovers included): peak minus
        // this is what the phase itself added.
        .set("rss_before_mib", m.rss_before_mib)
        .set("emulator_peak_rss_mib", google.peak_rss_mib())
        .set("calls_by_endpoint", &stats.requests)
        .set("responses_by_status", &stats.by_status)
        .set("machine", machine())
        .set("load_avg_1m", measure::load_avg());
}

fn machine() -> String {
    format!(
        "{} cores; fake-google runs on the same cores (child process); \
         peak_rss_mib is this process: the daemon plus the benchmark's bookkeeping",
        measure::cores()
    )
}

fn settings(t: &Tuning) -> serde_json::Value {
    json!({
        "profile": t.profile,
        "sync.concurrency": t.concurrency,
        "sync.max_requests_per_second": t.max_requests_per_second,
    })
}

fn profiles(args: &TuningArgs, default: Profiles) -> Vec<Tuning> {
    let mut raised = Tuning::raised();
    if let Some(c) = args.concurrency {
        raised.concurrency = c;
    }
    if let Some(r) = args.max_rps {
        raised.max_requests_per_second = r;
    }
    match args.settings.unwrap_or(default) {
        Profiles::Defaults => vec![Tuning::defaults()],
        Profiles::Raised => vec![raised],
        Profiles::Both => vec![Tuning::defaults(), raised],
    }
}

/// Users that did not end "ok", and users the cycle did not reach.
fn cycle_errors(o: &CycleOutcome, expected_users: usize) -> u64 {
    o.failed
        + o.reauth_required
        + o.cancelled
        + o.skipped_running
        + o.users.abs_diff(expected_users as u64)
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// Several instances' timed cycles as one: counts summed, sync times pooled, the earliest start.
fn pooled(runs: Vec<(CycleOutcome, Vec<f64>, u64)>) -> (CycleOutcome, Vec<f64>, u64) {
    let mut total = CycleOutcome {
        started_at: i64::MAX,
        ..CycleOutcome::default()
    };
    let mut times = Vec::new();
    let mut missed = 0;
    for (o, t, m) in runs {
        total.started_at = total.started_at.min(o.started_at);
        total.finished_at = total.finished_at.max(o.finished_at);
        total.users += o.users;
        total.ok += o.ok;
        total.failed += o.failed;
        total.reauth_required += o.reauth_required;
        total.cancelled += o.cancelled;
        total.skipped_running += o.skipped_running;
        total.api_calls += o.api_calls;
        total.token_refreshes += o.token_refreshes;
        total.files_changed += o.files_changed;
        total.bytes_down += o.bytes_down;
        times.extend(t);
        missed += m;
    }
    (total, times, missed)
}

/// First cycle after seeding (not measured): every user's first sync.
async fn first_cycle(w: &World, n: usize) -> anyhow::Result<(f64, u64)> {
    let t = Instant::now();
    let o = w.daemon.cycle().await;
    let secs = t.elapsed().as_secs_f64();
    log(format!(
        "first sync of {n} users: {secs:.1} s ({:.0} users/s)",
        n as f64 / secs
    ));
    Ok((secs, cycle_errors(&o, n)))
}

pub async fn intake(
    env: &Env,
    users: usize,
    concurrencies: &[usize],
) -> anyhow::Result<Vec<Report>> {
    let w = World::start(env, Tuning::defaults()).await?;
    let mut reports = Vec::new();
    for &c in concurrencies {
        let subs: Vec<String> = (0..users).map(|i| format!("c{c}-{i:07}")).collect();
        let codes = w.mint_codes(&subs).await?;
        w.google.reset_stats().await?;
        let window = Window::open(&w.google);
        let (mut latencies, errors) = w.sign_in_all(codes, c).await;
        let m = window.close(&w.google);
        let stats = w.google.stats().await?;
        let (p50, p99) = measure::p50_p99(&mut latencies);
        let mut r = Report::new("intake");
        r.set("users", users)
            .set("client_concurrency", c)
            .set("elapsed_s", m.secs)
            .set("sign_ins_per_s", users as f64 / m.secs)
            .set("p50_ms", p50)
            .set("p99_ms", p99)
            .set("errors", errors)
            .set(
                "note",
                "CPU and RSS include the benchmark's HTTP client, which posts the codes",
            );
        finish(&mut r, &m, &w.google, &stats, users as f64);
        reports.push(r);
    }
    w.stop(env).await?;
    Ok(reports)
}

pub async fn first_sync(
    env: &Env,
    n: usize,
    files: usize,
    size: usize,
    tuning: &TuningArgs,
) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    for t in profiles(tuning, Profiles::Raised) {
        let w = World::start(env, t).await?;
        let seeded = w.seed("f", n).await?;
        let subs: Vec<&String> = seeded.subs.iter().collect();
        for f in 0..files {
            w.put_files(&subs, &format!("file-{f}.bin"), |i| payload(size, i + f))
                .await?;
        }
        w.google.reset_stats().await?;
        let window = Window::open(&w.google);
        let (o, mut times, missed) = w.daemon.timed_cycle(now_ms()).await?;
        let m = window.close(&w.google);
        let stats = w.google.stats().await?;
        let (p50, p99) = measure::p50_p99(&mut times);
        let mut table_times = w.daemon.sync_times_ms(o.started_at).await?;
        let (table_p50, table_p99) = measure::p50_p99(&mut table_times);
        let missing = ((n * files) as u64).abs_diff(o.files_changed);
        let mut r = Report::new("first-sync");
        r.set("users", n)
            .set("files_per_user", files)
            .set("file_bytes", size)
            .set("settings", settings(&t))
            .set("elapsed_s", m.secs)
            .set("users_per_s", n as f64 / m.secs)
            .set("mb_per_s", o.bytes_down as f64 / 1e6 / m.secs)
            .set("api_calls_per_user", stats.drive_calls() as f64 / n as f64)
            .set("token_calls", stats.count("token"))
            .set("p50_ms", p50)
            .set("p99_ms", p99)
            .set("sync_time", SYNC_TIME)
            .set("sync_time_events_missed", missed)
            .set("p50_ms_syncs_table", table_p50)
            .set("p99_ms_syncs_table", table_p99)
            .set("files_mirrored", o.files_changed)
            .set(
                "errors",
                cycle_errors(&o, n)
                    + seeded.errors
                    + missing
                    + (o.bytes_down).abs_diff((n * files * size) as u64).min(1),
            )
            .set("seed_s", seeded.secs);
        finish(&mut r, &m, &w.google, &stats, n as f64);
        reports.push(r);
        w.stop(env).await?;
    }
    Ok(reports)
}

/// `size` bytes that differ per `seed`, so every file has its own md5.
fn payload(size: usize, seed: usize) -> Vec<u8> {
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// idle-cycle with `instances` daemons sharing one database. On PostgreSQL each call gets a
/// freshly seeded database of its own, dropped afterwards (unless --keep) even when the run
/// fails.
/// How the daemon reaches fake-google in idle-cycle.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// Added by fake-google to every Drive call of the measured cycle.
    pub latency_ms: u64,
    /// `[google] http_version`.
    pub http_version: HttpVersion,
}

pub async fn idle_cycle(
    env: &Env,
    n: usize,
    link: Link,
    seeding: Seeding,
    tuning: &TuningArgs,
    backend: &Backend,
    instances: usize,
) -> anyhow::Result<Vec<Report>> {
    let setup = Setup {
        link,
        direct: seed_directly(seeding, n),
        instances,
    };
    match backend {
        Backend::Sqlite => {
            anyhow::ensure!(
                instances == 1,
                "{instances} instances need a shared PostgreSQL database (--database)"
            );
            idle_cycle_on(env, n, setup, tuning, None).await
        }
        Backend::Postgres(server) => {
            let db = ScratchDatabase::create(server).await?;
            let measured = idle_cycle_on(env, n, setup, tuning, Some(&db.url)).await;
            let dropped = db.finish(env.keep).await;
            let reports = measured?;
            dropped?;
            Ok(reports)
        }
    }
}

/// Whether `n` users are seeded straight into the database rather than through the intake.
fn seed_directly(seeding: Seeding, n: usize) -> bool {
    match seeding {
        Seeding::Auto => n > DIRECT_SEED_ABOVE,
        Seeding::Intake => false,
        Seeding::Direct => true,
    }
}

/// An idle-cycle run's fixed choices.
#[derive(Debug, Clone, Copy)]
struct Setup {
    link: Link,
    /// Users written straight into the database ([`seed`]) instead of signed in.
    direct: bool,
    instances: usize,
}

/// How the users of an idle-cycle run came to be, for its report.
struct Prepared {
    seeding: &'static str,
    seed_s: f64,
    /// The unmeasured first cycle's seconds (none when seeded directly).
    first_sync_s: Option<f64>,
    errors: u64,
}

/// Seeds `n` users (`i0000000`, …) as `direct` says and brings them to idle.
async fn prepare_idle(w: &World, n: usize, direct: bool) -> anyhow::Result<Prepared> {
    if direct {
        let mirror = w.dir.path().join("mirror");
        let keyring = appdata_syncd::crypto::Keyring::from_key(&crate::daemon::BENCH_KEY);
        let secs = seed::direct(&w.google, &w.daemon.store, &keyring, &mirror, "i", n).await?;
        log(format!(
            "seeded {n} users directly in the database, emulator and mirror in {secs:.1} s \
             (no sign-in, no first sync)"
        ));
        return Ok(Prepared {
            seeding: "direct: rows, sealed tokens, page tokens and empty manifests written by \
                      the bench; no sign-in, no first sync",
            seed_s: secs,
            first_sync_s: None,
            errors: 0,
        });
    }
    let seeded = w.seed("i", n).await?;
    log(format!(
        "seeded {n} users through the intake in {:.1} s ({:.0}/s)",
        seeded.secs,
        n as f64 / seeded.secs
    ));
    let (first_s, first_errors) = first_cycle(w, n).await?;
    Ok(Prepared {
        seeding: "intake: sign-ins through POST /authcode, then an unmeasured first cycle",
        seed_s: seeded.secs,
        first_sync_s: Some(first_s),
        errors: seeded.errors + first_errors,
    })
}

/// Seeding, the measured cycle and its report, in that order and in one place, so that what
/// the measurement window includes (and excludes) reads top to bottom.
async fn idle_cycle_on(
    env: &Env,
    n: usize,
    setup: Setup,
    tuning: &TuningArgs,
    database_url: Option<&str>,
) -> anyhow::Result<Vec<Report>> {
    let Setup {
        link,
        direct,
        instances,
    } = setup;
    let latency_ms = link.latency_ms;
    let w = World::start_shared(
        env,
        Tuning::raised(),
        database_url,
        instances,
        link.http_version,
    )
    .await?;
    let prepared = prepare_idle(&w, n, direct).await?;
    if latency_ms > 0 {
        w.google
            .set_faults(json!({ "drive": { "latency_ms": latency_ms } }))
            .await?;
    }
    let mut reports = Vec::new();
    for t in profiles(tuning, Profiles::Both) {
        for d in w.instances() {
            d.tune(t).await;
        }
        w.google.reset_stats().await?;
        // One stamp for all, as a cron tick gives: the instances share this cycle's users.
        let cycle = now_ms();
        let window = Window::open(&w.google);
        let counted = statements::Counts::now();
        let runs =
            futures::future::try_join_all(w.instances().map(|d| d.timed_cycle(cycle))).await?;
        let m = window.close(&w.google);
        let counted = statements::Counts::now().since(counted);
        let stats = w.google.stats().await?;
        let shares: Vec<u64> = runs.iter().map(|(o, _, _)| o.users).collect();
        if instances > 1 {
            log(format!("users synced by each instance: {shares:?}"));
        }
        let (o, mut times, missed) = pooled(runs);
        let (p50, p99) = measure::p50_p99(&mut times);
        // The database is shared: instance 0 sees every instance's rows.
        let mut table_times = w.daemon.sync_times_ms(o.started_at).await?;
        let (table_p50, table_p99) = measure::p50_p99(&mut table_times);
        let mut r = Report::new("idle-cycle");
        if database_url.is_some() {
            r.set("backend", "postgres").set("instances", instances);
        }
        r.set("users", n)
            .set("latency_ms", latency_ms)
            .set("settings", settings(&t))
            .set("http_version", http_version_name(link.http_version))
            .set("elapsed_s", m.secs)
            .set("users_per_s", n as f64 / m.secs)
            .set("us_per_user", m.secs * 1e6 / n as f64)
            .set(
                "drive_calls_per_user",
                stats.drive_calls() as f64 / n as f64,
            )
            .set("token_refreshes", stats.count("token"))
            .set("daemon_token_refreshes", o.token_refreshes)
            // Google calls of the measured cycle by the protocol fake-google saw.
            .set("http_requests", stats.http_versions());
        if database_url.is_some() {
            r.set("synced_per_instance", &shares);
        }
        r.set("p50_ms", p50)
            .set("p99_ms", p99)
            .set("sync_time", SYNC_TIME)
            .set("sync_time_events_missed", missed)
            .set("p50_ms_syncs_table", table_p50)
            .set("p99_ms_syncs_table", table_p99)
            .set("db_statements", counted.total())
            .set(
                "db_statements_per_user",
                counted.total() as f64 / n.max(1) as f64,
            )
            .set("db_statements_by_kind", counted.by_kind())
            .set("db_statements_counted", statements::WHAT)
            .set("errors", cycle_errors(&o, n) + prepared.errors)
            .set("seeding", prepared.seeding)
            .set("seed_s", prepared.seed_s)
            .set("seed_users_per_s", n as f64 / prepared.seed_s)
            .set("first_sync_s", prepared.first_sync_s);
        finish(&mut r, &m, &w.google, &stats, n as f64);
        reports.push(r);
    }
    w.stop(env).await?;
    Ok(reports)
}

pub async fn churn(
    env: &Env,
    n: usize,
    change_rate: f64,
    tuning: &TuningArgs,
) -> anyhow::Result<Vec<Report>> {
    let w = World::start(env, Tuning::raised()).await?;
    let seeded = w.seed("ch", n).await?;
    let all: Vec<&String> = seeded.subs.iter().collect();
    w.put_files(&all, "state.json", |i| payload(1024, i))
        .await?;
    let (_, first_errors) = first_cycle(&w, n).await?;
    let changed = ((n as f64 * change_rate.clamp(0.0, 1.0)).round() as usize).min(n);
    let mut reports = Vec::new();
    for (round, t) in profiles(tuning, Profiles::Raised).into_iter().enumerate() {
        // Spread the changed users evenly, a different set each round.
        let subs: Vec<&String> = (0..changed)
            .map(|j| &seeded.subs[(j * n / changed.max(1) + round) % n])
            .collect();
        w.put_files(&subs, "state.json", |i| payload(1024, n * (round + 1) + i))
            .await?;
        w.daemon.tune(t).await;
        w.google.reset_stats().await?;
        let window = Window::open(&w.google);
        let (o, mut times, missed) = w.daemon.timed_cycle(now_ms()).await?;
        let m = window.close(&w.google);
        let stats = w.google.stats().await?;
        let (p50, p99) = measure::p50_p99(&mut times);
        let mut table_times = w.daemon.sync_times_ms(o.started_at).await?;
        let (table_p50, table_p99) = measure::p50_p99(&mut table_times);
        let mut r = Report::new("churn");
        r.set("users", n)
            .set("change_rate", change_rate)
            .set("changed_users", changed)
            .set("settings", settings(&t))
            .set("elapsed_s", m.secs)
            .set("users_per_s", n as f64 / m.secs)
            .set(
                "drive_calls_per_user",
                stats.drive_calls() as f64 / n as f64,
            )
            .set("token_refreshes", stats.count("token"))
            .set("files_updated", o.files_changed)
            .set("p50_ms", p50)
            .set("p99_ms", p99)
            .set("sync_time", SYNC_TIME)
            .set("sync_time_events_missed", missed)
            .set("p50_ms_syncs_table", table_p50)
            .set("p99_ms_syncs_table", table_p99)
            .set(
                "errors",
                cycle_errors(&o, n)
                    + seeded.errors
                    + first_errors
                    + o.files_changed.abs_diff(changed as u64),
            );
        finish(&mut r, &m, &w.google, &stats, n as f64);
        reports.push(r);
    }
    w.stop(env).await?;
    Ok(reports)
}

/// Sizes for `all`: `quick` keeps the total well under two minutes on 2 cores (without the
/// per-minute quota, which takes minutes by nature; the full list has it). Each scenario
/// runs in its own child process (this binary again), so that one scenario's peak RSS is not
/// inflated by memory an earlier one left with the allocator. True when all were clean.
pub async fn all(env: &Env, json: bool, quick: bool) -> anyhow::Result<bool> {
    let runs: Vec<Vec<String>> = if quick {
        vec![
            args("intake --users 300 --concurrency 1,16,64"),
            args("first-sync --users 200 --files 5 --size 4096"),
            args("idle-cycle --users 500 --settings both"),
            args("idle-cycle --users 500 --latency-ms 50 --settings both"),
            args("churn --users 500 --change-rate 0.1"),
            args("spread --users 300 --interval-s 4"),
            args("quota --users 1000 --quota-rps 200"),
            // --window minute needs more than a minute to bind: not in --quick.
            args("quota --users 300 --quota-rps 200 --other-tenant 0.3"),
        ]
    } else {
        vec![
            args("intake --users 2000 --concurrency 1,16,64"),
            args("first-sync --users 1000 --files 10 --size 16384"),
            args("idle-cycle --users 1000,10000 --settings both"),
            args("idle-cycle --users 10000 --latency-ms 50 --settings both"),
            args("churn --users 10000 --change-rate 0.1"),
            args("spread --users 10000 --interval-s 60"),
            args("idle-cycle --users 10000 --latency-ms 50 --settings raised --http-version 2"),
            args("quota --users 3000 --quota-rps 200"),
            args("quota --users 6000 --quota-rps 200 --other-tenant 0.3"),
            args("quota --window minute --quota-rps 100"),
        ]
    };
    let exe = std::env::current_exe()?;
    let mut clean = true;
    for run in runs {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(&run);
        if json {
            cmd.arg("--json");
        }
        if env.keep {
            cmd.arg("--keep");
        }
        if let Some(dir) = &env.parent_dir {
            cmd.arg("--dir").arg(dir);
        }
        let status = cmd.kill_on_drop(true).status().await?;
        if !status.success() {
            log(format!("{} failed ({status})", run.join(" ")));
            clean = false;
        }
    }
    Ok(clean)
}

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}
