//! Allocations: create (Allocate), refresh and delete, with quotas (RFC 8656 §7).
//!
//! Role: own the allocation table and its indexes (by client 5-tuple, by relay address, per
//! user for quotas), pick relay addresses through the injected
//! [`RelayAllocator`](super::RelayAllocator), and end allocations by expiry, client request,
//! connection close or shell request, emitting every channel and permission expiry first.
//! Inputs: authenticated Allocate / Refresh requests, [`Server::handle_connection_closed`],
//! [`Server::delete_allocation`], [`Server::record_offloaded`] (kernel-relayed traffic).
//! Outputs: responses, [`Event::AllocationCreated`] / [`Event::AllocationDeleted`] (and the
//! expiry events of what the allocation held), the allocation's lifetime timer.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::debug;

use super::{
    canonical, AllocationHandle, Auth, Channel, Event, FiveTuple, Output, Reply, Server, Timer,
    PROTO_UDP,
};
use crate::stun::{attr, Attribute, Family, Message, TransactionId};

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// Its lifetime ran out without a Refresh.
    Expired,
    /// The client sent Refresh with LIFETIME 0.
    ClientDeleted,
    /// The client's TCP/TLS connection closed.
    ConnectionClosed,
    /// The shell asked (for example the relay socket could not be bound).
    Shell,
}

/// Per-allocation traffic counters, including what a shell reports for offloaded relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocationCounters {
    /// Packets relayed client to peer.
    pub to_peer_packets: u64,
    /// Payload bytes relayed client to peer.
    pub to_peer_bytes: u64,
    /// Packets relayed peer to client.
    pub from_peer_packets: u64,
    /// Payload bytes relayed peer to client.
    pub from_peer_bytes: u64,
    /// Peer packets dropped for lack of a permission.
    pub dropped_no_permission: u64,
}

impl AllocationCounters {
    pub(super) fn add(&mut self, o: &AllocationCounters) {
        self.to_peer_packets += o.to_peer_packets;
        self.to_peer_bytes += o.to_peer_bytes;
        self.from_peer_packets += o.from_peer_packets;
        self.from_peer_bytes += o.from_peer_bytes;
        self.dropped_no_permission += o.dropped_no_permission;
    }
}

#[derive(Debug)]
pub(super) struct Allocation {
    pub(super) tuple: FiveTuple,
    pub(super) relay: SocketAddr,
    pub(super) username: String,
    pub(super) quota_user: String,
    pub(super) expires: Instant,
    pub(super) created_txid: TransactionId,
    pub(super) permissions: HashMap<IpAddr, Instant>,
    pub(super) channels: HashMap<u16, Channel>,
    pub(super) channel_by_peer: HashMap<SocketAddr, u16>,
    pub(super) counters: AllocationCounters,
}

impl Allocation {
    pub(super) fn has_permission(&self, now: Instant, ip: IpAddr) -> bool {
        self.permissions.get(&ip).is_some_and(|e| *e > now)
    }
}

impl Server {
    /// The client's TCP/TLS connection for `tuple` closed: its allocation ends (RFC 8656 §3.1).
    pub fn handle_connection_closed(&mut self, now: Instant, tuple: FiveTuple) {
        if let Some(h) = self.by_tuple.get(&tuple).copied() {
            self.delete_allocation(now, h, DeleteReason::ConnectionClosed);
        }
    }

