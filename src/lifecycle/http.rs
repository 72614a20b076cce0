//! The HTTP server of the public listeners: HTTP/1.1 only (over TLS, ALPN offers nothing
//! else), with admission control that a hostile internet cannot exhaust.
//!
//! - **Connections are capped** (`max_connections`). Past the cap, the oldest connection that
//!   has not yet said anything (no byte, or no finished TLS handshake) is closed to make room:
//!   a well-behaved client speaks at once, so idle sockets evict each other, not it. When every
//!   connection has spoken, new ones are refused.
//! - **First byte**: a connection that sends nothing (or does not finish its TLS handshake)
//!   within `first_byte_timeout` is closed; request heads must arrive within `header_timeout`
//!   (hyper's `header_read_timeout`), for every request of a keep-alive connection.
//! - **HTTP/1.1 only.** The one client is an app's `POST /authcode` (Android's HTTP stacks
//!   speak HTTP/1.1 and fall back to it when the server offers no `h2`), so HTTP/2 would only add
//!   attack surface (preface trickling, stream floods): an h2c preface is an HTTP/1 error and
//!   closes the connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a public listener tolerates.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub first_byte_timeout: Duration,
    pub header_timeout: Duration,
}

/// Serves `router` on `listener` until `stop`, then lets requests in flight finish for
/// `drain` at most; everything ends at once on `abort`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    limits: Limits,
    stop: CancellationToken,
    abort: CancellationToken,
    drain: Duration,
) -> anyhow::Result<()> {
    let admission = Arc::new(Admission::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, mostly: a pause, not an end.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Some(ticket) = admission.admit() else {
            crate::metrics::connection_refused();
            continue; // dropped: closed at once
        };
        let (tls, router, stop, abort) = (tls.clone(), router.clone(), stop.clone(), abort.clone());
        connections.spawn(async move {
            tokio::select! {
                () = connection(stream, peer, tls, router, limits, &ticket, stop) => {}
                _ = abort.cancelled() => {}
            }
            drop(ticket);
        });
    }
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the drain period; closing them");
    }
    Ok(())
}

/// One connection: wait for its first byte (or TLS handshake), then HTTP/1.1 until it closes
/// or `stop`, which finishes the request in flight and closes.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    limits: Limits,
    ticket: &Ticket,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let opened = async {
        match tls {
            Some(acceptor) => acceptor.accept(stream).await.map(|s| Io::Tls(Box::new(s))),
            None => {
                let mut byte = [0u8; 1];
                match stream.peek(&mut byte).await {
                    Ok(0) => Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => Ok(Io::Plain(stream)),
                    Err(e) => Err(e),
                }
            }
        }
    };
    let io = tokio::select! {
        r = tokio::time::timeout(limits.first_byte_timeout, opened) => match r {
            Ok(Ok(io)) => io,
            _ => return, // silent, broken, or a failed handshake
        },
        _ = ticket.evicted.cancelled() => return,
    };
    ticket.spoke();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let mut router = router.clone();
            async move {
                use tower::Service;
                router.call(req.map(axum::body::Body::new)).await
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    match io {
        Io::Plain(s) => drive(builder.serve_connection(TokioIo::new(s), service), stop).await,
        Io::Tls(s) => drive(builder.serve_connection(TokioIo::new(s), service), stop).await,
    }
}

async fn drive<C>(
    conn: hyper::server::conn::http1::Connection<
        C,
        impl hyper::service::HttpService<hyper::body::Incoming, ResBody = axum::body::Body>,
    >,
    stop: CancellationToken,
) where
    C: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The connection cap, and the queue of connections that have not spoken yet (oldest first).
struct Admission {
    cap: usize,
    open: AtomicUsize,
    next: AtomicU64,
    silent: Mutex<VecDeque<(u64, CancellationToken)>>,
}

/// A connection's place; dropping it frees the place.
struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    /// Cancelled when a newer connection needs the place of this silent one.
    evicted: CancellationToken,
}

impl Admission {
    fn new(cap: usize) -> Admission {
        Admission {
            cap: cap.max(1),
            open: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            silent: Mutex::new(VecDeque::new()),
        }
    }

    /// A place for a new connection: a free one, or the oldest silent connection's.
    fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let mut silent = self.silent.lock();
        if self.open.load(Ordering::SeqCst) >= self.cap {
            let (_, oldest) = silent.pop_front()?;
            oldest.cancel();
            crate::metrics::connection_evicted();
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        silent.push_back((id, evicted.clone()));
        Some(Ticket {
            admission: self.clone(),
            id,
            evicted,
        })
    }
}

impl Ticket {
    /// The connection has spoken: it is no longer the first to make room.
    fn spoke(&self) {
        self.admission
            .silent
            .lock()
            .retain(|(id, _)| *id != self.id);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.spoke();
        self.admission.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The TLS acceptor of a listener: `cert` (PEM chain) and `key` (PEM), offering HTTP/1.1 only.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the TLS certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not make a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_the_oldest_silent_connection_makes_room() {
        let admission = Arc::new(Admission::new(2));
        let a = admission.admit().unwrap();
        let b = admission.admit().unwrap();
        a.spoke();
        // Full: b (silent) is evicted for c.
        let c = admission.admit().unwrap();
        assert!(b.evicted.is_cancelled() && !a.evicted.is_cancelled());
        drop(b);
        c.spoke();
        // Full, and everyone has spoken: refused.
        assert!(admission.admit().is_none());
        drop(a);
        assert!(admission.admit().is_some());
    }
}
