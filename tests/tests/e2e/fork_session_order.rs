//! Fork session control through the real path: fork_start, audio, fork_pause (audio dropped in
//! fork-agent and counted), fork_resume with the other G.711 law, fork_update, fork_stop, each
//! checked by the reference speech-server's summary (order rules: no violations) and by the
//! `fork_status` events a `subscribe`d control connection receives.

// A test drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use xdpfork_tests::{addrs::*, rtp_packet, spawn_receiver, Host, Scenario};

fn send_burst(s: &Scenario, first_seq: u16, n: u16) -> Result<()> {
    let tx = s.topo.udp_socket(Host::Caller, CALLER_RTP.parse()?)?;
    let rx = spawn_receiver(
        s.topo.udp_socket(Host::Callee, CALLEE_RTP.parse()?)?,
        n as usize,
        Duration::from_secs(2),
    );
    let dst: SocketAddr = A_LOCAL.parse()?;
    for i in 0..n {
        let seq = first_seq.wrapping_add(i);
        let p = rtp_packet(0, seq, 160 * u32::from(seq), 0x1234_5678, &[0xff; 160]);
        tx.send_to(&p, dst)?;
        std::thread::sleep(Duration::from_millis(2));
    }
    let got = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    // The relay is the kernel's and never affected by the fork state.
    assert_eq!(got.len(), n as usize, "callee must get every packet");
    Ok(())
}

/// Reads event lines until `want` fork_status events arrived (bounded by 10 s).
fn read_events(r: &mut BufReader<UnixStream>, want: usize) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < want {
        if Instant::now() > deadline {
            bail!("only {} of {want} events within 10 s: {out:?}", out.len());
        }
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => bail!("control connection closed"),
            Ok(_) => {
                let v: Value = serde_json::from_str(&line)?;
                if v["event"] == "fork_status" {
                    out.push(v);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn wait_stat(s: &Scenario, pointer: &str, at_least: u64) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = s.ctl(json!({"v":1,"op":"show_stream_service","what":"statistics"}))?;
        if st.pointer(pointer).and_then(Value::as_u64) >= Some(at_least) {
            return Ok(st);
        }
        if Instant::now() > deadline {
            bail!("{pointer} stayed below {at_least}: {st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pause_resume_update_stop_reach_the_server_in_order() -> Result<()> {
    let mut s = Scenario::start()?;
    s.add_call_flows(false)?;

    let sub = UnixStream::connect(&s.socket).context("subscribe connection")?;
    sub.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut w = sub.try_clone()?;
    w.write_all(b"{\"v\":1,\"op\":\"subscribe\"}\n")?;
    let mut events = BufReader::new(sub);
    let mut first = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while first.is_empty() && Instant::now() < deadline {
        let _ = events.read_line(&mut first);
    }
    assert!(first.contains("\"ok\":true"), "subscribe answer: {first}");

    s.start_fork("guid-order", A_LOCAL, B_LOCAL)?;
    let ev = read_events(&mut events, 1)?;
    assert_eq!(ev[0]["status"], "started", "{ev:?}");

    send_burst(&s, 1000, 50)?;
    wait_stat(&s, "/media/frames_queued", 50)?;

    s.ctl(json!({"v":1,"op":"fork_pause","call_guid":"guid-order","reason":"hold"}))?;
    let err = s
        .ctl(json!({"v":1,"op":"fork_pause","call_guid":"guid-order","reason":"hold"}))
        .expect_err("second pause is refused");
    assert!(err.to_string().contains("already paused"), "{err}");
    send_burst(&s, 1050, 30)?;
    let st = wait_stat(&s, "/media/dropped_paused", 30)?;
    assert_eq!(
        st["media"]["frames_queued"], 50,
        "paused audio is never sent: {st}"
    );

    s.ctl(json!({"v":1,"op":"fork_resume","call_guid":"guid-order","codec":"PCMA"}))?;
    s.ctl(json!({"v":1,"op":"fork_update","call_guid":"guid-order","metadata":{"agent":"1042"}}))?;
    send_burst(&s, 1080, 40)?;
    wait_stat(&s, "/media/frames_queued", 90)?;
    let calls =
        s.ctl(json!({"v":1,"op":"show_stream_service","what":"callid","arg":"guid-order"}))?;
    assert_eq!(calls[0]["state"], "active", "{calls}");
    assert_eq!(calls[0]["streams"][0]["codec"], "PCMA", "{calls}");

    s.ctl(json!({"v":1,"op":"fork_stop","call_guid":"guid-order"}))?;
    let ev = read_events(&mut events, 3)?;
    let got: Vec<(&str, &str)> = ev
        .iter()
        .map(|e| {
            (
                e["status"].as_str().unwrap_or(""),
                e["error"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("paused", ""),
            ("resumed", ""),
            ("stopped", "Forking stopped")
        ]
    );

    s.wait_frames_sent("asr", 90)?;
    let conns = s.ctl(json!({"v":1,"op":"show_stream_service","what":"connection"}))?;
    assert_eq!(conns.as_array().map(Vec::len), Some(1), "{conns}");
    // Give the writer a moment to flush the stop frames before the server exits.
    std::thread::sleep(Duration::from_millis(300));
    let summary = s.speech_summary()?;
    for c in summary["connections"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        assert_eq!(c["violations"], json!([]), "protocol violations: {summary}");
    }
    let streams = summary["streams"].as_array().cloned().unwrap_or_default();
    assert_eq!(streams.len(), 2, "{summary}");
    let caller = streams
        .iter()
        .find(|st| st["channel"] == "caller")
        .context("caller stream")?;
    assert_eq!(caller["frames"], 90, "{caller}");
    assert_eq!(
        (&caller["pauses"], &caller["resumes"], &caller["updates"]),
        (&json!(1), &json!(1), &json!(1)),
        "{caller}"
    );
    assert_eq!(caller["stopped"], "request");
    assert_eq!(caller["metadata"], json!({"agent":"1042"}));
    assert_eq!(caller["codec"], "PCMA", "resume switched the law: {caller}");
    Ok(())
}
