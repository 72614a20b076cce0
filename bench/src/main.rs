//! appdata-syncd-bench: runs the real daemon code (in this process, with a real SQLite file,
//! or for idle-cycle optionally several daemons on one PostgreSQL database) against fake-google
//! (in a child process: this same binary, hidden `fake-google` subcommand) on loopback, and
//! reports one table, or with `--json` one JSON line, per scenario.
//!
//! Reading order:
//! - [`measure`]: CPU time, peak RSS, load average, percentiles.
//! - [`google`]: the fake-google child process and its `/_emulator/` control API.
//! - [`database`]: SQLite in the scenario directory, or a scratch PostgreSQL database.
//! - [`daemon`]: the daemon built from a `Config` exactly as `appdata-syncd` builds it.
//! - [`scenarios`]: intake, first-sync, idle-cycle, spread, churn, quota, history, data-api, all.
//! - [`seed`]: idle-cycle's users above 100,000, written straight into the database and emulator.
//! - [`statements`]: counts the daemon's SQL statements (sqlx's tracing events).
//! - [`tenant`]: quota's other client of the same Google project, at a fixed rate.
//! - [`soak`]: M minutes of sign-ins, changes, faults, admin commands and restarts, then the
//!   invariants; its daemon runs in a child process (hidden `soak-daemon`) so it can be killed.
//! - [`report`]: one [`report::Report`] per scenario, printed as a table or a JSON line.
//!
//! Peak RSS is this process's `VmHWM` (reset per scenario through `/proc/self/clear_refs`):
//! the daemon plus the benchmark's own bookkeeping and, in `intake`, its HTTP load client;
//! the emulator's memory and CPU are reported separately. The exit status is 1 when any
//! scenario had errors (failed sign-ins or syncs), so CI can run `all --quick` as a smoke test.

mod daemon;
mod database;
mod google;
mod measure;
mod report;
mod scenarios;
mod seed;
mod soak;
mod statements;
mod tenant;

use std::path::PathBuf;
use std::process::ExitCode;

use appdata_syncd::google::HttpVersion;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "appdata-syncd-bench",
    about = "Benchmarks appdata-syncd against fake-google on loopback, with a real SQLite file \
             (idle-cycle: or PostgreSQL, with several instances)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Print one JSON object per scenario, each on its own line, instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Parent directory for each scenario's state (SQLite file, mirror); default: the system
    /// temp directory. Keep it on a real disk: SQLite's fsyncs are part of what is measured.
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// Keep each scenario's state directory (and PostgreSQL database) instead of deleting it.
    #[arg(long, global = true)]
    keep: bool,
}

