//! RSA signing keys, the JWKS document and ID token minting (including forged ones).
//!
//! The emulator generates RSA-2048 keys at start and on rotation. A rotated-out key stays in
//! the JWKS until its grace period ends, as Google's do. [`IdTokenAttack`] forges tokens the
//! daemon's verifier must reject; each variant documents what is wrong with the token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

use crate::ids;

pub(crate) const ISSUER: &str = "https://accounts.google.com";

/// Ways to forge the ID token returned for one auth code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdTokenAttack {
    /// Signature bytes altered.
    BadSignature,
    /// `aud` is some other client.
    WrongAud,
    /// `iss` is not Google.
    WrongIss,
    /// `azp` is some other Android client.
    WrongAzp,
    /// `exp` an hour in the past.
    Expired,
    /// `iat` an hour in the future.
    FutureIat,
    /// Header `alg: none`, empty signature.
    AlgNone,
    /// HS256, HMAC keyed with the current public key's PEM.
    Hs256PublicKey,
    /// Properly signed, but the `kid` is in no JWKS.
    UnknownKid,
    /// Properly signed, `kid` is `../../etc/passwd`.
    KidPath,
    /// Payload swapped (another `sub`) after signing.
    TamperedPayload,
    /// Signed by a key that is not (or no longer) in the JWKS.
    RotatedOutKey,
}

pub(crate) struct SigningKey {
    pub(crate) kid: String,
    encoding: EncodingKey,
    n: String,
    e: String,
    public_pem: String,
}

impl SigningKey {
    pub(crate) fn generate() -> anyhow::Result<Self> {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
        let der = key.to_pkcs1_der()?;
        let public = key.to_public_key();
        Ok(Self {
            kid: ids::kid(),
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            n: B64.encode(public.n().to_bytes_be()),
            e: B64.encode(public.e().to_bytes_be()),
            public_pem: public.to_public_key_pem(LineEnding::LF)?,
        })
    }

    fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid, "n": self.n, "e": self.e,
        })
    }

    fn sign(&self, kid: &str, claims: &Claims) -> String {
        self.sign_any(kid, claims)
    }

    /// RS256 over any claims, with `kid` in the header (the RISC side signs SETs with this).
    pub(crate) fn sign_any(&self, kid: &str, claims: &impl Serialize) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .expect("RS256 signing with a freshly generated key cannot fail")
    }

    /// HS256 "signed" with this key's public PEM: the RS256/HS256 confusion forgery.
    pub(crate) fn hs256_with_public_pem(&self, claims: &impl Serialize) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        let secret = EncodingKey::from_secret(self.public_pem.as_bytes());
        jsonwebtoken::encode(&header, claims, &secret).expect("HS256 signing cannot fail")
    }
}

/// The claims of a Google ID token.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Claims {
    pub iss: String,
    pub azp: String,
    pub aud: String,
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    pub at_hash: String,
    pub name: String,
    pub picture: String,
    pub given_name: String,
    pub family_name: String,
    pub locale: String,
    pub iat: i64,
    pub exp: i64,
}

pub(crate) struct KeyRing {
    current: Arc<SigningKey>,
    /// Rotated-out keys still published until the instant given.
    retired: Vec<(Arc<SigningKey>, Instant)>,
    /// Keys that were never or are no longer published, for [`IdTokenAttack::RotatedOutKey`].
    outcast: Option<Arc<SigningKey>>,
}

impl KeyRing {
    pub(crate) fn new(first: SigningKey) -> Self {
        Self {
            current: Arc::new(first),
            retired: Vec::new(),
            outcast: None,
        }
    }

    pub(crate) fn rotate(&mut self, next: SigningKey, remove_at: Instant) {
        let old = std::mem::replace(&mut self.current, Arc::new(next));
        let now = Instant::now();
        self.prune(now);
        if remove_at > now {
            self.retired.push((old, remove_at));
        } else {
            self.outcast = Some(old);
        }
    }

    fn prune(&mut self, now: Instant) {
        if let Some(pos) = self.retired.iter().rposition(|(_, at)| *at <= now) {
            self.outcast = Some(self.retired[pos].0.clone());
        }
        self.retired.retain(|(_, at)| *at > now);
    }

