//! A forked call whose packets partly take the slow path: IP fragments are never rewritten in the
//! kernel, so the stack reassembles them and fork-agent's fallback socket relays them. Those
//! packets must reach the speech server too, in the same stream as the kernel's clones, and stop
//! being forked when the fork stops.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use serde_json::json;
use xdpfork_tests::{addrs::*, rtp_packet, spawn_receiver, Host, Scenario};

const N: u16 = 20;

/// Every fourth packet carries 1,600 bytes of audio: more than the veth MTU, so it is fragmented.
fn is_big(i: u16) -> bool {
    i.is_multiple_of(4)
}

#[test]
fn fragmented_packets_of_a_forked_flow_are_forked_from_user_space() -> Result<()> {
    let mut s = Scenario::start()?;
    s.add_call_flows(false)?;
    s.start_fork("guid-frag", A_LOCAL, B_LOCAL)?;
    let tx = s.topo.udp_socket(Host::Caller, CALLER_RTP.parse()?)?;
    let rx = spawn_receiver(
        s.topo.udp_socket(Host::Callee, CALLEE_RTP.parse()?)?,
        N as usize + 1,
        Duration::from_secs(2),
    );
    let dst: SocketAddr = A_LOCAL.parse()?;
    let mut sent = Vec::new();
    for i in 0..N {
        let len = if is_big(i) { 1600 } else { 160 };
        let payload: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
        let p = rtp_packet(0, 100 + i, 160 * u32::from(i), 0xf4a6, &payload);
        tx.send_to(&p, dst)?;
        sent.push(p);
        // Far enough apart that the slow path cannot overtake or fall behind the fast one.
        std::thread::sleep(Duration::from_millis(20));
    }
    s.wait_frames_sent("asr", u64::from(N))?;
    let a = s.flow(A_LOCAL)?;
    let big = sent.len() as u64 / 4;
    assert_eq!(a["userspace_packets"], big, "{a}");
    assert_eq!(a["userspace_forked"], big, "{a}");
    assert_eq!(a["forked"], N as u64 - big, "kernel clones: {a}");
    assert_eq!(a["path"], "kernel+user-space", "{a}");

    // After STOP the slow path relays but no longer forks.
    s.ctl(json!({"v":1,"op":"fork_stop","call_guid":"guid-frag"}))?;
    let late = rtp_packet(0, 100 + N, 160 * u32::from(N), 0xf4a6, &[7u8; 1600]);
    tx.send_to(&late, dst)?;
    let got = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    sent.push(late);
    assert!(
        got == sent,
        "the callee must get every packet intact and in order: got {} of {}; counters {}",
        got.len(),
        sent.len(),
        s.counters()?
    );
    let a = s.flow(A_LOCAL)?;
    assert_eq!(a["userspace_packets"], big + 1, "{a}");
    assert_eq!(a["userspace_forked"], big, "not forked after STOP: {a}");
    let c = s.counters()?;
    assert_eq!(c["user"]["userspace_forked"], big, "{c}");

    let summary = s.speech_summary()?;
    let streams = summary["streams"].as_array().cloned().unwrap_or_default();
    let caller = streams
        .iter()
        .find(|st| st["channel"] == "caller")
        .with_context(|| format!("no caller stream in {summary}"))?;
    assert_eq!(caller["frames"], N as u64, "{caller}");
    assert_eq!(caller["lost"], 0, "{caller}");
    let raw = std::fs::read(caller["raw"].as_str().unwrap_or_default())?;
    let expected: Vec<u8> = sent[..N as usize]
        .iter()
        .flat_map(|p| p[12..].to_vec())
        .collect();
    assert!(
        raw == expected,
        "the speech server's audio differs from what the caller sent ({} vs {} bytes)",
        raw.len(),
        expected.len()
    );
    Ok(())
}
