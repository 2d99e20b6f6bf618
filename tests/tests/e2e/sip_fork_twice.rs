//! One call forked twice (`[forking] max_per_call = 2`): "transcription" to the configured
//! speech server and "recording" to a second speech-server process, each START with its own
//! GUID. Both record the call's audio sample-exact over the time both run; STOP of the
//! transcription leaves the recording streaming; BYE ends the recording.
//!
//! Needs fork-agent to fan one kernel tap out to several forks' streams (issue 15, item 1) and
//! sip-agent to accept further STARTs with other GUIDs.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use crate::sip_support::*;
use anyhow::{Context, Result};

const TRANSCRIPTION: &str = "7A0000000001";
const RECORDING: &str = "7B0000000002";
const RECORDER: &str = "10.77.3.2:9100";

#[test]
fn a_call_forked_to_transcription_and_recording() -> Result<()> {
    let mut t = SipTest::start_with_speech_and(&[], "", "[forking]\nmax_per_call = 2\n")?;
    let summary_path = spawn_speech_server(&mut t, "speech-recorder", RECORDER, &[])?;
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let first = start_body(TRANSCRIPTION);
    let second = start_body_to(RECORDING, &format!("ws://{RECORDER}/record"), "");
    let stop = format!(r#"{{"type":"STOP","call-guid":"{TRANSCRIPTION}"}}"#);
    let mut keys = PCMA.to_vec();
    keys.extend([
        ("fork_body", first.as_str()),
        ("fork2_body", second.as_str()),
        ("stop_body", stop.as_str()),
    ]);
    let run = t.caller("uac_two_forks.xml", &keys, &["-d", "2500"])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));

    // Each fork's statuses carry its own GUID.
    let st: Vec<_> = run.timed_statuses().into_iter().map(|(_, v)| v).collect();
    let of = |guid: &str| -> Vec<String> {
        st.iter()
            .filter(|s| s["call-guid"] == guid)
            .filter_map(|s| s["state"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        of(TRANSCRIPTION),
        ["CONNECTING", "STARTED", "STOPPED"],
        "{st:?}\n{}",
        t.diag(Some(&run))
    );
    assert_eq!(of(RECORDING), ["CONNECTING", "STARTED"], "{st:?}");
    t.wait_callee_done()?;
    t.wait_no_flows()?;

    let recorder = read_summary(&mut t, "speech-recorder", &summary_path)?;
    let transcriber = t.s.speech_summary()?;
    for ch in ["caller", "callee"] {
        let tr = stream_of(&transcriber, ch);
        let rec = stream_of(&recorder, ch);
        assert_eq!(
            (tr["call_guid"].as_str(), rec["call_guid"].as_str()),
            (Some(TRANSCRIPTION), Some(RECORDING))
        );
        assert_ne!(
            tr["stream_id"], rec["stream_id"],
            "each fork has its own ids"
        );
        // The transcription stopped on request; the recording streamed on until the BYE.
        assert_eq!(tr["stopped"], "request", "{tr}");
        assert_eq!(rec["stopped"], "call_end", "{rec}");
        // The recording heard packets after the transcription's stop (sequence, not timing).
        let seq = |s: &serde_json::Value| s["highest_seq"].as_u64().unwrap_or(0);
        let ahead = (seq(&rec).wrapping_sub(seq(&tr)) & 0xffff) as u16;
        assert!(
            frames(&tr) > 0 && (1..0x8000).contains(&ahead),
            "{ch}: transcription {tr}\nrecording {rec}"
        );
        // Sample-exact while both ran: the transcription's last second is in the recording,
        // byte for byte, and the recording's first half second is in the transcription.
        let tr_raw = std::fs::read(tr["raw"].as_str().context("raw path")?)?;
        let rec_raw = std::fs::read(rec["raw"].as_str().context("raw path")?)?;
        let tail = &tr_raw[tr_raw.len().saturating_sub(8000)..];
        let head = &rec_raw[..rec_raw.len().min(4000)];
        assert!(
            tail.len() == 8000 && contains(&rec_raw, tail),
            "{ch}: {tr}\n{rec}"
        );
        assert!(
            head.len() == 4000 && contains(&tr_raw, head),
            "{ch}: {tr}\n{rec}"
        );
    }
    Ok(())
}

fn frames(s: &serde_json::Value) -> u64 {
    s["frames"].as_u64().unwrap_or(0)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
