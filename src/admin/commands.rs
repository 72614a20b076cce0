//! What each admin command does, against the running daemon's [`Services`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::protocol::{Command, ErrorBody, ErrorCode};
use crate::crypto::Purpose;
use crate::lifecycle::Services;
use crate::store::users::UserState;
use crate::store::{self, credentials, files, pushes, schedule, syncs, users};

type CmdResult = Result<Value, ErrorBody>;

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code,
        message: message.into(),
    }
}

fn db(e: sqlx::Error) -> ErrorBody {
    tracing::warn!(error = %e, "admin command: database error");
    err(ErrorCode::Unavailable, format!("database error: {e}"))
}

fn unknown(sub: &str) -> ErrorBody {
    err(ErrorCode::UnknownUser, format!("no user with sub {sub:?}"))
}

/// Runs one command. Progress lines (for `resync --wait`) go to `events`.
pub async fn execute(
    services: &Arc<Services>,
    command: Command,
    events: mpsc::Sender<Value>,
) -> CmdResult {
    match command {
        Command::Status => status(services).await,
        Command::Users { state } => list_users(services, state.as_deref()).await,
        Command::User { sub } => user(services, &sub).await,
        Command::Files { sub } => list_files(services, &sub).await,
        Command::Resync {
            sub,
            all,
            full,
            wait,
        } => resync(services, sub, all, full, wait, events).await,
        Command::Pause { sub } => set_paused(services, &sub, true).await,
        Command::Resume { sub } => set_paused(services, &sub, false).await,
        Command::Push {
            sub,
            name,
            content_base64,
            mime_type,
        } => push(services, &sub, &name, &content_base64, mime_type).await,
        Command::Forget { sub } => forget(services, &sub).await,
        Command::LogLevel { filter } => {
            let Some(log) = &services.log else {
                return Err(err(
                    ErrorCode::Internal,
                    "this process's logging cannot be changed at run time",
                ));
            };
            log.set_filter(&filter)
                .map_err(|e| err(ErrorCode::InvalidFilter, format!("{e:#}")))?;
            tracing::info!(filter = %filter, "log filter changed by admin");
            Ok(json!({ "filter": filter }))
        }
        Command::Reload => services
            .reload()
            .await
            .map(|r| json!(r))
            .map_err(|e| err(ErrorCode::BadRequest, format!("{e:#}"))),
    }
}

async fn status(s: &Arc<Services>) -> CmdResult {
    let mut conn = s.store.pool().acquire().await.map_err(db)?;
    let by_state: serde_json::Map<String, Value> = users::counts_by_state(&mut conn)
        .await
        .map_err(db)?
        .into_iter()
        .map(|(k, v)| (k, json!(v)))
        .collect();
    let (waits, waited) = s.limit.waits();
    let store_url = s.config.lock().store_url.clone();
    let since = store::now_ms() - 3 * s.scheduler.lease().as_millis() as i64 / 3 - 5_000;
    let instances = schedule::live_instances(&mut conn, since)
        .await
        .map_err(db)?;
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": s.uptime().as_secs(),
        "database": store::redact_url(&store_url),
        "instance": s.scheduler.engine().instance,
        "instances": instances,
        "users_by_state": by_state,
        "syncs_running": s.scheduler.running(),
        "syncs_queued": s.scheduler.queued(),
        "last_cycle": s.scheduler.last_cycle(),
        "next_cycle_at": *s.next_cycle.lock(),
        "rate_limit": {
            "per_second": s.limit.rate(),
            "waits": waits,
            "waited_ms": waited.as_millis() as u64,
        },
    }))
}

async fn list_users(s: &Arc<Services>, state: Option<&str>) -> CmdResult {
    let state = match state {
        Some(st) => Some(UserState::parse(st).ok_or_else(|| {
            err(
                ErrorCode::BadRequest,
                format!("unknown state {st:?}: use active, reauth_required, paused or forgotten"),
            )
        })?),
        None => None,
    };
    let mut conn = s.store.pool().acquire().await.map_err(db)?;
    let list = users::list_summary(&mut conn, state, 100_000)
        .await
        .map_err(db)?;
    Ok(json!({ "users": list }))
}

async fn user(s: &Arc<Services>, sub: &str) -> CmdResult {
    let mut conn = s.store.pool().acquire().await.map_err(db)?;
    let u = users::get(&mut conn, sub)
        .await
        .map_err(db)?
        .ok_or_else(|| unknown(sub))?;
    let (page_token, next_sync_at, failures, last_sync_at, resync) =
        users::sync_state(&mut conn, sub)
            .await
            .map_err(db)?
            .unwrap_or_default();
    let (n_files, bytes) = files::totals(&mut conn, sub).await.map_err(db)?;
    let recent = syncs::recent(&mut conn, sub, 10).await.map_err(db)?;
    let queued = pushes::all(&mut conn, sub).await.map_err(db)?;
    let cred = credentials::get(&mut conn, sub).await.map_err(db)?;
    Ok(json!({
        "user": u,
        "sync": {
            "has_page_token": page_token.is_some(),
            "next_sync_at": next_sync_at,
            "failures": failures,
            "last_sync_at": last_sync_at,
            "resync_requested": resync > 0,
            "syncing_now": s.scheduler.is_running(sub),
        },
        "credentials": cred.map(|c| json!({
            "scopes": c.scopes,
            "obtained_at": c.obtained_at,
            "key_id": c.refresh_token.key_id,
            "access_token_expires_at": c.access_token.map(|(_, exp)| exp),
        })),
        "files": n_files,
        "bytes": bytes,
        "recent_syncs": recent,
        "pushes": queued,
    }))
}

