//! A fork request INFO outside any dialog is rejected with 481 (reference: "If an INFO message
//! is received outside of an existing call, CUBE rejects the request ... with a 4XX").

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn info_outside_dialog_gets_481() -> Result<()> {
    let t = SipTest::start()?;
    let body = start_body("0DD");
    let run = t.caller("uac_info_no_dialog.xml", &[("fork_body", &body)], &[])?;
    assert!(run.ok, "no 481\n{}", t.diag(Some(&run)));
    assert!(run.messages.contains("SIP/2.0 481"), "{}", run.messages);
    assert!(t.s.flows()?.as_array().is_some_and(Vec::is_empty));
    Ok(())
}
