//! Pause after a failed `accept`.
//!
//! Role: when the process runs out of file descriptors (EMFILE) or the system does (ENFILE),
//! `accept` fails at once and keeps failing while the connection waits in the backlog; retrying
//! immediately spins a core at 100 % and starves everything else. The shell sleeps for
//! [`AcceptBackoff::handle_error`]'s answer before the next `accept` (still serving closes and
//! timers meanwhile, which is what frees descriptors), and calls
//! [`AcceptBackoff::handle_success`] after the next good one. Resource errors double the pause
//! up to `max`; per-connection errors (ECONNABORTED, EPROTO, EPERM from a firewall) keep it at
//! `min`, since the next connection is likely fine.

use std::io;
use std::time::Duration;

/// Growing pause after accept errors.
#[derive(Debug, Clone)]
pub struct AcceptBackoff {
    min: Duration,
    max: Duration,
    current: Option<Duration>,
    failures: u64,
}

/// First pause after a resource error.
pub const DEFAULT_MIN: Duration = Duration::from_millis(10);
/// Longest pause: long enough to cost nothing, short enough that service resumes promptly once
/// descriptors are free.
pub const DEFAULT_MAX: Duration = Duration::from_secs(1);

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff::new(DEFAULT_MIN, DEFAULT_MAX)
    }
}

/// Whether an accept error means the process or host is out of a resource (as opposed to one
/// connection having gone wrong).
pub fn is_resource_error(e: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

impl AcceptBackoff {
    /// Pauses from `min`, doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        AcceptBackoff {
            min,
            max: max.max(min),
            current: None,
            failures: 0,
        }
    }

    /// `accept` failed; how long to wait before the next one.
    pub fn handle_error(&mut self, resource: bool) -> Duration {
        self.failures += 1;
        if !resource {
            return self.min;
        }
        let next = match self.current {
            None => self.min,
            Some(d) => (d * 2).min(self.max),
        };
        self.current = Some(next);
        next
    }

    /// `accept` succeeded: the next failure starts from `min` again.
    pub fn handle_success(&mut self) {
        self.current = None;
    }

    /// Failures since start.
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_errors_double_up_to_the_cap_and_success_resets() {
        let ms = Duration::from_millis;
        let mut b = AcceptBackoff::new(ms(10), ms(100));
        let got: Vec<_> = (0..6).map(|_| b.handle_error(true)).collect();
        assert_eq!(got, vec![ms(10), ms(20), ms(40), ms(80), ms(100), ms(100)]);
        b.handle_success();
        assert_eq!(b.handle_error(true), ms(10));
        assert_eq!(b.failures(), 7);
    }

    #[test]
    fn per_connection_errors_keep_the_minimum() {
        let ms = Duration::from_millis;
        let mut b = AcceptBackoff::new(ms(10), ms(100));
        b.handle_error(true);
        b.handle_error(true);
        assert_eq!(b.handle_error(false), ms(10));
        // ... without resetting the resource backoff.
        assert_eq!(b.handle_error(true), ms(40));
    }

    #[test]
    fn emfile_and_enfile_are_resource_errors() {
        assert!(is_resource_error(&io::Error::from_raw_os_error(24)));
        assert!(is_resource_error(&io::Error::from_raw_os_error(23)));
        assert!(!is_resource_error(&io::Error::from_raw_os_error(103))); // ECONNABORTED
    }
}
