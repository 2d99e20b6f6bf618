//! `xdp_media_relay` over single frames (BPF_PROG_TEST_RUN): the relay's rewrite of IPv4 (with
//! and without options), IPv6 and VLAN-tagged frames, byte for byte against a frame built from
//! scratch with the new addresses, and the exits before the rewrite (no flow, strict source,
//! unresolved neighbour, unknown egress, family mismatch, FIB fallback).

use anyhow::Result;
use fork_common::{Reason, FLOW_F_STRICT_SOURCE};
use xdpfork_tests::kernel::*;

const CALLER: &str = "10.0.1.2:40000";
const A_LOCAL: &str = "10.0.1.1:30000";
const B_LOCAL: &str = "10.0.2.1:30002";
const CALLEE: &str = "10.0.2.2:40000";
const CALLER6: &str = "[fd00:1::2]:40000";
const A_LOCAL6: &str = "[fd00:1::1]:30000";
const B_LOCAL6: &str = "[fd00:2::1]:30002";
const CALLEE6: &str = "[fd00:2::2]:40000";

fn rtp_frame(from: &str, to: &str, seq: u16) -> Result<FrameSpec> {
    Ok(FrameSpec::udp(
        from.parse()?,
        to.parse()?,
        RtpSpec::pcmu(seq).bytes(),
    ))
}

/// Relay `input` on `f` and check everything a relayed frame must satisfy.
fn assert_relayed(b: &mut XdpBench, f: &FlowCfg, input: &FrameSpec, reason: Reason) -> Result<()> {
    let before = b.stats(f.stats_index)?;
    let out = b.relay(&input.bytes())?;
    let action = if reason == Reason::RelayedTx {
        XDP_TX
    } else {
        XDP_REDIRECT
    };
    out.expect(action, reason);
    assert!(out.untagged(), "no fork tag on an unforked flow");
    check_checksums(&out.frame)?;
    assert_eq!(out.frame, f.expected(input).bytes(), "rewritten frame");
    let after = b.stats(f.stats_index)?;
    assert_eq!(after.packets, before.packets + 1);
    assert_eq!(
        after.bytes,
        before.bytes + input.payload.len() as u64,
        "bytes count the UDP payload"
    );
    assert!(after.last_seen_ns > 0 && after.last_seen_ns >= before.last_seen_ns);
    assert_eq!(after.forked, before.forked);
    assert_eq!(after.passed, before.passed);
    Ok(())
}

#[test]
fn ipv4_is_rewritten_with_correct_checksums_and_ttl_64() -> Result<()> {
    XdpBench::run(|b| {
        let f = b.relay_flow(A_LOCAL, B_LOCAL, CALLEE)?;
        let input = rtp_frame(CALLER, A_LOCAL, 1)?;
        check_checksums(&input.bytes())?;
        assert_relayed(b, &f, &input, Reason::Relayed)?;
        // Another TTL and payload: the incremental checksum update must hold for any input.
        let mut input = rtp_frame(CALLER, A_LOCAL, 2)?;
        input.ttl = 1;
        input.payload[20] = 0xff;
        assert_relayed(b, &f, &input, Reason::Relayed)
    })
}

#[test]
fn ipv4_with_options_is_rewritten() -> Result<()> {
    XdpBench::run(|b| {
        let f = b.relay_flow(A_LOCAL, B_LOCAL, CALLEE)?;
        let mut input = rtp_frame(CALLER, A_LOCAL, 1)?;
        // Router alert (RFC 2113) plus a NOP-padded timestamp option: IHL 5 + 3 words.
        input.ip_options = vec![
            0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x44, 0x06, 0x07, 0x00, 0x00, 0x00,
        ];
        assert_eq!(input.ip_options.len() % 4, 0);
        assert_relayed(b, &f, &input, Reason::Relayed)?;
        // The maximum header: 40 bytes of options (IHL 15).
        input.ip_options = vec![0x01; 40];
        assert_relayed(b, &f, &input, Reason::Relayed)
    })
}

#[test]
fn ipv6_is_rewritten_with_correct_checksum_and_hop_limit_64() -> Result<()> {
    XdpBench::run(|b| {
        let f = b.relay_flow(A_LOCAL6, B_LOCAL6, CALLEE6)?;
        let input = rtp_frame(CALLER6, A_LOCAL6, 1)?;
        check_checksums(&input.bytes())?;
        assert_relayed(b, &f, &input, Reason::Relayed)?;
        let mut input = rtp_frame(CALLER6, A_LOCAL6, 2)?;
        input.ttl = 255;
        assert_relayed(b, &f, &input, Reason::Relayed)
    })
}

