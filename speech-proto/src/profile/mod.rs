//! Speech-server protocol profiles: which WebSocket dialect a destination speaks.
//!
//! A contact center does not write a speech server for us; it runs one that already speaks a
//! published dialect. Each destination (a `[[speech_server]]` entry, or a fork request naming a
//! profile) picks one [`Profile`]. docs/speech-protocol.md has one section per profile with its
//! exact messages.
//!
//! [`Dialect`] is the per-connection translator (sans-IO): the stream service speaks one
//! internal language, the xdpfork [`Control`] messages and 16-byte-header audio frames
//! ([`crate::encode_audio`]); a connection's dialect turns them into the frames its server
//! expects, and checks what the server sends back.
//!
//! Inputs, in order, on one connection: [`Dialect::upgrade`] (headers of the HTTP upgrade),
//! [`Dialect::on_control`] for each control message and [`Dialect::on_audio`] for each audio
//! frame, [`Dialect::flush`] after each batch the service queued, [`Dialect::on_server_text`]
//! / [`Dialect::on_server_binary`] for each frame from the server, [`Dialect::on_timeout`] when
//! [`Dialect::poll_timeout`] is due, and [`Dialect::on_local_close`] before a local close.
//! Outputs: [`WireFrame`]s appended to the caller's vector, and a [`ServerSignal`] per server
//! frame. No sockets, no clock (every input takes `now`), no randomness (ids come in
//! [`UpgradeInfo`]). What a dialect could not send is counted in [`DialectStats`].
//!
//! One module per dialect: `twilio`, `audiohook`, `jambonz`, `raw`; shared pieces: `call` (the
//! one call of a connection), `media` (binary audio: transcoding, stereo alignment, mixing,
//! resampling), `ids` (derived identifiers), `signature` (AudioHook's HTTP signature).

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{
    check_server_text, Control, ErrorMsg, ServerViolation, MAX_SERVER_MESSAGE, SUBPROTOCOL,
};

mod audiohook;
#[doc(hidden)]
pub mod bench;
mod call;
mod config;
mod ids;
mod jambonz;
mod media;
mod raw;
mod signature;
mod twilio;

pub use audiohook::{INITIAL_PING_DELAY, SIGNATURE_LIFETIME_SECS};
pub use config::{
    AudioEncoding, AudioFormat, AuthScheme, Layout, ProfileConfig, ProfileConfigError,
    DEFAULT_ACCOUNT_SID, DEFAULT_PING_INTERVAL_MS, NIL_UUID,
};
pub use jambonz::JAMBONZ_SUBPROTOCOL;

/// A WebSocket dialect spoken to a speech server.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// `xdpfork.speech.v1` (docs/speech-protocol.md §1–§6): many calls per connection, JSON
    /// control, 16-byte "XF" header on every audio frame.
    #[default]
    Xdpfork,
    /// Twilio Media Streams: JSON text frames only (`connected`, `start`, `media` with base64
    /// µ-law 8 kHz, `mark`, `stop`), one call per connection.
    Twilio,
    /// Genesys AudioHook protocol v2: `open`/`opened` handshake, binary PCMU frames (stereo:
    /// external = caller, internal = callee), one call per connection.
    Audiohook,
    /// jambonz `listen` / mod_audio_stream: one JSON metadata text frame, then binary L16.
    Jambonz,
    /// Binary audio only (µ-law, A-law or L16), e.g. ASR services with a plain binary socket.
    Raw,
}

impl Profile {
    /// Every profile, in documentation order.
    pub const ALL: [Profile; 5] = [
        Profile::Xdpfork,
        Profile::Twilio,
        Profile::Audiohook,
        Profile::Jambonz,
        Profile::Raw,
    ];