    pub(crate) fn jwks(&mut self) -> serde_json::Value {
        self.prune(Instant::now());
        let keys: Vec<_> = std::iter::once(&self.current)
            .chain(self.retired.iter().map(|(k, _)| k))
            .map(|k| k.jwk())
            .collect();
        serde_json::json!({ "keys": keys })
    }

    pub(crate) fn current(&self) -> Arc<SigningKey> {
        self.current.clone()
    }

    /// A key not in the JWKS; generating one is slow, so the caller does it outside the lock.
    pub(crate) fn outcast(&mut self) -> Option<Arc<SigningKey>> {
        self.prune(Instant::now());
        self.outcast.clone()
    }

    pub(crate) fn set_outcast(&mut self, key: SigningKey) -> Arc<SigningKey> {
        let key = Arc::new(key);
        self.outcast = Some(key.clone());
        key
    }
}

/// `at_hash`: base64url of the left half of SHA-256 of the access token (OIDC core 3.1.3.6).
pub(crate) fn at_hash(access_token: &str) -> String {
    use rsa::sha2::{Digest, Sha256};
    let digest = Sha256::digest(access_token.as_bytes());
    B64.encode(&digest[..16])
}

/// Signs `claims` with `key`, forged as `attack` says. `outcast` is only used for
/// [`IdTokenAttack::RotatedOutKey`].
pub(crate) fn mint(
    key: &SigningKey,
    mut claims: Claims,
    attack: Option<IdTokenAttack>,
    outcast: Option<&SigningKey>,
) -> String {
    use IdTokenAttack::*;
    let hour = 3600;
    match attack {
        None => key.sign(&key.kid, &claims),
        Some(WrongAud) => {
            claims.aud = "000000000000-wrongaudience.apps.googleusercontent.com".into();
            key.sign(&key.kid, &claims)
        }
        Some(WrongIss) => {
            claims.iss = "https://accounts.evil.example.com".into();
            key.sign(&key.kid, &claims)
        }
        Some(WrongAzp) => {
            claims.azp = "000000000000-wrongazp.apps.googleusercontent.com".into();
            key.sign(&key.kid, &claims)
        }
        Some(Expired) => {
            claims.iat -= 2 * hour;
            claims.exp = claims.iat + hour;
            key.sign(&key.kid, &claims)
        }
        Some(FutureIat) => {
            claims.iat += hour;
            claims.exp = claims.iat + hour;
            key.sign(&key.kid, &claims)
        }
        Some(UnknownKid) => key.sign(&format!("{}0", &ids::kid()[1..]), &claims),
        Some(KidPath) => key.sign("../../etc/passwd", &claims),
        Some(BadSignature) => {
            let jwt = key.sign(&key.kid, &claims);
            let (head, sig) = jwt.rsplit_once('.').expect("a JWT has three parts");
            let mut bytes = B64.decode(sig).expect("our own signature is base64url");
            bytes[0] ^= 0x01;
            let last = bytes.len() - 1;
            bytes[last] ^= 0x80;
            format!("{head}.{}", B64.encode(bytes))
        }
        Some(TamperedPayload) => {
            let jwt = key.sign(&key.kid, &claims);
            let mut parts: Vec<&str> = jwt.split('.').collect();
            claims.sub = format!("{}9", claims.sub);
            let forged = B64.encode(serde_json::to_vec(&claims).expect("claims serialise"));
            parts[1] = &forged;
            parts.join(".")
        }
        Some(AlgNone) => {
            let header = serde_json::json!({ "alg": "none", "kid": key.kid, "typ": "JWT" });
            format!(
                "{}.{}.",
                B64.encode(header.to_string()),
                B64.encode(serde_json::to_vec(&claims).expect("claims serialise"))
            )
        }
        Some(Hs256PublicKey) => {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(key.kid.clone());
            let secret = EncodingKey::from_secret(key.public_pem.as_bytes());
            jsonwebtoken::encode(&header, &claims, &secret).expect("HS256 signing cannot fail")
        }
        Some(RotatedOutKey) => {
            let other = outcast.expect("caller supplies an outcast key for RotatedOutKey");
            other.sign(&other.kid, &claims)
        }
    }
}
