//! The soak's calls out: the emulator's `/_emulator/` control API, sign-ins posted to the
//! intake as the Android app does, and commands on the admin socket.

use std::time::Duration;

use anyhow::{bail, Context};
use appdata_syncd::admin::client::AdminClient;
use appdata_syncd::admin::protocol::{Command, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::state::{lock, Soak};

impl Soak {
    /// A call to the emulator's `/_emulator/` control API, whatever its status.
    pub(super) async fn raw(
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
    pub(super) async fn control(
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
    pub(super) async fn sign_in(&self, sub: &str, consent: bool) -> anyhow::Result<()> {
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
        let what = if consent {
            "sign-in with consent"
        } else {
            "sign-in"
        };
        let sent = self
            .http
            .post(&self.authcode_url)
            .form(&[("authCode", code.code)])
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
                self.counts.add("signin.acknowledged");
                self.trail(sub, format!("{what}: acknowledged"));
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
                self.trail(sub, format!("{what}: refused {status} {code}"));
            }
            Err(e) if e.is_connect() => {
                self.counts.add("signin.daemon_down");
                self.trail(sub, format!("{what}: daemon down"));
            }
            Err(_) => {
                // Sent, but the answer never came: it may or may not have been stored.
                self.counts.add("signin.no_answer");
                self.trail(sub, format!("{what}: no answer"));
                lock(&self.model).uncertain.insert(sub.to_string());
            }
        }
        Ok(())
    }

    pub(super) async fn files_of(&self, sub: &str) -> anyhow::Result<Vec<EmuFile>> {
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

    pub(super) async fn admin(&self, command: &Command) -> anyhow::Result<Response> {
        self.admin_with(command, None).await
    }

    /// Sends `command` and then `upload` (a push's content).
    async fn admin_with(
        &self,
        command: &Command,
        upload: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        let mut client = AdminClient::connect(&self.paths.socket).await?;
        let mut upload = upload;
        let upload = upload
            .as_mut()
            .map(|u| u as &mut (dyn tokio::io::AsyncRead + Unpin + Send));
        let answer = client.request_with_upload(command, upload, |_| {});
        tokio::time::timeout(Duration::from_secs(120), answer)
            .await
            .context("no answer in 120 s")?
    }

    /// Sends `command`, counting it as "admin.NAME" and its outcome as "admin_result.NAME.X".
    pub(super) async fn admin_counted(&self, name: &str, command: &Command) -> Option<Value> {
        self.admin_counted_with(name, command, None).await
    }

    /// [`Self::admin_counted`], with a push's content.
    pub(super) async fn admin_counted_with(
        &self,
        name: &str,
        command: &Command,
        upload: Option<&[u8]>,
    ) -> Option<Value> {
        self.counts.add(format!("admin.{name}"));
        let outcome = match self.admin_with(command, upload).await {
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
pub(super) struct EmuFile {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) md5_checksum: String,
}
