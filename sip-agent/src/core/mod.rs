//! Sans-IO cores of sip-agent: no sockets, no clock reads, no tasks. Every input carries `now`,
//! every output is drained with `poll_output`, deadlines come from `poll_timeout`
//! (../../../shared/style.md §2).
pub mod authz;
pub mod b2bua;
pub mod call_count;
pub mod call_journal;
pub mod dialog;
pub mod fork_request;
pub mod framing;
#[cfg(test)]
mod fuzz_tests;
pub mod media;
pub mod message;
pub mod multipart;
pub mod port_pool;
pub mod reconcile;
/// SDP parsing and rewriting, shared with ng-agent (media-anchor crate).
pub use media_anchor::sdp;
pub mod session_timer;
pub mod status_pacer;
#[cfg(test)]
pub mod testing;
pub mod transaction;
