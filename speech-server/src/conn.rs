//! One WebSocket connection: handshake checks, then frames through the protocol validator.
//!
//! Inputs: an accepted byte stream (TCP or TLS) and the shared [`Ctx`]. Call order:
//! [`serve`] runs the HTTP upgrade (`--reject-handshake`, then `--token`, then the
//! subprotocol check, RFC 6455 §4.2.2), then reads frames until the peer closes, a fatal
//! violation closes with 1002, or a misbehaviour switch fires. Every accepted event goes to
//! the [`Registry`]; every violation is answered with an `error` text frame and recorded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use speech_proto::{Event, Validator, Violation, SUBPROTOCOL};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::registry::{Registry, StartRefusal};

/// How long to wait for the peer's Close after we sent ours (RFC 6455 §7.1.1 lets the
/// server close the TCP connection once the handshake is done or the wait is over).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Misbehaviour switches (see `--help` and docs/speech-protocol.md §Testing).
#[derive(Debug, Clone, Default)]
pub struct Misbehave {
    /// Stop reading the socket after this many binary frames on a connection.
    pub stall_after_frames: Option<u64>,
    /// Close with 1001 (going away) after this many binary frames.
    pub close_after_frames: Option<u64>,
    /// Drop the TCP connection without a close frame after this many binary frames.
    pub abort_after_frames: Option<u64>,
    /// Answer every upgrade request with this HTTP status.
    pub reject_handshake: Option<u16>,
    /// Send a frame a server may not send right after each upgrade.
    pub send_garbage: Option<GarbageArg>,
}

/// `--send-garbage` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GarbageArg {
    /// A binary frame (servers never send audio).
    Binary,
    /// A text frame that is not JSON.
    Text,
    /// A well-formed message of a type only clients send (`stop`).
    Message,
    /// An `error` message longer than `speech_proto::MAX_SERVER_MESSAGE`.
    Oversize,
    /// A Close frame with status 1005, which must never be sent (RFC 6455 §7.4.1).
    BadClose,
    /// A data frame with the reserved opcode 3 (RFC 6455 §5.2).
    BadFrame,
    /// Each of the above in turn, one per connection.
    Cycle,
}

impl GarbageArg {
    const KINDS: [GarbageArg; 6] = [
        GarbageArg::Binary,
        GarbageArg::Text,
        GarbageArg::Message,
        GarbageArg::Oversize,
        GarbageArg::BadClose,
        GarbageArg::BadFrame,
    ];

    /// The kind for the `n`th upgraded connection (0-based).
    fn pick(self, n: usize) -> GarbageArg {
        match self {
            GarbageArg::Cycle => GarbageArg::KINDS[n % GarbageArg::KINDS.len()],
            one => one,
        }
    }

    /// The frame to send. Raw frames bypass tungstenite's checks on what we send.
    fn frame(self) -> Message {
        match self {
            GarbageArg::Binary => Message::Binary(vec![0xde, 0xad, 0xbe, 0xef].into()),
            GarbageArg::Text => Message::Text("hello, this is not JSON".into()),
            GarbageArg::Message => {
                Message::Text(r#"{"type":"stop","stream_id":1,"reason":"request"}"#.into())
            }
            GarbageArg::Oversize => Message::Text(
                format!(
                    r#"{{"type":"error","code":"x","message":"{}"}}"#,
                    "x".repeat(speech_proto::MAX_SERVER_MESSAGE)
                )
                .into(),
            ),
            GarbageArg::BadClose => Message::Frame(Frame::close(Some(CloseFrame {
                code: CloseCode::from(1005),
                reason: "".into(),
            }))),
            GarbageArg::BadFrame | GarbageArg::Cycle => Message::Frame(Frame::message(
                b"?".to_vec(),
                OpCode::Data(Data::Reserved(3)),
                true,
            )),
        }
    }
}

/// Upgraded connections so far (`--send-garbage cycle` picks by it).
static UPGRADED: AtomicUsize = AtomicUsize::new(0);

/// State shared by all connection tasks.
pub struct Ctx {
    /// Required bearer token, if any.
    pub token: Option<String>,
    /// Test switches.
    pub misbehave: Misbehave,
    /// Streams, connections, files.
    pub registry: Mutex<Registry>,
    /// `--exit-after-stops`.
    pub exit_after_stops: Option<u64>,
    /// Notified when the process should write its summary and exit.
    pub shutdown: Notify,
}

impl Ctx {
    /// Locks the registry; a poisoned lock (a panic elsewhere) still yields the data, which is
    /// only counters and file handles.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Result of inspecting the upgrade request, filled in by the handshake callback.
#[derive(Default)]
struct Handshake {
    status: u16,
    token_ok: Option<bool>,
    subprotocol_ok: bool,
}

fn reject(status: StatusCode, body: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(body.to_owned()));
    *resp.status_mut() = status;
    resp
}

// The error type is fixed by tungstenite's `Callback` trait (an HTTP response to send).
#[allow(clippy::result_large_err)]
fn check_request(
    ctx: &Ctx,
    req: &Request,
    mut resp: Response,
    hs: &mut Handshake,
) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    hs.subprotocol_ok = offered;
    if let Some(token) = &ctx.token {
        let expected = format!("Bearer {token}");
        let ok = req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
        hs.token_ok = Some(ok);
    }
    if let Some(code) = ctx.misbehave.reject_handshake {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        hs.status = status.as_u16();
        return Err(reject(status, "rejected by --reject-handshake\n"));
    }
    if hs.token_ok == Some(false) {
        hs.status = 401;
        return Err(reject(
            StatusCode::UNAUTHORIZED,
            "missing or wrong Authorization: Bearer token\n",
        ));
    }
    if !offered {
        hs.status = 400;
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Protocol must offer xdpfork.speech.v1\n",
        ));
    }
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    hs.status = 101;
    Ok(resp)
}

