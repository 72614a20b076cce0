//! One user's sync: bring the local mirror to Drive's state, then carry out queued writes.
//!
//! - First sync (no page token): fetch `changes.getStartPageToken` BEFORE listing, so nothing
//!   that changes during the listing is missed; list the appDataFolder, download what is new or
//!   changed (by md5), drop what is gone, then save the start token.
//! - Incremental: `changes.list` from the saved token, apply each page, save the page's token
//!   after its changes are committed. An idle user costs exactly one Drive call.
//! - A saved token Drive calls invalid falls back to a full listing.
//!
//! Every Google call goes through [`session::Session::call`]: the global rate limiter, bounded
//! retries with jittered exponential backoff (honouring Retry-After), and one token refresh on
//! a 401. Files are committed one by one after their content is in place ([`mirror`]), so a
//! crash at any point resumes from the last committed page token and converges.

mod manifest;
pub mod mirror;
pub mod recorder;
mod session;
pub mod writes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::google::drive::DriveClient;
use crate::google::{GoogleError, RateLimit};
use crate::store::schedule::{self, DueUser, LastError, Resync};
use crate::store::syncs::{SyncKind, SyncOutcome, SyncRecord};
use crate::store::{self, Store};
use crate::tokens::{TokenError, Tokens};
use mirror::{Mirror, MirrorError};
pub use session::RetryPolicy;
use session::Session;

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
    #[error("stopped by shutdown, or because every call for the user had to stop")]
    Cancelled,
    /// The mirror's filesystem is under its free-space floor: no download starts.
    #[error("the mirror's disk has {free} bytes free, under [sync] min_free_disk_bytes ({floor}); no download until there is room")]
    DiskFloor { free: u64, floor: u64 },
}

impl SyncError {
    /// Google failed in a way the same call may not the next time.
    fn transient(&self) -> Option<&GoogleError> {
        match self {
            SyncError::Google(e) | SyncError::Token(TokenError::Google(e)) if e.is_transient() => {
                Some(e)
            }
            _ => None,
        }
    }
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
    /// How long retries of a failed Google call wait.
    pub retry: RetryPolicy,
    /// What one user may put in the mirror.
    pub limits: Limits,
}

/// What one user may put in the mirror (`[sync] max_file_bytes`, `max_user_bytes`,
/// `max_files_per_user`), and the free space the disk keeps (`min_free_disk_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_user_bytes: u64,
    pub max_files_per_user: u64,
    pub min_free_disk_bytes: u64,
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
        let access = self
            .tokens
            .usable_cached(&user.sub, user.access.get().as_ref(), started);
        let mut session = Session::new(self, &user.sub, access, cancel);
        let (kind, mut result) = self.walk(&mut session, &user).await;
        let (counts, changed, over) = session.into_counts();
        if result.is_ok() {
            result = manifest::refresh(self, &user.sub, changed).await;
        }
        // Only when a limit was hit now, or the flag is set and may be cleared.
        if result.is_ok() && (over.is_some() || (changed && user.over_quota.is_some())) {
            result = self.record_over_quota(&user.sub, over).await;
        }
        let (outcome, error) = match result {
            Ok(()) => (SyncOutcome::Ok, None),
            Err(SyncError::Token(TokenError::Revoked(_))) => (SyncOutcome::ReauthRequired, None),
            // Google suspended the user meanwhile (Cross-Account Protection): stopped, not failed.
            Err(SyncError::Cancelled | SyncError::Token(TokenError::Suspended(_))) => {
                (SyncOutcome::Cancelled, None)
            }
            Err(e) => (SyncOutcome::Failed, Some(e)),
        };
        let record = SyncRecord {
            sub: user.sub.clone(),
            kind,
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
        crate::metrics::sync_finished(
            outcome.as_str(),
            clock.elapsed(),
            counts.bytes_down,
            counts.bytes_up,
        );
        self.record(&record, user.failures).await;
        log_sync(&record, &counts, clock.elapsed());
        SyncResult {
            record,
            counts,
            error,
        }
    }

    /// The sync proper: the changes feed (or a full listing), then queued writes.
    async fn walk(
        &self,
        session: &mut Session<'_>,
        user: &DueUser,
    ) -> (SyncKind, Result<(), SyncError>) {
        let mut kind = match (&user.page_token, user.resync) {
            (Some(_), Resync::None | Resync::Incremental) => SyncKind::Incremental,
            _ => SyncKind::Full,
        };
        let result = async {
            if user.resync != Resync::None {
                let mut tx = self.store.begin_write().await?;
                schedule::take_resync_request(tx.conn(), &user.sub).await?;
                tx.commit().await?;
            }
            // A full resync starts a listing afresh; otherwise one in progress is resumed.
            let fresh = user.resync == Resync::Full;
            match (&user.page_token, kind) {
                (Some(token), SyncKind::Incremental) => match session.incremental(token).await {
                    Err(SyncError::Google(GoogleError::InvalidPageToken { .. })) => {
                        tracing::info!(user = %user.sub, "saved page token is no longer valid; re-listing");
                        kind = SyncKind::Full;
                        session.full(&user.listing, true).await
                    }
                    other => other,
                },
                _ => session.full(&user.listing, fresh).await,
            }?;
            session.retry_withheld().await?;
            if user.has_writes {
                session.write_pending().await?;
            }
            Ok(())
        }
        .await;
        (kind, result)
    }

    /// Says whether the user is over a limit: `over` when this sync hit one; otherwise the
    /// flag stays while content is withheld, and goes when none is.
    async fn record_over_quota(&self, sub: &str, over: Option<String>) -> Result<(), SyncError> {
        let mut tx = self.store.begin_write().await?;
        let reason = match over {
            Some(reason) => Some(reason),
            None if crate::store::files::withheld(tx.conn(), sub).await? > 0 => return Ok(()),
            None => None,
        };
        if let Some(reason) = &reason {
            tracing::warn!(user = %sub, reason = %reason, "user over a mirror limit; content past it is not mirrored");
        }
        crate::store::users::set_over_quota(tx.conn(), sub, reason.as_deref()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Commits the outcome with the user's next sync time (group-committed, see [`recorder`]).
    async fn record(&self, record: &SyncRecord, failures_before: i64) {
        let failures = if record.outcome == SyncOutcome::Failed {
            failures_before + 1
        } else {
            0
        };
        let next_sync_at = if failures > 0 {
            record.finished_at + failure_backoff(failures).as_millis() as i64
        } else {
            0
        };
        let recorded = self
            .recorder
            .record(recorder::Outcome {
                record: record.clone(),
                next_sync_at,
                failures,
            })
            .await;
        if let Err(e) = recorded {
            tracing::error!(user = %record.sub, error = %e, "cannot record the sync outcome; the user will be synced again");
        }
    }
}

fn log_sync(record: &SyncRecord, counts: &Counts, took: Duration) {
    tracing::info!(
        user = %record.sub,
        outcome = record.outcome.as_str(),
        kind = record.kind.as_str(),
        added = counts.added,
        updated = counts.updated,
        removed = counts.removed,
        uploaded = counts.uploaded,
        api_calls = counts.api_calls,
        duration_ms = took.as_millis() as u64,
        error = record.error.as_deref().unwrap_or(""),
        "sync finished"
    );
}

/// What a recorded outcome does to the user's `last_error`.
pub(crate) fn last_error(record: &SyncRecord) -> LastError<'_> {
    match (&record.error, record.outcome) {
        (Some(e), _) => LastError::Set(e),
        (None, SyncOutcome::Ok) => LastError::Clear,
        (None, _) => LastError::Keep,
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
