//! The systemd notify protocol: READY, RELOADING, STOPPING, STATUS and the watchdog. Every
//! function is a no-op without `$NOTIFY_SOCKET`. A leaf: callers pass the STATUS line.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::debug!(error = %e, "cannot notify systemd");
        }
    }
}

/// Start-up done, or a reload done.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// How often to ping the watchdog (half of WATCHDOG_USEC), when systemd asks for pings.
pub fn watchdog_period() -> Option<Duration> {
    let mut usec = 0u64;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
        .then(|| Duration::from_micros(usec / 2))
}

/// A watchdog ping (when enabled) with a fresh STATUS line.
pub fn alive(status: &str, watchdog: bool) {
    if watchdog {
        send(&[NotifyState::Watchdog, NotifyState::Status(status)]);
    } else {
        send(&[NotifyState::Status(status)]);
    }
}
