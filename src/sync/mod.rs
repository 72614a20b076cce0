//! One user's sync: bring the local mirror to Drive's state, then upload queued pushes.
//!
//! - First sync (no page token): fetch `changes.getStartPageToken` BEFORE listing, so nothing
//!   that changes during the listing is missed; list the appDataFolder, download what is new or
//!   changed (by md5), drop what is gone, then save the start token.
//! - Incremental: `changes.list` from the saved token, apply each page, save the page's token
//!   after its changes are committed. An idle user costs exactly one Drive call.
//! - A saved token Drive calls invalid falls back to a full listing.
//!
//! Every Google call goes through [`Session::call`]: the global rate limiter, bounded retries
//! with jittered exponential backoff (honouring Retry-After), and one token refresh on a 401.
//! Files are committed one by one after their content is in place ([`mirror`]), so a crash at
//! any point resumes from the last committed page token and converges.

pub mod mirror;
pub mod recorder;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures::TryStreamExt;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::google::drive::{DriveClient, DriveFile};
use crate::google::{GoogleError, RateLimit};
use crate::store::files::FileRow;
use crate::store::schedule::DueUser;
use crate::store::syncs::SyncRecord;
use crate::store::{self, files, pushes, schedule, Store};
use crate::tokens::{AccessToken, TokenError, Tokens};
use mirror::{Mirror, MirrorError};

/// Attempts per Google call (first try included) and the total time one call may spend.
const MAX_ATTEMPTS: usize = 6;
const MAX_CALL_TIME: Duration = Duration::from_secs(120);
/// A push that failed this many times is given up on (state "failed").
const MAX_PUSH_ATTEMPTS: i64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Google(#[from] GoogleError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stopped by shutdown")]
    Cancelled,
}

/// Everything a sync needs; shared by all workers.
pub struct SyncEngine {
    /// This instance's id: the owner of the leases it takes.
    pub instance: String,
    pub drive: DriveClient,
    pub tokens: Arc<Tokens>,
    pub store: Store,
    pub mirror: Mirror,
    pub limit: Arc<RateLimit>,
    /// Commits outcomes in groups (see [`recorder`]).
    pub recorder: recorder::Recorder,
}

/// Counters of one sync, for the record, the log line and metrics.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub added: i64,
    pub updated: i64,
    pub removed: i64,
    pub uploaded: i64,
    pub conflicts: i64,
    pub bytes_down: i64,
    pub bytes_up: i64,
    pub api_calls: i64,
    pub refreshes: i64,
}

/// How a sync ended.
pub struct SyncResult {
    pub record: SyncRecord,
    pub counts: Counts,
    pub error: Option<SyncError>,
}

