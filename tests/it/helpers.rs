//! `spawn_app()` and friends: a running daemon, its fake-google, and typed helpers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appdata_syncd::config::Config;

use appdata_syncd::lifecycle::App;
use appdata_syncd::scheduler::{CycleOutcome, Scheduler};
use appdata_syncd::store::Store;
use fake_google::{FakeGoogle, MintCode, NewUser};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub dir: TestDir,
    pub google: FakeGoogle,
    /// `http://127.0.0.1:PORT` of the intake.
    pub intake: String,
    pub store: Store,
    pub scheduler: Arc<Scheduler>,
    pub http: reqwest::Client,
    /// The mirror's directory ([sync] data_dir).
    mirror: PathBuf,
    shutdown: CancellationToken,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Which database the suite runs on: `APPDATA_SYNCD_TEST_BACKEND=postgres` runs every test on
/// the PostgreSQL at `APPDATA_SYNCD_TEST_POSTGRES` (default postgres://postgres@127.0.0.1:5432),
/// one fresh database per test directory; otherwise SQLite files.
pub fn on_postgres() -> bool {
    std::env::var("APPDATA_SYNCD_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

pub fn postgres_server() -> String {
    std::env::var("APPDATA_SYNCD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A temporary directory that, on PostgreSQL runs, owns a database of the same name and drops
/// it with the directory.
pub struct TestDir {
    dir: tempfile::TempDir,
}

pub fn test_dir() -> TestDir {
    TestDir {
        dir: tempfile::tempdir().unwrap(),
    }
}

impl TestDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let created = self.dir.path().join(".pgdb");
        if let Ok(name) = std::fs::read_to_string(created) {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(pool) =
                        sqlx::PgPool::connect(&format!("{}/postgres", postgres_server())).await
                    {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&pool)
                                .await;
                    }
                });
            })
            .join();
        }
    }
}

fn pg_database_name(dir: &Path) -> Option<String> {
    let base: String = dir
        .file_name()?
        .to_string_lossy()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    Some(format!("appdata_test_{}", base.to_ascii_lowercase()))
}

/// The store URL for `dir`: `None` (SQLite in the state dir) or a fresh PostgreSQL database.
pub fn test_database_url(dir: &Path) -> Option<String> {
    if !on_postgres() {
        return None;
    }
    Some(create_pg_database(dir))
}

/// For tests that need PostgreSQL whatever the suite's backend: the database URL, or `None`
/// (test skipped) when `APPDATA_SYNCD_SKIP_POSTGRES=1`. Panics, saying how to start one, when
/// no server answers.
pub fn postgres_or_skip(dir: &Path) -> Option<String> {
    if std::env::var("APPDATA_SYNCD_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: APPDATA_SYNCD_SKIP_POSTGRES=1");
        return None;
    }
    Some(create_pg_database(dir))
}

/// Creates (once) the database of `dir` and remembers it for [`TestDir`]'s drop.
fn create_pg_database(dir: &Path) -> String {
    let name = pg_database_name(dir).expect("a temporary directory has a name");
    let server = postgres_server();
    std::thread::spawn({
        let (server, name) = (server.clone(), name.clone());
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let pool = sqlx::PgPool::connect(&format!("{server}/postgres"))
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot reach PostgreSQL at {server} ({e}). Start one (e.g. \
                         pg_ctlcluster 15 main start, trust auth on 127.0.0.1:5432), or set \
                         APPDATA_SYNCD_SKIP_POSTGRES=1 to skip the PostgreSQL-only tests"
                        )
                    });
                let exists: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                        .bind(&name)
                        .fetch_optional(&pool)
                        .await
                        .unwrap();
                if exists.is_none() {
                    sqlx::query(&format!("CREATE DATABASE {name}"))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
            });
        }
    })
    .join()
    .unwrap();
    let _ = std::fs::write(dir.join(".pgdb"), &name);
    format!("{server}/{name}")
}

