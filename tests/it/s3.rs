//! The mirror in S3-compatible object storage (`[sync] mirror_url = "s3://BUCKET/PREFIX"`),
//! against a real S3 server on loopback: moto's server mode, started by `.ci/start-s3`.
//!
//! These tests fail, saying how to start the server, when `APPDATA_SYNCD_TEST_S3_ENDPOINT` is
//! unset; `APPDATA_SYNCD_SKIP_S3=1` skips them instead. Each test uses a bucket of its own.

use std::sync::Arc;

use appdata_syncd::admin::client::AdminClient;
use appdata_syncd::admin::protocol::{Command, Response};
use appdata_syncd::config::MirrorLocation;
use appdata_syncd::sync::mirror::{Mirror, MirrorError};
use fake_google::{Fault, Faults};
use futures::TryStreamExt;
use md5::{Digest, Md5};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::ObjectStore;

use crate::helpers::{spawn_app_with, TestApp};

/// A fresh bucket on the test server, and a client of our own to look into it.
pub(crate) struct Bucket {
    endpoint: String,
    name: String,
    store: Arc<dyn ObjectStore>,
}

const HOW_TO_START: &str = "run `eval \"$(bash .ci/start-s3)\"` (moto's S3 server on \
    127.0.0.1:9000, from PyPI) before `cargo test`, or set APPDATA_SYNCD_SKIP_S3=1 to skip the \
    S3 mirror tests";

/// `None` when the S3 tests are skipped on purpose; panics when the server is missing.
pub(crate) async fn bucket() -> Option<Bucket> {
    if std::env::var("APPDATA_SYNCD_SKIP_S3").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: APPDATA_SYNCD_SKIP_S3=1");
        return None;
    }
    let Ok(endpoint) = std::env::var("APPDATA_SYNCD_TEST_S3_ENDPOINT") else {
        panic!("APPDATA_SYNCD_TEST_S3_ENDPOINT is not set: {HOW_TO_START}");
    };
    // The daemon under test configures its S3 client from the AWS_* variables alone.
    let aws_endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
    assert_eq!(
        aws_endpoint, endpoint,
        "AWS_ENDPOINT_URL must name the test server too (the daemon reads it): {HOW_TO_START}"
    );
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        // Without keys the client would ask a cloud metadata service for credentials.
        assert!(
            std::env::var_os(key).is_some(),
            "{key} is not set: {HOW_TO_START}"
        );
    }
    let name = format!("appdata-syncd-test-{:016x}", rand::random::<u64>());
    // CreateBucket is not part of object_store; moto (like most local servers) accepts it
    // unsigned.
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{name}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("no S3 server answers at {endpoint} ({e}): {HOW_TO_START}"));
    assert!(
        created.status().is_success(),
        "cannot create bucket {name} at {endpoint}: {} {}",
        created.status(),
        created.text().await.unwrap_or_default()
    );
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(&name)
        .with_allow_http(true)
        .build()
        .unwrap();
    Some(Bucket {
        endpoint,
        name,
        store: Arc::new(store),
    })
}

impl Bucket {
    pub(crate) fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.name)
    }

    /// Every content key under `prefix` (users' manifests left out), sorted.
    async fn keys(&self, prefix: &str) -> Vec<String> {
        let prefix = Path::from(prefix);
        let mut keys: Vec<String> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location.to_string())
            .try_collect::<Vec<String>>()
            .await
            .unwrap()
            .into_iter()
            .filter(|k| !k.ends_with("/manifest.json"))
            .collect();
        keys.sort();
        keys
    }

    pub(crate) async fn get(&self, key: &str) -> Option<bytes::Bytes> {
        match self.store.get(&Path::from(key)).await {
            Ok(r) => Some(r.bytes().await.unwrap()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("GET {key}: {e}"),
        }
    }

    /// Multipart uploads begun and neither completed nor aborted (S3's ListMultipartUploads).
    async fn pending_uploads(&self) -> usize {
        let body = reqwest::get(format!("{}/{}?uploads", self.endpoint, self.name))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.matches("<Upload>").count()
    }
}

/// `PREFIX/REST`, or `REST` for the bucket's root.
fn key(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}/{rest}")
    }
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// Distinct, incompressible-looking content of `len` bytes.
fn content(seed: u8, len: usize) -> String {
    (0..len)
        .map(|i| (b'a' + ((i * 7 + seed as usize) % 26) as u8) as char)
        .collect()
}

async fn spawn_on(bucket: &Bucket, prefix: &str) -> TestApp {
    let url = bucket.url(prefix);
    spawn_app_with(move |c| c.sync.mirror_url = Some(url)).await
}

