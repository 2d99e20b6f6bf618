//! rtnetlink requests and replies (rtnetlink(7)) for fork-agent's interface plumbing, built and
//! read without IO as netlink-packet-route's typed messages.
//!
//! Role: everything fork-agent asks of the routing stack: the route to a destination, the fork
//! veth pair, managed neighbour entries, the neighbour table and the interface MACs. No process
//! is started (iproute2 is not a runtime dependency) and no byte offset is hand-parsed here.
//! Inputs: a [`Request`] from one of the builders, encoded with [`Request::encode`]; each
//! datagram received for it, given to [`decode`].
//! Outputs: [`Batch`]: the typed messages answering the request and whether the exchange is
//! finished; [`route`], [`neighbour`] and [`link_mac`] read what fork-agent needs from them.
//! Call order: encode, send, then decode datagrams until a batch says `finished`.
//!
//! Requests carry the flags, family, state and attributes that iproute2 6.1 sends for the
//! commands they replace (checked under strace), so the kernel does exactly what it did.

use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{
        InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
        LinkMessage,
    },
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteVia},
    AddressFamily, RouteNetlinkMessage,
};

/// One request: the message and its netlink flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    flags: u16,
    message: RouteNetlinkMessage,
}

impl Request {
    /// The bytes to send, with sequence number `seq`.
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = self.flags;
        header.sequence_number = seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::from(self.message.clone()));
        // Sets the message type and length from the payload.
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }
}

/// Flags of a change: the kernel acknowledges it, so the exchange always ends with an answer.
const CHANGE: u16 = NLM_F_REQUEST | NLM_F_ACK;
/// Flags of a dump: it ends with NLMSG_DONE.
const DUMP: u16 = NLM_F_REQUEST | NLM_F_DUMP;

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The route the kernel picks for `dst` (`ip route get DST`): RTM_GETROUTE with a host-length
/// RTA_DST and RTM_F_LOOKUP_TABLE, answered by one RTM_NEWROUTE.
pub fn get_route(dst: IpAddr) -> Request {
    let mut m = RouteMessage::default();
    m.header.address_family = family(dst);
    m.header.destination_prefix_length = match dst {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    m.header.flags = RouteFlags::LookupTable;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    Request {
        flags: CHANGE,
        message: RouteNetlinkMessage::GetRoute(m),
    }
}

/// Create the veth pair `name` / `peer` (`ip link add NAME type veth peer name PEER`); fails
/// with EEXIST when `name` exists.
pub fn add_veth(name: &str, peer: &str) -> Request {
    let mut peer_msg = LinkMessage::default();
    peer_msg
        .attributes
        .push(LinkAttribute::IfName(peer.to_owned()));
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_owned()));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
    ]));
    Request {
        flags: CHANGE | NLM_F_CREATE | NLM_F_EXCL,
        message: RouteNetlinkMessage::NewLink(m),
    }
}

/// Bring link `ifindex` up (`ip link set DEV up`): IFF_UP in both the flags and the change mask,
/// so no other flag is touched.
pub fn set_up(ifindex: u32) -> Request {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    Request {
        flags: CHANGE,
        message: RouteNetlinkMessage::NewLink(m),
    }
}

/// Delete link `ifindex` (`ip link del DEV`); for a veth both ends go.
pub fn delete_link(ifindex: u32) -> Request {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    Request {
        flags: CHANGE,
        message: RouteNetlinkMessage::DelLink(m),
    }
}

/// How [`managed_neighbour`] treats an existing entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighbourOp {
    /// `ip neigh add`: create, fail with EEXIST when the stack already has an entry.
    Add,
    /// `ip neigh change`: mark the existing entry, fail with ENOENT when there is none.
    Change,
}

/// A managed neighbour entry for `hop` on `ifindex` (`ip neigh add|change HOP dev DEV managed`,
/// Linux >= 5.16): the kernel resolves it and keeps it resolved without traffic. The state is
/// NUD_NONE (the kernel refuses a permanent managed entry) and NTF_EXT_MANAGED goes in
/// NDA_FLAGS_EXT.
pub fn managed_neighbour(ifindex: u32, hop: IpAddr, op: NeighbourOp) -> Request {
    let mut m = NeighbourMessage::default();
    m.header.family = family(hop);
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::None;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(hop)));
    m.attributes
        .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    let flags = match op {
        NeighbourOp::Add => CHANGE | NLM_F_CREATE | NLM_F_EXCL,
        NeighbourOp::Change => CHANGE | NLM_F_REPLACE,
    };
    Request {
        flags,
        message: RouteNetlinkMessage::NewNeighbour(m),
    }
}