/// Writes client_secret.json and a key into `dir` and returns a config pointing at `google`.
pub fn test_config(dir: &Path, google: &FakeGoogle) -> Config {
    let secret = dir.join("client_secret.json");
    std::fs::write(&secret, google.client_secret_json().to_string()).unwrap();
    let key = dir.join("encryption.key");
    if !key.exists() {
        std::fs::write(&key, [42u8; 32]).unwrap();
    }
    let base = google.base_url();
    let mut config = Config::default();
    config.google.client_secret_file = Some(secret);
    config.google.jwks_uri = format!("{base}/oauth2/v3/certs");
    config.google.revoke_uri = format!("{base}/revoke");
    config.google.drive_api_base = base.clone();
    config.google.android_client_ids = vec![google.clients().android_client_id];
    config.google.request_timeout = std::time::Duration::from_secs(2);
    config.intake.listen = "127.0.0.1:0".parse().unwrap();
    config.store.state_dir = Some(dir.to_path_buf());
    config.store.encryption_key_file = Some(key);
    config.admin.socket = dir.join("admin.sock");
    config.store.url = test_database_url(dir);
    config.store.max_connections = 8;
    // Tests step cycles themselves (`TestApp::cycle`); the cron tick is far away.
    config.sync.schedule = "0 0 0 1 1 *".into();
    config.sync.max_requests_per_second = 10_000;
    config
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    init_test_log();
    let dir = test_dir();
    let google = google().await;
    let mut config = test_config(dir.path(), &google);
    tweak(&mut config);
    let mirror = config
        .sync
        .data_dir
        .clone()
        .unwrap_or_else(|| dir.path().join("mirror"));
    let app = App::build(config.resolve().unwrap(), None).await.unwrap();
    let intake = format!("http://{}", app.intake_addr());
    let store = app.store().clone();
    let scheduler = app.scheduler().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        dir,
        google,
        intake,
        store,
        scheduler,
        http: reqwest::Client::new(),
        mirror,
        shutdown,
        running: Some(running),
    }
}

/// fake-google on a loopback port, registered for the suite-wide secrets check.
pub async fn google() -> FakeGoogle {
    let google = FakeGoogle::start().await.unwrap();
    crate::log_scan::register(google.emulator());
    google
}

/// The in-process daemons log at trace level into the secrets check ([`crate::log_scan`]);
/// `TEST_LOG=1` also shows those logs.
fn init_test_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(crate::log_scan::Capture {
            echo: std::env::var_os("TEST_LOG").is_some(),
        })
        .try_init();
}

impl TestApp {
    /// Creates a Google account on the emulator (idempotent per sub).
    pub fn google_user(&self, sub: &str) {
        let _ = self.google.emulator().create_user(NewUser {
            sub: sub.to_string(),
            email: Some(format!("{sub}@example.com")),
            name: Some(format!("User {sub}")),
            ..Default::default()
        });
    }

    /// What the Android app gets from getServerAuthCode().
    pub fn auth_code(&self, sub: &str) -> String {
        self.mint(MintCode {
            sub: sub.to_string(),
            ..Default::default()
        })
    }

    pub fn mint(&self, mint: MintCode) -> String {
        self.google_user(&mint.sub);
        self.google.emulator().mint_auth_code(mint).unwrap()
    }

