//! One WebSocket connection attempt and, when it succeeds, its writer/reader loop.
//!
//! Connect: resolve the server (or the proxy) and try every DNS answer in order, IPv4 and IPv6,
//! from the configured source address; through an HTTP proxy, open a CONNECT tunnel
//! (RFC 9110 §9.3.6); for `wss://` run the rustls handshake (SNI for names only); then the
//! RFC 6455 §4.1 upgrade with our subprotocol and the bearer token (tungstenite validates
//! `Sec-WebSocket-Accept`). Each failure is classified as a [`ConnFailure`] so the core can
//! report the reference's error string.
//!
//! Run: send queued frames in order (control and audio share one queue, so `start` always
//! precedes the audio after it), read what the server sends, and end on a close request, a
//! server Close, a transport error, or the first frame the server may not send. A blocked write
//! (stalled server) never hides a close request. Reports [`ConnEvent`]s to the service task.
//!
//! What the server may send is decided by `speech_proto::check_server_text` (an `error`
//! message, at most `MAX_SERVER_MESSAGE` bytes, which tungstenite also enforces while
//! reading); framing errors tungstenite finds are mapped to a `ServerViolation` here. On a
//! violation the connection is closed at once (Close with the violation's status code) and
//! reported as [`ConnFailure::Protocol`]: the core counts it and decides about reconnecting.
//! Valid `error` messages are counted and logged at most once per [`ERROR_LOG_INTERVAL`].

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::{Sink, SinkExt, StreamExt};
use speech_proto::{ServerViolation, MAX_SERVER_MESSAGE, SUBPROTOCOL};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::{mpsc, oneshot},
};
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest,
        error::ProtocolError,
        http::HeaderValue,
        protocol::{frame::coding::CloseCode, CloseFrame, WebSocketConfig},
        Message,
    },
    WebSocketStream,
};
use tracing::{debug, warn};

use crate::core::{
    session::{ConnFailure, ConnId, ConnInfo},
    ws_url::WsUrl,
};

/// Where and how one pool connects.
#[derive(Debug)]
pub struct Target {
    /// Profile name (logs).
    pub name: String,
    /// Server URL.
    pub url: WsUrl,
    /// Bearer token.
    pub token: Option<String>,
    /// CONNECT proxy (host, port).
    pub proxy: Option<(String, u16)>,
    /// Local address to bind.
    pub source: Option<IpAddr>,
    /// TLS client configuration for `wss://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Bound on one attempt (the pool also aborts it).
    pub connect_timeout: Duration,
}

/// A frame for the connection.
#[derive(Debug)]
pub enum Outgoing {
    /// Control message (JSON text).
    Text(String),
    /// Audio frame.
    Binary(Vec<u8>),
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Outgoing::Text(t) => t.len(),
            Outgoing::Binary(b) => b.len(),
        }
    }
}

/// Frames written with one flush at most (bounds the time a stalled close request waits).
const MAX_BATCH: usize = 64;

/// At most one log line per connection per interval for the server's `error` messages (the
/// rest are counted): a server must not be able to fill the disk through our log.
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Reason tungstenite puts in the Close it substitutes for a Close with a reserved or invalid
/// status code (tungstenite 0.30 `WebSocketContext::do_close`, "Protocol violation"). It hands
/// us only the substitute, so this is the one way to tell a bad close from a server's 1002.
const SUBSTITUTED_CLOSE_REASON: &str = "Protocol violation";

/// What a connection task reports.
#[derive(Debug)]
pub enum ConnEvent {
    /// The upgrade completed.
    Connected {
        /// Connection.
        conn: ConnId,
        /// Addresses and TLS details.
        info: ConnInfo,
    },
    /// The attempt failed or the connection ended.
    Closed {
        /// Connection.
        conn: ConnId,
        /// Classification.
        failure: ConnFailure,
        /// Detail for the log.
        detail: String,
    },
}

/// Counters of one connection (read by `show` and metrics).
#[derive(Debug, Default)]
pub struct ConnCounters {
    /// Frames written.
    pub frames_sent: AtomicU64,
    /// Bytes written (WebSocket payloads).
    pub bytes_sent: AtomicU64,
    /// Audio frames still queued when the connection ended (lost with it).
    pub dropped_on_close: AtomicU64,
    /// Valid `error` messages the server sent (docs/speech-protocol.md §4.7).
    pub server_errors: AtomicU64,
}

/// The service's side of one connection task.
#[derive(Debug)]
pub struct ConnTx {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Frames queued and not yet taken by the writer.
    pub backlog: Arc<AtomicUsize>,
    /// Counters.
    pub counters: Arc<ConnCounters>,
    close: Option<oneshot::Sender<()>>,
}

