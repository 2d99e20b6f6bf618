//! fork-agent control API client (docs/control-api.md): one task, one Unix stream connection,
//! one request line and one answer line at a time.
//!
//! Role: executes the media layer's [`ControlOp`]s strictly in order (a `fork_start` must follow
//! the `flow_add`s it names) and hands each answer back with its [`JobId`]. fork-agent may wait
//! up to 1.5 s for a neighbour to resolve on `flow_add`, which is why this runs apart from the
//! task owning the B2BUA: SIP keeps flowing meanwhile.
//!
//! Input: [`spawn`]'s bounded job sender. Output: the result receiver; an `Err` carries either
//! fork-agent's `error` string or, if fork-agent cannot be reached, a message saying so. A lost
//! connection is re-opened for the next request; a request is never sent twice (it may already
//! have been executed).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::core::media::{ControlOp, JobId};

/// Pending control requests the B2BUA task may queue before it reports failures instead.
pub const QUEUE: usize = 4096;

/// How long one answer may take (fork-agent's longest operation is a 1.5 s neighbour wait per
/// `flow_add`, plus a speech-server connect for `fork_start`).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
struct Response {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Value,
}

/// A job and its answer.
pub type ControlResult = (JobId, Result<Value, String>);

/// Starts the client task.
#[allow(clippy::disallowed_methods)] // shell: the client is its own task
pub fn spawn(
    socket: PathBuf,
) -> (
    mpsc::Sender<(JobId, ControlOp)>,
    mpsc::Receiver<ControlResult>,
) {
    let (job_tx, mut job_rx) = mpsc::channel::<(JobId, ControlOp)>(QUEUE);
    let (res_tx, res_rx) = mpsc::channel::<ControlResult>(QUEUE);
    tokio::spawn(async move {
        let mut conn: Option<BufReader<UnixStream>> = None;
        while let Some((job, op)) = job_rx.recv().await {
            let line = op.to_line();
            let result = match execute(&socket, &mut conn, &line).await {
                Ok(r) => r,
                Err(e) => {
                    conn = None;
                    warn!(error = %e, socket = %socket.display(), "fork-agent control request failed");
                    Err(format!("fork-agent unreachable: {e}"))
                }
            };
            debug!(?job, request = %line, ?result, "control");
            if res_tx.send((job, result)).await.is_err() {
                return;
            }
        }
    });
    (job_tx, res_rx)
}

async fn execute(
    socket: &PathBuf,
    conn: &mut Option<BufReader<UnixStream>>,
    line: &str,
) -> std::io::Result<Result<Value, String>> {
    if conn.is_none() {
        *conn = Some(BufReader::new(UnixStream::connect(socket).await?));
    }
    let Some(c) = conn.as_mut() else {
        return Err(std::io::Error::other("no connection"));
    };
    let mut req = line.to_string();
    req.push('\n');
    c.get_mut().write_all(req.as_bytes()).await?;
    let mut answer = String::new();
    let n = tokio::time::timeout(ANSWER_TIMEOUT, c.read_line(&mut answer))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))??;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "fork-agent closed the control connection",
        ));
    }
    let r: Response = serde_json::from_str(&answer)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(if r.ok {
        Ok(r.data)
    } else {
        Err(r.error.unwrap_or_else(|| "refused without a reason".into()))
    })
}

/// A fork-agent status event sip-agent acts on (docs/control-api.md "subscribe").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// fork-agent removed a flow on its own (`{"event":"flow_removed","local":...,"reason":...}`).
    FlowRemoved {
        /// The flow's `local`.
        local: std::net::SocketAddr,
        /// Why (`idle`).
        reason: String,
    },
}

/// Events buffered towards the B2BUA task.
pub const EVENT_QUEUE: usize = 1024;

/// How long after a lost or refused subscription it is tried again.
pub const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(2);

/// Reads one event line; `None` for events sip-agent does not act on.
pub fn parse_event(line: &str) -> Option<AgentEvent> {
    let v: Value = serde_json::from_str(line).ok()?;
    match v.get("event")?.as_str()? {
        "flow_removed" => Some(AgentEvent::FlowRemoved {
            local: v.get("local")?.as_str()?.parse().ok()?,
            reason: v
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        }),
        "lagged" => {
            warn!(line, "fork-agent events were lost (this subscriber lagged); a removed flow may go unnoticed until its call ends");
            None
        }
        _ => None,
    }
}

/// Starts the event task: a connection of its own to fork-agent, `subscribe`, then every
/// `flow_removed` event forwarded. A lost or refused subscription (fork-agent restarting, not
/// ready) is tried again after [`RESUBSCRIBE_AFTER`].
#[allow(clippy::disallowed_methods)] // shell: the subscriber is its own task
pub fn spawn_events(socket: PathBuf) -> mpsc::Receiver<AgentEvent> {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(async move {
        loop {
            match subscribe(&socket, &tx).await {
                Ok(()) => return, // the B2BUA task is gone
                Err(e) => {
                    debug!(error = %e, socket = %socket.display(), "fork-agent event subscription lost; retrying");
                    tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                }
            }
        }
    });
    rx
}

/// One subscription; `Ok` only when the receiver is gone.
async fn subscribe(socket: &PathBuf, tx: &mpsc::Sender<AgentEvent>) -> std::io::Result<()> {
    let mut c = BufReader::new(UnixStream::connect(socket).await?);
    c.get_mut()
        .write_all(b"{\"v\":1,\"op\":\"subscribe\"}\n")
        .await?;
    let mut first = String::new();
    tokio::time::timeout(ANSWER_TIMEOUT, c.read_line(&mut first))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))??;
    let r: Response = serde_json::from_str(&first)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if !r.ok {
        return Err(std::io::Error::other(
            r.error.unwrap_or_else(|| "subscribe refused".into()),
        ));
    }
    let mut line = String::new();
    loop {
        line.clear();
        if c.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "fork-agent closed the event connection",
            ));
        }
        if let Some(ev) = parse_event(line.trim_end()) {
            if tx.send(ev).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_removed_events_are_read_and_others_ignored() {
        assert_eq!(
            parse_event(r#"{"event":"flow_removed","local":"10.77.1.1:30000","reason":"idle"}"#),
            Some(AgentEvent::FlowRemoved {
                local: "10.77.1.1:30000".parse().unwrap(),
                reason: "idle".into()
            })
        );
        assert_eq!(
            parse_event(r#"{"event":"fork_status","call_guid":"g","status":"started"}"#),
            None
        );
        assert_eq!(parse_event(r#"{"event":"flow_removed","local":"x"}"#), None);
        assert_eq!(parse_event("not json"), None);
    }
}
