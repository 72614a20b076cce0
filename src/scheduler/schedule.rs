//! The sync schedule, in one place: the cron expression is parsed once (by croner, the parser
//! tokio-cron-scheduler itself uses), and each tick is armed as a one-shot job of
//! tokio-cron-scheduler at the tick's exact time. The job therefore knows which tick it is,
//! and that tick (unix ms) names the cycle every instance shares, however late the job fires.
//! A reload swaps the schedule and re-arms; the tick in flight, if any, is dropped.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

/// A parsed cron expression (six fields, seconds first; day-of-month and day-of-week both
/// honoured, as tokio-cron-scheduler reads them).
#[derive(Clone)]
pub struct Schedule {
    expression: String,
    cron: croner::Cron,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.expression)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression
    }
}

#[derive(Debug, thiserror::Error)]
#[error("[sync] schedule = {expression:?} is not a valid cron expression (sec min hour day month weekday): {reason}")]
pub struct ScheduleError {
    expression: String,
    reason: String,
}

impl Schedule {
    pub fn parse(expression: &str) -> Result<Schedule, ScheduleError> {
        let cron = croner::Cron::new(expression)
            .with_seconds_required()
            .with_dom_and_dow()
            .parse()
            .map_err(|e| ScheduleError {
                expression: expression.to_string(),
                reason: e.to_string(),
            })?;
        // Only a schedule that ever fires is a schedule.
        if cron.find_next_occurrence(&Utc::now(), false).is_err() {
            return Err(ScheduleError {
                expression: expression.to_string(),
                reason: "it never fires".into(),
            });
        }
        Ok(Schedule {
            expression: expression.to_string(),
            cron,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.expression
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }
}

/// A tick of the schedule, as the cycle it fires sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The tick (unix ms): it names the cycle every instance shares.
    pub at: i64,
    /// The schedule's next tick after it (unix ms), when there is one: the cycle's interval
    /// ends there.
    pub next: Option<i64>,
}

/// What the timer does on a tick: run the cycle named by the tick.
pub type OnTick = Arc<dyn Fn(Tick) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Arms one tokio-cron-scheduler one-shot job per tick of the current [`Schedule`].
pub struct Timer {
    jobs: tokio_cron_scheduler::JobScheduler,
    on_tick: OnTick,
    state: Mutex<Armed>,
}

struct Armed {
    schedule: Schedule,
    /// Bumped by every re-arm: a job armed under an older generation does nothing.
    generation: u64,
    job: Option<uuid::Uuid>,
    next_tick: Option<i64>,
}

impl Timer {
    /// Starts tokio-cron-scheduler and arms the first tick of `schedule`.
    pub async fn start(schedule: Schedule, on_tick: OnTick) -> anyhow::Result<Arc<Timer>> {
        use anyhow::Context;
        let jobs = tokio_cron_scheduler::JobScheduler::new()
            .await
            .context("cannot start the cron scheduler")?;
        jobs.start()
            .await
            .context("cannot start the cron scheduler")?;
        let timer = Arc::new(Timer {
            jobs,
            on_tick,
            state: Mutex::new(Armed {
                schedule,
                generation: 0,
                job: None,
                next_tick: None,
            }),
        });
        timer.clone().arm(Utc::now()).await?;
        Ok(timer)
    }

    /// The next tick armed (unix ms), for `ctl status`.
    pub fn next_tick(&self) -> Option<i64> {
        self.state.lock().next_tick
    }

    pub fn schedule(&self) -> Schedule {
        self.state.lock().schedule.clone()
    }

    /// Replaces the schedule (a reload) and re-arms from now.
    pub async fn set_schedule(self: &Arc<Self>, schedule: Schedule) -> anyhow::Result<()> {
        let old_job = {
            let mut state = self.state.lock();
            if state.schedule == schedule {
                return Ok(());
            }
            state.schedule = schedule;
            state.job.take()
        };
        if let Some(job) = old_job {
            let _ = self.jobs.remove(&job).await;
        }
        self.clone().arm(Utc::now()).await
    }

    /// Stops tokio-cron-scheduler; no tick fires after this.
    pub async fn shutdown(&self) {
        let mut jobs = self.jobs.clone();
        if let Err(e) = jobs.shutdown().await {
            tracing::debug!(error = %e, "cron scheduler shutdown");
        }
    }

    /// Arms a one-shot job at the first tick after `after`. (Boxed: a fired job arms the
    /// next, so the future would otherwise contain itself.)
    fn arm(
        self: Arc<Self>,
        after: DateTime<Utc>,
    ) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let (tick, generation) = {
                let mut state = self.state.lock();
                state.generation += 1;
                let tick = state.schedule.next_after(after);
                state.next_tick = tick.map(|t| t.timestamp_millis());
                // For the "no completed cycle in two intervals" alert (contrib/prometheus).
                if let Some(next) = tick.and_then(|t| state.schedule.next_after(t).zip(Some(t))) {
                    crate::metrics::set_cycle_interval((next.0 - next.1).num_seconds());
                }
                (tick, state.generation)
            };
            let Some(tick) = tick else {
                return Ok(());
            };
            // tokio-cron-scheduler counts a one-shot delay in whole seconds from the current
            // whole second: ask for exactly the seconds up to the tick (ticks fall on whole
            // seconds), so the job fires at the tick or a poll later, never before it.
            let now_secs = Utc::now().timestamp();
            let delay =
                Duration::from_secs(tick.timestamp().saturating_sub(now_secs).max(0) as u64);
            let me = self.clone();
            let job = tokio_cron_scheduler::Job::new_one_shot_async(delay, move |_, _| {
                let me = me.clone();
                Box::pin(async move { me.fire(tick, generation).await })
            })
            .map_err(|e| anyhow::anyhow!("cannot arm the next sync cycle: {e}"))?;
            let id = self
                .jobs
                .add(job)
                .await
                .map_err(|e| anyhow::anyhow!("cannot arm the next sync cycle: {e}"))?;
            let mut state = self.state.lock();
            if state.generation == generation {
                state.job = Some(id);
            }
            Ok(())
        })
    }

    async fn fire(self: Arc<Self>, tick: DateTime<Utc>, generation: u64) {
        if self.state.lock().generation != generation {
            return; // re-armed since: this tick belongs to a replaced schedule
        }
        // The next tick is armed before this cycle runs, so a cycle that overruns makes the
        // next tick find it running and skip, rather than delaying the whole schedule.
        if let Err(e) = self.clone().arm(tick).await {
            tracing::error!(error = %format!("{e:#}"), "cannot arm the next sync cycle");
        }
        let next = self.schedule().next_after(tick);
        (self.on_tick)(Tick {
            at: tick.timestamp_millis(),
            next: next.map(|t| t.timestamp_millis()),
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_once_and_say_when_they_fire() {
        let every_30s = Schedule::parse("*/30 * * * * *").unwrap();
        let t = DateTime::parse_from_rfc3339("2026-11-29T03:00:10Z")
            .unwrap()
            .with_timezone(&Utc);
        let next = every_30s.next_after(t).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-11-29T03:00:30+00:00");
        // Strictly after: a tick is never armed twice.
        assert_eq!(
            every_30s.next_after(next).unwrap().to_rfc3339(),
            "2026-11-29T03:01:00+00:00"
        );
        let err = Schedule::parse("*/15 * * * *").unwrap_err().to_string();
        assert!(err.contains("not a valid cron expression"), "{err}");
        assert!(
            Schedule::parse("0 0 0 31 2 *").is_err(),
            "Feb 31 never fires"
        );
    }
}
