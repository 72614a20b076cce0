//! One user's sync session: every Google call with rate limiting, retries and token refresh
//! ([`Session::call`]), the full listing, the changes feed, and applying one file.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures::TryStreamExt;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::mirror::{Mirror, MirrorError, Written};
use super::{Counts, SyncEngine, SyncError};
use crate::google::drive::DriveFile;
use crate::google::GoogleError;
use crate::store::files::{self, FileRow};
use crate::store::schedule;
use crate::tokens::AccessToken;

/// Attempts per Google call (first try included) and the total time one call may spend.
const MAX_ATTEMPTS: usize = 6;
const MAX_CALL_TIME: Duration = Duration::from_secs(120);

pub(super) struct Session<'a> {
    pub(super) engine: &'a SyncEngine,
    pub(super) sub: String,
    access: Option<AccessToken>,
    pub(super) counts: Counts,
    cancel: &'a CancellationToken,
}

/// The retry budget of one call: jittered exponential backoff, bounded in attempts and time.
struct Retry {
    backoff: backon::ExponentialBackoff,
    deadline: Instant,
}

impl Retry {
    fn new() -> Retry {
        Retry {
            backoff: backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(20))
                .with_max_times(MAX_ATTEMPTS - 1)
                .with_jitter()
                .build(),
            deadline: Instant::now() + MAX_CALL_TIME,
        }
    }

    /// The pause before the next attempt (at least what Retry-After asks), or `None` when the
    /// budget is spent.
    fn next_delay(&mut self, e: &GoogleError) -> Option<Duration> {
        let delay = self.backoff.next()?;
        let delay = e.retry_after().map_or(delay, |r| r.max(delay));
        (Instant::now() + delay <= self.deadline).then_some(delay)
    }
}

impl<'a> Session<'a> {
    pub(super) fn new(
        engine: &'a SyncEngine,
        sub: &str,
        access: Option<AccessToken>,
        cancel: &'a CancellationToken,
    ) -> Session<'a> {
        Session {
            engine,
            sub: sub.to_string(),
            access,
            counts: Counts::default(),
            cancel,
        }
    }

    pub(super) fn into_counts(self) -> Counts {
        self.counts
    }

    pub(super) fn check_cancel(&self) -> Result<(), SyncError> {
        if self.cancel.is_cancelled() {
            Err(SyncError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The access token to use: the cached one, or a fresh one when there is none or Drive
    /// just refused `rejected`. No retries here: [`Session::call`] retries the whole attempt.
    async fn token(&mut self, rejected: Option<AccessToken>) -> Result<SecretString, SyncError> {
        if rejected.is_none() {
            if let Some(t) = &self.access {
                return Ok(t.token.clone());
            }
        }
        self.engine.limit.wait().await;
        let (t, refreshed) = self
            .engine
            .tokens
            .fresh(&self.sub, rejected.as_ref())
            .await?;
        if refreshed {
            self.counts.refreshes += 1;
        }
        let token = t.token.clone();
        self.access = Some(t);
        Ok(token)
    }

    /// One Drive call with rate limiting, retries of transient failures (of the call or of the
    /// token refresh before it) and a single refresh-and-retry on 401.
    pub(super) async fn call<T, F, Fut>(&mut self, f: F) -> Result<T, SyncError>
    where
        F: Fn(SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<T, GoogleError>>,
    {
        let mut retry = Retry::new();
        let mut refreshed_after_401 = false;
        let mut rejected = None;
        loop {
            let attempt = async {
                let token = self.token(rejected.take()).await?;
                self.engine.limit.wait().await;
                self.counts.api_calls += 1;
                f(token).await.map_err(SyncError::from)
            }
            .await;
            let e = match attempt {
                Ok(v) => return Ok(v),
                Err(SyncError::Google(GoogleError::Unauthorized { .. }))
                    if !refreshed_after_401 =>
                {
                    refreshed_after_401 = true;
                    rejected = self.access.take();
                    continue;
                }
                Err(e) => e,
            };
            let Some(delay) = e.transient().and_then(|g| retry.next_delay(g)) else {
                return Err(e);
            };
            tracing::debug!(user = %self.sub, error = %e, delay_ms = delay.as_millis() as u64, "retrying Google call");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.cancel.cancelled() => return Err(SyncError::Cancelled),
            }
        }
    }

    pub(super) async fn full(&mut self) -> Result<(), SyncError> {
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
        self.save_page_token(&start).await
    }

    pub(super) async fn incremental(&mut self, saved: &str) -> Result<(), SyncError> {
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
                self.save_page_token(&next).await?;
                token = next;
            }
            if last {
                return Ok(());
            }
        }
    }

    async fn save_page_token(&self, token: &str) -> Result<(), SyncError> {
        let mut tx = self.engine.store.begin_write().await?;
        schedule::set_page_token(tx.conn(), &self.sub, Some(token)).await?;
        tx.commit().await?;
        Ok(())
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
            parent_id: file.parents.first().cloned(),
            metadata_only: false,
        };
        if same_content {
            if old.as_ref() != Some(&row) {
                // Renamed, or a new version with identical bytes: metadata only.
                self.commit_file(&row).await?;
            }
            return Ok(());
        }
        let Some(written) = self.download(&file).await? else {
            // Deleted since it was listed: the changes feed will say so; treat as gone now.
            return self.remove_file(&file.id, old).await;
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

    /// Streams a file's content into the mirror, checked against Drive's md5. A cut
    /// connection gets one more try; `None` when the file is gone from Drive.
    async fn download(&mut self, file: &DriveFile) -> Result<Option<Written>, SyncError> {
        let drive = self.engine.drive.clone();
        let mut tries_left = 2;
        loop {
            tries_left -= 1;
            let resp = match self
                .call(|t| {
                    let d = drive.clone();
                    let id = file.id.clone();
                    async move { d.download(&t, &id).await }
                })
                .await
            {
                Err(SyncError::Google(GoogleError::NotFound { .. })) => return Ok(None),
                other => other?,
            };
            let body = resp.bytes_stream().map_err(|e| e.without_url());
            let expected = file.md5_checksum.as_deref();
            match self
                .engine
                .mirror
                .write_stream(&self.sub, &file.id, body, expected)
                .await
            {
                Ok(w) => return Ok(Some(w)),
                Err(MirrorError::ChecksumMismatch | MirrorError::Download(_)) if tries_left > 0 => {
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(super) async fn commit_file(&self, row: &FileRow) -> Result<(), SyncError> {
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
}
