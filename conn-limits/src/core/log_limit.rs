//! Rate-limited logging: at most one line per cause per interval, and the number of lines
//! suppressed meanwhile reported once the interval ends.
//!
//! Role: an attacker who triggers a warning per connection or per message must not be able to
//! fill the disk with it (19,990 refused connections once wrote 1.46 million WARN lines). The
//! shell asks [`LogLimiter::check`] before logging; `true` means "log this one". When an
//! interval in which lines were suppressed ends, [`LogLimiter::poll_output`] yields the cause and
//! the count, for one summary line; that line counts as the cause's line for the next interval.
//!
//! Inputs: `check(now, cause)`, `handle_timeout(now)`. Outputs: `poll_output()` (drain after
//! `handle_timeout`), `poll_timeout()`. Causes should be a small fixed set (an enum or
//! `&'static str`), never attacker-chosen values: one entry is kept per cause with a window open.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Window {
    ends: Instant,
    suppressed: u64,
}

/// One line per cause per interval.
#[derive(Debug)]
pub struct LogLimiter<K> {
    interval: Duration,
    windows: HashMap<K, Window>,
    out: VecDeque<(K, u64)>,
}

impl<K: Copy + Eq + Hash> LogLimiter<K> {
    /// A limiter allowing one line per cause per `interval`.
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            windows: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether a line for `cause` may be logged now; if not, it is counted as suppressed.
    pub fn check(&mut self, now: Instant, cause: K) -> bool {
        match self.windows.get_mut(&cause) {
            Some(w) if now < w.ends => {
                w.suppressed += 1;
                false
            }
            _ => {
                self.windows.insert(
                    cause,
                    Window {
                        ends: now + self.interval,
                        suppressed: 0,
                    },
                );
                true
            }
        }
    }

    /// Closes the windows that ended at or before `now`. A window with suppressed lines yields a
    /// summary and stays open one more interval (the summary was that interval's line); one
    /// without is forgotten. A spurious call is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        let interval = self.interval;
        let out = &mut self.out;
        self.windows.retain(|cause, w| {
            if now < w.ends {
                return true;
            }
            if w.suppressed == 0 {
                return false;
            }
            out.push_back((*cause, w.suppressed));
            w.suppressed = 0;
            w.ends = now + interval;
            true
        });
    }

    /// `(cause, suppressed lines)` summaries to log. Drain after every `handle_timeout`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<(K, u64)> {
        self.out.pop_front()
    }

    /// When the earliest open window ends.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.windows.values().map(|w| w.ends).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn epoch() -> Instant {
        Instant::now()
    }

    fn drain(l: &mut LogLimiter<&'static str>) -> Vec<(&'static str, u64)> {
        std::iter::from_fn(|| l.poll_output()).collect()
    }

    #[test]
    fn one_line_per_cause_per_interval_then_a_summary() {
        let t0 = epoch();
        let s = Duration::from_secs(1);
        let mut l = LogLimiter::new(Duration::from_secs(10));
        assert!(l.check(t0, "refused"));
        assert!(l.check(t0, "expired"), "causes are limited separately");
        let logged = (1..=1000)
            .filter(|i| l.check(t0 + s * (i % 9), "refused"))
            .count();
        assert_eq!(
            logged, 0,
            "all further lines in the interval are suppressed"
        );
        assert_eq!(l.poll_timeout(), Some(t0 + 10 * s));
        l.handle_timeout(t0 + 9 * s);
        assert!(drain(&mut l).is_empty(), "spurious timeout");
        l.handle_timeout(t0 + 10 * s);
        assert_eq!(drain(&mut l), vec![("refused", 1000)]);
        // The summary was the line of the next interval: the cause stays quiet until it ends.
        assert!(!l.check(t0 + 11 * s, "refused"));
        l.handle_timeout(t0 + 20 * s);
        assert_eq!(drain(&mut l), vec![("refused", 1)]);
        // A quiet interval closes the window: the next line is logged at once.
        l.handle_timeout(t0 + 30 * s);
        assert!(drain(&mut l).is_empty());
        assert_eq!(l.poll_timeout(), None);
        assert!(l.check(t0 + 31 * s, "refused"));
    }

    #[test]
    fn lines_per_interval_are_bounded_whatever_the_rate() {
        let t0 = epoch();
        let mut l = LogLimiter::new(Duration::from_secs(1));
        let mut lines = 0;
        // 100,000 events over 10 s, timers fired as a shell would.
        for i in 0..100_000u64 {
            let now = t0 + Duration::from_micros(i * 100);
            if l.poll_timeout().is_some_and(|t| t <= now) {
                l.handle_timeout(now);
                lines += drain(&mut l).len();
            }
            if l.check(now, "refused") {
                lines += 1;
            }
        }
        assert!(lines <= 11, "{lines} lines for 10 intervals");
    }
}
