//! Binary audio frames: the 16-byte header and the G.711 payload behind it.
//!
//! Layout (all multi-byte fields big-endian, network order):
//!
//! ```text
//!  0      1      2      3      4      5      6      7
//! +------+------+------+------+------+------+------+------+
//! | 'X'  | 'F'  | ver  |flags |        stream_id          |
//! +------+------+------+------+------+------+------+------+
//! |  RTP seq    |  PT  | rsvd |       RTP timestamp       |
//! +------+------+------+------+------+------+------+------+
//! | G.711 payload (1 byte per sample, >= 1 byte) ...
//! ```
//!
//! Inputs: a header plus payload ([`encode_audio`], client side) or a received binary frame
//! ([`decode_audio`], server side). Outputs: bytes appended to a caller-owned buffer, or the
//! parsed header plus a borrowed payload slice. No allocation on either path beyond the
//! caller's buffer growth.

use crate::{AUDIO_HEADER_LEN, VERSION};

/// First two bytes of every audio frame: ASCII "XF". Lets a server reject a frame that is not
/// ours (for example a client speaking another protocol) before reading any field.
pub const MAGIC: [u8; 2] = [0x58, 0x46];

/// Flag bit 0: copy of the RTP marker bit (RFC 3550 §5.1; for audio, the first packet of a
/// talkspurt per RFC 3551 §4.1).
pub const FLAG_MARKER: u8 = 0x01;

/// Flag bit 1: first audio frame of this stream after `start` or `resume`. The receiver
/// restarts its sequence-gap baseline here, so a pause is never counted as loss.
pub const FLAG_FIRST: u8 = 0x02;

/// Header of one audio frame: the RTP fields a speech server needs to place the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AudioHeader {
    /// Stream id announced in the `start` control message.
    pub stream_id: u32,
    /// RTP sequence number of the forked packet (RFC 3550 §5.1), unchanged.
    pub seq: u16,
    /// RTP payload type of the forked packet (0 = PCMU, 8 = PCMA, RFC 3551 table 4).
    pub payload_type: u8,
    /// [`FLAG_MARKER`] | [`FLAG_FIRST`]; the other bits are reserved, sent as 0, ignored.
    pub flags: u8,
    /// RTP timestamp of the forked packet (RFC 3550 §5.1), 8000 Hz clock.
    pub timestamp: u32,
}

/// A binary frame that cannot be an audio frame of this protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The frame is shorter than the 16-byte header.
    #[error("audio frame of {len} bytes is shorter than the {AUDIO_HEADER_LEN}-byte header")]
    TooShort {
        /// Length of the received frame.
        len: usize,
    },
    /// Bytes 0-1 are not "XF".
    #[error("audio frame magic is {found:02x?}, expected 58 46 (\"XF\")")]
    BadMagic {
        /// The two bytes found.
        found: [u8; 2],
    },
    /// Byte 2 is not a version this implementation speaks.
    #[error("audio frame version {found} is not supported (expected {VERSION})")]
    BadVersion {
        /// The version byte found.
        found: u8,
    },
    /// The header is valid but no payload follows it.
    #[error("audio frame for stream {stream_id} has an empty payload")]
    EmptyPayload {
        /// Stream id from the otherwise valid header.
        stream_id: u32,
    },
}

