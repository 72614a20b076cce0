//! The RISC stream management API, as the page describes it
//! (<https://developers.google.com/identity/protocols/risc#register_receiver>), and service
//! accounts to call it with.
//!
//! Authentication ("Generate an authorization token"): a JWT signed RS256 with the service
//! account's private key, `kid` its `private_key_id`, claims `iss` = `sub` = the service
//! account's email, `aud` = [`MANAGEMENT_AUDIENCE`], `iat` = now, `exp` = `iat` + 3600
//! ("Token must expire in exactly one hour": held to exactly), sent as a bearer token. Anything
//! else is 401 "Unauthorized.". Errors use Google's API error shape,
//! `{"error": {"code", "message", "status"}}`, with the messages of the page's "Error code
//! reference".

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

use super::{
    is_push, EmitEvent, RiscEvent, ServiceAccount, Stream, StreamStatus, DELIVERY_METHOD_PUSH,
    MANAGEMENT_AUDIENCE,
};
use crate::{ids, Emulator, Error};

/// A management API refusal.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn unauthorized() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized.")
    }

    fn missing(field: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Stream configuration must contain {field} field."),
        )
    }

    fn no_stream(message: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status_name = match self.status {
            StatusCode::BAD_REQUEST => "INVALID_ARGUMENT",
            StatusCode::UNAUTHORIZED => "UNAUTHENTICATED",
            StatusCode::FORBIDDEN => "PERMISSION_DENIED",
            StatusCode::NOT_FOUND => "NOT_FOUND",
            _ => "UNKNOWN",
        };
        let body = json!({"error": {
            "code": self.status.as_u16(), "message": self.message, "status": status_name,
        }});
        (self.status, Json(body)).into_response()
    }
}

pub(crate) type ApiResult = Result<Value, ApiError>;

impl Emulator {
    /// Issues a service account key, as the Cloud console's "Create key" (JSON) downloads it.
    /// Only these accounts may call the management API. Generates an RSA-2048 key.
    pub fn create_service_account(&self) -> serde_json::Value {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key generation");
        let private_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("PKCS#8 PEM")
            .to_string();
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("a public PEM");
        let key_id = ids::kid();
        let name = format!("risc-admin-{}", ids::url_safe(4).to_lowercase());
        let email = format!("{name}@{}.iam.gserviceaccount.com", self.project_id);
        let public = DecodingKey::from_rsa_pem(public_pem.as_bytes()).expect("our own PEM");
        self.risc.service_accounts.lock().insert(
            key_id.clone(),
            ServiceAccount {
                email: email.clone(),
                public,
            },
        );
        json!({
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": key_id,
            "private_key": private_pem,
            "client_email": email,
            "client_id": ids::url_safe(21),
            "auth_uri": format!("{}/o/oauth2/auth", self.base_url),
            "token_uri": format!("{}/token", self.base_url),
        })
    }

