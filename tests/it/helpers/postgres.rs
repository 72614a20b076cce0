//! The PostgreSQL side of the suite: `APPDATA_SYNCD_TEST_BACKEND=postgres` runs every test on
//! the server at `APPDATA_SYNCD_TEST_POSTGRES`, one fresh database per test directory, dropped
//! with it; the database helpers work on either backend.

use std::path::Path;

/// Which database the suite runs on: `APPDATA_SYNCD_TEST_BACKEND=postgres` runs every test on
/// the PostgreSQL at `APPDATA_SYNCD_TEST_POSTGRES` (default postgres://postgres@127.0.0.1:5432),
/// one fresh database per test directory; otherwise SQLite files.
pub fn on_postgres() -> bool {
    std::env::var("APPDATA_SYNCD_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

pub fn postgres_server() -> String {
    std::env::var("APPDATA_SYNCD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A temporary directory that, on PostgreSQL runs, owns a database of the same name and drops
/// it with the directory.
pub struct TestDir {
    dir: tempfile::TempDir,
}

pub fn test_dir() -> TestDir {
    TestDir {
        dir: tempfile::tempdir().unwrap(),
    }
}

impl TestDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let created = self.dir.path().join(".pgdb");
        if let Ok(name) = std::fs::read_to_string(created) {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(pool) =
                        sqlx::PgPool::connect(&format!("{}/postgres", postgres_server())).await
                    {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&pool)
                                .await;
                    }
                });
            })
            .join();
        }
    }
}

fn pg_database_name(dir: &Path) -> Option<String> {
    let base: String = dir
        .file_name()?
        .to_string_lossy()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    Some(format!("appdata_test_{}", base.to_ascii_lowercase()))
}

/// The store URL for `dir`: `None` (SQLite in the state dir) or a fresh PostgreSQL database.
pub(super) fn test_database_url(dir: &Path) -> Option<String> {
    if !on_postgres() {
        return None;
    }
    Some(create_pg_database(dir))
}

/// For tests that need PostgreSQL whatever the suite's backend: the database URL, or `None`
/// (test skipped) when `APPDATA_SYNCD_SKIP_POSTGRES=1`. Panics, saying how to start one, when
/// no server answers.
pub fn postgres_or_skip(dir: &Path) -> Option<String> {
    if std::env::var("APPDATA_SYNCD_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: APPDATA_SYNCD_SKIP_POSTGRES=1");
        return None;
    }
    Some(create_pg_database(dir))
}

/// Creates (once) the database of `dir` and remembers it for [`TestDir`]'s drop.
fn create_pg_database(dir: &Path) -> String {
    let name = pg_database_name(dir).expect("a temporary directory has a name");
    let server = postgres_server();
    std::thread::spawn({
        let (server, name) = (server.clone(), name.clone());
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let pool = sqlx::PgPool::connect(&format!("{server}/postgres"))
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot reach PostgreSQL at {server} ({e}). Start one (e.g. \
                         pg_ctlcluster 15 main start, trust auth on 127.0.0.1:5432), or set \
                         APPDATA_SYNCD_SKIP_POSTGRES=1 to skip the PostgreSQL-only tests"
                        )
                    });
                let exists: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                        .bind(&name)
                        .fetch_optional(&pool)
                        .await
                        .unwrap();
                if exists.is_none() {
                    sqlx::query(&format!("CREATE DATABASE {name}"))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
            });
        }
    })
    .join()
    .unwrap();
    let _ = std::fs::write(dir.join(".pgdb"), &name);
    format!("{server}/{name}")
}

/// A pool on the database of `dir`, whichever backend the suite runs on.
pub async fn db_pool(dir: &Path) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = test_database_url(dir)
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("appdata-syncd.db").display()));
    sqlx::AnyPool::connect(&url).await.unwrap()
}

/// Everything the database holds, as bytes: the SQLite files, or every PostgreSQL row as text.
pub async fn raw_database_bytes(dir: &Path) -> Vec<u8> {
    if !on_postgres() {
        let mut bytes = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            if let Ok(b) = std::fs::read(format!(
                "{}{suffix}",
                dir.join("appdata-syncd.db").display()
            )) {
                bytes.extend(b);
            }
        }
        return bytes;
    }
    let pool = db_pool(dir).await;
    let mut bytes = Vec::new();
    for table in ["users", "credentials", "files", "syncs", "pushes"] {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT CAST(t AS TEXT) FROM {table} t"))
                .fetch_all(&pool)
                .await
                .unwrap();
        for r in rows {
            bytes.extend(r.into_bytes());
        }
        // bytea renders as hex in text form: also look at the raw bytes.
        if table == "credentials" {
            let blobs: Vec<Vec<u8>> = sqlx::query_scalar("SELECT refresh_token FROM credentials")
                .fetch_all(&pool)
                .await
                .unwrap();
            for b in blobs {
                bytes.extend(b);
            }
        }
    }
    bytes
}