impl SyncEngine {
    /// Syncs one user and records the outcome (sync row, backoff) in the database.
    pub async fn sync_user(&self, user: DueUser, cancel: &CancellationToken) -> SyncResult {
        let started = store::now_ms();
        let clock = Instant::now();
        let mut session = Session {
            engine: self,
            sub: user.sub.clone(),
            access: self
                .tokens
                .usable_cached(&user.sub, user.access_token.as_ref(), started),
            counts: Counts::default(),
            cancel,
        };
        let mut full = user.page_token.is_none() || user.resync_requested >= 2;
        let result = async {
            if user.resync_requested > 0 {
                let mut tx = self.store.begin_write().await?;
                schedule::take_resync_request(tx.conn(), &user.sub).await?;
                tx.commit().await?;
            }
            match (&user.page_token, full) {
                (Some(token), false) => match session.incremental(token).await {
                    Err(SyncError::Google(GoogleError::InvalidPageToken { .. })) => {
                        tracing::info!(user = %user.sub, "saved page token is no longer valid; re-listing");
                        full = true;
                        session.full().await
                    }
                    other => other,
                },
                _ => session.full().await,
            }?;
            if user.has_pushes {
                session.push_pending().await?;
            }
            Ok(())
        }
        .await;
        let counts = session.counts;
        let (outcome, error) = match result {
            Ok(()) => ("ok", None),
            Err(SyncError::Token(TokenError::Revoked(_))) => ("reauth_required", None),
            Err(SyncError::Cancelled) => ("cancelled", None),
            Err(e) => ("failed", Some(e)),
        };
        let record = SyncRecord {
            sub: user.sub.clone(),
            kind: if full { "full" } else { "incremental" },
            started_at: started,
            finished_at: store::now_ms(),
            outcome,
            added: counts.added,
            updated: counts.updated,
            removed: counts.removed,
            uploaded: counts.uploaded,
            bytes_down: counts.bytes_down,
            bytes_up: counts.bytes_up,
            api_calls: counts.api_calls,
            error: error.as_ref().map(|e| e.to_string()),
        };
        let failures = if outcome == "failed" {
            user.failures + 1
        } else {
            0
        };
        let next_sync_at = if failures > 0 {
            record.finished_at + failure_backoff(failures).as_millis() as i64
        } else {
            0
        };
        crate::metrics::sync_finished(outcome, clock.elapsed(), counts.bytes_down, counts.bytes_up);
        let recorded = self
            .recorder
            .record(recorder::Outcome {
                record: record.clone(),
                next_sync_at,
                failures,
            })
            .await;
        if let Err(e) = recorded {
            tracing::error!(user = %user.sub, error = %e, "cannot record the sync outcome; the user will be synced again");
        }
        tracing::info!(
            user = %user.sub,
            outcome,
            kind = record.kind,
            added = counts.added,
            updated = counts.updated,
            removed = counts.removed,
            uploaded = counts.uploaded,
            api_calls = counts.api_calls,
            duration_ms = clock.elapsed().as_millis() as u64,
            error = record.error.as_deref().unwrap_or(""),
            "sync finished"
        );
        SyncResult {
            record,
            counts,
            error,
        }
    }
}

/// A user that keeps failing is retried later and later: 1 min, 2, 4, ... up to 6 h, with
/// jitter so a Google outage does not line every user up on the same minute.
pub fn failure_backoff(failures: i64) -> Duration {
    let base = 60u64.saturating_mul(1 << failures.clamp(1, 10).saturating_sub(1) as u32);
    let capped = base.min(6 * 3600);
    let jitter = rand::random::<f64>() * 0.5 + 0.5;
    Duration::from_secs_f64(capped as f64 * jitter)
}

struct Session<'a> {
    engine: &'a SyncEngine,
    sub: String,
    access: Option<AccessToken>,
    counts: Counts,
    cancel: &'a CancellationToken,
}

