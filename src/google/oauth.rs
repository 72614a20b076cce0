//! OAuth 2.0 against Google's token and revoke endpoints.
//! <https://developers.google.com/identity/protocols/oauth2/web-server#exchange-authorization-code>

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{malformed, oauth_error, GoogleError};

/// This server's OAuth client and where Google's endpoints are.
#[derive(Clone)]
pub struct OAuthClient {
    http: reqwest::Client,
    token_uri: String,
    revoke_uri: String,
    client_id: String,
    client_secret: SecretString,
    redirect_uri: String,
}

/// The largest answer read from the token and revoke endpoints (real ones are a few KiB).
const MAX_TOKEN_RESPONSE: usize = 256 * 1024;

/// The longest access-token lifetime believed, in seconds.
const MAX_EXPIRES_IN_SECS: i64 = 86_400;

/// A successful token response. Tokens stay wrapped: their Debug prints `[REDACTED]`.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    pub access_token: SecretString,
    pub expires_in: i64,
    /// Space-separated scopes actually granted (granular consent may drop some).
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
    /// Sent only on first consent (or with prompt=consent).
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
}

impl TokenResponse {
    pub fn scopes(&self) -> Vec<&str> {
        self.scope
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .collect()
    }

    /// When the access token expires (Unix ms), for one obtained at `obtained_ms`. Google's
    /// live an hour; `expires_in` is clamped to 0..=1 day, so a nonsensical value (negative,
    /// or so large that `* 1000` overflowed) can neither panic nor make a token live forever.
    pub fn expires_at_ms(&self, obtained_ms: i64) -> i64 {
        obtained_ms.saturating_add(self.expires_in.clamp(0, MAX_EXPIRES_IN_SECS) * 1000)
    }
}

/// Decodes a 2xx body of the token endpoint.
pub fn parse_token_response(body: &[u8]) -> Result<TokenResponse, GoogleError> {
    serde_json::from_slice(body).map_err(|e| malformed("token", &e))
}

impl OAuthClient {
    pub fn new(
        http: reqwest::Client,
        token_uri: String,
        revoke_uri: String,
        client_id: String,
        client_secret: SecretString,
        redirect_uri: String,
    ) -> Self {
        Self {
            http,
            token_uri,
            revoke_uri,
            client_id,
            client_secret,
            redirect_uri,
        }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Redeems a server auth code from the app.
    pub async fn exchange_code(&self, code: &SecretString) -> Result<TokenResponse, GoogleError> {
        self.token_request(&[
            ("grant_type", "authorization_code"),
            ("code", code.expose_secret()),
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.expose_secret()),
            ("redirect_uri", &self.redirect_uri),
        ])
        .await
    }

    /// <https://developers.google.com/identity/protocols/oauth2/web-server#offline>
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> Result<TokenResponse, GoogleError> {
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
            ("client_id", &self.client_id),
            ("client_secret", self.client_secret.expose_secret()),
        ])
        .await
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenResponse, GoogleError> {
        const ENDPOINT: &str = "token";
        let resp = self
            .http
            .post(&self.token_uri)
            .form(form)
            .send()
            .await
            .map_err(|e| {
                crate::metrics::google_call(ENDPOINT, None);
                GoogleError::from_reqwest(ENDPOINT, e)
            })?;
        let status = resp.status();
        crate::metrics::google_call(ENDPOINT, Some(status.as_u16()));
        let headers = resp.headers().clone();
        let body = super::read_capped(ENDPOINT, resp, MAX_TOKEN_RESPONSE).await?;
        if !status.is_success() {
            return Err(oauth_error(ENDPOINT, status, &headers, &body));
        }
        parse_token_response(&body)
    }

    /// Revokes a token and with it the user's whole grant to this client.
    /// <https://developers.google.com/identity/protocols/oauth2/web-server#tokenrevoke>
    /// A token Google already considers invalid counts as revoked.
    pub async fn revoke(&self, token: &SecretString) -> Result<(), GoogleError> {
        const ENDPOINT: &str = "revoke";
        let resp = self
            .http
            .post(&self.revoke_uri)
            .form(&[("token", token.expose_secret())])
            .send()
            .await
            .map_err(|e| {
                crate::metrics::google_call(ENDPOINT, None);
                GoogleError::from_reqwest(ENDPOINT, e)
            })?;
        let status = resp.status();
        crate::metrics::google_call(ENDPOINT, Some(status.as_u16()));
        if status.is_success() {
            return Ok(());
        }
        let headers = resp.headers().clone();
        let body = super::read_capped(ENDPOINT, resp, MAX_TOKEN_RESPONSE)
            .await
            .unwrap_or_default();
        match oauth_error(ENDPOINT, status, &headers, &body) {
            GoogleError::Rejected { error, .. } if error == "invalid_token" => Ok(()),
            other => Err(other),
        }
    }
}
