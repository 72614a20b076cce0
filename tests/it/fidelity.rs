//! Drive and OAuth as Google documents them, where being kinder than Google would break a
//! production daemon on day one: folders and Google-native files, slow and broken downloads,
//! big and retried uploads, per-minute quotas, compression, HTTP/2, expiring refresh tokens,
//! misconfiguration, redirects.

use std::time::Duration;

use fake_google::{Fault, Faults, MintCode};
use md5::{Digest, Md5};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

fn drive_fault(fault: Fault) -> Faults {
    Faults {
        drive: Some(fault),
        ..Default::default()
    }
}

/// The rows of `sub` with their resolved paths, by name.
async fn mirrored(app: &TestApp, sub: &str) -> Vec<(String, appdata_syncd::store::files::FileRow)> {
    let files = app.services.files(sub).await.unwrap().files;
    let paths = appdata_syncd::store::files::paths(&files);
    let mut out: Vec<_> = files
        .into_iter()
        .map(|f| (paths[&f.file_id].clone(), f))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// One tree (folders, a Google Doc, nested files) through a first sync and then incremental
/// changes: kept whole because each phase checks the state the previous one left.
#[tokio::test]
async fn folders_and_google_native_files_are_mirrored_as_metadata_with_paths() {
    let app = spawn_app().await;
    app.google_user("tree");
    let e = app.google.emulator();
    let docs = e.create_folder("tree", "docs", None).unwrap();
    let year = e.create_folder("tree", "2026", Some(&docs.id)).unwrap();
    e.create_file_in("tree", Some(&year.id), "a.json", "{\"a\":1}", None)
        .unwrap();
    let doc = e
        .create_file_in(
            "tree",
            Some(&docs.id),
            "Plan",
            "native",
            Some("application/vnd.google-apps.document"),
        )
        .unwrap();
    e.put_file("tree", "settings.json", "{}", None).unwrap();
    app.sign_in("tree").await;
    let out = app.cycle().await;
    assert_eq!((out.ok, out.failed), (1, 0), "{out:?}");
    app.assert_mirror_matches("tree").await;
    let rows = mirrored(&app, "tree").await;
    let paths: Vec<(&str, bool)> = rows
        .iter()
        .map(|(p, f)| (p.as_str(), f.metadata_only))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("docs", true),
            ("docs/2026", true),
            ("docs/2026/a.json", false),
            ("docs/Plan", true),
            ("settings.json", false),
        ]
    );
    // Drive was never asked for content it does not have.
    assert_eq!(e.stats().user_count("tree", "files.download"), 2);

    // Incrementally: a folder renamed, a file moved out, the Google doc deleted, a new one.
    e.rename_file("tree", &docs.id, "papers").unwrap();
    let a = e
        .list_files("tree")
        .unwrap()
        .into_iter()
        .find(|f| f.name == "a.json")
        .unwrap();
    e.move_file("tree", &a.id, None).unwrap();
    e.delete_file_by_id("tree", &doc.id).unwrap();
    e.create_file_in(
        "tree",
        Some(&year.id),
        "Sheet",
        "",
        Some("application/vnd.google-apps.spreadsheet"),
    )
    .unwrap();
    let out = app.cycle().await;
    assert_eq!((out.ok, out.failed), (1, 0), "{out:?}");
    app.assert_mirror_matches("tree").await;
    let paths: Vec<String> = mirrored(&app, "tree")
        .await
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        paths,
        vec![
            "a.json",
            "papers",
            "papers/2026",
            "papers/2026/Sheet",
            "settings.json"
        ]
    );
    // Deleting a folder deletes what is in it, on Drive and in the mirror.
    e.delete_file_by_id("tree", &docs.id).unwrap();
    app.cycle().await;
    app.assert_mirror_matches("tree").await;
    assert_eq!(mirrored(&app, "tree").await.len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_with_a_google_doc_and_a_50_mb_file_syncs_byte_exact_on_a_drive_throttled_to_2_mb_per_s(
) {
    let app = spawn_app().await;
    app.google_user("big");
    let e = app.google.emulator();
    let folder = e.create_folder("big", "saves", None).unwrap();
    e.create_file_in("big", Some(&folder.id), "slot1.dat", "one", None)
        .unwrap();
    e.create_file_in(
        "big",
        Some(&folder.id),
        "Notes",
        "",
        Some("application/vnd.google-apps.document"),
    )
    .unwrap();
    let mut big: Vec<u8> = Vec::with_capacity(50 * 1024 * 1024);
    let mut x: u32 = 12345;
    while big.len() < 50 * 1024 * 1024 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        big.extend_from_slice(&x.to_le_bytes());
    }
    let big_file = e
        .create_file_in("big", Some(&folder.id), "world.bin", big.clone(), None)
        .unwrap();
    app.sign_in("big").await;
    // 2 MB/s: 25 s for the big file, far beyond the 2 s request timeout of the tests.
    e.set_faults(drive_fault(Fault {
        body_bytes_per_sec: Some(2_000_000),
        ..Default::default()
    }));
    let out = app.cycle().await;
    assert_eq!((out.ok, out.failed), (1, 0), "{out:?}");
    app.assert_mirror_matches("big").await;
    let on_disk = std::fs::read(app.data_dir().join("big").join(&big_file.id)).unwrap();
    assert_eq!(
        md5_hex(&on_disk),
        md5_hex(&big),
        "the 50 MB file is byte-exact"
    );

    // Incrementally: a new nested file, the small one changed; the big one is not fetched again.
    e.reset_stats();
    e.create_file_in("big", Some(&folder.id), "slot2.dat", "two", None)
        .unwrap();
    e.put_file("big", "slot1.dat", "one, changed", None)
        .unwrap();
    let out = app.cycle().await;
    assert_eq!(
        (out.ok, out.failed, out.files_changed),
        (1, 0, 2),
        "{out:?}"
    );
    assert_eq!(e.stats().user_count("big", "files.download"), 2);
    app.assert_mirror_matches("big").await;
    app.stop().await;
}

