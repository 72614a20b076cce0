//! Build, then run. [`App::build`] opens and migrates the database, wires the [`Services`] and
//! binds every listener (so tests pass port 0 and a temp socket and read the real addresses
//! back); [`App::run_until_stopped`] serves until the cancellation token fires, then drains.
//!
//! Signals arrive through signal-hook on a dedicated thread ([`spawn_signal_listener`]):
//! SIGTERM/SIGINT cancel the root token (a second one exits at once), SIGHUP reloads.
//! The systemd notify protocol ([`notify`]) reports READY, RELOADING, STOPPING, STATUS and the
//! watchdog; without `$NOTIFY_SOCKET` it does nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminServer;
use crate::config::{Config, ResolvedConfig};
use crate::google::drive::DriveClient;
use crate::google::http_client;
use crate::google::id_token::IdTokenVerifier;
use crate::google::oauth::OAuthClient;
use crate::google::RateLimit;
use crate::intake::signin::SignIn;
use crate::intake::{self, IntakeState};
use crate::scheduler::Scheduler;
use crate::store::Store;
use crate::sync::mirror::Mirror;
use crate::sync::SyncEngine;
use crate::telemetry::LogHandle;
use crate::tokens::Tokens;

/// How long in-flight intake requests get to finish once shutdown starts.
const INTAKE_DRAIN: Duration = Duration::from_secs(10);

/// The running daemon's shared parts, as the admin socket and reloads see them.
pub struct Services {
    pub store: Store,
    pub scheduler: Arc<Scheduler>,
    pub tokens: Arc<Tokens>,
    pub verifier: Arc<IdTokenVerifier>,
    pub limit: Arc<RateLimit>,
    pub mirror: Mirror,
    pub log: Option<LogHandle>,
    pub started: Instant,
    /// The configuration in force (replaced by reloads).
    pub config: Mutex<ResolvedConfig>,
    /// Next cron tick (unix ms), for `ctl status`.
    pub next_cycle: Mutex<Option<i64>>,
    /// The cron job driving cycles; replaced when the schedule changes.
    cron: tokio::sync::Mutex<Option<Cron>>,
    /// Root tokens: `stop` ends new work, `abort` interrupts running syncs.
    stop: CancellationToken,
    abort: CancellationToken,
}

struct Cron {
    scheduler: tokio_cron_scheduler::JobScheduler,
    job: uuid::Uuid,
    schedule: String,
}

/// What a reload changed, and what it could not.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReloadReport {
    pub applied: Vec<String>,
    pub needs_restart: Vec<String>,
}

pub struct App {
    services: Arc<Services>,
    intake_listener: std::net::TcpListener,
    intake_addr: SocketAddr,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    signin: Arc<SignIn>,
    admin: AdminServer,
    metrics: Option<std::net::TcpListener>,
}

impl App {
    pub async fn build(config: ResolvedConfig, log: Option<LogHandle>) -> anyhow::Result<App> {
        let store = Store::connect(&config.store_url, config.raw.store.max_connections).await?;
        store.migrate().await?;

        let g = &config.raw.google;
        let http = http_client(g.request_timeout);
        let oauth = OAuthClient::new(
            http.clone(),
            config.token_uri.clone(),
            g.revoke_uri.clone(),
            config.client.client_id.clone(),
            config.client.client_secret.clone(),
            g.redirect_uri.clone(),
        );
        let verifier = Arc::new(IdTokenVerifier::new(
            http.clone(),
            g.jwks_uri.clone(),
            config.client.client_id.clone(),
            g.android_client_ids.clone(),
        ));
        let limit = Arc::new(RateLimit::new(config.raw.sync.max_requests_per_second));
        let mirror = Mirror::open_location(&config.mirror)
            .with_context(|| format!("cannot open the mirror at {}", config.mirror))?;
        let tokens = Arc::new(Tokens::new(
            oauth.clone(),
            store.clone(),
            config.keyring.clone(),
        ));
        let engine = Arc::new(SyncEngine {
            recorder: crate::sync::recorder::Recorder::spawn(store.clone(), config.instance_id()),
            instance: config.instance_id(),
            drive: DriveClient::new(http, &g.drive_api_base),
            tokens: tokens.clone(),
            store: store.clone(),
            mirror: mirror.clone(),
            limit: limit.clone(),
        });
        let scheduler = Scheduler::new(
            engine,
            store.clone(),
            config.raw.sync.concurrency,
            config.raw.sync.lease,
        );
        let signin = Arc::new(SignIn {
            oauth,
            verifier: verifier.clone(),
            store: store.clone(),
            keyring: config.keyring.clone(),
            required_scopes: g.required_scopes.clone(),
        });

        let admin = AdminServer::bind(&config.raw.admin)?;
        let metrics = config
            .raw
            .metrics
            .listen
            .map(crate::metrics::bind)
            .transpose()?;
        if metrics.is_some() {
            // Before anything counts, so no event is lost.
            crate::metrics::install();
        }
        let intake_listener =
            std::net::TcpListener::bind(config.raw.intake.listen).with_context(|| {
                format!(
                    "cannot listen on [intake] listen = {}",
                    config.raw.intake.listen
                )
            })?;
        intake_listener.set_nonblocking(true)?;
        let intake_addr = intake_listener.local_addr()?;
        let tls = match (&config.raw.intake.tls_cert, &config.raw.intake.tls_key) {
            (Some(cert), Some(key)) => {
                install_crypto_provider();
                Some(
                    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                        .await
                        .with_context(|| {
                            format!(
                                "cannot load the TLS certificate {} and key {}",
                                cert.display(),
                                key.display()
                            )
                        })?,
                )
            }
            _ => None,
        };
        let services = Arc::new(Services {
            store,
            scheduler,
            tokens,
            verifier,
            limit,
            mirror,
            log,
            started: Instant::now(),
            config: Mutex::new(config),
            next_cycle: Mutex::new(None),
            cron: tokio::sync::Mutex::new(None),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
        });
        Ok(App {
            services,
            intake_listener,
            intake_addr,
            tls,
            signin,
            admin,
            metrics,
        })
    }

