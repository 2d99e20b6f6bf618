//! Operator view of the server: counters, a status summary and the allocation listing.
//!
//! Role: the read-only snapshots a CLI or control socket shows (Expressway's "TURN server
//! status"), and the server-wide counters every other module increments.
//! Inputs: the server's state; `now` for the time left on each allocation.
//! Outputs: [`Server::status`] ([`Status`]) and [`Server::allocations`] ([`AllocationInfo`] per
//! allocation, sorted by handle).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{AllocationCounters, AllocationHandle, FiveTuple, Server, Transport};

/// Server-wide counters for operators. Error codes sent are in `errors_sent`; note that a
/// wrong password is answered with 401 (RFC 8489 §9.2.4), where older servers such as
/// Expressway answer 431 Integrity Check Failure: `bad_integrity` counts exactly that case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// STUN requests received.
    pub requests: u64,
    /// Inputs that were not valid STUN or ChannelData.
    pub malformed: u64,
    /// Unauthenticated responses dropped by the per-source rate limit.
    pub rate_limited: u64,
    /// 401 challenges to requests without MESSAGE-INTEGRITY (the normal first round trip).
    pub challenges: u64,
    /// 401 because USERNAME is not known.
    pub unknown_user: u64,
    /// 401 because REALM is not ours.
    pub wrong_realm: u64,
    /// 401 because a REST credential's timestamp has passed.
    pub expired_credentials: u64,
    /// 401 because MESSAGE-INTEGRITY did not verify: wrong password ("431" on Expressway).
    pub bad_integrity: u64,
    /// 438 Stale Nonce sent.
    pub stale_nonce: u64,
    /// Error responses sent, by code.
    pub errors_sent: BTreeMap<u16, u64>,
    /// Data for a 5-tuple or relay address without an allocation, dropped.
    pub dropped_no_allocation: u64,
    /// Data to or from a peer without a permission, dropped.
    pub dropped_no_permission: u64,
    /// ChannelData on an unbound channel, dropped.
    pub dropped_no_channel: u64,
    /// Allocations created since start.
    pub allocations_created: u64,
    /// Allocations that ended by expiry.
    pub allocations_expired: u64,
    /// Traffic of allocations already deleted (live ones are summed in [`Status`]).
    pub finished_traffic: AllocationCounters,
}

/// Snapshot for a status view such as Expressway's "TURN server status".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Active allocations ("active TURN relays").
    pub allocations: usize,
    /// Distinct client IP addresses with an allocation ("active TURN clients").
    pub clients: usize,
    /// Allocations whose client is connected via UDP.
    pub relays_udp: usize,
    /// Allocations whose client is connected via TCP.
    pub relays_tcp: usize,
    /// Allocations whose client is connected via TLS.
    pub relays_tls: usize,
    /// Installed permissions.
    pub permissions: usize,
    /// Bound channels.
    pub channels: usize,
    /// Traffic of live allocations plus finished ones.
    pub traffic: AllocationCounters,
    /// Server-wide counters.
    pub counters: ServerCounters,
}

/// One allocation in the status listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationInfo {
    /// Allocation id.
    pub handle: AllocationHandle,
    /// Client 5-tuple.
    pub client: FiveTuple,
    /// Relay transport address.
    pub relay: SocketAddr,
    /// Authenticated username.
    pub username: String,
    /// Time left before expiry.
    pub expires_in: Duration,
    /// Peer IPs with a permission.
    pub permissions: Vec<IpAddr>,
    /// Bound channels and their peers.
    pub channels: Vec<(u16, SocketAddr)>,
    /// Traffic so far.
    pub counters: AllocationCounters,
}

impl Server {
    /// Counts for a status view.
    pub fn status(&self) -> Status {
        let mut s = Status {
            allocations: self.allocations.len(),
            clients: 0,
            relays_udp: 0,
            relays_tcp: 0,
            relays_tls: 0,
            permissions: 0,
            channels: 0,
            traffic: self.counters.finished_traffic,
            counters: self.counters.clone(),
        };
        let mut clients = HashSet::new();
        for a in self.allocations.values() {
            clients.insert(a.tuple.client.ip());
            match a.tuple.transport {
                Transport::Udp => s.relays_udp += 1,
                Transport::Tcp => s.relays_tcp += 1,
                Transport::Tls => s.relays_tls += 1,
            }
            s.permissions += a.permissions.len();
            s.channels += a.channels.len();
            s.traffic.add(&a.counters);
        }
        s.clients = clients.len();
        s
    }

    /// Every allocation, sorted by handle, for a detailed status view.
    pub fn allocations(&self, now: Instant) -> Vec<AllocationInfo> {
        let mut v: Vec<_> = self
            .allocations
            .iter()
            .map(|(h, a)| {
                let mut permissions: Vec<_> = a.permissions.keys().copied().collect();
                permissions.sort();
                let mut channels: Vec<_> = a.channels.iter().map(|(c, ch)| (*c, ch.peer)).collect();
                channels.sort();
                AllocationInfo {
                    handle: *h,
                    client: a.tuple,
                    relay: a.relay,
                    username: a.username.clone(),
                    expires_in: a.expires.saturating_duration_since(now),
                    permissions,
                    channels,
                    counters: a.counters,
                }
            })
            .collect();
        v.sort_by_key(|i| i.handle);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn status_and_allocation_listing() {
        let mut f = fx();
        let relay = f.allocate("turnuser", "cisco");
        f.authed(Method::CREATE_PERMISSION, &[peer_perm("192.0.2.7")]);
        f.server.record_offloaded(
            AllocationHandle(1),
            AllocationCounters {
                to_peer_packets: 10,
                to_peer_bytes: 1600,
                ..AllocationCounters::default()
            },
        );
        let list = f.server.allocations(f.now + Duration::from_secs(100));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].relay, relay);
        assert_eq!(list[0].username, "turnuser");
        assert_eq!(list[0].expires_in, Duration::from_secs(500));
        assert_eq!(
            list[0].permissions,
            vec!["192.0.2.7".parse::<IpAddr>().expect("ip")]
        );
        let st = f.server.status();
        assert_eq!(
            (st.allocations, st.clients, st.relays_udp, st.permissions),
            (1, 1, 1, 1)
        );
        assert_eq!(st.traffic.to_peer_bytes, 1600);
        assert!(f
            .server
            .delete_allocation(f.now, AllocationHandle(1), DeleteReason::Shell));
        assert_eq!(
            f.server.status().traffic.to_peer_bytes,
            1600,
            "kept after delete"
        );
    }
}
