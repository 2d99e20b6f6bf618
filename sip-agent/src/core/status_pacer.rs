//! Paces the status INFOs a fork's speech-server connection causes: at most one per fork per
//! interval, the newest state winning, the last one never lost.
//!
//! Role: a speech server that keeps dropping its connections would otherwise make sip-agent
//! send the controller a RECONNECTING / STARTED pair per drop. Statuses that answer the
//! controller's own requests or follow the call's media (CONNECTING, STOPPED, PAUSED, ...)
//! are not paced, but they count as sent, and a held status goes out right before them so the
//! controller still sees every fork's states in the order they happened.
//!
//! Inputs (each takes `now`): [`StatusPacer::offer`] for a paced status (sent at once, or held
//! and replacing the one held before); [`StatusPacer::sent_now`] before an unpaced status of
//! the same fork; [`StatusPacer::forget`] when the call ends. Outputs: what `offer` and
//! `sent_now` return, and [`StatusPacer::poll_due`], drained after every
//! [`StatusPacer::poll_timeout`] deadline. No clock of its own, no allocation per status beyond
//! the held one.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The shortest time between two status INFOs of one fork, when the later one is paced.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Slot<T> {
    /// When the last status of this fork went out.
    last: Instant,
    /// The newest paced status not sent yet, and when it is due.
    held: Option<(Instant, T)>,
}

/// Per-fork pacing of status reports `T`, keyed by `K` (the call and the fork's GUID: a call may
/// have several forks).
#[derive(Debug)]
pub struct StatusPacer<K, T> {
    interval: Duration,
    slots: HashMap<K, Slot<T>>,
    /// Deadlines of the held statuses, soonest first (mirrors `Slot::held`).
    due: BTreeSet<(Instant, K)>,
}

