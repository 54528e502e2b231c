//! Talking to the service manager (`sd_notify`, through the `sd-notify` crate) when the daemon
//! runs as a `Type=notify` unit: `READY=1` once its listeners are bound and its first pass
//! has looked at the branch, `STATUS=` lines saying what it does, `WATCHDOG=1` while its
//! runtime answers (when the unit sets `WatchdogSec=`), and `STOPPING=1` then
//! `EXTEND_TIMEOUT_USEC=` while it drains, so systemd neither kills a draining runner early
//! nor waits for a wedged one forever. Without `NOTIFY_SOCKET` every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// While draining, each extension asks for this much more time, and is renewed at a third of it.
const EXTENSION: Duration = Duration::from_secs(30);

/// The service manager, if the daemon runs under one.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceManager {
    /// The unit's watchdog timeout, when it has one.
    watchdog: Option<Duration>,
}

impl ServiceManager {
    /// The service manager this process was started by (from `NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC` and `WATCHDOG_PID`).
    pub fn from_env() -> Self {
        ServiceManager {
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!(error = %e, "the service manager did not take a notification");
        }
    }

    /// Started: listeners bound, the first pass done.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// What the daemon does now, in a line `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// How often to say the daemon is alive: half the unit's watchdog timeout.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog
            .map(|w| (w / 2).max(Duration::from_millis(100)))
    }

    /// The daemon is alive.
    pub fn alive(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Stopping: no new request starts; running ones may finish.
    pub fn stopping(&self, status: &str) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status(status),
            extension(),
        ]);
    }

    /// Still draining: keep systemd's stop timeout from running out meanwhile.
    pub fn still_draining(&self) {
        self.send(&[extension()]);
    }

    /// How often a draining daemon renews its extension.
    pub fn renew_every() -> Duration {
        EXTENSION / 3
    }
}

fn extension() -> NotifyState<'static> {
    NotifyState::ExtendTimeoutUsec(EXTENSION.as_micros() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_at_half_its_timeout_and_not_at_all_without_one() {
        let none = ServiceManager::default();
        assert_eq!(none.watchdog_every(), None);
        let unit = ServiceManager {
            watchdog: Some(Duration::from_secs(60)),
        };
        assert_eq!(unit.watchdog_every(), Some(Duration::from_secs(30)));
        assert_eq!(
            extension().to_string(),
            "EXTEND_TIMEOUT_USEC=30000000",
            "the wire form systemd reads"
        );
    }
}
