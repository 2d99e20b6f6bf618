//! Types shared by the xdpfork kernel programs (fork-ebpf) and user space (fork-agent).
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]`, `Copy`, has explicit padding, and
//! holds no `bool`, enum or `Option` (the kernel writes raw bytes; an invalid discriminant would be
//! undefined behaviour in user space). Sizes and offsets are asserted at compile time so a change on
//! one side cannot silently disagree with the other (the Rust form of Cilium's
//! `bpf_alignchecker.c`). Fields in network byte order end in `_be`.
//!
//! docs/maps.md describes each map and shows a `bpftool map dump` of it.
#![no_std]

use core::mem::{offset_of, size_of};

/// Default bpffs directory under which fork-agent pins every map and link.
pub const PIN_DIR_DEFAULT: &str = "/sys/fs/bpf/xdpfork";

/// Where a forked packet's [`ForkTag`] travels from the relay to the devmap egress and capture
/// programs (docs/maps.md "Fork path"). fork-agent loads the programs of one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForkPath {
    /// XDP metadata (`bpf_xdp_adjust_meta`): never in the frame. Some kernel builds refuse the
    /// helper to XDP programs.
    Metadata,
    /// Pushed in front of the frame into its headroom (`bpf_xdp_adjust_head`), taken off again by
    /// the devmap egress program on the relayed copy. Needs nothing optional.
    Headroom,
}

/// The three programs of one [`ForkPath`] (Rust function names in fork-ebpf, hence the ELF
/// symbols; at most 15 characters, so the kernel shows them whole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Programs {
    /// On media interfaces: relays anchored flows and broadcasts forked packets.
    pub relay: &'static str,
    /// Devmap program of each media interface in `TX_PORTS`: keeps only the fork broadcast's
    /// copy for the packet's egress interface (and untags it); relayed frames pass.
    pub egress: &'static str,
    /// On the fork veth's peer: redirects tagged copies into `XSKS`, tag in front.
    pub capture: &'static str,
}

impl ForkPath {
    /// In the order `auto` tries them: metadata keeps the frame untouched, headroom always loads.
    pub const ALL: [ForkPath; 2] = [ForkPath::Metadata, ForkPath::Headroom];

    /// Stable name, as in config (`fork_path`), logs and `check-kernel`.
    pub const fn name(self) -> &'static str {
        match self {
            ForkPath::Metadata => "metadata",
            ForkPath::Headroom => "headroom",
        }
    }

    pub const fn programs(self) -> Programs {
        match self {
            ForkPath::Metadata => Programs {
                relay: "xdp_relay_meta",
                egress: "xdp_egress_meta",
                capture: "xdp_fork_meta",
            },
            ForkPath::Headroom => Programs {
                relay: "xdp_relay_head",
                egress: "xdp_egress_head",
                capture: "xdp_fork_head",
            },
        }
    }
}

/// Map names, as pinned under the pin directory.
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_FLOW_STATS: &str = "FLOW_STATS";
pub const MAP_TX_PORTS: &str = "TX_PORTS";
pub const MAP_XSKS: &str = "XSKS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_NEIGHBOURS: &str = "NEIGHBOURS";
pub const MAP_TURN_CHANNELS: &str = "TURN_CHANNELS";
pub const MAP_TURN_PEERS: &str = "TURN_PEERS";
/// Every map fork-agent pins, in a stable order.
pub const ALL_MAPS: [&str; 9] = [
    MAP_FLOWS,
    MAP_FLOW_STATS,
    MAP_TX_PORTS,
    MAP_XSKS,
    MAP_COUNTERS,
    MAP_CONFIG,
    MAP_NEIGHBOURS,
    MAP_TURN_CHANNELS,
    MAP_TURN_PEERS,
];

/// Capacity of `FLOWS` (one entry per anchored port and direction) and of `FLOW_STATS`.
pub const MAX_FLOWS: u32 = 65_536;
/// Capacity of `TX_PORTS` (media interfaces plus the fork veth).
pub const MAX_TX_PORTS: u32 = 64;
/// Capacity of `XSKS` (one AF_XDP socket per fork-veth RX queue).
pub const MAX_XSKS: u32 = 64;
/// Capacity of `COUNTERS` (indexed by [`Reason`]; room to append reasons without a map change).
pub const MAX_REASONS: u32 = 64;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Key of `FLOWS`: the local (anchored) address and UDP port a packet is sent to.
/// IPv4 addresses sit in `addr_be[0]`, the other words zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub addr_be: [u32; 4],
    pub port_be: u16,
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<FlowKey>() == 20);
const _: () = assert!(offset_of!(FlowKey, port_be) == 16);

/// Drop packets whose source differs from `expect_*` (rtpengine's strict-source mode).
pub const FLOW_F_STRICT_SOURCE: u8 = 1 << 0;
/// Clone every audio packet of this flow to fork-agent.
pub const FLOW_F_FORK: u8 = 1 << 1;
/// The flow carries RTCP: relayed, never inspected as RTP nor forked.
pub const FLOW_F_RTCP: u8 = 1 << 2;
/// The key is a TURN server's listening address: ChannelData from clients, looked up in
/// `TURN_CHANNELS` (the rest of the action is unused).
pub const FLOW_F_TURN_LISTENER: u8 = 1 << 3;
/// The key is a TURN relayed address: data from peers, looked up in `TURN_PEERS`.
pub const FLOW_F_TURN_RELAY: u8 = 1 << 4;
/// The call ends on this host (a voice bot's caller, endpoint mode): nothing is relayed; audio
/// is forked when `FLOW_F_FORK` is set, everything else dropped. The destination fields are
/// unused.
pub const FLOW_F_SINK: u8 = 1 << 5;
/// A voice bot speaks into this direction of a bridged call (inject mode, replace): nothing is
/// relayed, so the bot's RTP is the only sender to the receiver; audio is still forked when
/// `FLOW_F_FORK` is set (the speech server keeps hearing the party it replaces), everything else
/// dropped. Set at a talkspurt's start, cleared at its end, each time in one update of the entry.
pub const FLOW_F_INJECT: u8 = 1 << 6;
/// Relayed RTP continues the stream the bot sent: its SSRC, sequence number and timestamp are
/// rewritten as [`FlowAction::renumber`] says (after a hand-back from inject mode).
pub const FLOW_F_RENUMBER: u8 = 1 << 7;

/// Where relayed RTP continues after a hand-back (`FLOW_F_RENUMBER`). The kernel derives a
/// sequence and a timestamp delta from the first packet it relays with a new `epoch` (that
/// packet leaves as `seq`/`ts`) and applies both to every packet after it, so the receiver sees
/// one stream without a gap whatever the relayed party sent while the bot was talking. Host
/// order, not `_be`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Renumber {
    /// SSRC every relayed RTP packet leaves with.
    pub ssrc: u32,
    /// Timestamp of the first packet relayed in this epoch.
    pub ts: u32,
    /// Sequence number of the first packet relayed in this epoch.
    pub seq: u16,
    /// Hand-back number, never 0: a new value makes the kernel derive new deltas.
    pub epoch: u16,
}
const _: () = assert!(size_of::<Renumber>() == 12);

/// Value of `FLOWS`: how to relay (and whether to fork) a packet that matched a [`FlowKey`].
/// Written by fork-agent only; the kernel never modifies it (counters live in `FLOW_STATS`), so
/// an update from user space never races with the data path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowAction {
    /// New source address (this host's address on the egress leg).
    pub src_addr_be: [u32; 4],
    /// New destination address (the peer of the egress leg).
    pub dst_addr_be: [u32; 4],
    /// Expected source address when `FLOW_F_STRICT_SOURCE` is set.
    pub expect_addr_be: [u32; 4],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub expect_port_be: u16,
    /// Address family of both legs (the kernel relays v4→v4 and v6→v6).
    pub family: u8,
    /// `FLOW_F_*`.
    pub flags: u8,
    /// Fork stream id carried in the fork tag (fork-agent's stream, no lookup needed).
    pub stream_id: u32,
    /// Slot of this flow in `FLOW_STATS`.
    pub stats_index: u32,
    /// Bit n set = RTP payload type n is audio to fork (default: 0 PCMU and 8 PCMA).
    pub pt_mask: [u32; 4],
    /// RFC 4733 telephone-event payload type, or [`NO_PT`].
    pub dtmf_pt: u8,
    pub _pad: [u8; 3],
    /// Interface the relayed packets leave by, chosen by fork-agent from the routing table when
    /// it installs the flow (0: ask `bpf_fib_lookup`, which needs IP forwarding enabled).
    pub egress_ifindex: u32,
    /// Next hop on `egress_ifindex` (the destination itself when on-link): the key into
    /// `NEIGHBOURS`. A media relay is an endpoint, not a router, so it must not need the
    /// forwarding sysctl that `bpf_fib_lookup` insists on.
    pub nexthop_be: [u32; 4],
    /// Used when `FLOW_F_RENUMBER` is set.
    pub renumber: Renumber,
}
const _: () = assert!(size_of::<FlowAction>() == 116);
const _: () = assert!(offset_of!(FlowAction, renumber) == 104);
const _: () = assert!(offset_of!(FlowAction, egress_ifindex) == 84);
const _: () = assert!(offset_of!(FlowAction, nexthop_be) == 88);

/// Key of `NEIGHBOURS`: a next hop on an interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NeighKey {
    pub addr_be: [u32; 4],
    pub ifindex: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<NeighKey>() == 24);

/// Value of `NEIGHBOURS`: the MACs of a relayed frame. Written by fork-agent from the kernel's
/// neighbour table (kept resolved with `managed` entries), read by `xdp_media_relay`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighValue {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<NeighValue>() == 16);

/// Capacity of `NEIGHBOURS`.
pub const MAX_NEIGHBOURS: u32 = 4096;

/// Capacity of `TURN_CHANNELS` and of `TURN_PEERS` (one entry per bound channel each).
pub const MAX_TURN_CHANNELS: u32 = 65_536;

/// RFC 8656 §12: channel numbers 0x4000 through 0x4FFF (RFC 5766 allowed up to 0x7FFF; the
/// kernel leaves those to user space, which answers them as the RFC in force says).
pub const TURN_CHANNEL_MIN: u16 = 0x4000;
pub const TURN_CHANNEL_MAX: u16 = 0x4FFF;

/// Key of `TURN_CHANNELS`: ChannelData from a client (5-tuple towards the server plus channel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TurnChannelKey {
    pub client_addr_be: [u32; 4],
    pub server_addr_be: [u32; 4],
    pub client_port_be: u16,
    pub server_port_be: u16,
    pub channel_be: u16,
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<TurnChannelKey>() == 40);

/// Key of `TURN_PEERS`: data from a peer to a relayed address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TurnPeerKey {
    pub relay_addr_be: [u32; 4],
    pub peer_addr_be: [u32; 4],
    pub relay_port_be: u16,
    pub peer_port_be: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<TurnPeerKey>() == 40);

/// Value of `TURN_CHANNELS` and `TURN_PEERS`: the relay action for the packet once the
/// ChannelData header is stripped (client → peer: from the relayed address to the peer) or pushed
/// (peer → client: from the server's listening address to the client), and the channel number
/// to push. Written by fork-agent on behalf of the TURN server (bound channel with a live
/// permission), removed on expiry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnAction {
    pub flow: FlowAction,
    pub channel_be: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<TurnAction>() == 120);
const _: () = assert!(offset_of!(FlowAction, src_port_be) == 48);
const _: () = assert!(offset_of!(FlowAction, stream_id) == 56);
const _: () = assert!(offset_of!(FlowAction, pt_mask) == 64);
const _: () = assert!(offset_of!(FlowAction, dtmf_pt) == 80);

/// "No payload type" marker for [`FlowAction::dtmf_pt`] (RTP payload types are 7 bits).
pub const NO_PT: u8 = 0xff;

impl FlowAction {
    /// Whether RTP payload type `pt` is forked audio.
    #[inline(always)]
    pub fn pt_allowed(&self, pt: u8) -> bool {
        let pt = pt & 0x7f;
        let word = (pt >> 5) as usize;
        // `word` is at most 3; written as a match so the verifier sees a constant index.
        let bits = match word {
            0 => self.pt_mask[0],
            1 => self.pt_mask[1],
            2 => self.pt_mask[2],
            _ => self.pt_mask[3],
        };
        bits & (1u32 << (pt & 31)) != 0
    }

    /// Build a payload type mask from a list of payload types.
    pub fn mask_of(pts: &[u8]) -> [u32; 4] {
        let mut m = [0u32; 4];
        for &pt in pts {
            let pt = pt & 0x7f;
            m[(pt >> 5) as usize] |= 1 << (pt & 31);
        }
        m
    }
}

/// Value of `FLOW_STATS` (an array indexed by [`FlowAction::stats_index`]): per-flow counters in
/// the style of rtpengine's kernel module. Written by the kernel (counters with atomic adds, the
/// sequence tracking fields by the CPU that receives the flow), zeroed by fork-agent when it
/// assigns the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets relayed by the kernel.
    pub packets: u64,
    /// UDP payload bytes relayed by the kernel.
    pub bytes: u64,
    /// Packets cloned to fork-agent.
    pub forked: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet.
    pub last_seen_ns: u64,
    /// Packets lost, by RTP sequence gaps.
    pub lost: u64,
    /// Packets that arrived with a sequence number at or before the highest seen.
    pub out_of_order: u64,
    /// RTP packets whose payload type is neither forked audio nor telephone-event.
    pub wrong_pt: u64,
    /// Packets that are not valid RTP on an RTP flow (relayed, not forked).
    pub errors: u64,
    /// Packets dropped by strict-source checking.
    pub strict_drops: u64,
    /// Packets handed to the host stack (next hop unresolved): user space relays those.
    pub passed: u64,
    /// RFC 4733 telephone-event packets.
    pub dtmf: u64,
    /// RTCP packets (on an RTCP flow or multiplexed).
    pub rtcp: u64,
    /// Last SSRC seen.
    pub ssrc: u32,
    /// Highest RTP sequence number seen.
    pub last_seq: u16,
    /// 1 once `ssrc`/`last_seq` hold a packet's values.
    pub seq_valid: u8,
    pub _pad: u8,
    /// SSRC of the newest RTP packet relayed, as it left (renumbered or not): where an injected
    /// talkspurt continues the stream.
    pub out_ssrc: u32,
    /// Its timestamp, as it left.
    pub out_ts: u32,
    /// Timestamp delta in force (`FLOW_F_RENUMBER`), derived at the epoch's first packet.
    pub rn_ts_delta: u32,
    /// Its sequence number, as it left.
    pub out_seq: u16,
    /// Sequence delta in force.
    pub rn_seq_delta: u16,
    /// The `Renumber::epoch` the deltas were derived for (0: none yet).
    pub rn_epoch: u16,
    /// 1 once `out_*` hold a relayed packet's values.
    pub out_valid: u8,
    pub _pad2: [u8; 5],
}
const _: () = assert!(size_of::<FlowStats>() == 128);
const _: () = assert!(offset_of!(FlowStats, out_ssrc) == 104);
const _: () = assert!(offset_of!(FlowStats, ssrc) == 96);

/// Tag fork-agent finds in front of every forked frame it reads from AF_XDP. The relay attaches
/// it to forked packets (in XDP metadata or in front of the frame: [`ForkPath`]); the capture
/// program hands the frame to AF_XDP with the tag in front either way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkTag {
    /// [`FORK_TAG_MAGIC`].
    pub magic: u32,
    pub stream_id: u32,
    /// Interface the relayed copy leaves by (the devmap egress program uses it).
    pub egress_ifindex: u32,
    /// Offset of the RTP header from the start of the Ethernet frame.
    pub rtp_off: u16,
    /// Offset of the RTP payload from the start of the Ethernet frame.
    pub payload_off: u16,
    /// Payload length without RTP padding.
    pub payload_len: u16,
    /// `TAG_F_*`.
    pub flags: u16,
}
const _: () = assert!(size_of::<ForkTag>() == 20);
// XDP metadata must be a multiple of 4 bytes.
const _: () = assert!(size_of::<ForkTag>().is_multiple_of(4));

impl ForkTag {
    /// The tag at the start of `bytes` (an AF_XDP frame from the capture program), if `bytes` is
    /// long enough and starts with [`FORK_TAG_MAGIC`]. The kernel writes it in this host's byte
    /// order, so it is read as the struct it is, not field by field from offsets.
    pub fn from_prefix(bytes: &[u8]) -> Option<ForkTag> {
        if bytes.len() < size_of::<ForkTag>() {
            return None;
        }
        // SAFETY: at least size_of::<ForkTag>() bytes are readable, the read is unaligned, and
        // every bit pattern is a valid ForkTag (#[repr(C)], integers only).
        let tag = unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const ForkTag) };
        (tag.magic == FORK_TAG_MAGIC).then_some(tag)
    }
}

/// Tag format version 2: the bytes `ff 'X' 'F' '2'` in memory order. The first byte has the
/// Ethernet group bit set, which no relayed frame's destination MAC has (the relay passes
/// packets whose next hop has a group MAC to the stack), so on the headroom path a frame that
/// starts with the magic is always a tagged one.
pub const FORK_TAG_MAGIC: u32 = u32::from_le_bytes([0xff, b'X', b'F', b'2']);
const _: () = assert!(FORK_TAG_MAGIC.to_le_bytes()[0] & 1 == 1);
/// The forked packet is an RFC 4733 telephone-event, not audio.
pub const TAG_F_DTMF: u16 = 1 << 0;

/// Value of `CONFIG` (a one-entry array), written by fork-agent at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Interface whose peer runs the capture program (0: forking unavailable).
    pub fork_ifindex: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Config>() == 8);

/// Why a program returned what it returned. Indexes `COUNTERS`; every exit path counts exactly
/// one. Append-only: retired values stay as `_Unused*` so dashboards keep their meaning.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed to the stack.
    PassNotIp = 0,
    /// IP but not UDP (ICMP, TCP, IPv6 extension headers): passed.
    PassNotUdp = 1,
    /// IP fragment: passed (the stack reassembles; user space relays).
    PassFragment = 2,
    /// UDP to an address/port with no flow: passed.
    PassNoFlow = 3,
    /// Headers shorter than they claim: passed, the stack decides.
    PassTruncated = 4,
    /// The route lookup failed (no route, blackhole, ...): passed.
    PassFibFailed = 5,
    /// The next hop's MAC is not resolved yet: passed, user space relays and the stack resolves.
    PassFibNoNeigh = 6,
    /// The egress interface is not one fork-agent serves (not in `TX_PORTS`): passed.
    PassEgressUnknown = 7,
    /// The flow's family differs from the packet's: passed.
    PassFamilyMismatch = 8,
    /// Relayed by redirect to another interface.
    Relayed = 9,
    /// Relayed back out of the interface it came in on (XDP_TX).
    RelayedTx = 10,
    /// Relayed and cloned to the fork interface in one broadcast redirect.
    RelayedForked = 11,
    /// Source differs from the flow's expected source (strict source): dropped.
    DropStrictSource = 12,
    /// Capture program: tagged frame redirected into an AF_XDP socket.
    ForkCaptured = 13,
    /// Capture program: no AF_XDP socket on this queue: dropped (fork-agent is not running).
    ForkNoSocket = 14,
    /// Capture program: a frame without a fork tag (the stack's own traffic): passed.
    ForkUntagged = 15,
    /// Devmap egress program: a fork broadcast copy meant for another interface: dropped.
    EgressFiltered = 16,
    /// Devmap egress program: the fork broadcast's copy for this interface, sent untagged.
    EgressSent = 17,
    /// A fork was wanted but no fork interface is configured: relayed without a clone.
    RelayedForkUnavailable = 18,
    /// The redirect helper refused (device gone between lookup and redirect): aborted.
    AbortedRedirect = 19,
    /// Capture program: no headroom to move the tag into the frame: dropped.
    ForkNoHeadroom = 20,
    /// TURN ChannelData from a client relayed to its peer (header stripped).
    TurnToPeer = 21,
    /// TURN data from a peer relayed to its client as ChannelData (header pushed).
    TurnToClient = 22,
    /// TURN: no bound channel (or permission) for this packet: passed to the TURN server.
    PassTurnNoChannel = 23,
    /// TURN: not ChannelData, a channel number out of range, or a length that does not fit:
    /// passed to the TURN server, which answers as the RFC says.
    PassTurnMalformed = 24,
    /// TURN: a layout the kernel does not rewrite (VLAN tag, IPv4 options, padded UDP
    /// ChannelData): passed to the TURN server.
    PassTurnLayout = 25,
    /// Devmap egress program: a relayed frame without a fork tag, sent as it is.
    EgressPlain = 26,
    /// Devmap egress program, headroom path: the tag could not be taken off: dropped.
    EgressUntagFailed = 27,
    /// The next hop's MAC is a group address (never a host's): passed, user space relays.
    PassGroupMac = 28,
    /// A sink flow's audio, forked to the fork veth alone (nothing relayed).
    SinkForked = 29,
    /// A sink flow's packet that is not forked (RTCP, not RTP, another payload type, no fork
    /// interface): dropped.
    SinkDropped = 30,
    /// An injected direction's audio while the bot talks, forked to the fork veth alone.
    InjectForked = 31,
    /// An injected direction's packet while the bot talks, not forked: dropped.
    InjectDropped = 32,
}

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; 33] = [
        Reason::PassNotIp,
        Reason::PassNotUdp,
        Reason::PassFragment,
        Reason::PassNoFlow,
        Reason::PassTruncated,
        Reason::PassFibFailed,
        Reason::PassFibNoNeigh,
        Reason::PassEgressUnknown,
        Reason::PassFamilyMismatch,
        Reason::Relayed,
        Reason::RelayedTx,
        Reason::RelayedForked,
        Reason::DropStrictSource,
        Reason::ForkCaptured,
        Reason::ForkNoSocket,
        Reason::ForkUntagged,
        Reason::EgressFiltered,
        Reason::EgressSent,
        Reason::RelayedForkUnavailable,
        Reason::AbortedRedirect,
        Reason::ForkNoHeadroom,
        Reason::TurnToPeer,
        Reason::TurnToClient,
        Reason::PassTurnNoChannel,
        Reason::PassTurnMalformed,
        Reason::PassTurnLayout,
        Reason::EgressPlain,
        Reason::EgressUntagFailed,
        Reason::PassGroupMac,
        Reason::SinkForked,
        Reason::SinkDropped,
        Reason::InjectForked,
        Reason::InjectDropped,
    ];

    /// Stable snake_case name, used as a metrics label and in the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassNotUdp => "pass_not_udp",
            Reason::PassFragment => "pass_fragment",
            Reason::PassNoFlow => "pass_no_flow",
            Reason::PassTruncated => "pass_truncated",
            Reason::PassFibFailed => "pass_fib_failed",
            Reason::PassFibNoNeigh => "pass_fib_no_neigh",
            Reason::PassEgressUnknown => "pass_egress_unknown",
            Reason::PassFamilyMismatch => "pass_family_mismatch",
            Reason::Relayed => "relayed",
            Reason::RelayedTx => "relayed_tx",
            Reason::RelayedForked => "relayed_forked",
            Reason::DropStrictSource => "drop_strict_source",
            Reason::ForkCaptured => "fork_captured",
            Reason::ForkNoSocket => "fork_no_socket",
            Reason::ForkUntagged => "fork_untagged",
            Reason::EgressFiltered => "egress_filtered",
            Reason::EgressSent => "egress_sent",
            Reason::RelayedForkUnavailable => "relayed_fork_unavailable",
            Reason::AbortedRedirect => "aborted_redirect",
            Reason::ForkNoHeadroom => "fork_no_headroom",
            Reason::TurnToPeer => "turn_to_peer",
            Reason::TurnToClient => "turn_to_client",
            Reason::PassTurnNoChannel => "pass_turn_no_channel",
            Reason::PassTurnMalformed => "pass_turn_malformed",
            Reason::PassTurnLayout => "pass_turn_layout",
            Reason::EgressPlain => "egress_plain",
            Reason::EgressUntagFailed => "egress_untag_failed",
            Reason::PassGroupMac => "pass_group_mac",
            Reason::SinkForked => "sink_forked",
            Reason::SinkDropped => "sink_dropped",
            Reason::InjectForked => "inject_forked",
            Reason::InjectDropped => "inject_dropped",
        }
    }
}

const _: () = assert!((Reason::ALL.len() as u32) <= MAX_REASONS);

impl TryFrom<u32> for Reason {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        Reason::ALL.get(v as usize).copied().ok_or(v)
    }
}

#[cfg(feature = "user")]
mod user {
    use core::net::{IpAddr, SocketAddr};

    use super::*;

    // SAFETY: all of these are #[repr(C)], Copy, made only of integers with explicit padding, so
    // every bit pattern is valid.
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowAction {}
    unsafe impl aya::Pod for FlowStats {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for NeighKey {}
    unsafe impl aya::Pod for NeighValue {}
    unsafe impl aya::Pod for TurnChannelKey {}
    unsafe impl aya::Pod for TurnPeerKey {}
    unsafe impl aya::Pod for TurnAction {}

    /// An address as the kernel stores it: family plus four big-endian words.
    pub fn addr_words(ip: IpAddr) -> (u8, [u32; 4]) {
        match ip {
            IpAddr::V4(v4) => (FAMILY_V4, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let mut w = [0u32; 4];
                for (i, word) in w.iter_mut().enumerate() {
                    *word =
                        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
                }
                (FAMILY_V6, w)
            }
        }
    }

    /// Inverse of [`addr_words`].
    pub fn words_addr(family: u8, w: [u32; 4]) -> IpAddr {
        if family == FAMILY_V4 {
            IpAddr::from(w[0].to_ne_bytes())
        } else {
            let mut o = [0u8; 16];
            for (i, word) in w.iter().enumerate() {
                o[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::from(o)
        }
    }

    impl FlowKey {
        pub fn new(local: SocketAddr) -> Self {
            let (family, addr_be) = addr_words(local.ip());
            FlowKey {
                addr_be,
                port_be: local.port().to_be(),
                family,
                _pad: 0,
            }
        }

        pub fn socket_addr(&self) -> SocketAddr {
            SocketAddr::new(
                words_addr(self.family, self.addr_be),
                u16::from_be(self.port_be),
            )
        }
    }
}

#[cfg(feature = "user")]
pub use user::{addr_words, words_addr};
