//! `ctl`'s output at 80 columns, rendered from the JSON the daemon sends (long emails, long
//! errors, hostile and wide names) and checked against the snapshots in `snapshots/`.
//! `cargo insta review` (or INSTA_UPDATE=always) updates them after a deliberate change.

use serde_json::{json, Value};
use unicode_width::UnicodeWidthStr;

use super::*;

/// 2026-03-01 10:00:00 UTC, and what follows.
const T: i64 = 1_772_359_200_000;
const SUB: &str = "113427189403297419999";
const OTHER: &str = "108765432109876543210";

/// What `ctl` prints for `result` at 80 columns, styles stripped; asserts it fits.
fn at_80(command: &Command, result: Value) -> String {
    let styled = render(command, result, 80).unwrap();
    let text = anstream::adapter::strip_str(&styled).to_string();
    for line in text.lines() {
        assert!(line.width() <= 80, "{} columns: {line:?}", line.width());
    }
    assert!(!text.contains('\u{1b}'), "an escape survived: {text:?}");
    text
}

fn summary(sub: &str, email: &str, state: &str, error: Option<&str>) -> Value {
    json!({
        "sub": sub, "email": email, "state": state, "last_sync_at": T + 61_000,
        "last_error": error, "files": 12, "bytes": 1_234_567,
        "suspended_by_google": null, "credential_change_required_at": null,
    })
}

fn users() -> Value {
    let mut flagged = summary("100000000000000000001", "a@example.com", "active", None);
    flagged["suspended_by_google"] = "hijacking".into();
    flagged["credential_change_required_at"] = T.into();
    json!({
        "users": [
            summary(OTHER, "first.middle.last+appdata-syncd-tests@subdomain.example.com", "active", None),
            summary(SUB, "someone@example.com", "reauth_required",
                Some("invalid_grant: Token has been expired or revoked. Ask the user to sign in again (Google said 400 Bad Request)")),
            summary("117777777777777777777", "evil\u{1b}[2J\r@example.com", "paused", None),
            flagged,
        ],
        "remaining": 99_950,
    })
}

fn status() -> Value {
    json!({
        "version": "0.1.0", "uptime_s": 86_461,
        "database": "postgres://appdata:***@db.internal.example.com:5432/appdata_syncd?sslmode=verify-full",
        "instance": "host-a", "instances": [],
        "users_by_state": {"active": 99_000, "reauth_required": 950, "paused": 49, "forgotten": 1},
        "reauth_required_last_day": 3,
        "syncs_running": 8, "syncs_queued": 1_234,
        "last_cycle": {
            "started_at": T, "finished_at": T + 754_000, "users": 99_000, "ok": 98_990,
            "failed": 7, "reauth_required": 3, "cancelled": 0, "skipped_running": 0,
            "api_calls": 101_234, "token_refreshes": 99_000, "files_changed": 321, "bytes_down": 9_876_543,
        },
        "cycle": {
            "tick": T + 3_600_000 - 900_000, "spread_until": T + 3_600_000 - 90_000,
            "slots_due": 27_525, "slots": 65_536, "claimed": 41_234,
        },
        "next_cycle_at": T + 3_600_000,
        "rate_limit": {"per_second": 100, "current_per_second": 50, "waits": 1_234, "waited_ms": 56_789},
        "security": {"suspended_by_google": 1, "credential_change_required": 2, "events_last_day": 5, "pending_events": 0},
    })
}

fn user() -> Value {
    let sync = |kind: &str, outcome: &str, error: Option<&str>| {
        json!({
            "sub": SUB, "kind": kind, "started_at": T, "finished_at": T + 2_000, "outcome": outcome,
            "added": 3, "updated": 1, "removed": 0, "uploaded": 0, "bytes_down": 4_096,
            "bytes_up": 0, "api_calls": 7, "error": error,
        })
    };
    json!({
        "user": {
            "sub": SUB, "email": "first.middle.last+appdata-syncd-tests@subdomain.example.com",
            "email_verified": true, "name": "名前 Hostile\u{7}\nName", "given_name": null,
            "family_name": null, "picture": null, "locale": "en",
            "state": "reauth_required",
            "last_error": "invalid_grant: Token has been expired or revoked. Ask the user to sign in again (Google said 400 Bad Request)",
            "over_quota": null, "created_at": T - 86_400_000, "updated_at": T,
        },
        "sync": {
            "has_page_token": true, "next_sync_at": T + 3_600_000, "failures": 2,
            "last_sync_at": T, "resync_requested": false, "syncing_now": false, "idle_syncs": 14,
        },
        "credentials": {
            "scopes": "openid email profile https://www.googleapis.com/auth/drive.appdata",
            "obtained_at": T, "key_id": "k1", "access_token_expires_at": null,
        },
        "files": 12, "bytes": 1_234_567,
        "recent_syncs": [
            sync("incremental", "reauth_required", Some("invalid_grant: Token has been expired or revoked.")),
            sync("incremental", "failed", Some("Drive answered 503 Service Unavailable three times; backing off for 2 minutes")),
            sync("full", "ok", None),
        ],
        "writes": [],
        "security": {
            "suspended_by_google": null, "credential_change_required_at": T,
            "events": [{
                "id": 1, "jti": "jti-1", "kind": "account-credential-change-required",
                "event_uri": "https://schemas.openid.net/secevent/risc/event-type/account-credential-change-required",
                "sub": SUB, "subject": null, "reason": null, "state": null, "issued_at": T,
                "received_at": T, "processed_at": T, "outcome": "flagged",
                "detail": "the user must change a credential; syncing goes on until acknowledged", "attempts": 1,
            }, {
                "id": 2, "jti": "jti-2", "kind": "account-disabled",
                "event_uri": "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
                "sub": SUB, "subject": null, "reason": "bulk-account", "state": null,
                "issued_at": T, "received_at": T, "processed_at": T, "outcome": "suspended",
                "detail": null, "attempts": 1,
            }],
        },
    })
}

