//! Kernel offload of bound TURN channels (sans-IO bookkeeping). Inputs: channel add/remove
//! requests (from the TURN server through the control API) and the entries found in the pinned
//! maps after a restart. Outputs: the `FLOWS` marker entries for listening and relayed addresses
//! (reference counted: one relayed address serves several channels) and the `TURN_CHANNELS` /
//! `TURN_PEERS` keys. The shell resolves next hops, allocates `FLOW_STATS` slots and writes maps.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use fork_common::{
    addr_words, FlowKey, TurnChannelKey, TurnPeerKey, TURN_CHANNEL_MAX, TURN_CHANNEL_MIN,
};
use serde::Serialize;

/// A channel bound by the TURN server with a live permission for its peer (`turn_channel_add`).
pub use control_api::ChannelSpec;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnOffloadError {
    /// RFC 8656 §12: channel numbers are 0x4000 through 0x4FFF.
    #[error("channel number {0:#06x} is outside 0x4000-0x4FFF")]
    BadChannel(u16),
    /// The kernel rewrites v4→v4 and v6→v6 only.
    #[error("client, server, relay and peer must all be IPv4 or all IPv6")]
    FamilyMismatch,
    /// The same client, server and channel are bound already.
    #[error("channel {number:#06x} of {client} is already offloaded")]
    Exists { client: SocketAddr, number: u16 },
    /// Another channel of this relayed address already has this peer (RFC 8656 §12: one
    /// channel per peer per allocation).
    #[error("peer {peer} already has a channel on {relay}")]
    PeerBusy { relay: SocketAddr, peer: SocketAddr },
    /// Nothing offloaded for this client/server/channel.
    #[error("no offloaded channel {number:#06x} for {client}")]
    Unknown { client: SocketAddr, number: u16 },
}

/// An offloaded channel and the `FLOW_STATS` slots of its two directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Offloaded {
    pub spec: ChannelSpec,
    /// Client → peer counters.
    pub to_peer_stats: u32,
    /// Peer → client counters.
    pub to_client_stats: u32,
}

/// What the shell must write or delete, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOp {
    /// Mark `FLOWS[key]` as a TURN listener.
    AddListener(FlowKey),
    /// Mark `FLOWS[key]` as a TURN relayed address.
    AddRelay(FlowKey),
    /// Delete `FLOWS[key]` (last channel of a relayed address gone).
    DelRelay(FlowKey),
    DelChannel(TurnChannelKey),
    DelPeer(TurnPeerKey),
}

#[derive(Debug, Default)]
pub struct TurnOffload {
    channels: BTreeMap<(SocketAddr, SocketAddr, u16), Offloaded>,
    relay_refs: HashMap<SocketAddr, u32>,
    listeners: HashMap<SocketAddr, ()>,
}

pub fn channel_key(s: &ChannelSpec) -> TurnChannelKey {
    let (family, client_addr_be) = addr_words(s.client.ip());
    TurnChannelKey {
        client_addr_be,
        server_addr_be: addr_words(s.server.ip()).1,
        client_port_be: s.client.port().to_be(),
        server_port_be: s.server.port().to_be(),
        channel_be: s.number.to_be(),
        family,
        _pad: 0,
    }
}

pub fn peer_key(s: &ChannelSpec) -> TurnPeerKey {
    let (family, relay_addr_be) = addr_words(s.relay.ip());
    TurnPeerKey {
        relay_addr_be,
        peer_addr_be: addr_words(s.peer.ip()).1,
        relay_port_be: s.relay.port().to_be(),
        peer_port_be: s.peer.port().to_be(),
        family,
        _pad: [0; 3],
    }
}

impl TurnOffload {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validate a channel and return the marker entries to add first. The caller then writes
    /// the two channel entries and calls [`TurnOffload::commit`].
    pub fn prepare(&self, s: &ChannelSpec) -> Result<Vec<MapOp>, TurnOffloadError> {
        if !(TURN_CHANNEL_MIN..=TURN_CHANNEL_MAX).contains(&s.number) {
            return Err(TurnOffloadError::BadChannel(s.number));
        }
        let v4 = s.client.is_ipv4();
        if [s.server, s.relay, s.peer]
            .iter()
            .any(|a| a.is_ipv4() != v4)
        {
            return Err(TurnOffloadError::FamilyMismatch);
        }
        if self.channels.contains_key(&(s.client, s.server, s.number)) {
            return Err(TurnOffloadError::Exists {
                client: s.client,
                number: s.number,
            });
        }
        if self
            .channels
            .values()
            .any(|o| o.spec.relay == s.relay && o.spec.peer == s.peer)
        {
            return Err(TurnOffloadError::PeerBusy {
                relay: s.relay,
                peer: s.peer,
            });
        }
        let mut ops = Vec::new();
        if !self.listeners.contains_key(&s.server) {
            ops.push(MapOp::AddListener(FlowKey::new(s.server)));
        }
        if !self.relay_refs.contains_key(&s.relay) {
            ops.push(MapOp::AddRelay(FlowKey::new(s.relay)));
        }
        Ok(ops)
    }