#[derive(Subcommand)]
enum Scenario {
    /// Sign-ins per second through POST /authcode, and p50/p99 latency, per client concurrency.
    Intake {
        /// New users signed in at each concurrency.
        #[arg(long, default_value_t = 2000)]
        users: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        concurrency: Vec<usize>,
    },
    /// The first sync of users who each have F files of BYTES: users/s, MB/s, calls per user.
    FirstSync {
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        users: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        files: usize,
        #[arg(long, default_value_t = 16384)]
        size: usize,
        #[command(flatten)]
        tuning: TuningArgs,
    },
    /// One full cycle over N already-synced users with no changes.
    IdleCycle {
        /// Several sizes (comma-separated) show whether time per user stays flat.
        #[arg(long, value_delimiter = ',', default_value = "10000")]
        users: Vec<usize>,
        /// Latency fake-google adds to every Drive call during the measured cycle.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// `[google] http_version` of the daemon: 1.1 (a pool of keep-alive connections) or 2
        /// (h2c with prior knowledge, requests multiplexed on few connections).
        #[arg(long, value_name = "1.1|2", default_value = "1.1",
              value_parser = daemon::parse_http_version)]
        http_version: HttpVersion,
        /// A PostgreSQL server, postgres://USER@HOST:PORT: each run creates a database of its
        /// own there and drops it at the end (unless --keep). Default: an SQLite file.
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// Daemons sharing the database, each count (comma-separated) measured on its own
        /// freshly seeded database. More than 1 needs --database.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        instances: Vec<usize>,
        /// How users are seeded: `intake` (sign-ins through POST /authcode, then an unmeasured
        /// first cycle), `direct` (rows, tokens, page tokens and manifests written straight
        /// into the database, emulator and mirror; no sign-in, no first sync) or `auto`:
        /// direct above 100,000 users.
        #[arg(long, value_enum, default_value_t = scenarios::Seeding::Auto)]
        seed: scenarios::Seeding,
        #[command(flatten)]
        tuning: TuningArgs,
    },
    /// One cycle over N idle users spread over an interval, as a schedule's tick fires it: the
    /// per-second Drive request rate over the whole interval (max/mean).
    Spread(scenarios::SpreadArgs),
    /// A cycle in which a fraction R of the (already-synced) users changed one file.
    Churn {
        #[arg(long, value_delimiter = ',', default_value = "10000")]
        users: Vec<usize>,
        #[arg(long, default_value_t = 0.1)]
        change_rate: f64,
        #[command(flatten)]
        tuning: TuningArgs,
    },
    /// fake-google enforces the project's Drive quota, Q requests/s or Q·60 a minute,
    /// optionally shared with another tenant; the daemon must use what is left without
    /// failing a sync.
    Quota(QuotaArgs),
    /// The data API: a consumer draining the change feed, concurrent content reads by id,
    /// and webhook delay from a sync's commit to the receiver.
    DataApi(DataApiArgs),
    /// Database size over many cycles (syncs recorded straight through the daemon's recorder,
    /// pruned by its prune task's function): flat once the history is full?
    History(scenarios::HistoryArgs),
    /// Sign-ins, emulator changes, random faults, admin commands and daemon restarts for M
    /// minutes, then the invariants; exit status 1 on any violation.
    Soak {
        #[arg(long, default_value_t = 5)]
        minutes: u64,
        #[arg(long, default_value_t = 2000)]
        users: usize,
    },
    /// Every scenario at small sizes.
    All {
        /// Smallest sizes: finishes in well under two minutes on a 2-core machine.
        #[arg(long)]
        quick: bool,
    },
    /// Internal: serve fake-google for the parent benchmark process.
    #[command(hide = true)]
    FakeGoogle {
        #[arg(long)]
        write_client_secret: PathBuf,
    },
    /// Internal: the daemon of `soak` (what `appdata-syncd serve` runs).
    #[command(hide = true)]
    SoakDaemon {
        #[arg(long)]
        config: PathBuf,
    },
}

/// Which daemon settings the measured cycle runs with.
#[derive(Args, Clone, Debug)]
pub struct TuningArgs {
    /// `defaults` (the daemon's config defaults), `raised` (limiter off, concurrency 256) or
    /// `both` (the same seeded users measured once with each).
    /// Default: `both` for idle-cycle, `raised` for first-sync and churn.
    #[arg(long, value_enum)]
    pub settings: Option<Profiles>,
    /// Overrides [sync] concurrency of the `raised` profile.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Overrides [sync] max_requests_per_second of the `raised` profile.
    #[arg(long)]
    pub max_rps: Option<u32>,
}

/// The quota scenario's quota and who else uses it.
#[derive(Args, Clone, Debug)]
pub struct QuotaArgs {
    /// Already-synced users, each synced once (one Drive call each). Default: 3000, or with
    /// `--window minute` 120·Q (two minutes of work at Q/s).
    #[arg(long)]
    pub users: Option<usize>,
    /// Q: the project's quota in requests per second.
    #[arg(long, default_value_t = 200)]
    pub quota_rps: u64,
    /// `second`: fake-google's `quota_rps` = Q (a fixed one-second window; 429 beyond it).
    /// `minute`: `quota_per_minute` = Q·60 (a sliding 60 s window; 403 rateLimitExceeded).
    #[arg(long, value_enum, default_value_t = QuotaWindow::Second)]
    pub window: QuotaWindow,
    /// Another client of the same project sends Drive requests at this fraction of Q (0 to
    /// below 1) with its own user and token; the daemon is not told.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub other_tenant: f64,
    /// [sync] max_requests_per_second, the limiter's ceiling (default: Q, or 2·Q with
    /// `--window minute`, so that the daemon must find the rate from Google's refusals).
    #[arg(long)]
    pub max_rps: Option<u32>,
    /// [sync] concurrency for the measured cycle (default: the daemon's default).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Daemons sharing one PostgreSQL database (and so the project's rate, `--max-rps`);
    /// more than 1 needs --database.
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// A PostgreSQL server, postgres://USER@HOST:PORT: the run creates a database of its own
    /// there (default: SQLite).
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
}

