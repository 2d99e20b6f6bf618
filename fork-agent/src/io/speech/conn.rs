//! One WebSocket connection attempt and, when it succeeds, its writer/reader loop.
//!
//! Connect: resolve the server (or the proxy) and try every DNS answer in order, IPv4 and IPv6,
//! from the configured source address (for a per-request destination matched by address rules
//! only the answers inside the allowed networks); through an HTTP proxy, open a CONNECT tunnel
//! (RFC 9110 §9.3.6); for `wss://` run the rustls handshake (SNI for names only); then the
//! RFC 6455 §4.1 upgrade with the subprotocol and headers the destination's dialect asks for
//! (tungstenite validates `Sec-WebSocket-Accept`). Each failure is classified as a
//! [`ConnFailure`] so the core can report the reference's error string.
//!
//! Run: the service queues its own language ([`Outgoing`]: control messages, 16-byte-header
//! audio frames, end-of-batch marks) on the connection's bounded [`ConnQueue`], and the
//! connection's [`Dialect`] turns it into the destination's frames. Control and audio share one
//! queue, so `start` always precedes the audio after it. Each wake-up takes everything queued
//! and writes it with one flush, reading the clock once for the batch; that read also closes
//! each audio frame's packet → frame latency (metrics). The task reads what the server sends, and ends on a close request (after
//! writing what was queued before it and the dialect's goodbye), a server Close, a transport
//! error, or the first frame the server may not send. A blocked write (stalled server) never
//! hides a close request for more than [`CLOSE_FLUSH`]. Reports [`ConnEvent`]s to the service
//! task, among them [`ConnEvent::Accepted`] when a dialect that confirms sessions got the
//! server's confirmation.
//!
//! What the server may send is decided by the dialect (`speech_proto::Dialect::on_server_text`
//! / `on_server_binary`; at most `Profile::max_server_message` bytes, which tungstenite enforces
//! while reading); framing errors tungstenite finds are mapped to a `ServerViolation` here. On
//! a violation the connection is closed at once (Close with the violation's status code) and
//! reported as [`ConnFailure::Protocol`]: the core counts it and decides about reconnecting.
//! Valid `error` messages are counted and logged at most once per [`ERROR_LOG_INTERVAL`].

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use conn_limits::core::cidr::Cidr;
use futures_util::{Sink, SinkExt, StreamExt};
use rand::RngCore;
use speech_proto::{
    Control, Dialect, Profile, ProfileConfig, ServerSignal, ServerViolation, UpgradeInfo, WireFrame,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::{mpsc, oneshot},
};
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest,
        error::ProtocolError,
        http::{HeaderName, HeaderValue},
        protocol::{frame::coding::CloseCode, CloseFrame, WebSocketConfig},
        Message,
    },
    WebSocketStream,
};
use tracing::{debug, warn};

use super::queue::ConnQueue;
use crate::core::{
    session::{ConnFailure, ConnId, ConnInfo},
    ws_url::WsUrl,
};

/// Where and how one pool connects.
#[derive(Debug)]
pub struct Target {
    /// `[[speech_server]]` name (logs, counters).
    pub name: String,
    /// Server URL.
    pub url: WsUrl,
    /// Token, presented as the dialect's `auth` says.
    pub token: Option<String>,
    /// The dialect and its settings.
    pub protocol: ProfileConfig,
    /// Connect only to resolved addresses inside these networks (a per-request destination
    /// allowed by address rules only; `None`: any).
    pub resolved_within: Option<Vec<Cidr>>,
    /// CONNECT proxy (host, port).
    pub proxy: Option<(String, u16)>,
    /// Local address to bind.
    pub source: Option<IpAddr>,
    /// TLS client configuration for `wss://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Bound on one attempt (the pool also aborts it).
    pub connect_timeout: Duration,
    /// The server's packet → frame latency histogram.
    pub frame_latency: crate::io::metrics::FrameLatency,
}

