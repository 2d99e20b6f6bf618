//! Fork START carried in a re-INVITE's multipart/mixed body (SDP + JSON): the SDP part is
//! relayed to the callee, the JSON part starts the fork, and the controller gets the status INFOs.

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn fork_by_reinvite_multipart() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let body = start_body("AB12CD34");
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    let run = t.caller("uac_reinvite_fork.xml", &keys, &["-d", "3000"])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let st = run.statuses();
    assert!(
        st.iter()
            .any(|s| s.contains("\"STARTED\"") && s.contains("AB12CD34")),
        "statuses {st:?}\n{}",
        t.diag(Some(&run))
    );
    // The callee saw a re-INVITE with plain SDP (the JSON part stays with sip-agent).
    let callee = std::fs::read_to_string(t.dir.join("callee.msg"))?;
    assert_eq!(callee.matches("INVITE sip:").count(), 2, "{callee}");
    assert!(!callee.contains("x-cisco-record"), "{callee}");
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    let summary = t.s.speech_summary()?;
    let streams = summary["streams"].as_array().cloned().unwrap_or_default();
    assert!(
        streams
            .iter()
            .any(|s| s["channel"] == "caller" && s["frames"].as_u64() > Some(10)),
        "{summary}"
    );
    Ok(())
}
