//! Fork-start latency for the `xdpfork_fork_start_seconds` histogram: from the agent accepting a
//! `fork_start` to the fork's first `started` status (the speech server has the streams).
//!
//! Inputs: [`ForkStartClock::handle_accepted`] when the agent accepted a fork start,
//! [`ForkStartClock::handle_event`] for every status event. Output: the latency, when an event
//! completes a start. A fork that ends or fails before it started is forgotten; a `started`
//! after a reconnect is not a start. At most [`MAX_PENDING`] starts are tracked (the oldest
//! beyond that is forgotten, and counted), so the table stays bounded whatever the events do.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use control_api::{Event, ForkStatus};

/// Fork starts waiting for `started` at once (a start takes at most the connect timeout).
pub const MAX_PENDING: usize = 4096;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ForkStartClock {
    pending: HashMap<String, Instant>,
    /// Accept order, to forget the oldest when full (may hold guids already completed).
    order: VecDeque<String>,
    /// Starts forgotten because the table was full.
    pub forgotten: u64,
}

impl ForkStartClock {
    /// The agent accepted `fork_start` for `call_guid` at `now`.
    pub fn handle_accepted(&mut self, now: Instant, call_guid: &str) {
        while self.pending.len() >= MAX_PENDING {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.pending.remove(&old).is_some() {
                self.forgotten += 1;
            }
        }
        if self.pending.insert(call_guid.to_owned(), now).is_none() {
            self.order.push_back(call_guid.to_owned());
        }
        // Completed guids leave stale entries in `order`; keep it within twice the table.
        if self.order.len() > 2 * MAX_PENDING {
            let pending = &self.pending;
            self.order.retain(|g| pending.contains_key(g));
        }
    }

    /// A status event at `now`; `Some(latency)` when it is the first `started` of a start.
    #[must_use]
    pub fn handle_event(&mut self, now: Instant, ev: &Event) -> Option<Duration> {
        let Event::ForkStatus {
            call_guid,
            status,
            reconnected,
            ..
        } = ev
        else {
            return None;
        };
        match status {
            ForkStatus::Started if !reconnected => self
                .pending
                .remove(call_guid)
                .map(|t| now.saturating_duration_since(t)),
            ForkStatus::Stopped | ForkStatus::Error => {
                self.pending.remove(call_guid);
                None
            }
            _ => None,
        }
    }

    /// Starts waiting now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a fixed origin; every later time is stepped from it
mod tests {
    use super::*;

    fn status(guid: &str, status: ForkStatus, reconnected: bool) -> Event {
        Event::ForkStatus {
            call_guid: guid.into(),
            status,
            error: None,
            reconnected,
            snapshot: false,
            fork_id: None,
        }
    }

    #[test]
    fn measures_accept_to_first_started() {
        let t0 = Instant::now();
        let mut c = ForkStartClock::default();
        c.handle_accepted(t0, "g");
        let late = t0 + Duration::from_millis(250);
        assert_eq!(
            c.handle_event(late, &status("g", ForkStatus::Paused, false)),
            None
        );
        assert_eq!(
            c.handle_event(late, &status("g", ForkStatus::Started, false)),
            Some(Duration::from_millis(250))
        );
        // Only once.
        assert_eq!(
            c.handle_event(late, &status("g", ForkStatus::Started, false)),
            None
        );
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn failures_and_reconnects_are_not_starts() {
        let t0 = Instant::now();
        let mut c = ForkStartClock::default();
        c.handle_accepted(t0, "a");
        c.handle_accepted(t0, "b");
        assert_eq!(
            c.handle_event(t0, &status("a", ForkStatus::Error, false)),
            None
        );
        assert_eq!(
            c.handle_event(t0, &status("a", ForkStatus::Started, false)),
            None
        );
        assert_eq!(
            c.handle_event(t0, &status("b", ForkStatus::Started, true)),
            None
        );
        assert_eq!(c.pending(), 1);
        assert_eq!(
            c.handle_event(t0, &status("b", ForkStatus::Stopped, false)),
            None
        );
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn stays_bounded() {
        let t0 = Instant::now();
        let mut c = ForkStartClock::default();
        for i in 0..MAX_PENDING + 10 {
            c.handle_accepted(t0, &format!("g{i}"));
        }
        assert_eq!(c.pending(), MAX_PENDING);
        assert_eq!(c.forgotten, 10);
        // The oldest went first.
        assert_eq!(
            c.handle_event(t0, &status("g0", ForkStatus::Started, false)),
            None
        );
        assert!(c
            .handle_event(
                t0,
                &status(&format!("g{MAX_PENDING}"), ForkStatus::Started, false)
            )
            .is_some());
    }
}
