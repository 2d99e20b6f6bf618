//! Genesys AudioHook protocol v2, client side (Genesys Cloud's role), as the open reference
//! implementation speaks it (purecloudlabs/audiohook-reference-implementation: protocol types
//! in `app/audiohook/src/protocol/message.ts`, checks in `validators.ts`, client behaviour in
//! `client/clientsessionimpl.ts`, signature in `client/src/clientwebsocket.ts`).
//!
//! Upgrade: `Audiohook-Organization-Id`, `Audiohook-Session-Id`, `Audiohook-Correlation-Id`,
//! `X-API-KEY` and, with a client secret, an HTTP message signature (`signature` module).
//! Session and correlation ids are UUIDs drawn from the upgrade nonce.
//!
//! Session: at the first flush with a started stream the client sends `open` (media offers by
//! layout: stereo PCMU `[external, internal]` then mono `[external]`; or one mono offer) and
//! waits for `opened` ([`ServerSignal::Accepted`]); audio before it is dropped and counted
//! (`audio_before_accept`). Then binary PCMU frames (external = caller, internal = callee,
//! interleaved in that order) and text messages, each with `seq` (from 1), `serverseq` (the
//! last server `seq` seen) and `position` (8 kHz samples sent plus durations discarded, as an
//! ISO 8601 `PT…S` duration). A `ping` goes out [`INITIAL_PING_DELAY`] after `opened` and
//! then every `ping_interval_ms`; while a ping has no `pong`, none is sent (`pongs_missed`).
//!
//! Pauses: when every running stream is paused (hold) the client sends `paused`; when one
//! resumes, `resumed` with the pause's start position and its wall-clock length (`discarded`).
//! A server `pause` is answered with `paused` and its audio is withheld; a server `resume`
//! with `resumed` (or `paused` again while the call is on hold), as the reference client does.
//! `opened` with `startPaused` starts in a server pause; with `discardTo` the client reports
//! `discarded` up to it and continues from there. `update` carries a changed metadata
//! `language`. When every stream stopped, `close` (`end`, or `error` after a stop for an
//! error); a local close sends `close` too (`disconnect` / `reconnect` after the server asked).
//!
//! Server messages are checked like the reference client does: `version` "2", our session
//! `id`, `seq` exactly the next one, `clientseq` not beyond what was sent, known type and
//! state. `disconnect` and `reconnect` are [`ServerSignal::Refused`]. Binary frames are a
//! violation. Not supported: `continuedSessions` (a reconnect opens a new session), DTMF
//! (AudioHook v2 has no client DTMF message), `supportedLanguages`, L16 media.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Channel, Control, ServerViolation, StopReason};

use super::call::{Call, Change};
use super::config::is_uuid;
use super::media::MediaPipe;
use super::signature::{sign, Covered};
use super::{
    ids, server_json, AudioEncoding, AudioFormat, DialectStats, Layout, Profile, ProfileConfig,
    ProfileConfigError, ServerSignal, Speaker, UpgradeInfo, UpgradeParts, WireFrame,
    DEFAULT_PING_INTERVAL_MS, NIL_UUID,
};

/// Delay of the first `ping` after `opened` (the reference client's
/// `DEFAULT_INITIAL_PING_DELAY`), so the server learns the round-trip time early.
pub const INITIAL_PING_DELAY: Duration = Duration::from_secs(1);

/// Lifetime of the upgrade signature (`expires` − `created`; the reference client's default).
pub const SIGNATURE_LIFETIME_SECS: u64 = 30;

/// Message types only a client sends.
const CLIENT_TYPES: [&str; 8] = [
    "open",
    "close",
    "discarded",
    "error",
    "paused",
    "ping",
    "resumed",
    "update",
];

/// Nanoseconds per sample at 8 kHz.
const NANOS_PER_SAMPLE: u128 = 125_000;

/// `PT<seconds>S` with the fraction written only as far as needed (`PT0S`, `PT0.02S`).
fn iso_duration(nanos: u128) -> String {
    let (secs, frac) = (nanos / 1_000_000_000, nanos % 1_000_000_000);
    if frac == 0 {
        return format!("PT{secs}S");
    }
    let digits = format!("{frac:09}");
    format!("PT{secs}.{}S", digits.trim_end_matches('0'))
}

fn samples_duration(samples: u64) -> String {
    iso_duration(u128::from(samples) * NANOS_PER_SAMPLE)
}

/// Parses `PT<decimal>S` (the reference validator's `^PT(?:\d*\.)?\d+S$`) into nanoseconds.
fn parse_duration(s: &str) -> Option<u128> {
    let body = s.strip_prefix("PT")?.strip_suffix('S')?;
    // Digits are required after a dot and, without one, before the `S`.
    let (int, frac) = match body.split_once('.') {
        Some((_, "")) => return None,
        Some(parts) => parts,
        None if body.is_empty() => return None,
        None => (body, ""),
    };
    let digits = |d: &str| d.chars().all(|c| c.is_ascii_digit());
    if !digits(int) || !digits(frac) || int.len() > 12 {
        return None;
    }
    let secs: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac9: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    Some(secs * 1_000_000_000 + frac9.parse::<u128>().ok()?)
}

/// Samples at 8 kHz in a wall-clock duration.
fn samples_in(d: Duration) -> u64 {
    (d.as_nanos() / NANOS_PER_SAMPLE) as u64
}

/// A language code the reference validator accepts (`^[a-z]{2,3}-[A-Za-z]{2,3}$`).
fn language_of(metadata: &Map<String, Value>) -> Option<&str> {
    let lang = metadata.get("language")?.as_str()?;
    let (l, r) = lang.split_once('-')?;
    let ok = (2..=3).contains(&l.len())
        && l.chars().all(|c| c.is_ascii_lowercase())
        && (2..=3).contains(&r.len())
        && r.chars().all(|c| c.is_ascii_alphabetic());
    ok.then_some(lang)
}

/// A UUID of versions 1–5 with the RFC 9562 variant, or the nil UUID (the reference
/// validator's `uuidRegex`).
fn is_audiohook_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    s == NIL_UUID || (is_uuid(s) && (b'1'..=b'5').contains(&b[14]) && b"89abAB".contains(&b[19]))
}

