//! ID tokens through `IdTokenVerifier::verify`, the verifier sign-in runs, against a JWKS
//! served on a loopback port with the test key in keys/google.pem; and JWKS documents (status,
//! Cache-Control, body) through a fresh verifier's fetch.
//!
//! The oracle is independent of jsonwebtoken: a token that verifies must carry an RS256
//! signature by the JWKS key over exactly its first two segments (checked with the rsa crate),
//! the key's kid, and claims that pass Google's rules (iss, aud, azp, exp, iat, sub). A token
//! built right from the start must verify, so the oracle is not vacuous.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use appdata_syncd::google::id_token::{IdTokenVerifier, LEEWAY_SECS};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE};
use base64::engine::{DecodePaddingMode, Engine};
use jsonwebtoken::{Algorithm, EncodingKey};
use parking_lot::Mutex;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::mutate::{self, Bytes};

const KID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6";
const AUDIENCE: &str = "1234-web.apps.googleusercontent.com";
const AZP: &str = "1234-android.apps.googleusercontent.com";
const ISSUERS: [&str; 2] = ["accounts.google.com", "https://accounts.google.com"];
/// Clock slack of the oracle on top of the verifier's leeway: the case is built a moment
/// before it is verified.
const SLACK: i64 = 5;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

struct Keys {
    google: EncodingKey,
    attacker: EncodingKey,
    public: RsaPublicKey,
    public_pem: Vec<u8>,
    jwks: Value,
}

fn keys() -> Keys {
    let google_pem = include_str!("keys/google.pem");
    let private = RsaPrivateKey::from_pkcs1_pem(google_pem).expect("the test key parses");
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
        google: EncodingKey::from_rsa_pem(google_pem.as_bytes()).expect("the test key loads"),
        attacker: EncodingKey::from_rsa_pem(include_bytes!("keys/attacker.pem"))
            .expect("the attacker key loads"),
        public,
        public_pem,
        jwks,
    }
}

/// How header and payload are base64-encoded.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    Canonical,
    Padded,
    Standard,
    Newline,
    FourSegments,
}

#[derive(Debug, Clone)]
enum Signer {
    Google,
    Attacker,
    /// HMAC keyed with the public key's PEM: the classic RS256/HS256 confusion.
    HmacWithPublicKey,
    Empty,
    Garbage(Vec<u8>),
    /// Google's signature over another payload.
    GoogleOverOther,
}

/// A token built from parts; `good` marks each part that is right.
#[derive(Debug, Clone)]
struct Built {
    header: Vec<(String, Value)>,
    claims: Vec<(String, Value)>,
    /// Appended to the payload JSON text as-is: duplicated keys.
    duplicate: Option<(String, Value)>,
    encoding: Encoding,
    signer: Signer,
    /// Every part right: the token must verify.
    must_verify: bool,
}

#[derive(Debug, Clone)]
struct JwksCase {
    status: u16,
    cache_control: Option<String>,
    body: Bytes,
}

#[derive(Debug, Clone)]
enum Case {
    Raw(Bytes),
    Built(Built),
    Jwks(JwksCase),
}

/// A claim value, and whether it is a right one.
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
        Just(json!([AUDIENCE])),
        Just(json!({})),
    ]
    .boxed()
}

/// A time claim relative to now: (value, right for exp, right for iat).
fn time() -> BoxedStrategy<(Option<Value>, i64)> {
    prop_oneof![
        4 => (-200_000i64..200_000).prop_map(|o| (Some(json!(o)), o)),
        1 => (-70i64..70).prop_map(|o| (Some(json!(o)), o)),
        1 => any::<i64>().prop_map(|n| (Some(json!(n)), i64::MIN)),
        1 => any::<u64>().prop_map(|n| (Some(json!(n)), i64::MIN)),
        1 => Just((Some(json!(1e300)), i64::MIN)),
        1 => Just((Some(json!(100.5)), i64::MIN)),
        1 => Just((Some(json!("100")), i64::MIN)),
        1 => Just((None, i64::MIN)),
    ]
    .boxed()
}

