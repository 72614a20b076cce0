//! Request counters behind `GET /_emulator/stats`.
//!
//! Counting happens on every request, so it is all relaxed atomics: a fixed array per endpoint
//! and per status code, and one such array inside each account for `by_user`. Building a
//! [`Stats`] snapshot walks all accounts, which is fine for a control call.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The Google API methods the emulator counts, named as in the stats JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Token,
    Revoke,
    Jwks,
    Discovery,
    Userinfo,
    FilesList,
    FilesGet,
    FilesDownload,
    FilesCreate,
    FilesUpdate,
    FilesDelete,
    ChangesStartPageToken,
    ChangesList,
}

const ALL: [Endpoint; 13] = [
    Endpoint::Token,
    Endpoint::Revoke,
    Endpoint::Jwks,
    Endpoint::Discovery,
    Endpoint::Userinfo,
    Endpoint::FilesList,
    Endpoint::FilesGet,
    Endpoint::FilesDownload,
    Endpoint::FilesCreate,
    Endpoint::FilesUpdate,
    Endpoint::FilesDelete,
    Endpoint::ChangesStartPageToken,
    Endpoint::ChangesList,
];

impl Endpoint {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::Revoke => "revoke",
            Endpoint::Jwks => "jwks",
            Endpoint::Discovery => "discovery",
            Endpoint::Userinfo => "userinfo",
            Endpoint::FilesList => "files.list",
            Endpoint::FilesGet => "files.get",
            Endpoint::FilesDownload => "files.download",
            Endpoint::FilesCreate => "files.create",
            Endpoint::FilesUpdate => "files.update",
            Endpoint::FilesDelete => "files.delete",
            Endpoint::ChangesStartPageToken => "changes.startPageToken",
            Endpoint::ChangesList => "changes.list",
        }
    }

    fn is_drive(self) -> bool {
        self.name().starts_with("files.") || self.name().starts_with("changes.")
    }
}

/// One counter per endpoint.
#[derive(Default)]
pub(crate) struct EndpointCounters([AtomicU64; ALL.len()]);

impl EndpointCounters {
    pub(crate) fn inc(&self, ep: Endpoint) {
        self.0[ep as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        ALL.iter()
            .filter_map(|&ep| {
                let n = self.0[ep as usize].load(Ordering::Relaxed);
                (n > 0).then(|| (ep.name().to_string(), n))
            })
            .collect()
    }

    pub(crate) fn reset(&self) {
        for c in &self.0 {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Global counters; per-user ones live in each account.
pub(crate) struct Counters {
    pub(crate) requests: EndpointCounters,
    by_status: Box<[AtomicU64]>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            requests: EndpointCounters::default(),
            by_status: (0..600).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Counters {
    pub(crate) fn status(&self, status: u16) {
        if let Some(c) = self.by_status.get(status as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot<'a>(
        &self,
        users: impl Iterator<Item = (&'a str, &'a EndpointCounters)>,
    ) -> Stats {
        let by_status = self
            .by_status
            .iter()
            .enumerate()
            .filter_map(|(code, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then(|| (code.to_string(), n))
            })
            .collect();
        let by_user = users
            .filter_map(|(sub, c)| {
                let m = c.snapshot();
                (!m.is_empty()).then(|| (sub.to_string(), m))
            })
            .collect();
        Stats {
            requests: self.requests.snapshot(),
            by_user,
            by_status,
        }
    }

    pub(crate) fn reset(&self) {
        self.requests.reset();
        for c in self.by_status.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// A snapshot of the counters, as served by `GET /_emulator/stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Endpoint name (`token`, `files.list`, …) → requests, fault-injected ones included.
    pub requests: BTreeMap<String, u64>,
    /// User sub → endpoint → requests attributable to that user (Drive and token calls).
    pub by_user: BTreeMap<String, BTreeMap<String, u64>>,
    /// HTTP status code (as a string) → responses.
    pub by_status: BTreeMap<String, u64>,
}

impl Stats {
    pub fn count(&self, endpoint: &str) -> u64 {
        self.requests.get(endpoint).copied().unwrap_or(0)
    }

    pub fn user_count(&self, sub: &str, endpoint: &str) -> u64 {
        self.by_user
            .get(sub)
            .and_then(|m| m.get(endpoint))
            .copied()
            .unwrap_or(0)
    }

    /// Sum of every `files.*` and `changes.*` request.
    pub fn drive_calls(&self) -> u64 {
        ALL.iter()
            .filter(|ep| ep.is_drive())
            .map(|ep| self.count(ep.name()))
            .sum()
    }

    pub fn status_count(&self, status: u16) -> u64 {
        self.by_status
            .get(&status.to_string())
            .copied()
            .unwrap_or(0)
    }
}