/// Every neighbour of every family, one dump.
pub fn dump_neighbours() -> Request {
    Request {
        flags: DUMP,
        message: RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
    }
}

/// Every link, one dump; without statistics, which are most of a link message and unused here.
pub fn dump_links() -> Request {
    let mut m = LinkMessage::default();
    m.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    Request {
        flags: DUMP,
        message: RouteNetlinkMessage::GetLink(m),
    }
}

/// What one received datagram held for the request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The answers (RTM_NEWROUTE, RTM_NEWNEIGH, RTM_NEWLINK ...), in order.
    pub messages: Vec<RouteNetlinkMessage>,
    /// Messages whose body netlink-packet-route could not decode; they are left out.
    pub undecodable: usize,
    /// The acknowledgement or NLMSG_DONE arrived: nothing more will come.
    pub finished: bool,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RtnlError {
    /// The kernel refused the request (an NLMSG_ERROR or NLMSG_DONE with a negative errno).
    #[error("the kernel refused: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The positive errno, e.g. `libc::EEXIST`.
        errno: i32,
    },
    /// A netlink header is shorter than its minimum or its length runs past the datagram.
    #[error("truncated netlink message at offset {0}")]
    Truncated(usize),
}

/// NLMSG_ALIGN: messages in a datagram start on 4-byte boundaries.
const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Read one datagram answering the request sent with `seq`; messages of other sequences are
/// skipped.
pub fn decode(buf: &[u8], seq: u32) -> Result<Batch, RtnlError> {
    let mut out = Batch::default();
    let mut off = 0;
    while off < buf.len() {
        let rest = &buf[off..];
        let header = NetlinkBuffer::new_checked(rest).map_err(|_| RtnlError::Truncated(off))?;
        let len = header.length() as usize;
        if header.sequence_number() == seq {
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len]) {
                Ok(m) => match m.payload {
                    NetlinkPayload::InnerMessage(inner) => out.messages.push(inner),
                    NetlinkPayload::Done(done) if done.code < 0 => {
                        return Err(RtnlError::Kernel { errno: -done.code })
                    }
                    NetlinkPayload::Done(_) => out.finished = true,
                    // An acknowledgement is an error message with code 0.
                    NetlinkPayload::Error(e) => match e.code {
                        Some(code) => return Err(RtnlError::Kernel { errno: -code.get() }),
                        None => out.finished = true,
                    },
                    _ => {}
                },
                Err(_) => out.undecodable += 1,
            }
        }
        off += align4(len);
    }
    Ok(out)
}

/// Where the kernel sends packets for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The output interface (RTA_OIF).
    pub oif: u32,
    /// The next hop: the gateway (RTA_GATEWAY, or RTA_VIA for an IPv4 route through an IPv6
    /// gateway), or the destination itself when it is on link.
    pub hop: IpAddr,
}

/// The route of an RTM_NEWROUTE answering [`get_route`] for `dst`; `None` without an output
/// interface (nothing fork-agent could relay through).
pub fn route(m: &RouteMessage, dst: IpAddr) -> Option<Route> {
    let mut oif = None;
    let mut hop = dst;
    for a in &m.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => hop = IpAddr::V4(*g),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => hop = IpAddr::V6(*g),
            RouteAttribute::Via(RouteVia::Inet(g)) => hop = IpAddr::V4(*g),
            RouteAttribute::Via(RouteVia::Inet6(g)) => hop = IpAddr::V6(*g),
            _ => {}
        }
    }
    Some(Route { oif: oif?, hop })
}

/// One neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub addr: IpAddr,
    /// The MAC, when the entry has one and is not incomplete or failed.
    pub mac: Option<[u8; 6]>,
}

/// The entry of an RTM_NEWNEIGH; `None` for families other than IPv4/IPv6 (bridge FDB) or
/// without a destination.
pub fn neighbour(m: &NeighbourMessage) -> Option<Neighbour> {
    let mut addr = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                addr = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                addr = Some(IpAddr::V6(*v6))
            }
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(&l[..]).ok(),
            _ => {}
        }
    }
    // Resolution pending or failed: a MAC still reported is stale.
    let usable = !matches!(
        m.header.state,
        NeighbourState::Incomplete | NeighbourState::Failed
    );
    Some(Neighbour {
        ifindex: m.header.ifindex,
        addr: addr?,
        mac: mac.filter(|_| usable),
    })
}

