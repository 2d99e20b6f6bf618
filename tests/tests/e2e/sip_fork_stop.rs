//! Fork STOP by INFO: the controller gets STOPPED "Forking stopped", fork-agent stops the
//! streams while the relay keeps the call's audio flowing, and BYE cleans up.

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn fork_stop_by_info() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let start = start_body("5707");
    let stop = r#"{"type":"STOP","call-guid":"5707"}"#;
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &start));
    keys.push(("stop_body", stop));
    let run = t.caller("uac_start_stop.xml", &keys, &["-d", "2000"])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let st = run.statuses();
    let stopped = st
        .iter()
        .position(|s| s.contains("\"STOPPED\"") && s.contains("Forking stopped"));
    let started = st.iter().position(|s| s.contains("\"STARTED\""));
    assert!(
        matches!((started, stopped), (Some(a), Some(b)) if a < b),
        "statuses {st:?}\n{}",
        t.diag(Some(&run))
    );
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    let summary = t.s.speech_summary()?;
    let streams = summary["streams"].as_array().cloned().unwrap_or_default();
    let caller = streams
        .iter()
        .find(|s| s["channel"] == "caller")
        .unwrap_or_else(|| panic!("{summary}"));
    // Stopped after ~2 s of a ~6 s recording: frames arrived, but not the whole file.
    let frames = caller["frames"].as_u64().unwrap_or(0);
    assert!(frames > 20 && frames < 250, "caller stream: {caller}");
    Ok(())
}
