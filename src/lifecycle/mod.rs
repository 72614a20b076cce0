//! Build, then run. [`App::build`] opens and migrates the database, wires the parts into
//! [`Services`] and binds every listener (so tests pass port 0 and a temp socket and read the
//! real addresses back); [`App::run_until_stopped`] starts every long-lived task under
//! supervision ([`tasks`]) and serves until asked to stop or until an essential task ends,
//! then drains.
//!
//! Shutdown is one cancellation tree ([`Shutdown`]): `stop` ends intake, admin, new syncs and
//! cycles; running syncs get `[sync] shutdown_grace`, then `abort` interrupts them at their next
//! checkpoint. Dropping the app (or the future of `run_until_stopped`) cancels the whole tree,
//! so nothing it started outlives it. Signals are in [`signals`]; systemd's notify protocol in
//! [`crate::notify`].

pub mod http;
mod listeners;
pub mod signals;
pub mod tasks;

/// How long a public listener waits for a request head (hyper's `header_read_timeout`).
pub use listeners::HEADER_TIMEOUT;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::ResolvedConfig;
use crate::google::drive::DriveClient;
use crate::google::id_token::IdTokenVerifier;
use crate::google::oauth::OAuthClient;
use crate::google::Http;
use crate::google::RateLimit;
use crate::intake::admission::Admission;
use crate::intake::signin::SignIn;
use crate::intake::{self, IntakeState};
use crate::risc::Risc;
use crate::scheduler::{Scheduler, Shutdown};
use crate::services::{Parts, Services};
use crate::store::Store;
use crate::sync::mirror::Mirror;
use crate::sync::recorder::Recorder;
use crate::sync::{Limits, RetryPolicy, SyncEngine};
use crate::telemetry::LogHandle;
use crate::tokens::Tokens;
use listeners::Listeners;
pub use signals::run_with_signals;
use tasks::Tasks;

/// How long in-flight intake requests get to finish once shutdown starts.
const INTAKE_DRAIN: Duration = Duration::from_secs(10);
/// How long shutdown waits for sign-ins in progress (a code exchange, a revocation).
const SIGNIN_DRAIN: Duration = Duration::from_secs(30);
/// After the grace period and `abort`, how long syncs get to reach their next checkpoint.
const ABORT_DRAIN: Duration = Duration::from_secs(10);

type BoxedTask = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

pub struct App {
    services: Arc<Services>,
    signin: Arc<SignIn>,
    /// Cross-Account Protection: the receiver behind `POST /risc` and its processor task.
    risc: Arc<Risc>,
    listeners: Listeners,
    shutdown: Shutdown,
    /// Ends the recorder once the last sync has recorded its outcome (after `abort`).
    recorder_done: CancellationToken,
    recorder: BoxedTask,
    tasks: Tasks,
    /// Sign-ins in progress, which shutdown lets finish (see `intake::sign_in`).
    signins: tokio_util::task::TaskTracker,
}

