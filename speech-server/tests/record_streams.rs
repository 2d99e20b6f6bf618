//! End to end: one call (caller + callee streams) with loss, reordering and a duplicate is
//! recorded byte-exactly and summarized; the server exits after the two stops.

mod common;

use common::*;
use futures_util::StreamExt;

#[tokio::test]
async fn records_two_streams_and_summarizes() {
    let mut srv = start_server("record", &["--exit-after-stops", "2"]).await;
    let mut ws = connect(&srv.addr, &[]).await;

    send_text(&mut ws, start_msg(10, "guid-1", "caller", "PCMU", false)).await;
    send_text(&mut ws, start_msg(11, "guid-1", "callee", "PCMA", false)).await;

    // Caller: seq 100..=105 with 102 lost, 104 late (after 105) and 103 duplicated.
    let caller_order: [u16; 6] = [100, 101, 103, 105, 104, 103];
    let mut caller_raw = Vec::new();
    for (i, &seq) in caller_order.iter().enumerate() {
        let payload: Vec<u8> = (0..160).map(|j| (i * 7 + j) as u8).collect();
        caller_raw.extend_from_slice(&payload);
        send_bin(&mut ws, frame(10, seq, 0, &payload)).await;
    }
    // Callee: across the 16-bit wrap, in order.
    let callee_order: [u16; 4] = [65534, 65535, 0, 1];
    let mut callee_raw = Vec::new();
    for &seq in &callee_order {
        let payload = vec![0xD5u8; 80];
        callee_raw.extend_from_slice(&payload);
        send_bin(&mut ws, frame(11, seq, 8, &payload)).await;
    }
    send_text(
        &mut ws,
        r#"{"type":"update","stream_id":10,"metadata":{"agent":"42"}}"#.into(),
    )
    .await;
    send_text(
        &mut ws,
        r#"{"type":"dtmf","stream_id":11,"event":5,"end":true,"duration":800,"timestamp":160}"#
            .into(),
    )
    .await;
    send_text(&mut ws, stop_msg(10)).await;
    send_text(&mut ws, stop_msg(11)).await;

    let summary = srv.wait_summary().await;
    assert_eq!(summary["exit_reason"], "--exit-after-stops reached");
    assert_eq!(summary["stops"], 2);

    let caller = stream(&summary, 10);
    assert_eq!(caller["call_guid"], "guid-1");
    assert_eq!(caller["channel"], "caller");
    assert_eq!(caller["codec"], "PCMU");
    assert_eq!(caller["frames"], 6);
    assert_eq!(caller["payload_bytes"], 960);
    assert_eq!(caller["first_seq"], 100);
    assert_eq!(caller["last_seq"], 103);
    assert_eq!(caller["highest_seq"], 105);
    assert_eq!(caller["lost"], 1, "102 never arrived");
    assert_eq!(caller["out_of_order"], 1, "104 arrived after 105");
    assert_eq!(caller["duplicates"], 1, "103 twice");
    assert_eq!(caller["updates"], 1);
    assert_eq!(caller["metadata"]["agent"], "42");
    assert_eq!(caller["stopped"], "call_end");
    assert_eq!(
        caller["seqs"],
        serde_json::json!([100, 101, 103, 105, 104, 103])
    );

    let callee = stream(&summary, 11);
    assert_eq!(callee["channel"], "callee");
    assert_eq!(callee["codec"], "PCMA");
    assert_eq!(callee["lost"], 0);
    assert_eq!(callee["out_of_order"], 0);
    assert_eq!(callee["dtmf"], 1);
    assert_eq!(callee["first_seq"], 65534);
    assert_eq!(callee["last_seq"], 1);

    // Byte-exact raw payloads, in arrival order, under the documented names.
    let out = srv.out();
    let raw10 = out.join("guid-1-caller-10.g711");
    let raw11 = out.join("guid-1-callee-11.g711");
    assert_eq!(caller["raw"], raw10.display().to_string());
    assert_eq!(read(&raw10), caller_raw);
    assert_eq!(read(&raw11), callee_raw);

    // The WAV holds the decoded samples: 16-bit mono 8 kHz, A-law 0xD5 decodes to +8.
    let mut wav = hound::WavReader::open(out.join("guid-1-callee-11.wav")).expect("wav");
    let spec = wav.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (1, 8000, 16)
    );
    let samples: Vec<i16> = wav.samples::<i16>().map(|s| s.expect("sample")).collect();
    assert_eq!(samples.len(), 320);
    assert!(samples.iter().all(|&s| s == 8));
    let wav10 = hound::WavReader::open(out.join("guid-1-caller-10.wav")).expect("wav");
    assert_eq!(wav10.len(), 960);

    let conns = summary["connections"].as_array().expect("connections");
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0]["handshake_status"], 101);
    assert_eq!(conns[0]["subprotocol_ok"], true);
    assert_eq!(conns[0]["binary_frames"], 10);
    assert_eq!(conns[0]["violations"].as_array().map(Vec::len), Some(0));
    drop(ws.next());
}
