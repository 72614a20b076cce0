//! data-api: the data API's three hot paths, against one daemon with `[api] listen` on
//! loopback, a real SQLite file and fake-google. U users with F files each are signed in
//! through the intake and first-synced (U·F `file.added` + U `user.signed_in` changes), then:
//!
//! 1. change-feed: one consumer drains the whole feed from the start with
//!    `GET /v1/changes?limit=1000`, following `next_cursor`: changes/s.
//! 2. content-reads: `--clients` readers, each its own keep-alive connection, read random
//!    files by id (`GET /v1/users/{sub}/files/{id}/content`) for `--seconds`: reads/s, latency.
//! 3. webhooks: an axum receiver on loopback is the `[[api.webhooks]]` endpoint (events
//!    `file.updated`, so the seeding's changes are not sent). `--rounds` times one file of one
//!    user changes on fake-google and that user is synced (`resync_and_wait`, what `ctl sync`
//!    does); then a burst: the same number of users change at once and one cycle syncs them.
//!    Delay per change: the receiver's clock at arrival minus the change's `at` (recorded in
//!    the sync's commit), both Unix ms on this machine.
//!
//! Each phase is its own report (`phase`); the HTTP clients and the receiver run in this
//! process, so `cpu_s` is the daemon's and theirs.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use appdata_syncd::config::{Config, WebhookConfig};
use appdata_syncd::scheduler::resync::ResyncTarget;
use appdata_syncd::store::now_ms;
use appdata_syncd::store::schedule::Resync;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;

use super::{cycle_errors, finish, first_cycle, log, payload, Env, World};
use crate::daemon::{Daemon, Tuning};
use crate::measure;
use crate::report::Report;
use crate::DataApiArgs;

/// Page size of the drain: the API's maximum.
const PAGE: usize = 1000;
/// Targets from issue 14, on the 2-core machine.
const TARGET_CHANGES_PER_S: f64 = 20_000.0;
const TARGET_READS_PER_S: f64 = 5_000.0;
const TARGET_WEBHOOK_P99_MS: f64 = 1_000.0;
/// How long the webhook phase waits for deliveries after its last sync.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

pub async fn data_api(env: &Env, a: &DataApiArgs) -> anyhow::Result<Vec<Report>> {
    anyhow::ensure!(
        a.users > 0 && a.files > 0,
        "--users and --files must be at least 1"
    );
    anyhow::ensure!(a.clients > 0, "--clients must be at least 1");
    let receiver = Receiver::start().await?;
    let hook = receiver.url.clone();
    let key = receiver.key.clone();
    let w = World::start_configured(env, Tuning::raised(), |dir, c| {
        configure(dir, c, &hook, &key)
    })
    .await?;
    let api = Api::new(&w.daemon).await?;
    let seeded = w.seed("da", a.users).await?;
    let subs: Vec<&String> = seeded.subs.iter().collect();
    for f in 0..a.files {
        w.put_files(&subs, &format!("file-{f}.bin"), |i| payload(a.size, i + f))
            .await?;
    }
    let (_, first_errors) = first_cycle(&w, a.users).await?;
    let head = settle_feed(&w.daemon).await?;
    log(format!("feed settled at seq {head}"));
    let setup_errors = seeded.errors + first_errors;

    let (mut feed, files) = change_feed(&w, &api, a).await?;
    feed.set("errors", feed.errors() + setup_errors);
    let reads = content_reads(&w, &api, a, Arc::new(files)).await?;
    let hooks = webhooks(&w, &receiver, &seeded.subs, a).await?;
    w.stop(env).await?;
    Ok(vec![feed, reads, hooks])
}

