//! `POST /risc`: Cross-Account Protection's push endpoint. The body is one security event
//! token; it is verified and stored by [`crate::risc::Risc::receive`], and answered as RFC 8935
//! (push delivery of SETs) §2.2-2.4 and Google's page say
//! (<https://developers.google.com/identity/protocols/risc#validate_and_decode>):
//!
//! - 202 Accepted, empty: the SET is valid and stored (or its `jti` was stored already: a
//!   replay is acknowledged and ignored, so Google stops delivering it);
//! - 400 with `{"err": CODE, "description": TEXT}`, CODE one of RFC 8935's `invalid_request`,
//!   `invalid_key`, `invalid_issuer`, `invalid_audience`, `authentication_failed`: refused,
//!   nothing changed (an oversized or unreadable body is `invalid_request` too);
//! - 503 when Google's configuration or keys, or our database, cannot be reached: not the SET's
//!   fault, and Google delivers it again later.

use axum::body::Bytes;
use axum::extract::{FromRequest, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{IntakeState, BODY_TIMEOUT, MAX_BODY_BYTES};
use crate::risc::{Receipt, ReceiveError};

pub(super) async fn post_risc(
    State(state): State<IntakeState>,
    request: axum::extract::Request,
) -> Response {
    if !state.risc.enabled() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(request, &())).await {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) => {
            let why = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the body is larger than {MAX_BODY_BYTES} bytes")
            } else {
                "the request body could not be read".into()
            };
            crate::metrics::risc_received("invalid_request");
            return refusal(StatusCode::BAD_REQUEST, "invalid_request", why);
        }
        Err(_) => {
            crate::metrics::risc_received("invalid_request");
            let why = format!("the request body did not arrive within {BODY_TIMEOUT:?}");
            let mut resp = refusal(StatusCode::REQUEST_TIMEOUT, "invalid_request", why);
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
    };
    match state.risc.receive(&body).await {
        Ok(receipt) => {
            crate::metrics::risc_received(match receipt {
                Receipt::Accepted { .. } => "accepted",
                Receipt::Duplicate { .. } => "duplicate",
            });
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => answer_error(e),
    }
}

fn answer_error(e: ReceiveError) -> Response {
    crate::metrics::risc_received(e.code());
    if e.is_unavailable() {
        tracing::warn!(error = %e, "security event not accepted for now; Google will deliver it again");
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the event cannot be verified or stored right now; deliver it again later",
        );
    }
    tracing::warn!(err = e.code(), error = %e, "security event token refused");
    refusal(StatusCode::BAD_REQUEST, e.code(), e.to_string())
}

/// RFC 8935 §2.3's error body.
fn refusal(status: StatusCode, err: &str, description: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "err": err, "description": description.into() })),
    )
        .into_response()
}