fn built() -> impl Strategy<Value = Built> {
    let alg = part(
        vec![json!("RS256")],
        select(vec![
            "HS256", "none", "None", "RS512", "PS256", "ES256", "rs256", "",
        ])
        .prop_map(Value::from)
        .boxed(),
    );
    let kid = part(
        vec![json!(KID)],
        prop_oneof![
            odd_value(),
            Just(json!("../../etc/passwd")),
            "[a-f0-9]{40}".prop_map(Value::from),
        ]
        .boxed(),
    );
    let typ = option::of(select(vec!["JWT", "jwt", "JOSE"]));
    let iss = part(
        ISSUERS.iter().map(|i| json!(i)).collect(),
        prop_oneof![
            odd_value(),
            Just(json!("https://accounts.google.com/")),
            Just(json!("https://evil.example")),
        ]
        .boxed(),
    );
    let aud = part(vec![json!(AUDIENCE)], odd_value());
    let azp = part(
        vec![json!(AZP)],
        prop_oneof![odd_value(), Just(json!(AUDIENCE))].boxed(),
    );
    let sub = part(
        vec![json!("110169484474386276334"), json!("1")],
        prop_oneof![Just(json!("")), odd_value()].boxed(),
    );
    let verified = prop_oneof![
        Just((None, true)),
        select(vec![json!(true), json!(false), json!("true"), json!("no")])
            .prop_map(|v| (Some(v), true)),
        Just((Some(Value::Null), false)),
        Just((Some(json!(1)), false)),
    ];
    let extra = vec(("x_[a-z]{1,6}", odd_value()), 0..3);
    let duplicate = option::of((
        select(vec!["iss", "aud", "azp", "sub", "exp", "iat"]).prop_map(String::from),
        odd_value(),
    ));
    let encoding = prop_oneof![
        6 => Just(Encoding::Canonical),
        1 => select(vec![
            Encoding::Padded,
            Encoding::Standard,
            Encoding::Newline,
            Encoding::FourSegments,
        ]),
    ];
    let signer = prop_oneof![
        6 => Just(Signer::Google),
        1 => Just(Signer::Attacker),
        1 => Just(Signer::HmacWithPublicKey),
        1 => Just(Signer::Empty),
        1 => vec(any::<u8>(), 0..300).prop_map(Signer::Garbage),
        1 => Just(Signer::GoogleOverOther),
    ];
    (
        (alg, kid, typ, iss, aud, azp),
        (sub, time(), time(), verified, extra, duplicate),
        (encoding, signer),
    )
        .prop_map(
            |(
                (alg, kid, typ, iss, aud, azp),
                (sub, exp, iat, verified, extra, duplicate),
                (encoding, signer),
            )| {
                let now = chrono::Utc::now().timestamp();
                let leeway = LEEWAY_SECS as i64;
                let at = |(v, offset): (Option<Value>, i64)| match (v, offset) {
                    (Some(Value::Number(n)), o) if o != i64::MIN && n.is_i64() => {
                        Some(json!(now + o))
                    }
                    (v, _) => v,
                };
                let exp_right = exp.1 != i64::MIN && exp.1 > -leeway + SLACK;
                let iat_right = iat.1 != i64::MIN && iat.1 < leeway - SLACK;
                let header: Vec<(String, Value)> = [("alg", alg.0), ("kid", kid.0)]
                    .into_iter()
                    .chain([("typ", typ.map(Value::from))])
                    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                    .collect();
                let claims: Vec<(String, Value)> = [
                    ("iss", iss.0),
                    ("aud", aud.0),
                    ("azp", azp.0),
                    ("sub", sub.0),
                    ("exp", at(exp)),
                    ("iat", at(iat)),
                    ("email_verified", verified.0),
                    ("email", Some(json!("user@example.com"))),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                .chain(extra)
                .collect();
                let must_verify = alg.1
                    && kid.1
                    && iss.1
                    && aud.1
                    && azp.1
                    && sub.1
                    && exp_right
                    && iat_right
                    && verified.1
                    && duplicate.is_none()
                    && matches!(encoding, Encoding::Canonical)
                    && matches!(signer, Signer::Google);
                Built {
                    header,
                    claims,
                    duplicate,
                    encoding,
                    signer,
                    must_verify,
                }
            },
        )
}

fn object(fields: &[(String, Value)]) -> String {
    Value::Object(fields.iter().cloned().collect()).to_string()
}

fn encode(encoding: Encoding, bytes: &[u8]) -> String {
    match encoding {
        Encoding::Canonical | Encoding::FourSegments => B64.encode(bytes),
        Encoding::Padded => URL_SAFE.encode(bytes),
        Encoding::Standard => STANDARD.encode(bytes),
        Encoding::Newline => {
            let mut s = B64.encode(bytes);
            s.insert(s.len() / 2, '\n');
            s
        }
    }
}

fn token(keys: &Keys, b: &Built) -> String {
    let mut payload = object(&b.claims);
    if let Some((k, v)) = &b.duplicate {
        payload.pop();
        payload.push_str(&format!(",{}:{v}}}", Value::from(k.as_str())));
    }
    let message = format!(
        "{}.{}",
        encode(b.encoding, object(&b.header).as_bytes()),
        encode(b.encoding, payload.as_bytes())
    );
    let sign = |msg: &str, key: &EncodingKey, alg| {
        jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).expect("signing")
    };
    let signature = match &b.signer {
        Signer::Google => sign(&message, &keys.google, Algorithm::RS256),
        Signer::Attacker => sign(&message, &keys.attacker, Algorithm::RS256),
        Signer::HmacWithPublicKey => sign(
            &message,
            &EncodingKey::from_secret(&keys.public_pem),
            Algorithm::HS256,
        ),
        Signer::Empty => String::new(),
        Signer::Garbage(bytes) => B64.encode(bytes),
        Signer::GoogleOverOther => sign("e30.e30", &keys.google, Algorithm::RS256),
    };
    let mut token = format!("{message}.{signature}");
    if let Encoding::FourSegments = b.encoding {
        token.push_str(".e30");
    }
    token
}

