//! Downloads (ranges, throttling, cuts) and resumable uploads, over HTTP.

mod common;

use common::{drive_error, Env};
use fake_google::{Fault, Faults};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const KIB256: usize = 256 * 1024;

fn drive_fault(f: Fault) -> Faults {
    Faults {
        drive: Some(f),
        ..Default::default()
    }
}

#[tokio::test]
async fn range_requests_answer_206_and_416() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let f = env
        .fg
        .emulator()
        .put_file("1", "digits", "0123456789", Some("text/plain"))
        .unwrap();
    let get = |range: &'static str| {
        env.http
            .get(env.url(&format!("/drive/v3/files/{}?alt=media", f.id)))
            .bearer_auth(&t.access)
            .header("Range", range)
            .send()
    };
    for (range, part, content_range) in [
        ("bytes=2-5", "2345", "bytes 2-5/10"),
        ("bytes=7-", "789", "bytes 7-9/10"),
        ("bytes=-2", "89", "bytes 8-9/10"),
    ] {
        let resp = get(range).await.unwrap();
        assert_eq!(resp.status(), 206, "{range}");
        assert_eq!(resp.headers()["content-range"], content_range);
        assert_eq!(resp.text().await.unwrap(), part);
    }
    let resp = get("bytes=10-").await.unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(resp.headers()["content-range"], "bytes */10");
    let body: Value = resp.json().await.unwrap();
    drive_error(&body, 416);
    let resp = get("lines=1-2").await.unwrap();
    assert_eq!(resp.status(), 200, "a Range it cannot read is ignored");
    assert_eq!(resp.text().await.unwrap(), "0123456789");
}

#[tokio::test]
async fn throttled_media_is_slow_and_a_cut_body_can_be_resumed_by_range() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let content: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
    let f = env
        .fg
        .emulator()
        .put_file("1", "blob", content.clone(), None)
        .unwrap();
    let media = format!("/drive/v3/files/{}?alt=media", f.id);
    env.fg.emulator().set_faults(drive_fault(Fault {
        body_bytes_per_sec: Some(10_000),
        ..Default::default()
    }));
    let started = Instant::now();
    let (status, _) = env
        .get_json("/drive/v3/files?spaces=appDataFolder", &t.access)
        .await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "JSON is not throttled"
    );
    let started = Instant::now();
    let body = env.get(&media, &t.access).await.bytes().await.unwrap();
    assert_eq!(body.as_ref(), content.as_slice());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "4000 bytes at 10 kB/s: {:?}",
        started.elapsed()
    );
    // Throttled and cut: the client gets half, then the connection goes.
    env.fg.emulator().set_faults(drive_fault(Fault {
        body_bytes_per_sec: Some(100_000),
        reset_rate: 1.0,
        ..Default::default()
    }));
    let resp = env.get(&media, &t.access).await;
    assert_eq!(resp.headers()["content-length"], "4000");
    assert!(resp.bytes().await.is_err(), "the body is cut short");
    env.fg.emulator().clear_faults();
    let resp = env
        .http
        .get(env.url(&media))
        .bearer_auth(&t.access)
        .header("Range", "bytes=2000-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &content[2000..]);
}

/// Opens a resumable session; returns the session URI.
async fn initiate(env: &Env, token: &str, path: &str, meta: Value, len: Option<usize>) -> String {
    let mut req = env
        .http
        .request(
            if path.contains("/files/") {
                reqwest::Method::PATCH
            } else {
                reqwest::Method::POST
            },
            env.url(path),
        )
        .bearer_auth(token)
        .header("X-Upload-Content-Type", "application/octet-stream")
        .json(&meta);
    if let Some(len) = len {
        req = req.header("X-Upload-Content-Length", len);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("upload_id="), "{location}");
    location
}