impl App {
    /// Opens and wires every part in start-up order, each step using the ones before it; kept
    /// as one sequence so the order (and what a failure leaves bound) reads top to bottom.
    pub async fn build(config: ResolvedConfig, log: Option<LogHandle>) -> anyhow::Result<App> {
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let store =
            Store::connect(config.store_url.expose(), config.raw.store.max_connections).await?;
        store.migrate().await?;
        let placed = store.place_unplaced_users().await?;
        if placed > 0 {
            tracing::info!(users = placed, "placed users in cycle slots");
        }
        let shutdown = Shutdown::new();
        let recorder_done = CancellationToken::new();
        let Google {
            oauth,
            verifier,
            drive,
            http,
        } = Google::new(&config);
        let limit = Arc::new(RateLimit::new(config.raw.sync.max_requests_per_second));
        let mirror = Mirror::open_location(&config.mirror)
            .with_context(|| format!("cannot open the mirror at {}", config.mirror))?;
        crate::sync::writes::adopt_legacy_pushes(&store, &mirror).await?;
        let tokens = Arc::new(Tokens::new(
            oauth.clone(),
            store.clone(),
            config.keyring.clone(),
        ));
        let (recorder, recorder_task) =
            Recorder::new(store.clone(), config.instance_id(), recorder_done.clone());
        let engine = Arc::new(SyncEngine {
            recorder,
            instance: config.instance_id(),
            drive,
            tokens: tokens.clone(),
            store: store.clone(),
            mirror: mirror.clone(),
            limit: limit.clone(),
            retry: RetryPolicy {
                initial: config.raw.google.retry_initial_delay,
                max: config.raw.google.retry_max_delay,
            },
            limits: Limits {
                max_file_bytes: config.raw.sync.max_file_bytes,
                max_user_bytes: config.raw.sync.max_user_bytes,
                max_files_per_user: config.raw.sync.max_files_per_user,
                min_free_disk_bytes: config.raw.sync.min_free_disk_bytes,
            },
        });
        let scheduler = Scheduler::new(
            engine,
            store.clone(),
            config.raw.sync.concurrency,
            config.raw.sync.lease,
            config.raw.sync.spread,
            shutdown.clone(),
        );
        let risc = Risc::new(
            &config,
            http,
            store.clone(),
            tokens.clone(),
            scheduler.clone(),
        );
        let signin = Arc::new(SignIn {
            oauth,
            verifier: verifier.clone(),
            store: store.clone(),
            keyring: config.keyring.clone(),
            required_scopes: config.raw.google.required_scopes.clone(),
        });
        let listeners = Listeners::bind(&config).await?;
        let services = Services::new(Parts {
            config,
            store,
            scheduler,
            tokens,
            verifier,
            limit,
            mirror,
            log,
            risc: risc.clone(),
        });
        Ok(App {
            services,
            signin,
            risc,
            listeners,
            tasks: Tasks::new(shutdown.stop.clone()),
            shutdown,
            recorder_done,
            recorder: Box::pin(recorder_task),
            signins: tokio_util::task::TaskTracker::new(),
        })
    }

    /// Where `GET /metrics` is served, when `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.listeners.metrics_addr()
    }

    pub fn intake_addr(&self) -> SocketAddr {
        self.listeners.intake_addr
    }

    /// The data API's base URL (`http://ADDR`, `https://ADDR` or `unix:PATH`), when
    /// `[api] listen` is set.
    pub fn api_url(&self) -> Option<String> {
        self.listeners.api_url()
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.listeners.admin.path().to_path_buf()
    }

    pub fn store(&self) -> &Store {
        self.services.store()
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        self.services.scheduler()
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// The supervised tasks (for the supervision test).
    #[doc(hidden)]
    pub fn tasks(&self) -> Tasks {
        self.tasks.clone()
    }

    /// Serves until `shutdown` is cancelled or an essential task ends, then stops accepting and
    /// drains. An essential task that ended is the error returned.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Dropping this future stops everything it started.
        let stop_everything = (
            self.shutdown.abort.clone().drop_guard(),
            self.recorder_done.clone().drop_guard(),
        );
        let services = self.services.clone();
        let scheduler = services.scheduler().clone();
        let (tasks, stop) = (self.tasks.clone(), self.shutdown.clone());
        let signins = self.signins.clone();
        if let Err(e) = scheduler.reclaim_dead_local_instances().await {
            tracing::warn!(error = %e, "cannot check for dead instances' leases");
        }
        self.start_tasks();
        crate::notify::ready(&services.summary());
        let failure = tokio::select! {
            _ = shutdown.cancelled() => None,
            failed = tasks.failure() => Some(failed),
        };
        drain(&services, &stop).await;
        // A sign-in holding a fresh refresh token ends in the database or in a revocation.
        signins.close();
        if tokio::time::timeout(SIGNIN_DRAIN, signins.wait())
            .await
            .is_err()
        {
            tracing::warn!("sign-ins still running at exit");
        }
        drop(stop_everything);
        if !tasks.wait(INTAKE_DRAIN + ABORT_DRAIN).await {
            tracing::warn!("some tasks did not end in time; exiting anyway");
        }
        scheduler.deregister().await;
        services.store().close().await;
        match failure.or_else(|| tasks.failed()) {
            Some(failed) => {
                tracing::error!(task = failed.task, reason = %failed.why, "stopped because an essential task ended");
                Err(failed.into())
            }
            None => {
                tracing::info!("stopped");
                Ok(())
            }
        }
    }

    /// Starts every long-lived task.
    fn start_tasks(self) {
        let App {
            services,
            signin,
            risc,
            listeners,
            shutdown,
            recorder,
            tasks,
            signins,
            ..
        } = self;
        let scheduler = services.scheduler().clone();
        let config = services.config();
        listeners.log_serving(&config);
        let admission = Arc::new(Admission::new(&config.raw.intake));
        let router = intake::router(IntakeState {
            signin,
            store: services.store().clone(),
            admission: admission.clone(),
            signins: signins.clone(),
            risc: risc.clone(),
        });
        let (intake, admin, metrics, api) = listeners.into_parts();
        start_data_api(&tasks, &services, api, &shutdown);
        tasks.spawn(
            "intake",
            intake.serve(
                router,
                shutdown.stop.clone(),
                shutdown.abort.clone(),
                INTAKE_DRAIN,
            ),
        );
        tasks.spawn(
            "admin",
            admin.serve(services.clone(), shutdown.stop.clone()),
        );
        tasks.spawn(
            "intake-upkeep",
            forget_idle_clients(admission, shutdown.stop.clone()),
        );
        tasks.spawn("prune", prune(services.clone(), shutdown.stop.clone()));
        tasks.spawn(
            "key-usage",
            count_key_usage(services.clone(), shutdown.stop.clone()),
        );
        tasks.spawn("recorder", recorder);
        tasks.spawn("risc", risc.run(shutdown.stop.clone()));
        tasks.spawn("resync", scheduler.clone().resync_loop());
        tasks.spawn("heartbeat", scheduler.clone().heartbeat_loop());
        tasks.spawn(
            "presence",
            scheduler
                .clone()
                .presence_loop(services.rate_limit().clone()),
        );
        tasks.spawn(
            "schedule",
            run_schedule(scheduler, config.schedule, shutdown.stop.clone()),
        );
        tasks.spawn(
            "watchdog",
            watchdog(services.clone(), shutdown.stop.clone()),
        );
        if let Some(metrics) = metrics {
            tasks.spawn("metrics", serve_metrics(metrics, services, shutdown.stop));
        }
    }
}

