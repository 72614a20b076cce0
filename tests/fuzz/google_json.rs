//! Google's answers: token endpoint bodies through `oauth::parse_token_response` (then the
//! scopes and expiry the daemon derives from them) and `google::oauth_error`; Drive's
//! files.list, changes.list, changes.getStartPageToken and file metadata through
//! `drive::parse_json`, its error bodies through `drive::drive_error`, each with a random
//! status and `Retry-After`.
//!
//! A decoding error must not quote a token from the body (it is logged); a `Retry-After` is a
//! delay the daemon can add to its clock.

use std::time::{Duration, Instant};

use appdata_syncd::google::drive::{self, ChangeList, DriveFile, FileList, StartPageToken};
use appdata_syncd::google::oauth::parse_token_response;
use appdata_syncd::google::{oauth_error, GoogleError};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::mutate::{self, Bytes};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Token,
    TokenError,
    FileList,
    ChangeList,
    StartPageToken,
    File,
    DriveError,
}

#[derive(Debug, Clone)]
struct Case {
    kind: Kind,
    status: u16,
    retry_after: Option<Bytes>,
    body: Bytes,
}

const FILE: &str = r#"{"id": "1AbC-dEf_0", "name": "settings.json", "mimeType": "application/json", "size": "1234", "md5Checksum": "0cc175b9c0f1b6a831c399e269772661", "version": "17", "modifiedTime": "2024-05-01T12:00:00.000Z", "trashed": false}"#;

fn token_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"access_token": "ya29.a0AfB_byC7xq9Lm3nVtR8pW2kJdFgH5sQeT", "expires_in": 3599, "refresh_token": "1//0gLxYzAbCdEfGhIjKlMnOpQrStUvWxYz", "scope": "openid https://www.googleapis.com/auth/drive.appdata email", "token_type": "Bearer", "id_token": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}"#,
        r#"{"access_token": "ya29.a0AfB_byC7xq9Lm3nVtR8pW2kJdFgH5sQeT", "expires_in": 3599, "token_type": "Bearer"}"#,
        r#"{"error": "invalid_grant", "error_description": "Bad Request"}"#,
        r#"{"error": "invalid_client", "error_description": "Unauthorized"}"#,
        r#"{"error": "invalid_token"}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn drive_seeds() -> Vec<Vec<u8>> {
    [
        format!(r#"{{"nextPageToken": "~!!~AI9FV7T", "files": [{FILE}, {{"id": "2", "size": 5, "version": 1}}]}}"#),
        r#"{"files": []}"#.to_string(),
        format!(
            r#"{{"nextPageToken": "12", "newStartPageToken": "13", "changes": [{{"fileId": "1AbC", "removed": false, "file": {FILE}}}, {{"fileId": "2", "removed": true}}]}}"#
        ),
        r#"{"startPageToken": "12345"}"#.to_string(),
        FILE.to_string(),
        r#"{"error": {"code": 403, "message": "User Rate Limit Exceeded", "errors": [{"domain": "usageLimits", "reason": "userRateLimitExceeded", "message": "User Rate Limit Exceeded"}]}}"#.to_string(),
        r#"{"error": {"code": 400, "message": "Invalid Value", "errors": [{"domain": "global", "reason": "invalid", "location": "pageToken", "locationType": "parameter"}]}}"#.to_string(),
        r#"{"error": {"code": 401, "message": "Invalid Credentials", "errors": [{"reason": "authError", "location": "Authorization"}]}}"#.to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

const TOKENS: &[&[u8]] = &[
    br#""access_token":"#,
    br#""expires_in":"#,
    br#""refresh_token":"#,
    br#""scope":"#,
    br#""files":"#,
    br#""size":"#,
    br#""version":"#,
    br#""changes":"#,
    br#""file":"#,
    br#""error":"#,
    br#""errors":"#,
    br#""location":"pageToken""#,
    br#""reason":"rateLimitExceeded""#,
    br#""ya29.a0AfB_byC7xq9Lm3nVtR8pW2kJdFgH5sQeT""#,
];

/// A token response built from parts: right and wrong types, secrets, huge numbers.
fn token_body() -> impl Strategy<Value = Bytes> {
    let secret = || mutate::secret().prop_map(Value::from);
    let odd = || {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            Just(json!([])),
            mutate::secret().prop_map(|s| json!({ "t": s })),
        ]
    };
    let expires = prop_oneof![
        Just(json!(3599)),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(json!(i64::MAX)),
        Just(json!(i64::MAX / 1000)),
        Just(json!(-1)),
        Just(json!(1e300)),
        Just(json!("3599")),
        mutate::secret().prop_map(Value::from),
    ];
    (
        option::of(prop_oneof![4 => secret(), 1 => odd()]),
        option::of(expires),
        option::of(prop_oneof![4 => secret(), 1 => odd()]),
        option::of(prop_oneof![
            Just(json!(
                "openid email https://www.googleapis.com/auth/drive.appdata"
            )),
            "[ a-z:/.]{0,80}".prop_map(Value::from),
            odd(),
            secret(),
        ]),
        option::of(prop_oneof![
            ".{0,40}".prop_map(Value::from),
            odd(),
            secret()
        ]),
    )
        .prop_map(|(access, expires, refresh, scope, id_token)| {
            let mut map = serde_json::Map::new();
            for (k, v) in [
                ("access_token", access),
                ("expires_in", expires),
                ("refresh_token", refresh),
                ("scope", scope),
                ("id_token", id_token),
            ] {
                if let Some(v) = v {
                    map.insert(k.into(), v);
                }
            }
            Bytes(Value::Object(map).to_string().into_bytes())
        })
}

/// A Drive file built from parts, with int64 fields as strings, numbers or garbage.
fn drive_file() -> impl Strategy<Value = Value> {
    let int64 = || {
        option::of(prop_oneof![
            any::<i64>().prop_map(|n| Value::from(n.to_string())),
            any::<i64>().prop_map(Value::from),
            Just(json!("18446744073709551616")),
            Just(json!(1.5)),
            ".{0,10}".prop_map(Value::from),
        ])
    };
    (
        prop_oneof![".{0,30}".prop_map(Value::from), Just(json!(7))],
        option::of(".{0,30}"),
        int64(),
        int64(),
        option::of(prop_oneof![
            any::<bool>().prop_map(Value::from),
            Just(json!("yes"))
        ]),
    )
        .prop_map(|(id, name, size, version, trashed)| {
            let mut map = serde_json::Map::new();
            map.insert("id".into(), id);
            for (k, v) in [
                ("name", name.map(Value::from)),
                ("size", size),
                ("version", version),
                ("trashed", trashed),
            ] {
                if let Some(v) = v {
                    map.insert(k.into(), v);
                }
            }
            Value::Object(map)
        })
}

fn drive_body() -> impl Strategy<Value = Bytes> {
    let list = (vec(drive_file(), 0..4), option::of(".{0,20}"))
        .prop_map(|(files, next)| json!({ "files": files, "nextPageToken": next }));
    let change = (".{0,10}", any::<bool>(), option::of(drive_file()))
        .prop_map(|(id, removed, file)| json!({ "fileId": id, "removed": removed, "file": file }));
    let changes = (vec(change, 0..4), option::of(".{0,10}"), option::of(".{0,10}")).prop_map(
        |(changes, next, start)| {
            json!({ "changes": changes, "nextPageToken": next, "newStartPageToken": start })
        },
    );
    let error = (any::<u16>(), ".{0,20}", ".{0,20}", ".{0,20}").prop_map(
        |(code, message, reason, location)| {
            json!({ "error": { "code": code, "message": message,
                "errors": [{ "reason": reason, "location": location }] } })
        },
    );
    prop_oneof![list, changes, drive_file(), error].prop_map(|v| Bytes(v.to_string().into_bytes()))
}

fn retry_after() -> impl Strategy<Value = Option<Bytes>> {
    option::of(
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            Just("18446744073709551615".to_string()),
            Just("9223372036854775807".to_string()),
            Just("Wed, 21 Oct 2015 07:28:00 GMT".to_string()),
            Just(" 30 ".to_string()),
            "[ -~]{0,24}",
        ]
        .prop_map(|s| Bytes(s.into_bytes())),
    )
}

