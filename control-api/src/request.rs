//! Requests: every operation of docs/control-api.md "Operations" as one [`Op`], and the server's
//! line parser [`parse_request`] with the version check.
//!
//! A request line is `{"v":1,"op":"<name>",...args}`. Optional fields that are absent are left
//! out when encoding, so a line sip-agent or turn-server writes is the line the document shows.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::response::ApiError;

/// Protocol version. A request carrying another is refused with an error naming both
/// ([`ApiError::VersionMismatch`]); a client reports that error with both versions too.
pub const API_VERSION: u32 = 1;

/// One request line: the version and the operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// [`API_VERSION`] of the client.
    pub v: u32,
    /// The operation and its arguments.
    #[serde(flatten)]
    pub op: Op,
}

/// One relayed direction of an anchored media stream (`flow_add`'s `flow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// Address and port on this host the packets arrive at.
    pub local: SocketAddr,
    /// Address and port on this host the relayed packets leave from.
    pub src: SocketAddr,
    /// Where the relayed packets go.
    pub dst: SocketAddr,
    /// Strict source: only packets from this address and port are relayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<SocketAddr>,
    /// The flow carries RTCP (relayed, never forked).
    #[serde(default)]
    pub rtcp: bool,
    /// Payload types forked as audio (default `[0, 8]`: PCMU and PCMA).
    #[serde(default = "default_pts")]
    pub payload_types: Vec<u8>,
    /// RFC 4733 telephone-event payload type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtmf_pt: Option<u8>,
    /// The call ends on this host (a voice bot's caller, endpoint mode): the packets are forked
    /// when a fork uses the flow and never relayed. `src` → `dst` is then the leg a fork's
    /// return audio is sent on (`src` the anchored address the caller sends to, `dst` the
    /// caller).
    #[serde(default, skip_serializing_if = "is_false")]
    pub sink: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// PCMU and PCMA (RFC 3551 §6 static payload types 0 and 8).
pub fn default_pts() -> Vec<u8> {
    vec![0, 8]
}

/// One stream of a fork: which flow carries which party's audio.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// `caller` or `callee`.
    pub channel: speech_proto::Channel,
    /// `local` of the flow whose packets are this party's audio.
    pub flow: SocketAddr,
}

/// A fork request (`fork_start`'s `fork`): the one type that carries a fork from sip-agent's
/// media layer to fork-agent's flow table and stream service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkSpec {
    /// The controller's call GUID, the key of the fork.
    pub call_guid: String,
    /// SIP Call-ID (shown by `show_stream_service callid`, sent in `start`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub call_id: String,
    /// Calling party.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    /// Called party.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to: String,
    /// Name of a `[[speech_server]]` in the agent's config: its settings (TLS, proxy, pool,
    /// profile) apply, and its URL and token unless `destination` names others.
    pub server: String,
    /// Where the controller asked the audio to go (CUBE START `url`, `port`, `auth-token`).
    /// Absent: the server's configured URL and token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// The G.711 law the streams start with.
    pub codec: speech_proto::Codec,
    /// Packetisation time (RFC 3551 §4.5: G.711 defaults to 20 ms).
    #[serde(default = "default_ptime")]
    pub ptime_ms: u32,
    /// Opaque object passed to the speech server in `start`.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Caller stream first, then callee (the usual order; any order is accepted).
    pub streams: Vec<StreamSpec>,
    /// The speech server talks back: its audio is played to one party (docs/speech-protocol.md
    /// §16). Absent: it only listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_audio: Option<ReturnAudio>,
}

/// Where a fork's return audio goes (`fork_start`'s `fork.return_audio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnAudio {
    /// The party that hears the bot; its stream is announced with `return_audio` (default
    /// `caller`).
    #[serde(default = "default_hearer")]
    pub to: speech_proto::Channel,
    /// `local` of the flow whose leg (`src` → `dst`) carries audio to that party. A sink flow
    /// (endpoint mode): the bot is the party's only peer.
    pub flow: SocketAddr,
    /// RTP payload type of the call's codec (default: the codec's static type, 0 or 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_type: Option<u8>,
    /// On a relayed flow (inject mode), what the party hears of its peer while the bot talks.
    /// A sink flow has no peer: only `replace`.
    #[serde(default, skip_serializing_if = "ReturnMode::is_replace")]
    pub mode: ReturnMode,
}

/// What a party hears of its peer while a bot talks into a relayed flow (inject mode). When
/// the bot is silent the kernel relays the peer as usual, in both modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReturnMode {
    /// The bot alone: the peer's audio is not relayed (still forked).
    #[default]
    Replace,
    /// The bot and the peer, summed: the peer's audio must be forked (a stream of the fork is
    /// on the flow), which is where the mixer takes it from.
    Mix,
}

