//! The suite-wide secrets check: everything any test logs (the in-process daemons at trace
//! level, and every real daemon binary's stderr, also at trace) is scanned for the values the
//! emulators issued: auth codes, access and refresh tokens, client secrets.
//!
//! Scanning pulls out every Google-looking value (`4/…`, `ya29.…`, `1//…`, `GOCSPX-…`, also
//! percent-encoded) from a log and compares those few candidates with what was issued, so
//! the check stays cheap however much is logged.

use std::io::Write;
use std::sync::LazyLock;

use fake_google::Emulator;
use parking_lot::Mutex;

/// Every emulator the suite started (see [`crate::helpers::google`]).
static EMULATORS: LazyLock<Mutex<Vec<Emulator>>> = LazyLock::new(Default::default);
/// Google-looking values seen in the in-process logs so far.
static SEEN: LazyLock<Mutex<Vec<String>>> = LazyLock::new(Default::default);
/// The in-process daemons' ERROR lines (few), for tests that check what an operator is told.
static ERRORS: LazyLock<Mutex<Vec<String>>> = LazyLock::new(Default::default);

/// Every ERROR line the in-process daemons of the suite logged so far, joined.
pub fn error_lines() -> String {
    ERRORS.lock().join("\n")
}

pub fn register(emulator: &Emulator) {
    EMULATORS.lock().push(emulator.clone());
}

const PREFIXES: [&str; 6] = ["4/", "ya29.", "1//", "GOCSPX-", "4%2F", "1%2F%2F"];

/// The Google-looking values in `text`, percent-decoded.
pub fn candidates(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for prefix in PREFIXES {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || "._~-/%+".contains(c)))
                .unwrap_or(tail.len());
            // Tokens are a few hundred bytes; a longer run is data, and its head is enough.
            let value = tail[..len.min(1024)]
                .replace("%2F", "/")
                .replace("%2f", "/")
                .replace("%2B", "+");
            // Short runs ("4/5", "1//") are prose or paths, not secrets.
            if value.len() >= 12 {
                found.push(value);
            }
            // Past the whole run: a long run full of "4/" (base64 data) stays linear.
            rest = &tail[len.max(prefix.len())..];
        }
    }
    found
}

/// Panics if any of `candidates` is, or is part of, a value `emulator` issued.
fn check(what: &str, candidates: &[String], emulators: &[Emulator]) {
    if candidates.is_empty() {
        return;
    }
    for emulator in emulators {
        for secret in emulator.issued_secrets() {
            for c in candidates {
                assert!(
                    !(secret.contains(c.as_str()) || c.contains(&secret)),
                    "{what} logged a secret the emulator issued (starting {:?})",
                    &secret[..secret.len().min(8)]
                );
            }
        }
    }
}

/// The in-process logs so far hold nothing `emulator` issued.
pub fn assert_in_process_logs_clean(emulator: &Emulator) {
    let seen = SEEN.lock().clone();
    check(
        "the in-process daemon",
        &seen,
        std::slice::from_ref(emulator),
    );
}

/// `log` (a daemon binary's stderr) holds nothing any emulator of the suite issued.
pub fn assert_log_clean(what: &str, log: &str) {
    let emulators = EMULATORS.lock().clone();
    check(what, &candidates(log), &emulators);
}

/// The writer of the suite's tracing subscriber: keeps the Google-looking values of every
/// line, and echoes the line when `TEST_LOG` is set.
#[derive(Clone, Copy)]
pub struct Capture {
    pub echo: bool,
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if text.contains("ERROR") {
            let mut errors = ERRORS.lock();
            if errors.len() < 10_000 {
                errors.push(text.to_string());
            }
        }
        if PREFIXES.iter().any(|p| text.contains(p)) {
            let found = candidates(&text);
            if !found.is_empty() {
                SEEN.lock().extend(found);
            }
        }
        if self.echo {
            eprint!("{text}");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        *self
    }
}

#[test]
fn candidates_are_found_plain_and_percent_encoded() {
    let text = "code=4%2F0AQSTgQEabcdefghij&x token ya29.a0AfB_byC-123456 1//0gXyz_abcdefgh ok 4/5";
    assert_eq!(
        candidates(text),
        vec![
            "ya29.a0AfB_byC-123456".to_string(),
            "1//0gXyz_abcdefgh".to_string(),
            "4/0AQSTgQEabcdefghij".to_string(),
        ]
    );
}
