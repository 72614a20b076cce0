//! Attacker: idle sockets. [`IDLE_SOCKETS`] connections to the intake that never send a byte;
//! each one the daemon closes is opened again after a pause. The daemon must close each within
//! `[intake] first_byte_timeout` (sooner when a newer connection takes its place past
//! `max_connections`), and its open file descriptors, read from `/proc/PID/fd` every second,
//! must stay under `max_connections` plus [`FD_MARGIN`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::{FIRST_BYTE_TIMEOUT, MAX_CONNECTIONS};
use super::state::Soak;
use super::{pause, secs};

/// Silent connections kept open at once: about twice `max_connections`.
const IDLE_SOCKETS: usize = 2000;
/// The daemon's descriptors besides intake connections: database, mirror files being written,
/// connections to Google (up to `[sync] concurrency` and the sign-ins), admin, listeners.
const FD_MARGIN: usize = 512;
/// Scheduling slack of a loaded 2-core machine on top of `first_byte_timeout`.
const CLOSE_MARGIN: Duration = Duration::from_secs(5);

/// The silent connections and the descriptor watch, until `stop`.
pub(super) async fn idle_sockets(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    for _ in 0..IDLE_SOCKETS {
        tasks.spawn(idle_socket(soak.clone(), stop.clone()));
    }
    tasks.spawn(watch_fds(soak, stop));
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// One silent connection at a time: opened (at a random moment of the first 5 s), held until
/// the daemon closes it, opened again 1 to 3 s later.
async fn idle_socket(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    let mut wait = secs(0.0, 5.0);
    while pause(&stop, wait).await {
        wait = secs(1.0, 3.0);
        let epoch = soak.epoch();
        let opened = Instant::now();
        let Ok(mut stream) = TcpStream::connect(soak.paths.intake).await else {
            soak.counts.add("idle.connect_failed");
            continue;
        };
        soak.counts.add("idle.opened");
        let mut byte = [0u8; 1];
        tokio::select! {
            // Ok(0) when closed, an error when reset; the daemon never writes to it.
            _ = stream.read(&mut byte) => {}
            () = stop.cancelled() => break,
        }
        let held = opened.elapsed();
        if soak.epoch() != epoch {
            // A restart came in between: a stopping daemon stops accepting.
            soak.counts.add("idle.closed_by_restart");
            continue;
        }
        soak.counts.add("idle.closed");
        soak.counts.max("idle.max_held_ms", held.as_millis() as u64);
        if held > FIRST_BYTE_TIMEOUT + CLOSE_MARGIN {
            soak.violation(format!(
                "a silent intake connection was held {:.1} s (first_byte_timeout {} s)",
                held.as_secs_f64(),
                FIRST_BYTE_TIMEOUT.as_secs()
            ));
        }
    }
    Ok(())
}

/// Every second: the daemon's open descriptors, the largest count kept, past the bound a
/// violation.
async fn watch_fds(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    let bound = MAX_CONNECTIONS + FD_MARGIN;
    while pause(&stop, Duration::from_secs(1)).await {
        let Some(pid) = soak.daemon_pid() else {
            continue;
        };
        // Gone when the daemon was just killed: skipped.
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let n = fds.count();
        soak.counts.max("idle.daemon_fds_max", n as u64);
        if n > bound {
            soak.violation(format!(
                "the daemon had {n} open descriptors, over max_connections + {FD_MARGIN} = {bound}"
            ));
        }
    }
    Ok(())
}

/// The soft limit on open files raised for the sockets (never past the hard limit), for this
/// process and the daemons it starts: a shell's default of 1024 cannot hold them.
pub(super) fn raise_fd_limit() {
    let want = IDLE_SOCKETS as u64 + 4096;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a live struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
