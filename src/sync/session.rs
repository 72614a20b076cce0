//! One user's sync session: every Google call with rate limiting, retries and token refresh
//! ([`Session::call`]), the full listing, the changes feed, and applying one file.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures::TryStreamExt;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::mirror::{Download, Mirror, MirrorError, Written};
use super::{Counts, SyncEngine, SyncError};
use crate::google::drive::DriveFile;
use crate::google::GoogleError;
use crate::store::changes::{self, ChangeKind};
use crate::store::files::{self, FileRow};
use crate::store::schedule::{self, Listing};
use crate::store::{self};
use crate::tokens::AccessToken;

/// Attempts per Google call (first try included) and the total time one call may spend: with
/// Google's backoff (1 s doubling to 32 s) a per-minute quota window passes within them.
const MAX_ATTEMPTS: usize = 8;
const MAX_CALL_TIME: Duration = Duration::from_secs(180);
/// Resumed reads of a download in a row that bring no new byte before it is given up.
const MAX_STALLED_READS: u32 = 3;

/// What a download brought.
enum Fetched {
    Content(Written),
    /// More bytes came than the limit allows.
    TooLarge(u64),
    /// The file is gone from Drive.
    Gone,
    /// Drive serves no content for it (`fileNotDownloadable`).
    NotDownloadable,
}

pub(super) struct Session<'a> {
    pub(super) engine: &'a SyncEngine,
    pub(super) sub: String,
    access: Option<AccessToken>,
    pub(super) counts: Counts,
    /// Some row of the user changed (content or metadata): the manifest is rewritten.
    pub(super) changed: bool,
    /// The user's mirrored items and bytes, read when a download is first considered.
    usage: Option<Usage>,
    /// The first limit this sync hit, if any.
    over: Option<String>,
    cancel: &'a CancellationToken,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    files: u64,
    bytes: u64,
}

/// The retry budget of one call: jittered exponential backoff, bounded in attempts and time.
struct Retry {
    backoff: backon::ExponentialBackoff,
    deadline: Instant,
}

