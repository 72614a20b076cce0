//! Sync against fake-google: first listing, the changes feed, tokens, faults, pushes.

use appdata_syncd::store::now_ms;
use fake_google::{Fault, Faults};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

async fn user_with_files(app: &TestApp, sub: &str, files: &[(&str, &str)]) {
    app.google_user(sub);
    for (name, content) in files {
        app.google
            .emulator()
            .create_file(sub, name, content.to_string(), None)
            .unwrap();
    }
    app.sign_in(sub).await;
}

#[tokio::test]
async fn first_sync_mirrors_every_file() {
    let app = spawn_app().await;
    user_with_files(
        &app,
        "u1",
        &[("a.json", "{\"a\":1}"), ("b.bin", "bbbb"), ("c", "")],
    )
    .await;
    let out = app.cycle().await;
    assert_eq!((out.users, out.ok), (1, 1), "{out:?}");
    app.assert_mirror_matches("u1").await;
    let stats = app.google.emulator().stats();
    assert_eq!(stats.user_count("u1", "changes.startPageToken"), 1);
    assert_eq!(stats.user_count("u1", "files.download"), 3);
    app.stop().await;
}

#[tokio::test]
async fn incremental_sync_applies_add_update_delete_and_rename() {
    let app = spawn_app().await;
    user_with_files(
        &app,
        "u2",
        &[
            ("keep", "1"),
            ("change", "old"),
            ("drop", "x"),
            ("rename", "r"),
        ],
    )
    .await;
    app.cycle().await;
    let e = app.google.emulator();
    let files = e.list_files("u2").unwrap();
    let id = |name: &str| files.iter().find(|f| f.name == name).unwrap().id.clone();
    e.create_file("u2", "new", "fresh".to_string(), None)
        .unwrap();
    e.update_file("u2", &id("change"), "new content".to_string())
        .unwrap();
    e.delete_file_by_id("u2", &id("drop")).unwrap();
    e.rename_file("u2", &id("rename"), "renamed").unwrap();
    e.reset_stats();
    let out = app.cycle().await;
    assert_eq!(out.ok, 1, "{out:?}");
    app.assert_mirror_matches("u2").await;
    let stats = e.stats();
    assert_eq!(stats.count("files.list"), 0, "incremental: no listing");
    assert_eq!(
        stats.count("files.download"),
        2,
        "only new and changed content is downloaded"
    );
    app.stop().await;
}

#[tokio::test]
async fn duplicate_and_hostile_names_get_safe_unique_paths() {
    let app = spawn_app().await;
    user_with_files(
        &app,
        "u3",
        &[
            ("same", "one"),
            ("same", "two"),
            ("../../etc/passwd", "evil"),
            ("a/b/c", "slashes"),
            ("..", "dots"),
        ],
    )
    .await;
    app.cycle().await;
    app.assert_mirror_matches("u3").await;
    assert!(!app.dir.path().join("etc").exists());
    let mut conn = app.store.pool().acquire().await.unwrap();
    let rows = appdata_syncd::store::files::list(&mut conn, "u3")
        .await
        .unwrap();
    assert_eq!(rows.iter().filter(|r| r.name == "same").count(), 2);
    assert!(rows.iter().any(|r| r.name == "../../etc/passwd"));
    drop(conn);
    app.stop().await;
}

