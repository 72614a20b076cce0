//! appdata-syncd: gives an app's backend offline, server-side access to its users' Google data.
//!
//! Reading order:
//! - [`config`]: the configuration tree (TOML + `APPDATA_SYNCD_SECTION__KEY` overrides).
//! - [`telemetry`]: logging set-up and the run-time filter handle.
//! - [`crypto`]: AES-256-GCM sealing of tokens at rest, key ring and rotation.
//! - [`store`]: the database (SQLite or PostgreSQL): the only place with SQL.
//! - [`google`]: Google's OAuth, ID-token and (later) Drive endpoints; knows no database.
//! - [`intake`]: `POST /authcode`: auth code in, verified user and sealed refresh token stored.
//! - [`scheduler`] and [`sync`]: cycles over users; one user's sync; [`tokens`] for access.
//! - [`admin`]: the Unix admin socket and the `ctl` client.
//! - [`metrics`]: Prometheus metrics.
//! - [`lifecycle`]: build, run, signals, reload, sd_notify, shutdown.
//! - [`cli`]: the `appdata-syncd` command line, including `dev` mode.
//!
//! Data flows one way: intake, scheduler and admin call sync/tokens, which call google and
//! store; nothing below calls up.

pub mod admin;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod google;
pub mod intake;
pub mod lifecycle;
pub mod metrics;
pub mod scheduler;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tokens;
