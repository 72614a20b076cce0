//! Every listener the daemon serves, bound at build time so that a taken port fails start-up
//! and tests can bind port 0 and read the real address back.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminServer;
use crate::config::{ApiListen, ResolvedConfig};

pub(super) struct Listeners {
    pub(super) intake_addr: SocketAddr,
    intake: IntakeListener,
    pub(super) admin: AdminServer,
    metrics: Option<std::net::TcpListener>,
    /// The data API, when `[api] listen` is set.
    pub(super) api: Option<ApiListener>,
}

/// The data API's listener: TCP (plain or TLS) or a Unix socket.
pub(super) enum ApiListener {
    Tcp {
        listener: std::net::TcpListener,
        tls: Option<axum_server::tls_rustls::RustlsConfig>,
    },
    Unix {
        listener: std::os::unix::net::UnixListener,
        path: std::path::PathBuf,
    },
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
        let tls = load_tls(&config.raw.intake.tls_cert, &config.raw.intake.tls_key).await?;
        let api = match &config.api.listen {
            Some(listen) => Some(ApiListener::bind(listen, config).await?),
            None => None,
        };
        Ok(Listeners {
            intake_addr,
            intake: IntakeListener { listener, tls },
            admin,
            metrics,
            api,
        })
    }

    pub(super) fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The data API's base URL (`http(s)://ADDR`, or `unix:PATH`), when it is on.
    pub(super) fn api_url(&self) -> Option<String> {
        match self.api.as_ref()? {
            ApiListener::Tcp { listener, tls } => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                Some(format!("{scheme}://{}", listener.local_addr().ok()?))
            }
            ApiListener::Unix { path, .. } => Some(format!("unix:{}", path.display())),
        }
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
            data_api = %self.api_url().unwrap_or_else(|| "off".into()),
            "appdata-syncd is serving"
        );
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn into_parts(
        self,
    ) -> (
        IntakeListener,
        AdminServer,
        Option<std::net::TcpListener>,
        Option<ApiListener>,
    ) {
        (self.intake, self.admin, self.metrics, self.api)
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

impl ApiListener {
    async fn bind(listen: &ApiListen, config: &ResolvedConfig) -> anyhow::Result<ApiListener> {
        match listen {
            ApiListen::Tcp(addr) => {
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen on [api] listen = {addr}"))?;
                listener.set_nonblocking(true)?;
                let tls = load_tls(&config.raw.api.tls_cert, &config.raw.api.tls_key).await?;
                Ok(ApiListener::Tcp { listener, tls })
            }
            ApiListen::Unix(path) => {
                use std::os::unix::fs::PermissionsExt;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                if path.exists() {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        anyhow::bail!(
                            "[api] listen = {}: another process serves this socket",
                            path.display()
                        );
                    }
                    std::fs::remove_file(path).with_context(|| {
                        format!("cannot remove the stale socket {}", path.display())
                    })?;
                }
                let listener = std::os::unix::net::UnixListener::bind(path)
                    .with_context(|| format!("cannot create the API socket {}", path.display()))?;
                listener.set_nonblocking(true)?;
                // Keys authenticate every request; the mode keeps strangers from even trying.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
                if let Some(group) = &config.raw.admin.group {
                    let gid = nix::unistd::Group::from_name(group)?
                        .with_context(|| format!("no group {group:?}"))?
                        .gid;
                    nix::unistd::chown(path, None, Some(gid)).with_context(|| {
                        format!("cannot give {} to group {group}", path.display())
                    })?;
                }
                Ok(ApiListener::Unix {
                    listener,
                    path: path.clone(),
                })
            }
        }
    }

    /// Serves `router` until `stop`, then lets requests in flight finish for a few seconds
    /// (long polls end at once: the feed is closed at the same time).
    pub(super) async fn serve(
        self,
        router: axum::Router,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        match self {
            ApiListener::Tcp { listener, tls } => {
                let make_service =
                    router.into_make_service_with_connect_info::<std::net::SocketAddr>();
                let handle = axum_server::Handle::new();
                let stopper = {
                    let handle = handle.clone();
                    async move {
                        stop.cancelled().await;
                        handle.graceful_shutdown(Some(Duration::from_secs(5)));
                    }
                };
                let server = async {
                    match tls {
                        Some(tls) => {
                            let mut server = axum_server::from_tcp_rustls(listener, tls);
                            configure_http(server.http_builder());
                            server.handle(handle.clone()).serve(make_service).await
                        }
                        None => {
                            let mut server = axum_server::from_tcp(listener);
                            configure_http(server.http_builder());
                            server.handle(handle.clone()).serve(make_service).await
                        }
                    }
                };
                let (served, ()) = tokio::join!(server, stopper);
                served.context("the data API server failed")
            }
            ApiListener::Unix { listener, path } => {
                let listener = tokio::net::UnixListener::from_std(listener)?;
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                let _ = std::fs::remove_file(&path);
                served.context("the data API server failed")
            }
        }
    }
}

async fn load_tls(
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
) -> anyhow::Result<Option<axum_server::tls_rustls::RustlsConfig>> {
    let (Some(cert), Some(key)) = (cert, key) else {
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
