//! The state directory and the daemon's config.toml, written with
//! [`to_toml`](appdata_syncd::config::Config::to_toml) from the struct the daemon reads, built
//! on [`emulator_config`] like every other benchmark daemon's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use appdata_syncd::config::LogFormat;

use crate::daemon::emulator_config;
use crate::google::FakeGoogle;

/// The daemon's cron schedule: cycles come on their own, as in production.
const SCHEDULE: &str = "*/5 * * * * *";
/// What the daemon logs: warnings (scanned for secrets), one line per cycle (counted) and one
/// per sign-in (naming the user, so a violation's trail can be followed there).
pub(super) const LOG_FILTER: &str =
    "warn,appdata_syncd::scheduler=info,appdata_syncd::lifecycle=info,appdata_syncd::intake=info";
/// `[intake] max_connections` and `first_byte_timeout` (the defaults, set here because the
/// attackers hold the daemon to them).
pub(super) const MAX_CONNECTIONS: usize = 1024;
pub(super) const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(5);

/// The state directory's parts, and the intake address the config fixes.
pub(super) struct Paths {
    pub(super) dir: PathBuf,
    pub(super) config: PathBuf,
    pub(super) db: PathBuf,
    pub(super) mirror: PathBuf,
    pub(super) socket: PathBuf,
    pub(super) log: PathBuf,
    /// The intake's address: fixed in the config, so it stays across restarts.
    pub(super) intake: SocketAddr,
}

/// Writes `dir/config.toml` (and the key it names) for the daemon child process, whose
/// database and mirror go to `disk` (see [`super::disk_full`]) when given, else to `dir`.
pub(super) fn write_config(
    dir: &Path,
    disk: Option<&Path>,
    google: &FakeGoogle,
) -> anyhow::Result<Paths> {
    let state = disk.unwrap_or(dir);
    // A free port now, kept across restarts as a real deployment's would be.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let paths = Paths {
        dir: dir.to_path_buf(),
        config: dir.join("config.toml"),
        db: state.join("appdata-syncd.db"),
        mirror: state.join("mirror"),
        socket: dir.join("admin.sock"),
        log: dir.join("daemon.log"),
        intake: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let mut config = emulator_config(dir, google)?;
    config.intake.listen = paths.intake;
    config.intake.max_connections = MAX_CONNECTIONS;
    config.intake.first_byte_timeout = FIRST_BYTE_TIMEOUT;
    config.store.state_dir = Some(state.to_path_buf());
    config.admin.socket = paths.socket.clone();
    config.sync.schedule = SCHEDULE.into();
    config.sync.concurrency = 64;
    config.sync.max_requests_per_second = 2000;
    config.sync.shutdown_grace = Duration::from_secs(10);
    config.sync.max_user_bytes = super::big_user::MAX_USER_BYTES;
    config.sync.min_free_disk_bytes = super::disk_full::MIN_FREE_DISK_BYTES;
    config.log.level = LOG_FILTER.into();
    config.log.format = LogFormat::Json;
    std::fs::write(&paths.config, config.to_toml()?)
        .with_context(|| format!("writing {}", paths.config.display()))?;
    Ok(paths)
}

pub(super) fn sqlite_url(db: &Path) -> String {
    format!("sqlite://{}", db.display())
}
