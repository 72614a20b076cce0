//! Drive v3 appDataFolder endpoints, over HTTP, checked against Drive's JSON shapes.

mod common;

use common::{drive_error, related, Env};
use serde_json::{json, Value};

const LIST: &str = "/drive/v3/files?spaces=appDataFolder";

#[tokio::test]
async fn list_defaults_to_drives_minimal_fields() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let f = env
        .fg
        .emulator()
        .put_file("1", "a/../b", "x", None)
        .unwrap();
    let (status, body) = env.get_json(LIST, &t.access).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"kind": "drive#fileList", "incompleteSearch": false, "files": [
            {"kind": "drive#file", "id": f.id, "name": "a/../b", "mimeType": "application/octet-stream"}
        ]})
    );
    let (_, body) = env
        .get_json("/drive/v3/files?spaces=drive", &t.access)
        .await;
    assert_eq!(
        body["files"],
        json!([]),
        "appdata files are not in the drive space"
    );
}

#[tokio::test]
async fn full_file_resource_has_drive_types() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    env.fg
        .emulator()
        .put_file("1", "s.json", "hello", Some("application/json"))
        .unwrap();
    let (_, body) = env.get_json(&format!("{LIST}&fields=*"), &t.access).await;
    let f = &body["files"][0];
    assert_eq!(f["size"], "5", "int64 as string");
    assert_eq!(f["md5Checksum"], "5d41402abc4b2a76b9719d911017c592");
    assert!(f["version"].as_str().unwrap().parse::<u64>().is_ok());
    assert_eq!(f["mimeType"], "application/json");
    assert_eq!(f["trashed"], false);
    assert_eq!(f["spaces"], json!(["appDataFolder"]));
    let mt = f["modifiedTime"].as_str().unwrap();
    assert!(mt.ends_with('Z') && mt.len() == 24, "{mt}");
    assert_eq!(f["id"].as_str().unwrap().len(), 33);
    let (_, folder) = env
        .get_json("/drive/v3/files/appDataFolder?fields=id,name", &t.access)
        .await;
    assert_eq!(f["parents"], json!([folder["id"]]));
    assert_eq!(folder["name"], "Application Data");
}

#[tokio::test]
async fn fields_selects_exactly_and_rejects_unknown_names() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    env.fg.emulator().put_file("1", "a", "1", None).unwrap();
    let (_, body) = env
        .get_json(&format!("{LIST}&fields=files(id,md5Checksum)"), &t.access)
        .await;
    let f = body["files"][0].as_object().unwrap();
    assert_eq!(f.keys().collect::<Vec<_>>(), ["id", "md5Checksum"]);
    assert!(body.get("kind").is_none());
    let (_, body) = env
        .get_json(&format!("{LIST}&fields=files/name"), &t.access)
        .await;
    assert_eq!(body, json!({"files": [{"name": "a"}]}));
    let (status, body) = env
        .get_json(&format!("{LIST}&fields=files(id,nonsense)"), &t.access)
        .await;
    assert_eq!(status, 400);
    assert_eq!(drive_error(&body, 400)["location"], "fields");
}

#[tokio::test]
async fn q_filters_and_rejects_what_it_cannot_parse() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let emu = env.fg.emulator();
    emu.create_file("1", "dup", "1", None).unwrap();
    emu.create_file("1", "dup", "2", None).unwrap();
    emu.create_file("1", "it's", "3", None).unwrap();
    let q = |q: &str| format!("{LIST}&q={}", url_escape(q));
    let (_, body) = env
        .get_json(
            &q("name = 'dup' and 'appDataFolder' in parents and trashed = false"),
            &t.access,
        )
        .await;
    assert_eq!(body["files"].as_array().unwrap().len(), 2);
    let (_, body) = env.get_json(&q("name = 'it\\'s'"), &t.access).await;
    assert_eq!(body["files"].as_array().unwrap().len(), 1);
    let (status, body) = env.get_json(&q("name ~ 'dup'"), &t.access).await;
    assert_eq!(status, 400);
    let e = drive_error(&body, 400);
    assert_eq!(
        (e["reason"].as_str(), e["location"].as_str()),
        (Some("invalid"), Some("q"))
    );
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn paging_and_ordering() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    for name in ["c", "a", "b"] {
        env.fg
            .emulator()
            .create_file("1", name, name, None)
            .unwrap();
    }
    let (_, p1) = env
        .get_json(&format!("{LIST}&pageSize=2&orderBy=name desc"), &t.access)
        .await;
    let names: Vec<_> = p1["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].clone())
        .collect();
    assert_eq!(names, [json!("c"), json!("b")]);
    let token = p1["nextPageToken"].as_str().unwrap();
    let (_, p2) = env
        .get_json(
            &format!("{LIST}&pageSize=2&orderBy=name desc&pageToken={token}"),
            &t.access,
        )
        .await;
    assert_eq!(p2["files"][0]["name"], "a");
    assert!(p2.get("nextPageToken").is_none());
    for bad in [
        "pageSize=0",
        "pageSize=1001",
        "pageToken=%21%21",
        "orderBy=size",
    ] {
        let (status, body) = env.get_json(&format!("{LIST}&{bad}"), &t.access).await;
        assert_eq!(status, 400, "{bad}");
        drive_error(&body, 400);
    }
}

