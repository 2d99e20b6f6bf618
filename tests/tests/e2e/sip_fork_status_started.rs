//! STARTED tells the truth: the controller gets it only once the speech server has the
//! streams. The speech server is frozen (SIGSTOP) before the START, so fork-agent can open its
//! TCP connection but no WebSocket upgrade or `start` can complete: the controller gets
//! CONNECTING (with the channel ids) and no STARTED. Thawed, the server gets the `start`s and
//! the controller STARTED.
//!
//! STARTED means fork-agent wrote the `start`s on an upgraded connection, not that the server
//! has already logged them: comparing the speech server's log stamps with sipp's across three
//! processes on a loaded 2-core host is a race the product does not promise to win, so the
//! order is proven by the freeze (no STARTED while the server cannot answer the upgrade).

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::time::{Duration, Instant};

use crate::sip_support::*;
use anyhow::{bail, Result};
use nix::sys::signal::Signal;

const GUID: &str = "5A1E5A1E0001";

#[test]
fn started_only_after_the_speech_server_has_the_streams() -> Result<()> {
    let mut t = SipTest::start()?;
    t.s.topo.send_signal("speech-server", Signal::SIGSTOP)?;
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let body = start_body(GUID);
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    let child = t.caller_spawn("uac_call.xml", &keys, &["-d", "6000"])?;
    let now = |t: &SipTest| CallerRun {
        ok: true,
        messages: std::fs::read_to_string(t.dir.join("caller.msg")).unwrap_or_default(),
        errors: String::new(),
    };

    // CONNECTING arrives while the speech server cannot have answered anything.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !now(&t).statuses().iter().any(|s| s.contains("CONNECTING")) {
        if Instant::now() > deadline {
            t.s.topo.send_signal("speech-server", Signal::SIGCONT)?;
            bail!("no CONNECTING\n{}", t.diag(None));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let fork = t.s.ctl(serde_json::json!(
        {"v":1,"op":"show_stream_service","what":"callid","arg":GUID}
    ))?;
    assert_ne!(fork[0]["state"], "active", "fork-agent: {fork}");
    // Were STARTED reported from fork-agent's answer, as CONNECTING is, it would be here now.
    std::thread::sleep(Duration::from_millis(500));
    let early = now(&t).statuses();
    assert!(
        early.iter().all(|s| !s.contains("STARTED")),
        "STARTED before the speech server had the streams: {early:?}"
    );
    let connecting: serde_json::Value = serde_json::from_str(&early[0])?;
    assert_eq!(connecting["state"], "CONNECTING", "{early:?}");
    assert_eq!(connecting["request"], "START");
    assert_eq!(connecting["streams"].as_array().map(Vec::len), Some(2));

    t.s.topo.send_signal("speech-server", Signal::SIGCONT)?;
    let run = t.caller_wait(child)?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let st = run.timed_statuses();
    let st_json: Vec<_> = st.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(
        states(&st_json),
        ["CONNECTING", "STARTED"],
        "{st_json:?}\n{}",
        t.diag(Some(&run))
    );
    let (_, started) = &st[1];
    assert_eq!(started["request"], "START");
    assert_eq!(started["streams"], connecting["streams"]);

    // Both `start`s reached the server.
    let log = t.s.topo.log("speech-server");
    let starts: Vec<_> = log
        .lines()
        .filter(|l| l.contains("stream start") && l.contains(GUID))
        .collect();
    assert_eq!(starts.len(), 2, "speech-server log:\n{log}");
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    // The `start`s name the call: the caller leg's Call-ID, From and To.
    let summary = t.s.speech_summary()?;
    for ch in ["caller", "callee"] {
        let s = stream_of(&summary, ch);
        assert!(s["call_id"].as_str().is_some_and(|c| !c.is_empty()), "{s}");
        assert_eq!(s["from"], "sip:1000@10.77.1.2:5060", "{s}");
        assert_eq!(s["to"], "sip:2000@10.77.1.1:5060", "{s}");
    }
    Ok(())
}
