//! The control socket server (docs/control-api.md): accepts local clients through a
//! [`Gate`](conn_limits::io::gate::Gate), reads request lines with a bounded
//! [`LineReader`], and hands each request to the agent loop in order.
//!
//! Role: keep the API answering whatever one local client does. Per-user and global connection
//! limits, a deadline for the first request, an accept loop that pauses on EMFILE instead of
//! spinning, and a line reader that never holds more than `max_line_bytes`: an oversize line
//! gets `{"ok":false,"error":"request line longer than N bytes"}` and the connection is closed
//! (what follows cannot be told apart from the next request); a line that is not UTF-8 gets an
//! error answer and the connection stays usable.
//! Inputs: the bound listener, the agent's request queue, the status event broadcast.
//! Outputs: response and event lines; [`GateStats`] for `show_counters`.

use std::sync::Arc;

use conn_limits::io::gate::{CloseCause, Conn, Gate, GateOptions, GateStats};
use conn_limits::{Line, LineReader};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot, watch},
};

use super::agent::ControlMsg;
use crate::{
    config::ControlConfig,
    core::control_api::{parse_request, Op, Response},
};

/// Whether the control API serves requests yet. Until the data plane is up, every request gets
/// an error that says so (docs/control-api.md "Readiness"), never a bare connection reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    Starting(&'static str),
    Ready,
}

/// How every control API error starts while the data plane is not up yet.
pub const NOT_READY: &str = "not ready";

/// Bytes read per `read` call; a connection holds this plus at most one line.
const READ_CHUNK: usize = 8 * 1024;

/// Starts the gate on `listener`; returns its counters.
#[allow(clippy::disallowed_methods)] // io shell: the gate task and one task per client
pub(crate) fn spawn(
    listener: UnixListener,
    cfg: &ControlConfig,
    ctl: mpsc::Sender<ControlMsg>,
    events: broadcast::Sender<String>,
    ready: watch::Receiver<Readiness>,
) -> Arc<GateStats> {
    let gate = Gate::new(GateOptions::new("control"), vec![listener], cfg.admission());
    let stats = gate.stats();
    let max_line = cfg.max_line_bytes;
    tokio::spawn(gate.run(move |_, stream, conn| {
        tokio::spawn(serve(
            stream,
            conn,
            max_line,
            ctl.clone(),
            events.clone(),
            ready.clone(),
        ));
    }));
    stats
}

fn readiness(ready: &watch::Receiver<Readiness>) -> Readiness {
    *ready.borrow()
}

async fn write_line(w: &mut OwnedWriteHalf, resp: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_string(resp)
        .unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"cannot encode response: {e}\"}}"));
    out.push('\n');
    w.write_all(out.as_bytes()).await
}

/// One client: requests in, one answer line each, events after `subscribe`.
async fn serve(
    stream: UnixStream,
    mut conn: Conn,
    max_line: usize,
    ctl: mpsc::Sender<ControlMsg>,
    events: broadcast::Sender<String>,
    ready: watch::Receiver<Readiness>,
) {
    let (mut r, mut w) = stream.into_split();
    let mut lines = LineReader::new(max_line);
    let mut buf = vec![0u8; READ_CHUNK];
    // After `subscribe`, status event lines interleave with responses.
    let mut sub: Option<broadcast::Receiver<String>> = None;
    'conn: loop {
        while let Some(line) = lines.poll_line() {
            let resp = match line {
                // Copied out: the watch guard must not live across the await below.
                Line::Text(l) => match (readiness(&ready), parse_request(&l)) {
                    (_, Err(e)) => Response::err(e),
                    (Readiness::Starting(stage), Ok(_)) => {
                        Response::err(format!("{NOT_READY}: fork-agent is {stage}"))
                    }
                    (Readiness::Ready, Ok(Op::Subscribe)) => {
                        conn.progress();
                        sub = Some(events.subscribe());
                        Response::ok(Value::Null)
                    }
                    (Readiness::Ready, Ok(op)) => {
                        conn.progress();
                        let (tx, rx) = oneshot::channel();
                        if ctl.send((op, tx)).await.is_err() {
                            break 'conn;
                        }
                        rx.await
                            .unwrap_or_else(|_| Response::err("agent shutting down"))
                    }
                },
                Line::NotUtf8 => Response::err(
                    "request line is not UTF-8 (one JSON object per line, UTF-8, \\n-terminated)",
                ),
                Line::TooLong => {
                    conn.set_close_cause(CloseCause::TooLarge);
                    let resp = Response::err(format!(
                        "request line longer than {max_line} bytes; closing the connection"
                    ));
                    let _ = write_line(&mut w, &resp).await;
                    break 'conn;
                }
            };
            if write_line(&mut w, &resp).await.is_err() {
                break 'conn;
            }
        }
        tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => lines.handle_bytes(&buf[..n]),
            },
            ev = async { match sub.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            } } => {
                let mut out = match ev {
                    Ok(line) => line,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        format!("{{\"event\":\"lagged\",\"missed\":{n}}}")
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                out.push('\n');
                if w.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
            () = conn.expired() => break,
        }
    }
    let _ = w.shutdown().await;
}