    /// POSTs the code exactly as the Android sample does (form-encoded `authCode`).
    pub async fn post_code(&self, code: &str) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}/authcode", self.intake))
            .form(&[("authCode", code)])
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    pub async fn post_raw(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}/authcode", self.intake))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// Signs a user in and asserts it worked.
    pub async fn sign_in(&self, sub: &str) {
        let code = self.auth_code(sub);
        let (status, body) = self.post_code(&code).await;
        assert_eq!(status, 200, "sign-in of {sub} failed: {body}");
    }

    /// Every row of users and credentials, rendered: equal snapshots mean nothing changed.
    pub async fn db_snapshot(&self) -> String {
        let mut out = String::new();
        let users = sqlx::query("SELECT sub, state, email, updated_at FROM users ORDER BY sub")
            .fetch_all(self.store.pool())
            .await
            .unwrap();
        for r in users {
            let sub: String = r.get("sub");
            let state: String = r.get("state");
            let updated: i64 = r.get("updated_at");
            out.push_str(&format!("user {sub} {state} {updated}\n"));
        }
        let creds = sqlx::query(
            "SELECT sub, refresh_token, access_token, obtained_at FROM credentials ORDER BY sub",
        )
        .fetch_all(self.store.pool())
        .await
        .unwrap();
        for r in creds {
            let sub: String = r.get("sub");
            let refresh: Vec<u8> = r.get("refresh_token");
            let access: Option<Vec<u8>> = r.get("access_token");
            let at: i64 = r.get("obtained_at");
            out.push_str(&format!(
                "cred {sub} {} {} {at}\n",
                hex(&refresh),
                access.as_deref().map(hex).unwrap_or_default()
            ));
        }
        out
    }

    pub async fn user_state(&self, sub: &str) -> Option<String> {
        sqlx::query_scalar("SELECT state FROM users WHERE sub = $1")
            .bind(sub)
            .fetch_optional(self.store.pool())
            .await
            .unwrap()
    }

    pub async fn sealed_refresh_token(&self, sub: &str) -> Option<Vec<u8>> {
        sqlx::query_scalar("SELECT refresh_token FROM credentials WHERE sub = $1")
            .bind(sub)
            .fetch_optional(self.store.pool())
            .await
            .unwrap()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.mirror.clone()
    }

    /// Runs one sync cycle to the end.
    pub async fn cycle(&self) -> CycleOutcome {
        self.scheduler.run_once().await
    }

    /// Asserts the mirror of `sub` equals the emulator's appDataFolder: same file ids, names,
    /// md5s in the database, and the same bytes on disk; nothing else in the user's folder.
    pub async fn assert_mirror_matches(&self, sub: &str) {
        let remote = self.google.emulator().list_files(sub).unwrap();
        let mut conn = self.store.pool().acquire().await.unwrap();
        let local = appdata_syncd::store::files::list(&mut conn, sub)
            .await
            .unwrap();
        let mut remote_ids: Vec<_> = remote.iter().map(|f| f.id.clone()).collect();
        let mut local_ids: Vec<_> = local.iter().map(|f| f.file_id.clone()).collect();
        remote_ids.sort();
        local_ids.sort();
        assert_eq!(local_ids, remote_ids, "file ids of {sub}");
        for f in &remote {
            let row = local.iter().find(|l| l.file_id == f.id).unwrap();
            assert_eq!(row.name, f.name, "name of {}", f.id);
            assert_eq!(
                row.md5.as_deref(),
                Some(f.md5_checksum.as_str()),
                "md5 of {}",
                f.id
            );
            let bytes = std::fs::read(self.data_dir().join(&row.local_path)).unwrap();
            let want = self.google.emulator().file_content(sub, &f.id).unwrap();
            assert_eq!(bytes, want.as_ref(), "content of {} ({})", f.id, f.name);
        }
        let on_disk = match std::fs::read_dir(self.data_dir().join(sub)) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut on_disk: Vec<String> = on_disk;
        on_disk.sort();
        assert_eq!(on_disk, remote_ids, "files on disk for {sub}");
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.await.unwrap().unwrap();
        }
        crate::log_scan::assert_in_process_logs_clean(self.google.emulator());
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `appdata-syncd` binary built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_appdata-syncd")
}

/// Writes a config.toml for `google` into `dir`, with the given extra lines per section.
pub fn write_config(
    dir: &std::path::Path,
    google: &FakeGoogle,
    listen: &str,
    extra_google: &str,
) -> std::path::PathBuf {
    let c = test_config(dir, google);
    let text =
        format!(
        "[google]\nclient_secret_file = {secret:?}\njwks_uri = {jwks:?}\nrevoke_uri = {revoke:?}\n\
         drive_api_base = {drive:?}\nandroid_client_ids = [{android:?}]\n{extra_google}\n\
         [intake]\nlisten = {listen:?}\n\
         [store]\nstate_dir = {state:?}\nencryption_key_file = {key:?}\n{url}max_connections = 8\n\
         [admin]\nsocket = {sock:?}\n",
        secret = c.google.client_secret_file.unwrap(),
        jwks = c.google.jwks_uri,
        revoke = c.google.revoke_uri,
        drive = c.google.drive_api_base,
        android = c.google.android_client_ids[0],
        state = dir,
        key = c.store.encryption_key_file.unwrap(),
        sock = c.admin.socket,
        url = c.store.url.map(|u| format!("url = {u:?}\n")).unwrap_or_default(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(url).await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never became ready");
}

/// The real `appdata-syncd serve` binary, configured against `google`, in `dir`.
pub struct Daemon {
    pub child: Child,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub intake: String,
    pub log: PathBuf,
}

/// What `ctl` printed.
pub struct CtlOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", self.stdout, self.stderr))
    }
}

