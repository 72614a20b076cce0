//! Running it for real: signals, reload, and the systemd notify protocol, on the real binary.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use fake_google::{Fault, Faults};

use crate::helpers::{free_port, sign_in_via, write_config, Daemon};

const NEVER: &str =
    "[sync]\nschedule = \"0 0 0 1 1 *\"\nmax_requests_per_second = 1000\nshutdown_grace = \"5s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_of_syncs_exits_0_within_grace_and_loses_nothing() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let mut daemon = Daemon::start(dir.path(), &google, NEVER).await;
    let subs: Vec<String> = (0..6).map(|i| format!("term{i}")).collect();
    for sub in &subs {
        sign_in_via(&google, &daemon.intake, sub).await;
        for f in 0..3 {
            google
                .emulator()
                .create_file(sub, &format!("f{f}"), format!("{sub}/{f}"), None)
                .unwrap();
        }
    }
    // Slow Drive: the syncs are surely running when the signal comes.
    google.emulator().set_faults(Faults {
        jwks: None,
        token: None,
        drive: Some(Fault {
            latency_ms: 300,
            ..Default::default()
        }),
    });
    assert!(daemon.ctl(&["resync", "--all"]).ok);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let s = daemon.terminate(Duration::from_secs(15));
        (s, daemon)
    })
    .await
    .unwrap();
    let (status, daemon) = status;
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        daemon.logs().contains("letting running syncs finish"),
        "{}",
        daemon.logs()
    );
    drop(daemon);

    // Restart: every acknowledged user is there, and every mirror converges.
    google.emulator().clear_faults();
    let port = free_port();
    let config = write_config(dir.path(), &google, &format!("127.0.0.1:{port}"), "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(NEVER);
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start_with_config(dir.path(), &config, port, &[]).await;
    let users = tokio::task::spawn_blocking({
        let socket = daemon.socket.clone();
        move || crate::helpers::ctl(&socket, &["resync", "--all", "--wait", "--json"])
    })
    .await
    .unwrap();
    assert!(users.ok, "{}{}", users.stdout, users.stderr);
    let listed = daemon.ctl(&["users", "--json"]).json();
    assert_eq!(listed["users"].as_array().unwrap().len(), subs.len());
    for sub in &subs {
        let files = daemon.ctl(&["files", sub, "--json"]).json();
        let mut local: Vec<String> = files["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["md5"].as_str().unwrap().to_string())
            .collect();
        let mut remote: Vec<String> = google
            .emulator()
            .list_files(sub)
            .unwrap()
            .into_iter()
            .map(|f| f.md5_checksum)
            .collect();
        local.sort();
        remote.sort();
        assert_eq!(local, remote, "mirror of {sub}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_schedule() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let daemon = Daemon::start(dir.path(), &google, NEVER).await;
    sign_in_via(&google, &daemon.intake, "hup").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        google.emulator().stats().drive_calls(),
        0,
        "no cycle on the yearly schedule"
    );
    let text = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(&daemon.config, text.replace("0 0 0 1 1 *", "* * * * * *")).unwrap();
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while google.emulator().stats().drive_calls() == 0 {
        assert!(
            Instant::now() < deadline,
            "the new schedule never ran a cycle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(daemon.logs().contains("configuration reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_then_stopping() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &google, &format!("127.0.0.1:{port}"), "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(NEVER);
    std::fs::write(&config, text).unwrap();
    let notify_env = notify_path.to_str().unwrap().to_string();
    let daemon =
        Daemon::start_with_config(dir.path(), &config, port, &[("NOTIFY_SOCKET", &notify_env)])
            .await;
    let messages = tokio::task::spawn_blocking(move || {
        let mut daemon = daemon;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.iter().any(|m: &String| m.contains("READY=1")) {
            let n = notify.recv(&mut buf).unwrap();
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let status = daemon.terminate(Duration::from_secs(15));
        assert!(status.success());
        while let Ok(n) = notify.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if seen.last().is_some_and(|m| m.contains("STOPPING=1")) {
                break;
            }
        }
        seen
    })
    .await
    .unwrap();
    let ready = messages.iter().position(|m| m.contains("READY=1")).unwrap();
    let stopping = messages
        .iter()
        .position(|m| m.contains("STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1 in {messages:?}"));
    assert!(ready < stopping);
    assert!(messages[ready].contains("STATUS="), "{messages:?}");
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_after_a_sync() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let metrics_port = free_port();
    let daemon = Daemon::start(
        dir.path(),
        &google,
        &format!("{NEVER}[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    )
    .await;
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    sign_in_via(&google, &daemon.intake, "m1").await;
    google
        .emulator()
        .put_file("m1", "a", "content".to_string(), None)
        .unwrap();
    let out = tokio::task::spawn_blocking({
        let socket = daemon.socket.clone();
        move || crate::helpers::ctl(&socket, &["resync", "m1", "--wait"])
    })
    .await
    .unwrap();
    assert!(out.ok, "{}", out.stderr);
    // The users gauge is refreshed every 10 s; counters move at once.
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert_eq!(
        metric(&text, "appdata_syncd_intake_requests_total{outcome=\"ok\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "appdata_syncd_syncs_total{outcome=\"ok\"}"),
        1.0,
        "{text}"
    );
    assert!(
        metric(&text, "appdata_syncd_sync_duration_seconds_count") >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "appdata_syncd_google_requests_total{endpoint=\"changes.startPageToken\",status=\"200\"}") >= 1.0, "{text}");
    assert!(
        metric(
            &text,
            "appdata_syncd_google_requests_total{endpoint=\"token\",status=\"200\"}"
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "appdata_syncd_bytes_downloaded_total"),
        7.0,
        "{text}"
    );
    assert!(
        text.contains("appdata_syncd_users{state=\"active\"} 1"),
        "{text}"
    );
    // A refresh shows up too.
    google.emulator().expire_access_tokens(Some("m1"));
    let out = tokio::task::spawn_blocking({
        let socket = daemon.socket.clone();
        move || crate::helpers::ctl(&socket, &["resync", "m1", "--wait"])
    })
    .await
    .unwrap();
    assert!(out.ok, "{}", out.stderr);
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert_eq!(
        metric(&text, "appdata_syncd_token_refreshes_total{outcome=\"ok\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "appdata_syncd_syncs_total{outcome=\"ok\"}"),
        2.0,
        "{text}"
    );
}

/// Gives `sub` a live lease held by instance `owner`, as a process that died would leave it.
async fn leased_by(app: &crate::helpers::TestApp, sub: &str, owner: &str) {
    let far = appdata_syncd::store::now_ms() + 3_600_000;
    sqlx::query("UPDATE users SET lease_owner = $1, lease_expires_at = $2 WHERE sub = $3")
        .bind(owner)
        .bind(far)
        .bind(sub)
        .execute(app.store.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO instances (id, version, started_at, last_seen_at) VALUES ($1, 'x', 0, 0)",
    )
    .bind(owner)
    .execute(app.store.pool())
    .await
    .unwrap();
}

async fn lease_owner(app: &crate::helpers::TestApp, sub: &str) -> Option<String> {
    sqlx::query_scalar("SELECT lease_owner FROM users WHERE sub = $1")
        .bind(sub)
        .fetch_one(app.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn leases_of_a_dead_process_on_this_host_are_taken_back_and_configured_ids_are_left_alone() {
    // Default ids (hostname-pid): a pid that cannot exist on this host is dead.
    let app = crate::helpers::spawn_app().await;
    app.sign_in("orphan").await;
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    leased_by(&app, "orphan", &format!("{host}-4194305")).await;
    app.scheduler.reclaim_dead_local_instances().await.unwrap();
    assert_eq!(lease_owner(&app, "orphan").await, None);
    app.stop().await;

    // Configured ids say nothing about pids: "worker-0" may be alive on another machine.
    let app =
        crate::helpers::spawn_app_with(|c| c.sync.instance_id = Some("worker-1".into())).await;
    app.sign_in("elsewhere").await;
    leased_by(&app, "elsewhere", "worker-0").await;
    app.scheduler.reclaim_dead_local_instances().await.unwrap();
    assert_eq!(
        lease_owner(&app, "elsewhere").await.as_deref(),
        Some("worker-0")
    );
    app.stop().await;
}
