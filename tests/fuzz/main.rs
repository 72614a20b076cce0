//! Fuzz targets: everything the daemon parses from outside, fed arbitrary bytes, mutations of
//! valid inputs and structured generators, through the production parsing code.
//!
//! A proptest harness rather than cargo-fuzz: cargo-fuzz's instrumented build of the daemon's
//! whole dependency tree costs more CI time than the 2-core machine has. Each target runs
//! batches of proptest cases until `APPDATA_SYNCD_FUZZ_SECONDS` (default 2) have passed, then
//! prints how many cases it ran. A failure is shrunk and printed with the seed to rerun it:
//! `APPDATA_SYNCD_FUZZ_SEED=N`. Found bugs stay as fixed seeds in each target's `SEEDS`.
//!
//! - [`intake_body`]: `POST /authcode` bodies and content types -> `intake::parse_auth_code`.
//! - [`id_token`]: ID tokens and JWKS documents -> `IdTokenVerifier::verify`.
//! - [`google_json`]: token endpoint and Drive responses, success and error bodies.
//! - [`admin_protocol`]: admin socket byte streams and request lines, round trips.
//! - [`config`]: config.toml, environment overrides, client_secret.json, key files.
//! - [`risc_set`]: security event tokens (`POST /risc`) -> `SetVerifier::verify`.
//!
//! Every target checks: no panic, no case slower than [`CASE_LIMIT`] (a watchdog aborts the
//! process on a hang), errors are `Err`s that do not echo a secret from the input.

mod admin_protocol;
mod config;
mod google_json;
mod id_token;
mod intake_body;
mod mutate;
mod risc_set;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

/// A case slower than this fails (and is shrunk); a real hang is caught by the watchdog.
const CASE_LIMIT: Duration = Duration::from_secs(5);
/// A case still running after this aborts the process: it will not come back.
const HANG_LIMIT: Duration = Duration::from_secs(60);
/// Cases per proptest run; the time budget is checked between runs.
const BATCH: u32 = 64;

#[test]
fn intake_body() {
    intake_body::run();
}

#[test]
fn id_token() {
    id_token::run();
}

#[test]
fn google_json() {
    google_json::run();
}

#[test]
fn admin_protocol() {
    admin_protocol::run();
}

#[test]
fn config() {
    config::run();
}

#[test]
fn risc_set() {
    risc_set::run();
}

fn budget() -> Duration {
    let secs = std::env::var("APPDATA_SYNCD_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs.max(0.0))
}

/// Runs `test` on the fixed `seeds` first, then on values of `strategy` until the time budget
/// is spent. Panics, with the shrunk input and the seed, on the first failure.
pub fn fuzz<S>(
    target: &str,
    seeds: Vec<S::Value>,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Clone,
{
    let watchdog = Watchdog::start(target);
    let timed = |value: S::Value| {
        let started = Instant::now();
        watchdog.case_started();
        let result = test(value);
        watchdog.case_finished();
        let took = started.elapsed();
        if took > CASE_LIMIT {
            return Err(TestCaseError::fail(format!(
                "the case took {took:?} (limit {CASE_LIMIT:?})"
            )));
        }
        result
    };
    for (i, seed) in seeds.into_iter().enumerate() {
        if let Err(e) = timed(seed.clone()) {
            panic!("fuzz {target}: fixed seed #{i} fails: {e}");
        }
    }

    let budget = budget();
    let base_seed = std::env::var("APPDATA_SYNCD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(rand::random);
    let started = Instant::now();
    let cases = AtomicU64::new(0);
    let mut batch = 0u64;
    while started.elapsed() < budget {
        let config = Config {
            cases: BATCH,
            rng_seed: RngSeed::Fixed(base_seed.wrapping_add(batch)),
            failure_persistence: None,
            max_shrink_iters: 4096,
            max_shrink_time: 120_000,
            ..Config::default()
        };
        let result = TestRunner::new(config).run(&strategy, |value| {
            cases.fetch_add(1, Ordering::Relaxed);
            timed(value)
        });
        if let Err(e) = result {
            panic!(
                "fuzz {target}: {e}\n(batch {batch}; rerun with APPDATA_SYNCD_FUZZ_SEED={base_seed})"
            );
        }
        batch += 1;
    }
    println!(
        "fuzz {target}: {} cases in {:.1?} (seed {base_seed})",
        cases.load(Ordering::Relaxed),
        started.elapsed()
    );
}

/// Aborts the process when one case runs longer than [`HANG_LIMIT`]: a hung case never
/// returns to proptest, so nothing else could report it.
struct Watchdog {
    /// Milliseconds since `epoch` when the running case started; 0 when none runs.
    case_started_ms: Arc<AtomicU64>,
    epoch: Instant,
    stop: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(target: &str) -> Watchdog {
        let case_started_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let (started, stopped, target) = (case_started_ms.clone(), stop.clone(), target.to_owned());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let at = started.load(Ordering::Relaxed);
                let now = epoch.elapsed().as_millis() as u64;
                if at != 0 && now.saturating_sub(at) > HANG_LIMIT.as_millis() as u64 {
                    eprintln!("fuzz {target}: a case has run for over {HANG_LIMIT:?}: hang");
                    std::process::abort();
                }
            }
        });
        Watchdog {
            case_started_ms,
            epoch,
            stop,
        }
    }

    fn case_started(&self) {
        let now = (self.epoch.elapsed().as_millis() as u64).max(1);
        self.case_started_ms.store(now, Ordering::Relaxed);
    }

    fn case_finished(&self) {
        self.case_started_ms.store(0, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Prefixes of secrets Google issues: access tokens, refresh tokens, client secrets.
const SECRET_PREFIXES: [&str; 3] = ["ya29.", "1//", "GOCSPX-"];
/// Shorter runs are not taken for secrets (real ones are 35 to 250 characters).
const MIN_SECRET_LEN: usize = 20;

/// Every secret-looking token in `input`: a known prefix and the token characters after it.
pub fn secrets_in(input: &[u8]) -> Vec<String> {
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    let mut found = Vec::new();
    for prefix in SECRET_PREFIXES {
        let p = prefix.as_bytes();
        let mut i = 0;
        while i + p.len() <= input.len() {
            if &input[i..i + p.len()] == p {
                let end = input[i..]
                    .iter()
                    .position(|b| !token_char(*b))
                    .map_or(input.len(), |n| i + n);
                if end - i >= MIN_SECRET_LEN {
                    found.push(String::from_utf8_lossy(&input[i..end]).into_owned());
                }
                i = end.max(i + 1);
            } else {
                i += 1;
            }
        }
    }
    found
}

/// Fails when `message` (an error shown to a client or written to a log) holds one of
/// `secrets` in full.
pub fn no_secret_in(message: &str, secrets: &[String]) -> Result<(), TestCaseError> {
    match secrets.iter().find(|s| message.contains(s.as_str())) {
        Some(s) => Err(TestCaseError::fail(format!(
            "the error echoes the secret {s:?}: {message}"
        ))),
        None => Ok(()),
    }
}
