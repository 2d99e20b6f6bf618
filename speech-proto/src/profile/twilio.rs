//! Twilio Media Streams, as Twilio sends them to a customer's WebSocket server
//! (<https://www.twilio.com/docs/voice/media-streams/websocket-messages>).
//!
//! Client → server, JSON text frames only: `connected`, then `start` (once, with the tracks
//! and custom parameters), `media` per RTP packet (base64 µ-law 8 kHz, `track`, `chunk`,
//! `timestamp`), `dtmf` per caller digit, `mark` echoes, and `stop` once every stream stopped
//! (or before a local close). Every message but `connected` carries `sequenceNumber`, a string
//! counting from "1"; `chunk` counts per track from "1"; `timestamp` is milliseconds since
//! `start`, also a string.
//!
//! Mapping: caller → track `inbound`, callee → `outbound`. `callSid` = `CA` + 32 hex of
//! SHA-256("twilio-call:" ‖ call GUID), `streamSid` = `MZ` + 32 hex of
//! SHA-256("twilio-stream:" ‖ call GUID): stable across reconnects, so a server can join the
//! sessions. `customParameters` = the fork metadata, non-string values as their compact JSON
//! text. A-law audio is transcoded to µ-law.
//!
//! `timestamp`: a track's first frame, and its first frame after each resume, is stamped with
//! the wall-clock milliseconds since `start` (never earlier than the end of the track's last
//! frame); later frames add their RTP timestamp distance (8 samples per ms). If that strays
//! more than [`REANCHOR_MS`] from the wall clock (an RTP timestamp jump), the track is
//! re-anchored to the wall clock.
//!
//! Server → client: `media` (base64 µ-law 8 kHz), `mark` and `clear`. When a stream was
//! started with `return_audio` they become [`BotCommand`]s for its playout, and a mark is
//! echoed by [`super::Dialect::on_mark_played`] once the audio before it has been played;
//! otherwise a mark is echoed at once (nothing is played, so it has "played") and `media` and
//! `clear` are counted. Anything else, a `streamSid` other than ours, or a binary frame is a
//! violation.

use std::time::Instant;

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{
    AudioHeader, BotCommand, Channel, Codec, Control, ServerViolation, FLAG_FIRST, MAX_MARK_NAME,
};

use super::call::{idx, Call, Change};
use super::media::g711_bytes;
use super::{
    ids, server_json, AudioEncoding, AudioFormat, DialectStats, Layout, ProfileConfig,
    ServerSignal, Speaker, WireFrame, DEFAULT_ACCOUNT_SID,
};

/// How every `media` message we send begins (`WireFrame::is_audio` recognises it by this).
pub(super) const MEDIA_PREFIX: &str = r#"{"event":"media","sequenceNumber":""#;

/// Largest distance between a track's RTP-derived and wall-clock timestamps before the track
/// is re-anchored to the wall clock.
pub(super) const REANCHOR_MS: i64 = 1000;

fn track(ch: Channel) -> &'static str {
    match ch {
        Channel::Caller => "inbound",
        Channel::Callee => "outbound",
    }
}

