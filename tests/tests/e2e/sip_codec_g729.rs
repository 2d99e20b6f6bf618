//! A call negotiated on G.729 only connects and is relayed, but a fork START is refused with
//! "Codec is not supported" (only G.711 is forked).

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn g729_call_cannot_be_forked() -> Result<()> {
    let mut t = SipTest::start()?;
    let g729 = [("pt", "18"), ("codec", "G729")];
    t.callee("uas_answer.xml", &g729, &[])?;
    let body = start_body("729");
    let mut keys = g729.to_vec();
    keys.push(("fork_body", &body));
    let run = t.caller("uac_call.xml", &keys, &["-d", "800"])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let st = run.statuses();
    assert!(
        st.len() == 1 && st[0].contains("Codec is not supported"),
        "statuses {st:?}\n{}",
        t.diag(Some(&run))
    );
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    Ok(())
}
