//! `xdp_media_relay`'s RTP handling over single frames (BPF_PROG_TEST_RUN): what is forked (and
//! the fork tag's offsets for CSRCs, header extensions and padding), what is relayed without a
//! fork (invalid RTP, RTCP on its own flow or multiplexed, wrong payload types), telephone-event,
//! the per-flow sequence tracking, and forking without a fork interface.

use anyhow::Result;
use fork_common::{ForkTag, Reason, FLOW_F_FORK, FLOW_F_RTCP, FORK_TAG_MAGIC, NO_PT, TAG_F_DTMF};
use xdpfork_tests::kernel::*;

const CALLER: &str = "10.0.1.2:40000";
const A_LOCAL: &str = "10.0.1.1:30000";
const B_LOCAL: &str = "10.0.2.1:30002";
const CALLEE: &str = "10.0.2.2:40000";
const CALLER6: &str = "[fd00:1::2]:40000";
const A_LOCAL6: &str = "[fd00:1::1]:30000";
const B_LOCAL6: &str = "[fd00:2::1]:30002";
const CALLEE6: &str = "[fd00:2::2]:40000";

/// A forked flow out of media interface 1, with the fork veth configured.
fn forked_flow(b: &mut XdpBench, local: &str, src: &str, dst: &str) -> Result<FlowCfg> {
    let mut f = FlowCfg::new(local.parse()?, src.parse()?, dst.parse()?, b.media[1]);
    f.flags = FLOW_F_FORK;
    f.stream_id = 0x0a0b_0c0d;
    b.install_forking(&f)?;
    Ok(f)
}

fn frame(from: &str, to: &str, rtp: &RtpSpec) -> Result<FrameSpec> {
    Ok(FrameSpec::udp(from.parse()?, to.parse()?, rtp.bytes()))
}

/// Relay a forked packet: the relayed frame is the rewritten input, with a tag (metadata or headroom)
/// that locates the payload in it.
fn assert_forked(
    b: &mut XdpBench,
    f: &FlowCfg,
    input: &FrameSpec,
    rtp: &RtpSpec,
    flags: u16,
) -> Result<ForkTag> {
    let out = b.relay(&input.bytes())?;
    out.expect(XDP_REDIRECT, Reason::RelayedForked);
    assert_eq!(out.frame, f.expected(input).bytes());
    check_checksums(&out.frame)?;
    let tag = out.tag().expect("a forked frame carries a fork tag");
    let rtp_off = layout(&out.frame)?.l4 + 8;
    let payload_off = rtp_off + rtp.header_len();
    assert_eq!(
        tag,
        ForkTag {
            magic: FORK_TAG_MAGIC,
            stream_id: f.stream_id,
            egress_ifindex: f.egress_ifindex,
            rtp_off: rtp_off as u16,
            payload_off: payload_off as u16,
            payload_len: rtp.payload.len() as u16,
            flags,
        }
    );
    assert_eq!(
        &out.frame[payload_off..payload_off + rtp.payload.len()],
        rtp.payload.as_slice()
    );
    Ok(tag)
}

/// Relay a packet that must not be forked.
fn assert_not_forked(b: &mut XdpBench, f: &FlowCfg, input: &FrameSpec) -> Result<()> {
    let out = b.relay(&input.bytes())?;
    out.expect(XDP_REDIRECT, Reason::Relayed);
    assert!(out.untagged(), "no tag on an unforked packet");
    assert_eq!(out.frame, f.expected(input).bytes());
    check_checksums(&out.frame)
}

#[test]
fn audio_is_forked_with_a_tag_on_ipv4_and_ipv6() -> Result<()> {
    XdpBench::run(|b| {
        let f = forked_flow(b, A_LOCAL, B_LOCAL, CALLEE)?;
        let rtp = RtpSpec::pcmu(100);
        assert_forked(b, &f, &frame(CALLER, A_LOCAL, &rtp)?, &rtp, 0)?;
        let pcma = RtpSpec {
            pt: 8,
            ..RtpSpec::pcmu(101)
        };
        assert_forked(b, &f, &frame(CALLER, A_LOCAL, &pcma)?, &pcma, 0)?;
        let s = b.stats(f.stats_index)?;
        assert_eq!((s.packets, s.forked, s.errors, s.wrong_pt), (2, 2, 0, 0));
        assert_eq!((s.ssrc, s.last_seq, s.seq_valid), (rtp.ssrc, 101, 1));

        let mut f6 = forked_flow(b, A_LOCAL6, B_LOCAL6, CALLEE6)?;
        f6.stats_index = 5;
        b.install(&f6)?;
        let mut input = frame(CALLER6, A_LOCAL6, &rtp)?;
        input.vlans = vec![(ETH_P_8021Q, 7)];
        assert_forked(b, &f6, &input, &rtp, 0)?;
        assert_eq!(b.stats(5)?.forked, 1);
        Ok(())
    })
}

