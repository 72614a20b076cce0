//! `soak`: M minutes of everything at once against one daemon, then the invariants.
//!
//! The daemon runs as a child process (this binary's hidden `soak-daemon` subcommand, which is
//! `appdata-syncd serve` with signals), on a real 5-second cron schedule. A child process,
//! not an in-process [`appdata_syncd::lifecycle::App`], because an abrupt restart must be a
//! kill: aborting the task that runs `run_until_stopped` leaves the cron job, the resync loop
//! and the admin server running in this process, a second daemon on the same files.
//!
//! While the clock runs, concurrent workers drive it ([`state::Soak`] holds what they share):
//! - sign-ins: half the users at once, the rest as a trickle, and re-sign-ins all along;
//! - revokes: grants revoked on the emulator, some signed in again at once, some later;
//! - emulator changes: files created, updated, deleted and renamed in users' appDataFolders;
//! - faults: windows of Drive/token/JWKS errors, resets and latency, cleared after seconds;
//! - admin: status, users, user, files, resync (one, --full, --wait, --all), pause/resume,
//!   push, log-level, reload and forget through the admin socket;
//! - restarts: SIGTERM (graceful) or SIGKILL (abrupt), then a new daemon on the same state.
//!
//! Then the faults are cleared, paused users resumed, and two `resync --all` rounds run to
//! completion; the daemon is stopped with SIGTERM and [`check()`] compares the model the workers
//! kept ([`state::Model`]) with the database, the mirror directory and the emulator.
//!
//! The files, in reading order:
//! - this one: the scenario's entry, [`soak`], and its report;
//! - [`config`]: the state directory and the daemon's config.toml;
//! - [`process`]: the daemon child process (start, SIGTERM, SIGKILL) and its side, `soak-daemon`;
//! - [`state`]: what the workers share, and the model; [`calls`]: the emulator, intake and
//!   admin socket calls they make;
//! - the load: [`accounts`] (sign-ins, revokes), [`drive_changes`], [`mod@faults`],
//!   [`admin_commands`], [`mod@restarts`];
//! - [`mod@finish`]: the final resyncs; [`mod@check`] and [`secrets`]: the invariants.

mod accounts;
mod admin_commands;
mod big_user;
mod calls;
mod check;
mod config;
mod disk_full;
mod drive_changes;
mod faults;
mod finish;
mod idle_sockets;
mod process;
mod restarts;
mod secrets;
mod state;
mod trickle;

pub use process::serve_daemon;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use rand::Rng;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::accounts::{revokes, sign_ins, watch_sign_ins};
use self::admin_commands::admin;
use self::big_user::big_user;
use self::check::{check, Checked};
use self::config::write_config;
use self::disk_full::{disk_full, Tmpfs};
use self::drive_changes::changes;
use self::faults::faults;
use self::finish::finish;
use self::idle_sockets::{idle_sockets, raise_fd_limit};
use self::process::DaemonProc;
use self::restarts::restarts;
use self::state::{lock, Counts, Soak};
use self::trickle::tricklers;
use crate::google::FakeGoogle;
use crate::report::Report;
use crate::scenarios::Env;

/// Violations printed to stderr; all are counted.
const SHOWN_VIOLATIONS: usize = 20;

