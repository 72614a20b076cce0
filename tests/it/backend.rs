//! The operator's backend, end to end, against the real binary and fake-google: it reads by
//! path and by id, tails the change feed while files change on Drive and through its own
//! writes (a 20 MB file, a conflict, a delete acknowledged just before a SIGKILL), and is sent
//! signed webhooks, through a clean restart and a SIGKILL. The feed consumer must see every
//! change exactly once, in order; the webhook receiver every change, signed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use parking_lot::Mutex;
use serde_json::Value;

use crate::helpers::{sign_in_via, ApiClient, Daemon};
use crate::webhooks::{feed_ids, receiver, webhook_config};

fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// One change as the consumer saw it.
#[derive(Debug, Clone)]
struct Seen {
    seq: i64,
    kind: String,
    sub: String,
    path: Option<String>,
    md5: Option<String>,
    write_id: Option<i64>,
}

fn seq_of(cursor: &str) -> i64 {
    i64::from_str_radix(cursor.trim_start_matches("c1_"), 16).unwrap()
}

/// Tails `GET /v1/changes` with long polls, across the daemon's restarts (a refused
/// connection is retried), keeping every change in the order received.
fn tail_feed(api: ApiClient, seen: Arc<Mutex<Vec<Seen>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut cursor = "c1_0".to_string();
        loop {
            let url = format!("{}/v1/changes?cursor={cursor}&limit=7&wait=2s", api.base);
            let answer = api.http.get(&url).bearer_auth(&api.key).send().await;
            let Ok(resp) = answer else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(page) = resp.json::<Value>().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Some(changes) = page["changes"].as_array() else {
                panic!("a feed page without changes: {page}");
            };
            let mut got = seen.lock();
            for c in changes {
                let text = |k: &str| c[k].as_str().map(String::from);
                got.push(Seen {
                    seq: seq_of(c["cursor"].as_str().unwrap()),
                    kind: text("type").unwrap(),
                    sub: text("sub").unwrap(),
                    path: text("path"),
                    md5: text("md5"),
                    write_id: c["detail"]["write_id"].as_i64(),
                });
            }
            cursor = page["next_cursor"].as_str().unwrap().to_string();
        }
    })
}

