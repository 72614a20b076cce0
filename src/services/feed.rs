//! The change feed's moving parts: the sequencer (gives committed changes their seq, see
//! [`crate::store::changes`]), the pruner (retention), and the head every long-polling reader
//! waits on.
//!
//! Every instance runs a sequencer; on PostgreSQL they take turns on the `change_head` row, so
//! at any moment one of them assigns seqs and the others wait for a few milliseconds. Each
//! tick also reads the head, so a change sequenced by another instance wakes this instance's
//! long-polling readers too.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::changes::{self, Head};
use crate::store::{self, Store};

/// How often the sequencer looks for committed, unsequenced changes (a read of a partial
/// index: cheap). A recorded change reaches the feed within about this.
const SEQUENCER_TICK: Duration = Duration::from_millis(25);
/// Changes given seqs in one transaction at most.
const SEQUENCE_BATCH: i64 = 5_000;
/// How often retention is applied, and how many rows one pass deletes at most.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_BATCH: i64 = 10_000;

pub struct ChangeFeed {
    store: Store,
    /// The head as last read by this instance's sequencer; long-polling readers watch it.
    head: watch::Sender<Head>,
    /// Cancelled when the daemon stops: long polls answer at once instead of holding the
    /// drain up.
    closing: CancellationToken,
}

impl ChangeFeed {
    pub fn new(store: Store) -> ChangeFeed {
        ChangeFeed {
            store,
            head: watch::Sender::new(Head::default()),
            closing: CancellationToken::new(),
        }
    }

    /// Sequences what has committed: one short write transaction when there is anything to
    /// do, none otherwise. Returns the head after it. (Tests call this to step the feed.)
    pub async fn sequence_once(&self) -> Result<Head, sqlx::Error> {
        let mut conn = self.store.pool().acquire().await?;
        let pending = changes::has_unsequenced(&mut conn).await?;
        let head = if pending {
            drop(conn);
            let mut tx = self.store.begin_write().await?;
            let head = changes::sequence(
                tx.conn(),
                self.store.backend(),
                SEQUENCE_BATCH,
                store::now_ms(),
            )
            .await?;
            tx.commit().await?;
            head
        } else {
            changes::head(&mut conn).await?
        };
        self.head.send_if_modified(|h| {
            let changed = *h != head;
            *h = head;
            changed
        });
        Ok(head)
    }

    /// The sequencer task: runs until `stop`. A database error is logged and retried: the
    /// feed only waits, nothing is lost (changes wait unsequenced).
    pub async fn run_sequencer(&self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut failing = false;
        loop {
            match self.sequence_once().await {
                Ok(_) if failing => {
                    tracing::info!("change feed sequencer works again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "change feed sequencer: database error; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
            let pause = if failing {
                Duration::from_secs(1)
            } else {
                SEQUENCER_TICK
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return Ok(()),
            }
        }
    }

    /// The pruner task: deletes changes older than `retention`, but none a webhook endpoint
    /// has not copied yet (`keep_from` asks which), until `stop`.
    pub async fn run_pruner<F, Fut>(
        &self,
        retention: Duration,
        keep_from: F,
        stop: CancellationToken,
    ) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<i64>, sqlx::Error>>,
    {
        loop {
            if let Err(e) = self.prune_once(retention, &keep_from).await {
                tracing::warn!(error = %e, "change feed pruning failed; retrying later");
            }
            tokio::select! {
                _ = tokio::time::sleep(PRUNE_EVERY) => {}
                _ = stop.cancelled() => return Ok(()),
            }
        }
    }

    async fn prune_once<F, Fut>(
        &self,
        retention: Duration,
        keep_from: &F,
    ) -> Result<(), sqlx::Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<i64>, sqlx::Error>>,
    {
        let cutoff = store::now_ms() - retention.as_millis() as i64;
        let keep_from = keep_from().await?.map_or(i64::MAX, |c| c + 1);
        loop {
            let mut tx = self.store.begin_write().await?;
            let gone = changes::prune(
                tx.conn(),
                self.store.backend(),
                cutoff,
                keep_from,
                PRUNE_BATCH,
            )
            .await?;
            tx.commit().await?;
            if gone > 0 {
                tracing::debug!(changes = gone, "pruned the change feed");
            }
            if gone < PRUNE_BATCH as u64 {
                return Ok(());
            }
        }
    }

    /// The head as this instance last saw it.
    pub fn last_head(&self) -> Head {
        *self.head.borrow()
    }

    /// Waits until the head moves past `seq`, `limit` passes or the feed closes. True if it
    /// moved.
    pub async fn wait_past(&self, seq: i64, limit: Duration) -> bool {
        let mut rx = self.head.subscribe();
        tokio::select! {
            moved = tokio::time::timeout(limit, rx.wait_for(|h| h.last_seq > seq)) => {
                matches!(moved, Ok(Ok(_)))
            }
            _ = self.closing.cancelled() => false,
        }
    }

    /// Ends every long poll (shutdown).
    pub fn close(&self) {
        self.closing.cancel();
    }

    pub fn is_closed(&self) -> bool {
        self.closing.is_cancelled()
    }
}