    /// Where `GET /metrics` is served, when `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn intake_addr(&self) -> SocketAddr {
        self.intake_addr
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.admin.path().to_path_buf()
    }

    pub fn store(&self) -> &Store {
        &self.services.store
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.services.scheduler
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and drains.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let services = self.services.clone();
        let router = intake::router(IntakeState {
            signin: self.signin.clone(),
            store: services.store.clone(),
        });
        let handle = axum_server::Handle::new();
        let make_service = router.into_make_service();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let store_url = services.config.lock().store_url.clone();
        let schedule = services.config.lock().raw.sync.schedule.clone();
        tracing::info!(
            intake = %format!("{scheme}://{}", self.intake_addr),
            admin_socket = %self.admin.path().display(),
            database = %crate::store::redact_url(&store_url),
            schedule = %schedule,
            "appdata-syncd is serving"
        );
        let server = {
            let handle = handle.clone();
            let listener = self.intake_listener;
            let tls = self.tls;
            async move {
                match tls {
                    Some(tls) => {
                        let mut server = axum_server::from_tcp_rustls(listener, tls);
                        configure_http(server.http_builder());
                        server.handle(handle).serve(make_service).await
                    }
                    None => {
                        let mut server = axum_server::from_tcp(listener);
                        configure_http(server.http_builder());
                        server.handle(handle).serve(make_service).await
                    }
                }
            }
        };
        if let Err(e) = services.scheduler.reclaim_dead_local_instances().await {
            tracing::warn!(error = %e, "cannot check for dead instances' leases");
        }
        services.set_schedule(&schedule).await?;
        let resyncs = tokio::spawn(
            services
                .scheduler
                .clone()
                .resync_loop(services.stop.clone(), services.abort.clone()),
        );
        let admin = tokio::spawn(self.admin.serve(services.clone(), services.stop.clone()));
        let watchdog = tokio::spawn(notify::watchdog(services.clone(), services.stop.clone()));
        let heartbeat = tokio::spawn(heartbeat(services.clone()));
        let metrics = match self.metrics {
            Some(listener) => Some(tokio::spawn(crate::metrics::serve(
                tokio::net::TcpListener::from_std(listener)?,
                crate::metrics::install(),
                services.store.clone(),
                services.stop.clone(),
            ))),
            None => None,
        };
        notify::ready(&services);

        let drain = {
            let services = services.clone();
            async move {
                shutdown.cancelled().await;
                services.stop.cancel();
                notify::stopping();
                let scheduler = &services.scheduler;
                let grace = services.config.lock().raw.sync.shutdown_grace;
                tracing::info!(
                    running_syncs = scheduler.running(),
                    grace_s = grace.as_secs(),
                    "shutting down: no new sign-ins or syncs; letting running syncs finish"
                );
                handle.graceful_shutdown(Some(INTAKE_DRAIN));
                let deadline = tokio::time::Instant::now() + grace;
                while scheduler.running() > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if scheduler.running() > 0 {
                    tracing::warn!(
                        running_syncs = scheduler.running(),
                        "grace period over: stopping running syncs at their next checkpoint"
                    );
                }
                services.abort.cancel();
            }
        };
        let (served, ()) = tokio::join!(server, drain);
        served.context("intake server failed")?;
        if let Some(mut cron) = services.cron.lock().await.take() {
            let _ = cron.scheduler.shutdown().await;
        }
        let _ = resyncs.await;
        let _ = admin.await;
        watchdog.abort();
        heartbeat.abort();
        if let Some(m) = metrics {
            let _ = m.await;
        }
        while services.scheduler.running() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let instance = services.scheduler.engine().instance.clone();
        if let Ok(mut tx) = services.store.begin_write().await {
            let _ = crate::store::schedule::remove_instance(tx.conn(), &instance).await;
            let _ = tx.commit().await;
        }
        services.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

impl Services {
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Starts (or replaces) the cron job that runs a sync cycle on every tick of `schedule`.
    /// A cycle still running when the next tick comes makes that tick a no-op.
    async fn set_schedule(self: &Arc<Self>, schedule: &str) -> anyhow::Result<()> {
        let mut cron = self.cron.lock().await;
        if cron.as_ref().is_some_and(|c| c.schedule == schedule) {
            return Ok(());
        }
        let me = self.clone();
        let ticks = crate::scheduler::parse_schedule(schedule).with_context(|| {
            format!("[sync] schedule = {schedule:?} is not a valid cron expression")
        })?;
        let job = tokio_cron_scheduler::Job::new_async(schedule, move |id, mut lock| {
            let me = me.clone();
            let ticks = ticks.clone();
            Box::pin(async move {
                if !me.stop.is_cancelled() {
                    // The scheduled tick, not the (late) firing time, names the cycle that
                    // every instance shares.
                    let cycle = crate::scheduler::cycle_of(&ticks, crate::store::now_ms());
                    me.scheduler.run_cycle(cycle, &me.stop, &me.abort).await;
                }
                if let Ok(Some(next)) = lock.next_tick_for_job(id).await {
                    *me.next_cycle.lock() = Some(next.timestamp_millis());
                }
            })
        })
        .with_context(|| {
            format!("[sync] schedule = {schedule:?} is not a valid cron expression")
        })?;
        let job_id = job.guid();
        match cron.as_mut() {
            Some(c) => {
                c.scheduler
                    .add(job)
                    .await
                    .context("cannot schedule the sync cycle")?;
                let _ = c.scheduler.remove(&c.job).await;
                c.job = job_id;
                c.schedule = schedule.to_string();
            }
            None => {
                let scheduler = tokio_cron_scheduler::JobScheduler::new()
                    .await
                    .context("cannot start the cron scheduler")?;
                scheduler
                    .add(job)
                    .await
                    .context("cannot schedule the sync cycle")?;
                scheduler
                    .start()
                    .await
                    .context("cannot start the cron scheduler")?;
                *cron = Some(Cron {
                    scheduler,
                    job: job_id,
                    schedule: schedule.to_string(),
                });
            }
        }
        if let Some(c) = cron.as_mut() {
            if let Ok(Some(next)) = c.scheduler.next_tick_for_job(job_id).await {
                *self.next_cycle.lock() = Some(next.timestamp_millis());
            }
        }
        Ok(())
    }

    /// Re-reads config.toml (SIGHUP, `ctl reload`). Schedule, concurrency, rate limit, log level
    /// and the allowed Android client ids change live; anything else is reported as needing a
    /// restart. A config that does not validate changes nothing.
    pub async fn reload(self: &Arc<Self>) -> anyhow::Result<ReloadReport> {
        notify::reloading();
        let result = self.reload_inner().await;
        notify::reloaded(self);
        match &result {
            Ok(r) => {
                tracing::info!(applied = ?r.applied, needs_restart = ?r.needs_restart, "configuration reloaded")
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "configuration reload failed; keeping the running configuration")
            }
        }
        result
    }

    async fn reload_inner(self: &Arc<Self>) -> anyhow::Result<ReloadReport> {
        let source = self.config.lock().raw.source.clone();
        let Some(path) = source else {
            anyhow::bail!("this daemon was not started from a config file; nothing to reload");
        };
        let new = Config::load(Some(&path))?.resolve()?;
        let old = self.config.lock().clone();
        let mut report = ReloadReport::default();
        let (o, n) = (&old.raw, &new.raw);
        if o.sync.schedule != n.sync.schedule {
            self.set_schedule(&n.sync.schedule).await?;
            report
                .applied
                .push(format!("sync.schedule = {:?}", n.sync.schedule));
        }
        if o.sync.concurrency != n.sync.concurrency {
            self.scheduler.set_concurrency(n.sync.concurrency);
            report
                .applied
                .push(format!("sync.concurrency = {}", n.sync.concurrency));
        }
        if o.sync.max_requests_per_second != n.sync.max_requests_per_second {
            self.limit.set_rate(n.sync.max_requests_per_second);
            report.applied.push(format!(
                "sync.max_requests_per_second = {}",
                n.sync.max_requests_per_second
            ));
        }
        if o.google.android_client_ids != n.google.android_client_ids {
            self.verifier
                .set_allowed_azp(n.google.android_client_ids.clone());
            report.applied.push("google.android_client_ids".into());
        }
        if o.log.level != n.log.level && std::env::var_os("RUST_LOG").is_none() {
            if let Some(log) = &self.log {
                log.set_filter(&n.log.level)?;
                report
                    .applied
                    .push(format!("log.level = {:?}", n.log.level));
            }
        }
        if o.sync.shutdown_grace != n.sync.shutdown_grace {
            report.applied.push("sync.shutdown_grace".into());
        }
        let mut restart = |changed: bool, key: &str| {
            if changed {
                report.needs_restart.push(key.to_string());
            }
        };
        restart(o.intake.listen != n.intake.listen, "intake.listen");
        restart(
            o.intake.tls_cert != n.intake.tls_cert || o.intake.tls_key != n.intake.tls_key,
            "intake.tls_cert/tls_key",
        );
        restart(old.store_url != new.store_url, "store.url");
        restart(old.data_dir != new.data_dir, "sync.data_dir");
        restart(old.mirror != new.mirror, "sync.mirror_url");
        restart(o.admin.socket != n.admin.socket, "admin.socket");
        restart(
            o.admin.allow != n.admin.allow || o.admin.group != n.admin.group,
            "admin.allow/group",
        );
        restart(old.token_uri != new.token_uri, "google.token_uri");
        restart(o.google.jwks_uri != n.google.jwks_uri, "google.jwks_uri");
        restart(
            o.google.drive_api_base != n.google.drive_api_base,
            "google.drive_api_base",
        );
        restart(
            old.client.client_id != new.client.client_id,
            "google.client_secret_file",
        );
        restart(
            old.keyring.current_id() != new.keyring.current_id(),
            "store.encryption_key_file",
        );
        restart(o.log.format != n.log.format, "log.format");
        // Keep what was applied; keep the old values of what needs a restart, so the
        // report stays true until then.
        let mut kept = old;
        kept.raw.sync.schedule = n.sync.schedule.clone();
        kept.raw.sync.concurrency = n.sync.concurrency;
        kept.raw.sync.max_requests_per_second = n.sync.max_requests_per_second;
        kept.raw.sync.shutdown_grace = n.sync.shutdown_grace;
        kept.raw.google.android_client_ids = n.google.android_client_ids.clone();
        kept.raw.log.level = n.log.level.clone();
        *self.config.lock() = kept;
        Ok(report)
    }
}

