//! Webhooks through the real binary: a receiver (an axum server in this test) checks each
//! delivery's Standard Webhooks signature with its own HMAC, refuses some first attempts with
//! 503, and must end up with every change of the feed, deduplicated by `webhook-id`, through a
//! clean restart and a SIGKILL of the daemon.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::Value;

use appdata_syncd::config::{Config, WebhookConfig};

use crate::helpers::{db_pool, free_port, sign_in_via, test_config, Daemon};

/// What the receiver got: per webhook-id, the body and how many attempts it saw.
#[derive(Default)]
pub(crate) struct Received {
    pub(crate) bodies: BTreeMap<String, Value>,
    attempts: HashMap<String, u32>,
    pub(crate) bad_signatures: Vec<String>,
}

/// The receiver's handler state: what it got, and the key it checks signatures with.
type ReceiverState = (Arc<Mutex<Received>>, Arc<Vec<u8>>);

pub(crate) struct Receiver {
    pub(crate) url: String,
    pub(crate) got: Arc<Mutex<Received>>,
}

/// Verifies a delivery the way the docs tell a backend to (docs/data-api.md).
fn verify(key: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(String, Value), String> {
    let get = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .ok_or(format!("no {h}"))
    };
    let (id, ts, sigs) = (
        get("webhook-id")?,
        get("webhook-timestamp")?,
        get("webhook-signature")?,
    );
    let ts: i64 = ts.parse().map_err(|_| "bad timestamp")?;
    if (chrono::Utc::now().timestamp() - ts).abs() > 300 {
        return Err("timestamp too far from now".into());
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if !sigs
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(want.as_str()))
    {
        return Err(format!("signature mismatch for {id}"));
    }
    let json: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok((id, json))
}

