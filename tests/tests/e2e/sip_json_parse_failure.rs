//! A fork INFO whose body is not JSON is answered 200 and reported in a status INFO as
//! "JSON parse failure"; the call itself carries on and ends normally.

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn malformed_json_reports_parse_failure() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_answer.xml", &PCMA, &[])?;
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", r#"{"type":"START","call-guid":"AA","#));
    let run = t.caller("uac_call.xml", &keys, &["-d", "800"])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let st = run.statuses();
    assert!(
        st.len() == 1 && st[0].contains("\"ERROR\"") && st[0].contains("JSON parse failure"),
        "statuses {st:?}\n{}",
        t.diag(Some(&run))
    );
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    Ok(())
}
