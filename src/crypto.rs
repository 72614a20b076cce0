//! Encryption of tokens at rest: AES-256-GCM, a random 96-bit nonce per value, and the owner's
//! `sub` plus the value's purpose as associated data, so a ciphertext copied to another user's
//! row (or from the refresh to the access column) fails to decrypt.
//!
//! A [`Keyring`] holds the current key (which encrypts) and previous keys (which only decrypt);
//! each stored value carries the id of the key that sealed it, so `rotate-key` can find and
//! re-seal what is not under the current key.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{bail, Context};
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;

/// What a sealed value is for; part of the associated data.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    RefreshToken,
    AccessToken,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Purpose::RefreshToken => "refresh_token",
            Purpose::AccessToken => "access_token",
        }
    }
}

/// A sealed value as stored: `nonce || ciphertext+tag`, and the id of the key that sealed it.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub key_id: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("value was sealed with key {0}, which is not configured")]
    UnknownKey(String),
    #[error("value does not decrypt: wrong key, wrong user, or tampered")]
    Corrupt,
}

#[derive(Clone)]
pub struct Keyring {
    current: String,
    /// Boxed, so that a growing map moves pointers, not key schedules (a moved-from copy
    /// would be freed without being wiped).
    keys: Arc<HashMap<String, Box<Aes256Gcm>>>,
    /// Values sealed under the current key since [`Keyring::take_encryptions`] last looked.
    sealed: Arc<AtomicU64>,
}

/// AES-GCM with random 96-bit nonces stays within NIST's bound (collision probability under
/// 2^-32, SP 800-38D 8.3) for 2^32 encryptions per key. The daemon counts them (persisted per
/// key) and warns from a quarter of that (2^30: at 100,000 users refreshing every 15 minutes,
/// about 100 days of warning), so an operator rotates the key long before. A nonce-misuse-
/// resistant AEAD (AES-GCM-SIV) would only soften a collision; counting keeps the standard,
/// widely reviewed construction and the stored format.
pub const NONCE_SAFE_ENCRYPTIONS: u64 = 1 << 32;
pub const WARN_ENCRYPTIONS: u64 = NONCE_SAFE_ENCRYPTIONS / 4;

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Keyring {
    /// Loads the current key and any previous ones. A key file holds exactly 32 bytes: raw,
    /// or as 64 hex characters, or as base64 (a trailing newline is fine).
    pub fn from_files(current: &Path, previous: &[impl AsRef<Path>]) -> anyhow::Result<Keyring> {
        let mut ring = Keyring::from_key(&*read_key_file(current)?);
        for p in previous {
            let key = read_key_file(p.as_ref())?;
            Arc::make_mut(&mut ring.keys)
                .entry(key_id(&key))
                .or_insert_with(|| cipher(&key));
        }
        Ok(ring)
    }

    /// A ring of one key (the caller zeroizes its copy; the cipher zeroizes its own on drop).
    pub fn from_key(key: &[u8; 32]) -> Keyring {
        let id = key_id(key);
        let mut keys = HashMap::new();
        keys.insert(id.clone(), cipher(key));
        Keyring {
            current: id,
            keys: Arc::new(keys),
            sealed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many values were sealed under the current key since the last call (and resets it),
    /// for the persisted per-key count.
    pub fn take_encryptions(&self) -> u64 {
        self.sealed.swap(0, Ordering::Relaxed)
    }

    /// Puts back what [`Keyring::take_encryptions`] returned when it could not be persisted.
    pub fn untake_encryptions(&self, n: u64) {
        self.sealed.fetch_add(n, Ordering::Relaxed);
    }

    /// A throw-away key, for dev mode and tests.
    pub fn random() -> Keyring {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        Keyring::from_key(&key)
    }

    pub fn current_id(&self) -> &str {
        &self.current
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn seal(&self, sub: &str, purpose: Purpose, secret: &SecretString) -> Sealed {
        self.sealed.fetch_add(1, Ordering::Relaxed);
        let cipher = &self.keys[&self.current];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(sub, purpose);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.expose_secret().as_bytes(),
                    aad: &aad,
                },
            )
            // AES-GCM encryption fails only for plaintexts over 64 GiB.
            .expect("AES-GCM encryption of a token cannot fail");
        let mut bytes = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        Sealed {
            key_id: self.current.clone(),
            bytes,
        }
    }

    pub fn open(
        &self,
        sub: &str,
        purpose: Purpose,
        key_id: &str,
        bytes: &[u8],
    ) -> Result<SecretString, CryptoError> {
        let cipher = self
            .keys
            .get(key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_string()))?;
        if bytes.len() < NONCE_LEN {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let aad = associated_data(sub, purpose);
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| CryptoError::Corrupt)?,
        );
        // Copied into a string of its exact length (the decrypted buffer has room for the tag,
        // and shrinking it would free a copy of the token unwiped); `plain` is wiped on drop.
        std::str::from_utf8(&plain)
            .map(|text| SecretString::from(text.to_string()))
            .map_err(|_| CryptoError::Corrupt)
    }
}

