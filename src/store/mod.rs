//! The only place with SQL. [`Store`] owns the pool (SQLite or PostgreSQL through sqlx's `Any`
//! driver, one set of queries with `$N` placeholders that both understand) and the migrations;
//! the submodules hold the queries, one per table, as functions over a connection so callers
//! can compose them inside one transaction.
//!
//! Writes go through [`Store::begin_write`]: on SQLite that is `BEGIN IMMEDIATE` behind an
//! in-process writer lock, so a busy database makes a writer wait (busy_timeout) instead of
//! failing half-way, and our own writers queue in memory rather than spinning on the file lock.

#[macro_use]
mod text_enum;

pub mod api_keys;
pub mod changes;
pub mod credentials;
pub mod files;
pub mod pushes;
pub mod schedule;
pub mod security_events;
pub mod syncs;
pub mod user_pages;
pub mod users;
pub mod webhooks;
pub mod writes;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Connection, Executor, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

pub type Conn = sqlx::AnyConnection;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a writer waits for another process's lock on the SQLite file before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Serialises this process's SQLite write transactions (SQLite has one writer anyway).
    /// `None` on PostgreSQL, which handles concurrent writers itself.
    writer: Option<Arc<Mutex<()>>>,
}

/// A write transaction; dropping it without [`WriteTx::commit`] rolls back.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _writer: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// Prunes what only grows (see the `prune` task): sync records older than `keep` beyond each
/// user's newest `keep_per_user`, settled writes older than `keep`, and instances not seen
/// for a day. One short transaction per batch; returns how many rows went.
pub async fn prune_history(
    store: &Store,
    keep: Duration,
    keep_per_user: u32,
) -> Result<u64, sqlx::Error> {
    const BATCH: i64 = 1000;
    let before = now_ms() - keep.as_millis() as i64;
    let mut total = 0;
    loop {
        let mut tx = store.begin_write().await?;
        let n = syncs::prune(tx.conn(), before, keep_per_user as i64, BATCH).await?
            + writes::prune(tx.conn(), before, BATCH).await?;
        tx.commit().await?;
        total += n;
        if n == 0 {
            break;
        }
    }
    let mut tx = store.begin_write().await?;
    total += schedule::prune_instances(tx.conn(), now_ms() - 86_400_000).await?;
    tx.commit().await?;
    if total > 0 {
        tracing::debug!(rows = total, "pruned history");
    }
    Ok(total)
}

/// Rows per multi-row statement ([`values_rows`]) at most. SQLite looks each `$N` parameter up
/// by name among those before it, at parse and at bind, so one statement's cost grows with
/// the square of its parameters: 4,000 parameters (a batch of 512 outcomes) spent about a
/// tenth of a 100,000-user cycle's CPU there; 64 rows keep it negligible.
pub(crate) const ROWS_PER_STATEMENT: usize = 64;

/// `($first, …), (…)`: `rows` rows of `columns` placeholders each, numbered from `first`, for
/// a multi-row VALUES (a batch in one statement instead of one statement per row).
pub(crate) fn values_rows(rows: usize, columns: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 6);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(first + r * columns + c).to_string());
        }
        out.push(')');
    }
    out
}

