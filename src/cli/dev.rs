//! `appdata-syncd dev`: the whole daemon on one machine with nothing installed. Starts
//! fake-google in-process, writes a config into a scratch folder (throw-away key included),
//! starts the daemon, and signs demo users in through the real intake exactly as the Android
//! app would (form-encoded `authCode`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use fake_google::{FakeGoogle, MintCode, NewUser};
use rand::RngCore;

use super::DevArgs;
use crate::config::{ApiListen, Config, LogFormat, ResolvedConfig};
use crate::lifecycle::{run_with_signals, App};
use crate::scheduler::resync::ResyncTarget;
use crate::scheduler::{SyncEvent, SyncPhase};
use crate::store::schedule::Resync;
use crate::telemetry;

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let scratch;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => {
            scratch = tempfile::Builder::new()
                .prefix("appdata-syncd-dev-")
                .tempdir()
                .context("cannot create a temporary folder")?;
            scratch.path().to_path_buf()
        }
    };
    // Prefer the documented port so the README's curl lines work; fall back to any free one.
    let google = match FakeGoogle::start_with(fake_google::Options {
        listen: args.google_listen,
        ..Default::default()
    })
    .await
    {
        Ok(g) => g,
        Err(_) => FakeGoogle::start().await?,
    };
    let config = dev_config(&dir, &google, args.listen, args.api_listen)?;
    let log = telemetry::init(&config.raw.log)?;
    let app = build_app(config, log).await?;
    let intake = format!("http://{}", app.intake_addr());
    let api = app.api_url().unwrap_or_default();
    let socket = app.admin_socket();
    let services = app.services().clone();
    let running = tokio::spawn(run_with_signals(app));
    // A fresh key each run (names are never reused, and a --dir may hold older ones).
    let key_name = format!("dev-{}", crate::store::now_ms());
    let key = services
        .create_api_key(&key_name, true)
        .await
        .map_err(|e| anyhow::anyhow!("creating the dev API key: {e}"))?
        .key;
    // Cross-Account Protection: fake-google pushes its security events to this intake.
    google
        .emulator()
        .set_risc_settings(fake_google::RiscSettings {
            allow_http_receiver: true,
            ..Default::default()
        });
    google
        .emulator()
        .set_risc_stream(&format!("{intake}/risc"), None)
        .map_err(|e| anyhow::anyhow!("registering the RISC receiver: {e}"))?;

    sign_in_demo_users(&google, &intake, args.users, args.files).await?;
    // Show the first syncs now rather than at the next tick.
    let first_syncs = services
        .resync_and_wait(&ResyncTarget::All, Resync::Incremental, print_first_sync)
        .await;
    if let Err(e) = first_syncs {
        println!("first syncs: {e}");
    }
    print_banner(&dir, &google, &intake, &socket, &Api { url: api, key });

    running.await.context("the daemon task panicked")??;
    google.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// A config for `dir` against the in-process `google`, with a throw-away key.
fn dev_config(
    dir: &Path,
    google: &FakeGoogle,
    listen: std::net::SocketAddr,
    api_listen: std::net::SocketAddr,
) -> anyhow::Result<ResolvedConfig> {
    let secret_path = dir.join("client_secret.json");
    let _ = std::fs::remove_file(&secret_path);
    write_private(
        &secret_path,
        &serde_json::to_vec_pretty(&google.client_secret_json())?,
    )?;
    let key_path = dir.join("encryption.key");
    if !key_path.exists() {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        write_private(&key_path, &key)?;
    }
    let base = google.base_url();
    let mut config = Config::default();
    config.google.client_secret_file = Some(secret_path);
    config.google.jwks_uri = format!("{base}/oauth2/v3/certs");
    config.google.revoke_uri = format!("{base}/revoke");
    config.google.drive_api_base = base.clone();
    config.google.android_client_ids = vec![google.clients().android_client_id];
    config.risc.configuration_uri = format!("{base}/.well-known/risc-configuration");
    config.risc.api_base = base.clone();
    config.intake.listen = listen;
    config.api.listen = Some(api_listen.to_string());
    config.store.state_dir = Some(dir.to_path_buf());
    config.store.encryption_key_file = Some(key_path);
    config.admin.socket = dir.join("admin.sock");
    config.log.format = LogFormat::Human;
    config.log.level = "info".into();
    // Short cycles so a change on the emulator shows up within seconds.
    config.sync.schedule = "*/10 * * * * *".into();
    config.resolve()
}

