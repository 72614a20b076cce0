//! `appdata-syncd ctl`: the admin's command line, a thin client of the admin socket. Prints a
//! table by default and the raw JSON result with `--json`; exits non-zero on any error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::admin::client::AdminClient;
use crate::admin::protocol::Command;

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
    User {
        sub: String,
    },
    /// The mirrored files of a user.
    Files {
        sub: String,
    },
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
    Pause {
        sub: String,
    },
    Resume {
        sub: String,
    },
    /// Queue a file to be written into the user's appDataFolder on the next sync.
    Push {
        sub: String,
        /// The file's name on Drive (created, or the file of that name updated).
        #[arg(long)]
        name: String,
        /// Local file with the content.
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        mime_type: Option<String>,
    },
    /// Revoke the user's grant at Google and delete tokens, mirror and rows.
    Forget {
        sub: String,
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Change the log filter at run time (e.g. "debug" or "appdata_syncd=trace,info").
    LogLevel {
        filter: String,
    },
    /// Re-read config.toml (same as SIGHUP).
    Reload,
}

pub fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let command = match args.command {
        CtlCommand::Status => Command::Status,
        CtlCommand::Users { state } => Command::Users { state },
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
            name,
            file,
            mime_type,
        } => {
            let content =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            Command::Push {
                sub,
                name,
                content_base64: base64::engine::general_purpose::STANDARD.encode(content),
                mime_type,
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
        CtlCommand::LogLevel { filter } => Command::LogLevel { filter },
        CtlCommand::Reload => Command::Reload,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let json = args.json;
    let response = runtime.block_on(async {
        let mut client = AdminClient::connect(&args.socket).await?;
        client
            .request(&command, |event| {
                if json {
                    println!("{event}");
                } else {
                    println!("{}", describe_event(event));
                }
            })
            .await
    })?;
    match (response.ok, response.result, response.error) {
        (Some(true), Some(result), _) => {
            if json {
                println!("{result}");
            } else {
                print!("{}", render(&command, &result));
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
            eprintln!("appdata-syncd ctl: {code}: {}", e.message);
            Ok(ExitCode::FAILURE)
        }
        _ => anyhow::bail!("malformed response from the daemon"),
    }
}

fn describe_event(e: &Value) -> String {
    let sub = e["sub"].as_str().unwrap_or("?");
    match e["phase"].as_str() {
        Some("started") => format!("{sub}: sync started"),
        _ => format!(
            "{sub}: sync finished: {} (+{} ~{} -{} files, {} uploaded){}",
            e["outcome"].as_str().unwrap_or("?"),
            e["added"],
            e["updated"],
            e["removed"],
            e["uploaded"],
            e["error"]
                .as_str()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn time(v: &Value) -> String {
    v.as_i64()
        .filter(|ms| *ms > 0)
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
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
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

fn render(command: &Command, r: &Value) -> String {
    match command {
        Command::Status => {
            let states = r["users_by_state"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let last = &r["last_cycle"];
            let last = if last.is_null() {
                "none yet".to_string()
            } else {
                format!(
                    "{} .. {}: {} users, {} ok, {} failed, {} reauth_required",
                    time(&last["started_at"]),
                    time(&last["finished_at"]),
                    last["users"],
                    last["ok"],
                    last["failed"],
                    last["reauth_required"]
                )
            };
            pairs(&[
                ("version", text(&r["version"])),
                ("uptime", format!("{}s", r["uptime_s"])),
                ("database", text(&r["database"])),
                (
                    "users",
                    if states.is_empty() {
                        "none".into()
                    } else {
                        states
                    },
                ),
                ("syncs running", text(&r["syncs_running"])),
                ("syncs queued", text(&r["syncs_queued"])),
                ("last cycle", last),
                ("next cycle", time(&r["next_cycle_at"])),
                (
                    "rate limit",
                    format!(
                        "{}/s, {} waits ({} ms)",
                        r["rate_limit"]["per_second"],
                        r["rate_limit"]["waits"],
                        r["rate_limit"]["waited_ms"]
                    ),
                ),
            ])
        }
        Command::Users { .. } => {
            let rows = r["users"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|u| {
                            vec![
                                text(&u["sub"]),
                                text(&u["email"]),
                                text(&u["state"]),
                                time(&u["last_sync_at"]),
                                text(&u["files"]),
                                text(&u["bytes"]),
                                text(&u["last_error"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(
                &[
                    "sub",
                    "email",
                    "state",
                    "last sync",
                    "files",
                    "bytes",
                    "last error",
                ],
                rows,
            )
        }
        Command::User { .. } => {
            let u = &r["user"];
            let mut out = pairs(&[
                ("sub", text(&u["sub"])),
                ("email", text(&u["email"])),
                ("name", text(&u["name"])),
                ("state", text(&u["state"])),
                ("last error", text(&u["last_error"])),
                ("created", time(&u["created_at"])),
                ("last sync", time(&r["sync"]["last_sync_at"])),
                ("failures", text(&r["sync"]["failures"])),
                ("syncing now", text(&r["sync"]["syncing_now"])),
                ("files", format!("{} ({} bytes)", r["files"], r["bytes"])),
                ("scopes", text(&r["credentials"]["scopes"])),
            ]);
            out.push_str("\nrecent syncs:\n");
            let rows = r["recent_syncs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            vec![
                                time(&s["started_at"]),
                                text(&s["kind"]),
                                text(&s["outcome"]),
                                format!("+{} ~{} -{}", s["added"], s["updated"], s["removed"]),
                                text(&s["api_calls"]),
                                text(&s["error"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push_str(&table(
                &["started", "kind", "outcome", "files", "calls", "error"],
                rows,
            ));
            out
        }
        Command::Files { .. } => {
            let rows = r["files"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|f| {
                            vec![
                                text(&f["file_id"]),
                                text(&f["name"]),
                                text(&f["size"]),
                                text(&f["md5"]),
                                text(&f["modified_time"]),
                                text(&f["local_path"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(&["id", "name", "size", "md5", "modified", "path"], rows)
        }
        Command::Resync { wait: true, .. } => {
            format!("done: {} synced, {} failed\n", r["synced"], r["failed"])
        }
        Command::Resync { .. } => format!(
            "queued {} user(s) for {}resync\n",
            r["queued"],
            if r["full"] == Value::Bool(true) {
                "full "
            } else {
                ""
            }
        ),
        Command::Pause { .. } | Command::Resume { .. } => {
            format!("{} is now {}\n", text(&r["user"]), text(&r["state"]))
        }
        Command::Push { .. } => format!(
            "push {} queued: {} bytes as {:?} for {} (uploaded on the next sync)\n",
            r["push"],
            r["bytes"],
            text(&r["name"]),
            text(&r["user"])
        ),
        Command::Forget { .. } => format!(
            "{} forgotten (grant revoked: {})\n",
            text(&r["user"]),
            r["revoked"]
        ),
        Command::LogLevel { .. } => format!("log filter is now {}\n", text(&r["filter"])),
        Command::Reload => {
            let list = |v: &Value| {
                v.as_array()
                    .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "nothing".into())
            };
            format!(
                "applied: {}\nneeds a restart: {}\n",
                list(&r["applied"]),
                list(&r["needs_restart"])
            )
        }
    }
}
