//! `POST /authcode`: the Content-Type and body go to `intake::parse_auth_code`, the function
//! the handler runs on every request. A code it accepts is non-empty, at most 2048 URL-safe
//! characters and the one `authCode` value sent; its errors are 400 or 415 and echo nothing.

use axum::http::{header, HeaderMap, HeaderValue};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use secrecy::ExposeSecret;

use crate::mutate::{self, Bytes};

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

#[derive(Debug, Clone)]
struct Case {
    content_type: Option<Bytes>,
    body: Bytes,
    /// For generated bodies: the code the parser must return, or `None` if it must refuse.
    expect: Option<Option<String>>,
}

fn seeds() -> Vec<Vec<u8>> {
    [
        "authCode=4%2F0AbCdEfGhIjKlMnOp-qRsT_uVwXyZ",
        "authCode=4/0AbCdEfGhIjKlMnOp&other=1",
        "a=1&authCode=4%2F0Ab.~+=&b=%20",
        r#"{"authCode":"4/0AbCdEfGhIjKlMnOp-qRsT_uVwXyZ"}"#,
        r#"{"authCode":"4/0Ab","extra":[1,2,{"a":null}],"n":1e5}"#,
        "authCode=",
        "authCode=4/0A&authCode=4/0B",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn content_type() -> impl Strategy<Value = Option<Bytes>> {
    let named = prop_oneof![
        Just(FORM.to_string()),
        Just(format!("{FORM}; charset=UTF-8")),
        Just(JSON.to_string()),
        Just("Application/JSON ; charset=utf-8".to_string()),
        Just("APPLICATION/X-WWW-FORM-URLENCODED".to_string()),
        Just("text/plain".to_string()),
        Just(String::new()),
        Just(";".to_string()),
    ]
    .prop_map(|s| Some(Bytes(s.into_bytes())));
    prop_oneof![
        6 => named,
        1 => Just(None),
        1 => vec(any::<u8>(), 0..40).prop_map(|b| Some(Bytes(b))),
    ]
}

/// A value for `authCode`: a real-looking code, a secret, odd characters, or too long.
fn code_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "4/0[A-Za-z0-9_.~+=-]{10,200}",
        1 => mutate::secret(),
        1 => ".{0,40}",
        1 => "[A-Za-z0-9]{2040,2060}",
        1 => Just(String::new()),
    ]
}

fn valid_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 2048
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_/.~+=".contains(&b))
}

/// A form of several fields, `authCode` among them zero, one or more times.
fn form_case() -> impl Strategy<Value = Case> {
    let key = prop_oneof![
        4 => Just("authCode".to_string()),
        1 => Just("authcode".to_string()),
        1 => Just("authCode ".to_string()),
        1 => "[a-zA-Z]{1,8}",
    ];
    vec((key, code_value()), 0..5).prop_map(|fields| {
        let body = serde_urlencoded::to_string(&fields).unwrap_or_default();
        let codes: Vec<&String> = fields
            .iter()
            .filter(|(k, _)| k == "authCode")
            .map(|(_, v)| v)
            .collect();
        let expect = match codes.as_slice() {
            [code] if valid_code(code) => Some((*code).clone()),
            _ => None,
        };
        Case {
            content_type: Some(Bytes(FORM.into())),
            body: Bytes(body.into_bytes()),
            expect: Some(expect),
        }
    })
}

/// A JSON object with `authCode` once, as a string or another type, beside other fields.
fn json_case() -> impl Strategy<Value = Case> {
    let value = prop_oneof![
        4 => code_value().prop_map(serde_json::Value::from),
        1 => any::<i64>().prop_map(serde_json::Value::from),
        1 => Just(serde_json::Value::Null),
        1 => Just(serde_json::json!(["4/0Ab"])),
    ];
    (value, vec(("[a-z]{1,6}", any::<u32>()), 0..3)).prop_map(|(value, others)| {
        let expect = value.as_str().filter(|c| valid_code(c)).map(String::from);
        let mut map = serde_json::Map::new();
        for (k, v) in others {
            map.insert(k, v.into());
        }
        map.insert("authCode".into(), value);
        Case {
            content_type: Some(Bytes(JSON.into())),
            body: Bytes(serde_json::Value::Object(map).to_string().into_bytes()),
            expect: Some(expect),
        }
    })
}

fn case() -> impl Strategy<Value = Case> {
    let fuzzed = (
        content_type(),
        mutate::input(seeds(), &[b"authCode=", b"authCode", b"\"authCode\":"]),
    )
        .prop_map(|(content_type, body)| Case {
            content_type,
            body,
            expect: None,
        });
    prop_oneof![4 => fuzzed, 1 => form_case(), 1 => json_case()]
}

fn check(case: Case) -> Result<(), TestCaseError> {
    let mut headers = HeaderMap::new();
    if let Some(ct) = &case.content_type {
        if let Ok(v) = HeaderValue::from_bytes(&ct.0) {
            headers.insert(header::CONTENT_TYPE, v);
        }
    }
    let result = appdata_syncd::intake::parse_auth_code(&headers, &case.body.0);
    match &result {
        Ok(code) => {
            let code = code.expose_secret();
            prop_assert!(valid_code(code), "accepted an invalid code {code:?}");
        }
        Err(e) => {
            prop_assert!(
                matches!(e.code(), "invalid_request" | "unsupported_media_type"),
                "unexpected error code {}",
                e.code()
            );
            crate::no_secret_in(e.message(), &crate::secrets_in(&case.body.0))?;
            // The messages are fixed sentences: nothing from the body is echoed.
            prop_assert!(e.message().len() < 120, "long message: {}", e.message());
        }
    }
    if let Some(expect) = &case.expect {
        let got = result.as_ref().ok().map(|c| c.expose_secret().to_string());
        prop_assert_eq!(&got, expect);
    }
    Ok(())
}

pub fn run() {
    let fixed = seeds()
        .into_iter()
        .flat_map(|body| {
            [FORM, JSON].map(|ct| Case {
                content_type: Some(Bytes(ct.into())),
                body: Bytes(body.clone()),
                expect: None,
            })
        })
        .collect();
    crate::fuzz("intake_body", fixed, case(), check);
}
