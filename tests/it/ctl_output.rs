//! `ctl` for humans and scripts (issue 18), through the real binary against a real daemon:
//! users a page at a time, output that fits 80 columns with no escape codes off a terminal,
//! the documented exit codes, and `status --watch`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use appdata_syncd::store::users::{self, Profile, UserState};
use appdata_syncd::store::Store;
use fake_google::NewUser;

use crate::helpers::{binary, ctl_env, sign_in_via, Daemon};

/// `n` users, `u000`... in sub order, written straight into the daemon's database (signing
/// in 120 users through Google would only make the test slow).
async fn seed_users(daemon: &Daemon, n: usize) {
    let url = daemon.config.clone().resolve().unwrap().store_url;
    let store = Store::connect(url.expose(), 1).await.unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    for i in 0..n {
        let profile = Profile {
            sub: format!("u{i:03}"),
            email: Some(format!("user.number.{i}@example.com")),
            ..Default::default()
        };
        users::upsert_profile(&mut conn, &profile, 1).await.unwrap();
    }
}

/// The subs listed in a `ctl users` table (its first column, header left out).
fn subs(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter(|l| l.starts_with('u'))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

fn assert_fits_80(what: &str, out: &str) {
    for line in out.lines() {
        assert!(
            line.chars().count() <= 80,
            "{what}: a line of {} columns: {line:?}\n{out}",
            line.chars().count()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_listed_fifty_at_a_time_unless_asked_for_more() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let daemon = Daemon::start(dir.path(), &google, |_| {}).await;
    seed_users(&daemon, 120).await;

    let first = daemon.ctl(&["users"]).await;
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let listed = subs(&first.stdout);
    assert_eq!(listed.len(), 50, "{}", first.stdout);
    assert_eq!((listed[0].as_str(), listed[49].as_str()), ("u000", "u049"));
    assert_eq!(
        first.stdout.lines().last(),
        Some("... 70 more: ctl users --after u049")
    );
    assert_fits_80("ctl users", &first.stdout);

    let next = daemon.ctl(&["users", "--after", "u049"]).await;
    let listed = subs(&next.stdout);
    assert_eq!((listed.len(), listed[0].as_str()), (50, "u050"));
    assert!(next
        .stdout
        .ends_with("... 20 more: ctl users --after u099\n"));

    let all = daemon.ctl(&["users", "--all"]).await;
    assert_eq!(subs(&all.stdout).len(), 120, "{}", all.stdout);
    assert!(!all.stdout.contains("more"), "{}", all.stdout);

    let page = daemon
        .ctl(&["users", "--limit", "7", "--json"])
        .await
        .json();
    assert_eq!(page["users"].as_array().unwrap().len(), 7);
    assert_eq!(page["remaining"], 113);
    let all = daemon.ctl(&["users", "--all", "--json"]).await.json();
    assert_eq!(all["users"].as_array().unwrap().len(), 120);
    assert_eq!(
        (all["users"][119]["sub"].as_str(), &all["remaining"]),
        (Some("u119"), &0.into())
    );

    // The hint keeps the state asked for.
    let url = daemon.config.clone().resolve().unwrap().store_url;
    let store = Store::connect(url.expose(), 1).await.unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    for sub in ["u010", "u020", "u030"] {
        users::set_state(&mut conn, sub, UserState::Paused, None, 2)
            .await
            .unwrap();
    }
    let paused = daemon
        .ctl(&["users", "--state", "paused", "--limit", "2"])
        .await;
    assert_eq!(subs(&paused.stdout), ["u010", "u020"]);
    assert!(
        paused
            .stdout
            .ends_with("... 1 more: ctl users --state paused --after u020\n"),
        "{}",
        paused.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_fits_80_columns_and_is_plain_off_a_terminal() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let daemon = Daemon::start(dir.path(), &google, |c| {
        c.sync.max_requests_per_second = 1000
    })
    .await;
    let sub = "113427189403297419999";
    google
        .emulator()
        .create_user(NewUser {
            sub: sub.into(),
            email: Some(
                "first.middle.last+appdata-syncd-integration-tests@subdomain.example.com".into(),
            ),
            name: Some(format!("A Name Long Enough To Overflow {}", "x".repeat(80))),
            ..Default::default()
        })
        .unwrap();
    sign_in_via(&google, &daemon.intake, sub).await;
    let long_name = format!("backups/{}.json", "a-rather-long-file-name".repeat(4));
    for name in ["settings.json", long_name.as_str()] {
        google
            .emulator()
            .put_file(sub, name, "{}".to_string(), None)
            .unwrap();
    }
    let synced = daemon.ctl(&["resync", sub, "--wait"]).await;
    assert_eq!(synced.code, Some(0), "{}{}", synced.stdout, synced.stderr);

    for args in [
        vec!["status"],
        vec!["users"],
        vec!["user", sub],
        vec!["files", sub],
    ] {
        let out = daemon.ctl(&args).await;
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        assert_fits_80(&format!("ctl {}", args.join(" ")), &out.stdout);
        assert!(
            !out.stdout.contains('\u{1b}'),
            "{args:?}: escapes in a pipe: {:?}",
            out.stdout
        );
    }
    let files = daemon.ctl(&["files", sub]).await.stdout;
    assert!(
        files.contains("settings.json") && files.contains('…'),
        "{files}"
    );

    // The styles are there, and it is anstream that takes them out of a pipe; NO_COLOR wins
    // even over CLICOLOR_FORCE.
    let socket = daemon.socket.clone();
    let forced = ctl_env(&socket, &["users"], &[("CLICOLOR_FORCE", "1")]).await;
    assert!(
        forced.stdout.starts_with("\u{1b}[1mSUB"),
        "{:?}",
        forced.stdout
    );
    let no_color = ctl_env(
        &socket,
        &["users"],
        &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")],
    )
    .await;
    assert!(!no_color.stdout.contains('\u{1b}'), "{:?}", no_color.stdout);
    // COLUMNS says how wide: nothing is cut at 200.
    let wide = ctl_env(&socket, &["files", sub], &[("COLUMNS", "200")]).await;
    assert!(wide.stdout.contains(&long_name), "{}", wide.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_who_failed() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let daemon = Daemon::start(dir.path(), &google, |_| {}).await;

    let refused = daemon.ctl(&["user", "nobody"]).await;
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains("unknown_user"),
        "{}",
        refused.stderr
    );
    let refused = daemon.ctl(&["user", "nobody", "--json"]).await.json();
    assert_eq!(refused["error"], "unknown_user");

    for args in [
        vec!["users", "--state", "sleeping"],
        vec!["users", "--limit", "0"],
        vec!["resync"],
        vec!["forget", "someone"],
        vec!["no-such-command"],
    ] {
        let out = daemon.ctl(&args).await;
        assert_eq!(out.code, Some(2), "{args:?}: {}{}", out.stdout, out.stderr);
    }
    let out = daemon.ctl(&["forget", "someone", "--json"]).await;
    assert_eq!((out.code, &out.json()["error"]), (Some(2), &"usage".into()));

    // A reader that has gone (`ctl users --all | head`) is no failure, and no panic.
    let mut child = tokio::process::Command::new(binary())
        .args(["ctl", "--socket"])
        .arg(&daemon.socket)
        .arg("status")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.status.code(), stderr.as_ref()), (Some(0), ""));

    let gone = dir.path().join("nothing.sock");
    let out = crate::helpers::ctl(&gone, &["status"]).await;
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert!(
        out.stderr.contains("is appdata-syncd running?"),
        "{}",
        out.stderr
    );
    let out = crate::helpers::ctl(&gone, &["users", "--json"]).await;
    assert_eq!(
        (out.code, &out.json()["error"]),
        (Some(3), &"unreachable".into())
    );
}

/// Starts `ctl status --watch --interval 1` with stdout a pipe.
fn watch(daemon: &Daemon) -> tokio::process::Child {
    tokio::process::Command::new(binary())
        .args(["ctl", "--socket"])
        .arg(&daemon.socket)
        .args(["status", "--watch", "--interval", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_prints_snapshots_until_ctrl_c_or_the_daemon_goes() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let mut daemon = Daemon::start(dir.path(), &google, |_| {}).await;

    let child = watch(&daemon);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("watch did not end on SIGINT")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshots = stdout.lines().filter(|l| l.starts_with("--- ")).count();
    assert!(snapshots >= 2, "{snapshots} snapshots:\n{stdout}");
    assert_eq!(
        stdout.matches("syncs running").count(),
        snapshots,
        "{stdout}"
    );
    assert!(!stdout.contains('\u{1b}'), "{stdout:?}");

    let child = watch(&daemon);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.kill().await;
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("watch did not end when the daemon went away")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("went away"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
