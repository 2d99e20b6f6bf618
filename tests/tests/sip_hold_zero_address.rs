//! Hold the RFC 2543 way (re-INVITE with `c=0.0.0.0`, RFC 3264 §8.4) on a forked call: the fork
//! pauses, and after the re-INVITE back to a real address it resumes on both streams. The flow
//! towards the held party must survive the hold (fork-agent forgets the fork on a flow that is
//! deleted and re-added), so the callee's stream is forked again after the resume.

mod sip_support;

use anyhow::Result;
use sip_support::*;

#[test]
fn hold_with_zero_address_pauses_and_unhold_resumes_both_streams() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_mirror.xml", &PCMA, &["-rtp_echo"])?;
    let body = start_body("40D0");
    let mut keys = PCMA.to_vec();
    keys.extend([
        ("fork_body", body.as_str()),
        ("pt2", "8"),
        ("codec2", "PCMA"),
        ("dir2", "inactive"),
        ("pt3", "8"),
        ("codec3", "PCMA"),
        ("dir3", "sendrecv"),
    ]);
    let run = t.caller("uac_hold_zero.xml", &keys, &[])?;
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
    // The callee's stream (echoed audio, relayed towards the held caller) came back after the
    // resume: it also shows the hold gap and frames on both sides of it.
    let callee = streams
        .iter()
        .find(|s| s["channel"] == "callee")
        .unwrap_or_else(|| panic!("{summary}"));
    let cseqs: Vec<u64> = callee["seqs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    let gap_at = cseqs
        .windows(2)
        .position(|w| (w[1].wrapping_sub(w[0]) & 0xffff) >= 60)
        .unwrap_or_else(|| panic!("no hold gap in the callee stream: {callee}"));
    assert!(
        cseqs.len() - gap_at > 20,
        "callee stream not forked after the resume: {callee}"
    );
    Ok(())
}
