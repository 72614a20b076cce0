//! Faults from outside: Google failing in every way fake-google can fail, the JWKS down or
//! rotated, the mirror's disk full, the database locked by another process. After each, the
//! invariants: nobody parked wrongly, retries bounded, everything converges once it clears,
//! nothing half-written.

use std::time::{Duration, Instant};

use fake_google::{Fault, Faults, IdTokenAttack, MintCode};
use md5::Digest;

use crate::helpers::{on_postgres, spawn_app, spawn_app_with, test_dir, TestApp};

const USERS: usize = 6;

async fn users_with_two_files(app: &TestApp, prefix: &str) -> Vec<String> {
    let subs: Vec<String> = (0..USERS).map(|i| format!("{prefix}{i}")).collect();
    for sub in &subs {
        app.google_user(sub);
        for name in ["a", "b"] {
            app.google
                .emulator()
                .create_file(sub, name, format!("{sub}/{name}"), None)
                .unwrap();
        }
        app.sign_in(sub).await;
    }
    subs
}

/// Users whose sync failed wait out their backoff (a minute or more); let that time pass.
async fn backoff_passes(app: &TestApp) {
    sqlx::query("UPDATE users SET next_sync_at = 0")
        .execute(app.store.pool())
        .await
        .unwrap();
}

async fn states(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query_as("SELECT sub, state FROM users ORDER BY sub")
        .fetch_all(app.store.pool())
        .await
        .unwrap()
}

fn drive(fault: Fault) -> Faults {
    Faults {
        drive: Some(fault),
        ..Default::default()
    }
}

#[tokio::test]
async fn google_failing_30_percent_of_the_time_in_every_way_converges_with_bounded_calls() {
    // Google's own timeout, so that 2 s of latency is slow rather than failing.
    let app = spawn_app_with(|c| c.google.request_timeout = Duration::from_secs(10)).await;
    // Access tokens live a minute: every sync refreshes, so token endpoint faults matter too.
    app.google.emulator().set_access_token_lifetime(60);
    let subs = users_with_two_files(&app, "f").await;
    assert_eq!(app.cycle().await.ok, USERS as u64);
    let error = |status: u16| Fault {
        error_rate: 0.3,
        error_status: Some(status),
        ..Default::default()
    };
    let cases: Vec<(&str, Faults)> = vec![
        ("drive 500", drive(error(500))),
        ("drive 503", drive(error(503))),
        ("drive 429", drive(error(429))),
        ("drive 403 rate limit", drive(error(403))),
        (
            "truncated bodies and resets",
            drive(Fault {
                reset_rate: 0.3,
                ..Default::default()
            }),
        ),
        (
            "2 s latency",
            drive(Fault {
                latency_ms: 2000,
                ..Default::default()
            }),
        ),
        (
            "token endpoint 503",
            Faults {
                token: Some(error(503)),
                ..Default::default()
            },
        ),
        (
            "token endpoint 500 and resets",
            Faults {
                token: Some(Fault {
                    reset_rate: 0.15,
                    ..error(500)
                }),
                ..Default::default()
            },
        ),
    ];
    for (round, (what, faults)) in cases.into_iter().enumerate() {
        for sub in &subs {
            app.google
                .emulator()
                .put_file(sub, "a", format!("{what} {round}"), None)
                .unwrap();
        }
        app.google.emulator().set_faults(faults);
        app.google.emulator().reset_stats();
        backoff_passes(&app).await;
        let out = app.cycle().await;
        let stats = app.google.emulator().stats();
        // A changed user costs a token refresh, changes.list and one download; each call is
        // tried at most 6 times.
        let (drive_calls, token_calls) = (stats.drive_calls(), stats.count("token"));
        assert!(
            drive_calls <= (USERS * 2 * 8) as u64,
            "{what}: {drive_calls} Drive calls"
        );
        assert!(
            token_calls <= (USERS * 8) as u64,
            "{what}: {token_calls} token calls"
        );
        assert_eq!(out.users, USERS as u64, "{what}: {out:?}");
        for (sub, state) in states(&app).await {
            assert_eq!(state, "active", "{what}: {sub} parked");
        }
    }
    app.google.emulator().clear_faults();
    backoff_passes(&app).await;
    let out = app.cycle().await;
    assert_eq!(out.ok, USERS as u64, "{out:?}");
    for sub in &subs {
        app.assert_mirror_matches(sub).await;
    }
    let failing: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM users WHERE failures > 0 OR last_error IS NOT NULL",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(
        failing, 0,
        "a clean sync clears the failure count and error"
    );
    app.stop().await;
}

#[tokio::test]
async fn sign_ins_go_on_with_cached_keys_while_the_jwks_is_down() {
    let app = spawn_app().await;
    app.google.emulator().set_jwks_max_age(1);
    app.sign_in("k1").await;
    app.google.emulator().set_faults(Faults {
        jwks: Some(Fault {
            error_rate: 1.0,
            error_status: Some(503),
            ..Default::default()
        }),
        ..Default::default()
    });
    // The cached key set is stale now, and cannot be refreshed: it keeps working.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    app.sign_in("k2").await;
    // A rotation we cannot see while the JWKS is down is Google's failure, not the token's:
    // 502 like any Google outage (the app retries), and nothing stored.
    app.google.emulator().rotate_keys(Duration::from_secs(3600));
    let code = app.auth_code("k3");
    let (status, body) = app.post_code(&code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("upstream_error")),
        "{body}"
    );
    assert_eq!(app.user_state("k3").await, None);
    app.google.emulator().clear_faults();
    app.sign_in("k3").await;
    app.stop().await;
}

