//! Counts the daemon's SQL statements: sqlx reports each one it runs as a `tracing` event of
//! target `sqlx::query` (at DEBUG, its default `log_statements` level) whose `summary` field
//! starts with the statement's first words. This process's subscriber enables only those
//! events and counts them by their first keyword, so the count is client-side and the same
//! on SQLite and PostgreSQL. What sqlx runs outside that path is not counted: SQLite's
//! `BEGIN`/`COMMIT` of a transaction (run by its worker thread directly); PostgreSQL's go
//! through it and are counted (as `begin`, `commit`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// What `db_statements` counts, for the report.
pub const WHAT: &str = "the daemon's SQL statements as sqlx reports them (client-side, every \
     instance of this process): on SQLite without BEGIN/COMMIT, which sqlx runs outside its \
     statement log; on PostgreSQL with them";

/// The keywords counted apart; anything else is `other`.
const KINDS: [&str; 7] = [
    "select", "insert", "update", "delete", "begin", "commit", "other",
];

static COUNTS: [AtomicU64; KINDS.len()] = [const { AtomicU64::new(0) }; KINDS.len()];

/// Installs the counting subscriber as this process's global one (once; later calls and a
/// subscriber already set are ignored: then nothing is counted, and [`Counts::total`] says 0).
pub fn install() {
    let only_statements = Targets::new().with_target("sqlx::query", Level::DEBUG);
    let _ = tracing_subscriber::registry()
        .with(Counter.with_filter(only_statements))
        .try_init();
}

/// Statements counted so far, by first keyword.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts([u64; KINDS.len()]);

impl Counts {
    pub fn now() -> Counts {
        Counts(std::array::from_fn(|i| COUNTS[i].load(Ordering::Relaxed)))
    }

    /// What was counted since `earlier`.
    pub fn since(self, earlier: Counts) -> Counts {
        Counts(std::array::from_fn(|i| {
            self.0[i].saturating_sub(earlier.0[i])
        }))
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Non-zero counts by keyword.
    pub fn by_kind(&self) -> BTreeMap<&'static str, u64> {
        KINDS
            .iter()
            .zip(self.0)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (*k, n))
            .collect()
    }
}

struct Counter;

impl<S: Subscriber> Layer<S> for Counter {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut kind = FirstWord(None);
        event.record(&mut kind);
        let word = kind.0.unwrap_or("other");
        let i = KINDS
            .iter()
            .position(|k| *k == word)
            .unwrap_or(KINDS.len() - 1);
        COUNTS[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The `summary` field's first word, lowercased, if it is one of [`KINDS`].
struct FirstWord(Option<&'static str>);

impl FirstWord {
    fn take(&mut self, value: &str) {
        let first = value.split_whitespace().next().unwrap_or("");
        self.0 = KINDS
            .iter()
            .find(|k| first.eq_ignore_ascii_case(k))
            .copied();
    }
}

impl Visit for FirstWord {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "summary" {
            self.take(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" {
            self.take(format!("{value:?}").trim_matches('"'));
        }
    }
}