    /// The bearer token of a management call: the service account it proves, or 401.
    pub(crate) fn risc_caller(&self, bearer: Option<&str>) -> Result<String, ApiError> {
        let token = bearer.ok_or_else(ApiError::unauthorized)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| ApiError::unauthorized())?;
        if header.alg != Algorithm::RS256 {
            return Err(ApiError::unauthorized());
        }
        let kid = header.kid.ok_or_else(ApiError::unauthorized)?;
        let (email, key) = {
            let accounts = self.risc.service_accounts.lock();
            let account = accounts.get(&kid).ok_or_else(ApiError::unauthorized)?;
            (account.email.clone(), account.public.clone())
        };
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[&email]);
        v.set_audience(&[MANAGEMENT_AUDIENCE]);
        v.sub = Some(email.clone());
        v.set_required_spec_claims(&["exp", "iat", "iss", "sub", "aud"]);
        v.leeway = 60;
        #[derive(serde::Deserialize)]
        struct Claims {
            iat: i64,
            exp: i64,
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|_| ApiError::unauthorized())?
            .claims;
        let now = chrono::Utc::now().timestamp();
        if claims.exp - claims.iat != 3600 || claims.iat > now + 60 {
            return Err(ApiError::unauthorized());
        }
        Ok(email)
    }

    /// `POST /v1beta/stream:update`.
    pub(crate) fn risc_update_stream(&self, body: &Value) -> ApiResult {
        let delivery = body
            .get("delivery")
            .ok_or_else(|| ApiError::missing("delivery"))?;
        let method = delivery
            .get("delivery_method")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::missing("delivery_method"))?;
        let url = delivery
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::missing("url"))?;
        let events: Vec<String> = body
            .get("events_requested")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::missing("events_requested"))?
            .iter()
            .filter_map(|e| e.as_str().map(String::from))
            .collect();
        if !is_push(method) {
            // Not in the page's error table: the strictest plausible answer.
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("Unsupported delivery method {method}."),
            ));
        }
        let parsed = url::Url::parse(url).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "The delivery endpoint is not a URL.",
            )
        })?;
        let http_allowed = self.risc.settings.lock().allow_http_receiver;
        if parsed.scheme() != "https" && !(http_allowed && parsed.scheme() == "http") {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "The delivery endpoint must be an HTTPS URL.",
            ));
        }
        let mut stream = self.risc.stream.lock();
        let status = stream.as_ref().map_or(StreamStatus::Enabled, |s| s.status);
        let updated = Stream {
            delivery_method: method.to_string(),
            url: url.to_string(),
            events_requested: events,
            status,
        };
        *stream = Some(updated.clone());
        Ok(stream_json(&updated))
    }

    /// `GET /v1beta/stream`.
    pub(crate) fn risc_get_stream(&self) -> ApiResult {
        match &*self.risc.stream.lock() {
            Some(s) => Ok(stream_json(s)),
            None => Err(ApiError::no_stream("Project has no RISC configuration.")),
        }
    }

    /// `GET /v1beta/stream/status`.
    pub(crate) fn risc_get_status(&self) -> ApiResult {
        match &*self.risc.stream.lock() {
            Some(s) => Ok(json!({ "status": s.status })),
            None => Err(ApiError::no_stream("Project has no RISC configuration.")),
        }
    }

    /// `POST /v1beta/stream/status:update`.
    pub(crate) fn risc_update_status(&self, body: &Value) -> ApiResult {
        let status = match body.get("status").and_then(Value::as_str) {
            Some("enabled") => StreamStatus::Enabled,
            Some("disabled") => StreamStatus::Disabled,
            _ => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "Unsupported status. Invalid status.",
                ))
            }
        };
        let mut stream = self.risc.stream.lock();
        let s = stream.as_mut().ok_or_else(|| {
            ApiError::no_stream("Project has no existing RISC configuration, cannot update status.")
        })?;
        s.status = status;
        Ok(json!({ "status": status }))
    }

    /// `POST /v1beta/stream:verify`: a verification event with the body's `state`, through
    /// the stream like any event.
    pub(crate) fn risc_verify(&self, body: &Value) -> ApiResult {
        if self.risc.stream.lock().is_none() {
            return Err(ApiError::no_stream("Project has no RISC configuration."));
        }
        let mut event = EmitEvent::new("", RiscEvent::Verification);
        event.state = Some(
            body.get("state")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        );
        self.emit_risc_event(event)
            .map(|_| json!({}))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
    }

    /// Sets the stream directly (tests that do not exercise the management API).
    pub fn set_risc_stream(&self, url: &str, events: Option<Vec<String>>) -> Result<(), Error> {
        url::Url::parse(url).map_err(|_| Error::Invalid(format!("{url:?} is not a URL")))?;
        let events =
            events.unwrap_or_else(|| RiscEvent::ALL.iter().map(|e| e.uri().to_string()).collect());
        *self.risc.stream.lock() = Some(Stream {
            delivery_method: DELIVERY_METHOD_PUSH.into(),
            url: url.to_string(),
            events_requested: events,
            status: StreamStatus::Enabled,
        });
        Ok(())
    }

    pub fn risc_stream(&self) -> Option<Stream> {
        self.risc.stream.lock().clone()
    }
}

/// The stream configuration as `stream` and `stream:update` answer it: the request's fields,
/// and the requested event types Google supports as `events_delivered` (the page does not show
/// the answer; this shape is the emulator's choice).
fn stream_json(s: &Stream) -> Value {
    let supported: Vec<&str> = RiscEvent::ALL.iter().map(|e| e.uri()).collect();
    let delivered: Vec<&String> = s
        .events_requested
        .iter()
        .filter(|e| supported.contains(&e.as_str()))
        .collect();
    json!({
        "delivery": { "delivery_method": s.delivery_method, "url": s.url },
        "events_requested": s.events_requested,
        "events_delivered": delivered,
    })
}