/// The objects under `PREFIX/SUB/` are exactly the emulator's files of `sub`, md5 for md5, and
/// the database rows agree.
async fn assert_bucket_matches(app: &TestApp, bucket: &Bucket, prefix: &str, sub: &str) {
    let remote = app.google.emulator().list_files(sub).unwrap();
    let mut conn = app.store.pool().acquire().await.unwrap();
    let rows = appdata_syncd::store::files::list(&mut conn, sub)
        .await
        .unwrap();
    let mut want: Vec<String> = remote
        .iter()
        .map(|f| key(prefix, &format!("{sub}/{}", f.id)))
        .collect();
    want.sort();
    assert_eq!(
        bucket.keys(&key(prefix, sub)).await,
        want,
        "objects of {sub}"
    );
    assert_eq!(rows.len(), remote.len(), "rows of {sub}");
    for f in &remote {
        let object = bucket
            .get(&key(prefix, &format!("{sub}/{}", f.id)))
            .await
            .unwrap();
        assert_eq!(
            md5_hex(&object),
            f.md5_checksum,
            "md5 of {} ({})",
            f.id,
            f.name
        );
        let row = rows.iter().find(|r| r.file_id == f.id).unwrap();
        assert_eq!(row.md5.as_deref(), Some(f.md5_checksum.as_str()));
        assert_eq!(row.local_path, format!("{sub}/{}", f.id));
    }
}

async fn admin(app: &TestApp, command: Command) -> Response {
    let mut client = AdminClient::connect(&app.dir.path().join("admin.sock"))
        .await
        .unwrap();
    client.request(&command, |_| {}).await.unwrap()
}

/// `ctl resync SUB --wait`: syncs now, even a user backing off after a failure.
async fn resync_and_wait(app: &TestApp, sub: &str) -> Response {
    admin(
        app,
        Command::Resync {
            sub: Some(sub.into()),
            all: false,
            full: false,
            wait: true,
        },
    )
    .await
}

async fn user_with_files(app: &TestApp, sub: &str, files: &[(&str, String)]) {
    app.google_user(sub);
    for (name, body) in files {
        app.google
            .emulator()
            .create_file(sub, name, body.clone(), None)
            .unwrap();
    }
    app.sign_in(sub).await;
}

