//! Reloading config.toml (SIGHUP, `ctl reload`): the keys in [`LIVE`] change at once, any other
//! changed key is reported as needing a restart and keeps its running value, so the report
//! stays true until then. Which keys changed is derived from the configuration itself
//! ([`ResolvedConfig::changed_keys`]), so a new key cannot be forgotten here.

use super::reports::ReloadReport;
use super::Services;
use crate::config::{Config, ResolvedConfig};

/// The keys a reload applies without a restart.
pub const LIVE: &[&str] = &[
    "sync.schedule",
    "sync.concurrency",
    "sync.spread",
    "sync.max_requests_per_second",
    "sync.shutdown_grace",
    "google.android_client_ids",
    "log.level",
];

impl Services {
    /// Re-reads the config file. A config that does not validate changes nothing.
    pub async fn reload(&self) -> anyhow::Result<ReloadReport> {
        crate::notify::reloading();
        let result = self.apply_reload().await;
        crate::notify::ready(&self.summary());
        match &result {
            Ok(r) => {
                tracing::info!(applied = ?r.applied, needs_restart = ?r.needs_restart, "configuration reloaded")
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "configuration reload failed; keeping the running configuration")
            }
        }
        result
    }

    async fn apply_reload(&self) -> anyhow::Result<ReloadReport> {
        let old = self.config();
        let Some(path) = old.raw.source.clone() else {
            anyhow::bail!("this daemon was not started from a config file; nothing to reload");
        };
        let new = Config::load(Some(&path))?.resolve()?;
        let mut report = ReloadReport::default();
        let mut kept = old.clone();
        for key in old.changed_keys(&new) {
            if LIVE.contains(&key.as_str()) {
                if let Some(applied) = self.apply_live(&key, &new, &mut kept).await? {
                    report.applied.push(applied);
                }
            } else {
                report.needs_restart.push(key);
            }
        }
        *self.config.lock() = kept;
        Ok(report)
    }

    /// Applies one live key from `new` and records it in `kept`; what to report as applied.
    async fn apply_live(
        &self,
        key: &str,
        new: &ResolvedConfig,
        kept: &mut ResolvedConfig,
    ) -> anyhow::Result<Option<String>> {
        let (n, k) = (&new.raw, &mut kept.raw);
        let applied = match key {
            "sync.schedule" => {
                self.scheduler.set_schedule(new.schedule.clone()).await?;
                kept.schedule = new.schedule.clone();
                k.sync.schedule = n.sync.schedule.clone();
                format!("sync.schedule = {:?}", n.sync.schedule)
            }
            "sync.concurrency" => {
                self.scheduler.set_concurrency(n.sync.concurrency);
                k.sync.concurrency = n.sync.concurrency;
                format!("sync.concurrency = {}", n.sync.concurrency)
            }
            "sync.spread" => {
                self.scheduler.set_spread(n.sync.spread);
                k.sync.spread = n.sync.spread;
                format!("sync.spread = {}", n.sync.spread)
            }
            "sync.max_requests_per_second" => {
                self.limit.set_rate(n.sync.max_requests_per_second);
                k.sync.max_requests_per_second = n.sync.max_requests_per_second;
                format!(
                    "sync.max_requests_per_second = {}",
                    n.sync.max_requests_per_second
                )
            }
            "sync.shutdown_grace" => {
                k.sync.shutdown_grace = n.sync.shutdown_grace;
                "sync.shutdown_grace".into()
            }
            "google.android_client_ids" => {
                self.verifier
                    .set_allowed_azp(n.google.android_client_ids.clone());
                k.google.android_client_ids = n.google.android_client_ids.clone();
                // Security event tokens must be for one of the client ids in force.
                self.risc.set_audiences(kept);
                "google.android_client_ids".into()
            }
            "log.level" => {
                k.log.level = n.log.level.clone();
                // RUST_LOG, when set, wins over [log] level at start and at reload alike.
                match &self.log {
                    Some(log) if std::env::var_os("RUST_LOG").is_none() => {
                        log.set_filter(&n.log.level)?;
                        format!("log.level = {:?}", n.log.level)
                    }
                    _ => return Ok(None),
                }
            }
            other => anyhow::bail!("{other} is not a live key"),
        };
        Ok(Some(applied))
    }
}
