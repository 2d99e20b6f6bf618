//! A START naming a destination that cannot be reached: a port nothing listens on ("Connection
//! failed") and a host name that does not resolve ("DNS lookup failed", RFC 6761 `.invalid`).
//! The controller gets CONNECTING, then ERROR with that string, never STARTED, and the
//! configured speech server hears nothing of the call.
//!
//! Needs fork-agent to connect where the START's `url` says (control API `fork_start`'s
//! `destination`, issue 15) and its `[destinations] allow` list to admit these destinations.

use crate::sip_support::*;
use anyhow::Result;

fn unreachable(guid: &str, url: &str, text: &str) -> Result<()> {
    let mut t = SipTest::start_with_speech(&[], QUICK_GIVE_UP)?;
    let run = forked_call(&mut t, &start_body_to(guid, url, ""), 3000)?;
    let st: Vec<_> = run.timed_statuses().into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        states(&st),
        ["CONNECTING", "ERROR"],
        "{st:?}\n{}",
        t.diag(Some(&run))
    );
    assert_eq!(st[1]["request"], "START");
    assert_eq!(st[1]["status"], text, "{st:?}");
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    let summary = t.s.speech_summary()?;
    assert_no_streams(&summary);
    Ok(())
}

#[test]
fn closed_port_is_connection_failed() -> Result<()> {
    // The speech host, a port nothing listens on: the SYN is answered with a reset.
    unreachable(
        "C105ED000001",
        "ws://10.77.3.2:9/stream",
        "Connection failed",
    )
}

#[test]
fn unresolvable_host_is_dns_lookup_failed() -> Result<()> {
    unreachable(
        "D45000000001",
        "ws://asr.invalid:9000/stream",
        "DNS lookup failed",
    )
}
