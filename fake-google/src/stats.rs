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
    FilesGenerateIds,
    /// A `PUT` to a resumable upload session URI (a chunk, or a status query).
    FilesResumable,
    /// Cross-Account Protection: the configuration document, the SET keys, the management API.
    RiscConfiguration,
    RiscJwks,
    RiscStreamUpdate,
    RiscStreamGet,
    RiscStreamVerify,
    RiscStatusGet,
    RiscStatusUpdate,
}

const ALL: [Endpoint; 22] = [
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
    Endpoint::FilesGenerateIds,
    Endpoint::FilesResumable,
    Endpoint::RiscConfiguration,
    Endpoint::RiscJwks,
    Endpoint::RiscStreamUpdate,
    Endpoint::RiscStreamGet,
    Endpoint::RiscStreamVerify,
    Endpoint::RiscStatusGet,
    Endpoint::RiscStatusUpdate,
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
            Endpoint::FilesGenerateIds => "files.generateIds",
            Endpoint::FilesResumable => "files.resumable",
            Endpoint::RiscConfiguration => "risc.configuration",
            Endpoint::RiscJwks => "risc.jwks",
            Endpoint::RiscStreamUpdate => "risc.stream.update",
            Endpoint::RiscStreamGet => "risc.stream.get",
            Endpoint::RiscStreamVerify => "risc.stream.verify",
            Endpoint::RiscStatusGet => "risc.stream.status",
            Endpoint::RiscStatusUpdate => "risc.stream.status.update",
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

/// Things worth counting that are not requests to one endpoint, named as in `Stats::counters`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counter {
    /// Resumable sessions opened (`uploadType=resumable` initiations answered 200).
    ResumableSessions,
    /// `PUT`s to a session that carried bytes.
    ResumableChunks,
    /// `PUT`s to a session with `Content-Range: bytes */…` (status queries).
    ResumableQueries,
    /// Sessions whose last byte arrived (the file was created or updated).
    ResumableCompleted,
    /// Session `PUT`s whose connection was dropped half way by `reset_rate`.
    ResumableCut,
    /// Drive JSON responses sent gzip-encoded, and sent plain.
    JsonGzip,
    JsonPlain,
    /// Responses replaced by a `redirect_to` fault, and requests to `/_emulator/redirect-target`.
    RedirectsSent,
    RedirectTargetHits,
    /// Google-endpoint requests by HTTP version.
    Http1,
    Http2,
    /// `alt=media` answers that served a byte range (206).
    MediaRanged,
    /// Creates and updates carried out whose answer `lost_answer_rate` dropped.
    AnswersLost,
    /// SET deliveries: POSTs to the receiver, retries among them, SETs delivered (2xx),
    /// rejected (a final 4xx), dropped (every attempt failed), not sent (stream disabled, or
    /// the event type not requested).
    RiscDeliveryAttempts,
    RiscRetries,
    RiscDelivered,
    RiscRejected,
    RiscDropped,
    RiscNotSent,
}

const ALL_COUNTERS: [Counter; 19] = [
    Counter::ResumableSessions,
    Counter::ResumableChunks,
    Counter::ResumableQueries,
    Counter::ResumableCompleted,
    Counter::ResumableCut,
    Counter::JsonGzip,
    Counter::JsonPlain,
    Counter::RedirectsSent,
    Counter::RedirectTargetHits,
    Counter::Http1,
    Counter::Http2,
    Counter::MediaRanged,
    Counter::AnswersLost,
    Counter::RiscDeliveryAttempts,
    Counter::RiscRetries,
    Counter::RiscDelivered,
    Counter::RiscRejected,
    Counter::RiscDropped,
    Counter::RiscNotSent,
];

impl Counter {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Counter::ResumableSessions => "resumable.sessions",
            Counter::ResumableChunks => "resumable.chunks",
            Counter::ResumableQueries => "resumable.status_queries",
            Counter::ResumableCompleted => "resumable.completed",
            Counter::ResumableCut => "resumable.cut",
            Counter::JsonGzip => "json.gzip",
            Counter::JsonPlain => "json.plain",
            Counter::RedirectsSent => "redirects.sent",
            Counter::RedirectTargetHits => "redirect_target.hits",
            Counter::Http1 => "http.1",
            Counter::Http2 => "http.2",
            Counter::MediaRanged => "media.ranged",
            Counter::AnswersLost => "answers.lost",
            Counter::RiscDeliveryAttempts => "risc.delivery_attempts",
            Counter::RiscRetries => "risc.retries",
            Counter::RiscDelivered => "risc.delivered",
            Counter::RiscRejected => "risc.rejected",
            Counter::RiscDropped => "risc.dropped",
            Counter::RiscNotSent => "risc.not_sent",
        }
    }
}

/// Global counters; per-user ones live in each account.
pub(crate) struct Counters {
    pub(crate) requests: EndpointCounters,
    by_status: Box<[AtomicU64]>,
    others: [AtomicU64; ALL_COUNTERS.len()],
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            requests: EndpointCounters::default(),
            by_status: (0..600).map(|_| AtomicU64::new(0)).collect(),
            others: Default::default(),
        }
    }
}

impl Counters {
    pub(crate) fn inc(&self, c: Counter) {
        self.others[c as usize].fetch_add(1, Ordering::Relaxed);
    }

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
        let counters = ALL_COUNTERS
            .iter()
            .filter_map(|&c| {
                let n = self.others[c as usize].load(Ordering::Relaxed);
                (n > 0).then(|| (c.name().to_string(), n))
            })
            .collect();
        Stats {
            requests: self.requests.snapshot(),
            by_user,
            by_status,
            counters,
        }
    }

    pub(crate) fn reset(&self) {
        self.requests.reset();
        for c in self.by_status.iter().chain(self.others.iter()) {
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
    /// Other counters: `resumable.sessions`, `resumable.chunks`, `resumable.status_queries`,
    /// `resumable.completed`, `resumable.cut`, `json.gzip`, `json.plain`, `redirects.sent`,
    /// `redirect_target.hits`, `http.1`, `http.2`, `media.ranged`, `answers.lost`,
    /// `risc.delivery_attempts`, `risc.retries`, `risc.delivered`, `risc.rejected`,
    /// `risc.dropped`, `risc.not_sent`. Zero counters are left out.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
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

    /// One of [`Stats::counters`], 0 when absent.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    pub fn status_count(&self, status: u16) -> u64 {
        self.by_status
            .get(&status.to_string())
            .copied()
            .unwrap_or(0)
    }
}
