//! The admin socket: a Unix socket (mode 0660) that only root, the daemon's own uid and the
//! uids/groups in `[admin] allow` may use (checked per connection with SO_PEERCRED and
//! SO_PEERGROUPS), speaking [`protocol`]. [`commands`] runs each request through the daemon's
//! [`Services`]; [`client`] is the other end, used by `appdata-syncd ctl` and tests.
//!
//! Every command that changes something leaves an audit line (target `appdata_syncd::audit`:
//! peer uid and pid, command, user, outcome; never other arguments), and so does every refused
//! connection.

pub mod client;
pub mod commands;
pub mod protocol;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::config::AdminConfig;
use crate::services::Services;
use protocol::{parse_request, Command, ErrorCode, Response, MAX_LINE};

/// A connection with no request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;

/// Who may use the socket besides root and the daemon's uid.
#[derive(Debug, Clone, Default)]
struct Allowed {
    uids: Vec<u32>,
    gids: Vec<u32>,
}

pub struct AdminServer {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    allowed: Allowed,
}

impl AdminServer {
    /// Binds the socket: removes a stale socket file, refuses when a live daemon answers on it.
    pub fn bind(config: &AdminConfig) -> anyhow::Result<AdminServer> {
        let path = config.socket.clone();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            // Only a socket is ours to remove: anything else there (a file, a symlink, a
            // directory) is someone's mistake, or an attack, to be looked at, not deleted.
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; left untouched: remove it or set \
                     [admin] socket to another path",
                    path.display()
                );
            }
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                bail!(
                    "another appdata-syncd is already running: its admin socket {} answers",
                    path.display()
                );
            }
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .with_context(|| format!("cannot create the admin socket {}", path.display()))?;
        listener.set_nonblocking(true)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
        if let Some(group) = &config.group {
            let gid = group_id(group)?;
            nix::unistd::chown(&path, None, Some(nix::unistd::Gid::from_raw(gid)))
                .with_context(|| format!("cannot give {} to group {group}", path.display()))?;
        }
        let mut allowed = Allowed::default();
        for entry in &config.allow {
            match entry.parse::<u32>() {
                Ok(uid) => allowed.uids.push(uid),
                Err(_) => allowed.gids.push(group_id(entry)?),
            }
        }
        Ok(AdminServer {
            listener,
            path,
            allowed,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `stop`; removes the socket file on the way out.
    pub async fn serve(
        self,
        services: Arc<Services>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::UnixListener::from_std(self.listener)
            .context("the admin socket is unusable")?;
        let allowed = Arc::new(self.allowed);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = stop.cancelled() => break,
            };
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            let services = services.clone();
            let allowed = allowed.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                handle_connection(stream, &allowed, services, stop).await;
                drop(permit);
            });
        }
        let _ = std::fs::remove_file(&self.path);
        Ok(())
    }
}

fn group_id(name: &str) -> anyhow::Result<u32> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => bail!("[admin] no such group {name:?}"),
        Err(e) => bail!("[admin] cannot look up group {name:?}: {e}"),
    }
}

/// Who is on the other end of a connection, as the kernel saw it at `connect()`.
#[derive(Debug, Clone)]
struct Peer {
    uid: u32,
    /// 0 when the peer is in another pid namespace.
    pid: i32,
    /// Primary and supplementary groups.
    gids: Vec<u32>,
}

impl Peer {
    /// SO_PEERCRED for uid, gid and pid; SO_PEERGROUPS for the supplementary groups, since
    /// /proc/PID/status is hidden by the unit's `ProtectProc=invisible` (and racy besides:
    /// the peer may have exited, or its pid been reused).
    fn of(stream: &UnixStream) -> Result<Peer, String> {
        use std::os::fd::AsRawFd;
        let cred = stream
            .peer_cred()
            .map_err(|e| format!("cannot read peer credentials: {e}"))?;
        let mut gids = vec![cred.gid()];
        gids.extend(
            peer_groups(stream.as_raw_fd())
                .map_err(|e| format!("cannot read the peer's groups: {e}"))?,
        );
        Ok(Peer {
            uid: cred.uid(),
            pid: cred.pid().unwrap_or(0),
            gids,
        })
    }

    /// Root, our own uid, an allowed uid, or a member (primary or supplementary) of an
    /// allowed group.
    fn allowed(&self, allowed: &Allowed) -> Result<(), String> {
        let uid = self.uid;
        if uid == 0 || uid == nix::unistd::geteuid().as_raw() || allowed.uids.contains(&uid) {
            return Ok(());
        }
        if self.gids.iter().any(|g| allowed.gids.contains(g)) {
            return Ok(());
        }
        Err(format!("uid {uid} is not allowed on the admin socket"))
    }
}

/// The supplementary groups the peer had at `connect()` (Linux 4.13+).
fn peer_groups(fd: std::os::fd::RawFd) -> std::io::Result<Vec<u32>> {
    use nix::libc;
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * GID) as libc::socklen_t;
        // SAFETY: `groups` is writable for `len` bytes; the kernel writes at most that and
        // sets `len` to what it wrote (or, with ERANGE, to what it needs).
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let len = len as usize / GID;
        if r == 0 {
            groups.truncate(len);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && len > groups.len() {
            groups.resize(len, 0);
            continue;
        }
        return Err(err);
    }
}

