//! Supervision: every long-lived task of the daemon runs as a named essential task on one
//! [`TaskTracker`]. One that ends before shutdown was asked for (it returned, failed or
//! panicked) is logged with its name and why, and stops the daemon, which then exits non-zero
//! so that systemd restarts it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// An essential task ended unexpectedly.
#[derive(Debug, Clone, thiserror::Error)]
#[error("essential task {task:?} ended unexpectedly: {why}")]
pub struct TaskFailed {
    pub task: &'static str,
    pub why: String,
}

#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    /// Cancelled once shutdown has begun: from then on, a task that ends is expected to.
    stopping: CancellationToken,
    /// Cancelled by the first unexpected end; `first` says which.
    failed: CancellationToken,
    first: Arc<Mutex<Option<TaskFailed>>>,
    /// Each task's abort handle, for the supervision test.
    handles: Arc<Mutex<HashMap<&'static str, AbortHandle>>>,
}

impl Tasks {
    /// `stopping` is the token whose cancellation begins shutdown.
    pub fn new(stopping: CancellationToken) -> Tasks {
        Tasks {
            tracker: TaskTracker::new(),
            stopping,
            failed: CancellationToken::new(),
            first: Arc::new(Mutex::new(None)),
            handles: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Runs `work` as the essential task `name`.
    pub fn spawn(
        &self,
        name: &'static str,
        work: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        // Its own task, so that a panic is caught here as a JoinError.
        let inner = tokio::spawn(work);
        self.handles.lock().insert(name, inner.abort_handle());
        let me = self.clone();
        self.tracker.spawn(async move {
            let why = match inner.await {
                Ok(Ok(())) => "it returned".to_string(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) if e.is_panic() => format!("it panicked: {}", panic_message(e)),
                Err(_) => "it was aborted".to_string(),
            };
            me.ended(name, why);
        });
    }

    fn ended(&self, task: &'static str, why: String) {
        if self.stopping.is_cancelled() {
            if why != "it returned" {
                tracing::warn!(task, reason = %why, "a task failed during shutdown");
            }
            return;
        }
        tracing::error!(
            task,
            reason = %why,
            "an essential task ended unexpectedly; stopping the daemon (it exits non-zero, so \
             systemd restarts it)"
        );
        self.first.lock().get_or_insert(TaskFailed { task, why });
        self.failed.cancel();
    }

    /// Resolves with the first unexpected end.
    pub async fn failure(&self) -> TaskFailed {
        self.failed.cancelled().await;
        self.first.lock().clone().unwrap_or(TaskFailed {
            task: "unknown",
            why: "unknown".into(),
        })
    }

    /// The first unexpected end, if one happened.
    pub fn failed(&self) -> Option<TaskFailed> {
        self.first.lock().clone()
    }

    /// Waits (at most `limit`) for every task to end; true when all did.
    pub async fn wait(&self, limit: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Aborts task `name` as if it had crashed: for the test that proves supervision works.
    #[doc(hidden)]
    pub fn abort_for_test(&self, name: &str) -> bool {
        match self.handles.lock().get(name) {
            Some(handle) => {
                handle.abort();
                true
            }
            None => false,
        }
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
