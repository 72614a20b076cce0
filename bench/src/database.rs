//! Where the daemons under test keep their state: an SQLite file in the scenario's directory
//! (the default), or a fresh database on a PostgreSQL server (`--database`), created for one
//! scenario run and dropped at its end unless `--keep`.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context};
use sqlx::{Connection, PgConnection};

/// `--database`: which backend the daemons run on.
#[derive(Clone, Debug)]
pub enum Backend {
    /// `sqlite://STATE_DIR/appdata-syncd.db`, the daemon's default.
    Sqlite,
    /// A PostgreSQL server, each run on a [`ScratchDatabase`] of its own.
    Postgres(Server),
}

impl Backend {
    /// `None`: SQLite. Otherwise a `postgres://USER@HOST:PORT` server URL; a database named in
    /// it is only used to reach the server (each run creates its own).
    pub fn parse(url: Option<&str>) -> anyhow::Result<Backend> {
        match url {
            None => Ok(Backend::Sqlite),
            Some(url) => Server::parse(url).map(Backend::Postgres),
        }
    }
}

/// A PostgreSQL server URL split where a database name goes.
#[derive(Clone, Debug)]
pub struct Server {
    /// `postgres://USER@HOST:PORT`, no trailing slash.
    authority: String,
    /// `?sslmode=...` and the like, or empty; kept on every database URL.
    query: String,
}

impl Server {
    fn parse(url: &str) -> anyhow::Result<Server> {
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("--database {url:?} is not a URL: expected postgres://USER@HOST:PORT");
        };
        if !matches!(scheme, "postgres" | "postgresql") {
            bail!(
                "--database {url:?}: only PostgreSQL is supported (postgres://USER@HOST:PORT); \
                 leave --database out for SQLite"
            );
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((r, q)) => (r, format!("?{q}")),
            None => (rest, String::new()),
        };
        let host = before_query.split('/').next().unwrap_or_default();
        if host.is_empty() {
            bail!("--database {url:?} names no host: expected postgres://USER@HOST:PORT");
        }
        Ok(Server {
            authority: format!("{scheme}://{host}"),
            query,
        })
    }

    fn database_url(&self, name: &str) -> String {
        format!("{}/{name}{}", self.authority, self.query)
    }

    /// A connection to the server's `postgres` database, from which others are made and dropped.
    async fn maintenance(&self) -> anyhow::Result<PgConnection> {
        let url = self.database_url("postgres");
        PgConnection::connect(&url).await.with_context(|| {
            format!(
                "cannot reach PostgreSQL at {} (is it running? `pg_isready -h HOST`)",
                self.authority
            )
        })
    }
}

/// Names of databases this process created: `appdata_syncd_bench_PID_N`.
static CREATED: AtomicUsize = AtomicUsize::new(0);

/// A database made for one scenario run; [`ScratchDatabase::finish`] drops it.
pub struct ScratchDatabase {
    server: Server,
    name: String,
    /// `[store] url` of every daemon in the run.
    pub url: String,
}

impl ScratchDatabase {
    pub async fn create(server: &Server) -> anyhow::Result<ScratchDatabase> {
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        // Only digits go into the name, so it needs no quoting.
        let name = format!("appdata_syncd_bench_{}_{n}", std::process::id());
        let mut conn = server.maintenance().await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name} on {}", server.authority))?;
        let _ = conn.close().await;
        Ok(ScratchDatabase {
            url: server.database_url(&name),
            server: server.clone(),
            name,
        })
    }

    /// Drops the database (the daemons must have closed their pools), or with `keep` says
    /// where it is.
    pub async fn finish(self, keep: bool) -> anyhow::Result<()> {
        if keep {
            eprintln!("kept database {}", self.url);
            return Ok(());
        }
        let mut conn = self.server.maintenance().await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .with_context(|| format!("dropping database {}", self.name))?;
        let _ = conn.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_url_gets_the_database_name_before_its_query() {
        let s = Server::parse("postgres://postgres@127.0.0.1:5432").unwrap();
        assert_eq!(s.database_url("x"), "postgres://postgres@127.0.0.1:5432/x");
        let s = Server::parse("postgresql://u@h:1/test/?sslmode=disable").unwrap();
        assert_eq!(s.database_url("x"), "postgresql://u@h:1/x?sslmode=disable");
        assert!(Server::parse("sqlite:///tmp/a.db").is_err());
        assert!(Server::parse("127.0.0.1:5432").is_err());
        assert!(Server::parse("postgres:///db").is_err());
    }
}
