//! [`FakeGoogle`]: binds the listener, builds the [`Emulator`] and serves it until dropped.
//!
//! The serve loop is hyper-util's auto builder rather than `axum::serve`, for two reasons:
//! HTTP/1.1 and HTTP/2 with prior knowledge (h2c) are both served on the one port, so a client
//! can be measured over either; and a handler can have the connection dropped without an
//! answer (a response carrying [`crate::http::DropConnection`]), which is how a resumable
//! upload is cut mid-body.

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

use crate::keys::SigningKey;
use crate::{ids, Clients, Emulator};

/// How to start the emulator. Unset client ids and secret are generated.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub web_client_id: Option<String>,
    pub web_client_secret: Option<String>,
    pub android_client_id: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            web_client_id: None,
            web_client_secret: None,
            android_client_id: None,
        }
    }
}

/// A running emulator. Dropping it shuts the server down.
pub struct FakeGoogle {
    emulator: Emulator,
    addr: SocketAddr,
    /// Sending (or dropping) tells the server task to stop accepting and close connections.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeGoogle {
    /// Starts on 127.0.0.1 with an ephemeral port and generated clients.
    pub async fn start() -> anyhow::Result<FakeGoogle> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> anyhow::Result<FakeGoogle> {
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let project = ids::project_number();
        let clients = Clients {
            web_client_id: opts
                .web_client_id
                .unwrap_or_else(|| ids::client_id(&project)),
            web_client_secret: opts.web_client_secret.unwrap_or_else(ids::client_secret),
            android_client_id: opts
                .android_client_id
                .unwrap_or_else(|| ids::client_id(&project)),
        };
        // RSA key generation is CPU-bound; keep it off the async workers.
        let key = tokio::task::spawn_blocking(SigningKey::generate).await??;
        let emulator = Emulator::new(format!("http://{addr}"), clients, key);
        let app = crate::http::router(emulator.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app, stopped));
        Ok(FakeGoogle {
            emulator,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn clients(&self) -> Clients {
        self.emulator.clients()
    }

    /// Google's `client_secret.json` for the web client, pointing at this server.
    pub fn client_secret_json(&self) -> serde_json::Value {
        self.emulator.client_secret_json()
    }

    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    /// Stops accepting, lets in-flight requests finish (for up to 5 s), then returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Keep-alive connections would hold a graceful shutdown open indefinitely.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The error a service returns to make hyper drop the connection unanswered.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fake-google: connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

/// Accepts until `stopped` fires, then lets open connections finish for up to 5 s. The
/// connection tasks live in a `JoinSet` owned here, so aborting this task ends them too.
async fn serve(listener: TcpListener, app: Router, mut stopped: oneshot::Receiver<()>) {
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    let builder = Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "fake-google accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let app = app.clone();
                    async move {
                        let resp = app
                            .oneshot(req.map(Body::new))
                            .await
                            .unwrap_or_else(|e: Infallible| match e {});
                        if resp.extensions().get::<crate::http::DropConnection>().is_some() {
                            return Err(Dropped);
                        }
                        Ok(resp)
                    }
                });
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                conns.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::trace!(error = %e, "fake-google connection ended");
                    }
                });
            }
            _ = &mut stopped => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}