    /// Config and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Xdpfork => "xdpfork",
            Profile::Twilio => "twilio",
            Profile::Audiohook => "audiohook",
            Profile::Jambonz => "jambonz",
            Profile::Raw => "raw",
        }
    }

    /// Whether several calls may share one connection. Only our own protocol multiplexes; every
    /// other dialect names one call per socket.
    pub fn multiplexes_calls(self) -> bool {
        matches!(self, Profile::Xdpfork)
    }

    /// Longest message (and frame) a server of this profile may send; the shell's WebSocket
    /// reader should enforce it (a longer one is [`ServerViolation::TooLarge`]).
    ///
    /// xdpfork: [`MAX_SERVER_MESSAGE`] (an `error` is a sentence). AudioHook: 64 KiB − 1, the
    /// limit both ends of the reference implementation apply. Twilio: 256 KiB, since a
    /// bidirectional server sends base64 µ-law in `media` (≈ 10.7 KB per second of audio).
    /// jambonz: 1 MiB, since `playAudio` carries a whole base64 clip. raw: 64 KiB of
    /// transcripts.
    pub fn max_server_message(self) -> usize {
        match self {
            Profile::Xdpfork => MAX_SERVER_MESSAGE,
            Profile::Audiohook | Profile::Raw => 65_535,
            Profile::Twilio => 256 * 1024,
            Profile::Jambonz => 1024 * 1024,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile name that is not one of [`Profile::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown speech profile {0:?} (expected one of xdpfork, twilio, audiohook, jambonz, raw)")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProfile(s.to_owned()))
    }
}

/// One WebSocket data frame to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFrame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

impl WireFrame {
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            WireFrame::Text(t) => t.len(),
            WireFrame::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it carries audio (dropped first under back-pressure, counted when lost): every
    /// binary frame, and the text frames of dialects whose audio is JSON (Twilio `media`).
    pub fn is_audio(&self) -> bool {
        match self {
            WireFrame::Binary(_) => true,
            WireFrame::Text(t) => t.starts_with(twilio::MEDIA_PREFIX),
        }
    }
}

/// Facts of one upgrade request a dialect may need.
#[derive(Debug, Clone, Copy)]
pub struct UpgradeInfo<'a> {
    /// `host[:port]` of the request URI.
    pub authority: &'a str,
    /// Path and query of the request URI.
    pub path_and_query: &'a str,
    /// The destination's token, if any.
    pub token: Option<&'a str>,
    /// Seconds since the Unix epoch (signatures carry it).
    pub unix_now: u64,
    /// 16 random bytes from the shell (session ids, signature nonces).
    pub nonce: [u8; 16],
}

/// What goes into the HTTP upgrade request besides the RFC 6455 headers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Upgrade {
    /// `Sec-WebSocket-Protocol` to offer; the server must echo it.
    pub subprotocol: Option<&'static str>,
    /// Further headers (name, value), in order.
    pub headers: Vec<(String, String)>,
}

/// What a server frame meant to the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerSignal {
    /// Allowed and needs no action.
    Nothing,
    /// The server reported an error (counted and logged, rate-limited); the connection stays.
    Error(ErrorMsg),
    /// The server accepted the call's streams (only dialects whose
    /// [`Profile::awaits_acceptance`] is true).
    Accepted,
    /// The server refused or ended the session in the dialect's own words; the shell closes
    /// the connection and the fork fails or reconnects as for a server close.
    Refused(String),
    /// The server talks back on a stream that was started with `return_audio`: the command
    /// goes to that stream's playout (docs/speech-protocol.md §16).
    Bot {
        /// The stream whose party hears the bot.
        stream_id: u32,
        /// What to do, in order (one server message may say two things: jambonz `playAudio`
        /// is a clip and the `playDone` owed after it).
        commands: Vec<crate::BotCommand>,
    },
}

impl Profile {
    /// Whether the server confirms a session (AudioHook's `opened`) before the fork may be
    /// reported STARTED. For the others, the `start`/metadata message going out on an open
    /// connection is the confirmation.
    pub fn awaits_acceptance(self) -> bool {
        matches!(self, Profile::Audiohook)
    }

    /// Whether a server of this profile may talk back (return audio, docs/speech-protocol.md
    /// §16); a fork asking for it with another profile is refused with this error.
    pub fn check_return_audio(self) -> Result<(), crate::ReturnAudioError> {
        match self {
            Profile::Xdpfork | Profile::Twilio | Profile::Jambonz => Ok(()),
            p => Err(crate::ReturnAudioError::NotInProfile(p)),
        }
    }
}

/// One JSON object from a server text frame of at most `max` bytes.
fn server_json(
    text: &str,
    max: usize,
) -> Result<serde_json::Map<String, serde_json::Value>, ServerViolation> {
    if text.len() > max {
        return Err(ServerViolation::TooLarge);
    }
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(ServerViolation::MalformedText),
    }
}

/// What a dialect did not send, and what it accepted from the server without acting on it.
///
/// Every audio frame given to [`Dialect::on_audio`] is either sent (in some form) or counted
/// in exactly one `audio_*` field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DialectStats {
    /// Audio frames received from the service.
    pub audio_in: u64,
    /// Audio frames before the server accepted the session (AudioHook before `opened`).
    pub audio_before_accept: u64,
    /// Audio frames the server asked not to get: AudioHook server `pause`, an `opened`
    /// without media; or frames after the session's goodbye (Twilio `stop`, AudioHook `close`).
    pub audio_withheld: u64,
    /// Audio frames of a party the layout does not carry (e.g. the callee with
    /// `layout = "mono-caller"`); a configuration choice, not a loss.
    pub audio_not_carried: u64,
    /// Frames that are no audio frame of a live stream of this call: undecodable, a payload
    /// type other than PCMU/PCMA, an unknown, paused or stopped stream.
    pub audio_invalid: u64,
    /// Control messages the dialect has no words for (e.g. `update` on Twilio, `dtmf` on
    /// AudioHook, anything on raw) or that name another call.
    pub controls_not_sent: u64,
    /// Server messages that are allowed but not acted on (Twilio `media` and `clear`,
    /// AudioHook `event` and `updated`, jambonz commands, raw transcripts).
    pub server_messages_ignored: u64,
    /// Binary frames from the server that are allowed but not played (jambonz audio).
    pub server_binary_ignored: u64,
    /// AudioHook pings not sent because the previous one had no `pong` yet.
    pub pongs_missed: u64,
    /// Server messages turned into [`crate::BotCommand`]s (return audio).
    pub bot_commands: u64,
}

impl DialectStats {
    /// Audio frames of live streams not delivered because of the session's state or an
    /// invalid frame: before acceptance, withheld, invalid. (Not-carried frames are excluded.)
    pub fn dropped_audio(&self) -> u64 {
        self.audio_before_accept + self.audio_withheld + self.audio_invalid
    }
}

/// What a dialect adds to the upgrade request.
struct UpgradeParts {
    /// `Sec-WebSocket-Protocol` to offer.
    subprotocol: Option<&'static str>,
    /// The dialect used the token itself (AudioHook's `X-API-KEY`); no `auth` header then.
    token_used: bool,
}

/// One dialect's side of the [`Dialect`] facade; each method is the facade method of the same
/// name.
trait Speaker {
    /// Adds the dialect's headers; by default none, no subprotocol, and the token goes in the
    /// `auth` scheme.
    fn upgrade(
        &self,
        _info: &UpgradeInfo<'_>,
        _headers: &mut Vec<(String, String)>,
    ) -> UpgradeParts {
        UpgradeParts {
            subprotocol: None,
            token_used: false,
        }
    }
    fn on_control(&mut self, now: Instant, msg: &Control, out: &mut Vec<WireFrame>);
    fn on_audio(&mut self, now: Instant, frame: Vec<u8>, out: &mut Vec<WireFrame>);
    fn flush(&mut self, now: Instant, out: &mut Vec<WireFrame>);
    fn on_server_text(
        &mut self,
        now: Instant,
        text: &str,
        out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation>;
    /// By default audio flows one way: a binary frame from the server is a violation.
    fn on_server_binary(
        &mut self,
        _now: Instant,
        _data: &[u8],
        _out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation> {
        Err(ServerViolation::BinaryFrame)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn on_timeout(&mut self, _now: Instant, _out: &mut Vec<WireFrame>) {}
    fn on_local_close(&mut self, _now: Instant, _out: &mut Vec<WireFrame>) {}
    /// By default there is no return audio, so no mark to answer.
    fn on_mark_played(
        &mut self,
        _now: Instant,
        _stream_id: u32,
        _name: &str,
        _out: &mut Vec<WireFrame>,
    ) {
    }
    fn stats(&self) -> DialectStats;
}

/// Our own protocol: frames pass through unchanged; a server talks back (§16) on the streams
/// started with `return_audio`.
#[derive(Debug, Default)]
struct Xdpfork {
    stats: DialectStats,
    /// Streams whose server may talk back (started with `return_audio`, not stopped).
    talking: std::collections::BTreeSet<u32>,
}

impl Xdpfork {
    fn bot(&mut self, stream_id: u32, command: crate::BotCommand) -> ServerSignal {
        self.stats.bot_commands += 1;
        ServerSignal::Bot {
            stream_id,
            commands: vec![command],
        }
    }
}

impl Speaker for Xdpfork {
    fn upgrade(
        &self,
        _info: &UpgradeInfo<'_>,
        _headers: &mut Vec<(String, String)>,
    ) -> UpgradeParts {
        UpgradeParts {
            subprotocol: Some(SUBPROTOCOL),
            token_used: false,
        }
    }

    fn on_control(&mut self, _now: Instant, msg: &Control, out: &mut Vec<WireFrame>) {
        match msg {
            Control::Start(s) if s.return_audio => {
                self.talking.insert(s.stream_id);
            }
            Control::Stop(s) => {
                self.talking.remove(&s.stream_id);
            }
            _ => {}
        }
        out.push(WireFrame::Text(msg.to_json()));
    }

    fn on_audio(&mut self, _now: Instant, frame: Vec<u8>, out: &mut Vec<WireFrame>) {
        self.stats.audio_in += 1;
        out.push(WireFrame::Binary(frame));
    }

    fn on_server_binary(
        &mut self,
        _now: Instant,
        data: &[u8],
        _out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation> {
        // Audio flows one way unless a stream talks back; then its frames have our layout
        // (§3), the payload type saying the law.
        if self.talking.is_empty() {
            return Err(ServerViolation::BinaryFrame);
        }
        let (hdr, payload) = crate::decode_audio(data).map_err(|_| ServerViolation::BadFrame)?;
        if !self.talking.contains(&hdr.stream_id) {
            return Err(ServerViolation::UnexpectedState);
        }
        let codec = match hdr.payload_type {
            0 => crate::Codec::Pcmu,
            8 => crate::Codec::Pcma,
            _ => return Err(ServerViolation::BadParameters),
        };
        let samples = payload.iter().map(|&b| codec.decode(b)).collect();
        Ok(self.bot(hdr.stream_id, crate::BotCommand::Play(samples)))
    }

    fn on_mark_played(
        &mut self,
        _now: Instant,
        stream_id: u32,
        name: &str,
        out: &mut Vec<WireFrame>,
    ) {
        let echo = Control::Mark(crate::Mark {
            stream_id,
            name: name.to_owned(),
        });
        out.push(WireFrame::Text(echo.to_json()));
    }

    fn flush(&mut self, _now: Instant, _out: &mut Vec<WireFrame>) {}

    fn on_server_text(
        &mut self,
        _now: Instant,
        text: &str,
        _out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation> {
        match check_server_text(text)? {
            crate::ServerText::Error(e) => Ok(ServerSignal::Error(e)),
            crate::ServerText::Mark(m) if self.talking.contains(&m.stream_id) => {
                Ok(self.bot(m.stream_id, crate::BotCommand::Mark(m.name)))
            }
            crate::ServerText::Clear(c) if self.talking.contains(&c.stream_id) => {
                Ok(self.bot(c.stream_id, crate::BotCommand::Clear))
            }
            // A stream that does not talk back has nothing to mark or clear.
            crate::ServerText::Mark(_) | crate::ServerText::Clear(_) => {
                Err(ServerViolation::UnexpectedState)
            }
        }
    }

    fn stats(&self) -> DialectStats {
        self.stats
    }
}

/// A dialect's translator for one connection. See the module docs.
#[derive(Debug)]
pub struct Dialect {
    inner: Inner,
    config: ProfileConfig,
}

#[derive(Debug)]
enum Inner {
    Xdpfork(Xdpfork),
    Twilio(Box<twilio::Twilio>),
    Audiohook(Box<audiohook::Audiohook>),
    Jambonz(Box<jambonz::Jambonz>),
    Raw(Box<raw::Raw>),
}

impl Inner {
    fn speaker(&self) -> &dyn Speaker {
        match self {
            Inner::Xdpfork(d) => d,
            Inner::Twilio(d) => &**d,
            Inner::Audiohook(d) => &**d,
            Inner::Jambonz(d) => &**d,
            Inner::Raw(d) => &**d,
        }
    }

    fn speaker_mut(&mut self) -> &mut dyn Speaker {
        match self {
            Inner::Xdpfork(d) => d,
            Inner::Twilio(d) => &mut **d,
            Inner::Audiohook(d) => &mut **d,
            Inner::Jambonz(d) => &mut **d,
            Inner::Raw(d) => &mut **d,
        }
    }
}

fn push_auth(auth: &AuthScheme, token: &str, headers: &mut Vec<(String, String)>) {
    match auth {
        AuthScheme::Bearer => headers.push(("Authorization".into(), format!("Bearer {token}"))),
        AuthScheme::Token => headers.push(("Authorization".into(), format!("Token {token}"))),
        AuthScheme::Header(h) => headers.push((h.clone(), token.to_owned())),
        AuthScheme::Basic => headers.push((
            "Authorization".into(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(token)
            ),
        )),
    }
}

impl Dialect {
    /// A translator for a new connection to a destination configured with `config`.
    pub fn new(config: &ProfileConfig) -> Result<Dialect, ProfileConfigError> {
        config.validate()?;
        let format = config.audio_format()?;
        let inner = match (config.profile, format) {
            (Profile::Xdpfork, _) => Inner::Xdpfork(Xdpfork::default()),
            (Profile::Twilio, Some(f)) => Inner::Twilio(Box::new(twilio::Twilio::new(config, f))),
            (Profile::Audiohook, Some(f)) => {
                Inner::Audiohook(Box::new(audiohook::Audiohook::new(config, f)?))
            }
            (Profile::Jambonz, Some(f)) => Inner::Jambonz(Box::new(jambonz::Jambonz::new(f))),
            (Profile::Raw, Some(f)) => Inner::Raw(Box::new(raw::Raw::new(f))),
            (p, None) => {
                return Err(ProfileConfigError {
                    field: "profile".into(),
                    reason: format!("{p} has no audio format"),
                })
            }
        };
        Ok(Dialect {
            inner,
            config: config.clone(),
        })
    }

    /// The dialect spoken.
    pub fn profile(&self) -> Profile {
        self.config.profile
    }

    /// The audio sent (`None` for xdpfork, which forwards RTP payloads as they are).
    pub fn audio_format(&self) -> Option<AudioFormat> {
        self.config.audio_format().ok().flatten()
    }

    /// Subprotocol and headers of the upgrade request: the configured headers, the dialect's
    /// own, then the token as `auth` says (unless the dialect used it, as AudioHook does for
    /// `X-API-KEY`). Call it once per connection, before anything else: AudioHook derives its
    /// session ids from `info.nonce` here.
    pub fn upgrade(&self, info: &UpgradeInfo<'_>) -> Upgrade {
        let mut headers = self.config.headers.clone();
        let parts = self.inner.speaker().upgrade(info, &mut headers);
        if let (Some(token), false) = (info.token, parts.token_used) {
            push_auth(&self.config.auth, token, &mut headers);
        }
        Upgrade {
            subprotocol: parts.subprotocol,
            headers,
        }
    }

    /// One control message of the service, in order.
    pub fn on_control(&mut self, now: Instant, msg: &Control, out: &mut Vec<WireFrame>) {
        self.inner.speaker_mut().on_control(now, msg, out)
    }

    /// One audio frame of the service (16-byte header and G.711 payload, docs/speech-protocol.md
    /// §3). Taken by value so our own dialect sends it without a copy.
    pub fn on_audio(&mut self, now: Instant, frame: Vec<u8>, out: &mut Vec<WireFrame>) {
        self.inner.speaker_mut().on_audio(now, frame, out)
    }

    /// End of a batch of service messages (dialects that announce a call once, with all its
    /// streams, do it here; so do those that say goodbye once every stream stopped).
    pub fn flush(&mut self, now: Instant, out: &mut Vec<WireFrame>) {
        self.inner.speaker_mut().flush(now, out)
    }

    /// One text frame from the server. Replies the dialect owes (Twilio's `mark` echo,
    /// AudioHook's `paused`/`resumed`) are appended to `out`.
    pub fn on_server_text(
        &mut self,
        now: Instant,
        text: &str,
        out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation> {
        self.inner.speaker_mut().on_server_text(now, text, out)
    }

    /// One binary frame from the server.
    pub fn on_server_binary(
        &mut self,
        now: Instant,
        data: &[u8],
        out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation> {
        self.inner.speaker_mut().on_server_binary(now, data, out)
    }

    /// When [`Dialect::on_timeout`] wants to run next (keep-alives). Re-read after every input.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.inner.speaker().poll_timeout()
    }

    /// A due timer. A call before the deadline does nothing.
    pub fn on_timeout(&mut self, now: Instant, out: &mut Vec<WireFrame>) {
        self.inner.speaker_mut().on_timeout(now, out)
    }

    /// The connection is about to be closed by us: the dialect's goodbye, if it has one and
    /// has not said it yet.
    pub fn on_local_close(&mut self, now: Instant, out: &mut Vec<WireFrame>) {
        self.inner.speaker_mut().on_local_close(now, out)
    }

    /// The playout of `stream_id` played everything before the bot's mark `name` (or cleared
    /// it): the dialect's answer, if it has one (Twilio echoes the `mark`), goes to `out`.
    pub fn on_mark_played(
        &mut self,
        now: Instant,
        stream_id: u32,
        name: &str,
        out: &mut Vec<WireFrame>,
    ) {
        self.inner
            .speaker_mut()
            .on_mark_played(now, stream_id, name, out)
    }

    /// Counters of what was not sent or not acted on.
    pub fn stats(&self) -> DialectStats {
        self.inner.speaker().stats()
    }

    /// Audio frames not delivered ([`DialectStats::dropped_audio`]); AudioHook drops audio
    /// until the server's `opened` rather than holding it, so this is what the fork lost
    /// before the server accepted it.
    pub fn dropped_audio(&self) -> u64 {
        self.stats().dropped_audio()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_str_and_serde() {
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>(), Ok(p));
            let json = serde_json::to_string(&p).expect("json");
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<Profile>(&json).expect("parse"), p);
        }
        assert_eq!(
            "Twilio".parse::<Profile>(),
            Err(UnknownProfile("Twilio".into()))
        );
    }

    #[test]
    fn only_xdpfork_multiplexes() {
        let m: Vec<_> = Profile::ALL
            .into_iter()
            .filter(|p| p.multiplexes_calls())
            .collect();
        assert_eq!(m, vec![Profile::Xdpfork]);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn xdpfork_dialect_passes_frames_through_and_offers_the_subprotocol() {
        let cfg = ProfileConfig::default();
        let mut d = Dialect::new(&cfg).expect("dialect");
        let up = d.upgrade(&UpgradeInfo {
            authority: "asr:9000",
            path_and_query: "/fork",
            token: Some("t0k"),
            unix_now: 0,
            nonce: [0; 16],
        });
        assert_eq!(up.subprotocol, Some(SUBPROTOCOL));
        assert_eq!(
            up.headers,
            vec![("Authorization".to_owned(), "Bearer t0k".to_owned())]
        );
        let now = Instant::now();
        let mut out = Vec::new();
        let stop = Control::Stop(crate::Stop {
            stream_id: 3,
            reason: crate::StopReason::Request,
        });
        d.on_control(now, &stop, &mut out);
        d.on_audio(now, vec![1, 2, 3], &mut out);
        d.flush(now, &mut out);
        assert_eq!(
            out,
            vec![
                WireFrame::Text(stop.to_json()),
                WireFrame::Binary(vec![1, 2, 3])
            ]
        );
        assert_eq!(
            d.on_server_binary(now, &[0], &mut out),
            Err(ServerViolation::BinaryFrame)
        );
        assert!(matches!(
            d.on_server_text(
                now,
                r#"{"type":"error","code":"x","message":"y"}"#,
                &mut out
            ),
            Ok(ServerSignal::Error(_))
        ));
    }

    #[test]
    fn dialects_can_be_shared_with_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Dialect>();
    }

    #[test]
    fn twilio_media_is_audio_and_control_is_not() {
        assert!(WireFrame::Binary(vec![1]).is_audio());
        assert!(WireFrame::Text(format!("{}1\"}}", twilio::MEDIA_PREFIX)).is_audio());
        assert!(!WireFrame::Text(r#"{"event":"mark","sequenceNumber":"1"}"#.into()).is_audio());
        assert!(!WireFrame::Text(r#"{"type":"start"}"#.into()).is_audio());
    }

    #[test]
    fn every_profile_builds_and_says_its_limits() {
        for p in Profile::ALL {
            let d = Dialect::new(&ProfileConfig {
                profile: p,
                ..ProfileConfig::default()
            })
            .expect("default config of every profile is valid");
            assert_eq!(d.profile(), p);
            assert_eq!(d.audio_format().is_none(), p == Profile::Xdpfork);
            assert_eq!(d.stats(), DialectStats::default());
            assert!(p.max_server_message() >= MAX_SERVER_MESSAGE);
            assert_eq!(d.poll_timeout(), None);
        }
        assert!(Profile::ALL
            .iter()
            .filter(|p| p.awaits_acceptance())
            .eq([Profile::Audiohook].iter()));
    }

    #[test]
    fn token_schemes_and_bad_headers() {
        let info = UpgradeInfo {
            authority: "a",
            path_and_query: "/",
            token: Some("k"),
            unix_now: 0,
            nonce: [0; 16],
        };
        for (auth, want) in [
            (AuthScheme::Token, ("Authorization", "Token k")),
            (AuthScheme::Header("X-API-KEY".into()), ("X-API-KEY", "k")),
            (AuthScheme::Basic, ("Authorization", "Basic aw==")),
        ] {
            let cfg = ProfileConfig {
                auth,
                ..ProfileConfig::default()
            };
            let up = Dialect::new(&cfg).expect("dialect").upgrade(&info);
            assert_eq!(up.headers, vec![(want.0.to_owned(), want.1.to_owned())]);
        }
        let bad = ProfileConfig {
            headers: vec![("Bad Name".into(), "v".into())],
            ..ProfileConfig::default()
        };
        assert_eq!(Dialect::new(&bad).expect_err("refused").field, "headers[0]");
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn xdpfork_return_audio_on_the_streams_that_talk_back() {
        let now = Instant::now();
        let mut d = Dialect::new(&ProfileConfig::default()).expect("dialect");
        let mut out = Vec::new();
        let frame = |sid: u32, pt: u8| {
            let mut f = Vec::new();
            crate::encode_audio(
                &mut f,
                &crate::AudioHeader {
                    stream_id: sid,
                    seq: 1,
                    payload_type: pt,
                    flags: 0,
                    timestamp: 0,
                },
                &[0xff, 0x00],
            );
            f
        };
        assert_eq!(
            d.on_server_binary(now, &frame(7, 0), &mut out),
            Err(ServerViolation::BinaryFrame),
            "nothing talks back yet"
        );
        let mut start = match crate::profile::call::testing::start(
            crate::Channel::Caller,
            crate::Codec::Pcmu,
        ) {
            Control::Start(s) => s,
            _ => unreachable!("start() builds a start"),
        };
        start.stream_id = 7;
        start.return_audio = true;
        d.on_control(now, &Control::Start(start), &mut out);
        let bot = |commands| {
            Ok(ServerSignal::Bot {
                stream_id: 7,
                commands,
            })
        };
        assert_eq!(
            d.on_server_binary(now, &frame(7, 0), &mut out),
            bot(vec![crate::BotCommand::Play(vec![0, -32124])])
        );
        assert_eq!(
            d.on_server_binary(now, &frame(7, 8), &mut out),
            bot(vec![crate::BotCommand::Play(vec![
                crate::alaw_to_linear(0xff),
                crate::alaw_to_linear(0x00)
            ])])
        );
        assert_eq!(
            d.on_server_binary(now, &frame(8, 0), &mut out),
            Err(ServerViolation::UnexpectedState),
            "another stream"
        );
        assert_eq!(
            d.on_server_binary(now, &frame(7, 18), &mut out),
            Err(ServerViolation::BadParameters)
        );
        assert_eq!(
            d.on_server_text(
                now,
                r#"{"type":"mark","stream_id":7,"name":"m1"}"#,
                &mut out
            ),
            bot(vec![crate::BotCommand::Mark("m1".into())])
        );
        assert_eq!(
            d.on_server_text(now, r#"{"type":"clear","stream_id":7}"#, &mut out),
            bot(vec![crate::BotCommand::Clear])
        );
        assert_eq!(
            d.on_server_text(now, r#"{"type":"clear","stream_id":8}"#, &mut out),
            Err(ServerViolation::UnexpectedState)
        );
        out.clear();
        d.on_mark_played(now, 7, "m1", &mut out);
        assert_eq!(
            out,
            vec![WireFrame::Text(
                r#"{"type":"mark","stream_id":7,"name":"m1"}"#.into()
            )]
        );
        assert_eq!(d.stats().bot_commands, 4);
        assert_eq!(Profile::Xdpfork.check_return_audio(), Ok(()));
        assert!(Profile::Audiohook.check_return_audio().is_err());
        assert!(Profile::Raw.check_return_audio().is_err());
    }
}