/// What the service queues for a connection, in the service's own language.
#[derive(Debug)]
pub enum Outgoing {
    /// A control message.
    Control(Control),
    /// An audio frame: 16-byte header and G.711 payload (docs/speech-protocol.md §3).
    Audio {
        /// The frame.
        frame: Vec<u8>,
        /// When its packet left the AF_XDP ring (or the fallback socket).
        at: std::time::Instant,
    },
    /// End of one batch of the service's output (a dialect announcing a call once, with all
    /// its streams, does it here). Not counted in the backlog.
    Flush,
    /// A playout played everything before the bot's mark: the dialect's answer (return audio).
    MarkPlayed {
        /// The stream the bot talks on.
        stream_id: u32,
        /// The mark's name.
        name: String,
    },
}

/// The read buffer tungstenite reserves (and zeroes) before each read. Its default, 128 KiB,
/// was zeroed on every poll of the reader, i.e. after every written batch: 9 % of fork-agent's
/// CPU at 1,000 streams (docs/benchmarks.md "Profile"). What servers send us is small; a
/// larger message is still read, in more reads.
const READ_BUFFER: usize = 4096;

/// How long a local close may take to write what was queued before it and the dialect's
/// goodbye (a stalled server gets its Close regardless).
pub const CLOSE_FLUSH: Duration = Duration::from_secs(1);

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
    /// The server confirmed the session its dialect announced (AudioHook `opened`).
    Accepted {
        /// Connection.
        conn: ConnId,
    },
    /// The `start`s of these streams are on the wire: the batches that carried them, up to
    /// their round's end-of-batch mark (where a dialect announcing a call once writes it), were
    /// written and flushed to the socket.
    StartsWritten {
        /// Connection.
        conn: ConnId,
        /// Stream ids, in order.
        streams: Vec<u32>,
    },
    /// The server talks back on a stream started with `return_audio`.
    Bot {
        /// Connection (the mark answers go back on it).
        conn: ConnId,
        /// The stream whose party hears the bot.
        stream_id: u32,
        /// What to do.
        command: speech_proto::BotCommand,
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
    queue: Arc<ConnQueue>,
    /// Frames queued or being written.
    pub backlog: Arc<AtomicUsize>,
    /// Counters.
    pub counters: Arc<ConnCounters>,
    close: Option<oneshot::Sender<()>>,
}