impl Daemon {
    /// Starts the daemon with `extra` TOML appended (whole sections, e.g. "[sync]\n...").
    pub async fn start(dir: &Path, google: &FakeGoogle, extra: &str) -> Daemon {
        let port = free_port();
        let config = write_config(dir, google, &format!("127.0.0.1:{port}"), "");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(extra);
        std::fs::write(&config, text).unwrap();
        Self::start_with_config(dir, &config, port, &[]).await
    }

    pub async fn start_with_config(
        dir: &Path,
        config: &Path,
        port: u16,
        env: &[(&str, &str)],
    ) -> Daemon {
        let log = dir.join(format!("daemon-{port}.log"));
        let mut cmd = Command::new(binary());
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let intake = format!("http://127.0.0.1:{port}");
        let daemon = Daemon {
            child,
            config: config.to_path_buf(),
            socket: dir.join("admin.sock"),
            intake,
            log,
        };
        wait_ready(&format!("{}/readyz", daemon.intake)).await;
        daemon
    }

    /// Runs `appdata-syncd ctl --socket SOCKET ARGS...`.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        ctl(&self.socket, args)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGTERM, then waits (at most `limit`) for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            crate::log_scan::assert_log_clean("a daemon binary", &self.logs());
        }
    }
}

pub fn ctl(socket: &Path, args: &[&str]) -> CtlOutput {
    let out = Command::new(binary())
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    CtlOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Signs `sub` in through the daemon's intake, creating the Google account if needed.
pub async fn sign_in_via(google: &FakeGoogle, intake: &str, sub: &str) {
    let _ = google.emulator().create_user(NewUser {
        sub: sub.to_string(),
        email: Some(format!("{sub}@example.com")),
        ..Default::default()
    });
    let code = google
        .emulator()
        .mint_auth_code(MintCode {
            sub: sub.to_string(),
            ..Default::default()
        })
        .unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{intake}/authcode"))
        .form(&[("authCode", code)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "sign-in of {sub}");
}

/// A pool on the database of `dir`, whichever backend the suite runs on.
pub async fn db_pool(dir: &Path) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = test_database_url(dir)
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("appdata-syncd.db").display()));
    sqlx::AnyPool::connect(&url).await.unwrap()
}

/// Everything the database holds, as bytes: the SQLite files, or every PostgreSQL row as text.
pub async fn raw_database_bytes(dir: &Path) -> Vec<u8> {
    if !on_postgres() {
        let mut bytes = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            if let Ok(b) = std::fs::read(format!(
                "{}{suffix}",
                dir.join("appdata-syncd.db").display()
            )) {
                bytes.extend(b);
            }
        }
        return bytes;
    }
    let pool = db_pool(dir).await;
    let mut bytes = Vec::new();
    for table in ["users", "credentials", "files", "syncs", "pushes"] {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT CAST(t AS TEXT) FROM {table} t"))
                .fetch_all(&pool)
                .await
                .unwrap();
        for r in rows {
            bytes.extend(r.into_bytes());
        }
        // bytea renders as hex in text form: also look at the raw bytes.
        if table == "credentials" {
            let blobs: Vec<Vec<u8>> = sqlx::query_scalar("SELECT refresh_token FROM credentials")
                .fetch_all(&pool)
                .await
                .unwrap();
            for b in blobs {
                bytes.extend(b);
            }
        }
    }
    bytes
}
