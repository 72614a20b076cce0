//! [`FakeGoogle`]: binds the listener, builds the [`Emulator`] and serves it until dropped.

use std::net::SocketAddr;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "fake-google server failed");
            }
        });
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
