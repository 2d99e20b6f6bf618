//! Server-side rule checker for one WebSocket connection of `xdpfork.speech.v1`.
//!
//! Inputs, in arrival order: every text frame ([`Validator::handle_text`]) and every binary
//! frame ([`Validator::handle_binary`]). Outputs: an [`Event`] / [`AudioEvent`] for a frame that
//! follows the rules, or a [`Violation`] naming the broken rule. The caller answers a violation
//! with [`Violation::to_error`] as a text frame, and closes the connection with status 1002
//! (RFC 6455 §7.4.1 protocol error) only when [`Violation::is_fatal`] says so: a frame that
//! cannot be parsed at all. Per-stream rule breaks are reported and the connection continues;
//! the offending frame is ignored and leaves the stream state unchanged.
//!
//! Per-stream state machine (stream ids are per client process, so per connection here):
//!
//! ```text
//!  (unknown) --start--> Active --pause--> Paused --resume--> Active
//!                         |  \--stop--> Stopped (dead forever)  |
//!                         +-------------------------------------+--stop--> Stopped
//! ```
//!
//! Audio is accepted only in Active; `update`, `dtmf`, `pause`, `stop` need Active or Paused
//! (`pause` only from Active, `resume` only from Paused). Per-stream counters and sequence
//! tracking ([`crate::SeqTracker`]) are kept for the server's report.

use std::collections::HashMap;

use serde_json::Value;

use crate::{
    decode_audio, AudioHeader, Codec, Control, Dtmf, ErrorMsg, Pause, ProtoError, Resume, SeqOrder,
    SeqTracker, Start, Stop, Update, SAMPLE_RATE, VERSION,
};

/// A control message that follows the rules.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new stream (or, with `resumed`, the continuation of one after a reconnect).
    Start(Start),
    /// The stream is paused.
    Pause(Pause),
    /// The stream is active again.
    Resume(Resume),
    /// The stream's metadata changed.
    Update(Update),
    /// The stream ended.
    Stop(Stop),
    /// A telephone-event report.
    Dtmf(Dtmf),
    /// Return audio (§16): the client played everything before the server's mark.
    Mark(crate::Mark),
}

/// An audio frame that follows the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioEvent<'a> {
    /// The parsed header.
    pub header: AudioHeader,
    /// The G.711 payload bytes (borrowed from the frame).
    pub payload: &'a [u8],
    /// Codec of the stream at this point (from `start` or the last `resume`).
    pub codec: Codec,
    /// Where this frame's seq falls relative to the frames before it.
    pub order: SeqOrder,
}

/// Life-cycle state of one stream id on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Started and not paused: audio allowed.
    Active {
        /// Current codec.
        codec: Codec,
    },
    /// Paused: no audio until `resume`.
    Paused {
        /// Codec before the pause.
        codec: Codec,
    },
    /// Stopped (or rejected by the application): the id is dead.
    Stopped,
}

/// Counters for one stream on this connection.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    /// Accepted audio frames.
    pub frames: u64,
    /// Accepted payload bytes.
    pub payload_bytes: u64,
    /// Accepted `pause` messages.
    pub pauses: u64,
    /// Accepted `resume` messages.
    pub resumes: u64,
    /// Accepted `update` messages.
    pub updates: u64,
    /// Accepted `dtmf` messages.
    pub dtmf: u64,
    /// Audio frames whose RTP payload type is not the static one of the stream's codec.
    pub payload_type_mismatches: u64,
    /// Loss / reordering / duplicate tracking.
    pub seq: SeqTracker,
}

