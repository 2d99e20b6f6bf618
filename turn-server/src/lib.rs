//! turn-server: a STUN/TURN server (RFC 8489 / RFC 8656) for WebRTC clients.
//!
//! - [`config`]: the TOML file, validated with errors that name the field.
//! - [`admin`]: `turn-server user add|del|list` (the users file) and `credential` (REST).
//! - [`io`]: the thin tokio shell around `turn_core::Server` (listeners, relay sockets, timer,
//!   control socket). One task owns the core.
//! - [`offload`]: which bound channels the XDP program relays (pure decision from core events).
//! - [`status`]: the control socket's wire types and the status view's text rendering.
//! - [`reload`]: what a SIGHUP applies (credentials) and what needs a restart.
//! - [`pii`]: hides client and peer addresses in logs unless asked.
//!
//! The protocol logic is in turn-core; docs/turn.md has the operator's guide.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod io;
pub mod offload;
pub mod pii;
pub mod reload;
pub mod status;