/// Renews this instance's leases and its `instances` row every third of a lease.
async fn heartbeat(services: Arc<Services>) {
    let started = crate::store::now_ms();
    let period = (services.scheduler.lease() / 3).max(Duration::from_secs(1));
    loop {
        if let Err(e) = services.scheduler.heartbeat(started).await {
            tracing::warn!(error = %e, "cannot renew leases; other instances may take over our users");
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = services.abort.cancelled() => return,
        }
    }
}

/// Slow clients must not hold connections open forever.
fn configure_http(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
}

fn install_crypto_provider() {
    // Fails only if a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

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

/// The systemd notify protocol. Every function is a no-op without `$NOTIFY_SOCKET`.
pub mod notify {
    use std::sync::Arc;
    use std::time::Duration;

    use sd_notify::NotifyState;
    use tokio_util::sync::CancellationToken;

    use super::Services;

    fn send(states: &[NotifyState]) {
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            if let Err(e) = sd_notify::notify(false, states) {
                tracing::debug!(error = %e, "cannot notify systemd");
            }
        }
    }

    /// A one-line summary for `systemctl status`.
    pub fn summary(services: &Services) -> String {
        let last = services.scheduler.last_cycle();
        match last {
            Some(c) => format!(
                "syncing: {} running; last cycle {} users, {} ok, {} failed",
                services.scheduler.running(),
                c.users,
                c.ok,
                c.failed
            ),
            None => format!(
                "ready: {} syncs running; no cycle yet",
                services.scheduler.running()
            ),
        }
    }

    pub fn ready(services: &Services) {
        let status = summary(services);
        send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    pub fn reloading() {
        send(&[NotifyState::Reloading]);
    }

    pub fn reloaded(services: &Services) {
        ready(services);
    }

    pub fn stopping() {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Pings the watchdog at half of WATCHDOG_USEC, with a fresh STATUS line.
    pub async fn watchdog(services: Arc<Services>, stop: CancellationToken) {
        let mut usec = 0u64;
        let enabled = sd_notify::watchdog_enabled(false, &mut usec);
        let period = if enabled && usec > 0 {
            Some(Duration::from_micros(usec / 2))
        } else {
            None
        };
        let tick = period.unwrap_or(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.cancelled() => return,
            }
            let status = summary(&services);
            if period.is_some() {
                send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
            } else {
                send(&[NotifyState::Status(&status)]);
            }
        }
    }
}
