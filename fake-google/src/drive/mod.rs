//! Drive v3, appDataFolder space only: the per-user store and the pieces of Drive's request
//! language (`q`, `fields`, multipart uploads) and error bodies. HTTP handlers are in
//! `http::drive`.

pub(crate) mod error;
pub(crate) mod fields;
pub(crate) mod multipart;
pub(crate) mod query;
pub(crate) mod store;

pub use store::DriveFile;