/// Base64url, padded or not, trailing bits allowed: whatever a verifier might accept.
fn lenient() -> GeneralPurpose {
    GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    )
}

/// Access and refresh tokens in the token's text and in its decoded segments. (A client
/// secret is shaped like a key id, and an ID token never carries one.)
fn secrets(token: &str) -> Vec<String> {
    let mut found = crate::secrets_in(token.as_bytes());
    for part in token.split('.') {
        if let Ok(decoded) = lenient().decode(part) {
            found.extend(crate::secrets_in(&decoded));
        }
    }
    found.retain(|s| !s.starts_with("GOCSPX-"));
    found
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
    let leeway = LEEWAY_SECS as i64;
    let str_of = |k: &str| claims.get(k).and_then(Value::as_str);
    header.get("alg") == Some(&json!("RS256"))
        && header.get("kid") == Some(&json!(KID))
        && str_of("iss").is_some_and(|i| ISSUERS.contains(&i))
        && str_of("aud") == Some(AUDIENCE)
        && str_of("azp") == Some(AZP)
        && str_of("sub").is_some_and(|s| !s.is_empty())
        && claims
            .get("exp")
            .and_then(Value::as_i64)
            .is_some_and(|e| e >= now - leeway - SLACK)
        && claims
            .get("iat")
            .and_then(Value::as_i64)
            .is_some_and(|i| i <= now + leeway + SLACK)
}

