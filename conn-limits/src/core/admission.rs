//! Connection admission: how many connections one key (a client IP address, a local uid) and
//! everyone together may hold, and when a connection that does nothing useful is cut.
//!
//! Role: the policy half of every TCP/TLS/WebSocket listener and Unix control socket. The shell
//! accepts a connection, asks [`Admission::handle_accept`] whether it may stay, and closes it at
//! once when it is [`Refused`]. An admitted connection is *pending* until the shell reports
//! [`Admission::handle_progress`] (a complete SIP message, a TURN allocation, a control request):
//! a pending connection is expired after `pending_timeout`, so idle connections cannot hold the
//! slots that real clients need. After progress, `idle_timeout` (if any) applies from the last
//! progress.
//!
//! Inputs: `handle_accept(now, key)`, `handle_progress(now, id)`, `handle_closed(id)`,
//! `handle_timeout(now)`. Outputs: [`Admission::poll_output`] yields [`Expired`] connections the
//! shell must close; drain it after every `handle_timeout`. [`Admission::poll_timeout`] is the
//! next deadline. Counts fall when the shell reports the close, not at expiry: the socket is
//! held until then.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Limits for one listener set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Connections one key (client address, local uid) may hold at once.
    pub max_per_key: usize,
    /// Connections all keys together may hold at once.
    pub max_total: usize,
    /// A connection without progress this long after it was admitted is expired (`None`: never).
    pub pending_timeout: Option<Duration>,
    /// A connection without progress this long after its last progress is expired (`None`: never).
    pub idle_timeout: Option<Duration>,
}

/// Why an [`AdmissionConfig`] cannot be used; the daemons map each to their field name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    /// `max_per_key` is 0: nobody could connect.
    #[error("the per-address limit must be at least 1")]
    ZeroPerKey,
    /// `max_total` is 0: nobody could connect.
    #[error("the global limit must be at least 1")]
    ZeroTotal,
    /// `max_per_key` above `max_total` means nothing; it is almost certainly a mistake.
    #[error("the per-address limit is larger than the global limit")]
    PerKeyAboveTotal,
    /// A zero timeout would cut every connection at once (leave it out or use 0 for "off").
    #[error("a timeout of zero would close every connection at once")]
    ZeroTimeout,
}

impl AdmissionConfig {
    /// Checks the limits for consistency (called at start, so config errors name their field).
    pub fn check(&self) -> Result<(), ConfigProblem> {
        if self.max_per_key == 0 {
            return Err(ConfigProblem::ZeroPerKey);
        }
        if self.max_total == 0 {
            return Err(ConfigProblem::ZeroTotal);
        }
        if self.max_per_key > self.max_total {
            return Err(ConfigProblem::PerKeyAboveTotal);
        }
        if self.pending_timeout.is_some_and(|d| d.is_zero())
            || self.idle_timeout.is_some_and(|d| d.is_zero())
        {
            return Err(ConfigProblem::ZeroTimeout);
        }
        Ok(())
    }
}

/// One admitted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refused {
    /// Its key already holds `max_per_key` connections.
    PerKey,
    /// All keys together hold `max_total` connections.
    Total,
}

impl Refused {
    /// Stable name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Refused::PerKey => "per_address_limit",
            Refused::Total => "global_limit",
        }
    }
}

/// Why a connection was expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpiryReason {
    /// No progress since it was admitted within `pending_timeout`.
    Pending,
    /// No progress since the last one within `idle_timeout`.
    Idle,
}

impl ExpiryReason {
    /// Stable name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ExpiryReason::Pending => "no_request_in_time",
            ExpiryReason::Idle => "idle",
        }
    }
}

/// A connection the shell must close now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// The connection.
    pub id: ConnId,
    /// Why.
    pub reason: ExpiryReason,
}

/// Running totals since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionCounters {
    /// Connections admitted.
    pub admitted: u64,
    /// Connections refused by the per-key limit.
    pub refused_per_key: u64,
    /// Connections refused by the global limit.
    pub refused_total: u64,
    /// Connections expired before their first progress.
    pub expired_pending: u64,
    /// Connections expired after going idle.
    pub expired_idle: u64,
}

#[derive(Debug)]
struct Entry<K> {
    key: K,
    deadline: Option<Instant>,
    progressed: bool,
    /// Handed to the shell to close: no new deadline, no second expiry.
    expired: bool,
}

/// Per-key and global connection counts with pending and idle deadlines.
#[derive(Debug)]
pub struct Admission<K> {
    cfg: AdmissionConfig,
    per_key: HashMap<K, usize>,
    conns: HashMap<ConnId, Entry<K>>,
    deadlines: BTreeSet<(Instant, ConnId)>,
    next_id: u64,
    out: VecDeque<Expired>,
    counters: AdmissionCounters,
}

