//! The fork goes where the START says: a START naming another speech server (another port,
//! path and a token of its own) reaches that server with that token, and the controller gets
//! CONNECTING then STARTED; the server fork-agent's config names gets nothing.
//!
//! Needs fork-agent to connect where the START's `url` says (control API `fork_start`'s
//! `destination`, issue 15) and its `[destinations] allow` list to admit it.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use crate::sip_support::*;
use anyhow::Result;

const GUID: &str = "DE5700000001";
const OTHER: &str = "10.77.3.2:9100";

#[test]
fn start_url_and_token_pick_the_speech_server() -> Result<()> {
    let mut t = SipTest::start_with_speech(&[], QUICK_GIVE_UP)?;
    let summary_path = spawn_speech_server(&mut t, "speech-other", OTHER, &["--token", "0th3r"])?;
    let body = start_body_to(
        GUID,
        &format!("ws://{OTHER}/elsewhere"),
        r#","auth-token":"0th3r","profile":"xdpfork""#,
    );
    let run = forked_call(&mut t, &body, 3000)?;
    let st: Vec<_> = run.timed_statuses().into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        states(&st),
        ["CONNECTING", "STARTED"],
        "{st:?}\n{}",
        t.diag(Some(&run))
    );
    t.wait_callee_done()?;
    t.wait_no_flows()?;

    let other = read_summary(&mut t, "speech-other", &summary_path)?;
    for ch in ["caller", "callee"] {
        let s = stream_of(&other, ch);
        assert_eq!(s["call_guid"], GUID, "{s}");
        assert!(s["frames"].as_u64() > Some(20), "{s}");
    }
    let conns = other["connections"].as_array().cloned().unwrap_or_default();
    assert!(
        !conns.is_empty() && conns.iter().all(|c| c["token_ok"] == true),
        "the START's token reached the server: {other}"
    );
    let configured = t.s.speech_summary()?;
    assert_no_streams(&configured);
    Ok(())
}