impl ConnTx {
    /// Queues a frame (the service has admitted it).
    pub fn send(&self, item: Outgoing) {
        self.backlog.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(item).is_err() {
            // The task already ended; its Closed event is on the way.
            self.backlog.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Asks the task to close (or abort the attempt); it then reports `Closed(Local)`.
    pub fn close(&mut self) {
        if let Some(c) = self.close.take() {
            let _ = c.send(());
        }
    }
}

/// Starts a connection attempt for `conn`.
pub fn spawn(
    conn: ConnId,
    target: Arc<Target>,
    events: mpsc::UnboundedSender<ConnEvent>,
    counters: Arc<ConnCounters>,
    server: Arc<ConnCounters>,
) -> ConnTx {
    let (tx, rx) = mpsc::unbounded_channel();
    let (close_tx, close_rx) = oneshot::channel();
    let backlog = Arc::new(AtomicUsize::new(0));
    let handle = ConnTx {
        tx,
        backlog: backlog.clone(),
        counters: counters.clone(),
        close: Some(close_tx),
    };
    tokio::spawn(async move {
        let counters = [&*counters, &*server];
        let (failure, detail) = run(conn, &target, rx, close_rx, &backlog, counters, &events).await;
        let _ = events.send(ConnEvent::Closed {
            conn,
            failure,
            detail,
        });
    });
    handle
}

type Failure = (ConnFailure, String);

async fn run(
    conn: ConnId,
    t: &Target,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    mut close_rx: oneshot::Receiver<()>,
    backlog: &AtomicUsize,
    counters: [&ConnCounters; 2],
    events: &mpsc::UnboundedSender<ConnEvent>,
) -> Failure {
    let attempt = tokio::time::timeout(t.connect_timeout, connect(t));
    let connected = tokio::select! {
        r = attempt => match r {
            Ok(r) => r,
            Err(_) => Err((ConnFailure::Tcp, format!("connection attempt timed out after {:?}", t.connect_timeout))),
        },
        _ = &mut close_rx => return (ConnFailure::Local, "attempt aborted".into()),
    };
    let end = match connected {
        Err(f) => return f,
        Ok((Stream::Plain(ws), info)) => {
            let _ = events.send(ConnEvent::Connected { conn, info });
            pump(*ws, &mut rx, &mut close_rx, backlog, counters, &t.name).await
        }
        Ok((Stream::Tls(ws), info)) => {
            let _ = events.send(ConnEvent::Connected { conn, info });
            pump(*ws, &mut rx, &mut close_rx, backlog, counters, &t.name).await
        }
    };
    // Whatever is still queued dies with the connection: count the audio.
    rx.close();
    while let Ok(item) = rx.try_recv() {
        backlog.fetch_sub(1, Ordering::Relaxed);
        if matches!(item, Outgoing::Binary(_)) {
            counters[0].dropped_on_close.fetch_add(1, Ordering::Relaxed);
        }
    }
    end
}

async fn pump<S>(
    ws: WebSocketStream<S>,
    rx: &mut mpsc::UnboundedReceiver<Outgoing>,
    close_rx: &mut oneshot::Receiver<()>,
    backlog: &AtomicUsize,
    counters: [&ConnCounters; 2],
    name: &str,
) -> Failure
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut source) = ws.split();
    // Reused for every batch: no allocation per wakeup on the media path.
    let mut batch: Vec<Outgoing> = Vec::with_capacity(MAX_BATCH);
    let mut error_log = ErrorLog::default();
    loop {
        tokio::select! {
            biased;
            _ = &mut *close_rx => {
                let close = Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }));
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
                return (ConnFailure::Local, "closed locally".into());
            }
            item = rx.recv() => {
                let Some(item) = item else {
                    return (ConnFailure::Local, "service gone".into());
                };
                // Whatever else is queued already goes out with it: one flush (one write
                // syscall, one TLS record run) for the batch instead of one per frame. Nothing
                // waits for a batch to fill, so latency is unchanged.
                batch.push(item);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                let frames = batch.len() as u64;
                let bytes = batch.iter().map(Outgoing::len).sum::<usize>() as u64;
                let write = async {
                    for item in batch.drain(..) {
                        let msg = match item {
                            Outgoing::Text(t) => Message::text(t),
                            Outgoing::Binary(b) => Message::binary(b),
                        };
                        sink.feed(msg).await?;
                    }
                    sink.flush().await
                };
                // A stalled server blocks this write: keep the close request reachable.
                let r = tokio::select! {
                    r = write => r,
                    _ = &mut *close_rx => return (ConnFailure::Local, "closed locally while stalled".into()),
                };
                if let Err(e) = r {
                    return (ConnFailure::Transport, format!("write failed: {e}"));
                }
                // Frames in a batch that is still being written count as queued.
                backlog.fetch_sub(frames as usize, Ordering::Relaxed);
                for c in counters {
                    c.frames_sent.fetch_add(frames, Ordering::Relaxed);
                    c.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                }
            }
            m = source.next() => {
                let violation = match m {
                    Some(Ok(Message::Close(Some(f))))
                        if f.code == CloseCode::Protocol && f.reason.as_str() == SUBSTITUTED_CLOSE_REASON =>
                    {
                        (ServerViolation::BadClose, "close with a reserved or invalid status code".to_owned())
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                        return (ConnFailure::RemoteClose { code }, format!("server closed: {frame:?}"));
                    }
                    Some(Ok(Message::Text(t))) => match speech_proto::check_server_text(&t) {
                        Ok(e) => {
                            for c in counters {
                                c.server_errors.fetch_add(1, Ordering::Relaxed);
                            }
                            error_log.log(name, &e);
                            continue;
                        }
                        Err(v) => (v, format!("text {:?}", preview(t.as_bytes()))),
                    },
                    Some(Ok(Message::Binary(b))) => (
                        ServerViolation::BinaryFrame,
                        format!("{} bytes {:?}", b.len(), preview(&b)),
                    ),
                    // Ping is answered by tungstenite; a Pong carries nothing; raw frames are
                    // never produced by reading.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Err(e)) => match read_violation(&e) {
                        Some(v) => (v, e.to_string()),
                        None => return (ConnFailure::Transport, format!("read failed: {e}")),
                    },
                    None => return (ConnFailure::Transport, "connection reset (no close frame)".into()),
                };
                let (violation, detail) = violation;
                close_for(&mut sink, violation).await;
                return (
                    ConnFailure::Protocol { violation },
                    format!("speech protocol error ({violation}): {detail}"),
                );
            }
        }
    }
}