/// The scenario: emulator and daemon up, every worker for `minutes`, then [`finish`], [`check()`]
/// and the report, whose `errors` are the invariant violations.
pub async fn soak(env: &Env, minutes: u64, users: usize) -> anyhow::Result<Report> {
    raise_fd_limit();
    let dir = env.scratch_dir("appdata-syncd-soak-")?;
    let google = FakeGoogle::spawn(dir.path()).await?;
    let disk = Tmpfs::mount(&dir.path().join("disk"));
    let paths = write_config(dir.path(), disk.as_ref().map(|d| d.path.as_path()), &google)?;
    let daemon = DaemonProc::start(&paths).await?;
    let soak = Arc::new(Soak::new(google, paths, daemon, users)?);
    log(format!(
        "{minutes} min, {users} users, state in {}",
        soak.paths.dir.display()
    ));
    let started = Instant::now();
    let disk_path = disk.as_ref().map(|d| d.path.clone());
    run_workers(&soak, Duration::from_secs(minutes * 60), started, disk_path).await?;
    let soak_secs = started.elapsed().as_secs_f64();
    log("time is up: clearing faults, final resyncs, stopping the daemon");
    finish(&soak).await?;
    let checks = check(&soak).await?;
    let report = report(&soak, minutes, users, soak_secs, checks).await;
    let violations = lock(&soak.violations).clone();
    print_violations(&violations);
    if let Ok(soak) = Arc::try_unwrap(soak) {
        soak.google.stop().await;
    }
    if env.keep || !violations.is_empty() {
        if let Some(disk) = &disk {
            // The tmpfs goes with this function: its database and mirror are copied out.
            disk.copy_to(&dir.path().join("disk-kept"))?;
        }
        eprintln!("kept {}", dir.keep().display());
    }
    Ok(report)
}

/// Runs every load worker until `duration` has passed since `started`; an error if one of them
/// ends before that.
async fn run_workers(
    soak: &Arc<Soak>,
    duration: Duration,
    started: Instant,
    disk: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let mut workers = JoinSet::new();
    workers.spawn(sign_ins(soak.clone(), stop.clone(), duration));
    workers.spawn(revokes(soak.clone(), stop.clone()));
    workers.spawn(changes(soak.clone(), stop.clone()));
    workers.spawn(faults(soak.clone(), stop.clone()));
    workers.spawn(admin(soak.clone(), stop.clone()));
    workers.spawn(restarts(soak.clone(), stop.clone(), duration));
    workers.spawn(progress(soak.clone(), stop.clone(), started));
    // The attackers, each with its invariants.
    workers.spawn(watch_sign_ins(soak.clone(), stop.clone()));
    workers.spawn(idle_sockets(soak.clone(), stop.clone()));
    workers.spawn(tricklers(soak.clone(), stop.clone()));
    workers.spawn(big_user(soak.clone(), stop.clone()));
    workers.spawn(disk_full(soak.clone(), stop.clone(), duration, disk));
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        Some(done) = workers.join_next() => {
            // A worker only ends early on an error it cannot go on from.
            stop.cancel();
            while workers.join_next().await.is_some() {}
            done??;
            bail!("a soak worker ended early");
        }
    }
    stop.cancel();
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

/// The first [`SHOWN_VIOLATIONS`] to stderr, and how many more there are.
fn print_violations(violations: &[String]) {
    for v in violations.iter().take(SHOWN_VIOLATIONS) {
        eprintln!("[soak] VIOLATION: {v}");
    }
    if violations.len() > SHOWN_VIOLATIONS {
        eprintln!(
            "[soak] ... and {} more violations",
            violations.len() - SHOWN_VIOLATIONS
        );
    }
}

/// One line a minute, so a long run shows it is alive.
async fn progress(
    soak: Arc<Soak>,
    stop: CancellationToken,
    started: Instant,
) -> anyhow::Result<()> {
    while pause(&stop, Duration::from_secs(60)).await {
        let (subs, acked, revoked) = {
            let m = lock(&soak.model);
            (m.subs.len(), m.acked.len(), m.revoked.len())
        };
        log(format!(
            "{:.0} min: {subs} accounts, {acked} signed in, {revoked} revoked, {} changes, \
             {} faults, {} admin commands, {} restarts",
            started.elapsed().as_secs_f64() / 60.0,
            soak.counts.group("change").values().sum::<u64>(),
            soak.counts.group("fault").values().sum::<u64>(),
            soak.counts.group("admin").values().sum::<u64>(),
            soak.counts.group("restart").values().sum::<u64>(),
        ));
    }
    Ok(())
}

