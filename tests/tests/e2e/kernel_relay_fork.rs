//! One call's audio through the real path: caller netns → XDP relay on the forker (kernel only)
//! → callee netns, with every packet cloned over AF_XDP to fork-agent and streamed to the
//! speech server. fork-agent runs with no `ip` (nor any program) on its PATH: the route
//! lookup, the fork veth and the managed next hop all go over rtnetlink.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use xdpfork_tests::{addrs::*, rtp_packet, spawn_receiver, Host, Scenario};

const N: u16 = 200;

fn payload(i: u16) -> Vec<u8> {
    // Distinct bytes per packet so order and identity are checked, not just counts.
    (0..160u16)
        .map(|j| ((i.wrapping_mul(7) + j) & 0xff) as u8)
        .collect()
}

fn send_call(s: &Scenario, from: &str, to: &str, local_to: &str, v6: bool) -> Result<Vec<Vec<u8>>> {
    let (h_from, h_to) = (Host::Caller, Host::Callee);
    let _ = v6;
    let tx = s.topo.udp_socket(h_from, from.parse()?)?;
    let rx = spawn_receiver(
        s.topo.udp_socket(h_to, to.parse()?)?,
        N as usize,
        Duration::from_secs(3),
    );
    let dst: SocketAddr = local_to.parse()?;
    let mut sent = Vec::new();
    for i in 0..N {
        let p = rtp_packet(0, 1000 + i, 160 * u32::from(i), 0x1234_5678, &payload(i));
        tx.send_to(&p, dst)?;
        sent.push(p);
        std::thread::sleep(Duration::from_millis(2));
    }
    let got = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    if got.len() != sent.len() {
        if let Ok(secs) = std::env::var("XDPFORK_PAUSE_ON_FAIL") {
            std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(0)));
        }
        panic!(
            "callee received {} of {} packets\ncounters: {}\nflows: {}\nfork-agent log:\n{}",
            got.len(),
            sent.len(),
            s.counters()?,
            s.flows()?,
            s.topo.log("fork-agent")
        );
    }
    assert_eq!(
        got, sent,
        "relayed packets must be byte-identical and in order"
    );
    Ok(sent)
}

#[test]
fn caller_audio_is_relayed_in_kernel_and_forked_to_speech_server() -> Result<()> {
    let mut s = Scenario::start()?;
    s.assert_agent_runs_without_ip()?;
    s.add_call_flows(false)?;
    let started = s.start_fork("guid-1", A_LOCAL, B_LOCAL)?;
    assert_eq!(
        started["streams"].as_array().map(Vec::len),
        Some(2),
        "{started}"
    );

    let sent = send_call(&s, CALLER_RTP, CALLEE_RTP, A_LOCAL, false)?;

    let c = s.counters()?;
    assert_eq!(c["kernel"]["relayed_forked"], N as u64, "counters: {c}");
    assert_eq!(c["user"]["userspace_relayed"], 0, "counters: {c}");
    let a = s.flow(A_LOCAL)?;
    assert_eq!(a["packets"], N as u64, "flow: {a}");
    assert_eq!(a["forked"], N as u64, "flow: {a}");
    assert_eq!(a["path"], "kernel", "flow: {a}");
    assert_eq!(a["lost"], 0, "flow: {a}");

    s.wait_frames_sent("asr", N as u64)?;
    let summary = s.speech_summary()?;
    let streams = summary["streams"].as_array().cloned().unwrap_or_default();
    let caller = streams
        .iter()
        .find(|st| st["channel"] == "caller")
        .unwrap_or_else(|| panic!("no caller stream in summary {summary}"));
    assert_eq!(caller["frames"], N as u64, "summary: {caller}");
    assert_eq!(caller["lost"], 0);
    let raw = std::fs::read(caller["raw"].as_str().unwrap_or_default())?;
    let expected: Vec<u8> = sent.iter().flat_map(|p| p[12..].to_vec()).collect();
    assert_eq!(raw.len(), expected.len());
    assert!(
        raw == expected,
        "speech server payload bytes differ from what the caller sent"
    );
    Ok(())
}

/// Both directions of a call at once, relayed and forked, over IPv4 and over IPv6.
fn bidirectional(v6: bool) -> Result<()> {
    let mut s = Scenario::start()?;
    s.add_call_flows(v6)?;
    let (caller, callee, a, b) = if v6 {
        (CALLER_RTP6, CALLEE_RTP6, A_LOCAL6, B_LOCAL6)
    } else {
        (CALLER_RTP, CALLEE_RTP, A_LOCAL, B_LOCAL)
    };
    s.start_fork("guid-both", a, b)?;
    let caller_sock = s.topo.udp_socket(Host::Caller, caller.parse()?)?;
    let callee_sock = s.topo.udp_socket(Host::Callee, callee.parse()?)?;
    let at_callee = spawn_receiver(callee_sock.try_clone()?, N as usize, Duration::from_secs(3));
    let at_caller = spawn_receiver(caller_sock.try_clone()?, N as usize, Duration::from_secs(3));
    let (a, b): (SocketAddr, SocketAddr) = (a.parse()?, b.parse()?);
    let mut sent_ab = Vec::new();
    let mut sent_ba = Vec::new();
    for i in 0..N {
        let p = rtp_packet(0, i, 160 * u32::from(i), 0xaaaa, &payload(i));
        caller_sock.send_to(&p, a)?;
        sent_ab.push(p);
        let q = rtp_packet(8, 5000 + i, 160 * u32::from(i), 0xbbbb, &payload(i + 1));
        callee_sock.send_to(&q, b)?;
        sent_ba.push(q);
        std::thread::sleep(Duration::from_millis(2));
    }
    let got_ab = at_callee
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let got_ba = at_caller
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    if got_ab != sent_ab || got_ba != sent_ba {
        panic!(
            "caller→callee {} and callee→caller {} of {N} byte-identical\ncounters {}\nflows {}\nlog {}",
            got_ab.len(),
            got_ba.len(),
            s.counters()?,
            s.flows()?,
            s.topo.log("fork-agent")
        );
    }

    let c = s.counters()?;
    assert_eq!(c["kernel"]["relayed_forked"], 2 * N as u64, "{c}");
    for f in s.flows()?.as_array().cloned().unwrap_or_default() {
        assert_eq!(f["packets"], N as u64, "{f}");
        assert_eq!(f["forked"], N as u64, "{f}");
        assert_eq!(f["path"], "kernel", "{f}");
    }
    s.wait_frames_sent("asr", 2 * N as u64)?;
    let summary = s.speech_summary()?;
    let streams = summary["streams"].as_array().cloned().unwrap_or_default();
    assert_eq!(streams.len(), 2, "{summary}");
    for st in streams {
        assert_eq!(st["frames"], N as u64, "{st}");
        assert_eq!(st["lost"], 0, "{st}");
    }
    Ok(())
}

#[test]
fn bidirectional_call_is_relayed_and_forked_over_ipv4() -> Result<()> {
    bidirectional(false)
}

#[test]
fn bidirectional_call_is_relayed_and_forked_over_ipv6() -> Result<()> {
    bidirectional(true)
}
