//! Which bound TURN channels are relayed by the XDP program (pure decision, no IO).
//!
//! Role: follow turn-core's lifecycle [`Event`]s and keep the set of channels that belong in
//! the kernel. A channel is offloaded iff all of these hold:
//! - it is bound (RFC 8656 §12: `ChannelBound` until `ChannelExpired`),
//! - its peer's IP has a live permission on the allocation (RFC 8656 §9: without one, the
//!   server must drop the data, so the kernel must not relay it),
//! - the client talks UDP (the kernel rewrites UDP datagrams only; TCP/TLS ChannelData is
//!   framed in a byte stream user space owns),
//! - the channel number is in RFC 8656's 0x4000–0x4FFF (RFC 5766 numbers up to 0x7FFF, which
//!   `[compat] rfc5766_channels` admits, stay in user space: the kernel rejects them),
//! - client, server, relay and peer addresses are one family (the kernel rewrites v4→v4 and
//!   v6→v6 only), and the server address is concrete (the kernel matches it exactly).
//!
//! Inputs: [`OffloadPlanner::handle_event`] with every core event, in the order the core
//! emitted them; [`OffloadPlanner::shutdown`] once when the server stops.
//! Outputs: [`OffloadCommand`]s from [`OffloadPlanner::poll_command`], each an add or delete of
//! one kernel channel (fork-agent's `turn_channel_add` / `turn_channel_del`), to be executed in
//! order. The commands are idempotent with respect to the events: a channel is added once when
//! it becomes eligible and deleted once when it stops being eligible; a refresh (ChannelBind or
//! CreatePermission again) yields nothing. [`OffloadPlanner::allocation_of`] maps a kernel
//! channel back to its allocation for counter feedback.
//! Call order: `handle_event`, then drain `poll_command` to `None`.
//!
//! There are no timers here: every expiry arrives as a core event, so no call takes `now`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
};

use turn_core::{AllocationHandle, Event, FiveTuple, Transport};

/// RFC 8656 §12: channel numbers 0x4000 through 0x4FFF; the only ones the kernel relays.
pub const KERNEL_CHANNELS: std::ops::RangeInclusive<u16> =
    turn_core::stun::CHANNEL_MIN..=turn_core::stun::CHANNEL_MAX;

/// How fork-agent names one kernel channel (the client's UDP 5-tuple and the channel number),
/// and one channel as `turn_channel_add` takes it: control-api's types (docs/control-api.md).
pub use control_api::{ChannelKey, ChannelSpec};

/// Something the shell must do to the kernel, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadCommand {
    /// Relay this channel in the kernel (both directions); its traffic belongs to `allocation`.
    Add {
        /// Allocation whose counters the kernel traffic is added to.
        allocation: AllocationHandle,
        /// The channel.
        spec: ChannelSpec,
    },
    /// Stop relaying this channel in the kernel; user space handles its traffic again.
    Del {
        /// Allocation it belonged to.
        allocation: AllocationHandle,
        /// The channel.
        key: ChannelKey,
    },
}

#[derive(Debug)]
struct Channel {
    peer: SocketAddr,
    /// Whether an `Add` is outstanding without a matching `Del`.
    offloaded: bool,
}

#[derive(Debug)]
struct Allocation {
    client: FiveTuple,
    relay: SocketAddr,
    permissions: BTreeSet<IpAddr>,
    channels: BTreeMap<u16, Channel>,
}

impl Allocation {
    fn spec(&self, number: u16, peer: SocketAddr) -> ChannelSpec {
        ChannelSpec {
            client: self.client.client,
            server: self.client.server,
            number,
            relay: self.relay,
            peer,
        }
    }

    fn eligible(&self, number: u16, peer: SocketAddr) -> bool {
        let v4 = self.client.client.is_ipv4();
        self.client.transport == Transport::Udp
            // A wildcard listener gives no destination address for the kernel to match.
            && !self.client.server.ip().is_unspecified()
            && KERNEL_CHANNELS.contains(&number)
            && self.permissions.contains(&peer.ip())
            && [self.client.server, self.relay, peer]
                .iter()
                .all(|a| a.is_ipv4() == v4)
    }
}

