//! `history`: does the database stay the same size however long the daemon runs? N users are
//! seeded straight into a fresh SQLite database (no Drive involved: what grows is the
//! bookkeeping), then C cycles, 15 simulated minutes apart, each hand every user's sync outcome
//! to the daemon's own [`Recorder`] (a fraction of them changed something, so they are
//! recorded as rows; the rest are idle and only counted on the user's row), followed by the
//! daemon's own [`prune_history`] as of that cycle's simulated time. The report samples the
//! `syncs` rows and the database's pages and files every tenth of the run; `errors` is 1 when
//! the files at the end are more than 5 % above the first sample taken once the history is
//! full (every row older than `keep_history` or among the newest `keep_syncs_per_user`), and
//! not before a quarter of the run.

use std::time::{Duration, Instant};

use appdata_syncd::store::syncs::{SyncKind, SyncOutcome, SyncRecord};
use appdata_syncd::store::{now_ms, prune_history, Store};
use appdata_syncd::sync::recorder::{Outcome, Recorder};
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Env;
use crate::report::Report;

/// A 15-minute schedule, the daemon's default.
const INTERVAL_MS: i64 = 15 * 60 * 1000;

#[derive(clap::Args, Clone, Debug)]
pub struct HistoryArgs {
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    #[arg(long, default_value_t = 200)]
    pub cycles: usize,
    /// Fraction of each cycle's syncs that change something (recorded as a row); the others
    /// are idle. 1.0 is the worst case: every sync of every user is a row.
    #[arg(long, default_value_t = 1.0)]
    pub changed: f64,
    /// `[store] keep_history` in simulated minutes (default 6 h, 24 cycles, so the history
    /// is full well within the run; the daemon's default is 7 days).
    #[arg(long, default_value_t = 360)]
    pub keep_history_minutes: u64,
    /// `[store] keep_syncs_per_user`.
    #[arg(long, default_value_t = 20)]
    pub keep_per_user: u32,
}

struct Sample {
    cycle: usize,
    rows: i64,
    live_mib: f64,
    file_mib: f64,
    wal_mib: f64,
}

