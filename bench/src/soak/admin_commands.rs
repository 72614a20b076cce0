//! Load: admin socket commands (status, users, user, files, resync, pause/resume, push,
//! log-level, reload, forget), each counted with its outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use appdata_syncd::admin::protocol::Command;
use appdata_syncd::store::users::UserState;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::config::LOG_FILTER;
use super::drive_changes::{file_name, payload};
use super::state::{lock, Soak};
use super::{pause, secs};

/// An admin command every 0.3 to 1.5 s, picked by weight (a roll out of 100).
pub(super) async fn admin(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    let mut last_all = Instant::now();
    while pause(&stop, secs(0.3, 1.5)).await {
        let Some(sub) = soak.random_sub() else {
            continue;
        };
        let roll = rand::thread_rng().gen_range(0..100);
        match roll {
            0..=14 => {
                soak.admin_counted("status", &Command::Status).await;
            }
            15..=17 => users(&soak).await,
            18..=32 => {
                soak.admin_counted("user", &Command::User { sub }).await;
            }
            33..=42 => {
                soak.admin_counted("files", &Command::Files { sub }).await;
            }
            43..=57 => resync(&soak, sub).await,
            58..=60 if last_all.elapsed() > Duration::from_secs(45) => {
                last_all = Instant::now();
                resync_all(&soak).await;
            }
            61..=68 => pause_user(&soak, sub).await,
            69..=76 => resume_one(&soak).await,
            77..=86 => push(&soak, sub).await,
            87..=89 => {
                let cmd = Command::LogLevel {
                    filter: LOG_FILTER.into(),
                };
                soak.admin_counted("log_level", &cmd).await;
            }
            90..=92 => {
                soak.admin_counted("reload", &Command::Reload).await;
            }
            93..=94 => forget(&soak).await,
            _ => {}
        }
    }
    Ok(())
}

/// `users`, filtered by a random state.
async fn users(soak: &Soak) {
    let state = [
        UserState::Active,
        UserState::ReauthRequired,
        UserState::Paused,
    ]
    .choose(&mut rand::thread_rng())
    .copied();
    let users = Command::Users {
        state,
        after: None,
        limit: None,
    };
    soak.admin_counted("users", &users).await;
}

/// `resync SUB`, a quarter of the time `--full`, a fifth `--wait`.
async fn resync(soak: &Soak, sub: String) {
    let full = rand::thread_rng().gen_bool(0.25);
    let wait = rand::thread_rng().gen_bool(0.2);
    let name = match (full, wait) {
        (true, _) => "resync_full",
        (false, true) => "resync_wait",
        _ => "resync",
    };
    let cmd = Command::Resync {
        sub: Some(sub),
        all: false,
        full,
        wait,
    };
    soak.admin_counted(name, &cmd).await;
}

/// `resync --all`; the caller keeps it to one every 45 s or more.
async fn resync_all(soak: &Soak) {
    let cmd = Command::Resync {
        sub: None,
        all: true,
        full: false,
        wait: false,
    };
    soak.admin_counted("resync_all", &cmd).await;
}

/// `pause SUB`; when it succeeds the model keeps the user for a later resume.
async fn pause_user(soak: &Soak, sub: String) {
    let cmd = Command::Pause { sub: sub.clone() };
    let paused = soak.admin_counted("pause", &cmd).await.is_some();
    soak.trail(
        &sub,
        format!("pause: {}", if paused { "ok" } else { "refused" }),
    );
    if paused {
        lock(&soak.model).paused.push(sub);
    }
}

/// `resume` of a random user we paused, if there is one.
async fn resume_one(soak: &Soak) {
    let paused = {
        let mut m = lock(&soak.model);
        let n = m.paused.len();
        (n > 0).then(|| m.paused.swap_remove(rand::thread_rng().gen_range(0..n)))
    };
    if let Some(sub) = paused {
        let cmd = Command::Resume { sub: sub.clone() };
        let resumed = soak.admin_counted("resume", &cmd).await.is_some();
        soak.trail(
            &sub,
            format!("resume: {}", if resumed { "ok" } else { "refused" }),
        );
    }
}

/// `push`: a new file of up to 3 kB written to Drive through the daemon.
async fn push(soak: &Soak, sub: String) {
    let len = rand::thread_rng().gen_range(0..3000);
    let content = payload(len);
    let cmd = Command::Push {
        sub,
        path: file_name(),
        content_length: content.len() as u64,
        mime_type: None,
        if_match: None,
        if_none_match: Some("*".into()),
        sync_now: false,
    };
    soak.admin_counted_with("push", &cmd, Some(&content)).await;
}

/// `forget`: revokes the grant at Google and deletes the user; the model follows the answer.
async fn forget(soak: &Soak) {
    let Some(claimed) = soak.claim(|m| m.acked.iter().cloned().collect()) else {
        return;
    };
    let sub = claimed.sub.clone();
    soak.counts.add("admin.forget");
    let outcome = match soak.admin(&Command::Forget { sub: sub.clone() }).await {
        Ok(r) if r.ok == Some(true) => {
            let mut m = lock(&soak.model);
            m.acked.remove(&sub);
            m.revoked.remove(&sub);
            m.forgotten.insert(sub.clone());
            m.paused.retain(|s| *s != sub);
            "ok".to_string()
        }
        Ok(r) => r
            .error
            .and_then(|e| serde_json::to_value(e.code).ok())
            .and_then(|c| c.as_str().map(String::from))
            .unwrap_or_else(|| "error".into()),
        Err(_) => {
            lock(&soak.model).uncertain.insert(sub.clone());
            "unreachable".into()
        }
    };
    soak.trail(&sub, format!("forget: {outcome}"));
    soak.counts.add(format!("admin_result.forget.{outcome}"));
}
