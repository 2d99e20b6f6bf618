//! jambonz `listen` (FreeSWITCH mod_audio_fork), as jambonz sends it to a remote WebSocket
//! server (<https://docs.jambonz.org/verbs/verbs/listen>; jambonz-feature-server
//! `lib/tasks/listen.js` and `lib/session/call-info.js`).
//!
//! Upgrade: subprotocol `audio.jambonz.org`; a `wsAuth`-protected server takes
//! `auth = "basic"` with a `user:password` token. Then one JSON text frame of call attributes
//! (jambonz merges `{sampleRate, mixType}`, the call's attributes and the app's `metadata`
//! into one object), then only binary frames of 16-bit little-endian PCM at 8 or 16 kHz:
//! `mixType` `mono` (the caller), `stereo` (caller left, callee right, interleaved) or
//! `mixed` (the saturating sum).
//!
//! Our attributes: `callSid` = call GUID, `direction` "inbound", `from`, `to`, `callId` = SIP
//! Call-ID, `sipStatus` 200, `callStatus` "in-progress"; metadata keys follow at the top level
//! unless they would overwrite one of ours (jambonz lets them; we keep `sampleRate` and
//! `mixType` truthful). Pause, update, DTMF (jambonz `passDtmf`) and stop have no message:
//! paused audio is absent (silence in a stereo or mixed frame while the other party talks).
//!
//! Server → client: JSON commands `error` ([`ServerSignal::Error`]), `disconnect`
//! ([`ServerSignal::Refused`]: the server ends the listen), `transcription`, `transfer`,
//! Bidirectional audio, when a stream was started
//! with `return_audio` (otherwise accepted, not played, counted): binary frames of L16 at the
//! destination's `rate` (jambonz `bidirectionalAudio.streaming`), `playAudio` with a base64 raw
//! L16 clip at its `sampleRate` (8000 or 16000; `playDone` is answered once it has been played,
//! or killed), `killAudio` (clear), `clearMarks` (pending marks forgotten, unanswered), `mark` (answered `{"type":"mark","data":{"name":…,
//! "event":"playout"}}` once the audio before it has been played). 16 kHz audio is decimated to
//! the call's 8 kHz ([`crate::Downsampler`]). Other text is a violation.

use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};

use base64::Engine as _;

use crate::{BotCommand, Control, Downsampler, ErrorMsg, ServerViolation, MAX_MARK_NAME};

use super::call::{Call, Change};
use super::media::MediaPipe;
use super::{
    server_json, AudioFormat, DialectStats, Layout, Profile, ServerSignal, Speaker, UpgradeInfo,
    UpgradeParts, WireFrame,
};

/// `Sec-WebSocket-Protocol` a jambonz `listen` server accepts.
pub const JAMBONZ_SUBPROTOCOL: &str = "audio.jambonz.org";

/// Commands a server may send that we accept without acting on them.
const IGNORED_COMMANDS: [&str; 2] = ["transcription", "transfer"];

/// Commands of bidirectional audio: acted on with return audio, accepted and counted without.
const AUDIO_COMMANDS: [&str; 4] = ["playAudio", "killAudio", "mark", "clearMarks"];

/// The mark that stands for the end of one `playAudio` clip. A server's mark name never starts
/// with a control character (refused), so the two cannot be confused.
const PLAY_DONE: &str = "\u{1}playDone";

fn mix_type(layout: Layout) -> &'static str {
    match layout {
        Layout::Stereo => "stereo",
        Layout::Mixed => "mixed",
        _ => "mono",
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Metadata<'a> {
    sample_rate: u32,
    mix_type: &'static str,
    call_sid: &'a str,
    direction: &'static str,
    from: &'a str,
    to: &'a str,
    call_id: &'a str,
    sip_status: u16,
    call_status: &'static str,
    #[serde(flatten)]
    metadata: Map<String, Value>,
}

const OWN_KEYS: [&str; 9] = [
    "sampleRate",
    "mixType",
    "callSid",
    "direction",
    "from",
    "to",
    "callId",
    "sipStatus",
    "callStatus",
];

/// jambonz dialect state of one connection. See the module docs.
#[derive(Debug)]
pub(super) struct Jambonz {
    call: Call,
    announced: bool,
    pipe: MediaPipe,
    /// 16 kHz bot audio to the call's 8 kHz.
    down: Downsampler,
    stats: DialectStats,
}