/// A receiver on a loopback port; answers 503 to the first attempt of every fourth message.
pub(crate) async fn receiver(key: Vec<u8>) -> Receiver {
    let got: Arc<Mutex<Received>> = Arc::default();
    let state = (got.clone(), Arc::new(key));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            |axum::extract::State((got, key)): axum::extract::State<ReceiverState>,
             headers: HeaderMap,
             body: axum::body::Bytes| async move {
                let mut got = got.lock();
                match verify(&key, &headers, &body) {
                    Ok((id, json)) => {
                        let n = got.attempts.entry(id.clone()).or_default();
                        *n += 1;
                        let seq: u64 = id.trim_start_matches("msg_").parse().unwrap_or(0);
                        if seq.is_multiple_of(4) && *n == 1 {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        got.bodies.insert(id, json);
                        StatusCode::NO_CONTENT
                    }
                    Err(e) => {
                        got.bad_signatures.push(e);
                        StatusCode::UNAUTHORIZED
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app.with_state(state)).await });
    Receiver { url, got }
}

pub(crate) fn webhook_config(
    dir: &Path,
    google: &fake_google::FakeGoogle,
    hook: &str,
) -> (Config, Vec<u8>) {
    let key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let secret = dir.join("webhook.secret");
    let encoded = base64::engine::general_purpose::STANDARD.encode(&key);
    std::fs::write(&secret, format!("whsec_{encoded}\n")).unwrap();
    let mut c = test_config(dir, google);
    c.intake.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    c.api.listen = Some(format!("127.0.0.1:{}", free_port()));
    c.api.webhooks = vec![WebhookConfig {
        name: "backend".into(),
        url: hook.to_string(),
        secret_file: secret,
        events: vec![],
        concurrency: 4,
        timeout: Duration::from_secs(2),
        retry_for: Duration::from_secs(24 * 3600),
    }];
    (c, key)
}

/// Every seq the feed holds, as webhook-ids; `None` while changes wait for their seq.
pub(crate) async fn feed_ids(dir: &Path) -> Option<Vec<String>> {
    let pool = db_pool(dir).await;
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM changes WHERE seq IS NOT NULL ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    let unsequenced: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM changes WHERE seq IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    (unsequenced == 0).then(|| seqs.into_iter().map(|s| format!("msg_{s}")).collect())
}

async fn sign_in_all(google: &fake_google::FakeGoogle, daemon: &Daemon, subs: &[&str]) {
    for sub in subs {
        sign_in_via(google, &daemon.intake, sub).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_every_change_signed_through_a_restart_and_a_sigkill() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    // The receiver's key is the one in the secret file; start it first to know its URL.
    let (probe, key) = webhook_config(dir.path(), &google, "http://unused");
    drop(probe);
    let hook = receiver(key.clone()).await;
    let (config, _) = webhook_config(dir.path(), &google, &hook.url);

    let mut daemon = Daemon::run(dir.path(), config.clone(), &[]).await;
    sign_in_all(&google, &daemon, &["wh01", "wh02", "wh03", "wh04"]).await;
    for cmd in [["pause", "wh01"], ["resume", "wh01"], ["pause", "wh02"]] {
        assert!(daemon.ctl(&cmd).await.ok);
    }
    let status = daemon.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "clean stop: {status}");

    let mut daemon = Daemon::run(dir.path(), config.clone(), &[]).await;
    sign_in_all(&google, &daemon, &["wh05", "wh06", "wh07", "wh08", "wh09"]).await;
    assert!(daemon.ctl(&["resume", "wh02"]).await.ok);
    // Killed with deliveries queued and in flight.
    daemon.kill().await;

    let daemon = Daemon::run(dir.path(), config.clone(), &[]).await;
    sign_in_all(&google, &daemon, &["wh10", "wh11"]).await;

    let deadline = Instant::now() + Duration::from_secs(90);
    let expected = loop {
        let expected = feed_ids(dir.path()).await.unwrap_or_default();
        let have = hook.got.lock().bodies.len();
        if have >= expected.len() && expected.len() >= 15 {
            break expected;
        }
        assert!(
            Instant::now() < deadline,
            "{have} of {} delivered; daemon log tail:\n{}",
            expected.len(),
            daemon
                .logs()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    {
        let got = hook.got.lock();
        assert!(got.bad_signatures.is_empty(), "{:?}", got.bad_signatures);
        let received: Vec<String> = got.bodies.keys().cloned().collect();
        let mut expected_sorted = expected.clone();
        expected_sorted.sort();
        assert_eq!(
            received, expected_sorted,
            "every change, once deduplicated, none unknown"
        );
        let retried = got.attempts.values().filter(|n| **n > 1).count();
        assert!(retried >= 3, "503s were retried ({retried})");
        let sign_ins = got
            .bodies
            .values()
            .filter(|b| b["type"] == "user.signed_in")
            .count();
        assert_eq!(sign_ins, 11);
        for (id, body) in got.bodies.iter() {
            assert_eq!(body["type"], body["data"]["type"], "{id}");
            assert!(body["timestamp"].is_string() && body["data"]["cursor"].is_string());
        }
    }

    // Messages delivered but not recorded when the daemon was killed are sent again once
    // their lease expires (at-least-once): the outbox drains.
    let mut status = Value::Null;
    crate::helpers::eventually("the outbox to drain", Duration::from_secs(60), async || {
        status = daemon.ctl(&["webhooks", "--json"]).await.json();
        status["endpoints"][0]["pending"] == 0
    })
    .await;
    let backend = &status["endpoints"][0];
    assert_eq!(backend["name"], "backend");
    assert!(
        backend["delivered"].as_i64().unwrap() >= expected.len() as i64,
        "{status}"
    );
    assert_eq!(
        hook.got.lock().bodies.len(),
        expected.len(),
        "repeats were deduplicated"
    );
    assert!(backend["last_success_at"].is_i64(), "{status}");
    assert!(
        backend["last_error"].as_str().unwrap_or("").contains("503"),
        "{status}"
    );
    let table = daemon.ctl(&["webhooks"]).await;
    assert!(
        table.stdout.starts_with("NAME") && table.stdout.contains("backend"),
        "{}",
        table.stdout
    );
}

/// `ctl api-key` through the real binary, and the log of refused requests: the key's name when
/// it is known, the peer, never the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_manages_api_keys_and_refusals_are_logged_without_the_key() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let api_port = free_port();
    let daemon = Daemon::start(dir.path(), &google, |c| {
        c.api.listen = Some(format!("127.0.0.1:{api_port}"));
    })
    .await;
    let created = daemon.ctl(&["api-key", "create", "backend-ro"]).await;
    assert!(created.ok, "{}", created.stderr);
    let key = created.stdout.lines().next().unwrap().trim().to_string();
    assert!(key.starts_with("asd_") && key.len() == 47, "{key}");
    let json = daemon
        .ctl(&["api-key", "create", "backend-rw", "--write", "--json"])
        .await
        .json();
    assert_eq!(json["can_write"], true);
    let dup = daemon.ctl(&["api-key", "create", "backend-ro"]).await;
    assert!(
        !dup.ok && dup.stderr.contains("bad_request"),
        "{}",
        dup.stderr
    );

    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{api_port}/v1/changes/cursor");
    let get = |k: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.get(url)
                .bearer_auth(k)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get(key.clone()).await, 200);
    assert!(daemon.ctl(&["api-key", "revoke", "backend-ro"]).await.ok);
    assert_eq!(get(key.clone()).await, 401);
    assert_eq!(get("asd_wrong".into()).await, 401);

    let list = daemon.ctl(&["api-key", "list"]).await;
    assert!(list.stdout.starts_with("NAME"), "{}", list.stdout);
    assert!(list.stdout.contains("backend-ro") && list.stdout.contains("write"));
    // last_used_at is written off the request's path: give it a moment.
    crate::helpers::eventually("last_used_at", Duration::from_secs(10), async || {
        let listed = daemon.ctl(&["api-key", "list", "--json"]).await.json();
        let ro = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "backend-ro")
            .unwrap()
            .clone();
        ro["revoked_at"].is_i64() && ro["last_used_at"].is_i64()
    })
    .await;
    assert!(!list.stdout.contains(&key[4..]));

    // The log line is written before the answer is sent; give the file a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = daemon.logs();
    assert!(
        log.contains("revoked key refused") && log.contains("backend-ro"),
        "the name is logged"
    );
    assert!(
        log.contains("unknown key refused") && log.contains("127.0.0.1"),
        "the peer is logged"
    );
    assert!(!log.contains(&key[4..]), "the key is never logged");
    assert!(!log.contains("asd_wrong"), "nor a wrong one");
}