/// One media offer; fields a server adds are ignored, as the reference validator does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MediaParam {
    #[serde(rename = "type")]
    kind: String,
    format: String,
    channels: Vec<String>,
    rate: u32,
}

fn offer(channels: &[&str]) -> MediaParam {
    MediaParam {
        kind: "audio".into(),
        format: "PCMU".into(),
        channels: channels.iter().map(|c| (*c).to_owned()).collect(),
        rate: 8000,
    }
}

fn offers(layout: Layout) -> Vec<MediaParam> {
    match layout {
        Layout::MonoCaller => vec![offer(&["external"])],
        Layout::MonoCallee => vec![offer(&["internal"])],
        _ => vec![offer(&["external", "internal"]), offer(&["external"])],
    }
}

fn layout_of(media: &MediaParam) -> Layout {
    match media.channels.as_slice() {
        [one] if one == "internal" => Layout::MonoCallee,
        [_] => Layout::MonoCaller,
        _ => Layout::Stereo,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Participant<'a> {
    id: String,
    ani: &'a str,
    ani_name: &'a str,
    dnis: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OpenParams<'a> {
    organization_id: &'a str,
    conversation_id: String,
    participant: Participant<'a>,
    media: Vec<MediaParam>,
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_config: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<&'a str>,
}

#[derive(Serialize)]
struct ClientMsg<'a, P: Serialize> {
    version: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    seq: u64,
    serverseq: u64,
    position: String,
    parameters: P,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Span {
    start: String,
    discarded: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing announced yet.
    Idle,
    /// `open` sent, waiting for `opened`.
    Opening,
    /// Streaming.
    Open,
    /// `close` sent.
    Closing,
    /// `closed` received.
    Closed,
}

/// AudioHook dialect state of one connection. See the module docs.
#[derive(Debug)]
pub(super) struct Audiohook {
    organization_id: String,
    api_key: Option<String>,
    secret: Option<Vec<u8>>,
    ping_interval: Duration,
    layout: Layout,
    /// The upgrade's nonce, set by `upgrade` (which only borrows the dialect; atomics keep the
    /// dialect `Sync` without a lock).
    nonce: [AtomicU64; 2],
    session_id: String,
    call: Call,
    state: State,
    /// `seq` of the last message sent.
    seq: u64,
    /// `seq` of the last server message.
    serverseq: u64,
    /// Highest `clientseq` the server reported.
    acked: u64,
    /// The selected media's path; `None` before `opened`, after `close`, or without media.
    pipe: Option<MediaPipe>,
    /// Samples (8 kHz) sent or discarded.
    position: u64,
    client_paused: bool,
    server_paused: bool,
    /// Start of the current pause: when, and the position then.
    pause: Option<(Instant, u64)>,
    next_ping: Option<Instant>,
    pending_ping: Option<(u64, Instant)>,
    rtt: Option<Duration>,
    /// The language last announced.
    language: Option<String>,
    /// `close` reason of a local close.
    close_reason: &'static str,
    stats: DialectStats,
}

impl Audiohook {
    pub fn new(config: &ProfileConfig, format: AudioFormat) -> Result<Self, ProfileConfigError> {
        Ok(Audiohook {
            organization_id: config
                .organization_id
                .clone()
                .unwrap_or_else(|| NIL_UUID.to_owned()),
            api_key: config.api_key.clone(),
            secret: config.client_secret_bytes()?,
            ping_interval: Duration::from_millis(
                config.ping_interval_ms.unwrap_or(DEFAULT_PING_INTERVAL_MS),
            ),
            layout: format.layout,
            nonce: [AtomicU64::new(0), AtomicU64::new(0)],
            session_id: String::new(),
            call: Call::default(),
            state: State::Idle,
            seq: 0,
            serverseq: 0,
            acked: 0,
            pipe: None,
            position: 0,
            client_paused: false,
            server_paused: false,
            pause: None,
            next_ping: None,
            pending_ping: None,
            rtt: None,
            language: None,
            close_reason: "end",
            stats: DialectStats::default(),
        })
    }

    fn set_nonce(&self, nonce: [u8; 16]) {
        for (half, bytes) in self.nonce.iter().zip(nonce.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes);
            half.store(u64::from_be_bytes(b), Ordering::Relaxed);
        }
    }

    fn nonce(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (half, bytes) in self.nonce.iter().zip(out.chunks_exact_mut(8)) {
            bytes.copy_from_slice(&half.load(Ordering::Relaxed).to_be_bytes());
        }
        out
    }

    fn session_id(nonce: [u8; 16]) -> String {
        ids::uuid_v4(nonce)
    }

    fn correlation_id(nonce: [u8; 16]) -> String {
        ids::uuid_v4(ids::derive16("audiohook-correlation:", &nonce))
    }

    /// Position now: samples sent or discarded, plus the running pause.
    fn position_at(&self, now: Instant) -> u64 {
        self.position
            + self
                .pause
                .map_or(0, |(t0, _)| samples_in(now.saturating_duration_since(t0)))
    }

    fn send(
        &mut self,
        now: Instant,
        kind: &'static str,
        parameters: impl Serialize,
        out: &mut Vec<WireFrame>,
    ) {
        self.seq += 1;
        let msg = ClientMsg {
            version: "2",
            kind,
            id: &self.session_id,
            seq: self.seq,
            serverseq: self.serverseq,
            position: samples_duration(self.position_at(now)),
            parameters,
        };
        out.push(WireFrame::Text(
            serde_json::to_string(&msg).expect("invariant: AudioHook messages are plain JSON"),
        ));
    }

    /// `open`, once the call is known.
    fn open(&mut self, now: Instant, out: &mut Vec<WireFrame>) {
        if self.state != State::Idle {
            return;
        }
        let Some(info) = self.call.info.clone() else {
            return;
        };
        self.session_id = Self::session_id(self.nonce());
        let conversation_id = if is_audiohook_uuid(&info.call_guid) {
            info.call_guid.clone()
        } else {
            ids::uuid_v5(&ids::NAMESPACE, &info.call_guid)
        };
        let language = language_of(&info.metadata);
        self.language = language.map(str::to_owned);
        let organization_id = self.organization_id.clone();
        let params = OpenParams {
            organization_id: &organization_id,
            conversation_id,
            participant: Participant {
                id: ids::uuid_v5(&ids::NAMESPACE, &format!("participant:{}", info.call_guid)),
                ani: &info.from,
                ani_name: "",
                dnis: &info.to,
            },
            media: offers(self.layout),
            custom_config: (!info.metadata.is_empty()).then_some(&info.metadata),
            language,
        };
        self.send(now, "open", params, out);
        self.state = State::Opening;
    }

    fn begin_pause(&mut self, now: Instant, out: &mut Vec<WireFrame>) {
        // Samples waiting in the aligner go out before the stream says it is paused.
        if let Some(pipe) = &mut self.pipe {
            self.position += pipe.flush(out);
        }
        if self.pause.is_none() {
            self.pause = Some((now, self.position));
        }
    }

    /// Ends the running pause: its start position and the samples discarded.
    fn end_pause(&mut self, now: Instant) -> (u64, u64) {
        match self.pause.take() {
            Some((t0, start)) => {
                let discarded = samples_in(now.saturating_duration_since(t0));
                self.position += discarded;
                (start, discarded)
            }
            None => (self.position, 0),
        }
    }

    fn resumed(&mut self, now: Instant, out: &mut Vec<WireFrame>) {
        let (start, discarded) = self.end_pause(now);
        let span = Span {
            start: samples_duration(start),
            discarded: samples_duration(discarded),
        };
        self.send(now, "resumed", span, out);
    }

    /// Follows the call's hold state: `paused` when every running stream is paused, `resumed`
    /// when one comes back (unless the server's own pause continues).
    fn sync_client_pause(&mut self, now: Instant, out: &mut Vec<WireFrame>) {
        let paused = self.call.all_paused();
        if paused == self.client_paused {
            return;
        }
        self.client_paused = paused;
        if self.state != State::Open {
            return;
        }
        if paused {
            self.begin_pause(now, out);
            self.send(now, "paused", Empty {}, out);
        } else if !self.server_paused {
            self.resumed(now, out);
        }
    }

    fn close(&mut self, now: Instant, reason: &'static str, out: &mut Vec<WireFrame>) {
        if !matches!(self.state, State::Opening | State::Open) {
            return;
        }
        if let Some(mut pipe) = self.pipe.take() {
            if self.pause.is_none() {
                self.position += pipe.flush(out);
            }
        }
        #[derive(Serialize)]
        struct CloseParams {
            reason: &'static str,
        }
        self.send(now, "close", CloseParams { reason }, out);
        self.state = State::Closing;
        self.next_ping = None;
    }

    fn on_opened(
        &mut self,
        now: Instant,
        params: &Map<String, Value>,
        out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation> {
        match self.state {
            State::Opening => {}
            // Sent before the server saw our `close`: nothing to start any more.
            State::Closing | State::Closed => return Ok(ServerSignal::Nothing),
            State::Idle | State::Open => return Err(ServerViolation::UnexpectedState),
        }
        let media: Vec<MediaParam> = params
            .get("media")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .ok_or(ServerViolation::BadParameters)?;
        let start_paused = match params.get("startPaused") {
            None => false,
            Some(v) => v.as_bool().ok_or(ServerViolation::BadParameters)?,
        };
        let discard_to = match params.get("discardTo") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(parse_duration)
                    .ok_or(ServerViolation::BadParameters)?,
            ),
        };
        let selected = match media.as_slice() {
            [] => None,
            [one] if offers(self.layout).contains(one) => Some(layout_of(one)),
            _ => return Err(ServerViolation::BadParameters),
        };
        self.state = State::Open;
        if let Some(layout) = selected {
            let mut pipe = MediaPipe::new(AudioFormat {
                encoding: AudioEncoding::Ulaw,
                rate: 8000,
                layout,
            });
            for ch in [Channel::Caller, Channel::Callee] {
                pipe.set_live(ch, self.call.is_live(ch), out);
            }
            self.pipe = Some(pipe);
        }
        if let Some(to) = discard_to {
            let to = (to / NANOS_PER_SAMPLE) as u64;
            if to > self.position {
                let span = Span {
                    start: samples_duration(self.position),
                    discarded: samples_duration(to - self.position),
                };
                self.send(now, "discarded", span, out);
                self.position = to;
            }
        }
        self.server_paused = start_paused;
        if start_paused || self.client_paused {
            self.begin_pause(now, out);
            self.send(now, "paused", Empty {}, out);
        }
        self.next_ping = Some(now + INITIAL_PING_DELAY);
        Ok(ServerSignal::Accepted)
    }
}

