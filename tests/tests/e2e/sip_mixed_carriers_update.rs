//! One call, two carriers: a fork started by INFO is updated by INFO (the speech server gets the
//! new metadata), and a STOP carried in a re-INVITE on the same call is refused with the
//! reference's "Unsupported flow" (reference "Restrictions": no INFO and re-INVITE forking in one
//! call), so the fork keeps running until the call ends.

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn update_by_info_and_stop_by_reinvite_is_unsupported_flow() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let start = start_body("3A7E");
    let update = r#"{"type":"UPDATE","call-guid":"3A7E","metadata":{"agent-id":"2077"}}"#;
    let stop = r#"{"type":"STOP","call-guid":"3A7E"}"#;
    let mut keys = PCMA.to_vec();
    keys.extend([
        ("fork_body", start.as_str()),
        ("update_body", update),
        ("stop_body", stop),
    ]);
    let run = t.caller("uac_mixed_carriers.xml", &keys, &[])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let st = run.statuses();
    let pos = |f: &dyn Fn(&String) -> bool| st.iter().position(f);
    let started = pos(&|s| s.contains("\"STARTED\""));
    let updated = pos(&|s| s.contains("\"UPDATED\"") && s.contains("\"UPDATE\""));
    let refused = pos(&|s| {
        s.contains("\"ERROR\"") && s.contains("\"Unsupported flow\"") && s.contains("\"STOP\"")
    });
    assert!(
        matches!((started, updated, refused), (Some(a), Some(b), Some(c)) if a < b && b < c),
        "statuses {st:?}\n{}",
        t.diag(Some(&run))
    );
    // The refused STOP did not stop the fork.
    assert!(st.iter().all(|s| !s.contains("\"STOPPED\"")), "{st:?}");
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    let summary = t.s.speech_summary()?;
    let streams = summary["streams"].as_array().cloned().unwrap_or_default();
    assert_eq!(streams.len(), 2, "{summary}");
    for s in &streams {
        assert_eq!(s["metadata"]["agent-id"], "2077", "{s}");
        assert_eq!(s["updates"].as_u64(), Some(1), "{s}");
        assert_eq!(s["stopped"], "call_end", "{s}");
    }
    Ok(())
}
