//! The `/_emulator/` control API, stats and fault injection.

mod common;

use common::{drive_error, Env};
use fake_google::{Fault, Faults};
use serde_json::{json, Value};

/// One walk through the control API the way a test harness uses it (user, code, appdata,
/// exchange, listing), kept whole so each step's input is the previous step's output.
#[tokio::test]
async fn users_codes_and_appdata_over_http() {
    let env = Env::start().await;
    let post = |path: &str, body: Value| env.http.post(env.url(path)).json(&body).send();
    let resp = post(
        "/_emulator/users",
        json!({"sub": "77", "email": "x@example.com"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["email"],
        "x@example.com"
    );
    assert_eq!(
        post("/_emulator/users", json!({"sub": "77"}))
            .await
            .unwrap()
            .status(),
        409
    );
    assert_eq!(
        post("/_emulator/authcodes", json!({"sub": "nobody"}))
            .await
            .unwrap()
            .status(),
        404
    );
    let resp = post(
        "/_emulator/authcodes",
        json!({"sub": "77", "client_id": "1-x.apps.googleusercontent.com"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);

    let resp = env
        .http
        .put(env.url("/_emulator/users/77/appdata/dir%2Fname.json"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let file: Value = resp.json().await.unwrap();
    assert_eq!(file["name"], "dir/name.json");
    assert_eq!(file["size"], "2");
    let listed: Value = env
        .http
        .get(env.url("/_emulator/users/77/appdata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["files"][0]["md5Checksum"], file["md5Checksum"]);
    let content = env
        .http
        .get(env.url(&format!(
            "/_emulator/users/77/appdata-content/{}",
            file["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&content[..], b"{}");
    let del = || {
        env.http
            .delete(env.url("/_emulator/users/77/appdata/dir%2Fname.json"))
            .send()
    };
    assert_eq!(del().await.unwrap().status(), 204);
    assert_eq!(del().await.unwrap().status(), 404);
    assert_eq!(
        env.fg.emulator().stats().drive_calls(),
        0,
        "control calls are not Drive calls"
    );
}

#[tokio::test]
async fn clients_and_client_secret_json() {
    let env = Env::start().await;
    let c: Value = env
        .http
        .get(env.url("/_emulator/clients"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let clients = env.fg.clients();
    assert_eq!(c["web"]["client_id"], clients.web_client_id.as_str());
    assert_eq!(
        c["web"]["client_secret"],
        clients.web_client_secret.as_str()
    );
    assert_eq!(c["android_client_id"], clients.android_client_id.as_str());
    assert!(clients.web_client_secret.starts_with("GOCSPX-"));
    let j = env.fg.client_secret_json();
    assert_eq!(j["web"]["token_uri"], env.url("/token"));
    assert_eq!(j["web"]["client_id"], clients.web_client_id.as_str());
    assert!(j["web"]["redirect_uris"].is_array());
}

#[tokio::test]
async fn stats_count_per_endpoint_user_and_status() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    env.get("/drive/v3/changes/startPageToken", &t.access).await;
    env.get(
        "/drive/v3/changes?spaces=appDataFolder&pageToken=1",
        &t.access,
    )
    .await;
    env.get("/drive/v3/files?spaces=appDataFolder", "ya29.bogus")
        .await;
    let s: fake_google::Stats = env
        .http
        .get(env.url("/_emulator/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s.count("token"), 1);
    assert_eq!(s.user_count("1", "token"), 1);
    assert_eq!(s.user_count("1", "changes.list"), 1);
    assert_eq!(s.count("files.list"), 1);
    assert_eq!(s.user_count("1", "files.list"), 0, "bad token is nobody's");
    assert_eq!(s.drive_calls(), 3);
    assert_eq!(s.by_status["401"], 1);
    // The same totals without the per-user counts (a sampler's cheap read).
    let totals: fake_google::Stats = env
        .http
        .get(env.url("/_emulator/stats?by_user=false"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(totals.by_user.is_empty(), "{totals:?}");
    assert_eq!(
        (totals.requests, totals.by_status),
        (s.requests.clone(), s.by_status.clone())
    );
    env.http
        .delete(env.url("/_emulator/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(env.fg.emulator().stats(), fake_google::Stats::default());
}

#[tokio::test]
async fn injected_errors_have_googles_shapes_and_retry_after() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let emu = env.fg.emulator();
    for (status, reason) in [
        (503, "backendError"),
        (500, "backendError"),
        (429, "rateLimitExceeded"),
        (403, "userRateLimitExceeded"),
    ] {
        emu.set_faults(Faults {
            jwks: None,
            drive: Some(Fault {
                error_rate: 1.0,
                error_status: Some(status),
                retry_after_s: Some(7),
                ..Default::default()
            }),
            token: None,
        });
        let resp = env.get("/drive/v3/changes/startPageToken", &t.access).await;
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()["retry-after"], "7");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(drive_error(&body, status)["reason"], reason);
    }
    // Token family faults leave Drive alone and vice versa.
    let resp = env
        .http
        .put(env.url("/_emulator/faults"))
        .json(&json!({"token": {"error_rate": 1.0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        env.get("/drive/v3/changes/startPageToken", &t.access)
            .await
            .status(),
        200
    );
    let resp = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", t.refresh.as_ref().unwrap()),
        ])
        .await;
    assert_eq!(resp.status(), 503);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());
    let resp = env
        .http
        .put(env.url("/_emulator/faults"))
        .json(&json!({"drive": {"error_status": 418}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    env.http
        .put(env.url("/_emulator/faults"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        env.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", t.refresh.as_ref().unwrap())
        ])
        .await
        .status(),
        200
    );
    let s = emu.stats();
    assert!(
        s.count("changes.startPageToken") >= 5,
        "fault-injected responses are counted"
    );
}

#[tokio::test]
async fn quotas_refuse_beyond_the_rate() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let emu = env.fg.emulator();
    emu.set_faults(Faults {
        jwks: None,
        drive: Some(Fault {
            quota_rps: Some(2),
            ..Default::default()
        }),
        token: None,
    });
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            env.get("/drive/v3/changes/startPageToken", &t.access)
                .await
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    emu.set_faults(Faults {
        jwks: None,
        drive: Some(Fault {
            user_quota_rps: Some(1),
            ..Default::default()
        }),
        token: None,
    });
    let mut last = None;
    for _ in 0..3 {
        last = Some(env.get("/drive/v3/changes/startPageToken", &t.access).await);
    }
    let resp = last.unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    let e = drive_error(&body, 403);
    assert_eq!(
        (e["reason"].as_str(), e["domain"].as_str()),
        (Some("userRateLimitExceeded"), Some("usageLimits"))
    );
}

#[tokio::test]
async fn reset_faults_cut_responses_short() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    env.fg
        .emulator()
        .put_file("1", "big", vec![b'x'; 4096], None)
        .unwrap();
    env.fg.emulator().set_faults(Faults {
        jwks: None,
        drive: Some(Fault {
            reset_rate: 1.0,
            ..Default::default()
        }),
        token: None,
    });
    let resp = env
        .http
        .get(env.url("/drive/v3/files?spaces=appDataFolder&fields=*"))
        .bearer_auth(&t.access)
        .send()
        .await;
    let failed = match resp {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(failed, "a reset response must not read as complete");
    env.fg.emulator().clear_faults();
    assert_eq!(
        env.get("/drive/v3/changes/startPageToken", &t.access)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn latency_is_added() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    env.fg.emulator().set_faults(Faults {
        jwks: None,
        drive: Some(Fault {
            latency_ms: 200,
            ..Default::default()
        }),
        token: None,
    });
    let started = std::time::Instant::now();
    env.get("/drive/v3/changes/startPageToken", &t.access).await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
}

#[tokio::test]
async fn control_calls_for_users_and_settings() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let post = |path: &str| env.http.post(env.url(path)).send();
    assert_eq!(
        post("/_emulator/users/nobody/revoke")
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        post("/_emulator/expire-access-tokens")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        env.get("/drive/v3/changes/startPageToken", &t.access)
            .await
            .status(),
        401
    );
    let resp = env
        .http
        .put(env.url("/_emulator/settings"))
        .json(&json!({"access_token_lifetime_s": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let again = env.exchange(&env.code("1")).await;
    assert_eq!(again.body["expires_in"], 60);
    assert_eq!(
        post("/_emulator/users/1/invalidate-page-tokens")
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, _) = env
        .get_json(
            "/drive/v3/changes?spaces=appDataFolder&pageToken=1",
            &again.access,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        post("/_emulator/users/1/revoke").await.unwrap().status(),
        200
    );
    assert_eq!(
        env.get("/drive/v3/changes/startPageToken", &again.access)
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn copies_share_content_size_and_md5_with_their_original() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let original = env
        .fg
        .emulator()
        .put_file("1", "big.bin", vec![7u8; 1 << 20], None)
        .unwrap();
    let resp = env
        .http
        .post(env.url(&format!("/_emulator/users/1/files/{}/copies", original.id)))
        .json(&json!({"count": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let copies: Value = resp.json().await.unwrap();
    let copies = copies["files"].as_array().unwrap();
    assert_eq!(copies.len(), 3);
    assert_eq!(copies[2]["name"], "big.bin.3");
    for c in copies {
        assert_ne!(c["id"], original.id.as_str());
        let id = c["id"].as_str().unwrap();
        let (_, meta) = env
            .get_json(
                &format!("/drive/v3/files/{id}?fields=size,md5Checksum"),
                &t.access,
            )
            .await;
        assert_eq!(
            meta,
            json!({"size": "1048576", "md5Checksum": original.md5_checksum})
        );
        let body = env
            .get(&format!("/drive/v3/files/{id}?alt=media"), &t.access)
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(body, vec![7u8; 1 << 20]);
    }
    assert_eq!(env.fg.emulator().list_files("1").unwrap().len(), 4);
    let missing = env
        .http
        .post(env.url("/_emulator/users/1/files/1nope/copies"))
        .json(&json!({"count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
