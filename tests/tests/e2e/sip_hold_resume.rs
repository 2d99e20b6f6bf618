//! Hold and resume on a forked call: the caller's re-INVITE with `a=sendonly` makes sip-agent
//! send `fork_pause` (the speech server sees a pause and no audio while on hold), the re-INVITE
//! back to `a=sendrecv` sends `fork_resume`; the controller gets PAUSED then RESUMED status INFOs
//! (reference "Pause and Resume Forking").

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn hold_pauses_and_unhold_resumes_the_fork() -> Result<()> {
    hold_and_resume("401D", "uac_reinvites.xml", "sendonly").map(|_| ())
}
