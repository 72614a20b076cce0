//! `soak`: M minutes of everything at once against one daemon, then the invariants.
//!
//! The daemon runs as a child process (this binary's hidden `soak-daemon` subcommand, which is
//! `appdata-syncd serve` with signals), on a real 5-second cron schedule. A child process,
//! not an in-process [`appdata_syncd::lifecycle::App`], because an abrupt restart must be a
//! kill: aborting the task that runs `run_until_stopped` leaves the cron job, the resync loop
//! and the admin server running in this process, a second daemon on the same files.
//!
//! While the clock runs, concurrent workers drive it ([`Soak`] holds what they share):
//! - sign-ins: half the users at once, the rest as a trickle, and re-sign-ins all along;
//! - revokes: grants revoked on the emulator, some signed in again at once, some later;
//! - emulator changes: files created, updated, deleted and renamed in users' appDataFolders;
//! - faults: windows of Drive/token/JWKS errors, resets and latency, cleared after seconds;
//! - admin: status, users, user, files, resync (one, --full, --wait, --all), pause/resume,
//!   push, log-level, reload and forget through the admin socket;
//! - restarts: SIGTERM (graceful) or SIGKILL (abrupt), then a new daemon on the same state.
//!
//! Then the faults are cleared, paused users resumed, and two `resync --all` rounds run to
//! completion; the daemon is stopped with SIGTERM and [`check`] compares the model the workers
//! kept ([`Model`]) with the database, the mirror directory and the emulator.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use appdata_syncd::admin::client::AdminClient;
use appdata_syncd::admin::protocol::{Command, Response};
use appdata_syncd::config::{Config, LogFormat};
use appdata_syncd::lifecycle::{run_with_signals, App};
use appdata_syncd::store::users::UserState;
use appdata_syncd::store::Store;
use base64::Engine;
use futures::StreamExt;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;
use tokio::process::{Child, Command as Process};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::daemon::emulator_config;
use crate::google::FakeGoogle;
use crate::report::Report;
use crate::scenarios::Env;

/// The daemon's cron schedule: cycles come on their own, as in production.
const SCHEDULE: &str = "*/5 * * * * *";
/// What the daemon logs: warnings (scanned for secrets) and one line per cycle (counted).
const LOG_FILTER: &str = "warn,appdata_syncd::scheduler=info,appdata_syncd::lifecycle=info";
/// Sign-ins in flight at once.
const SIGN_IN_CONCURRENCY: usize = 8;
/// An emulator user never holds more files than this.
const MAX_FILES: usize = 8;
/// How long a graceful stop (SIGTERM) may take: shutdown_grace 10 s plus the intake drain.
const STOP_TIMEOUT: Duration = Duration::from_secs(90);
/// Violations printed to stderr; all are counted.
const SHOWN_VIOLATIONS: usize = 20;

/// The hidden `soak-daemon` subcommand: what `appdata-syncd serve --config PATH` does.
pub async fn serve_daemon(config: &Path) -> anyhow::Result<()> {
    let config = Config::load(Some(config))?.resolve()?;
    let log = appdata_syncd::telemetry::init(&config.raw.log)?;
    let app = App::build(config, Some(log)).await?;
    run_with_signals(app).await
}

/// What the workers know to be true; [`check`] holds the daemon to it. Operations that change
/// it (sign-in, revoke, forget) take the user with [`Soak::claim`], one at a time per user.
#[derive(Default)]
struct Model {
    /// Every account on the emulator, in creation order.
    subs: Vec<String>,
    busy: HashSet<String>,
    /// A sign-in was acknowledged (200) and no forget succeeded since: present, with a
    /// credential.
    acked: HashSet<String>,
    /// We revoked the grant and no sign-in was acknowledged since: reauth_required at the end.
    revoked: HashSet<String>,
    /// `forget` answered ok and no sign-in was acknowledged since: no rows, no mirror.
    forgotten: HashSet<String>,
    /// A sign-in or forget got no answer (the daemon died mid-request): its state is unknown
    /// until the next acknowledged sign-in, so the state checks leave it out.
    uncertain: HashSet<String>,
    /// Paused through the admin socket, waiting for a resume.
    paused: Vec<String>,
}

/// Counters by name ("signin.ok", "fault.drive_503", "admin.status.ok", ...).
#[derive(Default)]
struct Counts(Mutex<BTreeMap<String, u64>>);

impl Counts {
    fn add(&self, key: impl Into<String>) {
        *lock(&self.0).entry(key.into()).or_default() += 1;
    }

