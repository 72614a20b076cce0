//! Secrets on the wire and in what the daemon prints: PostgreSQL over verified TLS, the
//! database URL (and its password) kept out of the config and out of every output, plain
//! HTTP to Google refused; the encryption key's usage counted.

use std::process::Command;

use appdata_syncd::config::Config;
use appdata_syncd::store::Store;

use crate::helpers::{binary, test_config, write_config, write_private, Daemon};

fn check_config(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(path)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("PGSSLMODE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn config_in(dir: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> std::path::PathBuf {
    let google = crate::helpers::google().await;
    let mut config = test_config(dir, &google);
    tweak(&mut config);
    write_config(dir, &config)
}

#[tokio::test]
async fn postgres_over_tls_is_encrypted_and_verify_full_checks_the_server() {
    let dir = crate::helpers::test_dir();
    let Some(url) = crate::helpers::postgres_or_skip(dir.path()) else {
        return;
    };
    // The test server (ssl = on, a self-signed certificate) on loopback.
    let store = Store::connect(&format!("{url}?sslmode=require"), 1)
        .await
        .expect("TLS to PostgreSQL (sqlx built with rustls)");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(ssl, "the connection is not encrypted");
    store.close().await;
    // verify-full refuses a certificate that no trusted CA issued for this name.
    let err = Store::connect(&format!("{url}?sslmode=verify-full"), 1)
        .await
        .err()
        .expect("a self-signed certificate passed verify-full");
    let text = format!("{err:#}").to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("tls"),
        "{text}"
    );
}

#[tokio::test]
async fn a_remote_postgres_needs_verify_full_and_its_password_is_never_shown() {
    let dir = crate::helpers::test_dir();
    let remote = "postgres://app:hunter2@db.example.com:5432/appdata";
    let path = config_in(dir.path(), |c| c.store.url = Some(remote.into())).await;
    let (ok, text) = check_config(&path);
    assert!(!ok, "{text}");
    assert!(text.contains("sslmode=verify-full"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    let path = config_in(dir.path(), |c| {
        c.store.url = Some(format!("{remote}?sslmode=verify-full&sslpassword=hunter3"))
    })
    .await;
    let (ok, text) = check_config(&path);
    assert!(ok, "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("hunter3"),
        "{text}"
    );
    assert!(text.contains("db.example.com"), "{text}");

    // Explicitly trusted network: accepted, still redacted.
    let path = config_in(dir.path(), |c| {
        c.store.url = Some(format!("{remote}?password=hunter3"));
        c.store.allow_unverified_tls = true;
    })
    .await;
    let (ok, text) = check_config(&path);
    assert!(ok, "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("hunter3"),
        "{text}"
    );
}

#[tokio::test]
async fn the_database_url_can_live_in_a_private_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = crate::helpers::test_dir();
    let db = dir.path().join("from-url-file.db");
    let url_file = dir.path().join("database-url");
    write_private(&url_file, format!("sqlite://{}\n", db.display()).as_bytes());
    let path = config_in(dir.path(), |c| {
        c.store.url = None;
        c.store.url_file = Some(url_file.clone());
    })
    .await;
    let (ok, text) = check_config(&path);
    assert!(ok, "{text}");
    assert!(text.contains("from-url-file.db"), "{text}");
    // The daemon uses it.
    let out = Command::new(binary())
        .args(["migrate", "--config"])
        .arg(&path)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(db.exists());
    std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (ok, text) = check_config(&path);
    assert!(!ok && text.contains("chmod 600"), "{text}");
}

#[tokio::test]
async fn plain_http_to_google_is_refused_except_to_loopback() {
    let dir = crate::helpers::test_dir();
    type Set = fn(&mut Config, String);
    let keys: [(&str, Set); 5] = [
        ("token_uri", |c, v| c.google.token_uri = Some(v)),
        ("drive_api_base", |c, v| c.google.drive_api_base = v),
        ("jwks_uri", |c, v| c.google.jwks_uri = v),
        ("revoke_uri", |c, v| c.google.revoke_uri = v),
        ("configuration_uri", |c, v| c.risc.configuration_uri = v),
    ];
    for (key, set) in keys {
        let path = config_in(dir.path(), |c| set(c, "http://www.googleapis.com/x".into())).await;
        let (ok, text) = check_config(&path);
        assert!(!ok, "{key}: {text}");
        assert!(
            text.contains("plain http://") && text.contains(key),
            "{text}"
        );
    }
    // The test config itself points at fake-google over http://127.0.0.1: accepted.
    let path = config_in(dir.path(), |c| {
        c.google.drive_api_base = c.google.drive_api_base.replace("127.0.0.1", "localhost")
    })
    .await;
    let (ok, text) = check_config(&path);
    assert!(ok, "{text}");
}

#[tokio::test]
async fn encryptions_are_counted_per_key_and_warned_about_before_the_nonce_limit() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let mut daemon = Daemon::start(dir.path(), &google, |_| {}).await;
    crate::helpers::sign_in_via(&google, &daemon.intake, "k1").await;
    crate::helpers::sign_in_via(&google, &daemon.intake, "k2").await;
    assert!(daemon
        .terminate(std::time::Duration::from_secs(30))
        .await
        .success());
    let pool = crate::helpers::db_pool(dir.path()).await;
    let (key_id, count): (String, i64) =
        sqlx::query_as("SELECT key_id, encryptions FROM key_usage")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(count >= 2, "two sign-ins sealed {count} values");
    assert!(!daemon.logs().contains("rotate it"));

    // Near the limit: the next values sealed bring a warning, at the latest when it stops.
    let near = appdata_syncd::crypto::WARN_ENCRYPTIONS as i64 - 1;
    sqlx::query("UPDATE key_usage SET encryptions = $1 WHERE key_id = $2")
        .bind(near)
        .bind(&key_id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let mut again = Daemon::run(dir.path(), daemon.config.clone(), &[]).await;
    crate::helpers::sign_in_via(&google, &again.intake, "k3").await;
    assert!(again
        .terminate(std::time::Duration::from_secs(30))
        .await
        .success());
    assert!(again.logs().contains("rotate it"), "{}", again.logs());
}

#[tokio::test]
async fn the_daemon_cannot_be_dumped_or_traced_by_its_own_uid() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to run the daemon as another uid (CI runs as root)");
        return;
    }
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let mut config = test_config(dir.path(), &google);
    let port = crate::helpers::free_port();
    config.intake.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let config_path = write_config(dir.path(), &config);
    let log = dir.path().join("daemon.log");
    std::fs::File::create(&log).unwrap();
    for entry in walk(dir.path()) {
        std::os::unix::fs::lchown(&entry, Some(65534), Some(65534)).unwrap();
    }
    let mut child = tokio::process::Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config_path)
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    crate::helpers::wait_ready(&format!("http://127.0.0.1:{port}/readyz")).await;
    // A dumpable process's /proc files belong to its uid; PR_SET_DUMPABLE=0 gives them to
    // root, so neither a core dump nor ptrace or /proc/PID/mem by uid 65534 gets its keys.
    use std::os::unix::fs::MetadataExt;
    let pid = child.id().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("Uid:\t65534"), "{status}");
    let owner = std::fs::metadata(format!("/proc/{pid}/mem")).unwrap().uid();
    let _ = child.kill().await;
    assert_eq!(owner, 0, "the daemon is dumpable");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
