//! ng-agent: rtpengine's ng control protocol (docs/ng-protocol.md) in front of fork-agent, so a
//! Kamailio or OpenSIPS `rtpengine` module anchors plain-RTP calls in xdpfork's kernel relay and
//! forks them to speech servers.
//!
//! `core` is sans-IO (bencode, requests, the engine), `io` the tokio shell, `config` the TOML
//! settings.
#![forbid(unsafe_code)]

pub mod config;
pub mod core;
pub mod io;
