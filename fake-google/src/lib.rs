//! fake-google: an in-memory emulator of Google's OAuth 2.0 / OpenID endpoints and the Drive v3
//! appDataFolder API, for testing and benchmarking code that talks to them without a network.
//!
//! Start it with [`FakeGoogle::start`] (127.0.0.1, ephemeral port); point clients at
//! [`FakeGoogle::base_url`]; drive it with the [`Emulator`] handle or the `/_emulator/` HTTP API.
//!
//! Modules, in reading order:
//! - `server`: [`FakeGoogle`] and [`Options`]: binding, the HTTP/1.1 + h2c serve loop, shutdown.
//! - `emulator`: [`Emulator`], accounts, and the synchronous control API.
//! - `oauth`: codes, grants, refresh/access tokens, revocation.
//! - `keys`: RSA keys, JWKS, ID token minting and [`IdTokenAttack`] forgeries.
//! - `drive`: the per-user appDataFolder store (a tree of folders and files), `q`, `fields`,
//!   multipart, error bodies.
//! - `http`: the router, the front layer (stats, Drive auth, faults, gzip) and handlers;
//!   `http::download` (ranges) and `http::resumable` (upload sessions).
//! - `risc`: Cross-Account Protection: the RISC configuration document and SET keys, the stream
//!   management API, SET delivery with retries, forgeries ([`SetForgery`]).
//! - `faults`, `stats`: [`Faults`] and [`Stats`].
//! - `sharded`, `ids`: a sharded map; Google-shaped random ids.

mod drive;
mod emulator;
mod error;
mod faults;
mod http;
mod ids;
mod keys;
mod oauth;
mod risc;
mod server;
mod sharded;
mod stats;

pub use drive::DriveFile;
pub use emulator::{Clients, Emulator, NewUser, User};
pub use error::Error;
pub use faults::{Fault, Faults};
pub use keys::IdTokenAttack;
pub use oauth::{BulkUser, MintCode};
pub use risc::{
    hash_base64_sha512_sha512, Delivery, DeliveryOutcome, EmitEvent, Emitted, RiscEvent,
    RiscSettings, SetForgery, Stream, StreamStatus, SubjectFormat, DELIVERY_METHOD_PUSH,
    MANAGEMENT_AUDIENCE,
};
pub use server::{FakeGoogle, Options};
pub use stats::Stats;

/// The scope that grants access to the appDataFolder.
pub const SCOPE_DRIVE_APPDATA: &str = oauth::DRIVE_APPDATA;
