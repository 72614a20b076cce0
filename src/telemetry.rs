//! Logging set-up: human-readable lines on a terminal, JSON lines otherwise (journald, files),
//! with a reload handle so `ctl log-level` and SIGHUP can change the filter at run time.
//!
//! Convention: every event about a user carries the field `user` (the sub). No event ever
//! carries a token or an auth code; those live in `secrecy` types that print `[REDACTED]`.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

/// Changes the active log filter.
#[derive(Clone)]
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
}

impl LogHandle {
    pub fn set_filter(&self, filter: &str) -> anyhow::Result<()> {
        let filter = EnvFilter::try_new(filter)
            .map_err(|e| anyhow::anyhow!("invalid log filter {filter:?}: {e}"))?;
        self.reload
            .reload(quiet_dependencies(filter))
            .map_err(|e| anyhow::anyhow!("cannot change the log filter: {e}"))
    }
}

/// Installs the global subscriber. RUST_LOG, when set, wins over `[log] level`.
pub fn init(config: &LogConfig) -> anyhow::Result<LogHandle> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.trim().is_empty() => {
            EnvFilter::try_new(&f).map_err(|e| anyhow::anyhow!("invalid RUST_LOG {f:?}: {e}"))?
        }
        _ => EnvFilter::try_new(&config.level)
            .map_err(|e| anyhow::anyhow!("invalid [log] level {:?}: {e}", config.level))?,
    };
    let (filter, reload) = reload::Layer::new(quiet_dependencies(filter));
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    Ok(LogHandle { reload })
}

/// tokio-cron-scheduler narrates its internals at info; keep that at warn unless asked for.
fn quiet_dependencies(filter: EnvFilter) -> EnvFilter {
    if filter.to_string().contains("tokio_cron_scheduler") {
        return filter;
    }
    match "tokio_cron_scheduler=warn".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}