/// The cipher of `key`; its key schedule is wiped when it is dropped (the `aes` crate's
/// `zeroize` feature, Cargo.toml).
fn cipher(key: &[u8; 32]) -> Box<Aes256Gcm> {
    Box::new(Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(key)))
}

fn associated_data(sub: &str, purpose: Purpose) -> Vec<u8> {
    format!("appdata-syncd/v1/{}/{}", purpose.label(), sub).into_bytes()
}

/// A short, stable, non-secret name for a key: the first 8 bytes of SHA-256 over a label and it.
fn key_id(key: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"appdata-syncd key id\0");
    h.update(key);
    hex::encode(&h.finalize()[..8])
}

pub fn read_key_file(path: &Path) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    check_private(path, "encryption key file")?;
    let raw = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("cannot read encryption key file {}", path.display()))?,
    );
    parse_key(&raw).with_context(|| format!("in encryption key file {}", path.display()))
}

/// Refuses a secret file that its group or others may read (`chmod 600` it), except under
/// `$CREDENTIALS_DIRECTORY`, where systemd hands credentials over with modes of its own.
pub fn check_private(path: &Path, what: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let in_credentials = std::env::var_os("CREDENTIALS_DIRECTORY")
        .is_some_and(|dir| path.starts_with(Path::new(&dir)));
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !in_credentials && meta.mode() & 0o077 != 0 {
        bail!(
            "{what} {} is readable by its group or others (mode {:o}): chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

/// The key in `raw` (32 bytes, 64 hex characters or base64), decoded straight into wiped
/// buffers: the decoders' own vectors grow, and would free copies of the key unwiped.
fn parse_key(raw: &[u8]) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    if raw.len() == key.len() {
        key.copy_from_slice(raw);
        return Ok(key);
    }
    let text = std::str::from_utf8(raw).map(str::trim).unwrap_or("");
    let decoded = if text.len() == 64 {
        hex::decode_to_slice(text, &mut key[..]).is_ok()
    } else {
        let mut buffer = Zeroizing::new([0u8; 48]);
        let engine = base64::engine::general_purpose::STANDARD;
        let length = engine.decode_slice(text, &mut buffer[..]);
        key.copy_from_slice(&buffer[..32]);
        matches!(length, Ok(32))
    };
    if !decoded {
        bail!(
            "the key must be exactly 32 bytes (raw, 64 hex characters or base64); found {} bytes. \
             Create one with: head -c 32 /dev/urandom > encryption.key",
            raw.len()
        );
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_value_opens_only_for_its_user_and_purpose() {
        let ring = Keyring::random();
        let secret = SecretString::from("plaintext-refresh-value");
        let sealed = ring.seal("alice", Purpose::RefreshToken, &secret);
        let opened = ring
            .open(
                "alice",
                Purpose::RefreshToken,
                &sealed.key_id,
                &sealed.bytes,
            )
            .unwrap();
        assert_eq!(opened.expose_secret(), "plaintext-refresh-value");
        assert!(ring
            .open("bob", Purpose::RefreshToken, &sealed.key_id, &sealed.bytes)
            .is_err());
        assert!(ring
            .open("alice", Purpose::AccessToken, &sealed.key_id, &sealed.bytes)
            .is_err());
        assert!(!sealed.bytes.windows(8).any(|w| w == &b"plaintex"[..]));
    }

    #[test]
    fn key_parsing_accepts_raw_hex_base64_and_rejects_short() {
        let key = [7u8; 32];
        assert_eq!(*parse_key(&key).unwrap(), key);
        assert_eq!(
            *parse_key(format!("{}\n", hex::encode(key)).as_bytes()).unwrap(),
            key
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        assert_eq!(*parse_key(b64.as_bytes()).unwrap(), key);
        assert!(parse_key(&[1u8; 16]).is_err());
    }
}
