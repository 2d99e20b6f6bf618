//! Answers: the [`Response`] line, the typed [`ApiError`] its `error` carries, and the typed
//! data of the operations whose answers callers read ([`Answer`]).
//!
//! On the wire an answer is `{"ok":true,"data":...}` (`data` left out when there is none) or
//! `{"ok":false,"error":"..."}`. The error is a sentence for people; [`ApiError`] is its typed
//! reading, and [`ApiError::from_wire`] of an error's `to_string()` gives the error back (tested
//! for every variant), so the text and the type cannot drift apart.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::request::{ForkSpec, Op};

/// How every error starts while fork-agent's data plane is not up yet (docs/control-api.md
/// "Readiness"); a client retries on it.
pub const NOT_READY: &str = "not ready";

/// One answer line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not ([`ApiError`]'s text), when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer's data, when the operation has one.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

impl Response {
    /// Carried out, with `data` (`Value::Null`: none).
    pub fn ok(data: Value) -> Response {
        Response {
            ok: true,
            error: None,
            data,
        }
    }

    /// Carried out, with typed data. Serialising the crate's answer types cannot fail; if a
    /// caller's type ever does, the client gets an error saying so instead of wrong data.
    pub fn ok_typed<T: Serialize>(data: &T) -> Response {
        match serde_json::to_value(data) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::error(&ApiError::Refused(format!(
                "Internal error: cannot encode the answer: {e}"
            ))),
        }
    }

    /// Refused with one of the protocol's errors.
    pub fn error(e: &ApiError) -> Response {
        Response::err(e.to_string())
    }

    /// Refused by the operation, for the reason `msg` (read back as [`ApiError::Refused`]).
    pub fn err(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(msg.into()),
            data: Value::Null,
        }
    }

    /// The data, or the typed error.
    pub fn into_result(self) -> Result<Value, ApiError> {
        if self.ok {
            Ok(self.data)
        } else {
            Err(ApiError::from_wire(self.error.as_deref().unwrap_or("")))
        }
    }
}

/// Why the agent refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The data plane is not up yet; `stage` says what the agent is doing. Retry.
    #[error("not ready: fork-agent is {stage}")]
    NotReady {
        /// e.g. `loading the XDP programs`.
        stage: String,
    },
    /// The request's version is not the agent's: an older or newer client than the agent.
    #[error("control API version {client} not supported (this agent speaks {agent})")]
    VersionMismatch {
        /// The version the request carried.
        client: u64,
        /// The version the agent speaks.
        agent: u64,
    },
    /// The request has no `v`.
    #[error("missing control API version field `v`")]
    MissingVersion,
    /// The line is not JSON (serde_json's description follows).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The JSON is not a known operation with its fields (serde_json's description follows:
    /// unknown `op`, a missing or unknown field, a bad value).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The line is not UTF-8; the connection stays usable.
    #[error("request line is not UTF-8 (one JSON object per line, UTF-8, \\n-terminated)")]
    NotUtf8,
    /// The line crossed the agent's limit; the agent closes the connection after this answer.
    #[error("request line longer than {max} bytes; closing the connection")]
    LineTooLong {
        /// `[control] max_line_bytes`.
        max: usize,
    },
    /// The agent is stopping and did not carry the request out.
    #[error("agent shutting down")]
    ShuttingDown,
    /// The operation itself failed; the text is the agent's reason (for forks, the reference's
    /// error strings such as `Codec is not supported`; otherwise a sentence naming what is
    /// wrong, e.g. `flow 10.0.0.1:30000 already exists`). It comes from another process, so it
    /// stays text.
    #[error("{0}")]
    Refused(String),
}