/// RFC 4733 §3.2 event code → the key Twilio reports (`*`, `#`, `A`–`D` included).
fn digit(event: u8) -> Option<char> {
    match event {
        0..=9 => char::from_digit(u32::from(event), 10),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// A metadata value as a Twilio custom parameter (always a string).
fn parameter(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Clock {
    /// Media messages sent on this track.
    chunk: u64,
    /// RTP timestamp and the milliseconds it was stamped with.
    anchor: Option<(u32, i64)>,
    /// End of the last frame sent, in milliseconds since `start`.
    next_ms: i64,
}

impl Clock {
    /// Milliseconds since `start` of a frame, and the clock advanced past it.
    fn stamp(&mut self, hdr: &AudioHeader, samples: usize, wall_ms: i64) -> i64 {
        let from_rtp = match self.anchor {
            Some((rtp, ms)) if hdr.flags & FLAG_FIRST == 0 => {
                let t = ms + i64::from(hdr.timestamp.wrapping_sub(rtp) as i32) / 8;
                ((t - wall_ms).abs() <= REANCHOR_MS).then_some(t.max(0))
            }
            _ => None,
        };
        let ms = from_rtp.unwrap_or_else(|| {
            let ms = wall_ms.max(self.next_ms);
            self.anchor = Some((hdr.timestamp, ms));
            ms
        });
        self.next_ms = self.next_ms.max(ms + samples as i64 / 8);
        ms
    }
}

#[derive(Debug)]
struct Session {
    stream_sid: String,
    call_sid: String,
    started: Instant,
}

/// Twilio dialect state of one connection.
#[derive(Debug)]
pub(super) struct Twilio {
    account_sid: String,
    layout: Layout,
    call: Call,
    session: Option<Session>,
    /// `sequenceNumber` of the last message sent.
    seq: u64,
    clocks: [Clock; 2],
    /// RTP timestamp of the last digit reported per party (retransmitted end reports repeat it).
    last_digit: [Option<u32>; 2],
    stopped: bool,
    /// µ-law bytes of the frame being sent (A-law transcoded here; allocated once).
    ulaw: Vec<u8>,
    stats: DialectStats,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Connected {
    event: &'static str,
    protocol: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MediaFormat {
    encoding: &'static str,
    sample_rate: u32,
    channels: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StartBody<'a> {
    account_sid: &'a str,
    stream_sid: &'a str,
    call_sid: &'a str,
    tracks: Vec<&'static str>,
    media_format: MediaFormat,
    custom_parameters: Map<String, Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StartMsg<'a> {
    event: &'static str,
    sequence_number: String,
    start: StartBody<'a>,
    stream_sid: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StopBody<'a> {
    account_sid: &'a str,
    call_sid: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StopMsg<'a> {
    event: &'static str,
    sequence_number: String,
    stop: StopBody<'a>,
    stream_sid: &'a str,
}

#[derive(Serialize)]
struct DtmfBody {
    track: &'static str,
    digit: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DtmfMsg<'a> {
    event: &'static str,
    stream_sid: &'a str,
    sequence_number: String,
    dtmf: DtmfBody,
}

#[derive(Serialize)]
struct MarkBody<'a> {
    name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MarkMsg<'a> {
    event: &'static str,
    sequence_number: String,
    stream_sid: &'a str,
    mark: MarkBody<'a>,
}

fn json(v: &impl Serialize) -> WireFrame {
    WireFrame::Text(
        serde_json::to_string(v).expect("invariant: Twilio messages hold strings and numbers"),
    )
}

impl Twilio {
    pub fn new(config: &ProfileConfig, format: AudioFormat) -> Self {
        Twilio {
            account_sid: config
                .account_sid
                .clone()
                .unwrap_or_else(|| DEFAULT_ACCOUNT_SID.to_owned()),
            layout: format.layout,
            call: Call::default(),
            session: None,
            seq: 0,
            clocks: [Clock::default(); 2],
            last_digit: [None; 2],
            stopped: false,
            ulaw: Vec::new(),
            stats: DialectStats::default(),
        }
    }

    fn carries(&self, ch: Channel) -> bool {
        match self.layout {
            Layout::MonoCaller => ch == Channel::Caller,
            Layout::MonoCallee => ch == Channel::Callee,
            _ => true,
        }
    }

    fn next_seq(&mut self) -> String {
        self.seq += 1;
        self.seq.to_string()
    }

    /// `connected` and `start`, once the call is known.
    fn announce(&mut self, now: Instant, out: &mut Vec<WireFrame>) {
        if self.session.is_some() {
            return;
        }
        let Some(info) = &self.call.info else {
            return;
        };
        let session = Session {
            stream_sid: ids::sid("MZ", "twilio-stream:", &info.call_guid),
            call_sid: ids::sid("CA", "twilio-call:", &info.call_guid),
            started: now,
        };
        let custom_parameters = info
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(parameter(v))))
            .collect();
        let tracks = [Channel::Caller, Channel::Callee]
            .into_iter()
            .filter(|ch| self.carries(*ch))
            .map(track)
            .collect();
        out.push(json(&Connected {
            event: "connected",
            protocol: "Call",
            version: "1.0.0",
        }));
        let sequence_number = self.next_seq();
        out.push(json(&StartMsg {
            event: "start",
            sequence_number,
            start: StartBody {
                account_sid: &self.account_sid,
                stream_sid: &session.stream_sid,
                call_sid: &session.call_sid,
                tracks,
                media_format: MediaFormat {
                    encoding: "audio/x-mulaw",
                    sample_rate: 8000,
                    channels: 1,
                },
                custom_parameters,
            },
            stream_sid: &session.stream_sid,
        }));
        self.session = Some(session);
    }

    fn stop(&mut self, out: &mut Vec<WireFrame>) {
        if self.stopped {
            return;
        }
        let Some(session) = &self.session else {
            return;
        };
        self.seq += 1;
        out.push(json(&StopMsg {
            event: "stop",
            sequence_number: self.seq.to_string(),
            stop: StopBody {
                account_sid: &self.account_sid,
                call_sid: &session.call_sid,
            },
            stream_sid: &session.stream_sid,
        }));
        self.stopped = true;
    }

    fn dtmf(&mut self, ch: Channel, d: &crate::Dtmf, out: &mut Vec<WireFrame>) {
        // Twilio reports a key once, on the inbound track only.
        let key = digit(d.event);
        let repeated = self.last_digit[idx(ch)] == Some(d.timestamp);
        match (ch, key, self.session.as_ref()) {
            (Channel::Caller, Some(key), Some(session)) if d.end && !repeated && !self.stopped => {
                self.seq += 1;
                out.push(json(&DtmfMsg {
                    event: "dtmf",
                    stream_sid: &session.stream_sid,
                    sequence_number: self.seq.to_string(),
                    dtmf: DtmfBody {
                        track: "inbound_track",
                        digit: key.to_string(),
                    },
                }));
                self.last_digit[idx(ch)] = Some(d.timestamp);
            }
            // Earlier reports of the same event, its retransmitted end reports.
            (Channel::Caller, Some(_), Some(_)) if !d.end || repeated => {}
            _ => self.stats.controls_not_sent += 1,
        }
    }

    /// The `mark` Twilio sends back once the audio before it has been played.
    fn echo_mark(&mut self, name: &str, out: &mut Vec<WireFrame>) {
        let Some(session) = &self.session else {
            return;
        };
        self.seq += 1;
        out.push(json(&MarkMsg {
            event: "mark",
            sequence_number: self.seq.to_string(),
            stream_sid: &session.stream_sid,
            mark: MarkBody { name },
        }));
    }

    fn check_stream_sid(&self, msg: &Map<String, Value>) -> Result<(), ServerViolation> {
        let Some(session) = &self.session else {
            return Err(ServerViolation::UnexpectedState);
        };
        match msg.get("streamSid").and_then(Value::as_str) {
            Some(sid) if sid == session.stream_sid => Ok(()),
            Some(_) => Err(ServerViolation::WrongSession),
            None => Err(ServerViolation::MalformedText),
        }
    }
}

impl Speaker for Twilio {
    fn on_control(&mut self, now: Instant, msg: &Control, out: &mut Vec<WireFrame>) {
        match self.call.apply(msg) {
            Change::Started(ch) => self.clocks[idx(ch)].anchor = None,
            Change::Dtmf(ch, d) => {
                let d = d.clone();
                self.announce(now, out);
                self.dtmf(ch, &d, out)
            }
            // Twilio has no pause or update message: a paused track just has no media.
            Change::Updated(_) | Change::Ignored => self.stats.controls_not_sent += 1,
            Change::Paused(_) | Change::Resumed(_) | Change::Stopped(_) => {}
        }
    }

    fn on_audio(&mut self, now: Instant, frame: Vec<u8>, out: &mut Vec<WireFrame>) {
        self.stats.audio_in += 1;
        let Some(audio) = self.call.audio(&frame) else {
            self.stats.audio_invalid += 1;
            return;
        };
        if !self.carries(audio.channel) {
            self.stats.audio_not_carried += 1;
            return;
        }
        self.announce(now, out);
        let Some(session) = &self.session else {
            return;
        };
        if self.stopped {
            self.stats.audio_withheld += 1;
            return;
        }
        let wall_ms = now.saturating_duration_since(session.started).as_millis() as i64;
        let clock = &mut self.clocks[idx(audio.channel)];
        let ms = clock.stamp(&audio.header, audio.payload.len(), wall_ms);
        clock.chunk += 1;
        let chunk = clock.chunk;
        self.seq += 1;
        let payload: &[u8] = match audio.codec {
            Codec::Pcmu => audio.payload,
            Codec::Pcma => {
                self.ulaw.clear();
                g711_bytes(
                    audio.codec,
                    AudioEncoding::Ulaw,
                    audio.payload,
                    &mut self.ulaw,
                );
                &self.ulaw
            }
        };
        // Built by hand into one string: every value is digits, hex or base64 (no escaping),
        // and the base64 goes straight into the frame without an intermediate string.
        let mut text = String::with_capacity(160 + payload.len() * 4 / 3);
        text.push_str(MEDIA_PREFIX);
        text.push_str(&self.seq.to_string());
        text.push_str(r#"","media":{"track":""#);
        text.push_str(track(audio.channel));
        text.push_str(r#"","chunk":""#);
        text.push_str(&chunk.to_string());
        text.push_str(r#"","timestamp":""#);
        text.push_str(&ms.to_string());
        text.push_str(r#"","payload":""#);
        base64::engine::general_purpose::STANDARD.encode_string(payload, &mut text);
        text.push_str(r#""},"streamSid":""#);
        text.push_str(&session.stream_sid);
        text.push_str(r#""}"#);
        out.push(WireFrame::Text(text));
    }

    fn flush(&mut self, now: Instant, out: &mut Vec<WireFrame>) {
        self.announce(now, out);
        if self.call.ended() {
            self.stop(out);
        }
    }

    fn on_server_text(
        &mut self,
        _now: Instant,
        text: &str,
        out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation> {
        let msg = server_json(text, super::Profile::Twilio.max_server_message())?;
        let event = msg
            .get("event")
            .and_then(Value::as_str)
            .ok_or(ServerViolation::MalformedText)?;
        let field = |name: &str, sub: &str| {
            msg.get(name)
                .and_then(|o| o.get(sub))
                .and_then(Value::as_str)
                .ok_or(ServerViolation::MalformedText)
        };
        enum Said<'a> {
            Media(&'a str),
            Mark(&'a str),
            Clear,
        }
        let said = match event {
            "media" => Said::Media(field("media", "payload")?),
            "mark" => Said::Mark(field("mark", "name")?),
            "clear" => Said::Clear,
            "connected" | "start" | "stop" | "dtmf" => {
                return Err(ServerViolation::UnexpectedMessage)
            }
            _ => return Err(ServerViolation::MalformedText),
        };
        self.check_stream_sid(&msg)?;
        // With return audio the server's `media`, `mark` and `clear` go to the playout;
        // without, nothing is played, so a mark has "played" at once.
        let Some(stream_id) = self.call.talk_back() else {
            match said {
                Said::Mark(name) => self.echo_mark(name, out),
                Said::Media(_) | Said::Clear => self.stats.server_messages_ignored += 1,
            }
            return Ok(ServerSignal::Nothing);
        };
        let command = match said {
            Said::Media(payload) => {
                let ulaw = base64::engine::general_purpose::STANDARD
                    .decode(payload)
                    .map_err(|_| ServerViolation::MalformedText)?;
                BotCommand::Play(ulaw.iter().map(|&b| crate::ulaw_to_linear(b)).collect())
            }
            Said::Mark(name) if name.len() > MAX_MARK_NAME => {
                return Err(ServerViolation::MalformedText)
            }
            Said::Mark(name) => BotCommand::Mark(name.to_owned()),
            Said::Clear => BotCommand::Clear,
        };
        self.stats.bot_commands += 1;
        Ok(ServerSignal::Bot {
            stream_id,
            commands: vec![command],
        })
    }

    fn on_local_close(&mut self, _now: Instant, out: &mut Vec<WireFrame>) {
        self.stop(out);
    }

    fn on_mark_played(
        &mut self,
        _now: Instant,
        _stream_id: u32,
        name: &str,
        out: &mut Vec<WireFrame>,
    ) {
        self.echo_mark(name, out);
    }

    fn stats(&self) -> DialectStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::profile::call::testing::*;
    use crate::profile::{Dialect, Profile, UpgradeInfo};
    use crate::{alaw_to_ulaw, StopReason};

    fn dialect(layout: Option<Layout>) -> Dialect {
        Dialect::new(&ProfileConfig {
            profile: Profile::Twilio,
            account_sid: Some(format!("AC{}", "ab".repeat(16))),
            layout,
            ..ProfileConfig::default()
        })
        .expect("dialect")
    }

    fn texts(out: &[WireFrame]) -> Vec<Value> {
        out.iter()
            .map(|f| match f {
                WireFrame::Text(t) => serde_json::from_str(t).expect("json"),
                WireFrame::Binary(_) => panic!("binary frame"),
            })
            .collect()
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn a_call_as_twilio_sends_it() {
        let t0 = Instant::now();
        let mut d = dialect(None);
        let up = d.upgrade(&UpgradeInfo {
            authority: "bot.example.com",
            path_and_query: "/media",
            token: Some("t0k"),
            unix_now: 0,
            nonce: [0; 16],
        });
        assert_eq!(up.subprotocol, None);
        assert_eq!(
            up.headers,
            vec![("Authorization".into(), "Bearer t0k".into())]
        );
        let mut out = Vec::new();
        d.on_control(t0, &start(Channel::Caller, Codec::Pcmu), &mut out);
        d.on_control(t0, &start(Channel::Callee, Codec::Pcma), &mut out);
        assert!(out.is_empty(), "announced at flush");
        d.flush(t0, &mut out);
        let stream_sid = ids::sid("MZ", "twilio-stream:", GUID);
        let call_sid = ids::sid("CA", "twilio-call:", GUID);
        let acct = format!("AC{}", "ab".repeat(16));
        assert_eq!(
            texts(&out),
            vec![
                json!({"event":"connected","protocol":"Call","version":"1.0.0"}),
                json!({"event":"start","sequenceNumber":"1","start":{
                    "accountSid":acct,"streamSid":stream_sid,"callSid":call_sid,
                    "tracks":["inbound","outbound"],
                    "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},
                    "customParameters":{"campaign":"support","language":"en-US","priority":"2"}},
                    "streamSid":stream_sid}),
            ]
        );
        // Field order as in Twilio's published examples.
        assert_eq!(keys(&out[0]), ["event", "protocol", "version"]);
        assert_eq!(
            keys(&out[1]),
            ["event", "sequenceNumber", "start", "streamSid"]
        );
        out.clear();

        let caller: Vec<u8> = (0..160).map(|i| i as u8).collect();
        let callee: Vec<u8> = (0..160).map(|i| (255 - i) as u8).collect();
        d.on_audio(
            t0 + Duration::from_millis(3),
            frame(Channel::Caller, Codec::Pcmu, 10, 1000, true, &caller),
            &mut out,
        );
        d.on_audio(
            t0 + Duration::from_millis(5),
            frame(Channel::Callee, Codec::Pcma, 90, 5000, true, &callee),
            &mut out,
        );
        d.on_audio(
            t0 + Duration::from_millis(24),
            frame(Channel::Caller, Codec::Pcmu, 11, 1160, false, &caller),
            &mut out,
        );
        let m = texts(&out);
        assert!(
            out.iter().all(WireFrame::is_audio),
            "media may be dropped under back-pressure"
        );
        assert_eq!(
            keys(&out[0]),
            ["event", "sequenceNumber", "media", "streamSid"]
        );
        let WireFrame::Text(first) = &out[0] else {
            unreachable!()
        };
        assert!(first.starts_with(r#"{"event":"media","sequenceNumber":"2","media":{"track":"inbound","chunk":"1","timestamp":"3","payload":""#), "{first}");
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = |v: &Value| {
            b64.decode(v["media"]["payload"].as_str().expect("payload"))
                .expect("base64")
        };
        assert_eq!(payload(&m[0]), caller, "µ-law passes through unchanged");
        let want: Vec<u8> = callee.iter().map(|&b| alaw_to_ulaw(b)).collect();
        assert_eq!(payload(&m[1]), want, "A-law is transcoded");
        assert_eq!(m[1]["media"]["track"], "outbound");
        assert_eq!(
            (
                &m[1]["sequenceNumber"],
                &m[1]["media"]["chunk"],
                &m[1]["media"]["timestamp"]
            ),
            (&json!("3"), &json!("1"), &json!("5"))
        );
        // Second caller frame: 160 samples later = 20 ms after the first, from RTP.
        assert_eq!(
            (
                &m[2]["sequenceNumber"],
                &m[2]["media"]["chunk"],
                &m[2]["media"]["timestamp"]
            ),
            (&json!("4"), &json!("2"), &json!("23"))
        );
        out.clear();

        // A digit of the caller: reported once (retransmitted end reports repeat it).
        d.on_control(t0, &dtmf(Channel::Caller, 11, 1320), &mut out);
        d.on_control(t0, &dtmf(Channel::Caller, 11, 1320), &mut out);
        d.on_control(t0, &dtmf(Channel::Callee, 5, 5160), &mut out);
        assert_eq!(
            texts(&out),
            vec![
                json!({"event":"dtmf","streamSid":stream_sid,"sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"#"}})
            ]
        );
        assert_eq!(
            keys(&out[0]),
            ["event", "streamSid", "sequenceNumber", "dtmf"]
        );
        out.clear();

        // Server mark: echoed at once.
        let mark =
            json!({"event":"mark","streamSid":stream_sid,"mark":{"name":"my label"}}).to_string();
        assert_eq!(
            d.on_server_text(t0, &mark, &mut out),
            Ok(ServerSignal::Nothing)
        );
        assert_eq!(
            texts(&out),
            vec![
                json!({"event":"mark","sequenceNumber":"6","streamSid":stream_sid,"mark":{"name":"my label"}})
            ]
        );
        assert_eq!(
            keys(&out[0]),
            ["event", "sequenceNumber", "streamSid", "mark"]
        );
        out.clear();

        // Stop of both streams: one `stop`, at flush.
        d.on_control(t0, &stop(Channel::Caller, StopReason::CallEnd), &mut out);
        d.on_control(t0, &stop(Channel::Callee, StopReason::CallEnd), &mut out);
        assert!(out.is_empty());
        d.flush(t0, &mut out);
        d.on_local_close(t0, &mut out);
        assert_eq!(
            texts(&out),
            vec![
                json!({"event":"stop","sequenceNumber":"7","stop":{"accountSid":acct,"callSid":call_sid},"streamSid":stream_sid})
            ]
        );
        assert_eq!(
            keys(&out[0]),
            ["event", "sequenceNumber", "stop", "streamSid"]
        );
        assert_eq!(d.stats().controls_not_sent, 1, "the callee digit");
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn timestamps_continue_across_a_pause_and_reanchor_on_jumps() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = dialect(Some(Layout::MonoCaller));
        let mut out = Vec::new();
        d.on_control(t0, &start(Channel::Caller, Codec::Pcmu), &mut out);
        d.on_control(t0, &start(Channel::Callee, Codec::Pcmu), &mut out);
        d.flush(t0, &mut out);
        assert_eq!(texts(&out)[1]["start"]["tracks"], json!(["inbound"]));
        out.clear();
        let p = [0xFF; 160];
        d.on_audio(
            at(0),
            frame(Channel::Caller, Codec::Pcmu, 1, 0, true, &p),
            &mut out,
        );
        d.on_audio(
            at(20),
            frame(Channel::Callee, Codec::Pcmu, 1, 0, true, &p),
            &mut out,
        );
        d.on_audio(
            at(21),
            frame(Channel::Caller, Codec::Pcmu, 2, 160, false, &p),
            &mut out,
        );
        d.on_control(at(30), &pause(Channel::Caller), &mut out);
        d.on_control(at(5000), &resume(Channel::Caller, Codec::Pcmu), &mut out);
        // After the resume the RTP clock restarted elsewhere: wall clock anchors it.
        d.on_audio(
            at(5003),
            frame(Channel::Caller, Codec::Pcmu, 900, 777, true, &p),
            &mut out,
        );
        d.on_audio(
            at(5023),
            frame(Channel::Caller, Codec::Pcmu, 901, 937, false, &p),
            &mut out,
        );
        // A jump of the RTP timestamp without a pause: re-anchored to the wall clock.
        d.on_audio(
            at(5043),
            frame(
                Channel::Caller,
                Codec::Pcmu,
                902,
                937 + 8_000_000,
                false,
                &p,
            ),
            &mut out,
        );
        let ts: Vec<Value> = texts(&out)
            .iter()
            .map(|m| m["media"]["timestamp"].clone())
            .collect();
        assert_eq!(
            ts,
            [
                json!("0"),
                json!("20"),
                json!("5003"),
                json!("5023"),
                json!("5043")
            ]
        );
        assert_eq!(d.stats().audio_not_carried, 1);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn server_messages() {
        let t0 = Instant::now();
        let mut d = dialect(None);
        let mut out = Vec::new();
        let mark =
            |sid: &str| json!({"event":"mark","streamSid":sid,"mark":{"name":"x"}}).to_string();
        assert_eq!(
            d.on_server_text(t0, &mark("MZ1"), &mut out),
            Err(ServerViolation::UnexpectedState),
            "before start"
        );
        d.on_control(t0, &start(Channel::Caller, Codec::Pcmu), &mut out);
        d.flush(t0, &mut out);
        out.clear();
        let sid = ids::sid("MZ", "twilio-stream:", GUID);
        use ServerViolation::*;
        let cases: Vec<(String, Result<ServerSignal, ServerViolation>)> = vec![
            (
                json!({"event":"clear","streamSid":sid}).to_string(),
                Ok(ServerSignal::Nothing),
            ),
            (
                json!({"event":"media","streamSid":sid,"media":{"payload":"AAAA"}}).to_string(),
                Ok(ServerSignal::Nothing),
            ),
            (
                json!({"event":"media","streamSid":sid,"media":{}}).to_string(),
                Err(MalformedText),
            ),
            (json!({"event":"clear"}).to_string(), Err(MalformedText)),
            (mark("MZ0000"), Err(WrongSession)),
            (
                json!({"event":"mark","streamSid":sid}).to_string(),
                Err(MalformedText),
            ),
            (
                json!({"event":"start","streamSid":sid}).to_string(),
                Err(UnexpectedMessage),
            ),
            (json!({"event":"hello"}).to_string(), Err(MalformedText)),
            ("not json".into(), Err(MalformedText)),
            (
                format!(
                    "{{\"event\":\"clear\",\"pad\":\"{}\"}}",
                    "x".repeat(300 * 1024)
                ),
                Err(TooLarge),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                d.on_server_text(t0, &text, &mut out),
                want,
                "{}",
                &text[..text.len().min(80)]
            );
        }
        assert!(out.is_empty());
        assert_eq!(d.stats().server_messages_ignored, 2);
        assert_eq!(d.on_server_binary(t0, &[1], &mut out), Err(BinaryFrame));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn return_audio_turns_media_mark_and_clear_into_bot_commands() {
        let t0 = Instant::now();
        let mut d = dialect(None);
        let mut out = Vec::new();
        let Control::Start(mut caller) = start(Channel::Caller, Codec::Pcma) else {
            unreachable!("start() builds a start")
        };
        caller.return_audio = true;
        d.on_control(t0, &Control::Start(caller), &mut out);
        d.on_control(t0, &start(Channel::Callee, Codec::Pcma), &mut out);
        d.flush(t0, &mut out);
        out.clear();
        let sid = ids::sid("MZ", "twilio-stream:", GUID);
        let b64 = base64::engine::general_purpose::STANDARD.encode([0xff, 0x00, 0x80]);
        let bot = |command| {
            Ok(ServerSignal::Bot {
                stream_id: super::super::call::testing::sid(Channel::Caller),
                commands: vec![command],
            })
        };
        let media = json!({"event":"media","streamSid":sid,"media":{"payload":b64}});
        assert_eq!(
            d.on_server_text(t0, &media.to_string(), &mut out),
            bot(BotCommand::Play(vec![0, -32124, 32124]))
        );
        let mark = json!({"event":"mark","streamSid":sid,"mark":{"name":"m1"}});
        assert_eq!(
            d.on_server_text(t0, &mark.to_string(), &mut out),
            bot(BotCommand::Mark("m1".into()))
        );
        assert!(out.is_empty(), "the mark waits for its audio to be played");
        let clear = json!({"event":"clear","streamSid":sid});
        assert_eq!(
            d.on_server_text(t0, &clear.to_string(), &mut out),
            bot(BotCommand::Clear)
        );
        d.on_mark_played(t0, 1, "m1", &mut out);
        assert_eq!(
            texts(&out),
            vec![json!({"event":"mark","sequenceNumber":"2","streamSid":sid,"mark":{"name":"m1"}})]
        );
        for bad in [
            json!({"event":"media","streamSid":sid,"media":{"payload":"*not base64*"}}),
            json!({"event":"mark","streamSid":sid,"mark":{"name":"x".repeat(MAX_MARK_NAME + 1)}}),
        ] {
            assert_eq!(
                d.on_server_text(t0, &bad.to_string(), &mut out),
                Err(ServerViolation::MalformedText)
            );
        }
        assert_eq!(d.stats().bot_commands, 3);
        assert_eq!(d.stats().server_messages_ignored, 0);
        // Once the talking stream stopped, nothing plays: marks are echoed at once again.
        d.on_control(t0, &stop(Channel::Caller, StopReason::Request), &mut out);
        out.clear();
        assert_eq!(
            d.on_server_text(t0, &mark.to_string(), &mut out),
            Ok(ServerSignal::Nothing)
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn local_close_says_stop_once_and_audio_after_it_is_withheld() {
        let t0 = Instant::now();
        let mut d = dialect(None);
        let mut out = Vec::new();
        d.on_local_close(t0, &mut out);
        assert!(out.is_empty(), "nothing announced, nothing to stop");
        d.on_control(t0, &start(Channel::Caller, Codec::Pcmu), &mut out);
        d.flush(t0, &mut out);
        d.on_local_close(t0, &mut out);
        d.on_local_close(t0, &mut out);
        assert_eq!(
            texts(&out).iter().filter(|m| m["event"] == "stop").count(),
            1
        );
        d.on_audio(
            t0,
            frame(Channel::Caller, Codec::Pcmu, 1, 0, true, &[0xFF; 160]),
            &mut out,
        );
        d.on_audio(t0, vec![1, 2, 3], &mut out);
        let s = d.stats();
        assert_eq!((s.audio_in, s.audio_withheld, s.audio_invalid), (2, 1, 1));
        assert_eq!(d.dropped_audio(), 2);
    }

    #[test]
    fn digits_and_parameters() {
        let keys: String = (0..=16).filter_map(digit).collect();
        assert_eq!(keys, "0123456789*#ABCD");
        assert_eq!(parameter(&json!("s")), "s");
        assert_eq!(parameter(&json!(2)), "2");
        assert_eq!(parameter(&json!(true)), "true");
        assert_eq!(parameter(&json!(null)), "null");
        assert_eq!(parameter(&json!({"a":[1]})), r#"{"a":[1]}"#);
    }
}
