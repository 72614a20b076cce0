//! Running it for real: signals, reload, supervision and the systemd notify protocol, on the
//! real binary.

use std::time::{Duration, Instant};

use appdata_syncd::config::Config;
use fake_google::{Fault, Faults};

use crate::helpers::{eventually, free_port, sign_in_via, test_config, Daemon};

fn grace_5s(c: &mut Config) {
    c.sync.max_requests_per_second = 1000;
    c.sync.shutdown_grace = Duration::from_secs(5);
}

/// The JSON log line of `message`, if the daemon logged one.
fn log_line(logs: &str, message: &str) -> Option<serde_json::Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_of_syncs_exits_0_within_grace_and_loses_nothing() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let mut daemon = Daemon::start(dir.path(), &google, grace_5s).await;
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
    // Slow Drive: each sync takes a few calls of 300 ms, so the syncs are running when the
    // signal comes and can still finish within the 5 s grace period.
    google.emulator().set_faults(Faults {
        drive: Some(Fault {
            latency_ms: 300,
            ..Default::default()
        }),
        ..Default::default()
    });
    assert!(daemon.ctl(&["resync", "--all"]).await.ok);
    eventually("syncs to be running", Duration::from_secs(10), async || {
        let status = daemon.ctl(&["status", "--json"]).await;
        status.ok && status.json()["syncs_running"].as_u64() > Some(0)
    })
    .await;
    let signalled = appdata_syncd::store::now_ms();
    let started = Instant::now();
    let status = daemon.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    // Syncs were running when the signal came, and were let finish rather than cut.
    let logs = daemon.logs();
    let line = log_line(
        &logs,
        "shutting down: no new sign-ins or syncs; letting running syncs finish",
    )
    .unwrap_or_else(|| panic!("no shutdown line in {logs}"));
    assert!(line["running_syncs"].as_u64() > Some(0), "{line}");
    assert!(log_line(
        &logs,
        "grace period over: stopping running syncs at their next checkpoint"
    )
    .is_none());
    let pool = crate::helpers::db_pool(dir.path()).await;
    let (across, cancelled): (i64, i64) = sqlx::query_as(
        "SELECT CAST(SUM(CASE WHEN started_at < $1 AND finished_at > $1 AND outcome = 'ok' THEN 1 ELSE 0 END) AS BIGINT), \
                CAST(SUM(CASE WHEN outcome = 'cancelled' THEN 1 ELSE 0 END) AS BIGINT) FROM syncs",
    )
    .bind(signalled)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(across > 0, "no sync ran across the signal and finished ok");
    assert_eq!(
        cancelled, 0,
        "a sync was cut although the grace period sufficed"
    );
    drop(pool);
    let config = daemon.config.clone();
    drop(daemon);

    // Restart: every acknowledged user is there, and every mirror converges.
    google.emulator().clear_faults();
    let daemon = Daemon::run(dir.path(), config, &[]).await;
    let users = daemon.ctl(&["resync", "--all", "--wait", "--json"]).await;
    assert!(users.ok, "{}{}", users.stdout, users.stderr);
    let listed = daemon.ctl(&["users", "--json"]).await.json();
    assert_eq!(listed["users"].as_array().unwrap().len(), subs.len());
    for sub in &subs {
        let files = daemon.ctl(&["files", sub, "--json"]).await.json();
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
    let mut daemon = Daemon::start(dir.path(), &google, |_| {}).await;
    sign_in_via(&google, &daemon.intake, "hup").await;
    // The yearly schedule's next tick is months away, never within this test.
    let next = |status: serde_json::Value| status["next_cycle_at"].as_i64().unwrap_or(0);
    let before = next(daemon.ctl(&["status", "--json"]).await.json());
    let now = appdata_syncd::store::now_ms();
    assert!(
        before > now + 86_400_000,
        "next cycle at {before}, now {now}"
    );

    daemon.rewrite_config(|c| c.sync.schedule = "* * * * * *".into());
    daemon.signal(libc::SIGHUP);
    eventually(
        "the new schedule to be armed",
        Duration::from_secs(10),
        async || {
            let after = next(daemon.ctl(&["status", "--json"]).await.json());
            after > 0 && after <= appdata_syncd::store::now_ms() + 2_000
        },
    )
    .await;
    eventually(
        "a cycle on the new schedule",
        Duration::from_secs(10),
        async || google.emulator().stats().drive_calls() > 0,
    )
    .await;
    let reloaded = log_line(&daemon.logs(), "configuration reloaded").expect("a reload line");
    assert!(
        reloaded["applied"]
            .as_str()
            .unwrap_or("")
            .contains("sync.schedule"),
        "{reloaded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_essential_task_that_dies_stops_the_daemon_non_zero_at_once() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let mut config = test_config(dir.path(), &google);
    config.intake.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // A debug build aborts the named task half a second after start (see cli.rs).
    let mut daemon = Daemon::run(
        dir.path(),
        config,
        &[("APPDATA_SYNCD_TEST_ABORT_TASK", "intake")],
    )
    .await;
    let status = daemon.exit_within(Duration::from_secs(5)).await;
    assert!(!status.success(), "exit status {status}");
    let logs = daemon.logs();
    let aborted = log_line(
        &logs,
        "aborting a task, as APPDATA_SYNCD_TEST_ABORT_TASK asks",
    )
    .expect("the abort line");
    let died = log_line(&logs, "an essential task ended unexpectedly; stopping the daemon (it exits non-zero, so systemd restarts it)")
        .unwrap_or_else(|| panic!("no supervision line in {logs}"));
    assert_eq!(died["task"], "intake", "{died}");
    assert_eq!(died["reason"], "it was aborted", "{died}");
    let stopped =
        log_line(&logs, "stopped because an essential task ended").expect("the last line");
    let ms = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    assert!(
        ms(&stopped) - ms(&aborted) < 1_000,
        "the daemon took {} ms to stop",
        ms(&stopped) - ms(&aborted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_essential_task_that_dies_in_process_ends_run_until_stopped_with_its_name() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let config = test_config(dir.path(), &google).resolve().unwrap();
    let app = appdata_syncd::lifecycle::App::build(config, None)
        .await
        .unwrap();
    let tasks = app.tasks();
    let running = tokio::spawn(app.run_until_stopped(tokio_util::sync::CancellationToken::new()));
    eventually("the tasks to start", Duration::from_secs(5), async || {
        tasks.abort_for_test("resync")
    })
    .await;
    let ended = tokio::time::timeout(Duration::from_secs(1), running)
        .await
        .expect("still running 1 s after its resync loop died")
        .unwrap();
    let err = ended
        .expect_err("a dead essential task is an error")
        .to_string();
    assert!(
        err.contains("\"resync\"") && err.contains("aborted"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_then_stopping() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let notify_path = dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
    let mut config = test_config(dir.path(), &google);
    config.intake.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let notify_env = notify_path.to_str().unwrap().to_string();
    let mut daemon = Daemon::run(dir.path(), config, &[("NOTIFY_SOCKET", &notify_env)]).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut receive = async |seen: &mut Vec<String>| {
        let n = tokio::time::timeout(Duration::from_secs(20), notify.recv(&mut buf))
            .await
            .expect("a notify message within 20 s")
            .unwrap();
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    };
    while !seen.iter().any(|m: &String| m.contains("READY=1")) {
        receive(&mut seen).await;
    }
    let status = daemon.terminate(Duration::from_secs(15)).await;
    assert!(status.success());
    while !seen.last().is_some_and(|m| m.contains("STOPPING=1")) {
        receive(&mut seen).await;
    }
    let ready = seen.iter().position(|m| m.contains("READY=1")).unwrap();
    let stopping = seen.iter().position(|m| m.contains("STOPPING=1")).unwrap();
    assert!(ready < stopping);
    assert!(seen[ready].contains("STATUS="), "{seen:?}");
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
    let daemon = Daemon::start(dir.path(), &google, |c| {
        c.metrics.listen = Some(format!("127.0.0.1:{metrics_port}").parse().unwrap());
    })
    .await;
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    sign_in_via(&google, &daemon.intake, "m1").await;
    google
        .emulator()
        .put_file("m1", "a", "content".to_string(), None)
        .unwrap();
    let out = daemon.ctl(&["resync", "m1", "--wait"]).await;
    assert!(out.ok, "{}", out.stderr);
    // The users gauge is refreshed every 10 s; counters move at once.
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert_eq!(
        metric(
            &text,
            "appdata_syncd_intake_requests_total{outcome=\"ok\",status=\"200\"}"
        ),
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
    let out = daemon.ctl(&["resync", "m1", "--wait"]).await;
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
