//! Inject mode over single frames, on both fork paths: while a voice bot talks into a direction
//! (`FLOW_F_INJECT`) the relay sends nothing there (audio still forked); after the hand-back
//! (`FLOW_F_RENUMBER`) relayed RTP continues the bot's stream: SSRC, sequence number and
//! timestamp rewritten, UDP checksum still right, and `FLOW_STATS.out_*` says how the newest
//! packet left.

use anyhow::Result;
use fork_common::{Reason, Renumber, FLOW_F_FORK, FLOW_F_INJECT, FLOW_F_RENUMBER};
use xdpfork_tests::kernel::*;

const CALLEE: &str = "10.0.2.2:40000";
const B_LOCAL: &str = "10.0.2.1:30002";
const A_LOCAL: &str = "10.0.1.1:30000";
const CALLER: &str = "10.0.1.2:40000";
const CALLEE6: &str = "[fd00:2::2]:40000";
const B_LOCAL6: &str = "[fd00:2::1]:30002";
const A_LOCAL6: &str = "[fd00:1::1]:30000";
const CALLER6: &str = "[fd00:1::2]:40000";

/// The callee → caller direction, relayed out of media interface 0, forking when `flags` say.
fn to_caller(b: &mut XdpBench, addrs: [&str; 3], flags: u8) -> Result<FlowCfg> {
    let [local, src, dst] = addrs;
    let mut f = FlowCfg::new(local.parse()?, src.parse()?, dst.parse()?, b.media[0]);
    f.flags = flags;
    b.install_forking(&f)?;
    Ok(f)
}

fn from_callee(from: &str, to: &str, rtp: &RtpSpec) -> Result<FrameSpec> {
    Ok(FrameSpec::udp(from.parse()?, to.parse()?, rtp.bytes()))
}

/// Relay `rtp` and check the frame left as `f` rewrites it, carrying `sent` as its RTP.
fn relayed_as(b: &mut XdpBench, f: &FlowCfg, input: &FrameSpec, sent: &RtpSpec) -> Result<()> {
    let out = b.relay(&input.bytes())?;
    out.expect(XDP_REDIRECT, Reason::Relayed);
    let mut expected = f.expected(input);
    expected.payload = sent.bytes();
    assert_eq!(out.frame, expected.bytes());
    check_checksums(&out.frame)
}

#[test]
fn while_the_bot_talks_nothing_is_relayed_and_audio_is_still_forked() -> Result<()> {
    XdpBench::run(|b| {
        let mut f = to_caller(b, [B_LOCAL, A_LOCAL, CALLER], FLOW_F_INJECT)?;
        let out = b.relay(&from_callee(CALLEE, B_LOCAL, &RtpSpec::pcmu(7))?.bytes())?;
        out.expect(XDP_DROP, Reason::InjectDropped);
        assert!(out.untagged());

        f.flags = FLOW_F_INJECT | FLOW_F_FORK;
        b.update(&f)?;
        let input = from_callee(CALLEE, B_LOCAL, &RtpSpec::pcmu(8))?.bytes();
        let out = b.relay(&input)?;
        out.expect(XDP_REDIRECT, Reason::InjectForked);
        assert_eq!(out.frame, input, "not rewritten: it goes only to us");
        let tag = out.tag().expect("tagged for the capture program");
        assert_eq!(
            (tag.stream_id, tag.egress_ifindex, tag.payload_len),
            (f.stream_id, b.fork_if, 160)
        );

        let s = b.stats(f.stats_index)?;
        assert_eq!((s.packets, s.forked, s.last_seq), (2, 1, 8));
        assert_eq!(s.out_valid, 0, "nothing left towards the caller");
        Ok(())
    })
}