impl Speaker for Audiohook {
    fn upgrade(&self, info: &UpgradeInfo<'_>, headers: &mut Vec<(String, String)>) -> UpgradeParts {
        self.set_nonce(info.nonce);
        let session = Self::session_id(info.nonce);
        let correlation = Self::correlation_id(info.nonce);
        let api_key = self.api_key.as_deref().or(info.token);
        headers.push((
            "Audiohook-Organization-Id".into(),
            self.organization_id.clone(),
        ));
        headers.push(("Audiohook-Session-Id".into(), session.clone()));
        headers.push(("Audiohook-Correlation-Id".into(), correlation.clone()));
        if let Some(key) = api_key {
            headers.push(("X-API-KEY".into(), key.to_owned()));
            if let Some(secret) = &self.secret {
                let nonce = base64::engine::general_purpose::STANDARD
                    .encode(ids::derive16("audiohook-signature-nonce:", &info.nonce));
                let authority = info.authority.to_ascii_lowercase();
                let components = [
                    ("@request-target", info.path_and_query),
                    ("@authority", authority.as_str()),
                    ("audiohook-organization-id", self.organization_id.as_str()),
                    ("audiohook-session-id", session.as_str()),
                    ("audiohook-correlation-id", correlation.as_str()),
                    ("x-api-key", key),
                ];
                let (input, signature) = sign(
                    &Covered {
                        components: &components,
                        keyid: key,
                        nonce: &nonce,
                        created: info.unix_now,
                        expires: info.unix_now + SIGNATURE_LIFETIME_SECS,
                    },
                    secret,
                );
                headers.push(("Signature-Input".into(), input));
                headers.push(("Signature".into(), signature));
            }
        }
        UpgradeParts {
            subprotocol: None,
            token_used: self.api_key.is_none(),
        }
    }

