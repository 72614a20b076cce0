//! ID tokens verify against the emulator's JWKS with jsonwebtoken, stop verifying once their
//! key is rotated out, and every forged variant fails a careful verifier.

mod common;

use common::Env;
use fake_google::{IdTokenAttack, MintCode};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::time::Duration;

/// What a careful relying party does: kid → JWKS key, RS256 only, aud, iss, exp, plus azp and
/// iat, which jsonwebtoken leaves to the caller.
async fn verify(env: &Env, jwt: &str) -> Result<Value, String> {
    let header = decode_header(jwt).map_err(|e| format!("header: {e}"))?;
    let kid = header.kid.ok_or("no kid")?;
    let jwks: Value = env
        .http
        .get(env.url("/oauth2/v3/certs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or("kid not in JWKS")?;
    let key =
        DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap())
            .map_err(|e| e.to_string())?;
    let clients = env.fg.clients();
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[&clients.web_client_id]);
    v.set_issuer(&["https://accounts.google.com"]);
    let claims = decode::<Value>(jwt, &key, &v)
        .map_err(|e| format!("decode: {e}"))?
        .claims;
    if claims["azp"] != clients.android_client_id.as_str() {
        return Err("azp".into());
    }
    let now = chrono::Utc::now().timestamp();
    if claims["iat"].as_i64().ok_or("iat")? > now + 60 {
        return Err("iat in the future".into());
    }
    Ok(claims)
}

#[tokio::test]
async fn id_token_verifies_and_carries_the_profile() {
    let env = Env::start().await;
    let t = env.sign_in("4242").await;
    let claims = verify(&env, &t.id_token).await.expect("valid");
    assert_eq!(claims["sub"], "4242");
    assert_eq!(claims["email"], "user4242@gmail.com");
    assert_eq!(claims["email_verified"], true);
    for k in [
        "name",
        "picture",
        "given_name",
        "family_name",
        "locale",
        "at_hash",
    ] {
        assert!(claims[k].is_string(), "{k}");
    }
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
}

#[tokio::test]
async fn rotation_keeps_old_key_for_the_grace_period_only() {
    let env = Env::start().await;
    let t = env.sign_in("1").await;
    let old_kid = decode_header(&t.id_token).unwrap().kid.unwrap();
    let emu = env.fg.emulator().clone();
    tokio::task::spawn_blocking(move || emu.rotate_keys(Duration::from_secs(3600)))
        .await
        .unwrap();
    verify(&env, &t.id_token)
        .await
        .expect("old key still published");
    let fresh = env.exchange(&env.code("1")).await;
    let new_kid = decode_header(&fresh.id_token).unwrap().kid.unwrap();
    assert_ne!(new_kid, old_kid, "new key signs from now on");
    verify(&env, &fresh.id_token)
        .await
        .expect("new key published");

    // Rotating again with no grace removes the previous key at once; the oldest key, whose
    // grace has not elapsed, stays.
    let resp = env
        .http
        .post(env.url("/_emulator/rotate-keys"))
        .json(&serde_json::json!({ "grace_s": 0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let err = verify(&env, &fresh.id_token).await.unwrap_err();
    assert_eq!(err, "kid not in JWKS");
    verify(&env, &t.id_token)
        .await
        .expect("first key's grace continues");
}

#[tokio::test]
async fn every_forged_id_token_fails_verification() {
    use IdTokenAttack::*;
    let env = Env::start().await;
    env.user("1");
    let attacks = [
        BadSignature,
        WrongAud,
        WrongIss,
        WrongAzp,
        Expired,
        FutureIat,
        AlgNone,
        Hs256PublicKey,
        UnknownKid,
        KidPath,
        TamperedPayload,
        RotatedOutKey,
    ];
    for attack in attacks {
        let code = env
            .fg
            .emulator()
            .mint_auth_code(MintCode {
                sub: "1".into(),
                id_token_attack: Some(attack),
                ..Default::default()
            })
            .unwrap();
        let t = env.exchange(&code).await;
        assert!(t.access.starts_with("ya29."), "tokens are issued normally");
        let result = verify(&env, &t.id_token).await;
        assert!(result.is_err(), "{attack:?} verified: {result:?}");
    }
}

#[tokio::test]
async fn attacks_are_accepted_by_name_over_http() {
    let env = Env::start().await;
    env.user("1");
    let resp = env
        .http
        .post(env.url("/_emulator/authcodes"))
        .json(&serde_json::json!({ "sub": "1", "id_token_attack": "kid_path" }))
        .send()
        .await
        .unwrap();
    let code: Value = resp.json().await.unwrap();
    let t = env.exchange(code["code"].as_str().unwrap()).await;
    let header = decode_header(&t.id_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some("../../etc/passwd"));
}
