//! One task per speech server connection: connects (ws), sends queued control and audio frames,
//! and on any failure reconnects with exponential backoff, re-sending `start` (with
//! `resumed: true`) for every live stream so media resumes where it stopped.
//!
//! Queues are bounded: audio that does not fit is dropped and counted (drop-newest: a stalled
//! server gets the audio it can take, and the kernel relay never waits); control messages have
//! their own queue and are never dropped silently.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use speech_proto::{Control, SUBPROTOCOL};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};
use tracing::{info, warn};

use crate::config::SpeechServerConfig;

/// What the media path hands to a connection.
#[derive(Debug)]
pub enum Outgoing {
    Control(Control),
    Audio(Vec<u8>),
}

/// Counters shared with the control API (read-only there).
#[derive(Debug, Default)]
pub struct ConnStats {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub connects: AtomicU64,
    pub failures: AtomicU64,
    pub connected: AtomicU64,
}

/// Sender side held by the media path.
#[derive(Clone)]
pub struct ConnHandle {
    pub name: String,
    audio: mpsc::Sender<Vec<u8>>,
    control: mpsc::UnboundedSender<Control>,
    pub stats: Arc<ConnStats>,
}

impl ConnHandle {
    /// Queue an audio frame; false (and counted) when the queue is full.
    pub fn send_audio(&self, frame: Vec<u8>) -> bool {
        match self.audio.try_send(frame) {
            Ok(()) => true,
            Err(_) => {
                self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn send_control(&self, c: Control) {
        if self.control.send(c).is_err() {
            warn!(server = %self.name, "speech connection task is gone; control message lost");
        }
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Start the connection task for one server.
pub fn spawn(cfg: SpeechServerConfig) -> ConnHandle {
    let (audio_tx, audio_rx) = mpsc::channel(cfg.queue_frames);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let stats = Arc::new(ConnStats::default());
    let handle = ConnHandle {
        name: cfg.name.clone(),
        audio: audio_tx,
        control: control_tx,
        stats: stats.clone(),
    };
    #[allow(clippy::disallowed_methods)] // io shell: one task per connection
    tokio::spawn(run(cfg, audio_rx, control_rx, stats));
    handle
}

async fn run(
    cfg: SpeechServerConfig,
    mut audio: mpsc::Receiver<Vec<u8>>,
    mut control: mpsc::UnboundedReceiver<Control>,
    stats: Arc<ConnStats>,
) {
    // Live streams and their start message, re-sent after a reconnect.
    let mut live: BTreeMap<u32, Control> = BTreeMap::new();
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut req = match cfg.url.as_str().into_client_request() {
            Ok(r) => r,
            Err(e) => {
                warn!(server = %cfg.name, "invalid speech server URL: {e}");
                return;
            }
        };
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let ws = match connect(&cfg, req).await {
            Ok(ws) => ws,
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                warn!(server = %cfg.name, retry_in_ms = backoff.as_millis() as u64, "Connection failed: {e}");
                // Audio queued for a dead server is stale by the time it comes back: drain it
                // (counted), keep control messages (they carry state).
                while let Ok(_f) = audio.try_recv() {
                    stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                }
                while let Ok(c) = control.try_recv() {
                    track(&mut live, &c);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        stats.connects.fetch_add(1, Ordering::Relaxed);
        stats.connected.store(1, Ordering::Relaxed);
        info!(server = %cfg.name, url = %cfg.url, live_streams = live.len(), "speech server connected");
        backoff = BACKOFF_MIN;
        let (mut sink, mut source) = ws.split();
        let mut failed = false;
        for start in live.values() {
            let mut start = start.clone();
            if let Control::Start(s) = &mut start {
                s.resumed = true;
            }
            if sink.send(Message::text(start.to_json())).await.is_err() {
                failed = true;
                break;
            }
        }
        while !failed {
            tokio::select! {
                // Control first: a start must precede the audio queued after it.
                biased;
                c = control.recv() => {
                    let Some(c) = c else { return };
                    track(&mut live, &c);
                    if sink.send(Message::text(c.to_json())).await.is_err() {
                        failed = true;
                    }
                }
                f = audio.recv() => {
                    let Some(f) = f else { return };
                    let len = f.len() as u64;
                    if sink.send(Message::binary(f)).await.is_err() {
                        failed = true;
                    } else {
                        stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                        stats.bytes_sent.fetch_add(len, Ordering::Relaxed);
                    }
                }
                m = source.next() => {
                    match m {
                        Some(Ok(Message::Text(t))) => warn!(server = %cfg.name, "speech server says: {t}"),
                        Some(Ok(Message::Close(c))) => {
                            warn!(server = %cfg.name, "Connection closed by the speech server: {c:?}");
                            failed = true;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            warn!(server = %cfg.name, "TCP Connection closed: {e}");
                            failed = true;
                        }
                        None => {
                            warn!(server = %cfg.name, "TCP Connection closed");
                            failed = true;
                        }
                    }
                }
            }
        }
        stats.connected.store(0, Ordering::Relaxed);
        stats.failures.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(
    cfg: &SpeechServerConfig,
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<Ws, String> {
    let host = req.uri().host().ok_or("URL has no host")?.to_owned();
    let port = req.uri().port_u16().unwrap_or(80);
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("connect to {host}:{port} timed out"))?
    .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .map_err(|e| format!("WebSocket handshake with {}: {e}", cfg.url))?;
    let proto = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if proto != Some(SUBPROTOCOL) {
        return Err(format!(
            "server did not accept subprotocol {SUBPROTOCOL} (answered {proto:?})"
        ));
    }
    Ok(ws)
}

fn track(live: &mut BTreeMap<u32, Control>, c: &Control) {
    match c {
        Control::Start(s) => {
            live.insert(s.stream_id, c.clone());
        }
        Control::Stop(s) => {
            live.remove(&s.stream_id);
        }
        _ => {}
    }
}
