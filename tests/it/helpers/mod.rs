//! Test helpers in three parts: [`app`] runs the daemon in this process (`spawn_app`), [`daemon`]
//! runs the real binary (`Daemon`), [`postgres`] gives each test a database when the suite runs
//! on PostgreSQL. Here: what they share (fake-google, the test config, the test log).

mod api;
mod app;
mod daemon;
mod postgres;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use appdata_syncd::config::Config;
use fake_google::{FakeGoogle, MintCode, NewUser};

pub use api::{ApiClient, ApiResponse};
pub use app::{spawn_app, spawn_app_with, TestApp};
pub use daemon::{binary, ctl, ctl_env, Daemon};
pub use postgres::{
    db_pool, on_postgres, postgres_or_skip, postgres_server, raw_database_bytes, test_dir, TestDir,
};

/// fake-google on a loopback port, registered for the suite-wide secrets check.
pub async fn google() -> FakeGoogle {
    let google = FakeGoogle::start().await.unwrap();
    crate::log_scan::register(google.emulator());
    google
}

/// Writes client_secret.json and a key into `dir` and returns a config pointing at `google`:
/// SQLite in `dir` (or a fresh PostgreSQL database, see [`postgres`]), intake on port 0, the
/// admin socket in `dir`, and a cron tick far away (tests step cycles themselves).
pub fn test_config(dir: &Path, google: &FakeGoogle) -> Config {
    let secret = dir.join("client_secret.json");
    write_private(&secret, google.client_secret_json().to_string().as_bytes());
    let key = dir.join("encryption.key");
    if !key.exists() {
        write_private(&key, &[42u8; 32]);
    }
    let base = google.base_url();
    let mut config = Config::default();
    config.google.client_secret_file = Some(secret);
    config.google.jwks_uri = format!("{base}/oauth2/v3/certs");
    config.google.revoke_uri = format!("{base}/revoke");
    config.google.drive_api_base = base.clone();
    config.google.android_client_ids = vec![google.clients().android_client_id];
    config.risc.configuration_uri = format!("{base}/.well-known/risc-configuration");
    config.risc.api_base = base.clone();
    config.google.request_timeout = Duration::from_secs(2);
    // Google's schedule (1 s doubling to 32 s) is the default; tests retry on a shorter one.
    config.google.retry_initial_delay = Duration::from_millis(50);
    config.google.retry_max_delay = Duration::from_secs(2);
    config.intake.listen = "127.0.0.1:0".parse().unwrap();
    config.store.state_dir = Some(dir.to_path_buf());
    config.store.encryption_key_file = Some(key);
    config.admin.socket = dir.join("admin.sock");
    config.store.url = postgres::test_database_url(dir);
    config.store.max_connections = 8;
    // Every sign-in of the suite comes from loopback, faster than any app: admission limits
    // are off unless a test is about them (tests/it/admission.rs).
    config.intake.signins_per_client_per_minute = 1_000_000;
    config.intake.max_concurrent_signins = 4096;
    config.intake.token_calls_per_second = 1_000_000;
    config.sync.schedule = NEVER.into();
    // The suite must not depend on the machine's free space (a CI disk may be nearly full).
    config.sync.min_free_disk_bytes = 0;
    config.sync.max_requests_per_second = 10_000;
    config
}

/// A cron schedule that does not fire during a test (January 1st, midnight).
pub const NEVER: &str = "0 0 0 1 1 *";

/// Writes `config` as `dir/config.toml`.
pub fn write_config(dir: &Path, config: &Config) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, config.to_toml().unwrap()).unwrap();
    path
}

/// Writes a secret as the daemon wants it: readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `done` until it holds, failing the test after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_ready(url: &str) {
    eventually(
        &format!("{url} to answer"),
        Duration::from_secs(30),
        async || {
            reqwest::get(url)
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
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

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
