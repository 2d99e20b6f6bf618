//! `xdp_media_relay`'s parser over frames it must not relay: not IP, not UDP, fragments,
//! malformed headers and every truncation of valid frames. Each is passed to the stack unchanged
//! with exactly one reason counted; nothing is dropped, nothing crashes.

use anyhow::Result;
use fork_common::Reason;
use xdpfork_tests::kernel::*;

const CALLER: &str = "10.0.1.2:40000";
const A_LOCAL: &str = "10.0.1.1:30000";
const B_LOCAL: &str = "10.0.2.1:30002";
const CALLEE: &str = "10.0.2.2:40000";
const CALLER6: &str = "[fd00:1::2]:40000";
const A_LOCAL6: &str = "[fd00:1::1]:30000";
const B_LOCAL6: &str = "[fd00:2::1]:30002";
const CALLEE6: &str = "[fd00:2::2]:40000";

/// Flows for both families, so nothing below passes merely for lack of a flow.
fn flows(b: &mut XdpBench) -> Result<()> {
    b.relay_flow(A_LOCAL, B_LOCAL, CALLEE)?;
    let mut f6 = FlowCfg::new(
        A_LOCAL6.parse()?,
        B_LOCAL6.parse()?,
        CALLEE6.parse()?,
        b.media[1],
    );
    f6.stats_index = 4;
    b.add_neighbour(&f6)?;
    b.install(&f6)
}

fn rtp_frame(from: &str, to: &str) -> Result<FrameSpec> {
    Ok(FrameSpec::udp(
        from.parse()?,
        to.parse()?,
        RtpSpec::pcmu(1).bytes(),
    ))
}

#[track_caller]
fn assert_passed(b: &mut XdpBench, frame: &[u8], reason: Reason) -> Result<()> {
    let out = b.relay(frame)?;
    out.expect(XDP_PASS, reason);
    assert_eq!(out.frame, frame, "a passed frame must be unchanged");
    assert!(out.untagged());
    Ok(())
}