    fn on_control(&mut self, now: Instant, msg: &Control, out: &mut Vec<WireFrame>) {
        match self.call.apply(msg) {
            Change::Started(ch) | Change::Resumed(ch) => {
                if let Some(pipe) = &mut self.pipe {
                    pipe.set_live(ch, true, out);
                }
                self.sync_client_pause(now, out);
            }
            Change::Paused(ch) | Change::Stopped(ch) => {
                // Samples waiting for this party go out now (none wait during a pause: the
                // aligner is flushed when one begins and nothing is pushed while it lasts).
                if let Some(pipe) = &mut self.pipe {
                    self.position += pipe.set_live(ch, false, out);
                }
                self.sync_client_pause(now, out);
            }
            Change::Updated(metadata) => {
                let lang = language_of(metadata).map(str::to_owned);
                if self.state == State::Open && lang.is_some() && lang != self.language {
                    #[derive(Serialize)]
                    struct UpdateParams {
                        language: String,
                    }
                    let language = lang.clone().unwrap_or_default();
                    self.send(now, "update", UpdateParams { language }, out);
                    self.language = lang;
                } else {
                    self.stats.controls_not_sent += 1;
                }
            }
            Change::Dtmf(..) | Change::Ignored => self.stats.controls_not_sent += 1,
        }
    }

    fn on_audio(&mut self, now: Instant, frame: Vec<u8>, out: &mut Vec<WireFrame>) {
        self.stats.audio_in += 1;
        let Some(audio) = self.call.audio(&frame) else {
            self.stats.audio_invalid += 1;
            return;
        };
        self.open(now, out);
        match self.state {
            State::Idle | State::Opening => {
                self.stats.audio_before_accept += 1;
                return;
            }
            State::Closing | State::Closed => {
                self.stats.audio_withheld += 1;
                return;
            }
            State::Open => {}
        }
        let paused = self.pause.is_some();
        let Some(pipe) = &mut self.pipe else {
            self.stats.audio_withheld += 1;
            return;
        };
        if !pipe.carries(audio.channel) {
            self.stats.audio_not_carried += 1;
        } else if paused {
            self.stats.audio_withheld += 1;
        } else {
            self.position += pipe.push(&audio, out);
        }
    }

    fn flush(&mut self, now: Instant, out: &mut Vec<WireFrame>) {
        self.open(now, out);
        if self.call.ended() {
            let reason = match self.call.stop_reason() {
                Some(StopReason::Error) => "error",
                _ => "end",
            };
            self.close(now, reason, out);
        }
    }

