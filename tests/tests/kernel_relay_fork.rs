//! One call's audio through the real path: caller netns → XDP relay on the forker (kernel only)
//! → callee netns, with every packet cloned over AF_XDP to fork-agent and streamed to the
//! speech server.

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
    let flows = s.flows()?;
    let a = flows
        .as_array()
        .and_then(|f| f.iter().find(|f| f["local"] == A_LOCAL))
        .cloned()
        .unwrap_or_default();
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