/// `[api] listen` on a free loopback port, and the receiver as the one webhook endpoint.
fn configure(dir: &Path, c: &mut Config, hook: &str, key: &[u8]) -> anyhow::Result<()> {
    c.api.listen = Some("127.0.0.1:0".into());
    let secret = dir.join("webhook.secret");
    let encoded = base64::engine::general_purpose::STANDARD.encode(key);
    std::fs::write(&secret, format!("whsec_{encoded}\n")).context("writing the webhook secret")?;
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    // As config.toml would give it, so concurrency, timeout and retries are the defaults.
    let endpoint: WebhookConfig = serde_json::from_value(json!({
        "name": "bench",
        "url": hook,
        "secret_file": secret,
        "events": ["file.updated"],
    }))?;
    c.api.webhooks = vec![endpoint];
    Ok(())
}

/// The data API's base URL and a read-only key.
struct Api {
    base: String,
    key: String,
}

impl Api {
    async fn new(d: &Daemon) -> anyhow::Result<Api> {
        let base = d.api.clone().context("the daemon has no data API")?;
        let created = d
            .services()
            .create_api_key("bench", false)
            .await
            .context("creating an API key")?;
        Ok(Api {
            base,
            key: created.key,
        })
    }
}

/// Steps the feed's sequencer until the head stops moving: every committed change has its seq.
async fn settle_feed(d: &Daemon) -> anyhow::Result<i64> {
    let feed = d.services().feed();
    let started = Instant::now();
    let mut last = feed.sequence_once().await?;
    loop {
        // Longer than the background sequencer's tick, so its batch shows too.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let head = feed.sequence_once().await?;
        if head == last {
            return Ok(head.last_seq);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the change feed is still moving after 60 s"
        );
        last = head;
    }
}

#[derive(Deserialize)]
struct ChangePage {
    changes: Vec<Change>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(rename = "type")]
    kind: String,
    sub: String,
    file_id: Option<String>,
}

/// What the drain saw.
#[derive(Default)]
struct Drained {
    changes: u64,
    page_ms: Vec<f64>,
    by_type: BTreeMap<String, u64>,
    /// (sub, file_id) of every `file.added`: what the readers read.
    files: Vec<(String, String)>,
}

/// Phase 1: one consumer reads the feed from the start to its end.
async fn change_feed(
    w: &World,
    api: &Api,
    a: &DataApiArgs,
) -> anyhow::Result<(Report, Vec<(String, String)>)> {
    let http = reqwest::Client::new();
    w.google.reset_stats().await?;
    let window = super::Window::open(&w.google);
    let mut d = drain(&http, api).await?;
    let m = window.close(&w.google);
    let stats = w.google.stats().await?;
    let added = (a.users * a.files) as u64;
    let unique: HashSet<&(String, String)> = d.files.iter().collect();
    let count = |t: &str| d.by_type.get(t).copied().unwrap_or(0);
    let errors = count("file.added").abs_diff(added)
        + count("user.signed_in").abs_diff(a.users as u64)
        + (d.files.len() - unique.len()) as u64;
    let (p50, p99) = measure::p50_p99(&mut d.page_ms);
    let mut r = Report::new("data-api");
    r.set("phase", "change-feed")
        .set("users", a.users)
        .set("files_per_user", a.files)
        .set("changes", d.changes)
        .set("changes_by_type", &d.by_type)
        .set("page_size", PAGE)
        .set("pages", d.page_ms.len())
        .set("elapsed_s", m.secs)
        .set("changes_per_s", d.changes as f64 / m.secs)
        .set("target_changes_per_s", TARGET_CHANGES_PER_S)
        .set("page_p50_ms", p50)
        .set("page_p99_ms", p99)
        .set("errors", errors)
        .set("cpu_s_per_1000_of", "changes drained");
    finish(&mut r, &m, &w.google, &stats, d.changes as f64);
    Ok((r, std::mem::take(&mut d.files)))
}

