//! sip-agent releases a call on its own: with `[calls] max_duration_secs = 3` a forked call whose
//! ends never hang up gets a BYE on both legs after 3 s, each with an RFC 3326 Reason header
//! ("Maximum call duration"); afterwards fork-agent has no flows and no fork, the speech server
//! saw both streams stopped with `call_end`, and the admin socket's call counts are back to zero.
//! (The RFC 4028 session-expiry release takes the same path in sip-agent; its 90 s minimum
//! interval is too long for an end-to-end run, so the core's unit tests cover it with a stepped
//! clock.)

#![allow(clippy::disallowed_methods)] // wall clock bounds the polling of real processes

use std::time::{Duration, Instant};

use crate::sip_support::*;
use anyhow::Result;

/// The configured maximum call duration, in seconds.
const MAX_SECS: u64 = 3;

/// What the BYEs must carry.
const REASON: &str = "Reason: Q.850;cause=102;text=\"Maximum call duration\"";

#[test]
fn max_call_duration_releases_a_forked_call() -> Result<()> {
    let mut t = SipTest::start_with_config_and_args(
        &format!("[calls]\nmax_duration_secs = {MAX_SECS}"),
        &["--admin-socket", "{dir}/admin.sock"],
    )?;
    assert_eq!(t.calls()?["aggregate"], 0);
    t.callee("uas_released_by_agent.xml", &PCMA, &["-rtp_echo"])?;
    let body = start_body("5E55");
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    let began = Instant::now();
    let run = t.caller("uac_released_by_agent.xml", &keys, &[])?;
    let took = began.elapsed();
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    assert!(
        run.statuses().iter().any(|s| s.contains("\"STARTED\"")),
        "the fork never started\n{}",
        t.diag(Some(&run))
    );
    // Released by the limit, never before it (an upper bound would time a noisy machine; the
    // BYE with its Reason below shows what ended the call).
    assert!(
        took >= Duration::from_secs(MAX_SECS),
        "call lasted only {took:?}\n{}",
        t.diag(Some(&run))
    );
    let caller_bye = received_bye(&run.messages).unwrap_or_default();
    assert!(caller_bye.contains(REASON), "caller's BYE: {caller_bye}");
    t.wait_callee_done()?;
    let callee_log = std::fs::read_to_string(t.dir.join("callee.msg")).unwrap_or_default();
    let callee_bye = received_bye(&callee_log).unwrap_or_default();
    assert!(
        callee_bye.contains(REASON),
        "callee's BYE: {callee_bye}\n{}",
        t.diag(Some(&run))
    );
    let log = t.s.topo.log("sip-agent");
    assert!(
        log.lines().any(|l| l.contains("INFO")
            && l.contains("releasing call")
            && l.contains("MaxDuration")),
        "no info log of the release:\n{log}"
    );
    t.wait_no_flows()?;
    let forks = t.s.ctl(serde_json::json!({"v":1,"op":"show_forks"}))?;
    assert!(
        forks.as_array().is_none_or(Vec::is_empty),
        "fork left after the release: {forks}"
    );
    let after = t.calls()?;
    assert_eq!(
        (
            &after["aggregate"],
            &after["enhanced"],
            &after["standard"],
            &after["peak_aggregate"]
        ),
        (
            &serde_json::json!(0),
            &serde_json::json!(0),
            &serde_json::json!(0),
            &serde_json::json!(1)
        ),
        "{after}"
    );
    let summary = t.s.speech_summary()?;
    for channel in ["caller", "callee"] {
        let s = stream_of(&summary, channel);
        assert_eq!(s["stopped"], "call_end", "{channel} stream: {s}");
        assert!(s["frames"].as_u64() > Some(20), "{channel} stream: {s}");
    }
    Ok(())
}
