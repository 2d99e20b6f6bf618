//! Misbehaviour switches: close 1001, abort without close frame, stall (stop reading).

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn close_after_frames_sends_1001() {
    let mut srv = start_server("close", &["--close-after-frames", "3"]).await;
    let mut ws = connect(&srv.addr, &[]).await;
    send_text(&mut ws, start_msg(1, "g", "caller", "PCMU", false)).await;
    for seq in 0..3 {
        send_bin(&mut ws, frame(1, seq, 0, &[0xFF; 160])).await;
    }
    let msg = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("close in time")
        .expect("a frame")
        .expect("no transport error");
    match msg {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let summary = srv.interrupt().await;
    assert_eq!(stream(&summary, 1)["frames"], 3);
    assert_eq!(stream(&summary, 1)["stopped"], serde_json::Value::Null);
}

#[tokio::test]
async fn abort_after_frames_drops_tcp_without_close() {
    let mut srv = start_server("abort", &["--abort-after-frames", "2"]).await;
    let mut ws = connect(&srv.addr, &[]).await;
    send_text(&mut ws, start_msg(1, "g", "caller", "PCMU", false)).await;
    send_bin(&mut ws, frame(1, 0, 0, &[0xFF; 160])).await;
    send_bin(&mut ws, frame(1, 1, 0, &[0xFF; 160])).await;
    let end = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("end in time");
    match end {
        None | Some(Err(_)) => {}
        Some(Ok(m)) => panic!("expected the stream to end without a close frame, got {m:?}"),
    }
    let summary = srv.interrupt().await;
    assert!(summary["connections"][0]["ended"]
        .as_str()
        .is_some_and(|e| e.contains("aborted")));
}

#[tokio::test]
async fn stall_after_frames_stops_reading() {
    let mut srv = start_server("stall", &["--stall-after-frames", "1"]).await;
    let mut ws = connect(&srv.addr, &[]).await;
    send_text(&mut ws, start_msg(1, "g", "caller", "PCMU", false)).await;
    // 64 KiB frames: after the first one the server reads nothing, so the socket buffers
    // (a few MiB on loopback) fill and a send eventually cannot complete.
    let payload = vec![0xFFu8; 64 * 1024];
    let mut sent = 0u32;
    let blocked = loop {
        let f = frame(1, sent as u16, 0, &payload);
        match tokio::time::timeout(Duration::from_secs(2), ws.send(Message::Binary(f.into()))).await
        {
            Err(_) => break true,
            Ok(r) => r.expect("send while buffers have room"),
        }
        sent += 1;
        if sent > 2048 {
            break false; // 128 MiB accepted: the server is not stalled
        }
    };
    assert!(blocked, "sends never blocked after {sent} frames");
    let summary = srv.interrupt().await;
    assert_eq!(summary["connections"][0]["binary_frames"], 1);
    assert_eq!(stream(&summary, 1)["frames"], 1);
}
