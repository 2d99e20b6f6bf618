//! A speech server that answers the upgrade and then sends frames the protocol does not allow
//! (speech-server `--send-garbage cycle`: binary, text that is not JSON, a client-only message,
//! an oversize `error`, a Close with code 1005, a reserved opcode; one kind per connection).
//!
//! Each connection must end as a protocol error of its kind, never as a "TCP closure" or a
//! remote closure; the fork reports "Connection closed" and is never failed. The per-connection
//! reconnect backoff is set tiny (50–100 ms), so without the per-server hold-off fork-agent
//! would reconnect more than 50 times in the 12 s window; with it (3 errors, then 1 s doubling
//! to 4 s) at most 14 attempts fit. Meanwhile the call's relayed audio reaches the callee
//! complete.

// A test drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use xdpfork_tests::{
    control,
    fork_rig::{
        callee_addr, caller_flow, fork_caller, has, spawn_speech, speech_summary, start_fork_agent,
        Events, SPEECH_IP,
    },
    rtp_packet, spawn_receiver, Host, Topology,
};

/// How long connection attempts are counted.
const WINDOW: Duration = Duration::from_secs(12);
/// 20 ms packets over the window.
const PACKETS: u16 = 600;
/// Most attempts the hold-off allows in the window: 3 quick ones, then hold-offs of at least
/// 0.5 s, 1 s, 2 s, 2 s, ... (half of 1 s doubling to the 4 s cap): 3 + 7, with slack.
const MAX_ATTEMPTS: u64 = 14;
/// The per-connection backoff alone (at most 100 ms) allows at least this many.
const WITHOUT_HOLD_OFF: u64 = 12_000 / 100;

const KINDS: [&str; 6] = [
    "binary_frame",
    "malformed_text",
    "unexpected_message",
    "too_large",
    "bad_close",
    "bad_frame",
];

fn stats(socket: &std::path::Path) -> Result<Value> {
    control(
        socket,
        &json!({"v":1,"op":"show_stream_service","what":"statistics"}),
    )
}