impl Jambonz {
    pub fn new(format: AudioFormat) -> Self {
        Jambonz {
            call: Call::default(),
            announced: false,
            pipe: MediaPipe::new(format),
            down: Downsampler::new(),
            stats: DialectStats::default(),
        }
    }

    /// 16-bit little-endian PCM at `rate` (8000 or 16000) as 8 kHz samples.
    fn l16_8k(&mut self, rate: u32, bytes: &[u8]) -> Result<Vec<i16>, ServerViolation> {
        if !bytes.len().is_multiple_of(2) {
            return Err(ServerViolation::BadParameters);
        }
        let samples: Vec<i16> = bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        match rate {
            8000 => Ok(samples),
            16000 => {
                let mut out = Vec::with_capacity(samples.len() / 2 + 1);
                self.down.process(&samples, &mut out);
                Ok(out)
            }
            _ => Err(ServerViolation::BadParameters),
        }
    }

    /// A bidirectional-audio command (`playAudio`, `killAudio`, `mark`) for the stream that
    /// talks back.
    fn audio_command(
        &mut self,
        stream_id: u32,
        kind: &str,
        msg: &Map<String, Value>,
    ) -> Result<ServerSignal, ServerViolation> {
        let data = msg.get("data");
        let field = |name: &str| data.and_then(|d| d.get(name));
        let commands = match kind {
            "killAudio" => vec![BotCommand::Clear],
            "clearMarks" => vec![BotCommand::ClearMarks],
            "mark" => {
                let name = field("name")
                    .and_then(Value::as_str)
                    .ok_or(ServerViolation::MalformedText)?;
                if name.len() > MAX_MARK_NAME || crate::is_own_mark(name) {
                    return Err(ServerViolation::BadParameters);
                }
                vec![BotCommand::Mark(name.to_owned())]
            }
            _ => {
                let content = field("audioContent")
                    .and_then(Value::as_str)
                    .ok_or(ServerViolation::MalformedText)?;
                if field("audioContentType").and_then(Value::as_str) != Some("raw") {
                    // WAV clips are not read: a raw L16 clip says its rate itself.
                    return Err(ServerViolation::BadParameters);
                }
                // The documented example sends the rate as a string.
                let rate = match field("sampleRate") {
                    Some(Value::Number(n)) => n.as_u64(),
                    Some(Value::String(s)) => s.parse().ok(),
                    _ => None,
                }
                .and_then(|r| u32::try_from(r).ok())
                .ok_or(ServerViolation::BadParameters)?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .map_err(|_| ServerViolation::MalformedText)?;
                let samples = self.l16_8k(rate, &bytes)?;
                vec![
                    BotCommand::Play(samples),
                    BotCommand::Mark(PLAY_DONE.to_owned()),
                ]
            }
        };
        self.stats.bot_commands += 1;
        Ok(ServerSignal::Bot {
            stream_id,
            commands,
        })
    }

    fn announce(&mut self, out: &mut Vec<WireFrame>) {
        if self.announced {
            return;
        }
        let Some(info) = &self.call.info else {
            return;
        };
        let format = self.pipe.format();
        let metadata = info
            .metadata
            .iter()
            .filter(|(k, _)| !OWN_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let text = serde_json::to_string(&Metadata {
            sample_rate: format.rate,
            mix_type: mix_type(format.layout),
            call_sid: &info.call_guid,
            direction: "inbound",
            from: &info.from,
            to: &info.to,
            call_id: &info.call_id,
            sip_status: 200,
            call_status: "in-progress",
            metadata,
        })
        .expect("invariant: call attributes and JSON metadata serialize");
        out.push(WireFrame::Text(text));
        self.announced = true;
    }
}

impl Speaker for Jambonz {
    fn upgrade(
        &self,
        _info: &UpgradeInfo<'_>,
        _headers: &mut Vec<(String, String)>,
    ) -> UpgradeParts {
        UpgradeParts {
            subprotocol: Some(JAMBONZ_SUBPROTOCOL),
            token_used: false,
        }
    }

    fn on_control(&mut self, _now: Instant, msg: &Control, out: &mut Vec<WireFrame>) {
        let change = self.call.apply(msg);
        if matches!(
            change,
            Change::Updated(_) | Change::Dtmf(..) | Change::Ignored
        ) {
            self.stats.controls_not_sent += 1;
        }
        self.pipe.follow(&change, out);
    }