#[tokio::test]
async fn get_metadata_media_and_not_found() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let f = env
        .fg
        .emulator()
        .put_file("1", "n", "bytes", Some("text/plain"))
        .unwrap();
    let (_, meta) = env
        .get_json(&format!("/drive/v3/files/{}", f.id), &t.access)
        .await;
    assert_eq!(
        meta,
        json!({"kind": "drive#file", "id": f.id, "name": "n", "mimeType": "text/plain"})
    );
    let resp = env
        .get(&format!("/drive/v3/files/{}?alt=media", f.id), &t.access)
        .await;
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.bytes().await.unwrap(), "bytes");
    let (status, body) = env.get_json("/drive/v3/files/1nope", &t.access).await;
    assert_eq!(status, 404);
    let e = drive_error(&body, 404);
    assert_eq!(e["reason"], "notFound");
    assert_eq!(e["message"], "File not found: 1nope.");
    assert_eq!(body["error"]["message"], "File not found: 1nope.");
    assert_eq!(e["location"], "fileId");
    let stats = env.fg.emulator().stats();
    assert_eq!(stats.count("files.download"), 1);
    assert_eq!(stats.count("files.get"), 2);
}

#[tokio::test]
async fn multipart_create_update_rename_delete() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let meta = json!({"name": "state.bin", "parents": ["appDataFolder"], "mimeType": "application/x-thing"});
    let (ct, body) = related(&meta, b"\x00\x01binary", "application/octet-stream");
    let resp = env
        .http
        .post(env.url(
            "/upload/drive/v3/files?uploadType=multipart&fields=id,name,mimeType,size,version",
        ))
        .bearer_auth(&t.access)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["mimeType"], "application/x-thing");
    assert_eq!(created["size"], "8");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        &env.fg.emulator().file_content("1", &id).unwrap()[..],
        b"\x00\x01binary"
    );

    let resp = env
        .http
        .patch(env.url(&format!(
            "/upload/drive/v3/files/{id}?uploadType=media&fields=version,md5Checksum"
        )))
        .bearer_auth(&t.access)
        .body("v2")
        .send()
        .await
        .unwrap();
    let updated: Value = resp.json().await.unwrap();
    let v = |x: &Value| x["version"].as_str().unwrap().parse::<u64>().unwrap();
    assert!(v(&updated) > v(&created));

    let resp = env
        .http
        .patch(env.url(&format!("/drive/v3/files/{id}")))
        .bearer_auth(&t.access)
        .json(&json!({"name": "renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["name"], "renamed");

    let del = |id: String| {
        env.http
            .delete(env.url(&format!("/drive/v3/files/{id}")))
            .bearer_auth(&t.access)
            .send()
    };
    assert_eq!(del(id.clone()).await.unwrap().status(), 204);
    assert_eq!(del(id).await.unwrap().status(), 404);
}

#[tokio::test]
async fn media_upload_creates_untitled_and_parents_are_enforced() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let resp = env
        .http
        .post(env.url("/upload/drive/v3/files?uploadType=media"))
        .bearer_auth(&t.access)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    let f: Value = resp.json().await.unwrap();
    assert_eq!(
        (f["name"].as_str(), f["mimeType"].as_str()),
        (Some("Untitled"), Some("text/plain"))
    );

    let upload = |meta: Value| {
        let (ct, body) = related(&meta, b"x", "text/plain");
        env.http
            .post(env.url("/upload/drive/v3/files?uploadType=multipart"))
            .bearer_auth(&t.access)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let resp = upload(json!({"name": "x"})).await.unwrap();
    assert_eq!(
        resp.status(),
        403,
        "no parents means My Drive, out of reach"
    );
    let resp = upload(json!({"name": "x", "parents": ["root"]}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = env
        .http
        .post(env.url("/upload/drive/v3/files"))
        .bearer_auth(&t.access)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "uploadType is required");
}

#[tokio::test]
async fn changes_feed_pages_collapses_and_reports_removals() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let emu = env.fg.emulator();
    let (_, start) = env
        .get_json("/drive/v3/changes/startPageToken", &t.access)
        .await;
    assert_eq!(start["kind"], "drive#startPageToken");
    let token = start["startPageToken"].as_str().unwrap().to_string();
    let a = emu.put_file("1", "a", "1", None).unwrap();
    emu.put_file("1", "a", "2", None).unwrap();
    let b = emu.put_file("1", "b", "1", None).unwrap();
    emu.delete_file("1", "b").unwrap();
    let c = emu.create_file("1", "c", "1", None).unwrap();
    emu.rename_file("1", &c.id, "c2").unwrap();

    let path =
        |tok: &str| format!("/drive/v3/changes?spaces=appDataFolder&pageSize=2&pageToken={tok}");
    let (_, p1) = env.get_json(&path(&token), &t.access).await;
    assert_eq!(p1["kind"], "drive#changeList");
    assert!(p1.get("newStartPageToken").is_none());
    let ch = &p1["changes"][0];
    assert_eq!(
        (ch["kind"].as_str(), ch["changeType"].as_str()),
        (Some("drive#change"), Some("file"))
    );
    assert_eq!(ch["fileId"], a.id.as_str());
    assert_eq!(ch["file"]["name"], "a");
    assert_eq!(p1["changes"][1]["fileId"], b.id.as_str());
    assert_eq!(p1["changes"][1]["removed"], true);
    assert!(p1["changes"][1].get("file").is_none());
    let (_, p2) = env
        .get_json(&path(p1["nextPageToken"].as_str().unwrap()), &t.access)
        .await;
    assert_eq!(p2["changes"].as_array().unwrap().len(), 1);
    assert_eq!(p2["changes"][0]["file"]["name"], "c2");
    let next = p2["newStartPageToken"].as_str().unwrap().to_string();
    let (_, idle) = env.get_json(&path(&next), &t.access).await;
    assert_eq!(idle["changes"], json!([]));
    assert_eq!(idle["newStartPageToken"], next.as_str());

    let (_, sel) = env
        .get_json(
            &format!("{}&fields=changes(fileId,file(md5Checksum))", path(&token)),
            &t.access,
        )
        .await;
    assert_eq!(
        sel["changes"][0],
        json!({"fileId": a.id, "file": {"md5Checksum": "c81e728d9d4c2f636f067f89cc14862c"}})
    );
}

#[tokio::test]
async fn bad_future_missing_and_invalidated_page_tokens_are_400() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let (_, start) = env
        .get_json("/drive/v3/changes/startPageToken", &t.access)
        .await;
    let token = start["startPageToken"].as_str().unwrap().to_string();
    for bad in ["garbage", "99999", "-1", ""] {
        let (status, body) = env
            .get_json(
                &format!("/drive/v3/changes?spaces=appDataFolder&pageToken={bad}"),
                &t.access,
            )
            .await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(drive_error(&body, 400)["location"], "pageToken");
    }
    let (status, _) = env
        .get_json("/drive/v3/changes?spaces=appDataFolder", &t.access)
        .await;
    assert_eq!(status, 400);
    env.fg.emulator().invalidate_page_tokens("1");
    let (status, _) = env
        .get_json(
            &format!("/drive/v3/changes?spaces=appDataFolder&pageToken={token}"),
            &t.access,
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn missing_or_bad_credentials_are_googles_401() {
    let env = Env::start().await;
    let _ = env.sign_in("1").await;
    for auth in [
        None,
        Some("Bearer ya29.garbage"),
        Some("Basic Zm9vOmJhcg=="),
    ] {
        let mut req = env.http.get(env.url(LIST));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\""
        );
        let body: Value = resp.json().await.unwrap();
        let e = drive_error(&body, 401);
        assert_eq!(e["reason"], "authError");
        assert_eq!(e["message"], "Invalid Credentials");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Request had invalid authentication credentials."));
        assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
        assert_eq!(e["location"], "Authorization");
        assert_eq!(e["locationType"], "header");
    }
}

#[tokio::test]
async fn token_without_drive_scope_is_403_insufficient_scopes() {
    let env = Env::start().await;
    env.user("1");
    let token = env
        .fg
        .emulator()
        .mint_access_token("1", Some(vec!["email".into()]))
        .unwrap();
    let (status, body) = env.get_json(LIST, &token).await;
    assert_eq!(status, 403);
    let e = drive_error(&body, 403);
    assert_eq!(e["reason"], "insufficientPermissions");
    assert_eq!(e["message"], "Insufficient Permission");
    assert_eq!(
        body["error"]["message"],
        "Request had insufficient authentication scopes."
    );
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
}
