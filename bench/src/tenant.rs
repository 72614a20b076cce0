//! Another tenant of the same Google project: a second backend with its own user and access
//! token that sends Drive requests at a fixed rate while the daemon syncs, so that the daemon
//! shares the project's quota without being told. It does not slow down when refused (it is
//! the part of the load the daemon cannot control); it counts what Google accepted and refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::google::FakeGoogle;

/// Requests of the tenant in flight at most; beyond it a tick is skipped (and counted), so a
/// stalled emulator cannot pile up tasks.
const MAX_IN_FLIGHT: usize = 256;

/// What the tenant's requests got so far.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct TenantCount {
    /// 2xx.
    pub accepted: u64,
    /// 429, or 403 rateLimitExceeded (nothing else answers 403 here).
    pub refused: u64,
    /// Any other status, or no answer: the measurement is off, so the report counts it as
    /// an error.
    pub failed: u64,
    /// Ticks skipped because MAX_IN_FLIGHT requests were outstanding.
    pub skipped: u64,
}

impl TenantCount {
    /// Requests fake-google answered with a status (and so counted in its stats).
    pub fn answered(&self) -> u64 {
        self.accepted + self.refused
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> TenantCount {
        TenantCount {
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
        }
    }
}

/// A signed-in tenant, not yet sending.
pub struct Tenant {
    http: reqwest::Client,
    /// `changes.getStartPageToken`: the cheapest Drive call, one quota unit like any other.
    /// <https://developers.google.com/workspace/drive/api/reference/rest/v3/changes/getStartPageToken>
    url: String,
    token: String,
}

impl Tenant {
    /// Creates emulator user `sub` and gets it an access token of its own (not timed; call
    /// before the stats are reset, as it counts one `token` call).
    pub async fn sign_in(google: &FakeGoogle, sub: &str) -> anyhow::Result<Tenant> {
        google.create_user(sub).await?;
        let token = google.access_token(sub).await?;
        Ok(Tenant {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            url: format!("{}/drive/v3/changes/startPageToken", google.base),
            token,
        })
    }

    /// Starts sending `per_second` requests a second, evenly spaced, until [`Running::stop`].
    pub fn start(self, per_second: f64) -> Running {
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(self.send_until(per_second, counters.clone(), stop.clone()));
        Running {
            counters,
            stop,
            task,
        }
    }

    async fn send_until(self, per_second: f64, counters: Arc<Counters>, stop: CancellationToken) {
        let me = Arc::new(self);
        let requests = TaskTracker::new();
        // Burst (the default): ticks missed on a busy machine are caught up, so the average
        // rate is the one asked for.
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second.max(0.1)));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            if requests.len() >= MAX_IN_FLIGHT {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (me, counters) = (me.clone(), counters.clone());
            requests.spawn(async move { me.one(&counters).await });
        }
        requests.close();
        requests.wait().await;
    }

    async fn one(&self, counters: &Counters) {
        let sent = self.http.get(&self.url).bearer_auth(&self.token).send();
        let slot = match sent.await {
            Ok(resp) => {
                let status = resp.status();
                let _ = resp.bytes().await;
                match status.as_u16() {
                    200..=299 => &counters.accepted,
                    403 | 429 => &counters.refused,
                    _ => &counters.failed,
                }
            }
            Err(_) => &counters.failed,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

/// The tenant while it sends.
pub struct Running {
    counters: Arc<Counters>,
    /// Cancelled by [`Running::stop`]: the sender stops ticking and waits for its requests.
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn count(&self) -> TenantCount {
        self.counters.snapshot()
    }

    /// Stops sending, waits for the requests in flight, and returns the final count.
    pub async fn stop(self) -> TenantCount {
        self.stop.cancel();
        let _ = self.task.await;
        self.counters.snapshot()
    }
}
