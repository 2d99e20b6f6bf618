//! Sans-IO pieces: every input takes `now`; nothing reads a clock, spawns or touches a socket.

pub mod admission;
pub mod backoff;
pub mod cidr;
pub mod line;
pub mod log_limit;