#[tokio::test]
async fn a_key_rotation_is_picked_up_at_once_and_forged_kids_cannot_flood_the_jwks() {
    let app = spawn_app().await;
    app.sign_in("r1").await;
    // The old key leaves the JWKS at once; tokens signed by the new one must verify even
    // though the key set was fetched a moment ago.
    app.google.emulator().rotate_keys(Duration::ZERO);
    app.sign_in("r2").await;
    app.google.emulator().reset_stats();
    let codes: Vec<String> = (0..40)
        .map(|i| {
            app.mint(MintCode {
                sub: format!("forged{i}"),
                id_token_attack: Some(IdTokenAttack::UnknownKid),
                ..Default::default()
            })
        })
        .collect();
    for code in &codes {
        let (status, body) = app.post_code(code).await;
        assert_eq!(status, 401, "{body}");
    }
    let fetches = app.google.emulator().stats().count("jwks");
    assert!(fetches <= 10, "{fetches} JWKS fetches for 40 forged kids");
    app.sign_in("r3").await;
    app.stop().await;
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: std::path::PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot mount a tmpfs for the disk-full test (it needs root, as CI has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(path)
    }

    fn grow(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_sync_clearly_and_it_completes_once_there_is_room() {
    let dir = test_dir();
    let disk = SmallDisk::mount(dir.path().join("small"), "1m");
    let mirror = disk.0.join("mirror");
    let app = spawn_app_with(|c| {
        c.sync.data_dir = Some(mirror.clone());
        // No floor: this is about a disk that fills up anyway (another process, a quota).
        c.sync.min_free_disk_bytes = 0;
    })
    .await;
    app.google_user("full");
    for i in 0..4 {
        let content: String = (0..400 * 1024)
            .map(|j| char::from(b'a' + ((i * 7 + j) % 26) as u8))
            .collect();
        app.google
            .emulator()
            .create_file("full", &format!("big{i}"), content, None)
            .unwrap();
    }
    app.sign_in("full").await;
    let out = app.cycle().await;
    assert_eq!(out.failed, 1, "{out:?}");
    let (state, error): (String, Option<String>) =
        sqlx::query_as("SELECT state, last_error FROM users WHERE sub = 'full'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(state, "active", "a full disk does not park the user");
    let error = error.unwrap_or_default();
    assert!(
        error.contains("No space left on device"),
        "the error says why: {error}"
    );
    // Whatever is in the mirror is whole and recorded; nothing half-written, no temp files.
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT file_id, md5 FROM files WHERE sub = 'full'")
            .fetch_all(app.store.pool())
            .await
            .unwrap();
    let mut on_disk = 0;
    if let Ok(entries) = std::fs::read_dir(mirror.join("full")) {
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            if name == "manifest.json" {
                continue;
            }
            let row = rows.iter().find(|(id, _)| *id == name);
            let bytes = std::fs::read(e.path()).unwrap();
            let md5 = crate::helpers::hex(&md5::Md5::digest(&bytes));
            assert_eq!(
                row.and_then(|(_, m)| m.clone()),
                Some(md5),
                "{name} on disk is whole and in the database"
            );
            on_disk += 1;
        }
    }
    assert_eq!(on_disk, rows.len(), "every row has its file");
    assert_eq!(std::fs::read_dir(mirror.join(".tmp")).unwrap().count(), 0);
    if !on_postgres() {
        let ok: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
        assert_eq!(ok, "ok");
    }
    disk.grow("8m");
    backoff_passes(&app).await;
    assert_eq!(app.cycle().await.ok, 1);
    app.assert_mirror_matches("full").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_for_10_s_makes_writers_wait_not_fail() {
    if on_postgres() {
        // PostgreSQL has no whole-database lock; its outage case is the next test.
        return;
    }
    let app = spawn_app().await;
    let subs = users_with_two_files(&app, "lock").await;
    app.cycle().await;
    for sub in &subs {
        app.google
            .emulator()
            .put_file(sub, "b", "changed while locked".to_string(), None)
            .unwrap();
    }
    let db = app.dir.path().join("appdata-syncd.db");
    assert!(db.exists(), "{db:?}");
    let mut locker = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(10)\n\
             c.execute('COMMIT')\n",
        )
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the other process that locks the database");
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(locker.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
    }
    let locked_at = Instant::now();
    let code = app.auth_code("late");
    let (signin, out) = tokio::join!(app.post_code(&code), app.cycle());
    assert!(
        locked_at.elapsed() >= Duration::from_secs(9),
        "the writes waited for the lock"
    );
    assert_eq!(signin.0, 200, "{}", signin.1);
    // The late sign-in may or may not have landed before the cycle claimed its users.
    assert!(out.ok >= USERS as u64 && out.failed == 0, "{out:?}");
    assert!(locker.wait().unwrap().success());
    assert_eq!(app.user_state("late").await.as_deref(), Some("active"));
    for sub in &subs {
        app.assert_mirror_matches(sub).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dropping_every_connection_is_survived() {
    if !on_postgres() {
        return;
    }
    let app = spawn_app().await;
    let subs = users_with_two_files(&app, "pgdown").await;
    app.cycle().await;
    // What a server restart looks like to us: every connection of this database cut.
    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", crate::helpers::postgres_server()))
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db)
    .execute(&admin)
    .await
    .unwrap();
    for sub in &subs {
        app.google
            .emulator()
            .put_file(sub, "b", "changed after the restart".to_string(), None)
            .unwrap();
    }
    app.sign_in("after-restart").await;
    backoff_passes(&app).await;
    app.cycle().await;
    backoff_passes(&app).await;
    let out = app.cycle().await;
    assert_eq!(out.failed, 0, "{out:?}");
    for sub in &subs {
        app.assert_mirror_matches(sub).await;
    }
    app.stop().await;
}
