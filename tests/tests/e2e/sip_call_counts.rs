//! Call counting (reference "Licensing for WebSockets in CUBE"): `sip-agent ctl show calls`
//! over the admin socket reports a forked call as enhanced (1) while it is up and 0 after BYE,
//! with the peaks retained; `ctl metrics` gives the same as Prometheus text.

#![allow(clippy::disallowed_methods)] // wall clock bounds the polling of a real process

use std::time::{Duration, Instant};

use crate::sip_support::*;
use anyhow::Result;

#[test]
fn forked_call_counts_as_enhanced_until_bye_and_peaks_stay() -> Result<()> {
    let mut t = SipTest::start_with_args(&["--admin-socket", "{dir}/admin.sock"])?;
    let idle = t.calls()?;
    assert_eq!(idle["aggregate"], 0, "{idle}");
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let body = start_body("C0117");
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    let caller = t.caller_spawn("uac_call.xml", &keys, &["-d", "3000"])?;
    // Poll (bounded) until the fork has started.
    let deadline = Instant::now() + Duration::from_secs(8);
    let during = loop {
        let c = t.calls()?;
        if c["enhanced"] == 1 || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let run = t.caller_wait(caller)?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    assert_eq!(during["enhanced"], 1, "{during}\n{}", t.diag(Some(&run)));
    assert_eq!(during["standard"], 0, "{during}");
    assert_eq!(during["aggregate"], 1, "{during}");
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    let after = t.calls()?;
    assert_eq!(
        after,
        serde_json::json!({"standard":0,"enhanced":0,"aggregate":0,
                           "peak_aggregate":1,"peak_enhanced":1,"peak_standard":0,
                           "started_total":1,"enhanced_total":1}),
        "{}",
        t.diag(Some(&run))
    );
    let metrics = t.admin_ctl(&["metrics"])?;
    assert!(
        metrics.contains("\nxdpfork_sip_calls_enhanced 0\n")
            && metrics.contains("\nxdpfork_sip_calls_peak_enhanced 1\n")
            && metrics.contains("\nxdpfork_sip_calls_forked_total 1\n"),
        "{metrics}"
    );
    Ok(())
}