async fn list_files(s: &Arc<Services>, sub: &str) -> CmdResult {
    let mut conn = s.store.pool().acquire().await.map_err(db)?;
    users::get(&mut conn, sub)
        .await
        .map_err(db)?
        .ok_or_else(|| unknown(sub))?;
    let list = files::list(&mut conn, sub).await.map_err(db)?;
    Ok(json!({ "files": list }))
}

async fn resync(
    s: &Arc<Services>,
    sub: Option<String>,
    all: bool,
    full: bool,
    wait: bool,
    events: mpsc::Sender<Value>,
) -> CmdResult {
    // Subscribe before asking, so no finish event can slip by.
    let mut rx = s.scheduler.subscribe();
    let mut tx = s.store.begin_write().await.map_err(db)?;
    let subs: Vec<String> = match (sub, all) {
        (Some(_), true) => return Err(err(ErrorCode::BadRequest, "give a sub or --all, not both")),
        (None, false) => {
            return Err(err(
                ErrorCode::BadRequest,
                "missing argument: sub (or --all)",
            ))
        }
        (Some(sub), false) => {
            let u = users::get(tx.conn(), &sub)
                .await
                .map_err(db)?
                .ok_or_else(|| unknown(&sub))?;
            if u.state != UserState::Active {
                return Err(err(
                    ErrorCode::InvalidState,
                    format!("user {sub} is {}: only active users sync", u.state.as_str()),
                ));
            }
            schedule::request_resync(tx.conn(), &sub, full)
                .await
                .map_err(db)?;
            vec![sub]
        }
        (None, true) => schedule::request_resync_all(tx.conn(), full)
            .await
            .map_err(db)?,
    };
    tx.commit().await.map_err(db)?;
    s.scheduler.poke();
    tracing::info!(users = subs.len(), full, "resync requested by admin");
    if !wait {
        return Ok(json!({ "queued": subs.len(), "full": full }));
    }
    // Local syncs announce themselves; a sync another instance ran shows up as a new record
    // in the database, which is checked whenever no event came for half a second.
    let mut pending: HashMap<String, i64> = HashMap::new();
    {
        let mut conn = s.store.pool().acquire().await.map_err(db)?;
        for sub in &subs {
            let baseline = schedule::last_sync_id(&mut conn, sub).await.map_err(db)?;
            pending.insert(sub.clone(), baseline);
        }
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut failures = Vec::new();
    let mut finish = |sub: String, outcome: &str, error: Option<String>| {
        if outcome == "ok" {
            ok += 1;
        } else {
            failed += 1;
            failures.push(json!({"sub": sub, "outcome": outcome, "error": error}));
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    while !pending.is_empty() {
        if tokio::time::Instant::now() > deadline {
            return Err(err(ErrorCode::Unavailable, "gave up waiting after an hour"));
        }
        match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            Ok(Ok(event)) => {
                if pending.contains_key(&event.sub) {
                    let _ = events.send(json!(event)).await;
                    if event.phase == "finished" {
                        pending.remove(&event.sub);
                        finish(event.sub, event.outcome.unwrap_or("failed"), event.error);
                    }
                }
                continue;
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                return Err(err(
                    ErrorCode::Unavailable,
                    "the daemon stopped before the syncs ended",
                ))
            }
            Ok(Err(_)) | Err(_) => {}
        }
        let mut conn = s.store.pool().acquire().await.map_err(db)?;
        let mut done = Vec::new();
        for (sub, baseline) in &pending {
            if schedule::last_sync_id(&mut conn, sub).await.map_err(db)? > *baseline {
                let last = syncs::recent(&mut conn, sub, 1).await.map_err(db)?;
                if let Some(last) = last.into_iter().next() {
                    done.push((sub.clone(), last.outcome, last.error));
                }
            }
        }
        for (sub, outcome, error) in done {
            pending.remove(&sub);
            finish(sub, &outcome, error);
        }
    }
    let result = json!({ "synced": ok, "failed": failed, "failures": failures });
    if failed > 0 {
        return Err(err(
            ErrorCode::Unavailable,
            format!(
                "{failed} of {} syncs failed: {}",
                subs.len(),
                Value::from(failures)
            ),
        ));
    }
    Ok(result)
}

async fn set_paused(s: &Arc<Services>, sub: &str, pause: bool) -> CmdResult {
    let mut tx = s.store.begin_write().await.map_err(db)?;
    let u = users::get(tx.conn(), sub)
        .await
        .map_err(db)?
        .ok_or_else(|| unknown(sub))?;
    let target = match (pause, u.state) {
        (true, UserState::Active | UserState::Paused) => UserState::Paused,
        (false, UserState::Paused | UserState::Active) => UserState::Active,
        (_, state) => {
            return Err(err(
                ErrorCode::InvalidState,
                format!(
                    "user {sub} is {}: {}",
                    state.as_str(),
                    if state == UserState::ReauthRequired {
                        "it needs a new sign-in in the app, not an admin command"
                    } else {
                        "nothing to do"
                    }
                ),
            ))
        }
    };
    users::set_state(
        tx.conn(),
        sub,
        target,
        u.last_error.as_deref(),
        store::now_ms(),
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    tracing::info!(user = %sub, state = target.as_str(), "user state changed by admin");
    Ok(json!({ "user": sub, "state": target.as_str() }))
}

async fn push(
    s: &Arc<Services>,
    sub: &str,
    name: &str,
    content_base64: &str,
    mime_type: Option<String>,
) -> CmdResult {
    if name.is_empty() {
        return Err(err(
            ErrorCode::BadRequest,
            "the file name must not be empty",
        ));
    }
    let content = base64::engine::general_purpose::STANDARD
        .decode(content_base64)
        .map_err(|e| {
            err(
                ErrorCode::BadRequest,
                format!("content_base64 is not base64: {e}"),
            )
        })?;
    let mime = mime_type.unwrap_or_else(|| "application/octet-stream".into());
    let mut tx = s.store.begin_write().await.map_err(db)?;
    users::get(tx.conn(), sub)
        .await
        .map_err(db)?
        .ok_or_else(|| unknown(sub))?;
    let base = files::by_name(tx.conn(), sub, name).await.map_err(db)?;
    let id = pushes::enqueue(
        tx.conn(),
        sub,
        name,
        &mime,
        &content,
        base.as_ref().map(|b| b.file_id.as_str()),
        base.as_ref().and_then(|b| b.version),
        store::now_ms(),
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    tracing::info!(user = %sub, push = id, name = %name, bytes = content.len(), "push queued by admin");
    Ok(json!({
        "push": id,
        "user": sub,
        "name": name,
        "bytes": content.len(),
        "replaces": base.map(|b| json!({"file_id": b.file_id, "version": b.version})),
    }))
}

/// Revokes the grant at Google, then deletes the mirror and every row of the user.
async fn forget(s: &Arc<Services>, sub: &str) -> CmdResult {
    let mut tx = s.store.begin_write().await.map_err(db)?;
    let u = users::get(tx.conn(), sub)
        .await
        .map_err(db)?
        .ok_or_else(|| unknown(sub))?;
    let cred = credentials::get(tx.conn(), sub).await.map_err(db)?;
    // Stop new syncs first; wait for a running one to end.
    users::set_state(
        tx.conn(),
        sub,
        UserState::Forgotten,
        u.last_error.as_deref(),
        store::now_ms(),
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    for _ in 0..600 {
        if !s.scheduler.is_running(sub) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut revoked = false;
    if let Some(cred) = cred {
        let keyring = s.config.lock().keyring.clone();
        match keyring.open(
            sub,
            Purpose::RefreshToken,
            &cred.refresh_token.key_id,
            &cred.refresh_token.bytes,
        ) {
            Ok(token) => {
                if let Err(e) = s.tokens.oauth().revoke(&token).await {
                    // Put the user back as it was: nothing is deleted unless Google let go.
                    if let Ok(mut tx) = s.store.begin_write().await {
                        let _ = users::set_state(
                            tx.conn(),
                            sub,
                            u.state,
                            u.last_error.as_deref(),
                            store::now_ms(),
                        )
                        .await;
                        let _ = tx.commit().await;
                    }
                    return Err(err(
                        ErrorCode::Unavailable,
                        format!("cannot revoke the grant at Google, nothing deleted: {e}"),
                    ));
                }
                revoked = true;
            }
            Err(e) => tracing::warn!(user = %sub, error = %e,
                "forget: the stored refresh token does not decrypt, so it cannot be revoked; deleting anyway"),
        }
    }
    s.mirror.remove_user(sub).await.map_err(|e| {
        err(
            ErrorCode::Internal,
            format!("cannot delete the mirror: {e}"),
        )
    })?;
    let mut tx = s.store.begin_write().await.map_err(db)?;
    users::delete(tx.conn(), sub).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    tracing::info!(user = %sub, revoked, "user forgotten by admin: grant revoked, mirror and rows deleted");
    Ok(json!({ "user": sub, "revoked": revoked, "deleted": true }))
}
