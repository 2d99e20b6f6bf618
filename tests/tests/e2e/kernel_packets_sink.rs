//! Sink flows (`FLOW_F_SINK`, a voice bot's caller in endpoint mode) over single frames, on both
//! fork paths: audio is forked to the fork veth alone, untouched and tagged as on the relay path,
//! and nothing is relayed; whatever is not forked is dropped. Each exit counts one reason and
//! the flow's stats.

use anyhow::Result;
use fork_common::{Reason, FLOW_F_FORK, FLOW_F_SINK};
use xdpfork_tests::kernel::*;

fn sink_flow(b: &mut XdpBench, flags: u8) -> Result<FlowCfg> {
    // The destination fields are unused by a sink: nothing leaves towards them.
    let mut f = FlowCfg::new(
        "10.0.1.1:30000".parse()?,
        "10.0.1.1:30000".parse()?,
        "10.0.1.2:40000".parse()?,
        0,
    );
    f.flags = flags;
    b.add_tx_port(b.fork_if)?;
    b.set_fork_if(b.fork_if)?;
    b.install(&f)?;
    Ok(f)
}

fn from_caller(rtp: RtpSpec) -> Result<Vec<u8>> {
    Ok(FrameSpec::udp(
        "10.0.1.2:40000".parse()?,
        "10.0.1.1:30000".parse()?,
        rtp.bytes(),
    )
    .bytes())
}

#[test]
fn sink_audio_goes_to_the_fork_veth_only_and_the_rest_is_dropped() -> Result<()> {
    XdpBench::run(|b| {
        let f = sink_flow(b, FLOW_F_SINK | FLOW_F_FORK)?;
        let input = from_caller(RtpSpec::pcmu(7))?;
        let out = b.relay(&input)?;
        out.expect(XDP_REDIRECT, Reason::SinkForked);
        assert_eq!(out.frame, input, "not rewritten: it goes nowhere but to us");
        let tag = out.tag().expect("tagged for the capture program");
        assert_eq!(
            (
                tag.stream_id,
                tag.egress_ifindex,
                tag.rtp_off,
                tag.payload_len
            ),
            (f.stream_id, b.fork_if, 42, 160)
        );
        let captured = b.capture(&tag_bytes(&tag), &out.frame)?;
        captured.expect(XDP_DROP, Reason::ForkNoSocket);

        // Not forked audio (a payload type outside the mask): dropped, counted.
        let mut g729 = RtpSpec::pcmu(8);
        g729.pt = 18;
        let out = b.relay(&from_caller(g729)?)?;
        out.expect(XDP_DROP, Reason::SinkDropped);
        assert!(out.untagged());

        let s = b.stats(f.stats_index)?;
        assert_eq!((s.packets, s.forked, s.wrong_pt), (2, 1, 1));
        assert_eq!(s.last_seq, 8);
        Ok(())
    })
}

#[test]
fn a_sink_that_does_not_fork_drops_everything() -> Result<()> {
    XdpBench::run(|b| {
        let f = sink_flow(b, FLOW_F_SINK)?;
        let out = b.relay(&from_caller(RtpSpec::pcmu(1))?)?;
        out.expect(XDP_DROP, Reason::SinkDropped);
        assert!(out.untagged());
        assert_eq!(b.stats(f.stats_index)?.forked, 0);
        Ok(())
    })
}
