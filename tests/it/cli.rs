//! The real `appdata-syncd` binary: check-config, and logs that never carry a secret.

use std::process::Command;
use std::time::Duration;

use crate::helpers::{binary, test_config, write_config, Daemon};

fn check_config(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(path)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn check_config_accepts_a_good_config_and_redacts_secrets() {
    let google = crate::helpers::google().await;
    let dir = crate::helpers::test_dir();
    let path = write_config(dir.path(), &test_config(dir.path(), &google));
    let (ok, text) = check_config(&path);
    assert!(ok, "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    assert!(text.contains(&google.clients().web_client_id), "{text}");
    assert!(
        !text.contains(&google.clients().web_client_secret),
        "{text}"
    );
}

#[tokio::test]
async fn check_config_fails_clearly_on_each_problem() {
    let google = crate::helpers::google().await;
    let dir = crate::helpers::test_dir();
    let config = test_config(dir.path(), &google);
    let path = write_config(dir.path(), &config);
    let secret = dir.path().join("client_secret.json");
    let key = dir.path().join("encryption.key");
    let good_secret = std::fs::read(&secret).unwrap();

    std::fs::remove_file(&secret).unwrap();
    let (ok, text) = check_config(&path);
    assert!(!ok);
    assert!(text.contains("cannot read client secret file"), "{text}");

    crate::helpers::write_private(&secret, b"{\"web\": {\"client_id\": ");
    let (ok, text) = check_config(&path);
    assert!(!ok);
    assert!(text.contains("not a Google client_secret.json"), "{text}");
    std::fs::write(&secret, &good_secret).unwrap();

    std::fs::remove_file(&key).unwrap();
    let (ok, text) = check_config(&path);
    assert!(!ok);
    assert!(text.contains("cannot read encryption key file"), "{text}");

    crate::helpers::write_private(&key, &[1u8; 16]);
    let (ok, text) = check_config(&path);
    assert!(!ok);
    assert!(text.contains("exactly 32 bytes"), "{text}");
    std::fs::write(&key, [1u8; 32]).unwrap();

    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("[google]\n", "[google]\njwks_url = \"typo\"\n"),
    )
    .unwrap();
    let (ok, text) = check_config(&path);
    assert!(!ok);
    assert!(
        text.contains("unknown field") && text.contains("jwks_url"),
        "{text}"
    );

    let path = write_config(dir.path(), &config);
    assert!(check_config(&path).0, "back to a good config");
}

#[tokio::test]
async fn trace_logs_of_sign_ins_contain_no_token_code_or_client_secret() {
    let google = crate::helpers::google().await;
    let dir = crate::helpers::test_dir();
    let mut daemon = Daemon::start(dir.path(), &google, |_| {}).await;
    let intake = daemon.intake.clone();

    let http = reqwest::Client::new();
    let emulator = google.emulator();
    for i in 0..3 {
        let sub = format!("traced{i}");
        emulator
            .create_user(fake_google::NewUser {
                sub: sub.clone(),
                ..Default::default()
            })
            .unwrap();
        let code = emulator
            .mint_auth_code(fake_google::MintCode {
                sub,
                ..Default::default()
            })
            .unwrap();
        for _ in 0..2 {
            // The second post replays the code: the failure path must not log it either.
            http.post(format!("{intake}/authcode"))
                .form(&[("authCode", code.as_str())])
                .send()
                .await
                .unwrap();
        }
    }
    let status = daemon.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "daemon exited with {status}");
    let logs = daemon.logs();
    assert!(logs.contains("sign-in stored"), "trace logs were captured");
    assert!(logs.lines().count() > 50, "trace level is on");
    let mut secrets = emulator.issued_secrets();
    secrets.push(google.clients().web_client_secret);
    assert!(secrets.iter().any(|s| s.starts_with("4/")));
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret leaked into the logs: {}...",
            &secret[..6]
        );
        // Form-encoding turns '/' into %2F: look for that spelling too.
        let encoded = secret.replace('/', "%2F");
        assert!(
            !logs.contains(encoded.as_str()),
            "an encoded secret leaked into the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_key_reencrypts_everything_under_the_new_key() {
    let google = crate::helpers::google().await;
    let dir = crate::helpers::test_dir();
    let mut daemon = Daemon::start(dir.path(), &google, |_| {}).await;
    for sub in ["rot1", "rot2"] {
        crate::helpers::sign_in_via(&google, &daemon.intake, sub).await;
    }
    daemon.terminate(Duration::from_secs(20)).await;
    let config = daemon.config.clone();
    drop(daemon);

    // New current key; the old one becomes a previous key.
    let key = dir.path().join("encryption.key");
    let old = dir.path().join("previous.key");
    std::fs::rename(&key, &old).unwrap();
    crate::helpers::write_private(&key, &[7u8; 32]);
    let mut with_previous = config.clone();
    with_previous.store.previous_key_files = vec![old.clone()];
    let path = write_config(dir.path(), &with_previous);
    let out = Command::new(binary())
        .args(["rotate-key", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("re-encrypted 2 of 2"), "{stdout}");

    // Without the old key the daemon still decrypts every token: a sync works.
    std::fs::remove_file(&old).unwrap();
    let daemon = Daemon::run(dir.path(), config, &[]).await;
    google.emulator().expire_access_tokens(None);
    let out = daemon.ctl(&["resync", "--all", "--wait"]).await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("2 synced"), "{}", out.stdout);
}

#[tokio::test]
async fn secrets_readable_by_group_or_others_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let google = crate::helpers::google().await;
    let dir = crate::helpers::test_dir();
    let path = write_config(dir.path(), &test_config(dir.path(), &google));
    assert!(check_config(&path).0);
    for name in ["encryption.key", "client_secret.json"] {
        let file = dir.path().join(name);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (ok, text) = check_config(&path);
        assert!(!ok, "{name} at 0644 was accepted");
        assert!(text.contains("chmod 600"), "{text}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert!(check_config(&path).0);
}
