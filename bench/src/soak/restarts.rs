//! Load: the daemon restarted with SIGTERM or SIGKILL, and watched for exiting on its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::process::DaemonProc;
use super::state::Soak;
use super::{log, pause, secs};

/// Every `duration/12` (30 s to 3 min), with jitter: SIGTERM or SIGKILL, then a new daemon.
/// Between restarts, checks once a second that the daemon is still alive.
pub(super) async fn restarts(
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
            soak.next_epoch();
            soak.violation(format!("the daemon exited on its own ({status})"));
            slot.take();
        } else if Instant::now() < next {
            continue;
        } else if let Some(d) = slot.take() {
            soak.next_epoch();
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
        soak.next_epoch();
    }
    Ok(())
}
