//! Google's RISC stream management API, as `appdata-syncd risc ...` calls it, authenticated as
//! the page "Protect user accounts with Cross-Account Protection" says
//! (<https://developers.google.com/identity/protocols/risc#register_receiver>):
//!
//! "create a JWT with the following claims: iss and sub = the service account's email, aud =
//! `https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService`, iat = now,
//! exp = now + 3600", signed (RS256) with the private key of the service account's JSON key,
//! its `private_key_id` as `kid`, and sent as `Authorization: Bearer`. A fresh token is made
//! for every call (they are valid for one hour).
//!
//! - `POST {base}/v1beta/stream:update` registers the receiver and the event types;
//! - `GET {base}/v1beta/stream` reads the configuration back;
//! - `POST {base}/v1beta/stream:verify` with `{"state": ...}` sends a verification event;
//! - `GET {base}/v1beta/stream/status`, `POST {base}/v1beta/stream/status:update` with
//!   `{"status": "enabled" | "disabled"}` read and change whether events flow.

use std::path::Path;

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::risc::{EventType, DELIVERY_METHOD_PUSH};
use super::GoogleError;

/// The `aud` of every management API token.
pub const MANAGEMENT_AUDIENCE: &str =
    "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService";
/// Google's management API.
pub const GOOGLE_API_BASE: &str = "https://risc.googleapis.com";
/// "Token must expire in exactly one hour" (the page's Java sample).
const TOKEN_LIFETIME_S: i64 = 3600;

/// A service account's JSON key, as downloaded from the Cloud console ("Create a key for your
/// newly created service account. Choose the JSON key type").
#[derive(Clone)]
pub struct ServiceAccountKey {
    pub client_email: String,
    pub private_key_id: String,
    pub project_id: Option<String>,
    key: EncodingKey,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("private_key", &"[redacted]")
            .finish()
    }
}

impl ServiceAccountKey {
    pub fn parse(text: &str) -> anyhow::Result<ServiceAccountKey> {
        #[derive(Deserialize)]
        struct File {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            project_id: Option<String>,
            private_key_id: String,
            private_key: String,
            client_email: String,
        }
        let file: File = serde_json::from_str(text).context(
            "not a Google service account key (expected type, private_key_id, private_key, client_email)",
        )?;
        if file.kind != "service_account" {
            anyhow::bail!("the key's type is {:?}, not \"service_account\"", file.kind);
        }
        if file.client_email.trim().is_empty() || file.private_key_id.trim().is_empty() {
            anyhow::bail!("client_email and private_key_id must not be empty");
        }
        let key = EncodingKey::from_rsa_pem(file.private_key.as_bytes())
            .map_err(|_| anyhow::anyhow!("private_key is not an RSA private key in PEM"))?;
        Ok(ServiceAccountKey {
            client_email: file.client_email,
            private_key_id: file.private_key_id,
            project_id: file.project_id,
            key,
        })
    }

    pub fn read(path: &Path) -> anyhow::Result<ServiceAccountKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read service account key {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The management API's bearer token, issued `now` (seconds since the epoch).
    pub fn bearer_token(&self, now: i64) -> String {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            sub: &'a str,
            aud: &'a str,
            iat: i64,
            exp: i64,
        }
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.private_key_id.clone());
        let claims = Claims {
            iss: &self.client_email,
            sub: &self.client_email,
            aud: MANAGEMENT_AUDIENCE,
            iat: now,
            exp: now + TOKEN_LIFETIME_S,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .expect("RS256 signing with a parsed RSA key cannot fail")
    }
}

/// Whether the stream delivers (`GET .../stream/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamStatus {
    Enabled,
    Disabled,
}

pub struct RiscApi {
    http: reqwest::Client,
    base: String,
    account: ServiceAccountKey,
}

impl RiscApi {
    pub fn new(http: reqwest::Client, base: &str, account: ServiceAccountKey) -> RiscApi {
        RiscApi {
            http,
            base: base.trim_end_matches('/').to_string(),
            account,
        }
    }

    /// Registers `receiver` (our `POST /risc`) for every event type the daemon acts on.
    pub async fn update_stream(&self, receiver: &str) -> Result<Value, GoogleError> {
        let events: Vec<&str> = EventType::SUPPORTED
            .iter()
            .filter_map(|t| t.uri())
            .collect();
        let body = json!({
            "delivery": { "delivery_method": DELIVERY_METHOD_PUSH, "url": receiver },
            "events_requested": events,
        });
        self.call(reqwest::Method::POST, "v1beta/stream:update", Some(body))
            .await
    }

    pub async fn stream(&self) -> Result<Value, GoogleError> {
        self.call(reqwest::Method::GET, "v1beta/stream", None).await
    }

    /// Asks Google to send a verification event carrying `state` to the receiver.
    pub async fn verify(&self, state: &str) -> Result<(), GoogleError> {
        self.call(
            reqwest::Method::POST,
            "v1beta/stream:verify",
            Some(json!({ "state": state })),
        )
        .await
        .map(drop)
    }

    pub async fn status(&self) -> Result<StreamStatus, GoogleError> {
        #[derive(Deserialize)]
        struct Answer {
            status: StreamStatus,
        }
        let v = self
            .call(reqwest::Method::GET, "v1beta/stream/status", None)
            .await?;
        serde_json::from_value::<Answer>(v)
            .map(|a| a.status)
            .map_err(|e| super::malformed("risc_stream_status", &e))
    }

    pub async fn set_status(&self, status: StreamStatus) -> Result<(), GoogleError> {
        self.call(
            reqwest::Method::POST,
            "v1beta/stream/status:update",
            Some(json!({ "status": status })),
        )
        .await
        .map(drop)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, GoogleError> {
        const ENDPOINT: &str = "risc_management";
        let token = self.account.bearer_token(chrono::Utc::now().timestamp());
        let mut req = self
            .http
            .request(method, format!("{}/{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| {
            crate::metrics::google_call(ENDPOINT, None);
            GoogleError::from_reqwest(ENDPOINT, e)
        })?;
        let status = resp.status();
        crate::metrics::google_call(ENDPOINT, Some(status.as_u16()));
        let bytes = super::read_capped(ENDPOINT, resp, 256 * 1024).await?;
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| super::malformed(ENDPOINT, &e));
        }
        Err(api_error(ENDPOINT, status, &bytes))
    }
}

/// Google's API error body: `{"error": {"code": 403, "message": "...", "status": "..."}}`; the
/// page's "Error code reference" lists the messages.
fn api_error(endpoint: &'static str, status: reqwest::StatusCode, body: &[u8]) -> GoogleError {
    #[derive(Deserialize, Default)]
    struct Body {
        #[serde(default)]
        error: Detail,
    }
    #[derive(Deserialize, Default)]
    struct Detail {
        #[serde(default)]
        message: String,
        #[serde(default)]
        status: String,
    }
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return GoogleError::Unavailable {
            endpoint,
            status: status.as_u16(),
            retry_after: None,
        };
    }
    let parsed: Body = serde_json::from_slice(body).unwrap_or_default();
    GoogleError::Rejected {
        endpoint,
        status: status.as_u16(),
        error: if parsed.error.status.is_empty() {
            "unknown".into()
        } else {
            parsed.error.status
        },
        description: parsed.error.message,
    }
}
