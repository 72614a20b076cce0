//! Signals arrive through signal-hook on a dedicated thread: SIGTERM/SIGINT ask for a stop (a
//! second one exits at once), SIGHUP reloads the configuration.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::App;

/// What the signal thread asks of the daemon.
#[derive(Debug, Clone, Copy)]
pub enum SignalRequest {
    Stop,
    Reload,
}

/// SIGTERM/SIGINT → `Stop` (a second one exits at once: every acknowledged write is already
/// durable, so nothing committed is lost), SIGHUP → `Reload`.
pub fn spawn_signal_listener() -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<SignalRequest>>
{
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stops = 0;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    let _ = tx.send(SignalRequest::Reload);
                    continue;
                }
                stops += 1;
                if stops == 1 {
                    tracing::info!(signal, "stop requested; finishing in-flight work");
                    let _ = tx.send(SignalRequest::Stop);
                } else {
                    tracing::warn!(signal, "second stop signal: exiting now");
                    std::process::exit(1);
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(rx)
}

/// Serves `app` until SIGTERM/SIGINT, reloading on SIGHUP. What `serve` and `dev` run.
pub async fn run_with_signals(app: App) -> anyhow::Result<()> {
    let mut signals = spawn_signal_listener()?;
    let shutdown = CancellationToken::new();
    let services = app.services().clone();
    let handler = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            while let Some(req) = signals.recv().await {
                match req {
                    SignalRequest::Stop => shutdown.cancel(),
                    SignalRequest::Reload => {
                        let _ = services.reload().await;
                    }
                }
            }
        })
    };
    let result = app.run_until_stopped(shutdown).await;
    handler.abort();
    result
}
