//! The data API's writes as a backend makes them: PUT and DELETE by path and by id, queued
//! (202) or carried out at once (`sync=now`), with `If-Match`/`If-None-Match`, and every refusal
//! the document lists, each checked against Drive (fake-google) as well as against
//! docs/openapi.json. Run from `api::openapi_document_and_server_agree`, whose coverage check
//! needs every answer in one process.

use appdata_syncd::config::Config;
use serde_json::Value;

use crate::api::{md5_hex, Fixture};
use crate::helpers::{spawn_app_with, ApiClient, ApiResponse, TestApp};

fn etag(content: &[u8]) -> String {
    format!("\"{}\"", md5_hex(content))
}

fn is(r: &ApiResponse, status: u16, code: &str) {
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (status, code),
        "{}",
        String::from_utf8_lossy(&r.bytes)
    );
}

/// The write a 200 or 202 answer (or a 409/502 with `write`) carries.
fn write_of(r: &ApiResponse) -> Value {
    let body = r.json();
    if body.get("write").is_some() {
        body["write"].clone()
    } else {
        body
    }
}

pub(crate) async fn exercise(app: &TestApp, read_only: &ApiClient, f: &Fixture) {
    let api = app.api_client(true).await;
    refusals_before_anything_is_queued(&api, read_only, f).await;
    puts(app, &api, f).await;
    deletes(app, &api, f).await;
    lookups(&api).await;
    failures_drive_refuses(app, &api).await;
}