#[test]
fn arp_and_other_ethertypes_are_not_ip() -> Result<()> {
    XdpBench::run(|b| {
        flows(b)?;
        assert_passed(b, &arp_frame(), Reason::PassNotIp)?;
        // LLDP.
        let mut lldp = arp_frame();
        lldp[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
        assert_passed(b, &lldp, Reason::PassNotIp)?;
        // ARP inside a VLAN.
        let mut tagged = arp_frame();
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
        assert_passed(b, &tagged, Reason::PassNotIp)?;
        // An IPv4 ethertype whose header says version 6, and the reverse.
        let mut f = rtp_frame(CALLER, A_LOCAL)?.bytes();
        f[14] = 0x65;
        assert_passed(b, &f, Reason::PassNotIp)?;
        let mut f = rtp_frame(CALLER6, A_LOCAL6)?.bytes();
        f[14] = 0x40;
        assert_passed(b, &f, Reason::PassNotIp)
    })
}

#[test]
fn non_udp_is_passed() -> Result<()> {
    XdpBench::run(|b| {
        flows(b)?;
        for proto in [1u8, 6, 47, 132] {
            let mut f = rtp_frame(CALLER, A_LOCAL)?;
            f.proto = proto;
            assert_passed(b, &f.bytes(), Reason::PassNotUdp)?;
            let mut f = rtp_frame(CALLER6, A_LOCAL6)?;
            f.proto = if proto == 1 { 58 } else { proto };
            assert_passed(b, &f.bytes(), Reason::PassNotUdp)?;
        }
        // UDP behind an IPv6 hop-by-hop options header (not parsed: the stack handles it).
        let mut f = rtp_frame(CALLER6, A_LOCAL6)?;
        f.v6_ext = Some((0, vec![0, 0, 1, 4, 0, 0, 0, 0]));
        assert_passed(b, &f.bytes(), Reason::PassNotUdp)
    })
}

#[test]
fn ipv4_fragments_are_passed() -> Result<()> {
    XdpBench::run(|b| {
        flows(b)?;
        // More fragments set (first fragment), an offset (later fragment), both.
        for frag in [0x2000u16, 0x0014, 0x2014, 0x1fff] {
            let mut f = rtp_frame(CALLER, A_LOCAL)?;
            f.frag = frag;
            assert_passed(b, &f.bytes(), Reason::PassFragment)?;
        }
        // DF alone and the reserved bit are not fragmentation.
        let mut f = rtp_frame(CALLER, A_LOCAL)?;
        f.frag = 0x8000;
        let out = b.relay(&f.bytes())?;
        out.expect(XDP_REDIRECT, Reason::Relayed);
        Ok(())
    })
}

#[test]
fn ipv6_fragment_header_is_passed() -> Result<()> {
    XdpBench::run(|b| {
        flows(b)?;
        let mut f = rtp_frame(CALLER6, A_LOCAL6)?;
        // Fragment header (RFC 8200 §4.5): first fragment with M set, identification 0x1234.
        f.v6_ext = Some((44, vec![0, 0, 0x00, 0x01, 0x00, 0x00, 0x12, 0x34]));
        assert_passed(b, &f.bytes(), Reason::PassFragment)?;
        // An atomic fragment (offset 0, M clear) is still a fragment header.
        f.v6_ext = Some((44, vec![0, 0, 0, 0, 0, 0, 0x12, 0x35]));
        assert_passed(b, &f.bytes(), Reason::PassFragment)
    })
}

#[test]
fn malformed_lengths_are_truncated() -> Result<()> {
    XdpBench::run(|b| {
        flows(b)?;
        // IHL below 5.
        for ihl in 0..5u8 {
            let mut f = rtp_frame(CALLER, A_LOCAL)?.bytes();
            f[14] = 0x40 | ihl;
            assert_passed(b, &f, Reason::PassTruncated)?;
        }
        // UDP length below the header's own 8 bytes.
        for v6 in [false, true] {
            let spec = if v6 {
                rtp_frame(CALLER6, A_LOCAL6)?
            } else {
                rtp_frame(CALLER, A_LOCAL)?
            };
            let mut f = spec.bytes();
            let l = layout(&f)?;
            for len in [0u16, 7] {
                f[l.l4 + 4..l.l4 + 6].copy_from_slice(&len.to_be_bytes());
                assert_passed(b, &f, Reason::PassTruncated)?;
            }
        }
        // IHL 15 with the options cut by the end of the frame.
        let mut f = rtp_frame(CALLER, A_LOCAL)?;
        f.ip_options = vec![1; 40];
        let f = f.bytes();
        assert_passed(b, &f[..14 + 60], Reason::PassTruncated)
    })
}

/// Every cut of a frame inside its Ethernet, VLAN, IP or UDP header.
fn header_cuts() -> Result<Vec<Vec<u8>>> {
    let mut frames = Vec::new();
    let mut v4_opts = rtp_frame(CALLER, A_LOCAL)?;
    v4_opts.ip_options = vec![1; 8];
    let mut v4_qinq = rtp_frame(CALLER, A_LOCAL)?;
    v4_qinq.vlans = vec![(ETH_P_8021AD, 5), (ETH_P_8021Q, 6)];
    let mut v6_vlan = rtp_frame(CALLER6, A_LOCAL6)?;
    v6_vlan.vlans = vec![(ETH_P_8021Q, 6)];
    for spec in [
        rtp_frame(CALLER, A_LOCAL)?,
        v4_opts,
        v4_qinq,
        rtp_frame(CALLER6, A_LOCAL6)?,
        v6_vlan,
    ] {
        let f = spec.bytes();
        let l = layout(&f)?;
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header (EINVAL), as drivers
        // never deliver them: start at 14.
        for len in 14..l.l4 + 8 {
            frames.push(f[..len].to_vec());
        }
    }
    Ok(frames)
}

#[test]
fn every_cut_inside_the_headers_is_passed_as_truncated() -> Result<()> {
    XdpBench::run(|b| {
        flows(b)?;
        for f in header_cuts()? {
            let out = b.relay(&f)?;
            assert_eq!(
                (out.action, out.counted.as_slice(), &out.frame),
                (XDP_PASS, [(Reason::PassTruncated, 1)].as_slice(), &f),
                "frame cut at {} bytes",
                f.len()
            );
        }
        let s = b.stats(3)?;
        assert_eq!((s.packets, s.errors, s.passed), (0, 0, 0));
        Ok(())
    })
}

#[test]
fn frames_shorter_than_ethernet_are_refused_by_the_test_run() -> Result<()> {
    XdpBench::run(|b| {
        let f = rtp_frame(CALLER, A_LOCAL)?.bytes();
        for len in [0usize, 1, 13] {
            assert!(
                b.relay(&f[..len]).is_err(),
                "BPF_PROG_TEST_RUN ran a {len}-byte frame"
            );
        }
        Ok(())
    })
}

/// Every cut of a valid frame after its UDP header: the UDP length then claims bytes the frame
/// does not have. Such a datagram is invalid (the stack drops it as a short packet), so the relay
/// must not rewrite and send it; it passes it as truncated.
#[test]
fn every_cut_inside_the_udp_payload_is_passed_as_truncated() -> Result<()> {
    XdpBench::run(|b| {
        flows(b)?;
        let mut rich = RtpSpec::pcmu(9);
        rich.csrcs = vec![1, 2];
        rich.ext = Some((0xbede, vec![0x10, 0xaa, 0, 0]));
        rich.padding = 4;
        for (from, to) in [(CALLER, A_LOCAL), (CALLER6, A_LOCAL6)] {
            let spec = FrameSpec::udp(from.parse()?, to.parse()?, rich.bytes());
            let f = spec.bytes();
            let l = layout(&f)?;
            for len in l.l4 + 8..f.len() {
                let cut = &f[..len];
                let out = b.relay(cut)?;
                assert_eq!(
                    (out.action, out.counted.as_slice(), out.frame.as_slice()),
                    (XDP_PASS, [(Reason::PassTruncated, 1)].as_slice(), cut),
                    "{from} frame cut at {len} of {} bytes",
                    f.len()
                );
            }
        }
        for index in [3, 4] {
            let s = b.stats(index)?;
            assert_eq!((s.packets, s.errors), (0, 0), "stats slot {index}");
        }
        Ok(())
    })
}

#[test]
fn ethernet_padding_after_the_datagram_is_relayed() -> Result<()> {
    XdpBench::run(|b| {
        let f = b.relay_flow(A_LOCAL, B_LOCAL, CALLEE)?;
        // A short datagram padded to the 60-byte Ethernet minimum: the frame is longer than
        // the UDP length says, which is valid.
        let mut spec = FrameSpec::udp(
            CALLER.parse()?,
            A_LOCAL.parse()?,
            RtpSpec {
                payload: vec![0xd5; 2],
                ..RtpSpec::pcmu(1)
            }
            .bytes(),
        );
        spec.ttl = 9;
        let mut frame = spec.bytes();
        frame.resize(60, 0);
        let out = b.relay(&frame)?;
        out.expect(XDP_REDIRECT, Reason::Relayed);
        let mut want = f.expected(&spec).bytes();
        want.resize(60, 0);
        assert_eq!(out.frame, want);
        check_checksums(&out.frame)
    })
}

/// Length fields that disagree with each other: a UDP length reaching past the IP payload (into
/// Ethernet padding) or an IP length reaching past the frame. The stack drops both (short packet /
/// truncated IP), so the relay must not send them on rewritten; it passes them as truncated.
#[test]
fn udp_length_beyond_the_ip_payload_is_truncated() -> Result<()> {
    XdpBench::run(|b| {
        flows(b)?;
        let short = RtpSpec {
            payload: vec![0xd5; 2],
            ..RtpSpec::pcmu(1)
        }
        .bytes();
        for (from, to) in [(CALLER, A_LOCAL), (CALLER6, A_LOCAL6)] {
            let spec = FrameSpec::udp(from.parse()?, to.parse()?, short.clone());
            let mut f = spec.bytes();
            let l = layout(&f)?;
            f.resize(f.len() + 16, 0);
            // UDP length 4 bytes longer than the IP payload, inside the padding.
            let ulen = u16::from_be_bytes([f[l.l4 + 4], f[l.l4 + 5]]) + 4;
            f[l.l4 + 4..l.l4 + 6].copy_from_slice(&ulen.to_be_bytes());
            assert_passed(b, &f, Reason::PassTruncated)?;
        }
        // IPv4 total length 4 bytes past the end of the frame (header checksum kept valid).
        let mut f = FrameSpec::udp(CALLER.parse()?, A_LOCAL.parse()?, short.clone()).bytes();
        let tot = u16::from_be_bytes([f[16], f[17]]) + 4;
        f[16..18].copy_from_slice(&tot.to_be_bytes());
        f[24..26].copy_from_slice(&[0, 0]);
        let c = !fold(sum16(&f[14..34], 0));
        f[24..26].copy_from_slice(&c.to_be_bytes());
        assert_passed(b, &f, Reason::PassTruncated)?;
        let s = b.stats(3)?;
        assert_eq!(s.packets, 0);
        Ok(())
    })
}