#[test]
fn csrcs_extension_and_padding_move_the_payload() -> Result<()> {
    XdpBench::run(|b| {
        let f = forked_flow(b, A_LOCAL, B_LOCAL, CALLEE)?;
        let mut seq = 10;
        let mut next = |mut r: RtpSpec| {
            seq += 1;
            r.seq = seq;
            r
        };
        let cases = [
            next(RtpSpec {
                csrcs: vec![0xaaaa_0001],
                ..RtpSpec::pcmu(0)
            }),
            next(RtpSpec {
                csrcs: (1..=15).collect(),
                ..RtpSpec::pcmu(0)
            }),
            // One-byte header extension (RFC 8285) with an empty and a 3-word body.
            next(RtpSpec {
                ext: Some((0xbede, vec![])),
                ..RtpSpec::pcmu(0)
            }),
            next(RtpSpec {
                ext: Some((0xbede, vec![0x22; 12])),
                ..RtpSpec::pcmu(0)
            }),
            next(RtpSpec {
                padding: 1,
                ..RtpSpec::pcmu(0)
            }),
            next(RtpSpec {
                padding: 4,
                ..RtpSpec::pcmu(0)
            }),
            next(RtpSpec {
                padding: 255,
                ..RtpSpec::pcmu(0)
            }),
            next(RtpSpec {
                csrcs: vec![5, 6],
                ext: Some((0x1000, vec![1, 2, 3, 4])),
                padding: 3,
                marker: true,
                ..RtpSpec::pcmu(0)
            }),
            // All padding, no payload.
            next(RtpSpec {
                payload: vec![],
                padding: 8,
                ..RtpSpec::pcmu(0)
            }),
        ];
        for rtp in &cases {
            assert_forked(b, &f, &frame(CALLER, A_LOCAL, rtp)?, rtp, 0)?;
        }
        let s = b.stats(f.stats_index)?;
        assert_eq!(
            (s.forked, s.errors, s.lost, s.out_of_order),
            (cases.len() as u64, 0, 0, 0)
        );
        Ok(())
    })
}

#[test]
fn invalid_rtp_is_relayed_counted_as_error_and_not_forked() -> Result<()> {
    XdpBench::run(|b| {
        let f = forked_flow(b, A_LOCAL, B_LOCAL, CALLEE)?;
        let bad: Vec<Vec<u8>> = vec![
            RtpSpec {
                version: 0,
                ..RtpSpec::pcmu(1)
            }
            .bytes(),
            RtpSpec {
                version: 1,
                ..RtpSpec::pcmu(1)
            }
            .bytes(),
            RtpSpec {
                version: 3,
                ..RtpSpec::pcmu(1)
            }
            .bytes(),
            // Shorter than the fixed header.
            RtpSpec::pcmu(1).bytes()[..11].to_vec(),
            vec![],
            // Padding count 0, and larger than the payload.
            {
                let mut p = RtpSpec {
                    padding: 1,
                    ..RtpSpec::pcmu(1)
                }
                .bytes();
                let n = p.len();
                p[n - 1] = 0;
                p
            },
            {
                let mut p = RtpSpec {
                    padding: 1,
                    payload: vec![1; 4],
                    ..RtpSpec::pcmu(1)
                }
                .bytes();
                let n = p.len();
                p[n - 1] = 200;
                p
            },
            // 15 CSRCs announced, the packet ends after the fixed header plus 8 bytes.
            {
                let mut p = RtpSpec {
                    payload: vec![0; 8],
                    ..RtpSpec::pcmu(1)
                }
                .bytes();
                p[0] |= 0x0f;
                p
            },
            // Extension announced, its length word says more than the packet holds.
            {
                let mut p = RtpSpec {
                    ext: Some((0xbede, vec![0; 4])),
                    ..RtpSpec::pcmu(1)
                }
                .bytes();
                p[14..16].copy_from_slice(&1000u16.to_be_bytes());
                p
            },
            // Extension bit set but no room for the extension header.
            {
                let mut p = RtpSpec {
                    payload: vec![],
                    ..RtpSpec::pcmu(1)
                }
                .bytes();
                p[0] |= 0x10;
                p
            },
        ];
        for (i, payload) in bad.iter().enumerate() {
            let input = FrameSpec::udp(CALLER.parse()?, A_LOCAL.parse()?, payload.clone());
            assert_not_forked(b, &f, &input)?;
            let s = b.stats(f.stats_index)?;
            assert_eq!((s.errors, s.forked), (i as u64 + 1, 0), "case {i}");
            assert_eq!(s.packets, i as u64 + 1);
        }
        assert_eq!(
            b.stats(f.stats_index)?.seq_valid,
            0,
            "invalid RTP is not tracked"
        );
        Ok(())
    })
}

