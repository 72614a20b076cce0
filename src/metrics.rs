//! Prometheus metrics: one process-wide recorder ([`install`]), served as text on
//! `[metrics] listen` by [`serve`]. Metric names live here, in one place, so the dashboard
//! contract is visible at a glance; the rest of the code calls the small helpers below.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once per process) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            const BUCKETS: &[f64] = &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ];
            let full = |name: &str| metrics_exporter_prometheus::Matcher::Full(name.into());
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(full("appdata_syncd_sync_duration_seconds"), BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(full("appdata_syncd_rate_limit_wait_seconds"), BUCKETS)
                })
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder is installed, which this process never does.
            let _ = metrics::set_global_recorder(recorder);
            // Counters without labels exist from the start, at 0: rate() and the alerts in
            // contrib/prometheus see a quiet counter, not a missing one.
            for name in [
                "appdata_syncd_bytes_downloaded_total",
                "appdata_syncd_bytes_uploaded_total",
                "appdata_syncd_rate_limit_waits_total",
                "appdata_syncd_intake_connections_refused_total",
                "appdata_syncd_intake_connections_evicted_total",
            ] {
                metrics::counter!(name).increment(0);
            }
            handle
        })
        .clone()
}

/// A call to Google: `status` is the HTTP status, or "error" when no answer came.
pub fn google_call(endpoint: &'static str, status: Option<u16>) {
    let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
    metrics::counter!("appdata_syncd_google_requests_total", "endpoint" => endpoint, "status" => status)
        .increment(1);
}

pub fn sync_finished(outcome: &'static str, duration: Duration, bytes_down: i64, bytes_up: i64) {
    metrics::counter!("appdata_syncd_syncs_total", "outcome" => outcome).increment(1);
    metrics::histogram!("appdata_syncd_sync_duration_seconds").record(duration.as_secs_f64());
    metrics::counter!("appdata_syncd_bytes_downloaded_total").increment(bytes_down.max(0) as u64);
    metrics::counter!("appdata_syncd_bytes_uploaded_total").increment(bytes_up.max(0) as u64);
}

/// outcome: "ok", "revoked" or "error".
pub fn token_refresh(outcome: &'static str) {
    metrics::counter!("appdata_syncd_token_refreshes_total", "outcome" => outcome).increment(1);
}

/// A call that had to wait for the rate limiter. The wait is a histogram: its `_sum` is the
/// total in (fractional) seconds, which a counter of whole seconds would round to nothing.
pub fn rate_limit_wait(waited: Duration) {
    metrics::counter!("appdata_syncd_rate_limit_waits_total").increment(1);
    metrics::histogram!("appdata_syncd_rate_limit_wait_seconds").record(waited.as_secs_f64());
}

/// The rate of calls to Google in force (lowered by quota refusals, see `google::RateLimit`).
pub fn request_rate(per_second: u32) {
    metrics::gauge!("appdata_syncd_request_rate_per_second").set(per_second as f64);
}

/// A connection refused at the cap (every open connection had already spoken).
pub fn connection_refused() {
    metrics::counter!("appdata_syncd_intake_connections_refused_total").increment(1);
}

/// A silent connection closed to make room for a new one at the cap.
pub fn connection_evicted() {
    metrics::counter!("appdata_syncd_intake_connections_evicted_total").increment(1);
}

/// How many users are over a mirror limit (content withheld).
pub fn set_users_over_quota(n: i64) {
    metrics::gauge!("appdata_syncd_users_over_quota").set(n as f64);
}

/// Free bytes on the mirror's disk (not exported for an object store) and
/// `[sync] min_free_disk_bytes`, under which downloads stop: the disk-space alert compares them.
pub fn set_mirror_free_space(free: Option<u64>, floor: u64) {
    if let Some(free) = free {
        metrics::gauge!("appdata_syncd_mirror_free_bytes").set(free as f64);
    }
    metrics::gauge!("appdata_syncd_mirror_free_floor_bytes").set(floor as f64);
}

/// How many users are in `state` (fed by the caller before each scrape).
pub fn set_users(state: &'static str, n: i64) {
    metrics::gauge!("appdata_syncd_users", "state" => state).set(n as f64);
}

