//! quota: fake-google enforces the project's Drive quota, Q requests a second (`--window
//! second`: `quota_rps`, a fixed one-second window, 429 beyond it) or Q·60 a minute (`--window
//! minute`: `quota_per_minute`, a sliding 60 s window, 403 rateLimitExceeded beyond it), while
//! the daemon syncs already-synced users with its limiter's ceiling at Q (second) or 2·Q
//! (minute: it has to find the rate through refusals and its AIMD). With `--other-tenant S`
//! another client of the project ([`crate::tenant`]) uses S·Q a second of the same quota, and
//! the daemon's ceiling stays at Q, as an operator who does not know of it would set it.
//!
//! With `--instances K --database postgres://…` K daemons share one database, and with it the
//! ceiling (the project's budget, split among the live instances): together they should use
//! the quota as one daemon does, each about a K-th of it.
//!
//! Once a second the emulator's stats, the tenant's counts and the daemons' rates in force
//! (`status().rate_limit`, summed) are sampled; the report gives totals, fractions of the
//! quota and series per second (second) or per 10 s (minute).

use std::time::Instant;

use appdata_syncd::scheduler::{CycleOutcome, Pacing};
use serde_json::{json, Value};

use super::{
    cycle_errors, finish, first_cycle, log, pooled, settings, Env, Measured, Window, World,
};
use crate::daemon::Tuning;
use crate::database::{Backend, ScratchDatabase};
use crate::google::Stats;
use crate::report::Report;
use crate::tenant::{Running, Tenant, TenantCount};
use crate::{QuotaArgs, QuotaWindow};

/// The scenario as resolved from the command line.
struct Plan {
    users: usize,
    /// Q, requests per second.
    q: u64,
    window: QuotaWindow,
    /// The other tenant's share of Q (0: none).
    share: f64,
    tuning: Tuning,
    instances: usize,
}

impl Plan {
    fn new(a: &QuotaArgs) -> anyhow::Result<Plan> {
        anyhow::ensure!(a.quota_rps > 0, "--quota-rps must be at least 1");
        anyhow::ensure!(
            (0.0..1.0).contains(&a.other_tenant),
            "--other-tenant is a fraction of the quota: 0 or more, below 1"
        );
        anyhow::ensure!(a.instances >= 1, "--instances must be at least 1");
        anyhow::ensure!(
            a.instances == 1 || a.database.is_some(),
            "--instances {} needs --database postgres://USER@HOST:PORT: daemons share a \
             project's rate only through a shared database",
            a.instances
        );
        let q = a.quota_rps;
        let (users, ceiling) = match a.window {
            QuotaWindow::Second => (3000, q),
            // Two minutes of work at Q/s: the first minute's window starts empty, so only
            // after it does the per-minute quota bind.
            QuotaWindow::Minute => (120 * q as usize, 2 * q),
        };
        Ok(Plan {
            users: a.users.unwrap_or(users),
            q,
            window: a.window,
            share: a.other_tenant,
            tuning: Tuning {
                profile: "quota",
                concurrency: a.concurrency.unwrap_or(Tuning::defaults().concurrency),
                max_requests_per_second: a.max_rps.unwrap_or(ceiling.min(u32::MAX as u64) as u32),
            },
            instances: a.instances,
        })
    }

    /// fake-google's drive faults: the project quota and nothing else.
    fn faults(&self) -> Value {
        match self.window {
            QuotaWindow::Second => json!({ "drive": { "quota_rps": self.q, "error_status": 429 } }),
            QuotaWindow::Minute => json!({ "drive": { "quota_per_minute": self.q * 60 } }),
        }
    }

    /// What the quota leaves the daemon, requests per second.
    fn available_rps(&self) -> f64 {
        self.q as f64 * (1.0 - self.share)
    }

    /// The quota's window, and the step of the reported series, in seconds.
    fn window_and_step_s(&self) -> (f64, usize) {
        match self.window {
            QuotaWindow::Second => (1.0, 1),
            QuotaWindow::Minute => (60.0, 10),
        }
    }

    fn window_name(&self) -> &'static str {
        match self.window {
            QuotaWindow::Second => "second",
            QuotaWindow::Minute => "minute",
        }
    }
}

/// The measured phase, once a second (and once at each end).
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    /// Seconds since the phase began.
    at_s: f64,
    /// Drive requests fake-google saw, the daemon's and the tenant's.
    drive: u64,
    /// Quota refusals (429 and 403) fake-google sent, to both.
    refused: u64,
    tenant: TenantCount,
    /// The daemons' rates in force (AIMD), summed.
    rate_in_force: u32,
}

