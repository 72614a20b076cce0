//! Every listener the daemon serves, bound at build time so that a taken port fails start-up
//! and tests can bind port 0 and read the real address back.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

/// Request heads must arrive within this (each request of a keep-alive connection).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
use tokio_util::sync::CancellationToken;

use crate::admin::AdminServer;
use crate::config::ResolvedConfig;

pub(super) struct Listeners {
    pub(super) intake_addr: SocketAddr,
    intake: IntakeListener,
    pub(super) admin: AdminServer,
    metrics: Option<std::net::TcpListener>,
}

pub(super) struct IntakeListener {
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: super::http::Limits,
}

impl Listeners {
    pub(super) async fn bind(config: &ResolvedConfig) -> anyhow::Result<Listeners> {
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
        let listen = config.raw.intake.listen;
        let listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("cannot listen on [intake] listen = {listen}"))?;
        listener.set_nonblocking(true)?;
        let intake_addr = listener.local_addr()?;
        let tls = match (&config.raw.intake.tls_cert, &config.raw.intake.tls_key) {
            (Some(cert), Some(key)) => Some(super::http::tls_acceptor(cert, key)?),
            _ => None,
        };
        let i = &config.raw.intake;
        let limits = super::http::Limits {
            max_connections: i.max_connections,
            first_byte_timeout: i.first_byte_timeout,
            header_timeout: HEADER_TIMEOUT,
        };
        Ok(Listeners {
            intake_addr,
            intake: IntakeListener {
                listener,
                tls,
                limits,
            },
            admin,
            metrics,
        })
    }

    pub(super) fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub(super) fn log_serving(&self, config: &ResolvedConfig) {
        let scheme = if self.intake.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(
            intake = %format!("{scheme}://{}", self.intake_addr),
            admin_socket = %self.admin.path().display(),
            database = %crate::store::redact_url(&config.store_url),
            schedule = %config.raw.sync.schedule,
            "appdata-syncd is serving"
        );
    }

    pub(super) fn into_parts(self) -> (IntakeListener, AdminServer, Option<std::net::TcpListener>) {
        (self.intake, self.admin, self.metrics)
    }
}

impl IntakeListener {
    /// Serves `router` until `stop` (then drains for `drain`), or at once on `abort`.
    pub(super) async fn serve(
        self,
        router: axum::Router,
        stop: CancellationToken,
        abort: CancellationToken,
        drain: Duration,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .context("the intake listener is unusable")?;
        super::http::serve(listener, self.tls, router, self.limits, stop, abort, drain).await
    }
}