    fn on_server_text(
        &mut self,
        now: Instant,
        text: &str,
        out: &mut Vec<WireFrame>,
    ) -> Result<ServerSignal, ServerViolation> {
        let msg = server_json(text, Profile::Audiohook.max_server_message())?;
        let (
            Some("2"),
            Some(id),
            Some(kind),
            Some(seq),
            Some(clientseq),
            Some(Value::Object(params)),
        ) = (
            msg.get("version").and_then(Value::as_str),
            msg.get("id").and_then(Value::as_str),
            msg.get("type").and_then(Value::as_str),
            msg.get("seq").and_then(Value::as_u64),
            msg.get("clientseq").and_then(Value::as_u64),
            msg.get("parameters"),
        )
        else {
            return Err(ServerViolation::MalformedText);
        };
        if self.state == State::Idle {
            return Err(ServerViolation::UnexpectedState);
        }
        if id != self.session_id {
            return Err(ServerViolation::WrongSession);
        }
        if seq != self.serverseq + 1 || clientseq > self.seq || clientseq < self.acked {
            return Err(ServerViolation::SequenceError);
        }
        self.serverseq = seq;
        self.acked = clientseq;
        let closing = matches!(self.state, State::Closing | State::Closed);
        match kind {
            "opened" => self.on_opened(now, params, out),
            "pong" => match self.pending_ping.take() {
                Some((ping, sent)) if ping == clientseq => {
                    self.rtt = Some(now.saturating_duration_since(sent));
                    Ok(ServerSignal::Nothing)
                }
                _ if closing => Ok(ServerSignal::Nothing),
                _ => Err(ServerViolation::UnexpectedState),
            },
            "pause" if self.state == State::Open => {
                self.server_paused = true;
                self.begin_pause(now, out);
                self.send(now, "paused", Empty {}, out);
                Ok(ServerSignal::Nothing)
            }
            "resume" if self.state == State::Open => {
                self.server_paused = false;
                if self.client_paused {
                    self.send(now, "paused", Empty {}, out);
                } else {
                    self.resumed(now, out);
                }
                Ok(ServerSignal::Nothing)
            }
            "pause" | "resume" | "updated" | "event" if closing => Ok(ServerSignal::Nothing),
            "pause" | "resume" => Err(ServerViolation::UnexpectedState),
            "updated" => {
                self.stats.server_messages_ignored += 1;
                Ok(ServerSignal::Nothing)
            }
            "event" => {
                if !params.get("entities").is_some_and(Value::is_array) {
                    return Err(ServerViolation::BadParameters);
                }
                self.stats.server_messages_ignored += 1;
                Ok(ServerSignal::Nothing)
            }
            "disconnect" => {
                let reason = params
                    .get("reason")
                    .and_then(Value::as_str)
                    .filter(|r| ["completed", "unauthorized", "error"].contains(r))
                    .ok_or(ServerViolation::BadParameters)?;
                if closing {
                    return Ok(ServerSignal::Nothing);
                }
                self.close_reason = "disconnect";
                let info = params.get("info").and_then(Value::as_str).unwrap_or("");
                Ok(ServerSignal::Refused(
                    format!("disconnect ({reason}) {info}")
                        .trim_end()
                        .to_owned(),
                ))
            }
            "reconnect" => {
                if closing {
                    return Ok(ServerSignal::Nothing);
                }
                self.close_reason = "reconnect";
                let info = params.get("info").and_then(Value::as_str).unwrap_or("");
                Ok(ServerSignal::Refused(
                    format!("reconnect requested {info}").trim_end().to_owned(),
                ))
            }
            "closed" if self.state == State::Closing => {
                self.state = State::Closed;
                Ok(ServerSignal::Nothing)
            }
            "closed" => Err(ServerViolation::UnexpectedState),
            t if CLIENT_TYPES.contains(&t) => Err(ServerViolation::UnexpectedMessage),
            _ => Err(ServerViolation::MalformedText),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_ping
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Vec<WireFrame>) {
        match self.next_ping {
            Some(due) if due <= now && self.state == State::Open => {}
            _ => return,
        }
        self.next_ping = Some(now + self.ping_interval);
        if self.pending_ping.is_some() {
            self.stats.pongs_missed += 1;
            return;
        }
        #[derive(Serialize)]
        struct PingParams {
            #[serde(skip_serializing_if = "Option::is_none")]
            rtt: Option<String>,
        }
        let rtt = self.rtt.map(|d| iso_duration(d.as_nanos()));
        self.send(now, "ping", PingParams { rtt }, out);
        self.pending_ping = Some((self.seq, now));
    }

    fn on_local_close(&mut self, now: Instant, out: &mut Vec<WireFrame>) {
        let reason = self.close_reason;
        self.close(now, reason, out);
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
    use crate::profile::Dialect;
    use crate::{ulaw_to_linear, Codec};

    const ORG: &str = "d7934305-0972-4844-938e-9060eef73d05";
    const NONCE: [u8; 16] = [7; 16];

    fn config() -> ProfileConfig {
        ProfileConfig {
            profile: Profile::Audiohook,
            organization_id: Some(ORG.into()),
            client_secret: Some("TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU=".into()),
            ..ProfileConfig::default()
        }
    }

    fn info(token: Option<&str>) -> UpgradeInfo<'_> {
        UpgradeInfo {
            authority: "AudioHook.example.com",
            path_and_query: "/api/v1/audiohook/ws?x=1",
            token,
            unix_now: 1641013200,
            nonce: NONCE,
        }
    }

    fn texts(out: &[WireFrame]) -> Vec<Value> {
        out.iter()
            .filter_map(|f| match f {
                WireFrame::Text(t) => Some(serde_json::from_str(t).expect("json")),
                WireFrame::Binary(_) => None,
            })
            .collect()
    }

    fn binaries(out: &[WireFrame]) -> Vec<&[u8]> {
        out.iter()
            .filter_map(|f| match f {
                WireFrame::Binary(b) => Some(&b[..]),
                WireFrame::Text(_) => None,
            })
            .collect()
    }

    /// A server message of the session.
    struct Server {
        id: String,
        seq: u64,
    }

    impl Server {
        fn msg(&mut self, kind: &str, clientseq: u64, parameters: Value) -> String {
            self.seq += 1;
            json!({"version":"2","type":kind,"id":self.id,"seq":self.seq,
                   "clientseq":clientseq,"parameters":parameters})
            .to_string()
        }
    }

    /// A dialect with both streams started, `open` sent and answered with `opened` selecting
    /// `media`; returns the `open` message.
    fn opened(d: &mut Dialect, now: Instant, media: Value) -> (Server, Value) {
        let _ = d.upgrade(&info(Some("key")));
        let mut out = Vec::new();
        d.on_control(now, &start(Channel::Caller, Codec::Pcmu), &mut out);
        d.on_control(now, &start(Channel::Callee, Codec::Pcma), &mut out);
        d.flush(now, &mut out);
        let open = texts(&out).remove(0);
        let mut server = Server {
            id: open["id"].as_str().expect("id").to_owned(),
            seq: 0,
        };
        let m = server.msg("opened", 1, json!({ "media": media }));
        assert_eq!(
            d.on_server_text(now, &m, &mut out),
            Ok(ServerSignal::Accepted)
        );
        (server, open)
    }

    fn stereo() -> Value {
        json!([{"type":"audio","format":"PCMU","channels":["external","internal"],"rate":8000}])
    }

    #[test]
    fn upgrade_headers_and_signature() {
        let d = Dialect::new(&config()).expect("dialect");
        let up = d.upgrade(&info(Some("SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh")));
        assert_eq!(up.subprotocol, None);
        let names: Vec<&str> = up.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Audiohook-Organization-Id",
                "Audiohook-Session-Id",
                "Audiohook-Correlation-Id",
                "X-API-KEY",
                "Signature-Input",
                "Signature"
            ],
            "the token is the API key: no Authorization header"
        );
        let h = |n: &str| {
            up.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .expect(n)
        };
        let session = ids::uuid_v4(NONCE);
        assert_eq!(h("Audiohook-Session-Id"), session);
        assert!(is_audiohook_uuid(h("Audiohook-Correlation-Id")));
        assert_ne!(h("Audiohook-Correlation-Id"), session);
        let nonce = base64::engine::general_purpose::STANDARD
            .encode(ids::derive16("audiohook-signature-nonce:", &NONCE));
        assert_eq!(
            h("Signature-Input"),
            format!(
                "sig1=(\"@request-target\" \"@authority\" \"audiohook-organization-id\" \
                 \"audiohook-session-id\" \"audiohook-correlation-id\" \"x-api-key\");\
                 keyid=\"SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh\";nonce=\"{nonce}\";\
                 alg=\"hmac-sha256\";created=1641013200;expires=1641013230"
            )
        );
        // The signature covers the lowercased authority and the path with its query.
        let key = base64::engine::general_purpose::STANDARD
            .decode("TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU=")
            .expect("b64");
        let corr = h("Audiohook-Correlation-Id");
        let components = [
            ("@request-target", "/api/v1/audiohook/ws?x=1"),
            ("@authority", "audiohook.example.com"),
            ("audiohook-organization-id", ORG),
            ("audiohook-session-id", session.as_str()),
            ("audiohook-correlation-id", corr),
            ("x-api-key", "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"),
        ];
        let (_, want) = sign(
            &Covered {
                components: &components,
                keyid: "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh",
                nonce: &nonce,
                created: 1641013200,
                expires: 1641013230,
            },
            &key,
        );
        assert_eq!(h("Signature"), want);

