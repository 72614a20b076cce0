//! Throughput of simple Drive calls: `changes.list` for idle users, the call a sync daemon
//! makes most. Starts the emulator in-process, signs in many users (bypassing the RSA-signed
//! code exchange), then hammers it from many keep-alive connections for a fixed time.
//!
//! The client shares the machine's two cores with the server, so the figure is a floor; if
//! `wrk` is installed it is run against the same server too (one user), for a second opinion.
//!
//! Knobs (env): FG_BENCH_USERS (default 100000), FG_BENCH_CONNS (64), FG_BENCH_SECS (5).

use fake_google::FakeGoogle;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let users = env_or("FG_BENCH_USERS", 100_000) as usize;
    let conns = env_or("FG_BENCH_CONNS", 64) as usize;
    let secs = env_or("FG_BENCH_SECS", 5);

    let fg = FakeGoogle::start().await?;
    let emu = fg.emulator().clone();
    let started = Instant::now();
    let mut tokens = Vec::with_capacity(users);
    for i in 0..users {
        let sub = format!("{}", 100_000_000_000_000_000u64 + i as u64);
        emu.create_user(fake_google::NewUser {
            sub: sub.clone(),
            ..Default::default()
        })?;
        tokens.push(emu.mint_access_token(&sub, None)?);
    }
    println!(
        "set up {users} users with access tokens in {:.2?}",
        started.elapsed()
    );
    let tokens = Arc::new(tokens);
    let base = fg.base_url();

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conns)
        .build()?;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (client, tokens, base) = (client.clone(), tokens.clone(), base.clone());
        let (done, errors) = (done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while Instant::now() < deadline {
                let token = &tokens[i % tokens.len()];
                i += conns;
                let url = format!("{base}/drive/v3/changes?spaces=appDataFolder&pageToken=1");
                match client.get(url).bearer_auth(token).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let t0 = Instant::now();
    for t in tasks {
        t.await?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "in-process reqwest client: {n} changes.list in {elapsed:.2} s over {conns} connections \
         = {:.0} requests/s ({} errors)",
        n as f64 / elapsed,
        errors.load(Ordering::Relaxed)
    );
    let server_count = emu.stats().count("changes.list");
    println!("server counted {server_count} changes.list");

    wrk(&base, &tokens[0], conns, secs).await;
    fg.shutdown().await;
    Ok(())
}

/// Runs `wrk` (if installed) against the running server; wrk is a separate process, so the
/// server gets the cores the in-process client would otherwise use.
async fn wrk(base: &str, token: &str, conns: usize, secs: u64) {
    let url = format!("{base}/drive/v3/changes?spaces=appDataFolder&pageToken=1");
    let out = tokio::process::Command::new("wrk")
        .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s")])
        .args(["-H", &format!("Authorization: Bearer {token}"), &url])
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let rps = text
                .lines()
                .find(|l| l.starts_with("Requests/sec"))
                .unwrap_or("Requests/sec: ?");
            println!(
                "wrk (1 thread, {conns} connections, one user): {}",
                rps.trim()
            );
        }
        _ => println!("wrk not installed; skipping the external-client measurement"),
    }
}
