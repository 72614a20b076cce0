//! Fault injection: latency, error rates, connection resets and quotas, per endpoint family.
//!
//! "token" covers /token, /revoke, the JWKS and discovery; "drive" covers /drive and /upload;
//! "jwks", when set, replaces "token" for the JWKS alone (Google's key server down while the
//! token endpoint works).
//! The HTTP front layer (`http::front`) consults [`FaultState`] on every request; the settings
//! themselves are plain data set through `PUT /_emulator/faults` or [`crate::Emulator::set_faults`].

use parking_lot::{Mutex, RwLock};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which set of faults applies to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Token,
    Drive,
    Jwks,
}

/// Faults for one family. Every field defaults to "no fault".
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    /// Added to every response.
    pub latency_ms: u64,
    /// Uniformly random extra latency in `0..=jitter_ms`.
    pub jitter_ms: u64,
    /// Fraction (0..1) of requests answered with `error_status` instead of being served.
    pub error_rate: f64,
    /// 500, 503, 429 or 403 (default 503). Also picks 429 vs 403 for `quota_rps`.
    pub error_status: Option<u16>,
    /// Sent as `Retry-After` on injected errors and quota refusals.
    pub retry_after_s: Option<u64>,
    /// Fraction (0..1) of requests that are served but whose response is cut short:
    /// the headers promise more bytes than are sent before the connection is dropped.
    pub reset_rate: f64,
    /// Requests per second for the whole family; beyond it, 429 rateLimitExceeded
    /// (or 403 when `error_status` is 403).
    pub quota_rps: Option<u64>,
    /// Requests per second per user (Drive only); beyond it, 403 userRateLimitExceeded.
    pub user_quota_rps: Option<u64>,
    /// Requests per minute for the whole family (Drive's per-project quota); beyond it, 403
    /// rateLimitExceeded (429 if `error_status` is 429). A sliding 60-second window; refused
    /// requests do not count.
    pub quota_per_minute: Option<u64>,
    /// Requests per minute per user (Drive only); beyond it, 403 userRateLimitExceeded.
    /// A sliding 60-second window; refused requests do not count.
    pub user_quota_per_minute: Option<u64>,
    /// Media bodies (`alt=media`) are streamed at this many bytes per second, so a client's
    /// read timeout and resume (`Range`) can be tested. Combines with `reset_rate`.
    pub body_bytes_per_sec: Option<u64>,
    /// Every `alt=media` body (whole or a range) is cut after this many bytes and the
    /// connection dropped, while every other call of the family is served whole: a line that
    /// breaks periodically, which only a client that resumes with `Range` gets through.
    pub media_cut_after_bytes: Option<u64>,
    /// Every resumable-upload chunk (`PUT` to a session) keeps at most this many bytes, then
    /// the connection drops without an answer: only a client that asks the session how much
    /// it holds and resumes from there completes the upload.
    pub upload_cut_after_bytes: Option<u64>,
    /// Fraction (0..1) of successful `files.create` / `files.update` calls that are carried
    /// out but whose answer is lost (the connection drops): the client must find out what
    /// happened without making a second file.
    pub lost_answer_rate: f64,
    /// Answer every request of the family with `302 Found` and this `Location` instead of
    /// serving it. A client must never follow it; point it at `{base}/_emulator/redirect-target`
    /// and the `redirect_target.hits` stats counter shows whether one did.
    pub redirect_to: Option<String>,
}