impl ReturnMode {
    fn is_replace(&self) -> bool {
        *self == ReturnMode::Replace
    }
}

fn default_hearer() -> speech_proto::Channel {
    speech_proto::Channel::Caller
}

/// A per-request speech destination (docs/control-api.md "fork_start"). fork-agent checks it
/// against its `[speech] allow` list before it connects anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// `ws://host[:port][/path][?query]` or `wss://…`, the port folded in.
    pub url: String,
    /// The controller's `auth-token`, presented as the profile prescribes (bearer by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    /// The dialect to speak; absent: the server entry's `profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<speech_proto::Profile>,
}

/// How fork-agent's answer to a `fork_start` begins when `[destinations] allow` refuses its
/// destination; the reason follows after `: ` (docs/control-api.md "fork_start").
pub const DESTINATION_NOT_ALLOWED: &str = "destination not allowed";

/// RFC 3551 §4.5: G.711 frames are 20 ms unless `a=ptime` says otherwise.
pub const DEFAULT_PTIME_MS: u32 = 20;

fn default_ptime() -> u32 {
    DEFAULT_PTIME_MS
}

/// A bound TURN channel with a live permission for its peer (`turn_channel_add`'s `channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// The client's address as the server sees it (UDP source).
    pub client: SocketAddr,
    /// The server's listening address the client sends to (not a wildcard).
    pub server: SocketAddr,
    /// RFC 8656 §12 channel number, 0x4000–0x4FFF.
    pub number: u16,
    /// The allocation's relayed transport address.
    pub relay: SocketAddr,
    /// The peer bound to the channel.
    pub peer: SocketAddr,
}

impl ChannelSpec {
    /// The key `turn_channel_del` removes it by.
    pub fn key(&self) -> ChannelKey {
        ChannelKey {
            client: self.client,
            server: self.server,
            number: self.number,
        }
    }
}

/// What identifies an offloaded TURN channel (`turn_channel_del`'s arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChannelKey {
    /// Client address as the server sees it.
    pub client: SocketAddr,
    /// Listen address the client sends to.
    pub server: SocketAddr,
    /// Channel number.
    pub number: u16,
}

impl ChannelKey {
    /// The request that removes this channel from the kernel.
    pub fn del_op(self) -> Op {
        Op::TurnChannelDel {
            client: self.client,
            server: self.server,
            number: self.number,
        }
    }
}

/// Every operation (docs/control-api.md "Operations").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Relay one direction of an anchored media stream in the kernel. Answer: [`FlowAdded`](crate::FlowAdded).
    FlowAdd {
        /// The flow.
        flow: FlowSpec,
    },
    /// Remove a flow (a running fork keeps its stream ids for a flow added again).
    FlowDel {
        /// The flow's `local`.
        local: SocketAddr,
    },
    /// Fork a call's audio to a speech server. Answer: [`ForkStarted`](crate::ForkStarted).
    ForkStart {
        /// The fork.
        fork: ForkSpec,
    },
    /// Stop a fork.
    ForkStop {
        /// The fork's GUID.
        call_guid: String,
        /// `request` (controller STOP, default: status "Forking stopped") or `call_end`.
        #[serde(default = "default_stop_reason")]
        reason: speech_proto::StopReason,
    },
    /// Pause both streams (hold, codec change, request); their audio is dropped and counted.
    ForkPause {
        /// The fork's GUID.
        call_guid: String,
        /// Why (default `request`).
        #[serde(default = "default_pause_reason")]
        reason: speech_proto::PauseReason,
    },
    /// Resume both streams, optionally in the other G.711 law.
    ForkResume {
        /// The fork's GUID.
        call_guid: String,
        /// The law now flowing, when it differs from the one the fork ran with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        codec: Option<speech_proto::Codec>,
    },
    /// Replace the metadata (CUBE UPDATE: metadata only).
    ForkUpdate {
        /// The fork's GUID.
        call_guid: String,
        /// The new metadata (whole object).
        metadata: Map<String, Value>,
    },
    /// From now on this connection also receives [`Event`](crate::Event) lines.
    Subscribe,
    /// CUBE `show voip stream-service ...`.
    ShowStreamService {
        /// Which view.
        what: StreamServiceShow,
        /// Call GUID / Call-ID for `callid`, the id for `connection_id`, `host:port` for
        /// `server`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arg: Option<String>,
    },
    /// CUBE `clear voip stream-service connection id N forced`.
    ClearStreamConnection {
        /// Connection id.
        id: u32,
        /// Must be true (the connection's forks fail).
        #[serde(default)]
        forced: bool,
    },
    /// CUBE `clear voip stream-service statistics`.
    ClearStreamStatistics,
    /// Every flow with its counters. Answer: a list of [`FlowRow`](crate::FlowRow).
    ShowFlows,
    /// The named flows with their counters (one call's, for an ng `query`). Answer: a list of
    /// [`FlowRow`](crate::FlowRow) in the order asked; a `local` with no flow is left out.
    FlowStats {
        /// The flows' `local`s.
        locals: Vec<SocketAddr>,
    },
    /// Kernel and user-space counters.
    ShowCounters,
    /// Every running fork. Answer: a list of [`Fork`](crate::Fork).
    ShowForks,
    /// Relay a bound TURN channel (both directions) in the kernel. Answer:
    /// [`ChannelAdded`](crate::ChannelAdded).
    TurnChannelAdd {
        /// The channel.
        channel: ChannelSpec,
    },
    /// Stop relaying a TURN channel in the kernel (expiry, refresh to 0, permission lost).
    TurnChannelDel {
        /// Client address as the server sees it.
        client: SocketAddr,
        /// Listen address the client sends to.
        server: SocketAddr,
        /// Channel number.
        number: u16,
    },
    /// Offloaded TURN channels with their kernel counters. Answer: a list of
    /// [`TurnRow`](crate::TurnRow).
    ShowTurn,
}