impl Sample {
    fn daemon_refused(&self) -> u64 {
        self.refused.saturating_sub(self.tenant.refused)
    }

    fn daemon_accepted(&self) -> u64 {
        self.drive
            .saturating_sub(self.tenant.answered())
            .saturating_sub(self.daemon_refused())
    }
}

fn refusals(stats: &Stats) -> u64 {
    stats.status(429) + stats.status(403)
}

pub async fn quota(env: &Env, args: &QuotaArgs) -> anyhow::Result<Report> {
    let plan = Plan::new(args)?;
    match Backend::parse(args.database.as_deref())? {
        Backend::Sqlite => quota_on(env, &plan, None).await,
        Backend::Postgres(server) => {
            let db = ScratchDatabase::create(&server).await?;
            let measured = quota_on(env, &plan, Some(&db.url)).await;
            let dropped = db.finish(env.keep).await;
            let report = measured?;
            dropped?;
            Ok(report)
        }
    }
}

async fn quota_on(env: &Env, plan: &Plan, database_url: Option<&str>) -> anyhow::Result<Report> {
    let n = plan.users;
    let w = World::start_shared(
        env,
        Tuning::raised(),
        database_url,
        plan.instances,
        Default::default(),
    )
    .await?;
    let seeded = w.seed("q", n).await?;
    let (_, first_errors) = first_cycle(&w, n).await?;
    let tenant = if plan.share > 0.0 {
        Some(Tenant::sign_in(&w.google, "other-tenant").await?)
    } else {
        None
    };
    for d in w.instances() {
        d.tune(plan.tuning).await;
    }
    shared_among_all(&w, plan.instances).await?;
    if plan.window == QuotaWindow::Minute {
        // The daemon takes what Google accepted from it in the last minute as its budget
        // when the project's quota refuses; fake-google's window starts empty when the quota
        // is set, so the first sync's calls must have left the daemon's minute too.
        log("quota: a minute of quiet first (the first sync's calls leave the window)");
        tokio::time::sleep(std::time::Duration::from_secs(61)).await;
    }
    w.google.set_faults(plan.faults()).await?;
    w.google.reset_stats().await?;
    log(format!(
        "quota: {n} users, Q = {}/s per {}, ceiling {}/s shared by {} instance(s), other tenant {:.0} %",
        plan.q,
        plan.window_name(),
        plan.tuning.max_requests_per_second,
        plan.instances,
        plan.share * 100.0
    ));
    let window = Window::open(&w.google);
    let started = Instant::now();
    let running = tenant.map(|t| t.start(plan.share * plan.q as f64));
    let (runs, mut samples) = sampled_cycle(&w, running.as_ref(), started).await;
    let shares: Vec<u64> = runs.iter().map(|o| o.users).collect();
    let (o, _, _) = pooled(runs.into_iter().map(|o| (o, Vec::new(), 0)).collect());
    let tenant_total = match running {
        Some(r) => r.stop().await,
        None => TenantCount::default(),
    };
    let m = window.close(&w.google);
    let stats = w.google.stats().await?;
    samples.push(Sample {
        at_s: started.elapsed().as_secs_f64(),
        drive: stats.drive_calls(),
        refused: refusals(&stats),
        tenant: tenant_total,
        rate_in_force: rates_in_force(&w).await?,
    });
    let ceiling = w.daemon.rate_limit().await?.budget_per_second;
    let mut r = Report::new("quota");
    totals(&mut r, plan, &m, &samples, ceiling);
    series(&mut r, plan, &samples);
    if plan.instances > 1 {
        instance_shares(&mut r, shares);
    }
    r.set("failed_syncs", o.failed).set(
        "errors",
        cycle_errors(&o, n) + seeded.errors + first_errors + tenant_total.failed,
    );
    finish(&mut r, &m, &w.google, &stats, n as f64);
    w.stop(env).await?;
    Ok(r)
}

/// Each instance's part of the cycle: users synced (an idle sync is one Drive call, so these
/// are its calls) and the largest distance of one from the mean, as a fraction of it.
fn instance_shares(r: &mut Report, shares: Vec<u64>) {
    let mean = shares.iter().sum::<u64>() as f64 / shares.len() as f64;
    let spread = shares
        .iter()
        .map(|&s| (s as f64 - mean).abs() / mean.max(1.0))
        .fold(0.0, f64::max);
    log(format!("users synced by each instance: {shares:?}"));
    r.set("backend", "postgres")
        .set("instances", shares.len())
        .set("users_per_instance", shares)
        .set("max_share_deviation_from_mean", spread);
}