#[tokio::test]
async fn s3_mirror_follows_first_sync_and_incremental_changes() {
    let Some(bucket) = bucket().await else { return };
    let app = spawn_on(&bucket, "fleet/a").await;
    // 9 MiB is past the inline limit: it goes up as a multipart upload.
    let big = content(1, 9 * 1024 * 1024);
    user_with_files(
        &app,
        "s1",
        &[
            ("keep", "1".into()),
            ("change", "old".into()),
            ("drop", "x".into()),
            ("empty", String::new()),
            ("big", big),
        ],
    )
    .await;
    let out = app.cycle().await;
    assert_eq!((out.users, out.ok), (1, 1), "{out:?}");
    assert_bucket_matches(&app, &bucket, "fleet/a", "s1").await;
    assert!(
        !app.dir.path().join("mirror/s1").exists(),
        "nothing is written to the local data_dir"
    );

    let e = app.google.emulator();
    let files = e.list_files("s1").unwrap();
    let id = |name: &str| files.iter().find(|f| f.name == name).unwrap().id.clone();
    e.create_file("s1", "new", "fresh".to_string(), None)
        .unwrap();
    e.update_file("s1", &id("change"), "new content".to_string())
        .unwrap();
    e.update_file("s1", &id("big"), content(2, 9 * 1024 * 1024 + 3))
        .unwrap();
    e.delete_file_by_id("s1", &id("drop")).unwrap();
    e.rename_file("s1", &id("keep"), "kept").unwrap();
    e.reset_stats();
    let out = app.cycle().await;
    assert_eq!(out.ok, 1, "{out:?}");
    assert_bucket_matches(&app, &bucket, "fleet/a", "s1").await;
    assert_eq!(e.stats().count("files.download"), 3, "new, change and big");
    assert_eq!(bucket.pending_uploads().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_cut_download_never_leaves_a_partial_object() {
    // Cut in half, BIG is still past the inline limit: the cut hits a multipart upload.
    const BIG: usize = 18 * 1024 * 1024;
    let Some(bucket) = bucket().await else { return };
    let app = spawn_on(&bucket, "cut").await;
    let e = app.google.emulator();
    user_with_files(
        &app,
        "s2",
        &[("small", "v1".into()), ("big", content(3, BIG))],
    )
    .await;
    assert_eq!(app.cycle().await.ok, 1);
    let before: Vec<(String, String)> = e
        .list_files("s2")
        .unwrap()
        .into_iter()
        .map(|f| (f.id, f.md5_checksum))
        .collect();
    for f in e.list_files("s2").unwrap() {
        e.update_file("s2", &f.id, content(4, f.size as usize + 1))
            .unwrap();
    }
    e.create_file("s2", "fresh", content(5, BIG), None).unwrap();

    // Every Drive response cut in half: the sync fails and the bucket keeps the old content.
    e.set_faults(Faults {
        jwks: None,
        token: None,
        drive: Some(Fault {
            reset_rate: 1.0,
            ..Default::default()
        }),
    });
    let out = app.cycle().await;
    assert_eq!(out.ok, 0, "{out:?}");
    let mut keys = bucket.keys("cut/s2").await;
    let mut old_keys: Vec<String> = before
        .iter()
        .map(|(id, _)| format!("cut/s2/{id}"))
        .collect();
    keys.sort();
    old_keys.sort();
    assert_eq!(keys, old_keys, "no new object appears");
    for (id, md5) in &before {
        let object = bucket.get(&format!("cut/s2/{id}")).await.unwrap();
        assert_eq!(&md5_hex(&object), md5, "{id} keeps its previous content");
    }

    // Half the responses cut: whatever lands is whole, and rows only point at whole content.
    e.set_faults(Faults {
        jwks: None,
        token: None,
        drive: Some(Fault {
            reset_rate: 0.5,
            ..Default::default()
        }),
    });
    for _ in 0..4 {
        resync_and_wait(&app, "s2").await;
        let remote = e.list_files("s2").unwrap();
        for key in bucket.keys("cut/s2").await {
            let id = key.rsplit('/').next().unwrap();
            let md5 = md5_hex(&bucket.get(&key).await.unwrap());
            let new = remote.iter().any(|f| f.id == id && f.md5_checksum == md5);
            let old = before.iter().any(|(i, m)| i == id && *m == md5);
            assert!(new || old, "{key} holds content Drive never had");
        }
        let mut conn = app.store.pool().acquire().await.unwrap();
        for row in appdata_syncd::store::files::list(&mut conn, "s2")
            .await
            .unwrap()
        {
            let object = bucket.get(&format!("cut/{}", row.local_path)).await;
            let object = object.expect("a row points at an object");
            assert_eq!(Some(md5_hex(&object)), row.md5, "{}", row.file_id);
        }
    }
    assert_eq!(
        bucket.pending_uploads().await,
        0,
        "aborted uploads are gone"
    );

    e.clear_faults();
    let resp = resync_and_wait(&app, "s2").await;
    assert_eq!(resp.ok, Some(true), "{resp:?}");
    assert_bucket_matches(&app, &bucket, "cut", "s2").await;
    app.stop().await;
}

#[tokio::test]
async fn forget_removes_the_users_objects_only() {
    let Some(bucket) = bucket().await else { return };
    let app = spawn_on(&bucket, "").await;
    let files = [("a", "1".to_string()), ("b", "2".to_string())];
    user_with_files(&app, "gone", &files).await;
    user_with_files(&app, "stays", &files).await;
    // "gone0" shares a key prefix with "gone" but not a path segment.
    user_with_files(&app, "gone0", &files).await;
    assert_eq!(app.cycle().await.ok, 3);
    assert_eq!(bucket.keys("gone").await.len(), 2);

    let resp = admin(&app, Command::Forget { sub: "gone".into() }).await;
    assert_eq!(resp.ok, Some(true), "{resp:?}");
    assert!(bucket.keys("gone").await.is_empty());
    assert_bucket_matches(&app, &bucket, "", "stays").await;
    assert_bucket_matches(&app, &bucket, "", "gone0").await;
    app.stop().await;
}

/// The mirror itself against the server: a body cut past the inline limit starts a multipart
/// upload, which is aborted, and the previous object stays.
#[tokio::test]
async fn a_cut_multipart_upload_is_aborted() {
    let Some(bucket) = bucket().await else { return };
    let mirror = Mirror::open_location(&MirrorLocation::S3 {
        bucket: bucket.name.clone(),
        prefix: "direct".into(),
    })
    .unwrap();
    mirror.write_bytes("u", "f", b"previous").await.unwrap();
    let full = content(6, 20 * 1024 * 1024).into_bytes();
    let half = &full[..full.len() / 2];
    let mut chunks: Vec<Result<bytes::Bytes, std::io::Error>> = half
        .chunks(256 * 1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    chunks.push(Err(std::io::Error::other("connection reset")));
    let err = mirror
        .write_stream(
            "u",
            "f",
            futures::stream::iter(chunks),
            Some(&md5_hex(&full)),
        )
        .await;
    assert!(matches!(err, Err(MirrorError::Download(_))));
    let truncated = futures::stream::iter(
        half.chunks(256 * 1024)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let err = mirror
        .write_stream("u", "f", truncated, Some(&md5_hex(&full)))
        .await;
    assert!(matches!(err, Err(MirrorError::ChecksumMismatch)));
    assert_eq!(
        bucket.get("direct/u/f").await.unwrap().as_ref(),
        b"previous"
    );
    assert_eq!(bucket.pending_uploads().await, 0);

    let whole = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(full.clone()))]);
    let w = mirror
        .write_stream("u", "f", whole, Some(&md5_hex(&full)))
        .await
        .unwrap();
    assert_eq!(w.size, full.len() as i64);
    assert_eq!(
        md5_hex(&bucket.get("direct/u/f").await.unwrap()),
        md5_hex(&full)
    );
    assert!(mirror.exists("u/f").await);
    assert!(mirror.absolute("u/f").is_none());
    mirror.remove_user("u").await.unwrap();
    assert!(bucket.keys("direct").await.is_empty());
}
