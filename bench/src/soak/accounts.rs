//! Load: new users signing in (half at once, the rest as a trickle), re-sign-ins, and grants
//! revoked on the emulator.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::drive_changes::{file_name, payload};
use super::state::{lock, Claimed, Soak};
use super::{pause, secs};

/// Sign-ins in flight at once.
const SIGN_IN_CONCURRENCY: usize = 8;
/// [`watch_sign_ins`]' window: longer than a fault window, shorter than the run.
const SIGN_IN_WINDOW: Duration = Duration::from_secs(20);

/// Half the users at once, the rest spread over the first 60% of the run, and re-sign-ins of
/// existing users (revoked ones first) all along.
pub(super) async fn sign_ins(
    soak: Arc<Soak>,
    stop: CancellationToken,
    duration: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut inflight = JoinSet::new();
    let mut last_again = Instant::now();
    while !stop.is_cancelled() {
        while inflight.try_join_next().is_some() {}
        if inflight.len() >= SIGN_IN_CONCURRENCY {
            pause(&stop, Duration::from_millis(20)).await;
            continue;
        }
        let n = soak.target_users;
        let ramp = (started.elapsed().as_secs_f64() / (duration.as_secs_f64() * 0.6)).min(1.0);
        let target = n / 2 + ((n - n / 2) as f64 * ramp) as usize;
        if soak.next_user.load(Ordering::Relaxed) < target {
            let i = soak.next_user.fetch_add(1, Ordering::Relaxed);
            let soak = soak.clone();
            inflight.spawn(async move { new_user(&soak, i).await });
            continue;
        }
        if last_again.elapsed() >= Duration::from_millis(400) {
            last_again = Instant::now();
            let soak = soak.clone();
            inflight.spawn(async move { sign_in_again(&soak).await });
            continue;
        }
        pause(&stop, Duration::from_millis(50)).await;
    }
    while let Some(done) = inflight.join_next().await {
        done??;
    }
    Ok(())
}

async fn new_user(soak: &Soak, i: usize) -> anyhow::Result<()> {
    let sub = format!("9{i:07}");
    soak.control(
        reqwest::Method::POST,
        "users",
        Some(json!({ "sub": sub, "email": format!("soak{i}@example.com") })),
    )
    .await?;
    let files = rand::thread_rng().gen_range(0..=3);
    for _ in 0..files {
        let len = rand::thread_rng().gen_range(0..6000);
        soak.google
            .put_file(&sub, &file_name(), payload(len))
            .await?;
        soak.counts.add("change.create");
    }
    {
        let mut m = lock(&soak.model);
        m.subs.push(sub.clone());
        m.busy.insert(sub.clone());
    }
    let claimed = Claimed { soak, sub };
    soak.counts.add("signin.new_user");
    soak.sign_in(&claimed.sub, false).await
}

async fn sign_in_again(soak: &Soak) -> anyhow::Result<()> {
    let revoked_first = rand::thread_rng().gen_bool(0.5);
    let claimed = soak.claim(|m| {
        if revoked_first && !m.revoked.is_empty() {
            m.revoked.iter().cloned().collect()
        } else {
            m.subs.clone()
        }
    });
    let Some(claimed) = claimed else {
        return Ok(());
    };
    // A revoked grant needs consent again (Google then issues a new refresh token); an
    // active user's app signs in silently, now and then with the consent screen.
    let needs_consent = {
        let m = lock(&soak.model);
        !m.acked.contains(&claimed.sub)
            || m.revoked.contains(&claimed.sub)
            || m.uncertain.contains(&claimed.sub)
    };
    soak.counts.add("signin.again");
    soak.sign_in(
        &claimed.sub,
        needs_consent || rand::thread_rng().gen_bool(0.2),
    )
    .await
}

/// Revokes a grant every few seconds; a third are signed in again at once (racing the
/// daemon, which may be refreshing the old token right then).
pub(super) async fn revokes(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    while pause(&stop, secs(1.0, 4.0)).await {
        let Some(claimed) = soak.claim(|m| {
            m.acked
                .iter()
                .filter(|s| !m.revoked.contains(*s))
                .cloned()
                .collect()
        }) else {
            continue;
        };
        soak.control(
            reqwest::Method::POST,
            &format!("users/{}/revoke", claimed.sub),
            None,
        )
        .await?;
        soak.counts.add("revoke");
        soak.trail(&claimed.sub, "grant revoked on the emulator");
        lock(&soak.model).revoked.insert(claimed.sub.clone());
        if rand::thread_rng().gen_bool(0.33) {
            tokio::time::sleep(secs(0.0, 0.5)).await;
            soak.sign_in(&claimed.sub, true).await?;
        }
    }
    Ok(())
}

/// Sign-ins keep succeeding whatever the attackers do: in every [`SIGN_IN_WINDOW`] that saw
/// one daemon throughout and at least 5 attempts, at least one was acknowledged.
pub(super) async fn watch_sign_ins(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    let at = |soak: &Soak| {
        (
            soak.epoch(),
            soak.counts.get("signin.attempted"),
            soak.counts.get("signin.acknowledged"),
        )
    };
    let mut before = at(&soak);
    while pause(&stop, SIGN_IN_WINDOW).await {
        let now = at(&soak);
        let (attempted, acked) = (now.1 - before.1, now.2 - before.2);
        if now.0 != before.0 || attempted < 5 {
            soak.counts.add("signin_watch.windows_skipped");
        } else if acked == 0 {
            soak.violation(format!(
                "no sign-in acknowledged in {} s ({attempted} attempted)",
                SIGN_IN_WINDOW.as_secs()
            ));
        } else {
            soak.counts.add("signin_watch.windows_ok");
        }
        before = now;
    }
    Ok(())
}