fn jwks_case(keys: &Keys) -> impl Strategy<Value = JwksCase> {
    let real = keys.jwks.to_string().into_bytes();
    let n = keys.jwks["keys"][0]["n"].clone();
    let key = (
        select(vec![json!("RSA"), json!("EC"), json!("rsa"), json!(1)]),
        prop_oneof![Just(json!(KID)), odd_value()],
        prop_oneof![
            Just(n),
            ".{0,40}".prop_map(Value::from),
            "[A-Za-z0-9_-]{0,700}".prop_map(Value::from),
            Just(json!("")),
            odd_value(),
        ],
        prop_oneof![
            Just(json!("AQAB")),
            Just(json!("AQ")),
            Just(json!("")),
            Just(json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB")),
            "[A-Za-z0-9_-]{0,12}".prop_map(Value::from),
            odd_value(),
        ],
    )
        .prop_map(|(kty, kid, n, e)| json!({ "kty": kty, "kid": kid, "n": n, "e": e }));
    let structured =
        vec(key, 0..4).prop_map(|keys| Bytes(json!({ "keys": keys }).to_string().into_bytes()));
    let body = prop_oneof![
        2 => mutate::input(vec![real], &[br#""kid":"#, br#""n":"#, br#""e":"AQAB""#, br#""kty":"RSA""#]),
        1 => structured,
    ];
    let cache_control = option::of(prop_oneof![
        Just("public, max-age=21600, must-revalidate, no-transform".to_string()),
        Just("max-age=18446744073709551615".to_string()),
        Just("max-age=99999999999999999999999".to_string()),
        Just("max-age=-1, max-age=".to_string()),
        "[ -~]{0,40}",
    ]);
    (
        select(vec![200u16, 200, 200, 204, 304, 404, 500]),
        cache_control,
        body,
    )
        .prop_map(|(status, cache_control, body)| JwksCase {
            status,
            cache_control,
            body,
        })
}

/// What the loopback JWKS server answers: `/jwks` always the real key set, `/fuzzed` the
/// current [`JwksCase`].
#[derive(Clone)]
struct Served {
    real: Arc<String>,
    fuzzed: Arc<Mutex<JwksCase>>,
}

async fn real_jwks(State(s): State<Served>) -> Response {
    (
        [
            (header::CACHE_CONTROL, "public, max-age=21600"),
            (header::CONTENT_TYPE, "application/json"),
        ],
        s.real.as_str().to_owned(),
    )
        .into_response()
}

async fn fuzzed_jwks(State(s): State<Served>) -> Response {
    let case = s.fuzzed.lock().clone();
    let mut response = (
        StatusCode::from_u16(case.status).unwrap_or(StatusCode::OK),
        case.body.0,
    )
        .into_response();
    if let Some(v) = case
        .cache_control
        .and_then(|c| header::HeaderValue::from_str(&c).ok())
    {
        response.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    response
}

pub fn run() {
    let keys = keys();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let served = Served {
        real: Arc::new(keys.jwks.to_string()),
        fuzzed: Arc::new(Mutex::new(JwksCase {
            status: 200,
            cache_control: None,
            body: Bytes(Vec::new()),
        })),
    };
    let base = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let addr = listener.local_addr().expect("an address");
        let app = Router::new()
            .route("/jwks", get(real_jwks))
            .route("/fuzzed", get(fuzzed_jwks))
            .with_state(served.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    });
    let http = appdata_syncd::google::http_client(Duration::from_secs(5));
    let verifier = IdTokenVerifier::new(
        http.clone(),
        format!("{base}/jwks"),
        AUDIENCE.into(),
        vec![AZP.into()],
    );

    let valid = Built {
        header: vec![("alg".into(), json!("RS256")), ("kid".into(), json!(KID))],
        claims: vec![
            ("iss".into(), json!(ISSUERS[1])),
            ("aud".into(), json!(AUDIENCE)),
            ("azp".into(), json!(AZP)),
            ("sub".into(), json!("110169484474386276334")),
            ("exp".into(), json!(chrono::Utc::now().timestamp() + 3600)),
            ("iat".into(), json!(chrono::Utc::now().timestamp())),
        ],
        duplicate: None,
        encoding: Encoding::Canonical,
        signer: Signer::Google,
        must_verify: true,
    };
    let valid_token = token(&keys, &valid);
    let mut seeds = vec![valid_token.clone().into_bytes()];
    for signer in [Signer::Attacker, Signer::HmacWithPublicKey, Signer::Empty] {
        seeds.push(
            token(
                &keys,
                &Built {
                    signer,
                    must_verify: false,
                    ..valid.clone()
                },
            )
            .into_bytes(),
        );
    }
    let mut expired = valid.clone();
    expired.claims[4].1 = json!(1);
    expired.must_verify = false;
    seeds.push(token(&keys, &expired).into_bytes());

    let strategy = prop_oneof![
        3 => mutate::input(seeds.clone(), &[b".", b"eyJ", b"==", b"-_", b"+/"]).prop_map(Case::Raw),
        3 => built().prop_map(Case::Built),
        1 => jwks_case(&keys).prop_map(Case::Jwks),
    ];
    // Tokens that verified: the oracle's "must not verify" side is only as good as this count.
    let verified = AtomicU64::new(0);
    let check = |case: Case| -> Result<(), TestCaseError> {
        let (token, must_verify) = match &case {
            Case::Raw(bytes) => (bytes.lossy(), false),
            Case::Built(b) => (token(&keys, b), b.must_verify),
            Case::Jwks(j) => {
                *served.fuzzed.lock() = j.clone();
                let fresh = IdTokenVerifier::new(
                    http.clone(),
                    format!("{base}/fuzzed"),
                    AUDIENCE.into(),
                    vec![AZP.into()],
                );
                let result = rt.block_on(fresh.verify(&valid_token));
                if result.is_ok() {
                    prop_assert!(
                        (200..300).contains(&j.status),
                        "verified against a JWKS answered with HTTP {}",
                        j.status
                    );
                }
                return Ok(());
            }
        };
        let result = rt.block_on(verifier.verify(&token));
        match &result {
            Ok(claims) => {
                verified.fetch_add(1, Ordering::Relaxed);
                prop_assert!(
                    may_verify(&keys, &token),
                    "verified a token that must not verify: {token}"
                );
                prop_assert!(!claims.sub.is_empty());
            }
            Err(e) => {
                prop_assert!(!must_verify, "a right token did not verify: {e}\n{token}");
                crate::no_secret_in(&e.to_string(), &secrets(&token))?;
            }
        }
        Ok(())
    };
    // Found by this target: the unknown-key error quoted any kid, a token among them.
    let mut secret_kid = valid.clone();
    // Made up, shaped like an access token; not a credential.
    secret_kid.header[1].1 = json!("ya29.00_-aAAA-0A0_a0_aAAAa0AAaA0A0a");
    secret_kid.must_verify = false;
    let fixed = seeds
        .into_iter()
        .map(|s| Case::Raw(Bytes(s)))
        .chain([Case::Built(valid), Case::Built(secret_kid)])
        .collect();
    crate::fuzz("id_token", fixed, strategy, check);
    println!(
        "fuzz id_token: {} tokens verified",
        verified.load(Ordering::Relaxed)
    );
}