async fn drain(http: &reqwest::Client, api: &Api) -> anyhow::Result<Drained> {
    let mut d = Drained::default();
    let mut cursor: Option<String> = None;
    let url = format!("{}/v1/changes", api.base);
    loop {
        let mut req = http
            .get(&url)
            .bearer_auth(&api.key)
            .query(&[("limit", PAGE.to_string())]);
        if let Some(c) = &cursor {
            req = req.query(&[("cursor", c)]);
        }
        let t = Instant::now();
        let resp = req.send().await.context("GET /v1/changes")?;
        let status = resp.status();
        anyhow::ensure!(status.is_success(), "GET /v1/changes: {status}");
        let page: ChangePage = resp.json().await.context("GET /v1/changes: the body")?;
        d.page_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if page.changes.is_empty() {
            return Ok(d);
        }
        d.changes += page.changes.len() as u64;
        for c in page.changes {
            if c.kind == "file.added" {
                d.files.push((c.sub, c.file_id.unwrap_or_default()));
            }
            *d.by_type.entry(c.kind).or_default() += 1;
        }
        cursor = page.next_cursor;
        anyhow::ensure!(cursor.is_some(), "a page with changes but no next_cursor");
    }
}

/// One reader's tally.
#[derive(Default)]
struct Reads {
    latencies_ms: Vec<f64>,
    errors: u64,
}

/// Phase 2: `clients` readers, each on its own keep-alive connection, for `seconds`.
async fn content_reads(
    w: &World,
    api: &Api,
    a: &DataApiArgs,
    files: Arc<Vec<(String, String)>>,
) -> anyhow::Result<Report> {
    anyhow::ensure!(!files.is_empty(), "the feed listed no file to read");
    let until = Instant::now() + Duration::from_secs(a.seconds);
    w.google.reset_stats().await?;
    let window = super::Window::open(&w.google);
    let readers: Vec<_> = (0..a.clients)
        .map(|i| {
            let (files, base, key) = (files.clone(), api.base.clone(), api.key.clone());
            tokio::spawn(read_until(i as u64, files, base, key, a.size, until))
        })
        .collect();
    let mut all = Reads::default();
    for r in readers {
        let r = r.await.context("a reader panicked")??;
        all.latencies_ms.extend(r.latencies_ms);
        all.errors += r.errors;
    }
    let m = window.close(&w.google);
    let stats = w.google.stats().await?;
    let reads = all.latencies_ms.len();
    let (p50, p99) = measure::p50_p99(&mut all.latencies_ms);
    let mut r = Report::new("data-api");
    r.set("phase", "content-reads")
        .set("files", files.len())
        .set("file_bytes", a.size)
        .set("clients", a.clients)
        .set("elapsed_s", m.secs)
        .set("reads", reads)
        .set("reads_per_s", reads as f64 / m.secs)
        .set("target_reads_per_s", TARGET_READS_PER_S)
        .set("mb_per_s", (reads * a.size) as f64 / 1e6 / m.secs)
        .set("p50_ms", p50)
        .set("p99_ms", p99)
        .set("errors", all.errors)
        .set("cpu_s_per_1000_of", "reads");
    finish(&mut r, &m, &w.google, &stats, reads as f64);
    Ok(r)
}

/// Reads random files until `until`; a read that is not a 200 with `size` bytes is an error.
async fn read_until(
    seed: u64,
    files: Arc<Vec<(String, String)>>,
    base: String,
    key: String,
    size: usize,
    until: Instant,
) -> anyhow::Result<Reads> {
    // Its own client: one keep-alive connection per reader.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Reads::default();
    while Instant::now() < until {
        let (sub, id) = &files[rng.gen_range(0..files.len())];
        let t = Instant::now();
        let sent = http
            .get(format!("{base}/v1/users/{sub}/files/{id}/content"))
            .bearer_auth(&key)
            .send()
            .await;
        let ok = match sent {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.bytes().await;
                status == StatusCode::OK && body.is_ok_and(|b| b.len() == size)
            }
            Err(_) => false,
        };
        out.latencies_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        out.errors += u64::from(!ok);
    }
    Ok(out)
}

/// A delivery as the receiver first got it.
struct Delivery {
    /// The change's `at`: when the sync recorded it, in its commit (Unix ms).
    at: i64,
    /// The receiver's clock when the request arrived (Unix ms).
    received: i64,
}