#[test]
fn single_and_double_vlan_tags_are_parsed_and_kept() -> Result<()> {
    XdpBench::run(|b| {
        let f4 = b.relay_flow(A_LOCAL, B_LOCAL, CALLEE)?;
        let mut f6 = FlowCfg::new(
            A_LOCAL6.parse()?,
            B_LOCAL6.parse()?,
            CALLEE6.parse()?,
            b.media[1],
        );
        f6.stats_index = 4;
        b.add_neighbour(&f6)?;
        b.install(&f6)?;
        let tags: [&[(u16, u16)]; 3] = [
            &[(ETH_P_8021Q, 0x0064)],
            &[(ETH_P_8021AD, 0x00c8), (ETH_P_8021Q, 0x0064)],
            &[(ETH_P_8021Q, 0x00c8), (ETH_P_8021Q, 0x0064)],
        ];
        for (i, vlans) in tags.iter().enumerate() {
            let mut input = rtp_frame(CALLER, A_LOCAL, i as u16)?;
            input.vlans = vlans.to_vec();
            assert_relayed(b, &f4, &input, Reason::Relayed)?;
            let mut input = rtp_frame(CALLER6, A_LOCAL6, i as u16)?;
            input.vlans = vlans.to_vec();
            assert_relayed(b, &f6, &input, Reason::Relayed)?;
        }
        Ok(())
    })
}

#[test]
fn three_vlan_tags_are_not_parsed() -> Result<()> {
    XdpBench::run(|b| {
        b.relay_flow(A_LOCAL, B_LOCAL, CALLEE)?;
        let mut input = rtp_frame(CALLER, A_LOCAL, 1)?;
        input.vlans = vec![(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)];
        let frame = input.bytes();
        let out = b.relay(&frame)?;
        out.expect(XDP_PASS, Reason::PassNotIp);
        assert_eq!(out.frame, frame);
        Ok(())
    })
}

#[test]
fn zero_udp_checksum_on_ipv4_stays_zero() -> Result<()> {
    XdpBench::run(|b| {
        let f = b.relay_flow(A_LOCAL, B_LOCAL, CALLEE)?;
        let mut input = rtp_frame(CALLER, A_LOCAL, 1)?;
        input.zero_udp_csum = true;
        let out = b.relay(&input.bytes())?;
        out.expect(XDP_REDIRECT, Reason::Relayed);
        let l = layout(&out.frame)?;
        assert_eq!(&out.frame[l.l4 + 6..l.l4 + 8], &[0, 0]);
        assert_eq!(out.frame, f.expected(&input).bytes());
        check_checksums(&out.frame)
    })
}

#[test]
fn hairpin_to_the_ingress_interface_is_xdp_tx() -> Result<()> {
    XdpBench::run(|b| {
        // Test runs arrive on lo; a flow whose egress is lo goes back out with XDP_TX and needs
        // no TX_PORTS entry.
        let mut f = FlowCfg::new(A_LOCAL.parse()?, B_LOCAL.parse()?, CALLEE.parse()?, b.lo);
        f.stats_index = 9;
        b.add_neighbour(&f)?;
        b.install(&f)?;
        assert_relayed(b, &f, &rtp_frame(CALLER, A_LOCAL, 1)?, Reason::RelayedTx)
    })
}

#[test]
fn udp_without_a_flow_passes_untouched() -> Result<()> {
    XdpBench::run(|b| {
        b.relay_flow(A_LOCAL, B_LOCAL, CALLEE)?;
        // Same address, other port; same port, other address; other family.
        for (from, to) in [
            (CALLER, "10.0.1.1:30001"),
            (CALLER, "10.0.1.9:30000"),
            (CALLER6, A_LOCAL6),
        ] {
            let frame = rtp_frame(from, to, 1)?.bytes();
            let out = b.relay(&frame)?;
            out.expect(XDP_PASS, Reason::PassNoFlow);
            assert_eq!(out.frame, frame);
        }
        Ok(())
    })
}

