//! Wire format of the xdpfork speech-server protocol, version 1 (`xdpfork.speech.v1`).
//!
//! Role: the one definition of what fork-agent (the client) sends to a speech server over a
//! WebSocket and what the server may answer, shared by fork-agent and the reference
//! `speech-server`. The full specification with examples is `docs/speech-protocol.md`.
//!
//! - Text frames carry JSON [`Control`] messages (`start`, `pause`, `resume`, `update`, `stop`,
//!   `dtmf` from client to server; `error` from server to client).
//! - Binary frames carry audio: a fixed 16-byte [`AudioHeader`] ([`encode_audio`] /
//!   [`decode_audio`]) followed by the raw G.711 payload of one RTP packet.
//! - [`Validator`] is the server-side rule checker for one WebSocket connection: feed it every
//!   text frame with [`Validator::handle_text`] and every binary frame with
//!   [`Validator::handle_binary`], in arrival order; it returns the event or the [`Violation`].
//! - [`check_server_text`] is the client-side check of what a server sends: only `error`
//!   messages; any other frame is a [`ServerViolation`].
//! - [`ulaw_to_linear`] / [`alaw_to_linear`] decode G.711 samples (ITU-T G.711 tables),
//!   [`linear_to_ulaw`] / [`linear_to_alaw`] encode them, [`alaw_to_ulaw`] / [`ulaw_to_alaw`]
//!   transcode; [`Upsampler`] resamples 8 kHz to 16 kHz.
//! - [`bot`]: what a speech server that talks back asks for ([`BotCommand`]), whatever its
//!   dialect.
//! - [`profile`]: the other dialects a speech server may speak (Twilio Media Streams, Genesys
//!   AudioHook, jambonz, raw binary audio) and [`Dialect`], the per-connection translator.
//!
//! Sans-IO: no sockets, no clock, no tasks; every function is deterministic.
#![forbid(unsafe_code)]

mod audio;
pub mod bot;
mod control;
mod g711;
mod pcm;
pub mod profile;
mod seq;
mod server_msg;
mod validator;

pub use audio::{
    decode_audio, encode_audio, set_audio_stream_id, AudioHeader, ProtoError, FLAG_FIRST,
    FLAG_MARKER, MAGIC,
};
pub use bot::{is_own_mark, BotCommand, ReturnAudioError, BOT_SAMPLE_RATE, MAX_MARK_NAME};
pub use control::{
    Channel, Clear, Codec, Control, Dtmf, ErrorMsg, Mark, Pause, PauseReason, Resume, Start, Stop,
    StopReason, Update,
};
pub use g711::{
    alaw_to_linear, alaw_to_ulaw, linear_to_alaw, linear_to_ulaw, ulaw_to_alaw, ulaw_to_linear,
};
pub use pcm::{write_l16le, Downsampler, Upsampler, HALF_BAND, UPSAMPLER_DELAY};
pub use profile::{
    AudioEncoding, AudioFormat, AuthScheme, Dialect, DialectStats, Layout, Profile, ProfileConfig,
    ProfileConfigError, ServerSignal, UnknownProfile, Upgrade, UpgradeInfo, WireFrame,
};
pub use seq::{SeqOrder, SeqTracker, SEQ_WINDOW};
pub use server_msg::{check_server_text, ServerText, ServerViolation, MAX_SERVER_MESSAGE};
pub use validator::{AudioEvent, Event, StreamState, StreamStats, Validator, Violation};

/// WebSocket subprotocol token the client offers in `Sec-WebSocket-Protocol` and the server
/// must echo (RFC 6455 §4.1, §4.2.2). The `v1` suffix is the major protocol version.
pub const SUBPROTOCOL: &str = "xdpfork.speech.v1";

/// Protocol version carried in `start.version` and in byte 2 of every audio header.
pub const VERSION: u8 = 1;

/// Length of the fixed big-endian header in front of every binary (audio) frame.
pub const AUDIO_HEADER_LEN: usize = 16;

/// Sample rate of every G.711 stream in Hz (RFC 3551 §4.5.14: PCMU/PCMA are 8000 Hz).
pub const SAMPLE_RATE: u32 = 8000;