/// Serves one connection to completion. Never panics on peer input.
#[allow(clippy::result_large_err)] // handshake callback: error type fixed by tungstenite
pub async fn serve<S>(stream: S, peer: SocketAddr, tls: bool, ctx: Arc<Ctx>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = ctx.registry().open_conn(peer, tls);
    let mut hs = Handshake::default();
    let accepted = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp| {
        let answer = check_request(&ctx, req, resp, &mut hs);
        // Recorded before the answer is written, so a client that reacts to it (and a
        // summary taken right then) always finds the handshake outcome.
        if let Some(c) = ctx.registry().conn(id) {
            c.handshake_status = (hs.status != 0).then_some(hs.status);
            c.token_ok = hs.token_ok;
            c.subprotocol_ok = hs.subprotocol_ok;
        }
        answer
    })
    .await;
    let ws = match accepted {
        Ok(ws) => ws,
        Err(e) => {
            tracing::info!(conn = id, %peer, status = hs.status, error = %e, "handshake refused");
            ctx.registry()
                .close_conn(id, format!("handshake failed: {e}"));
            return;
        }
    };
    tracing::info!(conn = id, %peer, tls, "connection accepted");
    let mut ws = ws;
    if let Some(g) = ctx.misbehave.send_garbage {
        let kind = g.pick(UPGRADED.fetch_add(1, Ordering::Relaxed));
        tracing::info!(conn = id, ?kind, "sending garbage (--send-garbage)");
        if let Err(e) = ws.send(kind.frame()).await {
            tracing::info!(conn = id, error = %e, "transport error sending garbage");
        }
    }
    let how = run(ws, id, &ctx).await;
    tracing::info!(conn = id, %peer, ended = %how, "connection ended");
    ctx.registry().close_conn(id, how);
}

/// What the frame loop should do after a frame.
enum Next {
    Continue,
    Stall,
    Close(CloseCode, &'static str),
    Abort,
}

async fn run<S>(mut ws: WebSocketStream<S>, id: u64, ctx: &Ctx) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut validator = Validator::new();
    let mut binary_frames = 0u64;
    loop {
        let msg = match ws.next().await {
            None => return "eof without close frame".into(),
            Some(Err(e)) => return format!("transport error: {e}"),
            Some(Ok(m)) => m,
        };
        let (next, errors) = match msg {
            Message::Text(text) => {
                if let Some(c) = ctx.registry().conn(id) {
                    c.text_frames += 1;
                }
                handle_text(&mut validator, id, text.as_str(), ctx)
            }
            Message::Binary(data) => {
                binary_frames += 1;
                if let Some(c) = ctx.registry().conn(id) {
                    c.binary_frames += 1;
                }
                let r = handle_binary(&mut validator, id, &data, ctx);
                (
                    misbehave_after(binary_frames, &ctx.misbehave).unwrap_or(r.0),
                    r.1,
                )
            }
            Message::Close(frame) => {
                let detail = frame
                    .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                    .unwrap_or_else(|| "no status".into());
                let how = format!("client closed: {detail}");
                mark_ended(ctx, id, &how);
                // tungstenite answers the Close itself; drain until the stream ends.
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return how;
            }
            // Ping is answered by tungstenite; Pong and raw frames carry nothing for us.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => (Next::Continue, None),
        };
        if let Some(err) = errors {
            if let Err(e) = ws.send(Message::Text(err.into())).await {
                return format!("transport error sending error frame: {e}");
            }
        }
        match next {
            Next::Continue => {}
            Next::Stall => {
                tracing::info!(conn = id, frames = binary_frames, "stalling: no more reads");
                mark_ended(
                    ctx,
                    id,
                    "stalled (--stall-after-frames), socket left unread",
                );
                // Keep the socket open and unread until the process exits, so the client's
                // send buffer and queue fill up.
                std::future::pending::<()>().await;
                return "stalled".into();
            }
            Next::Abort => {
                tracing::info!(conn = id, frames = binary_frames, "aborting TCP connection");
                let how = "server aborted (no close frame)".to_owned();
                mark_ended(ctx, id, &how);
                drop(ws);
                return how;
            }
            Next::Close(code, reason) => {
                let how = format!("server closed: {} {reason}", u16::from(code));
                // Recorded before the closing handshake so a summary taken meanwhile has it.
                mark_ended(ctx, id, &how);
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                if let Err(e) = ws.close(Some(frame)).await {
                    tracing::info!(conn = id, error = %e, "transport error while closing");
                    return how;
                }
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return how;
            }
        }
    }
}

