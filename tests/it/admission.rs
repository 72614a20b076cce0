//! The intake under a hostile internet: thousands of idle sockets, an HTTP/2 preface trickled
//! byte by byte, floods of sign-ins, spoofed forwarding headers, clients that hang up after
//! Google has issued a refresh token. Well-behaved apps still sign in; nothing issued is lost.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use appdata_syncd::config::Config;
use fake_google::{Fault, Faults};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{sign_in_via, spawn_app_with, Daemon};

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_sockets_and_an_h2_trickle_keep_neither_sign_ins_nor_syncs_out() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let daemon = Daemon::start(dir.path(), &google, |c: &mut Config| {
        c.intake.max_connections = 256;
        c.intake.first_byte_timeout = Duration::from_secs(30);
    })
    .await;
    let pid = daemon.child.id().unwrap();
    sign_in_via(&google, &daemon.intake, "steady").await;
    google
        .emulator()
        .put_file("steady", "a", "1".to_string(), None)
        .unwrap();
    let before = open_fds(pid);
    let addr: SocketAddr = daemon.intake.trim_start_matches("http://").parse().unwrap();

    // 5,000 sockets that never say a word, and one trickling an HTTP/2 preface.
    let mut idle = Vec::new();
    for _ in 0..5000 {
        if let Ok(s) = TcpStream::connect(addr).await {
            idle.push(s);
        }
    }
    assert!(idle.len() > 4000, "only {} sockets opened", idle.len());
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
        (
            started.elapsed(),
            String::from_utf8_lossy(&buf).into_owned(),
        )
    });

    // A well-behaved app still signs in, a sync still runs, the daemon's descriptors stay bounded.
    sign_in_via(&google, &daemon.intake, "newcomer").await;
    let out = daemon.ctl(&["resync", "--all", "--wait"]).await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let during = open_fds(pid);
    assert!(
        during <= before + 256 + 16,
        "{during} descriptors open (before: {before}, cap 256)"
    );
    let (took, answer) = trickle.await.unwrap();
    assert!(
        took < Duration::from_secs(12),
        "the h2 preface trickle held its connection for {took:?}"
    );
    assert!(!answer.contains("200"), "{answer}");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_sign_ins_is_shed_with_503_and_retry_after() {
    let app = spawn_app_with(|c| {
        c.intake.max_concurrent_signins = 2;
        c.intake.signins_per_client_per_minute = 1000;
    })
    .await;
    // A slow token endpoint: sign-ins pile up.
    app.google.emulator().set_faults(Faults {
        token: Some(Fault {
            latency_ms: 800,
            ..Default::default()
        }),
        ..Default::default()
    });
    let codes: Vec<String> = (0..8)
        .map(|i| app.auth_code(&format!("flood{i}")))
        .collect();
    let (http, url) = (&app.http, format!("{}/authcode", app.intake));
    let url = &url;
    let answers = futures::future::join_all(codes.iter().map(|code| async move {
        http.post(url)
            .form(&[("authCode", code)])
            .send()
            .await
            .unwrap()
    }))
    .await;
    let shed: Vec<_> = answers.iter().filter(|r| r.status() == 503).collect();
    let ok = answers.iter().filter(|r| r.status() == 200).count();
    assert!(ok >= 2, "{ok} sign-ins went through");
    assert!(!shed.is_empty(), "nothing was shed");
    for r in shed {
        assert_eq!(r.headers()["retry-after"], "1");
    }
    app.stop().await;
}