/// Google's retry schedule: exponential backoff from `initial`, doubling, up to `max`, with
/// random jitter. <https://developers.google.com/workspace/drive/api/guides/handle-errors#exponential-backoff>
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Retry {
    fn new(policy: RetryPolicy) -> Retry {
        Retry {
            backoff: backon::ExponentialBuilder::default()
                .with_min_delay(policy.initial)
                .with_max_delay(policy.max)
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
            changed: false,
            usage: None,
            over: None,
            cancel,
        }
    }

    pub(super) fn into_counts(self) -> (Counts, bool, Option<String>) {
        (self.counts, self.changed, self.over)
    }

    /// Waits for the instance's rate limiter (up to a minute when Google's per-minute quota
    /// is spent), or until the sync is cancelled.
    pub(super) async fn paced(&self) -> Result<(), SyncError> {
        tokio::select! {
            () = self.engine.limit.wait() => Ok(()),
            () = self.cancel.cancelled() => Err(SyncError::Cancelled),
        }
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
        self.paced().await?;
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
        let mut retry = Retry::new(self.engine.retry);
        let mut refreshed_after_401 = false;
        let mut rejected = None;
        loop {
            // Once the sync is cancelled (shutdown, or every call for the user must stop), no
            // new call starts.
            self.check_cancel()?;
            let attempt = async {
                let token = self.token(rejected.take()).await?;
                self.paced().await?;
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
            if let Some(g) = e.transient().filter(|g| g.is_rate_limit()) {
                // Over quota: the whole instance slows down, not only this call.
                self.engine
                    .limit
                    .slow_down(matches!(g, GoogleError::ProjectQuota { .. }));
            }
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

    /// A full listing of the appDataFolder, resumed where a failed sync left it unless
    /// `fresh`. The changes start token is taken BEFORE listing, so nothing that changes
    /// meanwhile is missed; items the complete listing did not see are gone from Drive.
    pub(super) async fn full(&mut self, listing: &Listing, fresh: bool) -> Result<(), SyncError> {
        let resumed = listing.start.is_some() && !fresh;
        let result = match &listing.start {
            Some(start) if !fresh => {
                self.list(start, listing.page.clone(), listing.generation)
                    .await
            }
            _ => self.fresh_listing(listing.generation).await,
        };
        match result {
            // The saved files.list page token is no longer good: list again from the start.
            Err(SyncError::Google(GoogleError::InvalidPageToken { .. })) if resumed => {
                tracing::info!(user = %self.sub, "cannot resume the listing; listing again");
                self.fresh_listing(listing.generation).await
            }
            other => other,
        }
    }

    async fn fresh_listing(&mut self, previous_generation: i64) -> Result<(), SyncError> {
        let drive = self.engine.drive.clone();
        let start = self
            .call(|t| {
                let d = drive.clone();
                async move { d.start_page_token(&t).await }
            })
            .await?;
        let generation = previous_generation + 1;
        let mut tx = self.engine.store.begin_write().await?;
        schedule::begin_listing(tx.conn(), &self.sub, &start, generation).await?;
        tx.commit().await?;
        self.list(&start, None, generation).await
    }

    /// Lists from `page` (`None`: the first) to the end, saving the next page's token after
    /// each page's items are committed; then drops what the listing did not see.
    async fn list(
        &mut self,
        start: &str,
        mut page: Option<String>,
        generation: i64,
    ) -> Result<(), SyncError> {
        let drive = self.engine.drive.clone();
        let mut conn = self.engine.store.pool().acquire().await?;
        let mut known = files::by_id(&mut conn, &self.sub).await?;
        drop(conn);
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
            let ids: Vec<String> = list.files.iter().map(|f| f.id.clone()).collect();
            for file in list.files {
                let old = known.remove(&file.id);
                self.apply_file(file, old).await?;
            }
            let mut tx = self.engine.store.begin_write().await?;
            files::mark_seen(tx.conn(), &self.sub, &ids, generation).await?;
            if let Some(next) = &list.next_page_token {
                schedule::save_listing_page(tx.conn(), &self.sub, next).await?;
            }
            tx.commit().await?;
            match list.next_page_token {
                Some(next) => page = Some(next),
                None => break,
            }
        }
        self.drop_unseen(generation).await?;
        let mut tx = self.engine.store.begin_write().await?;
        schedule::end_listing(tx.conn(), &self.sub, start).await?;
        tx.commit().await?;
        Ok(())
    }

    /// After a complete listing: rows it did not see, and content no row accounts for (a
    /// crash between placing content and committing its row, or a file that became
    /// metadata-only), are removed.
    async fn drop_unseen(&mut self, generation: i64) -> Result<(), SyncError> {
        let mut conn = self.engine.store.pool().acquire().await?;
        let gone = files::unseen(&mut conn, &self.sub, generation).await?;
        drop(conn);
        for row in gone {
            self.remove_file(&row.file_id.clone(), Some(row)).await?;
        }
        let mut conn = self.engine.store.pool().acquire().await?;
        let with_content: HashSet<String> = files::list(&mut conn, &self.sub)
            .await?
            .into_iter()
            .filter(|r| !r.metadata_only)
            .map(|r| r.file_id)
            .collect();
        drop(conn);
        for id in self.engine.mirror.list_user(&self.sub).await? {
            if !with_content.contains(&id) {
                self.engine
                    .mirror
                    .remove(&Mirror::relative_path(&self.sub, &id)?)
                    .await?;
            }
        }
        Ok(())
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

    /// Brings one item's mirror up to `file`: downloads only when the content changed;
    /// folders and Google-native files (and anything Drive will not serve) are metadata only.
    async fn apply_file(&mut self, file: DriveFile, old: Option<FileRow>) -> Result<(), SyncError> {
        self.check_cancel()?;
        if file.trashed {
            return self.remove_file(&file.id, old).await;
        }
        let metadata_only = file.is_metadata_only();
        let mut row = FileRow {
            file_id: file.id.clone(),
            name: file.name.clone(),
            mime_type: file.mime_type.clone(),
            size: file.size,
            md5: file.md5_checksum.clone(),
            version: file.version,
            modified_time: file.modified_time.clone(),
            local_path: Mirror::relative_path(&self.sub, &file.id)?,
            parent_id: file.parents.first().cloned(),
            metadata_only,
        };
        if metadata_only {
            return self.keep_metadata(row, old).await;
        }
        let same_content = match (&old, &file.md5_checksum) {
            (Some(o), Some(md5)) => o.md5.as_deref() == Some(md5.as_str()),
            (Some(o), None) => o.version.is_some() && o.version == file.version,
            (None, _) => false,
        } && old.as_ref().is_some_and(|o| !o.metadata_only)
            && self.engine.mirror.exists(&row.local_path).await;
        if same_content {
            if old.as_ref() != Some(&row) {
                // Renamed, moved, or a new version with identical bytes: metadata only.
                self.commit_file(&row, old.as_ref()).await?;
            }
            return Ok(());
        }
        if let Some(reason) = self.over_limit(&file, old.as_ref()).await? {
            return self.withhold(row, old, reason).await;
        }
        self.check_disk()?;
        let limit = self.download_limit(old.as_ref());
        let written = match self.download(&file, limit).await? {
            Fetched::Content(written) => written,
            Fetched::TooLarge(limit) => {
                let reason = format!(
                    "{:?} ({}) is larger than the {limit} bytes it may take",
                    file.name, file.id
                );
                return self.withhold(row, old, reason).await;
            }
            // Deleted since it was listed: the changes feed will say so; treat as gone now.
            Fetched::Gone => return self.remove_file(&file.id, old).await,
            Fetched::NotDownloadable => {
                tracing::info!(user = %self.sub, file = %file.id,
                    "Drive serves no content for this item (fileNotDownloadable); mirroring its metadata only");
                row.metadata_only = true;
                return self.keep_metadata(row, old).await;
            }
        };
        self.counts.bytes_down += written.size;
        if let Some(usage) = &mut self.usage {
            let before = old
                .as_ref()
                .filter(|o| !o.metadata_only)
                .and_then(|o| o.size);
            usage.bytes =
                (usage.bytes + written.size as u64).saturating_sub(before.unwrap_or(0) as u64);
            usage.files += u64::from(old.is_none());
        }
        row.size = Some(written.size);
        row.md5 = Some(written.md5);
        self.commit_file(&row, old.as_ref()).await?;
        if old.is_some() {
            self.counts.updated += 1;
        } else {
            self.counts.added += 1;
        }
        Ok(())
    }

    /// Why `file`'s content may not be mirrored (a limit of `[sync]`), if it may not.
    async fn over_limit(
        &mut self,
        file: &DriveFile,
        old: Option<&FileRow>,
    ) -> Result<Option<String>, SyncError> {
        let limits = self.engine.limits;
        let usage = match self.usage {
            Some(u) => u,
            None => {
                let mut conn = self.engine.store.pool().acquire().await?;
                let t = files::totals(&mut conn, &self.sub).await?;
                let u = Usage {
                    files: t.files.max(0) as u64,
                    bytes: t.bytes.max(0) as u64,
                };
                self.usage = Some(u);
                u
            }
        };
        let size = file.size.unwrap_or(0).max(0) as u64;
        let before = old
            .filter(|o| !o.metadata_only)
            .and_then(|o| o.size)
            .unwrap_or(0)
            .max(0) as u64;
        Ok(
            if old.is_none() && usage.files >= limits.max_files_per_user {
                Some(format!(
                    "more than [sync] max_files_per_user ({}) items",
                    limits.max_files_per_user
                ))
            } else if size > limits.max_file_bytes {
                Some(format!(
                    "{:?} ({}) is {size} bytes, over [sync] max_file_bytes ({})",
                    file.name, file.id, limits.max_file_bytes
                ))
            } else if (usage.bytes - before.min(usage.bytes)) + size > limits.max_user_bytes {
                Some(format!(
                    "the user's content would be over [sync] max_user_bytes ({})",
                    limits.max_user_bytes
                ))
            } else {
                None
            },
        )
    }

    /// Content over a limit: not mirrored. The item is kept as metadata only (over the item
    /// count, not at all), and the user is marked over_quota.
    async fn withhold(
        &mut self,
        mut row: FileRow,
        old: Option<FileRow>,
        reason: String,
    ) -> Result<(), SyncError> {
        tracing::info!(user = %self.sub, file = %row.file_id, reason = %reason, "content not mirrored: over a limit");
        self.over.get_or_insert(reason);
        if old.is_none()
            && self
                .usage
                .is_some_and(|u| u.files >= self.engine.limits.max_files_per_user)
        {
            return Ok(());
        }
        row.metadata_only = true;
        self.keep_metadata(row, old).await
    }

    /// After a sync that changed something (room may have been freed) without hitting a limit:
    /// the content withheld earlier is tried again, item by item.
    pub(super) async fn retry_withheld(&mut self) -> Result<(), SyncError> {
        if self.over.is_some() || !self.changed {
            return Ok(());
        }
        let mut conn = self.engine.store.pool().acquire().await?;
        let withheld = files::list_withheld(&mut conn, &self.sub).await?;
        drop(conn);
        let drive = self.engine.drive.clone();
        for row in withheld {
            self.check_cancel()?;
            let id = row.file_id.clone();
            let file = self
                .call(|t| {
                    let (d, id) = (drive.clone(), id.clone());
                    async move { d.get_file(&t, &id).await }
                })
                .await;
            match file {
                Ok(file) => self.apply_file(file, Some(row)).await?,
                Err(SyncError::Google(GoogleError::NotFound { .. })) => {
                    self.remove_file(&id, Some(row)).await?
                }
                Err(e) => return Err(e),
            }
            if self.over.is_some() {
                break;
            }
        }
        Ok(())
    }

    /// No download while the mirror's disk is under its free-space floor.
    fn check_disk(&self) -> Result<(), SyncError> {
        let floor = self.engine.limits.min_free_disk_bytes;
        match self.engine.mirror.free_space() {
            Some(free) if free < floor => Err(SyncError::DiskFloor { free, floor }),
            _ => Ok(()),
        }
    }

    /// An item mirrored as metadata only: its row, and no content (any a downloadable
    /// version of it left is removed).
    async fn keep_metadata(
        &mut self,
        mut row: FileRow,
        old: Option<FileRow>,
    ) -> Result<(), SyncError> {
        let relative = std::mem::take(&mut row.local_path);
        if old.as_ref() == Some(&row) {
            return Ok(());
        }
        self.commit_file(&row, old.as_ref()).await?;
        if old.as_ref().is_some_and(|o| !o.metadata_only) {
            self.engine.mirror.remove(&relative).await?;
        }
        match old {
            None => self.counts.added += 1,
            Some(_) => self.counts.updated += 1,
        }
        Ok(())
    }

    /// Streams a file's content into the mirror, checked against Drive's md5. A body that
    /// breaks off is resumed from the bytes received (a `Range` request) as long as each try
    /// brings more; a checksum mismatch (the file changed while it was read) starts over once.
    async fn download(&mut self, file: &DriveFile, limit: u64) -> Result<Fetched, SyncError> {
        let mut fresh_starts = 2;
        loop {
            fresh_starts -= 1;
            let mut download = self
                .engine
                .mirror
                .start_download(&self.sub, &file.id)
                .await?;
            download.limit_to(limit);
            if let Err(e) = self.receive(file, &mut download).await {
                download.abandon().await;
                return match e {
                    SyncError::Mirror(MirrorError::TooLarge(limit)) => Ok(Fetched::TooLarge(limit)),
                    SyncError::Google(GoogleError::NotFound { .. }) => Ok(Fetched::Gone),
                    SyncError::Google(GoogleError::NotDownloadable { .. }) => {
                        Ok(Fetched::NotDownloadable)
                    }
                    e => Err(e),
                };
            }
            match download.finish(file.md5_checksum.as_deref()).await {
                Ok(written) => return Ok(Fetched::Content(written)),
                Err(MirrorError::ChecksumMismatch) if fresh_starts > 0 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The most bytes one download may bring: a file's limit, and what is left of the user's
    /// (counting the content it replaces as free).
    fn download_limit(&self, old: Option<&FileRow>) -> u64 {
        let limits = self.engine.limits;
        let before = old
            .filter(|o| !o.metadata_only)
            .and_then(|o| o.size)
            .unwrap_or(0)
            .max(0) as u64;
        let used = self.usage.map_or(0, |u| u.bytes.saturating_sub(before));
        limits
            .max_file_bytes
            .min(limits.max_user_bytes.saturating_sub(used))
    }

    /// Feeds `download` the file's bytes, resuming with `Range` after each break.
    async fn receive(
        &mut self,
        file: &DriveFile,
        download: &mut Download,
    ) -> Result<(), SyncError> {
        let drive = self.engine.drive.clone();
        let mut stalls = 0;
        loop {
            let offset = download.received();
            let resp = self
                .call(|t| {
                    let d = drive.clone();
                    let id = file.id.clone();
                    async move { d.download(&t, &id, offset).await }
                })
                .await?;
            let body = resp.bytes_stream().map_err(|e| e.without_url());
            // A long download stops at once when the sync is cancelled; the caller abandons it.
            let fed = tokio::select! {
                fed = download.feed(body) => fed,
                _ = self.cancel.cancelled() => return Err(SyncError::Cancelled),
            };
            match fed {
                Ok(()) => return Ok(()),
                Err(MirrorError::Download(why)) => {
                    stalls = if download.received() > offset {
                        0
                    } else {
                        stalls + 1
                    };
                    if stalls >= MAX_STALLED_READS {
                        return Err(MirrorError::Download(why).into());
                    }
                    tracing::debug!(user = %self.sub, file = %file.id, received = download.received(),
                        reason = %why, "download interrupted; resuming from the bytes received");
                    self.check_cancel()?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Stores the item's row (it replaces `old`, if there was one) and its change for the feed,
    /// in one transaction.
    pub(super) async fn commit_file(
        &mut self,
        row: &FileRow,
        old: Option<&FileRow>,
    ) -> Result<(), SyncError> {
        let kind = match old {
            Some(_) => ChangeKind::FileUpdated,
            None => ChangeKind::FileAdded,
        };
        let mut tx = self.engine.store.begin_write().await?;
        files::upsert(tx.conn(), &self.sub, row).await?;
        changes::record_file(tx.conn(), kind, &self.sub, row, None, store::now_ms()).await?;
        tx.commit().await?;
        self.changed = true;
        Ok(())
    }

    /// Drops a file: the row first (so no row ever points at missing content), then the bytes
    /// even when there was no row: a crash between placing content and committing its row
    /// leaves bytes that only a replayed removal can find.
    async fn remove_file(&mut self, file_id: &str, old: Option<FileRow>) -> Result<(), SyncError> {
        if let Some(old) = &old {
            let mut tx = self.engine.store.begin_write().await?;
            let (kind, now) = (ChangeKind::FileRemoved, store::now_ms());
            changes::record_file(tx.conn(), kind, &self.sub, old, None, now).await?;
            files::delete(tx.conn(), &self.sub, file_id).await?;
            tx.commit().await?;
            self.counts.removed += 1;
            self.changed = true;
        }
        // Rebuilt from the ids, never read back from the row.
        let path = Mirror::relative_path(&self.sub, file_id)?;
        self.engine.mirror.remove(&path).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_googles_schedule_one_second_doubling_to_32_with_jitter() {
        let policy = RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(32),
        };
        let mut retry = Retry::new(policy);
        let e = GoogleError::Unavailable {
            endpoint: "x",
            status: 503,
            retry_after: None,
        };
        retry.deadline = Instant::now() + Duration::from_secs(3600);
        let mut delays = Vec::new();
        while let Some(d) = retry.next_delay(&e) {
            delays.push(d);
        }
        assert_eq!(delays.len(), MAX_ATTEMPTS - 1);
        for (d, base) in delays.iter().zip([1u64, 2, 4, 8, 16, 32, 32]) {
            let base = Duration::from_secs(base);
            assert!(*d >= base && *d < base * 2, "{d:?} for a base of {base:?}");
        }
        // Retry-After wins when it asks for longer.
        let mut retry = Retry::new(policy);
        let slow = GoogleError::Unavailable {
            endpoint: "x",
            status: 429,
            retry_after: Some(Duration::from_secs(30)),
        };
        assert!(retry.next_delay(&slow).unwrap() >= Duration::from_secs(30));
    }
}
