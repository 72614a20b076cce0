//! SIGKILL in the middle of multi-user syncs, again and again: after a restart every mirror
//! equals Drive, file by file and md5 by md5, and no temporary file is left behind.

use std::path::Path;
use std::time::Duration;

use fake_google::{FakeGoogle, Fault, Faults};
use md5::{Digest, Md5};

use crate::helpers::{free_port, sign_in_via, write_config, Daemon};

const CONFIG: &str =
    "[sync]\nschedule = \"0 0 0 1 1 *\"\nmax_requests_per_second = 1000\nconcurrency = 4\n";

async fn start(dir: &Path, google: &FakeGoogle) -> Daemon {
    let port = free_port();
    let config = write_config(dir, google, &format!("127.0.0.1:{port}"), "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(CONFIG);
    std::fs::write(&config, text).unwrap();
    Daemon::start_with_config(dir, &config, port, &[]).await
}

/// Compares the database rows and the bytes on disk of `sub` with the emulator.
async fn assert_converged(dir: &Path, google: &FakeGoogle, pool: &sqlx::AnyPool, sub: &str) {
    let mut remote: Vec<(String, String)> = google
        .emulator()
        .list_files(sub)
        .unwrap()
        .into_iter()
        .map(|f| (f.id, f.md5_checksum))
        .collect();
    remote.sort();
    let mut local: Vec<(String, String)> =
        sqlx::query_as("SELECT file_id, md5 FROM files WHERE sub = $1 ORDER BY file_id")
            .bind(sub)
            .fetch_all(pool)
            .await
            .unwrap();
    local.sort();
    assert_eq!(local, remote, "database rows of {sub}");
    let mut on_disk: Vec<(String, String)> = std::fs::read_dir(dir.join("mirror").join(sub))
        .map(|entries| {
            entries
                .map(|e| {
                    let e = e.unwrap();
                    let bytes = std::fs::read(e.path()).unwrap();
                    (
                        e.file_name().into_string().unwrap(),
                        hex::encode(Md5::digest(&bytes)),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    on_disk.sort();
    assert_eq!(on_disk, remote, "files on disk of {sub}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_sync_loses_nothing_and_mirrors_converge() {
    let dir = crate::helpers::test_dir();
    let google = FakeGoogle::start().await.unwrap();
    let subs: Vec<String> = (0..8).map(|i| format!("crash{i}")).collect();
    {
        let daemon = start(dir.path(), &google).await;
        for sub in &subs {
            sign_in_via(&google, &daemon.intake, sub).await;
            for f in 0..10 {
                let content = format!("{sub}:{f}:").repeat(500 + f * 37);
                google
                    .emulator()
                    .create_file(sub, &format!("file{f}"), content, None)
                    .unwrap();
            }
        }
    }
    google.emulator().set_faults(Faults {
        token: None,
        drive: Some(Fault {
            latency_ms: 10,
            jitter_ms: 30,
            ..Default::default()
        }),
    });
    for (round, delay_ms) in [120u64, 260, 410, 90, 700, 330].into_iter().enumerate() {
        let mut daemon = start(dir.path(), &google).await;
        let socket = daemon.socket.clone();
        tokio::task::spawn_blocking(move || crate::helpers::ctl(&socket, &["resync", "--all"]))
            .await
            .unwrap();
        // Drive keeps changing while we sync and crash.
        let sub = &subs[round % subs.len()];
        let files = google.emulator().list_files(sub).unwrap();
        google
            .emulator()
            .update_file(sub, &files[0].id, format!("round {round}"))
            .unwrap();
        google
            .emulator()
            .delete_file_by_id(sub, &files[1].id)
            .unwrap();
        google
            .emulator()
            .create_file(sub, &format!("new{round}"), "n".repeat(3000), None)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        daemon.signal(libc::SIGKILL);
        daemon.kill();
    }
    google.emulator().clear_faults();
    let daemon = start(dir.path(), &google).await;
    let socket = daemon.socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        crate::helpers::ctl(&socket, &["resync", "--all", "--wait"])
    })
    .await
    .unwrap();
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let pool = crate::helpers::db_pool(dir.path()).await;
    if !crate::helpers::on_postgres() {
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(integrity, "ok");
    }
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        users,
        subs.len() as i64,
        "every acknowledged sign-in is there"
    );
    for sub in &subs {
        assert_converged(dir.path(), &google, &pool, sub).await;
    }
    let leftovers = std::fs::read_dir(dir.path().join("mirror/.tmp"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0, "temporary files left behind");
}