#[tokio::test]
async fn sign_ins_are_limited_per_client_and_forwarding_headers_count_only_from_trusted_proxies() {
    let app = spawn_app_with(|c| c.intake.signins_per_client_per_minute = 2).await;
    let post = |code: String, xff: Option<&'static str>| {
        let mut req = app
            .http
            .post(format!("{}/authcode", app.intake))
            .form(&[("authCode", code)]);
        if let Some(xff) = xff {
            req = req.header("x-forwarded-for", xff);
        }
        req.send()
    };
    for i in 0..2 {
        let r = post(app.auth_code(&format!("rl{i}")), None).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // A third from the same address: 429. Claiming to be someone else does not help: the
    // loopback peer is no trusted proxy.
    let r = post(app.auth_code("rl2"), Some("198.51.100.1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(
        app.user_state("rl2").await,
        None,
        "refused before Google was asked"
    );
    app.stop().await;

    // Behind a trusted proxy, each forwarded client has its own budget.
    let app = spawn_app_with(|c| {
        c.intake.signins_per_client_per_minute = 1;
        c.intake.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    for (i, client) in ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        .iter()
        .enumerate()
    {
        let r = app
            .http
            .post(format!("{}/authcode", app.intake))
            .header("x-forwarded-for", *client)
            .form(&[("authCode", app.auth_code(&format!("px{i}")))])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "client {client}");
    }
    let r = app
        .http
        .post(format!("{}/authcode", app.intake))
        .header("x-forwarded-for", "198.51.100.1")
        .form(&[("authCode", app.auth_code("px9"))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_during_the_exchange_does_not_lose_its_refresh_token() {
    let app = spawn_app_with(|_| {}).await;
    app.google.emulator().set_faults(Faults {
        token: Some(Fault {
            latency_ms: 1500,
            ..Default::default()
        }),
        ..Default::default()
    });
    let code = app.auth_code("hangup");
    let addr = app.intake.trim_start_matches("http://").to_string();
    let body = format!("authCode={code}");
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!(
            "POST /authcode HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Gone while Google is still answering.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    crate::helpers::eventually("the sign-in to land", Duration::from_secs(10), async || {
        app.sealed_refresh_token("hangup").await.is_some()
    })
    .await;
    assert_eq!(app.user_state("hangup").await.as_deref(), Some("active"));
    app.stop().await;
}

/// Google issues a refresh token only on first consent: a sign-in that gets one but cannot
/// store it (no database connection) revokes it, so that the app's retry is a first consent.
#[tokio::test]
async fn a_sign_in_that_cannot_reach_the_database_revokes_the_refresh_token_it_was_issued() {
    let app = spawn_app_with(|_| {}).await;
    let code = app.auth_code("nodb");
    app.store.pool().close().await;
    let (status, body) = app.post_code(&code).await;
    assert!(status >= 500, "{status} {body}");
    let stats = app.google.emulator().stats();
    assert_eq!(stats.count("token"), 1, "{stats:?}");
    assert_eq!(
        stats.count("revoke"),
        1,
        "the issued refresh token was revoked: {stats:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_empty_android_client_list_refuses_to_start_unless_any_client_is_allowed() {
    let google = crate::helpers::google().await;
    let dir = crate::helpers::test_dir();
    let mut config = crate::helpers::test_config(dir.path(), &google);
    config.google.android_client_ids.clear();
    let err = config.clone().resolve().unwrap_err().to_string();
    assert!(err.contains("allow_any_android_client"), "{err}");
    config.google.allow_any_android_client = true;
    assert!(config.resolve().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_intake_speaks_http_1_1_and_closes_silent_handshakes() {
    let dir = crate::helpers::test_dir();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let app = spawn_app_with(|c| {
        c.intake.tls_cert = Some(cert_path.clone());
        c.intake.tls_key = Some(key_path.clone());
        c.intake.first_byte_timeout = Duration::from_secs(1);
    })
    .await;
    let port = app.intake.rsplit(':').next().unwrap().to_string();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let code = app.auth_code("tls");
    let resp = https
        .post(format!("https://localhost:{port}/authcode"))
        .form(&[("authCode", code)])
        .send()
        .await
        .unwrap();
    // reqwest offers h2 and http/1.1 by ALPN; the intake picks http/1.1.
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
    // A client that opens a connection and never starts its handshake is closed.
    let started = Instant::now();
    let mut silent = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    app.stop().await;
}