impl ApiError {
    /// Reads an answer's `error` text.
    pub fn from_wire(text: &str) -> ApiError {
        let between = |pre: &str, post: &str| {
            text.strip_prefix(pre)
                .and_then(|rest| rest.strip_suffix(post))
        };
        if let Some(stage) = text.strip_prefix("not ready: fork-agent is ") {
            return ApiError::NotReady {
                stage: stage.to_owned(),
            };
        }
        if let Some((client, agent)) = between("control API version ", ")")
            .and_then(|rest| rest.split_once(" not supported (this agent speaks "))
        {
            if let (Ok(client), Ok(agent)) = (client.parse(), agent.parse()) {
                return ApiError::VersionMismatch { client, agent };
            }
        }
        if let Some(max) = between(
            "request line longer than ",
            " bytes; closing the connection",
        )
        .and_then(|n| n.parse().ok())
        {
            return ApiError::LineTooLong { max };
        }
        if let Some(m) = text.strip_prefix("malformed JSON: ") {
            return ApiError::MalformedJson(m.to_owned());
        }
        if let Some(m) = text.strip_prefix("bad request: ") {
            return ApiError::BadRequest(m.to_owned());
        }
        for fixed in [
            ApiError::MissingVersion,
            ApiError::NotUtf8,
            ApiError::ShuttingDown,
        ] {
            if text == fixed.to_string() {
                return fixed;
            }
        }
        ApiError::Refused(text.to_owned())
    }

    /// True for [`ApiError::NotReady`]: asking again later may succeed.
    pub fn is_not_ready(&self) -> bool {
        matches!(self, ApiError::NotReady { .. })
    }
}

/// `flow_add`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowAdded {
    /// The flow's slot in `FLOW_STATS`.
    pub stats_index: u32,
    /// The user-space fallback: `bound`, or `unavailable: <why>`.
    pub fallback: String,
}

/// One stream of `fork_start`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedStream {
    /// The stream's id at the speech server (unique for the agent's lifetime).
    pub stream_id: u32,
    /// The party it carries.
    pub channel: speech_proto::Channel,
}

/// `fork_start`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkStarted {
    /// One per requested stream, in the request's order.
    pub streams: Vec<StartedStream>,
}

/// `turn_channel_add`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelAdded {
    /// `FLOW_STATS` slot counting client → peer.
    pub to_peer_stats: u32,
    /// `FLOW_STATS` slot counting peer → client.
    pub to_client_stats: u32,
}

/// Which path a flow's packets took (docs/control-api.md, `show_flows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlowPath {
    /// The kernel relays this flow.
    #[serde(rename = "kernel")]
    Kernel,
    /// The kernel relays it, and some packets went through the user-space fallback.
    #[serde(rename = "kernel+user-space")]
    KernelAndUserSpace,
    /// Packets reached the flow but only the user-space fallback relayed them.
    #[serde(rename = "user-space")]
    UserSpace,
    /// Installed, no packet yet.
    #[serde(rename = "idle")]
    Idle,
    /// The agent knows the flow but the kernel map does not.
    #[serde(rename = "missing")]
    Missing,
}

/// One row of `show_flows`: a flow, its kernel counters and its fallback's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    /// Where its packets arrive.
    pub local: SocketAddr,
    /// Where they leave from.
    pub src: SocketAddr,
    /// Where they go.
    pub dst: SocketAddr,
    /// The fork stream its audio goes out as, while forked.
    pub stream_id: Option<u32>,
    /// Its `FLOW_STATS` slot.
    pub stats_index: u32,
    /// Which path its packets took.
    pub path: FlowPath,
    /// Kernel: packets relayed.
    pub packets: u64,
    /// Kernel: bytes relayed.
    pub bytes: u64,
    /// Kernel: packets forked.
    pub forked: u64,
    /// Kernel: RTP sequence gaps.
    pub lost: u64,
    /// Kernel: packets out of order.
    pub out_of_order: u64,
    /// Kernel: payload types not forked.
    pub wrong_pt: u64,
    /// Kernel: errors.
    pub errors: u64,
    /// Kernel: dropped by the strict source check.
    pub strict_drops: u64,
    /// Kernel: handed to the stack (fragments, unresolved next hop).
    pub passed: u64,
    /// Kernel: RFC 4733 events.
    pub dtmf: u64,
    /// Kernel: RTCP packets.
    pub rtcp: u64,
    /// Kernel: last SSRC seen.
    pub ssrc: u32,
    /// Kernel: last sequence number seen.
    pub last_seq: u16,
    /// Time since the last packet; `None` before the first.
    pub idle_ms: Option<u64>,
    /// Fallback: packets relayed in user space.
    pub userspace_packets: u64,
    /// Fallback: bytes relayed in user space.
    pub userspace_bytes: u64,
    /// Fallback: packets forked in user space.
    pub userspace_forked: u64,
    /// Fallback: forks lost to a full speech queue.
    pub userspace_fork_drops: u64,
    /// Fallback socket: `bound` or `unavailable`.
    pub fallback: String,
}