impl<K: Copy + Eq + Hash> Admission<K> {
    /// No connections yet. `cfg` should have passed [`AdmissionConfig::check`].
    pub fn new(cfg: AdmissionConfig) -> Self {
        Admission {
            cfg,
            per_key: HashMap::new(),
            conns: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_id: 0,
            out: VecDeque::new(),
            counters: AdmissionCounters::default(),
        }
    }

    /// A connection from `key` was accepted: admit it (pending) or say why not. The global limit
    /// is checked first, so a refusal names the limit that actually binds for everyone.
    pub fn handle_accept(&mut self, now: Instant, key: K) -> Result<ConnId, Refused> {
        if self.conns.len() >= self.cfg.max_total {
            self.counters.refused_total += 1;
            return Err(Refused::Total);
        }
        let held = self.per_key.get(&key).copied().unwrap_or(0);
        if held >= self.cfg.max_per_key {
            self.counters.refused_per_key += 1;
            return Err(Refused::PerKey);
        }
        self.next_id += 1;
        let id = ConnId(self.next_id);
        let deadline = self.cfg.pending_timeout.map(|t| now + t);
        if let Some(d) = deadline {
            self.deadlines.insert((d, id));
        }
        self.conns.insert(
            id,
            Entry {
                key,
                deadline,
                progressed: false,
                expired: false,
            },
        );
        *self.per_key.entry(key).or_insert(0) += 1;
        self.counters.admitted += 1;
        Ok(id)
    }

