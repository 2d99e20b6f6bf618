//! The capture program (`xdp_fork_*`) over single frames, on both fork paths (BPF_PROG_TEST_RUN;
//! on the metadata path the tag is in `ctx_in`'s metadata, on the headroom path in front of the
//! frame): a tagged frame leaves with the tag in front of it; without a tag the frame is the
//! stack's own traffic and passes. Also the relay→capture hand-off: the tag the relay attaches is
//! exactly what the capture program accepts.
//!
//! Not covered here: `ForkCaptured` needs an AF_XDP socket bound to the fork veth peer in `XSKS`
//! (kernel_relay_fork.rs covers it end to end), and the devmap egress programs cannot be test-run
//! at all (the kernel refuses BPF_PROG_TEST_RUN for BPF_XDP_DEVMAP programs): that the relayed
//! copy leaves untagged is shown end to end (kernel_relay_fork.rs, `fork-agent check-kernel`).

use anyhow::Result;
use fork_common::{ForkPath, ForkTag, Reason, FLOW_F_FORK, FORK_TAG_MAGIC, TAG_F_DTMF};
use xdpfork_tests::kernel::*;

fn some_frame() -> Result<Vec<u8>> {
    Ok(FrameSpec::udp(
        "10.0.2.1:30002".parse()?,
        "10.0.2.2:40000".parse()?,
        RtpSpec::pcmu(1).bytes(),
    )
    .bytes())
}

fn tag() -> ForkTag {
    ForkTag {
        magic: FORK_TAG_MAGIC,
        stream_id: 42,
        egress_ifindex: 5,
        rtp_off: 42,
        payload_off: 54,
        payload_len: 160,
        flags: TAG_F_DTMF,
    }
}

#[test]
fn tagged_frame_gets_the_tag_in_front_and_no_socket_drops_it() -> Result<()> {
    XdpBench::run(|b| {
        let frame = some_frame()?;
        let meta = tag_bytes(&tag());
        let out = b.capture(&meta, &frame)?;
        // XSKS is empty in this namespace: the redirect fails and the clone is dropped.
        out.expect(XDP_DROP, Reason::ForkNoSocket);
        let mut want = meta.clone();
        want.extend_from_slice(&frame);
        assert_eq!(
            out.frame, want,
            "tag moved into the frame, in front of Ethernet"
        );
        assert_eq!(parse_tag(&out.frame), tag());
        Ok(())
    })
}

#[test]
fn frame_without_metadata_is_passed_untagged() -> Result<()> {
    XdpBench::run(|b| {
        let frame = some_frame()?;
        let out = b.capture(&[], &frame)?;
        out.expect(XDP_PASS, Reason::ForkUntagged);
        assert_eq!(out.frame, frame);
        Ok(())
    })
}

#[test]
fn metadata_that_is_not_a_tag_is_passed_untagged() -> Result<()> {
    XdpBench::run(|b| {
        let frame = some_frame()?;
        // Wrong magic (another version of the tag format).
        let mut wrong = tag();
        wrong.magic = u32::from_le_bytes(*b"XFK2");
        let out = b.capture(&tag_bytes(&wrong), &frame)?;
        out.expect(XDP_PASS, Reason::ForkUntagged);
        if b.path == ForkPath::Metadata {
            assert_eq!(out.frame, frame);
            assert_eq!(out.meta, tag_bytes(&wrong), "metadata left alone");
            // Shorter than a tag (metadata lengths are multiples of 4).
            let out = b.capture(&tag_bytes(&tag())[..16], &frame)?;
            out.expect(XDP_PASS, Reason::ForkUntagged);
            assert_eq!(out.frame, frame);
        } else {
            assert_eq!(
                out.frame,
                [tag_bytes(&wrong), frame].concat(),
                "frame left alone"
            );
        }
        Ok(())
    })
}

#[test]
fn the_relays_tag_is_accepted_by_capture() -> Result<()> {
    XdpBench::run(|b| {
        let mut f = FlowCfg::new(
            "10.0.1.1:30000".parse()?,
            "10.0.2.1:30002".parse()?,
            "10.0.2.2:40000".parse()?,
            b.media[1],
        );
        f.flags = FLOW_F_FORK;
        b.install_forking(&f)?;
        let input = FrameSpec::udp(
            "10.0.1.2:40000".parse()?,
            "10.0.1.1:30000".parse()?,
            RtpSpec::pcmu(1).bytes(),
        );
        let relayed = b.relay(&input.bytes())?;
        relayed.expect(XDP_REDIRECT, Reason::RelayedForked);
        let tag = tag_bytes(&relayed.tag().expect("the relay tagged the forked packet"));
        let out = b.capture(&tag, &relayed.frame)?;
        out.expect(XDP_DROP, Reason::ForkNoSocket);
        let want = [tag, relayed.frame.clone()].concat();
        assert_eq!(out.frame, want);
        let t = parse_tag(&out.frame);
        assert_eq!(
            (t.stream_id, t.egress_ifindex, t.payload_len),
            (f.stream_id, b.media[1], 160)
        );
        Ok(())
    })
}
