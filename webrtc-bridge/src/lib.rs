//! Sans-IO WebRTC media bridge: one browser leg (ICE-lite, DTLS-SRTP, SRTP with rtcp-mux)
//! turned into plain RTP and RTCP for a SIP phone's side, and back.
//!
//! - [`bridge`]: the per-leg state machine ([`Bridge`]): `handle_browser`, `handle_plain`,
//!   `set_remote`, `handle_timeout`, `poll_output`, `poll_timeout`.
//! - [`dtls`]: the DTLS endpoint (OpenSSL over in-memory queues), the ECDSA P-256
//!   [`Certificate`] and its [`Fingerprint`].
//! - [`ice`]: the ICE-lite STUN responder (turn-core's STUN codec).
//! - [`srtp`]: SRTP/SRTCP contexts (rtc-srtp) with failures sorted for counting.
//!
//! No sockets, no tasks; the caller passes `now`. OpenSSL keeps its own clock and RNG inside
//! the DTLS handshake (see [`dtls`]). docs/webrtc.md describes how ng-agent uses it.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod dtls;
mod error;
pub mod ice;
pub mod srtp;
#[cfg(any(test, feature = "test-peer"))]
pub mod testing;

pub use bridge::{Bridge, Counters, EarlyAudio, Event, Output, PlainKind, RemoteParams};
pub use dtls::{Certificate, Fingerprint, Role};
pub use error::BridgeError;
pub use ice::IceCredentials;

#[cfg(test)]
mod tests;
