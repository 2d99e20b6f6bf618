//! Many connections at once: each task is independent, every stream is recorded completely.

mod common;

use common::*;

const CONNS: u32 = 16;
const FRAMES: u16 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_connections_in_parallel() {
    let stops = (CONNS * 2).to_string();
    let mut srv = start_server("concurrent", &["--exit-after-stops", &stops]).await;
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let addr = srv.addr.clone();
        #[allow(clippy::disallowed_methods)] // test client tasks
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(&addr, &[]).await;
            let (a, b) = (c * 2 + 1, c * 2 + 2);
            let guid = format!("call-{c}");
            send_text(&mut ws, start_msg(a, &guid, "caller", "PCMU", false)).await;
            send_text(&mut ws, start_msg(b, &guid, "callee", "PCMA", false)).await;
            for seq in 0..FRAMES {
                send_bin(&mut ws, frame(a, seq, 0, &[c as u8; 160])).await;
                send_bin(&mut ws, frame(b, seq, 8, &[c as u8; 160])).await;
            }
            send_text(&mut ws, stop_msg(a)).await;
            send_text(&mut ws, stop_msg(b)).await;
            ws
        }));
    }
    let mut sockets = Vec::new();
    for t in tasks {
        sockets.push(t.await.expect("client task"));
    }
    let summary = srv.wait_summary().await;
    assert_eq!(
        summary["connections"].as_array().map(Vec::len),
        Some(CONNS as usize)
    );
    for sid in 1..=CONNS * 2 {
        let s = stream(&summary, sid);
        assert_eq!(s["frames"], u64::from(FRAMES), "stream {sid}");
        assert_eq!(s["lost"], 0, "stream {sid}");
        assert_eq!(s["stopped"], "call_end");
        let c = (sid - 1) / 2;
        let raw = read(std::path::Path::new(s["raw"].as_str().expect("raw path")));
        assert_eq!(raw, vec![c as u8; 160 * FRAMES as usize], "stream {sid}");
    }
    drop(sockets);
}
