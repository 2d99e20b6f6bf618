//! The one error type of turn-core.
//!
//! Returned by the codec (`stun`), the credential loaders (`credentials`) and configuration
//! validation (`server`). Protocol failures seen while serving (bad credentials, stale nonces,
//! quotas, ...) are never `Err`: the server answers them with STUN error responses and counts them.

/// Everything that can go wrong when decoding, encoding or loading turn-core inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    /// The buffer ends before the header or a declared length does.
    #[error("truncated input: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the declared lengths require.
        need: usize,
        /// Bytes actually present.
        have: usize,
    },
    /// The first two bits are not zero, so this is not a STUN message (RFC 8489 §5).
    #[error("not a STUN message (leading bits set)")]
    NotStun,
    /// The magic cookie is not 0x2112A442 (RFC 8489 §5).
    #[error("bad magic cookie {0:#010x}")]
    BadMagicCookie(u32),
    /// The message length is not a multiple of 4 (RFC 8489 §5).
    #[error("message length {0} is not a multiple of 4")]
    UnalignedLength(u16),
    /// The buffer holds more bytes than the header declares.
    #[error("declared length {declared} but {actual} bytes present")]
    TrailingBytes {
        /// Length from the header plus the 20 byte header.
        declared: usize,
        /// Length of the buffer.
        actual: usize,
    },
    /// An attribute value has the wrong size or content for its type.
    #[error("malformed attribute {typ:#06x}: {reason}")]
    BadAttribute {
        /// Attribute type.
        typ: u16,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// FINGERPRINT does not match the CRC-32 of the message (RFC 8489 §14.7).
    #[error("FINGERPRINT mismatch")]
    BadFingerprint,
    /// A ChannelData channel number outside 0x4000-0x7FFF, the range ChannelData framing can
    /// carry (RFC 8656 §12.4; RFC 8656 itself lets clients bind only up to 0x4FFF).
    #[error("channel number {0:#06x} outside 0x4000-0x7FFF")]
    BadChannelNumber(u16),
    /// A value too long to fit the 16-bit length field it must be written into.
    #[error("{what} too large to encode ({len} bytes)")]
    TooLarge {
        /// What was being encoded.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A line of the users file could not be parsed (see docs/turn.md for the format).
    #[error("users file line {line}: {reason}")]
    UsersFile {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A username cannot be stored in a users file or sent in USERNAME.
    #[error("username {user:?}: {reason}")]
    BadUsername {
        /// The name as given.
        user: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The users file has no such user (to delete).
    #[error("no user {user:?} in the users file")]
    UnknownUser {
        /// The name as given.
        user: String,
    },
    /// An IP range in the configuration could not be parsed.
    #[error("bad IP range {input:?}: {reason}")]
    BadIpRange {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The server configuration is inconsistent.
    #[error("invalid TURN configuration: {reason}")]
    Config {
        /// What is inconsistent.
        reason: &'static str,
    },
}
