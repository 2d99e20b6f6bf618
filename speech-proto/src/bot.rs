//! What a speech server that talks back (a voice bot) asks for, in the service's own terms.
//!
//! Every dialect with return audio (docs/speech-protocol.md §16) turns its server messages into
//! [`BotCommand`]s: Twilio `media` / `mark` / `clear`, jambonz binary L16 and
//! `playAudio` / `killAudio`, our own `play` / `mark` / `clear`. The stream service hands them
//! to the call's playout, which paces the audio into RTP and reports each mark once the audio
//! before it has been played; the dialect then answers the server
//! ([`crate::Dialect::on_mark_played`]).

/// Sample rate of the audio in [`BotCommand::Play`] (the call's G.711 rate).
pub const BOT_SAMPLE_RATE: u32 = 8000;

/// Longest mark name accepted (Twilio names are short labels; a longer one is malformed).
pub const MAX_MARK_NAME: usize = 256;

/// One instruction of a bot, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotCommand {
    /// Linear 16-bit samples at [`BOT_SAMPLE_RATE`], played after what is queued.
    Play(Vec<i16>),
    /// Report this name once everything queued before it has been played.
    Mark(String),
    /// Drop everything queued at once (barge-in); marks still queued are reported as played,
    /// as Twilio does.
    Clear,
    /// Forget the server's marks still queued, without reporting them; the audio plays on
    /// (jambonz `clearMarks`). A dialect's own marks, whose names begin with a control
    /// character (never a server's: [`is_own_mark`]), are kept.
    ClearMarks,
}

/// Whether a mark name is a dialect's own (a control character first, which no server mark
/// may have), not the server's.
pub fn is_own_mark(name: &str) -> bool {
    name.starts_with(char::is_control)
}

/// Why a fork cannot have return audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReturnAudioError {
    /// The destination's profile has no message for audio from the server.
    #[error("the {0} profile has no return audio")]
    NotInProfile(crate::Profile),
}
