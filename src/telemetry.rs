//! Logging set-up: journald's native protocol when stderr is the journal, human-readable lines
//! on a terminal, JSON lines otherwise (files, pipes), with a reload handle so `ctl log-level`
//! and SIGHUP can change the filter at run time.
//!
//! Convention: every event about a user carries the field `user` (the sub); in the journal it
//! is `APPDATA_SYNCD_USER`. No event ever carries a token or an auth code; those live in
//! `secrecy` types that print `[REDACTED]`.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

/// Journal fields of an event's own fields are named `APPDATA_SYNCD_<FIELD>` (journald wants
/// upper case, and a prefix keeps ours apart from journald's trusted `_` fields).
pub const JOURNAL_FIELD_PREFIX: &str = "APPDATA_SYNCD";

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
    tracing_subscriber::registry()
        .with(filter)
        .with(output_layer(config.format)?)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    Ok(LogHandle { reload })
}

/// What the format layer sits on: the registry under the reloadable filter.
type Inner = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type BoxedLayer = Box<dyn Layer<Inner> + Send + Sync>;

fn output_layer(configured: LogFormat) -> anyhow::Result<BoxedLayer> {
    let stderr = std::io::stderr();
    let format = match configured {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journal,
        LogFormat::Auto if stderr.is_terminal() => LogFormat::Human,
        LogFormat::Auto => LogFormat::Json,
        chosen => chosen,
    };
    let layer = match format {
        LogFormat::Journal => match tracing_journald::layer() {
            Ok(journal) => journal
                .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.into()))
                .with_syslog_identifier("appdata-syncd".into())
                .boxed(),
            // stderr still reaches the journal, only without fields: better than not starting.
            Err(e) if configured == LogFormat::Auto => {
                eprintln!(
                    "appdata-syncd: cannot open the journal's socket ({e}); logging JSON lines to stderr"
                );
                json_layer()
            }
            Err(e) => {
                anyhow::bail!("[log] format = \"journal\": cannot open the journal's socket: {e}")
            }
        },
        LogFormat::Json => json_layer(),
        LogFormat::Human | LogFormat::Auto => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colors only for a person at a terminal, and not even then with NO_COLOR
            // (https://no-color.org: set and not empty).
            .with_ansi(stderr.is_terminal() && !no_color())
            .boxed(),
    };
    Ok(layer)
}

fn json_layer() -> BoxedLayer {
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::stderr)
        .boxed()
}

fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// systemd sets `JOURNAL_STREAM=<device>:<inode>` of the journal stream it connects stdout and
/// stderr to. Only when stderr is still that stream is the journal listening: a child whose
/// stderr was redirected inherits the variable but not the stream (systemd.exec(5)).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    stream.to_str() == Some(&format!("{}:{}", meta.dev(), meta.ino()))
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