    /// Counters under `prefix.`, without it.
    fn group(&self, prefix: &str) -> BTreeMap<String, u64> {
        let p = format!("{prefix}.");
        lock(&self.0)
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&p).map(|k| (k.to_string(), *v)))
            .collect()
    }

    fn get(&self, key: &str) -> u64 {
        lock(&self.0).get(key).copied().unwrap_or(0)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The state directory's parts, and the intake address the config fixes.
struct Paths {
    dir: PathBuf,
    config: PathBuf,
    db: PathBuf,
    mirror: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// The intake's address: fixed in the config, so it stays across restarts.
    intake: SocketAddr,
}

struct Soak {
    google: FakeGoogle,
    paths: Paths,
    /// `http://127.0.0.1:PORT/authcode`; the port stays across restarts.
    authcode_url: String,
    /// The "Android app" posting auth codes.
    http: reqwest::Client,
    target_users: usize,
    next_user: AtomicUsize,
    model: Mutex<Model>,
    counts: Counts,
    violations: Mutex<Vec<String>>,
    /// The running daemon; the restarter and the final phase take turns.
    daemon: tokio::sync::Mutex<Option<DaemonProc>>,
}

/// A user taken by one operation; dropping it frees the user.
struct Claimed<'a> {
    soak: &'a Soak,
    sub: String,
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        lock(&self.soak.model).busy.remove(&self.sub);
    }
}

impl Soak {
    fn violation(&self, v: String) {
        lock(&self.violations).push(v);
    }

    /// Takes a random user from those `pick` offers, if one is free.
    fn claim(&self, pick: impl Fn(&Model) -> Vec<String>) -> Option<Claimed<'_>> {
        let mut m = lock(&self.model);
        let mut candidates = pick(&m);
        candidates.retain(|s| !m.busy.contains(s));
        let sub = candidates.choose(&mut rand::thread_rng())?.clone();
        m.busy.insert(sub.clone());
        Some(Claimed { soak: self, sub })
    }

    fn random_sub(&self) -> Option<String> {
        lock(&self.model)
            .subs
            .choose(&mut rand::thread_rng())
            .cloned()
    }

    /// A call to the emulator's `/_emulator/` control API, whatever its status.
    async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = self.http.request(
            method.clone(),
            format!("{}/_emulator/{path}", self.google.base),
        );
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
            .await
            .with_context(|| format!("{method} /_emulator/{path}"))
    }

    /// Like [`Soak::raw`], but anything other than 2xx is an error.
    async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = self.raw(method.clone(), path, body).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            bail!("{method} /_emulator/{path}: {status}: {text}");
        }
        Ok(resp)
    }

    /// Mints a code as the app's getServerAuthCode() would and posts it to /authcode.
    async fn sign_in(&self, sub: &str, consent: bool) -> anyhow::Result<()> {
        #[derive(Deserialize)]
        struct Code {
            code: String,
        }
        let code: Code = self
            .control(
                reqwest::Method::POST,
                "authcodes",
                Some(json!({ "sub": sub, "prompt_consent": consent })),
            )
            .await?
            .json()
            .await?;
        self.counts.add("signin.attempted");
        let sent = self
            .http
            .post(&self.authcode_url)
            .form(&[("authCode", code.code)])
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
                self.counts.add("signin.acknowledged");
                let mut m = lock(&self.model);
                m.acked.insert(sub.to_string());
                m.revoked.remove(sub);
                m.forgotten.remove(sub);
                m.uncertain.remove(sub);
            }
            Ok(resp) => {
                // By status and the intake's error code: "refused_502_upstream_error".
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or_default();
                let code = body["error"].as_str().unwrap_or("unknown").to_string();
                self.counts.add(format!("signin.refused_{status}_{code}"));
            }
            Err(e) if e.is_connect() => self.counts.add("signin.daemon_down"),
            Err(_) => {
                // Sent, but the answer never came: it may or may not have been stored.
                self.counts.add("signin.no_answer");
                lock(&self.model).uncertain.insert(sub.to_string());
            }
        }
        Ok(())
    }

    async fn files_of(&self, sub: &str) -> anyhow::Result<Vec<EmuFile>> {
        #[derive(Deserialize)]
        struct Files {
            files: Vec<EmuFile>,
        }
        let f: Files = self
            .control(reqwest::Method::GET, &format!("users/{sub}/appdata"), None)
            .await?
            .json()
            .await?;
        Ok(f.files)
    }

    async fn admin(&self, command: &Command) -> anyhow::Result<Response> {
        let mut client = AdminClient::connect(&self.paths.socket).await?;
        tokio::time::timeout(Duration::from_secs(120), client.request(command, |_| {}))
            .await
            .context("no answer in 120 s")?
    }

    /// Sends `command`, counting it as "admin.NAME" and its outcome as "admin_result.NAME.X".
    async fn admin_counted(&self, name: &str, command: &Command) -> Option<Value> {
        self.counts.add(format!("admin.{name}"));
        let outcome = match self.admin(command).await {
            Ok(r) if r.ok == Some(true) => {
                self.counts.add(format!("admin_result.{name}.ok"));
                return Some(r.result.unwrap_or(Value::Null));
            }
            Ok(r) => r
                .error
                .and_then(|e| serde_json::to_value(e.code).ok())
                .and_then(|c| c.as_str().map(String::from))
                .unwrap_or_else(|| "error".into()),
            Err(_) => "unreachable".into(),
        };
        self.counts.add(format!("admin_result.{name}.{outcome}"));
        None
    }
}

/// The fields of an emulator file we compare.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EmuFile {
    id: String,
    name: String,
    md5_checksum: String,
}

/// The daemon child process.
struct DaemonProc {
    child: Child,
}