fn files() -> Value {
    let file = |id: &str, name: &str, parent: Option<&str>, mime: &str, size: Option<i64>| {
        json!({
            "file_id": id, "name": name, "mime_type": mime, "size": size,
            "md5": size.map(|_| "9e107d9d372bb6826bd81d3542a419d6"), "version": 3,
            "modified_time": "2026-03-01T10:00:00.000Z", "local_path": format!("{SUB}/{id}"),
            "parent_id": parent, "metadata_only": size.is_none(),
        })
    };
    json!({"files": [
        file("1ZdR3L3qP4Bkq5GQ9rX8aYcDeFgHiJkLm", "settings.json", None, "application/json", Some(1_234)),
        file("1FoLdEr0000000000000000000000000A", "a folder with a rather long name", None, crate::store::files::FOLDER_MIME, None),
        file("1LoNg00000000000000000000000000000", "backup-2026-03-01T10:00:00Z-of-everything-the-app-keeps.json",
            Some("1FoLdEr0000000000000000000000000A"), "application/json", Some(98_765_432)),
        file("1EvIl00000000000000000000000000000", "evil\u{1b}]0;pwned\u{7}.json", None, "application/json", Some(0)),
    ]})
}

#[test]
fn users_at_80_columns() {
    let command = Command::Users {
        state: None,
        after: None,
        limit: Some(50),
    };
    insta::assert_snapshot!(at_80(&command, users()));
}

#[test]
fn users_of_one_state_say_how_to_go_on_in_that_state() {
    let command = Command::Users {
        state: Some(UserState::Active),
        after: None,
        limit: Some(50),
    };
    let out = at_80(&command, users());
    assert!(
        out.ends_with(
            "... 99,950 more: ctl users --state active --after \
             100000000000000000001\n"
        ),
        "{out}"
    );
    let mut complete = users();
    complete["remaining"] = 0.into();
    assert!(!at_80(&command, complete).contains("more"));
}

#[test]
fn status_at_80_columns() {
    insta::assert_snapshot!(at_80(&Command::Status, status()));
}

#[test]
fn user_at_80_columns() {
    insta::assert_snapshot!(at_80(&Command::User { sub: SUB.into() }, user()));
}

#[test]
fn files_at_80_columns() {
    insta::assert_snapshot!(at_80(&Command::Files { sub: SUB.into() }, files()));
}

#[test]
fn webhooks_and_api_keys_at_80_columns() {
    let webhooks = json!({"endpoints": [{
        "name": "backend", "url": "https://backend.internal.example.com/hooks/appdata-syncd/v1/changes?tenant=42",
        "events": [], "pending": 12, "delivered": 123_456, "failed": 2, "copied_through": 99,
        "last_success_at": T, "last_error": "HTTP 502 Bad Gateway from https://backend.internal.example.com after 3.0 s",
        "last_error_at": T, "oldest_pending_at": T,
    }]});
    let keys = json!({"keys": [
        {"name": "backend", "can_write": true, "created_at": T, "last_used_at": T + 60_000, "revoked_at": null},
        {"name": "reporting-readonly", "can_write": false, "created_at": T, "last_used_at": null, "revoked_at": T},
    ]});
    let out = format!(
        "{}\n{}",
        at_80(&Command::Webhooks, webhooks),
        at_80(&Command::ApiKeyList, keys)
    );
    insta::assert_snapshot!(out);
}

#[test]
fn headers_are_bold_and_states_colored_before_anstream_strips_them() {
    let command = Command::Users {
        state: None,
        after: None,
        limit: None,
    };
    let styled = render(&command, users(), 80).unwrap();
    assert!(styled.starts_with("\u{1b}[1mSUB"), "{styled:?}");
    assert!(
        styled.contains("\u{1b}[31mreauth_required\u{1b}[0m"),
        "{styled:?}"
    );
    // The hostile email is escaped, not obeyed: the only escapes are ours.
    let ours = [
        "\u{1b}[1m",
        "\u{1b}[0m",
        "\u{1b}[31m",
        "\u{1b}[32m",
        "\u{1b}[33m",
    ];
    let mut rest = styled.clone();
    for code in ours {
        rest = rest.replace(code, "");
    }
    assert!(!rest.contains('\u{1b}'), "{rest:?}");
}

#[test]
fn sizes_and_counts_read_at_a_glance() {
    assert_eq!(size(0), "0 B");
    assert_eq!(size(1023), "1023 B");
    assert_eq!(size(1536), "1.5 KiB");
    assert_eq!(size(98_765_432), "94 MiB");
    assert_eq!(thousands(99_950), "99,950");
    assert_eq!(thousands(1_000_000), "1,000,000");
    assert_eq!(thousands(999), "999");
}
