//! The data API as the operator's backend uses it: keys, users, files with paths, content by
//! id and by path (ETag, Range), the change feed (cursors, long polls, retention), and every
//! answer checked against docs/openapi.json (see [`crate::openapi`]).

use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use serde_json::Value;

use crate::helpers::{spawn_app_with, ApiClient, TestApp};

const NATIVE_DOC: &str = "application/vnd.google-apps.document";

/// An in-process daemon with the API on a loopback port.
async fn api_app() -> TestApp {
    spawn_app_with(|c| c.api.listen = Some("127.0.0.1:0".into())).await
}

/// Ids of what [`drive_fixture`] made.
pub(crate) struct Fixture {
    pub(crate) settings: String,
    pub(crate) a_json: String,
    pub(crate) b_txt: String,
    pub(crate) docs: String,
    pub(crate) dups: Vec<String>,
    pub(crate) notes: String,
    pub(crate) big: String,
    pub(crate) big_content: Vec<u8>,
}

/// User `api1`: settings.json; docs/a.json and docs/2026/b.txt in folders; two dup.txt at the
/// root; a Google Doc; a 300 KB binary. User `api2` with one file, `api3` paused.
pub(crate) async fn drive_fixture(app: &TestApp) -> Fixture {
    for sub in ["api1", "api2", "api3"] {
        app.sign_in(sub).await;
    }
    let g = app.google.emulator();
    let settings = g
        .put_file(
            "api1",
            "settings.json",
            r#"{"theme":"dark"}"#,
            Some("application/json"),
        )
        .unwrap()
        .id;
    let docs = g.create_folder("api1", "docs", None).unwrap().id;
    let year = g.create_folder("api1", "2026", Some(&docs)).unwrap().id;
    let a_json = g
        .create_file_in(
            "api1",
            Some(&docs),
            "a.json",
            "[1,2,3]",
            Some("application/json"),
        )
        .unwrap()
        .id;
    let b_txt = g
        .create_file_in("api1", Some(&year), "b.txt", "bee", Some("text/plain"))
        .unwrap()
        .id;
    let dups = vec![
        g.create_file("api1", "dup.txt", "one", Some("text/plain"))
            .unwrap()
            .id,
        g.create_file("api1", "dup.txt", "two", Some("text/plain"))
            .unwrap()
            .id,
    ];
    let notes = g
        .create_file_in("api1", None, "notes", "", Some(NATIVE_DOC))
        .unwrap()
        .id;
    let big_content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let big = g
        .create_file(
            "api1",
            "big.bin",
            big_content.clone(),
            Some("application/octet-stream"),
        )
        .unwrap()
        .id;
    g.put_file("api2", "settings.json", "{}", None).unwrap();
    app.cycle_and_sequence().await;
    app.services
        .set_paused("api3", appdata_syncd::services::Pause::Pause)
        .await
        .unwrap();
    Fixture {
        settings,
        a_json,
        b_txt,
        docs,
        dups,
        notes,
        big,
        big_content,
    }
}

pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// Users, one user, the file list: every 2xx and 4xx these routes document.
async fn exercise_users_and_files(api: &ApiClient, f: &Fixture) {
    let page = api.get("/v1/users?limit=2").await;
    assert_eq!(page.status, 200);
    let page = page.json();
    let subs: Vec<&str> = page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["sub"].as_str().unwrap())
        .collect();
    assert_eq!(subs, ["api1", "api2"]);
    let next = page["next_cursor"].as_str().unwrap().to_string();
    let rest = api
        .get(&format!("/v1/users?limit=2&cursor={next}"))
        .await
        .json();
    assert_eq!(rest["users"][0]["sub"], "api3");
    assert!(rest["next_cursor"].is_null(), "the last page: {rest}");
    let paused = api.get("/v1/users?state=paused").await.json();
    assert_eq!(paused["users"].as_array().unwrap().len(), 1);
    assert_eq!(paused["users"][0]["sub"], "api3");
    for bad in [
        "/v1/users?state=sleeping",
        "/v1/users?limit=0",
        "/v1/users?limit=lots",
        "/v1/users?colour=red",
        "/v1/users?cursor=garbage",
    ] {
        assert_eq!(api.get(bad).await.status, 400, "{bad}");
    }

    let user = api.get("/v1/users/api1").await;
    assert_eq!(user.status, 200);
    let user = user.json();
    assert_eq!(user["state"], "active");
    assert_eq!(user["email"], "api1@example.com");
    assert!(
        user["last_sync_at"].is_i64() && user["files"].as_i64() == Some(9),
        "{user}"
    );
    let text = String::from_utf8_lossy(&api.get("/v1/users/api1").await.bytes).to_string();
    assert!(!text.contains("token"), "never a token: {text}");
    assert_eq!(
        api.get("/v1/users/nobody").await.error_code(),
        "unknown_user"
    );
    assert_eq!(api.get("/v1/users/%FF").await.status, 400);

    let files = api.get("/v1/users/api1/files").await;
    assert_eq!(files.status, 200);
    let files = files.json();
    let by_id = |id: &str| -> Value {
        files["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} listed"))
    };
    assert_eq!(by_id(&f.settings)["path"], "settings.json");
    assert_eq!(by_id(&f.a_json)["path"], "docs/a.json");
    assert_eq!(by_id(&f.b_txt)["path"], "docs/2026/b.txt");
    assert_eq!(by_id(&f.docs)["kind"], "folder");
    assert_eq!(by_id(&f.notes)["kind"], "native");
    assert_eq!(by_id(&f.notes)["metadata_only"], true);
    assert_eq!(by_id(&f.a_json)["parent_id"], f.docs.as_str());
    assert_eq!(by_id(&f.a_json)["md5"], md5_hex(b"[1,2,3]").as_str());
    for dup in &f.dups {
        assert_eq!(by_id(dup)["path_ambiguous"], true);
    }
    assert_eq!(by_id(&f.settings)["path_ambiguous"], false);
    assert_eq!(api.get("/v1/users/nobody/files").await.status, 404);
    assert_eq!(api.get("/v1/users/%FF/files").await.status, 400);
}