#[test]
fn strict_source_drops_other_sources_and_relays_the_expected_one() -> Result<()> {
    XdpBench::run(|b| {
        let mut f = FlowCfg::new(
            A_LOCAL.parse()?,
            B_LOCAL.parse()?,
            CALLEE.parse()?,
            b.media[1],
        );
        f.flags = FLOW_F_STRICT_SOURCE;
        f.expect = Some(CALLER.parse()?);
        b.add_tx_port(f.egress_ifindex)?;
        b.add_neighbour(&f)?;
        b.install(&f)?;
        for wrong in ["10.0.1.2:40002", "10.0.1.3:40000"] {
            let out = b.relay(&rtp_frame(wrong, A_LOCAL, 1)?.bytes())?;
            out.expect(XDP_DROP, Reason::DropStrictSource);
        }
        let s = b.stats(f.stats_index)?;
        assert_eq!((s.strict_drops, s.packets, s.seq_valid), (2, 0, 0));
        assert_relayed(b, &f, &rtp_frame(CALLER, A_LOCAL, 1)?, Reason::Relayed)?;
        assert_eq!(b.stats(f.stats_index)?.strict_drops, 2);
        Ok(())
    })
}

#[test]
fn strict_source_on_ipv6_compares_all_words() -> Result<()> {
    XdpBench::run(|b| {
        let mut f = FlowCfg::new(
            A_LOCAL6.parse()?,
            B_LOCAL6.parse()?,
            CALLEE6.parse()?,
            b.media[1],
        );
        f.flags = FLOW_F_STRICT_SOURCE;
        f.expect = Some(CALLER6.parse()?);
        b.add_tx_port(f.egress_ifindex)?;
        b.add_neighbour(&f)?;
        b.install(&f)?;
        // Differs only in the last word, then only in the first.
        for wrong in ["[fd00:1::3]:40000", "[fd01:1::2]:40000"] {
            let out = b.relay(&rtp_frame(wrong, A_LOCAL6, 1)?.bytes())?;
            out.expect(XDP_DROP, Reason::DropStrictSource);
        }
        assert_eq!(b.stats(f.stats_index)?.strict_drops, 2);
        assert_relayed(b, &f, &rtp_frame(CALLER6, A_LOCAL6, 1)?, Reason::Relayed)
    })
}

#[test]
fn unresolved_neighbour_passes_the_frame_unmodified() -> Result<()> {
    XdpBench::run(|b| {
        let f = FlowCfg::new(
            A_LOCAL.parse()?,
            B_LOCAL.parse()?,
            CALLEE.parse()?,
            b.media[1],
        );
        b.add_tx_port(f.egress_ifindex)?;
        b.install(&f)?;
        let frame = rtp_frame(CALLER, A_LOCAL, 1)?.bytes();
        let out = b.relay(&frame)?;
        out.expect(XDP_PASS, Reason::PassFibNoNeigh);
        assert_eq!(
            out.frame, frame,
            "a passed frame must reach the stack as it arrived"
        );
        let s = b.stats(f.stats_index)?;
        assert_eq!((s.passed, s.packets, s.bytes), (1, 0, 0));
        // A neighbour on another interface, or for another address, is not this one.
        let mut other = f.clone();
        other.egress_ifindex = b.media[0];
        b.add_neighbour(&other)?;
        let mut other = f.clone();
        other.nexthop = "10.0.2.3".parse()?;
        b.add_neighbour(&other)?;
        b.relay(&frame)?.expect(XDP_PASS, Reason::PassFibNoNeigh);
        // Resolved: relayed.
        b.add_neighbour(&f)?;
        assert_relayed(b, &f, &rtp_frame(CALLER, A_LOCAL, 2)?, Reason::Relayed)
    })
}

#[test]
fn ipv6_unresolved_neighbour_passes_unmodified() -> Result<()> {
    XdpBench::run(|b| {
        let f = FlowCfg::new(
            A_LOCAL6.parse()?,
            B_LOCAL6.parse()?,
            CALLEE6.parse()?,
            b.media[1],
        );
        b.add_tx_port(f.egress_ifindex)?;
        b.install(&f)?;
        let frame = rtp_frame(CALLER6, A_LOCAL6, 1)?.bytes();
        let out = b.relay(&frame)?;
        out.expect(XDP_PASS, Reason::PassFibNoNeigh);
        assert_eq!(out.frame, frame);
        assert_eq!(b.stats(f.stats_index)?.passed, 1);
        Ok(())
    })
}

#[test]
fn egress_not_in_tx_ports_passes_unmodified() -> Result<()> {
    XdpBench::run(|b| {
        let f = FlowCfg::new(
            A_LOCAL.parse()?,
            B_LOCAL.parse()?,
            CALLEE.parse()?,
            b.media[1],
        );
        b.add_neighbour(&f)?;
        b.install(&f)?;
        let frame = rtp_frame(CALLER, A_LOCAL, 1)?.bytes();
        let out = b.relay(&frame)?;
        out.expect(XDP_PASS, Reason::PassEgressUnknown);
        assert_eq!(out.frame, frame);
        assert_eq!(b.stats(f.stats_index)?.packets, 0);
        Ok(())
    })
}

