//! Shared helpers for the speech-server integration tests: start the real binary on a free
//! port, connect a tokio-tungstenite client with the v1 subprotocol, build frames, and read
//! the JSON summary after the server exits.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use speech_proto::{encode_audio, AudioHeader, SUBPROTOCOL};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Upper bound for any single wait in these tests; a hang fails instead of blocking CI.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
    pub summary: PathBuf,
}

/// A fresh, empty directory under the target dir (tests run in parallel).
pub fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("speech-server-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Starts the binary with `extra` args on 127.0.0.1:0 and waits for its address.
pub async fn start_server(name: &str, extra: &[&str]) -> Server {
    let dir = scratch(name);
    let summary = dir.join("summary.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_speech-server"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--out-dir")
        .arg(dir.join("out"))
        .arg("--summary")
        .arg(&summary)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn speech-server");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("server printed its address in time")
        .expect("read stdout")
        .expect("a first line");
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    // Keep draining stdout so the summary print never blocks on a full pipe.
    #[allow(clippy::disallowed_methods)] // test harness task, not a core
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server {
        child,
        addr,
        dir,
        summary,
    }
}

impl Server {
    /// Waits for the process to exit by itself and returns the summary.
    pub async fn wait_summary(&mut self) -> Value {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("server exited in time")
            .expect("wait");
        assert!(status.success(), "server exit status {status}");
        let text = std::fs::read_to_string(&self.summary).expect("summary file");
        serde_json::from_str(&text).expect("summary is JSON")
    }

    /// Sends SIGINT and returns the summary.
    pub async fn interrupt(&mut self) -> Value {
        let pid = self.child.id().expect("running");
        let st = std::process::Command::new("kill")
            .arg("-INT")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(st.success());
        self.wait_summary().await
    }

    pub fn out(&self) -> PathBuf {
        self.dir.join("out")
    }
}

/// Upgrade request for `addr` offering the v1 subprotocol, plus optional extra headers.
pub fn request(
    addr: &str,
    scheme: &str,
    headers: &[(&'static str, &str)],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("{scheme}://{addr}/fork")
        .into_client_request()
        .expect("valid url");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    for (k, v) in headers {
        req.headers_mut()
            .insert(*k, HeaderValue::from_str(v).expect("header value"));
    }
    req
}

/// Connects with the v1 subprotocol and checks the server echoed it.
pub async fn connect(addr: &str, headers: &[(&'static str, &str)]) -> Ws {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let (ws, resp) = tokio_tungstenite::client_async(request(addr, "ws", headers), tcp)
        .await
        .expect("websocket handshake");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(SUBPROTOCOL),
        "server must echo the subprotocol"
    );
    ws
}

pub fn start_msg(sid: u32, guid: &str, channel: &str, codec: &str, resumed: bool) -> String {
    json!({
        "type": "start", "version": 1, "stream_id": sid, "call_guid": guid,
        "call_id": format!("{guid}@test"), "channel": channel, "from": "sip:alice@a",
        "to": "sip:bob@b", "codec": codec, "sample_rate": 8000, "ptime_ms": 20,
        "metadata": {"test": true}, "resumed": resumed,
    })
    .to_string()
}

pub fn stop_msg(sid: u32) -> String {
    json!({"type": "stop", "stream_id": sid, "reason": "call_end"}).to_string()
}

/// One audio frame: payload is `len` bytes, each `fill`.
pub fn frame(sid: u32, seq: u16, pt: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_audio(
        &mut out,
        &AudioHeader {
            stream_id: sid,
            seq,
            payload_type: pt,
            flags: 0,
            timestamp: u32::from(seq).wrapping_mul(160),
        },
        payload,
    );
    out
}

pub async fn send_text(ws: &mut Ws, text: String) {
    ws.send(Message::Text(text.into()))
        .await
        .expect("send text");
}

pub async fn send_bin(ws: &mut Ws, data: Vec<u8>) {
    ws.send(Message::Binary(data.into()))
        .await
        .expect("send binary");
}

/// Next text frame as JSON (fails on timeout or any other frame kind).
pub async fn recv_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("no transport error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON text frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The summary entry of a stream.
pub fn stream(summary: &Value, sid: u32) -> &Value {
    summary["streams"]
        .as_array()
        .expect("streams array")
        .iter()
        .find(|s| s["stream_id"] == sid)
        .unwrap_or_else(|| panic!("stream {sid} in summary {summary:#}"))
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