        // A configured API key: the token goes in the auth scheme; no secret, no signature.
        let d = Dialect::new(&ProfileConfig {
            api_key: Some("configured".into()),
            client_secret: None,
            ..config()
        })
        .expect("dialect");
        let up = d.upgrade(&info(Some("tok")));
        assert!(up
            .headers
            .contains(&("X-API-KEY".into(), "configured".into())));
        assert!(up
            .headers
            .contains(&("Authorization".into(), "Bearer tok".into())));
        assert!(!up.headers.iter().any(|(n, _)| n == "Signature"));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn open_opened_audio_ping_close() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = Dialect::new(&config()).expect("dialect");
        let _ = d.upgrade(&info(Some("key")));
        let mut out = Vec::new();
        d.on_control(t0, &start(Channel::Caller, Codec::Pcmu), &mut out);
        d.on_control(t0, &start(Channel::Callee, Codec::Pcma), &mut out);
        d.flush(t0, &mut out);
        let session = ids::uuid_v4(NONCE);
        let participant = ids::uuid_v5(&ids::NAMESPACE, &format!("participant:{GUID}"));
        assert_eq!(
            texts(&out),
            vec![
                json!({"version":"2","type":"open","id":session,"seq":1,"serverseq":0,
                "position":"PT0S","parameters":{
                    "organizationId":ORG,
                    // The Cisco GUID of the test call is a version-1 UUID: used as it is.
                    "conversationId":GUID,
                    "participant":{"id":participant,"ani":"sip:+15551230001@pbx.example.com",
                                   "aniName":"","dnis":"sip:6777@cube.example.com"},
                    "media":[
                        {"type":"audio","format":"PCMU","channels":["external","internal"],"rate":8000},
                        {"type":"audio","format":"PCMU","channels":["external"],"rate":8000}],
                    "customConfig":{"campaign":"support","language":"en-US","priority":2},
                    "language":"en-US"}})
            ]
        );
        // Field order as the reference client's buildMessage writes it.
        assert_eq!(
            keys(&out[0]),
            [
                "version",
                "type",
                "id",
                "seq",
                "serverseq",
                "position",
                "parameters"
            ]
        );
        out.clear();
        assert_eq!(d.poll_timeout(), None);

