//! The daemon in this process: `spawn_app()` returns a [`TestApp`] with a temp dir, a real
//! SQLite file (or PostgreSQL database), fake-google on a loopback port and typed helpers.

use std::path::PathBuf;
use std::sync::Arc;

use appdata_syncd::config::Config;
use appdata_syncd::lifecycle::App;
use appdata_syncd::scheduler::{CycleOutcome, Scheduler};
use appdata_syncd::services::data::Item;
use appdata_syncd::services::writes::{WriteTarget, WriteView};
use appdata_syncd::services::Services;
use appdata_syncd::store::Store;
use fake_google::{FakeGoogle, MintCode, NewUser};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::{google, hex, test_config, test_dir, TestDir};

pub struct TestApp {
    pub dir: TestDir,
    pub google: FakeGoogle,
    /// `http://127.0.0.1:PORT` of the intake.
    pub intake: String,
    /// The data API's base URL, when the test turned it on (`[api] listen`).
    pub api: Option<String>,
    pub store: Store,
    pub scheduler: Arc<Scheduler>,
    /// What the front doors call: every admin operation.
    pub services: Arc<Services>,
    pub http: reqwest::Client,
    /// The mirror's directory ([sync] data_dir).
    mirror: PathBuf,
    shutdown: CancellationToken,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    init_test_log();
    start(test_dir(), google().await, tweak).await
}

/// The daemon on `dir` (its database and mirror) and `google`.
async fn start(dir: TestDir, google: FakeGoogle, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config(dir.path(), &google);
    tweak(&mut config);
    let mirror = config
        .sync
        .data_dir
        .clone()
        .unwrap_or_else(|| dir.path().join("mirror"));
    let app = App::build(config.resolve().unwrap(), None).await.unwrap();
    let intake = format!("http://{}", app.intake_addr());
    let api = app.api_url();
    let store = app.store().clone();
    let scheduler = app.scheduler().clone();
    let services = app.services().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        dir,
        google,
        intake,
        api,
        store,
        scheduler,
        services,
        http: reqwest::Client::new(),
        mirror,
        shutdown,
        running: Some(running),
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
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

    /// Queues a write of `content` to `path` (a create, or a replace of the version mirrored
    /// now, as `ctl push` does), as the data API's PUT does.
    pub async fn put(
        &self,
        sub: &str,
        path: &str,
        mime_type: Option<&str>,
        content: &[u8],
    ) -> WriteView {
        let current = self.services.content_item(sub, Item::Path(path)).await;
        let seen = current.ok().and_then(|c| c.file.md5);
        let target = WriteTarget {
            sub,
            item: Item::Path(path),
            if_match: seen.as_deref(),
            if_none_match: None,
            sync_now: false,
        };
        let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(
            content,
        ))]);
        let size = Some(content.len() as u64);
        self.services
            .put_content(&target, mime_type, size, body)
            .await
            .unwrap()
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

    /// A client of the data API (which the test turned on) with a new key.
    pub async fn api_client(&self, write: bool) -> super::ApiClient {
        let name = format!("test-{}", rand_suffix());
        let key = self.services.create_api_key(&name, write).await.unwrap();
        super::ApiClient::new(self.api.clone().expect("[api] listen is on"), &key.key)
    }

    /// Runs one sync cycle, then steps the change feed so its changes are sequenced.
    pub async fn cycle_and_sequence(&self) -> CycleOutcome {
        let outcome = self.cycle().await;
        self.services.feed().sequence_once().await.unwrap();
        outcome
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
        let mut with_content = Vec::new();
        for f in &remote {
            let row = local.iter().find(|l| l.file_id == f.id).unwrap();
            assert_eq!(row.name, f.name, "name of {}", f.id);
            assert_eq!(
                row.parent_id,
                f.parents.first().cloned(),
                "parent of {}",
                f.id
            );
            // Folders and Google-native files have no content: metadata only.
            let metadata_only = f.is_folder() || f.is_google_native();
            assert_eq!(
                row.metadata_only, metadata_only,
                "kind of {} ({})",
                f.id, f.name
            );
            if metadata_only {
                continue;
            }
            with_content.push(f.id.clone());
            assert_eq!(
                row.md5.as_deref(),
                Some(f.md5_checksum.as_str()),
                "md5 of {}",
                f.id
            );
            let bytes = std::fs::read(self.data_dir().join(sub).join(&f.id)).unwrap();
            let want = self.google.emulator().file_content(sub, &f.id).unwrap();
            assert!(bytes == want.as_ref(), "content of {} ({})", f.id, f.name);
        }
        let on_disk = match std::fs::read_dir(self.data_dir().join(sub)) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|name| name != "manifest.json")
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut on_disk: Vec<String> = on_disk;
        on_disk.sort();
        with_content.sort();
        assert_eq!(on_disk, with_content, "files on disk for {sub}");
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.await.unwrap().unwrap();
        }
        crate::log_scan::assert_in_process_logs_clean(self.google.emulator());
    }

    /// Stops the daemon cleanly and starts it again on the same database, mirror and
    /// fake-google, its configuration changed by `tweak`.
    pub async fn restart_with(mut self, tweak: impl FnOnce(&mut Config)) -> TestApp {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.await.unwrap().unwrap();
        }
        let TestApp { dir, google, .. } = self;
        start(dir, google, tweak).await
    }
}
