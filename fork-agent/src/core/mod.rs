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
pub mod playout;
pub mod route_cache;
pub mod rtnl;
pub mod rtp;
pub mod session;
pub mod turn_offload;
pub mod ws_pool;
pub mod ws_url;
