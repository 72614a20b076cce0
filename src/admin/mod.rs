//! The admin socket: a Unix socket (mode 0660) that only root, the daemon's own uid and the
//! uids/groups in `[admin] allow` may use (checked per connection with SO_PEERCRED), speaking
//! [`protocol`]. [`commands`] runs each request through the daemon's [`Services`];
//! [`client`] is the other end, used by `appdata-syncd ctl` and tests.

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
        if path.exists() {
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

/// Root, our own uid, an allowed uid, or a member (primary or supplementary) of an allowed group.
fn peer_allowed(stream: &UnixStream, allowed: &Allowed) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let uid = cred.uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() || allowed.uids.contains(&uid) {
        return Ok(());
    }
    if !allowed.gids.is_empty() {
        let mut groups = vec![cred.gid()];
        if let Some(pid) = cred.pid() {
            groups.extend(supplementary_groups(pid));
        }
        if groups.iter().any(|g| allowed.gids.contains(g)) {
            return Ok(());
        }
    }
    Err(format!("uid {uid} is not allowed on the admin socket"))
}

fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
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
    let refused = peer_allowed(&stream, allowed);
    let (read, mut write) = stream.into_split();
    if let Err(why) = refused {
        tracing::warn!(reason = %why, "refused an admin connection");
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
            Ok(Ok(Line::Text(line))) => answer(&services, &line, &mut reader, &mut write).await,
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
                    write.write_all(line.as_bytes()).await?;
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
    let line = match response {
        Ok(result) => Response::ok(id, result),
        Err(e) => Response::error(id, e.code, e.message),
    }
    .to_line();
    write.write_all(line.as_bytes()).await
}
