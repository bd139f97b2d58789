//! Telling systemd how `konvertd` is doing (`Type=notify`, `sd_notify(3)`).
//!
//! - `READY=1` once the QUIC endpoint is bound and the API socket accepts;
//! - `RELOADING=1` (with `MONOTONIC_USEC=`) before a SIGHUP reload and
//!   `READY=1` after it, whether the reload was taken or refused;
//! - `STOPPING=1` when a graceful shutdown begins;
//! - `WATCHDOG=1` at half of `WatchdogSec=` from a task of the daemon, and
//!   only while the daemon's tasks run and the store accepts writes, so that
//!   systemd restarts a daemon that hangs or can no longer store anything.
//!
//! Everything here does nothing unless the process called [`enable`]
//! (`konvertd` does; the in-process gateways of `konvertctl demo` and the
//! tests do not) and systemd set `NOTIFY_SOCKET`. Notifications carry
//! addresses and states only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Lets this process send notifications to systemd (`konvertd` calls it at start).
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

/// Whether notifications go anywhere: [`enable`] was called and `NOTIFY_SOCKET` is set.
pub fn active() -> bool {
    ENABLED.load(Ordering::Acquire) && std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState<'_>]) {
    if !active() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// `READY=1` with a short status line for `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` and the monotonic time, as `Type=notify-reload` expects.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading peers and profiles"),
        ]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing in-flight work"),
    ]);
}

/// How often to send `WATCHDOG=1`: half of `WatchdogSec=` (systemd's
/// `WATCHDOG_USEC`, for this process), or `None` when there is no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    if !active() {
        return None;
    }
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

/// The watchdog task: sends `WATCHDOG=1` every [`watchdog_interval`] while
/// `alive` says the daemon works; stops on drop.
#[derive(Debug)]
pub struct Watchdog {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the task if systemd asked for a watchdog. `alive` returns why
    /// the daemon is not working, if it is not; then no ping is sent and
    /// systemd restarts the service once `WatchdogSec=` has passed.
    /// Must run inside a tokio runtime.
    pub fn spawn(alive: impl Fn() -> Result<(), &'static str> + Send + 'static) -> Watchdog {
        let Some(every) = watchdog_interval() else {
            return Watchdog { task: None };
        };
        tracing::info!(interval_ms = every.as_millis() as u64, "systemd watchdog enabled");
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut warned = false;
            loop {
                tick.tick().await;
                match alive() {
                    Ok(()) => {
                        warned = false;
                        send(&[NotifyState::Watchdog]);
                    }
                    Err(reason) if !warned => {
                        warned = true;
                        tracing::error!(reason, "not answering the systemd watchdog");
                    }
                    Err(_) => {}
                }
            }
        });
        Watchdog { task: Some(task) }
    }

    /// Whether the task runs (systemd asked for a watchdog).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_happens_unless_enabled() {
        // This test process never calls enable(): no watchdog task, no notifications.
        assert!(!active());
        assert_eq!(watchdog_interval(), None);
        let w = Watchdog::spawn(|| Ok(()));
        assert!(!w.is_running());
        ready("test");
        reloading();
        stopping();
    }
}