    /// Ends an allocation at the shell's request (for example its relay socket failed).
    /// Returns whether it existed.
    pub fn delete_allocation(
        &mut self,
        _now: Instant,
        handle: AllocationHandle,
        reason: DeleteReason,
    ) -> bool {
        let Some(a) = self.allocations.remove(&handle) else {
            return false;
        };
        self.by_tuple.remove(&a.tuple);
        self.by_relay.remove(&a.relay);
        self.relays.release(a.relay);
        if let Some(n) = self.per_user.get_mut(&a.quota_user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&a.quota_user);
            }
        }
        let mut channels: Vec<_> = a.channels.iter().map(|(c, ch)| (*c, ch.peer)).collect();
        channels.sort();
        for (channel, peer) in channels {
            self.out.push_back(Output::Event(Event::ChannelExpired {
                allocation: handle,
                client: a.tuple,
                relay: a.relay,
                peer,
                channel,
            }));
        }
        let mut peers: Vec<_> = a.permissions.keys().copied().collect();
        peers.sort();
        for peer in peers {
            self.out.push_back(Output::Event(Event::PermissionExpired {
                allocation: handle,
                client: a.tuple,
                relay: a.relay,
                peer,
            }));
        }
        if reason == DeleteReason::Expired {
            self.counters.allocations_expired += 1;
        }
        self.counters.finished_traffic.add(&a.counters);
        debug!(allocation = handle.0, ?reason, "allocation deleted");
        self.out.push_back(Output::Event(Event::AllocationDeleted {
            allocation: handle,
            client: a.tuple,
            relay: a.relay,
            reason,
            counters: a.counters,
        }));
        true
    }

    /// Adds traffic the kernel relayed (offloaded channels) to an allocation's counters.
    pub fn record_offloaded(&mut self, handle: AllocationHandle, delta: AllocationCounters) {
        if let Some(a) = self.allocations.get_mut(&handle) {
            a.counters.add(&delta);
        }
    }

    /// RFC 8656 §7.2, steps in order.
    pub(super) fn handle_allocate(
        &mut self,
        now: Instant,
        reply: &Reply,
        msg: &Message<'_>,
        auth: Auth,
    ) {
        if let Some(a) = self
            .by_tuple
            .get(&reply.tuple)
            .and_then(|h| self.allocations.get(h))
        {
            // A retransmitted Allocate gets the original success again (§7.2 step 2).
            if a.created_txid == reply.txid && a.username == auth.username {
                let secs = a.expires.saturating_duration_since(now).as_secs();
                let attrs = [
                    Attribute::XorRelayedAddress(a.relay),
                    Attribute::Lifetime(u32::try_from(secs).unwrap_or(u32::MAX)),
                    Attribute::XorMappedAddress(reply.tuple.client),
                ];
                return self.send_success(now, reply, &attrs);
            }
            return self.send_error(now, reply, 437, &[]);
        }
        match msg.requested_transport() {
            Ok(Some(PROTO_UDP)) => {}
            Ok(Some(_)) => return self.send_error(now, reply, 442, &[]),
            Ok(None) | Err(_) => return self.send_error(now, reply, 400, &[]),
        }
        let (Ok(even), Ok(family)) = (
            msg.attribute(attr::EVEN_PORT),
            msg.requested_address_family(),
        ) else {
            return self.send_error(now, reply, 400, &[]);
        };
        let even_r = match even {
            Some(Attribute::EvenPort(r)) => Some(r),
            _ => None,
        };
        if msg.get(attr::RESERVATION_TOKEN).is_some() {
            if even_r.is_some() || family.is_some() {
                return self.send_error(now, reply, 400, &[]);
            }
            // This server never hands out reservation tokens, so none is valid (§7.2 step 5).
            return self.send_error(now, reply, 508, &[]);
        }
        if even_r == Some(true) {
            // Reserving the next-higher port is not supported, so R=1 cannot be satisfied
            // (§7.2 step 6).
            return self.send_error(now, reply, 508, &[]);
        }
        let family = family.unwrap_or(Family::V4);
        if !self.relays.supports(family) {
            return self.send_error(now, reply, 440, &[]);
        }
        let over_total = self
            .config
            .total_quota
            .is_some_and(|q| self.allocations.len() >= q);
        let over_user = self
            .config
            .user_quota
            .is_some_and(|q| self.per_user.get(&auth.quota_user).copied().unwrap_or(0) >= q);
        if over_total || over_user {
            return self.send_error(now, reply, 486, &[]);
        }
        let Some(relay) = self
            .relays
            .allocate(family, even_r.is_some(), self.rng.as_mut())
        else {
            return self.send_error(now, reply, 508, &[]);
        };
        let lifetime = self.desired_lifetime(msg.lifetime().ok().flatten());
        let handle = self.new_handle();
        let expires = now + lifetime;
        self.allocations.insert(
            handle,
            Allocation {
                tuple: reply.tuple,
                relay,
                username: auth.username.clone(),
                quota_user: auth.quota_user.clone(),
                expires,
                created_txid: reply.txid,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_by_peer: HashMap::new(),
                counters: AllocationCounters::default(),
            },
        );
        self.by_tuple.insert(reply.tuple, handle);
        self.by_relay.insert(relay, handle);
        *self.per_user.entry(auth.quota_user).or_insert(0) += 1;
        self.own_ips.insert(canonical(relay.ip()));
        self.timers
            .push(Reverse((expires, Timer::Allocation(handle))));
        self.counters.allocations_created += 1;
        debug!(
            allocation = handle.0,
            lifetime = lifetime.as_secs(),
            "allocation created"
        );
        self.out.push_back(Output::Event(Event::AllocationCreated {
            allocation: handle,
            client: reply.tuple,
            relay,
            username: auth.username,
            lifetime,
        }));
        let attrs = [
            Attribute::XorRelayedAddress(relay),
            Attribute::Lifetime(lifetime.as_secs() as u32),
            Attribute::XorMappedAddress(reply.tuple.client),
        ];
        self.send_success(now, reply, &attrs);
    }

    /// RFC 8656 §7.3 "desired lifetime": min(requested, max), raised to the default.
    fn desired_lifetime(&self, requested: Option<u32>) -> Duration {
        match requested {
            None => self.config.default_lifetime,
            Some(secs) => Duration::from_secs(u64::from(secs))
                .min(self.config.max_lifetime)
                .max(self.config.default_lifetime),
        }
    }

    fn new_handle(&mut self) -> AllocationHandle {
        loop {
            let h = AllocationHandle(self.next_handle);
            self.next_handle = self.next_handle.wrapping_add(1).max(1);
            if !self.allocations.contains_key(&h) {
                return h;
            }
        }
    }

    /// RFC 8656 §7.3.
    pub(super) fn handle_refresh(
        &mut self,
        now: Instant,
        reply: &Reply,
        msg: &Message<'_>,
        handle: AllocationHandle,
    ) {
        let Ok(requested) = msg.lifetime() else {
            return self.send_error(now, reply, 400, &[]);
        };
        let Ok(family) = msg.requested_address_family() else {
            return self.send_error(now, reply, 400, &[]);
        };
        let Some(relay) = self.allocations.get(&handle).map(|a| a.relay) else {
            return self.send_error(now, reply, 437, &[]);
        };
        if family.is_some_and(|f| f != Family::of(relay.ip())) {
            return self.send_error(now, reply, 443, &[]);
        }
        if requested == Some(0) {
            self.delete_allocation(now, handle, DeleteReason::ClientDeleted);
            return self.send_success(now, reply, &[Attribute::Lifetime(0)]);
        }
        let lifetime = self.desired_lifetime(requested);
        let expires = now + lifetime;
        if let Some(a) = self.allocations.get_mut(&handle) {
            a.expires = expires;
        }
        self.timers
            .push(Reverse((expires, Timer::Allocation(handle))));
        self.send_success(
            now,
            reply,
            &[Attribute::Lifetime(lifetime.as_secs() as u32)],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::rate_limit::RATE_SWEEP_INTERVAL;
    use super::super::testing::*;
    use super::super::*;
    use crate::stun::Family;
    use crate::stun::TransactionId;
    #[test]
    fn allocate_challenge_then_success() {
        let mut f = fx();
        let nonce = f.nonce();
        assert_eq!(nonce.len(), 40);
        let r = f.request(
            Method::ALLOCATE,
            Some(("turnuser", "cisco", &nonce)),
            &[
                Attribute::RequestedTransport(PROTO_UDP),
                Attribute::Lifetime(60),
            ],
        );
        assert_eq!(r.class, Class::Success);
        assert!(r.integrity_ok, "success responses carry MESSAGE-INTEGRITY");
        let relay = r.relayed.expect("relay");
        assert!(PortRangeAllocator::DEFAULT_PORTS.contains(&relay.port()));
        assert_eq!(r.mapped, Some(client()));
        // Asked for 60 s, below the default: the default 600 s applies (RFC 8656 §7.2).
        assert_eq!(r.lifetime, Some(600));
        assert_eq!(f.server.status().counters.challenges, 1);
        assert_eq!(f.server.status().allocations, 1);
        // The 401 challenge armed the rate-limit sweep, which comes before the 600 s expiry.
        assert_eq!(f.server.poll_timeout(), Some(f.now + RATE_SWEEP_INTERVAL));
        assert_eq!(
            f.server.allocations(f.now)[0].expires_in,
            Duration::from_secs(600)
        );
    }

    #[test]
    fn allocation_created_event_names_the_relay() {
        let mut f = fx();
        let nonce = f.nonce();
        let bytes = f.build(
            Method::ALLOCATE,
            Some(("turnuser", "cisco", &nonce)),
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        let out = f.send_from(client(), Transport::Udp, &bytes);
        let relay = resp(&transmits(&out)[0].bytes, None)
            .relayed
            .expect("relay");
        assert_eq!(
            events(&out),
            vec![Event::AllocationCreated {
                allocation: AllocationHandle(1),
                client: FiveTuple {
                    transport: Transport::Udp,
                    client: client(),
                    server: listen()
                },
                relay,
                username: "turnuser".into(),
                lifetime: Duration::from_secs(600),
            }]
        );
    }

    #[test]
    fn allocate_errors_follow_rfc8656_section_7_2() {
        let mut f = fx();
        let r = f.authed(Method::ALLOCATE, &[]);
        assert_eq!(r.code, Some(400), "missing REQUESTED-TRANSPORT");
        assert!(r.integrity_ok, "errors after authentication are signed");
        let r = f.authed(Method::ALLOCATE, &[Attribute::RequestedTransport(6)]);
        assert_eq!(r.code, Some(442));
        let r = f.authed(
            Method::ALLOCATE,
            &[
                Attribute::RequestedTransport(PROTO_UDP),
                Attribute::DontFragment,
            ],
        );
        assert_eq!(r.code, Some(420));
        assert_eq!(r.unknown, Some(vec![attr::DONT_FRAGMENT]));
        let r = f.authed(
            Method::ALLOCATE,
            &[
                Attribute::RequestedTransport(PROTO_UDP),
                Attribute::ReservationToken([1; 8]),
            ],
        );
        assert_eq!(r.code, Some(508), "unknown reservation token");
        let r = f.authed(
            Method::ALLOCATE,
            &[
                Attribute::RequestedTransport(PROTO_UDP),
                Attribute::ReservationToken([1; 8]),
                Attribute::EvenPort(false),
            ],
        );
        assert_eq!(r.code, Some(400), "token with EVEN-PORT");
        let r = f.authed(
            Method::ALLOCATE,
            &[
                Attribute::RequestedTransport(PROTO_UDP),
                Attribute::RequestedAddressFamily(Family::V6),
            ],
        );
        assert_eq!(r.code, Some(440), "no IPv6 relay address");
        let r = f.authed(
            Method::ALLOCATE,
            &[
                Attribute::RequestedTransport(PROTO_UDP),
                Attribute::EvenPort(false),
            ],
        );
        assert_eq!(r.class, Class::Success);
        assert_eq!(r.relayed.expect("relay").port() % 2, 0);
        let r = f.authed(
            Method::ALLOCATE,
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        assert_eq!(r.code, Some(437), "5-tuple already has an allocation");
    }

    #[test]
    fn retransmitted_allocate_gets_the_same_success() {
        let mut f = fx();
        let nonce = f.nonce();
        let bytes = f.build(
            Method::ALLOCATE,
            Some(("turnuser", "cisco", &nonce)),
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        let first = f.send_from(client(), Transport::Udp, &bytes);
        f.now += Duration::from_secs(1);
        let again = f.send_from(client(), Transport::Udp, &bytes);
        let a = resp(&transmits(&first)[0].bytes, None);
        let b = resp(&transmits(&again)[0].bytes, None);
        assert_eq!(b.class, Class::Success);
        assert_eq!(a.relayed, b.relayed);
        assert_eq!(b.lifetime, Some(599));
        assert!(events(&again).is_empty());
    }

    #[test]
    fn refresh_lifetimes_and_delete() {
        let mut f = fx();
        let r = f.authed(Method::REFRESH, &[]);
        assert_eq!(r.code, Some(437), "no allocation yet");
        let relay = f.allocate("turnuser", "cisco");
        let r = f.authed(Method::REFRESH, &[Attribute::Lifetime(7200)]);
        assert_eq!(r.lifetime, Some(3600), "capped at the maximum");
        let r = f.authed(Method::REFRESH, &[Attribute::Lifetime(10)]);
        assert_eq!(r.lifetime, Some(600), "raised to the default");
        // Another user on the same 5-tuple: 441.
        let nonce = f.nonce();
        let r = f.request(Method::REFRESH, Some(("other", "pw", &nonce)), &[]);
        assert_eq!(r.code, Some(441));
        let nonce = f.nonce();
        let bytes = f.build(
            Method::REFRESH,
            Some(("turnuser", "cisco", &nonce)),
            &[Attribute::Lifetime(0)],
        );
        let out = f.send_from(client(), Transport::Udp, &bytes);
        assert_eq!(resp(&transmits(&out)[0].bytes, None).lifetime, Some(0));
        assert!(matches!(
            events(&out).as_slice(),
            [Event::AllocationDeleted { relay: r, reason: DeleteReason::ClientDeleted, .. }] if *r == relay
        ));
        assert_eq!(f.server.status().allocations, 0);
    }

    #[test]
    fn quotas_give_486_and_exhausted_ports_508() {
        let mut cfg = config();
        cfg.user_quota = Some(1);
        cfg.total_quota = Some(2);
        let mut f = fx_with(cfg, 24000..=24001);
        let c2 = addr("203.0.113.5:40002");
        let c3 = addr("203.0.113.6:40003");
        f.allocate("turnuser", "cisco");
        let try_alloc = |f: &mut Fx, from: SocketAddr, user: &str, pass: &str| {
            let out = f.send_from(
                from,
                Transport::Udp,
                &build(
                    Class::Request,
                    Method::ALLOCATE,
                    TransactionId([1; 12]),
                    None,
                    &[],
                ),
            );
            let nonce = resp(&transmits(&out)[0].bytes, None).nonce.expect("nonce");
            let txid = f.next_txid();
            let bytes = build(
                Class::Request,
                Method::ALLOCATE,
                txid,
                Some((user, pass, &nonce)),
                &[Attribute::RequestedTransport(PROTO_UDP)],
            );
            let out = f.send_from(from, Transport::Udp, &bytes);
            resp(&transmits(&out)[0].bytes, None)
        };
        assert_eq!(
            try_alloc(&mut f, c2, "turnuser", "cisco").code,
            Some(486),
            "user quota"
        );
        assert_eq!(try_alloc(&mut f, c2, "other", "pw").class, Class::Success);
        assert_eq!(
            try_alloc(&mut f, c3, "other", "pw").code,
            Some(486),
            "total quota"
        );

        let mut cfg = config();
        cfg.user_quota = None;
        let mut f = fx_with(cfg, 24000..=24000);
        f.allocate("turnuser", "cisco");
        assert_eq!(try_alloc(&mut f, c2, "other", "pw").code, Some(508));
    }
}
