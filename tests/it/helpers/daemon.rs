//! The real `appdata-syncd serve` binary, configured against fake-google in a test directory,
//! logging at trace into a file that the secrets check reads; and `ctl`, the real client.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use appdata_syncd::config::Config;
use fake_google::FakeGoogle;

use super::{free_port, test_config, wait_ready, write_config};

/// The `appdata-syncd` binary built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_appdata-syncd")
}

pub struct Daemon {
    pub child: tokio::process::Child,
    /// The configuration it was started with, and where it was written.
    pub config: Config,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub intake: String,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts the daemon in `dir` on a free port with the test config, changed by `tweak`.
    pub async fn start(dir: &Path, google: &FakeGoogle, tweak: impl FnOnce(&mut Config)) -> Daemon {
        let mut config = test_config(dir, google);
        config.intake.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        tweak(&mut config);
        Self::run(dir, config, &[]).await
    }

    /// Writes `config` to `dir/config.toml` and starts the daemon on it (its intake must be on
    /// a fixed port), with `env` added; waits until it is ready.
    pub async fn run(dir: &Path, config: Config, env: &[(&str, &str)]) -> Daemon {
        let config_path = write_config(dir, &config);
        let port = config.intake.listen.port();
        assert_ne!(port, 0, "a daemon binary needs a known port");
        let log = dir.join(format!("daemon-{port}.log"));
        let mut cmd = tokio::process::Command::new(binary());
        cmd.args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let daemon = Daemon {
            child,
            socket: config.admin.socket.clone(),
            intake: format!("http://127.0.0.1:{port}"),
            config,
            config_path,
            log,
        };
        wait_ready(&format!("{}/readyz", daemon.intake)).await;
        daemon
    }

    /// Rewrites the config file (for a reload): `tweak` changes what the daemon was started with.
    pub fn rewrite_config(&mut self, tweak: impl FnOnce(&mut Config)) {
        tweak(&mut self.config);
        std::fs::write(&self.config_path, self.config.to_toml().unwrap()).unwrap();
    }

    /// Runs `appdata-syncd ctl --socket SOCKET ARGS...`.
    pub async fn ctl(&self, args: &[&str]) -> CtlOutput {
        ctl(&self.socket, args).await
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.id() {
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// SIGTERM, then waits (at most `limit`) for the exit status.
    pub async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.exit_within(limit).await
    }

    /// Waits (at most `limit`) for the daemon to exit on its own.
    pub async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("daemon did not exit within {limit:?}"),
        }
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if !std::thread::panicking() {
            crate::log_scan::assert_log_clean("a daemon binary", &self.logs());
        }
    }
}

/// What `ctl` printed, and how it exited.
pub struct CtlOutput {
    pub ok: bool,
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", self.stdout, self.stderr))
    }
}

pub async fn ctl(socket: &Path, args: &[&str]) -> CtlOutput {
    ctl_env(socket, args, &[]).await
}

/// `ctl` with `env` set; whatever the test runner's environment says of width and colors is
/// left out, so output is as in a pipe: 80 columns, no colors.
pub async fn ctl_env(socket: &Path, args: &[&str], env: &[(&str, &str)]) -> CtlOutput {
    let out = tokio::process::Command::new(binary())
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("COLUMNS")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    CtlOutput {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
