//! The two clients: the only code of this crate that reads a clock or a socket.
#![allow(clippy::disallowed_methods)] // io: answer deadlines read the clock

pub mod blocking;
#[cfg(feature = "tokio")]
pub mod tokio_client;
