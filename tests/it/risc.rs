//! Cross-Account Protection end to end: fake-google signs security event tokens with its own
//! RISC keys and pushes them (with its retries) to the real daemon's `POST /risc`; the daemon
//! verifies, stores, answers 202 and acts. Each event type changes the user as the README's
//! table says, a revoked or hijacked user costs Google no further call (counted by
//! fake-google), every forgery is refused with nothing changed, and a SIGKILL of the real
//! binary right after the 202 loses nothing.

use std::path::Path;
use std::time::Duration;

use appdata_syncd::google::risc_api::{RiscApi, ServiceAccountKey, StreamStatus};
use appdata_syncd::scheduler::resync::ResyncTarget;
use appdata_syncd::store::schedule::Resync;
use fake_google::{
    Delivery, DeliveryOutcome, EmitEvent, FakeGoogle, Fault, Faults, RiscEvent, RiscSettings,
    SetForgery,
};

use crate::helpers::{
    db_pool, eventually, free_port, sign_in_via, spawn_app, test_config, Daemon, TestApp,
};

/// Registers `intake`'s `/risc` as fake-google's receiver: plain HTTP allowed (the test intake
/// has no TLS), retries 100 ms apart.
fn register(google: &FakeGoogle, intake: &str) {
    let emu = google.emulator();
    emu.set_risc_settings(RiscSettings {
        allow_http_receiver: true,
        delivery_attempts: 5,
        retry_initial_ms: 100,
    });
    emu.set_risc_stream(&format!("{intake}/risc"), None)
        .unwrap();
}

async fn app_receiving() -> TestApp {
    let app = spawn_app().await;
    register(&app.google, &app.intake);
    app
}

/// The delivery of `jti` (the latest, for a replay) once fake-google is done with it.
async fn delivered(google: &FakeGoogle, jti: &str) -> Delivery {
    let find = || {
        google
            .emulator()
            .risc_deliveries()
            .into_iter()
            .rev()
            .find(|d| d.jti == jti)
    };
    eventually("the delivery to end", Duration::from_secs(20), async || {
        find().is_some_and(|d| d.outcome != DeliveryOutcome::Pending)
    })
    .await;
    find().unwrap()
}

/// Emits `event` and waits for the daemon's 202.
async fn send(google: &FakeGoogle, event: EmitEvent) -> String {
    let emitted = google.emulator().emit_risc_event(event).unwrap();
    let d = delivered(google, &emitted.jti).await;
    assert_eq!(d.outcome, DeliveryOutcome::Delivered, "{d:?}");
    assert_eq!(d.statuses.last(), Some(&Some(202)), "{d:?}");
    emitted.jti
}

/// What the daemon did with the event `jti`, once it did it: (outcome, sub, detail).
async fn acted(pool: &sqlx::AnyPool, jti: &str) -> (String, Option<String>, Option<String>) {
    let row = || async {
        sqlx::query_as::<_, (String, Option<String>, Option<String>)>(
            "SELECT outcome, sub, detail FROM security_events \
             WHERE jti = $1 AND processed_at IS NOT NULL",
        )
        .bind(jti)
        .fetch_optional(pool)
        .await
        .unwrap()
    };
    eventually(
        "the event to be acted on",
        Duration::from_secs(20),
        async || row().await.is_some(),
    )
    .await;
    row().await.unwrap()
}

/// Sends `event` and returns the outcome of acting on it.
async fn outcome_of(app: &TestApp, event: EmitEvent) -> String {
    let jti = send(&app.google, event).await;
    acted(app.store.pool(), &jti).await.0
}

async fn has_credentials(app: &TestApp, sub: &str) -> bool {
    app.sealed_refresh_token(sub).await.is_some()
}

async fn suspension(app: &TestApp, sub: &str) -> Option<String> {
    sqlx::query_scalar("SELECT suspended_by_google FROM users WHERE sub = $1")
        .bind(sub)
        .fetch_one(app.store.pool())
        .await
        .unwrap()
}