/// The change feed's sequencer and pruner (always: sign-ins and admin changes are recorded
/// whether or not the API is served), the webhooks deliverer, and the API server when
/// `[api] listen` is set.
fn start_data_api(
    tasks: &Tasks,
    services: &Arc<Services>,
    api: Option<listeners::ApiListener>,
    shutdown: &Shutdown,
) {
    let stop = shutdown.stop.clone();
    let s = services.clone();
    let feed_stop = stop.clone();
    tasks.spawn("sequencer", async move {
        s.feed().run_sequencer(feed_stop).await
    });
    let s = services.clone();
    let prune_stop = stop.clone();
    tasks.spawn("feed-pruner", async move {
        let retention = s.config().raw.api.change_retention;
        let floor = || s.webhook_copy_floor();
        s.feed().run_pruner(retention, floor, prune_stop).await
    });
    if !services.webhook_endpoints().is_empty() {
        tasks.spawn(
            "webhooks",
            crate::api::webhooks::run(services.clone(), stop.clone()),
        );
    }
    if let Some(api) = api {
        let router = crate::api::router(services.clone());
        let abort = shutdown.abort.clone();
        tasks.spawn("api", api.serve(router, stop, abort, INTAKE_DRAIN));
    }
}

/// The clients of Google's APIs, on one HTTP client (one connection pool).
struct Google {
    oauth: OAuthClient,
    verifier: Arc<IdTokenVerifier>,
    drive: DriveClient,
    /// The JSON client, for the RISC configuration and keys.
    http: reqwest::Client,
}

impl Google {
    fn new(config: &ResolvedConfig) -> Google {
        let g = &config.raw.google;
        let http = Http::new(g.request_timeout, g.http_version);
        Google {
            oauth: OAuthClient::new(
                http.api.clone(),
                config.token_uri.clone(),
                g.revoke_uri.clone(),
                config.client.client_id.clone(),
                config.client.client_secret.clone(),
                g.redirect_uri.clone(),
            ),
            verifier: Arc::new(IdTokenVerifier::new(
                http.api.clone(),
                g.jwks_uri.clone(),
                config.client.client_id.clone(),
                g.android_client_ids.clone(),
            )),
            http: http.api.clone(),
            drive: DriveClient::new(http, &g.drive_api_base),
        }
    }
}

