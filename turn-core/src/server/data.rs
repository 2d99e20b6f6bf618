//! The relay data path: client to peer and peer to client (RFC 8656 §10, §12.6, §12.5).
//!
//! Role: relay application data through an allocation. From the client it arrives as a Send
//! indication or as ChannelData on a bound channel; from a peer it arrives on the relay
//! address and goes to the client as ChannelData (when a channel is bound to that peer) or as
//! a Data indication. Every failure is a silent, counted discard.
//! Inputs: Send indications (from `handle_stun`), [`Server::handle_channel_data`],
//! [`Server::handle_peer_data`].
//! Outputs: [`Output::Transmit`](super::Output::Transmit) from the relay address to the peer, or
//! from the listen address to the client (ChannelData padded to 4 bytes on TCP/TLS); the
//! allocation's traffic counters.

use std::net::SocketAddr;
use std::time::Instant;

use rand::RngCore;

use super::{canonical, FiveTuple, Output, Server, Transmit, Transport, KNOWN_ATTRIBUTES};
use crate::stun::{
    self, Attribute, ChannelData, Class, Message, MessageBuilder, Method, TransactionId,
};
use crate::TurnError;

/// A Data indication carrying a peer's datagram (RFC 8656 §10.3).
fn data_indication(
    txid: TransactionId,
    peer: SocketAddr,
    data: &[u8],
) -> Result<Vec<u8>, TurnError> {
    let mut b = MessageBuilder::new(Class::Indication, Method::DATA, txid);
    b.add(&Attribute::XorPeerAddress(peer))?;
    b.add(&Attribute::Data(data))?;
    Ok(b.finish())
}

impl Server {
    /// ChannelData from a client (RFC 8656 §12.6): relayed to the bound peer.
    pub fn handle_channel_data(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
        transport: Transport,
        bytes: &[u8],
    ) {
        let cd = match ChannelData::parse(bytes) {
            Ok(cd) => cd,
            Err(_) => {
                self.counters.malformed += 1;
                return;
            }
        };
        let tuple = FiveTuple {
            transport,
            client: from,
            server: to,
        };
        let Some(alloc) = self
            .by_tuple
            .get(&tuple)
            .and_then(|h| self.allocations.get_mut(h))
        else {
            self.counters.dropped_no_allocation += 1;
            return;
        };
        let Some(peer) = alloc
            .channels
            .get(&cd.channel)
            .filter(|c| c.expires > now)
            .map(|c| c.peer)
        else {
            self.counters.dropped_no_channel += 1;
            return;
        };
        if !alloc.has_permission(now, peer.ip()) {
            self.counters.dropped_no_permission += 1;
            return;
        }
        alloc.counters.to_peer_packets += 1;
        alloc.counters.to_peer_bytes += cd.data.len() as u64;
        let relay = alloc.relay;
        self.out.push_back(Output::Transmit(Transmit {
            from: relay,
            to: peer,
            transport: Transport::Udp,
            bytes: cd.data.to_vec(),
        }));
    }

    /// A UDP datagram from `peer` arrived on relay address `relay` (RFC 8656 §10.3, §12.5):
    /// forwarded to the client as ChannelData if a channel is bound, else as a Data indication.
    pub fn handle_peer_data(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        bytes: &[u8],
    ) {
        // A dual-stack relay socket reports IPv4 peers as IPv4-mapped; permissions are stored
        // in canonical form.
        let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
        let Some(alloc) = self
            .by_relay
            .get(&relay)
            .and_then(|h| self.allocations.get_mut(h))
        else {
            self.counters.dropped_no_allocation += 1;
            return;
        };
        if !alloc.has_permission(now, peer.ip()) {
            alloc.counters.dropped_no_permission += 1;
            self.counters.dropped_no_permission += 1;
            return;
        }
        let channel = alloc
            .channel_by_peer
            .get(&peer)
            .copied()
            .filter(|c| alloc.channels.get(c).is_some_and(|ch| ch.expires > now));
        let tuple = alloc.tuple;
        let encoded = match channel {
            Some(ch) => {
                let mut buf = Vec::with_capacity(bytes.len() + 8);
                stun::encode_channel_data(ch, bytes, tuple.transport.is_stream(), &mut buf)
                    .map(|()| buf)
            }
            None => {
                let mut txid = [0u8; 12];
                self.rng.fill_bytes(&mut txid);
                data_indication(TransactionId(txid), peer, bytes)
            }
        };
        let Ok(out) = encoded else {
            // Only a datagram near 64 KiB can fail to fit a Data indication.
            self.counters.malformed += 1;
            return;
        };
        alloc.counters.from_peer_packets += 1;
        alloc.counters.from_peer_bytes += bytes.len() as u64;
        self.out.push_back(Output::Transmit(Transmit {
            from: tuple.server,
            to: tuple.client,
            transport: tuple.transport,
            bytes: out,
        }));
    }

