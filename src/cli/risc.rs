//! `appdata-syncd risc ...`: registers this daemon's `POST /risc` with Google's Cross-Account
//! Protection and manages the event stream, through the RISC management API
//! ([`crate::google::risc_api`]) with the key of `[risc] service_account_file`.
//! <https://developers.google.com/identity/protocols/risc#register_receiver>

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::{Config, ResolvedConfig};
use crate::google::risc_api::{RiscApi, StreamStatus};

#[derive(Debug, Args)]
pub struct RiscArgs {
    /// Path of config.toml.
    #[arg(long, short, default_value = super::DEFAULT_CONFIG, env = "APPDATA_SYNCD_CONFIG", global = true)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: RiscCommand,
}

#[derive(Debug, Subcommand)]
pub enum RiscCommand {
    /// Register the receiver (this daemon's POST /risc, reachable by Google over HTTPS) for
    /// every event type the daemon acts on.
    Register {
        /// The receiver's public URL, e.g. https://sync.example.com/risc.
        #[arg(long)]
        url: String,
    },
    /// Ask Google to send a verification event; the daemon logs its state and counts it.
    Verify {
        /// The state the event carries (default: a timestamp).
        #[arg(long)]
        state: Option<String>,
    },
    /// Show the stream's configuration and whether it delivers.
    Status,
    /// Stop the stream: Google neither sends nor keeps events while it is disabled.
    Disable,
    /// Start the stream again.
    Enable,
}

pub fn run(args: RiscArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(Some(&args.config))?.resolve()?;
    let api = api(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match args.command {
            RiscCommand::Register { url } => {
                check_receiver_url(&url)?;
                let stream = api.update_stream(&url).await.context("stream:update")?;
                println!("registered {url}");
                println!("{}", serde_json::to_string_pretty(&stream)?);
                println!("next: `appdata-syncd risc verify` and look for the verification in the log");
            }
            RiscCommand::Verify { state } => {
                let state = state.unwrap_or_else(|| {
                    format!("appdata-syncd verification {}", chrono::Utc::now().to_rfc3339())
                });
                api.verify(&state).await.context("stream:verify")?;
                println!("verification requested with state {state:?}: the daemon logs it when it arrives");
            }
            RiscCommand::Status => {
                let stream = api.stream().await.context("stream")?;
                let status = api.status().await.context("stream/status")?;
                println!("status: {}", status_name(status));
                println!("{}", serde_json::to_string_pretty(&stream)?);
            }
            RiscCommand::Disable => set_status(&api, StreamStatus::Disabled).await?,
            RiscCommand::Enable => set_status(&api, StreamStatus::Enabled).await?,
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn api(config: &ResolvedConfig) -> anyhow::Result<RiscApi> {
    let key = config.risc_service_account.clone().context(
        "no service account key: set [risc] service_account_file (a JSON key of a service \
         account with the RISC Configuration Admin role)",
    )?;
    let http = crate::google::http_client(config.raw.google.request_timeout);
    Ok(RiscApi::new(http, &config.raw.risc.api_base, key))
}

async fn set_status(api: &RiscApi, status: StreamStatus) -> anyhow::Result<()> {
    api.set_status(status)
        .await
        .context("stream/status:update")?;
    println!("stream {}", status_name(status));
    Ok(())
}

fn status_name(s: StreamStatus) -> &'static str {
    match s {
        StreamStatus::Enabled => "enabled",
        StreamStatus::Disabled => "disabled",
    }
}

/// The receiver must be this daemon's `/risc`; Google itself refuses what is not HTTPS.
fn check_receiver_url(url: &str) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        anyhow::bail!("{url:?} must be an https:// URL of this daemon's POST /risc");
    }
    if !parsed.path().ends_with("/risc") {
        anyhow::bail!("{url:?} must end in /risc, where the daemon receives security events");
    }
    Ok(())
}