/// Which read errors are the server's fault. Everything else (EOF, reset, IO) is a transport
/// failure. tungstenite reports a TCP close without a Close frame as a protocol error
/// (`ResetWithoutClosingHandshake`): that one is a TCP closure.
fn read_violation(e: &tokio_tungstenite::tungstenite::Error) -> Option<ServerViolation> {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Capacity(_) => Some(ServerViolation::TooLarge),
        Error::Utf8(_) | Error::AttackAttempt => Some(ServerViolation::BadFrame),
        Error::Protocol(p) => match p {
            ProtocolError::InvalidCloseSequence => Some(ServerViolation::BadClose),
            ProtocolError::NonZeroReservedBits
            | ProtocolError::MaskedFrameFromServer
            | ProtocolError::FragmentedControlFrame
            | ProtocolError::ControlFrameTooBig
            | ProtocolError::UnknownControlFrameType(_)
            | ProtocolError::UnknownDataFrameType(_)
            | ProtocolError::UnexpectedContinueFrame
            | ProtocolError::ExpectedFragment(_)
            | ProtocolError::InvalidOpcode(_)
            | ProtocolError::ReceivedAfterClosing => Some(ServerViolation::BadFrame),
            _ => None,
        },
        _ => None,
    }
}

/// Fails the connection (RFC 6455 §7.1.7): a Close with the violation's status code, bounded
/// in time (the server may not read); errors are moot, the connection is dropped next.
async fn close_for<K>(sink: &mut K, violation: ServerViolation)
where
    K: Sink<Message> + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(violation.close_code()),
        reason: violation.name().into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if sink.send(Message::Close(Some(frame))).await.is_err() {
            // Already closing (the server's Close, even a bad one, was answered by
            // tungstenite): flush that answer instead.
            let _ = sink.close().await;
        }
    })
    .await;
}

/// The start of a server frame for the log, escaped by `{:?}`.
fn preview(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned()
}

/// Rate limit of the server's `error` messages in the log.
#[derive(Default)]
struct ErrorLog {
    last: Option<tokio::time::Instant>,
    skipped: u64,
}

impl ErrorLog {
    fn log(&mut self, server: &str, e: &speech_proto::ErrorMsg) {
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|at| now < at + ERROR_LOG_INTERVAL) {
            self.skipped += 1;
            return;
        }
        self.last = Some(now);
        let skipped = std::mem::take(&mut self.skipped);
        let message = preview(e.message.as_bytes());
        let code = preview(e.code.as_bytes());
        warn!(%server, stream = ?e.stream_id, ?code, ?message, skipped,
            "speech server reports an error");
    }
}