/// outcome: "ok" or the error code answered; status: the HTTP status (the 5xx alert's label).
pub fn intake_request(outcome: &'static str, status: u16) {
    metrics::counter!("appdata_syncd_intake_requests_total", "outcome" => outcome, "status" => status.to_string())
        .increment(1);
}

/// A sync cycle ended: `completed` when every due user was claimed and started (not cut short
/// by a database error or a stop). `finished_at` is unix ms.
pub fn cycle_finished(completed: bool, finished_at: i64) {
    let result = if completed { "completed" } else { "cut_short" };
    metrics::counter!("appdata_syncd_cycles_total", "result" => result).increment(1);
    if completed {
        metrics::gauge!("appdata_syncd_last_completed_cycle_timestamp_seconds")
            .set(finished_at as f64 / 1000.0);
    }
}

/// Seconds between two ticks of `[sync] schedule` (the next two, for an irregular one).
pub fn set_cycle_interval(seconds: i64) {
    metrics::gauge!("appdata_syncd_cycle_interval_seconds").set(seconds as f64);
}

/// One webhook delivery attempt to `endpoint`.
pub fn webhook_attempt(endpoint: &str, delivered: bool) {
    let outcome = if delivered { "delivered" } else { "failed" };
    metrics::counter!("appdata_syncd_webhook_attempts_total", "endpoint" => endpoint.to_string(), "outcome" => outcome)
        .increment(1);
}

/// The webhook backlog of `endpoint`: messages pending, and the age of the oldest (unix ms
/// when it was queued).
pub fn webhook_backlog(endpoint: &str, pending: i64, oldest_pending_at: Option<i64>) {
    metrics::gauge!("appdata_syncd_webhook_pending", "endpoint" => endpoint.to_string())
        .set(pending as f64);
    let age = oldest_pending_at.map_or(0.0, |at| {
        (chrono::Utc::now().timestamp_millis() - at).max(0) as f64 / 1000.0
    });
    metrics::gauge!("appdata_syncd_webhook_oldest_pending_seconds", "endpoint" => endpoint.to_string())
        .set(age);
}

/// Data API requests by status code.
pub fn api_request(status: u16) {
    metrics::counter!("appdata_syncd_api_requests_total", "status" => status.to_string())
        .increment(1);
}

/// A security event token at `POST /risc`: "accepted", "duplicate" (a replayed `jti`), or the
/// RFC 8935 error code it was refused with ("invalid_key", ..., "unavailable").
pub fn risc_received(result: &'static str) {
    metrics::counter!("appdata_syncd_risc_sets_total", "result" => result).increment(1);
}

/// A security event acted on: its type ("account-disabled", "verification", ...) and outcome
/// ("tokens_deleted", "suspended", "unknown_user", ...).
pub fn risc_event(event: &'static str, outcome: &'static str) {
    metrics::counter!("appdata_syncd_risc_events_total", "event" => event, "outcome" => outcome)
        .increment(1);
}

/// Users with a Cross-Account Protection flag: "suspended_by_google" or
/// "credential_change_required" (fed by the caller before each scrape, like users by state).
pub fn set_users_flagged(flag: &'static str, n: i64) {
    metrics::gauge!("appdata_syncd_users_flagged", "flag" => flag).set(n as f64);
}

/// Security events received and not yet acted on.
pub fn set_risc_pending(n: i64) {
    metrics::gauge!("appdata_syncd_risc_pending_events").set(n as f64);
}

/// Serves `GET /metrics` on `listener` until `stop`. `before_scrape` runs before each
/// render, so gauges read from elsewhere (users by state, from the database) are never stale.
pub async fn serve<F, Fut>(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    before_scrape: F,
    stop: CancellationToken,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let handle = Arc::new(handle);
    let upkeep = {
        let handle = handle.clone();
        let stop = stop.clone();
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (handle, before_scrape) = (handle.clone(), before_scrape.clone());
            async move {
                before_scrape().await;
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    let server = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
    let (_, served) = tokio::join!(upkeep, server);
    served.map_err(|e| anyhow::anyhow!("metrics endpoint failed: {e}"))
}

/// Binds the metrics listener (at build time, so a taken port fails start-up).
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use anyhow::Context;
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on [metrics] listen = {addr}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}
