//! Spread cycles (issue 17): a cycle fired by the schedule starts each user at its stable
//! slot's time within the interval, not all on the tick; admin resyncs do not wait for it.

use std::sync::Arc;

use appdata_syncd::scheduler::{CycleOutcome, Pacing, Scheduler, SyncPhase};
use appdata_syncd::store::now_ms;
use appdata_syncd::store::schedule::{slot_of, Resync, SLOTS};

use crate::helpers::{spawn_app, TestApp};

/// `count` subs whose slots fall one in each `count`-th of the slot range, lowest first, so
/// that a spread cycle must start them at clearly different times.
fn subs_across_the_slots(prefix: &str, count: i64) -> Vec<String> {
    let mut chosen: Vec<Option<String>> = vec![None; count as usize];
    for i in 0.. {
        let sub = format!("{prefix}{i}");
        let part = (slot_of(&sub) * count / SLOTS) as usize;
        chosen[part].get_or_insert(sub);
        if chosen.iter().all(Option::is_some) {
            break;
        }
    }
    chosen.into_iter().flatten().collect()
}

/// Signs `subs` in and brings them to idle with one cycle started at once.
async fn idle_users(app: &TestApp, subs: &[String]) {
    for sub in subs {
        app.google_user(sub);
        app.sign_in(sub).await;
    }
    let first = app.cycle().await;
    assert_eq!(first.ok, subs.len() as u64, "{first:?}");
}

/// A cycle of `tick` over an interval of `interval_ms`, on its own task.
fn spread_cycle(
    scheduler: &Arc<Scheduler>,
    tick: i64,
    interval_ms: i64,
) -> tokio::task::JoinHandle<CycleOutcome> {
    let scheduler = scheduler.clone();
    let pacing = Pacing::over_interval(tick, tick + interval_ms);
    tokio::spawn(async move { scheduler.run_cycle(tick, pacing).await })
}

/// A spread cycle of `tick` over an interval of `interval_ms`, run to its end, and for each
/// sync it started, when the test heard of the start (no earlier than the start itself).
async fn heard_starts(
    scheduler: &Arc<Scheduler>,
    tick: i64,
    interval_ms: i64,
) -> (CycleOutcome, Vec<(String, i64)>) {
    let mut events = scheduler.subscribe();
    let mut cycle = spread_cycle(scheduler, tick, interval_ms);
    let mut heard = Vec::new();
    loop {
        tokio::select! {
            e = events.recv() => {
                let e = e.expect("no event is missed in a cycle of a few users");
                if e.phase == SyncPhase::Started {
                    heard.push((e.sub, now_ms()));
                }
            }
            outcome = &mut cycle => {
                // Every start was announced before the cycle ended.
                while let Ok(e) = events.try_recv() {
                    if e.phase == SyncPhase::Started {
                        heard.push((e.sub, now_ms()));
                    }
                }
                return (outcome.unwrap(), heard);
            }
        }
    }
}

#[tokio::test]
async fn a_spread_cycle_starts_each_user_at_its_slot_and_all_before_it_ends() {
    let app = spawn_app().await;
    let subs = subs_across_the_slots("spread-", 5);
    idle_users(&app, &subs).await;
    let tick = now_ms();
    let interval_ms = 3_000;
    let (outcome, heard) = heard_starts(&app.scheduler, tick, interval_ms).await;
    assert_eq!((outcome.users, outcome.ok), (5, 5), "{outcome:?}");
    let order: Vec<&str> = heard.iter().map(|(sub, _)| sub.as_str()).collect();
    assert_eq!(order, subs, "each user started once, in slot order");
    // Slot s starts no earlier than s/SLOTS of the window (90 % of the interval) after the
    // tick: the users of the later slots waited, seconds after the first.
    let window_ms = interval_ms as f64 * 0.9;
    for (sub, at) in &heard {
        let due = tick + (window_ms * slot_of(sub) as f64 / SLOTS as f64) as i64;
        assert!(
            at >= &due,
            "{sub} started at {at}, before its slot's time {due}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_resync_runs_at_once_during_a_spread_cycle_and_status_shows_the_spread() {
    let app = spawn_app().await;
    // One user early in the slots, one late: the cycle reaches the late one minutes on.
    let subs = subs_across_the_slots("resync-", 2);
    idle_users(&app, &subs).await;
    let late = &subs[1];
    let tick = now_ms();
    let cycle = spread_cycle(&app.scheduler, tick, 600_000);
    let report = app
        .scheduler
        .resync_and_wait(
            &appdata_syncd::scheduler::resync::ResyncTarget::User(late.clone()),
            Resync::Incremental,
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(report.synced, 1, "{report:?}");
    // The resync finished while the cycle was still short of the late user's slot.
    let progress = app
        .scheduler
        .cycle_progress()
        .expect("the cycle is running");
    assert_eq!(progress.tick, tick);
    assert!(
        progress.slots_due <= slot_of(late),
        "{progress:?}: the late user's slot {} had come",
        slot_of(late)
    );
    assert_eq!(
        progress.spread_until,
        tick + 540_000,
        "90 % of the interval"
    );
    let status = crate::helpers::ctl(&app.dir.path().join("admin.sock"), &["status"]).await;
    assert!(status.ok, "{}", status.stderr);
    let line = status
        .stdout
        .lines()
        .find(|l| l.starts_with("this cycle"))
        .unwrap_or_else(|| panic!("no cycle in ctl status:\n{}", status.stdout));
    assert!(line.contains("of slots due"), "{}", status.stdout);
    assert!(status.stdout.contains("spread until"), "{}", status.stdout);
    // Stopping ends the cycle's wait for the later slots.
    app.stop().await;
    let outcome = cycle.await.unwrap();
    assert!(
        outcome.users <= 1,
        "the late user's slot never came: {outcome:?}"
    );
}

/// Each of `subs`' slot as the database has it.
async fn stored_slots(app: &TestApp, subs: &[String]) -> Vec<i64> {
    let mut slots = Vec::new();
    for sub in subs {
        let slot: i64 = sqlx::query_scalar("SELECT slot FROM users WHERE sub = $1")
            .bind(sub)
            .fetch_one(app.store.pool())
            .await
            .unwrap();
        slots.push(slot);
    }
    slots
}

#[tokio::test]
async fn users_from_before_the_slots_get_theirs_at_start_up() {
    let app = spawn_app().await;
    let subs = subs_across_the_slots("placed-", 3);
    idle_users(&app, &subs).await;
    let expected: Vec<i64> = subs.iter().map(|s| slot_of(s)).collect();
    assert_eq!(
        stored_slots(&app, &subs).await,
        expected,
        "placed at sign-in"
    );
    // As migration 0012 leaves the rows that were there before it.
    sqlx::query("UPDATE users SET slot = -1")
        .execute(app.store.pool())
        .await
        .unwrap();
    let app = app.restart_with(|_| {}).await;
    assert_eq!(
        stored_slots(&app, &subs).await,
        expected,
        "placed at start-up"
    );
    app.stop().await;
}