impl DaemonProc {
    /// Starts `soak-daemon` and waits until its admin socket answers.
    async fn start(paths: &Paths) -> anyhow::Result<DaemonProc> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&paths.log)
            .with_context(|| format!("opening {}", paths.log.display()))?;
        let mut child = Process::new(exe)
            .arg("soak-daemon")
            .arg("--config")
            .arg(&paths.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the daemon")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the daemon exited at start-up ({status}); see {}",
                    paths.log.display()
                );
            }
            if let Ok(mut c) = AdminClient::connect(&paths.socket).await {
                if let Ok(r) = c.request(&Command::Status, |_| {}).await {
                    if r.ok == Some(true) {
                        return Ok(DaemonProc { child });
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("the daemon did not answer on its admin socket within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM, then waits; an error if it took too long (it is then killed) or failed.
    async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().context("the daemon already exited")?;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!("the daemon exited with {status} after SIGTERM");
                }
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "the daemon did not stop within {} s of SIGTERM",
                    STOP_TIMEOUT.as_secs()
                )
            }
        }
    }

    /// SIGKILL: no drain, no cleanup; whatever was in flight stays as it was.
    async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("killing the daemon")
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[soak] {}", msg.as_ref());
}

fn payload(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill(&mut v[..]);
    v
}

/// Names as an app might use: plain, with a slash, with dots (never paths in the mirror).
fn file_name() -> String {
    let n: u32 = rand::thread_rng().gen();
    match n % 4 {
        0 => format!("notes/day-{n:08x}.json"),
        1 => format!("..settings-{n:08x}"),
        _ => format!("f-{n:08x}.bin"),
    }
}

