//! What one forked packet is, decoded from the bytes the kernel or the user-space fallback hands
//! over: an audio frame of a stream (fixed RTP header fields plus payload) or an RFC 4733 event.
//!
//! Inputs: an AF_XDP frame (fork tag in front, then the Ethernet frame), or an RTP packet
//! already classified by [`super::rtp`]. Output: [`Forked`], borrowing the payload (nothing is
//! copied here; the shell encodes the speech-protocol frame). Pure functions, no state.

use fork_common::{ForkTag, TAG_F_DTMF};
use speech_proto::{AudioHeader, Dtmf};

/// Length of the fixed RTP header (RFC 3550 §5.1), the part the speech protocol carries over.
const RTP_FIXED: usize = 12;

/// One forked packet.
#[derive(Debug, PartialEq)]
pub enum Forked<'a> {
    /// Audio of `header.stream_id`; `payload` without RTP padding.
    Audio {
        header: AudioHeader,
        payload: &'a [u8],
    },
    /// One telephone-event report.
    Dtmf(Dtmf),
}

/// Decode a frame from the AF_XDP socket: the tag locates the RTP header and payload inside the
/// Ethernet frame behind it. `None` for anything that is not a whole, tagged, in-bounds frame.
pub fn from_xsk(frame: &[u8]) -> Option<Forked<'_>> {
    let tag = ForkTag::from_prefix(frame)?;
    let eth = frame.get(core::mem::size_of::<ForkTag>()..)?;
    let rtp_off = usize::from(tag.rtp_off);
    let rtp = eth.get(rtp_off..rtp_off.checked_add(RTP_FIXED)?)?;
    let payload_off = usize::from(tag.payload_off);
    let payload = eth.get(payload_off..payload_off.checked_add(usize::from(tag.payload_len))?)?;
    from_rtp(tag.stream_id, rtp, payload, tag.flags & TAG_F_DTMF != 0)
}

/// The forked item for one RTP packet of `stream_id`: its fixed 12-byte header and payload, as
/// the kernel's tag or the fallback's classification (core::rtp) found them.
pub fn from_rtp<'a>(
    stream_id: u32,
    rtp: &[u8],
    payload: &'a [u8],
    dtmf: bool,
) -> Option<Forked<'a>> {
    let rtp = rtp.get(..RTP_FIXED)?;
    let seq = u16::from_be_bytes([rtp[2], rtp[3]]);
    let timestamp = u32::from_be_bytes([rtp[4], rtp[5], rtp[6], rtp[7]]);
    if dtmf {
        // RFC 4733 §2.3: event, E|R|volume, duration.
        let p = payload.get(..4)?;
        return Some(Forked::Dtmf(Dtmf {
            stream_id,
            event: p[0],
            end: p[1] & 0x80 != 0,
            duration: u16::from_be_bytes([p[2], p[3]]),
            timestamp,
        }));
    }
    let header = AudioHeader {
        stream_id,
        seq,
        payload_type: rtp[1] & 0x7f,
        flags: if rtp[1] & 0x80 != 0 {
            speech_proto::FLAG_MARKER
        } else {
            0
        },
        timestamp,
    };
    Some(Forked::Audio { header, payload })
}

#[cfg(test)]
mod tests {
    use fork_common::FORK_TAG_MAGIC;

    use super::*;

    /// A tag as the kernel lays it out in memory, then a minimal Ethernet/IPv4/UDP/RTP frame.
    fn xsk_frame(flags: u16, marker: bool, payload: &[u8]) -> Vec<u8> {
        let rtp_off = 14 + 20 + 8;
        let tag = ForkTag {
            magic: FORK_TAG_MAGIC,
            stream_id: 7,
            egress_ifindex: 3,
            rtp_off: rtp_off as u16,
            payload_off: (rtp_off + 12) as u16,
            payload_len: payload.len() as u16,
            flags,
        };
        let mut f = Vec::new();
        for w in [tag.magic, tag.stream_id, tag.egress_ifindex] {
            f.extend_from_slice(&w.to_ne_bytes());
        }
        for h in [tag.rtp_off, tag.payload_off, tag.payload_len, tag.flags] {
            f.extend_from_slice(&h.to_ne_bytes());
        }
        f.extend_from_slice(&[0u8; 14 + 20 + 8]);
        let pt = if flags & TAG_F_DTMF != 0 { 101 } else { 0 };
        f.extend_from_slice(&[0x80, pt | if marker { 0x80 } else { 0 }, 0x12, 0x34]);
        f.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        f.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn audio_frame_decodes_header_fields_and_borrows_the_payload() {
        let payload = [0x55u8; 160];
        let f = xsk_frame(0, true, &payload);
        let Some(Forked::Audio { header, payload: p }) = from_xsk(&f) else {
            panic!("not audio");
        };
        assert_eq!(
            header,
            AudioHeader {
                stream_id: 7,
                seq: 0x1234,
                payload_type: 0,
                flags: speech_proto::FLAG_MARKER,
                timestamp: 0x0102_0304,
            }
        );
        assert_eq!(p, &payload[..]);
    }

    #[test]
    fn telephone_event_decodes_event_end_and_duration() {
        let f = xsk_frame(TAG_F_DTMF, false, &[5, 0x80 | 10, 0x03, 0x20]);
        assert_eq!(
            from_xsk(&f),
            Some(Forked::Dtmf(Dtmf {
                stream_id: 7,
                event: 5,
                end: true,
                duration: 800,
                timestamp: 0x0102_0304,
            }))
        );
    }

    #[test]
    fn every_truncation_and_a_wrong_magic_are_refused() {
        let f = xsk_frame(0, false, &[1u8; 160]);
        for len in 0..f.len() {
            assert_eq!(from_xsk(&f[..len]), None, "cut at {len}");
        }
        let mut wrong = f.clone();
        wrong[0] ^= 0xff;
        assert_eq!(from_xsk(&wrong), None);
        // A tag pointing past the frame.
        let mut far = f;
        far[12..14].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert_eq!(from_xsk(&far), None);
    }
}