/// Waits until the consumer has seen a change matching `want`.
async fn wait_for(seen: &Mutex<Vec<Seen>>, what: &str, want: impl Fn(&Seen) -> bool) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = seen.lock().iter().find(|s| want(s)) {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what}: {:#?}",
            seen.lock()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn resync(daemon: &Daemon, sub: &str) {
    let out = daemon.ctl(&["resync", sub, "--wait"]).await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_reads_follows_and_writes_through_a_restart_and_a_sigkill() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let (probe, key) = webhook_config(dir.path(), &google, "http://unused");
    drop(probe);
    let hook = receiver(key).await;
    let (config, _) = webhook_config(dir.path(), &google, &hook.url);
    let api_base = format!("http://{}", config.api.listen.clone().unwrap());
    let g = google.emulator();

    let mut daemon = Daemon::run(dir.path(), config.clone(), &[]).await;
    sign_in_via(&google, &daemon.intake, "be1").await;
    sign_in_via(&google, &daemon.intake, "be2").await;
    let created = daemon
        .ctl(&["api-key", "create", "backend", "--write", "--json"])
        .await;
    let api = ApiClient::new(api_base, created.json()["key"].as_str().unwrap());
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let tail = tail_feed(api.clone(), seen.clone());

    // The phone app's files, then the first sync.
    let settings = g
        .put_file(
            "be1",
            "settings.json",
            r#"{"v":1}"#,
            Some("application/json"),
        )
        .unwrap();
    let docs = g.create_folder("be1", "docs", None).unwrap();
    let a = g
        .create_file_in(
            "be1",
            Some(&docs.id),
            "a.json",
            "[1]",
            Some("application/json"),
        )
        .unwrap();
    resync(&daemon, "be1").await;
    wait_for(&seen, "docs/a.json added", |s| {
        s.kind == "file.added" && s.path.as_deref() == Some("docs/a.json")
    })
    .await;

    // Reads, by path and by id.
    let r = api.get("/v1/users/be1/content?path=docs/a.json").await;
    assert_eq!((r.status, r.bytes.as_slice()), (200, b"[1]".as_slice()));
    let r = api
        .get(&format!("/v1/users/be1/files/{}/content", settings.id))
        .await;
    assert_eq!(r.bytes, br#"{"v":1}"#);
    let seen_etag = r.header("etag").unwrap().to_string();

    // An edit on Drive reaches the feed.
    g.update_file("be1", &settings.id, r#"{"v":2}"#).unwrap();
    resync(&daemon, "be1").await;
    let updated = wait_for(&seen, "settings.json updated", |s| {
        s.kind == "file.updated" && s.md5.as_deref() == Some(&md5_hex(br#"{"v":2}"#))
    })
    .await;
    assert_eq!(updated.path.as_deref(), Some("settings.json"));

    // A 20 MB write, carried out at once.
    let big: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let put = api
        .request(
            "PUT",
            "/v1/users/be1/content?path=docs/big.bin&sync=now",
            &[("content-type", "application/octet-stream")],
            Some(big.clone()),
        )
        .await;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.bytes));
    let write = put.json();
    assert_eq!(write["state"], "done");
    assert_eq!(write["path"], "docs/big.bin");
    let big_id = write["file_id"].as_str().unwrap().to_string();
    assert_eq!(
        md5_hex(&g.file_content("be1", &big_id).unwrap()),
        md5_hex(&big)
    );
    let back = api.get("/v1/users/be1/content?path=docs/big.bin").await;
    assert_eq!(md5_hex(&back.bytes), md5_hex(&big), "read back whole");
    let write_id = write["id"].as_i64().unwrap();
    wait_for(&seen, "the big write done", |s| {
        s.kind == "write.done" && s.write_id == Some(write_id)
    })
    .await;

    // Stale or missing preconditions are refused at once; nothing is queued.
    let stale = api
        .request(
            "PUT",
            "/v1/users/be1/content?path=settings.json",
            &[("if-match", &seen_etag)],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(
        (stale.status, stale.error_code().as_str()),
        (412, "precondition_failed")
    );
    let blind = api
        .request(
            "PUT",
            "/v1/users/be1/content?path=settings.json",
            &[],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(blind.status, 428);

    // A conflict: the backend writes over the version it read, but the phone changed it on
    // Drive meanwhile. The phone's version stays.
    let current = format!("\"{}\"", md5_hex(br#"{"v":2}"#));
    g.update_file("be1", &settings.id, r#"{"v":"phone"}"#)
        .unwrap();
    let queued = api
        .request(
            "PUT",
            "/v1/users/be1/content?path=settings.json",
            &[("if-match", &current), ("content-type", "application/json")],
            Some(br#"{"v":"backend"}"#.to_vec()),
        )
        .await;
    assert_eq!(queued.status, 202);
    assert_eq!(
        queued.header("location"),
        Some(format!("/v1/writes/{}", queued.json()["id"]).as_str())
    );
    let conflict_id = queued.json()["id"].as_i64().unwrap();
    resync(&daemon, "be1").await;
    let outcome = api.get(&format!("/v1/writes/{conflict_id}")).await.json();
    assert_eq!(outcome["state"], "conflict", "{outcome}");
    assert_eq!(
        g.file_content("be1", &settings.id).unwrap(),
        r#"{"v":"phone"}"#
    );
    wait_for(&seen, "the conflict", |s| {
        s.kind == "write.conflict" && s.write_id == Some(conflict_id)
    })
    .await;

    // A clean restart; then a change of another user.
    let status = daemon.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "clean stop: {status}");
    let mut daemon = Daemon::run(dir.path(), config.clone(), &[]).await;
    g.put_file("be2", "later.txt", "after the restart", Some("text/plain"))
        .unwrap();
    resync(&daemon, "be2").await;
    wait_for(&seen, "be2's later.txt", |s| {
        s.sub == "be2" && s.path.as_deref() == Some("later.txt")
    })
    .await;

    // A delete, acknowledged (202), then SIGKILL before any sync: it is carried out after.
    let a_etag = format!("\"{}\"", md5_hex(b"[1]"));
    let delete = api
        .request(
            "DELETE",
            &format!("/v1/users/be1/files/{}/content", a.id),
            &[("if-match", &a_etag)],
            None,
        )
        .await;
    assert_eq!(delete.status, 202);
    let delete_id = delete.json()["id"].as_i64().unwrap();
    daemon.kill().await;
    let daemon = Daemon::run(dir.path(), config.clone(), &[]).await;
    resync(&daemon, "be1").await;
    wait_for(&seen, "the acknowledged delete", |s| {
        s.kind == "write.done" && s.write_id == Some(delete_id)
    })
    .await;
    let removed = wait_for(&seen, "docs/a.json removed", |s| s.kind == "file.removed").await;
    assert_eq!(removed.path.as_deref(), Some("docs/a.json"));
    assert!(g.list_files("be1").unwrap().iter().all(|f| f.id != a.id));

    // Every change once, in order, to the feed's consumer; every change, signed, to the
    // webhook receiver.
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = loop {
        let expected = feed_ids(dir.path()).await;
        let consumed = seen.lock().len();
        let delivered = hook.got.lock().bodies.len();
        if let Some(ids) = expected.filter(|e| consumed >= e.len() && delivered >= e.len()) {
            break ids;
        }
        assert!(
            Instant::now() < deadline,
            "consumed {consumed}, delivered {delivered}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tail.abort();
    let seen = seen.lock().clone();
    let seqs: Vec<String> = seen.iter().map(|s| format!("msg_{}", s.seq)).collect();
    assert_eq!(
        seqs, expected,
        "the consumer saw each change once, in order"
    );
    let got = hook.got.lock();
    assert!(got.bad_signatures.is_empty(), "{:?}", got.bad_signatures);
    let delivered: Vec<&String> = got.bodies.keys().collect();
    let mut want: Vec<&String> = expected.iter().collect();
    want.sort();
    assert_eq!(delivered, want, "every change delivered");
    for s in &seen {
        let body = &got.bodies[&format!("msg_{}", s.seq)];
        assert_eq!(body["type"], s.kind.as_str());
        assert_eq!(body["data"]["sub"], s.sub.as_str());
    }
    drop(daemon);
}