    /// Record a channel the shell has written to the kernel.
    pub fn commit(&mut self, o: Offloaded) {
        self.listeners.insert(o.spec.server, ());
        *self.relay_refs.entry(o.spec.relay).or_default() += 1;
        self.channels
            .insert((o.spec.client, o.spec.server, o.spec.number), o);
    }

    /// Remove a channel: the map deletions, and the record (for its stats slots).
    pub fn remove(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
        number: u16,
    ) -> Result<(Offloaded, Vec<MapOp>), TurnOffloadError> {
        let o = self
            .channels
            .remove(&(client, server, number))
            .ok_or(TurnOffloadError::Unknown { client, number })?;
        let mut ops = vec![
            MapOp::DelChannel(channel_key(&o.spec)),
            MapOp::DelPeer(peer_key(&o.spec)),
        ];
        if let Some(n) = self.relay_refs.get_mut(&o.spec.relay) {
            *n -= 1;
            if *n == 0 {
                self.relay_refs.remove(&o.spec.relay);
                ops.push(MapOp::DelRelay(FlowKey::new(o.spec.relay)));
            }
        }
        Ok((o, ops))
    }

    pub fn channels(&self) -> impl Iterator<Item = &Offloaded> {
        self.channels.values()
    }

    /// Whether `addr` is used as a TURN listener or relayed address (flows must not take it).
    pub fn owns(&self, addr: &SocketAddr) -> bool {
        self.listeners.contains_key(addr) || self.relay_refs.contains_key(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(client: &str, number: u16, peer: &str) -> ChannelSpec {
        ChannelSpec {
            client: client.parse().expect("addr"),
            server: "10.0.0.1:3478".parse().expect("addr"),
            number,
            relay: "10.0.1.1:24000".parse().expect("addr"),
            peer: peer.parse().expect("addr"),
        }
    }

    fn offloaded(s: ChannelSpec) -> Offloaded {
        Offloaded {
            spec: s,
            to_peer_stats: 1,
            to_client_stats: 2,
        }
    }

    #[test]
    fn markers_are_added_once_and_removed_with_the_last_channel() {
        let mut t = TurnOffload::new();
        let a = spec("10.0.0.9:5000", 0x4000, "10.0.2.2:6000");
        let ops = t.prepare(&a).expect("valid");
        assert_eq!(ops.len(), 2, "listener and relay markers: {ops:?}");
        t.commit(offloaded(a));
        let b = spec("10.0.0.9:5000", 0x4001, "10.0.2.3:6000");
        assert_eq!(t.prepare(&b).expect("valid"), vec![]);
        t.commit(offloaded(b));
        assert!(t.owns(&a.relay) && t.owns(&a.server));
        let (_, ops) = t.remove(a.client, a.server, 0x4000).expect("bound");
        assert_eq!(ops.len(), 2, "relay still used by 0x4001: {ops:?}");
        let (_, ops) = t.remove(b.client, b.server, 0x4001).expect("bound");
        assert!(ops.contains(&MapOp::DelRelay(FlowKey::new(b.relay))));
        assert!(!t.owns(&b.relay));
    }

    #[test]
    fn rejects_what_rfc_8656_forbids() {
        let mut t = TurnOffload::new();
        assert_eq!(
            t.prepare(&spec("10.0.0.9:5000", 0x3fff, "10.0.2.2:6000")),
            Err(TurnOffloadError::BadChannel(0x3fff))
        );
        assert_eq!(
            t.prepare(&spec("10.0.0.9:5000", 0x5000, "10.0.2.2:6000")),
            Err(TurnOffloadError::BadChannel(0x5000))
        );
        assert_eq!(
            t.prepare(&spec("10.0.0.9:5000", 0x4000, "[fd00::2]:6000")),
            Err(TurnOffloadError::FamilyMismatch)
        );
        let a = spec("10.0.0.9:5000", 0x4000, "10.0.2.2:6000");
        t.commit(offloaded(a));
        assert!(matches!(
            t.prepare(&a),
            Err(TurnOffloadError::Exists { .. })
        ));
        let same_peer = spec("10.0.0.9:5000", 0x4002, "10.0.2.2:6000");
        assert!(matches!(
            t.prepare(&same_peer),
            Err(TurnOffloadError::PeerBusy { .. })
        ));
        assert!(matches!(
            t.remove(a.client, a.server, 0x4009),
            Err(TurnOffloadError::Unknown { .. })
        ));
    }

    #[test]
    fn keys_carry_network_order_fields() {
        let a = spec("10.0.0.9:5000", 0x4001, "10.0.2.2:6000");
        let k = channel_key(&a);
        assert_eq!(u16::from_be(k.channel_be), 0x4001);
        assert_eq!(u16::from_be(k.server_port_be), 3478);
        let p = peer_key(&a);
        assert_eq!(u16::from_be(p.relay_port_be), 24000);
        assert_eq!(u16::from_be(p.peer_port_be), 6000);
    }
}