/// Builds the daemon; when the documented intake or API port is taken, on free ports.
async fn build_app(config: ResolvedConfig, log: telemetry::LogHandle) -> anyhow::Result<App> {
    match App::build(config.clone(), Some(log.clone())).await {
        Ok(app) => Ok(app),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot use the documented ports; picking free ones");
            let mut config = config;
            config.raw.intake.listen.set_port(0);
            if let Some(ApiListen::Tcp(addr)) = &mut config.api.listen {
                addr.set_port(0);
            }
            App::build(config, Some(log)).await
        }
    }
}

/// The data API's address and the key `dev` made for it.
struct Api {
    url: String,
    key: String,
}

/// Demo users with a settings file each, signed in through the intake exactly as the Android
/// sample does (HttpPost + UrlEncodedFormEntity).
async fn sign_in_demo_users(
    google: &FakeGoogle,
    intake: &str,
    users: usize,
    files: u32,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let emulator = google.emulator();
    for i in 1..=users {
        let sub = format!("1000000000000000000{i:02}");
        emulator
            .create_user(NewUser {
                sub: sub.clone(),
                email: Some(format!("demo{i}@example.com")),
                name: Some(format!("Demo User {i}")),
                ..Default::default()
            })
            .map_err(|e| anyhow::anyhow!("creating demo user: {e}"))?;
        emulator
            .put_file(
                &sub,
                "settings.json",
                format!("{{\"theme\": \"dark\", \"n\": {i}}}"),
                Some("application/json"),
            )
            .map_err(|e| anyhow::anyhow!("creating a demo file: {e}"))?;
        for f in 2..=files {
            emulator
                .put_file(
                    &sub,
                    &format!("file-{f}.json"),
                    format!("{{\"user\": {i}, \"file\": {f}}}"),
                    Some("application/json"),
                )
                .map_err(|e| anyhow::anyhow!("creating a demo file: {e}"))?;
        }
        let code = emulator
            .mint_auth_code(MintCode {
                sub: sub.clone(),
                ..Default::default()
            })
            .map_err(|e| anyhow::anyhow!("minting an auth code: {e}"))?;
        let resp = http
            .post(format!("{intake}/authcode"))
            .form(&[("authCode", code)])
            .send()
            .await?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        println!("POST {intake}/authcode for demo user {i}: {status} {body}");
    }
    Ok(())
}

fn print_first_sync(e: &SyncEvent) {
    if e.phase == SyncPhase::Finished {
        let outcome = e.outcome.map_or("?", |o| o.as_str());
        println!(
            "first sync of {}: {outcome} ({} file(s) mirrored)",
            e.sub, e.added
        );
    }
}

fn print_banner(dir: &Path, google: &FakeGoogle, intake: &str, socket: &Path, api: &Api) {
    let base = google.base_url();
    let clients = google.clients();
    let ctl = format!(
        "{} ctl --socket {}",
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "appdata-syncd".into()),
        socket.display()
    );
    println!(
        "\nappdata-syncd dev is running.\n\
         \n  folder       {dir}\
         \n  intake       {intake}/authcode\
         \n  fake-google  {base}  (web client {web}, android client {android})\
         \n  data API     {api_url}\
         \n  API key      {key}  (read and write; docs/data-api.md)\
         \n\nTry:\
         \n  curl -s -H 'Authorization: Bearer {key}' {api_url}/v1/users\
         \n  curl -s -H 'Authorization: Bearer {key}' '{api_url}/v1/users/100000000000000000001/content?path=settings.json'\
         \n  curl -s -H 'Authorization: Bearer {key}' '{api_url}/v1/changes?wait=30s'\
         \n  curl -s {intake}/readyz\
         \n  curl -s -X PUT --data-binary '{{\"theme\": \"light\"}}' {base}/_emulator/users/100000000000000000001/appdata/settings.json\
         \n  curl -s {base}/_emulator/stats\
         \n  {ctl} status\
         \n  {ctl} users\
         \n  {ctl} files 100000000000000000001\
         \n  {ctl} resync 100000000000000000001 --wait\
         \n  curl -s -XPOST {base}/_emulator/risc/events -d '{{\"sub\": \"100000000000000000001\", \"event\": \"account-disabled\"}}'\
         \n  {ctl} user 100000000000000000001\
         \n\nCtrl-C stops.",
        dir = dir.display(),
        web = clients.web_client_id,
        android = clients.android_client_id,
        api_url = api.url,
        key = api.key,
    );
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}