impl<K: Clone + Ord + Hash, T> StatusPacer<K, T> {
    /// A pacer allowing one paced status per `interval` per key.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            slots: HashMap::new(),
            due: BTreeSet::new(),
        }
    }

    /// A paced status of `key`: returned when it may go out now (and counted as sent), else
    /// held until the interval since the last one has passed. A status held before is replaced:
    /// the controller learns the newest state, not every one in between.
    #[must_use]
    pub fn offer(&mut self, now: Instant, key: K, status: T) -> Option<T> {
        let Some(slot) = self.slots.get_mut(&key) else {
            self.slots.insert(
                key.clone(),
                Slot {
                    last: now,
                    held: None,
                },
            );
            return Some(status);
        };
        if let Some((at, _)) = &mut slot.held {
            slot.held = Some((*at, status));
            return None;
        }
        let at = slot.last + self.interval;
        if at <= now {
            slot.last = now;
            return Some(status);
        }
        slot.held = Some((at, status));
        self.due.insert((at, key));
        None
    }

    /// An unpaced status of `key` goes out now: returns the held one, which must go out first
    /// (order is kept over pace), and counts the unpaced one as sent.
    #[must_use]
    pub fn sent_now(&mut self, now: Instant, key: K) -> Option<T> {
        let slot = self.slots.entry(key.clone()).or_insert(Slot {
            last: now,
            held: None,
        });
        slot.last = now;
        let (at, held) = slot.held.take()?;
        self.due.remove(&(at, key));
        Some(held)
    }

    /// The next held status of any key that is due at `now`, counted as sent. Drain until
    /// `None` after every [`StatusPacer::poll_timeout`] deadline; a call before one is a no-op.
    #[must_use]
    pub fn poll_due(&mut self, now: Instant) -> Option<(K, T)> {
        let (at, key) = self.due.first()?.clone();
        if at > now {
            return None;
        }
        self.due.remove(&(at, key.clone()));
        let slot = self.slots.get_mut(&key)?;
        slot.last = now;
        let (_, status) = slot.held.take()?;
        Some((key, status))
    }

    /// When the soonest held status is due; `None` when none is held.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// The keys `gone` picks are gone (their call ended): what was held for them is dropped,
    /// nobody is left to tell.
    pub fn forget(&mut self, gone: impl Fn(&K) -> bool) {
        let keys: Vec<K> = self.slots.keys().filter(|k| gone(k)).cloned().collect();
        for key in keys {
            if let Some(Slot {
                held: Some((at, _)),
                ..
            }) = self.slots.remove(&key)
            {
                self.due.remove(&(at, key));
            }
        }
    }

    /// Keys with pacing state (for tests and leak checks).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no key has pacing state.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn pacer() -> StatusPacer<u32, &'static str> {
        StatusPacer::new(STATUS_INTERVAL)
    }

    #[test]
    fn first_status_goes_at_once_and_the_next_waits_out_the_interval() {
        let t0 = crate::core::testing::epoch();
        let mut p = pacer();
        assert_eq!(p.offer(t0, 1, "RECONNECTING"), Some("RECONNECTING"));
        assert_eq!(p.offer(t0 + ms(300), 1, "STARTED"), None);
        assert_eq!(p.poll_timeout(), Some(t0 + ms(1000)));
        // A spurious wake-up before the deadline releases nothing.
        assert_eq!(p.poll_due(t0 + ms(999)), None);
        assert_eq!(p.poll_due(t0 + ms(1000)), Some((1, "STARTED")));
        assert_eq!(p.poll_due(t0 + ms(1000)), None);
        assert_eq!(p.poll_timeout(), None);
        // Counted from the held one's release.
        assert_eq!(p.offer(t0 + ms(1500), 1, "RECONNECTING"), None);
        assert_eq!(p.poll_timeout(), Some(t0 + ms(2000)));
        assert_eq!(p.offer(t0 + ms(3000), 2, "other fork"), Some("other fork"));
    }

    #[test]
    fn a_flapping_connection_coalesces_to_the_newest_state_and_keeps_the_last() {
        let t0 = crate::core::testing::epoch();
        let mut p = pacer();
        let mut sent = vec![];
        let mut now = t0;
        // Lost and back every 100 ms for 2.5 s, then given up: stepped clock, 10 ms steps.
        let mut events = (0..25)
            .map(|i| {
                (
                    t0 + ms(100 * i),
                    if i % 2 == 0 {
                        "RECONNECTING"
                    } else {
                        "STARTED"
                    },
                )
            })
            .chain([(t0 + ms(2550), "ERROR")])
            .peekable();
        while now <= t0 + ms(5000) {
            while let Some((at, s)) = events.peek().copied() {
                if at > now {
                    break;
                }
                events.next();
                if let Some(s) = p.offer(now, 1, s) {
                    sent.push((now - t0, s));
                }
            }
            while let Some((_, s)) = p.poll_due(now) {
                sent.push((now - t0, s));
            }
            now += ms(10);
        }
        assert_eq!(
            sent,
            vec![
                (ms(0), "RECONNECTING"),
                (ms(1000), "RECONNECTING"),
                (ms(2000), "RECONNECTING"),
                (ms(3000), "ERROR"),
            ]
        );
        for w in sent.windows(2) {
            assert!(w[1].0 - w[0].0 >= STATUS_INTERVAL, "{sent:?}");
        }
    }

    #[test]
    fn an_unpaced_status_flushes_the_held_one_first_and_counts_as_sent() {
        let t0 = crate::core::testing::epoch();
        let mut p = pacer();
        assert_eq!(p.offer(t0, 1, "RECONNECTING"), Some("RECONNECTING"));
        assert_eq!(p.offer(t0 + ms(100), 1, "STARTED"), None);
        // The controller STOPs: the held STARTED goes out before the STOPPED.
        assert_eq!(p.sent_now(t0 + ms(200), 1), Some("STARTED"));
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.sent_now(t0 + ms(250), 1), None);
        // Paced statuses keep their distance from unpaced ones too.
        assert_eq!(p.offer(t0 + ms(400), 1, "RECONNECTING"), None);
        assert_eq!(p.poll_timeout(), Some(t0 + ms(1250)));
    }

    #[test]
    fn forget_drops_the_held_status_and_the_state() {
        let t0 = crate::core::testing::epoch();
        let mut p = pacer();
        assert!(p.offer(t0, 1, "RECONNECTING").is_some());
        assert!(p.offer(t0 + ms(10), 1, "ERROR").is_none());
        p.forget(|k| *k == 1);
        assert!(p.is_empty());
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.poll_due(t0 + ms(5000)), None);
        // A later fork on a reused key starts afresh.
        assert_eq!(p.offer(t0 + ms(20), 1, "STARTED"), Some("STARTED"));
        assert_eq!(p.len(), 1);
    }
}
