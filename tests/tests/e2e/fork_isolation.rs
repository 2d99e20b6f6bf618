//! A slow speech server never delays call audio or other servers' streams: one speech-server
//! stops reading after a few frames (`--stall-after-frames`), the TCP buffers towards it are
//! made small (per-namespace sysctls), and fork-agent keeps its queue to it bounded
//! (`queue_frames`), counting the audio it drops; meanwhile the other server's stream gets every
//! frame and the kernel relay delivers every packet to the callee.
//!
//! A queue that stays full for `stall_timeout_ms` closes the connection ("closed locally: send
//! queue stalled" in the history) and the call resumes on a new connection (`reconnected`).
//!
//! Also the pool's idle timeout: with a 2 s `idle_timeout_secs`, a connection whose last call
//! stopped closes about 2 s later, leaves the connection list, and the history records
//! "closed locally due to idle-timeout expiry".

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

/// Packets sent on each of the two flows.
const PACKETS: u16 = 1500;
/// fork-agent's per-connection queue bound for the slow server.
const QUEUE: u64 = 16;

fn stats(socket: &std::path::Path) -> Result<Value> {
    control(
        socket,
        &json!({"v":1,"op":"show_stream_service","what":"statistics"}),
    )
}

fn conns(socket: &std::path::Path) -> Result<Vec<Value>> {
    let v = control(
        socket,
        &json!({"v":1,"op":"show_stream_service","what":"connection"}),
    )?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

#[test]
fn stalled_server_is_isolated_from_call_audio_and_other_streams() -> Result<()> {
    let mut t = Topology::new()?;
    // Small TCP buffers on both ends so the stalled connection backs up into fork-agent's
    // queue after ~100 frames rather than after megabytes of kernel buffering.
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
         queue_frames = {QUEUE}\nstall_timeout_ms = 120000\n"
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

    // Both calls' audio, interleaved, while the callee receives both relayed flows.
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
        std::thread::sleep(Duration::from_micros(500));
    }
    let send_time = started.elapsed();
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

    // The fast server got everything, in order.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = control(&socket, &json!({"v":1,"op":"show_counters"}))?;
        if c["servers"]["fast"]["frames_sent"].as_u64() >= Some(u64::from(PACKETS)) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "fast server: fewer than {PACKETS} frames sent: {c}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The slow server's queue stayed bounded and the excess was dropped and counted.
    let st = stats(&socket)?;
    let dropped = st["media"]["dropped_queue_full"].as_u64().unwrap_or(0);
    assert!(
        dropped >= u64::from(PACKETS) / 2,
        "most of the stalled stream's audio is dropped and counted: {st}"
    );
    let slow = conns(&socket)?
        .into_iter()
        .find(|c| c["server"] == "slow")
        .context("slow connection")?;
    let backlog = slow["backlog"].as_u64().context("backlog")?;
    assert!(
        backlog <= QUEUE,
        "queue to the stalled server is bounded by {QUEUE}: {slow}"
    );
    assert_eq!(
        slow["state"], "active",
        "the stall timeout (120 s) has not closed it: {slow}"
    );
    let c = control(&socket, &json!({"v":1,"op":"show_counters"}))?;
    // frames_sent counts WebSocket messages: the stream's START text frame, then audio. The
    // backlog includes a batch the stalled server has not taken yet.
    let slow_sent = c["servers"]["slow"]["frames_sent"].as_u64().unwrap_or(0);
    let slow_audio_sent = slow_sent.saturating_sub(1);
    assert_eq!(
        slow_audio_sent + dropped + backlog,
        u64::from(PACKETS),
        "every slow-stream frame is sent, queued or counted as dropped: {c} {st}"
    );
    assert!(
        !has(&ev.seen, "g-fast", "error", None),
        "the fast fork never fails: {:#?}",
        ev.seen
    );

    std::thread::sleep(Duration::from_millis(300));
    let sum = speech_summary(&mut t, "speech-fast", &fast_sum)?;
    let stream = sum["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["call_guid"] == "g-fast"))
        .with_context(|| format!("no g-fast stream: {sum}"))?;
    assert_eq!(stream["frames"], u64::from(PACKETS), "{stream}");
    assert_eq!(stream["lost"], 0, "{stream}");
    Ok(())
}

#[test]
fn idle_connection_closes_after_idle_timeout() -> Result<()> {
    let mut t = Topology::new()?;
    spawn_speech(&mut t, "speech", 9000, &[])?;
    let servers = format!(
        "[[speech_server]]\nname = \"asr\"\nurl = \"ws://{SPEECH_IP}:9000/fork\"\n\
         calls_threshold = 1\nidle_timeout_secs = 2\n"
    );
    let socket = start_fork_agent(&mut t, &servers)?;
    let mut ev = Events::subscribe(&socket)?;
    let f1 = caller_flow(&socket, 1)?;
    fork_caller(&socket, "g-idle", "asr", &f1)?;
    ev.until(Duration::from_secs(15), |s| {
        has(s, "g-idle", "started", None)
    })?;
    // Busy for longer than the idle timeout: a connection carrying a call never idles out.
    std::thread::sleep(Duration::from_secs(3));
    let live = conns(&socket)?;
    ensure!(
        live.len() == 1 && live[0]["calls"] == 1,
        "one busy connection: {live:?}"
    );

    control(
        &socket,
        &json!({"v":1,"op":"fork_stop","call_guid":"g-idle"}),
    )?;
    let stopped = Instant::now();
    ev.until(Duration::from_secs(10), |s| {
        has(s, "g-idle", "stopped", None)
    })?;
    let deadline = stopped + Duration::from_secs(10);
    while !conns(&socket)?.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "connection still open 10 s after the last call stopped: {:?}",
            conns(&socket)?
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = stopped.elapsed();
    assert!(
        after >= Duration::from_millis(1500),
        "closed after {after:?}, before the 2 s idle timeout"
    );
    let hist = control(
        &socket,
        &json!({"v":1,"op":"show_stream_service","what":"connection_history"}),
    )?;
    let h = hist
        .as_array()
        .and_then(|h| h.iter().find(|h| h["server"] == "asr"))
        .with_context(|| format!("no history: {hist}"))?;
    assert_eq!(
        h["reason"], "closed locally due to idle-timeout expiry",
        "{hist}"
    );
    Ok(())
}

#[test]
fn stalled_queue_closes_the_connection_and_the_call_reconnects() -> Result<()> {
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
    spawn_speech(&mut t, "speech-slow", 9001, &["--stall-after-frames", "5"])?;
    let servers = format!(
        "[[speech_server]]\nname = \"slow\"\nurl = \"ws://{SPEECH_IP}:9001/fork\"\n\
         queue_frames = {QUEUE}\nstall_timeout_ms = 1000\nbackoff_initial_ms = 100\n"
    );
    let socket = start_fork_agent(&mut t, &servers)?;
    let mut ev = Events::subscribe(&socket)?;
    let f1 = caller_flow(&socket, 1)?;
    fork_caller(&socket, "g-stall", "slow", &f1)?;
    ev.until(Duration::from_secs(15), |s| {
        has(s, "g-stall", "started", None)
    })?;
    // 2 s of audio: the queue fills within the first ~150 frames and stays full for > 1 s.
    let tx = t.udp_socket(Host::Caller, "10.77.1.2:0".parse()?)?;
    let d1: SocketAddr = f1.parse()?;
    for i in 0..1000u16 {
        tx.send_to(&rtp_packet(0, i, 160 * u32::from(i), 7, &[0xd5; 160]), d1)?;
        std::thread::sleep(Duration::from_millis(2));
    }
    // The stalled connection is closed; the call is not lost but moves to a new connection.
    ev.until(Duration::from_secs(15), |s| {
        has(s, "g-stall", "error", Some("Connection closed"))
            && s.iter().any(|e| {
                e["call_guid"] == "g-stall" && e["status"] == "started" && e["reconnected"] == true
            })
    })?;
    let hist = control(
        &socket,
        &json!({"v":1,"op":"show_stream_service","what":"connection_history"}),
    )?;
    assert!(
        hist.as_array().is_some_and(|h| h
            .iter()
            .any(|h| h["reason"] == "closed locally: send queue stalled")),
        "{hist}"
    );
    let st = stats(&socket)?;
    assert!(st["media"]["dropped_queue_full"].as_u64() > Some(0), "{st}");
    Ok(())
}