fn appdata_path(sub: &str, name: &str) -> String {
    format!("users/{sub}/appdata/{}", name.replace('/', "%2F"))
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

pub async fn soak(env: &Env, minutes: u64, users: usize) -> anyhow::Result<Report> {
    let dir = env.scratch_dir("appdata-syncd-soak-")?;
    let google = FakeGoogle::spawn(dir.path()).await?;
    let paths = write_config(dir.path(), &google)?;
    let daemon = DaemonProc::start(&paths).await?;
    let soak = Arc::new(Soak {
        google,
        authcode_url: format!("http://{}/authcode", paths.intake),
        paths,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?,
        target_users: users,
        next_user: AtomicUsize::new(0),
        model: Mutex::default(),
        counts: Counts::default(),
        violations: Mutex::default(),
        daemon: tokio::sync::Mutex::new(Some(daemon)),
    });
    let duration = Duration::from_secs(minutes * 60);
    log(format!(
        "{minutes} min, {users} users, state in {}",
        soak.paths.dir.display()
    ));
    let started = Instant::now();
    let stop = CancellationToken::new();
    let mut workers = JoinSet::new();
    workers.spawn(sign_ins(soak.clone(), stop.clone(), duration));
    workers.spawn(revokes(soak.clone(), stop.clone()));
    workers.spawn(changes(soak.clone(), stop.clone()));
    workers.spawn(faults(soak.clone(), stop.clone()));
    workers.spawn(admin(soak.clone(), stop.clone()));
    workers.spawn(restarts(soak.clone(), stop.clone(), duration));
    workers.spawn(progress(soak.clone(), stop.clone(), started));
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
    let soak_secs = started.elapsed().as_secs_f64();
    log("time is up: clearing faults, final resyncs, stopping the daemon");
    finish(&soak).await?;
    let checks = check(&soak).await?;
    let report = report(&soak, minutes, users, soak_secs, checks).await;
    let violations = lock(&soak.violations).clone();
    for v in violations.iter().take(SHOWN_VIOLATIONS) {
        eprintln!("[soak] VIOLATION: {v}");
    }
    if violations.len() > SHOWN_VIOLATIONS {
        eprintln!(
            "[soak] ... and {} more violations",
            violations.len() - SHOWN_VIOLATIONS
        );
    }
    if let Ok(soak) = Arc::try_unwrap(soak) {
        soak.google.stop().await;
    }
    if env.keep || !violations.is_empty() {
        eprintln!("kept {}", dir.keep().display());
    }
    Ok(report)
}

/// Writes `dir/config.toml` (and the key it names) for the daemon child process.
fn write_config(dir: &Path, google: &FakeGoogle) -> anyhow::Result<Paths> {
    // A free port now, kept across restarts as a real deployment's would be.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let paths = Paths {
        dir: dir.to_path_buf(),
        config: dir.join("config.toml"),
        db: dir.join("appdata-syncd.db"),
        mirror: dir.join("mirror"),
        socket: dir.join("admin.sock"),
        log: dir.join("daemon.log"),
        intake: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let mut config = emulator_config(dir, google)?;
    config.intake.listen = paths.intake;
    config.store.state_dir = Some(dir.to_path_buf());
    config.admin.socket = paths.socket.clone();
    config.sync.schedule = SCHEDULE.into();
    config.sync.concurrency = 64;
    config.sync.max_requests_per_second = 2000;
    config.sync.shutdown_grace = Duration::from_secs(10);
    config.log.level = LOG_FILTER.into();
    config.log.format = LogFormat::Json;
    std::fs::write(&paths.config, config.to_toml()?)
        .with_context(|| format!("writing {}", paths.config.display()))?;
    Ok(paths)
}

/// Half the users at once, the rest spread over the first 60% of the run, and re-sign-ins of
/// existing users (revoked ones first) all along.
async fn sign_ins(
    soak: Arc<Soak>,
    stop: CancellationToken,
    duration: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut inflight = JoinSet::new();
    let mut last_again = Instant::now();
    while !stop.is_cancelled() {
        while inflight.try_join_next().is_some() {}
        if inflight.len() >= SIGN_IN_CONCURRENCY {
            pause(&stop, Duration::from_millis(20)).await;
            continue;
        }
        let n = soak.target_users;
        let ramp = (started.elapsed().as_secs_f64() / (duration.as_secs_f64() * 0.6)).min(1.0);
        let target = n / 2 + ((n - n / 2) as f64 * ramp) as usize;
        if soak.next_user.load(Ordering::Relaxed) < target {
            let i = soak.next_user.fetch_add(1, Ordering::Relaxed);
            let soak = soak.clone();
            inflight.spawn(async move { new_user(&soak, i).await });
            continue;
        }
        if last_again.elapsed() >= Duration::from_millis(400) {
            last_again = Instant::now();
            let soak = soak.clone();
            inflight.spawn(async move { sign_in_again(&soak).await });
            continue;
        }
        pause(&stop, Duration::from_millis(50)).await;
    }
    while let Some(done) = inflight.join_next().await {
        done??;
    }
    Ok(())
}

async fn new_user(soak: &Soak, i: usize) -> anyhow::Result<()> {
    let sub = format!("9{i:07}");
    soak.control(
        reqwest::Method::POST,
        "users",
        Some(json!({ "sub": sub, "email": format!("soak{i}@example.com") })),
    )
    .await?;
    let files = rand::thread_rng().gen_range(0..=3);
    for _ in 0..files {
        let len = rand::thread_rng().gen_range(0..6000);
        soak.google
            .put_file(&sub, &file_name(), payload(len))
            .await?;
        soak.counts.add("change.create");
    }
    {
        let mut m = lock(&soak.model);
        m.subs.push(sub.clone());
        m.busy.insert(sub.clone());
    }
    let claimed = Claimed { soak, sub };
    soak.counts.add("signin.new_user");
    soak.sign_in(&claimed.sub, false).await
}

async fn sign_in_again(soak: &Soak) -> anyhow::Result<()> {
    let revoked_first = rand::thread_rng().gen_bool(0.5);
    let claimed = soak.claim(|m| {
        if revoked_first && !m.revoked.is_empty() {
            m.revoked.iter().cloned().collect()
        } else {
            m.subs.clone()
        }
    });
    let Some(claimed) = claimed else {
        return Ok(());
    };
    // A revoked grant needs consent again (Google then issues a new refresh token); an
    // active user's app signs in silently, now and then with the consent screen.
    let needs_consent = {
        let m = lock(&soak.model);
        !m.acked.contains(&claimed.sub)
            || m.revoked.contains(&claimed.sub)
            || m.uncertain.contains(&claimed.sub)
    };
    soak.counts.add("signin.again");
    soak.sign_in(
        &claimed.sub,
        needs_consent || rand::thread_rng().gen_bool(0.2),
    )
    .await
}

/// Revokes a grant every few seconds; a third are signed in again at once (racing the
/// daemon, which may be refreshing the old token right then).
async fn revokes(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    while pause(&stop, secs(1.0, 4.0)).await {
        let Some(claimed) = soak.claim(|m| {
            m.acked
                .iter()
                .filter(|s| !m.revoked.contains(*s))
                .cloned()
                .collect()
        }) else {
            continue;
        };
        soak.control(
            reqwest::Method::POST,
            &format!("users/{}/revoke", claimed.sub),
            None,
        )
        .await?;
        soak.counts.add("revoke");
        lock(&soak.model).revoked.insert(claimed.sub.clone());
        if rand::thread_rng().gen_bool(0.33) {
            tokio::time::sleep(secs(0.0, 0.5)).await;
            soak.sign_in(&claimed.sub, true).await?;
        }
    }
    Ok(())
}

/// About 20 changes a second: create, update, delete, rename.
async fn changes(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    while pause(&stop, Duration::from_millis(50)).await {
        let Some(sub) = soak.random_sub() else {
            continue;
        };
        let files = soak.files_of(&sub).await?;
        let roll: f64 = rand::thread_rng().gen();
        let pick = files.choose(&mut rand::thread_rng()).cloned();
        let (kind, resp) = match pick {
            Some(f) if roll < 0.35 || (files.len() >= MAX_FILES && roll < 0.7) => {
                let len = rand::thread_rng().gen_range(0..6000);
                soak.google.put_file(&sub, &f.name, payload(len)).await?;
                ("update", None)
            }
            Some(f) if roll < 0.55 || files.len() >= MAX_FILES => {
                let r = soak
                    .raw(reqwest::Method::DELETE, &appdata_path(&sub, &f.name), None)
                    .await?;
                ("delete", Some(r))
            }
            Some(f) if roll < 0.7 => {
                let r = soak
                    .raw(
                        reqwest::Method::PATCH,
                        &appdata_path(&sub, &f.name),
                        Some(json!({ "name": file_name() })),
                    )
                    .await?;
                ("rename", Some(r))
            }
            _ => {
                let len = rand::thread_rng().gen_range(0..6000);
                soak.google
                    .put_file(&sub, &file_name(), payload(len))
                    .await?;
                ("create", None)
            }
        };
        match resp.map(|r| r.status()) {
            None => soak.counts.add(format!("change.{kind}")),
            Some(s) if s.is_success() => soak.counts.add(format!("change.{kind}")),
            // The daemon (a push) or an earlier change got there first.
            Some(s) if s == reqwest::StatusCode::NOT_FOUND => soak.counts.add("change_lost_race"),
            Some(s) => bail!("{kind} on the emulator answered {s}"),
        }
    }
    Ok(())
}

/// A fault window every 4 to 15 s, held 2 to 8 s.
async fn faults(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    while pause(&stop, secs(4.0, 15.0)).await {
        let (kind, faults) = {
            let mut rng = rand::thread_rng();
            let rate: f64 = rng.gen_range(0.05..0.5);
            match rng.gen_range(0..8) {
                0 | 1 => {
                    let status = *[500u16, 503, 429, 403].choose(&mut rng).unwrap_or(&503);
                    (
                        format!("drive_{status}"),
                        json!({ "drive": { "error_rate": rate, "error_status": status } }),
                    )
                }
                2 => (
                    "drive_outage".to_string(),
                    json!({ "drive": { "error_rate": 1.0, "error_status": 503, "retry_after_s": 1 } }),
                ),
                3 => (
                    "drive_reset".to_string(),
                    json!({ "drive": { "reset_rate": rate.min(0.3) } }),
                ),
                4 => (
                    "drive_latency".to_string(),
                    json!({ "drive": { "latency_ms": rng.gen_range(100..800), "jitter_ms": 100 } }),
                ),
                5 => {
                    let status = *[500u16, 503, 429].choose(&mut rng).unwrap_or(&500);
                    (
                        format!("token_{status}"),
                        json!({ "token": { "error_rate": rate, "error_status": status } }),
                    )
                }
                6 => (
                    "token_reset".to_string(),
                    json!({ "token": { "reset_rate": rate.min(0.3) } }),
                ),
                _ => (
                    "jwks_down".to_string(),
                    json!({ "jwks": { "error_rate": 1.0, "error_status": 503 } }),
                ),
            }
        };
        match soak.google.set_faults(faults).await {
            Ok(()) => soak.counts.add(format!("fault.{kind}")),
            Err(e) => {
                log(format!("fault {kind} refused by the emulator: {e:#}"));
                soak.counts.add(format!("fault_refused.{kind}"));
                continue;
            }
        }
        // Cleared even when the run ends inside the window.
        let _ = pause(&stop, secs(2.0, 8.0)).await;
        soak.google.set_faults(json!({})).await?;
    }
    Ok(())
}

/// An admin command every 0.3 to 1.5 s.
async fn admin(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    let mut last_all = Instant::now();
    while pause(&stop, secs(0.3, 1.5)).await {
        let Some(sub) = soak.random_sub() else {
            continue;
        };
        let roll = rand::thread_rng().gen_range(0..100);
        match roll {
            0..=14 => {
                soak.admin_counted("status", &Command::Status).await;
            }
            15..=17 => {
                let state = [
                    UserState::Active,
                    UserState::ReauthRequired,
                    UserState::Paused,
                ]
                .choose(&mut rand::thread_rng())
                .copied();
                soak.admin_counted("users", &Command::Users { state }).await;
            }
            18..=32 => {
                soak.admin_counted("user", &Command::User { sub }).await;
            }
            33..=42 => {
                soak.admin_counted("files", &Command::Files { sub }).await;
            }
            43..=57 => {
                let full = rand::thread_rng().gen_bool(0.25);
                let wait = rand::thread_rng().gen_bool(0.2);
                let name = match (full, wait) {
                    (true, _) => "resync_full",
                    (false, true) => "resync_wait",
                    _ => "resync",
                };
                let cmd = Command::Resync {
                    sub: Some(sub),
                    all: false,
                    full,
                    wait,
                };
                soak.admin_counted(name, &cmd).await;
            }
            58..=60 if last_all.elapsed() > Duration::from_secs(45) => {
                last_all = Instant::now();
                let cmd = Command::Resync {
                    sub: None,
                    all: true,
                    full: false,
                    wait: false,
                };
                soak.admin_counted("resync_all", &cmd).await;
            }
            61..=68 => {
                let pause = Command::Pause { sub: sub.clone() };
                let done = soak.admin_counted("pause", &pause).await;
                if done.is_some() {
                    lock(&soak.model).paused.push(sub);
                }
            }
            69..=76 => {
                let paused = {
                    let mut m = lock(&soak.model);
                    let n = m.paused.len();
                    (n > 0).then(|| m.paused.swap_remove(rand::thread_rng().gen_range(0..n)))
                };
                if let Some(sub) = paused {
                    soak.admin_counted("resume", &Command::Resume { sub }).await;
                }
            }
            77..=86 => {
                let len = rand::thread_rng().gen_range(0..3000);
                let cmd = Command::Push {
                    sub,
                    name: file_name(),
                    content_base64: base64::engine::general_purpose::STANDARD.encode(payload(len)),
                    mime_type: None,
                };
                soak.admin_counted("push", &cmd).await;
            }
            87..=89 => {
                let cmd = Command::LogLevel {
                    filter: LOG_FILTER.into(),
                };
                soak.admin_counted("log_level", &cmd).await;
            }
            90..=92 => {
                soak.admin_counted("reload", &Command::Reload).await;
            }
            93..=94 => forget(&soak).await,
            _ => {}
        }
    }
    Ok(())
}

/// `forget`: revokes the grant at Google and deletes the user; the model follows the answer.
async fn forget(soak: &Soak) {
    let Some(claimed) = soak.claim(|m| m.acked.iter().cloned().collect()) else {
        return;
    };
    let sub = claimed.sub.clone();
    soak.counts.add("admin.forget");
    let outcome = match soak.admin(&Command::Forget { sub: sub.clone() }).await {
        Ok(r) if r.ok == Some(true) => {
            let mut m = lock(&soak.model);
            m.acked.remove(&sub);
            m.revoked.remove(&sub);
            m.forgotten.insert(sub.clone());
            m.paused.retain(|s| *s != sub);
            "ok".to_string()
        }
        Ok(r) => r
            .error
            .and_then(|e| serde_json::to_value(e.code).ok())
            .and_then(|c| c.as_str().map(String::from))
            .unwrap_or_else(|| "error".into()),
        Err(_) => {
            lock(&soak.model).uncertain.insert(sub.clone());
            "unreachable".into()
        }
    };
    soak.counts.add(format!("admin_result.forget.{outcome}"));
}

/// Every `duration/12` (30 s to 3 min), with jitter: SIGTERM or SIGKILL, then a new daemon.
/// Between restarts, checks once a second that the daemon is still alive.
async fn restarts(
    soak: Arc<Soak>,
    stop: CancellationToken,
    duration: Duration,
) -> anyhow::Result<()> {
    let every = (duration / 12).clamp(Duration::from_secs(30), Duration::from_secs(180));
    let mut next = Instant::now() + every.mul_f64(rand::thread_rng().gen_range(0.5..1.5));
    while pause(&stop, Duration::from_secs(1)).await {
        let mut slot = soak.daemon.lock().await;
        let exited = match slot.as_mut() {
            Some(d) => d.child.try_wait()?,
            None => None,
        };
        if let Some(status) = exited {
            soak.violation(format!("the daemon exited on its own ({status})"));
            slot.take();
        } else if Instant::now() < next {
            continue;
        } else if let Some(d) = slot.take() {
            next = Instant::now() + every.mul_f64(rand::thread_rng().gen_range(0.5..1.5));
            if rand::thread_rng().gen_bool(0.5) {
                log("restart: SIGTERM");
                soak.counts.add("restart.graceful");
                if let Err(e) = d.stop().await {
                    soak.violation(format!("graceful restart: {e:#}"));
                }
            } else {
                log("restart: SIGKILL");
                soak.counts.add("restart.abrupt");
                d.kill().await?;
            }
        }
        tokio::time::sleep(secs(0.0, 2.0)).await;
        *slot = Some(DaemonProc::start(&soak.paths).await?);
    }
    Ok(())
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

/// Faults off, paused users resumed, two `resync --all` rounds to completion, then SIGTERM.
async fn finish(soak: &Soak) -> anyhow::Result<()> {
    soak.google.set_faults(json!({})).await?;
    let mut slot = soak.daemon.lock().await;
    let alive = match slot.as_mut() {
        Some(d) => d.child.try_wait()?.is_none(),
        None => false,
    };
    if !alive {
        *slot = Some(DaemonProc::start(&soak.paths).await?);
    }
    let store = Store::connect(&sqlite_url(&soak.paths.db), 1).await?;
    let paused: Vec<String> = sqlx::query_scalar("SELECT sub FROM users WHERE state = 'paused'")
        .fetch_all(store.pool())
        .await?;
    for sub in paused {
        if soak.admin(&Command::Resume { sub: sub.clone() }).await?.ok != Some(true) {
            soak.violation(format!("final resume of {sub} refused"));
        }
    }
    for round in 1..=2 {
        let t = Instant::now();
        let r = soak
            .admin(&Command::Resync {
                sub: None,
                all: true,
                full: false,
                wait: false,
            })
            .await?;
        if r.ok != Some(true) {
            bail!("final resync --all refused: {:?}", r.error);
        }
        wait_quiet(soak, &store).await?;
        log(format!(
            "final resync round {round}: {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    }
    store.close().await;
    if let Some(d) = slot.take() {
        if let Err(e) = d.stop().await {
            soak.violation(format!("final stop: {e:#}"));
        }
    }
    Ok(())
}

/// Until no active user waits for its resync and nothing runs or is queued (twice in a row).
async fn wait_quiet(soak: &Soak, store: &Store) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut quiet = 0;
    while quiet < 2 {
        if Instant::now() > deadline {
            bail!("the final resync did not finish within 10 min");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM users u JOIN credentials c ON c.sub = u.sub \
             WHERE u.state = 'active' AND u.resync_requested > 0",
        )
        .fetch_one(store.pool())
        .await?;
        let status = soak
            .admin(&Command::Status)
            .await?
            .result
            .unwrap_or_default();
        let busy = status["syncs_running"].as_u64().unwrap_or(1)
            + status["syncs_queued"].as_u64().unwrap_or(1);
        quiet = if waiting == 0 && busy == 0 {
            quiet + 1
        } else {
            0
        };
    }
    Ok(())
}

fn sqlite_url(db: &Path) -> String {
    format!("sqlite://{}", db.display())
}

/// Figures [`check`] gathers for the report.
#[derive(Default)]
struct Checked {
    users_by_state: BTreeMap<String, i64>,
    syncs: BTreeMap<String, i64>,
    max_api_calls_per_sync: i64,
    files_mirrored: usize,
    secrets_scanned: usize,
    bytes_scanned: u64,
    cycles: usize,
    cycles_skipped: usize,
}

/// Every invariant, with the daemon stopped. Violations go to `soak.violations`.
async fn check(soak: &Soak) -> anyhow::Result<Checked> {
    let mut out = Checked::default();
    // Secrets first: opening the database ourselves may checkpoint and remove the WAL.
    let (secrets, bytes) = scan_for_secrets(soak).await?;
    out.secrets_scanned = secrets;
    out.bytes_scanned = bytes;
    let log_text = std::fs::read_to_string(&soak.paths.log).unwrap_or_default();
    out.cycles = log_text.matches("sync cycle finished").count();
    out.cycles_skipped = log_text.matches("previous cycle still running").count();

    let store = Store::connect(&sqlite_url(&soak.paths.db), 1).await?;
    let integrity: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(store.pool())
        .await?;
    if integrity != ["ok"] {
        soak.violation(format!("PRAGMA integrity_check: {}", integrity.join("; ")));
    }
    let rows = sqlx::query(
        "SELECT u.sub, u.state, u.last_error, \
                (SELECT COUNT(*) FROM credentials c WHERE c.sub = u.sub) AS creds \
         FROM users u",
    )
    .fetch_all(store.pool())
    .await?;
    let mut db_users: HashMap<String, (String, Option<String>, i64)> = HashMap::new();
    for r in rows {
        db_users.insert(
            r.try_get("sub")?,
            (
                r.try_get("state")?,
                r.try_get("last_error")?,
                r.try_get("creds")?,
            ),
        );
    }
    for (state, _, _) in db_users.values() {
        *out.users_by_state.entry(state.clone()).or_default() += 1;
    }
    for r in sqlx::query("SELECT outcome, COUNT(*) AS n FROM syncs GROUP BY outcome")
        .fetch_all(store.pool())
        .await?
    {
        out.syncs.insert(r.try_get("outcome")?, r.try_get("n")?);
    }
    out.max_api_calls_per_sync =
        sqlx::query_scalar("SELECT COALESCE(MAX(api_calls), 0) FROM syncs")
            .fetch_one(store.pool())
            .await?;

    let (acked, revoked, forgotten, uncertain) = {
        let m = lock(&soak.model);
        (
            m.acked.clone(),
            m.revoked.clone(),
            m.forgotten.clone(),
            m.uncertain.clone(),
        )
    };
    for sub in acked.difference(&uncertain) {
        match db_users.get(sub) {
            None => soak.violation(format!("acknowledged sign-in of {sub}: no user row")),
            Some((_, _, 0)) => {
                soak.violation(format!("acknowledged sign-in of {sub}: no credential"))
            }
            Some((state, _, _)) if state == "forgotten" => {
                soak.violation(format!("acknowledged sign-in of {sub}: user is forgotten"))
            }
            Some(_) => {}
        }
    }
    for (sub, (state, last_error, _)) in &db_users {
        if state == "reauth_required" && !revoked.contains(sub) && !uncertain.contains(sub) {
            soak.violation(format!(
                "{sub} is reauth_required but its grant was not revoked (last_error: {})",
                last_error.as_deref().unwrap_or("none")
            ));
        }
        if revoked.contains(sub) && !uncertain.contains(sub) && state != "reauth_required" {
            soak.violation(format!("{sub}'s grant was revoked but it is {state}"));
        }
    }
    for sub in forgotten.difference(&uncertain) {
        if db_users.contains_key(sub) {
            soak.violation(format!("{sub} was forgotten but still has a user row"));
        }
        if soak.paths.mirror.join(sub).exists() {
            soak.violation(format!(
                "{sub} was forgotten but its mirror directory remains"
            ));
        }
    }

    let active: Vec<String> = db_users
        .iter()
        .filter(|(_, (state, _, _))| state == "active")
        .map(|(sub, _)| sub.clone())
        .collect();
    let results: Vec<anyhow::Result<usize>> = futures::stream::iter(active)
        .map(|sub| {
            let store = &store;
            async move { check_mirror(soak, store, &sub).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        out.files_mirrored += r?;
    }
    store.close().await;

    let tmp = soak.paths.mirror.join(".tmp");
    let leftovers = match std::fs::read_dir(&tmp) {
        Ok(entries) => entries.count(),
        Err(_) => 0,
    };
    if leftovers > 0 {
        soak.violation(format!(
            "{leftovers} temporary files left in {}",
            tmp.display()
        ));
    }
    Ok(out)
}

/// Emulator, `files` rows and mirror files of one active user agree: the same ids, names,
/// md5s, and on disk the emulator's bytes. Returns the number of files.
async fn check_mirror(soak: &Soak, store: &Store, sub: &str) -> anyhow::Result<usize> {
    let emulator = soak.files_of(sub).await?;
    let rows = sqlx::query("SELECT file_id, name, md5 FROM files WHERE sub = $1")
        .bind(sub)
        .fetch_all(store.pool())
        .await?;
    let mut db: HashMap<String, (String, Option<String>)> = HashMap::new();
    for r in rows {
        db.insert(
            r.try_get("file_id")?,
            (r.try_get("name")?, r.try_get("md5")?),
        );
    }
    let dir = soak.paths.mirror.join(sub);
    let on_disk: HashSet<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => HashSet::new(),
    };
    let mut wrong = Vec::new();
    for f in &emulator {
        match db.get(&f.id) {
            None => wrong.push(format!("{} ({:?}) has no row", f.id, f.name)),
            Some((name, md5)) => {
                if *name != f.name {
                    wrong.push(format!(
                        "{} is named {name:?}, Drive says {:?}",
                        f.id, f.name
                    ));
                }
                if md5.as_deref() != Some(f.md5_checksum.as_str()) {
                    wrong.push(format!(
                        "{}: md5 {md5:?}, Drive says {}",
                        f.id, f.md5_checksum
                    ));
                }
            }
        }
        match std::fs::read(dir.join(&f.id)) {
            Err(_) => wrong.push(format!("{} ({:?}) missing on disk", f.id, f.name)),
            Ok(bytes) => {
                let content = soak
                    .control(
                        reqwest::Method::GET,
                        &format!("users/{sub}/appdata-content/{}", f.id),
                        None,
                    )
                    .await?
                    .bytes()
                    .await?;
                if bytes != content {
                    wrong.push(format!(
                        "{}: {} bytes on disk differ from Drive's {}",
                        f.id,
                        bytes.len(),
                        content.len()
                    ));
                }
            }
        }
    }
    let ids: HashSet<&str> = emulator.iter().map(|f| f.id.as_str()).collect();
    for id in db.keys().filter(|id| !ids.contains(id.as_str())) {
        wrong.push(format!("{id} has a row but is not on Drive"));
    }
    for name in on_disk.iter().filter(|n| !ids.contains(n.as_str())) {
        wrong.push(format!("{name} is on disk but not on Drive"));
    }
    if !wrong.is_empty() {
        soak.violation(format!(
            "mirror of {sub} differs from Drive: {}",
            wrong.join("; ")
        ));
    }
    Ok(emulator.len())
}

/// Looks for every token, code and client secret the emulator issued, verbatim or
/// percent-encoded, in the database files, the mirror and the daemon's log. Returns how many
/// secrets and bytes were scanned.
async fn scan_for_secrets(soak: &Soak) -> anyhow::Result<(usize, u64)> {
    let secrets: Vec<String> = soak
        .control(reqwest::Method::GET, "issued-secrets", None)
        .await?
        .json()
        .await?;
    let mut files: Vec<PathBuf> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", soak.paths.db.display())))
        .filter(|p| p.exists())
        .collect();
    files.push(soak.paths.log.clone());
    collect_files(&soak.paths.mirror, &mut files);
    let n = secrets.len();
    let (found, bytes) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut patterns: Vec<String> = secrets.clone();
        patterns.extend(
            secrets
                .iter()
                .filter(|s| s.contains('/'))
                .map(|s| s.replace('/', "%2F")),
        );
        let ac = aho_corasick::AhoCorasick::new(&patterns)?;
        let mut found = Vec::new();
        let mut bytes = 0u64;
        for path in files {
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            bytes += data.len() as u64;
            if let Some(m) = ac.find(&data) {
                let secret = &patterns[m.pattern().as_usize()];
                let kind = match secret {
                    s if s.starts_with("ya29.") => "an access token",
                    s if s.starts_with("1/") || s.starts_with("1%2F") => "a refresh token",
                    s if s.starts_with("4/") || s.starts_with("4%2F") => "an auth code",
                    s if s.starts_with("GOCSPX-") => "the client secret",
                    _ => "a secret",
                };
                found.push(format!(
                    "{kind} Google issued is in plaintext in {}",
                    path.display()
                ));
            }
        }
        Ok((found, bytes))
    })
    .await??;
    for f in found {
        soak.violation(f);
    }
    Ok((n, bytes))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let path = e.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
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
        .set(
            "sign_ins",
            json!({
                "attempted": n.get("signin.attempted"),
                "acknowledged": n.get("signin.acknowledged"),
                "new_users": n.get("signin.new_user"),
                "again": n.get("signin.again"),
                "daemon_down": n.get("signin.daemon_down"),
                "no_answer": n.get("signin.no_answer"),
            }),
        )
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
             secret in the db, -wal, -shm, mirror or log; no daemon crash or slow stop",
        )
        .set("invariant_violations", violations)
        .set("errors", violations);
    r
}