    fn on_audio(&mut self, _now: Instant, frame: Vec<u8>, out: &mut Vec<WireFrame>) {
        // The metadata frame goes first, whatever the frame turns out to be.
        self.announce(out);
        self.pipe.route(&self.call, &frame, &mut self.stats, out);
    }

    fn flush(&mut self, _now: Instant, out: &mut Vec<WireFrame>) {
        self.announce(out);
    }

    fn on_server_text(
        &mut self,
        _now: Instant,
        text: &str,
        _out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation> {
        let msg = server_json(text, Profile::Jambonz.max_server_message())?;
        match msg.get("type").and_then(Value::as_str) {
            Some("disconnect") => Ok(ServerSignal::Refused("disconnect".into())),
            Some("error") => Ok(ServerSignal::Error(ErrorMsg {
                stream_id: None,
                code: "error".into(),
                message: msg.get("data").map(Value::to_string).unwrap_or_default(),
            })),
            Some(t) if AUDIO_COMMANDS.contains(&t) => match self.call.talk_back() {
                Some(stream_id) => self.audio_command(stream_id, t, &msg),
                None => {
                    self.stats.server_messages_ignored += 1;
                    Ok(ServerSignal::Nothing)
                }
            },
            Some(t) if IGNORED_COMMANDS.contains(&t) => {
                self.stats.server_messages_ignored += 1;
                Ok(ServerSignal::Nothing)
            }
            _ => Err(ServerViolation::MalformedText),
        }
    }

    fn on_mark_played(
        &mut self,
        _now: Instant,
        _stream_id: u32,
        name: &str,
        out: &mut Vec<WireFrame>,
    ) {
        let msg = if name == PLAY_DONE {
            serde_json::json!({"type": "playDone"})
        } else {
            serde_json::json!({"type": "mark", "data": {"name": name, "event": "playout"}})
        };
        out.push(WireFrame::Text(msg.to_string()));
    }

    fn on_server_binary(
        &mut self,
        _now: Instant,
        data: &[u8],
        _out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation> {
        let Some(stream_id) = self.call.talk_back() else {
            self.stats.server_binary_ignored += 1;
            return Ok(ServerSignal::Nothing);
        };
        // Streaming bidirectional audio: L16 at the rate the listen was set up with (ours).
        let samples = self.l16_8k(self.pipe.format().rate, data)?;
        self.stats.bot_commands += 1;
        Ok(ServerSignal::Bot {
            stream_id,
            commands: vec![BotCommand::Play(samples)],
        })
    }

    fn stats(&self) -> DialectStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::profile::call::testing::*;
    use crate::profile::{Dialect, ProfileConfig};
    use crate::{pcm::write_l16le, ulaw_to_linear, AuthScheme, Channel, Codec, Upsampler};

    fn dialect(rate: u32, layout: Layout) -> Dialect {
        Dialect::new(&ProfileConfig {
            profile: Profile::Jambonz,
            rate: Some(rate),
            layout: Some(layout),
            auth: AuthScheme::Basic,
            ..ProfileConfig::default()
        })
        .expect("dialect")
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn metadata_frame_then_l16() {
        let t0 = Instant::now();
        let mut d = dialect(8000, Layout::Stereo);
        let up = d.upgrade(&UpgradeInfo {
            authority: "asr",
            path_and_query: "/",
            token: Some("user:pass"),
            unix_now: 0,
            nonce: [0; 16],
        });
        assert_eq!(up.subprotocol, Some("audio.jambonz.org"));
        assert_eq!(
            up.headers,
            vec![("Authorization".into(), "Basic dXNlcjpwYXNz".into())]
        );
        let mut out = Vec::new();
        let Control::Start(mut s) = start(Channel::Caller, Codec::Pcmu) else {
            unreachable!()
        };
        s.metadata.insert("sampleRate".into(), json!(44100));
        d.on_control(t0, &Control::Start(s), &mut out);
        d.on_control(t0, &start(Channel::Callee, Codec::Pcma), &mut out);
        d.flush(t0, &mut out);
        d.flush(t0, &mut out);
        assert_eq!(out.len(), 1, "one metadata frame");
        let WireFrame::Text(t) = &out[0] else {
            panic!("text")
        };
        // jambonz's order: sampleRate and mixType, then the call attributes, then metadata.
        assert_eq!(
            keys(&out[0])[..9],
            [
                "sampleRate",
                "mixType",
                "callSid",
                "direction",
                "from",
                "to",
                "callId",
                "sipStatus",
                "callStatus"
            ]
        );
        let v: Value = serde_json::from_str(t).expect("json");
        assert_eq!(
            v,
            json!({"sampleRate":8000,"mixType":"stereo","callSid":GUID,"direction":"inbound",
                   "from":"sip:+15551230001@pbx.example.com","to":"sip:6777@cube.example.com",
                   "callId":"a84b4c76e66710@10.0.0.1","sipStatus":200,"callStatus":"in-progress",
                   "campaign":"support","language":"en-US","priority":2})
        );
        out.clear();
        d.on_audio(
            t0,
            frame(Channel::Caller, Codec::Pcmu, 1, 0, true, &[0x80; 160]),
            &mut out,
        );
        d.on_audio(
            t0,
            frame(Channel::Callee, Codec::Pcma, 1, 0, true, &[0xD5; 160]),
            &mut out,
        );
        let WireFrame::Binary(b) = &out[0] else {
            panic!("binary")
        };
        let mut want = Vec::new();
        for _ in 0..160 {
            write_l16le(&[ulaw_to_linear(0x80), 8], &mut want);
        }
        assert_eq!(b, &want, "caller left, callee right, L16 little-endian");
        // Pause, update and DTMF have no words in jambonz.
        d.on_control(t0, &update(Channel::Caller, json!({})), &mut out);
        d.on_control(t0, &dtmf(Channel::Caller, 1, 0), &mut out);
        assert_eq!(d.stats().controls_not_sent, 2);
        assert_eq!(out.len(), 1);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn mono_16k_is_the_upsampled_caller() {
        let t0 = Instant::now();
        let mut d = dialect(16000, Layout::MonoCaller);
        let mut out = Vec::new();
        d.on_control(t0, &start(Channel::Caller, Codec::Pcmu), &mut out);
        d.on_control(t0, &start(Channel::Callee, Codec::Pcmu), &mut out);
        d.flush(t0, &mut out);
        let v: Value = match &out[0] {
            WireFrame::Text(t) => serde_json::from_str(t).expect("json"),
            WireFrame::Binary(_) => panic!("text first"),
        };
        assert_eq!(
            (&v["sampleRate"], &v["mixType"]),
            (&json!(16000), &json!("mono"))
        );
        let payload: Vec<u8> = (0..160).map(|i| (i * 3) as u8).collect();
        d.on_audio(
            t0,
            frame(Channel::Caller, Codec::Pcmu, 1, 0, true, &payload),
            &mut out,
        );
        d.on_audio(
            t0,
            frame(Channel::Callee, Codec::Pcmu, 1, 0, true, &payload),
            &mut out,
        );
        assert_eq!(out.len(), 2);
        let mut up = Upsampler::new();
        let mut samples = Vec::new();
        let linear: Vec<i16> = payload.iter().map(|&b| ulaw_to_linear(b)).collect();
        up.process(&linear, &mut samples);
        let mut want = Vec::new();
        write_l16le(&samples, &mut want);
        assert_eq!(out[1], WireFrame::Binary(want));
        assert_eq!(d.stats().audio_not_carried, 1);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn server_messages() {
        let t0 = Instant::now();
        let mut d = dialect(8000, Layout::Mixed);
        let mut out = Vec::new();
        for t in [
            r#"{"type":"playAudio","data":{"audioContent":"AAAA","audioContentType":"raw","sampleRate":"8000"}}"#,
            r#"{"type":"killAudio"}"#,
            r#"{"type":"transcription","data":{"text":"hi"}}"#,
            r#"{"type":"mark","data":{"name":"m"}}"#,
        ] {
            assert_eq!(
                d.on_server_text(t0, t, &mut out),
                Ok(ServerSignal::Nothing),
                "{t}"
            );
        }
        assert_eq!(
            d.on_server_text(t0, r#"{"type":"error","data":{"reason":"x"}}"#, &mut out),
            Ok(ServerSignal::Error(ErrorMsg {
                stream_id: None,
                code: "error".into(),
                message: r#"{"reason":"x"}"#.into()
            }))
        );
        assert_eq!(
            d.on_server_text(t0, r#"{"type":"disconnect"}"#, &mut out),
            Ok(ServerSignal::Refused("disconnect".into()))
        );
        assert_eq!(
            d.on_server_text(t0, r#"{"type":"dance"}"#, &mut out),
            Err(ServerViolation::MalformedText)
        );
        assert_eq!(
            d.on_server_text(t0, "text", &mut out),
            Err(ServerViolation::MalformedText)
        );
        assert_eq!(
            d.on_server_binary(t0, &[0; 320], &mut out),
            Ok(ServerSignal::Nothing)
        );
        let s = d.stats();
        assert_eq!((s.server_messages_ignored, s.server_binary_ignored), (4, 1));
        assert!(out.is_empty());
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn return_audio_streaming_play_audio_kill_and_marks() {
        let t0 = Instant::now();
        let mut d = dialect(16000, Layout::MonoCaller);
        let mut out = Vec::new();
        let Control::Start(mut caller) = start(Channel::Caller, Codec::Pcmu) else {
            unreachable!("start() builds a start")
        };
        caller.return_audio = true;
        d.on_control(t0, &Control::Start(caller), &mut out);
        d.flush(t0, &mut out);
        out.clear();
        let bot = |commands| {
            Ok(ServerSignal::Bot {
                stream_id: sid(Channel::Caller),
                commands,
            })
        };
        // Streaming: L16 at our 16 kHz, decimated to the call's 8 kHz (a constant stays
        // constant once the filter's history is full).
        let mut l16 = Vec::new();
        write_l16le(&[1000; 320], &mut l16);
        let Ok(ServerSignal::Bot { commands, .. }) = d.on_server_binary(t0, &l16, &mut out) else {
            panic!("audio for the playout")
        };
        let [BotCommand::Play(samples)] = &commands[..] else {
            panic!("one clip: {commands:?}")
        };
        assert_eq!(samples.len(), 160);
        assert!(samples[30..].iter().all(|&v| v == 1000));
        assert_eq!(
            d.on_server_binary(t0, &[1, 2, 3], &mut out),
            Err(ServerViolation::BadParameters),
            "half a sample"
        );
        // playAudio: a raw clip at its own rate (a string in jambonz's example), then playDone.
        let mut clip = Vec::new();
        write_l16le(&[-7, 7, 300], &mut clip);
        let play = json!({"type":"playAudio","data":{"audioContent":
            base64::engine::general_purpose::STANDARD.encode(&clip),
            "audioContentType":"raw","sampleRate":"8000"}});
        assert_eq!(
            d.on_server_text(t0, &play.to_string(), &mut out),
            bot(vec![
                BotCommand::Play(vec![-7, 7, 300]),
                BotCommand::Mark(PLAY_DONE.into())
            ])
        );
        let mark = json!({"type":"mark","data":{"name":"greeting"}});
        assert_eq!(
            d.on_server_text(t0, &mark.to_string(), &mut out),
            bot(vec![BotCommand::Mark("greeting".into())])
        );
        assert_eq!(
            d.on_server_text(t0, r#"{"type":"killAudio"}"#, &mut out),
            bot(vec![BotCommand::Clear])
        );
        assert_eq!(
            d.on_server_text(t0, r#"{"type":"clearMarks"}"#, &mut out),
            bot(vec![BotCommand::ClearMarks])
        );
        assert!(out.is_empty(), "answers wait for the playout");
        d.on_mark_played(t0, sid(Channel::Caller), PLAY_DONE, &mut out);
        d.on_mark_played(t0, sid(Channel::Caller), "greeting", &mut out);
        let texts: Vec<Value> = out
            .iter()
            .map(|f| match f {
                WireFrame::Text(t) => serde_json::from_str(t).expect("json"),
                WireFrame::Binary(_) => panic!("binary"),
            })
            .collect();
        assert_eq!(
            texts,
            vec![
                json!({"type":"playDone"}),
                json!({"type":"mark","data":{"name":"greeting","event":"playout"}})
            ]
        );
        for (bad, want) in [
            (
                json!({"type":"playAudio","data":{"audioContent":"AAAA","audioContentType":"wav"}}),
                ServerViolation::BadParameters,
            ),
            (
                json!({"type":"playAudio","data":{"audioContent":"AAAA","audioContentType":"raw",
                    "sampleRate":24000}}),
                ServerViolation::BadParameters,
            ),
            (
                json!({"type":"mark","data":{"name":"\u{1}playDone"}}),
                ServerViolation::BadParameters,
            ),
            (
                json!({"type":"mark","data":{}}),
                ServerViolation::MalformedText,
            ),
        ] {
            assert_eq!(
                d.on_server_text(t0, &bad.to_string(), &mut out),
                Err(want),
                "{bad}"
            );
        }
        assert_eq!(d.stats().bot_commands, 5);
    }
}
