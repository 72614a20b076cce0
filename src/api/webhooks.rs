//! The webhooks deliverer: one loop per `[[api.webhooks]]` endpoint, in one supervised task
//! of its own, so that a slow or dead endpoint never holds up syncing. Each loop copies new
//! changes of the feed into the endpoint's outbox, claims due messages with a lease (at most
//! `concurrency` at once), POSTs them signed the Standard Webhooks way, and records each
//! outcome: delivered, or retried with exponential backoff until `retry_for` has passed, then
//! failed. A dead endpoint is also backed off as a whole, so it costs a request now and then,
//! not one per change.
//!
//! Signature (<https://www.standardwebhooks.com>): `webhook-signature: v1,BASE64` where BASE64
//! is the HMAC-SHA256, keyed with the base64-decoded part of the `whsec_` secret, of
//! `{webhook-id}.{webhook-timestamp}.{body}`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use secrecy::ExposeSecret;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::config::WebhookEndpoint;
use crate::services::Services;
use crate::store::webhooks::Message;

/// First retry after this; each failure doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// A dead endpoint is retried as a whole at most this rarely.
const MAX_ENDPOINT_PAUSE: Duration = Duration::from_secs(60);
/// How long an idle loop waits for the feed to move before looking again anyway (retries
/// fall due without the feed moving).
const IDLE: Duration = Duration::from_millis(500);
/// How often the backlog gauges are refreshed (and finished messages pruned).
const BACKLOG_EVERY: Duration = Duration::from_secs(15);
/// Error text kept per attempt at most.
const MAX_ERROR: usize = 300;

/// Signs `body` for a message: the value of the `webhook-signature` header.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// The delay before retry number `attempts` (1: after the first failure), ±20 % jitter.
fn backoff(attempts: i64) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 20) as u32;
    let base = FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(MAX_BACKOFF);
    base.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

/// Runs every endpoint's loop until `stop`; gives back unsent leases on the way out.
pub async fn run(services: Arc<Services>, stop: CancellationToken) -> anyhow::Result<()> {
    let endpoints = services.webhook_endpoints();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("appdata-syncd/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let loops = endpoints.into_iter().map(|endpoint| {
        let deliverer = Deliverer {
            services: services.clone(),
            http: http.clone(),
            endpoint,
        };
        let stop = stop.clone();
        async move { deliverer.run(stop).await }
    });
    futures::future::join_all(loops).await;
    if let Err(e) = services.release_messages().await {
        tracing::debug!(error = %e, "cannot give back webhook leases; they expire by themselves");
    }
    Ok(())
}

struct Deliverer {
    services: Arc<Services>,
    http: reqwest::Client,
    endpoint: WebhookEndpoint,
}

impl Deliverer {
    fn name(&self) -> &str {
        &self.endpoint.config.name
    }

    /// A message claimed is not claimed by another instance until the attempt had time to end.
    fn lease(&self) -> Duration {
        self.endpoint.config.timeout + Duration::from_secs(5)
    }

    async fn run(&self, stop: CancellationToken) {
        let mut failing_rounds: u32 = 0;
        let mut copied_through: i64 = -1;
        let mut since_prune = std::time::Instant::now();
        while !stop.is_cancelled() {
            let head = self.services.feed().last_head().last_seq;
            if head > copied_through {
                match self.services.fill_outbox(&self.endpoint).await {
                    Ok(0) => copied_through = head,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(webhook = %self.name(), error = %e, "cannot fill the webhook outbox")
                    }
                }
            }
            let (sent, failed) = self.round(&stop).await;
            failing_rounds = match (sent, failed) {
                (0, 0) => failing_rounds,
                (0, _) => failing_rounds.saturating_add(1),
                _ => 0,
            };
            if since_prune.elapsed() > BACKLOG_EVERY {
                since_prune = std::time::Instant::now();
                let _ = self.services.prune_outbox().await;
                self.report_backlog().await;
            }
            let pause = if failing_rounds > 0 {
                FIRST_BACKOFF
                    .saturating_mul(2u32.saturating_pow(failing_rounds.min(10) - 1))
                    .min(MAX_ENDPOINT_PAUSE)
            } else if sent + failed > 0 {
                continue;
            } else {
                IDLE
            };
            tokio::select! {
                _ = self.services.feed().wait_past(head, pause), if failing_rounds == 0 => {}
                _ = tokio::time::sleep(pause), if failing_rounds > 0 => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    /// Claims due messages and sends them at once; returns (delivered, failed).
    async fn round(&self, stop: &CancellationToken) -> (usize, usize) {
        let limit = self.endpoint.config.concurrency as i64;
        let claimed = match self
            .services
            .claim_messages(self.name(), self.lease(), limit)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(webhook = %self.name(), error = %e, "cannot claim webhook messages");
                return (0, 0);
            }
        };
        if claimed.is_empty() || stop.is_cancelled() {
            return (0, 0);
        }
        let results = futures::future::join_all(claimed.iter().map(|m| self.deliver(m))).await;
        let sent = results.iter().filter(|ok| **ok).count();
        (sent, results.len() - sent)
    }

    /// One attempt at `message`, its outcome recorded; true when delivered.
    async fn deliver(&self, message: &Message) -> bool {
        let outcome = self.post(message).await;
        let delivered = outcome.is_ok();
        crate::metrics::webhook_attempt(self.name(), delivered);
        let record = match outcome {
            Ok(()) => Ok(()),
            Err(error) => {
                let now = crate::store::now_ms();
                let next = now + backoff(message.attempts + 1).as_millis() as i64;
                let deadline =
                    message.created_at + self.endpoint.config.retry_for.as_millis() as i64;
                let retry_at = (next <= deadline).then_some(next);
                if retry_at.is_none() {
                    tracing::warn!(webhook = %self.name(), message = %message.msg_id, error = %error,
                        "webhook message failed for good: retried for the whole retry period");
                } else {
                    tracing::debug!(webhook = %self.name(), message = %message.msg_id, error = %error, "webhook attempt failed");
                }
                Err((error, retry_at))
            }
        };
        if let Err(e) = self
            .services
            .record_attempt(self.name(), message, record)
            .await
        {
            // The lease runs out and the message is sent again: at-least-once.
            tracing::warn!(webhook = %self.name(), error = %e, "cannot record a webhook attempt");
        }
        delivered
    }

    async fn post(&self, message: &Message) -> Result<(), String> {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(
            self.endpoint.key.expose_secret(),
            &message.msg_id,
            timestamp,
            &message.body,
        );
        let sent = self
            .http
            .post(&self.endpoint.config.url)
            .timeout(self.endpoint.config.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &message.msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(message.body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the endpoint answered {}", r.status())),
            Err(e) => {
                let mut text = format!("request failed: {e}");
                text.truncate(MAX_ERROR);
                Err(text)
            }
        }
    }

    async fn report_backlog(&self) {
        if let Ok(status) = self.services.webhooks_status().await {
            for e in status.endpoints.iter().filter(|e| e.name == self.name()) {
                crate::metrics::webhook_backlog(
                    &e.name,
                    e.stats.pending,
                    e.stats.oldest_pending_at,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert!(backoff(1) <= Duration::from_secs(6));
        assert!(backoff(2) >= Duration::from_secs(8));
        assert!(backoff(40) <= Duration::from_secs(4320));
    }
}
