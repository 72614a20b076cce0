//! `fake-google --listen 127.0.0.1:PORT`: the emulator as a standalone server.

use anyhow::Context;
use clap::Parser;
use fake_google::{FakeGoogle, Options};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "In-memory emulator of Google OAuth 2.0 / OpenID / Drive v3 appDataFolder")]
struct Cli {
    /// Address to listen on (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    #[arg(long)]
    web_client_id: Option<String>,
    #[arg(long)]
    web_client_secret: Option<String>,
    #[arg(long)]
    android_client_id: Option<String>,
    /// Write Google's client_secret.json for the web client here once listening.
    #[arg(long)]
    write_client_secret: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let fg = FakeGoogle::start_with(Options {
        listen: cli.listen,
        web_client_id: cli.web_client_id,
        web_client_secret: cli.web_client_secret,
        android_client_id: cli.android_client_id,
    })
    .await
    .context("starting fake-google")?;
    if let Some(path) = &cli.write_client_secret {
        let json = serde_json::to_vec_pretty(&fg.client_secret_json())?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        // A client secret: readable by its owner only (appdata-syncd refuses it otherwise).
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    let c = fg.clients();
    tracing::info!(
        base_url = %fg.base_url(),
        web_client_id = %c.web_client_id,
        android_client_id = %c.android_client_id,
        "fake-google listening"
    );
    tokio::signal::ctrl_c().await?;
    fg.shutdown().await;
    Ok(())
}