/// The data-api scenario's sizes.
#[derive(Args, Clone, Debug)]
pub struct DataApiArgs {
    /// Users signed in and first-synced before anything is measured.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Files per user (the feed then holds users·files `file.added` changes).
    #[arg(long, default_value_t = 20)]
    pub files: usize,
    /// Bytes per file.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    /// Concurrent readers of content, each its own keep-alive connection.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long the readers read.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Webhook rounds (one file of one user changed, that user synced), then a burst of as
    /// many users changed at once and synced by one cycle.
    #[arg(long, default_value_t = 200)]
    pub rounds: usize,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaWindow {
    Second,
    Minute,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profiles {
    Defaults,
    Raised,
    Both,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("appdata-syncd-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.scenario {
            Scenario::FakeGoogle {
                write_client_secret,
            } => google::serve_child(&write_client_secret)
                .await
                .map(|()| true),
            Scenario::SoakDaemon { config } => soak::serve_daemon(&config).await.map(|()| true),
            scenario => {
                let out = report::Output { json: cli.json };
                let env = scenarios::Env {
                    parent_dir: cli.dir,
                    keep: cli.keep,
                };
                run(scenario, &env, &out).await
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("appdata-syncd-bench: at least one scenario had errors (see \"errors\")");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("appdata-syncd-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `scenario`, printing each report as it is ready; true when none had errors.
/// One arm per scenario, a dispatch table: split up, each scenario's arguments would be
/// read far from the call they make.
async fn run(
    scenario: Scenario,
    env: &scenarios::Env,
    out: &report::Output,
) -> anyhow::Result<bool> {
    use scenarios as s;
    let mut clean = true;
    let mut emit = |r: report::Report| {
        clean &= r.errors() == 0;
        out.print(&r);
    };
    match scenario {
        Scenario::Intake { users, concurrency } => {
            for r in s::intake(env, users, &concurrency).await? {
                emit(r);
            }
        }
        Scenario::FirstSync {
            users,
            files,
            size,
            tuning,
        } => {
            for n in users {
                for r in s::first_sync(env, n, files, size, &tuning).await? {
                    emit(r);
                }
            }
        }
        Scenario::IdleCycle {
            users,
            latency_ms,
            http_version,
            database,
            instances,
            seed,
            tuning,
        } => {
            statements::install();
            let backend = database::Backend::parse(database.as_deref())?;
            if instances.contains(&0) {
                anyhow::bail!("--instances: each count must be at least 1");
            }
            if let (database::Backend::Sqlite, Some(many)) =
                (&backend, instances.iter().find(|&&k| k > 1))
            {
                anyhow::bail!(
                    "--instances {many} needs --database postgres://USER@HOST:PORT: several \
                     daemons share users only through a PostgreSQL database"
                );
            }
            let link = s::Link {
                latency_ms,
                http_version,
            };
            for n in users {
                for &k in &instances {
                    for r in s::idle_cycle(env, n, link, seed, &tuning, &backend, k).await? {
                        emit(r);
                    }
                }
            }
        }
        Scenario::Churn {
            users,
            change_rate,
            tuning,
        } => {
            for n in users {
                for r in s::churn(env, n, change_rate, &tuning).await? {
                    emit(r);
                }
            }
        }
        Scenario::Quota(args) => emit(s::quota(env, &args).await?),
        Scenario::Spread(args) => emit(s::spread(env, &args).await?),
        Scenario::DataApi(args) => {
            for r in s::data_api(env, &args).await? {
                emit(r);
            }
        }
        Scenario::History(args) => emit(s::history(env, &args).await?),
        Scenario::All { quick } => {
            let started = std::time::Instant::now();
            let all_clean = s::all(env, out.json, quick).await?;
            eprintln!(
                "all{}: {:.1} s in total",
                if quick { " --quick" } else { "" },
                started.elapsed().as_secs_f64()
            );
            return Ok(all_clean);
        }
        Scenario::Soak { minutes, users } => emit(soak::soak(env, minutes, users).await?),
        Scenario::FakeGoogle { .. } | Scenario::SoakDaemon { .. } => {
            unreachable!("handled in main")
        }
    }
    Ok(clean)
}