#[test]
fn rtcp_flow_is_relayed_and_not_inspected() -> Result<()> {
    XdpBench::run(|b| {
        let mut f = forked_flow(b, "10.0.1.1:30001", "10.0.2.1:30003", "10.0.2.2:40001")?;
        f.flags |= FLOW_F_RTCP;
        b.install(&f)?;
        // An RTCP packet, and bytes that would be RTP audio: both are just RTCP here.
        for payload in [rtcp_sr(0x55), RtpSpec::pcmu(1).bytes(), vec![0; 3]] {
            let input = FrameSpec::udp(CALLER.parse()?, "10.0.1.1:30001".parse()?, payload);
            assert_not_forked(b, &f, &input)?;
        }
        let s = b.stats(f.stats_index)?;
        assert_eq!(
            (s.rtcp, s.packets, s.forked, s.errors, s.seq_valid),
            (3, 3, 0, 0, 0)
        );
        Ok(())
    })
}

#[test]
fn multiplexed_rtcp_is_relayed_and_not_forked() -> Result<()> {
    XdpBench::run(|b| {
        let f = forked_flow(b, A_LOCAL, B_LOCAL, CALLEE)?;
        // RFC 5761 §4: packet types 200-204 (SR, RR, SDES, BYE, APP) read as PT 72-76.
        for (i, pt) in (200u8..=204).enumerate() {
            let mut p = rtcp_sr(0x77);
            p[1] = pt;
            let input = FrameSpec::udp(CALLER.parse()?, A_LOCAL.parse()?, p);
            assert_not_forked(b, &f, &input)?;
            let s = b.stats(f.stats_index)?;
            assert_eq!(
                (s.rtcp, s.forked, s.errors, s.wrong_pt),
                (i as u64 + 1, 0, 0, 0)
            );
        }
        // PT 71 and 77 (marker set) are RTP with a payload type nobody forks.
        for pt in [199u8, 205] {
            let mut p = RtpSpec::pcmu(1).bytes();
            p[1] = pt;
            let input = FrameSpec::udp(CALLER.parse()?, A_LOCAL.parse()?, p);
            assert_not_forked(b, &f, &input)?;
        }
        let s = b.stats(f.stats_index)?;
        assert_eq!((s.rtcp, s.wrong_pt, s.seq_valid), (5, 2, 1));
        Ok(())
    })
}

#[test]
fn telephone_event_is_forked_with_the_dtmf_flag() -> Result<()> {
    XdpBench::run(|b| {
        let f = forked_flow(b, A_LOCAL, B_LOCAL, CALLEE)?;
        // RFC 4733 §2.3: event 5, end bit, volume 10, duration 800.
        let ev = RtpSpec {
            pt: 101,
            payload: vec![5, 0x8a, 0x03, 0x20],
            marker: true,
            ..RtpSpec::pcmu(1)
        };
        let tag = assert_forked(b, &f, &frame(CALLER, A_LOCAL, &ev)?, &ev, TAG_F_DTMF)?;
        assert_eq!(tag.payload_len, 4);
        let s = b.stats(f.stats_index)?;
        assert_eq!((s.dtmf, s.forked, s.wrong_pt), (1, 1, 0));

        // No telephone-event payload type negotiated: 101 is just a wrong payload type.
        let mut f2 = f.clone();
        f2.dtmf_pt = NO_PT;
        b.install(&f2)?;
        assert_not_forked(b, &f2, &frame(CALLER, A_LOCAL, &ev)?)?;
        let s = b.stats(f.stats_index)?;
        assert_eq!((s.dtmf, s.forked, s.wrong_pt), (0, 0, 1));
        Ok(())
    })
}

