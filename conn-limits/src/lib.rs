//! Bounded resources for xdpfork's daemons (turn-server, sip-agent, fork-agent).
//!
//! The three daemons accept connections from parties they do not trust: TURN and SIP clients on
//! TCP/TLS/WebSocket, local users on Unix control sockets. Each needs the same four guards, so
//! they live here once instead of three times:
//!
//! - [`core::admission::Admission`]: per-key (address, uid) and global connection counts, and
//!   deadlines for connections that have not yet done anything useful (or went idle);
//! - [`core::log_limit::LogLimiter`]: one log line per cause per interval, with the number of
//!   lines suppressed meanwhile;
//! - [`core::backoff::AcceptBackoff`]: a bounded, growing pause after `accept` fails (EMFILE,
//!   ENFILE, ENOBUFS, ECONNABORTED…), so a full file table never turns into a busy loop;
//! - [`core::line::LineReader`]: splits a byte stream into lines without ever holding more than
//!   the configured line length.
//!
//! `core` is sans-IO (style guide §2: `now` comes in, nothing reads a clock). `io::gate` is the
//! thin tokio shell that owns one `Admission` per daemon listener set (feature `tokio`).
//!
//! Why a crate of its own: the types have three users in three binaries, none of which is a
//! library the others depend on, and the existing shared crates are the wrong home (fork-common
//! is `no_std` and shared with the kernel; turn-core and speech-proto are protocol cores).
#![forbid(unsafe_code)]

pub mod core;
#[cfg(feature = "tokio")]
pub mod io;

pub use crate::core::admission::{Admission, AdmissionConfig, ConfigProblem, ConnId, Refused};
pub use crate::core::backoff::AcceptBackoff;
pub use crate::core::line::{Line, LineReader};
pub use crate::core::log_limit::LogLimiter;
