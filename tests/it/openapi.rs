//! docs/openapi.json against the real server. Every answer the data API gives in this suite
//! goes through [`check`]: its (route, method, status) must be in the document and its JSON
//! body must match the documented schema (a small JSON Schema checker: `$ref`, `type`,
//! `properties`, `required`, `additionalProperties`, `items`, `enum`, `oneOf`). The test at
//! the bottom makes a request for each documented (route, method, status) and fails if one
//! is never answered.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use parking_lot::Mutex;
use serde_json::Value;

use crate::helpers::ApiResponse;

static DOC: LazyLock<Value> = LazyLock::new(|| {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("openapi.json is JSON")
});

/// (route template, method, status) answered so far in this process.
static COVERED: LazyLock<Mutex<BTreeSet<(String, String, String)>>> =
    LazyLock::new(Default::default);

/// The documented route `path` (no query) belongs to, by its template.
fn template_of(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').collect();
    DOC["paths"].as_object()?.keys().find_map(|template| {
        let t: Vec<&str> = template.split('/').collect();
        let fits = t.len() == segments.len()
            && t.iter()
                .zip(&segments)
                .all(|(t, s)| (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s);
        // A literal segment wins over a parameter (/v1/changes/cursor is not /v1/changes/{x}).
        fits.then(|| template.clone())
    })
}

/// Resolves `{"$ref": "#/components/schemas/X"}`.
fn resolve(schema: &Value) -> &Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut at = &*DOC;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            resolve(at)
        }
        None => schema,
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        other => panic!("openapi.json uses type {other:?}, which this checker does not know"),
    }
}

/// Problems of `v` against `schema`, with the JSON path where each was found.
pub fn validate(schema: &Value, v: &Value, at: &str, problems: &mut Vec<String>) {
    let schema = resolve(schema);
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let fitting = options
            .iter()
            .filter(|o| {
                let mut p = Vec::new();
                validate(o, v, at, &mut p);
                p.is_empty()
            })
            .count();
        if fitting != 1 {
            problems.push(format!("{at}: matches {fitting} of the oneOf schemas"));
        }
        return;
    }
    match schema.get("type") {
        Some(Value::String(t)) if !type_ok(t, v) => {
            problems.push(format!("{at}: expected {t}, got {v}"));
            return;
        }
        Some(Value::Array(ts)) if !ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)) => {
            problems.push(format!("{at}: expected one of {ts:?}, got {v}"));
            return;
        }
        _ => {}
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            problems.push(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), v.as_array()) {
        for (i, item) in array.iter().enumerate() {
            validate(items, item, &format!("{at}[{i}]"), problems);
        }
    }
    if let Some(object) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                problems.push(format!("{at}: missing required {name:?}"));
            }
        }
        for (k, value) in object {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(s, value, &format!("{at}.{k}"), problems),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        problems.push(format!("{at}: {k:?} is not in the schema"))
                    }
                    Some(s @ Value::Object(_)) => {
                        validate(s, value, &format!("{at}.{k}"), problems)
                    }
                    _ => {}
                },
            }
        }
    }
}

/// Checks one answer of the data API against the document (see the module's doc).
pub fn check(method: &str, path_and_query: &str, answer: &ApiResponse) {
    let path = path_and_query.split('?').next().unwrap();
    let Some(template) = template_of(path) else {
        // Unknown routes answer the generic 404 (or 401 without a key): not per route.
        assert!(
            matches!(answer.status, 401 | 404 | 405),
            "{method} {path}: an undocumented route answered {}",
            answer.status
        );
        return;
    };
    let method_lc = method.to_ascii_lowercase();
    let Some(op) = DOC["paths"][&template].get(&method_lc) else {
        assert_eq!(answer.status, 405, "{method} {template} is not documented");
        return;
    };
    let status = answer.status.to_string();
    let Some(response) = op["responses"].get(&status) else {
        panic!(
            "{method} {template} answered {status}, which docs/openapi.json does not list for it: {}",
            String::from_utf8_lossy(&answer.bytes)
        );
    };
    let response = resolve(response);
    let content_type = answer
        .header("content-type")
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    match response
        .get("content")
        .and_then(|c| c.get("application/json"))
    {
        Some(media) if content_type == "application/json" => {
            let body: Value = serde_json::from_slice(&answer.bytes)
                .unwrap_or_else(|e| panic!("{method} {template} {status}: not JSON: {e}"));
            let mut problems = Vec::new();
            validate(&media["schema"], &body, "$", &mut problems);
            assert!(
                problems.is_empty(),
                "{method} {template} {status}: the body does not match docs/openapi.json:\n{}\n{body}",
                problems.join("\n")
            );
        }
        Some(_) => {
            panic!("{method} {template} {status}: documented as JSON, sent {content_type:?}")
        }
        None => {}
    }
    COVERED.lock().insert((template, method_lc, status));
}

/// Every (route, method, status) the document lists.
pub fn documented() -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (template, item) in DOC["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for status in op["responses"].as_object().unwrap().keys() {
                out.insert((template.clone(), method.clone(), status.clone()));
            }
        }
    }
    out
}

pub fn covered() -> BTreeSet<(String, String, String)> {
    COVERED.lock().clone()
}

#[test]
fn the_checker_catches_wrong_bodies() {
    let schema = serde_json::json!({"$ref": "#/components/schemas/Error"});
    let mut p = Vec::new();
    validate(
        &schema,
        &serde_json::json!({"error": "x", "message": "y"}),
        "$",
        &mut p,
    );
    assert!(p.is_empty(), "{p:?}");
    validate(&schema, &serde_json::json!({"error": 1}), "$", &mut p);
    assert!(p.len() >= 2, "{p:?}");
}
