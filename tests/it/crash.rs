//! SIGKILL in the middle of multi-user syncs, again and again: after a restart every mirror
//! equals Drive, file by file and md5 by md5, and no temporary file is left behind.

use std::path::Path;
use std::time::Duration;

use fake_google::{FakeGoogle, Fault, Faults};
use md5::{Digest, Md5};

use crate::helpers::{free_port, sign_in_via, test_config, Daemon};

async fn start(dir: &Path, google: &FakeGoogle) -> Daemon {
    Daemon::start(dir, google, |c| {
        c.sync.max_requests_per_second = 1000;
        c.sync.concurrency = 4;
    })
    .await
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
                .filter(|e| e.as_ref().unwrap().file_name() != "manifest.json")
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

/// After the crashes: faults cleared, a daemon started and every user resynced to the end;
/// the database passes its integrity check. Returns the daemon and a pool on its database.
async fn recover(dir: &Path, google: &FakeGoogle) -> (Daemon, sqlx::AnyPool) {
    google.emulator().clear_faults();
    let daemon = start(dir, google).await;
    let out = daemon.ctl(&["resync", "--all", "--wait"]).await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let pool = crate::helpers::db_pool(dir).await;
    if !crate::helpers::on_postgres() {
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(integrity, "ok");
    }
    (daemon, pool)
}

fn assert_no_temporary_files(dir: &Path) {
    let leftovers = std::fs::read_dir(dir.join("mirror/.tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "temporary files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_sync_loses_nothing_and_mirrors_converge() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
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
        jwks: None,
        token: None,
        drive: Some(Fault {
            latency_ms: 10,
            jitter_ms: 30,
            ..Default::default()
        }),
    });
    for (round, delay_ms) in [120u64, 260, 410, 90, 700, 330].into_iter().enumerate() {
        let mut daemon = start(dir.path(), &google).await;
        assert!(daemon.ctl(&["resync", "--all"]).await.ok);
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
        daemon.kill().await;
    }
    let (_daemon, pool) = recover(dir.path(), &google).await;
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
    assert_no_temporary_files(dir.path());
}

/// Posts a fresh code for `sub`; true when the daemon acknowledged the sign-in (200).
async fn try_sign_in(
    google: &fake_google::Emulator,
    http: &reqwest::Client,
    intake: &str,
    sub: &str,
) -> bool {
    let _ = google.create_user(fake_google::NewUser {
        sub: sub.to_string(),
        ..Default::default()
    });
    let Ok(code) = google.mint_auth_code(fake_google::MintCode {
        sub: sub.to_string(),
        ..Default::default()
    }) else {
        return false;
    };
    match http
        .post(format!("{intake}/authcode"))
        .form(&[("authCode", code)])
        .send()
        .await
    {
        Ok(r) => r.status() == 200,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_during_sign_ins_and_syncs_lose_nothing_acknowledged() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    google.emulator().set_faults(Faults {
        jwks: None,
        token: None,
        drive: Some(Fault {
            latency_ms: 5,
            jitter_ms: 25,
            ..Default::default()
        }),
    });
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("kill moments seeded with {seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        // xorshift: reproducible from the printed seed.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let acknowledged = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let mut config = test_config(dir.path(), &google);
    config.intake.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    config.sync.schedule = "* * * * * *".into();
    config.sync.max_requests_per_second = 1000;
    config.sync.concurrency = 8;
    for round in 0..20 {
        let mut daemon = Daemon::run(dir.path(), config.clone(), &[]).await;
        // Drive changes under the syncs; new users and returning users sign in meanwhile.
        for sub in acknowledged.lock().iter().take(5) {
            google
                .emulator()
                .put_file(sub, "state", format!("{sub} round {round}"), None)
                .unwrap();
        }
        let signins = {
            let (google, ack, intake) = (
                google.emulator().clone(),
                acknowledged.clone(),
                daemon.intake.clone(),
            );
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for i in 0..10 {
                    let sub = format!("kill{round:02}-{i}");
                    let _ = google.create_user(fake_google::NewUser {
                        sub: sub.clone(),
                        ..Default::default()
                    });
                    for f in 0..3 {
                        let _ = google.put_file(
                            &sub,
                            &format!("f{f}"),
                            format!("{sub}:{f}:").repeat(200),
                            None,
                        );
                    }
                    if try_sign_in(&google, &http, &intake, &sub).await {
                        ack.lock().push(sub);
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(100 + next() % 1400)).await;
        daemon.kill().await;
        signins.abort();
        let _ = signins.await;
    }
    let (_daemon, pool) = recover(dir.path(), &google).await;
    let acknowledged = acknowledged.lock().clone();
    assert!(
        acknowledged.len() >= 20,
        "only {} sign-ins got through",
        acknowledged.len()
    );
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT u.sub FROM users u JOIN credentials c ON c.sub = u.sub")
            .fetch_all(&pool)
            .await
            .unwrap();
    for sub in &acknowledged {
        assert!(stored.contains(sub), "acknowledged sign-in of {sub} lost");
    }
    for sub in &stored {
        assert_converged(dir.path(), &google, &pool, sub).await;
    }
    assert_no_temporary_files(dir.path());
}
