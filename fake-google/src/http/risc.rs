//! Handlers of the RISC side: the configuration document, the SET keys, the stream management
//! API (`/v1beta/stream...`, authenticated by `crate::risc::management`), and the
//! `/_emulator/risc/...` controls. The logic lives in `crate::risc`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

use super::bearer;
use crate::risc::management::ApiResult;
use crate::{EmitEvent, Emulator, Error, RiscSettings};

/// `GET /.well-known/risc-configuration`, shaped as Google's live document: issuer, keys and
/// the management endpoints. (`get_configuration_endpoint` repeats Google's own doubled
/// `v1beta/v1beta/stream`, which answers 404 here as there: clients use `/v1beta/stream`, the
/// page's path. The keys are the emulator's own set; Google serves its SET keys from its
/// OAuth certs URL.)
pub(crate) async fn configuration(State(emu): State<Emulator>) -> Response {
    let base = emu.base_url();
    let doc = json!({
        "issuer": crate::risc::ISSUER,
        "jwks_uri": format!("{base}/risc/certs"),
        "delivery_methods_supported": ["http://schemas.openid.net/secevent/risc/delivery-method/push"],
        "add_subject_endpoint": format!("{base}/v1beta/subjects:add"),
        "get_status_endpoint": format!("{base}/v1beta/stream/status"),
        "get_configuration_endpoint": format!("{base}/v1beta/v1beta/stream"),
        "update_configuration_endpoint": format!("{base}/v1beta/stream:update"),
        "verification_endpoint": format!("{base}/v1beta/stream:verify"),
    });
    let mut resp = Json(doc).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    resp
}

/// `GET /risc/certs`: the SET signing keys, cached like the OAuth certs.
pub(crate) async fn certs(State(emu): State<Emulator>) -> Response {
    let max_age = emu.jwks_max_age_s.load(Ordering::Relaxed);
    let mut resp = Json(emu.risc_jwks()).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        resp.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    resp
}

fn json_body(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

fn answer(result: ApiResult) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Runs `f` for an authenticated caller (a service account's token), else 401.
fn authorised(emu: &Emulator, headers: &HeaderMap, f: impl FnOnce() -> ApiResult) -> Response {
    match emu.risc_caller(bearer(headers)) {
        Ok(_) => answer(f()),
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn stream_update(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authorised(&emu, &headers, || emu.risc_update_stream(&json_body(&body)))
}

pub(crate) async fn stream_get(State(emu): State<Emulator>, headers: HeaderMap) -> Response {
    authorised(&emu, &headers, || emu.risc_get_stream())
}

pub(crate) async fn stream_verify(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authorised(&emu, &headers, || emu.risc_verify(&json_body(&body)))
}

pub(crate) async fn status_get(State(emu): State<Emulator>, headers: HeaderMap) -> Response {
    authorised(&emu, &headers, || emu.risc_get_status())
}

pub(crate) async fn status_update(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authorised(&emu, &headers, || emu.risc_update_status(&json_body(&body)))
}

// ---- /_emulator/risc/... ----

type Ctl = Result<Response, Error>;

pub(crate) async fn create_service_account(State(emu): State<Emulator>) -> Ctl {
    let key = tokio::task::spawn_blocking(move || emu.create_service_account())
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok((StatusCode::CREATED, Json(key)).into_response())
}

pub(crate) async fn emit(State(emu): State<Emulator>, body: Bytes) -> Ctl {
    let event: EmitEvent =
        serde_json::from_slice(&body).map_err(|e| Error::Invalid(e.to_string()))?;
    let emitted = emu.emit_risc_event(event)?;
    Ok((StatusCode::CREATED, Json(emitted)).into_response())
}

pub(crate) async fn deliveries(State(emu): State<Emulator>) -> Ctl {
    Ok(Json(json!({ "deliveries": emu.risc_deliveries() })).into_response())
}

pub(crate) async fn replay(State(emu): State<Emulator>, Path(jti): Path<String>) -> Ctl {
    emu.replay_risc_delivery(&jti)?;
    Ok(Json(json!({})).into_response())
}

pub(crate) async fn get_stream(State(emu): State<Emulator>) -> Ctl {
    Ok(Json(json!({ "stream": emu.risc_stream() })).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamReq {
    url: String,
    #[serde(default)]
    events_requested: Option<Vec<String>>,
}

pub(crate) async fn put_stream(State(emu): State<Emulator>, body: Bytes) -> Ctl {
    let req: StreamReq =
        serde_json::from_slice(&body).map_err(|e| Error::Invalid(e.to_string()))?;
    emu.set_risc_stream(&req.url, req.events_requested)?;
    Ok(Json(json!({ "stream": emu.risc_stream() })).into_response())
}

pub(crate) async fn settings(State(emu): State<Emulator>, body: Bytes) -> Ctl {
    let settings: RiscSettings =
        serde_json::from_slice(&body).map_err(|e| Error::Invalid(e.to_string()))?;
    emu.set_risc_settings(settings);
    Ok(Json(json!({})).into_response())
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct RotateReq {
    grace_s: Option<u64>,
}

pub(crate) async fn rotate_keys(State(emu): State<Emulator>, body: Bytes) -> Ctl {
    let req: RotateReq = if body.iter().all(u8::is_ascii_whitespace) {
        RotateReq::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Error::Invalid(e.to_string()))?
    };
    let grace = std::time::Duration::from_secs(req.grace_s.unwrap_or(3600));
    tokio::task::spawn_blocking(move || emu.rotate_risc_keys(grace))
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(Json(json!({})).into_response())
}