/// One audit line: who did what to whom, and how it ended; never a command's other
/// arguments (paths, content, filters), which may carry what is not ours to log.
fn audit(peer: Option<&Peer>, command: &str, user: Option<&str>, outcome: &str) {
    tracing::info!(
        target: "appdata_syncd::audit",
        uid = peer.map(|p| p.uid),
        pid = peer.map(|p| p.pid),
        command,
        user,
        outcome,
        "admin command"
    );
}

/// One line read from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    TooLong,
    Closed,
}

/// Reads up to a newline, keeping at most [`MAX_LINE`] bytes; the rest of a longer line is
/// read and thrown away, so the connection stays usable after a `line_too_long`. Public for the
/// fuzz harness (tests/fuzz).
pub async fn read_line(reader: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            // EOF: a half line without its newline is not a request.
            return Ok(Line::Closed);
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            if line.len() + chunk.len() > MAX_LINE {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let consumed = done.unwrap_or(buf.len());
        reader.consume(consumed);
        if done.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Text(String::from_utf8_lossy(&line).into_owned())
            });
        }
    }
}

async fn handle_connection(
    stream: UnixStream,
    allowed: &Allowed,
    services: Arc<Services>,
    stop: CancellationToken,
) {
    let peer = Peer::of(&stream);
    let refused = peer
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|p| p.allowed(allowed));
    let (read, mut write) = stream.into_split();
    if let Err(why) = refused {
        tracing::warn!(reason = %why, "refused an admin connection");
        audit(peer.as_ref().ok(), "connect", None, "forbidden");
        let line = Response::error(None, ErrorCode::Forbidden, why).to_line();
        let _ = write.write_all(line.as_bytes()).await;
        return;
    }
    let mut reader = BufReader::new(read);
    loop {
        let next = tokio::select! {
            n = tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut reader)) => n,
            _ = stop.cancelled() => return,
        };
        let answered = match next {
            Err(_) | Ok(Err(_)) | Ok(Ok(Line::Closed)) => return, // idle, broken or closed
            Ok(Ok(Line::TooLong)) => {
                let r = Response::error(
                    None,
                    ErrorCode::LineTooLong,
                    format!("request lines are limited to {MAX_LINE} bytes"),
                );
                write.write_all(r.to_line().as_bytes()).await
            }
            Ok(Ok(Line::Text(line))) if line.trim().is_empty() => Ok(()),
            Ok(Ok(Line::Text(line))) => {
                answer(
                    &services,
                    peer.as_ref().ok(),
                    &line,
                    &mut reader,
                    &mut write,
                )
                .await
            }
        };
        if answered.is_err() {
            return; // the client has gone
        }
    }
}

/// Runs one request line and writes its progress lines and final response. A `push` reads
/// its content from `reader`, after the line.
async fn answer(
    services: &Services,
    peer: Option<&Peer>,
    line: &str,
    reader: &mut (impl AsyncBufRead + Unpin + Send),
    write: &mut (impl AsyncWriteExt + Unpin),
) -> std::io::Result<()> {
    let (id, command) = parse_request(line);
    let command = match command {
        Ok(c) => c,
        Err(e) => {
            let r = Response::error(id, ErrorCode::BadRequest, e);
            return write.write_all(r.to_line().as_bytes()).await;
        }
    };
    let (name, user) = (command.name(), command.user().map(str::to_owned));
    let audited = command.is_mutating();
    let content_length = match &command {
        Command::Push { content_length, .. } => *content_length,
        _ => 0,
    };
    let mut upload = reader.take(content_length);
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel::<serde_json::Value>(64);
    let response = {
        let run = commands::execute(services, command, events_tx, &mut upload);
        tokio::pin!(run);
        loop {
            tokio::select! {
                r = &mut run => break r,
                Some(event) = events_rx.recv() => {
                    let line = Response::event(id.clone(), event).to_line();
                    if let Err(e) = write.write_all(line.as_bytes()).await {
                        // The client left mid-command; what it started may have happened.
                        if audited {
                            audit(peer, name, user.as_deref(), "client_gone");
                        }
                        return Err(e);
                    }
                }
            }
        }
    };
    // Content a refused push left unread is skipped: the next line must be a request.
    let mut sink = tokio::io::sink();
    let skip = tokio::io::copy(&mut upload, &mut sink);
    tokio::time::timeout(IDLE_TIMEOUT, skip)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    while let Ok(event) = events_rx.try_recv() {
        let line = Response::event(id.clone(), event).to_line();
        write.write_all(line.as_bytes()).await?;
    }
    if audited {
        let outcome = match &response {
            Ok(_) => "ok".to_string(),
            Err(e) => serde_json::to_value(e.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "error".into()),
        };
        audit(peer, name, user.as_deref(), &outcome);
    }
    let line = match response {
        Ok(result) => Response::ok(id, result),
        Err(e) => Response::error(id, e.code, e.message),
    }
    .to_line();
    write.write_all(line.as_bytes()).await
}