/// Waits until every instance counts all `instances` in its share of the rate (each counts
/// the live instances every 2 s).
async fn shared_among_all(w: &World, instances: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut counted = Vec::new();
        for d in w.instances() {
            counted.push(d.rate_limit().await?.instances as usize);
        }
        if counted.iter().all(|&c| c == instances) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the instances count {counted:?} sharers, not {instances} each, after 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The instances' rates in force, summed.
async fn rates_in_force(w: &World) -> anyhow::Result<u32> {
    let mut sum = 0;
    for d in w.instances() {
        sum += d.rate_limit().await?.current_per_second;
    }
    Ok(sum)
}

/// One cycle over every user, every instance taking part (one stamp, as a cron tick gives),
/// while a sampler records a [`Sample`] once a second. Returns each instance's outcome.
async fn sampled_cycle(
    w: &World,
    tenant: Option<&Running>,
    started: Instant,
) -> (Vec<CycleOutcome>, Vec<Sample>) {
    let mut samples = vec![Sample::default()];
    let sampler = async {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let at_s = started.elapsed().as_secs_f64();
            let (stats, rate) = tokio::join!(w.google.stats(), rates_in_force(w));
            match (stats, rate) {
                (Ok(s), Ok(rate)) => samples.push(Sample {
                    at_s,
                    drive: s.drive_calls(),
                    refused: refusals(&s),
                    tenant: tenant.map(Running::count).unwrap_or_default(),
                    rate_in_force: rate,
                }),
                (Err(e), _) | (_, Err(e)) => log(format!("sample failed: {e:#}")),
            }
        }
    };
    let cycle = appdata_syncd::store::now_ms();
    let cycles = futures::future::join_all(
        w.instances()
            .map(|d| d.scheduler.run_cycle(cycle, Pacing::AtOnce)),
    );
    let outcomes = tokio::select! {
        o = cycles => o,
        () = sampler => unreachable!("the sampler never ends"),
    };
    (outcomes, samples)
}

/// Totals and fractions of the quota over the whole phase (`samples` ends with the totals).
fn totals(r: &mut Report, plan: &Plan, m: &Measured, samples: &[Sample], ceiling: u32) {
    let end = samples.last().copied().unwrap_or_default();
    let q = plan.q as f64;
    let daemon_rps = end.daemon_accepted() as f64 / m.secs;
    let tenant_rps = end.tenant.accepted as f64 / m.secs;
    let (window_s, _) = plan.window_and_step_s();
    let first_window = samples
        .iter()
        .find(|s| s.at_s >= window_s - 0.05)
        .map_or(end.daemon_refused(), Sample::daemon_refused);
    let mut per_second: Vec<f64> = rates(samples, 1, Sample::daemon_accepted);
    let (median, _) = crate::measure::p50_p99(&mut per_second);
    r.set("users", plan.users)
        .set("quota_rps", plan.q)
        .set("window", plan.window_name())
        .set("quota", plan.faults()["drive"].clone())
        .set("other_tenant", plan.share)
        .set("settings", settings(&plan.tuning))
        .set("elapsed_s", m.secs)
        .set("users_per_s", plan.users as f64 / m.secs)
        .set("accepted_drive_requests", end.daemon_accepted())
        .set("achieved_rps", daemon_rps)
        .set("fraction_of_quota", daemon_rps / q)
        .set("available_rps", plan.available_rps())
        .set("fraction_of_available", daemon_rps / plan.available_rps())
        .set("project_fraction_of_quota", (daemon_rps + tenant_rps) / q)
        .set("steady_rps_median", median)
        .set("steady_fraction_of_quota", median / q);
    if plan.share > 0.0 {
        r.set("tenant_target_rps", plan.share * q)
            .set("tenant_rps", tenant_rps)
            .set("tenant", end.tenant);
    }
    let (first, after) = match plan.window {
        QuotaWindow::Second => (
            "quota_errors_first_second",
            "quota_errors_after_first_second",
        ),
        QuotaWindow::Minute => (
            "quota_errors_first_minute",
            "quota_errors_after_first_minute",
        ),
    };
    r.set("quota_errors", end.daemon_refused())
        .set(first, first_window)
        .set(after, end.daemon_refused() - first_window)
        .set("rate_ceiling", ceiling)
        .set("rate_in_force_end", end.rate_in_force);
    if plan.window == QuotaWindow::Minute {
        let f = minute_fractions(samples, plan.available_rps());
        let mean = f.iter().sum::<f64>() / f.len().max(1) as f64;
        let min = f.iter().copied().reduce(f64::min).unwrap_or(0.0);
        r.set("minute_windows", f.len())
            .set("fraction_of_available_per_minute_mean", mean)
            .set("fraction_of_available_per_minute_min", min);
    }
}