/// The offload decision: allocations, permissions and channels as the core reported them, and
/// the commands that keep the kernel in step.
#[derive(Debug, Default)]
pub struct OffloadPlanner {
    allocations: HashMap<AllocationHandle, Allocation>,
    /// Offloaded channels only.
    by_key: HashMap<ChannelKey, AllocationHandle>,
    out: VecDeque<OffloadCommand>,
}

impl OffloadPlanner {
    /// An empty planner (nothing in the kernel).
    pub fn new() -> OffloadPlanner {
        OffloadPlanner::default()
    }

    /// Feeds one core event. Drain [`OffloadPlanner::poll_command`] afterwards.
    pub fn handle_event(&mut self, event: &Event) {
        match *event {
            Event::AllocationCreated {
                allocation,
                client,
                relay,
                ..
            } => {
                self.allocations.insert(
                    allocation,
                    Allocation {
                        client,
                        relay,
                        permissions: BTreeSet::new(),
                        channels: BTreeMap::new(),
                    },
                );
            }
            Event::AllocationDeleted { allocation, .. } => {
                // The core expires every channel first; this only matters if it did not.
                if let Some(a) = self.allocations.remove(&allocation) {
                    for (number, ch) in &a.channels {
                        if ch.offloaded {
                            self.del(allocation, a.spec(*number, ch.peer).key());
                        }
                    }
                }
            }
            Event::PermissionInstalled {
                allocation, peer, ..
            } => {
                let Some(a) = self.allocations.get_mut(&allocation) else {
                    return;
                };
                a.permissions.insert(peer);
                self.reconcile(allocation);
            }
            Event::PermissionExpired {
                allocation, peer, ..
            } => {
                let Some(a) = self.allocations.get_mut(&allocation) else {
                    return;
                };
                a.permissions.remove(&peer);
                self.reconcile(allocation);
            }
            Event::ChannelBound {
                allocation,
                channel,
                peer,
                ..
            } => {
                let Some(a) = self.allocations.get_mut(&allocation) else {
                    return;
                };
                // A rebinding to another peer cannot happen (RFC 8656 §12 forbids it and the
                // core answers 400), but if it did the old kernel entry must go first.
                let stale = a
                    .channels
                    .get(&channel)
                    .filter(|c| c.peer != peer && c.offloaded)
                    .map(|c| a.spec(channel, c.peer).key());
                if let Some(key) = stale {
                    self.del(allocation, key);
                }
                let Some(a) = self.allocations.get_mut(&allocation) else {
                    return;
                };
                let ch = a.channels.entry(channel).or_insert(Channel {
                    peer,
                    offloaded: false,
                });
                if ch.peer != peer {
                    *ch = Channel {
                        peer,
                        offloaded: false,
                    };
                }
                self.reconcile(allocation);
            }
            Event::ChannelExpired {
                allocation,
                channel,
                ..
            } => {
                let Some(a) = self.allocations.get_mut(&allocation) else {
                    return;
                };
                if let Some(ch) = a.channels.remove(&channel) {
                    if ch.offloaded {
                        let key = a.spec(channel, ch.peer).key();
                        self.del(allocation, key);
                    }
                }
            }
        }
    }

    /// Deletes every offloaded channel (the server is stopping: without it nobody would
    /// remove them when they expire). The planner is empty afterwards.
    pub fn shutdown(&mut self) {
        let mut handles: Vec<_> = self.allocations.keys().copied().collect();
        handles.sort();
        for h in handles {
            if let Some(a) = self.allocations.remove(&h) {
                for (number, ch) in &a.channels {
                    if ch.offloaded {
                        self.del(h, a.spec(*number, ch.peer).key());
                    }
                }
            }
        }
    }

    /// The next command, or `None`. Drain after every [`OffloadPlanner::handle_event`] and
    /// after [`OffloadPlanner::shutdown`].
    #[must_use]
    pub fn poll_command(&mut self) -> Option<OffloadCommand> {
        self.out.pop_front()
    }

