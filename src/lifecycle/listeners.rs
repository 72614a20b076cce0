//! Every listener the daemon serves, bound at build time so that a taken port fails start-up
//! and tests can bind port 0 and read the real address back.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
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
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
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
        let tls = load_tls(config).await?;
        Ok(Listeners {
            intake_addr,
            intake: IntakeListener { listener, tls },
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
    /// Serves `router` until `handle` is told to shut down, or at once on `abort`.
    pub(super) async fn serve(
        self,
        router: axum::Router,
        handle: axum_server::Handle,
        abort: CancellationToken,
    ) -> anyhow::Result<()> {
        let make_service = router.into_make_service();
        let server = async {
            match self.tls {
                Some(tls) => {
                    let mut server = axum_server::from_tcp_rustls(self.listener, tls);
                    configure_http(server.http_builder());
                    server.handle(handle.clone()).serve(make_service).await
                }
                None => {
                    let mut server = axum_server::from_tcp(self.listener);
                    configure_http(server.http_builder());
                    server.handle(handle.clone()).serve(make_service).await
                }
            }
        };
        tokio::select! {
            served = server => served.context("the intake server failed"),
            _ = abort.cancelled() => {
                handle.shutdown();
                Ok(())
            }
        }
    }
}

async fn load_tls(
    config: &ResolvedConfig,
) -> anyhow::Result<Option<axum_server::tls_rustls::RustlsConfig>> {
    let (Some(cert), Some(key)) = (&config.raw.intake.tls_cert, &config.raw.intake.tls_key) else {
        return Ok(None);
    };
    // Fails only if a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "cannot load the TLS certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Some(tls))
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