#[test]
fn garbage_frames_are_protocol_errors_and_the_server_is_held_off() -> Result<()> {
    let mut t = Topology::new()?;
    let summary = spawn_speech(&mut t, "speech-garbage", 9000, &["--send-garbage", "cycle"])?;
    let servers = format!(
        "[[speech_server]]\nname = \"garbage\"\nurl = \"ws://{SPEECH_IP}:9000/fork\"\n\
         backoff_initial_ms = 50\nbackoff_max_ms = 100\nprotocol_error_limit = 3\n\
         protocol_backoff_initial_ms = 1000\nprotocol_backoff_max_ms = 4000\n"
    );
    let socket = start_fork_agent(&mut t, &servers)?;
    let mut ev = Events::subscribe(&socket)?;
    let f1 = caller_flow(&socket, 1)?;

    let rx = spawn_receiver(
        t.udp_socket(Host::Callee, callee_addr(1).parse()?)?,
        PACKETS as usize,
        Duration::from_secs(3),
    );
    let started = Instant::now();
    fork_caller(&socket, "g-garbage", "garbage", &f1)?;
    let tx = t.udp_socket(Host::Caller, "10.77.1.2:0".parse()?)?;
    let dst: SocketAddr = f1.parse()?;
    for i in 0..PACKETS {
        tx.send_to(&rtp_packet(0, i, 160 * u32::from(i), 7, &[0xd5; 160]), dst)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    // Read the counters at the end of the window, not later.
    if let Some(rest) = WINDOW.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    let st = stats(&socket)?;
    let counters = control(&socket, &json!({"v":1,"op":"show_counters"}))?;
    let window = started.elapsed();

    // The call's relayed audio is complete: the kernel relay never waits for the fork.
    let got = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    assert_eq!(got.len(), PACKETS as usize, "callee must get every packet");

    // Attempts over the window: bounded by the hold-off, far below what the backoff allows.
    let pool = &st["servers"]["garbage"];
    let connects = pool["connects"].as_u64().context("connects")?;
    assert!(
        (4..=MAX_ATTEMPTS).contains(&connects),
        "{connects} attempts in {window:?} (the reconnect backoff alone allows \
         {WITHOUT_HOLD_OFF}; the hold-off at most {MAX_ATTEMPTS}; it must still retry): {st}"
    );
    assert!(
        pool["protocol_backoffs"].as_u64() >= Some(2),
        "held off more than once: {st}"
    );

    // Every connection that ended ended as a protocol error (one may be open right now).
    let protocol = st["alarms"]["protocol_errors"].as_u64().unwrap_or(0);
    assert!(
        protocol + 1 >= connects && protocol >= 3,
        "{protocol} protocol errors for {connects} connections: {st}"
    );
    assert_eq!(pool["protocol_errors"].as_u64(), Some(protocol), "{st}");
    assert_eq!(
        st["alarms"]["tcp_closures"], 0,
        "garbage is no TCP closure: {st}"
    );
    assert_eq!(st["alarms"]["remote_ws_closures"], 0, "{st}");
    assert_eq!(pool["transport_closes"], 0, "{st}");
    assert_eq!(
        counters["servers"]["garbage"]["protocol_errors"].as_u64(),
        Some(protocol),
        "show counters: {counters}"
    );
    // `cycle` sends the six kinds in order: the first `protocol` connections cover them.
    for (i, kind) in KINDS.iter().enumerate() {
        let want = u64::from(i < protocol as usize);
        assert!(
            st["protocol_errors"][kind].as_u64() >= Some(want),
            "kind {kind}: {st}"
        );
    }
    let by_kind: u64 = KINDS
        .iter()
        .map(|k| st["protocol_errors"][k].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(by_kind, protocol, "{st}");

    // The controller hears "Connection closed", never a TCP closure, and the fork never fails.
    ev.until(Duration::from_secs(5), |s| {
        has(s, "g-garbage", "error", Some("Connection closed"))
    })?;
    assert!(
        !has(
            &ev.seen,
            "g-garbage",
            "error",
            Some("TCP Connection closed")
        ) && !has(&ev.seen, "g-garbage", "error", Some("Connection failed")),
        "{:#?}",
        ev.seen
    );
    assert_eq!(st["forks_failed"], 0, "{st}");
    let hist = control(
        &socket,
        &json!({"v":1,"op":"show_stream_service","what":"connection_history"}),
    )?;
    assert!(
        hist.as_array().is_some_and(|h| h.iter().any(|h| h["reason"]
            == "closed locally: speech protocol error (binary frame from the server)")),
        "{hist}"
    );
    let log = t.log("fork-agent");
    assert!(
        log.contains("%SIP-3-STREAM_SERVICE: 1 speech protocol errors"),
        "alarm line missing:\n{log}"
    );
    assert!(
        log.contains("keeps breaking the protocol"),
        "hold-off line missing:\n{log}"
    );

    // The server's side: as many connections as fork-agent attempted, each closed by us with
    // the violation's status code where the connection still carried a Close.
    let sum = speech_summary(&mut t, "speech-garbage", &summary)?;
    let conns = sum["connections"].as_array().context("connections")?;
    let ended: Vec<&str> = conns.iter().filter_map(|c| c["ended"].as_str()).collect();
    eprintln!(
        "{connects} attempts and {protocol} protocol errors in {window:?}; by kind {}; \
         the server saw {} connections: {ended:?}",
        st["protocol_errors"],
        conns.len()
    );
    assert!(
        conns.len() as u64 >= connects && conns.len() as u64 <= MAX_ATTEMPTS + 2,
        "server saw {} connections, fork-agent counted {connects}: {ended:?}",
        conns.len()
    );
    // In `cycle` order: 1003 for the binary frame, 1009 for the oversize message, 1002 for the
    // rest (for the bad Close, tungstenite's own answer, 1002 "Protocol violation").
    const CODES: [u16; 6] = [1003, 1002, 1002, 1009, 1002, 1002];
    for (i, c) in conns.iter().enumerate() {
        let Some(how) = c["ended"].as_str() else {
            continue; // still open when the server stopped
        };
        let code = CODES[i % CODES.len()];
        assert!(
            how.starts_with(&format!("client closed: {code}")),
            "connection {i} ({}) must be closed by us with {code}: {ended:?}",
            KINDS[i % KINDS.len()]
        );
    }
    Ok(())
}