/// What `show_stream_service` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamServiceShow {
    /// Forks (all, or the one whose call GUID or Call-ID is `arg`).
    Callid,
    /// Live connections.
    Connection,
    /// Closed connections.
    ConnectionHistory,
    /// One connection by id (`arg`).
    ConnectionId,
    /// Connections of the servers at `arg` (`host:port`).
    Server,
    /// Counters and alarms.
    Statistics,
}

fn default_stop_reason() -> speech_proto::StopReason {
    speech_proto::StopReason::Request
}

fn default_pause_reason() -> speech_proto::PauseReason {
    speech_proto::PauseReason::Request
}

impl Op {
    /// The wire name (`flow_add`, ...), for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::FlowAdd { .. } => "flow_add",
            Op::FlowDel { .. } => "flow_del",
            Op::ForkStart { .. } => "fork_start",
            Op::ForkStop { .. } => "fork_stop",
            Op::ForkPause { .. } => "fork_pause",
            Op::ForkResume { .. } => "fork_resume",
            Op::ForkUpdate { .. } => "fork_update",
            Op::Subscribe => "subscribe",
            Op::ShowStreamService { .. } => "show_stream_service",
            Op::ClearStreamConnection { .. } => "clear_stream_connection",
            Op::ClearStreamStatistics => "clear_stream_statistics",
            Op::ShowFlows => "show_flows",
            Op::FlowStats { .. } => "flow_stats",
            Op::ShowCounters => "show_counters",
            Op::ShowForks => "show_forks",
            Op::TurnChannelAdd { .. } => "turn_channel_add",
            Op::TurnChannelDel { .. } => "turn_channel_del",
            Op::ShowTurn => "show_turn",
        }
    }

    /// Ops fork-agent's stream service answers rather than its data-plane loop.
    pub fn is_stream_service(&self) -> bool {
        matches!(
            self,
            Op::ForkPause { .. }
                | Op::ForkResume { .. }
                | Op::ForkUpdate { .. }
                | Op::ShowStreamService { .. }
                | Op::ClearStreamConnection { .. }
                | Op::ClearStreamStatistics
        )
    }

    /// The request line, without the trailing `\n`.
    pub fn to_line(&self) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            v: u32,
            #[serde(flatten)]
            op: &'a Op,
        }
        // Every field is a string, number, address or JSON value: serialising cannot fail. Should
        // it ever, the agent refuses the empty object with "missing `v`", which is visible.
        serde_json::to_string(&Wire {
            v: API_VERSION,
            op: self,
        })
        .unwrap_or_else(|_| "{}".into())
    }
}

/// Parses one request line (the server side), checking the version first so that a client of
/// another version learns that, not which field it got wrong.
pub fn parse_request(line: &str) -> Result<Op, ApiError> {
    let v: Value =
        serde_json::from_str(line).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    match v.get("v").and_then(Value::as_u64) {
        Some(ver) if ver == u64::from(API_VERSION) => {}
        Some(ver) => {
            return Err(ApiError::VersionMismatch {
                client: ver,
                agent: u64::from(API_VERSION),
            })
        }
        None => return Err(ApiError::MissingVersion),
    }
    let req: Request =
        serde_json::from_value(v).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(req.op)
}
