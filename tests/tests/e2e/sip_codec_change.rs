//! Codec change on a forked call (reference "Pause and Resume Forking"): a re-INVITE moving the
//! call from PCMU to PCMA pauses the fork and resumes it on the new law (the START named no
//! codec), so the speech server ends on PCMA; a re-INVITE to G.729 pauses it with no resume.

use crate::sip_support::*;
use anyhow::Result;

const PCMU: [(&str, &str); 2] = [("pt", "0"), ("codec", "PCMU")];

#[test]
fn pcmu_to_pcma_pauses_then_resumes_and_g729_only_pauses() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_mirror.xml", &PCMU, &["-rtp_echo"])?;
    let body = start_body("C0DEC");
    let mut keys = PCMU.to_vec();
    keys.extend([
        ("fork_body", body.as_str()),
        ("pt2", "8"),
        ("codec2", "PCMA"),
        ("dir2", "sendrecv"),
        ("pt3", "18"),
        ("codec3", "G729"),
        ("dir3", "sendrecv"),
    ]);
    let run = t.caller("uac_reinvites.xml", &keys, &[])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let st = run.statuses();
    let states: Vec<&str> = st
        .iter()
        .filter_map(|s| {
            ["STARTED", "PAUSED", "RESUMED", "ERROR"]
                .into_iter()
                .find(|k| s.contains(&format!("\"{k}\"")))
        })
        .collect();
    // PCMU→PCMA: PAUSED, RESUMED; →G.729: PAUSED and nothing after it.
    assert_eq!(
        states,
        ["STARTED", "PAUSED", "RESUMED", "PAUSED"],
        "statuses {st:?}\n{}",
        t.diag(Some(&run))
    );
    let log = t.s.topo.log("fork-agent") + &t.s.topo.log("sip-agent");
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    let summary = t.s.speech_summary()?;
    let streams = summary["streams"].as_array().cloned().unwrap_or_default();
    let caller = streams
        .iter()
        .find(|s| s["channel"] == "caller")
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(caller["codec"], "PCMA", "{caller}");
    assert_eq!(caller["pauses"].as_u64(), Some(2), "{caller}\n{log}");
    assert_eq!(caller["resumes"].as_u64(), Some(1), "{caller}");
    // The A-law audio flowed to the speech server between the resume and the G.729 pause.
    assert!(caller["frames"].as_u64() > Some(20), "{caller}");
    Ok(())
}