fn case() -> impl Strategy<Value = Case> {
    let kind = select(vec![
        Kind::Token,
        Kind::TokenError,
        Kind::FileList,
        Kind::ChangeList,
        Kind::StartPageToken,
        Kind::File,
        Kind::DriveError,
    ]);
    let status = prop_oneof![
        select(vec![200u16, 400, 401, 403, 404, 410, 429, 500, 503]),
        100..=999u16,
    ];
    let body = prop_oneof![
        3 => mutate::input(token_seeds(), TOKENS),
        3 => mutate::input(drive_seeds(), TOKENS),
        2 => token_body(),
        2 => drive_body(),
    ];
    (kind, status, retry_after(), body).prop_map(|(kind, status, retry_after, body)| Case {
        kind,
        status,
        retry_after,
        body,
    })
}

/// The values of the fields an error body is meant to show (Google's own error text); they
/// are echoed on purpose, so a secret inside them is not a leak of ours.
fn shown_fields(body: &[u8]) -> Vec<String> {
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        (
                            "error" | "error_description" | "message" | "reason",
                            Value::String(s),
                        ) => out.push(s.clone()),
                        _ => collect(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        collect(&v, &mut out);
    }
    out
}

fn check_error(e: &GoogleError, body: &[u8], echoes_allowed: bool) -> Result<(), TestCaseError> {
    let shown = if echoes_allowed {
        shown_fields(body)
    } else {
        Vec::new()
    };
    let secrets: Vec<String> = crate::secrets_in(body)
        .into_iter()
        .filter(|s| !shown.iter().any(|f| f.contains(s.as_str())))
        .collect();
    crate::no_secret_in(&e.to_string(), &secrets)?;
    crate::no_secret_in(&format!("{e:?}"), &secrets)?;
    if let Some(delay) = e.retry_after() {
        // The sync adds it to the clock (`Instant::now() + delay`), which must not overflow.
        prop_assert!(
            Instant::now().checked_add(delay).is_some() && delay <= Duration::from_secs(86_400),
            "Retry-After gives an unusable delay {delay:?}"
        );
    }
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(
    endpoint: &'static str,
    body: &[u8],
) -> Result<Option<T>, TestCaseError> {
    match drive::parse_json::<T>(endpoint, body) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            prop_assert!(matches!(e, GoogleError::Malformed { .. }), "{e:?}");
            check_error(&e, body, false)?;
            Ok(None)
        }
    }
}

