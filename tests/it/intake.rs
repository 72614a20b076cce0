//! POST /authcode: every way a sign-in can succeed or fail, and what is stored.

use fake_google::{Fault, Faults, IdTokenAttack, MintCode};

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn first_sign_in_by_form_stores_the_user_and_a_sealed_refresh_token() {
    let app = spawn_app().await;
    let code = app.auth_code("alice");
    let (status, body) = app.post_code(&code).await;
    assert_eq!(status, 200, "{body}");
    // What the app needs and no more: no email, no sub.
    assert_eq!(body, serde_json::json!({"status": "active"}));
    assert_eq!(app.user_state("alice").await.as_deref(), Some("active"));
    assert!(app.sealed_refresh_token("alice").await.is_some());
    app.stop().await;
}

#[tokio::test]
async fn first_sign_in_by_json_works_too() {
    let app = spawn_app().await;
    let code = app.auth_code("bob");
    let (status, body) = app
        .post_raw(
            "application/json",
            serde_json::json!({ "authCode": code }).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "active");
    assert_eq!(app.user_state("bob").await.as_deref(), Some("active"));
    app.stop().await;
}

#[tokio::test]
async fn a_repeat_sign_in_without_refresh_token_keeps_the_stored_one() {
    let app = spawn_app().await;
    app.sign_in("carol").await;
    let first = app.sealed_refresh_token("carol").await.unwrap();
    // Google sends no refresh token on a second consent to the same client.
    let code = app.auth_code("carol");
    let (status, body) = app.post_code(&code).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "active");
    assert_eq!(app.sealed_refresh_token("carol").await.unwrap(), first);
    app.stop().await;
}

#[tokio::test]
async fn a_new_refresh_token_replaces_the_old_one_and_reactivates_the_user() {
    let app = spawn_app().await;
    app.sign_in("dave").await;
    let first = app.sealed_refresh_token("dave").await.unwrap();
    sqlx::query(
        "UPDATE users SET state = 'reauth_required', last_error = 'revoked' WHERE sub = 'dave'",
    )
    .execute(app.store.pool())
    .await
    .unwrap();
    let code = app.mint(MintCode {
        sub: "dave".into(),
        prompt_consent: true,
        ..Default::default()
    });
    let (status, body) = app.post_code(&code).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "active");
    assert_ne!(app.sealed_refresh_token("dave").await.unwrap(), first);
    app.stop().await;
}

#[tokio::test]
async fn a_reauth_required_user_signing_in_without_refresh_token_gets_409() {
    let app = spawn_app().await;
    app.sign_in("erin").await;
    sqlx::query("UPDATE users SET state = 'reauth_required' WHERE sub = 'erin'")
        .execute(app.store.pool())
        .await
        .unwrap();
    let before = app.db_snapshot().await;
    let (status, body) = app.post_code(&app.auth_code("erin")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "no_refresh_token");
    assert_eq!(app.db_snapshot().await, before);
    app.stop().await;
}

