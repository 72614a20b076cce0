//! The operator's toolbox (issue 18): shell completions and man pages rendered from the CLI,
//! logs in the journal with their fields, and the Grafana dashboard and Prometheus alerts
//! checked against what the daemon exports.

use std::process::Command;

use crate::helpers::binary;

fn run(args: &[&str]) -> std::process::Output {
    let out = Command::new(binary()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "appdata-syncd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn bash_completion_completes_subcommands_and_their_flags() {
    let script = run(&["completions", "bash"]).stdout;
    let dir = crate::helpers::test_dir();
    let path = dir.path().join("appdata-syncd.bash");
    std::fs::write(&path, script).unwrap();
    // What bash does on `appdata-syncd c<TAB>` and `appdata-syncd ctl st<TAB>`: it sets
    // COMP_WORDS and COMP_CWORD and calls the function with the command, the word being
    // completed and the one before it.
    let complete = |words: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
                 _appdata__syncd appdata-syncd \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
                 echo \"${{COMPREPLY[@]}}\"",
                path.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = complete("appdata-syncd c");
    for sub in ["check-config", "ctl", "completions"] {
        assert!(first.split_whitespace().any(|w| w == sub), "{first}");
    }
    let ctl = complete("appdata-syncd ctl st");
    assert_eq!(ctl.trim(), "status", "{ctl}");
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    for shell in ["zsh", "fish"] {
        let script = String::from_utf8(run(&["completions", shell]).stdout).unwrap();
        for sub in ["serve", "check-config", "ctl", "risc", "completions"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let out = Command::new(binary())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}

#[test]
fn man_pages_are_rendered_for_the_command_and_each_subcommand() {
    let dir = crate::helpers::test_dir();
    run(&["man", dir.path().to_str().unwrap()]);
    let page = |name: &str| {
        std::fs::read_to_string(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let top = page("appdata-syncd.1");
    assert!(
        top.starts_with(".ie") || top.contains(".TH appdata-syncd 1"),
        "{top}"
    );
    assert!(top.contains("appdata\\-syncd\\-ctl(1)"), "{top}");
    let serve = page("appdata-syncd-serve.1");
    assert!(
        serve.contains("/etc/appdata\\-syncd/config.toml"),
        "{serve}"
    );
    assert!(page("appdata-syncd-ctl-status.1").contains(".TH appdata-syncd-ctl-status 1"));
    // The hidden `man` command documents nobody.
    assert!(!dir.path().join("appdata-syncd-man.1").exists());
}

/// Every `appdata_syncd_*` name in `text` (a dashboard or rules file).
fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("appdata_syncd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The metric names of a Prometheus text exposition (histograms as `_bucket`, `_sum`, ...).
fn exported_names(scrape: &str) -> std::collections::BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn contrib(path: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The dashboard and the alerts name only metrics the daemon exports: a real daemon, after a
/// sign-in, cycles, a rate-limited sync, a token refresh, a data API call and a webhook that
/// cannot be delivered, is scraped until every name shows up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_metrics_a_live_daemon_exports() {
    let dashboard = contrib("contrib/grafana/appdata-syncd.json");
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() > 10));
    let mut wanted = metric_names_in(&dashboard);
    wanted.extend(metric_names_in(&contrib("contrib/prometheus/alerts.yml")));

    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let metrics_port = crate::helpers::free_port();
    let api_port = crate::helpers::free_port();
    let secret = dir.path().join("webhook.secret");
    std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let daemon = crate::helpers::Daemon::start(dir.path(), &google, |c| {
        c.metrics.listen = Some(format!("127.0.0.1:{metrics_port}").parse().unwrap());
        c.api.listen = Some(format!("127.0.0.1:{api_port}"));
        // Nothing listens on port 1: deliveries fail and the backlog stays.
        c.api.webhooks = vec![serde_json::from_value(serde_json::json!({
            "name": "dead", "url": "http://127.0.0.1:1/hook", "secret_file": secret,
        }))
        .unwrap()];
        c.sync.schedule = "*/2 * * * * *".into();
        c.sync.max_requests_per_second = 2;
    })
    .await;
    crate::helpers::sign_in_via(&google, &daemon.intake, "dash1").await;
    google
        .emulator()
        .put_file("dash1", "a", "content".to_string(), None)
        .unwrap();
    google.emulator().expire_access_tokens(Some("dash1"));
    let out = daemon.ctl(&["resync", "dash1", "--wait"]).await;
    assert!(out.ok, "{}", out.stderr);
    let out = daemon.ctl(&["api-key", "create", "dashboard"]).await;
    assert!(out.ok, "{}", out.stderr);
    let key = out
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("asd_"))
        .unwrap()
        .to_string();
    let users = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{api_port}/v1/users"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(users.status(), 200);

    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    // Gauges read before a scrape and the webhook's first failed attempt take a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let missing = loop {
        let scrape = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let missing: Vec<_> = wanted
            .difference(&exported_names(&scrape))
            .cloned()
            .collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(missing.is_empty(), "not exported: {missing:?}");
}

/// Runs in a private mount namespace (`unshare --mount`): a real systemd-journald bound to
/// this test's own folders stands where the system's would be, and the daemon runs as systemd
/// runs a service, stdout and stderr on a journal stream named by `JOURNAL_STREAM`.
const UNDER_JOURNALD: &str = r#"
set -eu
run=$1 log=$2 pidfile=$3; shift 3
mkdir -p /run/systemd/journal /run/log
mount --bind "$run" /run/systemd/journal
mount --bind "$log" /run/log
/lib/systemd/systemd-journald &
journald=$!
trap 'kill $journald; wait $journald || true' EXIT
for _ in $(seq 100); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.1; done
systemd-cat -t appdata-syncd sh -c \
    'echo $$ > "$0"; JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$@"' "$pidfile" "$@"
"#;

/// `journalctl` over the test's journal files, one JSON object per entry.
fn journal(dir: &std::path::Path, matches: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new("journalctl")
        .arg("-D")
        .arg(dir)
        .args(["--no-pager", "-o", "json"])
        .args(matches)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Under systemd the daemon logs through the journal's native protocol, so an operator's
/// `journalctl APPDATA_SYNCD_USER=<sub>` and `-p err` (PRIORITY=3) find its events. Needs root
/// (a mount namespace) and systemd-journald, as CI has (.ci/check-systemd installs systemd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_logs_reach_the_journal_with_their_fields() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let mut config = crate::helpers::test_config(dir.path(), &google);
    let port = crate::helpers::free_port();
    config.intake.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let config_path = crate::helpers::write_config(dir.path(), &config);
    let (run, log, pidfile) = (
        dir.path().join("run"),
        dir.path().join("log"),
        dir.path().join("pid"),
    );
    std::fs::create_dir_all(&run).unwrap();
    std::fs::create_dir_all(&log).unwrap();
    let mut under_journald = tokio::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            UNDER_JOURNALD,
            "journald",
        ])
        .args([&run, &log, &pidfile])
        .args([binary(), "serve", "--config"])
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .spawn()
        .expect("unshare (util-linux)");
    let intake = format!("http://127.0.0.1:{port}");
    crate::helpers::wait_ready(&format!("{intake}/readyz")).await;

    crate::helpers::sign_in_via(&google, &intake, "journal1").await;
    // A code issued for another redirect URI: Google answers redirect_uri_mismatch, which the
    // daemon logs at error as a misconfiguration.
    google
        .emulator()
        .create_user(fake_google::NewUser {
            sub: "journal2".into(),
            ..Default::default()
        })
        .unwrap();
    let code = google
        .emulator()
        .mint_auth_code(fake_google::MintCode {
            sub: "journal2".into(),
            redirect_uri: Some("https://elsewhere.example/callback".into()),
            ..Default::default()
        })
        .unwrap();
    let answer = reqwest::Client::new()
        .post(format!("{intake}/authcode"))
        .form(&[("authCode", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 500);

    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = under_journald.wait().await.unwrap();
    assert!(status.success(), "{status}");

    let files = log.join("journal");
    let mine = journal(&files, &["SYSLOG_IDENTIFIER=appdata-syncd"]);
    assert!(!mine.is_empty(), "nothing in the journal");
    // Everything came natively; nothing as JSON lines on the stream.
    for entry in &mine {
        assert_eq!(entry["_TRANSPORT"], "journal", "{entry}");
    }
    let user = journal(&files, &["APPDATA_SYNCD_USER=journal1"]);
    assert!(
        user.iter()
            .any(|e| e["MESSAGE"].as_str().is_some_and(|m| m.contains("sign"))),
        "{user:?}"
    );
    let errors = journal(&files, &["SYSLOG_IDENTIFIER=appdata-syncd", "PRIORITY=3"]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0]["APPDATA_SYNCD_GOOGLE_ERROR"],
        "redirect_uri_mismatch"
    );
    // Info is PRIORITY=5 (notice), not 3.
    assert!(user.iter().all(|e| e["PRIORITY"] != "3"));
    // No secret reached the journal.
    let all = journal(&files, &[])
        .iter()
        .map(|e| e.to_string())
        .collect::<String>();
    assert!(!all.contains(&google.clients().web_client_secret));
    assert!(!all.contains(&code));
}
