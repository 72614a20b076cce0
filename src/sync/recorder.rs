//! Group commit of sync outcomes. Every sync ends with a small write (its record, the user's
//! next sync time, the lease given back); committed one by one, each pays an fsync and the
//! single SQLite writer becomes the ceiling of a whole cycle. The recorder task takes every
//! outcome waiting in its queue and commits them in one transaction, a statement per 64 users
//! rather than one per user, then answers each caller, so a sync still returns only once its
//! outcome is durable.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::syncs::{SyncOutcome, SyncRecord};
use crate::store::{schedule, syncs, Store};

/// Outcomes committed in one transaction at most.
const MAX_BATCH: usize = 512;

/// One finished sync, as it is written.
pub struct Outcome {
    pub record: SyncRecord,
    pub next_sync_at: i64,
    pub failures: i64,
}

/// Hands outcomes to the recorder task; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    /// To the recorder task, which answers each outcome once it is committed.
    queue: mpsc::Sender<Queued>,
}

type Queued = (Outcome, oneshot::Sender<Result<(), String>>);

impl Recorder {
    /// The recorder and its task, which writes leases in the name of `owner` and runs until
    /// `done` is cancelled (after the last sync ended), committing what is still queued first.
    pub fn new(
        store: Store,
        owner: String,
        done: CancellationToken,
    ) -> (Recorder, impl Future<Output = anyhow::Result<()>>) {
        let (queue, rx) = mpsc::channel::<Queued>(MAX_BATCH * 2);
        (Recorder { queue }, run(rx, store, owner, done))
    }

    /// Records `outcome`; returns once it is committed.
    pub async fn record(&self, outcome: Outcome) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((outcome, reply))
            .await
            .map_err(|_| "the recorder has stopped".to_string())?;
        answer
            .await
            .unwrap_or_else(|_| Err("the recorder has stopped".into()))
    }
}

async fn run(
    mut rx: mpsc::Receiver<Queued>,
    store: Store,
    owner: String,
    done: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let first = tokio::select! {
            next = rx.recv() => next,
            _ = done.cancelled() => rx.try_recv().ok(),
        };
        let Some(first) = first else {
            return Ok(());
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // Row locks in one order everywhere this batch goes (sub order, as claims take
        // them): fewer deadlocks with other transactions on PostgreSQL.
        batch.sort_by(|a, b| a.0.record.sub.cmp(&b.0.record.sub));
        let result = commit_with_retries(&store, &owner, &batch).await;
        for (_, reply) in batch {
            let _ = reply.send(result.clone());
        }
    }
}

/// Commits a batch, retrying a few times: on PostgreSQL a batch can lose a deadlock against
/// this instance's lease renewal (PostgreSQL aborts one of the two), and a lost batch would
/// leave its users leased and unrecorded until the lease expires.
async fn commit_with_retries(store: &Store, owner: &str, batch: &[Queued]) -> Result<(), String> {
    const ATTEMPTS: u32 = 4;
    let mut attempt = 1;
    loop {
        match commit(store, owner, batch).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, outcomes = batch.len(), "cannot commit sync outcomes; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The batch in one transaction of multi-row statements (see `store::ROWS_PER_STATEMENT`): the
/// records of the syncs that did something, and every user's outcome.
async fn commit(store: &Store, owner: &str, batch: &[Queued]) -> Result<(), sqlx::Error> {
    let mut records = Vec::new();
    let mut finished = Vec::with_capacity(batch.len());
    for (o, _) in batch {
        let r = &o.record;
        let ok = r.outcome == SyncOutcome::Ok;
        // An idle sync is counted on the user's row, not recorded: history stays bounded.
        let idle = ok && r.error.is_none() && r.added + r.updated + r.removed + r.uploaded == 0;
        if !idle {
            records.push(r);
        }
        let f = schedule::Finished {
            next_sync_at: o.next_sync_at,
            failures: o.failures,
            last_ok: ok.then_some(r.finished_at),
            last_error: super::last_error(r),
            outcome: r.outcome,
            idle,
        };
        finished.push((r.sub.as_str(), f));
    }
    let mut tx = store.begin_write().await?;
    syncs::insert_many(tx.conn(), &records).await?;
    schedule::finish_syncs(tx.conn(), owner, &finished).await?;
    tx.commit().await
}
