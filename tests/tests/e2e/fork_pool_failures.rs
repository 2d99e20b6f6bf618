//! Connection pool and failure reporting against real speech-server processes: calls-threshold
//! growth, token accepted and rejected ("Authentication token invalid"), DNS failure ("DNS lookup
//! failed"), an abrupt TCP drop ("TCP Connection closed", then a resumed start on a new
//! connection) and a graceful server close ("Connection closed"), with the alarm counters and
//! the closed-connection history they leave behind.

// A test drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use xdpfork_tests::{
    control,
    fork_rig::{
        caller_flow as flow, fork_caller as fork, has, send_rtp, spawn_speech, start_fork_agent,
        Events, SPEECH_IP as SPEECH,
    },
    Topology,
};

fn speech(t: &mut Topology, name: &str, port: u16, extra: &[&str]) -> Result<()> {
    spawn_speech(t, name, port, extra).map(|_| ())
}

fn send(t: &Topology, to: &str, n: u16) -> Result<()> {
    send_rtp(t, to, n, Duration::from_millis(2))
}

/// The `[[speech_server]]` sections: one per behaviour under test.
fn servers() -> String {
    let srv = |name: &str, port: u16, extra: &str| {
        format!(
            "[[speech_server]]\nname = \"{name}\"\nurl = \"ws://{SPEECH}:{port}/fork\"\n\
             backoff_initial_ms = 100\nbackoff_max_ms = 400\n{extra}\n"
        )
    };
    [
        srv("asr", 9000, "token = \"s3cret\"\ncalls_threshold = 1"),
        srv("badtoken", 9000, "token = \"wrong\"\nmax_connect_attempts = 1"),
        srv("abort", 9001, ""),
        srv("closer", 9002, "max_connect_attempts = 1"),
        "[[speech_server]]\nname = \"nodns\"\nurl = \"ws://no-such-host.invalid/fork\"\nmax_connect_attempts = 1\n".to_owned(),
    ]
    .concat()
}

#[test]
fn pool_grows_and_failures_are_reported_with_reference_strings() -> Result<()> {
    let mut t = Topology::new()?;
    speech(&mut t, "speech-main", 9000, &["--token", "s3cret"])?;
    speech(
        &mut t,
        "speech-abort",
        9001,
        &["--abort-after-frames", "20"],
    )?;
    speech(
        &mut t,
        "speech-close",
        9002,
        &["--close-after-frames", "20"],
    )?;
    let socket = start_fork_agent(&mut t, &servers())?;

    let mut ev = Events::subscribe(&socket)?;

    // calls_threshold = 1: two calls, two connections, both authenticated.
    let f1 = flow(&socket, 1)?;
    let f2 = flow(&socket, 2)?;
    fork(&socket, "g-one", "asr", &f1)?;
    fork(&socket, "g-two", "asr", &f2)?;
    // Wrong token, unresolvable name, abrupt and graceful servers.
    let f3 = flow(&socket, 3)?;
    let f4 = flow(&socket, 4)?;
    let f5 = flow(&socket, 5)?;
    let f6 = flow(&socket, 6)?;
    fork(&socket, "g-token", "badtoken", &f3)?;
    fork(&socket, "g-dns", "nodns", &f4)?;
    fork(&socket, "g-abort", "abort", &f5)?;
    fork(&socket, "g-close", "closer", &f6)?;

    ev.until(Duration::from_secs(15), |s| {
        has(s, "g-one", "started", None)
            && has(s, "g-two", "started", None)
            && has(s, "g-token", "error", Some("Authentication token invalid"))
            && has(s, "g-dns", "error", Some("DNS lookup failed"))
            && has(s, "g-abort", "started", None)
            && has(s, "g-close", "started", None)
    })?;
    let conns = control(
        &socket,
        &json!({"v":1,"op":"show_stream_service","what":"server","arg":format!("{SPEECH}:9000")}),
    )?;
    let asr: Vec<&Value> = conns
        .as_array()
        .context("array")?
        .iter()
        .filter(|c| c["server"] == "asr" && c["state"] == "active")
        .collect();
    assert_eq!(
        asr.len(),
        2,
        "one connection per call at threshold 1: {conns}"
    );
    assert!(asr.iter().all(|c| c["calls"] == 1), "{conns}");

    send(&t, &f5, 40)?;
    send(&t, &f6, 40)?;
    ev.until(Duration::from_secs(15), |s| {
        has(s, "g-abort", "error", Some("TCP Connection closed"))
            && has(s, "g-close", "error", Some("Connection closed"))
    })?;
    // The aborted connection comes back: start re-sent with resumed: true.
    ev.until(Duration::from_secs(15), |s| {
        s.iter().any(|e| {
            e["call_guid"] == "g-abort" && e["status"] == "started" && e["reconnected"] == true
        })
    })?;

    let st = control(
        &socket,
        &json!({"v":1,"op":"show_stream_service","what":"statistics"}),
    )?;
    let a = &st["alarms"];
    assert!(a["http_failures"].as_u64() >= Some(1), "{st}");
    assert!(a["tcp_failures"].as_u64() >= Some(1), "{st}");
    assert!(a["tcp_closures"].as_u64() >= Some(1), "{st}");
    assert!(a["remote_ws_closures"].as_u64() >= Some(1), "{st}");
    let hist = control(
        &socket,
        &json!({"v":1,"op":"show_stream_service","what":"connection_history"}),
    )?;
    let reasons: Vec<&str> = hist
        .as_array()
        .context("array")?
        .iter()
        .filter_map(|h| h["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"TCP Connection closed"), "{hist}");
    assert!(reasons.contains(&"Connection closed"), "{hist}");

    // Clearing a connection fails its fork with "Connection closed".
    let id = asr[0]["id"].as_u64().context("id")?;
    let guid = asr[0]["call_guids"][0].as_str().context("guid")?.to_owned();
    assert!(
        control(
            &socket,
            &json!({"v":1,"op":"clear_stream_connection","id":id})
        )
        .is_err(),
        "clear needs `forced`"
    );
    control(
        &socket,
        &json!({"v":1,"op":"clear_stream_connection","id":id,"forced":true}),
    )?;
    ev.until(Duration::from_secs(15), |s| {
        has(s, &guid, "error", Some("Connection closed"))
    })?;
    let log = t.log("fork-agent");
    assert!(
        log.contains("%SIP-3-STREAM_SERVICE: 1 HTTP connection failures"),
        "alarm line missing:\n{log}"
    );
    Ok(())
}
