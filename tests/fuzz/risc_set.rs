//! Security event tokens through `SetVerifier::verify`, the verifier `POST /risc` runs, against
//! a RISC configuration document and key set served on a loopback port (the test key in
//! keys/google.pem). Mutated and forged SETs: other algorithms and signers, kids, issuers,
//! audiences (strings and arrays), iats, jtis, `events` shapes and subjects, encodings,
//! duplicated claims.
//!
//! The oracle is independent of jsonwebtoken: a SET that verifies must carry an RS256 signature
//! by the RISC key over exactly its first two segments (checked with the rsa crate), that key's
//! kid, the configuration's issuer, one of our audiences, an integer iat inside the window, a
//! jti of 1 to 256 bytes and exactly one event, an object. A SET built right must verify, so
//! the oracle is not vacuous.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use appdata_syncd::google::risc::{SetPolicy, SetVerifier, FUTURE_IAT_LEEWAY};
use axum::routing::get;
use axum::{Json, Router};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine};
use jsonwebtoken::{Algorithm, EncodingKey};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::mutate::{self, Bytes};

const KID: &str = "risc0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7";
const ISSUER: &str = "https://accounts.google.com";
const AUDIENCES: [&str; 2] = [
    "1234-web.apps.googleusercontent.com",
    "1234-android.apps.googleusercontent.com",
];
const MAX_AGE: i64 = 7 * 86_400;
/// Clock slack of the oracle: the case is built a moment before it is verified.
const SLACK: i64 = 5;
const B64: GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const DISABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
const REVOKED: &str = "https://schemas.openid.net/secevent/oauth/event-type/token-revoked";
const VERIFICATION: &str = "https://schemas.openid.net/secevent/risc/event-type/verification";

struct Keys {
    risc: EncodingKey,
    attacker: EncodingKey,
    public: RsaPublicKey,
    public_pem: Vec<u8>,
    jwks: Value,
}

fn keys() -> Keys {
    let pem = include_str!("keys/google.pem");
    let private = RsaPrivateKey::from_pkcs1_pem(pem).expect("the test key parses");
    let public = private.to_public_key();
    let public_pem = {
        use rsa::pkcs8::{EncodePublicKey, LineEnding};
        public
            .to_public_key_pem(LineEnding::LF)
            .expect("a PEM")
            .into_bytes()
    };
    let jwks = json!({ "keys": [{
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID,
        "n": B64.encode(public.n().to_bytes_be()), "e": B64.encode(public.e().to_bytes_be()),
    }]});
    Keys {
        risc: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("the test key loads"),
        attacker: EncodingKey::from_rsa_pem(include_bytes!("keys/attacker.pem"))
            .expect("the attacker key loads"),
        public,
        public_pem,
        jwks,
    }
}

#[derive(Debug, Clone)]
enum Signer {
    Risc,
    Attacker,
    HmacWithPublicKey,
    Empty,
    Garbage(Vec<u8>),
    RiscOverOther,
}

#[derive(Debug, Clone)]
struct Built {
    header: Vec<(String, Value)>,
    claims: Vec<(String, Value)>,
    duplicate: Option<(String, Value)>,
    padded: bool,
    signer: Signer,
    must_verify: bool,
}

#[derive(Debug, Clone)]
enum Case {
    Raw(Bytes),
    Built(Built),
}

type Part = (Option<Value>, bool);

fn part(right: Vec<Value>, wrong: BoxedStrategy<Value>) -> BoxedStrategy<Part> {
    prop_oneof![
        4 => select(right).prop_map(|v| (Some(v), true)),
        2 => wrong.prop_map(|v| (Some(v), false)),
        1 => Just((None, false)),
    ]
    .boxed()
}

fn odd_value() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::from),
        mutate::secret().prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
    ]
    .boxed()
}

