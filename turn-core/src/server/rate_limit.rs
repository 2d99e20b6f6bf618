//! Per-source token buckets for unauthenticated responses.
//!
//! Role: anyone can make the server answer without credentials (401 challenges, Binding,
//! errors before authentication), so those responses are limited per source IP with a token
//! bucket, and the table of buckets is bounded and swept.
//! Inputs: `take_token(now, ip)` before each response without MESSAGE-INTEGRITY;
//! `Timer::RateSweep` every [`RATE_SWEEP_INTERVAL`].
//! Outputs: whether to send; drops are counted in `ServerCounters::rate_limited` by the caller.

use std::cmp::Reverse;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{Server, Timer};

/// How often idle rate-limit buckets are swept.
pub(super) const RATE_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    /// Thousandths of a token, so refill needs no floats.
    milli_tokens: u64,
    last: Instant,
}

impl Server {
    /// Takes one token from `ip`'s bucket; false when empty or the table is full.
    pub(super) fn take_token(&mut self, now: Instant, ip: IpAddr) -> bool {
        let Some(limit) = self.config.unauthenticated_rate else {
            return true;
        };
        let cap = u64::from(limit.burst) * 1000;
        if !self.buckets.contains_key(&ip) {
            if self.buckets.len() >= self.config.max_rate_sources {
                self.sweep_buckets(now);
                if self.buckets.len() >= self.config.max_rate_sources {
                    return false;
                }
            }
            self.buckets.insert(
                ip,
                Bucket {
                    milli_tokens: cap,
                    last: now,
                },
            );
            if !self.sweep_armed {
                self.arm_sweep(now);
            }
        }
        let Some(b) = self.buckets.get_mut(&ip) else {
            return false;
        };
        let elapsed = now.saturating_duration_since(b.last).as_millis() as u64;
        b.milli_tokens = (b.milli_tokens + elapsed * u64::from(limit.per_second)).min(cap);
        b.last = now;
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }

    pub(super) fn arm_sweep(&mut self, now: Instant) {
        self.sweep_armed = true;
        self.timers
            .push(Reverse((now + RATE_SWEEP_INTERVAL, Timer::RateSweep)));
    }

    /// Forgets buckets that have refilled completely: they behave like new ones.
    pub(super) fn sweep_buckets(&mut self, now: Instant) {
        let Some(limit) = self.config.unauthenticated_rate else {
            self.buckets.clear();
            return;
        };
        let cap = u64::from(limit.burst) * 1000;
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last).as_millis() as u64;
            b.milli_tokens + elapsed * u64::from(limit.per_second) < cap
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn unauthenticated_responses_are_rate_limited_per_source() {
        let mut cfg = config();
        cfg.unauthenticated_rate = Some(RateLimit {
            burst: 3,
            per_second: 1,
        });
        let mut f = fx_with(cfg, PortRangeAllocator::DEFAULT_PORTS);
        let binding = |f: &mut Fx, from| {
            let txid = f.next_txid();
            let b = build(Class::Request, Method::BINDING, txid, None, &[]);
            transmits(&f.send_from(from, Transport::Udp, &b)).len()
        };
        let sent: usize = (0..5).map(|_| binding(&mut f, client())).sum();
        assert_eq!(sent, 3);
        assert_eq!(f.server.status().counters.rate_limited, 2);
        assert_eq!(
            binding(&mut f, addr("203.0.113.99:1")),
            1,
            "other sources unaffected"
        );
        f.now += Duration::from_millis(1000);
        assert_eq!(binding(&mut f, client()), 1, "refilled one token");
        assert_eq!(binding(&mut f, client()), 0);
    }
}