#[derive(Default)]
struct Inbox {
    /// By `webhook-id`, the first attempt only.
    first: BTreeMap<String, Delivery>,
    duplicates: u64,
    bad_signatures: u64,
}

/// The backend's webhook endpoint: checks each signature as docs/data-api.md says, answers 204.
struct Receiver {
    url: String,
    key: Vec<u8>,
    inbox: Arc<Mutex<Inbox>>,
}

type HookState = (Arc<Mutex<Inbox>>, Arc<Vec<u8>>);

impl Receiver {
    async fn start() -> anyhow::Result<Receiver> {
        let key: Vec<u8> = rand::thread_rng().gen::<[u8; 32]>().to_vec();
        let inbox: Arc<Mutex<Inbox>> = Arc::default();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state((inbox.clone(), Arc::new(key.clone())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        // Ends with the process; the daemon is stopped first.
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver { url, key, inbox })
    }

    fn delivered(&self) -> usize {
        self.inbox.lock().map_or(0, |i| i.first.len())
    }

    /// Waits until `n` distinct messages have arrived, or [`DELIVERY_WAIT`].
    async fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + DELIVERY_WAIT;
        while self.delivered() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn receive(
    axum::extract::State((inbox, key)): axum::extract::State<HookState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let received = now_ms();
    let checked = verify(&key, &headers, &body);
    let Ok(mut inbox) = inbox.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    match checked {
        Some((id, at)) => {
            let inbox = &mut *inbox;
            match inbox.first.entry(id) {
                std::collections::btree_map::Entry::Occupied(_) => inbox.duplicates += 1,
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(Delivery { at, received });
                }
            }
            StatusCode::NO_CONTENT
        }
        None => {
            inbox.bad_signatures += 1;
            StatusCode::UNAUTHORIZED
        }
    }
}

/// The message's id and its change's `at`, when the Standard Webhooks signature is valid.
fn verify(key: &[u8], headers: &HeaderMap, body: &[u8]) -> Option<(String, i64)> {
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let (id, ts, sigs) = (
        header("webhook-id")?,
        header("webhook-timestamp")?,
        header("webhook-signature")?,
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).ok()?;
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let b64 = base64::engine::general_purpose::STANDARD;
    let valid = sigs
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| {
            b64.decode(s)
                .is_ok_and(|sig| mac.clone().verify_slice(&sig).is_ok())
        });
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let at = json.pointer("/data/at")?.as_i64()?;
    valid.then(|| (id.to_string(), at))
}

/// Seeds of the webhook phase's new contents: far from the seeding's `i + f`.
const NEW_CONTENT: usize = 1 << 30;

