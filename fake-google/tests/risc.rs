//! Cross-Account Protection's side of the emulator, against Google's page
//! (<https://developers.google.com/identity/protocols/risc>): the configuration document and
//! keys, SETs shaped as the page shows them, the management API's service-account tokens and
//! errors, and the push with retries.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Env;
use fake_google::{
    hash_base64_sha512_sha512, DeliveryOutcome, EmitEvent, RiscEvent, RiscSettings, SetForgery,
    MANAGEMENT_AUDIENCE,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};

/// A receiver on loopback answering the statuses of `script` in turn (then the last one).
async fn receiver(script: Vec<u16>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().route(
        "/risc",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let status = script[n.min(script.len() - 1)];
            async move {
                assert_eq!(headers["content-type"], "application/secevent+jwt");
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/risc"), hits)
}

fn fast(env: &Env) {
    env.fg.emulator().set_risc_settings(RiscSettings {
        allow_http_receiver: true,
        delivery_attempts: 3,
        retry_initial_ms: 50,
    });
}

async fn finished(env: &Env, jti: &str) -> fake_google::Delivery {
    for _ in 0..200 {
        let d = env
            .fg
            .emulator()
            .risc_deliveries()
            .into_iter()
            .rev()
            .find(|d| d.jti == jti);
        if let Some(d) = d.filter(|d| d.outcome != DeliveryOutcome::Pending) {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the delivery of {jti} did not end");
}

/// Decodes `set` with the key of the RISC JWKS its kid names, as a receiver would.
async fn verify(env: &Env, set: &str) -> Value {
    let config: Value = env
        .http
        .get(env.url("/.well-known/risc-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwks: Value = env
        .http
        .get(config["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = jsonwebtoken::decode_header(set).unwrap().kid.unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap();
    let key =
        DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap())
            .unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.set_issuer(&[config["issuer"].as_str().unwrap()]);
    v.set_audience(&[env.fg.clients().web_client_id]);
    v.validate_exp = false;
    v.set_required_spec_claims(&["iss", "aud"]);
    jsonwebtoken::decode::<Value>(set, &key, &v).unwrap().claims
}

#[tokio::test]
async fn sets_look_as_the_page_shows_and_verify_against_the_configuration_documents_keys() {
    let env = Env::start().await;
    let config: Value = env
        .http
        .get(env.url("/.well-known/risc-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["issuer"], "https://accounts.google.com");
    for key in [
        "jwks_uri",
        "update_configuration_endpoint",
        "verification_endpoint",
        "get_status_endpoint",
    ] {
        assert!(
            config[key].as_str().unwrap().starts_with(&env.base),
            "{key}: {config}"
        );
    }
    env.user("7");
    let (url, _) = receiver(vec![202]).await;
    fast(&env);
    env.fg.emulator().set_risc_stream(&url, None).unwrap();
    let emitted = env
        .fg
        .emulator()
        .emit_risc_event(EmitEvent::new("7", RiscEvent::AccountDisabled).reason("hijacking"))
        .unwrap();
    let claims = verify(&env, &emitted.set).await;
    assert_eq!(claims["jti"], emitted.jti.as_str());
    let event =
        &claims["events"]["https://schemas.openid.net/secevent/risc/event-type/account-disabled"];
    assert_eq!(event["reason"], "hijacking");
    assert_eq!(event["subject"]["subject_type"], "iss-sub");
    assert_eq!(event["subject"]["sub"], "7");
    assert_eq!(
        finished(&env, &emitted.jti).await.outcome,
        DeliveryOutcome::Delivered
    );
    assert_eq!(env.fg.emulator().stats().counter("risc.delivered"), 1);
}

#[tokio::test]
async fn token_revoked_names_the_refresh_token_by_its_prefix_or_double_sha512_and_revokes_it() {
    let env = Env::start().await;
    env.user("8");
    let tokens = env.exchange(&env.code("8")).await;
    let refresh = tokens.refresh.unwrap();
    let (url, _) = receiver(vec![202]).await;
    fast(&env);
    env.fg.emulator().set_risc_stream(&url, None).unwrap();
    let uri = "https://schemas.openid.net/secevent/oauth/event-type/token-revoked";
    let mut prefix = EmitEvent::new("8", RiscEvent::TokenRevoked).no_side_effects();
    prefix.token_identifier_alg = Some("prefix".into());
    let set = env.fg.emulator().emit_risc_event(prefix).unwrap().set;
    let subject = verify(&env, &set).await["events"][uri]["subject"].clone();
    assert_eq!(subject["token"], &refresh[..16]);
    assert_eq!(subject["token_type"], "refresh_token");
    let set = env
        .fg
        .emulator()
        .emit_risc_event(EmitEvent::new("8", RiscEvent::TokenRevoked))
        .unwrap()
        .set;
    let subject = verify(&env, &set).await["events"][uri]["subject"].clone();
    assert_eq!(subject["token_identifier_alg"], "hash_base64_sha512_sha512");
    assert_eq!(subject["token"], hash_base64_sha512_sha512(&refresh));
    // Google reports what happened: the grant is gone.
    let resp = env
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
        .await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn deliveries_are_retried_while_the_receiver_fails_and_a_400_is_final() {
    let env = Env::start().await;
    env.user("9");
    fast(&env);
    let (url, hits) = receiver(vec![503, 500, 202]).await;
    env.fg.emulator().set_risc_stream(&url, None).unwrap();
    let jti = env
        .fg
        .emulator()
        .emit_risc_event(EmitEvent::new("9", RiscEvent::SessionsRevoked))
        .unwrap()
        .jti;
    let d = finished(&env, &jti).await;
    assert_eq!(d.statuses, vec![Some(503), Some(500), Some(202)]);
    assert_eq!(d.outcome, DeliveryOutcome::Delivered);
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    let (url, hits) = receiver(vec![400]).await;
    env.fg.emulator().set_risc_stream(&url, None).unwrap();
    let jti = env
        .fg
        .emulator()
        .emit_risc_event(EmitEvent::new("9", RiscEvent::SessionsRevoked))
        .unwrap()
        .jti;
    assert_eq!(
        finished(&env, &jti).await.outcome,
        DeliveryOutcome::Rejected
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Nobody listening: every attempt fails, then the event is dropped.
    let closed = format!("http://127.0.0.1:{}/risc", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    env.fg.emulator().set_risc_stream(&closed, None).unwrap();
    let jti = env
        .fg
        .emulator()
        .emit_risc_event(EmitEvent::new("9", RiscEvent::SessionsRevoked))
        .unwrap()
        .jti;
    let d = finished(&env, &jti).await;
    assert_eq!((d.outcome, d.statuses.len()), (DeliveryOutcome::Dropped, 3));
    let stats = env.fg.emulator().stats();
    assert_eq!(stats.counter("risc.dropped"), 1);
    assert_eq!(stats.counter("risc.retries"), 2 + 2);

    // Replays send the same bytes again.
    env.fg.emulator().set_risc_stream(&url, None).unwrap();
    env.fg.emulator().replay_risc_delivery(&jti).unwrap();
    let again = finished(&env, &jti).await;
    assert_eq!(again.url, url);
}

#[tokio::test]
async fn forgeries_are_the_forgeries_they_name() {
    let env = Env::start().await;
    env.user("10");
    let (url, _) = receiver(vec![202]).await;
    fast(&env);
    env.fg.emulator().set_risc_stream(&url, None).unwrap();
    let forge = |f| {
        env.fg
            .emulator()
            .emit_risc_event(EmitEvent::new("10", RiscEvent::AccountEnabled).forged(f))
            .unwrap()
            .set
    };
    let payload = |set: &str| -> Value {
        use base64::Engine;
        let part = set.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    assert!(jsonwebtoken::decode_header(&forge(SetForgery::AlgNone)).is_err());
    assert_eq!(
        jsonwebtoken::decode_header(&forge(SetForgery::Hs256PublicKey))
            .unwrap()
            .alg,
        Algorithm::HS256
    );
    assert_ne!(
        payload(&forge(SetForgery::WrongAudience))["aud"],
        env.fg.clients().web_client_id.as_str()
    );
    assert_ne!(
        payload(&forge(SetForgery::WrongIssuer))["iss"],
        "https://accounts.google.com"
    );
    let now = chrono::Utc::now().timestamp();
    assert!(
        payload(&forge(SetForgery::ExpiredIat))["iat"]
            .as_i64()
            .unwrap()
            < now - 20 * 86_400
    );
    assert!(
        payload(&forge(SetForgery::FutureIat))["iat"]
            .as_i64()
            .unwrap()
            > now + 600
    );
    assert!(payload(&forge(SetForgery::NoEvents))
        .get("events")
        .is_none());
}

/// A management API token as the page's "Generate an authorization token" makes it, changed
/// by `tweak`.
fn bearer(key: &Value, tweak: impl FnOnce(&mut Value, &mut Header)) -> String {
    let now = chrono::Utc::now().timestamp();
    let email = key["client_email"].as_str().unwrap();
    let mut claims = json!({"iss": email, "sub": email, "aud": MANAGEMENT_AUDIENCE, "iat": now, "exp": now + 3600});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key["private_key_id"].as_str().unwrap().to_string());
    tweak(&mut claims, &mut header);
    let signing =
        EncodingKey::from_rsa_pem(key["private_key"].as_str().unwrap().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &signing).unwrap()
}

/// One walk through the management API in the order a client makes its calls: each step
/// depends on the stream the step before configured, so it stays one test.
#[tokio::test]
async fn the_management_api_takes_a_service_accounts_token_and_answers_the_pages_errors() {
    let env = Env::start().await;
    let resp = env
        .http
        .post(env.url("/_emulator/risc/service-accounts"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let key: Value = resp.json().await.unwrap();
    assert_eq!(key["type"], "service_account");
    let call = |method: reqwest::Method, path: &str, token: Option<String>, body: Option<Value>| {
        let mut req = env.http.request(method, env.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };
    let good = || Some(bearer(&key, |_, _| {}));
    let config = |url: &str| {
        json!({"delivery": {"delivery_method": fake_google::DELIVERY_METHOD_PUSH, "url": url},
        "events_requested": [RiscEvent::Verification.uri()]})
    };
    // 404 before any configuration.
    let resp = call(reqwest::Method::GET, "/v1beta/stream/status", good(), None)
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // Tokens that are not the page's are 401.
    let other_key = env.fg.emulator().create_service_account();
    let bad: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        (
            "wrong aud",
            Some(bearer(&key, |c, _| {
                c["aud"] = "https://risc.googleapis.com".into()
            })),
        ),
        (
            "sub is not iss",
            Some(bearer(&key, |c, _| c["sub"] = "someone@example.com".into())),
        ),
        (
            "two hours",
            Some(bearer(&key, |c, _| {
                c["exp"] = (c["iat"].as_i64().unwrap() + 7200).into()
            })),
        ),
        (
            "expired",
            Some(bearer(&key, |c, _| {
                c["iat"] = 1_000_000.into();
                c["exp"] = 1_003_600.into();
            })),
        ),
        (
            "another account's kid",
            Some(bearer(&key, |_, h| {
                h.kid = other_key["private_key_id"].as_str().map(String::from)
            })),
        ),
        ("no kid", Some(bearer(&key, |_, h| h.kid = None))),
    ];
    for (what, token) in bad {
        let resp = call(
            reqwest::Method::POST,
            "/v1beta/stream:update",
            token,
            Some(config("https://r.example/risc")),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["message"], "Unauthorized.", "{what}");
    }
    let resp = call(
        reqwest::Method::POST,
        "/v1beta/stream:update",
        good(),
        Some(json!({"events_requested": []})),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["message"],
        "Stream configuration must contain delivery field."
    );
    let resp = call(
        reqwest::Method::POST,
        "/v1beta/stream:update",
        good(),
        Some(config("http://r.example/risc")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["message"],
        "The delivery endpoint must be an HTTPS URL."
    );
    let resp = call(
        reqwest::Method::POST,
        "/v1beta/stream:update",
        good(),
        Some(config("https://r.example/risc")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = call(reqwest::Method::GET, "/v1beta/stream", good(), None)
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["delivery"]["url"],
        "https://r.example/risc"
    );
    let resp = call(
        reqwest::Method::POST,
        "/v1beta/stream/status:update",
        good(),
        Some(json!({"status": "paused"})),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = call(
        reqwest::Method::POST,
        "/v1beta/stream/status:update",
        good(),
        Some(json!({"status": "disabled"})),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = call(reqwest::Method::GET, "/v1beta/stream/status", good(), None)
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "disabled");
    // Disabled: a verification request goes nowhere.
    let resp = call(
        reqwest::Method::POST,
        "/v1beta/stream:verify",
        good(),
        Some(json!({"state": "x"})),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let last = env.fg.emulator().risc_deliveries().pop().unwrap();
    assert_eq!(
        (last.event.as_str(), last.outcome),
        ("verification", DeliveryOutcome::NotSent)
    );
    let stats = env.fg.emulator().stats();
    assert_eq!(stats.count("risc.stream.update"), 10);
    assert_eq!(stats.counter("risc.not_sent"), 1);
}
