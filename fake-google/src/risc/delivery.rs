//! Pushing SETs to the registered receiver.
//!
//! The POST is RFC 8935's (push-based SET delivery): the body is the SET, `Content-Type:
//! application/secevent+jwt`, `Accept: application/json`. The page: "If the token is valid and
//! was successfully decoded, return HTTP status 202", and "Cross-Account Protection will
//! attempt to redeliver events that it believes have not been delivered ... events are
//! delivered with limited retries so if your receiver is down for an extended period of time
//! you may permanently miss some events". Neither says which answers are retried or how often:
//! the emulator retries a refused connection, a timeout, a 5xx, 408 or 429, after
//! `retry_initial_ms` doubling, for `delivery_attempts` attempts in all, then drops the event;
//! any 2xx is delivered; any other 4xx (400 above all: the receiver found the SET invalid) is
//! final. While the stream is disabled nothing is sent and nothing is kept ("doesn't buffer
//! security events"), and an event type the stream did not request is not sent.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::{EmitEvent, Emitted, RiscEvent, StreamStatus};
use crate::stats::Counter;
use crate::{Emulator, Error};

/// How a delivery ended (so far).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// Attempts are still being made.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// The receiver answered a final 4xx (the SET is invalid to it).
    Rejected,
    /// Every attempt failed.
    Dropped,
    /// Not sent: the stream is disabled, or did not request the event type.
    NotSent,
}

/// One SET's delivery, for tests and `GET /_emulator/risc/deliveries`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub jti: String,
    pub event: String,
    pub sub: Option<String>,
    pub url: String,
    /// The compact SET as sent.
    pub set: String,
    /// Each attempt's HTTP status; `None` when no answer came.
    pub statuses: Vec<Option<u16>>,
    /// The last answer's body (at most 1 KiB).
    pub last_body: Option<String>,
    pub outcome: DeliveryOutcome,
}

impl Emulator {
    /// Sends `e` to the registered receiver, in the background (with retries); returns the
    /// SET. An error if no stream is registered. Side effects as Google's: a tokens-revoked
    /// event revokes the user's grants, a token-revoked one the grant of the token it names.
    pub fn emit_risc_event(&self, e: EmitEvent) -> Result<Emitted, Error> {
        let stream = self
            .risc
            .stream
            .lock()
            .clone()
            .ok_or_else(|| Error::Invalid("no RISC stream is registered".into()))?;
        let emitted = self.mint_set(&e)?;
        let real = e.forgery.is_none() && e.revoke_grants != Some(false);
        match e.event {
            RiscEvent::TokensRevoked if real => self.revoke_user(&e.sub),
            RiscEvent::TokenRevoked if real => {
                let token = e.token.clone().or_else(|| {
                    self.account(&e.sub)
                        .ok()
                        .and_then(|a| self.newest_refresh_token(&a))
                });
                if let Some(t) = token {
                    let _ = self.revoke_token(&t);
                }
            }
            _ => {}
        }
        let sub = (e.event != RiscEvent::Verification).then(|| e.sub.clone());
        let not_sent = if stream.status == StreamStatus::Disabled {
            true
        } else {
            !stream.events_requested.iter().any(|u| u == e.event.uri())
        };
        self.start_delivery(&emitted, e.event.name(), sub, &stream.url, not_sent);
        Ok(emitted)
    }

    /// Sends an earlier SET again, byte for byte, to the receiver registered now (a replay).
    pub fn replay_risc_delivery(&self, jti: &str) -> Result<(), Error> {
        let url = self
            .risc
            .stream
            .lock()
            .as_ref()
            .map(|s| s.url.clone())
            .ok_or_else(|| Error::Invalid("no RISC stream is registered".into()))?;
        let earlier = self
            .risc
            .deliveries
            .lock()
            .iter()
            .find(|d| d.jti == jti)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("no SET with jti {jti} was sent")))?;
        let emitted = Emitted {
            jti: earlier.jti.clone(),
            set: earlier.set.clone(),
        };
        self.start_delivery(&emitted, &earlier.event, earlier.sub.clone(), &url, false);
        Ok(())
    }

    /// Every delivery so far, oldest first.
    pub fn risc_deliveries(&self) -> Vec<Delivery> {
        self.risc.deliveries.lock().clone()
    }

    pub fn set_risc_settings(&self, settings: super::RiscSettings) {
        *self.risc.settings.lock() = settings;
    }

    fn start_delivery(
        &self,
        emitted: &Emitted,
        event: &str,
        sub: Option<String>,
        url: &str,
        not_sent: bool,
    ) {
        let index = {
            let mut deliveries = self.risc.deliveries.lock();
            deliveries.push(Delivery {
                jti: emitted.jti.clone(),
                event: event.to_string(),
                sub,
                url: url.to_string(),
                set: emitted.set.clone(),
                statuses: Vec::new(),
                last_body: None,
                outcome: if not_sent {
                    DeliveryOutcome::NotSent
                } else {
                    DeliveryOutcome::Pending
                },
            });
            deliveries.len() - 1
        };
        if not_sent {
            self.stats.inc(Counter::RiscNotSent);
            return;
        }
        let me = self.clone();
        let (url, set) = (url.to_string(), emitted.set.clone());
        // Emulator methods are synchronous; every caller runs inside a tokio runtime.
        tokio::spawn(async move { me.deliver(index, url, set).await });
    }

    async fn deliver(&self, index: usize, url: String, set: String) {
        let settings = self.risc.settings.lock().clone();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client");
        let attempts = settings.delivery_attempts.max(1);
        for attempt in 0..attempts {
            if attempt > 0 {
                self.stats.inc(Counter::RiscRetries);
                let wait = settings
                    .retry_initial_ms
                    .saturating_mul(1 << (attempt - 1).min(20));
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            self.stats.inc(Counter::RiscDeliveryAttempts);
            let answer = client
                .post(&url)
                .header("content-type", "application/secevent+jwt")
                .header("accept", "application/json")
                .body(set.clone())
                .send()
                .await;
            let (status, body) = match answer {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp.text().await.unwrap_or_default();
                    (
                        Some(status),
                        Some(body.chars().take(1024).collect::<String>()),
                    )
                }
                Err(_) => (None, None),
            };
            let outcome = match status {
                Some(s) if (200..300).contains(&s) => Some(DeliveryOutcome::Delivered),
                Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => {
                    Some(DeliveryOutcome::Rejected)
                }
                _ => None,
            };
            self.record_attempt(index, status, body, outcome.clone());
            match outcome {
                Some(DeliveryOutcome::Delivered) => {
                    self.stats.inc(Counter::RiscDelivered);
                    return;
                }
                Some(_) => {
                    self.stats.inc(Counter::RiscRejected);
                    return;
                }
                None => {}
            }
        }
        self.stats.inc(Counter::RiscDropped);
        self.record_attempt(index, None, None, Some(DeliveryOutcome::Dropped));
    }

    fn record_attempt(
        &self,
        index: usize,
        status: Option<u16>,
        body: Option<String>,
        outcome: Option<DeliveryOutcome>,
    ) {
        let mut deliveries = self.risc.deliveries.lock();
        let Some(d) = deliveries.get_mut(index) else {
            return;
        };
        match outcome {
            Some(DeliveryOutcome::Dropped) => d.outcome = DeliveryOutcome::Dropped,
            other => {
                d.statuses.push(status);
                if body.is_some() {
                    d.last_body = body;
                }
                if let Some(o) = other {
                    d.outcome = o;
                }
            }
        }
    }
}
