//! The token, revoke, discovery and JWKS endpoints, over HTTP.

mod common;

use common::{Env, APPDATA};
use fake_google::MintCode;
use serde_json::Value;
use std::time::Duration;

async fn error_of(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap().to_string(),
        body["error_description"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn code_exchange_returns_google_shaped_tokens() {
    let env = Env::start().await;
    let t = env.sign_in("111").await;
    assert!(t.access.starts_with("ya29.") && t.access.len() >= 5 + 32);
    let refresh = t
        .refresh
        .clone()
        .expect("first consent yields a refresh token");
    assert!(refresh.starts_with("1//") && refresh.len() >= 3 + 32);
    assert_eq!(t.body["token_type"], "Bearer");
    assert_eq!(t.body["expires_in"], 3599);
    // Google reports the userinfo scopes by their full URLs, whatever short names were asked.
    assert_eq!(
        t.body["scope"],
        format!(
            "openid https://www.googleapis.com/auth/userinfo.email \
             https://www.googleapis.com/auth/userinfo.profile {APPDATA}"
        )
    );
    assert_eq!(t.id_token.split('.').count(), 3);
    let code = env.code("111");
    assert!(code.starts_with("4/") && code.len() >= 34);
}

#[tokio::test]
async fn second_consent_has_no_refresh_token_unless_prompted() {
    let env = Env::start().await;
    let first = env.sign_in("1").await;
    assert!(first.refresh.is_some());
    let again = env.exchange(&env.code("1")).await;
    assert!(again.refresh.is_none(), "{}", again.body);
    let code = env
        .fg
        .emulator()
        .mint_auth_code(MintCode {
            sub: "1".into(),
            prompt_consent: true,
            ..Default::default()
        })
        .unwrap();
    let prompted = env.exchange(&code).await;
    assert!(prompted.refresh.is_some());
    assert_ne!(prompted.refresh, first.refresh);
}

#[tokio::test]
async fn client_credentials_may_come_by_basic_auth() {
    let env = Env::start().await;
    env.user("1");
    let c = env.fg.clients();
    let resp = env
        .http
        .post(env.url("/token"))
        .basic_auth(&c.web_client_id, Some(&c.web_client_secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &env.code("1")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn codes_are_single_use_and_checked() {
    let env = Env::start().await;
    env.user("1");
    let code = env.code("1");
    env.exchange(&code).await;
    let reused = env
        .token(&[("grant_type", "authorization_code"), ("code", &code)])
        .await;
    assert_eq!(
        error_of(reused).await,
        (400, "invalid_grant".into(), "Bad Request".into())
    );
    let unknown = format!("4/{}", "A".repeat(64));
    let resp = env
        .token(&[("grant_type", "authorization_code"), ("code", &unknown)])
        .await;
    assert_eq!(error_of(resp).await.2, "Bad Request");
    let resp = env
        .token(&[("grant_type", "authorization_code"), ("code", "garbage")])
        .await;
    assert_eq!(
        error_of(resp).await,
        (400, "invalid_grant".into(), "Malformed auth code.".into())
    );
    let resp = env.token(&[("grant_type", "authorization_code")]).await;
    assert_eq!(
        error_of(resp).await,
        (
            400,
            "invalid_request".into(),
            "Missing required parameter: code".into()
        )
    );
    let resp = env.token(&[("grant_type", "password")]).await;
    assert_eq!(
        error_of(resp).await,
        (
            400,
            "unsupported_grant_type".into(),
            "Invalid grant_type: password".into()
        )
    );
}

#[tokio::test]
async fn redirect_uri_must_match_the_code() {
    let env = Env::start().await;
    env.user("1");
    let code = env
        .fg
        .emulator()
        .mint_auth_code(MintCode {
            sub: "1".into(),
            redirect_uri: Some("https://app.example/cb".into()),
            ..Default::default()
        })
        .unwrap();
    let resp = env
        .token(&[("grant_type", "authorization_code"), ("code", &code)])
        .await;
    let (status, error, _) = error_of(resp).await;
    assert_eq!((status, error.as_str()), (400, "redirect_uri_mismatch"));
    let resp = env
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://app.example/cb"),
        ])
        .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn bad_client_credentials_are_401_invalid_client() {
    let env = Env::start().await;
    env.user("1");
    let code = env.code("1");
    let c = env.fg.clients();
    let send = |id: String, secret: String| {
        let form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.clone()),
            ("client_id", id),
            ("client_secret", secret),
        ];
        env.http.post(env.url("/token")).form(&form).send()
    };
    let resp = send(
        "123-nope.apps.googleusercontent.com".into(),
        c.web_client_secret.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        error_of(resp).await,
        (
            401,
            "invalid_client".into(),
            "The OAuth client was not found.".into()
        )
    );
    let resp = send(c.web_client_id.clone(), "GOCSPX-wrong".into())
        .await
        .unwrap();
    assert_eq!(
        error_of(resp).await,
        (401, "invalid_client".into(), "Unauthorized".into())
    );
    // The code survived the failed attempts.
    env.exchange(&code).await;
}

#[tokio::test]
async fn refresh_grant_issues_new_access_tokens_with_id_token() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let refresh = t.refresh.unwrap();
    let resp = env
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_ne!(body["access_token"], t.access.as_str());
    assert!(body.get("refresh_token").is_none());
    assert!(body["id_token"].is_string(), "openid granted → id_token");
    assert_eq!(body["scope"], t.body["scope"]);

    let resp = env.token(&[("grant_type", "refresh_token")]).await;
    assert_eq!(
        error_of(resp).await.2,
        "Missing required parameter: refresh_token"
    );
    let resp = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "1//nope"),
        ])
        .await;
    assert_eq!(
        error_of(resp).await,
        (
            400,
            "invalid_grant".into(),
            "Token has been expired or revoked.".into()
        )
    );
}