#[tokio::test]
async fn an_idle_cycle_costs_one_drive_call_per_user_and_no_refresh() {
    let app = spawn_app().await;
    for i in 0..5 {
        user_with_files(&app, &format!("idle{i}"), &[("f", "x")]).await;
    }
    app.cycle().await;
    app.google.emulator().reset_stats();
    let out = app.cycle().await;
    assert_eq!(out.ok, 5, "{out:?}");
    let stats = app.google.emulator().stats();
    assert_eq!(stats.drive_calls(), 5, "{stats:?}");
    assert_eq!(stats.count("changes.list"), 5);
    assert_eq!(
        stats.count("token"),
        0,
        "no refresh while access tokens are valid"
    );
    assert_eq!(out.token_refreshes, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_access_token_google_expired_is_refreshed_once() {
    let app = spawn_app().await;
    user_with_files(&app, "exp", &[("f", "x")]).await;
    app.cycle().await;
    app.google.emulator().expire_access_tokens(Some("exp"));
    app.google.emulator().reset_stats();
    let out = app.cycle().await;
    assert_eq!(out.ok, 1, "{out:?}");
    let stats = app.google.emulator().stats();
    assert_eq!(stats.count("token"), 1, "one refresh");
    assert_eq!(stats.count("changes.list"), 2, "the 401, then the retry");
    // The new token is cached: the next cycle needs no refresh.
    app.google.emulator().reset_stats();
    app.cycle().await;
    assert_eq!(app.google.emulator().stats().count("token"), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_token_close_to_expiry_is_refreshed_before_the_call() {
    let app = spawn_app().await;
    user_with_files(&app, "soon", &[("f", "x")]).await;
    app.cycle().await;
    sqlx::query("UPDATE credentials SET access_expires_at = $1 WHERE sub = 'soon'")
        .bind(now_ms() + 60_000)
        .execute(app.store.pool())
        .await
        .unwrap();
    app.google.emulator().reset_stats();
    app.cycle().await;
    let stats = app.google.emulator().stats();
    assert_eq!(stats.count("token"), 1);
    assert_eq!(stats.count("changes.list"), 1, "no 401 round trip");
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_grant_parks_the_user_and_stops_all_calls() {
    let app = spawn_app().await;
    user_with_files(&app, "rev", &[("f", "x")]).await;
    app.cycle().await;
    app.google.emulator().revoke_user("rev");
    let out = app.cycle().await;
    assert_eq!(out.reauth_required, 1, "{out:?}");
    assert_eq!(
        app.user_state("rev").await.as_deref(),
        Some("reauth_required")
    );
    app.google.emulator().reset_stats();
    let out = app.cycle().await;
    assert_eq!(out.users, 0);
    assert_eq!(
        app.google
            .emulator()
            .stats()
            .user_count("rev", "changes.list"),
        0
    );
    assert_eq!(app.google.emulator().stats().count("token"), 0);
    // A new sign-in with consent brings the user back.
    let code = app.mint(fake_google::MintCode {
        sub: "rev".into(),
        prompt_consent: true,
        ..Default::default()
    });
    assert_eq!(app.post_code(&code).await.0, 200);
    assert_eq!(app.cycle().await.ok, 1);
    app.stop().await;
}

#[tokio::test]
async fn bursts_of_500_503_and_429_converge_with_bounded_retries() {
    let app = spawn_app().await;
    for i in 0..4 {
        user_with_files(&app, &format!("flaky{i}"), &[("a", "1"), ("b", "2")]).await;
    }
    for status in [500u16, 503, 429] {
        app.google.emulator().set_faults(Faults {
            jwks: None,
            token: None,
            drive: Some(Fault {
                error_rate: 0.4,
                error_status: Some(status),
                ..Default::default()
            }),
        });
        app.google
            .emulator()
            .put_file("flaky0", "a", format!("changed {status}"), None)
            .unwrap();
        app.google.emulator().reset_stats();
        app.cycle().await;
        let calls = app.google.emulator().stats().drive_calls();
        assert!(calls <= 4 * 8 * 4, "retries are bounded: {calls} calls");
    }
    app.google.emulator().clear_faults();
    // A user whose sync failed in the last burst waits out its backoff (a minute or more);
    // let that time pass.
    sqlx::query("UPDATE users SET next_sync_at = 0")
        .execute(app.store.pool())
        .await
        .unwrap();
    app.cycle().await;
    for i in 0..4 {
        app.assert_mirror_matches(&format!("flaky{i}")).await;
        assert_eq!(
            app.user_state(&format!("flaky{i}")).await.as_deref(),
            Some("active")
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_page_token_falls_back_to_a_full_listing() {
    let app = spawn_app().await;
    user_with_files(&app, "tok", &[("a", "1")]).await;
    app.cycle().await;
    app.google.emulator().invalidate_page_tokens("tok");
    app.google
        .emulator()
        .create_file("tok", "b", "2".to_string(), None)
        .unwrap();
    app.google.emulator().reset_stats();
    let out = app.cycle().await;
    assert_eq!(out.ok, 1, "{out:?}");
    assert_eq!(app.google.emulator().stats().count("files.list"), 1);
    app.assert_mirror_matches("tok").await;
    let kind: String =
        sqlx::query_scalar("SELECT kind FROM syncs WHERE sub = 'tok' ORDER BY id DESC LIMIT 1")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(kind, "full");
    app.stop().await;
}

async fn queue_push(app: &TestApp, sub: &str, name: &str, content: &[u8]) -> i64 {
    app.put(sub, name, None, content).await.id
}

async fn push_state(app: &TestApp, id: i64) -> String {
    sqlx::query_scalar("SELECT state FROM writes WHERE id = $1")
        .bind(id)
        .fetch_one(app.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_push_creates_or_updates_the_file_on_drive() {
    let app = spawn_app().await;
    user_with_files(&app, "pu", &[("existing", "v1")]).await;
    app.cycle().await;
    let new = queue_push(&app, "pu", "brand-new", b"hello").await;
    let upd = queue_push(&app, "pu", "existing", b"v2").await;
    let out = app.cycle().await;
    assert_eq!(out.ok, 1, "{out:?}");
    assert_eq!(push_state(&app, new).await, "done");
    assert_eq!(push_state(&app, upd).await, "done");
    let remote = app.google.emulator().list_files("pu").unwrap();
    assert_eq!(remote.len(), 2);
    let existing = remote.iter().find(|f| f.name == "existing").unwrap();
    assert_eq!(
        app.google
            .emulator()
            .file_content("pu", &existing.id)
            .unwrap()
            .as_ref(),
        b"v2"
    );
    app.assert_mirror_matches("pu").await;
    // Our own upload comes back through the changes feed without a download.
    app.google.emulator().reset_stats();
    app.cycle().await;
    assert_eq!(app.google.emulator().stats().count("files.download"), 0);
    app.assert_mirror_matches("pu").await;
    app.stop().await;
}

#[tokio::test]
async fn a_push_over_a_file_changed_on_drive_is_a_conflict() {
    let app = spawn_app().await;
    user_with_files(&app, "pc", &[("doc", "base")]).await;
    app.cycle().await;
    let id = queue_push(&app, "pc", "doc", b"mine").await;
    app.google
        .emulator()
        .put_file("pc", "doc", "theirs".to_string(), None)
        .unwrap();
    app.cycle().await;
    assert_eq!(push_state(&app, id).await, "conflict");
    let remote = app.google.emulator().list_files("pc").unwrap();
    assert_eq!(
        app.google
            .emulator()
            .file_content("pc", &remote[0].id)
            .unwrap()
            .as_ref(),
        b"theirs"
    );
    app.assert_mirror_matches("pc").await;
    app.stop().await;
}

#[tokio::test]
async fn a_ciphertext_copied_to_another_user_does_not_decrypt_and_only_that_user_fails() {
    let app = spawn_app().await;
    user_with_files(&app, "victim", &[("f", "x")]).await;
    user_with_files(&app, "thief", &[("g", "y")]).await;
    // Copy the victim's sealed tokens into the thief's row; drop the thief's cached access
    // token so the copied refresh token must be opened.
    sqlx::query(
        "UPDATE credentials SET refresh_token = (SELECT refresh_token FROM credentials WHERE sub = 'victim'), \
         key_id = (SELECT key_id FROM credentials WHERE sub = 'victim'), \
         access_token = NULL, access_key_id = NULL, access_expires_at = NULL WHERE sub = 'thief'",
    )
    .execute(app.store.pool())
    .await
    .unwrap();
    app.google.emulator().reset_stats();
    let out = app.cycle().await;
    assert_eq!((out.ok, out.failed), (1, 1), "{out:?}");
    let error: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM users WHERE sub = 'thief'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert!(error.unwrap_or_default().contains("cannot be decrypted"));
    assert_eq!(
        app.google.emulator().stats().user_count("thief", "token"),
        0,
        "nothing sent to Google"
    );
    app.assert_mirror_matches("victim").await;
    app.stop().await;
}

#[tokio::test]
async fn a_manifest_of_the_users_items_and_paths_is_written_after_each_change() {
    let app = spawn_app().await;
    app.google_user("man");
    let e = app.google.emulator();
    let folder = e.create_folder("man", "cfg", None).unwrap();
    let f = e
        .create_file_in("man", Some(&folder.id), "settings.json", "{}", None)
        .unwrap();
    app.sign_in("man").await;
    app.cycle().await;
    let read = || {
        let text = std::fs::read_to_string(app.data_dir().join("man/manifest.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let m = read();
    assert_eq!(m["sub"], "man");
    assert_eq!(m["files"][&f.id]["path"], "cfg/settings.json");
    assert_eq!(m["files"][&f.id]["md5"], f.md5_checksum);
    assert_eq!(m["files"][&folder.id]["metadata_only"], true);
    let first = m["generated_at"].as_i64().unwrap();
    // An idle sync leaves it alone; a rename rewrites it.
    app.cycle().await;
    assert_eq!(read()["generated_at"].as_i64().unwrap(), first);
    e.rename_file("man", &folder.id, "config").unwrap();
    app.cycle().await;
    assert_eq!(read()["files"][&f.id]["path"], "config/settings.json");
    app.assert_mirror_matches("man").await;
    app.stop().await;
}

#[tokio::test]
async fn idle_syncs_are_counted_not_recorded_and_old_history_is_pruned() {
    let app = spawn_app().await;
    user_with_files(&app, "hist", &[("a", "1")]).await;
    // A month-old history of 40 records...
    let old = now_ms() - 30 * 86_400_000;
    for i in 0..40 {
        sqlx::query(
            "INSERT INTO syncs (sub, kind, started_at, finished_at, outcome) \
             VALUES ('hist', 'incremental', $1, $1, 'ok')",
        )
        .bind(old + i)
        .execute(app.store.pool())
        .await
        .unwrap();
    }
    // ...then a sync that did something, and three idle ones.
    for _ in 0..4 {
        app.cycle().await;
    }
    let count = async || -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM syncs WHERE sub = 'hist'")
            .fetch_one(app.store.pool())
            .await
            .unwrap()
    };
    assert_eq!(count().await, 41, "only the first sync did something");
    let user = app.services.user("hist").await.unwrap();
    assert_eq!(user.sync.idle_syncs, 3);
    // Records older than a week go, but for each user's newest 20.
    let pruned = appdata_syncd::store::prune_history(
        &app.store,
        std::time::Duration::from_secs(7 * 86_400),
        20,
    )
    .await
    .unwrap();
    assert_eq!(pruned, 21);
    assert_eq!(count().await, 20);
    let newest = app.services.user("hist").await.unwrap().recent_syncs;
    assert_eq!(newest[0].added, 1, "the real one is kept: {newest:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_cycle_walks_more_users_than_a_claim_takes_and_records_every_outcome() {
    // Concurrency 1 claims 16 users at a time (the minimum): 40 users take three claims, each
    // after the last one's end, and outcomes are committed a batch per statement.
    let app = spawn_app_with(|c| c.sync.concurrency = 1).await;
    let subs: Vec<String> = (0..40).map(|i| format!("walk{i:02}")).collect();
    for sub in &subs {
        user_with_files(&app, sub, &[("f", "x")]).await;
    }
    let first = app.cycle().await;
    assert_eq!((first.users, first.ok), (40, 40), "{first:?}");
    app.google
        .emulator()
        .create_file("walk17", "g", "y".to_string(), None)
        .unwrap();
    app.google.emulator().reset_stats();
    let second = app.cycle().await;
    assert_eq!(
        (second.users, second.ok, second.files_changed),
        (40, 40, 1),
        "{second:?}"
    );
    assert_eq!(app.google.emulator().stats().count("changes.list"), 40);
    for sub in &subs {
        let sync = app.services.user(sub).await.unwrap().sync;
        let idle = if sub == "walk17" { 0 } else { 1 };
        assert_eq!(sync.idle_syncs, idle, "{sub}: {sync:?}");
        assert!(sync.last_sync_at.is_some(), "{sub}: {sync:?}");
    }
    let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM syncs WHERE sub = 'walk17'")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(
        recorded, 2,
        "the first sync and the one that found a change"
    );
    let leased: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE lease_owner IS NOT NULL")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(leased, 0, "every finished sync gave its lease back");
    app.stop().await;
}
