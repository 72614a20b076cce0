//! Key material and tokens are wiped before their memory goes back to the allocator.
//!
//! This test binary's global allocator looks into every block freed while the test runs and
//! counts the blocks that still hold a known secret: the key's bytes (either half: an AES-NI
//! key schedule keeps them as two round keys), its hex or base64 text, or a token. Loading,
//! using and dropping a key ring must leave no such block. What stays on the stack is out of
//! its sight; the heap, where keys and tokens live and are copied when containers grow, is not.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use appdata_syncd::crypto::{read_key_file, Keyring, Purpose};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

struct Scanning;

/// The secrets to look for; set before `ARMED`.
static NEEDLES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
static ARMED: AtomicBool = AtomicBool::new(false);
static FOUND: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to `System` unchanged; `dealloc` only reads the block it is
// about to free, within its layout's size, and allocates nothing (so it cannot recurse).
unsafe impl GlobalAlloc for Scanning {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::SeqCst) {
            if let Some(needles) = NEEDLES.get() {
                let block = std::slice::from_raw_parts(ptr, layout.size());
                if needles
                    .iter()
                    .any(|n| block.windows(n.len()).any(|w| w == n.as_slice()))
                {
                    FOUND.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Scanning = Scanning;

/// A key whose bytes occur nowhere else.
fn key(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

/// Runs `f` with the scanner armed; the number of freed blocks that held a needle.
fn freed_with_secrets(f: impl FnOnce()) -> usize {
    FOUND.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    f();
    ARMED.store(false, Ordering::SeqCst);
    FOUND.load(Ordering::SeqCst)
}

fn write_private(dir: &std::path::Path, name: &str, content: &[u8]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn keys_and_tokens_are_wiped_before_their_memory_is_freed() {
    let keys = [
        key("zeroize current"),
        key("zeroize old 1"),
        key("zeroize old 2"),
    ];
    let token = "1//zeroize-test-refresh-token-that-must-not-outlive-its-use";
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut needles = Vec::new();
    for k in &keys {
        needles.push(k[..16].to_vec());
        needles.push(k[16..].to_vec());
        needles.push(hex::encode(k).into_bytes()[..32].to_vec());
        needles.push(b64.encode(k).into_bytes()[..24].to_vec());
    }
    needles.push(token.as_bytes().to_vec());
    NEEDLES.set(needles).unwrap();

    // The scanner sees a secret left in a freed block (so the test can fail).
    let leaked = freed_with_secrets(|| drop(std::hint::black_box(keys[0].to_vec())));
    assert_eq!(leaked, 1, "the scanner missed a plain Vec holding the key");

    let dir = tempfile::tempdir().unwrap();
    // The three encodings a key file may use (README: raw, hex, base64).
    let current = write_private(dir.path(), "current.key", &keys[0]);
    let old_hex = write_private(
        dir.path(),
        "old1.key",
        format!("{}\n", hex::encode(keys[1])).as_bytes(),
    );
    let old_b64 = write_private(
        dir.path(),
        "old2.key",
        format!("{}\n", b64.encode(keys[2])).as_bytes(),
    );

    let found = freed_with_secrets(|| {
        for path in [&current, &old_hex, &old_b64] {
            drop(read_key_file(path).unwrap());
        }
        let ring = Keyring::from_files(&current, &[&old_hex, &old_b64]).unwrap();
        let secret = SecretString::from(token.to_string());
        let sealed = ring.seal("sub-1", Purpose::RefreshToken, &secret);
        drop(secret);
        let opened = ring
            .open(
                "sub-1",
                Purpose::RefreshToken,
                &sealed.key_id,
                &sealed.bytes,
            )
            .unwrap();
        assert_eq!(opened.expose_secret(), token);
        drop(opened);
        let copy = ring.clone();
        drop(ring);
        drop(copy);
    });
    assert_eq!(
        found, 0,
        "{found} freed block(s) still held a key or the token"
    );
}