#[tokio::test]
async fn granular_consent_narrows_scope_and_drops_id_token_on_refresh() {
    let env = Env::start().await;
    env.user("1");
    let code = env
        .fg
        .emulator()
        .mint_auth_code(MintCode {
            sub: "1".into(),
            scopes: Some(vec!["email".into()]),
            ..Default::default()
        })
        .unwrap();
    let t = env.exchange(&code).await;
    assert_eq!(
        t.body["scope"],
        "https://www.googleapis.com/auth/userinfo.email"
    );
    let resp = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &t.refresh.unwrap()),
        ])
        .await;
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("id_token").is_none());
    let (status, _) = env
        .get_json("/drive/v3/files?spaces=appDataFolder", &t.access)
        .await;
    assert_eq!(status, 403, "no drive scope granted");
}

#[tokio::test]
async fn revoking_any_token_kills_the_whole_grant() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let refresh = t.refresh.clone().unwrap();
    let resp = env
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
        .await;
    let second: Value = resp.json().await.unwrap();
    let second = second["access_token"].as_str().unwrap().to_string();
    let resp = env
        .http
        .post(env.url("/revoke"))
        .form(&[("token", &t.access)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), serde_json::json!({}));
    for token in [&t.access, &second] {
        let (status, _) = env
            .get_json("/drive/v3/files?spaces=appDataFolder", token)
            .await;
        assert_eq!(status, 401);
    }
    let resp = env
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
        .await;
    assert_eq!(error_of(resp).await.2, "Token has been expired or revoked.");
    let resp = env
        .http
        .post(env.url(&format!("/revoke?token={refresh}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(resp).await,
        (
            400,
            "invalid_token".into(),
            "Token expired or revoked".into()
        )
    );
    // Consent is gone with the grant: the next sign-in gets a refresh token again.
    assert!(env.exchange(&env.code("1")).await.refresh.is_some());
}

#[tokio::test]
async fn revoke_user_and_expire_access_tokens() {
    let env = Env::start().await;
    let a = env.sign_in("a").await;
    let b = env.sign_in("b").await;
    let emu = env.fg.emulator();
    emu.expire_access_tokens(Some("a"));
    assert_eq!(
        env.get_json("/drive/v3/changes/startPageToken", &a.access)
            .await
            .0,
        401
    );
    assert_eq!(
        env.get_json("/drive/v3/changes/startPageToken", &b.access)
            .await
            .0,
        200
    );
    // Refresh still works after mere expiry.
    let resp = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", a.refresh.as_ref().unwrap()),
        ])
        .await;
    assert_eq!(resp.status(), 200);
    emu.expire_access_tokens(None);
    assert_eq!(
        env.get_json("/drive/v3/changes/startPageToken", &b.access)
            .await
            .0,
        401
    );
    emu.revoke_user("b");
    let resp = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", b.refresh.as_ref().unwrap()),
        ])
        .await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn access_tokens_expire_after_their_lifetime() {
    let env = Env::start().await;
    env.fg.emulator().set_access_token_lifetime(1);
    let t = env.sign_in("1").await;
    assert_eq!(t.body["expires_in"], 1);
    assert_eq!(
        env.get_json("/drive/v3/changes/startPageToken", &t.access)
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        env.get_json("/drive/v3/changes/startPageToken", &t.access)
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn discovery_and_jwks_point_at_the_emulator() {
    let env = Env::start().await;
    let disc: Value = env
        .http
        .get(env.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(disc["issuer"], "https://accounts.google.com");
    assert_eq!(disc["token_endpoint"], env.url("/token"));
    assert_eq!(disc["jwks_uri"], env.url("/oauth2/v3/certs"));
    assert_eq!(disc["revocation_endpoint"], env.url("/revoke"));
    env.fg.emulator().set_jwks_max_age(5);
    let resp = env
        .http
        .get(env.url("/oauth2/v3/certs"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["cache-control"],
        "public, max-age=5, must-revalidate, no-transform"
    );
    let jwks: Value = resp.json().await.unwrap();
    let key = &jwks["keys"][0];
    for (k, v) in [("kty", "RSA"), ("alg", "RS256"), ("use", "sig")] {
        assert_eq!(key[k], v);
    }
    assert!(key["kid"].is_string() && key["n"].is_string() && key["e"] == "AQAB");
}

#[tokio::test]
async fn issued_secrets_include_everything_handed_out() {
    let env = Env::start().await;
    env.user("1");
    let code = env.code("1");
    let t = env.exchange(&code).await;
    let secrets = env.fg.emulator().issued_secrets();
    for s in [
        &code,
        &t.access,
        t.refresh.as_ref().unwrap(),
        &env.fg.clients().web_client_secret,
    ] {
        assert!(secrets.contains(s), "{s} missing");
    }
    let over_http: Vec<String> = env
        .http
        .get(env.url("/_emulator/issued-secrets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http, secrets);
}

async fn refresh(env: &Env, token: &str) -> reqwest::Response {
    env.token(&[("grant_type", "refresh_token"), ("refresh_token", token)])
        .await
}

#[tokio::test]
async fn testing_mode_refresh_tokens_expire_after_their_lifetime() {
    let env = Env::start().await;
    let emu = env.fg.emulator();
    emu.set_refresh_token_lifetime(Some(Duration::from_secs(7 * 24 * 3600)));
    let t = env.sign_in("1").await;
    let refresh_token = t.refresh.unwrap();
    assert_eq!(refresh(&env, &refresh_token).await.status(), 200);
    // Sign-in scopes alone are exempt from the Testing-mode expiry.
    let code = emu
        .mint_auth_code(MintCode {
            sub: "1".into(),
            scopes: Some(vec!["openid".into(), "email".into()]),
            prompt_consent: true,
            ..Default::default()
        })
        .unwrap();
    let identity = env.exchange(&code).await.refresh.unwrap();
    emu.advance_clock(Duration::from_secs(8 * 24 * 3600));
    let (status, error, description) = error_of(refresh(&env, &refresh_token).await).await;
    assert_eq!(
        (status, error.as_str(), description.as_str()),
        (400, "invalid_grant", "Token has been expired or revoked.")
    );
    assert_eq!(refresh(&env, &identity).await.status(), 200);
}

#[tokio::test]
async fn refresh_tokens_unused_for_six_months_expire() {
    let env = Env::start().await;
    let emu = env.fg.emulator();
    let used = env.sign_in("1").await.refresh.unwrap();
    let idle = env.sign_in("2").await.refresh.unwrap();
    for _ in 0..2 {
        emu.advance_clock(Duration::from_secs(100 * 24 * 3600));
        assert_eq!(refresh(&env, &used).await.status(), 200);
    }
    let (status, error, _) = error_of(refresh(&env, &idle).await).await;
    assert_eq!((status, error.as_str()), (400, "invalid_grant"));
}

#[tokio::test]
async fn the_101st_refresh_token_silently_invalidates_the_oldest() {
    let env = Env::start().await;
    let first = env.sign_in("1").await;
    let oldest = first.refresh.unwrap();
    let mut second = None;
    for i in 0..100 {
        let code = env
            .fg
            .emulator()
            .mint_auth_code(MintCode {
                sub: "1".into(),
                prompt_consent: true,
                ..Default::default()
            })
            .unwrap();
        let t = env.exchange(&code).await;
        if i == 0 {
            second = t.refresh;
        }
    }
    let (status, error, _) = error_of(refresh(&env, &oldest).await).await;
    assert_eq!((status, error.as_str()), (400, "invalid_grant"));
    assert_eq!(refresh(&env, &second.unwrap()).await.status(), 200);
    // Its access token lives on until it expires.
    let (status, _) = env
        .get_json("/drive/v3/files?spaces=appDataFolder", &first.access)
        .await;
    assert_eq!(status, 200);
}