#[test]
fn family_mismatch_between_key_and_action_passes() -> Result<()> {
    XdpBench::run(|b| {
        let mut f = FlowCfg::new(
            A_LOCAL.parse()?,
            B_LOCAL.parse()?,
            CALLEE.parse()?,
            b.media[1],
        );
        f.family = Some(fork_common::FAMILY_V6);
        b.add_tx_port(f.egress_ifindex)?;
        b.install(&f)?;
        let frame = rtp_frame(CALLER, A_LOCAL, 1)?.bytes();
        let out = b.relay(&frame)?;
        out.expect(XDP_PASS, Reason::PassFamilyMismatch);
        assert_eq!(out.frame, frame);
        Ok(())
    })
}

#[test]
fn fib_fallback_without_forwarding_passes_unmodified() -> Result<()> {
    XdpBench::run(|b| {
        // egress_ifindex 0 asks bpf_fib_lookup, which refuses on an interface without IP
        // forwarding (this namespace's default): the frame goes to the stack.
        let f = FlowCfg::new(A_LOCAL.parse()?, B_LOCAL.parse()?, CALLEE.parse()?, 0);
        b.install(&f)?;
        let frame = rtp_frame(CALLER, A_LOCAL, 1)?.bytes();
        let out = b.relay(&frame)?;
        out.expect(XDP_PASS, Reason::PassFibFailed);
        assert_eq!(out.frame, frame);
        assert_eq!(b.stats(f.stats_index)?.passed, 1);
        Ok(())
    })
}

#[test]
fn fib_fallback_with_forwarding_uses_the_kernel_route_and_neighbour() -> Result<()> {
    XdpBench::run(|b| {
        let ns = b.ns.clone();
        let run = |args: &[&str]| xdpfork_tests::ns_run(&ns, "ip", args);
        // Changing the MAC flushes the interface's neighbours: do it first.
        run(&["link", "set", "xk1", "address", "02:00:00:00:00:05"])?;
        run(&["addr", "add", "10.0.2.1/24", "dev", "xk1"])?;
        xdpfork_tests::ns_run(
            &ns,
            "sysctl",
            &["-q", "-w", "net.ipv4.conf.all.forwarding=1"],
        )?;
        xdpfork_tests::ns_run(
            &ns,
            "sysctl",
            &["-q", "-w", "net.ipv4.conf.lo.forwarding=1"],
        )?;
        let mut f = FlowCfg::new(A_LOCAL.parse()?, B_LOCAL.parse()?, CALLEE.parse()?, 0);
        b.install(&f)?;
        b.add_tx_port(b.media[1])?;
        let input = rtp_frame(CALLER, A_LOCAL, 1)?;
        // Routed but not in the kernel's neighbour table: "no neighbour", the stack resolves.
        let out = b.relay(&input.bytes())?;
        out.expect(XDP_PASS, Reason::PassFibNoNeigh);
        assert_eq!(out.frame, input.bytes());
        assert_eq!(b.stats(f.stats_index)?.passed, 1);
        run(&[
            "neigh",
            "replace",
            "10.0.2.2",
            "lladdr",
            "02:00:00:00:00:0d",
            "dev",
            "xk1",
            "nud",
            "permanent",
        ])?;
        f.egress_ifindex = b.media[1];
        assert_relayed(b, &f, &input, Reason::Relayed)
    })
}

#[test]
fn flow_with_an_out_of_range_stats_slot_is_still_relayed() -> Result<()> {
    XdpBench::run(|b| {
        let mut f = FlowCfg::new(
            A_LOCAL.parse()?,
            B_LOCAL.parse()?,
            CALLEE.parse()?,
            b.media[1],
        );
        f.stats_index = fork_common::MAX_FLOWS;
        b.add_tx_port(f.egress_ifindex)?;
        b.add_neighbour(&f)?;
        b.dp.flows.insert(f.key(), f.action(), 0)?;
        let input = rtp_frame(CALLER, A_LOCAL, 1)?;
        let out = b.relay(&input.bytes())?;
        out.expect(XDP_REDIRECT, Reason::Relayed);
        assert_eq!(out.frame, f.expected(&input).bytes());
        Ok(())
    })
}