        // Audio before `opened` is dropped and counted.
        d.on_audio(
            at(5),
            frame(Channel::Caller, Codec::Pcmu, 1, 0, true, &[0x80; 160]),
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(d.stats().audio_before_accept, 1);
        assert_eq!(d.dropped_audio(), 1);

        let mut server = Server {
            id: session.clone(),
            seq: 0,
        };
        let opened = server.msg("opened", 1, json!({"media": stereo()}));
        assert_eq!(
            d.on_server_text(at(10), &opened, &mut out),
            Ok(ServerSignal::Accepted)
        );
        assert!(out.is_empty());
        assert_eq!(d.poll_timeout(), Some(at(10) + INITIAL_PING_DELAY));

        // Stereo: caller (PCMU) external first, callee (PCMA → PCMU) internal second.
        let callee: Vec<u8> = (0..160).map(|i| 0x80 | i as u8).collect();
        d.on_audio(
            at(20),
            frame(Channel::Caller, Codec::Pcmu, 2, 160, false, &[0x85; 160]),
            &mut out,
        );
        assert!(out.is_empty(), "waits for the callee");
        d.on_audio(
            at(21),
            frame(Channel::Callee, Codec::Pcma, 1, 0, true, &callee),
            &mut out,
        );
        let frames = binaries(&out);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].len(), 320);
        for i in 0..160 {
            assert_eq!(frames[0][2 * i], 0x85);
            let want = crate::linear_to_ulaw(crate::alaw_to_linear(callee[i]));
            assert_eq!(frames[0][2 * i + 1], want, "sample {i}");
            assert_eq!(
                ulaw_to_linear(want).signum(),
                crate::alaw_to_linear(callee[i]).signum()
            );
        }
        out.clear();

        // Ping after a second; the position counts the 160 samples sent.
        d.on_timeout(at(500), &mut out);
        assert!(out.is_empty(), "not due yet");
        d.on_timeout(at(1010), &mut out);
        assert_eq!(
            texts(&out),
            vec![
                json!({"version":"2","type":"ping","id":session,"seq":2,"serverseq":1,
                        "position":"PT0.02S","parameters":{}})
            ]
        );
        out.clear();
        assert_eq!(
            d.poll_timeout(),
            Some(at(1010) + Duration::from_millis(DEFAULT_PING_INTERVAL_MS))
        );
        let pong = server.msg("pong", 2, json!({}));
        assert_eq!(
            d.on_server_text(at(1022), &pong, &mut out),
            Ok(ServerSignal::Nothing)
        );
        d.on_timeout(at(6010), &mut out);
        assert_eq!(texts(&out)[0]["parameters"], json!({"rtt":"PT0.012S"}));
        out.clear();
        // No pong for that one: the next interval sends none and counts it.
        d.on_timeout(at(11010), &mut out);
        assert!(out.is_empty());
        assert_eq!(d.stats().pongs_missed, 1);

        // Both streams stop: `close` at flush, `closed` allowed once.
        d.on_control(
            at(12000),
            &stop(Channel::Caller, StopReason::CallEnd),
            &mut out,
        );
        d.on_control(
            at(12000),
            &stop(Channel::Callee, StopReason::CallEnd),
            &mut out,
        );
        d.flush(at(12000), &mut out);
        let msgs = texts(&out);
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            (&msgs[0]["type"], &msgs[0]["seq"], &msgs[0]["parameters"]),
            (&json!("close"), &json!(4), &json!({"reason":"end"}))
        );
        assert_eq!(d.poll_timeout(), None);
        out.clear();
        d.on_local_close(at(12001), &mut out);
        assert!(out.is_empty(), "close is sent once");
        let closed = server.msg("closed", 4, json!({}));
        assert_eq!(
            d.on_server_text(at(12010), &closed, &mut out),
            Ok(ServerSignal::Nothing)
        );
        let again = server.msg("closed", 4, json!({}));
        assert_eq!(
            d.on_server_text(at(12011), &again, &mut out),
            Err(ServerViolation::UnexpectedState)
        );
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn hold_and_server_pause() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = Dialect::new(&config()).expect("dialect");
        let (mut server, _) = opened(&mut d, t0, stereo());
        let mut out = Vec::new();
        let p = [0xFF; 160];
        d.on_audio(
            at(0),
            frame(Channel::Caller, Codec::Pcmu, 1, 0, true, &p),
            &mut out,
        );
        d.on_audio(
            at(0),
            frame(Channel::Callee, Codec::Pcma, 1, 0, true, &[0xD5; 160]),
            &mut out,
        );
        // The caller goes on hold: the callee continues alone (caller silent), no `paused`.
        d.on_control(at(20), &pause(Channel::Caller), &mut out);
        d.on_audio(
            at(20),
            frame(Channel::Callee, Codec::Pcma, 2, 160, false, &[0xD5; 160]),
            &mut out,
        );
        assert_eq!(binaries(&out).len(), 2);
        assert!(texts(&out).is_empty());
        out.clear();
        // Both on hold: `paused` at position 320 samples.
        d.on_control(at(40), &pause(Channel::Callee), &mut out);
        let m = texts(&out);
        assert_eq!(
            (&m[0]["type"], &m[0]["position"]),
            (&json!("paused"), &json!("PT0.04S"))
        );
        out.clear();
        // Back after 2.5 s: `resumed` says where the pause began and how long it lasted.
        d.on_control(at(2540), &resume(Channel::Callee, Codec::Pcmu), &mut out);
        let m = texts(&out);
        assert_eq!(m[0]["type"], "resumed");
        assert_eq!(
            m[0]["parameters"],
            json!({"start":"PT0.04S","discarded":"PT2.5S"})
        );
        assert_eq!(m[0]["position"], "PT2.54S");
        out.clear();

        // Server pause: answered with `paused`; audio withheld; positions keep counting.
        let pause_msg = server.msg("pause", 3, json!({}));
        assert_eq!(
            d.on_server_text(at(3000), &pause_msg, &mut out),
            Ok(ServerSignal::Nothing)
        );
        assert_eq!(texts(&out)[0]["type"], "paused");
        out.clear();
        d.on_audio(
            at(3000),
            frame(Channel::Callee, Codec::Pcmu, 3, 320, false, &p),
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(d.stats().audio_withheld, 1);
        // The caller's hold ends during the server pause: nothing to say yet.
        d.on_control(at(3500), &resume(Channel::Caller, Codec::Pcmu), &mut out);
        assert!(out.is_empty());
        let resume_msg = server.msg("resume", 4, json!({}));
        assert_eq!(
            d.on_server_text(at(4000), &resume_msg, &mut out),
            Ok(ServerSignal::Nothing)
        );
        let m = texts(&out);
        assert_eq!(m[0]["type"], "resumed");
        assert_eq!(
            m[0]["parameters"],
            json!({"start":"PT2.54S","discarded":"PT1S"})
        );
        out.clear();
        // A server resume while the call is on hold is answered with `paused`.
        d.on_control(at(4100), &pause(Channel::Caller), &mut out);
        d.on_control(at(4100), &pause(Channel::Callee), &mut out);
        out.clear();
        let resume_msg = server.msg("resume", 6, json!({}));
        assert_eq!(
            d.on_server_text(at(4200), &resume_msg, &mut out),
            Ok(ServerSignal::Nothing)
        );
        assert_eq!(texts(&out)[0]["type"], "paused");
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn opened_variants() {
        let t0 = Instant::now();
        // No media: accepted, every frame withheld.
        let mut d = Dialect::new(&config()).expect("dialect");
        opened(&mut d, t0, json!([]));
        let mut out = Vec::new();
        d.on_audio(
            t0,
            frame(Channel::Caller, Codec::Pcmu, 1, 0, true, &[0xFF; 160]),
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(d.stats().audio_withheld, 1);

        // Mono external: caller frames as they are, the callee not carried.
        let mut d = Dialect::new(&config()).expect("dialect");
        opened(
            &mut d,
            t0,
            json!([{"type":"audio","format":"PCMU","channels":["external"],"rate":8000}]),
        );
        d.on_audio(
            t0,
            frame(Channel::Caller, Codec::Pcmu, 1, 0, true, &[0x12; 160]),
            &mut out,
        );
        d.on_audio(
            t0,
            frame(Channel::Callee, Codec::Pcma, 1, 0, true, &[0x12; 160]),
            &mut out,
        );
        assert_eq!(binaries(&out), vec![&[0x12; 160][..]]);
        assert_eq!(d.stats().audio_not_carried, 1);
        out.clear();

        // startPaused and discardTo: `discarded` then `paused`.
        let mut d = Dialect::new(&config()).expect("dialect");
        let _ = d.upgrade(&info(None));
        d.on_control(t0, &start(Channel::Caller, Codec::Pcmu), &mut out);
        d.flush(t0, &mut out);
        let id = texts(&out)[0]["id"].as_str().expect("id").to_owned();
        out.clear();
        let mut server = Server { id, seq: 0 };
        let m = server.msg(
            "opened",
            1,
            json!({"media":stereo(),"startPaused":true,"discardTo":"PT1.5S"}),
        );
        assert_eq!(
            d.on_server_text(t0, &m, &mut out),
            Ok(ServerSignal::Accepted)
        );
        let m = texts(&out);
        assert_eq!(m[0]["type"], "discarded");
        assert_eq!(
            m[0]["parameters"],
            json!({"start":"PT0S","discarded":"PT1.5S"})
        );
        assert_eq!(
            (&m[1]["type"], &m[1]["position"]),
            (&json!("paused"), &json!("PT1.5S"))
        );
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn language_update_and_disconnect() {
        let t0 = Instant::now();
        let mut d = Dialect::new(&config()).expect("dialect");
        let (mut server, _) = opened(&mut d, t0, stereo());
        let mut out = Vec::new();
        d.on_control(
            t0,
            &update(Channel::Caller, json!({"language":"de-DE"})),
            &mut out,
        );
        d.on_control(
            t0,
            &update(Channel::Caller, json!({"language":"de-DE","x":1})),
            &mut out,
        );
        d.on_control(
            t0,
            &update(Channel::Caller, json!({"language":"German"})),
            &mut out,
        );
        d.on_control(t0, &dtmf(Channel::Caller, 1, 0), &mut out);
        let m = texts(&out);
        assert_eq!(m.len(), 1);
        assert_eq!(
            (&m[0]["type"], &m[0]["parameters"]),
            (&json!("update"), &json!({"language":"de-DE"}))
        );
        assert_eq!(d.stats().controls_not_sent, 3);
        out.clear();
        let m = server.msg("disconnect", 2, json!({"reason":"completed","info":"bye"}));
        assert_eq!(
            d.on_server_text(t0, &m, &mut out),
            Ok(ServerSignal::Refused("disconnect (completed) bye".into()))
        );
        d.on_local_close(t0, &mut out);
        let m = texts(&out);
        assert_eq!(
            (&m[0]["type"], &m[0]["parameters"]),
            (&json!("close"), &json!({"reason":"disconnect"}))
        );
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn server_violations() {
        let t0 = Instant::now();
        use ServerViolation::*;
        let offered_not = json!([{"type":"audio","format":"PCMU","channels":["internal","external"],"rate":8000}]);
        type MakeMessage = Box<dyn Fn(&mut Server) -> String>;
        let cases: Vec<(MakeMessage, ServerViolation)> = vec![
            (Box::new(|s| s.msg("pong", 1, json!({}))), UnexpectedState),
            (Box::new(|s| s.msg("closed", 1, json!({}))), UnexpectedState),
            (
                Box::new(|s| s.msg("opened", 1, json!({"media": stereo()}))),
                UnexpectedState,
            ),
            (Box::new(|s| s.msg("ping", 1, json!({}))), UnexpectedMessage),
            (Box::new(|s| s.msg("open", 1, json!({}))), UnexpectedMessage),
            (Box::new(|s| s.msg("hello", 1, json!({}))), MalformedText),
            (Box::new(|s| s.msg("event", 1, json!({}))), BadParameters),
            (
                Box::new(|s| s.msg("disconnect", 1, json!({"reason":"bored"}))),
                BadParameters,
            ),
            (
                Box::new(|s| {
                    s.seq += 1;
                    s.msg("updated", 1, json!({}))
                }),
                SequenceError,
            ),
            (Box::new(|s| s.msg("updated", 9, json!({}))), SequenceError),
            (
                Box::new(|s| {
                    s.id = ids::uuid_v4([1; 16]);
                    s.msg("updated", 1, json!({}))
                }),
                WrongSession,
            ),
            (
                Box::new(|s| {
                    s.msg("updated", 1, json!({}))
                        .replace(r#""version":"2""#, r#""version":2"#)
                }),
                MalformedText,
            ),
            (Box::new(|s| s.msg("updated", 1, json!([]))), MalformedText),
            (Box::new(|_| "[]".into()), MalformedText),
            (Box::new(|_| "x".repeat(70_000)), TooLarge),
        ];
        for (i, (make, want)) in cases.into_iter().enumerate() {
            let mut d = Dialect::new(&config()).expect("dialect");
            let (mut server, _) = opened(&mut d, t0, stereo());
            let text = make(&mut server);
            assert_eq!(
                d.on_server_text(t0, &text, &mut Vec::new()),
                Err(want),
                "case {i}: {text:.100}"
            );
        }
        // `opened` with media that was not offered (channel order matters), or two of them.
        for media in [offered_not, json!([stereo()[0], stereo()[0]])] {
            let mut d = Dialect::new(&config()).expect("dialect");
            let _ = d.upgrade(&info(None));
            let mut out = Vec::new();
            d.on_control(t0, &start(Channel::Caller, Codec::Pcmu), &mut out);
            d.flush(t0, &mut out);
            let mut server = Server {
                id: ids::uuid_v4(NONCE),
                seq: 0,
            };
            let m = server.msg("opened", 1, json!({ "media": media }));
            assert_eq!(d.on_server_text(t0, &m, &mut out), Err(BadParameters));
        }
        // Anything before `open`, and binary frames.
        let mut d = Dialect::new(&config()).expect("dialect");
        let mut server = Server {
            id: ids::uuid_v4(NONCE),
            seq: 0,
        };
        let m = server.msg("pong", 0, json!({}));
        assert_eq!(
            d.on_server_text(t0, &m, &mut Vec::new()),
            Err(UnexpectedState)
        );
        assert_eq!(
            d.on_server_binary(t0, &[0], &mut Vec::new()),
            Err(BinaryFrame)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(samples_duration(0), "PT0S");
        assert_eq!(samples_duration(160), "PT0.02S");
        assert_eq!(samples_duration(1), "PT0.000125S");
        assert_eq!(samples_duration(8000 * 3600), "PT3600S");
        assert_eq!(iso_duration(12_345_678), "PT0.012345678S");
        assert_eq!(parse_duration("PT1.5S"), Some(1_500_000_000));
        assert_eq!(parse_duration("PT.5S"), Some(500_000_000));
        assert_eq!(parse_duration("PT2S"), Some(2_000_000_000));
        for bad in ["PT1.S", "1.5S", "PTS", "PT-1S", "PT1.5", "PT1e3S"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_and_languages() {
        assert!(is_audiohook_uuid(GUID));
        assert!(is_audiohook_uuid(NIL_UUID));
        assert!(
            !is_audiohook_uuid("8F3C21A0-1DD2-71B2-8001-A2D2D9E0E3C4"),
            "version 7"
        );
        let m = |v: Value| v.as_object().cloned().expect("object");
        assert_eq!(language_of(&m(json!({"language":"en-US"}))), Some("en-US"));
        assert_eq!(
            language_of(&m(json!({"language":"fil-PH"}))),
            Some("fil-PH")
        );
        assert_eq!(language_of(&m(json!({"language":"EN-us"}))), None);
        assert_eq!(language_of(&m(json!({"language":"en"}))), None);
    }
}
