//! A retransmitted fork INFO (same branch, same CSeq) is answered again but acted on once: one
//! CONNECTING/STARTED pair, no "Invalid Start Fork Request".

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn retransmitted_info_is_acted_on_once() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let body = start_body("BEEF");
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    // -nr: sipp would otherwise answer the (byte-identical) second 200 by re-sending its INFO.
    let run = t.caller("uac_info_retrans.xml", &keys, &["-d", "2000", "-nr"])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let st = run.statuses();
    assert_eq!(
        st.iter().filter(|s| s.contains("\"STARTED\"")).count(),
        1,
        "statuses {st:?}\n{}",
        t.diag(Some(&run))
    );
    assert!(!st.iter().any(|s| s.contains("ERROR")), "statuses {st:?}");
    // Both copies were answered 200 (the caller's fork INFO carries a fixed branch).
    let fork_tx: Vec<&str> = run
        .messages
        .split("-----------")
        .filter(|m| m.contains("branch=z9hG4bK-fork-"))
        .collect();
    assert_eq!(
        fork_tx.iter().filter(|m| m.contains("INFO sip:")).count(),
        2,
        "{fork_tx:?}"
    );
    assert_eq!(
        fork_tx
            .iter()
            .filter(|m| m.contains("SIP/2.0 200 OK"))
            .count(),
        2,
        "{fork_tx:?}"
    );
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    Ok(())
}
