//! The webhooks outbox as the deliverer (`api::webhooks`) and `ctl webhooks` use it: copy
//! new changes of the feed into each endpoint's outbox, claim due messages with a lease,
//! record each attempt's outcome, and report.

use std::time::Duration;

use serde_json::json;

use super::data::FeedChange;
use super::reports::{WebhookEndpointStatus, WebhookStatus};
use super::{ServiceError, Services};
use crate::config::WebhookEndpoint;
use crate::store::webhooks::{self, Message, NewMessage};
use crate::store::{self, changes};

/// Changes copied into an outbox per transaction at most.
const FILL_BATCH: i64 = 1_000;
/// Delivered and failed messages are kept this long for `ctl webhooks` counts.
const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

/// The Standard Webhooks payload of a change: `{"type", "timestamp", "data"}`.
pub fn payload(change: &FeedChange) -> String {
    let timestamp = chrono::DateTime::from_timestamp_millis(change.at)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({"type": change.kind, "timestamp": timestamp, "data": change}).to_string()
}

/// The webhook-id of the message of feed entry `seq`: the same for every attempt, so that
/// receivers drop repeats.
pub fn message_id(seq: i64) -> String {
    format!("msg_{seq}")
}

impl Services {
    /// The configured endpoints.
    pub fn webhook_endpoints(&self) -> Vec<WebhookEndpoint> {
        self.config.lock().api.webhooks.clone()
    }

    /// Copies changes past the endpoint's copy cursor into its outbox; returns how many
    /// changes were looked at (0: it is up to date). A new endpoint starts at the feed's head.
    pub async fn fill_outbox(&self, endpoint: &WebhookEndpoint) -> Result<usize, ServiceError> {
        let name = &endpoint.config.name;
        let mut tx = self.store.begin_write().await?;
        let head = changes::head(tx.conn()).await?;
        let cursor =
            webhooks::lock_cursor(tx.conn(), self.store.backend(), name, head.last_seq).await?;
        let found = if cursor < head.last_seq {
            changes::after(tx.conn(), cursor, FILL_BATCH).await?
        } else {
            Vec::new()
        };
        let Some(through) = found.last().map(|c| c.seq) else {
            // Committed all the same: a new endpoint's start is now fixed.
            tx.commit().await?;
            return Ok(0);
        };
        let seen = found.len();
        let prepared: Vec<(i64, String, String, String)> = found
            .into_iter()
            .filter(|c| endpoint.wants(c.kind.as_str()))
            .map(|c| {
                let seq = c.seq;
                let change = FeedChange::from(c);
                (seq, message_id(seq), change.kind.clone(), payload(&change))
            })
            .collect();
        let messages: Vec<NewMessage> = prepared
            .iter()
            .map(|(seq, id, event, body)| NewMessage {
                seq: *seq,
                msg_id: id,
                event,
                body,
            })
            .collect();
        webhooks::fill(tx.conn(), name, &messages, through, store::now_ms()).await?;
        tx.commit().await?;
        Ok(seen)
    }

    /// Claims up to `limit` due messages of the endpoint for this instance, for `lease`.
    pub async fn claim_messages(
        &self,
        endpoint: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Message>, ServiceError> {
        let now = store::now_ms();
        let mut tx = self.store.begin_write().await?;
        let claimed = webhooks::claim(
            tx.conn(),
            self.store.backend(),
            endpoint,
            self.scheduler.instance(),
            now,
            now + lease.as_millis() as i64,
            limit,
        )
        .await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Records an attempt: `Ok` when the endpoint answered 2xx; else the error, and when to
    /// retry (`None`: give up, the message is failed).
    pub async fn record_attempt(
        &self,
        endpoint: &str,
        message: &Message,
        outcome: Result<(), (String, Option<i64>)>,
    ) -> Result<(), ServiceError> {
        let now = store::now_ms();
        let mut tx = self.store.begin_write().await?;
        match outcome {
            Ok(()) => webhooks::delivered(tx.conn(), endpoint, message.id, now).await?,
            Err((error, retry_at)) => {
                webhooks::attempt_failed(tx.conn(), endpoint, message.id, &error, retry_at, now)
                    .await?
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Gives back this instance's leases on messages not sent (on shutdown).
    pub async fn release_messages(&self) -> Result<u64, ServiceError> {
        let mut tx = self.store.begin_write().await?;
        let n = webhooks::release(tx.conn(), self.scheduler.instance()).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Deletes finished messages older than a week.
    pub async fn prune_outbox(&self) -> Result<u64, ServiceError> {
        let cutoff = store::now_ms() - KEEP_FINISHED.as_millis() as i64;
        let mut tx = self.store.begin_write().await?;
        let n = webhooks::prune(tx.conn(), cutoff, 10_000).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// The lowest copy cursor of the configured endpoints: the feed keeps what follows it.
    pub async fn webhook_copy_floor(&self) -> Result<Option<i64>, sqlx::Error> {
        let names: Vec<String> = self
            .webhook_endpoints()
            .into_iter()
            .map(|e| e.config.name)
            .collect();
        let mut conn = self.store.pool().acquire().await?;
        webhooks::min_cursor(&mut conn, &names).await
    }

    /// `ctl webhooks`.
    pub async fn webhooks_status(&self) -> Result<WebhookStatus, ServiceError> {
        let mut conn = self.store.pool().acquire().await?;
        let mut endpoints = Vec::new();
        for e in self.webhook_endpoints() {
            let stats = webhooks::stats(&mut conn, &e.config.name).await?;
            endpoints.push(WebhookEndpointStatus {
                name: e.config.name.clone(),
                url: e.config.url.clone(),
                events: e.config.events.clone(),
                stats,
            });
        }
        Ok(WebhookStatus { endpoints })
    }
}
