//! Sans-IO STUN (RFC 8489) and TURN (RFC 8656) server core.
//!
//! - [`stun`]: message and ChannelData codec, never panics on input.
//! - [`credentials`]: users file and TURN REST API (shared secret) credentials.
//! - [`server`]: the allocation server state machine (`handle_*`, `poll_output`,
//!   `poll_timeout`, `handle_timeout`), keyed by the client 5-tuple.
//! - [`crypto`]: the injected HMAC/MD5 provider.
//!
//! No sockets, clocks, threads or ambient randomness: the shell passes `now`, wall time,
//! an RNG and a relay port allocator. See docs/turn.md for the operator view.
#![forbid(unsafe_code)]

pub mod credentials;
pub mod crypto;
mod error;
pub mod server;
pub mod stun;

pub use credentials::{Credentials, RestSecret, UserDb};
pub use crypto::{Crypto, RustCrypto};
pub use error::TurnError;
pub use server::{
    AllocationHandle, Event, FiveTuple, Output, PortRangeAllocator, RelayAllocator, Server,
    ServerConfig, Status, Transmit, Transport,
};