/// Per-second (second) or per-10-s (minute) series: the daemon's and the tenant's accepted
/// requests a second, the daemon's refusals a second, the rate in force at each step's end.
fn series(r: &mut Report, plan: &Plan, samples: &[Sample]) {
    let (_, step) = plan.window_and_step_s();
    if plan.window == QuotaWindow::Second {
        r.set(
            "accepted_per_second",
            rates(samples, 1, Sample::daemon_accepted),
        );
    }
    r.set("series_step_s", step)
        .set(
            "daemon_rps_series",
            rates(samples, step, Sample::daemon_accepted),
        )
        .set(
            "refused_rps_series",
            rates(samples, step, Sample::daemon_refused),
        );
    if plan.share > 0.0 {
        r.set(
            "tenant_rps_series",
            rates(samples, step, |s| s.tenant.accepted),
        );
    }
    let rate_in_force: Vec<u32> = samples
        .iter()
        .skip(1)
        .step_by(step)
        .map(|s| s.rate_in_force)
        .collect();
    r.set("rate_in_force_series", rate_in_force);
}

/// The rate a second of `count` over each run of `step` samples, from the real time between
/// them; a last, partial run shorter than half a second is left out.
fn rates(samples: &[Sample], step: usize, count: impl Fn(&Sample) -> u64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < samples.len() {
        let j = (i + step.max(1)).min(samples.len() - 1);
        let dt = samples[j].at_s - samples[i].at_s;
        if dt >= 0.5 {
            out.push(count(&samples[j]).saturating_sub(count(&samples[i])) as f64 / dt);
        }
        i = j;
    }
    out
}

/// For each sample followed by a whole minute of samples: what the daemon got in that minute,
/// as a fraction of `available_rps` × its length. Against a sliding 60 s window each such
/// minute could hold exactly the quota, so this is the use of the quota once the first
/// (empty) window no longer flatters it.
fn minute_fractions(samples: &[Sample], available_rps: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for (i, a) in samples.iter().enumerate() {
        let Some(b) = samples[i..].iter().find(|b| b.at_s >= a.at_s + 59.95) else {
            break;
        };
        let got = b.daemon_accepted().saturating_sub(a.daemon_accepted()) as f64;
        out.push(got / (available_rps * (b.at_s - a.at_s)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_s: f64, drive: u64, refused: u64, tenant: (u64, u64)) -> Sample {
        Sample {
            at_s,
            drive,
            refused,
            tenant: TenantCount {
                accepted: tenant.0,
                refused: tenant.1,
                ..TenantCount::default()
            },
            rate_in_force: 0,
        }
    }

    #[test]
    fn the_daemons_share_is_what_the_tenant_did_not_send() {
        let s = at(1.0, 300, 50, (60, 10));
        assert_eq!(s.daemon_refused(), 40);
        assert_eq!(s.daemon_accepted(), 300 - 70 - 40);
    }

    #[test]
    fn rates_use_the_real_time_and_drop_a_sliver_at_the_end() {
        let s: Vec<Sample> = [(0.0, 0), (1.0, 100), (2.0, 300), (4.0, 500), (4.2, 510)]
            .into_iter()
            .map(|(t, d)| at(t, d, 0, (0, 0)))
            .collect();
        assert_eq!(rates(&s, 1, |s| s.drive), vec![100.0, 200.0, 100.0]);
        assert_eq!(rates(&s, 2, |s| s.drive), vec![150.0, 210.0 / (4.2 - 2.0)]);
    }

    #[test]
    fn minute_fractions_cover_each_whole_minute() {
        // 100/s accepted for 90 s: every whole minute got 6,000 of an available 6,000.
        let s: Vec<Sample> = (0..=90).map(|t| at(t as f64, 100 * t, 0, (0, 0))).collect();
        let f = minute_fractions(&s, 100.0);
        assert_eq!(f.len(), 31);
        assert!(f.iter().all(|x| (x - 1.0).abs() < 1e-9));
    }
}
