//! A speech server that refuses the WebSocket upgrade: the controller gets CONNECTING, then
//! ERROR with the reference string the docs promise for the refusal (503: "Connection failed";
//! 401: "Authentication token invalid"), never STARTED; the fork is over, so the speech server
//! holds no stream and a later START would be accepted.

use crate::sip_support::*;
use anyhow::Result;

/// Runs a forked call against a speech server started with `speech_args` and returns the
/// statuses the controller got.
fn statuses_with(speech_args: &[&str], body: &str) -> Result<(SipTest, Vec<serde_json::Value>)> {
    let mut t = SipTest::start_with_speech(speech_args, QUICK_GIVE_UP)?;
    let run = forked_call(&mut t, body, 3000)?;
    let st = run.timed_statuses().into_iter().map(|(_, v)| v).collect();
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    Ok((t, st))
}

fn assert_refused(st: &[serde_json::Value], text: &str, t: &SipTest) {
    assert_eq!(
        states(st),
        ["CONNECTING", "ERROR"],
        "{st:?}\n{}",
        t.diag(None)
    );
    assert_eq!(st[1]["request"], "START", "{st:?}");
    assert_eq!(st[1]["status"], text, "{st:?}");
}

#[test]
fn upgrade_answered_503_is_connection_failed() -> Result<()> {
    let guid = "5E0350350001";
    let (mut t, st) = statuses_with(&["--reject-handshake", "503"], &start_body(guid))?;
    assert_refused(&st, "Connection failed", &t);
    let summary = t.s.speech_summary()?;
    assert_no_streams(&summary);
    Ok(())
}

#[test]
fn upgrade_answered_401_is_authentication_token_invalid() -> Result<()> {
    let guid = "5E0401401001";
    let body = start_body_to(guid, SPEECH_URL, r#","auth-token":"not-the-token""#);
    let (mut t, st) = statuses_with(&["--token", "s3cret"], &body)?;
    assert_refused(&st, "Authentication token invalid", &t);
    let summary = t.s.speech_summary()?;
    assert_no_streams(&summary);
    Ok(())
}