/// In process: a change reaches a healthy receiver well within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_a_healthy_receiver_within_a_second() {
    let google_dir = tempfile::tempdir().unwrap();
    let key: Vec<u8> = (0..32u8).collect();
    let secret = google_dir.path().join("w.secret");
    let encoded = base64::engine::general_purpose::STANDARD.encode(&key);
    std::fs::write(&secret, format!("whsec_{encoded}")).unwrap();
    let hook = receiver(key).await;
    let url = hook.url.clone();
    let app = crate::helpers::spawn_app_with(move |c| {
        c.api.webhooks = vec![WebhookConfig {
            name: "fast".into(),
            url,
            secret_file: secret,
            events: vec!["user.*".into()],
            concurrency: 2,
            timeout: Duration::from_secs(2),
            retry_for: Duration::from_secs(3600),
        }];
    })
    .await;
    // The first change of the endpoint's life: msg_1, whose seq % 4 != 0 (no forced 503).
    let started = Instant::now();
    app.sign_in("fast1").await;
    crate::helpers::eventually("the webhook", Duration::from_secs(10), async || {
        !hook.got.lock().bodies.is_empty()
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "delivered after {took:?}");
    {
        let got = hook.got.lock();
        let body = got.bodies.values().next().unwrap();
        assert_eq!(body["type"], "user.signed_in");
        assert_eq!(body["data"]["sub"], "fast1");
    }
    app.stop().await;
}

/// Two instances on one PostgreSQL database, one endpoint: with a healthy receiver, every
/// message is delivered exactly once between them (claims take a lease, SKIP LOCKED).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_deliver_each_message_once() {
    let shared = crate::helpers::test_dir();
    let Some(db) = crate::helpers::postgres_or_skip(shared.path()) else {
        return;
    };
    let key: Vec<u8> = (100..132u8).collect();
    let secret = shared.path().join("w.secret");
    let encoded = base64::engine::general_purpose::STANDARD.encode(&key);
    std::fs::write(&secret, format!("whsec_{encoded}")).unwrap();
    let hook = receiver(key).await;
    let config = |c: &mut Config| {
        c.store.url = Some(db.clone());
        c.api.webhooks = vec![WebhookConfig {
            name: "shared".into(),
            url: hook.url.clone(),
            secret_file: secret.clone(),
            events: vec![],
            concurrency: 4,
            timeout: Duration::from_secs(2),
            retry_for: Duration::from_secs(3600),
        }];
    };
    let a = crate::helpers::spawn_app_with(config).await;
    let b = crate::helpers::spawn_app_with(config).await;
    for i in 0..30 {
        let app = if i % 2 == 0 { &a } else { &b };
        app.sign_in(&format!("two{i:02}")).await;
    }
    crate::helpers::eventually("30 deliveries", Duration::from_secs(60), async || {
        hook.got.lock().bodies.len() >= 30
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let got = hook.got.lock();
        assert_eq!(got.bodies.len(), 30);
        // Every fourth message is refused once on purpose: two attempts, no more.
        for (id, n) in &got.attempts {
            let seq: u64 = id.trim_start_matches("msg_").parse().unwrap();
            let want = if seq.is_multiple_of(4) { 2 } else { 1 };
            assert_eq!(*n, want, "{id} was sent {n} times");
        }
    }
    a.stop().await;
    b.stop().await;
}
