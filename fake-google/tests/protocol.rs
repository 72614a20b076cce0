//! Transport-level behaviour: gzip, HTTP/2 with prior knowledge, redirect faults, and the
//! per-minute quotas.

mod common;

use common::{drive_error, Env};
use fake_google::{Fault, Faults};
use serde_json::Value;
use std::io::Read;
use std::time::Duration;

const LIST: &str = "/drive/v3/files?spaces=appDataFolder";

fn gunzip(bytes: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .expect("valid gzip");
    out
}

#[tokio::test]
async fn json_is_gzipped_only_when_accept_encoding_and_user_agent_ask() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let f = env
        .fg
        .emulator()
        .put_file("1", "a", "plain text", None)
        .unwrap();
    let get = |path: String, ua: &'static str| {
        env.http
            .get(env.url(&path))
            .bearer_auth(&t.access)
            .header("Accept-Encoding", "gzip")
            .header("User-Agent", ua)
            .send()
    };
    let resp = get(LIST.into(), "my program (gzip)").await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let body: Value = serde_json::from_str(&gunzip(&resp.bytes().await.unwrap())).unwrap();
    assert_eq!(body["files"][0]["id"], f.id);
    let resp = get(LIST.into(), "my program").await.unwrap();
    assert!(
        resp.headers().get("content-encoding").is_none(),
        "no gzip in the UA"
    );
    let media = format!("/drive/v3/files/{}?alt=media", f.id);
    let resp = get(media, "my program (gzip)").await.unwrap();
    assert!(
        resp.headers().get("content-encoding").is_none(),
        "media is never gzipped"
    );
    assert_eq!(resp.text().await.unwrap(), "plain text");
    let resp = env
        .http
        .get(env.url(LIST))
        .bearer_auth(&t.access)
        .header("Accept-Encoding", "gzip;q=0, identity")
        .header("User-Agent", "x (gzip)")
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers().get("content-encoding").is_none(),
        "q=0 refuses gzip"
    );
    let stats = env.fg.emulator().stats();
    assert_eq!(stats.counter("json.gzip"), 1);
    assert_eq!(stats.counter("json.plain"), 2);
}

#[tokio::test]
async fn http2_with_prior_knowledge_and_http1_share_the_port() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .get(env.url(LIST))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let resp = env.get(LIST, &t.access).await;
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    let stats = env.fg.emulator().stats();
    assert_eq!(stats.counter("http.2"), 1);
    assert!(stats.counter("http.1") >= 2, "{stats:?}");
}

#[tokio::test]
async fn redirect_faults_answer_302_and_count_who_followed() {
    let env = Env::start().await;
    env.user("1");
    let target = env.url("/_emulator/redirect-target");
    env.fg.emulator().set_faults(Faults {
        token: Some(Fault {
            redirect_to: Some(target.clone()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let careful = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/token", "/revoke"] {
        let resp = careful.post(env.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 302);
        assert_eq!(resp.headers()["location"], target.as_str());
    }
    let resp = careful
        .get(env.url("/oauth2/v3/certs"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        302,
        "the JWKS falls back to the token faults"
    );
    assert_eq!(env.fg.emulator().stats().counter("redirect_target.hits"), 0);
    // reqwest's default policy follows; the target counts it.
    let resp = env.http.post(env.url("/token")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let stats = env.fg.emulator().stats();
    assert_eq!(stats.counter("redirects.sent"), 4);
    assert_eq!(stats.counter("redirect_target.hits"), 1);
    let bad = env
        .http
        .put(env.url("/_emulator/faults"))
        .body(r#"{"token": {"redirect_to": "ftp://x"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn per_minute_quotas_refuse_in_drives_shapes_until_the_window_slides() {
    let env = Env::start().await;
    let a = env.sign_in("1").await;
    let b = env.sign_in("2").await;
    let emu = env.fg.emulator();
    emu.set_faults(Faults {
        drive: Some(Fault {
            quota_per_minute: Some(3),
            user_quota_per_minute: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(env.get(LIST, &a.access).await.status(), 200);
    assert_eq!(env.get(LIST, &a.access).await.status(), 200);
    let resp = env.get(LIST, &a.access).await;
    assert!(
        resp.headers().get("retry-after").is_none(),
        "Drive documents none"
    );
    let (status, body) = (resp.status().as_u16(), resp.json::<Value>().await.unwrap());
    assert_eq!(status, 403);
    let e = drive_error(&body, 403);
    assert_eq!(
        (e["reason"].as_str(), e["domain"].as_str()),
        (Some("userRateLimitExceeded"), Some("usageLimits"))
    );
    assert_eq!(
        env.get(LIST, &b.access).await.status(),
        200,
        "another user's quota"
    );
    let (status, body) = env.get_json(LIST, &b.access).await;
    assert_eq!(status, 403, "the project's three are used");
    assert_eq!(drive_error(&body, 403)["reason"], "rateLimitExceeded");
    emu.advance_clock(Duration::from_secs(61));
    assert_eq!(
        env.get(LIST, &a.access).await.status(),
        200,
        "a minute later"
    );
    emu.set_faults(Faults {
        drive: Some(Fault {
            quota_per_minute: Some(0),
            error_status: Some(429),
            ..Default::default()
        }),
        ..Default::default()
    });
    let (status, body) = env.get_json(LIST, &a.access).await;
    assert_eq!(status, 429);
    assert_eq!(drive_error(&body, 429)["reason"], "rateLimitExceeded");
}
