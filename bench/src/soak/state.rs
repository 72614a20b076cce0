//! What the workers share: [`Soak`], the model of what must be true ([`Model`]), the counters
//! and the violations found along the way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;

use super::config::Paths;
use super::process::DaemonProc;
use crate::google::FakeGoogle;

/// What the workers know to be true; [`super::check()`] holds the daemon to it. Operations
/// that change it (sign-in, revoke, forget) take the user with [`Soak::claim`], one at a time
/// per user.
#[derive(Default)]
pub(super) struct Model {
    /// Every account on the emulator, in creation order.
    pub(super) subs: Vec<String>,
    pub(super) busy: HashSet<String>,
    /// A sign-in was acknowledged (200) and no forget succeeded since: present, with a
    /// credential.
    pub(super) acked: HashSet<String>,
    /// We revoked the grant and no sign-in was acknowledged since: reauth_required at the end.
    pub(super) revoked: HashSet<String>,
    /// `forget` answered ok and no sign-in was acknowledged since: no rows, no mirror.
    pub(super) forgotten: HashSet<String>,
    /// A sign-in or forget got no answer (the daemon died mid-request): its state is unknown
    /// until the next acknowledged sign-in, so the state checks leave it out.
    pub(super) uncertain: HashSet<String>,
    /// Paused through the admin socket, waiting for a resume.
    pub(super) paused: Vec<String>,
    /// What the workers did to each user and what came of it, by second of the run: printed
    /// with a violation about the user, so it can be followed in the daemon's log.
    pub(super) trail: HashMap<String, Vec<String>>,
}

/// Counters by name ("signin.ok", "fault.drive_503", "admin.status.ok", ...).
#[derive(Default)]
pub(super) struct Counts(Mutex<BTreeMap<String, u64>>);

impl Counts {
    pub(super) fn add(&self, key: impl Into<String>) {
        *lock(&self.0).entry(key.into()).or_default() += 1;
    }

    /// Counters under `prefix.`, without it.
    pub(super) fn group(&self, prefix: &str) -> BTreeMap<String, u64> {
        let p = format!("{prefix}.");
        lock(&self.0)
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&p).map(|k| (k.to_string(), *v)))
            .collect()
    }

    /// Keeps the largest `value` seen under `key`.
    pub(super) fn max(&self, key: impl Into<String>, value: u64) {
        let mut counts = lock(&self.0);
        let kept = counts.entry(key.into()).or_default();
        *kept = (*kept).max(value);
    }

    pub(super) fn get(&self, key: &str) -> u64 {
        lock(&self.0).get(key).copied().unwrap_or(0)
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) struct Soak {
    pub(super) google: FakeGoogle,
    pub(super) paths: Paths,
    /// `http://127.0.0.1:PORT/authcode`; the port stays across restarts.
    pub(super) authcode_url: String,
    /// The "Android app" posting auth codes.
    pub(super) http: reqwest::Client,
    pub(super) target_users: usize,
    pub(super) next_user: AtomicUsize,
    pub(super) model: Mutex<Model>,
    pub(super) counts: Counts,
    pub(super) violations: Mutex<Vec<String>>,
    /// The running daemon; the restarter and the final phase take turns.
    pub(super) daemon: tokio::sync::Mutex<Option<DaemonProc>>,
    /// Moves when the daemon goes down and when a new one is up: a span of time in which it
    /// did not move saw one daemon throughout (the attackers' timing checks need that).
    pub(super) epoch: AtomicU64,
    pub(super) started: Instant,
}

/// A user taken by one operation; dropping it frees the user.
pub(super) struct Claimed<'a> {
    pub(super) soak: &'a Soak,
    pub(super) sub: String,
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        lock(&self.soak.model).busy.remove(&self.sub);
    }
}

impl Soak {
    pub(super) fn new(
        google: FakeGoogle,
        paths: Paths,
        daemon: DaemonProc,
        target_users: usize,
    ) -> anyhow::Result<Soak> {
        Ok(Soak {
            google,
            authcode_url: format!("http://{}/authcode", paths.intake),
            paths,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            target_users,
            next_user: AtomicUsize::new(0),
            model: Mutex::default(),
            counts: Counts::default(),
            violations: Mutex::default(),
            daemon: tokio::sync::Mutex::new(Some(daemon)),
            epoch: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub(super) fn next_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The running daemon's pid; `None` while it is being restarted.
    pub(super) fn daemon_pid(&self) -> Option<u32> {
        self.daemon.try_lock().ok()?.as_ref()?.child.id()
    }

    /// Adds to `sub`'s [`Model::trail`].
    pub(super) fn trail(&self, sub: &str, what: impl std::fmt::Display) {
        let at = self.started.elapsed().as_secs_f64();
        lock(&self.model)
            .trail
            .entry(sub.to_string())
            .or_default()
            .push(format!("{at:.1}s {what}"));
    }

    /// `sub`'s trail, for a violation's message.
    pub(super) fn trail_of(&self, sub: &str) -> String {
        lock(&self.model)
            .trail
            .get(sub)
            .map_or_else(|| "nothing".into(), |t| t.join("; "))
    }

    pub(super) fn violation(&self, v: String) {
        lock(&self.violations).push(v);
    }

    /// Takes a random user from those `pick` offers, if one is free.
    pub(super) fn claim(&self, pick: impl Fn(&Model) -> Vec<String>) -> Option<Claimed<'_>> {
        let mut m = lock(&self.model);
        let mut candidates = pick(&m);
        candidates.retain(|s| !m.busy.contains(s));
        let sub = candidates.choose(&mut rand::thread_rng())?.clone();
        m.busy.insert(sub.clone());
        Some(Claimed { soak: self, sub })
    }

    pub(super) fn random_sub(&self) -> Option<String> {
        lock(&self.model)
            .subs
            .choose(&mut rand::thread_rng())
            .cloned()
    }
}
