//! Every listener the daemon serves, bound at build time so that a taken port fails start-up
//! and tests can bind port 0 and read the real address back.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

/// Request heads must arrive within this (each request of a keep-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
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

/// The data API's listener: TCP (plain or TLS, through the same server as the intake) or a
/// Unix socket.
pub(super) enum ApiListener {
    Tcp {
        listener: std::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    },
    Unix {
        listener: std::os::unix::net::UnixListener,
        path: std::path::PathBuf,
    },
}

/// Connections the data API serves at once: the operator's backend, not the internet.
const API_MAX_CONNECTIONS: usize = 1024;

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
        let api = match &config.api.listen {
            Some(listen) => Some(ApiListener::bind(listen, config)?),
            None => None,
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
            database = %config.store_url,
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

impl ApiListener {
    fn bind(listen: &ApiListen, config: &ResolvedConfig) -> anyhow::Result<ApiListener> {
        match listen {
            ApiListen::Tcp(addr) => {
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen on [api] listen = {addr}"))?;
                listener.set_nonblocking(true)?;
                let tls = match (&config.raw.api.tls_cert, &config.raw.api.tls_key) {
                    (Some(cert), Some(key)) => Some(super::http::tls_acceptor(cert, key)?),
                    _ => None,
                };
                Ok(ApiListener::Tcp { listener, tls })
            }
            ApiListen::Unix(path) => bind_unix(path, config.raw.admin.group.as_deref()),
        }
    }

    /// Serves `router` until `stop`, then lets requests in flight finish for `drain` (long
    /// polls end at once: the feed is closed at the same time), or ends at once on `abort`.
    pub(super) async fn serve(
        self,
        router: axum::Router,
        stop: CancellationToken,
        abort: CancellationToken,
        drain: Duration,
    ) -> anyhow::Result<()> {
        match self {
            ApiListener::Tcp { listener, tls } => {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .context("the data API listener is unusable")?;
                let limits = super::http::Limits {
                    max_connections: API_MAX_CONNECTIONS,
                    first_byte_timeout: HEADER_TIMEOUT,
                    header_timeout: HEADER_TIMEOUT,
                };
                super::http::serve(listener, tls, router, limits, stop, abort, drain).await
            }
            ApiListener::Unix { listener, path } => {
                let listener = tokio::net::UnixListener::from_std(listener)?;
                let served = tokio::select! {
                    served = axum::serve(listener, router)
                        .with_graceful_shutdown(stop.cancelled_owned()) => served,
                    _ = abort.cancelled() => Ok(()),
                };
                let _ = std::fs::remove_file(&path);
                served.context("the data API server failed")
            }
        }
    }
}

/// The API's Unix socket: a stale socket file replaced, a live one refused; mode 0660 and
/// `[admin] group`.
fn bind_unix(path: &std::path::Path, group: Option<&str>) -> anyhow::Result<ApiListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "[api] listen = {}: another process serves this socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot create the API socket {}", path.display()))?;
    listener.set_nonblocking(true)?;
    // Keys authenticate every request; the mode keeps strangers from even trying.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(group) = group {
        let gid = nix::unistd::Group::from_name(group)?
            .with_context(|| format!("no group {group:?}"))?
            .gid;
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {group}", path.display()))?;
    }
    Ok(ApiListener::Unix {
        listener,
        path: path.to_path_buf(),
    })
}