#[tokio::test]
async fn a_user_with_no_refresh_token_at_all_gets_409_and_nothing_is_stored() {
    let app = spawn_app().await;
    // The user consented before (elsewhere), so Google sends no refresh token to us now.
    let earlier = app.auth_code("frank");
    let clients = app.google.clients();
    let resp = app
        .http
        .post(format!("{}/token", app.google.base_url()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", earlier.as_str()),
            ("client_id", clients.web_client_id.as_str()),
            ("client_secret", clients.web_client_secret.as_str()),
            ("redirect_uri", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let before = app.db_snapshot().await;
    let (status, body) = app.post_code(&app.auth_code("frank")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "no_refresh_token");
    assert!(body["message"].as_str().unwrap().contains("consent"));
    assert_eq!(app.db_snapshot().await, before);
    app.stop().await;
}

#[tokio::test]
async fn a_replayed_code_is_invalid_grant_and_changes_nothing() {
    let app = spawn_app().await;
    let code = app.auth_code("gina");
    assert_eq!(app.post_code(&code).await.0, 200);
    let before = app.db_snapshot().await;
    let (status, body) = app.post_code(&code).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(app.db_snapshot().await, before);
    app.stop().await;
}

#[tokio::test]
async fn every_forged_id_token_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    app.sign_in("existing").await;
    for attack in [
        IdTokenAttack::BadSignature,
        IdTokenAttack::WrongAud,
        IdTokenAttack::WrongIss,
        IdTokenAttack::WrongAzp,
        IdTokenAttack::Expired,
        IdTokenAttack::FutureIat,
        IdTokenAttack::AlgNone,
        IdTokenAttack::Hs256PublicKey,
        IdTokenAttack::UnknownKid,
        IdTokenAttack::KidPath,
        IdTokenAttack::TamperedPayload,
        IdTokenAttack::RotatedOutKey,
    ] {
        let before = app.db_snapshot().await;
        let code = app.mint(MintCode {
            sub: "mallory".into(),
            id_token_attack: Some(attack),
            ..Default::default()
        });
        let (status, body) = app.post_code(&code).await;
        assert_eq!(status, 401, "{attack:?}: {body}");
        assert_eq!(body["error"], "invalid_id_token", "{attack:?}");
        assert_eq!(
            app.db_snapshot().await,
            before,
            "{attack:?} changed the database"
        );
    }
    assert_eq!(app.user_state("mallory").await, None);
    // The daemon still serves honest users.
    app.sign_in("after-attacks").await;
    app.stop().await;
}

#[tokio::test]
async fn missing_scopes_are_refused_with_the_list() {
    let app = spawn_app().await;
    let before = app.db_snapshot().await;
    let code = app.mint(MintCode {
        sub: "hank".into(),
        scopes: Some(vec!["openid".into(), "email".into(), "profile".into()]),
        ..Default::default()
    });
    let (status, body) = app.post_code(&code).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(
        body["missing_scopes"],
        serde_json::json!(["https://www.googleapis.com/auth/drive.appdata"])
    );
    assert_eq!(app.db_snapshot().await, before);
    app.stop().await;
}

#[tokio::test]
async fn bad_bodies_get_clear_errors_and_change_nothing() {
    let app = spawn_app().await;
    let before = app.db_snapshot().await;
    let form = "application/x-www-form-urlencoded";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (form, b"".to_vec(), 400, "invalid_request"),
        (form, b"authcode=lowercase".to_vec(), 400, "invalid_request"),
        (form, b"authCode=".to_vec(), 400, "invalid_request"),
        (
            form,
            b"authCode=a&authCode=b".to_vec(),
            400,
            "invalid_request",
        ),
        (form, b"authCode=%ZZ%".to_vec(), 400, "invalid_request"),
        (
            form,
            b"authCode=has%20space".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            b"{\"authCode\": 42}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            b"{\"authCode\": \"4/x\"".to_vec(),
            400,
            "invalid_request",
        ),
        ("application/json", b"[]".to_vec(), 400, "invalid_request"),
        (
            "application/json",
            vec![0xff, 0xfe, 0x00],
            400,
            "invalid_request",
        ),
        (
            "text/plain",
            b"authCode=4/abc".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            form,
            format!("authCode={}", "a".repeat(17 * 1024)).into_bytes(),
            413,
            "payload_too_large",
        ),
        (
            form,
            format!("authCode={}", "a".repeat(4000)).into_bytes(),
            400,
            "invalid_request",
        ),
        (
            form,
            b"authCode=4/not-a-real-code".to_vec(),
            400,
            "invalid_grant",
        ),
    ];
    for (ct, body, want_status, want_code) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).to_string();
        let (status, resp) = app.post_raw(ct, body).await;
        assert_eq!(status, want_status, "{ct} {shown}: {resp}");
        assert_eq!(resp["error"], want_code, "{ct} {shown}");
        assert!(resp["message"].is_string(), "{resp}");
    }
    assert_eq!(app.db_snapshot().await, before);
    app.stop().await;
}

#[tokio::test]
async fn google_failing_gives_502_and_stores_nothing() {
    let app = spawn_app().await;
    let before = app.db_snapshot().await;
    app.google.emulator().set_faults(Faults {
        jwks: None,
        token: Some(Fault {
            error_rate: 1.0,
            error_status: Some(500),
            ..Default::default()
        }),
        drive: None,
    });
    let (status, body) = app.post_code(&app.auth_code("ivan")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "upstream_error");
    assert_eq!(app.db_snapshot().await, before);
    app.google.emulator().clear_faults();
    app.sign_in("ivan").await;
    app.stop().await;
}

#[tokio::test]
async fn google_timing_out_gives_504_and_stores_nothing() {
    let app =
        spawn_app_with(|c| c.google.request_timeout = std::time::Duration::from_millis(500)).await;
    let before = app.db_snapshot().await;
    app.google.emulator().set_faults(Faults {
        jwks: None,
        token: Some(Fault {
            latency_ms: 3000,
            ..Default::default()
        }),
        drive: None,
    });
    let (status, body) = app.post_code(&app.auth_code("judy")).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"], "upstream_timeout");
    assert_eq!(app.db_snapshot().await, before);
    app.stop().await;
}

