//! sd_notify(3) for `Type=notify` units.
//!
//! Each daemon sends `READY=1` once it really serves (not when it merely started), a `STATUS=`
//! line at each stage, `RELOADING=1` then `READY=1` around a reload (SIGHUP), `STOPPING=1` when it begins to stop, and, when the unit sets
//! `WatchdogSec=`, `WATCHDOG=1` from its main loop at half the interval: a loop that wedges
//! stops pinging and systemd restarts the service. Without `$NOTIFY_SOCKET` (not started by
//! systemd) every call is a no-op. A failed send is logged at debug and otherwise ignored: the
//! service manager going away must not take the daemon down.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

/// The daemon's link to its service manager.
#[derive(Debug, Clone, Copy)]
pub struct Notifier {
    /// `WATCHDOG_USEC`, when it is meant for this process.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `WATCHDOG_USEC`/`WATCHDOG_PID` (the socket itself is read per message).
    pub fn from_env() -> Notifier {
        Notifier {
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            debug!(error = %e, "sd_notify failed");
        }
    }

    /// `READY=1` with a status line: the daemon serves now.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A `STATUS=` line (`systemctl status` shows it).
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `RELOADING=1`: the daemon begins to re-read its configuration (SIGHUP); follow with
    /// [`Notifier::ready`] once the reload is applied or refused.
    pub fn reloading(&self) {
        self.send(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
    }

    /// `STOPPING=1`: the daemon begins to shut down.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// `WATCHDOG=1`: the main loop is alive.
    pub fn watchdog_ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// How often the main loop pings: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    /// recommends; `None` without a watchdog.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// A ticker for the main loop's `select!` (never fires without a watchdog).
    pub fn watchdog_ticker(&self) -> WatchdogTicker {
        WatchdogTicker {
            interval: self.watchdog_interval().map(|p| {
                let mut i = tokio::time::interval(p);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            }),
        }
    }
}

/// See [`Notifier::watchdog_ticker`].
#[derive(Debug)]
pub struct WatchdogTicker {
    interval: Option<tokio::time::Interval>,
}

impl WatchdogTicker {
    /// Resolves at the next ping time; pending forever without a watchdog. Cancel-safe.
    pub async fn tick(&mut self) {
        match &mut self.interval {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // paused tokio clock
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_watchdog_timeout() {
        let n = Notifier {
            watchdog: Some(Duration::from_secs(30)),
        };
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        let off = Notifier { watchdog: None };
        assert_eq!(off.watchdog_interval(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ticker_without_watchdog_never_fires() {
        let mut t = Notifier { watchdog: None }.watchdog_ticker();
        let fired = tokio::time::timeout(Duration::from_secs(3600), t.tick()).await;
        assert!(fired.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn ticker_fires_every_half_interval() {
        let mut t = Notifier {
            watchdog: Some(Duration::from_secs(10)),
        }
        .watchdog_ticker();
        t.tick().await; // the first tick is immediate
        let start = tokio::time::Instant::now();
        t.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
