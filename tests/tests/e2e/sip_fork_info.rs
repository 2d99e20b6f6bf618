//! A full call through sip-agent with a fork START by INFO: the caller's G.711 audio is
//! relayed in the kernel to the callee (which echoes it back as its own), both parties are
//! forked to the speech server, the controller gets CONNECTING and STARTED status INFOs, and
//! BYE removes every flow.

use std::time::{Duration, Instant};

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn fork_by_info_relays_forks_and_cleans_up() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let body = start_body("6F0C9A2E1D3B11EE");
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    let child = t.caller_spawn("uac_call.xml", &keys, &["-d", "6000"])?;

    // Mid-call: four flows (RTP and RTCP both ways), the RTP ones relayed by the kernel.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = serde_json::Value::Null;
    while Instant::now() < deadline {
        let f = t.s.flows()?;
        let kernel = f
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| x["path"] == "kernel" && x["packets"].as_u64() > Some(20))
                    .count()
            })
            .unwrap_or(0);
        seen = f;
        if kernel >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = t.caller_wait(child)?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let flows = seen.as_array().cloned().unwrap_or_default();
    assert_eq!(
        flows.len(),
        4,
        "flows mid-call: {seen}\n{}",
        t.diag(Some(&run))
    );
    let relayed: Vec<_> = flows
        .iter()
        .filter(|x| x["path"] == "kernel" && x["packets"].as_u64() > Some(20))
        .collect();
    assert_eq!(
        relayed.len(),
        2,
        "both directions relayed in kernel: {seen}"
    );

    let st = run.statuses();
    assert!(
        st.len() >= 2 && st[0].contains("CONNECTING") && st[1].contains("\"STARTED\""),
        "statuses {st:?}\n{}",
        t.diag(Some(&run))
    );
    assert!(st[1].contains("\"party\":\"calling\"") && st[1].contains("\"party\":\"called\""));

    t.wait_callee_done()?;
    t.wait_no_flows()?;
    let c = t.s.counters()?;
    assert!(
        c["kernel"]["relayed_forked"].as_u64() > Some(100),
        "counters: {c}"
    );
    let summary = t.s.speech_summary()?;
    let streams = summary["streams"].as_array().cloned().unwrap_or_default();
    for ch in ["caller", "callee"] {
        let s = streams
            .iter()
            .find(|s| s["channel"] == ch)
            .unwrap_or_else(|| panic!("no {ch} stream in {summary}"));
        assert!(s["frames"].as_u64() > Some(50), "{ch}: {s}");
    }
    Ok(())
}
