//! `appdata-syncd ctl`: the admin's command line, a thin client of the admin socket. Prints
//! tables that fit the terminal by default (layout.rs) and the raw JSON result with `--json`;
//! its exit codes say what went wrong ([`EXIT_CODES`]).

mod layout;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::admin::client::{AdminClient, Unreachable};
use crate::admin::protocol::{Command, Response};
use crate::scheduler::resync::ResyncReport;
use crate::scheduler::{CycleProgress, SyncEvent, SyncPhase};
use crate::services::reports::{
    Acknowledged, ApiKeyCreated, ApiKeyList, FileList, Forgotten, LogFilter, RateLimitStatus,
    ReloadReport, ResyncQueued, SecurityView, StateChanged, Status, UserDetail, UserList,
    WebhookStatus,
};
use crate::services::writes::WriteView;
use crate::store::api_keys::ApiKey;
use crate::store::users::UserState;
use crate::store::users::UserSummary;
use crate::store::writes::WriteState;
use layout::{clean, pairs, table, Col, Kind};

/// How `ctl` ends; shown by `ctl --help` and in its man page.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the daemon refused the command or it failed (its error code is printed, e.g.
     unknown_user); `resync --wait`: a sync it waited for failed
  2  usage error: unknown command or option, missing or malformed argument
  3  the daemon could not be reached (no socket, permission denied, connection
     refused) or went away

Tables fit the terminal's width (COLUMNS when set; 80 when stdout is not a terminal);
colors only on a terminal, never with NO_COLOR set.";

/// `users` lists this many unless told otherwise.
const USERS_PAGE: u32 = 50;
/// `users --all` fetches this many a request.
const USERS_ALL_PAGE: u32 = 1000;

#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct CtlArgs {
    /// The daemon's admin socket.
    #[arg(
        long,
        env = "APPDATA_SYNCD_ADMIN__SOCKET",
        default_value = "/run/appdata-syncd/admin.sock"
    )]
    pub socket: PathBuf,
    /// Print the result as JSON (for scripts); errors too, as {"error", "message"}.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Version, uptime, users by state, syncs running, last and next cycle, rate limiter.
    Status {
        /// Redraw every --interval seconds (a live view of a running cycle) until Ctrl-C.
        /// Not on a terminal (or with --json): each snapshot after the last.
        #[arg(long)]
        watch: bool,
        /// Seconds between two snapshots of --watch.
        #[arg(long, default_value_t = 2, requires = "watch",
              value_parser = clap::value_parser!(u64).range(1..))]
        interval: u64,
    },
    /// Users in sub order with state, last sync, last error, files and bytes: the first 50
    /// unless told otherwise; the last line says how to see more.
    Users {
        /// Only users in this state (active, reauth_required, paused, forgotten).
        #[arg(long, value_parser = parse_state)]
        state: Option<UserState>,
        /// How many users to list.
        #[arg(long, default_value_t = USERS_PAGE, conflicts_with = "all",
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// List the users after this sub (the last one of the previous page).
        #[arg(long, value_name = "SUB")]
        after: Option<String>,
        /// List every user, however many.
        #[arg(long)]
        all: bool,
    },
    /// One user in full, with the last 10 syncs.
    User { sub: String },
    /// The mirrored files of a user.
    Files { sub: String },
    /// Sync now, ahead of scheduled work.
    #[command(group = clap::ArgGroup::new("target").required(true).args(["sub", "all"]))]
    Resync {
        /// The user to sync.
        sub: Option<String>,
        #[arg(long)]
        all: bool,
        /// Drop the page token and re-list everything.
        #[arg(long)]
        full: bool,
        /// Show progress until the sync ends; exit 1 if it failed.
        #[arg(long)]
        wait: bool,
    },
    /// Stop syncing a user until `resume`.
    Pause { sub: String },
    /// Sync a paused user again.
    Resume { sub: String },
    /// Write a file into the user's appDataFolder, as the data API's PUT does: created, or
    /// replacing the file at that path, on the user's next sync (or at once with --now). A
    /// file that changes on Drive meanwhile is not overwritten: the write ends as `conflict`.
    Push {
        sub: String,
        /// Where: `settings.json`, `docs/a.json` (a folder must exist; it is not created).
        #[arg(long, visible_alias = "name")]
        path: String,
        /// Local file with the content.
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        mime_type: Option<String>,
        /// Replace only this version of the file (its md5 or version, from `ctl files`).
        /// Default: the version there now.
        #[arg(long, conflicts_with = "create")]
        if_match: Option<String>,
        /// Create only: refused if something is at the path.
        #[arg(long)]
        create: bool,
        /// Sync the user now and report the write's outcome.
        #[arg(long)]
        now: bool,
    },
    /// Revoke the user's grant at Google and delete tokens, mirror and rows.
    Forget {
        sub: String,
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Clear a user's credential-change flag (Cross-Account Protection) after looking into it.
    Acknowledge { sub: String },
    /// Change the log filter at run time (e.g. "debug" or "appdata_syncd=trace,info").
    LogLevel { filter: String },
    /// Re-read config.toml (same as SIGHUP).
    Reload,
    /// Keys of the data API (docs/data-api.md).
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// Webhook endpoints: messages pending, delivered, failed; last error and success.
    Webhooks,
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        name: String,
        /// The key may also write through the API (PUT/DELETE); default: read-only.
        #[arg(long)]
        write: bool,
    },
    /// Keys with their rights, creation, last use and revocation.
    List,
    /// Revoke a key: requests with it are refused from now on.
    Revoke { name: String },
}