/// Every request fake-google served for anyone, after `reset_stats`.
fn google_calls(google: &FakeGoogle) -> u64 {
    google.emulator().stats().requests.values().sum()
}

/// Cycles and an admin resync: whatever would make the daemon call Google for the user.
async fn try_to_sync(app: &TestApp, sub: &str) {
    for _ in 0..3 {
        app.cycle().await;
    }
    let resync = app
        .services
        .resync(&ResyncTarget::User(sub.into()), Resync::Full)
        .await;
    assert!(resync.is_err(), "a resync of {sub} was accepted");
    app.cycle().await;
}

#[tokio::test]
async fn tokens_revoked_deletes_the_tokens_and_no_call_reaches_google_again() {
    let app = app_receiving().await;
    app.sign_in("rv1").await;
    assert_eq!(app.cycle().await.ok, 1);
    let outcome = outcome_of(&app, EmitEvent::new("rv1", RiscEvent::TokensRevoked)).await;
    assert_eq!(outcome, "tokens_deleted");
    assert_eq!(
        app.user_state("rv1").await.as_deref(),
        Some("reauth_required")
    );
    assert!(!has_credentials(&app, "rv1").await);
    app.google.emulator().reset_stats();
    try_to_sync(&app, "rv1").await;
    assert_eq!(
        google_calls(&app.google),
        0,
        "{:?}",
        app.google.emulator().stats()
    );
    // A new consent heals it, as any revoked grant.
    app.sign_in("rv1").await;
    assert_eq!(app.cycle().await.ok, 1);
    app.stop().await;
}