#[test]
fn relayed_rtp_records_how_it_left() -> Result<()> {
    XdpBench::run(|b| {
        let f = to_caller(b, [B_LOCAL, A_LOCAL, CALLER], 0)?;
        for seq in [7, 9, 8] {
            let rtp = RtpSpec::pcmu(seq);
            relayed_as(b, &f, &from_callee(CALLEE, B_LOCAL, &rtp)?, &rtp)?;
        }
        let s = b.stats(f.stats_index)?;
        // The late packet 8 does not move the stream's end back.
        assert_eq!(
            (s.out_valid, s.out_ssrc, s.out_seq, s.out_ts),
            (1, 0x1122_3344, 9, 9 * 160)
        );
        Ok(())
    })
}

/// The hand-back: the callee sent 100..=102 while the bot talked (dropped); the bot's stream
/// ended at sequence 5000, timestamp 800000, SSRC 0xcafe0001. The callee's next packets continue
/// it, whatever their own numbers; a second hand-back derives new deltas.
fn hand_back(b: &mut XdpBench, addrs: [&str; 4], zero_udp_csum: bool) -> Result<()> {
    let [callee, local, src, caller] = addrs;
    let mut f = to_caller(b, [local, src, caller], FLOW_F_INJECT)?;
    let frame = |rtp: &RtpSpec| -> Result<FrameSpec> {
        let mut fr = from_callee(callee, local, rtp)?;
        fr.zero_udp_csum = zero_udp_csum;
        Ok(fr)
    };
    for seq in 100..=102 {
        b.relay(&frame(&RtpSpec::pcmu(seq))?.bytes())?
            .expect(XDP_DROP, Reason::InjectDropped);
    }

    f.flags = FLOW_F_RENUMBER;
    f.renumber = Renumber {
        ssrc: 0xcafe_0001,
        ts: 800_160,
        seq: 5001,
        epoch: 1,
    };
    b.update(&f)?;
    // The packets `arrived` of an epoch whose first packet was `first`.
    let continues = |b: &mut XdpBench, f: &FlowCfg, first: u16, arrived: [u16; 2]| {
        for seq in arrived {
            let rtp = RtpSpec::pcmu(seq);
            let n = seq.wrapping_sub(first);
            let mut sent = rtp.clone();
            sent.seq = f.renumber.seq.wrapping_add(n);
            sent.ts = f.renumber.ts.wrapping_add(160 * u32::from(n));
            sent.ssrc = f.renumber.ssrc;
            relayed_as(b, f, &frame(&rtp)?, &sent)?;
        }
        anyhow::Ok(())
    };
    continues(b, &f, 103, [103, 104])?;
    continues(b, &f, 103, [105, 106])?;
    let s = b.stats(f.stats_index)?;
    assert_eq!(
        (s.out_ssrc, s.out_seq, s.out_ts, s.rn_epoch),
        (0xcafe_0001, 5004, 800_640, 1)
    );
    assert_eq!(s.last_seq, 106, "sequence tracking sees what arrived");

    // The next utterance ended at 65535 (the sequence wraps) and timestamp 4294967200.
    f.renumber = Renumber {
        ssrc: 0xcafe_0001,
        ts: 4_294_967_200u32.wrapping_add(160),
        seq: 0,
        epoch: 2,
    };
    b.update(&f)?;
    continues(b, &f, 200, [200, 201])
}

#[test]
fn after_the_hand_back_relayed_rtp_continues_the_bots_stream() -> Result<()> {
    XdpBench::run(|b| hand_back(b, [CALLEE, B_LOCAL, A_LOCAL, CALLER], false))
}

#[test]
fn the_hand_back_keeps_a_zero_ipv4_udp_checksum_zero() -> Result<()> {
    XdpBench::run(|b| hand_back(b, [CALLEE, B_LOCAL, A_LOCAL, CALLER], true))
}

#[test]
fn the_hand_back_over_ipv6() -> Result<()> {
    XdpBench::run(|b| hand_back(b, [CALLEE6, B_LOCAL6, A_LOCAL6, CALLER6], false))
}