#[test]
fn wrong_payload_type_is_relayed_counted_and_not_forked() -> Result<()> {
    XdpBench::run(|b| {
        let f = forked_flow(b, A_LOCAL, B_LOCAL, CALLEE)?;
        for (i, pt) in [9u8, 18, 96, 127, 31, 32].into_iter().enumerate() {
            let rtp = RtpSpec {
                pt,
                ..RtpSpec::pcmu(i as u16)
            };
            assert_not_forked(b, &f, &frame(CALLER, A_LOCAL, &rtp)?)?;
            assert_eq!(b.stats(f.stats_index)?.wrong_pt, i as u64 + 1);
        }
        // A mask reaching into the upper words: 97 and 127 are audio for this flow.
        let mut f2 = f.clone();
        f2.pts = vec![97, 127];
        b.install(&f2)?;
        for pt in [97u8, 127] {
            let rtp = RtpSpec {
                pt,
                ..RtpSpec::pcmu(1)
            };
            assert_forked(b, &f2, &frame(CALLER, A_LOCAL, &rtp)?, &rtp, 0)?;
        }
        let rtp = RtpSpec::pcmu(3);
        assert_not_forked(b, &f2, &frame(CALLER, A_LOCAL, &rtp)?)?;
        let s = b.stats(f.stats_index)?;
        assert_eq!((s.forked, s.wrong_pt, s.packets), (2, 1, 3));
        Ok(())
    })
}

#[test]
fn unforked_flow_classifies_but_never_tags() -> Result<()> {
    XdpBench::run(|b| {
        let f = b.relay_flow(A_LOCAL, B_LOCAL, CALLEE)?;
        b.set_fork_if(b.fork_if)?;
        b.add_tx_port(b.fork_if)?;
        let ev = RtpSpec {
            pt: 101,
            payload: vec![1, 0, 0, 160],
            ..RtpSpec::pcmu(2)
        };
        for rtp in [
            RtpSpec::pcmu(1),
            ev,
            RtpSpec {
                pt: 9,
                ..RtpSpec::pcmu(3)
            },
        ] {
            assert_not_forked(b, &f, &frame(CALLER, A_LOCAL, &rtp)?)?;
        }
        let s = b.stats(f.stats_index)?;
        assert_eq!(
            (s.packets, s.forked, s.dtmf, s.wrong_pt, s.last_seq),
            (3, 0, 1, 1, 3)
        );
        Ok(())
    })
}

#[test]
fn hairpin_fork_broadcasts_with_the_ingress_included() -> Result<()> {
    XdpBench::run(|b| {
        let mut f = FlowCfg::new(A_LOCAL.parse()?, B_LOCAL.parse()?, CALLEE.parse()?, b.lo);
        f.flags = FLOW_F_FORK;
        // A media interface is always in TX_PORTS, so the broadcast reaches it again.
        b.install_forking(&f)?;
        let rtp = RtpSpec::pcmu(1);
        let tag = assert_forked(b, &f, &frame(CALLER, A_LOCAL, &rtp)?, &rtp, 0)?;
        assert_eq!(tag.egress_ifindex, b.lo);
        Ok(())
    })
}

