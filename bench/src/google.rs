//! fake-google in a child process, so that this process's peak RSS and CPU time are the
//! daemon's. The child is this binary's hidden `fake-google` subcommand ([`serve_child`]); the
//! parent drives it over the `/_emulator/` control API documented in fake-google/README.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::measure;

pub use fake_google::BulkUser;

/// Child side: serves on 127.0.0.1:0, writes client_secret.json, prints its base URL on one
/// line of stdout, and exits when stdin closes (the parent exited or dropped us).
pub async fn serve_child(write_client_secret: &Path) -> anyhow::Result<()> {
    let fg = fake_google::FakeGoogle::start().await?;
    let json = serde_json::to_vec_pretty(&fg.client_secret_json())?;
    std::fs::write(write_client_secret, json)
        .with_context(|| format!("writing {}", write_client_secret.display()))?;
    // Readable by its owner only, as the daemon requires of a secret.
    std::fs::set_permissions(
        write_client_secret,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    println!("{}", fg.base_url());
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    fg.shutdown().await;
    Ok(())
}

/// The parent's handle on the running emulator.
pub struct FakeGoogle {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub client_secret_file: PathBuf,
    pub android_client_id: String,
    pub web: WebClient,
    http: reqwest::Client,
}

/// The parts of `GET /_emulator/stats` we use. `by_user` (one map per user: megabytes at 100k
/// users) is skipped by serde without being built.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Stats {
    pub requests: BTreeMap<String, u64>,
    pub by_status: BTreeMap<String, u64>,
    /// `http.1`, `http.2` (Google calls by protocol), `resumable.*`, …; zeros are left out.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

impl Stats {
    pub fn count(&self, endpoint: &str) -> u64 {
        self.requests.get(endpoint).copied().unwrap_or(0)
    }

    pub fn drive_calls(&self) -> u64 {
        self.requests
            .iter()
            .filter(|(k, _)| k.starts_with("files.") || k.starts_with("changes."))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn status(&self, code: u16) -> u64 {
        self.by_status.get(&code.to_string()).copied().unwrap_or(0)
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Google calls by HTTP version, as `{"http.1": n, "http.2": n}`.
    pub fn http_versions(&self) -> BTreeMap<&'static str, u64> {
        ["http.1", "http.2"]
            .into_iter()
            .map(|k| (k, self.counter(k)))
            .collect()
    }
}

/// The web client the daemon signs users in with (`/_emulator/clients`).
#[derive(Debug, Clone, Deserialize)]
pub struct WebClient {
    pub client_id: String,
    pub client_secret: String,
}

impl FakeGoogle {
    /// Starts the emulator child and waits until it serves.
    pub async fn spawn(dir: &Path) -> anyhow::Result<FakeGoogle> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let client_secret_file = dir.join("client_secret.json");
        let mut child = Command::new(exe)
            .arg("fake-google")
            .arg("--write-client-secret")
            .arg(&client_secret_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the fake-google child process")?;
        let pid = child.id().context("fake-google exited at once")?;
        let stdout = child.stdout.take().context("no stdout from fake-google")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .context("fake-google did not start within 30 s")??;
        let base = line.trim().to_string();
        if !base.starts_with("http://") {
            bail!("fake-google printed {base:?} instead of its base URL");
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;
        #[derive(Deserialize)]
        struct Clients {
            android_client_id: String,
            web: WebClient,
        }
        let clients: Clients = http
            .get(format!("{base}/_emulator/clients"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(FakeGoogle {
            child,
            pid,
            base,
            client_secret_file,
            android_client_id: clients.android_client_id,
            web: clients.web,
            http,
        })
    }

    async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/_emulator/{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} /_emulator/{path}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            bail!("{method} /_emulator/{path}: {status}: {text}");
        }
        Ok(resp)
    }

    pub async fn create_user(&self, sub: &str) -> anyhow::Result<()> {
        self.control(
            reqwest::Method::POST,
            "users",
            Some(serde_json::json!({ "sub": sub })),
        )
        .await?;
        Ok(())
    }

    /// Users `{prefix}{i:07}` for i in from..from+count, signed in at once on the emulator
    /// (`POST /_emulator/bulk-users`): their tokens and changes start page tokens.
    pub async fn bulk_users(
        &self,
        prefix: &str,
        from: usize,
        count: usize,
    ) -> anyhow::Result<Vec<BulkUser>> {
        #[derive(Deserialize)]
        struct Made {
            users: Vec<BulkUser>,
        }
        let made: Made = self
            .control(
                reqwest::Method::POST,
                "bulk-users",
                Some(serde_json::json!({ "prefix": prefix, "from": from, "count": count })),
            )
            .await?
            .json()
            .await?;
        Ok(made.users)
    }

    /// What the Android app gets from getServerAuthCode().
    pub async fn mint_code(&self, sub: &str) -> anyhow::Result<String> {
        #[derive(Deserialize)]
        struct Code {
            code: String,
        }
        let c: Code = self
            .control(
                reqwest::Method::POST,
                "authcodes",
                Some(serde_json::json!({ "sub": sub })),
            )
            .await?
            .json()
            .await?;
        Ok(c.code)
    }

    /// An access token of the user's own, for a client other than the daemon: a code minted
    /// and redeemed at `/token` with the web client, as a second backend of the same Google
    /// project would. Counts one `token` call; call it before the stats are reset.
    pub async fn access_token(&self, sub: &str) -> anyhow::Result<String> {
        #[derive(Deserialize)]
        struct Issued {
            access_token: String,
        }
        let code = self.mint_code(sub).await?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("client_id", self.web.client_id.as_str()),
            ("client_secret", self.web.client_secret.as_str()),
            ("redirect_uri", ""),
        ];
        let resp = self
            .http
            .post(format!("{}/token", self.base))
            .form(&form)
            .send()
            .await
            .context("POST /token")?;
        if !resp.status().is_success() {
            bail!("POST /token: {}", resp.status());
        }
        Ok(resp.json::<Issued>().await?.access_token)
    }

    /// Creates or updates the file named `name` in the user's appDataFolder, as the phone would.
    pub async fn put_file(&self, sub: &str, name: &str, content: Vec<u8>) -> anyhow::Result<()> {
        let path = format!("users/{sub}/appdata/{}", name.replace('/', "%2F"));
        let resp = self
            .http
            .put(format!("{}/_emulator/{path}", self.base))
            .header("content-type", "application/octet-stream")
            .body(content)
            .send()
            .await
            .with_context(|| format!("PUT /_emulator/{path}"))?;
        if !resp.status().is_success() {
            bail!("PUT /_emulator/{path}: {}", resp.status());
        }
        Ok(())
    }

    /// `{"drive": {...}, "token": {...}}` as in fake-google/README.md; `{}` clears.
    pub async fn set_faults(&self, faults: serde_json::Value) -> anyhow::Result<()> {
        self.control(reqwest::Method::PUT, "faults", Some(faults))
            .await?;
        Ok(())
    }

    pub async fn stats(&self) -> anyhow::Result<Stats> {
        Ok(self
            .control(reqwest::Method::GET, "stats", None)
            .await?
            .json()
            .await?)
    }

    /// [`FakeGoogle::stats`] without the per-user counts the emulator would otherwise build
    /// and send (megabytes at 100,000 users): for samplers.
    pub async fn totals(&self) -> anyhow::Result<Stats> {
        Ok(self
            .control(reqwest::Method::GET, "stats?by_user=false", None)
            .await?
            .json()
            .await?)
    }

    pub async fn reset_stats(&self) -> anyhow::Result<()> {
        self.control(reqwest::Method::DELETE, "stats", None).await?;
        Ok(())
    }

    pub fn cpu(&self) -> Duration {
        measure::cpu_of(self.pid).unwrap_or_default()
    }

    pub fn peak_rss_mib(&self) -> f64 {
        measure::peak_rss_mib(Some(self.pid)).unwrap_or(0.0)
    }

    pub async fn stop(mut self) {
        // Closing stdin asks it to exit; kill if it does not.
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