/// A good event (one member, an object) and bad `events` claims.
fn events() -> BoxedStrategy<Part> {
    let subject =
        json!({"subject_type": "iss-sub", "iss": "https://accounts.google.com/", "sub": "7"});
    // The token below is made up (a refresh-token prefix shape), not a credential.
    let right = vec![
        json!({ DISABLED: { "subject": subject, "reason": "hijacking" } }),
        json!({ VERIFICATION: { "state": "s" } }),
        json!({ REVOKED: { "subject": { "subject_type": "oauth_token", "token_type": "refresh_token",
            "token_identifier_alg": "prefix", "token": "1//0abcdefghijkl" } } }),
        json!({ "https://example.com/other-event": {} }),
    ];
    let wrong = prop_oneof![
        Just(json!({})),
        Just(json!({ DISABLED: {"subject": subject}, VERIFICATION: {} })),
        Just(json!({ DISABLED: "not an object" })),
        Just(json!({ DISABLED: {} })),
        Just(json!({ DISABLED: {"subject": {"subject_type": "iss-sub"}} })),
        Just(json!({ DISABLED: {"subject": subject, "reason": 7} })),
        odd_value(),
    ];
    part(right, wrong.boxed())
}

fn iat() -> BoxedStrategy<(Option<Value>, bool)> {
    let leeway = FUTURE_IAT_LEEWAY.as_secs() as i64;
    prop_oneof![
        4 => (-MAX_AGE + SLACK..leeway - SLACK).prop_map(|o| (Some(json!(o)), true)),
        1 => (-2 * MAX_AGE..-MAX_AGE - SLACK).prop_map(|o| (Some(json!(o)), false)),
        1 => (leeway + SLACK..100_000i64).prop_map(|o| (Some(json!(o)), false)),
        1 => any::<i64>().prop_map(|n| (Some(json!(n)), false)),
        1 => Just((Some(json!(100.5)), false)),
        1 => Just((Some(json!("100")), false)),
        1 => Just((None, false)),
    ]
    .boxed()
}