/// A broken protocol rule. Every variant maps to a stable [`Violation::code`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Violation {
    /// A text frame that is not a JSON object of a known `type` with that type's fields
    /// (serde's message says what was wrong). Fatal: the peer does not speak v1.
    #[error("malformed control message: {detail}")]
    MalformedJson {
        /// Stream id if one could be read from the frame.
        stream_id: Option<u32>,
        /// Parser diagnostic.
        detail: String,
    },
    /// A binary frame whose header cannot be read (short, bad magic, bad version). Fatal.
    #[error("malformed audio frame: {0}")]
    MalformedAudio(ProtoError),
    /// An audio frame with a valid header and no payload.
    #[error("audio frame for stream {stream_id} has an empty payload")]
    EmptyPayload {
        /// Stream named by the header.
        stream_id: u32,
    },
    /// The client sent a message type only the server may send (`error`).
    #[error("message type {type_name:?} is not accepted from a client")]
    UnexpectedMessage {
        /// Stream id if present.
        stream_id: Option<u32>,
        /// The `type` value.
        type_name: String,
    },
    /// `start.version` is not [`VERSION`].
    #[error(
        "stream {stream_id}: protocol version {version} is not supported (expected {VERSION})"
    )]
    UnsupportedVersion {
        /// Stream named by the message.
        stream_id: u32,
        /// Version announced.
        version: u64,
    },
    /// `codec` is not `PCMU` or `PCMA` (CUBE: "Codec is not supported").
    #[error("stream {stream_id}: codec {codec:?} is not supported (PCMU or PCMA only)")]
    UnsupportedCodec {
        /// Stream named by the message.
        stream_id: u32,
        /// Codec value as received (JSON text).
        codec: String,
    },
    /// `start.sample_rate` is not 8000 (G.711 is 8 kHz, RFC 3551 §4.5.14).
    #[error("stream {stream_id}: sample_rate {sample_rate} is not {SAMPLE_RATE}")]
    UnsupportedSampleRate {
        /// Stream named by the message.
        stream_id: u32,
        /// Rate announced.
        sample_rate: u32,
    },
    /// A message or audio for a stream id that has not been started.
    #[error("stream {stream_id}: {what} before start")]
    NotStarted {
        /// Stream named by the frame.
        stream_id: u32,
        /// Kind of frame (`audio`, `pause`, ...).
        what: &'static str,
    },
    /// `start` for a stream id that is live (active or paused) on this connection.
    #[error("stream {stream_id}: duplicate start for a live stream")]
    DuplicateStart {
        /// Stream named by the message.
        stream_id: u32,
    },
    /// Anything for a stream id after its `stop` (ids are never reused).
    #[error("stream {stream_id}: {what} after stop (stream ids are never reused)")]
    StreamStopped {
        /// Stream named by the frame.
        stream_id: u32,
        /// Kind of frame.
        what: &'static str,
    },
    /// Audio for a paused stream.
    #[error("stream {stream_id}: audio while paused")]
    AudioWhilePaused {
        /// Stream named by the header.
        stream_id: u32,
    },
    /// `pause` for a stream that is already paused.
    #[error("stream {stream_id}: pause while already paused")]
    AlreadyPaused {
        /// Stream named by the message.
        stream_id: u32,
    },
    /// `resume` for a stream that is not paused.
    #[error("stream {stream_id}: resume while not paused")]
    NotPaused {
        /// Stream named by the message.
        stream_id: u32,
    },
}

impl Violation {
    /// Stable machine-readable code sent in `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Violation::MalformedJson { .. } => "malformed_json",
            Violation::MalformedAudio(_) => "malformed_audio",
            Violation::EmptyPayload { .. } => "empty_payload",
            Violation::UnexpectedMessage { .. } => "unexpected_message",
            Violation::UnsupportedVersion { .. } => "unsupported_version",
            Violation::UnsupportedCodec { .. } => "unsupported_codec",
            Violation::UnsupportedSampleRate { .. } => "unsupported_sample_rate",
            Violation::NotStarted { .. } => "not_started",
            Violation::DuplicateStart { .. } => "duplicate_start",
            Violation::StreamStopped { .. } => "stream_stopped",
            Violation::AudioWhilePaused { .. } => "audio_while_paused",
            Violation::AlreadyPaused { .. } => "already_paused",
            Violation::NotPaused { .. } => "not_paused",
        }
    }

    /// Stream the violation is about, when known.
    pub fn stream_id(&self) -> Option<u32> {
        match self {
            Violation::MalformedJson { stream_id, .. }
            | Violation::UnexpectedMessage { stream_id, .. } => *stream_id,
            Violation::MalformedAudio(_) => None,
            Violation::EmptyPayload { stream_id }
            | Violation::UnsupportedVersion { stream_id, .. }
            | Violation::UnsupportedCodec { stream_id, .. }
            | Violation::UnsupportedSampleRate { stream_id, .. }
            | Violation::NotStarted { stream_id, .. }
            | Violation::DuplicateStart { stream_id }
            | Violation::StreamStopped { stream_id, .. }
            | Violation::AudioWhilePaused { stream_id }
            | Violation::AlreadyPaused { stream_id }
            | Violation::NotPaused { stream_id } => Some(*stream_id),
        }
    }

    /// True when the frame could not be parsed at all: the server closes with 1002.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Violation::MalformedJson { .. } | Violation::MalformedAudio(_)
        )
    }

    /// The `error` message to send back.
    pub fn to_error(&self) -> Control {
        Control::Error(ErrorMsg {
            stream_id: self.stream_id(),
            code: self.code().to_owned(),
            message: self.to_string(),
        })
    }
}

