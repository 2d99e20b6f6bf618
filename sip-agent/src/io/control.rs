//! fork-agent control API client (docs/control-api.md): one task, one Unix stream connection,
//! one request line and one answer line at a time, through control-api's async client.
//!
//! Role: executes the media layer's [`Op`]s strictly in order (a `fork_start` must follow
//! the `flow_add`s it names) and hands each typed answer back with its [`JobId`]. fork-agent may
//! wait up to 1.5 s for a neighbour to resolve on `flow_add`, which is why this runs apart from
//! the task owning the B2BUA: SIP keeps flowing meanwhile.
//!
//! Input: [`spawn`]'s bounded job sender. Output: the result receiver; an `Err` is fork-agent's
//! refusal ([`ClientError::Api`]) or why it could not be asked. A broken connection is re-opened
//! for the next request; a request is never sent twice (it may already have been executed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use control_api::{Answer, AsyncClient, ClientError, Event, Op};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::core::media::{ForkEvent, JobId};

/// Pending control requests the B2BUA task may queue before it reports failures instead.
pub const QUEUE: usize = 4096;

/// How long one answer may take (fork-agent's longest operation is a 1.5 s neighbour wait per
/// `flow_add`, plus a speech-server connect for `fork_start`).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A job and its answer.
pub type ControlResult = (JobId, Result<Answer, ClientError>);

/// Starts the client task.
#[allow(clippy::disallowed_methods)] // shell: the client is its own task
pub fn spawn(socket: PathBuf) -> (mpsc::Sender<(JobId, Op)>, mpsc::Receiver<ControlResult>) {
    let (job_tx, mut job_rx) = mpsc::channel::<(JobId, Op)>(QUEUE);
    let (res_tx, res_rx) = mpsc::channel::<ControlResult>(QUEUE);
    tokio::spawn(async move {
        let mut conn: Option<AsyncClient> = None;
        while let Some((job, op)) = job_rx.recv().await {
            let result =
                AsyncClient::call_connecting(&mut conn, &socket, ANSWER_TIMEOUT, &op).await;
            if let Err(e) = &result {
                if e.is_broken() {
                    conn = None;
                    warn!(error = %e, socket = %socket.display(), op = op.name(), "fork-agent control request failed");
                }
            }
            debug!(?job, request = %op.to_line(), ?result, "control");
            if res_tx.send((job, result)).await.is_err() {
                return;
            }
        }
    });
    (job_tx, res_rx)
}

/// A fork-agent status event sip-agent acts on (docs/control-api.md "subscribe").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// fork-agent removed a flow on its own (`flow_removed`).
    FlowRemoved {
        /// The flow's `local`.
        local: std::net::SocketAddr,
        /// Why.
        reason: control_api::FlowRemovedReason,
    },
    /// A fork's status changed (`fork_status`): for the media layer.
    ForkStatus(ForkEvent),
}

/// Events buffered towards the B2BUA task.
pub const EVENT_QUEUE: usize = 1024;

/// How long after a lost or refused subscription it is tried again.
pub const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(2);

/// The events sip-agent acts on; `None` for the others.
pub fn agent_event(ev: Event) -> Option<AgentEvent> {
    match ev {
        Event::FlowRemoved { local, reason } => Some(AgentEvent::FlowRemoved { local, reason }),
        // The subscription loop acts on it (it subscribes again, for a fresh snapshot).
        Event::Lagged { .. } => None,
        Event::ForkStatus {
            call_guid,
            status,
            error,
            reconnected,
            snapshot,
            fork_id,
        } => Some(AgentEvent::ForkStatus(ForkEvent {
            call_guid,
            status,
            error,
            reconnected,
            snapshot,
            fork_id,
        })),
        Event::Unknown => None,
    }
}

/// Starts the event task: a connection of its own to fork-agent, `subscribe`, then every
/// `flow_removed` and `fork_status` event forwarded. Each subscription starts with fork-agent's
/// snapshot of every live fork's state, so statuses missed while away are caught up: a lost
/// or refused subscription (fork-agent restarting, not ready) is tried again after
/// [`RESUBSCRIBE_AFTER`], a lagged one at once.
#[allow(clippy::disallowed_methods)] // shell: the subscriber is its own task
pub fn spawn_events(socket: PathBuf) -> mpsc::Receiver<AgentEvent> {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(async move {
        loop {
            match subscribe(&socket, &tx).await {
                Ended::ReceiverGone => return,
                Ended::Lagged(missed) => {
                    warn!(missed, "fork-agent events were lost (this subscriber lagged); subscribing again for the current fork states");
                }
                Ended::Lost(e) => {
                    debug!(error = %e, socket = %socket.display(), "fork-agent event subscription lost; retrying");
                    tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                }
            }
        }
    });
    rx
}

/// Why a subscription ended.
enum Ended {
    /// The B2BUA task is gone.
    ReceiverGone,
    /// fork-agent dropped events for us.
    Lagged(u64),
    /// The connection failed or was refused.
    Lost(ClientError),
}

/// One subscription.
async fn subscribe(socket: &Path, tx: &mpsc::Sender<AgentEvent>) -> Ended {
    let c = AsyncClient::connect(socket).await;
    let mut c = match c {
        Ok(c) => c.with_timeout(ANSWER_TIMEOUT),
        Err(e) => return Ended::Lost(e),
    };
    if let Err(e) = c.subscribe().await {
        return Ended::Lost(e);
    }
    loop {
        match c.next_event().await {
            Ok(Event::Lagged { missed }) => return Ended::Lagged(missed),
            Ok(ev) => {
                if let Some(ev) = agent_event(ev) {
                    if tx.send(ev).await.is_err() {
                        return Ended::ReceiverGone;
                    }
                }
            }
            // A line this version cannot read is skipped; the connection is still in step.
            Err(ClientError::BadLine { line, error }) => {
                debug!(%line, %error, "fork-agent event not understood; skipped")
            }
            Err(e) => return Ended::Lost(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_removed_and_fork_status_events_are_forwarded_and_others_ignored() {
        let local: std::net::SocketAddr = "10.77.1.1:30000".parse().expect("addr");
        assert_eq!(
            agent_event(Event::FlowRemoved {
                local,
                reason: control_api::FlowRemovedReason::Idle
            }),
            Some(AgentEvent::FlowRemoved {
                local,
                reason: control_api::FlowRemovedReason::Idle
            })
        );
        assert_eq!(
            agent_event(Event::ForkStatus {
                call_guid: "g".into(),
                status: control_api::ForkStatus::Error,
                error: Some("TCP Connection closed".into()),
                reconnected: false,
                snapshot: true,
                fork_id: Some(4),
            }),
            Some(AgentEvent::ForkStatus(ForkEvent {
                call_guid: "g".into(),
                status: control_api::ForkStatus::Error,
                error: Some("TCP Connection closed".into()),
                reconnected: false,
                snapshot: true,
                fork_id: Some(4),
            }))
        );
        assert_eq!(agent_event(Event::Unknown), None);
        assert_eq!(agent_event(Event::Lagged { missed: 3 }), None);
    }
}