impl ConnTx {
    /// Queues an item (the service has admitted it).
    pub fn send(&self, item: Outgoing) {
        let counted = !matches!(item, Outgoing::Flush);
        if counted {
            self.backlog.fetch_add(1, Ordering::Relaxed);
        }
        if !self.queue.push(item) && counted {
            // The task already ended; its Closed event is on the way.
            self.backlog.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queues audio on a full queue (the pool said so) in place of the oldest queued audio
    /// frame; returns the frame dropped. The backlog stays as it is.
    pub fn send_evicting(&self, item: Outgoing) -> Outgoing {
        self.queue.push_evicting(item)
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
    let queue = Arc::new(ConnQueue::default());
    let (close_tx, close_rx) = oneshot::channel();
    let backlog = Arc::new(AtomicUsize::new(0));
    let handle = ConnTx {
        queue: queue.clone(),
        backlog: backlog.clone(),
        counters: counters.clone(),
        close: Some(close_tx),
    };
    tokio::spawn(async move {
        let counters = [&*counters, &*server];
        let (failure, detail) =
            run(conn, &target, &queue, close_rx, &backlog, counters, &events).await;
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
    queue: &ConnQueue,
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
    let mut link = Link {
        conn,
        queue,
        close_rx: &mut close_rx,
        backlog,
        counters,
        events,
        name: &t.name,
        accept_timeout: t.connect_timeout,
        latency: &t.frame_latency,
    };
    let end = match connected {
        Err(f) => return f,
        Ok((Stream::Plain(ws), info, dialect)) => {
            let _ = events.send(ConnEvent::Connected { conn, info });
            pump(*ws, dialect, &mut link).await
        }
        Ok((Stream::Tls(ws), info, dialect)) => {
            let _ = events.send(ConnEvent::Connected { conn, info });
            pump(*ws, dialect, &mut link).await
        }
    };
    // Whatever is still queued dies with the connection: count the audio.
    for item in queue.close() {
        match item {
            Outgoing::Flush => {}
            Outgoing::Audio { .. } => {
                backlog.fetch_sub(1, Ordering::Relaxed);
                counters[0].dropped_on_close.fetch_add(1, Ordering::Relaxed);
            }
            Outgoing::Control(_) | Outgoing::MarkPlayed { .. } => {
                backlog.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
    end
}

/// The connection task's side of the service.
struct Link<'a> {
    conn: ConnId,
    queue: &'a ConnQueue,
    close_rx: &'a mut oneshot::Receiver<()>,
    backlog: &'a AtomicUsize,
    counters: [&'a ConnCounters; 2],
    events: &'a mpsc::UnboundedSender<ConnEvent>,
    name: &'a str,
    /// How long a confirming dialect's server may take to accept the session.
    accept_timeout: Duration,
    /// Packet → frame latency of the audio written.
    latency: &'a crate::io::metrics::FrameLatency,
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Translates one queued item into wire frames. `t` is read once per batch by the caller:
/// a batch is written at once, so one clock read serves every frame in it, and closes each
/// audio frame's packet → frame latency.
fn translate(
    dialect: &mut Dialect,
    t: std::time::Instant,
    item: Outgoing,
    out: &mut Vec<WireFrame>,
    latency: &crate::io::metrics::FrameLatency,
) {
    match item {
        Outgoing::Control(c) => dialect.on_control(t, &c, out),
        Outgoing::Audio { frame, at } => {
            latency.observe(t.saturating_duration_since(at));
            dialect.on_audio(t, frame, out)
        }
        Outgoing::Flush => dialect.flush(t, out),
        Outgoing::MarkPlayed { stream_id, name } => {
            dialect.on_mark_played(t, stream_id, &name, out)
        }
    }
}

fn message(f: WireFrame) -> Message {
    match f {
        WireFrame::Text(t) => Message::text(t),
        WireFrame::Binary(b) => Message::binary(b),
    }
}

async fn pump<S>(ws: WebSocketStream<S>, mut dialect: Dialect, l: &mut Link<'_>) -> Failure
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut source) = ws.split();
    // Reused for every batch (swapped with the queue's buffer): no allocation per wakeup on
    // the media path.
    let mut batch: VecDeque<Outgoing> = VecDeque::new();
    let mut frames: Vec<WireFrame> = Vec::new();
    let mut error_log = ErrorLog::default();
    // Dialects that confirm sessions say so once per connection; until then a deadline runs
    // from the first message we sent (a server that never answers `open` must not hold the
    // fork at CONNECTING for ever).
    let mut accepted = false;
    let mut accept_by: Option<tokio::time::Instant> = None;
    // `start`s taken from the queue and not yet reported written; `starts_flushed` of them
    // precede an end-of-batch mark taken since.
    let mut starts: Vec<u32> = Vec::new();
    loop {
        let keepalive = dialect.poll_timeout();
        let accept_deadline = async {
            match accept_by {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let tick = crate::io::sleep_until(keepalive);
        tokio::select! {
            biased;
            _ = &mut *l.close_rx => {
                // What the service queued before asking (a `stop`, say) and the dialect's
                // goodbye go out first, bounded: a stalled server still gets its Close.
                frames.clear();
                let t = now();
                batch.clear();
                l.queue.take_now(&mut batch);
                for item in batch.drain(..) {
                    if !matches!(item, Outgoing::Flush) {
                        l.backlog.fetch_sub(1, Ordering::Relaxed);
                    }
                    translate(&mut dialect, t, item, &mut frames, l.latency);
                }
                dialect.on_local_close(t, &mut frames);
                let close = Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }));
                let _ = tokio::time::timeout(CLOSE_FLUSH, async {
                    for f in frames.drain(..) {
                        sink.feed(message(f)).await?;
                    }
                    sink.send(close).await
                })
                .await;
                return (ConnFailure::Local, "closed locally".into());
            }
            () = l.queue.take(&mut batch) => {
                // Everything queued goes out together: one flush (one write syscall, one TLS
                // record run) for the batch instead of one per frame. Nothing waits for a
                // batch to fill, so latency is unchanged.
                let items = batch.iter().filter(|i| !matches!(i, Outgoing::Flush)).count();
                let mut starts_flushed = None;
                for item in batch.iter() {
                    match item {
                        Outgoing::Control(Control::Start(m)) => starts.push(m.stream_id),
                        Outgoing::Flush => starts_flushed = Some(starts.len()),
                        _ => {}
                    }
                }
                frames.clear();
                let t = now();
                for item in batch.drain(..) {
                    translate(&mut dialect, t, item, &mut frames, l.latency);
                }
                let sent = frames.len() as u64;
                let bytes = frames.iter().map(WireFrame::len).sum::<usize>() as u64;
                if sent > 0 && accept_by.is_none() && !accepted && dialect.profile().awaits_acceptance() {
                    accept_by = Some(tokio::time::Instant::now() + l.accept_timeout);
                }
                let write = async {
                    for f in frames.drain(..) {
                        sink.feed(message(f)).await?;
                    }
                    sink.flush().await
                };
                // A stalled server blocks this write: keep the close request reachable.
                let r = tokio::select! {
                    r = write => r,
                    _ = &mut *l.close_rx => return (ConnFailure::Local, "closed locally while stalled".into()),
                };
                if let Err(e) = r {
                    return (ConnFailure::Transport, format!("write failed: {e}"));
                }
                // Items in a batch that is still being written count as queued.
                l.backlog.fetch_sub(items, Ordering::Relaxed);
                if let Some(n) = starts_flushed.filter(|&n| n > 0) {
                    let streams = starts.drain(..n).collect();
                    let _ = l.events.send(ConnEvent::StartsWritten { conn: l.conn, streams });
                }
                for c in l.counters {
                    c.frames_sent.fetch_add(sent, Ordering::Relaxed);
                    c.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                }
            }
            _ = accept_deadline => {
                let close = Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }));
                let _ = tokio::time::timeout(CLOSE_FLUSH, sink.send(close)).await;
                return (
                    ConnFailure::Http { status: 0 },
                    format!("the server did not accept the session within {:?}", l.accept_timeout),
                );
            }
            _ = tick => {
                frames.clear();
                dialect.on_timeout(now(), &mut frames);
                if let Err(e) = write_all(&mut sink, &mut frames).await {
                    return (ConnFailure::Transport, format!("write failed: {e}"));
                }
            }
            m = source.next() => {
                frames.clear();
                let said = match m {
                    Some(Ok(Message::Close(Some(f))))
                        if f.code == CloseCode::Protocol && f.reason.as_str() == SUBSTITUTED_CLOSE_REASON =>
                    {
                        Err((ServerViolation::BadClose, "close with a reserved or invalid status code".to_owned()))
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                        return (ConnFailure::RemoteClose { code }, format!("server closed: {frame:?}"));
                    }
                    Some(Ok(Message::Text(t))) => dialect
                        .on_server_text(now(), &t, &mut frames)
                        .map_err(|v| (v, format!("text {:?}", preview(t.as_bytes())))),
                    Some(Ok(Message::Binary(b))) => dialect
                        .on_server_binary(now(), &b, &mut frames)
                        .map_err(|v| (v, format!("{} bytes {:?}", b.len(), preview(&b)))),
                    // Ping is answered by tungstenite; a Pong carries nothing; raw frames are
                    // never produced by reading.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Err(e)) => match read_violation(&e) {
                        Some(v) => Err((v, e.to_string())),
                        None => return (ConnFailure::Transport, format!("read failed: {e}")),
                    },
                    None => return (ConnFailure::Transport, "connection reset (no close frame)".into()),
                };
                match said {
                    Ok(signal) => {
                        // Answers the dialect owes the server (a mark echoed, a pong).
                        if let Err(e) = write_all(&mut sink, &mut frames).await {
                            return (ConnFailure::Transport, format!("write failed: {e}"));
                        }
                        match signal {
                            ServerSignal::Nothing => {}
                            ServerSignal::Bot { stream_id, commands } => {
                                for command in commands {
                                    let _ = l.events.send(ConnEvent::Bot { conn: l.conn, stream_id, command });
                                }
                            }
                            ServerSignal::Error(e) => {
                                for c in l.counters {
                                    c.server_errors.fetch_add(1, Ordering::Relaxed);
                                }
                                error_log.log(l.name, &e);
                            }
                            ServerSignal::Accepted => {
                                accept_by = None;
                                if !std::mem::replace(&mut accepted, true) {
                                    let _ = l.events.send(ConnEvent::Accepted { conn: l.conn });
                                }
                            }
                            ServerSignal::Refused(why) => {
                                let close = Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }));
                                let _ = tokio::time::timeout(CLOSE_FLUSH, sink.send(close)).await;
                                let detail = format!("server ended the session: {}", preview(why.as_bytes()));
                                // Before its confirmation this is a refused session (the
                                // controller hears "Connection failed"); after, a close.
                                return if accepted {
                                    (ConnFailure::RemoteClose { code: 1000 }, detail)
                                } else {
                                    (ConnFailure::Http { status: 0 }, detail)
                                };
                            }
                        }
                    }
                    Err((violation, detail)) => {
                        close_for(&mut sink, violation).await;
                        return (
                            ConnFailure::Protocol { violation },
                            format!("speech protocol error ({violation}): {detail}"),
                        );
                    }
                }
            }
        }
    }
}