#[derive(Debug, Clone)]
struct StreamEntry {
    state: StreamState,
    stats: StreamStats,
}

/// Rule checker for one connection. Create one per accepted WebSocket.
#[derive(Debug, Default)]
pub struct Validator {
    streams: HashMap<u32, StreamEntry>,
    violations: u64,
}

fn u32_field(obj: &serde_json::Map<String, Value>, key: &str) -> Option<u32> {
    obj.get(key)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
}

impl Validator {
    /// An empty validator: no streams known.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of violations returned so far.
    pub fn violations(&self) -> u64 {
        self.violations
    }

    /// State and counters of a stream, if it was ever started on this connection.
    pub fn stream(&self, stream_id: u32) -> Option<(StreamState, &StreamStats)> {
        self.streams.get(&stream_id).map(|e| (e.state, &e.stats))
    }

    /// Ids of every stream seen on this connection (any state), unordered.
    pub fn stream_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.streams.keys().copied()
    }

    /// Marks a stream dead after the application refused its `start` (for example a
    /// non-resumed start for an id live on another connection): later frames for it are
    /// [`Violation::StreamStopped`].
    pub fn kill_stream(&mut self, stream_id: u32) {
        let entry = self.streams.entry(stream_id).or_insert(StreamEntry {
            state: StreamState::Stopped,
            stats: StreamStats::default(),
        });
        entry.state = StreamState::Stopped;
    }

    /// Checks one text frame.
    pub fn handle_text(&mut self, text: &str) -> Result<Event, Violation> {
        let r = self.check_text(text);
        if r.is_err() {
            self.violations += 1;
        }
        r
    }

    /// Checks one binary frame.
    pub fn handle_binary<'a>(&mut self, frame: &'a [u8]) -> Result<AudioEvent<'a>, Violation> {
        let r = self.check_binary(frame);
        if r.is_err() {
            self.violations += 1;
        }
        r
    }

    fn check_text(&mut self, text: &str) -> Result<Event, Violation> {
        let value: Value = serde_json::from_str(text).map_err(|e| Violation::MalformedJson {
            stream_id: None,
            detail: e.to_string(),
        })?;
        let Some(obj) = value.as_object() else {
            return Err(Violation::MalformedJson {
                stream_id: None,
                detail: "control message is not a JSON object".into(),
            });
        };
        let stream_id = u32_field(obj, "stream_id");
        let Some(type_name) = obj.get("type").and_then(Value::as_str) else {
            return Err(Violation::MalformedJson {
                stream_id,
                detail: "missing string field \"type\"".into(),
            });
        };
        // Semantic checks that must not be mistaken for a parse failure: an unsupported codec
        // or version is a per-stream error, not a reason to drop the connection.
        match (type_name, stream_id) {
            ("error", _) => {
                return Err(Violation::UnexpectedMessage {
                    stream_id,
                    type_name: type_name.to_owned(),
                })
            }
            ("start", Some(sid)) => {
                if let Some(v) = obj.get("version").and_then(Value::as_u64) {
                    if v != u64::from(VERSION) {
                        return Err(Violation::UnsupportedVersion {
                            stream_id: sid,
                            version: v,
                        });
                    }
                }
                check_codec(obj, sid)?;
            }
            ("resume", Some(sid)) => check_codec(obj, sid)?,
            _ => {}
        }
        let control: Control =
            serde_json::from_value(value).map_err(|e| Violation::MalformedJson {
                stream_id,
                detail: e.to_string(),
            })?;
        self.apply(control)
    }

    fn apply(&mut self, control: Control) -> Result<Event, Violation> {
        match control {
            Control::Start(start) => {
                let sid = start.stream_id;
                if start.sample_rate != SAMPLE_RATE {
                    return Err(Violation::UnsupportedSampleRate {
                        stream_id: sid,
                        sample_rate: start.sample_rate,
                    });
                }
                match self.streams.get(&sid).map(|e| e.state) {
                    Some(StreamState::Stopped) => Err(Violation::StreamStopped {
                        stream_id: sid,
                        what: "start",
                    }),
                    Some(_) => Err(Violation::DuplicateStart { stream_id: sid }),
                    None => {
                        self.streams.insert(
                            sid,
                            StreamEntry {
                                state: StreamState::Active { codec: start.codec },
                                stats: StreamStats::default(),
                            },
                        );
                        Ok(Event::Start(start))
                    }
                }
            }
            Control::Pause(p) => {
                let e = self.live_entry(p.stream_id, "pause")?;
                match e.state {
                    StreamState::Active { codec } => {
                        e.state = StreamState::Paused { codec };
                        e.stats.pauses += 1;
                        Ok(Event::Pause(p))
                    }
                    _ => Err(Violation::AlreadyPaused {
                        stream_id: p.stream_id,
                    }),
                }
            }
            Control::Resume(r) => {
                let e = self.live_entry(r.stream_id, "resume")?;
                match e.state {
                    StreamState::Paused { .. } => {
                        e.state = StreamState::Active { codec: r.codec };
                        e.stats.resumes += 1;
                        e.stats.seq.restart();
                        Ok(Event::Resume(r))
                    }
                    _ => Err(Violation::NotPaused {
                        stream_id: r.stream_id,
                    }),
                }
            }
            Control::Update(u) => {
                let e = self.live_entry(u.stream_id, "update")?;
                e.stats.updates += 1;
                Ok(Event::Update(u))
            }
            Control::Dtmf(d) => {
                let e = self.live_entry(d.stream_id, "dtmf")?;
                e.stats.dtmf += 1;
                Ok(Event::Dtmf(d))
            }
            Control::Stop(s) => {
                let e = self.live_entry(s.stream_id, "stop")?;
                e.state = StreamState::Stopped;
                Ok(Event::Stop(s))
            }
            Control::Mark(m) => {
                self.live_entry(m.stream_id, "mark")?;
                Ok(Event::Mark(m))
            }
            Control::Error(m) => Err(Violation::UnexpectedMessage {
                stream_id: m.stream_id,
                type_name: "error".into(),
            }),
            Control::Clear(m) => Err(Violation::UnexpectedMessage {
                stream_id: Some(m.stream_id),
                type_name: "clear".into(),
            }),
        }
    }

    /// The entry of a started, not stopped stream, or the violation for `what`.
    fn live_entry(
        &mut self,
        stream_id: u32,
        what: &'static str,
    ) -> Result<&mut StreamEntry, Violation> {
        match self.streams.get_mut(&stream_id) {
            None => Err(Violation::NotStarted { stream_id, what }),
            Some(e) if e.state == StreamState::Stopped => {
                Err(Violation::StreamStopped { stream_id, what })
            }
            Some(e) => Ok(e),
        }
    }

    fn check_binary<'a>(&mut self, frame: &'a [u8]) -> Result<AudioEvent<'a>, Violation> {
        let (header, payload) = decode_audio(frame).map_err(|e| match e {
            ProtoError::EmptyPayload { stream_id } => Violation::EmptyPayload { stream_id },
            other => Violation::MalformedAudio(other),
        })?;
        let stream_id = header.stream_id;
        let e = self.live_entry(stream_id, "audio")?;
        let StreamState::Active { codec } = e.state else {
            return Err(Violation::AudioWhilePaused { stream_id });
        };
        e.stats.frames += 1;
        e.stats.payload_bytes += payload.len() as u64;
        if header.payload_type != codec.payload_type() {
            e.stats.payload_type_mismatches += 1;
        }
        let order = e.stats.seq.record(header.seq);
        Ok(AudioEvent {
            header,
            payload,
            codec,
            order,
        })
    }
}

