//! sip-agent: a SIP B2BUA that anchors call media on this host and takes fork requests from the
//! controller. `core` holds the sans-IO protocol machines; the tokio shell lives in `io` and
//! `main.rs`.
#![forbid(unsafe_code)]
pub mod config;
pub mod core;
pub mod io;
