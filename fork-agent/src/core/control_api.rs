//! Control API v1 messages (docs/control-api.md): one JSON object per line over the agent's Unix
//! socket, one response line per request. Used by sip-agent and the CLI.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Protocol version; requests carrying another are refused with an error naming both.
pub const API_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    #[serde(flatten)]
    pub op: Op,
}

/// One relayed direction of an anchored media stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    /// Address and port on this host the packets arrive at.
    pub local: SocketAddr,
    /// Address and port on this host the relayed packets leave from.
    pub src: SocketAddr,
    /// Where the relayed packets go.
    pub dst: SocketAddr,
    /// Strict source: only packets from this address and port are relayed.
    #[serde(default)]
    pub expect: Option<SocketAddr>,
    /// The flow carries RTCP (relayed, never forked).
    #[serde(default)]
    pub rtcp: bool,
    /// Payload types forked as audio (default `[0, 8]`: PCMU and PCMA).
    #[serde(default = "default_pts")]
    pub payload_types: Vec<u8>,
    /// RFC 4733 telephone-event payload type.
    #[serde(default)]
    pub dtmf_pt: Option<u8>,
}

fn default_pts() -> Vec<u8> {
    vec![0, 8]
}

/// One stream of a fork request: which flow carries which party's audio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// "caller" or "callee".
    pub channel: speech_proto::Channel,
    /// `local` of the flow whose packets are this party's audio.
    pub flow: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkSpec {
    pub call_guid: String,
    #[serde(default)]
    pub call_id: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    /// Name of a `[[speech_server]]` in the agent's config.
    pub server: String,
    pub codec: speech_proto::Codec,
    #[serde(default = "default_ptime")]
    pub ptime_ms: u32,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    pub streams: Vec<StreamSpec>,
}

fn default_ptime() -> u32 {
    20
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    FlowAdd {
        flow: FlowSpec,
    },
    FlowDel {
        local: SocketAddr,
    },
    ForkStart {
        fork: ForkSpec,
    },
    ForkStop {
        call_guid: String,
        /// `request` (controller STOP, default: status "Forking stopped") or `call_end`.
        #[serde(default = "default_stop_reason")]
        reason: speech_proto::StopReason,
    },
    /// Pause both streams (hold, codec change, request); their audio is dropped and counted.
    ForkPause {
        call_guid: String,
        #[serde(default = "default_pause_reason")]
        reason: speech_proto::PauseReason,
    },
    /// Resume both streams, optionally in another G.711 law.
    ForkResume {
        call_guid: String,
        #[serde(default)]
        codec: Option<speech_proto::Codec>,
    },
    /// Replace the metadata (CUBE UPDATE: metadata only).
    ForkUpdate {
        call_guid: String,
        metadata: Map<String, Value>,
    },
    /// From now on this connection also receives `{"event":...}` lines.
    Subscribe,
    /// CUBE `show voip stream-service ...`.
    ShowStreamService {
        what: StreamServiceShow,
        /// Call GUID / Call-ID for `callid`, the id for `connection_id`, `host:port` for
        /// `server`.
        #[serde(default)]
        arg: Option<String>,
    },
    /// CUBE `clear voip stream-service connection id N forced`.
    ClearStreamConnection {
        id: u32,
        #[serde(default)]
        forced: bool,
    },
    /// CUBE `clear voip stream-service statistics`.
    ClearStreamStatistics,
    ShowFlows,
    ShowCounters,
    ShowForks,
    /// Relay a bound TURN channel (both directions) in the kernel.
    TurnChannelAdd {
        channel: super::turn_offload::ChannelSpec,
    },
    /// Stop relaying a TURN channel in the kernel (expiry, refresh to 0, permission lost).
    TurnChannelDel {
        client: SocketAddr,
        server: SocketAddr,
        number: u16,
    },
    /// Offloaded TURN channels with their kernel counters.
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
    /// Ops served by the stream service rather than the data-plane agent.
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
}

/// One response line: `{"ok":true,...}` or `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

impl Response {
    pub fn ok(data: Value) -> Response {
        Response {
            ok: true,
            error: None,
            data,
        }
    }

    pub fn err(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(msg.into()),
            data: Value::Null,
        }
    }
}

/// Parse one request line, checking the version.
pub fn parse_request(line: &str) -> Result<Op, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("malformed JSON: {e}"))?;
    match v.get("v").and_then(Value::as_u64) {
        Some(ver) if ver == u64::from(API_VERSION) => {}
        Some(ver) => {
            return Err(format!(
                "control API version {ver} not supported (this agent speaks {API_VERSION})"
            ))
        }
        None => return Err("missing control API version field `v`".into()),
    }
    let req: Request = serde_json::from_value(v).map_err(|e| format!("bad request: {e}"))?;
    Ok(req.op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let line = r#"{"v":1,"op":"flow_add","flow":{"local":"10.0.0.1:4000","src":"10.0.1.1:4002","dst":"10.0.1.2:5000"}}"#;
        match parse_request(line).expect("valid") {
            Op::FlowAdd { flow } => {
                assert_eq!(flow.payload_types, vec![0, 8]);
                assert_eq!(flow.expect, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse_request(r#"{"v":2,"op":"show_flows"}"#)
            .unwrap_err()
            .contains("version 2"));
        assert!(parse_request(r#"{"op":"show_flows"}"#)
            .unwrap_err()
            .contains("`v`"));
        assert!(parse_request("{nope")
            .unwrap_err()
            .contains("malformed JSON"));
        assert!(parse_request(r#"{"v":1,"op":"launch_rockets"}"#)
            .unwrap_err()
            .contains("bad request"));
    }

    #[test]
    fn fork_ops_parse_with_defaults() {
        match parse_request(r#"{"v":1,"op":"fork_pause","call_guid":"g"}"#).expect("valid") {
            Op::ForkPause { reason, .. } => assert_eq!(reason, speech_proto::PauseReason::Request),
            other => panic!("unexpected {other:?}"),
        }
        match parse_request(r#"{"v":1,"op":"fork_pause","call_guid":"g","reason":"hold"}"#)
            .expect("valid")
        {
            Op::ForkPause { reason, .. } => assert_eq!(reason, speech_proto::PauseReason::Hold),
            other => panic!("unexpected {other:?}"),
        }
        match parse_request(r#"{"v":1,"op":"fork_resume","call_guid":"g","codec":"PCMA"}"#)
            .expect("valid")
        {
            Op::ForkResume { codec, .. } => assert_eq!(codec, Some(speech_proto::Codec::Pcma)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            parse_request(r#"{"v":1,"op":"fork_resume","call_guid":"g","codec":"G729"}"#).is_err()
        );
        match parse_request(r#"{"v":1,"op":"fork_stop","call_guid":"g"}"#).expect("valid") {
            Op::ForkStop { reason, .. } => assert_eq!(reason, speech_proto::StopReason::Request),
            other => panic!("unexpected {other:?}"),
        }
        let op =
            parse_request(r#"{"v":1,"op":"show_stream_service","what":"connection_id","arg":"3"}"#)
                .expect("valid");
        assert!(op.is_stream_service());
        assert!(!parse_request(r#"{"v":1,"op":"subscribe"}"#)
            .expect("valid")
            .is_stream_service());
        assert!(
            parse_request(r#"{"v":1,"op":"fork_update","call_guid":"g"}"#)
                .unwrap_err()
                .contains("metadata")
        );
    }
}