fn parse_state(s: &str) -> Result<UserState, String> {
    s.parse()
}

/// Why `ctl` gave up before the daemon answered (its own refusals are printed as answers).
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// A command line that cannot be sent as it is: exit 2, like clap's own.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Failure {
    /// The code `--json` prints, and the exit code ([`EXIT_CODES`]).
    fn code(&self) -> (&'static str, u8) {
        match self {
            Failure::Usage(_) => ("usage", 2),
            Failure::Other(e) if e.downcast_ref::<Unreachable>().is_some() => ("unreachable", 3),
            Failure::Other(_) => ("error", 1),
        }
    }
}

pub fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    match run_command(args) {
        Ok(code) => Ok(code),
        Err(failure) => {
            let (code, exit) = failure.code();
            let message = match failure {
                Failure::Usage(message) => message,
                Failure::Other(e) => clean(&format!("{e:#}")),
            };
            if json {
                let error = serde_json::json!({"error": code, "message": message});
                let _ = emit(&format!("{error}\n"));
            }
            eprintln!("appdata-syncd ctl: {message}");
            Ok(ExitCode::from(exit))
        }
    }
}

fn run_command(args: CtlArgs) -> Result<ExitCode, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let json = args.json;
    let socket = args.socket;
    match args.command {
        CtlCommand::Status {
            watch: true,
            interval,
        } => Ok(runtime.block_on(watch_status(&socket, Duration::from_secs(interval), json))?),
        CtlCommand::Users {
            state,
            all: true,
            after,
            ..
        } => Ok(runtime.block_on(all_users(&socket, state, after, json))?),
        command => {
            let upload = match &command {
                CtlCommand::Push { file, .. } => Some(file.clone()),
                _ => None,
            };
            let command = to_request(command)?;
            let response = runtime.block_on(send(&socket, command.clone(), upload, json))?;
            Ok(print_response(&command, response, json)?)
        }
    }
}