/// Appends one audio frame (header then `payload`) to `out`. Allocates only if `out` must grow;
/// reuse one buffer per connection to avoid allocating per RTP packet.
pub fn encode_audio(out: &mut Vec<u8>, hdr: &AudioHeader, payload: &[u8]) {
    out.reserve(AUDIO_HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(hdr.flags);
    out.extend_from_slice(&hdr.stream_id.to_be_bytes());
    out.extend_from_slice(&hdr.seq.to_be_bytes());
    out.push(hdr.payload_type);
    out.push(0);
    out.extend_from_slice(&hdr.timestamp.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Rewrites the stream id of an encoded frame in place (bytes 4–7), for a client that sends
/// one packet's audio on several streams; `false` when `frame` is shorter than the header.
pub fn set_audio_stream_id(frame: &mut [u8], stream_id: u32) -> bool {
    if frame.len() < AUDIO_HEADER_LEN {
        return false;
    }
    frame[4..8].copy_from_slice(&stream_id.to_be_bytes());
    true
}

/// Parses one binary frame into its header and payload. Checks magic, version and a non-empty
/// payload; the reserved byte 11 and reserved flag bits are ignored (forward compatibility).
pub fn decode_audio(frame: &[u8]) -> Result<(AudioHeader, &[u8]), ProtoError> {
    let Some((head, payload)) = frame.split_first_chunk::<AUDIO_HEADER_LEN>() else {
        return Err(ProtoError::TooShort { len: frame.len() });
    };
    if head[0..2] != MAGIC {
        return Err(ProtoError::BadMagic {
            found: [head[0], head[1]],
        });
    }
    if head[2] != VERSION {
        return Err(ProtoError::BadVersion { found: head[2] });
    }
    let hdr = AudioHeader {
        flags: head[3],
        stream_id: u32::from_be_bytes([head[4], head[5], head[6], head[7]]),
        seq: u16::from_be_bytes([head[8], head[9]]),
        payload_type: head[10],
        timestamp: u32::from_be_bytes([head[12], head[13], head[14], head[15]]),
    };
    if payload.is_empty() {
        return Err(ProtoError::EmptyPayload {
            stream_id: hdr.stream_id,
        });
    }
    Ok((hdr, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_id_is_rewritten_in_place_and_nothing_else() {
        let mut frame = Vec::new();
        encode_audio(&mut frame, &sample(), &[0xff; 160]);
        let before = frame.clone();
        assert!(set_audio_stream_id(&mut frame, 7));
        let (hdr, payload) = decode_audio(&frame).expect("valid");
        assert_eq!(
            hdr,
            AudioHeader {
                stream_id: 7,
                ..sample()
            }
        );
        assert_eq!(payload, &before[AUDIO_HEADER_LEN..]);
        assert!(!set_audio_stream_id(&mut [0x58, 0x46, 1], 7));
    }

    fn sample() -> AudioHeader {
        AudioHeader {
            stream_id: 0x0102_0304,
            seq: 0xABCD,
            payload_type: 8,
            flags: FLAG_MARKER | FLAG_FIRST,
            timestamp: 0xDEAD_BEEF,
        }
    }

    #[test]
    fn encodes_documented_layout() {
        let mut out = Vec::new();
        encode_audio(&mut out, &sample(), &[0xD5, 0x55]);
        assert_eq!(
            out,
            [
                0x58, 0x46, 0x01, 0x03, 0x01, 0x02, 0x03, 0x04, 0xAB, 0xCD, 0x08, 0x00, 0xDE, 0xAD,
                0xBE, 0xEF, 0xD5, 0x55
            ]
        );
    }

    #[test]
    fn decodes_the_documented_example() {
        // docs/speech-protocol.md §3: stream 42, seq 0x1234, PCMU, first frame, ts 123456.
        let mut frame = vec![
            0x58, 0x46, 0x01, 0x02, 0x00, 0x00, 0x00, 0x2a, 0x12, 0x34, 0x00, 0x00, 0x00, 0x01,
            0xe2, 0x40,
        ];
        frame.extend_from_slice(&[0xFF; 160]);
        let (hdr, payload) = decode_audio(&frame).expect("documented example is valid");
        assert_eq!(
            hdr,
            AudioHeader {
                stream_id: 42,
                seq: 0x1234,
                payload_type: 0,
                flags: FLAG_FIRST,
                timestamp: 123_456,
            }
        );
        assert_eq!(payload.len(), 160);
        assert_eq!(frame.len(), 176);
    }

    #[test]
    fn encode_appends_without_touching_existing_bytes() {
        let mut out = vec![9, 9];
        encode_audio(&mut out, &sample(), &[1]);
        assert_eq!(&out[..2], &[9, 9]);
        assert_eq!(out.len(), 2 + AUDIO_HEADER_LEN + 1);
    }

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        let payload: Vec<u8> = (0..160).map(|i| i as u8).collect();
        encode_audio(&mut out, &sample(), &payload);
        let (hdr, p) = decode_audio(&out).expect("valid frame");
        assert_eq!(hdr, sample());
        assert_eq!(p, &payload[..]);
    }

    #[test]
    fn rejects_short_frames() {
        for len in 0..AUDIO_HEADER_LEN {
            let frame = vec![0u8; len];
            assert_eq!(decode_audio(&frame), Err(ProtoError::TooShort { len }));
        }
    }

    #[test]
    fn rejects_bad_magic() {
        let mut out = Vec::new();
        encode_audio(&mut out, &sample(), &[1]);
        out[1] = b'G';
        assert_eq!(
            decode_audio(&out),
            Err(ProtoError::BadMagic {
                found: [0x58, 0x47]
            })
        );
    }

    #[test]
    fn rejects_bad_version() {
        let mut out = Vec::new();
        encode_audio(&mut out, &sample(), &[1]);
        out[2] = 2;
        assert_eq!(decode_audio(&out), Err(ProtoError::BadVersion { found: 2 }));
    }

    #[test]
    fn rejects_empty_payload() {
        let mut out = Vec::new();
        encode_audio(&mut out, &sample(), &[]);
        assert_eq!(
            decode_audio(&out),
            Err(ProtoError::EmptyPayload {
                stream_id: 0x0102_0304
            })
        );
    }

    #[test]
    fn ignores_reserved_byte_and_flag_bits() {
        let mut out = Vec::new();
        encode_audio(&mut out, &sample(), &[1]);
        out[11] = 0x7F;
        out[3] = 0xF0;
        let (hdr, _) = decode_audio(&out).expect("reserved bits are ignored");
        assert_eq!(hdr.flags, 0xF0);
        assert_eq!(hdr.seq, 0xABCD);
    }
}