    /// The allocation an offloaded channel belongs to.
    pub fn allocation_of(&self, key: &ChannelKey) -> Option<AllocationHandle> {
        self.by_key.get(key).copied()
    }

    /// Every channel that should be in the kernel now, with its allocation (what a resync
    /// after lost commands or a fork-agent restart restores).
    pub fn offloaded(&self) -> Vec<(AllocationHandle, ChannelSpec)> {
        let mut v: Vec<_> = self
            .allocations
            .iter()
            .flat_map(|(h, a)| {
                a.channels
                    .iter()
                    .filter(|(_, c)| c.offloaded)
                    .map(move |(n, c)| (*h, a.spec(*n, c.peer)))
            })
            .collect();
        v.sort_by_key(|(h, s)| (*h, s.key()));
        v
    }

    /// Brings one allocation's channels in line with the rule in the module doc.
    fn reconcile(&mut self, allocation: AllocationHandle) {
        let Some(a) = self.allocations.get_mut(&allocation) else {
            return;
        };
        let mut adds = Vec::new();
        let mut dels = Vec::new();
        for (number, ch) in a.channels.iter() {
            let want = a.eligible(*number, ch.peer);
            if want != ch.offloaded {
                let spec = a.spec(*number, ch.peer);
                if want {
                    adds.push(spec);
                } else {
                    dels.push(spec.key());
                }
            }
        }
        for spec in &adds {
            if let Some(ch) = a.channels.get_mut(&spec.number) {
                ch.offloaded = true;
            }
        }
        for key in &dels {
            if let Some(ch) = a.channels.get_mut(&key.number) {
                ch.offloaded = false;
            }
        }
        // Deletes first: a peer moving between channels must leave the kernel before it
        // comes back (fork-agent refuses a second channel for one peer).
        for key in dels {
            self.by_key.remove(&key);
            self.out.push_back(OffloadCommand::Del { allocation, key });
        }
        for spec in adds {
            self.by_key.insert(spec.key(), allocation);
            self.out.push_back(OffloadCommand::Add { allocation, spec });
        }
    }

