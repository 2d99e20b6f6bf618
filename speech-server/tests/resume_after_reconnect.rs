//! Reconnect: after the first connection dies, a `start` with `"resumed": true` on a new
//! connection continues the same stream (same files, summed counters); a non-resumed start
//! for the same id is refused as a duplicate, and a stopped id stays dead.

mod common;

use common::*;
use futures_util::StreamExt;

#[tokio::test]
async fn resumed_start_continues_the_stream() {
    let mut srv = start_server("resume", &["--abort-after-frames", "2"]).await;
    let mut ws = connect(&srv.addr, &[]).await;
    send_text(&mut ws, start_msg(7, "call-r", "caller", "PCMU", false)).await;
    send_bin(&mut ws, frame(7, 10, 0, &[1, 2])).await;
    send_bin(&mut ws, frame(7, 11, 0, &[3, 4])).await; // server aborts after this one
                                                       // Wait until the server has dropped us, so it has processed everything sent so far.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
    drop(ws);

    let mut ws = connect(&srv.addr, &[]).await;
    // Without "resumed" the id is a duplicate of a stream this process already knows.
    send_text(&mut ws, start_msg(7, "call-r", "caller", "PCMU", false)).await;
    assert_eq!(recv_json(&mut ws).await["code"], "duplicate_start");
    drop(ws);

    let mut ws = connect(&srv.addr, &[]).await;
    send_text(&mut ws, start_msg(7, "call-r", "caller", "PCMA", true)).await;
    send_bin(&mut ws, frame(7, 20, 8, &[5])).await; // baseline restarts: no loss for 12..19
    send_text(&mut ws, stop_msg(7)).await;
    // The id is dead now, on any connection.
    send_text(&mut ws, start_msg(7, "call-r", "caller", "PCMA", true)).await;
    assert_eq!(recv_json(&mut ws).await["code"], "stream_stopped");

    let summary = srv.interrupt().await;
    let s = stream(&summary, 7);
    assert_eq!(s["frames"], 3);
    assert_eq!(s["lost"], 0);
    assert_eq!(s["resumed_starts"], 1);
    assert_eq!(s["codec"], "PCMA");
    assert_eq!(s["stopped"], "call_end");
    assert_eq!(
        read(&srv.out().join("call-r-caller-7.g711")),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(summary["connections"].as_array().map(Vec::len), Some(3));
}