pub async fn history(env: &Env, a: &HistoryArgs) -> anyhow::Result<Report> {
    let dir = env.scratch_dir("history-")?;
    let db = dir.path().join("appdata-syncd.db");
    let store = Store::connect(&format!("sqlite://{}", db.display()), 8).await?;
    store.migrate().await?;
    let subs = seed_users(&store, a.users).await?;
    let done = CancellationToken::new();
    let (recorder, task) = Recorder::new(store.clone(), "bench".into(), done.clone());
    let task = tokio::spawn(task);

    let started = Instant::now();
    let (mut samples, mut prune_ms) = (Vec::new(), Vec::new());
    let t0 = now_ms() - a.cycles as i64 * INTERVAL_MS;
    let every = (a.cycles / 10).max(1);
    for cycle in 1..=a.cycles {
        let at = t0 + cycle as i64 * INTERVAL_MS;
        run_cycle(&recorder, &subs, cycle, at, a.changed).await?;
        // The daemon's prune task, as of the simulated time `at`.
        let keep = Duration::from_secs(a.keep_history_minutes * 60)
            + Duration::from_millis((now_ms() - at).max(0) as u64);
        let p = Instant::now();
        prune_history(&store, keep, a.keep_per_user).await?;
        prune_ms.push(p.elapsed().as_secs_f64() * 1000.0);
        if cycle % every == 0 || cycle == 1 {
            samples.push(sample(&store, &db, cycle).await?);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    done.cancel();
    task.await??;
    store.close().await;
    Ok(report(a, &samples, &mut prune_ms, secs))
}

/// Users as a sign-in leaves them (the rows the recorder updates), straight into the table.
async fn seed_users(store: &Store, n: usize) -> anyhow::Result<Vec<String>> {
    let subs: Vec<String> = (0..n).map(|i| format!("hist{i:07}")).collect();
    let now = now_ms();
    for chunk in subs.chunks(500) {
        let mut tx = store.begin_write().await?;
        for sub in chunk {
            sqlx::query("INSERT INTO users (sub, created_at, updated_at) VALUES ($1, $2, $2)")
                .bind(sub)
                .bind(now)
                .execute(tx.conn())
                .await?;
        }
        tx.commit().await?;
    }
    Ok(subs)
}

/// Every user's sync outcome of one cycle through the recorder, many in flight (as a cycle's
/// syncs end), so it commits them in batches as it does in the daemon.
async fn run_cycle(
    recorder: &Recorder,
    subs: &[String],
    cycle: usize,
    at: i64,
    changed: f64,
) -> anyhow::Result<()> {
    let threshold = (changed * 1000.0) as usize;
    let results: Vec<Result<(), String>> = futures::stream::iter(subs.iter().enumerate())
        .map(|(i, sub)| {
            // Deterministic: user i changes in cycle c when (i + c) mod 1000 < 1000·changed.
            let changes = i64::from((i + cycle) % 1000 < threshold);
            let record = SyncRecord {
                sub: sub.clone(),
                kind: SyncKind::Incremental,
                started_at: at,
                finished_at: at + 40,
                outcome: SyncOutcome::Ok,
                added: 0,
                updated: changes,
                removed: 0,
                uploaded: 0,
                bytes_down: changes * 2048,
                bytes_up: 0,
                api_calls: 1 + changes,
                error: None,
            };
            recorder.record(Outcome {
                record,
                next_sync_at: at + INTERVAL_MS,
                failures: 0,
            })
        })
        .buffer_unordered(1024)
        .collect()
        .await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        anyhow::bail!("cycle {cycle}: the recorder failed: {e}");
    }
    Ok(())
}

async fn sample(store: &Store, db: &std::path::Path, cycle: usize) -> anyhow::Result<Sample> {
    let mut conn = store.pool().acquire().await?;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM syncs")
        .fetch_one(&mut *conn)
        .await?;
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut *conn)
        .await?;
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(&mut *conn)
        .await?;
    let page: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut *conn)
        .await?;
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Ok(Sample {
        cycle,
        rows,
        live_mib: mib(((pages - free) * page) as u64),
        file_mib: mib(size(db)),
        wal_mib: mib(size(&db.with_extension("db-wal"))),
    })
}

fn report(a: &HistoryArgs, samples: &[Sample], prune_ms: &mut [f64], secs: f64) -> Report {
    // The history is full once every row is past keep_history or among the newest
    // keep_per_user; compare from there (or from a quarter of the run, if later).
    let full_at = (a.keep_history_minutes as usize / 15).max(a.keep_per_user as usize) + 2;
    let full = samples
        .iter()
        .find(|s| s.cycle >= full_at.max(a.cycles / 4))
        .unwrap_or(&samples[0]);
    let last = samples.last().unwrap_or(full);
    let growth = (last.file_mib + last.wal_mib) / (full.file_mib + full.wal_mib).max(1e-9);
    prune_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| prune_ms[((prune_ms.len() - 1) as f64 * q) as usize];
    let mut r = Report::new("history");
    r.set("users", a.users)
        .set("cycles", a.cycles)
        .set("changed", a.changed)
        .set(
            "keep",
            format!(
                "keep_history {} min (simulated), keep_syncs_per_user {}",
                a.keep_history_minutes, a.keep_per_user
            ),
        )
        .set(
            "syncs_recorded",
            (a.users as f64 * a.changed) as usize * a.cycles,
        )
        .set(
            "samples",
            samples
                .iter()
                .map(|s| {
                    json!({"cycle": s.cycle, "rows": s.rows, "live_mib": s.live_mib,
                           "file_mib": s.file_mib, "wal_mib": s.wal_mib})
                })
                .collect::<Vec<_>>(),
        )
        .set("file_growth_after_first_quarter", growth)
        .set("prune_ms_p50_p99_max", [pct(0.5), pct(0.99), pct(1.0)])
        .set("wall_s", secs)
        .set("errors", u64::from(growth > 1.05));
    r
}