/// Every field of a SET and its mutations, combined in one place so that what a case may
/// change reads next to the oracle in [`run`].
fn built() -> impl Strategy<Value = Built> {
    let alg = part(
        vec![json!("RS256")],
        select(vec![
            "HS256", "none", "RS512", "PS256", "ES256", "rs256", "",
        ])
        .prop_map(Value::from)
        .boxed(),
    );
    let kid = part(
        vec![json!(KID)],
        prop_oneof![
            odd_value(),
            Just(json!("../../etc/passwd")),
            "[a-f0-9]{40}".prop_map(Value::from)
        ]
        .boxed(),
    );
    let iss = part(
        vec![json!(ISSUER), json!(format!("{ISSUER}/"))],
        prop_oneof![
            odd_value(),
            Just(json!("accounts.google.com")),
            Just(json!("https://evil.example"))
        ]
        .boxed(),
    );
    let aud = part(
        vec![
            json!(AUDIENCES[0]),
            json!(AUDIENCES[1]),
            json!([AUDIENCES[1], "x"]),
        ],
        prop_oneof![
            odd_value(),
            Just(json!(["x", "y"])),
            Just(json!("1234-other.apps"))
        ]
        .boxed(),
    );
    let jti = part(
        vec![json!("756E69717565"), json!("a")],
        prop_oneof![Just(json!("")), Just(json!("x".repeat(300))), odd_value()].boxed(),
    );
    let duplicate = proptest::option::of((
        select(vec!["iss", "aud", "iat", "jti", "events"]).prop_map(String::from),
        odd_value(),
    ));
    let signer = prop_oneof![
        6 => Just(Signer::Risc),
        1 => Just(Signer::Attacker),
        1 => Just(Signer::HmacWithPublicKey),
        1 => Just(Signer::Empty),
        1 => vec(any::<u8>(), 0..300).prop_map(Signer::Garbage),
        1 => Just(Signer::RiscOverOther),
    ];
    let extra = vec(("x_[a-z]{1,6}", odd_value()), 0..3);
    (
        (alg, kid, iss, aud, jti, iat()),
        (
            events(),
            duplicate,
            signer,
            extra,
            proptest::bool::weighted(0.1),
        ),
    )
        .prop_map(
            |((alg, kid, iss, aud, jti, iat), (events, duplicate, signer, extra, padded))| {
                let now = chrono::Utc::now().timestamp();
                let iat_value = match iat.0 {
                    Some(Value::Number(n)) if n.is_i64() && iat.1 => {
                        Some(json!(now + n.as_i64().unwrap_or(0)))
                    }
                    v => v,
                };
                let header: Vec<(String, Value)> = [("alg", alg.0), ("kid", kid.0)]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                    .collect();
                let claims: Vec<(String, Value)> = [
                    ("iss", iss.0),
                    ("aud", aud.0),
                    ("iat", iat_value),
                    ("jti", jti.0),
                    ("events", events.0),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                .chain(extra)
                .collect();
                let must_verify = alg.1
                    && kid.1
                    && iss.1
                    && aud.1
                    && jti.1
                    && iat.1
                    && events.1
                    && duplicate.is_none()
                    && !padded
                    && matches!(signer, Signer::Risc);
                Built {
                    header,
                    claims,
                    duplicate,
                    padded,
                    signer,
                    must_verify,
                }
            },
        )
}

fn object(fields: &[(String, Value)]) -> String {
    Value::Object(fields.iter().cloned().collect()).to_string()
}

fn token(keys: &Keys, b: &Built) -> String {
    let mut payload = object(&b.claims);
    if let Some((k, v)) = &b.duplicate {
        payload.pop();
        payload.push_str(&format!(",{}:{v}}}", Value::from(k.as_str())));
    }
    let encode = |bytes: &[u8]| {
        if b.padded {
            base64::engine::general_purpose::URL_SAFE.encode(bytes)
        } else {
            B64.encode(bytes)
        }
    };
    let message = format!(
        "{}.{}",
        encode(object(&b.header).as_bytes()),
        encode(payload.as_bytes())
    );
    let sign = |msg: &str, key: &EncodingKey, alg| {
        jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).expect("signing")
    };
    let signature = match &b.signer {
        Signer::Risc => sign(&message, &keys.risc, Algorithm::RS256),
        Signer::Attacker => sign(&message, &keys.attacker, Algorithm::RS256),
        Signer::HmacWithPublicKey => sign(
            &message,
            &EncodingKey::from_secret(&keys.public_pem),
            Algorithm::HS256,
        ),
        Signer::Empty => String::new(),
        Signer::Garbage(bytes) => B64.encode(bytes),
        Signer::RiscOverOther => sign("e30.e30", &keys.risc, Algorithm::RS256),
    };
    format!("{message}.{signature}")
}

fn lenient() -> GeneralPurpose {
    GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    )
}

/// Whether a correct verifier may accept `token`, decided without jsonwebtoken.
fn may_verify(keys: &Keys, token: &str) -> bool {
    let lenient = lenient();
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return false;
    };
    let Ok(signature) = lenient.decode(signature) else {
        return false;
    };
    let digest = Sha256::digest(format!("{header}.{payload}").as_bytes());
    if keys
        .public
        .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &signature)
        .is_err()
    {
        return false;
    }
    let json =
        |part: &str| -> Option<Value> { serde_json::from_slice(&lenient.decode(part).ok()?).ok() };
    let (Some(header), Some(claims)) = (json(header), json(payload)) else {
        return false;
    };
    let now = chrono::Utc::now().timestamp();
    let leeway = FUTURE_IAT_LEEWAY.as_secs() as i64;
    let ours = |v: &Value| v.as_str().is_some_and(|a| AUDIENCES.contains(&a));
    let aud_ok = match claims.get("aud") {
        Some(Value::Array(a)) => a.iter().any(ours),
        Some(v) => ours(v),
        None => false,
    };
    let jti_ok = claims
        .get("jti")
        .and_then(Value::as_str)
        .is_some_and(|j| !j.is_empty() && j.len() <= 256);
    let events_ok = claims
        .get("events")
        .and_then(Value::as_object)
        .is_some_and(|e| e.len() == 1 && e.values().all(Value::is_object));
    header.get("alg") == Some(&json!("RS256"))
        && header.get("kid") == Some(&json!(KID))
        && claims
            .get("iss")
            .and_then(Value::as_str)
            .is_some_and(|i| i.trim_end_matches('/') == ISSUER)
        && aud_ok
        && jti_ok
        && events_ok
        && claims
            .get("iat")
            .and_then(Value::as_i64)
            .is_some_and(|i| i <= now + leeway + SLACK && i >= now - MAX_AGE - SLACK)
}

