//! `"port": "8080"` (a string) is refused with "Unexpected format or content in JSON"
//! (reference: `"port": 8080` is valid, `"port": "8080"` is not).

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn port_as_string_is_unexpected_format() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_answer.xml", &PCMA, &[])?;
    let body =
        format!(r#"{{"type":"START","call-guid":"C0DE","url":"{SPEECH_URL}","port":"9000"}}"#);
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    let run = t.caller("uac_call.xml", &keys, &["-d", "800"])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let st = run.statuses();
    assert!(
        st.len() == 1
            && st[0].contains("C0DE")
            && st[0].contains("Unexpected format or content in JSON"),
        "statuses {st:?}\n{}",
        t.diag(Some(&run))
    );
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    Ok(())
}