impl Fault {
    /// Rejects settings Google could not produce.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = self.error_status {
            if ![500, 503, 429, 403].contains(&s) {
                return Err(format!(
                    "error_status must be 500, 503, 429 or 403, not {s}"
                ));
            }
        }
        if self.upload_cut_after_bytes == Some(0) {
            return Err("upload_cut_after_bytes must be at least 1".into());
        }
        if self.media_cut_after_bytes == Some(0) {
            return Err("media_cut_after_bytes must be at least 1".into());
        }
        if self.body_bytes_per_sec == Some(0) {
            return Err("body_bytes_per_sec must be at least 1".into());
        }
        if let Some(to) = &self.redirect_to {
            let absolute = to.starts_with("http://") || to.starts_with("https://");
            if !(absolute || to.starts_with('/')) || axum::http::HeaderValue::from_str(to).is_err()
            {
                return Err("redirect_to must be an http(s) URL or an absolute path".into());
            }
        }
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("reset_rate", self.reset_rate),
            ("lost_answer_rate", self.lost_answer_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be within 0..1"));
            }
        }
        Ok(())
    }

    pub(crate) fn status(&self) -> u16 {
        self.error_status.unwrap_or(503)
    }

    pub(crate) fn delay(&self) -> Option<Duration> {
        let jitter = if self.jitter_ms > 0 {
            rand::thread_rng().gen_range(0..=self.jitter_ms)
        } else {
            0
        };
        let ms = self.latency_ms + jitter;
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    pub(crate) fn roll_error(&self) -> bool {
        self.error_rate > 0.0 && rand::thread_rng().gen::<f64>() < self.error_rate
    }

    pub(crate) fn roll_lost_answer(&self) -> bool {
        self.lost_answer_rate > 0.0 && rand::thread_rng().gen::<f64>() < self.lost_answer_rate
    }

    pub(crate) fn roll_reset(&self) -> bool {
        self.reset_rate > 0.0 && rand::thread_rng().gen::<f64>() < self.reset_rate
    }
}

/// The faults of each family; `{}` (all `None`) means none.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub token: Option<Fault>,
    pub drive: Option<Fault>,
    pub jwks: Option<Fault>,
}

/// Fixed one-second window counter: cheap, and close enough to Google's per-second quotas.
#[derive(Default)]
pub(crate) struct Window(Mutex<(u64, u64)>);

impl Window {
    /// Counts one request; false when it exceeds `limit` in the current second.
    pub(crate) fn admit(&self, limit: u64) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut w = self.0.lock();
        if w.0 != now {
            *w = (now, 0);
        }
        w.1 += 1;
        w.1 <= limit
    }
}

/// Sliding one-minute window in one-second buckets: a request is admitted when fewer than
/// `limit` were admitted in the 60 seconds before it. Time comes from the emulator's clock
/// (`advance_clock` moves it), in whole seconds.
pub(crate) struct MinuteWindow(Mutex<[(u64, u64); 60]>);

impl Default for MinuteWindow {
    fn default() -> Self {
        Self(Mutex::new([(0, 0); 60]))
    }
}

impl MinuteWindow {
    /// Whether one more request fits; counts nothing.
    pub(crate) fn has_room(&self, limit: u64, now_s: u64) -> bool {
        let w = self.0.lock();
        let recent: u64 = w
            .iter()
            .filter(|(sec, _)| *sec + 60 > now_s && *sec <= now_s)
            .map(|(_, n)| n)
            .sum();
        recent < limit
    }

    /// Counts one admitted request.
    pub(crate) fn record(&self, now_s: u64) {
        let mut w = self.0.lock();
        let slot = &mut w[(now_s % 60) as usize];
        if slot.0 != now_s {
            *slot = (now_s, 0);
        }
        slot.1 += 1;
    }

    #[cfg(test)]
    fn admit(&self, limit: u64, now_s: u64) -> bool {
        let ok = self.has_room(limit, now_s);
        if ok {
            self.record(now_s);
        }
        ok
    }
}

#[derive(Default)]
pub(crate) struct FaultState {
    faults: RwLock<Faults>,
    token_window: Window,
    drive_window: Window,
    token_minute: MinuteWindow,
    drive_minute: MinuteWindow,
}

impl FaultState {
    pub(crate) fn set(&self, faults: Faults) {
        *self.faults.write() = faults;
    }

    pub(crate) fn get(&self, family: Family) -> Option<Fault> {
        let f = self.faults.read();
        match family {
            Family::Token => f.token.clone(),
            Family::Drive => f.drive.clone(),
            Family::Jwks => f.jwks.clone().or_else(|| f.token.clone()),
        }
    }

    pub(crate) fn window(&self, family: Family) -> &Window {
        match family {
            Family::Token | Family::Jwks => &self.token_window,
            Family::Drive => &self.drive_window,
        }
    }

    pub(crate) fn minute_window(&self, family: Family) -> &MinuteWindow {
        match family {
            Family::Token | Family::Jwks => &self.token_minute,
            Family::Drive => &self.drive_minute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_window_slides() {
        let w = MinuteWindow::default();
        assert!(w.admit(2, 100));
        assert!(w.admit(2, 130));
        assert!(!w.admit(2, 159), "two within the last 60 s");
        assert!(w.admit(2, 160), "the one at 100 s has left the window");
        assert!(!w.admit(2, 161));
    }
}
