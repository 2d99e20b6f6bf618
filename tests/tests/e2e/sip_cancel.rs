//! The caller cancels a ringing call: sip-agent answers 200/487 on the A leg, relays the CANCEL
//! to the callee, ACKs its 487, and never installs a flow.

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn caller_cancel_while_ringing() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_ring.xml", &[], &[])?;
    let run = t.caller("uac_cancel.xml", &PCMA, &[])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    t.wait_callee_done()?;
    let callee = std::fs::read_to_string(t.dir.join("callee.msg"))?;
    assert!(callee.contains("CANCEL sip:"), "{callee}");
    assert!(callee.contains("ACK sip:"), "487 not ACKed:\n{callee}");
    assert!(t.s.flows()?.as_array().is_some_and(Vec::is_empty));
    Ok(())
}