async fn put(env: &Env, session: &str, range: Option<String>, body: Vec<u8>) -> reqwest::Response {
    let mut req = env.http.put(session).body(body);
    if let Some(r) = range {
        req = req.header("Content-Range", r);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn resumable_upload_in_chunks_with_status_queries() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let total = 2 * KIB256 + 10;
    let content: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let session = initiate(
        &env,
        &t.access,
        "/upload/drive/v3/files?uploadType=resumable&fields=id,name,size,md5Checksum",
        json!({"name": "big.bin", "parents": ["appDataFolder"]}),
        Some(total),
    )
    .await;
    let resp = put(&env, &session, Some(format!("bytes */{total}")), vec![]).await;
    assert_eq!(resp.status(), 308);
    assert!(
        resp.headers().get("range").is_none(),
        "nothing received yet"
    );
    let resp = put(
        &env,
        &session,
        Some(format!("bytes 0-{}/{total}", KIB256 - 1)),
        content[..KIB256].to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["range"], format!("bytes=0-{}", KIB256 - 1));
    let resp = put(&env, &session, Some("bytes */*".into()), vec![]).await;
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["range"], format!("bytes=0-{}", KIB256 - 1));
    // Not a multiple of 256 KiB, and not the last chunk.
    let resp = put(
        &env,
        &session,
        Some(format!("bytes {KIB256}-{}/{total}", KIB256 + 99)),
        content[KIB256..KIB256 + 100].to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let resp = put(
        &env,
        &session,
        Some(format!("bytes {KIB256}-{}/{total}", total - 1)),
        content[KIB256..].to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let file: Value = resp.json().await.unwrap();
    assert_eq!(file["name"], "big.bin");
    assert_eq!(file["size"], total.to_string());
    assert_eq!(
        file.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["id", "md5Checksum", "name", "size"],
        "the initiation's fields apply"
    );
    let id = file["id"].as_str().unwrap();
    assert_eq!(env.fg.emulator().file_content("1", id).unwrap(), content);
    let again = put(&env, &session, Some(format!("bytes */{total}")), vec![]).await;
    assert_eq!(
        again.status(),
        200,
        "a finished session keeps answering the file"
    );
    let stats = env.fg.emulator().stats();
    assert_eq!(stats.counter("resumable.sessions"), 1);
    assert_eq!(stats.counter("resumable.chunks"), 2);
    assert_eq!(stats.counter("resumable.status_queries"), 2);
    assert_eq!(stats.counter("resumable.completed"), 1);
    assert_eq!(stats.count("files.resumable"), 6);
}

#[tokio::test]
async fn resumable_update_in_one_put_and_unknown_or_expired_sessions_are_404() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let emu = env.fg.emulator();
    let f = emu.put_file("1", "s.json", "old", None).unwrap();
    let session = initiate(
        &env,
        &t.access,
        &format!("/upload/drive/v3/files/{}?uploadType=resumable", f.id),
        json!({"name": "renamed.json"}),
        None,
    )
    .await;
    let resp = put(&env, &session, None, b"new content".to_vec()).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["id"].as_str(), body["name"].as_str()),
        (Some(f.id.as_str()), Some("renamed.json"))
    );
    assert_eq!(emu.file_content("1", &f.id).unwrap(), "new content");
    let bogus = session.replace("upload_id=", "upload_id=x");
    let resp = put(&env, &bogus, None, b"x".to_vec()).await;
    assert_eq!(resp.status(), 404);
    let session = initiate(
        &env,
        &t.access,
        "/upload/drive/v3/files?uploadType=resumable",
        json!({"name": "late", "parents": ["appDataFolder"]}),
        Some(1),
    )
    .await;
    emu.advance_clock(Duration::from_secs(8 * 24 * 3600));
    let resp = put(&env, &session, None, b"x".to_vec()).await;
    assert_eq!(resp.status(), 404, "sessions last a week");
    // Metadata is checked when the session opens.
    let resp = env
        .http
        .post(env.url("/upload/drive/v3/files?uploadType=resumable"))
        .bearer_auth(emu.mint_access_token("1", None).unwrap())
        .json(&json!({"name": "x", "parents": ["1missing"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn a_dropped_chunk_keeps_what_arrived_and_the_upload_resumes() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let total = 2 * KIB256 + 5;
    let content: Vec<u8> = (0..total).map(|i| (i % 13) as u8).collect();
    let session = initiate(
        &env,
        &t.access,
        "/upload/drive/v3/files?uploadType=resumable",
        json!({"name": "r.bin", "parents": ["appDataFolder"]}),
        Some(total),
    )
    .await;
    env.fg.emulator().set_faults(drive_fault(Fault {
        reset_rate: 1.0,
        ..Default::default()
    }));
    let sent = env
        .http
        .put(&session)
        .header(
            "Content-Range",
            format!("bytes 0-{}/{total}", 2 * KIB256 - 1),
        )
        .body(content[..2 * KIB256].to_vec())
        .send()
        .await;
    assert!(
        sent.is_err(),
        "the connection is dropped unanswered: {sent:?}"
    );
    env.fg.emulator().clear_faults();
    let resp = put(&env, &session, Some(format!("bytes */{total}")), vec![]).await;
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["range"], format!("bytes=0-{}", KIB256 - 1));
    let resp = put(
        &env,
        &session,
        Some(format!("bytes {KIB256}-{}/{total}", total - 1)),
        content[KIB256..].to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(env.fg.emulator().file_content("1", &id).unwrap(), content);
    assert_eq!(env.fg.emulator().stats().counter("resumable.cut"), 1);
}

#[tokio::test]
async fn multipart_uploads_over_5_mb_are_accepted_as_drive_documents_no_limit() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let content = vec![7u8; 6 * 1024 * 1024];
    let (ct, body) = common::related(
        &json!({"name": "six.bin", "parents": ["appDataFolder"]}),
        &content,
        "application/octet-stream",
    );
    let resp = env
        .http
        .post(env.url("/upload/drive/v3/files?uploadType=multipart&fields=size"))
        .bearer_auth(&t.access)
        .header("Content-Type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let file: Value = resp.json().await.unwrap();
    assert_eq!(file["size"], content.len().to_string());
}
