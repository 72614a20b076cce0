//! A client of the data API for tests. Every answer it gets is checked against
//! docs/openapi.json ([`crate::openapi::check`]): a status the document does not list for the
//! route, or a JSON body that does not match the documented schema, fails the test.

use reqwest::header::HeaderMap;
use serde_json::Value;

#[derive(Clone)]
pub struct ApiClient {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

#[derive(Debug)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
}

impl ApiResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.bytes)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
}

impl ApiClient {
    pub fn new(base: String, key: &str) -> ApiClient {
        ApiClient {
            base,
            key: key.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// The same API with another key.
    pub fn with_key(&self, key: &str) -> ApiClient {
        ApiClient {
            key: key.to_string(),
            ..self.clone()
        }
    }

    pub async fn get(&self, path_and_query: &str) -> ApiResponse {
        self.get_with(path_and_query, &[]).await
    }

    pub async fn get_with(&self, path_and_query: &str, headers: &[(&str, &str)]) -> ApiResponse {
        self.request("GET", path_and_query, headers, None).await
    }

    /// Any request; `key` None sends no Authorization header.
    pub async fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> ApiResponse {
        let method: reqwest::Method = method.parse().unwrap();
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path_and_query}", self.base));
        if !self.key.is_empty() {
            req = req.bearer_auth(&self.key);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap().to_vec();
        let answer = ApiResponse {
            status,
            headers,
            bytes,
        };
        crate::openapi::check(method.as_str(), path_and_query, &answer);
        answer
    }
}
