//! Sans-IO cores of fork-agent: no sockets, no clock, no tasks (../../../docs/architecture.md).
pub mod ws_pool;
