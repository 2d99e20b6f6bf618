//! JSON control messages carried in WebSocket text frames.
//!
//! Every message is one JSON object with a `"type"` field naming the variant (serde internal
//! tagging). The client (fork-agent) sends `start`, `pause`, `resume`, `update`, `stop` and
//! `dtmf`; the server answers rule violations with `error`. Build a value and call
//! [`Control::to_json`] to send; the server parses through [`crate::Validator::handle_text`],
//! which applies the protocol rules on top of plain deserialization.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One control message (text frame).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Control {
    /// Announces a stream and its metadata; must precede every other message for the id.
    Start(Start),
    /// Suspends audio for a stream (hold, codec change, request).
    Pause(Pause),
    /// Resumes a paused stream, possibly with a new G.711 codec.
    Resume(Resume),
    /// Replaces the stream's metadata (CUBE UPDATE: metadata only, never session changes).
    Update(Update),
    /// Ends a stream; its id is dead afterwards.
    Stop(Stop),
    /// One RFC 4733 telephone-event report, sent out of band, never mixed into audio.
    Dtmf(Dtmf),
    /// Server to client: a rule violation.
    Error(ErrorMsg),
    /// Return audio (§16): from the server, report `name` once the audio sent before it on the
    /// stream has been played; from the client, that report.
    Mark(Mark),
    /// Return audio (§16), server to client: drop the stream's queued audio at once.
    Clear(Clear),
}

impl Control {
    /// Serializes to the JSON text of one text frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .expect("invariant: Control contains only strings, numbers, bools and JSON maps")
    }

    /// Stream id the message refers to (`None` only for an `error` about the connection).
    pub fn stream_id(&self) -> Option<u32> {
        match self {
            Control::Start(m) => Some(m.stream_id),
            Control::Pause(m) => Some(m.stream_id),
            Control::Resume(m) => Some(m.stream_id),
            Control::Update(m) => Some(m.stream_id),
            Control::Stop(m) => Some(m.stream_id),
            Control::Dtmf(m) => Some(m.stream_id),
            Control::Mark(m) => Some(m.stream_id),
            Control::Clear(m) => Some(m.stream_id),
            Control::Error(m) => m.stream_id,
        }
    }
}

/// Which party of the call a stream carries (CUBE forks both legs as separate streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Audio sent by the calling party.
    Caller,
    /// Audio sent by the called party.
    Callee,
}

impl Channel {
    /// Wire name (`caller` / `callee`).
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Caller => "caller",
            Channel::Callee => "callee",
        }
    }
}

/// The only codecs forked (CUBE: "WebSocket forking only supports G711ulaw and G711alaw").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Codec {
    /// G.711 µ-law, static RTP payload type 0 (RFC 3551 §4.5.14).
    #[serde(rename = "PCMU")]
    Pcmu,
    /// G.711 A-law, static RTP payload type 8 (RFC 3551 §4.5.14).
    #[serde(rename = "PCMA")]
    Pcma,
}

impl Codec {
    /// Wire name (`PCMU` / `PCMA`), also the RTP encoding name.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    /// Parses the wire name; anything else is unsupported.
    pub fn from_name(name: &str) -> Option<Codec> {
        match name {
            "PCMU" => Some(Codec::Pcmu),
            "PCMA" => Some(Codec::Pcma),
            _ => None,
        }
    }

    /// Static RTP payload type (RFC 3551 table 4).
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// Decodes one G.711 byte to 16-bit linear PCM.
    pub fn decode(self, byte: u8) -> i16 {
        match self {
            Codec::Pcmu => crate::ulaw_to_linear(byte),
            Codec::Pcma => crate::alaw_to_linear(byte),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `start`: the stream's identity and metadata (CUBE START: "metadata before media").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// Protocol version; must be [`crate::VERSION`].
    pub version: u8,
    /// Unique id of this stream for the lifetime of the client process.
    pub stream_id: u32,
    /// Call GUID from the fork request (Cisco-Guid), shared by both streams of a call.
    pub call_guid: String,
    /// SIP Call-ID of the forked call leg.
    pub call_id: String,
    /// Which party this stream carries.
    pub channel: Channel,
    /// Calling party (SIP From URI or number).
    pub from: String,
    /// Called party (SIP To URI or number).
    pub to: String,
    /// G.711 law of the payload bytes.
    pub codec: Codec,
    /// Always 8000 for G.711.
    pub sample_rate: u32,
    /// Packetization time of the RTP stream in milliseconds (typically 20).
    pub ptime_ms: u32,
    /// Free-form JSON object copied from the fork request; `{}` if none.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// `true` when re-sent after a reconnect: the server continues the same stream.
    #[serde(default, skip_serializing_if = "is_false")]
    pub resumed: bool,
    /// `true` when the server may talk back on this stream: its audio is played to this
    /// stream's party (docs/speech-protocol.md §16).
    #[serde(default, skip_serializing_if = "is_false")]
    pub return_audio: bool,
}

/// Why a stream is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// The call was put on hold.
    Hold,
    /// The call moved to a codec that is not forked (or a different G.711 law pending RESUME).
    CodecChange,
    /// The controller asked for it.
    Request,
}

/// `pause`: no audio follows for this stream until `resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    /// Stream being paused.
    pub stream_id: u32,
    /// Why.
    pub reason: PauseReason,
}

