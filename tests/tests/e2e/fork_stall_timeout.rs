//! The stall timeout fires on a server that stops reading, and nobody else notices.
//!
//! One speech-server stops reading after 5 frames (`--stall-after-frames`); the TCP buffers
//! towards it are small (per-namespace sysctls), so fork-agent's per-connection queue to it
//! (`queue_frames = 16`) fills within the first ~150 frames and stays full. After
//! `stall_timeout_ms` (1 s) the connection is closed ("closed locally: send queue stalled",
//! `stall_closes`), the audio it could not take is counted as dropped, and the call reconnects.
//! Meanwhile a second, healthy server's stream gets every frame without loss, and the callee gets
//! every relayed packet of both calls.

// A test drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use xdpfork_tests::{
    control,
    fork_rig::{
        callee_addr, caller_flow, fork_caller, has, spawn_speech, speech_summary, start_fork_agent,
        Events, SPEECH_IP,
    },
    ns_run, rtp_packet, spawn_receiver, Host, Topology,
};

/// Packets sent on each of the two flows: 3 s at 2 ms, long enough for the queue to stay full
/// past the 1 s stall timeout.
const PACKETS: u16 = 1500;
/// fork-agent's per-connection queue bound for the slow server.
const QUEUE: u64 = 16;

fn stats(socket: &std::path::Path) -> Result<Value> {
    control(
        socket,
        &json!({"v":1,"op":"show_stream_service","what":"statistics"}),
    )
}

#[test]
fn stall_timeout_closes_the_stalled_connection_and_spares_everyone_else() -> Result<()> {
    let mut t = Topology::new()?;
    ns_run(
        &t.ns(Host::Speech),
        "sysctl",
        &["-q", "-w", "net.ipv4.tcp_rmem=4096 4096 4096"],
    )?;
    ns_run(
        &t.ns(Host::Forker),
        "sysctl",
        &["-q", "-w", "net.ipv4.tcp_wmem=4096 8192 8192"],
    )?;
    let fast_sum = spawn_speech(&mut t, "speech-fast", 9000, &[])?;
    spawn_speech(&mut t, "speech-slow", 9001, &["--stall-after-frames", "5"])?;
    let servers = format!(
        "[[speech_server]]\nname = \"fast\"\nurl = \"ws://{SPEECH_IP}:9000/fork\"\n\
         [[speech_server]]\nname = \"slow\"\nurl = \"ws://{SPEECH_IP}:9001/fork\"\n\
         queue_frames = {QUEUE}\nstall_timeout_ms = 1000\nbackoff_initial_ms = 100\n"
    );
    let socket = start_fork_agent(&mut t, &servers)?;
    let mut ev = Events::subscribe(&socket)?;
    let f1 = caller_flow(&socket, 1)?;
    let f2 = caller_flow(&socket, 2)?;
    fork_caller(&socket, "g-fast", "fast", &f1)?;
    fork_caller(&socket, "g-slow", "slow", &f2)?;
    ev.until(Duration::from_secs(15), |s| {
        has(s, "g-fast", "started", None) && has(s, "g-slow", "started", None)
    })?;

    let rx1 = spawn_receiver(
        t.udp_socket(Host::Callee, callee_addr(1).parse()?)?,
        PACKETS as usize,
        Duration::from_secs(3),
    );
    let rx2 = spawn_receiver(
        t.udp_socket(Host::Callee, callee_addr(2).parse()?)?,
        PACKETS as usize,
        Duration::from_secs(3),
    );
    let tx = t.udp_socket(Host::Caller, "10.77.1.2:0".parse()?)?;
    let (d1, d2): (SocketAddr, SocketAddr) = (f1.parse()?, f2.parse()?);
    let started = Instant::now();
    for i in 0..PACKETS {
        let p = rtp_packet(0, i, 160 * u32::from(i), 7, &[0xd5; 160]);
        tx.send_to(&p, d1)?;
        tx.send_to(&p, d2)?;
        std::thread::sleep(Duration::from_millis(2));
    }
    let send_time = started.elapsed();

    // The stall timeout fired: the connection was closed locally and the call moved on.
    ev.until(Duration::from_secs(15), |s| {
        has(s, "g-slow", "error", Some("Connection closed"))
            && s.iter().any(|e| {
                e["call_guid"] == "g-slow" && e["status"] == "started" && e["reconnected"] == true
            })
    })?;
    let hist = control(
        &socket,
        &json!({"v":1,"op":"show_stream_service","what":"connection_history"}),
    )?;
    assert!(
        hist.as_array().is_some_and(|h| h
            .iter()
            .any(|h| h["server"] == "slow" && h["reason"] == "closed locally: send queue stalled")),
        "{hist}"
    );
    let st = stats(&socket)?;
    assert!(
        st["servers"]["slow"]["stall_closes"].as_u64() >= Some(1),
        "{st}"
    );
    assert_eq!(st["servers"]["fast"]["stall_closes"], 0, "{st}");

    // The drops are counted: most of the stalled stream's audio, none of the fast one's.
    let dropped = st["media"]["dropped_queue_full"].as_u64().unwrap_or(0);
    let c = control(&socket, &json!({"v":1,"op":"show_counters"}))?;
    let slow_dropped = c["servers"]["slow"]["frames_dropped"].as_u64().unwrap_or(0);
    assert!(
        dropped >= u64::from(PACKETS) / 2 && slow_dropped >= dropped,
        "the stalled stream's audio is dropped and counted (queue full {dropped}, \
         server total {slow_dropped}): {st} {c}"
    );
    eprintln!(
        "stall closes {}, queue-full drops {dropped}, slow server drops {slow_dropped}",
        st["servers"]["slow"]["stall_closes"]
    );
    assert_eq!(c["servers"]["fast"]["frames_dropped"], 0, "{c}");
    assert!(
        !has(&ev.seen, "g-fast", "error", None),
        "the fast fork never fails: {:#?}",
        ev.seen
    );

    // The call's relayed audio: every packet of both calls.
    for (n, rx) in [(1, rx1), (2, rx2)] {
        let got = rx
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        assert_eq!(
            got.len(),
            PACKETS as usize,
            "callee flow {n} must get every packet (sent in {send_time:?})"
        );
    }

    // The other server's stream: every frame, in order, none lost.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = control(&socket, &json!({"v":1,"op":"show_counters"}))?;
        if c["servers"]["fast"]["frames_sent"].as_u64() > Some(u64::from(PACKETS)) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "fast server: not every frame sent: {c}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let sum = speech_summary(&mut t, "speech-fast", &fast_sum)?;
    let stream = sum["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["call_guid"] == "g-fast"))
        .with_context(|| format!("no g-fast stream: {sum}"))?;
    assert_eq!(stream["frames"], u64::from(PACKETS), "{stream}");
    assert_eq!(stream["lost"], 0, "{stream}");
    assert_eq!(stream["resumed_starts"], 0, "never reconnected: {stream}");
    Ok(())
}