    /// RFC 8656 §10.2: every failure is a silent discard.
    pub(super) fn handle_send_indication(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'_>,
    ) {
        let Some(a) = self
            .by_tuple
            .get(&tuple)
            .and_then(|h| self.allocations.get_mut(h))
        else {
            self.counters.dropped_no_allocation += 1;
            return;
        };
        let (Ok(Some(peer)), Some(data)) = (msg.xor_peer_address(), msg.data()) else {
            self.counters.malformed += 1;
            return;
        };
        // DONT-FRAGMENT and other unknown comprehension-required attributes: discard.
        if !msg
            .unknown_comprehension_required(KNOWN_ATTRIBUTES)
            .is_empty()
        {
            self.counters.malformed += 1;
            return;
        }
        let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
        if !a.has_permission(now, peer.ip()) {
            self.counters.dropped_no_permission += 1;
            return;
        }
        a.counters.to_peer_packets += 1;
        a.counters.to_peer_bytes += data.len() as u64;
        let relay = a.relay;
        self.out.push_back(Output::Transmit(Transmit {
            from: relay,
            to: peer,
            transport: Transport::Udp,
            bytes: data.to_vec(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use crate::stun::TransactionId;

    #[test]
    fn send_and_data_indications_relay_with_permission() {
        let mut f = fx();
        let relay = f.allocate("turnuser", "cisco");
        let peer = addr("192.0.2.7:5000");
        let txid = f.next_txid();
        let send = build(
            Class::Indication,
            Method::SEND,
            txid,
            None,
            &[Attribute::XorPeerAddress(peer), Attribute::Data(b"rtp")],
        );
        assert!(
            f.send_from(client(), Transport::Udp, &send).is_empty(),
            "no permission yet"
        );
        f.server.handle_peer_data(f.now, relay, peer, b"in");
        assert!(f.drain().is_empty());
        assert_eq!(f.server.status().counters.dropped_no_permission, 2);

        f.authed(
            Method::CREATE_PERMISSION,
            &[Attribute::XorPeerAddress(peer)],
        );
        let out = f.send_from(client(), Transport::Udp, &send);
        assert_eq!(
            transmits(&out),
            vec![Transmit {
                from: relay,
                to: peer,
                transport: Transport::Udp,
                bytes: b"rtp".to_vec()
            }]
        );
        // Permissions ignore the peer port (RFC 8656 §9).
        f.server
            .handle_peer_data(f.now, relay, addr("192.0.2.7:6000"), b"back");
        let out = f.drain();
        let t = &transmits(&out)[0];
        assert_eq!((t.from, t.to), (listen(), client()));
        let m = Message::parse(&t.bytes).expect("data indication");
        assert_eq!((m.class(), m.method()), (Class::Indication, Method::DATA));
        assert_eq!(m.data(), Some(&b"back"[..]));
        assert_eq!(
            m.xor_peer_address().expect("valid"),
            Some(addr("192.0.2.7:6000"))
        );
        let st = f.server.status();
        assert_eq!(st.traffic.to_peer_packets, 1);
        assert_eq!(st.traffic.from_peer_bytes, 4);
    }

    #[test]
    fn channel_bind_relays_channel_data_both_ways() {
        let mut f = fx();
        let relay = f.allocate("turnuser", "cisco");
        let peer = addr("192.0.2.7:5000");
        let nonce = f.nonce();
        let bytes = f.build(
            Method::CHANNEL_BIND,
            Some(("turnuser", "cisco", &nonce)),
            &[
                Attribute::ChannelNumber(0x4001),
                Attribute::XorPeerAddress(peer),
            ],
        );
        let out = f.send_from(client(), Transport::Udp, &bytes);
        assert_eq!(resp(&transmits(&out)[0].bytes, None).class, Class::Success);
        let tuple = FiveTuple {
            transport: Transport::Udp,
            client: client(),
            server: listen(),
        };
        assert_eq!(
            events(&out),
            vec![
                Event::ChannelBound {
                    allocation: AllocationHandle(1),
                    client: tuple,
                    relay,
                    peer,
                    channel: 0x4001
                },
                Event::PermissionInstalled {
                    allocation: AllocationHandle(1),
                    client: tuple,
                    relay,
                    peer: peer.ip()
                },
            ]
        );
        let mut cd = Vec::new();
        stun::encode_channel_data(0x4001, b"media", false, &mut cd).expect("valid");
        f.server
            .handle_channel_data(f.now, client(), listen(), Transport::Udp, &cd);
        assert_eq!(
            transmits(&f.drain()),
            vec![Transmit {
                from: relay,
                to: peer,
                transport: Transport::Udp,
                bytes: b"media".to_vec()
            }]
        );
        f.server.handle_peer_data(f.now, relay, peer, b"reply");
        let t = transmits(&f.drain());
        assert_eq!(t[0].bytes, [0x40, 0x01, 0, 5, b'r', b'e', b'p', b'l', b'y']);
        // Unbound channel: dropped.
        let mut cd = Vec::new();
        stun::encode_channel_data(0x4002, b"x", false, &mut cd).expect("valid");
        f.server
            .handle_channel_data(f.now, client(), listen(), Transport::Udp, &cd);
        assert!(f.drain().is_empty());
        assert_eq!(f.server.status().counters.dropped_no_channel, 1);
    }

    #[test]
    fn tcp_clients_get_padded_channel_data() {
        let mut f = fx();
        let nonce = f.nonce();
        let tcp_client = addr("203.0.113.9:50000");
        let mut bytes = build(
            Class::Request,
            Method::ALLOCATE,
            TransactionId([9; 12]),
            None,
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        let out = f.send_from(tcp_client, Transport::Tcp, &bytes);
        let nonce_tcp = resp(&transmits(&out)[0].bytes, None).nonce.expect("nonce");
        assert_ne!(nonce_tcp, nonce);
        bytes = build(
            Class::Request,
            Method::ALLOCATE,
            TransactionId([10; 12]),
            Some(("turnuser", "cisco", &nonce_tcp)),
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        let out = f.send_from(tcp_client, Transport::Tcp, &bytes);
        let relay = resp(&transmits(&out)[0].bytes, None)
            .relayed
            .expect("relay");
        let peer = addr("192.0.2.7:5000");
        bytes = build(
            Class::Request,
            Method::CHANNEL_BIND,
            TransactionId([11; 12]),
            Some(("turnuser", "cisco", &nonce_tcp)),
            &[
                Attribute::ChannelNumber(0x4000),
                Attribute::XorPeerAddress(peer),
            ],
        );
        let out = f.send_from(tcp_client, Transport::Tcp, &bytes);
        assert_eq!(transmits(&out)[0].transport, Transport::Tcp);
        f.server.handle_peer_data(f.now, relay, peer, b"abcde");
        let t = transmits(&f.drain());
        assert_eq!(t[0].bytes.len(), 12, "4 header + 5 data + 3 padding");
        assert_eq!(t[0].transport, Transport::Tcp);
        let st = f.server.status();
        assert_eq!((st.relays_tcp, st.relays_udp, st.clients), (1, 0, 1));
        // Closing the TCP connection ends the allocation.
        f.server.handle_connection_closed(
            f.now,
            FiveTuple {
                transport: Transport::Tcp,
                client: tcp_client,
                server: listen(),
            },
        );
        let ev = events(&f.drain());
        assert!(matches!(
            ev.last(),
            Some(Event::AllocationDeleted {
                reason: DeleteReason::ConnectionClosed,
                ..
            })
        ));
        assert_eq!(ev.len(), 3, "channel, permission, allocation: {ev:?}");
    }
}