impl Session<'_> {
    fn check_cancel(&self) -> Result<(), SyncError> {
        if self.cancel.is_cancelled() {
            Err(SyncError::Cancelled)
        } else {
            Ok(())
        }
    }

    async fn token(&mut self, rejected: Option<&AccessToken>) -> Result<SecretString, SyncError> {
        if rejected.is_none() {
            if let Some(t) = &self.access {
                return Ok(t.token.clone());
            }
        }
        let mut backoff = backoff();
        let deadline = Instant::now() + MAX_CALL_TIME;
        loop {
            self.engine.limit.wait().await;
            match self.engine.tokens.fresh(&self.sub, rejected).await {
                Ok((t, refreshed)) => {
                    if refreshed {
                        self.counts.refreshes += 1;
                    }
                    let token = t.token.clone();
                    self.access = Some(t);
                    return Ok(token);
                }
                Err(TokenError::Google(e)) if e.is_transient() => {
                    self.pause_before_retry(&e, &mut backoff, deadline).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn pause_before_retry(
        &self,
        e: &GoogleError,
        backoff: &mut impl Iterator<Item = Duration>,
        deadline: Instant,
    ) -> Result<(), SyncError> {
        let Some(delay) = backoff.next() else {
            return Err(SyncError::Google(e.clone()));
        };
        let delay = e.retry_after().map_or(delay, |r| r.max(delay));
        if Instant::now() + delay > deadline {
            return Err(SyncError::Google(e.clone()));
        }
        tracing::debug!(user = %self.sub, error = %e, delay_ms = delay.as_millis() as u64, "retrying Google call");
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.cancel.cancelled() => Err(SyncError::Cancelled),
        }
    }

    /// One Drive call with rate limiting, retries and a single refresh-and-retry on 401.
    async fn call<T, F, Fut>(&mut self, f: F) -> Result<T, SyncError>
    where
        F: Fn(SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<T, GoogleError>>,
    {
        let mut backoff = backoff();
        let deadline = Instant::now() + MAX_CALL_TIME;
        let mut refreshed_after_401 = false;
        loop {
            let token = self.token(None).await?;
            self.engine.limit.wait().await;
            self.counts.api_calls += 1;
            match f(token).await {
                Ok(v) => return Ok(v),
                Err(GoogleError::Unauthorized { .. }) if !refreshed_after_401 => {
                    refreshed_after_401 = true;
                    let rejected = self.access.take();
                    self.token(rejected.as_ref()).await?;
                }
                Err(e) if e.is_transient() => {
                    self.pause_before_retry(&e, &mut backoff, deadline).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn full(&mut self) -> Result<(), SyncError> {
        let drive = self.engine.drive.clone();
        // Before listing: changes made while we list will then show up in the next sync.
        let start = self
            .call(|t| {
                let d = drive.clone();
                async move { d.start_page_token(&t).await }
            })
            .await?;
        let mut conn = self.engine.store.pool().acquire().await?;
        let mut known = files::by_id(&mut conn, &self.sub).await?;
        drop(conn);
        let mut seen = HashSet::new();
        let mut page: Option<String> = None;
        loop {
            self.check_cancel()?;
            let p = page.clone();
            let list = self
                .call(|t| {
                    let d = drive.clone();
                    let p = p.clone();
                    async move { d.list_files(&t, p.as_deref()).await }
                })
                .await?;
            for file in list.files {
                seen.insert(file.id.clone());
                let old = known.remove(&file.id);
                self.apply_file(file, old).await?;
            }
            match list.next_page_token {
                Some(next) => page = Some(next),
                None => break,
            }
        }
        for (id, row) in known {
            if !seen.contains(&id) {
                self.remove_file(&id, Some(row)).await?;
            }
        }
        // Content with no row and no file on Drive: left by a crash before its row was committed.
        for id in self.engine.mirror.list_user(&self.sub).await? {
            if !seen.contains(&id) {
                self.remove_file(&id, None).await?;
            }
        }
        let mut tx = self.engine.store.begin_write().await?;
        schedule::set_page_token(tx.conn(), &self.sub, Some(&start)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn incremental(&mut self, saved: &str) -> Result<(), SyncError> {
        let drive = self.engine.drive.clone();
        let mut token = saved.to_string();
        loop {
            self.check_cancel()?;
            let t0 = token.clone();
            let page = self
                .call(|t| {
                    let d = drive.clone();
                    let p = t0.clone();
                    async move { d.list_changes(&t, &p).await }
                })
                .await?;
            for change in page.changes {
                let mut conn = self.engine.store.pool().acquire().await?;
                let old = files::get(&mut conn, &self.sub, &change.file_id).await?;
                drop(conn);
                match change.file {
                    Some(file) if !change.removed && !file.trashed => {
                        self.apply_file(file, old).await?;
                    }
                    _ => self.remove_file(&change.file_id, old).await?,
                }
            }
            // The page's changes are committed: only now may the token move past them.
            let (next, last) = match (page.next_page_token, page.new_start_page_token) {
                (Some(next), _) => (Some(next), false),
                (None, new_start) => (new_start, true),
            };
            if let Some(next) = next.filter(|n| *n != token) {
                let mut tx = self.engine.store.begin_write().await?;
                schedule::set_page_token(tx.conn(), &self.sub, Some(&next)).await?;
                tx.commit().await?;
                token = next;
            }
            if last {
                return Ok(());
            }
        }
    }

    /// Brings one file's mirror up to `file`: downloads only when the content changed.
    async fn apply_file(&mut self, file: DriveFile, old: Option<FileRow>) -> Result<(), SyncError> {
        self.check_cancel()?;
        if file.trashed {
            return self.remove_file(&file.id, old).await;
        }
        let local_path = Mirror::relative_path(&self.sub, &file.id)?;
        let same_content = match (&old, &file.md5_checksum) {
            (Some(o), Some(md5)) => o.md5.as_deref() == Some(md5.as_str()),
            (Some(o), None) => o.version.is_some() && o.version == file.version,
            (None, _) => false,
        } && self.engine.mirror.exists(&local_path).await;
        let mut row = FileRow {
            file_id: file.id.clone(),
            name: file.name.clone(),
            mime_type: file.mime_type.clone(),
            size: file.size,
            md5: file.md5_checksum.clone(),
            version: file.version,
            modified_time: file.modified_time.clone(),
            local_path,
        };
        if same_content {
            if old.as_ref() != Some(&row) {
                // Renamed, or a new version with identical bytes: metadata only.
                self.commit_file(&row).await?;
            }
            return Ok(());
        }
        let drive = self.engine.drive.clone();
        let id = file.id.clone();
        let resp = match self
            .call(|t| {
                let d = drive.clone();
                let id = id.clone();
                async move { d.download(&t, &id).await }
            })
            .await
        {
            // Deleted since it was listed: the changes feed will say so; treat as gone now.
            Err(SyncError::Google(GoogleError::NotFound { .. })) => {
                return self.remove_file(&file.id, old).await
            }
            other => other?,
        };
        let written = match self
            .engine
            .mirror
            .write_stream(
                &self.sub,
                &file.id,
                resp.bytes_stream().map_err(|e| e.without_url()),
                file.md5_checksum.as_deref(),
            )
            .await
        {
            Ok(w) => w,
            Err(MirrorError::ChecksumMismatch | MirrorError::Download(_)) => {
                // A cut connection: one more try, then give up until the next sync.
                let again = self
                    .call(|t| {
                        let d = drive.clone();
                        let id = id.clone();
                        async move { d.download(&t, &id).await }
                    })
                    .await?;
                self.engine
                    .mirror
                    .write_stream(
                        &self.sub,
                        &file.id,
                        again.bytes_stream().map_err(|e| e.without_url()),
                        file.md5_checksum.as_deref(),
                    )
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        self.counts.bytes_down += written.size;
        row.size = Some(written.size);
        row.md5 = Some(written.md5);
        self.commit_file(&row).await?;
        if old.is_some() {
            self.counts.updated += 1;
        } else {
            self.counts.added += 1;
        }
        Ok(())
    }

    async fn commit_file(&self, row: &FileRow) -> Result<(), SyncError> {
        let mut tx = self.engine.store.begin_write().await?;
        files::upsert(tx.conn(), &self.sub, row).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops a file: the row first (so no row ever points at missing content), then the bytes
    /// even when there was no row: a crash between placing content and committing its row
    /// leaves bytes that only a replayed removal can find.
    async fn remove_file(&mut self, file_id: &str, old: Option<FileRow>) -> Result<(), SyncError> {
        if old.is_some() {
            let mut tx = self.engine.store.begin_write().await?;
            files::delete(tx.conn(), &self.sub, file_id).await?;
            tx.commit().await?;
            self.counts.removed += 1;
        }
        let path = match &old {
            Some(row) => row.local_path.clone(),
            None => Mirror::relative_path(&self.sub, file_id)?,
        };
        self.engine.mirror.remove(&path).await?;
        Ok(())
    }

    /// Uploads queued pushes. The mirror is current (we just synced), so a push whose base
    /// no longer matches Drive is a conflict: it is reported, never forced.
    async fn push_pending(&mut self) -> Result<(), SyncError> {
        let mut conn = self.engine.store.pool().acquire().await?;
        let queued = pushes::pending(&mut conn, &self.sub).await?;
        drop(conn);
        for push in queued {
            self.check_cancel()?;
            let mut conn = self.engine.store.pool().acquire().await?;
            let current = match &push.base_file_id {
                Some(id) => files::get(&mut conn, &self.sub, id).await?,
                None => files::by_name(&mut conn, &self.sub, &push.name).await?,
            };
            drop(conn);
            let conflict = match (&push.base_file_id, &current) {
                (None, Some(existing)) => Some(format!(
                    "a file named {:?} was created on Drive (id {}) after the push was queued",
                    push.name, existing.file_id
                )),
                (Some(id), None) => Some(format!(
                    "file {id} was deleted on Drive after the push was queued"
                )),
                (Some(_), Some(cur)) if cur.version != push.base_version => Some(format!(
                    "the file changed on Drive (version {:?}, push based on {:?})",
                    cur.version, push.base_version
                )),
                _ => None,
            };
            if let Some(why) = conflict {
                tracing::warn!(user = %self.sub, push = push.id, name = %push.name, reason = %why,
                    "push not uploaded: conflict with a change on Drive; queue it again after checking `ctl files`");
                let mut tx = self.engine.store.begin_write().await?;
                pushes::set_state(tx.conn(), push.id, "conflict", Some(&why), store::now_ms())
                    .await?;
                tx.commit().await?;
                self.counts.conflicts += 1;
                continue;
            }
            let drive = self.engine.drive.clone();
            let (name, mime, content, base) = (
                push.name.clone(),
                push.mime_type.clone(),
                push.content.clone(),
                push.base_file_id.clone(),
            );
            let uploaded = self
                .call(|t| {
                    let d = drive.clone();
                    let (name, mime, content, base) =
                        (name.clone(), mime.clone(), content.clone(), base.clone());
                    async move {
                        match base {
                            Some(id) => d.update_content(&t, &id, &mime, content).await,
                            None => d.create_file(&t, &name, &mime, content).await,
                        }
                    }
                })
                .await;
            match uploaded {
                Ok(file) => {
                    let written = self
                        .engine
                        .mirror
                        .write_bytes(&self.sub, &file.id, &push.content)
                        .await?;
                    let row = FileRow {
                        file_id: file.id.clone(),
                        name: file.name.clone(),
                        mime_type: file.mime_type.clone(),
                        size: Some(written.size),
                        md5: Some(written.md5),
                        version: file.version,
                        modified_time: file.modified_time.clone(),
                        local_path: Mirror::relative_path(&self.sub, &file.id)?,
                    };
                    let mut tx = self.engine.store.begin_write().await?;
                    files::upsert(tx.conn(), &self.sub, &row).await?;
                    pushes::set_state(tx.conn(), push.id, "done", None, store::now_ms()).await?;
                    tx.commit().await?;
                    self.counts.uploaded += 1;
                    self.counts.bytes_up += push.content.len() as i64;
                }
                Err(SyncError::Cancelled) => return Err(SyncError::Cancelled),
                Err(e) => {
                    let give_up = push.attempts + 1 >= MAX_PUSH_ATTEMPTS;
                    let state = if give_up { "failed" } else { "pending" };
                    let mut tx = self.engine.store.begin_write().await?;
                    pushes::set_state(
                        tx.conn(),
                        push.id,
                        state,
                        Some(&e.to_string()),
                        store::now_ms(),
                    )
                    .await?;
                    tx.commit().await?;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(20))
        .with_max_times(MAX_ATTEMPTS - 1)
        .with_jitter()
        .build()
}