    /// The connection did something useful: it is no longer pending, and its idle deadline (if
    /// any) restarts. Unknown or already expired ids are ignored (the close may be in flight).
    pub fn handle_progress(&mut self, now: Instant, id: ConnId) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if e.expired {
            // The shell is closing it already.
            return;
        }
        if let Some(d) = e.deadline.take() {
            self.deadlines.remove(&(d, id));
        }
        e.progressed = true;
        e.deadline = self.cfg.idle_timeout.map(|t| now + t);
        if let Some(d) = e.deadline {
            self.deadlines.insert((d, id));
        }
    }

    /// The connection is gone: its slots are free again. Unknown ids are ignored.
    pub fn handle_closed(&mut self, id: ConnId) {
        let Some(e) = self.conns.remove(&id) else {
            return;
        };
        if let Some(d) = e.deadline {
            self.deadlines.remove(&(d, id));
        }
        if let Some(n) = self.per_key.get_mut(&e.key) {
            *n -= 1;
            if *n == 0 {
                self.per_key.remove(&e.key);
            }
        }
    }

    /// Expires every connection whose deadline is at or before `now`. A spurious call is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(d, id)) = self.deadlines.first() {
            if d > now {
                break;
            }
            self.deadlines.remove(&(d, id));
            let Some(e) = self.conns.get_mut(&id) else {
                continue;
            };
            e.deadline = None;
            e.expired = true;
            let reason = if e.progressed {
                self.counters.expired_idle += 1;
                ExpiryReason::Idle
            } else {
                self.counters.expired_pending += 1;
                ExpiryReason::Pending
            };
            self.out.push_back(Expired { id, reason });
        }
    }

    /// Connections to close now. Drain after every [`Admission::handle_timeout`].
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Expired> {
        self.out.pop_front()
    }

    /// The next deadline, if any connection has one.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.conns.len()
    }

    /// Connections `key` holds now.
    pub fn open_for(&self, key: &K) -> usize {
        self.per_key.get(key).copied().unwrap_or(0)
    }

    /// Totals since start.
    pub fn counters(&self) -> AdmissionCounters {
        self.counters
    }

    /// The limits in force.
    pub fn config(&self) -> &AdmissionConfig {
        &self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn epoch() -> Instant {
        Instant::now()
    }
    use std::net::{IpAddr, Ipv4Addr};

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn cfg() -> AdmissionConfig {
        AdmissionConfig {
            max_per_key: 2,
            max_total: 3,
            pending_timeout: Some(Duration::from_secs(10)),
            idle_timeout: None,
        }
    }

    fn drain(a: &mut Admission<IpAddr>) -> Vec<Expired> {
        std::iter::from_fn(|| a.poll_output()).collect()
    }

    #[test]
    fn per_key_limit_refuses_one_address_but_not_another() {
        let t0 = epoch();
        let mut a = Admission::new(cfg());
        assert!(a.handle_accept(t0, A).is_ok());
        assert!(a.handle_accept(t0, A).is_ok());
        assert_eq!(a.handle_accept(t0, A), Err(Refused::PerKey));
        assert!(
            a.handle_accept(t0, B).is_ok(),
            "another address still gets in"
        );
        assert_eq!(a.open(), 3);
        assert_eq!(a.open_for(&A), 2);
        assert_eq!(a.counters().refused_per_key, 1);
    }

    #[test]
    fn global_limit_refuses_everyone_until_a_slot_frees() {
        let t0 = epoch();
        let mut a = Admission::new(cfg());
        let first = a.handle_accept(t0, A).expect("admitted");
        a.handle_accept(t0, A).expect("admitted");
        a.handle_accept(t0, B).expect("admitted");
        assert_eq!(a.handle_accept(t0, B), Err(Refused::Total));
        a.handle_closed(first);
        assert_eq!(a.open_for(&A), 1);
        assert!(a.handle_accept(t0, B).is_ok());
        assert_eq!(a.counters().refused_total, 1);
        // Closing an unknown or already closed id changes nothing.
        a.handle_closed(first);
        a.handle_closed(ConnId(999));
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn pending_connection_expires_unless_it_progresses() {
        let t0 = epoch();
        let mut a = Admission::new(cfg());
        let idle = a.handle_accept(t0, A).expect("admitted");
        let busy = a
            .handle_accept(t0 + Duration::from_secs(1), A)
            .expect("admitted");
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        a.handle_progress(t0 + Duration::from_secs(5), busy);
        // A spurious early timeout does nothing.
        a.handle_timeout(t0 + Duration::from_secs(9));
        assert!(drain(&mut a).is_empty());
        a.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(
            drain(&mut a),
            vec![Expired {
                id: idle,
                reason: ExpiryReason::Pending
            }]
        );
        // No idle timeout configured: the busy one never expires.
        assert_eq!(a.poll_timeout(), None);
        // Counts fall only when the shell reports the close.
        assert_eq!(a.open_for(&A), 2);
        a.handle_closed(idle);
        assert_eq!(a.open_for(&A), 1);
        assert_eq!(a.counters().expired_pending, 1);
    }

    #[test]
    fn late_progress_does_not_revive_an_expired_connection() {
        let t0 = epoch();
        let mut a = Admission::new(AdmissionConfig {
            idle_timeout: Some(Duration::from_secs(30)),
            ..cfg()
        });
        let id = a.handle_accept(t0, A).expect("admitted");
        a.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(drain(&mut a).len(), 1);
        a.handle_progress(t0 + Duration::from_secs(11), id);
        assert_eq!(
            a.poll_timeout(),
            None,
            "no new deadline for a closing connection"
        );
        a.handle_timeout(t0 + Duration::from_secs(100));
        assert!(drain(&mut a).is_empty());
    }

    #[test]
    fn idle_timeout_restarts_with_each_progress() {
        let t0 = epoch();
        let mut a = Admission::new(AdmissionConfig {
            idle_timeout: Some(Duration::from_secs(30)),
            ..cfg()
        });
        let id = a.handle_accept(t0, A).expect("admitted");
        a.handle_progress(t0 + Duration::from_secs(1), id);
        a.handle_progress(t0 + Duration::from_secs(20), id);
        a.handle_timeout(t0 + Duration::from_secs(49));
        assert!(drain(&mut a).is_empty(), "restarted at 20 s");
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(50)));
        a.handle_timeout(t0 + Duration::from_secs(50));
        assert_eq!(
            drain(&mut a),
            vec![Expired {
                id,
                reason: ExpiryReason::Idle
            }]
        );
        assert_eq!(a.counters().expired_idle, 1);
    }

    #[test]
    fn no_pending_timeout_means_no_deadline() {
        let t0 = epoch();
        let mut a = Admission::new(AdmissionConfig {
            pending_timeout: None,
            ..cfg()
        });
        a.handle_accept(t0, A).expect("admitted");
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn config_check_names_each_problem() {
        let ok = cfg();
        assert_eq!(ok.check(), Ok(()));
        for (bad, problem) in [
            (
                AdmissionConfig {
                    max_per_key: 0,
                    ..ok
                },
                ConfigProblem::ZeroPerKey,
            ),
            (
                AdmissionConfig { max_total: 0, ..ok },
                ConfigProblem::ZeroTotal,
            ),
            (
                AdmissionConfig {
                    max_per_key: 4,
                    ..ok
                },
                ConfigProblem::PerKeyAboveTotal,
            ),
            (
                AdmissionConfig {
                    idle_timeout: Some(Duration::ZERO),
                    ..ok
                },
                ConfigProblem::ZeroTimeout,
            ),
        ] {
            assert_eq!(bad.check(), Err(problem));
        }
    }
}