/// Stop intake and new work, let running syncs finish within the grace period, then abort
/// them at their next checkpoint and let the recorder commit their outcomes.
async fn drain(services: &Services, shutdown: &Shutdown) {
    shutdown.stop.cancel();
    services.feed().close();
    crate::notify::stopping();
    let scheduler = services.scheduler();
    let grace = services.shutdown_grace();
    tracing::info!(
        running_syncs = scheduler.running(),
        grace_s = grace.as_secs(),
        "shutting down: no new sign-ins or syncs; letting running syncs finish"
    );
    if !scheduler.wait_for_syncs(grace).await {
        tracing::warn!(
            running_syncs = scheduler.running(),
            "grace period over: stopping running syncs at their next checkpoint"
        );
        shutdown.abort.cancel();
        scheduler.wait_for_syncs(ABORT_DRAIN).await;
    }
}

/// Keeps the tables that would only grow bounded: old sync records (each user's newest kept),
/// settled writes, long-gone instances. In small batches, so no lock is held for long.
async fn prune(services: Arc<Services>, stop: CancellationToken) -> anyhow::Result<()> {
    const EVERY: Duration = Duration::from_secs(300);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return Ok(()),
        }
        let config = services.config();
        let keep = &config.raw.store;
        if let Err(e) = crate::store::prune_history(
            services.store(),
            keep.keep_history,
            keep.keep_syncs_per_user,
        )
        .await
        {
            tracing::warn!(error = %e, "cannot prune the history; trying again later");
        }
    }
}

/// Persists how many values the encryption key sealed, every minute (and warns near the
/// AES-GCM limit).
async fn count_key_usage(services: Arc<Services>, stop: CancellationToken) -> anyhow::Result<()> {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => false,
            _ = stop.cancelled() => true,
        };
        let keyring = services.config().keyring;
        if let Err(e) = crate::tokens::record_key_usage(services.store(), &keyring).await {
            tracing::warn!(error = %e, "cannot record the encryption key's usage");
        }
        if stopping {
            return Ok(());
        }
    }
}

/// The intake's per-client limiter keeps a state per address: forget the idle ones.
async fn forget_idle_clients(
    admission: Arc<Admission>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => admission.forget_idle_clients(),
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

/// Fires cycles on the schedule until `stop`.
async fn run_schedule(
    scheduler: Arc<Scheduler>,
    schedule: crate::scheduler::schedule::Schedule,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    scheduler.start_schedule(schedule).await?;
    stop.cancelled().await;
    scheduler.stop_schedule().await;
    Ok(())
}

/// Pings systemd's watchdog (when it asks for pings) with a fresh STATUS line.
async fn watchdog(services: Arc<Services>, stop: CancellationToken) -> anyhow::Result<()> {
    let period = crate::notify::watchdog_period();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period.unwrap_or(Duration::from_secs(30))) => {}
            _ = stop.cancelled() => return Ok(()),
        }
        crate::notify::alive(&services.summary(), period.is_some());
    }
}

/// `GET /metrics`, with the users-by-state and Cross-Account Protection gauges read from the
/// database before each scrape.
async fn serve_metrics(
    listener: std::net::TcpListener,
    services: Arc<Services>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let refresh_users = move || {
        let services = services.clone();
        async move {
            if let Ok(counts) = services.users_by_state().await {
                for (state, n) in counts {
                    crate::metrics::set_users(state.as_str(), n);
                }
            }
            if let Ok(n) = services.users_over_quota().await {
                crate::metrics::set_users_over_quota(n);
            }
            // Set on every change too; here so that it exists before the first change.
            crate::metrics::request_rate(services.current_request_rate());
            let (free, floor) = services.mirror_free_space();
            crate::metrics::set_mirror_free_space(free, floor);
            if let Ok(security) = services.security_counts().await {
                security.to_metrics();
            }
        }
    };
    crate::metrics::serve(listener, crate::metrics::install(), refresh_users, stop).await
}
