//! Bounded, time-limited cache of route lookups (sans-IO).
//!
//! Role: `flow_add` needs the egress interface and next hop of a flow's destination. Asking the
//! kernel (an RTM_GETROUTE round trip; it was an `ip route get` process, several milliseconds)
//! for each of a call's four flows is wasted work when a contact center sends nearly every call
//! to the same few border elements. So answers are kept for a short time (a route change reaches new flows within `ttl`; flows that
//! exist keep their egress, as before) and the cache never holds more than `capacity`
//! destinations, so a scan of many addresses cannot grow it without bound.
//!
//! Inputs: [`RouteCache::get`] and [`RouteCache::insert`], each with the shell's `now`.
//! Outputs: the cached value, or `None` when absent or older than `ttl`. No clock of its own.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// Cached answers keyed by destination.
#[derive(Debug)]
pub struct RouteCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<K, (V, Instant)>,
}

impl<K: Eq + Hash + Copy, V: Clone> RouteCache<K, V> {
    /// A cache whose entries live `ttl` and that holds at most `capacity` (at least 1) of them.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: HashMap::new(),
        }
    }

    /// The answer for `key` if it is younger than `ttl`; an expired one is dropped.
    pub fn get(&mut self, key: K, now: Instant) -> Option<V> {
        match self.entries.get(&key) {
            Some((v, at)) if now.saturating_duration_since(*at) < self.ttl => Some(v.clone()),
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remember `value` for `key`. When full, expired entries go first, then the oldest one.
    pub fn insert(&mut self, key: K, value: V, now: Instant) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= self.capacity {
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| *k)
                {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(key, (value, now));
    }

    /// Forget everything (an interface went away, say).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Entries held, expired ones included until they are looked up or pushed out.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any fixed instant will do; the tests step from it.
    #[allow(clippy::disallowed_methods)]
    fn epoch() -> Instant {
        Instant::now()
    }

    #[test]
    fn answers_until_the_ttl_then_forgets() {
        let t0 = epoch();
        let mut c = RouteCache::new(Duration::from_secs(10), 8);
        assert_eq!(c.get(1u32, t0), None);
        c.insert(1, "fb0", t0);
        assert_eq!(c.get(1, t0 + Duration::from_secs(9)), Some("fb0"));
        assert_eq!(c.get(1, t0 + Duration::from_secs(10)), None);
        assert!(c.is_empty(), "an expired entry is dropped on lookup");
    }

    #[test]
    fn a_new_answer_replaces_the_old_and_restarts_its_ttl() {
        let t0 = epoch();
        let mut c = RouteCache::new(Duration::from_secs(10), 8);
        c.insert(1u32, "fa0", t0);
        c.insert(1, "fb0", t0 + Duration::from_secs(8));
        assert_eq!(c.get(1, t0 + Duration::from_secs(15)), Some("fb0"));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn never_holds_more_than_capacity_expired_first_then_oldest() {
        let t0 = epoch();
        let s = Duration::from_secs;
        let mut c = RouteCache::new(s(10), 3);
        c.insert(1u32, 'a', t0);
        c.insert(2, 'b', t0 + s(5));
        c.insert(3, 'c', t0 + s(6));
        // Key 1 has expired at t0+11: it goes, the two live ones stay.
        c.insert(4, 'd', t0 + s(11));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(2, t0 + s(11)), Some('b'));
        assert_eq!(c.get(1, t0 + s(11)), None);
        // Full of live entries: the oldest (2) goes.
        c.insert(5, 'e', t0 + s(12));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(2, t0 + s(12)), None);
        for k in [3, 4, 5] {
            assert!(c.get(k, t0 + s(12)).is_some(), "key {k}");
        }
        // Re-inserting a held key never evicts another.
        c.insert(5, 'f', t0 + s(12));
        assert_eq!(c.len(), 3);
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn capacity_zero_still_caches_one() {
        let t0 = epoch();
        let mut c = RouteCache::new(Duration::from_secs(1), 0);
        c.insert(1u32, (), t0);
        assert_eq!(c.get(1, t0), Some(()));
    }
}