/// Content by id and by path: 200, 206, 304, 409, 416 and the 4xx of bad input.
async fn exercise_content(api: &ApiClient, f: &Fixture) {
    let r = api.get("/v1/users/api1/content?path=docs/a.json").await;
    assert_eq!((r.status, r.bytes.as_slice()), (200, b"[1,2,3]".as_slice()));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("content-length"), Some("7"));
    let etag = format!("\"{}\"", md5_hex(b"[1,2,3]"));
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let same = api
        .get("/v1/users/api1/content?path=%2Fdocs%2Fa.json")
        .await;
    assert_eq!(same.bytes, b"[1,2,3]");
    let r = api
        .get_with(
            "/v1/users/api1/content?path=docs/a.json",
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!((r.status, r.bytes.len()), (304, 0));
    let by_id = format!("/v1/users/api1/files/{}/content", f.a_json);
    assert_eq!(
        api.get_with(&by_id, &[("if-none-match", &etag)])
            .await
            .status,
        304
    );
    let r = api
        .get_with(&by_id, &[("if-none-match", "\"other\"")])
        .await;
    assert_eq!(r.status, 200);

    let big = format!("/v1/users/api1/files/{}/content", f.big);
    let whole = api.get(&big).await;
    assert_eq!(whole.bytes, f.big_content, "streamed whole");
    let part = api.get_with(&big, &[("range", "bytes=1000-1999")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.bytes, &f.big_content[1000..2000]);
    assert_eq!(part.header("content-range"), Some("bytes 1000-1999/300000"));
    let tail = api.get_with(&big, &[("range", "bytes=-10")]).await;
    assert_eq!(tail.bytes, &f.big_content[299_990..]);
    let by_path_part = api
        .get_with(
            "/v1/users/api1/content?path=big.bin",
            &[("range", "bytes=299999-")],
        )
        .await;
    assert_eq!((by_path_part.status, by_path_part.bytes.len()), (206, 1));
    for path in [big.clone(), "/v1/users/api1/content?path=big.bin".into()] {
        let r = api.get_with(&path, &[("range", "bytes=300000-")]).await;
        assert_eq!(r.status, 416);
        assert_eq!(r.header("content-range"), Some("bytes */300000"));
    }
    let stale = api
        .get_with(&big, &[("range", "bytes=0-9"), ("if-range", "\"old\"")])
        .await;
    assert_eq!((stale.status, stale.bytes.len()), (200, 300_000));

    let amb = api.get("/v1/users/api1/content?path=dup.txt").await;
    assert_eq!(amb.status, 409);
    let mut ids = f.dups.clone();
    ids.sort();
    assert_eq!(amb.json()["ids"], serde_json::json!(ids));
    assert_eq!(amb.error_code(), "ambiguous_path");
    let one = api
        .get(&format!("/v1/users/api1/files/{}/content", f.dups[1]))
        .await;
    assert_eq!(one.bytes, b"two");
    for native in [
        format!("/v1/users/api1/files/{}/content", f.notes),
        "/v1/users/api1/content?path=notes".to_string(),
        "/v1/users/api1/content?path=docs".to_string(),
    ] {
        let r = api.get(&native).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (409, "metadata_only"),
            "{native}"
        );
    }
    for (path, code) in [
        ("/v1/users/api1/content?path=nope.json", "unknown_path"),
        ("/v1/users/api1/files/nope/content", "unknown_file"),
        ("/v1/users/nobody/files/x/content", "unknown_user"),
        ("/v1/users/nobody/content?path=a", "unknown_user"),
    ] {
        let r = api.get(path).await;
        assert_eq!((r.status, r.error_code().as_str()), (404, code), "{path}");
    }
    for bad in [
        "/v1/users/api1/content",
        "/v1/users/api1/content?path=",
        "/v1/users/api1/content?path=a&extra=1",
    ] {
        assert_eq!(api.get(bad).await.status, 400, "{bad}");
    }
    assert_eq!(api.get("/v1/users/%FF/files/x/content").await.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_reads_users_files_and_content_by_id_and_by_path() {
    let app = api_app().await;
    let fixture = drive_fixture(&app).await;
    let api = app.api_client(false).await;
    exercise_users_and_files(&api, &fixture).await;
    exercise_content(&api, &fixture).await;
    // Unknown routes and methods answer in the same JSON shape.
    let r = api.get("/v2/users").await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = api.request("DELETE", "/v1/users/api1", &[], None).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );
    app.stop().await;
}

/// The feed as a consumer follows it: sign-ins, pauses, resumes and forgets in commit order,
/// pages by cursor, a long poll woken by a change, bad and expired cursors.
async fn exercise_feed(app: &TestApp, api: &ApiClient) {
    // Whatever was recorded before is in the feed: the test's changes come after `start`.
    app.services.feed().sequence_once().await.unwrap();
    let start = api.get("/v1/changes/cursor").await;
    assert_eq!(start.status, 200);
    let start = start.json()["cursor"].as_str().unwrap().to_string();
    let empty = api.get(&format!("/v1/changes?cursor={start}")).await.json();
    assert_eq!(empty["changes"], serde_json::json!([]));
    assert_eq!(empty["next_cursor"], start.as_str());

    // A long poll, woken by a sign-in well before its 30 s.
    let poll = {
        let (api, start) = (api.clone(), start.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let r = api
                .get(&format!("/v1/changes?cursor={start}&wait=30s"))
                .await;
            (r.json(), t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.sign_in("feed1").await;
    let (woken, waited) = poll.await.unwrap();
    assert!(waited < Duration::from_secs(10), "woken after {waited:?}");
    assert_eq!(woken["changes"][0]["type"], "user.signed_in");
    assert_eq!(woken["changes"][0]["sub"], "feed1");
    assert_eq!(woken["changes"][0]["state"], "active");

    let services = &app.services;
    use appdata_syncd::services::Pause;
    services.set_paused("feed1", Pause::Pause).await.unwrap();
    services.set_paused("feed1", Pause::Pause).await.unwrap(); // no change: no entry
    services.set_paused("feed1", Pause::Resume).await.unwrap();
    app.sign_in("feed2").await;
    services.forget("feed2").await.unwrap();
    app.services.feed().sequence_once().await.unwrap();

    // Page through two at a time: every change once, in order.
    let mut cursor = start.clone();
    let mut seen = Vec::new();
    loop {
        let page = api
            .get(&format!("/v1/changes?cursor={cursor}&limit=2"))
            .await
            .json();
        let changes = page["changes"].as_array().unwrap().clone();
        if changes.is_empty() {
            break;
        }
        for c in &changes {
            seen.push(format!(
                "{} {}",
                c["type"].as_str().unwrap(),
                c["sub"].as_str().unwrap()
            ));
        }
        assert_eq!(page["next_cursor"], changes.last().unwrap()["cursor"]);
        cursor = page["next_cursor"].as_str().unwrap().to_string();
    }
    assert_eq!(
        seen,
        [
            "user.signed_in feed1",
            "user.paused feed1",
            "user.resumed feed1",
            "user.signed_in feed2",
            "user.forgotten feed2",
        ]
    );
    let none = api
        .get(&format!("/v1/changes?cursor={cursor}&wait=200ms"))
        .await
        .json();
    assert_eq!(none["changes"], serde_json::json!([]));

    for bad in [
        "/v1/changes?cursor=nonsense",
        "/v1/changes?cursor=c1_ffffffff",
        "/v1/changes?limit=5000",
        "/v1/changes?wait=2h",
        "/v1/changes?wait=soon",
        "/v1/changes?since=1",
    ] {
        assert_eq!(api.get(bad).await.status, 400, "{bad}");
    }

    // Retention: prune everything, and the old cursor has lost changes.
    {
        let mut tx = app.store.begin_write().await.unwrap();
        let backend = app.store.backend();
        let future = appdata_syncd::store::now_ms() + 1_000;
        appdata_syncd::store::changes::prune(tx.conn(), backend, future, i64::MAX, 100_000)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let expired = api.get(&format!("/v1/changes?cursor={start}")).await;
    assert_eq!(
        (expired.status, expired.error_code().as_str()),
        (410, "cursor_expired")
    );
    let head = api.get("/v1/changes/cursor").await.json();
    assert_eq!(
        head["cursor"],
        cursor.as_str(),
        "the head is where the consumer is"
    );
    assert_eq!(
        api.get(&format!("/v1/changes?cursor={cursor}"))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_follows_sign_ins_pauses_and_forgets_in_commit_order() {
    let app = api_app().await;
    let api = app.api_client(false).await;
    exercise_feed(&app, &api).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_a_wrong_key_or_a_revoked_key_gets_401_and_nothing_else() {
    let app = api_app().await;
    app.sign_in("keys1").await;
    let api = app.api_client(false).await;
    assert_eq!(api.get("/v1/users/keys1").await.status, 200);
    let nokey = api.with_key("");
    let revoked_key = app
        .services
        .create_api_key("soon-revoked", false)
        .await
        .unwrap()
        .key;
    app.services.revoke_api_key("soon-revoked").await.unwrap();
    for client in [
        nokey.clone(),
        api.with_key("asd_not-a-key"),
        api.with_key(&"x".repeat(5000)),
        api.with_key(&revoked_key),
    ] {
        for path in [
            "/v1/users/keys1",
            "/v1/changes",
            "/v1/nothing-here",
            "/v1/users/keys1/files",
        ] {
            let r = client.get(path).await;
            assert_eq!(
                (r.status, r.error_code().as_str()),
                (401, "unauthorized"),
                "{path}"
            );
            assert!(r.header("www-authenticate").is_some());
            assert!(
                !String::from_utf8_lossy(&r.bytes).contains("keys1@"),
                "nothing served"
            );
        }
    }
    let basic = nokey
        .request(
            "GET",
            "/v1/users",
            &[("authorization", "Basic dXNlcjpwYXNz")],
            None,
        )
        .await;
    assert_eq!(basic.status, 401);

    // The key list shows names and times, never a key or a hash.
    let keys = app.services.api_keys().await.unwrap();
    let listed = serde_json::to_string(&keys).unwrap();
    assert!(listed.contains("soon-revoked") && !listed.contains(&revoked_key[4..20]));
    assert!(keys
        .keys
        .iter()
        .any(|k| k.name == "soon-revoked" && k.revoked_at.is_some()));
    assert!(
        app.services
            .create_api_key("soon-revoked", true)
            .await
            .is_err(),
        "names are not reused"
    );
    assert!(app
        .services
        .create_api_key("bad name!", true)
        .await
        .is_err());
    assert!(app.services.revoke_api_key("never-made").await.is_err());
    app.stop().await;
}

/// The write guard the write routes use: a read-only key gets 403, a write key gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_guard_refuses_read_only_keys_with_403() {
    use appdata_syncd::api::{self, ApiState, WriteKey};
    let app = api_app().await;
    let state = ApiState {
        services: app.services.clone(),
    };
    let router = axum::Router::new()
        .route(
            "/w",
            axum::routing::post(|WriteKey(who): WriteKey| async move { who.name }),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::auth::require_key,
        ))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let read = app
        .services
        .create_api_key("reader", false)
        .await
        .unwrap()
        .key;
    let write = app
        .services
        .create_api_key("writer", true)
        .await
        .unwrap()
        .key;
    let http = reqwest::Client::new();
    let post = |key: String| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("http://{addr}/w"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = post(read).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("read_only_key"), "{body}");
    assert_eq!(post(write).await, (200, "writer".to_string()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_can_listen_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let listen = socket.display().to_string();
    let app = spawn_app_with(move |c| c.api.listen = Some(listen)).await;
    assert_eq!(
        app.api.as_deref(),
        Some(format!("unix:{}", socket.display()).as_str())
    );
    let key = app
        .services
        .create_api_key("unix", false)
        .await
        .unwrap()
        .key;
    let request = format!(
        "GET /v1/changes/cursor HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"cursor\":\"c1_"), "{answer}");
    app.stop().await;
}

#[test]
fn api_config_errors_are_caught_at_start_up() {
    use appdata_syncd::config::{parse_webhook_secret, ApiListen};
    assert!(matches!(
        ApiListen::parse("127.0.0.1:8081"),
        Ok(ApiListen::Tcp(_))
    ));
    assert!(matches!(
        ApiListen::parse("/run/x/api.sock"),
        Ok(ApiListen::Unix(_))
    ));
    assert!(ApiListen::parse("localhost").is_err());
    assert!(ApiListen::parse("run/api.sock").is_err());
    assert!(parse_webhook_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
    assert!(parse_webhook_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
    assert!(parse_webhook_secret("whsec_c2hvcnQ=").is_err(), "too short");
    assert!(parse_webhook_secret("whsec_!!!").is_err());
}

/// docs/openapi.json and the server agree: every documented (route, method, status) is
/// answered by a real request here, and every answer (here and in every other API test) is
/// one the document lists, with a body that matches its schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_and_server_agree() {
    // Writes over 1 MiB are refused (413); the fixture's largest file is 300 KB.
    let app = spawn_app_with(|c| {
        c.api.listen = Some("127.0.0.1:0".into());
        c.sync.max_file_bytes = 1 << 20;
    })
    .await;
    let fixture = drive_fixture(&app).await;
    let api = app.api_client(false).await;
    exercise_users_and_files(&api, &fixture).await;
    exercise_content(&api, &fixture).await;
    exercise_feed(&app, &api).await;
    crate::api_writes::exercise(&app, &api, &fixture).await;
    crate::api_writes::exercise_a_full_disk().await;
    let nokey = api.with_key("");
    for path in crate::openapi::documented()
        .into_iter()
        .map(|(t, _, _)| t)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let concrete = path
            .replace("{sub}", "api1")
            .replace("{file_id}", &fixture.settings);
        assert_eq!(nokey.get(&concrete).await.status, 401, "{concrete}");
    }
    let missing: Vec<_> = crate::openapi::documented()
        .difference(&crate::openapi::covered())
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "docs/openapi.json lists answers no test got: {missing:?}"
    );
    app.stop().await;
}

/// `[api] tls_cert`/`tls_key`: the API serves HTTPS with its own certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_with_the_configured_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let at = |name: &str| certs.path().join(name);
    let (ca, cert, key) = (at("ca.pem"), at("cert.pem"), at("key.pem"));
    std::fs::write(
        at("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    // A test CA, and a leaf for 127.0.0.1 signed by it (rustls refuses a CA as a leaf).
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .current_dir(certs.path())
            .args(args)
            .output()
            .expect("openssl (Debian package openssl) makes the test certificates");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ]
        .iter()
        .chain(&[
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ])
        .copied()
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ]
        .iter()
        .chain(&["-keyout", "key.pem", "-out", "leaf.csr"])
        .copied()
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        ]
        .iter()
        .chain(&[
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "cert.pem",
            "-extfile",
            "leaf.ext",
        ])
        .copied()
        .collect::<Vec<_>>(),
    );
    let (c2, k2) = (cert.clone(), key.clone());
    let app = spawn_app_with(move |c| {
        c.api.listen = Some("127.0.0.1:0".into());
        c.api.tls_cert = Some(c2);
        c.api.tls_key = Some(k2);
    })
    .await;
    let base = app.api.clone().unwrap();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let key = app.services.create_api_key("tls", false).await.unwrap().key;
    let mut api = ApiClient::new(base.clone(), &key);
    let root = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    api.http = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .unwrap();
    let head = api.get("/v1/changes/cursor").await;
    assert_eq!(head.status, 200);
    // Plain HTTP on the TLS port gets no API answer.
    let plain = reqwest::get(base.replace("https://", "http://") + "/v1/changes/cursor").await;
    assert!(plain.map_or(true, |r| !r.status().is_success()));
    app.stop().await;
}

/// Content over a limit is listed as `withheld` and refused as metadata only; the user says
/// why in `over_quota`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_content_is_listed_and_refused_with_its_reason() {
    let app = spawn_app_with(|c| {
        c.api.listen = Some("127.0.0.1:0".into());
        c.sync.max_file_bytes = 1000;
    })
    .await;
    app.sign_in("quota1").await;
    let g = app.google.emulator();
    let small = g
        .put_file("quota1", "small.txt", "0123456789", None)
        .unwrap()
        .id;
    let big = g
        .put_file("quota1", "big.bin", vec![7u8; 5000], None)
        .unwrap()
        .id;
    app.cycle_and_sequence().await;
    let api = app.api_client(false).await;
    let user = api.get("/v1/users/quota1").await.json();
    assert!(user["over_quota"].is_string(), "{user}");
    assert_eq!(user["bytes"], 10, "only mirrored content counts: {user}");
    let files = api.get("/v1/users/quota1/files").await.json();
    let kind = |id: &str| {
        files["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == id)
            .unwrap()["kind"]
            .clone()
    };
    assert_eq!(
        (kind(&small), kind(&big)),
        ("file".into(), "withheld".into())
    );
    let refused = api
        .get(&format!("/v1/users/quota1/files/{big}/content"))
        .await;
    assert_eq!(
        (refused.status, refused.json()["kind"].clone()),
        (409, "withheld".into())
    );
    let by_path = api.get("/v1/users/quota1/content?path=big.bin").await;
    assert_eq!(by_path.error_code(), "metadata_only");
    assert_eq!(
        api.get("/v1/users/quota1/content?path=small.txt")
            .await
            .bytes,
        b"0123456789"
    );
    let page = api.get("/v1/users?limit=10").await.json();
    assert_eq!(page["users"][0]["bytes"], 10, "{page}");
    app.stop().await;
}