/// Sends one command (with `upload`'s bytes for a push) and returns the daemon's answer;
/// `resync --wait`'s progress lines are printed as they come.
async fn send(
    socket: &Path,
    mut command: Command,
    upload: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<Response> {
    let mut client = AdminClient::connect(socket).await?;
    let mut file = match upload {
        Some(path) => Some(
            tokio::fs::File::open(&path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    if let Command::Push {
        sub,
        path,
        if_match,
        if_none_match: None,
        ..
    } = &mut command
    {
        if if_match.is_none() {
            *if_match = current_version(&mut client, sub, path).await?;
        }
    }
    let upload = file
        .as_mut()
        .map(|f| f as &mut (dyn tokio::io::AsyncRead + Unpin + Send));
    client
        .request_with_upload(&command, upload, |event| {
            let line = match (json, serde_json::from_value::<SyncEvent>(event.clone())) {
                (false, Ok(e)) => describe_event(&e),
                _ => event.to_string(),
            };
            // A reader that has gone misses the progress; the answer still decides the exit.
            let _ = emit(&format!("{line}\n"));
        })
        .await
}

/// `status --watch`: a snapshot every `interval` until Ctrl-C. On a terminal each replaces
/// the last on screen; otherwise (or with --json) they follow one another.
async fn watch_status(socket: &Path, interval: Duration, json: bool) -> anyhow::Result<ExitCode> {
    let redraw = !json && std::io::stdout().is_terminal();
    // Registered now, so a Ctrl-C while a snapshot is being fetched is not lost.
    let mut ctrl_c = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot catch Ctrl-C")?;
    let mut shown = false;
    loop {
        // A new connection each time: the daemon closes idle ones, and a restarted daemon
        // is picked up.
        let response =
            send(socket, Command::Status, None, json)
                .await
                .map_err(|e| match shown {
                    true => e.context("the daemon went away"),
                    false => e,
                })?;
        shown = true;
        let text = match (&response.result, json) {
            (Some(result), true) => format!("{result}\n"),
            (Some(result), false) => {
                render(&Command::Status, result.clone(), layout::output_width())?
            }
            (None, _) => return print_response(&Command::Status, response, json),
        };
        let head = if redraw {
            // Cursor home, clear the screen (written past anstream, which would strip it
            // with NO_COLOR set).
            let mut stdout = std::io::stdout();
            write!(stdout, "\x1b[H\x1b[2J")?;
            String::new()
        } else if json {
            String::new()
        } else {
            let now = chrono::Utc::now().timestamp_millis();
            format!("--- {}\n", time(Some(now)))
        };
        if !emit(&format!("{head}{text}"))? {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = ctrl_c.recv() => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// `users --all`: every user, fetched a page at a time (so no answer is huge), shown as one
/// list.
async fn all_users(
    socket: &Path,
    state: Option<UserState>,
    mut after: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut client = AdminClient::connect(socket).await?;
    let mut all = UserList {
        users: Vec::new(),
        remaining: 0,
    };
    loop {
        let command = Command::Users {
            state,
            after: after.take(),
            limit: Some(USERS_ALL_PAGE),
        };
        let response = client.request(&command, |_| {}).await?;
        let Some(result) = response.result.clone() else {
            return print_response(&command, response, json);
        };
        let page: UserList = read(result)?;
        all.users.extend(page.users);
        if page.remaining == 0 {
            break;
        }
        after = all.users.last().map(|u| u.sub.clone());
    }
    let command = Command::Users {
        state,
        after: None,
        limit: None,
    };
    let response = Response::ok(None, serde_json::to_value(all)?);
    print_response(&command, response, json)
}

/// `push` without --if-match or --create replaces the version at `path` now: its md5 (or
/// version) as If-Match, none when nothing is there.
async fn current_version(
    client: &mut AdminClient,
    sub: &str,
    path: &str,
) -> anyhow::Result<Option<String>> {
    let files = Command::Files { sub: sub.into() };
    let response = client.request(&files, |_| {}).await?;
    let Some(result) = response.result else {
        // The push itself reports the unknown user (or whatever failed) the usual way.
        return Ok(None);
    };
    let list: FileList =
        serde_json::from_value(result).context("the daemon's file list is malformed")?;
    let paths = crate::store::files::paths(&list.files);
    let path = path.strip_prefix('/').unwrap_or(path);
    Ok(list
        .files
        .iter()
        .find(|f| paths.get(&f.file_id).map(String::as_str) == Some(path))
        .and_then(|f| f.md5.clone().or(f.version.map(|v| v.to_string()))))
}

/// The admin request a command line asks for; refuses what needs no daemon to refuse.
fn to_request(command: CtlCommand) -> Result<Command, Failure> {
    Ok(match command {
        CtlCommand::Status { .. } => Command::Status,
        CtlCommand::Users {
            state,
            limit,
            after,
            ..
        } => Command::Users {
            state,
            after,
            limit: Some(limit),
        },
        CtlCommand::User { sub } => Command::User { sub },
        CtlCommand::Files { sub } => Command::Files { sub },
        CtlCommand::Resync {
            sub,
            all,
            full,
            wait,
        } => Command::Resync {
            sub,
            all,
            full,
            wait,
        },
        CtlCommand::Pause { sub } => Command::Pause { sub },
        CtlCommand::Resume { sub } => Command::Resume { sub },
        CtlCommand::Push {
            sub,
            path,
            file,
            mime_type,
            if_match,
            create,
            now,
        } => {
            let content_length = std::fs::metadata(&file)
                .with_context(|| format!("cannot read {}", file.display()))?
                .len();
            Command::Push {
                sub,
                path,
                content_length,
                mime_type,
                if_match,
                if_none_match: create.then(|| "*".to_string()),
                sync_now: now,
            }
        }
        CtlCommand::Forget { sub, yes } => {
            if !yes {
                return Err(Failure::Usage(format!(
                    "forget revokes {sub}'s grant at Google and deletes everything stored for \
                     them; add --yes to confirm"
                )));
            }
            Command::Forget { sub }
        }
        CtlCommand::Acknowledge { sub } => Command::Acknowledge { sub },
        CtlCommand::LogLevel { filter } => Command::LogLevel { filter },
        CtlCommand::Reload => Command::Reload,
        CtlCommand::ApiKey(ApiKeyCommand::Create { name, write }) => {
            Command::ApiKeyCreate { name, write }
        }
        CtlCommand::ApiKey(ApiKeyCommand::List) => Command::ApiKeyList,
        CtlCommand::ApiKey(ApiKeyCommand::Revoke { name }) => Command::ApiKeyRevoke { name },
        CtlCommand::Webhooks => Command::Webhooks,
    })
}

/// Prints the result (or the daemon's refusal: exit 1) at the terminal's width.
fn print_response(command: &Command, response: Response, json: bool) -> anyhow::Result<ExitCode> {
    match (response.ok, response.result, response.error) {
        (Some(true), Some(result), _) => {
            let text = match json {
                true => format!("{result}\n"),
                false => render(command, result, layout::output_width())?,
            };
            emit(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        (_, _, Some(e)) => {
            let code = serde_json::to_value(e.code)?
                .as_str()
                .unwrap_or("error")
                .to_string();
            if json {
                let error = serde_json::json!({"error": code, "message": e.message});
                emit(&format!("{error}\n"))?;
            }
            eprintln!("appdata-syncd ctl: {code}: {}", clean(&e.message));
            Ok(ExitCode::FAILURE)
        }
        _ => anyhow::bail!("malformed response from the daemon"),
    }
}

/// Writes `text` to stdout, styles stripped unless it is a terminal that takes them (anstream
/// decides: NO_COLOR, CLICOLOR_FORCE). `false`: the reader has gone (`ctl users --all | head`),
/// which is no error.
fn emit(text: &str) -> anyhow::Result<bool> {
    let mut out = anstream::stdout();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// A result read back into the type the daemon sent.
fn read<T: serde::de::DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    serde_json::from_value(v).context("the daemon's answer does not have the expected shape")
}

fn describe_event(e: &SyncEvent) -> String {
    clean(&match e.phase {
        SyncPhase::Started => format!("{}: sync started", e.sub),
        SyncPhase::Finished => format!(
            "{}: sync finished: {} (+{} ~{} -{} files, {} uploaded){}",
            e.sub,
            e.outcome.map_or("?", |o| o.as_str()),
            e.added,
            e.updated,
            e.removed,
            e.uploaded,
            e.error
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
    })
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), T::to_string)
}

fn time(ms: Option<i64>) -> String {
    ms.filter(|ms| *ms > 0)
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// A time in a table: to the minute, which is what a list is read for (`ctl user` and
/// `--json` have the seconds).
fn minute(ms: Option<i64>) -> String {
    ms.filter(|ms| *ms > 0)
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Drive's RFC 3339 time (`2026-03-01T10:00:00.000Z`) as [`minute`] shows it; as it came
/// if it does not parse.
fn rfc3339_minute(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| minute(Some(t.timestamp_millis())))
        .unwrap_or_else(|_| t.to_string())
}

/// Bytes in at most 8 characters: `512 B`, `1.5 KiB`, `12 MiB`.
fn size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if value < 10.0 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

/// `99950` as `99,950`.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// The result of `command`, read back into the type the daemon sent, as text `width` columns
/// wide. One arm per command: a table, longer than a screen.
fn render(command: &Command, result: Value, width: usize) -> anyhow::Result<String> {
    Ok(match command {
        Command::Status => render_status(&read(result)?, width),
        Command::Users { state, .. } => render_users(&read(result)?, *state, width),
        Command::User { .. } => render_user(&read(result)?, width),
        Command::Files { .. } => render_files(&read(result)?, width),
        Command::Resync { wait: true, .. } => {
            let r: ResyncReport = read(result)?;
            format!("done: {} synced, {} failed\n", r.synced, r.failed)
        }
        Command::Resync { .. } => {
            let r: ResyncQueued = read(result)?;
            let full = if r.full { "full " } else { "" };
            format!("queued {} user(s) for {full}resync\n", r.queued)
        }
        Command::Pause { .. } | Command::Resume { .. } => {
            let r: StateChanged = read(result)?;
            format!("{} is now {}\n", r.user, r.state)
        }
        Command::Push { .. } => {
            let w: WriteView = read(result)?;
            let when = match w.state {
                WriteState::Pending => " (written on the user's next sync)",
                _ => "",
            };
            let error = w.error.map(|e| format!(": {e}")).unwrap_or_default();
            clean(&format!(
                "write {} of {} bytes to {:?} for {}: {}{when}{error}\n",
                w.id,
                opt(&w.size),
                w.path,
                w.sub,
                w.state
            ))
        }
        Command::Forget { .. } => {
            let r: Forgotten = read(result)?;
            format!("{} forgotten (grant revoked: {})\n", r.user, r.revoked)
        }
        Command::Acknowledge { .. } => {
            let r: Acknowledged = read(result)?;
            if r.cleared {
                format!("{}: credential-change flag cleared\n", r.user)
            } else {
                format!("{}: no credential-change flag was set\n", r.user)
            }
        }
        Command::LogLevel { .. } => {
            let r: LogFilter = read(result)?;
            format!("log filter is now {}\n", r.filter)
        }
        Command::ApiKeyCreate { .. } => {
            let r: ApiKeyCreated = read(result)?;
            let rights = if r.can_write {
                "read and write"
            } else {
                "read-only"
            };
            format!(
                "{}\n\nAPI key {:?} ({rights}) created. This is the only time it is shown: store it now.\n",
                r.key, r.name
            )
        }
        Command::ApiKeyList => render_api_keys(&read(result)?, width),
        Command::ApiKeyRevoke { .. } => {
            let r: ApiKey = read(result)?;
            format!("API key {:?} revoked at {}\n", r.name, time(r.revoked_at))
        }
        Command::Webhooks => render_webhooks(&read(result)?, width),
        Command::Reload => {
            let r: ReloadReport = read(result)?;
            let list = |v: &[String]| {
                if v.is_empty() {
                    "nothing".to_string()
                } else {
                    v.join(", ")
                }
            };
            format!(
                "applied: {}\nneeds a restart: {}\n",
                list(&r.applied),
                list(&r.needs_restart)
            )
        }
    })
}

fn render_api_keys(r: &ApiKeyList, width: usize) -> String {
    let rows = r
        .keys
        .iter()
        .map(|k| {
            vec![
                k.name.clone(),
                if k.can_write { "write" } else { "read" }.to_string(),
                minute(Some(k.created_at)),
                minute(k.last_used_at),
                minute(k.revoked_at),
            ]
        })
        .collect();
    let cols = [
        Col("name", Kind::Key),
        Col("rights", Kind::Key),
        Col("created", Kind::Key),
        Col("last used", Kind::Key),
        Col("revoked", Kind::Key),
    ];
    table(width, &cols, rows)
}

fn render_webhooks(r: &WebhookStatus, width: usize) -> String {
    if r.endpoints.is_empty() {
        return "no webhooks configured ([[api.webhooks]] in config.toml)\n".into();
    }
    let rows = r
        .endpoints
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.stats.pending.to_string(),
                e.stats.delivered.to_string(),
                e.stats.failed.to_string(),
                minute(e.stats.last_success_at),
                opt(&e.stats.last_error),
                e.url.clone(),
            ]
        })
        .collect();
    let cols = [
        Col("name", Kind::Key),
        Col("pending", Kind::Key),
        Col("delivered", Kind::Extra),
        Col("failed", Kind::Key),
        Col("last success", Kind::Key),
        Col("last error", Kind::Text),
        Col("url", Kind::Text),
    ];
    table(width, &cols, rows)
}

fn render_status(r: &Status, width: usize) -> String {
    let states = r
        .users_by_state
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let last = match &r.last_cycle {
        None => "none yet".to_string(),
        Some(c) => format!(
            "{} .. {}: {} users, {} ok, {} failed, {} reauth_required",
            time(Some(c.started_at)),
            time(Some(c.finished_at)),
            c.users,
            c.ok,
            c.failed,
            c.reauth_required
        ),
    };
    pairs(
        width,
        &[
        ("version", r.version.clone()),
        ("uptime", format!("{}s", r.uptime_s)),
        ("database", r.database.clone()),
        (
            "users",
            if states.is_empty() {
                "none".into()
            } else {
                states
            },
        ),
        (
            "reauth (24 h)",
            format!("{} became reauth_required", r.reauth_required_last_day),
        ),
        (
            "security",
            format!(
                "{} suspended by Google, {} flagged for a credential change; {} events in 24 h, {} pending",
                r.security.suspended_by_google,
                r.security.credential_change_required,
                r.security.events_last_day,
                r.security.pending_events
            ),
        ),
        ("syncs running", r.syncs_running.to_string()),
        ("syncs queued", r.syncs_queued.to_string()),
        ("last cycle", last),
        ("this cycle", cycle_progress(r.cycle.as_ref())),
        ("next cycle", time(r.next_cycle_at)),
        ("rate limit", rate_limit(&r.rate_limit)),
    ],
    )
}

/// The cycle starting users now: how far through its slots, and until when it spreads.
fn cycle_progress(c: Option<&CycleProgress>) -> String {
    let Some(c) = c else {
        return "none running".into();
    };
    let through = format!(
        "{}: {}% of slots due, {} users claimed here",
        time(Some(c.tick)),
        c.slots_due * 100 / c.slots.max(1),
        c.claimed
    );
    if c.spread_until > c.tick {
        format!("{through}; spread until {}", time(Some(c.spread_until)))
    } else {
        format!("{through}; not spread")
    }
}

/// "80/s of 100/s, …", and when instances share the project's budget, whose share that is.
fn rate_limit(r: &RateLimitStatus) -> String {
    let shared = if r.instances > 1 {
        format!(
            " (this instance's share of {}/s among {} instances)",
            r.budget_per_second, r.instances
        )
    } else {
        String::new()
    };
    format!(
        "{}/s of {}/s{shared}, {} waits ({} ms)",
        r.current_per_second, r.per_second, r.waits, r.waited_ms
    )
}

/// A page of users; when more remain, a last line says how to list them.
fn render_users(r: &UserList, state: Option<UserState>, width: usize) -> String {
    let rows = r
        .users
        .iter()
        .map(|u| {
            vec![
                u.sub.clone(),
                opt(&u.email),
                u.state.to_string(),
                minute(u.last_sync_at),
                u.files.to_string(),
                size(u.bytes),
                opt(&u.last_error),
                flags(u),
            ]
        })
        .collect();
    let cols = [
        Col("sub", Kind::Key),
        Col("email", Kind::Text),
        Col("state", Kind::State),
        Col("last sync", Kind::Key),
        Col("files", Kind::Extra),
        Col("size", Kind::Extra),
        Col("last error", Kind::Text),
        Col("flags", Kind::Text),
    ];
    let mut out = table(width, &cols, rows);
    if let (Some(last), true) = (r.users.last(), r.remaining > 0) {
        let state = state.map(|s| format!(" --state {s}")).unwrap_or_default();
        out.push_str(&format!(
            "... {} more: ctl users{state} --after {}\n",
            thousands(r.remaining),
            clean(&last.sub)
        ));
    }
    out
}

/// Cross-Account Protection's marks on a user: `suspended:REASON`, `credential-change`; `-`.
fn flags(u: &UserSummary) -> String {
    let mut out = Vec::new();
    if let Some(reason) = &u.suspended_by_google {
        out.push(format!("suspended:{reason}"));
    }
    if u.credential_change_required_at.is_some() {
        out.push("credential-change".to_string());
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join(",")
    }
}

fn render_security(s: &SecurityView, width: usize) -> String {
    let mut out = pairs(
        width,
        &[
            (
                "suspended by Google",
                s.suspended_by_google.as_ref().map_or_else(
                    || "no".into(),
                    |r| format!("yes ({r}): no call to Google until enabled"),
                ),
            ),
            (
                "credential change",
                s.credential_change_required_at.map_or_else(
                    || "no".into(),
                    |at| {
                        format!(
                            "required since {} (ctl acknowledge SUB clears)",
                            time(Some(at))
                        )
                    },
                ),
            ),
        ],
    );
    out.push_str("\nsecurity events:\n");
    let rows = s
        .events
        .iter()
        .map(|e| {
            let attribute = e
                .reason
                .as_ref()
                .map(|r| format!("reason={r}"))
                .or_else(|| e.state.as_ref().map(|st| format!("state={st}")))
                .unwrap_or_else(|| "-".into());
            vec![
                minute(Some(e.received_at)),
                e.kind.to_string(),
                attribute,
                e.outcome.to_string(),
                opt(&e.detail),
            ]
        })
        .collect();
    let cols = [
        Col("received", Kind::Key),
        Col("event", Kind::Text),
        Col("attribute", Kind::Text),
        Col("outcome", Kind::Key),
        Col("detail", Kind::Text),
    ];
    out.push_str(&table(width, &cols, rows));
    out
}

fn render_user(r: &UserDetail, width: usize) -> String {
    let u = &r.user;
    let mut out = pairs(
        width,
        &[
            ("sub", u.profile.sub.clone()),
            ("email", opt(&u.profile.email)),
            ("name", opt(&u.profile.name)),
            ("state", u.state.to_string()),
            ("last error", opt(&u.last_error)),
            ("over quota", opt(&u.over_quota)),
            ("created", time(Some(u.created_at))),
            ("last sync", time(r.sync.last_sync_at)),
            ("failures", r.sync.failures.to_string()),
            (
                "idle syncs",
                format!("{} since the last recorded one", r.sync.idle_syncs),
            ),
            ("syncing now", r.sync.syncing_now.to_string()),
            ("files", format!("{} ({} bytes)", r.files, r.bytes)),
            (
                "scopes",
                opt(&r.credentials.as_ref().map(|c| c.scopes.clone())),
            ),
        ],
    );
    out.push_str("\nrecent syncs:\n");
    let rows = r
        .recent_syncs
        .iter()
        .map(|s| {
            vec![
                minute(Some(s.started_at)),
                s.kind.to_string(),
                s.outcome.to_string(),
                format!("+{} ~{} -{}", s.added, s.updated, s.removed),
                s.api_calls.to_string(),
                opt(&s.error),
            ]
        })
        .collect();
    let cols = [
        Col("started", Kind::Key),
        Col("kind", Kind::Key),
        Col("outcome", Kind::State),
        Col("files", Kind::Extra),
        Col("calls", Kind::Extra),
        Col("error", Kind::Text),
    ];
    out.push_str(&table(width, &cols, rows));
    out.push('\n');
    out.push_str(&render_security(&r.security, width));
    out
}

fn render_files(r: &FileList, width: usize) -> String {
    let paths = crate::store::files::paths(&r.files);
    let mut rows: Vec<Vec<String>> = r
        .files
        .iter()
        .map(|f| {
            let size = match (f.metadata_only, f.mime_type.as_deref()) {
                (true, Some(crate::store::files::FOLDER_MIME)) => "folder".to_string(),
                (true, _) => "no content".to_string(),
                (false, _) => opt(&f.size),
            };
            vec![
                paths.get(&f.file_id).cloned().unwrap_or_default(),
                f.file_id.clone(),
                size,
                opt(&f.md5),
                f.modified_time
                    .as_deref()
                    .map_or_else(|| "-".into(), rfc3339_minute),
            ]
        })
        .collect();
    rows.sort();
    let cols = [
        Col("path", Kind::Path),
        Col("id", Kind::Key),
        Col("size", Kind::Key),
        Col("md5", Kind::Extra),
        Col("modified", Kind::Key),
    ];
    table(width, &cols, rows)
}

#[cfg(test)]
mod tests;