enum Stream {
    Plain(Box<WebSocketStream<TcpStream>>),
    Tls(Box<WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
}

async fn connect(t: &Target) -> Result<(Stream, ConnInfo), Failure> {
    let url = &t.url;
    let tcp = match &t.proxy {
        Some((host, port)) => {
            let addrs = resolve(host, *port)
                .await
                .map_err(|e| (ConnFailure::ProxyDns, format!("proxy {host}: {e}")))?;
            let mut tcp = connect_any(&addrs, t.source).await?;
            proxy_connect(&mut tcp, &url.host_port()).await?;
            tcp
        }
        None => {
            let addrs = resolve(&url.host, url.port)
                .await
                .map_err(|e| (ConnFailure::Dns, format!("{}: {e}", url.host)))?;
            connect_any(&addrs, t.source).await?
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut info = ConnInfo {
        local: tcp.local_addr().ok().map(|a| a.to_string()),
        peer: tcp.peer_addr().ok().map(|a| a.to_string()),
        connected_at: unix_now(),
        ..ConnInfo::default()
    };
    let mut req = url.to_url().into_client_request().map_err(|e| {
        (
            ConnFailure::Http { status: 0 },
            format!("bad request URL: {e}"),
        )
    })?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    if let Some(token) = &t.token {
        let v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            (
                ConnFailure::Http { status: 0 },
                "token is not a valid header value".into(),
            )
        })?;
        req.headers_mut().insert("Authorization", v);
    }
    if url.secure {
        let cfg = t.tls.clone().ok_or_else(|| {
            (
                ConnFailure::Tls,
                "wss:// without a TLS configuration".to_owned(),
            )
        })?;
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| (ConnFailure::Tls, format!("bad server name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| (ConnFailure::Tls, format!("TLS handshake: {e}")))?;
        {
            let (_, c) = tls.get_ref();
            info.tls_version = c.protocol_version().map(|v| format!("{v:?}"));
            info.cipher_suite = c
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()));
        }
        let ws = upgrade(req, tls).await?;
        Ok((Stream::Tls(Box::new(ws)), info))
    } else {
        Ok((Stream::Plain(Box::new(upgrade(req, tcp).await?)), info))
    }
}

async fn upgrade<S>(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
    stream: S,
) -> Result<WebSocketStream<S>, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Error;
    // Bounds what we buffer of one server message (tungstenite applies it while reading only).
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_SERVER_MESSAGE))
        .max_frame_size(Some(MAX_SERVER_MESSAGE));
    let (ws, resp) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
        .await
        .map_err(|e| match e {
            Error::Http(resp) => (
                ConnFailure::Http {
                    status: resp.status().as_u16(),
                },
                format!("upgrade refused: HTTP {}", resp.status()),
            ),
            Error::Io(e) => (ConnFailure::Tcp, format!("upgrade: {e}")),
            other => (ConnFailure::Http { status: 0 }, format!("upgrade: {other}")),
        })?;
    let proto = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if proto != Some(SUBPROTOCOL) {
        return Err((
            ConnFailure::Http { status: 101 },
            format!("server did not accept subprotocol {SUBPROTOCOL} (answered {proto:?})"),
        ));
    }
    Ok(ws)
}

async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(std::io::Error::other("no addresses"));
    }
    Ok(addrs)
}

/// Tries every address in resolver order (the reference tries only the first; trying all is
/// what RFC 6555 clients do without the racing).
async fn connect_any(addrs: &[SocketAddr], source: Option<IpAddr>) -> Result<TcpStream, Failure> {
    let mut errors = Vec::new();
    for &addr in addrs {
        if source.is_some_and(|s| s.is_ipv4() != addr.is_ipv4()) {
            errors.push(format!("{addr}: source address family differs"));
            continue;
        }
        let sock = match if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        } {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("{addr}: {e}"));
                continue;
            }
        };
        if let Some(src) = source {
            if let Err(e) = sock.bind(SocketAddr::new(src, 0)) {
                errors.push(format!("{addr}: bind {src}: {e}"));
                continue;
            }
        }
        match sock.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                debug!(%addr, "connect failed: {e}");
                errors.push(format!("{addr}: {e}"));
            }
        }
    }
    Err((ConnFailure::Tcp, errors.join("; ")))
}

/// Longest proxy answer head accepted.
const PROXY_HEAD_MAX: usize = 8192;

/// HTTP CONNECT tunnel (RFC 9110 §9.3.6): any 2xx opens it.
async fn proxy_connect(tcp: &mut TcpStream, authority: &str) -> Result<(), Failure> {
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| (ConnFailure::Tcp, format!("proxy write: {e}")))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: nothing after the blank line may be consumed (it belongs to TLS/HTTP).
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= PROXY_HEAD_MAX {
            return Err((
                ConnFailure::Proxy { status: 0 },
                "proxy answer too long".into(),
            ));
        }
        let n = tcp
            .read(&mut byte)
            .await
            .map_err(|e| (ConnFailure::Tcp, format!("proxy read: {e}")))?;
        if n == 0 {
            return Err((
                ConnFailure::Proxy { status: 0 },
                "proxy closed the connection".into(),
            ));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    if !(200..300).contains(&status) {
        let line = text.lines().next().unwrap_or("").to_owned();
        return Err((
            ConnFailure::Proxy { status },
            format!("proxy refused CONNECT: {line}"),
        ));
    }
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