fn check(case: Case) -> Result<(), TestCaseError> {
    let body = &case.body.0;
    let mut headers = HeaderMap::new();
    if let Some(v) = case
        .retry_after
        .as_ref()
        .and_then(|r| HeaderValue::from_bytes(&r.0).ok())
    {
        headers.insert(RETRY_AFTER, v);
    }
    let Ok(status) = StatusCode::from_u16(case.status) else {
        return Ok(());
    };
    match case.kind {
        Kind::Token => match parse_token_response(body) {
            Ok(t) => {
                // The tokens stay wrapped: Debug (what a careless log line prints) hides them.
                for token in std::iter::once(&t.access_token).chain(&t.refresh_token) {
                    let value = token.expose_secret();
                    prop_assert!(
                        value.len() < 8 || !format!("{token:?}").contains(value),
                        "Debug shows a token"
                    );
                }
                let _ = t.scopes();
                let now = appdata_syncd::store::now_ms();
                let expires_at = t.expires_at_ms(now);
                prop_assert!(expires_at >= now, "expiry {expires_at} before {now}");
            }
            Err(e) => {
                prop_assert!(matches!(e, GoogleError::Malformed { .. }), "{e:?}");
                check_error(&e, body, false)?;
            }
        },
        Kind::TokenError => {
            if status.is_success() {
                return Ok(());
            }
            for endpoint in ["token", "revoke"] {
                let e = oauth_error(endpoint, status, &headers, body);
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    prop_assert!(e.is_transient(), "{e:?}");
                }
                check_error(&e, body, true)?;
            }
        }
        Kind::FileList => {
            if let Some(list) = decode::<FileList>("files.list", body)? {
                let _ = (list.files.len(), list.next_page_token);
            }
        }
        Kind::ChangeList => {
            if let Some(list) = decode::<ChangeList>("changes.list", body)? {
                let _ = (list.changes.len(), list.new_start_page_token);
            }
        }
        Kind::StartPageToken => {
            decode::<StartPageToken>("changes.startPageToken", body)?;
        }
        Kind::File => {
            decode::<DriveFile>("files.create", body)?;
        }
        Kind::DriveError => {
            if status.is_success() {
                return Ok(());
            }
            let e = drive::drive_error("files.list", status, &headers, body);
            if matches!(status.as_u16(), 429 | 500..=599) {
                prop_assert!(e.is_transient(), "{e:?}");
            }
            check_error(&e, body, true)?;
        }
    }
    Ok(())
}

/// Bugs this target found, kept as fixed cases.
fn regressions() -> Vec<Case> {
    let case = |kind, status, retry_after: Option<&str>, body: &str| Case {
        kind,
        status,
        retry_after: retry_after.map(|r| Bytes(r.into())),
        body: Bytes(body.into()),
    };
    vec![
        // serde_json's message quoted the token that stood where a number belonged.
        case(
            Kind::Token,
            200,
            None,
            r#"{"expires_in":"ya29.0A-A_AaA0a0_0A-AAaaaaA_0AaAAA_"}"#,
        ),
        case(
            Kind::FileList,
            200,
            None,
            r#"{"files":"ya29.0A-A_AaA0a0_0A-AAaaaaA_0AaAAA_"}"#,
        ),
        // `expires_in * 1000` overflowed (a panic in debug builds, a past expiry in release).
        case(
            Kind::Token,
            200,
            None,
            r#"{"access_token":"ya29.x","expires_in":9223372036854775807}"#,
        ),
        // `Instant::now() + retry_after` in the sync's retry loop panicked.
        case(Kind::TokenError, 429, Some("18446744073709551615"), "{}"),
        case(Kind::DriveError, 503, Some("18446744073709551615"), "{}"),
    ]
}

pub fn run() {
    let fixed = regressions()
        .into_iter()
        .chain(token_seeds().into_iter().map(|body| Case {
            kind: Kind::Token,
            status: 200,
            retry_after: None,
            body: Bytes(body),
        }))
        .chain(drive_seeds().into_iter().map(|body| Case {
            kind: Kind::FileList,
            status: 200,
            retry_after: None,
            body: Bytes(body),
        }))
        .collect();
    crate::fuzz("google_json", fixed, case(), check);
}
