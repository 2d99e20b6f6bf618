//! fork-agent's control API, version [`API_VERSION`] (docs/control-api.md): JSON lines on a
//! local Unix stream socket, one request line and one answer line each, plus event lines after
//! `subscribe`.
//!
//! The one definition of that contract, used by both ends:
//! - [`request`]: [`Op`] (every operation and its arguments: [`FlowSpec`], [`ForkSpec`],
//!   [`ChannelSpec`], ...), and [`parse_request`], the server's line parser with the version
//!   check;
//! - [`response`]: the [`Response`] line, the typed [`ApiError`] its `error` carries, and the
//!   typed answers ([`Answer`]: `fork_start`'s streams, `show_flows`, `show_forks`, ...);
//! - [`event`]: the [`Event`] lines (`fork_status`, `flow_removed`, `lagged`);
//! - [`codec`]: sans-IO framing (encode a request, split and decode answer lines) shared by
//! - [`BlockingClient`] (the `ctl` CLI, the tests) and [`AsyncClient`] (sip-agent,
//!   turn-server; feature `tokio`), in [`io`].
//!
//! fork-agent's server loop (its `io/control.rs`) uses [`codec::decode_request_line`] and
//! [`codec::encode_response`].
#![forbid(unsafe_code)]

pub mod codec;
pub mod event;
pub mod io;
pub mod request;
pub mod response;

pub use codec::ClientError;
pub use event::{Event, FlowRemovedReason, ForkStatus};
pub use io::blocking::Client as BlockingClient;
#[cfg(feature = "tokio")]
pub use io::tokio_client::Client as AsyncClient;
pub use request::{
    default_pts, parse_request, ChannelKey, ChannelSpec, Destination, FlowSpec, ForkSpec, Op,
    Request, ReturnAudio, ReturnMode, StreamServiceShow, StreamSpec, API_VERSION, DEFAULT_PTIME_MS,
    DESTINATION_NOT_ALLOWED,
};
pub use response::{
    Answer, ApiError, ChannelAdded, FlowAdded, FlowPath, FlowRow, Fork, ForkStarted, Response,
    StartedStream, TurnDirection, TurnRow, NOT_READY,
};
/// The speech protocol's values that requests carry.
pub use speech_proto::{Channel, Codec, PauseReason, StopReason};

#[cfg(test)]
mod tests;
