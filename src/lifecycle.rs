//! Build, then run. [`App::build`] opens and migrates the database, wires the services and binds
//! every listener (so tests pass port 0 and read the real address back);
//! [`App::run_until_stopped`] serves until the cancellation token fires, then drains.
//!
//! Signals arrive through signal-hook on a dedicated thread ([`spawn_signal_listener`]) and are
//! turned into cancellation of the root token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::ResolvedConfig;
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

pub struct App {
    config: ResolvedConfig,
    store: Store,
    intake_listener: std::net::TcpListener,
    intake_addr: SocketAddr,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    signin: Arc<SignIn>,
    scheduler: Arc<Scheduler>,
    #[allow(dead_code)] // used by the admin socket's log-level command
    log: Option<LogHandle>,
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
            http,
            g.jwks_uri.clone(),
            config.client.client_id.clone(),
            g.android_client_ids.clone(),
        ));
        let limit = Arc::new(RateLimit::new(config.raw.sync.max_requests_per_second));
        let mirror = Mirror::open(&config.data_dir).with_context(|| {
            format!(
                "cannot open the mirror directory {}",
                config.data_dir.display()
            )
        })?;
        let tokens = Arc::new(Tokens::new(
            oauth.clone(),
            store.clone(),
            config.keyring.clone(),
        ));
        let engine = Arc::new(SyncEngine {
            drive: DriveClient::new(http_client(g.request_timeout), &g.drive_api_base),
            tokens,
            store: store.clone(),
            mirror,
            limit,
        });
        let scheduler = Scheduler::new(engine, store.clone(), config.raw.sync.concurrency);
        let signin = Arc::new(SignIn {
            oauth,
            verifier,
            store: store.clone(),
            keyring: config.keyring.clone(),
            required_scopes: g.required_scopes.clone(),
        });

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
        Ok(App {
            config,
            store,
            intake_listener,
            intake_addr,
            tls,
            signin,
            scheduler,
            log,
        })
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    pub fn intake_addr(&self) -> SocketAddr {
        self.intake_addr
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and drains.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let router = intake::router(IntakeState {
            signin: self.signin.clone(),
            store: self.store.clone(),
        });
        let handle = axum_server::Handle::new();
        let make_service = router.into_make_service();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!(
            intake = %format!("{scheme}://{}", self.intake_addr),
            database = %crate::store::redact_url(&self.config.store_url),
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
        // `shutdown` stops new work; `abort` (after the grace period) stops running syncs at
        // their next checkpoint.
        let abort = CancellationToken::new();
        let cron = start_cron(
            &self.config.raw.sync.schedule,
            &self.scheduler,
            &shutdown,
            &abort,
        )
        .await?;
        let resyncs = tokio::spawn(
            self.scheduler
                .clone()
                .resync_loop(shutdown.clone(), abort.clone()),
        );
        let grace = self.config.raw.sync.shutdown_grace;
        let drain = {
            let shutdown = shutdown.clone();
            let scheduler = self.scheduler.clone();
            let abort = abort.clone();
            async move {
                shutdown.cancelled().await;
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
                abort.cancel();
            }
        };
        let (served, ()) = tokio::join!(server, drain);
        served.context("intake server failed")?;
        let mut cron = cron;
        let _ = cron.shutdown().await;
        let _ = resyncs.await;
        while self.scheduler.running() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs a sync cycle on every tick of `schedule` (a cycle still running makes a tick a no-op).
async fn start_cron(
    schedule: &str,
    scheduler: &Arc<Scheduler>,
    stop: &CancellationToken,
    abort: &CancellationToken,
) -> anyhow::Result<tokio_cron_scheduler::JobScheduler> {
    let cron = tokio_cron_scheduler::JobScheduler::new()
        .await
        .context("cannot start the cron scheduler")?;
    let (scheduler, stop, abort) = (scheduler.clone(), stop.clone(), abort.clone());
    let job = tokio_cron_scheduler::Job::new_async(schedule, move |_id, _lock| {
        let (scheduler, stop, abort) = (scheduler.clone(), stop.clone(), abort.clone());
        Box::pin(async move {
            if !stop.is_cancelled() {
                scheduler.run_once(&stop, &abort).await;
            }
        })
    })
    .with_context(|| format!("[sync] schedule = {schedule:?} is not a valid cron expression"))?;
    cron.add(job)
        .await
        .context("cannot schedule the sync cycle")?;
    cron.start()
        .await
        .context("cannot start the cron scheduler")?;
    Ok(cron)
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

/// Cancels `token` on SIGTERM or SIGINT; a second signal exits at once. Committed data is safe
/// either way: every acknowledged write is durable before we answer.
pub fn spawn_signal_listener(token: CancellationToken) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(signal, "stop requested; finishing in-flight work");
                    token.cancel();
                } else {
                    tracing::warn!(signal, "second stop signal: exiting now");
                    std::process::exit(1);
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
