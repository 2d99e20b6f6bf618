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
mod tests;
