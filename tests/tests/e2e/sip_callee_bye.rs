//! The callee hangs up during a forked call: sip-agent relays BYE to the caller, stops the fork
//! and removes every flow.

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn callee_bye_ends_call_and_fork() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_bye.xml", &PCMA, &["-rtp_echo", "-d", "2500"])?;
    let body = start_body("B7E");
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    let run = t.caller("uac_wait_bye.xml", &keys, &[])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    assert!(run.messages.contains("BYE sip:"), "{}", run.messages);
    assert!(
        run.statuses().iter().any(|s| s.contains("\"STARTED\"")),
        "{}",
        t.diag(Some(&run))
    );
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    let forks = t.s.ctl(serde_json::json!({"v":1,"op":"show_forks"}))?;
    assert!(
        forks.as_array().is_none_or(Vec::is_empty),
        "fork left after BYE: {forks}"
    );
    Ok(())
}
