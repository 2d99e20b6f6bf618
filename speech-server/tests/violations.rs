//! Rule violations: per-stream errors are answered with an `error` frame and the connection
//! stays usable; a malformed frame gets an `error` frame and a 1002 close.

mod common;

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn per_stream_errors_keep_the_connection() {
    let mut srv = start_server("violations", &["--exit-after-stops", "1"]).await;
    let mut ws = connect(&srv.addr, &[]).await;

    send_bin(&mut ws, frame(1, 1, 0, &[0xFF])).await;
    let e = recv_json(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "not_started");
    assert_eq!(e["stream_id"], 1);

    send_text(&mut ws, start_msg(1, "g", "caller", "G729", false)).await;
    assert_eq!(recv_json(&mut ws).await["code"], "unsupported_codec");

    send_text(&mut ws, start_msg(1, "g", "caller", "PCMU", false)).await;
    send_text(&mut ws, start_msg(1, "g", "caller", "PCMU", false)).await;
    assert_eq!(recv_json(&mut ws).await["code"], "duplicate_start");

    send_text(
        &mut ws,
        r#"{"type":"resume","stream_id":1,"codec":"PCMU"}"#.into(),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await["code"], "not_paused");

    send_text(
        &mut ws,
        r#"{"type":"pause","stream_id":1,"reason":"hold"}"#.into(),
    )
    .await;
    send_bin(&mut ws, frame(1, 2, 0, &[0xFF])).await;
    assert_eq!(recv_json(&mut ws).await["code"], "audio_while_paused");

    send_bin(&mut ws, frame(1, 3, 0, &[])).await;
    assert_eq!(recv_json(&mut ws).await["code"], "empty_payload");

    send_text(&mut ws, stop_msg(1)).await;
    let summary = srv.wait_summary().await;
    let s = stream(&summary, 1);
    assert_eq!(s["frames"], 0);
    assert_eq!(s["pauses"], 1);
    let v = summary["connections"][0]["violations"]
        .as_array()
        .expect("violations");
    let codes: Vec<&str> = v
        .iter()
        .filter_map(|x| x.as_str())
        .filter_map(|x| x.split(':').next())
        .collect();
    assert_eq!(
        codes,
        [
            "not_started",
            "unsupported_codec",
            "duplicate_start",
            "not_paused",
            "audio_while_paused",
            "empty_payload"
        ]
    );
}

async fn expect_protocol_close(ws: &mut Ws) {
    let e = recv_json(ws).await;
    assert_eq!(e["type"], "error");
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
            .expect("a frame")
            .expect("no transport error");
        if let Message::Close(Some(f)) = msg {
            assert_eq!(f.code, CloseCode::Protocol);
            return;
        }
    }
}

#[tokio::test]
async fn malformed_json_closes_with_1002() {
    let mut srv = start_server("malformed-json", &[]).await;
    let mut ws = connect(&srv.addr, &[]).await;
    send_text(&mut ws, "{not json".into()).await;
    expect_protocol_close(&mut ws).await;
    let summary = srv.interrupt().await;
    let conn = &summary["connections"][0];
    assert!(conn["violations"][0]
        .as_str()
        .is_some_and(|v| v.starts_with("malformed_json")));
    assert!(conn["ended"]
        .as_str()
        .is_some_and(|e| e.starts_with("server closed: 1002")));
}

#[tokio::test]
async fn malformed_audio_header_closes_with_1002() {
    let mut srv = start_server("malformed-audio", &[]).await;
    let mut ws = connect(&srv.addr, &[]).await;
    send_text(&mut ws, start_msg(1, "g", "caller", "PCMU", false)).await;
    let mut f = frame(1, 1, 0, &[1, 2]);
    f[0] = b'Y';
    send_bin(&mut ws, f).await;
    expect_protocol_close(&mut ws).await;
    let summary = srv.interrupt().await;
    assert!(summary["connections"][0]["violations"][0]
        .as_str()
        .is_some_and(|v| v.starts_with("malformed_audio")));
}