/// The index and Ethernet MAC of an RTM_NEWLINK; `None` for links without a 6-byte address.
pub fn link_mac(m: &LinkMessage) -> Option<(u32, [u8; 6])> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(l) => Some((m.header.index, <[u8; 6]>::try_from(&l[..]).ok()?)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use netlink_packet_core::{DoneMessage, ErrorMessage};

    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x2a];

    /// A datagram as the kernel sends it: each message encoded with `seq`.
    fn datagram(seq: u32, payloads: Vec<NetlinkPayload<RouteNetlinkMessage>>) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            let mut header = NetlinkHeader::default();
            header.sequence_number = seq;
            let mut m = NetlinkMessage::new(header, p);
            m.finalize();
            let mut buf = vec![0; align4(m.buffer_len())];
            m.serialize(&mut buf);
            out.extend(buf);
        }
        out
    }

    fn inner(m: RouteNetlinkMessage) -> NetlinkPayload<RouteNetlinkMessage> {
        NetlinkPayload::InnerMessage(m)
    }

    fn ack(errno: i32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut e = ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(-errno);
        NetlinkPayload::Error(e)
    }

    fn done() -> NetlinkPayload<RouteNetlinkMessage> {
        NetlinkPayload::Done(DoneMessage::default())
    }

    fn neigh(family: AddressFamily, ifindex: u32, state: NeighbourState) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = family;
        m.header.ifindex = ifindex;
        m.header.state = state;
        m
    }

    /// Decode a request as the kernel would, to check what it carries.
    fn sent(r: &Request) -> (NetlinkHeader, RouteNetlinkMessage) {
        let bytes = r.encode(9);
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
        assert_eq!(m.header.sequence_number, 9);
        assert_eq!(m.header.length as usize, bytes.len());
        let NetlinkPayload::InnerMessage(inner) = m.payload else {
            panic!("not a request: {:?}", m.payload)
        };
        (m.header, inner)
    }

    #[test]
    fn route_request_asks_for_the_host_route_like_ip_route_get() {
        let (h, m) = sent(&get_route("10.77.2.2".parse().unwrap()));
        assert_eq!(h.message_type, 26, "RTM_GETROUTE");
        assert_eq!(h.flags, NLM_F_REQUEST | NLM_F_ACK);
        let RouteNetlinkMessage::GetRoute(m) = m else {
            panic!("{m:?}")
        };
        assert_eq!(m.header.address_family, AddressFamily::Inet);
        assert_eq!(m.header.destination_prefix_length, 32);
        assert_eq!(m.header.flags, RouteFlags::LookupTable);
        assert_eq!(
            m.attributes,
            vec![RouteAttribute::Destination(RouteAddress::Inet(
                Ipv4Addr::new(10, 77, 2, 2)
            ))]
        );
        let (_, m) = sent(&get_route("fd00::2".parse().unwrap()));
        let RouteNetlinkMessage::GetRoute(m) = m else {
            panic!("{m:?}")
        };
        assert_eq!(
            (m.header.address_family, m.header.destination_prefix_length),
            (AddressFamily::Inet6, 128)
        );
    }

    #[test]
    fn the_route_names_the_gateway_or_the_destination_on_link() {
        let dst: IpAddr = "10.77.2.2".parse().unwrap();
        let mut m = RouteMessage::default();
        m.attributes.push(RouteAttribute::Destination(dst.into()));
        assert_eq!(route(&m, dst), None, "no output interface");
        m.attributes.push(RouteAttribute::Oif(4));
        assert_eq!(route(&m, dst), Some(Route { oif: 4, hop: dst }));
        let gw = Ipv4Addr::new(10, 77, 1, 1);
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        assert_eq!(
            route(&m, dst),
            Some(Route {
                oif: 4,
                hop: gw.into()
            })
        );
        // An IPv4 route through an IPv6 gateway (RFC 5549) names it in RTA_VIA.
        let v6gw: Ipv6Addr = "fe80::1".parse().unwrap();
        let mut m = RouteMessage::default();
        m.attributes.push(RouteAttribute::Oif(5));
        m.attributes
            .push(RouteAttribute::Via(RouteVia::Inet6(v6gw)));
        assert_eq!(
            route(&m, dst),
            Some(Route {
                oif: 5,
                hop: v6gw.into()
            })
        );
    }

    #[test]
    fn veth_request_creates_both_ends_and_only_creates() {
        let (h, m) = sent(&add_veth("xdpf0", "xdpf0c"));
        assert_eq!(h.message_type, 16, "RTM_NEWLINK");
        assert_eq!(
            h.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        let RouteNetlinkMessage::NewLink(m) = m else {
            panic!("{m:?}")
        };
        assert!(m
            .attributes
            .contains(&LinkAttribute::IfName("xdpf0".to_owned())));
        let info = m
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i),
                _ => None,
            })
            .unwrap();
        assert!(info.contains(&LinkInfo::Kind(InfoKind::Veth)));
        let peer = info
            .iter()
            .find_map(|i| match i {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            peer.attributes,
            vec![LinkAttribute::IfName("xdpf0c".to_owned())]
        );
    }

    #[test]
    fn link_up_and_delete_address_the_link_by_index() {
        let (h, m) = sent(&set_up(7));
        assert_eq!((h.message_type, h.flags), (16, NLM_F_REQUEST | NLM_F_ACK));
        let RouteNetlinkMessage::NewLink(m) = m else {
            panic!("{m:?}")
        };
        assert_eq!(m.header.index, 7);
        assert_eq!(m.header.flags, LinkFlags::Up);
        assert_eq!(m.header.change_mask, LinkFlags::Up, "no other flag changes");
        assert!(m.attributes.is_empty());
        let (h, m) = sent(&delete_link(7));
        assert_eq!(h.message_type, 17, "RTM_DELLINK");
        let RouteNetlinkMessage::DelLink(m) = m else {
            panic!("{m:?}")
        };
        assert_eq!(m.header.index, 7);
    }

    #[test]
    fn managed_neighbour_request_matches_ip_neigh_managed() {
        let hop: IpAddr = "10.77.1.1".parse().unwrap();
        for (op, flags) in [
            (
                NeighbourOp::Add,
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            ),
            (
                NeighbourOp::Change,
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE,
            ),
        ] {
            let (h, m) = sent(&managed_neighbour(3, hop, op));
            assert_eq!((h.message_type, h.flags), (28, flags), "{op:?}");
            let RouteNetlinkMessage::NewNeighbour(m) = m else {
                panic!("{m:?}")
            };
            assert_eq!(m.header.family, AddressFamily::Inet);
            assert_eq!(m.header.ifindex, 3);
            assert_eq!(m.header.state, NeighbourState::None, "never permanent");
            assert_eq!(
                m.attributes,
                vec![
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(
                        10, 77, 1, 1
                    ))),
                    NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed),
                ]
            );
        }
    }

    #[test]
    fn dumps_ask_for_everything() {
        let (h, m) = sent(&dump_neighbours());
        assert_eq!((h.message_type, h.flags), (30, NLM_F_REQUEST | NLM_F_DUMP));
        let RouteNetlinkMessage::GetNeighbour(m) = m else {
            panic!("{m:?}")
        };
        assert_eq!(m.header.family, AddressFamily::Unspec, "all families");
        let (h, _) = sent(&dump_links());
        assert_eq!((h.message_type, h.flags), (18, NLM_F_REQUEST | NLM_F_DUMP));
    }

    #[test]
    fn a_dump_of_both_families_is_read_and_unusable_states_have_no_mac() {
        let v6: Ipv6Addr = "fd00:77:2::2".parse().unwrap();
        let mut reachable = neigh(AddressFamily::Inet, 4, NeighbourState::Reachable);
        reachable.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(10, 77, 2, 2))),
            NeighbourAttribute::LinkLayerAddress(MAC.to_vec()),
        ];
        let mut stale6 = neigh(AddressFamily::Inet6, 4, NeighbourState::Stale);
        stale6.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)),
            NeighbourAttribute::LinkLayerAddress(MAC.to_vec()),
        ];
        // Failed resolution: the stale MAC must not be used.
        let mut failed = neigh(AddressFamily::Inet, 5, NeighbourState::Failed);
        failed.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(10, 77, 1, 9))),
            NeighbourAttribute::LinkLayerAddress(MAC.to_vec()),
        ];
        // Bridge FDB entries have no IP address.
        let mut fdb = neigh(AddressFamily::Bridge, 4, NeighbourState::Noarp);
        fdb.attributes = vec![NeighbourAttribute::LinkLayerAddress(MAC.to_vec())];
        let mut d = datagram(
            5,
            [reachable, stale6, failed, fdb]
                .into_iter()
                .map(|n| inner(RouteNetlinkMessage::NewNeighbour(n)))
                .collect(),
        );
        // Another request's answer is not ours.
        d.extend(datagram(6, vec![done()]));
        let b = decode(&d, 5).unwrap();
        assert!(!b.finished);
        assert_eq!(b.undecodable, 0);
        let entries: Vec<Neighbour> = b
            .messages
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => neighbour(n),
                _ => None,
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                Neighbour {
                    ifindex: 4,
                    addr: "10.77.2.2".parse().unwrap(),
                    mac: Some(MAC)
                },
                Neighbour {
                    ifindex: 4,
                    addr: IpAddr::V6(v6),
                    mac: Some(MAC)
                },
                Neighbour {
                    ifindex: 5,
                    addr: "10.77.1.9".parse().unwrap(),
                    mac: None
                },
            ]
        );
        assert!(decode(&datagram(5, vec![done()]), 5).unwrap().finished);
    }

    #[test]
    fn link_macs_are_read_by_index() {
        let mut eth = LinkMessage::default();
        eth.header.index = 3;
        eth.attributes = vec![
            LinkAttribute::IfName("eth0".to_owned()),
            LinkAttribute::Address(MAC.to_vec()),
        ];
        assert_eq!(link_mac(&eth), Some((3, MAC)));
        // A tunnel with a 4-byte link address, and one without any.
        let mut tun = LinkMessage::default();
        tun.attributes = vec![LinkAttribute::Address(vec![10, 0, 0, 1])];
        assert_eq!(link_mac(&tun), None);
        assert_eq!(link_mac(&LinkMessage::default()), None);
    }

    #[test]
    fn acks_finish_and_kernel_errors_are_reported_with_their_errno() {
        assert!(decode(&datagram(1, vec![ack(0)]), 1).unwrap().finished);
        assert_eq!(
            decode(&datagram(1, vec![ack(libc::EEXIST)]), 1),
            Err(RtnlError::Kernel {
                errno: libc::EEXIST
            })
        );
        let mut failed_dump = DoneMessage::default();
        failed_dump.code = -libc::EINTR;
        assert_eq!(
            decode(&datagram(1, vec![NetlinkPayload::Done(failed_dump)]), 1),
            Err(RtnlError::Kernel { errno: libc::EINTR })
        );
        // Someone else's error is not ours.
        assert!(decode(&datagram(2, vec![ack(libc::EPERM)]), 1)
            .unwrap()
            .messages
            .is_empty());
        let text = RtnlError::Kernel {
            errno: libc::EEXIST,
        }
        .to_string();
        assert!(text.contains("exists"), "{text}");
    }

    #[test]
    fn truncation_is_reported_not_guessed() {
        let mut n = neigh(AddressFamily::Inet, 4, NeighbourState::Reachable);
        n.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(
            Ipv4Addr::new(10, 0, 0, 1),
        ))];
        let ok = datagram(1, vec![inner(RouteNetlinkMessage::NewNeighbour(n))]);
        assert_eq!(decode(&ok, 1).unwrap().messages.len(), 1);
        for cut in 1..ok.len() {
            assert_eq!(
                decode(&ok[..cut], 1),
                Err(RtnlError::Truncated(0)),
                "cut {cut}"
            );
        }
        // A second message cut short is reported at its own offset.
        let mut two = ok.clone();
        two.extend_from_slice(&ok[..ok.len() - 1]);
        assert_eq!(decode(&two, 1), Err(RtnlError::Truncated(ok.len())));
    }

    #[test]
    fn a_body_that_does_not_decode_is_counted_and_skipped() {
        let mut n = neigh(AddressFamily::Inet, 4, NeighbourState::Reachable);
        n.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(
            Ipv4Addr::new(10, 0, 0, 1),
        ))];
        let good = datagram(1, vec![inner(RouteNetlinkMessage::NewNeighbour(n))]);
        // An RTM_NEWNEIGH whose ndmsg is cut to 4 bytes: the header is fine, the body is not.
        let mut bad = good[..16].to_vec();
        bad[0..4].copy_from_slice(&20u32.to_ne_bytes());
        bad.extend_from_slice(&[2, 0, 0, 0]);
        bad.extend(good);
        let b = decode(&bad, 1).unwrap();
        assert_eq!((b.undecodable, b.messages.len()), (1, 1));
    }
}