/// Records how a connection ends as soon as that is decided (the first cause wins).
fn mark_ended(ctx: &Ctx, id: u64, how: &str) {
    if let Some(c) = ctx.registry().conn(id) {
        c.ended.get_or_insert_with(|| how.to_owned());
    }
}

fn misbehave_after(frames: u64, m: &Misbehave) -> Option<Next> {
    if m.abort_after_frames == Some(frames) {
        Some(Next::Abort)
    } else if m.close_after_frames == Some(frames) {
        Some(Next::Close(
            CloseCode::Away,
            "going away (--close-after-frames)",
        ))
    } else if m.stall_after_frames == Some(frames) {
        Some(Next::Stall)
    } else {
        None
    }
}

/// Records a violation and decides whether the connection survives it.
fn violation(id: u64, v: &Violation, ctx: &Ctx) -> (Next, Option<String>) {
    tracing::warn!(conn = id, stream = ?v.stream_id(), code = v.code(), "violation: {v}");
    if let Some(c) = ctx.registry().conn(id) {
        c.violations.push(format!("{}: {v}", v.code()));
    }
    let next = if v.is_fatal() {
        Next::Close(CloseCode::Protocol, "protocol error")
    } else {
        Next::Continue
    };
    (next, Some(v.to_error().to_json()))
}

fn handle_binary(
    validator: &mut Validator,
    id: u64,
    data: &[u8],
    ctx: &Ctx,
) -> (Next, Option<String>) {
    match validator.handle_binary(data) {
        Ok(ev) => {
            tracing::trace!(
                conn = id,
                stream = ev.header.stream_id,
                seq = ev.header.seq,
                "audio"
            );
            ctx.registry().audio(id, &ev);
            (Next::Continue, None)
        }
        Err(v) => violation(id, &v, ctx),
    }
}

fn handle_text(
    validator: &mut Validator,
    id: u64,
    text: &str,
    ctx: &Ctx,
) -> (Next, Option<String>) {
    let ev = match validator.handle_text(text) {
        Ok(ev) => ev,
        Err(v) => return violation(id, &v, ctx),
    };
    let mut reg = ctx.registry();
    match ev {
        Event::Start(m) => {
            if let Err(refusal) = reg.start(id, &m) {
                drop(reg);
                validator.kill_stream(m.stream_id);
                let v = match refusal {
                    StartRefusal::Duplicate => Violation::DuplicateStart {
                        stream_id: m.stream_id,
                    },
                    StartRefusal::Stopped => Violation::StreamStopped {
                        stream_id: m.stream_id,
                        what: "start",
                    },
                };
                return violation(id, &v, ctx);
            }
            tracing::info!(
                conn = id,
                stream = m.stream_id,
                call_guid = %m.call_guid,
                channel = m.channel.as_str(),
                codec = m.codec.as_str(),
                resumed = m.resumed,
                "stream start"
            );
        }
        Event::Pause(m) => {
            reg.pause(m.stream_id);
            tracing::info!(conn = id, stream = m.stream_id, reason = ?m.reason, "stream pause");
        }
        Event::Resume(m) => {
            reg.resume(m.stream_id, m.codec);
            tracing::info!(
                conn = id,
                stream = m.stream_id,
                codec = m.codec.as_str(),
                "stream resume"
            );
        }
        Event::Update(m) => {
            reg.update(m.stream_id, &m.metadata);
            tracing::info!(conn = id, stream = m.stream_id, "stream update");
        }
        Event::Mark(m) => {
            tracing::info!(conn = id, stream = m.stream_id, name = %m.name, "stream mark played");
        }
        Event::Dtmf(m) => {
            reg.dtmf(m.stream_id);
            tracing::info!(
                conn = id,
                stream = m.stream_id,
                event = m.event,
                end = m.end,
                "stream dtmf"
            );
        }
        Event::Stop(m) => {
            reg.stop(m.stream_id, m.reason);
            tracing::info!(
                conn = id,
                stream = m.stream_id,
                reason = m.reason.as_str(),
                "stream stop"
            );
            if ctx.exit_after_stops.is_some_and(|n| reg.stops() >= n) {
                // notify_one stores a permit, so the main task sees it even if it is not
                // waiting yet.
                ctx.shutdown.notify_one();
            }
        }
    }
    (Next::Continue, None)
}