#[tokio::test]
async fn no_token_is_in_plaintext_in_the_database_its_wal_or_the_mirror() {
    let app = spawn_app().await;
    // Short-lived access tokens: the cycle refreshes and caches new ones too.
    app.google.emulator().set_access_token_lifetime(60);
    for i in 0..5 {
        let sub = format!("plain{i}");
        app.google_user(&sub);
        app.google
            .emulator()
            .create_file(&sub, "settings.json", format!("{{\"user\": {i}}}"), None)
            .unwrap();
        app.sign_in(&sub).await;
    }
    assert_eq!(app.cycle().await.ok, 5);
    let mut bytes = crate::helpers::raw_database_bytes(app.dir.path()).await;
    assert!(bytes.len() > 1000, "the database holds the users");
    let mut mirrored = 0;
    for entry in walk(&app.data_dir()) {
        bytes.extend(std::fs::read(entry).unwrap());
        mirrored += 1;
    }
    assert_eq!(
        mirrored, 10,
        "the mirror holds the files and a manifest per user"
    );
    let secrets = app.google.emulator().issued_secrets();
    assert!(secrets.iter().any(|s| s.starts_with("1//")));
    assert!(secrets.iter().any(|s| s.starts_with("ya29.")));
    for secret in secrets {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret issued by Google is on disk in plaintext"
        );
    }
    app.stop().await;
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn concurrent_sign_ins_of_one_user_leave_one_credential() {
    let app = spawn_app().await;
    let codes: Vec<String> = (0..20)
        .map(|_| {
            app.mint(MintCode {
                sub: "racer".into(),
                prompt_consent: true,
                ..Default::default()
            })
        })
        .collect();
    let results = futures::future::join_all(codes.iter().map(|c| app.post_code(c))).await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials WHERE sub = 'racer'")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    for path in ["healthz", "readyz"] {
        let resp = app
            .http
            .get(format!("{}/{path}", app.intake))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn codes_minted_for_another_client_or_project_are_refused() {
    let app = spawn_app().await;
    let before = app.db_snapshot().await;
    // Issued to the web client, not to one of our Android apps: the ID token's azp says so.
    let web = app.google.emulator().clients().web_client_id;
    let code = app.mint(MintCode {
        sub: "elsewhere".into(),
        client_id: Some(web),
        ..Default::default()
    });
    let (status, body) = app.post_code(&code).await;
    assert_eq!(status, 401, "{body}");
    // Issued by another project's Google: our client cannot redeem it.
    let other = crate::helpers::google().await;
    other
        .emulator()
        .create_user(fake_google::NewUser {
            sub: "elsewhere".into(),
            ..Default::default()
        })
        .unwrap();
    let code = other
        .emulator()
        .mint_auth_code(MintCode {
            sub: "elsewhere".into(),
            ..Default::default()
        })
        .unwrap();
    let (status, body) = app.post_code(&code).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert_eq!(app.db_snapshot().await, before);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_sign_ins_fifty_of_them_one_user_all_land_once() {
    // Google's own deadline (the suite's is 2 s): the emulator signs 500 ID tokens on the
    // same two cores.
    let app =
        spawn_app_with(|c| c.google.request_timeout = std::time::Duration::from_secs(10)).await;
    let mut codes: Vec<String> = (0..450)
        .map(|i| app.auth_code(&format!("crowd{i:03}")))
        .collect();
    codes.extend((0..50).map(|_| {
        app.mint(MintCode {
            sub: "popular".into(),
            prompt_consent: true,
            ..Default::default()
        })
    }));
    let results = futures::future::join_all(codes.iter().map(|c| app.post_code(c))).await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    let pool = app.store.pool();
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    assert_eq!(count("SELECT COUNT(*) FROM users").await, 451);
    assert_eq!(count("SELECT COUNT(*) FROM credentials").await, 451);
    assert_eq!(
        count("SELECT COUNT(*) FROM credentials WHERE sub = 'popular'").await,
        1
    );
    // The refresh token kept is one Google issued and still honours: the user syncs.
    let out = app.cycle().await;
    assert_eq!(out.ok, 451, "{out:?}");
    app.stop().await;
}

/// Sends `head` and then `trickle` a byte every 300 ms; returns what the server answered
/// (empty when it just closed) and how long it let the client take.
async fn trickle(addr: &str, head: &str, trickle: &[u8]) -> (String, std::time::Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = {
        let trickle = trickle.to_vec();
        tokio::spawn(async move {
            for b in trickle {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                if write.write_all(&[b]).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        read.read_to_end(&mut answer),
    )
    .await;
    writer.abort();
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_the_intake_keeps_serving() {
    let app = spawn_app().await;
    let addr = app.intake.trim_start_matches("http://").to_string();
    let body = format!("authCode={}", app.auth_code("trickled"));
    let headers = "POST /authcode HTTP/1.1\r\nHost: x\r\n";
    let body_head = format!(
        "POST /authcode HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let endless_headers = "X-Slow: ".to_string() + &"a".repeat(200);
    let (slow_headers, slow_body, _) = tokio::join!(
        trickle(&addr, headers, endless_headers.as_bytes()),
        trickle(&addr, &body_head, body.as_bytes()),
        // Meanwhile others are served.
        app.sign_in("meanwhile"),
    );
    let limit = std::time::Duration::from_secs(25);
    assert!(
        slow_headers.1 < limit,
        "headers trickled for {:?}",
        slow_headers.1
    );
    assert!(
        !slow_headers.0.contains("200 OK"),
        "trickled headers: {}",
        slow_headers.0
    );
    assert!(slow_body.1 < limit, "body trickled for {:?}", slow_body.1);
    assert!(
        slow_body.0.starts_with("HTTP/1.1 408"),
        "trickled body: {}",
        slow_body.0
    );
    assert!(slow_body.0.contains("request_timeout"), "{}", slow_body.0);
    assert_eq!(app.user_state("trickled").await, None);
    app.stop().await;
}
