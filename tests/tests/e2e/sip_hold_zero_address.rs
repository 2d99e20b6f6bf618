//! Hold the RFC 2543 way (re-INVITE with `c=0.0.0.0`, RFC 3264 §8.4) on a forked call: the fork
//! pauses, and after the re-INVITE back to a real address it resumes on both streams, so the
//! callee's stream is forked again after the resume.

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn hold_with_zero_address_pauses_and_unhold_resumes_both_streams() -> Result<()> {
    let summary = hold_and_resume("40D0", "uac_hold_zero.xml", "inactive")?;
    // The callee's stream (echoed audio, relayed towards the held caller) came back after the
    // resume: it also shows the hold gap and frames on both sides of it.
    let callee = stream_of(&summary, "callee");
    let (gap_at, seqs) = hold_gap(&callee);
    let gap_at = gap_at.unwrap_or_else(|| panic!("no hold gap in the callee stream: {callee}"));
    assert!(
        seqs.len() - gap_at > 20,
        "callee stream not forked after the resume: {callee}"
    );
    Ok(())
}
