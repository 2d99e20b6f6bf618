//! One map per purpose. All are BTF maps (so `bpftool map dump` prints field names) and are
//! pinned by fork-agent under one bpffs directory, which is what lets calls keep their audio while
//! the agent restarts.

use aya_ebpf::{
    btf_maps::{Array, DevMapHash, HashMap, PerCpuArray, XskMap},
    macros::btf_map,
};
use fork_common::{
    Config, FlowAction, FlowKey, FlowStats, NeighKey, NeighValue, TurnAction, TurnChannelKey,
    TurnPeerKey, MAX_FLOWS, MAX_NEIGHBOURS, MAX_REASONS, MAX_TURN_CHANNELS, MAX_TX_PORTS, MAX_XSKS,
};

/// Anchored flows. Written by fork-agent (install/remove), read by `xdp_media_relay`.
#[btf_map]
pub static FLOWS: HashMap<FlowKey, FlowAction, { MAX_FLOWS as usize }> = HashMap::new();

/// Per-flow counters, indexed by `FlowAction::stats_index`. Written by `xdp_media_relay`, read
/// (and zeroed on slot reuse) by fork-agent.
#[btf_map]
pub static FLOW_STATS: Array<FlowStats, { MAX_FLOWS as usize }> = Array::new();

/// Egress interfaces by ifindex: every media interface, each with the fork path's
/// `xdp_egress_*` devmap program, and the fork veth (without). Written by fork-agent at attach;
/// used by `xdp_relay_*` to check an egress interface, to redirect relayed packets, and for the
/// broadcast that clones forked packets. One map for both on purpose: the kernel runs the devmap
/// program of the first frame queued to a device in a NAPI cycle on the whole bulk queue
/// (`bq_enqueue` keeps one `xdp_prog` per queue), so every entry of a device must carry the same
/// program.
#[btf_map]
pub static TX_PORTS: DevMapHash<{ MAX_TX_PORTS as usize }> = DevMapHash::new();

/// AF_XDP sockets of fork-agent by fork-veth RX queue. Written by fork-agent, used by
/// `xdp_fork_capture`.
#[btf_map]
pub static XSKS: XskMap<{ MAX_XSKS as usize }> = XskMap::new();

/// Per-CPU verdict counters indexed by `fork_common::Reason`. Written by every program, summed
/// across CPUs by fork-agent.
#[btf_map]
pub static COUNTERS: PerCpuArray<u64, { MAX_REASONS as usize }> = PerCpuArray::new();

/// Runtime configuration (one entry). Written by fork-agent at start.
#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

/// Next-hop MACs by (interface, next hop). Written by fork-agent from the kernel's neighbour
/// table, read by `xdp_media_relay`.
#[btf_map]
pub static NEIGHBOURS: HashMap<NeighKey, NeighValue, { MAX_NEIGHBOURS as usize }> = HashMap::new();

/// Bound TURN channels, client side. Written by fork-agent for the TURN server, read by
/// `xdp_media_relay` for ChannelData arriving at a TURN listener.
#[btf_map]
pub static TURN_CHANNELS: HashMap<TurnChannelKey, TurnAction, { MAX_TURN_CHANNELS as usize }> =
    HashMap::new();

/// Bound TURN channels, peer side. Written by fork-agent for the TURN server, read by
/// `xdp_media_relay` for data arriving at a relayed address.
#[btf_map]
pub static TURN_PEERS: HashMap<TurnPeerKey, TurnAction, { MAX_TURN_CHANNELS as usize }> =
    HashMap::new();
