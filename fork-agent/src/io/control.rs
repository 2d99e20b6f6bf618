//! The control socket server (docs/control-api.md): accepts local clients through a
//! [`Gate`](conn_limits::io::gate::Gate), reads request lines with a bounded
//! [`LineReader`], decodes them with control-api's server codec, and hands each request to the
//! agent loop in order.
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
use control_api::codec::{decode_request_line, encode_event, encode_response};
use control_api::{ApiError, Event, Op, Response};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot, watch},
};

use super::agent::ControlMsg;
use super::statuses::Statuses;
use crate::config::ControlConfig;

/// Whether the control API serves requests yet. Until the data plane is up, every request gets
/// an error that says so (docs/control-api.md "Readiness"), never a bare connection reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    Starting(&'static str),
    Ready,
}

/// How every control API error starts while the data plane is not up yet.
pub use control_api::NOT_READY;

/// Bytes read per `read` call; a connection holds this plus at most one line.
const READ_CHUNK: usize = 8 * 1024;

/// Starts the gate on `listener`; returns its counters.
#[allow(clippy::disallowed_methods)] // io shell: the gate task and one task per client
pub(crate) fn spawn(
    listener: UnixListener,
    cfg: &ControlConfig,
    ctl: mpsc::Sender<ControlMsg>,
    statuses: Statuses,
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
            statuses.clone(),
            ready.clone(),
        ));
    }));
    stats
}

fn readiness(ready: &watch::Receiver<Readiness>) -> Readiness {
    *ready.borrow()
}

async fn write_line(w: &mut OwnedWriteHalf, resp: &Response) -> std::io::Result<()> {
    w.write_all(&encode_response(resp)).await
}

/// One client: requests in, one answer line each, events after `subscribe`.
async fn serve(
    stream: UnixStream,
    mut conn: Conn,
    max_line: usize,
    ctl: mpsc::Sender<ControlMsg>,
    statuses: Statuses,
    ready: watch::Receiver<Readiness>,
) {
    let (mut r, mut w) = stream.into_split();
    let mut lines = LineReader::new(max_line);
    let mut buf = vec![0u8; READ_CHUNK];
    // After `subscribe`, status event lines interleave with responses.
    let mut sub: Option<broadcast::Receiver<String>> = None;
    'conn: loop {
        while let Some(line) = lines.poll_line() {
            let too_long = line == Line::TooLong;
            // Copied out: the watch guard must not live across the await below.
            let resp = match (readiness(&ready), decode_request_line(line, max_line)) {
                (_, Err(e)) => Response::error(&e),
                (Readiness::Starting(stage), Ok(_)) => Response::error(&ApiError::NotReady {
                    stage: stage.to_owned(),
                }),
                (Readiness::Ready, Ok(Op::Subscribe)) => {
                    conn.progress();
                    let (rx, snapshot) = statuses.subscribe();
                    sub = Some(rx);
                    // The answer first, then each live fork's state, then the changes.
                    if write_line(&mut w, &Response::ok(Value::Null))
                        .await
                        .is_err()
                    {
                        break 'conn;
                    }
                    for mut line in snapshot {
                        line.push('\n');
                        if w.write_all(line.as_bytes()).await.is_err() {
                            break 'conn;
                        }
                    }
                    continue;
                }
                (Readiness::Ready, Ok(op)) => {
                    conn.progress();
                    let (tx, rx) = oneshot::channel();
                    if ctl.send((op, tx)).await.is_err() {
                        break 'conn;
                    }
                    rx.await
                        .unwrap_or_else(|_| Response::error(&ApiError::ShuttingDown))
                }
            };
            if too_long {
                // The rest of the line cannot be told from the next request: answer, close.
                conn.set_close_cause(CloseCause::TooLarge);
                let _ = write_line(&mut w, &resp).await;
                break 'conn;
            }
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
                let out = match ev {
                    Ok(mut line) => {
                        line.push('\n');
                        line.into_bytes()
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        encode_event(&Event::Lagged { missed })
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if w.write_all(&out).await.is_err() {
                    break;
                }
            }
            () = conn.expired() => break,
        }
    }
    let _ = w.shutdown().await;
}

#[cfg(test)]
mod tests {
    use control_api::{Event, ForkStatus as WireStatus};

    use crate::core::session::{ForkFailure, ForkStatus, StatusEvent};

    /// The stream service publishes `fork_status` lines as its `StatusEvent` plus the `event`
    /// tag (io/speech); every status and error must read back as control-api's [`Event`], the
    /// type subscribers decode with.
    #[test]
    fn the_stream_services_status_lines_are_control_api_events() {
        let cases = [
            (ForkStatus::Started, WireStatus::Started, None, true),
            (ForkStatus::Paused, WireStatus::Paused, None, false),
            (ForkStatus::Resumed, WireStatus::Resumed, None, false),
            (
                ForkStatus::Stopped,
                WireStatus::Stopped,
                Some(ForkFailure::ForkingStopped),
                false,
            ),
            (
                ForkStatus::Error,
                WireStatus::Error,
                Some(ForkFailure::TcpConnectionClosed),
                false,
            ),
        ];
        for (status, wire, error, reconnected) in cases {
            let ev = StatusEvent {
                call_guid: "g".into(),
                status,
                error,
                reconnected,
                fork_id: Some(3),
            };
            // As io/speech encodes it.
            let mut v = serde_json::to_value(&ev).expect("status event is JSON");
            v["event"] = serde_json::json!("fork_status");
            let line = v.to_string();
            assert_eq!(
                serde_json::from_str::<Event>(&line).expect(&line),
                Event::ForkStatus {
                    call_guid: "g".into(),
                    status: wire,
                    error: error.map(|e| e.as_str().to_owned()),
                    reconnected,
                    snapshot: false,
                    fork_id: Some(3),
                },
                "{line}"
            );
        }
    }
}
