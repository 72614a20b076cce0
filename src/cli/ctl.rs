//! `appdata-syncd ctl`: the admin's command line, a thin client of the admin socket. Prints a
//! table by default and the raw JSON result with `--json`; exits non-zero on any error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::admin::client::AdminClient;
use crate::admin::protocol::{Command, Response};
use crate::scheduler::resync::ResyncReport;
use crate::scheduler::{SyncEvent, SyncPhase};
use crate::services::reports::{
    Acknowledged, ApiKeyCreated, ApiKeyList, FileList, Forgotten, LogFilter, ReloadReport,
    ResyncQueued, SecurityView, StateChanged, Status, UserDetail, UserList, WebhookStatus,
};
use crate::services::writes::WriteView;
use crate::store::api_keys::ApiKey;
use crate::store::users::UserState;
use crate::store::users::UserSummary;
use crate::store::writes::WriteState;

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The daemon's admin socket.
    #[arg(
        long,
        env = "APPDATA_SYNCD_ADMIN__SOCKET",
        default_value = "/run/appdata-syncd/admin.sock"
    )]
    pub socket: PathBuf,
    /// Print the result as JSON (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Version, uptime, users by state, syncs running, last and next cycle, rate limiter.
    Status,
    /// Users with state, last sync, last error, files and bytes.
    Users {
        /// Only users in this state (active, reauth_required, paused, forgotten).
        #[arg(long)]
        state: Option<String>,
    },
    /// One user in full, with the last 10 syncs.
    User { sub: String },
    /// The mirrored files of a user.
    Files { sub: String },
    /// Sync now, ahead of scheduled work.
    Resync {
        /// The user to sync (or --all).
        sub: Option<String>,
        #[arg(long, conflicts_with = "sub")]
        all: bool,
        /// Drop the page token and re-list everything.
        #[arg(long)]
        full: bool,
        /// Show progress until the sync ends; exit non-zero if it failed.
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

pub fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let upload = match &args.command {
        CtlCommand::Push { file, .. } => Some(file.clone()),
        _ => None,
    };
    let mut command = to_request(args.command)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let json = args.json;
    let response = runtime.block_on(async {
        let mut client = AdminClient::connect(&args.socket).await?;
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
                match (json, serde_json::from_value::<SyncEvent>(event.clone())) {
                    (false, Ok(e)) => println!("{}", describe_event(&e)),
                    _ => println!("{event}"),
                }
            })
            .await
    })?;
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
fn to_request(command: CtlCommand) -> anyhow::Result<Command> {
    Ok(match command {
        CtlCommand::Status => Command::Status,
        CtlCommand::Users { state } => match state.map(|s| s.parse::<UserState>()).transpose() {
            Ok(state) => Command::Users { state },
            // Said the way the daemon says its own refusals.
            Err(e) => anyhow::bail!("bad_request: {e}"),
        },
        CtlCommand::User { sub } => Command::User { sub },
        CtlCommand::Files { sub } => Command::Files { sub },
        CtlCommand::Resync {
            sub,
            all,
            full,
            wait,
        } => {
            if sub.is_none() && !all {
                anyhow::bail!("resync needs a SUB or --all");
            }
            Command::Resync {
                sub,
                all,
                full,
                wait,
            }
        }
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
                anyhow::bail!(
                    "forget revokes {sub}'s grant at Google and deletes everything stored for them; \
                     add --yes to confirm"
                );
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

/// Prints the result (or the error) and says how to exit.
fn print_response(command: &Command, response: Response, json: bool) -> anyhow::Result<ExitCode> {
    match (response.ok, response.result, response.error) {
        (Some(true), Some(result), _) => {
            if json {
                println!("{result}");
            } else {
                print!("{}", render(command, result)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        (_, _, Some(e)) => {
            let code = serde_json::to_value(e.code)?
                .as_str()
                .unwrap_or("error")
                .to_string();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"error": code, "message": e.message})
                );
            }
            eprintln!("appdata-syncd ctl: {code}: {}", clean(&e.message));
            Ok(ExitCode::FAILURE)
        }
        _ => anyhow::bail!("malformed response from the daemon"),
    }
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

/// Text from outside (file names, profiles, Google's error strings) with its control
/// characters escaped, so that nothing a user or Google chose can drive the terminal.
fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| row.iter().map(|cell| clean(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn pairs(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {}\n", clean(v)))
        .collect()
}

/// The result of `command`, read back into the type the daemon sent, as text. One arm per
/// command: a table, longer than a screen.
fn render(command: &Command, result: Value) -> anyhow::Result<String> {
    fn read<T: serde::de::DeserializeOwned>(v: Value) -> anyhow::Result<T> {
        serde_json::from_value(v).context("the daemon's answer does not have the expected shape")
    }
    Ok(match command {
        Command::Status => render_status(&read(result)?),
        Command::Users { .. } => render_users(&read(result)?),
        Command::User { .. } => render_user(&read(result)?),
        Command::Files { .. } => render_files(&read(result)?),
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
        Command::ApiKeyList => render_api_keys(&read(result)?),
        Command::ApiKeyRevoke { .. } => {
            let r: ApiKey = read(result)?;
            format!("API key {:?} revoked at {}\n", r.name, time(r.revoked_at))
        }
        Command::Webhooks => render_webhooks(&read(result)?),
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

fn render_api_keys(r: &ApiKeyList) -> String {
    let rows = r
        .keys
        .iter()
        .map(|k| {
            vec![
                k.name.clone(),
                if k.can_write { "write" } else { "read" }.to_string(),
                time(Some(k.created_at)),
                time(k.last_used_at),
                time(k.revoked_at),
            ]
        })
        .collect();
    table(&["name", "rights", "created", "last used", "revoked"], rows)
}

fn render_webhooks(r: &WebhookStatus) -> String {
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
                time(e.stats.last_success_at),
                opt(&e.stats.last_error),
                e.url.clone(),
            ]
        })
        .collect();
    table(
        &[
            "name",
            "pending",
            "delivered",
            "failed",
            "last success",
            "last error",
            "url",
        ],
        rows,
    )
}

fn render_status(r: &Status) -> String {
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
    pairs(&[
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
        ("next cycle", time(r.next_cycle_at)),
        (
            "rate limit",
            format!(
                "{}/s of {}/s, {} waits ({} ms)",
                r.rate_limit.current_per_second,
                r.rate_limit.per_second,
                r.rate_limit.waits,
                r.rate_limit.waited_ms
            ),
        ),
    ])
}

fn render_users(r: &UserList) -> String {
    let rows = r
        .users
        .iter()
        .map(|u| {
            vec![
                u.sub.clone(),
                opt(&u.email),
                u.state.to_string(),
                flags(u),
                time(u.last_sync_at),
                u.files.to_string(),
                u.bytes.to_string(),
                opt(&u.last_error),
            ]
        })
        .collect();
    table(
        &[
            "sub",
            "email",
            "state",
            "flags",
            "last sync",
            "files",
            "bytes",
            "last error",
        ],
        rows,
    )
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

fn render_security(s: &SecurityView) -> String {
    let mut out = pairs(&[
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
    ]);
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
                time(Some(e.received_at)),
                e.kind.to_string(),
                attribute,
                e.outcome.to_string(),
                opt(&e.detail),
            ]
        })
        .collect();
    out.push_str(&table(
        &["received", "event", "attribute", "outcome", "detail"],
        rows,
    ));
    out
}

fn render_user(r: &UserDetail) -> String {
    let u = &r.user;
    let mut out = pairs(&[
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
    ]);
    out.push_str("\nrecent syncs:\n");
    let rows = r
        .recent_syncs
        .iter()
        .map(|s| {
            vec![
                time(Some(s.started_at)),
                s.kind.to_string(),
                s.outcome.to_string(),
                format!("+{} ~{} -{}", s.added, s.updated, s.removed),
                s.api_calls.to_string(),
                opt(&s.error),
            ]
        })
        .collect();
    out.push_str(&table(
        &["started", "kind", "outcome", "files", "calls", "error"],
        rows,
    ));
    out.push('\n');
    out.push_str(&render_security(&r.security));
    out
}

fn render_files(r: &FileList) -> String {
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
                opt(&f.modified_time),
            ]
        })
        .collect();
    rows.sort();
    table(&["path", "id", "size", "md5", "modified"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_outside_are_escaped() {
        let hostile = "evil\u{1b}[2J\rname\u{7}\n";
        assert_eq!(clean(hostile), "evil\\u{1b}[2J\\rname\\u{7}\\n");
        let out = table(&["name"], vec![vec![hostile.to_string()]]);
        assert!(
            !out.trim_end().contains('\u{1b}') && !out.trim_end().contains('\r'),
            "{out:?}"
        );
        assert_eq!(clean("plain ünïcode"), "plain ünïcode");
    }
}