#[tokio::test]
async fn token_revoked_acts_only_when_it_names_the_refresh_token_we_hold() {
    let app = app_receiving().await;
    for sub in ["tr1", "tr2", "tr3"] {
        app.sign_in(sub).await;
    }
    let mut other = EmitEvent::new("tr1", RiscEvent::TokenRevoked);
    other.token = Some("1//0-not-a-token-this-server-holds-000000000000000000".into());
    assert_eq!(outcome_of(&app, other).await, "no_matching_token");
    assert!(has_credentials(&app, "tr1").await);
    assert_eq!(app.user_state("tr1").await.as_deref(), Some("active"));

    // By the double SHA-512 hash (the default), then by the 16-character prefix.
    assert_eq!(
        outcome_of(&app, EmitEvent::new("tr1", RiscEvent::TokenRevoked)).await,
        "tokens_deleted"
    );
    let mut prefix = EmitEvent::new("tr2", RiscEvent::TokenRevoked);
    prefix.token_identifier_alg = Some("prefix".into());
    let jti = send(&app.google, prefix).await;
    let (outcome, sub, _) = acted(app.store.pool(), &jti).await;
    assert_eq!(
        (outcome.as_str(), sub.as_deref()),
        ("tokens_deleted", Some("tr2"))
    );
    for sub in ["tr1", "tr2"] {
        assert!(!has_credentials(&app, sub).await);
        assert_eq!(
            app.user_state(sub).await.as_deref(),
            Some("reauth_required")
        );
    }
    assert!(has_credentials(&app, "tr3").await, "another user's token");
    // Neither the token nor its prefix is stored: only their hashes.
    let subjects: Vec<String> = sqlx::query_scalar("SELECT subject FROM security_events")
        .fetch_all(app.store.pool())
        .await
        .unwrap();
    assert!(subjects.iter().all(|s| !s.contains("1//")), "{subjects:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_token_stored_before_the_hashes_is_identified_once_it_is_next_opened() {
    let app = app_receiving().await;
    app.sign_in("old1").await;
    // As a row written before migration 0007.
    sqlx::query(
        "UPDATE credentials SET refresh_token_hash = NULL, refresh_token_prefix_hash = NULL",
    )
    .execute(app.store.pool())
    .await
    .unwrap();
    assert_eq!(
        outcome_of(
            &app,
            EmitEvent::new("old1", RiscEvent::TokenRevoked).no_side_effects()
        )
        .await,
        "no_matching_token"
    );
    // The next refresh opens the token and stores its identifiers.
    app.google.emulator().expire_access_tokens(Some("old1"));
    sqlx::query("UPDATE credentials SET access_expires_at = 0")
        .execute(app.store.pool())
        .await
        .unwrap();
    assert_eq!(app.cycle().await.ok, 1);
    assert_eq!(
        outcome_of(&app, EmitEvent::new("old1", RiscEvent::TokenRevoked)).await,
        "tokens_deleted"
    );
    app.stop().await;
}

#[tokio::test]
async fn sessions_revoked_drops_the_cached_access_token_so_the_next_call_refreshes() {
    let app = app_receiving().await;
    app.sign_in("sr1").await;
    assert_eq!(
        app.cycle().await.token_refreshes,
        0,
        "sign-in cached a token"
    );
    let outcome = outcome_of(&app, EmitEvent::new("sr1", RiscEvent::SessionsRevoked)).await;
    assert_eq!(outcome, "access_token_dropped");
    let cached: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT access_token FROM credentials WHERE sub = 'sr1'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert!(cached.is_none());
    let cycle = app.cycle().await;
    assert_eq!((cycle.ok, cycle.token_refreshes), (1, 1));
    assert_eq!(app.user_state("sr1").await.as_deref(), Some("active"));
    app.stop().await;
}

#[tokio::test]
async fn hijacking_revokes_the_grant_at_google_deletes_our_tokens_and_suspends() {
    let app = app_receiving().await;
    app.sign_in("hj1").await;
    assert_eq!(app.cycle().await.ok, 1);
    app.google.emulator().reset_stats();
    let hijacked = EmitEvent::new("hj1", RiscEvent::AccountDisabled).reason("hijacking");
    assert_eq!(outcome_of(&app, hijacked).await, "suspended_tokens_revoked");
    let stats = app.google.emulator().stats();
    assert_eq!(stats.user_count("hj1", "revoke"), 1, "{stats:?}");
    assert_eq!(
        google_calls(&app.google),
        1 + stats.count("risc.jwks") + stats.count("risc.configuration")
    );
    assert_eq!(suspension(&app, "hj1").await.as_deref(), Some("hijacking"));
    assert_eq!(
        app.user_state("hj1").await.as_deref(),
        Some("reauth_required")
    );
    assert!(!has_credentials(&app, "hj1").await);
    app.google.emulator().reset_stats();
    try_to_sync(&app, "hj1").await;
    assert_eq!(google_calls(&app.google), 0);

    // Enabled again: the suspension is lifted, the deleted tokens stay deleted.
    let enabled = outcome_of(&app, EmitEvent::new("hj1", RiscEvent::AccountEnabled)).await;
    assert_eq!(enabled, "suspension_cleared");
    assert_eq!(suspension(&app, "hj1").await, None);
    assert_eq!(
        app.user_state("hj1").await.as_deref(),
        Some("reauth_required")
    );
    app.sign_in("hj1").await;
    assert_eq!(app.cycle().await.ok, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_account_disabled_for_another_reason_is_suspended_without_calls_until_enabled() {
    let app = app_receiving().await;
    app.sign_in("ds1").await;
    app.sign_in("ds2").await;
    assert_eq!(app.cycle().await.ok, 2);
    app.google.emulator().reset_stats();
    let bulk = EmitEvent::new("ds1", RiscEvent::AccountDisabled).reason("bulk-account");
    assert_eq!(outcome_of(&app, bulk).await, "suspended");
    let plain = EmitEvent::new("ds2", RiscEvent::AccountDisabled);
    assert_eq!(outcome_of(&app, plain).await, "suspended");
    assert_eq!(
        suspension(&app, "ds1").await.as_deref(),
        Some("bulk-account")
    );
    assert_eq!(
        suspension(&app, "ds2").await.as_deref(),
        Some("unspecified")
    );
    for sub in ["ds1", "ds2"] {
        assert!(
            has_credentials(&app, sub).await,
            "no revocation without hijacking"
        );
        assert_eq!(app.user_state(sub).await.as_deref(), Some("active"));
    }
    let stats = app.google.emulator().stats();
    assert_eq!(
        stats.count("revoke") + stats.count("token") + stats.drive_calls(),
        0
    );
    app.google.emulator().reset_stats();
    try_to_sync(&app, "ds1").await;
    assert_eq!(google_calls(&app.google), 0);

    assert_eq!(
        outcome_of(&app, EmitEvent::new("ds1", RiscEvent::AccountEnabled)).await,
        "suspension_cleared"
    );
    app.google.emulator().reset_stats();
    let cycle = app.cycle().await;
    assert_eq!(
        (cycle.users, cycle.ok),
        (1, 1),
        "ds1 syncs again, ds2 does not"
    );
    assert!(
        app.google
            .emulator()
            .stats()
            .user_count("ds1", "changes.list")
            >= 1
    );
    // Enabling a user who was not suspended changes nothing.
    assert_eq!(
        outcome_of(&app, EmitEvent::new("ds1", RiscEvent::AccountEnabled)).await,
        "not_suspended"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_older_disabled_event_delivered_late_does_not_undo_a_newer_enabled_one() {
    let app = app_receiving().await;
    app.sign_in("late1").await;
    let bulk = EmitEvent::new("late1", RiscEvent::AccountDisabled).reason("bulk-account");
    assert_eq!(outcome_of(&app, bulk).await, "suspended");
    let enabled = outcome_of(&app, EmitEvent::new("late1", RiscEvent::AccountEnabled)).await;
    assert_eq!(enabled, "suspension_cleared");
    // Issued before the account-enabled, delivered after it (Google's retries).
    let mut late = EmitEvent::new("late1", RiscEvent::AccountDisabled).reason("bulk-account");
    late.iat_offset_s = Some(-120);
    assert_eq!(outcome_of(&app, late).await, "superseded");
    assert_eq!(suspension(&app, "late1").await, None);
    assert_eq!(app.cycle().await.ok, 1);
    app.stop().await;
}

#[tokio::test]
async fn credential_change_required_flags_the_user_for_the_operator_until_acknowledged() {
    let app = app_receiving().await;
    app.sign_in("cc1").await;
    let event = EmitEvent::new("cc1", RiscEvent::AccountCredentialChangeRequired);
    assert_eq!(outcome_of(&app, event).await, "flagged");
    // The data API's change feed tells the backend.
    app.services.feed().sequence_once().await.unwrap();
    let wait = std::time::Duration::ZERO;
    let feed = app.services.changes_after(None, 100, wait).await.unwrap();
    let flagged = feed
        .changes
        .iter()
        .find(|c| c.kind == "user.security_event")
        .expect("the security event is in the feed");
    assert_eq!(flagged.sub, "cc1");
    let detail = flagged.detail.clone().unwrap_or_default();
    assert_eq!(detail["event"], "account-credential-change-required");
    assert_eq!(detail["outcome"], "flagged");
    assert_eq!(flagged.state.as_deref(), Some("active"));
    let detail = app.services.user("cc1").await.unwrap();
    assert!(detail.security.credential_change_required_at.is_some());
    assert_eq!(
        detail.security.events[0].kind.as_str(),
        "account-credential-change-required"
    );
    let listed = app.services.users(None, None, None).await.unwrap();
    assert!(listed.users[0].credential_change_required_at.is_some());
    assert_eq!(
        app.services
            .status()
            .await
            .unwrap()
            .security
            .credential_change_required,
        1
    );
    // A flag, not a stop: the user still syncs.
    assert_eq!(app.cycle().await.ok, 1);
    assert!(app.services.acknowledge("cc1").await.unwrap().cleared);
    assert_eq!(
        app.services
            .status()
            .await
            .unwrap()
            .security
            .credential_change_required,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn events_for_unknown_users_are_acknowledged_and_dropped() {
    let app = app_receiving().await;
    app.sign_in("kn1").await;
    app.google_user("stranger");
    let before = app.db_snapshot().await;
    let outcome = outcome_of(&app, EmitEvent::new("stranger", RiscEvent::TokensRevoked)).await;
    assert_eq!(outcome, "unknown_user");
    assert_eq!(app.db_snapshot().await, before);
    app.stop().await;
}

#[tokio::test]
async fn verification_events_through_the_management_api_are_logged_and_counted() {
    let app = spawn_app().await;
    let emu = app.google.emulator();
    emu.set_risc_settings(RiscSettings {
        allow_http_receiver: true,
        ..Default::default()
    });
    let key = ServiceAccountKey::parse(&emu.create_service_account().to_string()).unwrap();
    let api = RiscApi::new(reqwest::Client::new(), &app.google.base_url(), key);
    api.update_stream(&format!("{}/risc", app.intake))
        .await
        .unwrap();
    assert_eq!(api.status().await.unwrap(), StreamStatus::Enabled);
    let stream = api.stream().await.unwrap();
    assert_eq!(
        stream["events_delivered"].as_array().unwrap().len(),
        7,
        "{stream}"
    );
    api.verify("state-42").await.unwrap();
    let jti = emu.risc_deliveries().last().unwrap().jti.clone();
    assert_eq!(
        delivered(&app.google, &jti).await.outcome,
        DeliveryOutcome::Delivered
    );
    let (outcome, sub, detail) = acted(app.store.pool(), &jti).await;
    assert_eq!((outcome.as_str(), sub), ("logged", None));
    assert_eq!(detail.as_deref(), Some("state: state-42"));
    assert!(
        app.services
            .status()
            .await
            .unwrap()
            .security
            .events_last_day
            >= 1
    );

    // Disabled: Google neither sends nor keeps events.
    api.set_status(StreamStatus::Disabled).await.unwrap();
    assert_eq!(api.status().await.unwrap(), StreamStatus::Disabled);
    app.sign_in("vf1").await;
    let emitted = emu
        .emit_risc_event(EmitEvent::new("vf1", RiscEvent::SessionsRevoked))
        .unwrap();
    assert_eq!(
        delivered(&app.google, &emitted.jti).await.outcome,
        DeliveryOutcome::NotSent
    );
    app.stop().await;
}

#[tokio::test]
async fn a_sync_in_flight_stops_at_once_when_the_tokens_are_revoked() {
    let app = app_receiving().await;
    app.google_user("fl1");
    let big = vec![7u8; 4 << 20];
    app.google
        .emulator()
        .create_file("fl1", "big.bin", big, None)
        .unwrap();
    app.sign_in("fl1").await;
    // 64 KiB/s: the download alone would take a minute.
    app.google.emulator().set_faults(Faults {
        drive: Some(Fault {
            body_bytes_per_sec: Some(64 * 1024),
            ..Default::default()
        }),
        ..Default::default()
    });
    let scheduler = app.scheduler.clone();
    let cycle = tokio::spawn(async move { scheduler.run_once().await });
    eventually(
        "the download to start",
        Duration::from_secs(20),
        async || app.google.emulator().stats().count("files.download") >= 1,
    )
    .await;
    let started = std::time::Instant::now();
    outcome_of(&app, EmitEvent::new("fl1", RiscEvent::TokensRevoked)).await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), cycle)
        .await
        .expect("the sync stopped")
        .unwrap();
    assert_eq!(outcome.cancelled, 1, "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    app.google.emulator().clear_faults();
    app.google.emulator().reset_stats();
    try_to_sync(&app, "fl1").await;
    assert_eq!(google_calls(&app.google), 0);
    let files: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM files WHERE sub = 'fl1'")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(files, 0, "the download was abandoned, not committed");
    app.stop().await;
}

#[tokio::test]
async fn a_sync_in_flight_stops_when_another_instance_suspends_the_user() {
    let app = app_receiving().await;
    app.google_user("fl2");
    let big = vec![7u8; 4 << 20];
    app.google
        .emulator()
        .create_file("fl2", "big.bin", big, None)
        .unwrap();
    app.sign_in("fl2").await;
    app.google.emulator().set_faults(Faults {
        drive: Some(Fault {
            body_bytes_per_sec: Some(64 * 1024),
            ..Default::default()
        }),
        ..Default::default()
    });
    let scheduler = app.scheduler.clone();
    let cycle = tokio::spawn(async move { scheduler.run_once().await });
    eventually(
        "the download to start",
        Duration::from_secs(20),
        async || app.google.emulator().stats().count("files.download") >= 1,
    )
    .await;
    // What an instance that received the event commits; this one hears nothing of it.
    sqlx::query("UPDATE users SET suspended_by_google = 'bulk-account' WHERE sub = 'fl2'")
        .execute(app.store.pool())
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), cycle)
        .await
        .expect("the sync stopped within the watch period")
        .unwrap();
    assert_eq!(outcome.cancelled, 1, "{outcome:?}");
    app.google.emulator().clear_faults();
    app.stop().await;
}

#[tokio::test]
async fn forged_sets_are_refused_and_change_nothing() {
    let app = app_receiving().await;
    app.sign_in("fg1").await;
    let before = app.db_snapshot().await;
    let refusals = [
        (SetForgery::WrongKey, "authentication_failed"),
        (SetForgery::TamperedPayload, "authentication_failed"),
        (SetForgery::UnknownKid, "invalid_key"),
        (SetForgery::WrongIssuer, "invalid_issuer"),
        (SetForgery::WrongAudience, "invalid_audience"),
        (SetForgery::AlgNone, "invalid_request"),
        (SetForgery::Hs256PublicKey, "invalid_request"),
        (SetForgery::ExpiredIat, "invalid_request"),
        (SetForgery::FutureIat, "invalid_request"),
        (SetForgery::NoEvents, "invalid_request"),
    ];
    for (forgery, err) in refusals {
        let event = EmitEvent::new("fg1", RiscEvent::TokensRevoked).forged(forgery);
        let emitted = app.google.emulator().emit_risc_event(event).unwrap();
        let d = delivered(&app.google, &emitted.jti).await;
        assert_eq!(d.outcome, DeliveryOutcome::Rejected, "{forgery:?}: {d:?}");
        assert_eq!(
            d.statuses,
            vec![Some(400)],
            "{forgery:?}: refused once, not retried"
        );
        let body: serde_json::Value =
            serde_json::from_str(d.last_body.as_deref().unwrap()).unwrap();
        assert_eq!(body["err"], err, "{forgery:?}: {body}");
    }
    for body in [vec![b'x'; 1 << 20], b"not a jwt".to_vec(), Vec::new()] {
        let resp = app
            .http
            .post(format!("{}/risc", app.intake))
            .header("content-type", "application/secevent+jwt")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM security_events")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);
    assert_eq!(app.db_snapshot().await, before);

    // A replay (the same bytes, or the same jti signed again) is acknowledged and ignored.
    let jti = send(
        &app.google,
        EmitEvent::new("fg1", RiscEvent::SessionsRevoked),
    )
    .await;
    acted(app.store.pool(), &jti).await;
    let after_first = app.db_snapshot().await;
    app.google.emulator().replay_risc_delivery(&jti).unwrap();
    let replayed = delivered(&app.google, &jti).await;
    assert_eq!(replayed.statuses, vec![Some(202)]);
    let mut again = EmitEvent::new("fg1", RiscEvent::TokensRevoked).no_side_effects();
    again.jti = Some(jti.clone());
    send(&app.google, again).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM security_events")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(
        app.db_snapshot().await,
        after_first,
        "the replay changed nothing"
    );
    app.stop().await;
}

#[tokio::test]
async fn google_delivers_again_while_the_receiver_cannot_verify_and_the_event_then_lands() {
    let app = app_receiving().await;
    app.sign_in("rt1").await;
    // The RISC key set is down: the daemon answers 503, and fake-google retries.
    app.google.emulator().set_faults(Faults {
        jwks: Some(Fault {
            error_rate: 1.0,
            error_status: Some(503),
            ..Default::default()
        }),
        ..Default::default()
    });
    let emitted = app
        .google
        .emulator()
        .emit_risc_event(EmitEvent::new("rt1", RiscEvent::TokensRevoked).no_side_effects())
        .unwrap();
    eventually("a refused attempt", Duration::from_secs(10), async || {
        app.google
            .emulator()
            .risc_deliveries()
            .iter()
            .any(|d| d.statuses.contains(&Some(503)))
    })
    .await;
    app.google.emulator().clear_faults();
    let d = delivered(&app.google, &emitted.jti).await;
    assert_eq!(d.outcome, DeliveryOutcome::Delivered, "{d:?}");
    assert_eq!(d.statuses.first(), Some(&Some(503)));
    assert_eq!(
        acted(app.store.pool(), &emitted.jti).await.0,
        "tokens_deleted"
    );
    assert!(app.google.emulator().stats().counter("risc.retries") >= 1);
    app.stop().await;
}

/// A daemon binary on a fixed port against `google`, with `env`.
async fn daemon(dir: &Path, google: &FakeGoogle, env: &[(&str, &str)], metrics: bool) -> Daemon {
    let mut config = test_config(dir, google);
    config.intake.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    if metrics {
        config.metrics.listen = Some(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    }
    Daemon::run(dir, config, env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_right_after_the_202_loses_no_event() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let mut held = daemon(
        dir.path(),
        &google,
        &[("APPDATA_SYNCD_TEST_RISC_HOLD", "1")],
        false,
    )
    .await;
    sign_in_via(&google, &held.intake, "k1").await;
    register(&google, &held.intake);
    let jti = send(
        &google,
        EmitEvent::new("k1", RiscEvent::TokensRevoked).no_side_effects(),
    )
    .await;
    held.child.start_kill().unwrap();
    held.child.wait().await.unwrap();
    let pool = db_pool(dir.path()).await;
    let pending: Option<i64> =
        sqlx::query_scalar("SELECT processed_at FROM security_events WHERE jti = $1")
            .bind(&jti)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        pending, None,
        "stored, not yet acted on, when the 202 went out"
    );
    drop(held);
    let port = free_port();
    let mut config = test_config(dir.path(), &google);
    config.intake.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let restarted = Daemon::run(dir.path(), config, &[]).await;
    assert_eq!(acted(&pool, &jti).await.0, "tokens_deleted");
    let state: String = sqlx::query_scalar("SELECT state FROM users WHERE sub = 'k1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "reauth_required");
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_user_ctl_users_ctl_status_and_the_metrics_show_security_events() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let d = daemon(dir.path(), &google, &[], true).await;
    for sub in ["m1", "m2"] {
        sign_in_via(&google, &d.intake, sub).await;
    }
    register(&google, &d.intake);
    let pool = db_pool(dir.path()).await;
    let disabled = EmitEvent::new("m1", RiscEvent::AccountDisabled).reason("bulk-account");
    let change = EmitEvent::new("m2", RiscEvent::AccountCredentialChangeRequired);
    for event in [disabled, change] {
        let jti = send(&google, event).await;
        acted(&pool, &jti).await;
    }
    let user = d.ctl(&["user", "m1"]).await;
    assert!(user.ok, "{}", user.stderr);
    for expected in [
        "yes (bulk-account)",
        "account-disabled",
        "reason=bulk-account",
        "suspended",
    ] {
        assert!(
            user.stdout.contains(expected),
            "{expected:?} in\n{}",
            user.stdout
        );
    }
    let json = d.ctl(&["--json", "user", "m2"]).await.json();
    assert_eq!(
        json["security"]["events"][0]["outcome"], "flagged",
        "{json}"
    );
    let users = d.ctl(&["users"]).await.stdout;
    assert!(
        users.contains("suspended:bulk-account") && users.contains("credential-change"),
        "{users}"
    );
    let status = d.ctl(&["status"]).await.stdout;
    assert!(
        status.contains("1 suspended by Google, 1 flagged"),
        "{status}"
    );
    let metrics_url = format!("http://{}/metrics", d.config.metrics.listen.unwrap());
    let metrics = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"appdata_syncd_risc_events_total{event="account-disabled",outcome="suspended"} 1"#,
        r#"appdata_syncd_risc_sets_total{result="accepted"} 2"#,
        r#"appdata_syncd_users_flagged{flag="suspended_by_google"} 1"#,
        r#"appdata_syncd_users_flagged{flag="credential_change_required"} 1"#,
    ] {
        assert!(metrics.contains(expected), "{expected} in\n{metrics}");
    }
    let ack = d.ctl(&["acknowledge", "m2"]).await;
    assert!(
        ack.ok && ack.stdout.contains("cleared"),
        "{}{}",
        ack.stdout,
        ack.stderr
    );
    let metrics = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(r#"appdata_syncd_users_flagged{flag="credential_change_required"} 0"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risc_register_verify_status_disable_and_check_config_through_the_cli() {
    let dir = crate::helpers::test_dir();
    let google = crate::helpers::google().await;
    let key = dir.path().join("risc-service-account.json");
    std::fs::write(&key, google.emulator().create_service_account().to_string()).unwrap();
    let mut config = test_config(dir.path(), &google);
    config.intake.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    config.risc.service_account_file = Some(key.clone());
    let d = Daemon::run(dir.path(), config, &[]).await;
    let risc = |args: &[&str]| {
        let mut all = vec!["risc"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", d.config_path.to_str().unwrap()]);
        let out = std::process::Command::new(crate::helpers::binary())
            .args(&all)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let url = format!("{}/risc", d.intake);
    let (ok, out) = risc(&["register", "--url", &url]);
    assert!(
        !ok && out.contains("must be an HTTPS URL"),
        "Google refuses http: {out}"
    );
    google.emulator().set_risc_settings(RiscSettings {
        allow_http_receiver: true,
        retry_initial_ms: 100,
        ..Default::default()
    });
    let (ok, out) = risc(&["register", "--url", &url]);
    assert!(ok, "{out}");
    let (ok, out) = risc(&["status"]);
    assert!(
        ok && out.contains("status: enabled") && out.contains(&url),
        "{out}"
    );
    let (ok, out) = risc(&["verify", "--state", "from-the-cli"]);
    assert!(ok, "{out}");
    eventually(
        "the verification in the log",
        Duration::from_secs(20),
        async || d.logs().contains("from-the-cli"),
    )
    .await;
    let (ok, out) = risc(&["disable"]);
    assert!(ok && out.contains("disabled"), "{out}");
    let (_, out) = risc(&["status"]);
    assert!(out.contains("status: disabled"), "{out}");

    // check-config reads and checks the key like the client secret.
    let check = |path: &Path| {
        std::process::Command::new(crate::helpers::binary())
            .args(["check-config", "--config"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = check(&d.config_path);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("@fake-google-"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    std::fs::write(
        &key,
        r#"{"type": "service_account", "private_key": "nope"}"#,
    )
    .unwrap();
    let out = check(&d.config_path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("service_account_file"),
        "{err}"
    );
}