    fn del(&mut self, allocation: AllocationHandle, key: ChannelKey) {
        self.by_key.remove(&key);
        self.out.push_back(OffloadCommand::Del { allocation, key });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use turn_core::server::{AllocationCounters, DeleteReason};

    use super::*;

    const H: AllocationHandle = AllocationHandle(1);

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn tuple(transport: Transport) -> FiveTuple {
        FiveTuple {
            transport,
            client: addr("10.77.1.2:50000"),
            server: addr("10.77.1.1:3478"),
        }
    }

    fn relay() -> SocketAddr {
        addr("10.77.2.1:24000")
    }

    fn peer() -> SocketAddr {
        addr("10.77.2.2:60000")
    }

    fn created(transport: Transport) -> Event {
        Event::AllocationCreated {
            allocation: H,
            client: tuple(transport),
            relay: relay(),
            username: "turnuser".into(),
            lifetime: Duration::from_secs(600),
        }
    }

    fn permission(installed: bool, ip: &str) -> Event {
        let (allocation, client, relay, peer) =
            (H, tuple(Transport::Udp), relay(), ip.parse().expect("ip"));
        if installed {
            Event::PermissionInstalled {
                allocation,
                client,
                relay,
                peer,
            }
        } else {
            Event::PermissionExpired {
                allocation,
                client,
                relay,
                peer,
            }
        }
    }

    fn channel(bound: bool, channel: u16, peer: SocketAddr) -> Event {
        let (allocation, client, relay) = (H, tuple(Transport::Udp), relay());
        if bound {
            Event::ChannelBound {
                allocation,
                client,
                relay,
                peer,
                channel,
            }
        } else {
            Event::ChannelExpired {
                allocation,
                client,
                relay,
                peer,
                channel,
            }
        }
    }

    fn deleted() -> Event {
        Event::AllocationDeleted {
            allocation: H,
            client: tuple(Transport::Udp),
            relay: relay(),
            reason: DeleteReason::ClientDeleted,
            counters: AllocationCounters::default(),
        }
    }

    fn spec(number: u16) -> ChannelSpec {
        ChannelSpec {
            client: addr("10.77.1.2:50000"),
            server: addr("10.77.1.1:3478"),
            number,
            relay: relay(),
            peer: peer(),
        }
    }

    fn add(number: u16) -> OffloadCommand {
        OffloadCommand::Add {
            allocation: H,
            spec: spec(number),
        }
    }

    fn del(number: u16) -> OffloadCommand {
        OffloadCommand::Del {
            allocation: H,
            key: spec(number).key(),
        }
    }

    fn feed(p: &mut OffloadPlanner, events: &[Event]) -> Vec<OffloadCommand> {
        let mut out = Vec::new();
        for e in events {
            p.handle_event(e);
            while let Some(c) = p.poll_command() {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn bound_channel_with_permission_is_added_once_in_either_order() {
        // The core emits ChannelBound before the permission ChannelBind installs.
        let mut p = OffloadPlanner::new();
        let got = feed(
            &mut p,
            &[
                created(Transport::Udp),
                channel(true, 0x4001, peer()),
                permission(true, "10.77.2.2"),
            ],
        );
        assert_eq!(got, vec![add(0x4001)]);
        assert_eq!(p.allocation_of(&spec(0x4001).key()), Some(H));

        // Permission first (CreatePermission, then ChannelBind).
        let mut p = OffloadPlanner::new();
        let got = feed(
            &mut p,
            &[
                created(Transport::Udp),
                permission(true, "10.77.2.2"),
                channel(true, 0x4001, peer()),
            ],
        );
        assert_eq!(got, vec![add(0x4001)]);
    }

    /// A planner that has offloaded channel 0x4001 of a UDP allocation with a permission for
    /// the peer's IP.
    fn udp_channel_offloaded() -> OffloadPlanner {
        let mut p = OffloadPlanner::new();
        feed(
            &mut p,
            &[
                created(Transport::Udp),
                permission(true, "10.77.2.2"),
                channel(true, 0x4001, peer()),
            ],
        );
        p
    }

    #[test]
    fn refreshes_yield_nothing() {
        let mut p = udp_channel_offloaded();
        let again = feed(
            &mut p,
            &[channel(true, 0x4001, peer()), permission(true, "10.77.2.2")],
        );
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn permission_loss_removes_and_a_new_permission_restores() {
        let mut p = udp_channel_offloaded();
        // A permission for another IP touches nothing.
        assert!(feed(&mut p, &[permission(false, "10.77.2.9")]).is_empty());
        assert_eq!(
            feed(&mut p, &[permission(false, "10.77.2.2")]),
            vec![del(0x4001)]
        );
        assert_eq!(p.allocation_of(&spec(0x4001).key()), None);
        assert!(p.offloaded().is_empty());
        assert_eq!(
            feed(&mut p, &[permission(true, "10.77.2.2")]),
            vec![add(0x4001)]
        );
        assert_eq!(p.offloaded(), vec![(H, spec(0x4001))]);
    }

    #[test]
    fn channel_expiry_and_allocation_deletion_remove_once() {
        let mut p = udp_channel_offloaded();
        assert_eq!(
            feed(&mut p, &[channel(false, 0x4001, peer())]),
            vec![del(0x4001)]
        );
        // The permission expiring afterwards has nothing left to remove.
        assert!(feed(&mut p, &[permission(false, "10.77.2.2")]).is_empty());

        // Deletion: the core expires channels and permissions before AllocationDeleted, which
        // then has nothing left to do.
        let mut p = udp_channel_offloaded();
        let got = feed(
            &mut p,
            &[
                channel(false, 0x4001, peer()),
                permission(false, "10.77.2.2"),
                deleted(),
            ],
        );
        assert_eq!(got, vec![del(0x4001)]);
        // A bare AllocationDeleted still clears what is left.
        let mut p = udp_channel_offloaded();
        assert_eq!(feed(&mut p, &[deleted()]), vec![del(0x4001)]);
        assert!(feed(&mut p, &[channel(false, 0x4001, peer())]).is_empty());
    }

    #[test]
    fn only_udp_clients_and_rfc8656_channels_same_family_are_offloaded() {
        for t in [Transport::Tcp, Transport::Tls] {
            let mut p = OffloadPlanner::new();
            let got = feed(
                &mut p,
                &[
                    created(t),
                    permission(true, "10.77.2.2"),
                    channel(true, 0x4001, peer()),
                ],
            );
            assert!(got.is_empty(), "{t:?}: {got:?}");
        }
        let mut p = OffloadPlanner::new();
        let got = feed(
            &mut p,
            &[
                created(Transport::Udp),
                permission(true, "10.77.2.2"),
                // RFC 5766's range (admitted by [compat] rfc5766_channels) stays in user space.
                channel(true, 0x5000, peer()),
                channel(true, 0x7fff, addr("10.77.2.2:60001")),
                channel(true, 0x4fff, addr("10.77.2.2:60002")),
            ],
        );
        let mut want = spec(0x4fff);
        want.peer = addr("10.77.2.2:60002");
        assert_eq!(
            got,
            vec![OffloadCommand::Add {
                allocation: H,
                spec: want
            }]
        );
        // An IPv6 peer on an IPv4 client cannot be rewritten by the kernel.
        let mut p = OffloadPlanner::new();
        let got = feed(
            &mut p,
            &[
                created(Transport::Udp),
                permission(true, "fd00::2"),
                channel(true, 0x4001, addr("[fd00::2]:60000")),
            ],
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn several_channels_follow_their_own_peer_ip() {
        let mut p = OffloadPlanner::new();
        let other = addr("10.77.2.3:60000");
        let got = feed(
            &mut p,
            &[
                created(Transport::Udp),
                channel(true, 0x4001, peer()),
                channel(true, 0x4002, addr("10.77.2.2:60001")),
                channel(true, 0x4003, other),
                permission(true, "10.77.2.2"),
            ],
        );
        let mut second = spec(0x4002);
        second.peer = addr("10.77.2.2:60001");
        assert_eq!(
            got,
            vec![
                add(0x4001),
                OffloadCommand::Add {
                    allocation: H,
                    spec: second
                }
            ]
        );
        let got = feed(&mut p, &[permission(false, "10.77.2.2")]);
        assert_eq!(
            got,
            vec![
                del(0x4001),
                OffloadCommand::Del {
                    allocation: H,
                    key: second.key()
                }
            ]
        );
        let got = feed(&mut p, &[permission(true, "10.77.2.3")]);
        let mut third = spec(0x4003);
        third.peer = other;
        assert_eq!(
            got,
            vec![OffloadCommand::Add {
                allocation: H,
                spec: third
            }]
        );
    }

    #[test]
    fn events_of_unknown_allocations_are_ignored_and_shutdown_clears_all() {
        let mut p = OffloadPlanner::new();
        assert!(feed(
            &mut p,
            &[channel(true, 0x4001, peer()), permission(true, "10.77.2.2")]
        )
        .is_empty());
        feed(
            &mut p,
            &[
                created(Transport::Udp),
                permission(true, "10.77.2.2"),
                channel(true, 0x4001, peer()),
                channel(true, 0x4002, addr("10.77.2.2:1")),
            ],
        );
        p.shutdown();
        let mut got = Vec::new();
        while let Some(c) = p.poll_command() {
            got.push(c);
        }
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|c| matches!(c, OffloadCommand::Del { .. })));
        assert!(p.offloaded().is_empty());
        assert_eq!(p.allocation_of(&spec(0x4001).key()), None);
    }

    #[test]
    fn wire_format_matches_fork_agents_channel_spec() {
        let v = serde_json::to_value(spec(0x4001)).expect("serialises");
        assert_eq!(
            v,
            serde_json::json!({"client":"10.77.1.2:50000","server":"10.77.1.1:3478",
                "number":16385,"relay":"10.77.2.1:24000","peer":"10.77.2.2:60000"})
        );
    }
}
