//! The daemon child process: started as this binary's hidden `soak-daemon` subcommand, stopped
//! with SIGTERM (graceful) or SIGKILL (abrupt). [`serve_daemon`] is the child's side.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use appdata_syncd::admin::client::AdminClient;
use appdata_syncd::admin::protocol::Command;
use appdata_syncd::config::Config;
use appdata_syncd::lifecycle::{run_with_signals, App};
use tokio::process::{Child, Command as Process};

use super::config::Paths;

/// How long a graceful stop (SIGTERM) may take: shutdown_grace 10 s plus the intake drain.
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

/// The hidden `soak-daemon` subcommand: what `appdata-syncd serve --config PATH` does.
pub async fn serve_daemon(config: &Path) -> anyhow::Result<()> {
    let config = Config::load(Some(config))?.resolve()?;
    let log = appdata_syncd::telemetry::init(&config.raw.log)?;
    let app = App::build(config, Some(log)).await?;
    run_with_signals(app).await
}

/// The daemon child process.
pub(super) struct DaemonProc {
    pub(super) child: Child,
}

impl DaemonProc {
    /// Starts `soak-daemon` and waits until its admin socket answers.
    pub(super) async fn start(paths: &Paths) -> anyhow::Result<DaemonProc> {
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
    pub(super) async fn stop(mut self) -> anyhow::Result<()> {
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
    pub(super) async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("killing the daemon")
    }
}
