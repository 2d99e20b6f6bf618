//! RTP classification in user space, with the kernel's rules (sans-IO).
//!
//! Role: a datagram the XDP program hands to the stack (an IP fragment, say) is relayed by the
//! user-space fallback; when its flow is forked, it must reach the speech server like every
//! packet the kernel clones. This decides what to fork exactly as fork-ebpf's `parse_rtp` and
//! relay path do: version 2, RTCP (PT 72–76) never forked, header past CSRCs and the extension,
//! padding removed, audio when the payload type is in the flow's mask, DTMF when it is the flow's
//! telephone-event type, nothing otherwise.
//!
//! Input: the UDP payload and the flow's [`FlowAction`]. Output: [`ToFork`] or `None`.

use fork_common::{FlowAction, FLOW_F_FORK, FLOW_F_RTCP};

const RTP_HLEN: usize = 12;

/// The parts of a datagram that go to the speech server.
#[derive(Debug, PartialEq, Eq)]
pub struct ToFork<'a> {
    /// The fixed 12-byte header (sequence, timestamp, marker, payload type).
    pub header: &'a [u8],
    /// The payload, without padding.
    pub payload: &'a [u8],
    /// An RFC 4733 telephone-event, not audio.
    pub dtmf: bool,
}

/// What to fork of `dgram` on a flow with `action`, or `None` (not forked, RTCP, not valid RTP,
/// a payload type that is neither audio nor DTMF).
pub fn to_fork<'a>(dgram: &'a [u8], action: &FlowAction) -> Option<ToFork<'a>> {
    if action.flags & FLOW_F_FORK == 0 || action.flags & FLOW_F_RTCP != 0 {
        return None;
    }
    let header = dgram.get(..RTP_HLEN)?;
    let b0 = header[0];
    if b0 >> 6 != 2 {
        return None;
    }
    let pt = header[1] & 0x7f;
    if (72..=76).contains(&pt) {
        return None;
    }
    let mut hdr = RTP_HLEN + usize::from(b0 & 0x0f) * 4;
    if b0 & 0x10 != 0 {
        // Extension: 16-bit profile, 16-bit length in 32-bit words (RFC 3550 §5.3.1).
        let ext = dgram.get(hdr..hdr + 4)?;
        hdr += 4 + usize::from(u16::from_be_bytes([ext[2], ext[3]])) * 4;
    }
    let mut pad = 0;
    if b0 & 0x20 != 0 {
        // The last octet counts the padding, itself included (RFC 3550 §5.1).
        pad = usize::from(*dgram.last()?);
        if pad == 0 {
            return None;
        }
    }
    if hdr + pad > dgram.len() {
        return None;
    }
    let payload = &dgram[hdr..dgram.len() - pad];
    let dtmf = pt == action.dtmf_pt;
    if !dtmf && !action.pt_allowed(pt) {
        return None;
    }
    Some(ToFork {
        header,
        payload,
        dtmf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fork_common::NO_PT;

    fn action(flags: u8) -> FlowAction {
        FlowAction {
            flags,
            pt_mask: FlowAction::mask_of(&[0, 8]),
            dtmf_pt: 101,
            ..FlowAction::default()
        }
    }

    fn rtp(b0: u8, pt: u8, tail: &[u8]) -> Vec<u8> {
        let mut p = vec![b0, pt, 0, 7, 0, 0, 0, 160, 0, 0, 0, 9];
        p.extend_from_slice(tail);
        p
    }

    #[test]
    fn audio_of_a_forked_flow_is_forked_with_its_header() {
        let p = rtp(0x80, 0x80, &[0xd5; 160]);
        let f = to_fork(&p, &action(FLOW_F_FORK)).unwrap();
        assert_eq!(f.header, &p[..12]);
        assert_eq!(f.payload, &[0xd5; 160][..]);
        assert!(!f.dtmf);
        let pcma = rtp(0x80, 8, &[1; 160]);
        assert!(to_fork(&pcma, &action(FLOW_F_FORK)).is_some());
    }

    #[test]
    fn nothing_is_forked_on_a_flow_without_fork_or_on_rtcp_flows() {
        let p = rtp(0x80, 0, &[0xd5; 160]);
        assert_eq!(to_fork(&p, &action(0)), None);
        assert_eq!(to_fork(&p, &action(FLOW_F_FORK | FLOW_F_RTCP)), None);
    }

    #[test]
    fn csrcs_extension_and_padding_are_skipped() {
        // CC = 2, X, P: two CSRCs, a one-word extension, 3 octets of padding.
        let mut tail = vec![0; 8];
        tail.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]);
        tail.extend_from_slice(&[0x11; 160]);
        tail.extend_from_slice(&[0, 0, 3]);
        let p = rtp(0x80 | 0x20 | 0x10 | 2, 0, &tail);
        let f = to_fork(&p, &action(FLOW_F_FORK)).unwrap();
        assert_eq!(f.payload, &[0x11; 160][..]);
    }

    #[test]
    fn dtmf_is_marked_and_other_types_rtcp_and_garbage_are_not_forked() {
        let a = action(FLOW_F_FORK);
        let ev = rtp(0x80, 101, &[5, 0x80, 0, 160]);
        assert!(to_fork(&ev, &a).unwrap().dtmf);
        let no_dtmf = FlowAction {
            dtmf_pt: NO_PT,
            ..a
        };
        assert_eq!(to_fork(&ev, &no_dtmf), None, "101 is not audio either");
        assert_eq!(to_fork(&rtp(0x80, 18, &[0; 20]), &a), None, "G.729");
        assert_eq!(to_fork(&rtp(0x80, 0xc8, &[0; 20]), &a), None, "RTCP SR");
        assert_eq!(to_fork(&rtp(0x40, 0, &[0; 20]), &a), None, "version 1");
        // Truncated at every offset of a header with CSRCs, extension and padding.
        let mut tail = vec![0; 4];
        tail.extend_from_slice(&[0xbe, 0xde, 0, 2]);
        let p = rtp(0x80 | 0x10 | 1, 0, &tail);
        for n in 0..p.len() {
            assert_eq!(to_fork(&p[..n], &a), None, "cut at {n}");
        }
        assert_eq!(to_fork(&rtp(0xa0, 0, &[0; 4]), &a), None, "padding 0");
        assert_eq!(
            to_fork(&rtp(0xa0, 0, &[9; 4]), &a),
            None,
            "padding past the header"
        );
    }
}
