//! Per-source request rate limit: a token bucket per source address, in a bounded table.
//!
//! Inputs: [`RateLimiter::check`] with `now` and the source. Output: whether the request may be
//! handled. When the table is full, the source idle longest is forgotten (it starts again with
//! a full bucket), so a flood from many addresses costs bounded memory and cannot starve a
//! proxy that keeps sending.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Token buckets by source address.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: u32,
    burst: u32,
    max_sources: usize,
    /// Tokens (scaled by 1000 to stay integral) and the last refill, per source.
    buckets: HashMap<IpAddr, (u64, Instant)>,
}

impl RateLimiter {
    /// `per_sec` requests per second, bursts of `burst`, at most `max_sources` tracked.
    pub fn new(per_sec: u32, burst: u32, max_sources: usize) -> RateLimiter {
        RateLimiter {
            per_sec,
            burst: burst.max(1),
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
        }
    }

    /// True when `src` may send one more request at `now` (and takes its token).
    pub fn check(&mut self, now: Instant, src: IpAddr) -> bool {
        let cap = u64::from(self.burst) * 1000;
        if !self.buckets.contains_key(&src) && self.buckets.len() >= self.max_sources {
            let idle = self
                .buckets
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k);
            if let Some(k) = idle {
                self.buckets.remove(&k);
            }
        }
        let (tokens, last) = self.buckets.entry(src).or_insert((cap, now));
        let elapsed = now
            .saturating_duration_since(*last)
            .min(Duration::from_secs(3600));
        let refill = elapsed.as_millis() as u64 * u64::from(self.per_sec);
        *tokens = (*tokens + refill).min(cap);
        *last = now;
        if *tokens >= 1000 {
            *tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_per_source() {
        let t0 = crate::core::epoch();
        let mut r = RateLimiter::new(10, 3, 2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!((0..3).all(|_| r.check(t0, a)));
        assert!(!r.check(t0, a), "burst spent");
        assert!(r.check(t0, b), "another source has its own bucket");
        assert!(
            r.check(t0 + Duration::from_millis(100), a),
            "one token per 100 ms"
        );
        assert!(!r.check(t0 + Duration::from_millis(100), a));
        // A third source evicts the one idle longest (b); b then starts full again.
        let c: IpAddr = "192.0.2.3".parse().expect("ip");
        assert!(r.check(t0 + Duration::from_millis(150), c));
        assert_eq!(r.buckets.len(), 2);
    }
}
