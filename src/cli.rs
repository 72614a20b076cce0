//! The `appdata-syncd` command line. `main.rs` only parses and calls [`run`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::lifecycle::{run_with_signals, App};
use crate::store::Store;
use crate::telemetry;

const DEFAULT_CONFIG: &str = "/etc/appdata-syncd/config.toml";

#[derive(Debug, Parser)]
#[command(
    name = "appdata-syncd",
    version,
    about = "Mirror your users' Google Drive appDataFolder, offline, server-side"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: intake, scheduler and admin socket.
    Serve(ConfigArg),
    /// Apply database migrations and exit.
    Migrate(ConfigArg),
    /// Validate the configuration and print what would be used (secrets redacted).
    CheckConfig(ConfigArg),
    /// Re-encrypt every stored token under the current key ([store] encryption_key_file).
    /// Put the old key in [store] previous_key_files first.
    RotateKey(ConfigArg),
    /// Run everything locally against an in-process fake-google, with demo users.
    #[cfg(feature = "dev")]
    Dev(DevArgs),
    /// Talk to a running daemon through its admin socket.
    Ctl(ctl::CtlArgs),
    /// Cross-Account Protection: register the receiver with Google, verify, status, disable.
    Risc(risc::RiscArgs),
    /// Print a shell completion script: `appdata-syncd completions bash > /etc/bash_completion.d/appdata-syncd`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (roff): appdata-syncd.1 and one per subcommand, into DIR.
    #[command(hide = true)]
    Man {
        /// Folder to write the pages into (created if missing).
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Path of config.toml.
    #[arg(long, short, default_value = DEFAULT_CONFIG, env = "APPDATA_SYNCD_CONFIG")]
    pub config: PathBuf,
}

#[cfg(feature = "dev")]
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Folder for the database, mirror and keys (default: a temporary folder, removed at exit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How many demo users to sign in.
    #[arg(long, default_value_t = 3)]
    pub users: usize,
    /// Files in each demo user's appDataFolder: settings.json, then file-2.json, ...
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub files: u32,
    /// Where the intake listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Where fake-google listens.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub google_listen: std::net::SocketAddr,
    /// Where the data API listens.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub api_listen: std::net::SocketAddr,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig(a) => check_config(&a.config),
        Command::Migrate(a) => runtime()?.block_on(async {
            let config = Config::load(Some(&a.config))?.resolve()?;
            let store = Store::connect(config.store_url.expose(), 1).await?;
            store.migrate().await?;
            println!("database {} is up to date", config.store_url);
            Ok(ExitCode::SUCCESS)
        }),
        Command::RotateKey(a) => runtime()?.block_on(rotate_key(&a.config)),
        Command::Serve(a) => serve(&a.config),
        #[cfg(feature = "dev")]
        Command::Dev(args) => runtime()?.block_on(crate::cli::dev::run(args)),
        Command::Ctl(args) => ctl::run(args),
        Command::Risc(args) => risc::run(args),
        Command::Completions { shell } => print_completions(shell),
        Command::Man { dir } => write_man_pages(&dir),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn check_config(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(Some(path))?.resolve()?;
    println!("{}: OK", path.display());
    for warning in config.warnings() {
        println!("  warning: {warning}");
    }
    for (key, value) in config.settings() {
        println!("  {key:<32} {value}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn rotate_key(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(Some(path))?.resolve()?;
    let store = Store::connect(config.store_url.expose(), 1).await?;
    store.migrate().await?;
    let done = crate::tokens::reseal_all(&store, &config.keyring).await?;
    println!(
        "re-encrypted {} of {} credentials under key {}",
        done.resealed,
        done.total,
        config.keyring.current_id()
    );
    Ok(ExitCode::SUCCESS)
}

/// `completions SHELL`, rendered from the clap definitions. Rendered into memory first:
/// clap_complete panics on a write error, such as a closed pipe.
fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "appdata-syncd", &mut script);
    if shell == clap_complete::Shell::Bash {
        script = fix_bash_subcommand_states(script);
    }
    std::io::stdout()
        .write_all(&script)
        .context("cannot write the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// clap_complete's bash script names a subcommand's state `appdata__syncd__subcmd__ctl` in its
/// dispatch loop but `appdata__subcmd__syncd__subcmd__ctl` in its case arms when the binary
/// name has a hyphen, so nothing completes past the first word
/// (https://github.com/clap-rs/clap/issues/6421, open). Spell the arms as the loop does.
fn fix_bash_subcommand_states(script: Vec<u8>) -> Vec<u8> {
    String::from_utf8(script)
        .map(|s| {
            s.replace("appdata__subcmd__syncd", "appdata__syncd")
                .into_bytes()
        })
        .unwrap_or_else(|e| e.into_bytes())
}

/// `man DIR`: the pages are rendered from the clap definitions, so they cannot drift from
/// `--help`. The Debian package ships them (see contrib/debian/build).
fn write_man_pages(dir: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = <Cli as clap::CommandFactory>::command();
    // Subcommand pages are named like git's: appdata-syncd-ctl.1.
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// `serve`: the daemon under systemd (or any supervisor).
fn serve(path: &Path) -> anyhow::Result<ExitCode> {
    // No core dumps and no ptrace by others of our uid: the process holds keys and tokens.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("appdata-syncd: cannot make the process non-dumpable: {e}");
    }
    let config = Config::load(Some(path))?.resolve()?;
    let log = telemetry::init(&config.raw.log)?;
    runtime()?.block_on(async {
        let app = App::build(config, Some(log)).await?;
        abort_a_task_if_asked(&app);
        run_with_signals(app).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Test builds only: `APPDATA_SYNCD_TEST_ABORT_TASK=NAME` aborts the essential task NAME half
/// a second after start, as if it had crashed, to prove that supervision stops the daemon.
#[cfg(debug_assertions)]
fn abort_a_task_if_asked(app: &App) {
    if let Ok(name) = std::env::var("APPDATA_SYNCD_TEST_ABORT_TASK") {
        let tasks = app.tasks();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            tracing::warn!(task = %name, "aborting a task, as APPDATA_SYNCD_TEST_ABORT_TASK asks");
            tasks.abort_for_test(&name);
        });
    }
}

#[cfg(not(debug_assertions))]
fn abort_a_task_if_asked(_: &App) {}

pub mod ctl;
#[cfg(feature = "dev")]
pub mod dev;
pub mod risc;
