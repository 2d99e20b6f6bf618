//! A speech server that drops a running fork's connection: with a WebSocket Close 1001 the
//! controller gets RECONNECTING "Connection closed", with the TCP connection dropped without a
//! Close "TCP Connection closed"; fork-agent reconnects and the controller gets STARTED again
//! (no `request`: resumed after reconnect), with the same channel ids. The server closes every
//! connection after a second of audio, so this repeats; the statuses after the first STARTED
//! come at most one per second, and the speech server got `start` again with `resumed`.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use crate::sip_support::*;
use anyhow::Result;

fn seconds(stamp: &str) -> f64 {
    // `YYYY-MM-DD HH:MM:SS.ffffff`, one day at most: the time of day is enough.
    let time = stamp.split(' ').nth(1).unwrap_or_default();
    time.split(':')
        .map(|p| p.parse::<f64>().unwrap_or(0.0))
        .fold(0.0, |acc, p| acc * 60.0 + p)
}

fn drop_and_reconnect(guid: &str, switch: &str, text: &str) -> Result<()> {
    // 100 binary frames: about a second of the call's two streams.
    let mut t = SipTest::start_with_speech(&[switch, "100"], QUICK_GIVE_UP)?;
    let run = forked_call(&mut t, &start_body(guid), 6000)?;
    let st = run.timed_statuses();
    let json: Vec<_> = st.iter().map(|(_, v)| v.clone()).collect();
    let diag = || format!("{json:?}\n{}", t.diag(Some(&run)));
    assert_eq!(states(&json)[..2], ["CONNECTING", "STARTED"], "{}", diag());
    let lost = json
        .iter()
        .position(|s| s["state"] == "RECONNECTING")
        .unwrap_or_else(|| panic!("no RECONNECTING: {}", diag()));
    assert_eq!(json[lost]["status"], text, "{}", diag());
    assert!(json[lost].get("request").is_none(), "{}", diag());
    let back = json[lost..]
        .iter()
        .find(|s| s["state"] == "STARTED")
        .unwrap_or_else(|| panic!("no STARTED after the reconnect: {}", diag()));
    assert!(back.get("request").is_none(), "{}", diag());
    assert_eq!(back["streams"], json[1]["streams"], "{}", diag());
    assert!(
        json.iter().all(|s| s["state"] != "ERROR"),
        "the fork never gave up: {}",
        diag()
    );
    // Connection statuses are paced: one per second per fork.
    for w in st[2..].windows(2) {
        let gap = seconds(&w[1].0) - seconds(&w[0].0);
        assert!(gap >= 0.9, "statuses {gap:.3} s apart: {}", diag());
    }
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    let summary = t.s.speech_summary()?;
    let caller = stream_of(&summary, "caller");
    assert!(caller["resumed_starts"].as_u64() >= Some(1), "{caller}");
    Ok(())
}

#[test]
fn close_1001_reports_connection_closed_then_started_again() -> Result<()> {
    drop_and_reconnect("C1051001AAAA", "--close-after-frames", "Connection closed")
}

#[test]
fn tcp_drop_reports_tcp_connection_closed_then_started_again() -> Result<()> {
    drop_and_reconnect(
        "7C9D0D000001",
        "--abort-after-frames",
        "TCP Connection closed",
    )
}