/// The oracle, one branch per way a SET may be wrong: what the receiver must answer and keep.
pub fn run() {
    let keys = keys();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let jwks = keys.jwks.clone();
    let base = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("an address");
        let base = format!("http://{addr}");
        let config = json!({ "issuer": ISSUER, "jwks_uri": format!("{base}/jwks") });
        let app = Router::new()
            .route(
                "/risc-configuration",
                get(move || async move { Json(config.clone()) }),
            )
            .route("/jwks", get(move || async move { Json(jwks.clone()) }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    });
    let verifier = SetVerifier::new(
        appdata_syncd::google::http_client(Duration::from_secs(5)),
        format!("{base}/risc-configuration"),
        SetPolicy {
            audiences: AUDIENCES.iter().map(|a| a.to_string()).collect(),
            max_age: Duration::from_secs(MAX_AGE as u64),
        },
    );
    let now = chrono::Utc::now().timestamp();
    let valid = Built {
        header: vec![("alg".into(), json!("RS256")), ("kid".into(), json!(KID))],
        claims: vec![
            ("iss".into(), json!(ISSUER)),
            ("aud".into(), json!(AUDIENCES[0])),
            ("iat".into(), json!(now)),
            ("jti".into(), json!("756E69717565")),
            ("events".into(), json!({ VERIFICATION: { "state": "s" } })),
        ],
        duplicate: None,
        padded: false,
        signer: Signer::Risc,
        must_verify: true,
    };
    let mut seeds = vec![token(&keys, &valid).into_bytes()];
    for signer in [Signer::Attacker, Signer::HmacWithPublicKey, Signer::Empty] {
        let forged = Built {
            signer,
            must_verify: false,
            ..valid.clone()
        };
        seeds.push(token(&keys, &forged).into_bytes());
    }
    let mut stale = valid.clone();
    stale.claims[2].1 = json!(now - 2 * MAX_AGE);
    stale.must_verify = false;
    seeds.push(token(&keys, &stale).into_bytes());
    let strategy = prop_oneof![
        2 => mutate::input(seeds.clone(), &[b".", b"eyJ", b"==", b"-_", b"+/"]).prop_map(Case::Raw),
        3 => built().prop_map(Case::Built),
    ];
    let verified = AtomicU64::new(0);
    let check = |case: Case| -> Result<(), TestCaseError> {
        let (token, must_verify) = match &case {
            Case::Raw(bytes) => (bytes.lossy(), false),
            Case::Built(b) => (token(&keys, b), b.must_verify),
        };
        match rt.block_on(verifier.verify(&token)) {
            Ok(set) => {
                verified.fetch_add(1, Ordering::Relaxed);
                prop_assert!(
                    may_verify(&keys, &token),
                    "verified a SET that must not verify: {token}"
                );
                prop_assert!(!set.jti.is_empty());
            }
            Err(e) => {
                prop_assert!(!must_verify, "a right SET did not verify: {e}\n{token}");
                prop_assert!(
                    !e.is_upstream(),
                    "the loopback documents are always there: {e}"
                );
                crate::no_secret_in(&e.to_string(), &crate::secrets_in(token.as_bytes()))?;
            }
        }
        Ok(())
    };
    let fixed = seeds
        .into_iter()
        .map(|s| Case::Raw(Bytes(s)))
        .chain([Case::Built(valid)])
        .collect();
    crate::fuzz("risc_set", fixed, strategy, check);
    println!(
        "fuzz risc_set: {} SETs verified",
        verified.load(Ordering::Relaxed)
    );
}