#[test]
fn sequence_gaps_reorder_duplicates_and_ssrc_changes() -> Result<()> {
    XdpBench::run(|b| {
        let f = b.relay_flow(A_LOCAL, B_LOCAL, CALLEE)?;
        let mut send = |seq: u16, ssrc: u32| -> Result<fork_common::FlowStats> {
            let rtp = RtpSpec {
                ssrc,
                ..RtpSpec::pcmu(seq)
            };
            b.relay(&frame(CALLER, A_LOCAL, &rtp)?.bytes())?
                .expect(XDP_REDIRECT, Reason::Relayed);
            b.stats(f.stats_index)
        };
        let ab = 0xabab_0001;
        let lo = |s: fork_common::FlowStats| (s.lost, s.out_of_order, s.last_seq, s.ssrc);
        assert_eq!(
            lo(send(100, ab)?),
            (0, 0, 100, ab),
            "first packet only initialises"
        );
        assert_eq!(lo(send(101, ab)?), (0, 0, 101, ab));
        assert_eq!(lo(send(104, ab)?), (2, 0, 104, ab), "102 and 103 missing");
        assert_eq!(
            lo(send(103, ab)?),
            (2, 1, 104, ab),
            "late packet is out of order"
        );
        assert_eq!(
            lo(send(104, ab)?),
            (2, 2, 104, ab),
            "duplicate counts as out of order"
        );
        assert_eq!(lo(send(105, ab)?), (2, 2, 105, ab));
        // Wrap around 65535 → 0 is in order; a gap across the wrap is loss.
        let cd = 0xcdcd_0002;
        assert_eq!(
            lo(send(65534, cd)?),
            (2, 2, 65534, cd),
            "new SSRC resets tracking"
        );
        assert_eq!(lo(send(65535, cd)?), (2, 2, 65535, cd));
        assert_eq!(lo(send(0, cd)?), (2, 2, 0, cd));
        assert_eq!(lo(send(3, cd)?), (4, 2, 3, cd));
        // A forward jump of MAX_DROPOUT (3000) or more is a restart, not loss.
        assert_eq!(lo(send(3003, cd)?), (4, 2, 3003, cd));
        assert_eq!(lo(send(3004, cd)?), (4, 2, 3004, cd));
        // 2999 ahead is still loss.
        assert_eq!(lo(send(6003, cd)?), (3002, 2, 6003, cd));
        // Back to the first SSRC: reset again, nothing counted.
        assert_eq!(lo(send(7, ab)?), (3002, 2, 7, ab));
        let s = send(8, ab)?;
        assert_eq!((s.packets, s.seq_valid, s.lost), (15, 1, 3002));
        Ok(())
    })
}

/// A sender that restarts its sequence numbers backwards without changing SSRC (RFC 3550 A.1
/// treats any jump of MAX_DROPOUT or more as a restart, in either direction) must be tracked from
/// its new position, not counted out of order until it climbs back past the old maximum.
#[test]
fn a_large_backward_sequence_jump_is_a_restart() -> Result<()> {
    XdpBench::run(|b| {
        let f = b.relay_flow(A_LOCAL, B_LOCAL, CALLEE)?;
        let mut send = |seq: u16| -> Result<fork_common::FlowStats> {
            let rtp = RtpSpec::pcmu(seq);
            b.relay(&frame(CALLER, A_LOCAL, &rtp)?.bytes())?
                .expect(XDP_REDIRECT, Reason::Relayed);
            b.stats(f.stats_index)
        };
        send(30_000)?;
        send(30_001)?;
        send(100)?;
        for seq in 101..110 {
            send(seq)?;
        }
        let s = send(112)?;
        assert!(
            s.out_of_order <= 1,
            "after a restart at 100, packets 101.. are in order (out_of_order = {})",
            s.out_of_order
        );
        assert_eq!(
            (s.last_seq, s.lost),
            (112, 2),
            "restart tracked from 100: 110, 111 lost"
        );
        Ok(())
    })
}

/// `FlowStats::forked` counts packets cloned to fork-agent; with no fork interface configured
/// nothing is cloned.
#[test]
fn fork_without_a_fork_interface_relays_and_counts_no_clone() -> Result<()> {
    XdpBench::run(|b| {
        let f = forked_flow(b, A_LOCAL, B_LOCAL, CALLEE)?;
        b.set_fork_if(0)?;
        let input = frame(CALLER, A_LOCAL, &RtpSpec::pcmu(1))?;
        let out = b.relay(&input.bytes())?;
        out.expect(XDP_REDIRECT, Reason::RelayedForkUnavailable);
        assert!(out.untagged());
        assert_eq!(out.frame, f.expected(&input).bytes());
        let s = b.stats(f.stats_index)?;
        assert_eq!(s.packets, 1);
        assert_eq!(s.forked, 0, "no clone was made, so none may be counted");
        Ok(())
    })
}
