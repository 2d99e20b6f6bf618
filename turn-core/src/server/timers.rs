//! Timers of the server: allocation, permission and channel lifetimes and the rate-limit
//! sweep, all on one heap.
//!
//! Role: every install or refresh pushes an entry; when an entry fires, the state it names is
//! checked against `now` again, so an entry superseded by a refresh is skipped (the refresh
//! pushed a later one). A spurious or early `handle_timeout` is a no-op.
//! Inputs: [`Server::handle_timeout`] with the current `now`.
//! Outputs: [`Server::poll_timeout`] (earliest deadline, `None` when idle);
//! [`Event::PermissionExpired`], [`Event::ChannelExpired`] and, through
//! `delete_allocation`, [`Event::AllocationDeleted`].

use std::cmp::Reverse;
use std::net::IpAddr;
use std::time::Instant;

use super::{AllocationHandle, DeleteReason, Event, Output, Server};

/// Timers, all on one heap; an entry whose state was refreshed meanwhile is skipped when it
/// fires (the refresh pushed a later entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// Allocation lifetime (RFC 8656 §7).
    Allocation(AllocationHandle),
    /// Permission lifetime (RFC 8656 §9, 300 s).
    Permission(AllocationHandle, IpAddr),
    /// Channel binding lifetime (RFC 8656 §12, 600 s).
    Channel(AllocationHandle, u16),
    /// Forget full rate-limit buckets.
    RateSweep,
}

impl Server {
    /// Earliest timer deadline; re-read after every `handle_*` call. `None` when idle.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Fires due timers: expiring channels, permissions and allocations emit their events.
    /// Calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Allocation(h) => {
                    if self.allocations.get(&h).is_some_and(|a| a.expires <= now) {
                        self.delete_allocation(now, h, DeleteReason::Expired);
                    }
                }
                Timer::Permission(h, ip) => {
                    let Some(a) = self.allocations.get_mut(&h) else {
                        continue;
                    };
                    if a.permissions.get(&ip).is_some_and(|e| *e <= now) {
                        a.permissions.remove(&ip);
                        self.out.push_back(Output::Event(Event::PermissionExpired {
                            allocation: h,
                            client: a.tuple,
                            relay: a.relay,
                            peer: ip,
                        }));
                    }
                }
                Timer::Channel(h, ch) => {
                    let Some(a) = self.allocations.get_mut(&h) else {
                        continue;
                    };
                    if a.channels.get(&ch).is_some_and(|c| c.expires <= now) {
                        if let Some(c) = a.channels.remove(&ch) {
                            a.channel_by_peer.remove(&c.peer);
                            self.out.push_back(Output::Event(Event::ChannelExpired {
                                allocation: h,
                                client: a.tuple,
                                relay: a.relay,
                                peer: c.peer,
                                channel: ch,
                            }));
                        }
                    }
                }
                Timer::RateSweep => {
                    self.sweep_buckets(now);
                    self.sweep_armed = false;
                    if !self.buckets.is_empty() {
                        self.arm_sweep(now);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn timers_expire_permission_channel_and_allocation() {
        let mut f = fx();
        let relay = f.allocate("turnuser", "cisco");
        let start = f.now;
        let p1 = addr("192.0.2.7:5000");
        let p2 = addr("192.0.2.8:5000");
        f.authed(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(p1)]);
        f.authed(
            Method::CHANNEL_BIND,
            &[
                Attribute::ChannelNumber(0x4000),
                Attribute::XorPeerAddress(p2),
            ],
        );
        assert_eq!(
            f.server.poll_timeout(),
            Some(start + Duration::from_secs(60)),
            "rate sweep"
        );
        f.now = start + Duration::from_secs(299);
        f.server.handle_timeout(f.now);
        assert!(events(&f.drain()).is_empty());
        f.now = start + Duration::from_secs(300);
        f.server.handle_timeout(f.now);
        let ev = events(&f.drain());
        assert_eq!(ev.len(), 2, "both permissions (300 s): {ev:?}");
        assert!(ev
            .iter()
            .all(|e| matches!(e, Event::PermissionExpired { .. })));
        // Peer data now dropped even though the channel (600 s) is still bound.
        f.server.handle_peer_data(f.now, relay, p2, b"x");
        assert!(f.drain().is_empty());
        // Refresh at 300 s for 1200 s, so only the channel expires at 600 s.
        f.authed(Method::REFRESH, &[Attribute::Lifetime(1200)]);
        f.now = start + Duration::from_secs(600);
        f.server.handle_timeout(f.now);
        assert!(matches!(
            events(&f.drain()).as_slice(),
            [Event::ChannelExpired {
                channel: 0x4000,
                ..
            }]
        ));
        f.now = start + Duration::from_secs(1499);
        f.server.handle_timeout(f.now);
        assert!(events(&f.drain()).is_empty(), "refreshed at 300 for 1200 s");
        f.now = start + Duration::from_secs(1500);
        f.server.handle_timeout(f.now);
        assert!(matches!(
            events(&f.drain()).as_slice(),
            [Event::AllocationDeleted {
                reason: DeleteReason::Expired,
                ..
            }]
        ));
        assert_eq!(f.server.status().counters.allocations_expired, 1);
        // The rate-limit buckets are idle and full by now, so nothing is left to time.
        f.server.handle_timeout(f.now + Duration::from_secs(120));
        assert_eq!(f.server.poll_timeout(), None);
    }
}