fn check_codec(obj: &serde_json::Map<String, Value>, stream_id: u32) -> Result<(), Violation> {
    match obj.get("codec") {
        Some(Value::String(s)) if Codec::from_name(s).is_some() => Ok(()),
        // Missing codec is a parse failure (mandatory field), reported by serde.
        None => Ok(()),
        Some(other) => Err(Violation::UnsupportedCodec {
            stream_id,
            codec: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_audio, FLAG_FIRST};

    fn start_json(sid: u32) -> String {
        format!(
            r#"{{"type":"start","version":1,"stream_id":{sid},"call_guid":"G","call_id":"C",
               "channel":"callee","from":"a","to":"b","codec":"PCMA","sample_rate":8000,
               "ptime_ms":20,"metadata":{{"lang":"en"}}}}"#
        )
    }

    fn audio(sid: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_audio(
            &mut out,
            &AudioHeader {
                stream_id: sid,
                seq,
                payload_type: 8,
                flags: 0,
                timestamp: u32::from(seq) * 160,
            },
            payload,
        );
        out
    }

    fn started(sid: u32) -> Validator {
        let mut v = Validator::new();
        v.handle_text(&start_json(sid)).expect("valid start");
        v
    }

    fn code_of<T: std::fmt::Debug>(r: Result<T, Violation>) -> &'static str {
        r.expect_err("expected a violation").code()
    }

    #[test]
    fn happy_path() {
        let mut v = Validator::new();
        match v.handle_text(&start_json(5)).expect("start") {
            Event::Start(s) => {
                assert_eq!(s.codec, Codec::Pcma);
                assert_eq!(s.metadata["lang"], "en");
            }
            other => panic!("{other:?}"),
        }
        let f = audio(5, 100, &[1, 2, 3]);
        let ev = v.handle_binary(&f).expect("audio");
        assert_eq!(ev.payload, &[1, 2, 3]);
        assert_eq!(ev.order, SeqOrder::First);
        assert_eq!(ev.codec, Codec::Pcma);
        v.handle_text(r#"{"type":"update","stream_id":5,"metadata":{"x":1}}"#)
            .expect("update");
        v.handle_text(r#"{"type":"pause","stream_id":5,"reason":"hold"}"#)
            .expect("pause");
        v.handle_text(r#"{"type":"resume","stream_id":5,"codec":"PCMU"}"#)
            .expect("resume");
        let f = audio(5, 300, &[9]);
        let ev = v.handle_binary(&f).expect("audio after resume");
        assert_eq!(ev.order, SeqOrder::First, "resume restarts the baseline");
        assert_eq!(ev.codec, Codec::Pcmu);
        v.handle_text(
            r#"{"type":"dtmf","stream_id":5,"event":1,"end":false,"duration":160,"timestamp":7}"#,
        )
        .expect("dtmf");
        v.handle_text(r#"{"type":"stop","stream_id":5,"reason":"call_end"}"#)
            .expect("stop");
        let (state, stats) = v.stream(5).expect("known");
        assert_eq!(state, StreamState::Stopped);
        assert_eq!(
            (
                stats.frames,
                stats.payload_bytes,
                stats.pauses,
                stats.resumes
            ),
            (2, 4, 1, 1)
        );
        assert_eq!((stats.updates, stats.dtmf, stats.seq.lost()), (1, 1, 0));
        assert_eq!(
            stats.payload_type_mismatches, 1,
            "PCMU frame sent with PT 8"
        );
        assert_eq!(v.violations(), 0);
    }

    #[test]
    fn the_clients_mark_reports_are_accepted_and_clear_is_the_servers() {
        let mut v = started(5);
        assert_eq!(
            v.handle_text(r#"{"type":"mark","stream_id":5,"name":"m1"}"#),
            Ok(Event::Mark(crate::Mark {
                stream_id: 5,
                name: "m1".into()
            }))
        );
        assert_eq!(
            code_of(v.handle_text(r#"{"type":"mark","stream_id":6,"name":"m1"}"#)),
            "not_started"
        );
        assert_eq!(
            code_of(v.handle_text(r#"{"type":"clear","stream_id":5}"#)),
            "unexpected_message"
        );
    }

    #[test]
    fn audio_before_start() {
        let mut v = Validator::new();
        let f = audio(1, 1, &[1]);
        assert_eq!(code_of(v.handle_binary(&f)), "not_started");
        assert_eq!(v.violations(), 1);
    }

    #[test]
    fn control_before_start() {
        for msg in [
            r#"{"type":"pause","stream_id":1,"reason":"hold"}"#,
            r#"{"type":"resume","stream_id":1,"codec":"PCMU"}"#,
            r#"{"type":"update","stream_id":1,"metadata":{}}"#,
            r#"{"type":"stop","stream_id":1,"reason":"request"}"#,
            r#"{"type":"dtmf","stream_id":1,"event":1,"end":true,"duration":1,"timestamp":1}"#,
        ] {
            let mut v = Validator::new();
            let err = v.handle_text(msg).expect_err(msg);
            assert_eq!(err.code(), "not_started", "{msg}");
            assert_eq!(err.stream_id(), Some(1));
            assert!(!err.is_fatal());
        }
    }

    #[test]
    fn duplicate_start() {
        let mut v = started(3);
        assert_eq!(code_of(v.handle_text(&start_json(3))), "duplicate_start");
        v.handle_text(r#"{"type":"pause","stream_id":3,"reason":"hold"}"#)
            .expect("pause");
        assert_eq!(code_of(v.handle_text(&start_json(3))), "duplicate_start");
    }

    #[test]
    fn audio_while_paused() {
        let mut v = started(3);
        v.handle_text(r#"{"type":"pause","stream_id":3,"reason":"codec_change"}"#)
            .expect("pause");
        let f = audio(3, 1, &[1]);
        assert_eq!(code_of(v.handle_binary(&f)), "audio_while_paused");
        assert_eq!(v.stream(3).expect("known").1.frames, 0);
    }

    #[test]
    fn pause_twice_and_resume_when_active() {
        let mut v = started(3);
        assert_eq!(
            code_of(v.handle_text(r#"{"type":"resume","stream_id":3,"codec":"PCMA"}"#)),
            "not_paused"
        );
        v.handle_text(r#"{"type":"pause","stream_id":3,"reason":"request"}"#)
            .expect("pause");
        assert_eq!(
            code_of(v.handle_text(r#"{"type":"pause","stream_id":3,"reason":"hold"}"#)),
            "already_paused"
        );
    }

    #[test]
    fn paused_stream_accepts_update_dtmf_and_stop() {
        let mut v = started(3);
        v.handle_text(r#"{"type":"pause","stream_id":3,"reason":"hold"}"#)
            .expect("pause");
        v.handle_text(r#"{"type":"update","stream_id":3,"metadata":{}}"#)
            .expect("update while paused");
        v.handle_text(r#"{"type":"stop","stream_id":3,"reason":"request"}"#)
            .expect("stop while paused");
    }

    #[test]
    fn everything_after_stop_is_dead() {
        let mut v = started(3);
        v.handle_text(r#"{"type":"stop","stream_id":3,"reason":"request"}"#)
            .expect("stop");
        let f = audio(3, 1, &[1]);
        assert_eq!(code_of(v.handle_binary(&f)), "stream_stopped");
        assert_eq!(code_of(v.handle_text(&start_json(3))), "stream_stopped");
        assert_eq!(
            code_of(v.handle_text(r#"{"type":"stop","stream_id":3,"reason":"request"}"#)),
            "stream_stopped"
        );
        assert_eq!(
            code_of(v.handle_text(r#"{"type":"update","stream_id":3,"metadata":{}}"#)),
            "stream_stopped"
        );
    }

    #[test]
    fn kill_stream_makes_id_dead() {
        let mut v = started(3);
        v.kill_stream(3);
        let f = audio(3, 1, &[1]);
        assert_eq!(code_of(v.handle_binary(&f)), "stream_stopped");
        v.kill_stream(4);
        assert_eq!(code_of(v.handle_text(&start_json(4))), "stream_stopped");
    }

    #[test]
    fn unsupported_codec_is_per_stream() {
        let mut v = Validator::new();
        let msg = start_json(9).replace("PCMA", "G729");
        let err = v.handle_text(&msg).expect_err("g729");
        assert_eq!(err.code(), "unsupported_codec");
        assert_eq!(err.stream_id(), Some(9));
        assert!(!err.is_fatal());
        assert!(v.stream(9).is_none(), "rejected start leaves no stream");
        let mut v = started(9);
        v.handle_text(r#"{"type":"pause","stream_id":9,"reason":"codec_change"}"#)
            .expect("pause");
        assert_eq!(
            code_of(v.handle_text(r#"{"type":"resume","stream_id":9,"codec":"opus"}"#)),
            "unsupported_codec"
        );
        assert_eq!(
            code_of(v.handle_text(r#"{"type":"resume","stream_id":9,"codec":0}"#)),
            "unsupported_codec"
        );
    }

    #[test]
    fn unsupported_version_and_rate() {
        let mut v = Validator::new();
        let msg = start_json(9).replace(r#""version":1"#, r#""version":2"#);
        assert_eq!(code_of(v.handle_text(&msg)), "unsupported_version");
        let msg = start_json(9).replace("8000", "16000");
        assert_eq!(code_of(v.handle_text(&msg)), "unsupported_sample_rate");
    }

    #[test]
    fn malformed_json_is_fatal() {
        for msg in [
            "not json",
            "[1,2]",
            r#"{"stream_id":1}"#,
            r#"{"type":7}"#,
            r#"{"type":"hello","stream_id":1}"#,
            r#"{"type":"pause","stream_id":1}"#,
            r#"{"type":"pause","stream_id":"1","reason":"hold"}"#,
            r#"{"type":"pause","stream_id":1,"reason":"lunch"}"#,
            r#"{"type":"start","stream_id":1}"#,
            r#"{"type":"update","stream_id":1,"metadata":[1]}"#,
            r#"{"type":"pause","stream_id":4294967296,"reason":"hold"}"#,
        ] {
            let mut v = Validator::new();
            let err = v.handle_text(msg).expect_err(msg);
            assert_eq!(err.code(), "malformed_json", "{msg}");
            assert!(err.is_fatal(), "{msg}");
        }
    }

    #[test]
    fn client_error_message_is_unexpected() {
        let mut v = Validator::new();
        let err = v
            .handle_text(r#"{"type":"error","code":"x","message":"y"}"#)
            .expect_err("error from client");
        assert_eq!(err.code(), "unexpected_message");
        assert!(!err.is_fatal());
    }

    #[test]
    fn malformed_audio_is_fatal() {
        let mut v = started(1);
        let mut f = audio(1, 1, &[1]);
        f[0] = 0;
        let err = v.handle_binary(&f).expect_err("magic");
        assert_eq!(err.code(), "malformed_audio");
        assert!(err.is_fatal());
        let mut f = audio(1, 1, &[1]);
        f[2] = 9;
        assert_eq!(code_of(v.handle_binary(&f)), "malformed_audio");
        assert_eq!(
            code_of(v.handle_binary(&[0x58, 0x46, 1])),
            "malformed_audio"
        );
        assert_eq!(v.violations(), 3);
    }

    #[test]
    fn empty_payload_is_per_stream() {
        let mut v = started(1);
        let f = audio(1, 1, &[]);
        let err = v.handle_binary(&f).expect_err("empty");
        assert_eq!(err.code(), "empty_payload");
        assert_eq!(err.stream_id(), Some(1));
        assert!(!err.is_fatal());
    }

    #[test]
    fn seq_accounting_through_validator() {
        let mut v = started(1);
        for seq in [65533u16, 65534, 1, 0, 0, 2] {
            let f = audio(1, seq, &[0xD5]);
            v.handle_binary(&f).expect("audio");
        }
        let stats = v.stream(1).expect("known").1.clone();
        assert_eq!(stats.seq.lost(), 1, "65535 never arrived");
        assert_eq!(stats.seq.out_of_order(), 1);
        assert_eq!(stats.seq.duplicates(), 1);
        assert_eq!(stats.frames, 6);
    }

    #[test]
    fn error_message_shape() {
        let err = Violation::NotStarted {
            stream_id: 4,
            what: "audio",
        };
        let json = err.to_error().to_json();
        assert_eq!(
            json,
            r#"{"type":"error","stream_id":4,"code":"not_started","message":"stream 4: audio before start"}"#
        );
    }

    #[test]
    fn first_flag_is_not_required() {
        let mut v = started(1);
        let mut out = Vec::new();
        encode_audio(
            &mut out,
            &AudioHeader {
                stream_id: 1,
                seq: 1,
                payload_type: 8,
                flags: FLAG_FIRST,
                timestamp: 0,
            },
            &[1],
        );
        v.handle_binary(&out).expect("flag accepted");
    }
}
