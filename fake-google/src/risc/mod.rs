//! Cross-Account Protection (RISC), Google's side: the configuration document, the SET signing
//! keys, the stream management API (service-account JWTs checked), and the push of security
//! event tokens to the registered receiver, with retries.
//! <https://developers.google.com/identity/protocols/risc>
//!
//! - [`set`]: minting SETs as the page's "Handle security events" example shows them, and
//!   [`SetForgery`] variants a receiver must refuse.
//! - [`management`]: `stream:update`, `stream`, `stream:verify`, `stream/status`,
//!   `stream/status:update`, authenticated as the page's "Generate an authorization token".
//! - [`delivery`]: the POST to the receiver and the retries ("Cross-Account Protection will
//!   attempt to redeliver events that it believes have not been delivered ... events are
//!   delivered with limited retries").

pub(crate) mod delivery;
pub(crate) mod management;
pub(crate) mod set;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::keys::{KeyRing, SigningKey};

pub use delivery::{Delivery, DeliveryOutcome};
pub use set::{
    hash_base64_sha512_sha512, EmitEvent, Emitted, RiscEvent, SetForgery, SubjectFormat,
};

/// The issuer of SETs, as Google's live configuration document gives it.
pub(crate) const ISSUER: &str = "https://accounts.google.com";
/// The `aud` of management API tokens (the page's "Generate an authorization token").
pub const MANAGEMENT_AUDIENCE: &str =
    "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService";
/// The delivery method of the page's `stream:update` example; the live configuration document
/// advertises the same URI with `http://`, and both are accepted.
pub const DELIVERY_METHOD_PUSH: &str =
    "https://schemas.openid.net/secevent/risc/delivery-method/push";
const DELIVERY_METHOD_PUSH_HTTP: &str =
    "http://schemas.openid.net/secevent/risc/delivery-method/push";

/// Knobs of the RISC side (`PUT /_emulator/risc/settings`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct RiscSettings {
    /// Accept an `http://` receiver URL. Google answers 403 "The delivery endpoint must be an
    /// HTTPS URL."; tests whose daemon serves plain HTTP on loopback turn this on.
    pub allow_http_receiver: bool,
    /// Delivery attempts per event, the first included. Google documents only "limited
    /// retries"; the number is the emulator's choice.
    pub delivery_attempts: u32,
    /// The wait before the first retry, doubling for each next one (not documented by Google).
    pub retry_initial_ms: u64,
}

impl Default for RiscSettings {
    fn default() -> Self {
        Self {
            allow_http_receiver: false,
            delivery_attempts: 5,
            retry_initial_ms: 1000,
        }
    }
}

/// Whether the stream delivers.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StreamStatus {
    Enabled,
    Disabled,
}

/// The project's event stream, as `stream:update` configured it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stream {
    pub delivery_method: String,
    pub url: String,
    pub events_requested: Vec<String>,
    pub status: StreamStatus,
}

/// A service account the emulator issued a key for (`create_service_account`).
pub(crate) struct ServiceAccount {
    pub(crate) email: String,
    pub(crate) public: jsonwebtoken::DecodingKey,
}

#[derive(Default)]
pub(crate) struct RiscState {
    /// The SET signing keys: their own ring, generated on first use.
    pub(crate) keys: Mutex<Option<KeyRing>>,
    /// By private_key_id.
    pub(crate) service_accounts: Mutex<HashMap<String, ServiceAccount>>,
    pub(crate) stream: Mutex<Option<Stream>>,
    pub(crate) deliveries: Mutex<Vec<Delivery>>,
    pub(crate) settings: Mutex<RiscSettings>,
}

impl RiscState {
    /// The current SET signing key (generating the ring on first use).
    pub(crate) fn with_keys<T>(&self, f: impl FnOnce(&mut KeyRing) -> T) -> T {
        let mut keys = self.keys.lock();
        let ring = keys.get_or_insert_with(|| {
            KeyRing::new(SigningKey::generate().expect("RSA key generation"))
        });
        f(ring)
    }
}

/// Whether `method` names push delivery.
pub(crate) fn is_push(method: &str) -> bool {
    method == DELIVERY_METHOD_PUSH || method == DELIVERY_METHOD_PUSH_HTTP
}
