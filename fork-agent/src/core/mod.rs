//! Sans-IO cores of fork-agent: no sockets, no clock, no tasks (../../../shared/style.md §2).
pub mod alarms;
pub mod dataplane;
pub mod destinations;
pub mod fanout;
pub mod flows;
pub mod fork_journal;
pub mod fork_start;
pub mod forked;
pub mod idle;
pub mod map_layout;
pub mod playout;
pub mod route_cache;
pub mod rtnl;
pub mod rtp;
pub mod session;
pub mod turn_offload;
pub mod ws_pool;
pub mod ws_url;

/// A hash map for fork-agent's own integer ids (stream, call, connection ids), looked up for
/// every forked frame. The ids are ours, not chosen by a peer, so SipHash's flooding resistance
/// buys nothing there and its cost showed in the profile (docs/benchmarks.md).
pub type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
