//! appdata-syncd: gives an app's backend offline, server-side access to its users' Google data.
//!
//! Reading order, from the bottom layer up:
//! - [`config`]: the configuration tree (TOML + `APPDATA_SYNCD_SECTION__KEY` overrides).
//! - [`telemetry`], [`metrics`], [`notify`]: logging, Prometheus metrics, systemd's notify
//!   protocol; leaves that know nothing of the rest.
//! - [`crypto`]: AES-256-GCM sealing of tokens at rest, key ring.
//! - [`store`]: the database (SQLite or PostgreSQL): the only place with SQL.
//! - [`google`]: Google's OAuth, ID-token and Drive endpoints; knows no database.
//! - [`tokens`]: access tokens for sync (cache, single-flight refresh), grant revocation and
//!   key rotation.
//! - [`sync`]: one user's sync (full listing, changes feed, mirror writes, queued writes).
//! - [`scheduler`]: cron cycles, resyncs, concurrency, leases between instances.
//! - [`risc`]: Cross-Account Protection: Google's security events, stored and acted on.
//! - [`services`]: the one handle the front doors share; every admin operation has its home.
//! - [`intake`] and [`admin`]: the front doors (`POST /authcode`, `POST /risc`; the Unix admin
//!   socket).
//! - [`api`]: the data API for the operator's backend (reads, writes, change feed, webhooks).
//! - [`lifecycle`]: build, run, supervision, signals, shutdown.
//! - [`cli`]: the `appdata-syncd` command line, including `ctl` and `dev`.
//!
//! Data flows one way: front doors call services; services, the scheduler and sync call
//! tokens, google and store; nothing below calls up (checked by `tests/layers.rs`).

pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod google;
pub mod intake;
pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod risc;
pub mod scheduler;
pub mod services;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tokens;