/// Keys, parameters, preconditions and types are checked before anything is queued.
async fn refusals_before_anything_is_queued(api: &ApiClient, read_only: &ApiClient, f: &Fixture) {
    let by_id = |id: &str| format!("/v1/users/api1/files/{id}/content");
    let targets = [
        "/v1/users/api1/content?path=x.json".to_string(),
        by_id(&f.settings),
    ];
    let nokey = api.with_key("");
    for target in &targets {
        for method in ["PUT", "DELETE"] {
            let body = (method == "PUT").then(|| b"{}".to_vec());
            is(
                &nokey.request(method, target, &[], body.clone()).await,
                401,
                "unauthorized",
            );
            let r = read_only.request(method, target, &[], body).await;
            is(&r, 403, "read_only_key");
        }
    }
    let put = |target: String, headers: Vec<(&'static str, String)>, body: &[u8]| {
        let body = body.to_vec();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            api.request("PUT", &target, &headers, Some(body)).await
        }
    };
    let path = |p: &str| format!("/v1/users/api1/content?path={p}");
    let star = || vec![("if-match", "*".to_string())];
    // Bad parameters.
    is(
        &put(path("docs//x.json"), vec![], b"{}").await,
        400,
        "invalid_path",
    );
    is(
        &put(format!("{}&sync=later", path("x.json")), vec![], b"{}").await,
        400,
        "invalid_query",
    );
    is(
        &put(format!("{}?sync=soon", by_id(&f.settings)), vec![], b"{}").await,
        400,
        "invalid_query",
    );
    // Nothing to write to.
    is(
        &put("/v1/users/nobody/content?path=x.json".into(), vec![], b"{}").await,
        404,
        "unknown_user",
    );
    is(
        &put(path("nofolder/x.json"), vec![], b"{}").await,
        404,
        "unknown_parent",
    );
    is(
        &put(by_id("no-such-id"), star(), b"{}").await,
        404,
        "unknown_file",
    );
    // Not a file, or not one file.
    let r = put(path("docs"), star(), b"{}").await;
    is(&r, 409, "not_writable");
    assert_eq!(r.json()["kind"], "folder");
    is(
        &put(by_id(&f.notes), star(), b"{}").await,
        409,
        "not_writable",
    );
    let r = put(path("dup.txt"), star(), b"x").await;
    is(&r, 409, "ambiguous_path");
    assert_eq!(r.json()["ids"].as_array().map(Vec::len), Some(2));
    // sync=now needs an active user (api3 is paused).
    let r = put(
        "/v1/users/api3/content?path=x.json&sync=now".into(),
        vec![],
        b"{}",
    )
    .await;
    is(&r, 409, "invalid_state");
    is(
        &put(
            "/v1/users/api3/files/any/content?sync=now".into(),
            vec![],
            b"{}",
        )
        .await,
        409,
        "invalid_state",
    );
    // Preconditions: required for an existing item, and checked against the mirror.
    let r = put(path("settings.json"), vec![], b"{}").await;
    is(&r, 428, "precondition_required");
    assert_eq!(r.json()["file_id"], f.settings.as_str());
    is(
        &put(by_id(&f.settings), vec![], b"{}").await,
        428,
        "precondition_required",
    );
    let stale = vec![("if-match", etag(b"an older version"))];
    let r = put(path("settings.json"), stale.clone(), b"{}").await;
    is(&r, 412, "precondition_failed");
    assert_eq!(r.json()["md5"], md5_hex(br#"{"theme":"dark"}"#));
    is(
        &put(by_id(&f.settings), stale, b"{}").await,
        412,
        "precondition_failed",
    );
    let create_only = vec![("if-none-match", "*".to_string())];
    is(
        &put(path("settings.json"), create_only, b"{}").await,
        412,
        "precondition_failed",
    );
    // Content: a Google-native type or a multipart form is not a file's content; over
    // max_file_bytes (1 MiB here) is refused before it is spooled.
    let native = vec![(
        "content-type",
        "application/vnd.google-apps.document".to_string(),
    )];
    is(
        &put(path("y.doc"), native.clone(), b"x").await,
        415,
        "unsupported_media_type",
    );
    is(
        &put(by_id(&f.settings), native, b"x").await,
        415,
        "unsupported_media_type",
    );
    let huge = vec![0u8; (1 << 20) + 1];
    let r = put(path("huge.bin"), vec![], &huge).await;
    is(&r, 413, "too_large");
    assert_eq!(r.json()["limit"], 1 << 20);
    is(&put(by_id(&f.big), star(), &huge).await, 413, "too_large");
    // Nothing of the above reached Drive.
    let paths = app_files(api, "api1").await;
    let written = |p: &&String| ["x.json", "huge.bin", "y.doc"].contains(&p.as_str());
    assert!(!paths.iter().any(|p| written(&p)), "{paths:?}");
}

/// Names of the user's files, as the API lists them.
async fn app_files(api: &ApiClient, sub: &str) -> Vec<String> {
    let listing = api.get(&format!("/v1/users/{sub}/files")).await.json();
    listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

async fn puts(app: &TestApp, api: &ApiClient, f: &Fixture) {
    let g = app.google.emulator();
    // Queued: a create, carried out by the user's next sync.
    let r = api
        .request(
            "PUT",
            "/v1/users/api1/content?path=docs/queued.json",
            &[("if-none-match", "*"), ("content-type", "application/json")],
            Some(b"[\"q\"]".to_vec()),
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.bytes));
    let queued = r.json();
    assert_eq!(queued["state"], "pending");
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/writes/{}", queued["id"]).as_str())
    );
    // At once: a create by path, then a replace by id; each answers its ETag.
    let r = api
        .request(
            "PUT",
            "/v1/users/api1/content?path=docs/now.json&sync=now",
            &[("content-type", "application/json")],
            Some(b"{\"now\":1}".to_vec()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    assert_eq!(r.header("etag"), Some(etag(b"{\"now\":1}").as_str()));
    let now_id = r.json()["file_id"].as_str().unwrap().to_string();
    assert_eq!(g.file_content("api1", &now_id).unwrap(), "{\"now\":1}");
    let r = api
        .request(
            "PUT",
            &format!("/v1/users/api1/files/{}/content?sync=now", f.settings),
            &[("if-match", &etag(br#"{"theme":"dark"}"#))],
            Some(br#"{"theme":"light"}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    assert_eq!(
        g.file_content("api1", &f.settings).unwrap(),
        r#"{"theme":"light"}"#
    );
    // The sync that carried out the replace carried out the queued create too.
    let created = api
        .get(&format!("/v1/writes/{}", queued["id"]))
        .await
        .json();
    assert_eq!(created["state"], "done", "{created}");
    let created_id = created["file_id"].as_str().unwrap();
    assert_eq!(g.file_content("api1", created_id).unwrap(), "[\"q\"]");
    // By id, queued.
    let r = api
        .request(
            "PUT",
            &format!("/v1/users/api1/files/{now_id}/content"),
            &[("if-match", "*")],
            Some(b"{\"now\":2}".to_vec()),
        )
        .await;
    assert_eq!(r.status, 202);
    // A conflict: the phone changed settings.json on Drive after the backend read it. Carried
    // out at once, the write conflicts and the phone's version stays, by path and by id.
    let mut seen = br#"{"theme":"light"}"#.to_vec();
    for (i, target) in [
        "/v1/users/api1/content?path=settings.json&sync=now".to_string(),
        format!("/v1/users/api1/files/{}/content?sync=now", f.settings),
    ]
    .into_iter()
    .enumerate()
    {
        let phone = format!(r#"{{"theme":"phone {i}"}}"#);
        g.update_file("api1", &f.settings, phone.clone()).unwrap();
        let r = api
            .request(
                "PUT",
                &target,
                &[("if-match", &etag(&seen))],
                Some(b"{}".to_vec()),
            )
            .await;
        is(&r, 409, "conflict");
        assert_eq!(write_of(&r)["state"], "conflict");
        seen = phone.into_bytes();
    }
    assert_eq!(g.file_content("api1", &f.settings).unwrap(), seen);
}

async fn deletes(app: &TestApp, api: &ApiClient, f: &Fixture) {
    let g = app.google.emulator();
    let del = |target: String, if_match: Option<String>| async move {
        let headers: Vec<(&str, &str)> =
            if_match.iter().map(|v| ("if-match", v.as_str())).collect();
        api.request("DELETE", &target, &headers, None).await
    };
    let path = |p: &str| format!("/v1/users/api1/content?path={p}");
    let by_id = |id: &str| format!("/v1/users/api1/files/{id}/content");
    // Refusals.
    is(&del(path(""), None).await, 400, "invalid_path");
    is(
        &del(format!("{}?sync=x", by_id(&f.big)), None).await,
        400,
        "invalid_query",
    );
    is(&del(path("not-there.txt"), None).await, 404, "unknown_path");
    is(&del(by_id("no-such-id"), None).await, 404, "unknown_file");
    is(
        &del(path("docs/2026"), Some("*".into())).await,
        409,
        "not_writable",
    );
    is(
        &del(by_id(&f.docs), Some("*".into())).await,
        409,
        "not_writable",
    );
    is(
        &del(path("big.bin"), None).await,
        428,
        "precondition_required",
    );
    is(
        &del(by_id(&f.big), None).await,
        428,
        "precondition_required",
    );
    let stale = Some(etag(b"not the content"));
    is(
        &del(path("big.bin"), stale.clone()).await,
        412,
        "precondition_failed",
    );
    is(&del(by_id(&f.big), stale).await, 412, "precondition_failed");
    // Queued by path; at once by id (which carries out the queued one too).
    let r = del(path("docs/a.json"), Some(etag(b"[1,2,3]"))).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.bytes));
    let queued = r.json()["id"].as_i64().unwrap();
    let r = del(format!("{}?sync=now", by_id(&f.b_txt)), Some(etag(b"bee"))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let done = api.get(&format!("/v1/writes/{queued}")).await.json();
    assert_eq!(done["state"], "done", "{done}");
    let left: Vec<String> = g
        .list_files("api1")
        .unwrap()
        .into_iter()
        .map(|f| f.id)
        .collect();
    assert!(
        !left.contains(&f.a_json) && !left.contains(&f.b_txt),
        "{left:?}"
    );
    // Queued by id; at once by path (the same sync carries out both).
    let r = del(by_id(&f.dups[0]), Some("*".into())).await;
    assert_eq!(r.status, 202);
    let r = del(
        format!("{}&sync=now", path("docs/now.json")),
        Some("*".into()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let names: Vec<String> = g
        .list_files("api1")
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(
        names.iter().filter(|n| *n == "dup.txt").count(),
        1,
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n == "now.json"), "{names:?}");
    // Conflicts: big.bin changed on Drive since the version each delete names.
    let mut seen = f.big_content.clone();
    for (i, target) in [
        format!("{}&sync=now", path("big.bin")),
        format!("{}?sync=now", by_id(&f.big)),
    ]
    .into_iter()
    .enumerate()
    {
        let phone = format!("changed on the phone, {i}");
        g.update_file("api1", &f.big, phone.clone()).unwrap();
        let r = del(target, Some(etag(&seen))).await;
        is(&r, 409, "conflict");
        seen = phone.into_bytes();
    }
    assert!(
        g.file_content("api1", &f.big).is_ok(),
        "the phone's big.bin stays"
    );
}

async fn lookups(api: &ApiClient) {
    is(
        &api.get("/v1/writes/not-a-number").await,
        400,
        "invalid_path",
    );
    is(&api.get("/v1/writes/999999999").await, 404, "unknown_write");
}

/// Drive refuses every change of api2's files for good (403 insufficientFilePermissions): a
/// write carried out at once answers 502 `write_failed`, with the write, and is not retried.
async fn failures_drive_refuses(app: &TestApp, api: &ApiClient) {
    let g = app.google.emulator();
    let settings = g
        .list_files("api2")
        .unwrap()
        .into_iter()
        .find(|f| f.name == "settings.json")
        .unwrap();
    g.set_read_only("api2", true).unwrap();
    let star = ("if-match", "*");
    let create = ("if-none-match", "*");
    let by_id = format!("/v1/users/api2/files/{}/content?sync=now", settings.id);
    for (method, target, condition, body) in [
        (
            "PUT",
            "/v1/users/api2/content?path=new.json&sync=now",
            create,
            Some(b"{}".to_vec()),
        ),
        ("PUT", by_id.as_str(), star, Some(b"{}".to_vec())),
        (
            "DELETE",
            "/v1/users/api2/content?path=settings.json&sync=now",
            star,
            None,
        ),
        ("DELETE", by_id.as_str(), star, None),
    ] {
        let r = api.request(method, target, &[condition], body).await;
        is(&r, 502, "write_failed");
        let write = write_of(&r);
        assert_eq!(write["state"], "failed");
        assert!(
            write["error"]
                .as_str()
                .unwrap()
                .contains("insufficientFilePermissions"),
            "{write}"
        );
    }
    g.set_read_only("api2", false).unwrap();
    assert_eq!(g.file_content("api2", &settings.id).unwrap(), "{}");
}

/// Under the mirror's free-space floor, writes are refused with 507 before any byte is
/// spooled (a floor no disk meets stands in for a full disk).
pub(crate) async fn exercise_a_full_disk() {
    let api_on = |c: &mut Config| c.api.listen = Some("127.0.0.1:0".into());
    let app = spawn_app_with(api_on).await;
    app.sign_in("full1").await;
    let file = app
        .google
        .emulator()
        .put_file("full1", "a.json", "{}", None)
        .unwrap();
    app.cycle_and_sequence().await;
    // The disk fills up after the file was mirrored.
    let app = app
        .restart_with(|c| {
            api_on(c);
            c.sync.min_free_disk_bytes = u64::MAX / 2;
        })
        .await;
    let g = app.google.emulator();
    let api = app.api_client(true).await;
    let r = api
        .request(
            "PUT",
            "/v1/users/full1/content?path=b.json",
            &[],
            Some(b"{}".to_vec()),
        )
        .await;
    is(&r, 507, "insufficient_storage");
    let target = format!("/v1/users/full1/files/{}/content", file.id);
    let r = api
        .request("PUT", &target, &[("if-match", "*")], Some(b"[]".to_vec()))
        .await;
    is(&r, 507, "insufficient_storage");
    assert_eq!(g.list_files("full1").unwrap().len(), 1);
    app.stop().await;
}
