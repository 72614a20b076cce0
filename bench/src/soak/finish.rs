//! The end of the run: faults cleared, paused users resumed, two `resync --all` rounds to
//! completion, then the daemon stopped so that [`super::check()`] sees settled state.

use std::time::{Duration, Instant};

use anyhow::bail;
use appdata_syncd::admin::protocol::Command;
use appdata_syncd::store::Store;
use serde_json::json;

use super::config::sqlite_url;
use super::log;
use super::process::DaemonProc;
use super::state::Soak;

/// Faults off, paused users resumed, two `resync --all` rounds to completion, then SIGTERM.
pub(super) async fn finish(soak: &Soak) -> anyhow::Result<()> {
    soak.google.set_faults(json!({})).await?;
    let mut slot = soak.daemon.lock().await;
    let alive = match slot.as_mut() {
        Some(d) => d.child.try_wait()?.is_none(),
        None => false,
    };
    if !alive {
        *slot = Some(DaemonProc::start(&soak.paths).await?);
    }
    let store = Store::connect(&sqlite_url(&soak.paths.db), 1).await?;
    let paused: Vec<String> = sqlx::query_scalar("SELECT sub FROM users WHERE state = 'paused'")
        .fetch_all(store.pool())
        .await?;
    for sub in paused {
        if soak.admin(&Command::Resume { sub: sub.clone() }).await?.ok != Some(true) {
            soak.violation(format!("final resume of {sub} refused"));
        }
    }
    for round in 1..=2 {
        let t = Instant::now();
        let r = soak
            .admin(&Command::Resync {
                sub: None,
                all: true,
                full: false,
                wait: false,
            })
            .await?;
        if r.ok != Some(true) {
            bail!("final resync --all refused: {:?}", r.error);
        }
        wait_quiet(soak, &store).await?;
        log(format!(
            "final resync round {round}: {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    }
    store.close().await;
    if let Some(d) = slot.take() {
        if let Err(e) = d.stop().await {
            soak.violation(format!("final stop: {e:#}"));
        }
    }
    Ok(())
}

/// Until no active user waits for its resync and nothing runs or is queued (twice in a row).
async fn wait_quiet(soak: &Soak, store: &Store) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut quiet = 0;
    while quiet < 2 {
        if Instant::now() > deadline {
            bail!("the final resync did not finish within 10 min");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM users u JOIN credentials c ON c.sub = u.sub \
             WHERE u.state = 'active' AND u.resync_requested > 0",
        )
        .fetch_one(store.pool())
        .await?;
        let status = soak
            .admin(&Command::Status)
            .await?
            .result
            .unwrap_or_default();
        let busy = status["syncs_running"].as_u64().unwrap_or(1)
            + status["syncs_queued"].as_u64().unwrap_or(1);
        quiet = if waiting == 0 && busy == 0 {
            quiet + 1
        } else {
            0
        };
    }
    Ok(())
}
