//! Folders, Google-native files, moves, cascading deletes and client-chosen ids, over HTTP.

mod common;

use common::{drive_error, related, Env};
use serde_json::{json, Value};

const FOLDER: &str = "application/vnd.google-apps.folder";
const DOC: &str = "application/vnd.google-apps.document";

impl Env {
    async fn post_json(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn names_in(&self, token: &str, q: &str) -> Vec<String> {
        let path = format!(
            "/drive/v3/files?spaces=appDataFolder&orderBy=name&q={}",
            q.replace(' ', "%20").replace('\'', "%27")
        );
        let (status, body) = self.get_json(&path, token).await;
        assert_eq!(status, 200, "{body}");
        body["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    }
}

#[tokio::test]
async fn metadata_only_create_makes_folders_and_nested_files() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let (status, folder) = env
        .post_json(
            "/drive/v3/files?fields=*",
            &t.access,
            &json!({"name": "notes", "mimeType": FOLDER, "parents": ["appDataFolder"]}),
        )
        .await;
    assert_eq!(status, 200, "{folder}");
    assert_eq!(folder["mimeType"], FOLDER);
    assert!(folder.get("md5Checksum").is_none(), "{folder}");
    assert!(
        folder.get("size").is_none(),
        "folders have no size: {folder}"
    );
    let id = folder["id"].as_str().unwrap();
    let (status, sub) = env
        .post_json(
            "/drive/v3/files",
            &t.access,
            &json!({"name": "2026", "mimeType": FOLDER, "parents": [id]}),
        )
        .await;
    assert_eq!(status, 200);
    let (ct, body) = related(
        &json!({"name": "a.json", "parents": [sub["id"]]}),
        b"{}",
        "application/json",
    );
    let resp = env
        .http
        .post(env.url("/upload/drive/v3/files?uploadType=multipart&fields=id,parents"))
        .bearer_auth(&t.access)
        .header("Content-Type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let leaf: Value = resp.json().await.unwrap();
    assert_eq!(leaf["parents"], json!([sub["id"]]));
    // spaces=appDataFolder lists the whole tree; 'ID' in parents only the children.
    assert_eq!(
        env.names_in(&t.access, "trashed = false").await,
        ["2026", "a.json", "notes"]
    );
    assert_eq!(
        env.names_in(&t.access, &format!("'{id}' in parents")).await,
        ["2026"]
    );
    assert_eq!(
        env.names_in(&t.access, "'appDataFolder' in parents").await,
        ["notes"]
    );
    let (status, body) = env
        .post_json(
            "/drive/v3/files",
            &t.access,
            &json!({"name": "x", "parents": ["1doesNotExist"]}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(drive_error(&body, 404)["reason"], "notFound");
    let (status, body) = env
        .post_json(
            "/drive/v3/files",
            &t.access,
            &json!({"name": "x", "parents": [leaf["id"]]}),
        )
        .await;
    assert_eq!(status, 400, "a file is no parent: {body}");
}

#[tokio::test]
async fn native_files_have_no_md5_and_cannot_be_downloaded() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let emu = env.fg.emulator();
    let folder = emu.create_folder("1", "docs", None).unwrap();
    let doc = emu
        .create_file_in("1", Some(&folder.id), "Plan", "hello", Some(DOC))
        .unwrap();
    assert!(doc.is_google_native() && doc.md5_checksum.is_empty());
    let (_, meta) = env
        .get_json(&format!("/drive/v3/files/{}?fields=*", doc.id), &t.access)
        .await;
    assert!(meta.get("md5Checksum").is_none(), "{meta}");
    assert!(meta.get("headRevisionId").is_none(), "{meta}");
    assert_eq!(meta["size"], "5", "Docs-editors files have a size: {meta}");
    for id in [&doc.id, &folder.id] {
        let (status, body) = env
            .get_json(&format!("/drive/v3/files/{id}?alt=media"), &t.access)
            .await;
        assert_eq!(status, 403);
        assert_eq!(drive_error(&body, 403)["reason"], "fileNotDownloadable");
    }
    // The control API builds the same trees.
    let resp = env
        .http
        .post(env.url(&format!(
            "/_emulator/users/1/files?name=sheet&parent={}",
            folder.id
        )))
        .header("Content-Type", "application/vnd.google-apps.spreadsheet")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = env
        .http
        .post(env.url("/_emulator/users/1/folders"))
        .json(&json!({"name": "sub", "parent": folder.id}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let listed = emu.list_files("1").unwrap();
    assert_eq!(listed.len(), 4);
    assert!(listed
        .iter()
        .all(|f| f.id == folder.id || f.parents == [folder.id.clone()]));
}

#[tokio::test]
async fn update_moves_with_add_and_remove_parents() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let emu = env.fg.emulator();
    let a = emu.create_folder("1", "a", None).unwrap();
    let b = emu.create_folder("1", "b", Some(&a.id)).unwrap();
    let f = emu.create_file("1", "f", "1", None).unwrap();
    let patch = |q: String| {
        env.http
            .patch(env.url(&format!("/drive/v3/files/{q}")))
            .bearer_auth(&t.access)
            .json(&json!({}))
            .send()
    };
    let root = &f.parents[0];
    let resp = patch(format!(
        "{}?addParents={}&removeParents={root}&fields=parents",
        f.id, b.id
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let moved: Value = resp.json().await.unwrap();
    assert_eq!(moved["parents"], json!([b.id]));
    let resp = patch(format!("{}?addParents={}", f.id, a.id))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "one parent only");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(drive_error(&body, 403)["reason"], "cannotAddParent");
    let resp = patch(format!("{}?addParents={}&removeParents={root}", a.id, b.id))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "a folder cannot go under itself");
    let resp = env
        .http
        .patch(env.url(&format!("/drive/v3/files/{}", f.id)))
        .bearer_auth(&t.access)
        .json(&json!({"parents": [a.id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "parents is not writable on update");
    assert_eq!(
        emu.move_file("1", &f.id, None).unwrap().parents,
        vec![root.clone()]
    );
}

#[tokio::test]
async fn deleting_a_folder_deletes_its_descendants_with_a_change_each() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let emu = env.fg.emulator();
    let a = emu.create_folder("1", "a", None).unwrap();
    let b = emu.create_folder("1", "b", Some(&a.id)).unwrap();
    let x = emu
        .create_file_in("1", Some(&b.id), "x", "1", None)
        .unwrap();
    let keep = emu.create_file("1", "keep", "2", None).unwrap();
    let (_, start) = env
        .get_json("/drive/v3/changes/startPageToken", &t.access)
        .await;
    let resp = env
        .http
        .delete(env.url(&format!("/drive/v3/files/{}", a.id)))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let remaining: Vec<_> = emu
        .list_files("1")
        .unwrap()
        .into_iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(remaining, [keep.id]);
    let (_, changes) = env
        .get_json(
            &format!(
                "/drive/v3/changes?spaces=appDataFolder&pageToken={}",
                start["startPageToken"].as_str().unwrap()
            ),
            &t.access,
        )
        .await;
    let mut removed: Vec<_> = changes["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["removed"] == true)
        .map(|c| c["fileId"].as_str().unwrap().to_string())
        .collect();
    removed.sort();
    let mut expected = vec![a.id, b.id, x.id];
    expected.sort();
    assert_eq!(removed, expected);
}

#[tokio::test]
async fn generated_ids_are_usable_once_and_only_by_their_user() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let other = env.sign_in("2").await;
    let (status, body) = env
        .get_json(
            "/drive/v3/files/generateIds?count=3&space=appDataFolder",
            &t.access,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "drive#generatedIds");
    assert_eq!(body["space"], "appDataFolder");
    let ids: Vec<String> = serde_json::from_value(body["ids"].clone()).unwrap();
    assert_eq!(ids.len(), 3);
    let (status, _) = env
        .get_json("/drive/v3/files/generateIds?count=1001", &t.access)
        .await;
    assert_eq!(status, 400);
    let create = |token: String, id: String| {
        let env = &env;
        async move {
            let meta = json!({"id": id, "name": "n", "parents": ["appDataFolder"]});
            env.post_json("/drive/v3/files?fields=id", &token, &meta)
                .await
        }
    };
    let (status, made) = create(t.access.clone(), ids[0].clone()).await;
    assert_eq!((status, made["id"].as_str()), (200, Some(ids[0].as_str())));
    let (status, body) = create(t.access.clone(), ids[0].clone()).await;
    assert_eq!(status, 409);
    assert_eq!(drive_error(&body, 409)["reason"], "fileIdInUse");
    let (status, body) = create(other.access.clone(), ids[1].clone()).await;
    assert_eq!(status, 400, "ids are per user: {body}");
    assert_eq!(drive_error(&body, 400)["reason"], "fileIdNotUsable");
    let (status, _) = create(t.access.clone(), "1thisWasNeverGeneratedByDriveXXXX".into()).await;
    assert_eq!(status, 400);
    // Upload creates take them too.
    let (ct, body) = related(
        &json!({"id": ids[1], "name": "m", "parents": ["appDataFolder"]}),
        b"x",
        "text/plain",
    );
    let resp = env
        .http
        .post(env.url("/upload/drive/v3/files?uploadType=multipart&fields=id"))
        .bearer_auth(&t.access)
        .header("Content-Type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let made: Value = resp.json().await.unwrap();
    assert_eq!(made["id"], ids[1]);
    // Drive-space ids do not work in appDataFolder.
    let (_, body) = env
        .get_json("/drive/v3/files/generateIds?count=1", &t.access)
        .await;
    assert_eq!(body["space"], "drive");
    let (status, _) = create(t.access.clone(), body["ids"][0].as_str().unwrap().into()).await;
    assert_eq!(status, 400);
    assert_eq!(env.fg.emulator().stats().count("files.generateIds"), 3);
}

impl Env {
    async fn upload(&self, token: &str, name: &str, content: &[u8]) -> (u16, Value) {
        let meta = json!({"name": name, "parents": ["appDataFolder"]});
        let (content_type, body) = related(&meta, content, "text/plain");
        let resp = self
            .http
            .post(self.url("/upload/drive/v3/files?uploadType=multipart"))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// Uploads past the storage quota are refused with 403 storageQuotaExceeded; nothing is made.
#[tokio::test]
async fn uploads_past_the_storage_quota_are_refused() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    env.fg.emulator().set_storage_limit("1", Some(10)).unwrap();
    let (status, _) = env.upload(&t.access, "small.txt", b"0123456789").await;
    assert_eq!(status, 200);
    let (status, body) = env.upload(&t.access, "more.txt", b"x").await;
    let item = drive_error(&body, 403);
    assert_eq!(
        (status, item["reason"].as_str()),
        (403, Some("storageQuotaExceeded"))
    );
    assert_eq!(item["domain"], "usageLimits");
    assert_eq!(
        env.names_in(&t.access, "trashed = false").await,
        ["small.txt"]
    );
}

/// With `set_read_only`, creates, updates and deletes answer 403 insufficientFilePermissions
/// (Drive's handle-errors guide); reads still work.
#[tokio::test]
async fn a_read_only_drive_refuses_every_change() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let (_, file) = env.upload(&t.access, "kept.txt", b"kept").await;
    let id = file["id"].as_str().unwrap();
    env.fg.emulator().set_read_only("1", true).unwrap();
    let refused = |status: u16, body: &Value| {
        let item = drive_error(body, 403);
        assert_eq!(
            (status, item["reason"].as_str()),
            (403, Some("insufficientFilePermissions"))
        );
    };
    let (status, body) = env.upload(&t.access, "new.txt", b"new").await;
    refused(status, &body);
    let resp = env
        .http
        .delete(env.url(&format!("/drive/v3/files/{id}")))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    refused(status, &resp.json().await.unwrap());
    let resp = env
        .http
        .patch(env.url(&format!("/upload/drive/v3/files/{id}?uploadType=media")))
        .bearer_auth(&t.access)
        .body("changed")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    refused(status, &resp.json().await.unwrap());
    let (status, _) = env
        .get_json(&format!("/drive/v3/files/{id}"), &t.access)
        .await;
    assert_eq!(status, 200);
    assert_eq!(env.fg.emulator().file_content("1", id).unwrap(), "kept");
}
