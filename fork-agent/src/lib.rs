//! fork-agent: loads the xdpfork XDP programs, reads forked packets over AF_XDP and streams them
//! to speech servers over WebSocket. `core` holds the sans-IO state machines, `io` the tokio and
//! kernel shells around them.
pub mod config;
pub mod core;
// The shells are where the clock is read and tasks are spawned (clippy.toml keeps cores clean).
#[allow(clippy::disallowed_methods)]
pub mod io;
