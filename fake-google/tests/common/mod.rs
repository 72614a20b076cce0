//! Helpers shared by the black-box tests: a server on 127.0.0.1:0, a reqwest client, and
//! sign-in shortcuts that go through the real `/token` endpoint.
#![allow(dead_code)]

use fake_google::{FakeGoogle, MintCode, NewUser};
use serde_json::Value;

pub const APPDATA: &str = "https://www.googleapis.com/auth/drive.appdata";

pub struct Env {
    pub fg: FakeGoogle,
    pub http: reqwest::Client,
    pub base: String,
}

pub struct Tokens {
    pub access: String,
    pub refresh: Option<String>,
    pub id_token: String,
    pub body: Value,
}

impl Env {
    pub async fn start() -> Env {
        let fg = FakeGoogle::start().await.expect("fake-google starts");
        let base = fg.base_url();
        Env {
            fg,
            // Raw bodies, as Google sends them: the workspace may turn reqwest's gzip feature
            // on, and an automatically decompressing client would hide Content-Encoding.
            http: reqwest::Client::builder()
                .no_gzip()
                .build()
                .expect("an HTTP client"),
            base,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn user(&self, sub: &str) {
        self.fg
            .emulator()
            .create_user(NewUser {
                sub: sub.into(),
                ..Default::default()
            })
            .expect("user created");
    }

    pub fn code(&self, sub: &str) -> String {
        self.fg
            .emulator()
            .mint_auth_code(MintCode {
                sub: sub.into(),
                ..Default::default()
            })
            .expect("code minted")
    }

    /// POSTs a form to /token with the web client's credentials added.
    pub async fn token(&self, params: &[(&str, &str)]) -> reqwest::Response {
        let c = self.fg.clients();
        let mut form: Vec<(&str, &str)> = params.to_vec();
        form.push(("client_id", &c.web_client_id));
        form.push(("client_secret", &c.web_client_secret));
        self.http
            .post(self.url("/token"))
            .form(&form)
            .send()
            .await
            .unwrap()
    }

    pub async fn exchange(&self, code: &str) -> Tokens {
        let resp = self
            .token(&[("grant_type", "authorization_code"), ("code", code)])
            .await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        Tokens {
            access: body["access_token"].as_str().unwrap().to_string(),
            refresh: body["refresh_token"].as_str().map(str::to_string),
            id_token: body["id_token"].as_str().unwrap_or_default().to_string(),
            body,
        }
    }

    /// Creates `sub` and signs them in; returns their tokens.
    pub async fn sign_in(&self, sub: &str) -> Tokens {
        self.user(sub);
        let code = self.code(sub);
        self.exchange(&code).await
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = self.get(path, token).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// Checks Drive's error shape and returns `errors[0]`.
pub fn drive_error(body: &Value, code: u16) -> Value {
    assert_eq!(body["error"]["code"], code, "{body}");
    let item = body["error"]["errors"][0].clone();
    assert!(item["domain"].is_string(), "{body}");
    assert!(item["reason"].is_string(), "{body}");
    assert!(item["message"].is_string(), "{body}");
    item
}

/// A multipart/related upload body as Google's client libraries send it.
pub fn related(meta: &Value, content: &[u8], mime: &str) -> (String, Vec<u8>) {
    let b = "fg_boundary_42";
    let mut body = format!(
        "--{b}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n--{b}\r\nContent-Type: {mime}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    (format!("multipart/related; boundary={b}"), body)
}