/// Phase 3: `rounds` single-user syncs one after the other, then a burst of as many changes
/// synced by one cycle; the delay of each webhook from its change's commit.
async fn webhooks(
    w: &World,
    receiver: &Receiver,
    subs: &[String],
    a: &DataApiArgs,
) -> anyhow::Result<Report> {
    w.google.reset_stats().await?;
    let window = super::Window::open(&w.google);
    let started = now_ms();
    let mut sync_errors = 0u64;
    for r in 0..a.rounds {
        let sub = &subs[r % subs.len()];
        let content = payload(a.size, NEW_CONTENT + r);
        w.google.put_file(sub, "file-0.bin", content).await?;
        let target = ResyncTarget::User(sub.clone());
        let synced = w
            .daemon
            .services()
            .resync_and_wait(&target, Resync::Incremental, |_| {})
            .await;
        sync_errors += u64::from(synced.is_err());
    }
    receiver.wait_for(a.rounds).await;
    let rounds = receiver.arrivals(&HashSet::new());
    let burst_users: Vec<&String> = subs.iter().take(a.rounds).collect();
    w.put_files(&burst_users, "file-0.bin", |i| {
        payload(a.size, NEW_CONTENT + a.rounds + i)
    })
    .await?;
    let cycle = w.daemon.cycle().await;
    receiver.wait_for(a.rounds + burst_users.len()).await;
    let burst = receiver.arrivals(&rounds.ids);
    let m = window.close(&w.google);
    let stats = w.google.stats().await?;
    let inbox = receiver.counts();
    let missing = (a.rounds + burst_users.len()).abs_diff(rounds.ids.len() + burst.ids.len());
    let mut r = Report::new("data-api");
    r.set("phase", "webhooks")
        .set(
            "endpoint",
            "events file.updated; concurrency, timeout and retries the daemon's defaults",
        )
        .set("rounds", a.rounds)
        .set("round_deliveries", rounds.ids.len())
        .set(
            "delay",
            "receiver's arrival minus the change's `at` (its sync's commit)",
        );
    // Sequential: from the first round's start to the last of its arrivals.
    let span = (rounds.last_received - started).max(1);
    rounds.report(&mut r, "", span);
    r.set("burst_changes", burst_users.len())
        .set("burst_deliveries", burst.ids.len());
    let span = burst.span_ms();
    burst.report(&mut r, "burst_", span);
    r.set("target_delay_p99_ms", TARGET_WEBHOOK_P99_MS)
        .set("duplicates", inbox.duplicates)
        .set("bad_signatures", inbox.bad_signatures)
        .set(
            "errors",
            missing as u64
                + inbox.bad_signatures
                + sync_errors
                + cycle_errors(&cycle, subs.len())
                + cycle.files_changed.abs_diff(burst_users.len() as u64),
        )
        .set("cpu_s_per_1000_of", "deliveries");
    finish(
        &mut r,
        &m,
        &w.google,
        &stats,
        (a.rounds + burst_users.len()) as f64,
    );
    Ok(r)
}

/// Messages that arrived in one part of the webhook phase.
struct Arrivals {
    ids: HashSet<String>,
    /// Arrival minus `at`, ms.
    delays_ms: Vec<f64>,
    first_at: i64,
    last_received: i64,
}

impl Arrivals {
    /// From the first change's commit to the last arrival, ms (at least 1).
    fn span_ms(&self) -> i64 {
        (self.last_received - self.first_at).max(1)
    }

    /// Delay percentiles, and deliveries per second over `span_ms`.
    fn report(mut self, r: &mut Report, prefix: &str, span_ms: i64) {
        let (p50, p99) = measure::p50_p99(&mut self.delays_ms);
        let max = self.delays_ms.last().copied().unwrap_or(0.0);
        r.set(&format!("{prefix}delay_p50_ms"), p50)
            .set(&format!("{prefix}delay_p99_ms"), p99)
            .set(&format!("{prefix}delay_max_ms"), max)
            .set(
                &format!("{prefix}deliveries_per_s"),
                self.ids.len() as f64 * 1000.0 / span_ms as f64,
            );
    }
}

/// What the receiver counted besides first deliveries.
struct InboxCounts {
    duplicates: u64,
    bad_signatures: u64,
}

impl Receiver {
    /// The first deliveries so far, except those in `skip`.
    fn arrivals(&self, skip: &HashSet<String>) -> Arrivals {
        let mut out = Arrivals {
            ids: HashSet::new(),
            delays_ms: Vec::new(),
            first_at: i64::MAX,
            last_received: 0,
        };
        let Ok(inbox) = self.inbox.lock() else {
            return out;
        };
        for (id, d) in inbox.first.iter().filter(|(id, _)| !skip.contains(*id)) {
            out.ids.insert(id.clone());
            out.delays_ms.push((d.received - d.at) as f64);
            out.first_at = out.first_at.min(d.at);
            out.last_received = out.last_received.max(d.received);
        }
        out
    }

    fn counts(&self) -> InboxCounts {
        self.inbox.lock().map_or(
            InboxCounts {
                duplicates: 0,
                bad_signatures: 0,
            },
            |i| InboxCounts {
                duplicates: i.duplicates,
                bad_signatures: i.bad_signatures,
            },
        )
    }
}