#[tokio::test]
async fn a_download_that_breaks_every_mebibyte_resumes_with_range_requests() {
    let app = spawn_app().await;
    app.google_user("cut");
    let content: Vec<u8> = (0..(4 * 1024 * 1024 + 512 * 1024))
        .map(|i| (i % 251) as u8)
        .collect();
    app.google
        .emulator()
        .create_file("cut", "long.bin", content.clone(), None)
        .unwrap();
    app.sign_in("cut").await;
    // Every media body breaks after 1 MiB: starting over would never get past it.
    app.google.emulator().set_faults(drive_fault(Fault {
        media_cut_after_bytes: Some(1024 * 1024),
        ..Default::default()
    }));
    let out = app.cycle().await;
    assert_eq!((out.ok, out.failed), (1, 0), "{out:?}");
    app.assert_mirror_matches("cut").await;
    let stats = app.google.emulator().stats();
    assert_eq!(stats.user_count("cut", "files.download"), 5, "{stats:?}");
    assert_eq!(stats.counter("media.ranged"), 4, "{stats:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_above_5_mb_uses_a_resumable_session_and_resumes_after_dropped_connections() {
    let app = spawn_app().await;
    app.google_user("up");
    app.sign_in("up").await;
    app.cycle().await;
    let content: Vec<u8> = (0..(12 * 1024 * 1024))
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    let queued = app.put("up", "big-upload.bin", None, &content).await;
    // Each chunk's connection drops after 3 MiB: only asking the session and resuming works.
    app.google.emulator().set_faults(drive_fault(Fault {
        upload_cut_after_bytes: Some(3 * 1024 * 1024),
        ..Default::default()
    }));
    let out = app.cycle().await;
    assert_eq!((out.ok, out.failed), (1, 0), "{out:?}");
    app.google.emulator().clear_faults();
    let stats = app.google.emulator().stats();
    assert_eq!(stats.counter("resumable.sessions"), 1, "{stats:?}");
    assert!(stats.counter("resumable.cut") >= 3, "{stats:?}");
    assert!(stats.counter("resumable.status_queries") >= 3, "{stats:?}");
    assert_eq!(stats.counter("resumable.completed"), 1, "{stats:?}");
    let remote = app.google.emulator().list_files("up").unwrap();
    assert_eq!(remote.len(), 1);
    let uploaded = app
        .google
        .emulator()
        .file_content("up", &remote[0].id)
        .unwrap();
    assert_eq!(md5_hex(&uploaded), md5_hex(&content));
    let write = app.services.user("up").await.unwrap().writes;
    assert_eq!(write[0].id, queued.id);
    assert_eq!(write[0].state.as_str(), "done");
    app.assert_mirror_matches("up").await;
    app.stop().await;
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_not_made_twice() {
    let app = spawn_app().await;
    app.google_user("once");
    app.sign_in("once").await;
    app.cycle().await;
    app.put("once", "made-once.txt", Some("text/plain"), b"exactly one")
        .await;
    // Drive creates the file but the answer never arrives; the retry with the same
    // generated id is refused with 409, and the daemon recognises its own file.
    app.google.emulator().set_faults(drive_fault(Fault {
        lost_answer_rate: 1.0,
        ..Default::default()
    }));
    let out = app.cycle().await;
    app.google.emulator().clear_faults();
    assert_eq!((out.ok, out.failed), (1, 0), "{out:?}");
    let stats = app.google.emulator().stats();
    assert_eq!(stats.counter("answers.lost"), 1, "{stats:?}");
    assert_eq!(stats.count("files.generateIds"), 1, "{stats:?}");
    let named: Vec<_> = app
        .google
        .emulator()
        .list_files("once")
        .unwrap()
        .into_iter()
        .filter(|f| f.name == "made-once.txt")
        .collect();
    assert_eq!(named.len(), 1, "one file, not two");
    assert_eq!(
        app.services.user("once").await.unwrap().writes[0]
            .state
            .as_str(),
        "done"
    );
    app.assert_mirror_matches("once").await;
    app.stop().await;
}

#[tokio::test]
async fn a_per_minute_quota_hit_fails_the_sync_and_the_next_resumes_the_listing_where_it_stopped() {
    let app = spawn_app().await;
    app.google_user("many");
    let e = app.google.emulator();
    for i in 0..2500 {
        e.create_file("many", &format!("f{i:04}"), format!("{i}"), None)
            .unwrap();
    }
    app.sign_in("many").await;
    // startPageToken, the first page and its 1,000 downloads, then the user's minute is over.
    e.set_faults(drive_fault(Fault {
        user_quota_per_minute: Some(1002),
        ..Default::default()
    }));
    let out = app.cycle().await;
    assert_eq!(
        out.failed, 1,
        "the retries cannot outlast a minute window: {out:?}"
    );
    let stats = e.stats();
    // Page 1, then page 2 refused on each of its 8 attempts (Google's backoff, shortened in
    // the tests, does not reach the end of the minute).
    assert_eq!(stats.user_count("many", "files.list"), 9, "{stats:?}");
    assert_eq!(stats.by_status.get("403"), Some(&8), "{stats:?}");
    // Once the quota allows again, only the pages not listed yet are asked for.
    e.clear_faults();
    e.reset_stats();
    // The resync loop runs it (a cycle started here could find the user already taken).
    let report = app
        .services
        .resync_and_wait(
            &appdata_syncd::scheduler::resync::ResyncTarget::User("many".into()),
            appdata_syncd::store::schedule::Resync::Incremental,
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!((report.synced, report.failed), (1, 0), "{report:?}");
    let stats = e.stats();
    assert_eq!(
        stats.user_count("many", "changes.startPageToken"),
        0,
        "{stats:?}"
    );
    assert_eq!(
        stats.user_count("many", "files.list"),
        2,
        "pages 2 and 3: {stats:?}"
    );
    assert_eq!(
        stats.user_count("many", "files.download"),
        1500,
        "{stats:?}"
    );
    app.assert_mirror_matches("many").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_refusals_lower_the_request_rate_and_it_climbs_back() {
    let app = spawn_app_with(|c| c.sync.max_requests_per_second = 400).await;
    for i in 0..40 {
        let sub = format!("q{i:02}");
        app.google_user(&sub);
        app.google
            .emulator()
            .create_file(&sub, "a", "1".to_string(), None)
            .unwrap();
        app.sign_in(&sub).await;
    }
    app.google.emulator().set_faults(drive_fault(Fault {
        quota_rps: Some(40),
        ..Default::default()
    }));
    let out = app.cycle().await;
    assert_eq!(out.failed, 0, "{out:?}");
    let status = app.services.status().await.unwrap();
    assert_eq!(status.rate_limit.per_second, 400);
    assert!(
        status.rate_limit.current_per_second < 400,
        "the rate in force came down: {:?}",
        status.rate_limit
    );
    let lowered = status.rate_limit.current_per_second;
    // Without refusals it climbs back (after holding 2 s), a fortieth of the ceiling a second.
    app.google.emulator().clear_faults();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    app.cycle().await;
    let status = app.services.status().await.unwrap();
    assert!(
        status.rate_limit.current_per_second >= (lowered + 20).min(400),
        "{lowered} -> {:?}",
        status.rate_limit
    );
    app.stop().await;
}

/// The project's per-minute quota (403 rateLimitExceeded) spent mid-cycle: calls wait for room
/// in Google's 60 s window instead of failing, so no sync fails. About a minute by nature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_project_minute_quota_makes_calls_wait_for_the_window_and_no_sync_fails() {
    let app = spawn_app().await;
    let e = app.google.emulator();
    for i in 0..3 {
        let sub = format!("pm{i}");
        app.google_user(&sub);
        for f in 0..40 {
            e.create_file(&sub, &format!("f{f:02}"), format!("{i}/{f}"), None)
                .unwrap();
        }
        app.sign_in(&sub).await;
    }
    // 3 × (startPageToken, a listing, 40 downloads) = 126 calls; the minute allows 80.
    e.set_faults(drive_fault(Fault {
        quota_per_minute: Some(80),
        ..Default::default()
    }));
    e.reset_stats();
    let out = app.cycle().await;
    assert_eq!((out.ok, out.failed), (3, 0), "{out:?}");
    let stats = e.stats();
    let refused = stats.by_status.get("403").copied().unwrap_or(0);
    // Only the calls already on their way when the quota ran out were refused.
    assert!((1..=8).contains(&refused), "{refused} refusals: {stats:?}");
    for i in 0..3 {
        app.assert_mirror_matches(&format!("pm{i}")).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn json_calls_ask_for_gzip_and_content_downloads_do_not() {
    let app = spawn_app().await;
    app.google_user("gz");
    app.google
        .emulator()
        .create_file("gz", "a.txt", "x".repeat(10_000), None)
        .unwrap();
    app.sign_in("gz").await;
    app.google.emulator().reset_stats();
    app.cycle().await;
    app.assert_mirror_matches("gz").await;
    let stats = app.google.emulator().stats();
    // startPageToken and files.list, both compressed; the download is not JSON.
    assert_eq!(stats.counter("json.gzip"), 2, "{stats:?}");
    assert_eq!(stats.counter("json.plain"), 0, "{stats:?}");
    app.stop().await;
}

#[tokio::test]
async fn with_http_version_2_every_call_goes_over_http2() {
    let app =
        spawn_app_with(|c| c.google.http_version = appdata_syncd::google::HttpVersion::Http2).await;
    app.google_user("h2");
    app.google
        .emulator()
        .create_file("h2", "a.txt", "two".to_string(), None)
        .unwrap();
    app.google.emulator().reset_stats();
    app.sign_in("h2").await;
    app.cycle().await;
    app.assert_mirror_matches("h2").await;
    let stats = app.google.emulator().stats();
    assert!(stats.counter("http.2") >= 5, "{stats:?}");
    assert_eq!(stats.counter("http.1"), 0, "{stats:?}");
    app.stop().await;
}

#[tokio::test]
async fn refresh_tokens_of_a_testing_mode_project_expire_and_status_counts_the_fallout() {
    let app = spawn_app().await;
    // A consent screen in Testing mode issues refresh tokens that live 7 days.
    app.google
        .emulator()
        .set_refresh_token_lifetime(Some(Duration::from_secs(7 * 86_400)));
    app.sign_in("week").await;
    app.google
        .emulator()
        .advance_clock(Duration::from_secs(8 * 86_400));
    app.google.emulator().expire_access_tokens(None);
    let out = app.cycle().await;
    assert_eq!(out.reauth_required, 1, "{out:?}");
    assert_eq!(
        app.user_state("week").await.as_deref(),
        Some("reauth_required")
    );
    let status = app.services.status().await.unwrap();
    assert_eq!(status.reauth_required_last_day, 1);
    app.stop().await;
}

#[tokio::test]
async fn the_101st_refresh_token_of_a_user_silently_revokes_ours() {
    let app = spawn_app().await;
    app.sign_in("hundred").await;
    // The same user grants the same client 100 more times elsewhere (other devices asking
    // for offline access); Google keeps 100 refresh tokens and drops the oldest: ours.
    let http = reqwest::Client::new();
    let clients = app.google.clients();
    for _ in 0..100 {
        let code = app.mint(MintCode {
            sub: "hundred".into(),
            prompt_consent: true,
            ..Default::default()
        });
        let resp = http
            .post(format!("{}/token", app.google.base_url()))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("client_id", clients.web_client_id.as_str()),
                ("client_secret", clients.web_client_secret.as_str()),
                ("redirect_uri", ""),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    app.google.emulator().expire_access_tokens(None);
    let out = app.cycle().await;
    assert_eq!(out.reauth_required, 1, "{out:?}");
    assert_eq!(
        app.user_state("hundred").await.as_deref(),
        Some("reauth_required")
    );
    app.stop().await;
}

#[tokio::test]
async fn redirect_uri_mismatch_and_a_wrong_client_secret_are_configuration_errors() {
    let app = spawn_app().await;
    let code = app.mint(MintCode {
        sub: "misconf".into(),
        redirect_uri: Some("https://app.example.com/callback".into()),
        ..Default::default()
    });
    let (status, body) = app.post_code(&code).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "server_misconfigured");
    assert!(crate::log_scan::error_lines().contains("[google] redirect_uri"));
    app.stop().await;

    let app = spawn_app_with(|c| {
        let path = c.google.client_secret_file.clone().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["web"]["client_secret"] = "GOCSPX-not-the-secret".into();
        std::fs::write(&path, json.to_string()).unwrap();
    })
    .await;
    let code = app.auth_code("misconf2");
    let (status, body) = app.post_code(&code).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "server_misconfigured");
    assert!(crate::log_scan::error_lines().contains("[google] client_secret_file"));
    app.stop().await;
}

#[tokio::test]
async fn redirects_from_google_are_never_followed() {
    let app = spawn_app().await;
    let target = format!("{}/_emulator/redirect-target", app.google.base_url());
    app.google.emulator().set_faults(Faults {
        token: Some(Fault {
            redirect_to: Some(target),
            ..Default::default()
        }),
        ..Default::default()
    });
    let code = app.auth_code("redirected");
    let (status, body) = app.post_code(&code).await;
    assert_eq!(status, 502, "{body}");
    let stats = app.google.emulator().stats();
    assert_eq!(stats.counter("redirects.sent"), 1, "{stats:?}");
    assert_eq!(
        stats.counter("redirect_target.hits"),
        0,
        "the code and client secret went nowhere else"
    );
    assert!(app.user_state("redirected").await.is_none());
    app.stop().await;
}

#[tokio::test]
async fn content_over_a_limit_is_withheld_the_user_is_over_quota_and_others_are_unaffected() {
    let app = spawn_app_with(|c| {
        c.sync.max_file_bytes = 1000;
        c.sync.max_user_bytes = 3000;
        c.sync.max_files_per_user = 6;
    })
    .await;
    app.google_user("greedy");
    let e = app.google.emulator();
    let huge = e
        .create_file("greedy", "huge.bin", vec![7u8; 2000], None)
        .unwrap();
    for i in 0..4 {
        e.create_file("greedy", &format!("part{i}"), vec![i as u8; 900], None)
            .unwrap();
    }
    app.sign_in("greedy").await;
    app.google_user("modest");
    e.create_file("modest", "small", vec![1u8; 900], None)
        .unwrap();
    e.create_file("modest", "small2", vec![2u8; 900], None)
        .unwrap();
    app.sign_in("modest").await;
    let out = app.cycle().await;
    assert_eq!((out.ok, out.failed), (2, 0), "{out:?}");
    app.assert_mirror_matches("modest").await;
    let greedy = app.services.user("greedy").await.unwrap();
    let reason = greedy.user.over_quota.clone().expect("over quota");
    assert!(reason.contains("max_file_bytes"), "{reason}");
    assert!(greedy.bytes <= 3000, "{} bytes mirrored", greedy.bytes);
    let rows = app.services.files("greedy").await.unwrap().files;
    let withheld: Vec<&str> = rows
        .iter()
        .filter(|r| r.metadata_only)
        .map(|r| r.name.as_str())
        .collect();
    assert!(withheld.contains(&"huge.bin"), "{withheld:?}");
    assert_eq!(
        withheld.len(),
        2,
        "the big one, and the part past 3,000 bytes: {withheld:?}"
    );
    assert!(!app.data_dir().join("greedy").join(&huge.id).exists());
    assert!(app
        .services
        .user("modest")
        .await
        .unwrap()
        .user
        .over_quota
        .is_none());

    // Within the limits again (the big file and a part gone): the flag goes.
    e.delete_file_by_id("greedy", &huge.id).unwrap();
    let parts: Vec<_> = e.list_files("greedy").unwrap();
    e.delete_file_by_id("greedy", &parts[0].id).unwrap();
    let out = app.cycle().await;
    assert_eq!(out.failed, 0, "{out:?}");
    let greedy = app.services.user("greedy").await.unwrap();
    assert_eq!(greedy.user.over_quota, None);
    app.assert_mirror_matches("greedy").await;
    app.stop().await;
}

#[tokio::test]
async fn under_the_disk_floor_no_download_starts_and_sign_ins_still_work() {
    let app = spawn_app_with(|c| c.sync.min_free_disk_bytes = u64::MAX / 4).await;
    app.google_user("floor");
    app.google
        .emulator()
        .create_file("floor", "a", "1".to_string(), None)
        .unwrap();
    app.sign_in("floor").await;
    let out = app.cycle().await;
    assert_eq!(out.failed, 1, "{out:?}");
    let user = app.services.user("floor").await.unwrap();
    let error = user.user.last_error.unwrap_or_default();
    assert!(error.contains("min_free_disk_bytes"), "{error}");
    assert_eq!(user.files, 0);
    // The database stays writable: another user signs in.
    app.sign_in("still-welcome").await;
    app.stop().await;
}