/// `resume`: audio follows again, in `codec` (which may differ from the `start` codec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    /// Stream being resumed.
    pub stream_id: u32,
    /// G.711 law of the audio from now on.
    pub codec: Codec,
}

/// `update`: replaces the metadata of a started stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// Stream being updated.
    pub stream_id: u32,
    /// New metadata object (replaces, does not merge).
    pub metadata: Map<String, Value>,
}

/// Why a stream stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The controller sent STOP (CUBE "Forking stopped").
    Request,
    /// The call ended (BYE/CANCEL).
    CallEnd,
    /// The client is shutting down.
    Shutdown,
    /// The client hit an internal error for this stream.
    Error,
}

impl StopReason {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Request => "request",
            StopReason::CallEnd => "call_end",
            StopReason::Shutdown => "shutdown",
            StopReason::Error => "error",
        }
    }
}

/// `stop`: ends the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    /// Stream being stopped.
    pub stream_id: u32,
    /// Why.
    pub reason: StopReason,
}

/// `mark` (§16): a point in a stream's return audio, reported back once played.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The stream started with `return_audio`.
    pub stream_id: u32,
    /// The server's label, at most [`crate::MAX_MARK_NAME`] bytes.
    pub name: String,
}

/// `clear` (§16): the server drops what it queued for the stream's party (barge-in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clear {
    /// The stream started with `return_audio`.
    pub stream_id: u32,
}

/// `dtmf`: one RFC 4733 §2.3 telephone-event payload, as received in RTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dtmf {
    /// Stream (party) the digit came from.
    pub stream_id: u32,
    /// Event code (RFC 4733 §3.2: 0-9 digits, 10 `*`, 11 `#`, 12-15 A-D).
    pub event: u8,
    /// E bit: this report ends the event.
    pub end: bool,
    /// Duration so far, in RTP timestamp units (8000 Hz).
    pub duration: u16,
    /// RTP timestamp of the event start.
    pub timestamp: u32,
}

/// `error`: server to client, one per violation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// Stream concerned, when the offending frame named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u32>,
    /// Stable machine-readable code (see `Violation::code`).
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn start() -> Start {
        Start {
            version: 1,
            stream_id: 7,
            call_guid: "g".into(),
            call_id: "c@h".into(),
            channel: Channel::Caller,
            from: "sip:a@x".into(),
            to: "sip:b@x".into(),
            codec: Codec::Pcmu,
            sample_rate: 8000,
            ptime_ms: 20,
            metadata: Map::new(),
            resumed: false,
            return_audio: false,
        }
    }

    #[test]
    fn start_json_shape() {
        let v: Value = serde_json::from_str(&Control::Start(start()).to_json()).expect("json");
        assert_eq!(
            v,
            json!({"type":"start","version":1,"stream_id":7,"call_guid":"g","call_id":"c@h",
                   "channel":"caller","from":"sip:a@x","to":"sip:b@x","codec":"PCMU",
                   "sample_rate":8000,"ptime_ms":20,"metadata":{}})
        );
    }

    #[test]
    fn resumed_flag_only_when_true() {
        let mut s = start();
        s.resumed = true;
        let v: Value = serde_json::from_str(&Control::Start(s).to_json()).expect("json");
        assert_eq!(v["resumed"], json!(true));
    }

    #[test]
    fn other_messages_round_trip() {
        let msgs = [
            Control::Pause(Pause {
                stream_id: 1,
                reason: PauseReason::CodecChange,
            }),
            Control::Resume(Resume {
                stream_id: 1,
                codec: Codec::Pcma,
            }),
            Control::Update(Update {
                stream_id: 1,
                metadata: json!({"k":"v"}).as_object().cloned().expect("object"),
            }),
            Control::Stop(Stop {
                stream_id: 1,
                reason: StopReason::CallEnd,
            }),
            Control::Dtmf(Dtmf {
                stream_id: 1,
                event: 11,
                end: true,
                duration: 800,
                timestamp: 1234,
            }),
            Control::Error(ErrorMsg {
                stream_id: None,
                code: "malformed_json".into(),
                message: "x".into(),
            }),
        ];
        for m in msgs {
            let text = m.to_json();
            let back: Control = serde_json::from_str(&text).expect("round trip");
            assert_eq!(back, m, "{text}");
        }
    }

    #[test]
    fn wire_names() {
        let p = Control::Pause(Pause {
            stream_id: 1,
            reason: PauseReason::CodecChange,
        });
        assert_eq!(
            p.to_json(),
            r#"{"type":"pause","stream_id":1,"reason":"codec_change"}"#
        );
        let s = Control::Stop(Stop {
            stream_id: 2,
            reason: StopReason::CallEnd,
        });
        assert_eq!(
            s.to_json(),
            r#"{"type":"stop","stream_id":2,"reason":"call_end"}"#
        );
        assert_eq!(Codec::Pcma.payload_type(), 8);
        assert_eq!(Codec::from_name("G729"), None);
    }
}