/// Milliseconds since the Unix epoch: the unit of every timestamp column.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Opens the pool (creating an SQLite file and its directory when missing) without migrating.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!("unsupported store url {url:?}: use sqlite://PATH or postgres://...");
        };
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)?,
            Backend::Postgres => url.to_string(),
        };
        let options: AnyConnectOptions = url
            .parse()
            .with_context(|| format!("invalid store url {}", redact_url(&url)))?;
        let max_connections = match (backend, max_connections) {
            (_, n) if n > 0 => n,
            (Backend::Sqlite, _) => 8,
            (Backend::Postgres, _) => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never block the writer. synchronous=FULL: a commit is on
                        // disk before we acknowledge it. busy_timeout: wait out other processes.
                        conn.execute(
                            format!(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {};",
                                SQLITE_BUSY_TIMEOUT.as_millis()
                            )
                            .as_str(),
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open database {}", redact_url(&url)))?;
        Ok(Store {
            pool,
            backend,
            writer: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
        })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .context("applying database migrations")
    }

    /// Gives the users from before migration 0012 their slot ([`schedule::slot_of`]), a
    /// thousand per transaction; at start-up, after [`Store::migrate`]. Returns how many.
    pub async fn place_unplaced_users(&self) -> anyhow::Result<u64> {
        const BATCH: i64 = 1000;
        let mut placed = 0;
        loop {
            let mut tx = self.begin_write().await?;
            let n = schedule::place_unplaced(tx.conn(), BATCH)
                .await
                .context("placing users in cycle slots")?;
            tx.commit().await?;
            placed += n;
            if n < BATCH as u64 {
                return Ok(placed);
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        conn.ping().await
    }

    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        let guard = match &self.writer {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx { tx, _writer: guard })
    }

    /// Closes the pool, waiting a few seconds at most for connections still in use: every
    /// commit is already durable, and a connection someone forgot to give back must not
    /// keep the process from exiting.
    pub async fn close(&self) {
        if tokio::time::timeout(Duration::from_secs(5), self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections still in use after 5 s; closing anyway");
        }
    }
}

/// `sqlite://path` → `sqlite://path?mode=rwc`, with the parent directory created.
fn prepare_sqlite_url(url: &str) -> anyhow::Result<String> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = rest.split('?').next().unwrap_or(rest);
    if path != ":memory:" && !path.is_empty() {
        if let Some(dir) = std::path::Path::new(path).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("cannot create database directory {}", dir.display())
                })?;
            }
        }
    }
    Ok(if rest.contains("mode=") {
        url.to_string()
    } else if rest.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}

/// `url` with its password hidden, wherever the password is: after the user name
/// (`postgres://u:PASSWORD@h/db`) or in the query (`?password=...`, `sslpassword=...`). A URL
/// that does not parse is shown only when it cannot hold a password.
pub fn redact_url(url: &str) -> String {
    const SECRET_PARAMS: [&str; 2] = ["password", "sslpassword"];
    let is_secret = |k: &str| SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s));
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            if u.query_pairs().any(|(k, _)| is_secret(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if is_secret(&k) {
                            "redacted".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) if !url.contains('@') && !url.to_ascii_lowercase().contains("password") => {
            url.to_string()
        }
        Err(_) => "[a URL that does not parse; not shown, it may hold a password]".into(),
    }
}

/// A database URL as configured. It may hold a password, so Debug and Display show it
/// redacted ([`redact_url`]); [`DatabaseUrl::expose`] is for connecting only.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: String) -> Self {
        Self(url)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres:") || self.0.starts_with("postgresql:")
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// A boolean column: 0/1 in our tables (SQLite has no boolean type), a real boolean where
/// PostgreSQL computes one (`EXISTS`). Decodes from either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Flag(pub bool);

impl sqlx::Type<Any> for Flag {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <i64 as sqlx::Type<Any>>::type_info()
    }

    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <i64 as sqlx::Type<Any>>::compatible(ty) || <bool as sqlx::Type<Any>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Any> for Flag {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        match <i64 as sqlx::Decode<Any>>::decode(value.clone()) {
            Ok(n) => Ok(Flag(n != 0)),
            Err(_) => <bool as sqlx::Decode<Any>>::decode(value).map(Flag),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_after_the_user_and_in_the_query() {
        for url in [
            "postgres://app:hunter2@db.example.com/x?sslmode=verify-full",
            "postgres://app@db.example.com/x?password=hunter2&sslmode=verify-full",
            "postgres:///x?host=/run/pg&PASSWORD=hunter2",
            "postgres://app@h/x?sslpassword=hunter2",
            "postgres://app:hunter2@[broken",
            "not a url, password=hunter2",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("hunter2"), "{url} -> {shown}");
            let wrapped = DatabaseUrl::new(url.into());
            assert!(!format!("{wrapped} {wrapped:?}").contains("hunter2"));
        }
        assert_eq!(
            redact_url("postgres://app@h/x?sslmode=verify-full"),
            "postgres://app@h/x?sslmode=verify-full"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/a.db"),
            "sqlite:///var/lib/a.db"
        );
    }
}
