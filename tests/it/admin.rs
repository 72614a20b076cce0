//! The admin socket through the real binary and the real `ctl` client.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use appdata_syncd::config::Config;
use fake_google::FakeGoogle;

use crate::helpers::{binary, free_port, sign_in_via, write_config, Daemon};

fn limit_1000(c: &mut Config) {
    c.sync.max_requests_per_second = 1000;
}

async fn daemon_with_users(subs: &[&str]) -> (crate::helpers::TestDir, FakeGoogle, Daemon) {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let daemon = Daemon::start(dir.path(), &google, limit_1000).await;
    for sub in subs {
        sign_in_via(&google, &daemon.intake, sub).await;
        google
            .emulator()
            .put_file(
                sub,
                "settings.json",
                format!("{{\"user\": \"{sub}\"}}"),
                None,
            )
            .unwrap();
    }
    (dir, google, daemon)
}

/// Every ctl command against one daemon, in turn: kept whole so that one daemon's state
/// carries from command to command (and the list reads as the protocol's commands).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ctl_command_works_in_table_and_json_form() {
    let (dir, google, mut daemon) = daemon_with_users(&["111", "222", "333"]).await;

    let out = daemon.ctl(&["resync", "--all", "--wait"]).await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("111: sync finished: ok"),
        "{}",
        out.stdout
    );

    let status = daemon.ctl(&["status"]).await;
    assert!(
        status.ok && status.stdout.contains("active=3"),
        "{}",
        status.stdout
    );
    let status = daemon.ctl(&["status", "--json"]).await.json();
    assert_eq!(status["users_by_state"]["active"], 3);
    assert!(status["version"].is_string() && status["rate_limit"]["per_second"] == 1000);

    let users = daemon.ctl(&["users"]).await;
    assert!(users.stdout.starts_with("SUB"), "{}", users.stdout);
    assert!(users.stdout.contains("222@example.com"));
    let users = daemon.ctl(&["users", "--json"]).await.json();
    assert_eq!(users["users"].as_array().unwrap().len(), 3);
    assert_eq!(users["users"][0]["files"], 1);

    // A change on the emulator shows up in `files` after `resync --wait`.
    google
        .emulator()
        .put_file("111", "notes.txt", "hello".to_string(), None)
        .unwrap();
    let out = daemon.ctl(&["resync", "111", "--wait"]).await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("+1"), "{}", out.stdout);
    let files = daemon.ctl(&["files", "111"]).await;
    assert!(files.stdout.contains("notes.txt"), "{}", files.stdout);
    let files = daemon.ctl(&["files", "111", "--json"]).await.json();
    let names: Vec<&str> = files["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["notes.txt", "settings.json"]);

    let user = daemon.ctl(&["user", "111"]).await;
    assert!(user.stdout.contains("recent syncs:"), "{}", user.stdout);
    let user = daemon.ctl(&["user", "111", "--json"]).await.json();
    assert_eq!(user["user"]["sub"], "111");
    assert_eq!(user["recent_syncs"][0]["outcome"], "ok");

    // Pause and resume.
    assert!(daemon
        .ctl(&["pause", "222"])
        .await
        .stdout
        .contains("paused"));
    let paused = daemon
        .ctl(&["users", "--state", "paused", "--json"])
        .await
        .json();
    assert_eq!(paused["users"][0]["sub"], "222");
    assert!(
        !daemon.ctl(&["resync", "222"]).await.ok,
        "a paused user does not sync"
    );
    let resumed = daemon.ctl(&["resume", "222", "--json"]).await.json();
    assert_eq!(resumed["state"], "active");

    // Push: queued, uploaded on the next sync.
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, b"pushed bytes").unwrap();
    let pushed = daemon
        .ctl(&[
            "push",
            "333",
            "--name",
            "from-admin",
            "--file",
            file.to_str().unwrap(),
        ])
        .await;
    assert!(
        pushed.ok && pushed.stdout.contains("pending"),
        "{}",
        pushed.stdout
    );
    let out = daemon.ctl(&["resync", "333", "--wait", "--json"]).await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let remote = google.emulator().list_files("333").unwrap();
    let uploaded = remote.iter().find(|f| f.name == "from-admin").unwrap();
    assert_eq!(
        google
            .emulator()
            .file_content("333", &uploaded.id)
            .unwrap()
            .as_ref(),
        b"pushed bytes"
    );

    // Log level: good and bad filters.
    assert!(daemon.ctl(&["log-level", "debug"]).await.ok);
    let bad = daemon.ctl(&["log-level", "not[a filter"]).await;
    assert!(
        !bad.ok && bad.stderr.contains("invalid_filter"),
        "{}",
        bad.stderr
    );

    // Reload: change the concurrency in the file.
    daemon.rewrite_config(|c| c.sync.concurrency = 5);
    let reload = daemon.ctl(&["reload", "--json"]).await.json();
    assert_eq!(reload["applied"][0], "sync.concurrency = 5", "{reload}");
    assert!(daemon
        .ctl(&["reload"])
        .await
        .stdout
        .contains("applied: nothing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_revokes_and_leaves_no_trace() {
    let (dir, google, daemon) = daemon_with_users(&["gone", "stays"]).await;
    assert!(daemon.ctl(&["resync", "--all", "--wait"]).await.ok);
    assert!(dir.path().join("mirror/gone").exists());
    let refused = daemon.ctl(&["forget", "gone"]).await;
    assert!(!refused.ok && refused.stderr.contains("--yes"));
    google.emulator().reset_stats();
    let out = daemon
        .ctl(&["forget", "gone", "--yes", "--json"])
        .await
        .json();
    assert_eq!(out["revoked"], true);
    assert_eq!(google.emulator().stats().count("revoke"), 1);
    assert!(!dir.path().join("mirror/gone").exists());
    let user = daemon.ctl(&["user", "gone"]).await;
    assert!(
        !user.ok && user.stderr.contains("unknown_user"),
        "{}",
        user.stderr
    );
    let users = daemon.ctl(&["users", "--json"]).await.json();
    assert_eq!(users["users"].as_array().unwrap().len(), 1);
    let pool = crate::helpers::db_pool(dir.path()).await;
    for table in ["users", "credentials", "files", "syncs", "pushes"] {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE sub = 'gone'"))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(n, 0, "{table} still has rows of the forgotten user");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_clear_and_exit_non_zero() {
    let (dir, _google, daemon) = daemon_with_users(&["x1"]).await;
    for (args, want) in [
        (vec!["user", "nobody"], "unknown_user"),
        (vec!["files", "nobody"], "unknown_user"),
        (vec!["resync", "nobody"], "unknown_user"),
        (vec!["resume", "nobody"], "unknown_user"),
    ] {
        let out = daemon.ctl(&args).await;
        assert!(!out.ok, "{args:?} should fail");
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }
    let out = daemon.ctl(&["user"]).await;
    assert!(
        !out.ok && out.stderr.contains("SUB"),
        "missing argument: {}",
        out.stderr
    );
    let out = daemon.ctl(&["resync"]).await;
    assert!(!out.ok && out.stderr.contains("--all"), "{}", out.stderr);
    let out = crate::helpers::ctl(&dir.path().join("nothing.sock"), &["status"]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("is appdata-syncd running?"),
        "{}",
        out.stderr
    );
}

fn request(stream: &mut UnixStream, line: &str) -> serde_json::Value {
    stream.write_all(line.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        buf.push(byte[0]);
    }
    serde_json::from_slice(&buf).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_huge_lines_half_lines_and_many_connections_leave_it_serving() {
    let (_dir, _google, daemon) = daemon_with_users(&["g1"]).await;
    let socket = daemon.socket.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = request(&mut s, "this is not json\n");
        assert_eq!(r["error"]["code"], "bad_request");
        let r = request(&mut s, "{\"id\": 5, \"cmd\": \"launch-missiles\"}\n");
        assert_eq!(
            (r["id"].clone(), r["error"]["code"].clone()),
            (5.into(), "bad_request".into())
        );
        let huge = format!(
            "{{\"cmd\": \"status\", \"pad\": \"{}\"}}\n",
            "x".repeat(1024 * 1024)
        );
        let r = request(&mut s, &huge);
        assert_eq!(r["error"]["code"], "line_too_long");
        // The same connection still works.
        let r = request(&mut s, "{\"id\": \"after\", \"cmd\": \"status\"}\n");
        assert_eq!(
            (r["id"].clone(), r["ok"].clone()),
            ("after".into(), true.into())
        );
        // Half a line, then gone.
        let mut half = UnixStream::connect(&socket).unwrap();
        half.write_all(b"{\"cmd\": \"sta").unwrap();
        drop(half);
        // 200 connections at once, each asking for status.
        let handles: Vec<_> = (0..200)
            .map(|i| {
                let socket = socket.clone();
                std::thread::spawn(move || {
                    let mut s = UnixStream::connect(&socket).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    request(&mut s, &format!("{{\"id\": {i}, \"cmd\": \"status\"}}\n"))
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let r = h.join().unwrap();
            assert_eq!(r["id"], i, "{r}");
            assert_eq!(r["ok"], true);
        }
    })
    .await
    .unwrap();
    let out = daemon.ctl(&["status", "--json"]).await;
    assert!(out.ok, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_that_is_not_allowed_is_refused() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to run a client as another uid (CI runs as root)");
        return;
    }
    let (dir, _google, daemon) = daemon_with_users(&["p1"]).await;
    // Let uid 65534 reach the socket file so the daemon's own check (SO_PEERCRED) is what
    // refuses it, not the file mode.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = std::process::Command::new(binary())
        .args(["ctl", "--socket"])
        .arg(&daemon.socket)
        .arg("status")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "uid 65534 was served: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("forbidden") && stderr.contains("65534"),
        "{stderr}"
    );
    assert!(daemon.logs().contains("refused an admin connection"));
    // Root still gets in.
    assert!(daemon.ctl(&["status"]).await.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let (dir, _google, daemon) = daemon_with_users(&[]).await;
    let mut second = daemon.config.clone();
    second.intake.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = write_config(dir.path(), &second);
    let out = std::process::Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    assert!(
        daemon.ctl(&["status"]).await.ok,
        "the first daemon is unharmed"
    );
}

/// The daemon's audit lines (target `appdata_syncd::audit`) from its JSON log.
fn audit_lines(daemon: &Daemon) -> Vec<serde_json::Value> {
    daemon
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "appdata_syncd::audit")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_command_leaves_an_audit_line_and_reads_do_not() {
    let (_dir, _google, daemon) = daemon_with_users(&["a1"]).await;
    assert!(daemon.ctl(&["pause", "a1"]).await.ok);
    assert!(daemon.ctl(&["status"]).await.ok);
    assert!(daemon.ctl(&["users"]).await.ok);
    assert!(!daemon.ctl(&["resume", "nobody-like-this"]).await.ok);
    let created = daemon
        .ctl(&["api-key", "create", "backend", "--json"])
        .await;
    assert!(created.ok, "{}", created.stderr);
    let key = created.json()["key"].as_str().unwrap().to_string();

    let lines = audit_lines(&daemon);
    let seen: Vec<(String, String)> = lines
        .iter()
        .map(|f| {
            (
                f["command"].as_str().unwrap_or("?").to_string(),
                f["outcome"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("pause".to_string(), "ok".to_string()),
            ("resume".to_string(), "unknown_user".to_string()),
            ("api-key-create".to_string(), "ok".to_string()),
        ],
        "{lines:?}"
    );
    assert_eq!(lines[0]["user"], "a1");
    for f in &lines {
        assert_eq!(f["uid"], unsafe { libc::geteuid() }, "{f}");
        assert!(f["pid"].as_i64().is_some_and(|p| p > 0), "{f}");
    }
    let audit_text = serde_json::to_string(&lines).unwrap();
    assert!(
        !audit_text.contains(&key),
        "the new API key is in the audit log"
    );
}

/// `pre_exec` for a client as uid/gid 65534 with the supplementary groups `groups`.
fn as_nobody_in(cmd: &mut std::process::Command, groups: &'static [libc::gid_t]) {
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_an_allowed_group_gets_in_although_proc_is_hidden() {
    if unsafe { libc::geteuid() } != 0 || which("unshare").is_none() {
        eprintln!("SKIPPED: needs root and unshare(1) (CI runs as root)");
        return;
    }
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let mut config = crate::helpers::test_config(dir.path(), &google);
    let port = free_port();
    config.intake.listen = format!("127.0.0.1:{port}").parse().unwrap();
    // `users` (gid 100) owns the socket and is allowed; the client is in it only as a
    // supplementary group, which only SO_PEERGROUPS tells.
    config.admin.group = Some("users".into());
    config.admin.allow = vec!["users".into()];
    let config_path = write_config(dir.path(), &config);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The daemon in a pid namespace of its own with its own /proc: the client's pid means
    // nothing there, as with the unit's ProtectProc=invisible.
    let log = dir.path().join("daemon.log");
    let child = tokio::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", binary()])
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let intake = format!("http://127.0.0.1:{port}");
    crate::helpers::wait_ready(&format!("{intake}/readyz")).await;
    let daemon = Daemon {
        child,
        socket: config.admin.socket.clone(),
        intake,
        config,
        config_path,
        log,
    };
    let run = |groups: &'static [libc::gid_t]| {
        let mut cmd = std::process::Command::new(binary());
        cmd.args(["ctl", "--socket"])
            .arg(&daemon.socket)
            .arg("status");
        as_nobody_in(&mut cmd, groups);
        cmd.output().unwrap()
    };
    let member = run(&[100]);
    assert!(
        member.status.success(),
        "a member of `users` was refused: {}",
        String::from_utf8_lossy(&member.stderr)
    );
    // Without the group the socket file's mode already keeps it out; with the group but
    // another primary gid and no allow entry it would be refused by the daemon (next test).
    let outsider = run(&[]);
    assert!(!outsider.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_no_allowed_group_is_refused_by_the_daemon_itself() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to run a client as another uid (CI runs as root)");
        return;
    }
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    // The socket belongs to `users`, but only `adm` is allowed: a member of `users` reaches
    // the socket and the daemon's group check refuses it.
    let daemon = Daemon::start(dir.path(), &google, |c| {
        c.admin.group = Some("users".into());
        c.admin.allow = vec!["adm".into()];
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = std::process::Command::new(binary());
    cmd.args(["ctl", "--socket"])
        .arg(&daemon.socket)
        .arg("status");
    as_nobody_in(&mut cmd, &[100]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
    let refused = audit_lines(&daemon);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["outcome"], "forbidden");
    assert_eq!(refused[0]["uid"], 65534);
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_socket_is_removed_at_the_socket_path() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let mut config = crate::helpers::test_config(dir.path(), &google);
    config.intake.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config_path = write_config(dir.path(), &config);
    std::fs::write(&config.admin.socket, "someone's notes").unwrap();
    let out = std::process::Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&config.admin.socket).unwrap(),
        "someone's notes"
    );

    // A stale socket (its daemon died) is removed, and the daemon starts.
    std::fs::remove_file(&config.admin.socket).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&config.admin.socket).unwrap());
    let daemon = Daemon::run(dir.path(), config, &[]).await;
    assert!(daemon.ctl(&["status"]).await.ok);
}