/// A running fork (one entry of `show_forks`, one `start` of fork-agent's fork journal): the
/// request as accepted and the stream id given to each flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    /// The `fork_start` request.
    pub spec: ForkSpec,
    /// `(stream_id, flow local address)` in the order of `spec.streams`.
    pub streams: Vec<(u32, SocketAddr)>,
}

/// Counters of one direction of an offloaded TURN channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnDirection {
    /// Packets relayed.
    pub packets: u64,
    /// Bytes relayed.
    pub bytes: u64,
    /// Packets handed to the stack.
    pub passed: u64,
}

/// One row of `show_turn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnRow {
    /// Client address as the server sees it.
    pub client: SocketAddr,
    /// Listen address the client sends to.
    pub server: SocketAddr,
    /// Channel number.
    pub channel: u16,
    /// The allocation's relayed address.
    pub relay: SocketAddr,
    /// The peer.
    pub peer: SocketAddr,
    /// Client → peer.
    pub to_peer: TurnDirection,
    /// Peer → client.
    pub to_client: TurnDirection,
}

impl TurnRow {
    /// The channel as `turn_channel_add` asked for it.
    pub fn spec(&self) -> crate::ChannelSpec {
        crate::ChannelSpec {
            client: self.client,
            server: self.server,
            number: self.channel,
            relay: self.relay,
            peer: self.peer,
        }
    }
}

/// A carried-out request's data, typed by the operation it answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Operations without data (`flow_del`, `fork_stop`, `fork_pause`, `subscribe`, ...).
    Done,
    /// `flow_add`.
    FlowAdded(FlowAdded),
    /// `fork_start`.
    ForkStarted(ForkStarted),
    /// `turn_channel_add`.
    ChannelAdded(ChannelAdded),
    /// `show_flows`, `flow_stats`.
    Flows(Vec<FlowRow>),
    /// `show_forks`.
    Forks(Vec<Fork>),
    /// `show_turn`.
    Turn(Vec<TurnRow>),
    /// Views printed, not read, by their callers (`show_counters`, `show_stream_service`).
    Json(Value),
}

impl Answer {
    /// The answer as JSON again (what the agent sent, for printing).
    pub fn to_value(&self) -> Value {
        let v = match self {
            Answer::Done => Ok(Value::Null),
            Answer::FlowAdded(a) => serde_json::to_value(a),
            Answer::ForkStarted(a) => serde_json::to_value(a),
            Answer::ChannelAdded(a) => serde_json::to_value(a),
            Answer::Flows(a) => serde_json::to_value(a),
            Answer::Forks(a) => serde_json::to_value(a),
            Answer::Turn(a) => serde_json::to_value(a),
            Answer::Json(v) => Ok(v.clone()),
        };
        // These types were read from JSON and hold strings, numbers and addresses only.
        v.unwrap_or(Value::Null)
    }

    /// Reads the `data` answering `op`. An error means the agent answered another shape than
    /// this crate knows: a fork-agent and a client built from different versions.
    pub fn decode(op: &Op, data: Value) -> Result<Answer, serde_json::Error> {
        Ok(match op {
            Op::FlowAdd { .. } => Answer::FlowAdded(serde_json::from_value(data)?),
            Op::ForkStart { .. } => Answer::ForkStarted(serde_json::from_value(data)?),
            Op::TurnChannelAdd { .. } => Answer::ChannelAdded(serde_json::from_value(data)?),
            Op::ShowFlows | Op::FlowStats { .. } => Answer::Flows(serde_json::from_value(data)?),
            Op::ShowForks => Answer::Forks(serde_json::from_value(data)?),
            Op::ShowTurn => Answer::Turn(serde_json::from_value(data)?),
            Op::ShowCounters | Op::ShowStreamService { .. } => Answer::Json(data),
            Op::FlowDel { .. }
            | Op::ForkStop { .. }
            | Op::ForkPause { .. }
            | Op::ForkResume { .. }
            | Op::ForkUpdate { .. }
            | Op::Subscribe
            | Op::ClearStreamConnection { .. }
            | Op::ClearStreamStatistics
            | Op::TurnChannelDel { .. } => Answer::Done,
        })
    }
}
