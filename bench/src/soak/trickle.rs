//! Attacker: trickling clients. [`TRICKLERS`] connections at a time that send a request one
//! byte every 2 to 4 s: a request head, a body after a whole head, or an HTTP/2 preface (h2c;
//! the intake speaks HTTP/1.1 only, so to it that is a malformed head). The daemon must cut
//! each off within its timeout (the head's, `HEADER_TIMEOUT`; the body's, `BODY_TIMEOUT`) plus
//! [`CUT_MARGIN`]; how many it cut and the longest it took are in the report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use appdata_syncd::intake::BODY_TIMEOUT;
use appdata_syncd::lifecycle::HEADER_TIMEOUT;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::state::Soak;
use super::{pause, secs};

/// Trickling connections at once (each holds a place among `max_connections`).
const TRICKLERS: usize = 30;
/// Scheduling slack of a loaded 2-core machine on top of the daemon's timeout.
const CUT_MARGIN: Duration = Duration::from_secs(5);

/// What a trickler sends.
#[derive(Clone, Copy)]
enum Trickle {
    /// A request head, byte by byte.
    Head,
    /// A whole head at once, then its body byte by byte.
    Body,
    /// HTTP/2's connection preface (RFC 9113 §3.4), byte by byte.
    H2cPreface,
}

impl Trickle {
    fn name(self) -> &'static str {
        match self {
            Trickle::Head => "head",
            Trickle::Body => "body",
            Trickle::H2cPreface => "h2c_preface",
        }
    }

    /// (sent at once, then trickled)
    fn bytes(self) -> (&'static [u8], &'static [u8]) {
        const HEAD: &[u8] = b"POST /authcode HTTP/1.1\r\nHost: soak\r\n\
            Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 64\r\n\r\n";
        match self {
            Trickle::Head => (b"", HEAD),
            Trickle::Body => (
                HEAD,
                b"authCode=4/0AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-soak-trickle-code",
            ),
            Trickle::H2cPreface => (b"", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        }
    }

    fn timeout(self) -> Duration {
        match self {
            Trickle::Head | Trickle::H2cPreface => HEADER_TIMEOUT,
            Trickle::Body => BODY_TIMEOUT,
        }
    }
}

/// [`TRICKLERS`] tricklers, each starting a new trickle once cut off, until `stop`.
pub(super) async fn tricklers(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    for i in 0..TRICKLERS {
        let kind = [Trickle::Head, Trickle::Body, Trickle::H2cPreface][i % 3];
        let (soak, stop) = (soak.clone(), stop.clone());
        tasks.spawn(async move {
            let mut wait = secs(0.0, 5.0);
            while pause(&stop, wait).await {
                wait = secs(0.5, 2.0);
                trickle(&soak, &stop, kind).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done?;
    }
    Ok(())
}

/// One trickle until the daemon closes the connection; a violation if it takes longer than
/// the timeout plus [`CUT_MARGIN`] (unless a restart came in between).
async fn trickle(soak: &Soak, stop: &CancellationToken, kind: Trickle) {
    let name = kind.name();
    let epoch = soak.epoch();
    let started = Instant::now();
    let Ok(stream) = TcpStream::connect(soak.paths.intake).await else {
        soak.counts.add(format!("trickle.{name}.connect_failed"));
        return;
    };
    let bound = kind.timeout() + CUT_MARGIN;
    let cut = tokio::select! {
        r = tokio::time::timeout(bound, until_closed(stream, kind)) => r.is_ok(),
        () = stop.cancelled() => return,
    };
    let took = started.elapsed();
    if soak.epoch() != epoch {
        soak.counts.add(format!("trickle.{name}.ended_by_restart"));
    } else if cut {
        soak.counts.add(format!("trickle.{name}.cut"));
        soak.counts.max(
            format!("trickle.{name}.max_cut_ms"),
            took.as_millis() as u64,
        );
    } else {
        soak.violation(format!(
            "a client trickling {name} was not cut off within {:.0} s (timeout {} s)",
            took.as_secs_f64(),
            kind.timeout().as_secs()
        ));
    }
}

/// Sends `kind`'s bytes, the trickled ones one every 2 to 4 s, until the daemon closes.
async fn until_closed(mut stream: TcpStream, kind: Trickle) {
    let (at_once, trickled) = kind.bytes();
    if stream.write_all(at_once).await.is_err() {
        return;
    }
    let mut next = trickled.iter();
    let mut buf = [0u8; 1024];
    loop {
        let wait = Duration::from_secs_f64(rand::thread_rng().gen_range(2.0..4.0));
        tokio::select! {
            // An answer (400, 408, 505) may come first; closed is what counts.
            r = stream.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { return },
            () = tokio::time::sleep(wait) => {
                let Some(byte) = next.next() else {
                    // Everything sent and still open: the caller's timeout decides.
                    return std::future::pending().await;
                };
                if stream.write_all(&[*byte]).await.is_err() {
                    return;
                }
            }
        }
    }
}
