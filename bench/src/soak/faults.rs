//! Load: windows of Drive, token and JWKS errors, resets and latency on the emulator.

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::state::Soak;
use super::{log, pause, secs};

/// A fault window every 4 to 15 s, held 2 to 8 s.
pub(super) async fn faults(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    while pause(&stop, secs(4.0, 15.0)).await {
        let (kind, faults) = {
            let mut rng = rand::thread_rng();
            let rate: f64 = rng.gen_range(0.05..0.5);
            match rng.gen_range(0..8) {
                0 | 1 => {
                    let status = *[500u16, 503, 429, 403].choose(&mut rng).unwrap_or(&503);
                    (
                        format!("drive_{status}"),
                        json!({ "drive": { "error_rate": rate, "error_status": status } }),
                    )
                }
                2 => (
                    "drive_outage".to_string(),
                    json!({ "drive": { "error_rate": 1.0, "error_status": 503, "retry_after_s": 1 } }),
                ),
                3 => (
                    "drive_reset".to_string(),
                    json!({ "drive": { "reset_rate": rate.min(0.3) } }),
                ),
                4 => (
                    "drive_latency".to_string(),
                    json!({ "drive": { "latency_ms": rng.gen_range(100..800), "jitter_ms": 100 } }),
                ),
                5 => {
                    let status = *[500u16, 503, 429].choose(&mut rng).unwrap_or(&500);
                    (
                        format!("token_{status}"),
                        json!({ "token": { "error_rate": rate, "error_status": status } }),
                    )
                }
                6 => (
                    "token_reset".to_string(),
                    json!({ "token": { "reset_rate": rate.min(0.3) } }),
                ),
                _ => (
                    "jwks_down".to_string(),
                    json!({ "jwks": { "error_rate": 1.0, "error_status": 503 } }),
                ),
            }
        };
        match soak.google.set_faults(faults).await {
            Ok(()) => soak.counts.add(format!("fault.{kind}")),
            Err(e) => {
                log(format!("fault {kind} refused by the emulator: {e:#}"));
                soak.counts.add(format!("fault_refused.{kind}"));
                continue;
            }
        }
        // Cleared even when the run ends inside the window.
        let _ = pause(&stop, secs(2.0, 8.0)).await;
        soak.google.set_faults(json!({})).await?;
    }
    Ok(())
}
