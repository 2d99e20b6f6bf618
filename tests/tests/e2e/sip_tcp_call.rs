//! A full forked call with SIP over TCP on both legs (RFC 3261 §18.3 framing): the caller
//! connects to sip-agent, sip-agent opens a connection to the callee, status INFOs and BYE reuse
//! the connections.

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn forked_call_over_tcp() -> Result<()> {
    let mut t = SipTest::start_with(
        r#"udp = ["10.77.1.1:5060"]
tcp = ["10.77.1.1:5060", "10.77.2.1:5060"]"#,
        "10.77.2.2:5060:tcp",
        "",
    )?;
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo", "-t", "t1"])?;
    let body = start_body("7C9");
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    let run = t.caller("uac_call.xml", &keys, &["-d", "2000", "-t", "t1"])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    assert!(run.messages.contains("TCP message"), "{}", run.messages);
    let st = run.statuses();
    assert!(
        st.iter().any(|s| s.contains("\"STARTED\"")),
        "statuses {st:?}\n{}",
        t.diag(Some(&run))
    );
    let callee = std::fs::read_to_string(t.dir.join("callee.msg"))?;
    assert!(callee.contains("SIP/2.0/TCP 10.77.2.1:5060"), "{callee}");
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    Ok(())
}
