//! Hold and resume on a forked call: the caller's re-INVITE with `a=sendonly` makes sip-agent
//! send `fork_pause` (the speech server sees a pause and no audio while on hold), the re-INVITE
//! back to `a=sendrecv` sends `fork_resume`; the controller gets PAUSED then RESUMED status INFOs
//! (reference "Pause and Resume Forking").

mod sip_support;

use anyhow::Result;
use sip_support::*;

#[test]
fn hold_pauses_and_unhold_resumes_the_fork() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_mirror.xml", &PCMA, &["-rtp_echo"])?;
    let body = start_body("401D");
    let mut keys = PCMA.to_vec();
    keys.extend([
        ("fork_body", body.as_str()),
        ("pt2", "8"),
        ("codec2", "PCMA"),
        ("dir2", "sendonly"),
        ("pt3", "8"),
        ("codec3", "PCMA"),
        ("dir3", "sendrecv"),
    ]);
    let run = t.caller("uac_reinvites.xml", &keys, &[])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let st = run.statuses();
    let pos = |state: &str| st.iter().position(|s| s.contains(state));
    let (started, paused, resumed) = (pos("\"STARTED\""), pos("\"PAUSED\""), pos("\"RESUMED\""));
    assert!(
        matches!((started, paused, resumed), (Some(a), Some(b), Some(c)) if a < b && b < c),
        "statuses {st:?}\n{}",
        t.diag(Some(&run))
    );
    assert!(st.iter().all(|s| !s.contains("\"ERROR\"")), "{st:?}");
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    let summary = t.s.speech_summary()?;
    let streams = summary["streams"].as_array().cloned().unwrap_or_default();
    let caller = streams
        .iter()
        .find(|s| s["channel"] == "caller")
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(caller["pauses"].as_u64() >= Some(1), "{caller}");
    assert!(caller["resumes"].as_u64() >= Some(1), "{caller}");
    assert_eq!(caller["codec"], "PCMA", "{caller}");
    // No audio while on hold: the ~2 s hold leaves a gap of well over 50 RTP sequence numbers
    // (20 ms frames) between two consecutive forked frames, while audio flowed on both sides.
    let seqs: Vec<u64> = caller["seqs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    let max_gap = seqs
        .windows(2)
        .map(|w| w[1].wrapping_sub(w[0]) & 0xffff)
        .max()
        .unwrap_or(0);
    assert!(max_gap >= 60, "max seq gap {max_gap}: {caller}");
    let frames = caller["frames"].as_u64().unwrap_or(0);
    assert!(frames > 40, "{caller}");
    Ok(())
}