async fn report(soak: &Soak, minutes: u64, users: usize, secs: f64, c: Checked) -> Report {
    let n = &soak.counts;
    let changes = n.group("change");
    let faults = n.group("fault");
    let admin = n.group("admin");
    let restarts = n.group("restart");
    let violations = lock(&soak.violations).len();
    let mut r = Report::new("soak");
    r.set("minutes", minutes)
        .set("users", users)
        .set("soak_s", secs)
        .set("accounts_created", lock(&soak.model).subs.len())
        .set("sign_ins", sign_in_counts(n))
        .set(
            "sign_ins_refused",
            n.group("signin")
                .into_iter()
                .filter(|(k, _)| k.starts_with("refused_"))
                .collect::<BTreeMap<_, _>>(),
        )
        .set("revokes", n.get("revoke"))
        .set("emulator_changes", changes.values().sum::<u64>())
        .set("emulator_changes_by_kind", &changes)
        .set("emulator_changes_lost_race", n.get("change_lost_race"))
        .set("faults_injected", faults.values().sum::<u64>())
        .set("faults_by_kind", &faults)
        .set("admin_commands", admin.values().sum::<u64>())
        .set("admin_by_command", &admin)
        .set("admin_results", n.group("admin_result"))
        .set("restarts", restarts.values().sum::<u64>())
        .set("restarts_by_kind", &restarts)
        .set("sign_in_watch", n.group("signin_watch"))
        .set("idle_sockets", n.group("idle"))
        .set("trickling_clients", n.group("trickle"))
        .set("disk_full", disk_full_figures(n, &c))
        .set("big_user", json!({ "mirror_max_bytes": n.get("big_user.mirror_max_bytes"), "over_quota": c.big_user_over_quota }))
        .set("cycles", c.cycles)
        .set("cycle_ticks_skipped", c.cycles_skipped)
        .set("syncs", &c.syncs)
        .set("max_api_calls_per_sync", c.max_api_calls_per_sync)
        .set("final_users_by_state", &c.users_by_state)
        .set("files_checked", c.files_mirrored)
        .set(
            "secrets_scan",
            json!({ "secrets": c.secrets_scanned, "mib": c.bytes_scanned as f64 / 1048576.0 }),
        )
        .set(
            "invariants",
            "acknowledged sign-ins present with a credential; mirror = Drive (ids, names, md5s, \
             bytes) for every active user; PRAGMA integrity_check ok; no .tmp leftovers; \
             reauth_required = exactly the users we revoked; forgotten users gone; no issued \
             secret in the db, -wal, -shm, mirror or log; no daemon crash or slow stop; \
             a sign-in acknowledged in every 20 s; silent connections closed within \
             first_byte_timeout; daemon descriptors under max_connections + 512; trickling \
             clients cut off within the head/body timeout; the 2 GiB user over_quota, its mirror \
             under max_user_bytes throughout and filled up to it at the end, no other user \
             over_quota; with the disk under the floor a sign-in acknowledged",
        )
        .set("invariant_violations", violations)
        .set("errors", violations);
    r
}

fn disk_full_figures(n: &Counts, c: &Checked) -> Value {
    let mut figures = json!(n.group("disk_full"));
    figures["syncs_refused_by_floor"] = json!(c.syncs_refused_by_floor);
    figures
}

fn sign_in_counts(n: &Counts) -> Value {
    json!({
        "attempted": n.get("signin.attempted"),
        "acknowledged": n.get("signin.acknowledged"),
        "new_users": n.get("signin.new_user"),
        "again": n.get("signin.again"),
        "daemon_down": n.get("signin.daemon_down"),
        "no_answer": n.get("signin.no_answer"),
    })
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[soak] {}", msg.as_ref());
}

fn secs(lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64(rand::thread_rng().gen_range(lo..hi))
}

/// Sleeps `d`, or less if `stop` comes first; false when stopped.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = stop.cancelled() => false,
    }
}