async fn write_all<K>(sink: &mut K, frames: &mut Vec<WireFrame>) -> Result<(), K::Error>
where
    K: Sink<Message> + Unpin,
{
    if frames.is_empty() {
        return Ok(());
    }
    for f in frames.drain(..) {
        sink.feed(message(f)).await?;
    }
    sink.flush().await
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

async fn connect(t: &Target) -> Result<(Stream, ConnInfo, Dialect), Failure> {
    let url = &t.url;
    // The config (or the fork request's profile) was validated; a refusal here is a bug, but
    // it fails this connection, not the process.
    let dialect = Dialect::new(&t.protocol).map_err(|e| {
        (
            ConnFailure::Http { status: 0 },
            format!("speech profile: {e}"),
        )
    })?;
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
            let mut addrs = resolve(&url.host, url.port)
                .await
                .map_err(|e| (ConnFailure::Dns, format!("{}: {e}", url.host)))?;
            if let Some(nets) = &t.resolved_within {
                let all = addrs.len();
                addrs.retain(|a| nets.iter().any(|n| n.contains(a.ip())));
                if addrs.is_empty() {
                    return Err((
                        ConnFailure::Tcp,
                        format!(
                            "{} resolved to {all} address(es), none inside the networks [destinations] allows for it",
                            url.host
                        ),
                    ));
                }
            }
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
    let mut nonce = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let upgrade_with = dialect.upgrade(&UpgradeInfo {
        authority: &url.host_port(),
        path_and_query: &url.target,
        token: t.token.as_deref(),
        unix_now: unix_now(),
        nonce,
    });
    if let Some(p) = upgrade_with.subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
    }
    for (name, value) in &upgrade_with.headers {
        let bad = || {
            (
                ConnFailure::Http { status: 0 },
                format!("header {name} is not a valid HTTP header (token or configured header)"),
            )
        };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let v = HeaderValue::from_str(value).map_err(|_| bad())?;
        req.headers_mut().append(n, v);
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
        let ws = upgrade(req, tls, upgrade_with.subprotocol, dialect.profile()).await?;
        Ok((Stream::Tls(Box::new(ws)), info, dialect))
    } else {
        let ws = upgrade(req, tcp, upgrade_with.subprotocol, dialect.profile()).await?;
        Ok((Stream::Plain(Box::new(ws)), info, dialect))
    }
}

async fn upgrade<S>(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
    stream: S,
    subprotocol: Option<&'static str>,
    profile: Profile,
) -> Result<WebSocketStream<S>, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Error;
    // Bounds what we buffer of one server message (tungstenite applies it while reading only);
    // each dialect's servers send messages of their own size (a Twilio `media` echo is larger
    // than any message our own protocol allows).
    let max = profile.max_server_message();
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
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
    // Our own protocol needs the server to speak it: a server that does not echo
    // `xdpfork.speech.v1` would misread every frame. Other dialects offer theirs as a courtesy
    // (jambonz `audio.jambonz.org`) and servers that ignore it are fine (RFC 6455 §4.2.2 lets a
    // server pick none); tungstenite itself refuses one we did not offer.
    if let (Some(want), Profile::Xdpfork) = (subprotocol, profile) {
        if proto != Some(want) {
            return Err((
                ConnFailure::Http { status: 101 },
                format!("server did not accept subprotocol {want} (answered {proto:?})"),
            ));
        }
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
