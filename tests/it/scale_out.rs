//! Several daemons on one PostgreSQL database share the users: each due user is synced by
//! exactly one instance per cycle, and when an instance dies its users are taken over once
//! their leases expire. Once with a shared mirror directory, once with the S3 backend.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fake_google::{FakeGoogle, Fault, Faults, MintCode, NewUser};
use md5::{Digest, Md5};

use appdata_syncd::config::Config;

use crate::helpers::{free_port, postgres_or_skip, test_config, test_dir, Daemon, NEVER};

const USERS: usize = 2000;
/// Trace level for 6,000 syncs would be gigabytes of log; debug still feeds the secrets check.
const QUIETER: &[(&str, &str)] = &[("RUST_LOG", "info,appdata_syncd=debug")];

/// Where the instances keep the mirror they share.
enum SharedMirror {
    Directory(PathBuf),
    S3(String),
}

/// The config of instance `i`: its own socket and state dir, the shared database and mirror.
fn instance_config(
    dir: &Path,
    google: &FakeGoogle,
    db: &str,
    i: usize,
    mirror: &SharedMirror,
    schedule: &str,
) -> Config {
    let own = dir.join(format!("instance{i}"));
    std::fs::create_dir_all(&own).unwrap();
    let mut c = test_config(dir, google);
    c.intake.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    c.store.url = Some(db.to_string());
    c.store.state_dir = Some(own.clone());
    c.store.max_connections = 6;
    c.admin.socket = own.join("admin.sock");
    c.sync.schedule = schedule.to_string();
    // The first schedule fires once (its next tick is a year away): start its users on the
    // tick. The second turns the spread on with its 30 s interval.
    c.sync.spread = false;
    c.sync.lease = Duration::from_secs(5);
    c.sync.concurrency = 16;
    c.sync.max_requests_per_second = 100_000;
    c.sync.instance_id = Some(format!("instance{i}"));
    match mirror {
        SharedMirror::Directory(d) => c.sync.data_dir = Some(d.clone()),
        SharedMirror::S3(url) => c.sync.mirror_url = Some(url.clone()),
    }
    c
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The last lines of a log, for a failure message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `daemon`'s `ctl status` counts `instances` sharing the rate and gives it
/// `per_second` of it.
async fn wait_for_share(daemon: &Daemon, instances: u32, per_second: u32) {
    let mut last = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        last = daemon.ctl(&["status", "--json"]).await.json()["rate_limit"].clone();
        if last["instances"] == instances && last["per_second"] == per_second {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no share of the rate among {instances} instances in 20 s: {last}");
}

/// Every user's rows match the emulator md5 by md5, and `content` (the mirror's bytes of one
/// file) does too.
async fn mirrors_match(
    pool: &sqlx::PgPool,
    google: &FakeGoogle,
    content: &impl AsyncFn(&str, &str) -> Option<Vec<u8>>,
) -> bool {
    for i in 0..USERS {
        let sub = format!("scale{i:04}");
        let remote = google.emulator().list_files(&sub).unwrap();
        let local: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT file_id, md5 FROM files WHERE sub = $1 ORDER BY file_id")
                .bind(&sub)
                .fetch_all(pool)
                .await
                .unwrap();
        if local.len() != remote.len() {
            return false;
        }
        for f in &remote {
            if !local
                .iter()
                .any(|(id, md5)| *id == f.id && md5.as_deref() == Some(&f.md5_checksum))
            {
                return false;
            }
            match content(&sub, &f.id).await {
                Some(bytes) if hex::encode(Md5::digest(&bytes)) == f.md5_checksum => {}
                _ => return false,
            }
        }
    }
    true
}

async fn three_instances_share_the_users(
    mirror: &SharedMirror,
    content: impl AsyncFn(&str, &str) -> Option<Vec<u8>>,
    dir: &crate::helpers::TestDir,
) {
    let Some(db) = postgres_or_skip(dir.path()) else {
        return;
    };
    let google = crate::helpers::google().await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();

    // Seed through one instance on a far schedule, then stop it.
    let config = instance_config(dir.path(), &google, &db, 0, mirror, NEVER);
    let mut seeder = Daemon::run(&dir.path().join("instance0"), config, QUIETER).await;
    let http = reqwest::Client::new();
    let intake = seeder.intake.clone();
    let signins = (0..USERS).map(|i| {
        let (google, http, intake) = (&google, &http, &intake);
        async move {
            let sub = format!("scale{i:04}");
            google
                .emulator()
                .create_user(NewUser {
                    sub: sub.clone(),
                    ..Default::default()
                })
                .unwrap();
            google
                .emulator()
                .put_file(&sub, "state.json", format!("{{\"v\": {i}}}"), None)
                .unwrap();
            let code = google
                .emulator()
                .mint_auth_code(MintCode {
                    sub,
                    ..Default::default()
                })
                .unwrap();
            let r = http
                .post(format!("{intake}/authcode"))
                .form(&[("authCode", code)])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    });
    futures::stream::iter(signins)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let status = seeder.terminate(Duration::from_secs(20)).await;
    assert!(status.success());
    drop(seeder);
    google.emulator().reset_stats();

    // Three instances whose schedule fires once, a few seconds after they are all up: one
    // cycle, however long it takes on a loaded machine, with no second tick behind it.
    let tick = chrono::Utc::now() + chrono::Duration::seconds(12);
    let once = tick.format("%S %M %H %d %m *").to_string();
    let mut daemons = Vec::new();
    for i in 0..3 {
        let config = instance_config(dir.path(), &google, &db, i, mirror, &once);
        daemons.push(Daemon::run(&dir.path().join(format!("instance{i}")), config, QUIETER).await);
    }
    assert!(
        chrono::Utc::now() < tick,
        "the daemons took more than 12 s to start; the test needs them up before the tick"
    );
    // They share the project's rate (100,000/s): each counts the three and takes a third.
    for d in &daemons {
        wait_for_share(d, 3, 33_333).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let synced = count(&pool, "SELECT COUNT(DISTINCT sub) FROM syncs").await;
        if synced >= USERS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first cycle synced {synced} users in 2 minutes; logs: {}",
            daemons
                .iter()
                .map(|d| tail(&d.logs()))
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failed: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT sub, error FROM syncs WHERE outcome <> 'ok' LIMIT 5")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(failed.is_empty(), "syncs failed: {failed:?}");
    // Every user exactly once in that cycle, by one of the instances.
    assert_eq!(
        count(&pool, "SELECT COUNT(*) FROM syncs").await,
        USERS as i64
    );
    // Change every user's file, slow Drive down, and kill one instance in the next cycle.
    for i in 0..USERS {
        let sub = format!("scale{i:04}");
        google
            .emulator()
            .put_file(
                &sub,
                "state.json",
                format!("{{\"v\": {i}, \"changed\": true}}"),
                None,
            )
            .unwrap();
    }
    google.emulator().set_faults(Faults {
        jwks: None,
        token: None,
        drive: Some(Fault {
            latency_ms: 20,
            ..Default::default()
        }),
    });
    // Cycles every 30 s from now on, each spread over 27 s: the instances claim in slot order.
    for daemon in &mut daemons {
        daemon.rewrite_config(|c| {
            c.sync.schedule = "*/30 * * * * *".into();
            c.sync.spread = true;
        });
        daemon.signal(libc::SIGHUP);
    }
    let before = count(&pool, "SELECT COUNT(*) FROM syncs").await;
    wait_for(
        "the second cycle to start",
        Duration::from_secs(45),
        async || count(&pool, "SELECT COUNT(*) FROM syncs").await > before + 50,
    )
    .await;
    daemons[1].kill().await;
    google.emulator().clear_faults();
    // The dead one's share goes to the others once it has missed its beats (6 s).
    for i in [0, 2] {
        wait_for_share(&daemons[i], 2, 50_000).await;
    }
    // Within lease expiry plus one cycle (and its run time), every mirror is current again.
    wait_for(
        "every mirror to converge",
        Duration::from_secs(5 + 30 + 45),
        async || mirrors_match(&pool, &google, &content).await,
    )
    .await;
}

use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_a_shared_directory() {
    let dir = test_dir();
    let mirror_dir = dir.path().join("shared-mirror");
    let mirror = SharedMirror::Directory(mirror_dir.clone());
    let read = async |sub: &str, id: &str| std::fs::read(mirror_dir.join(sub).join(id)).ok();
    three_instances_share_the_users(&mirror, read, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_with_the_s3_mirror() {
    let dir = test_dir();
    let Some(bucket) = crate::s3::bucket().await else {
        return;
    };
    let mirror = SharedMirror::S3(bucket.url("scale"));
    let read = async |sub: &str, id: &str| {
        bucket
            .get(&format!("scale/{sub}/{id}"))
            .await
            .map(|b| b.to_vec())
    };
    three_instances_share_the_users(&mirror, read, &dir).await;
}
