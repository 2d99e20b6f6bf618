//! Every live fork's current `fork_status`, for the snapshot a `subscribe` starts with
//! (docs/control-api.md "subscribe").
//!
//! A subscriber that was away (sip-agent reconnecting after a fork-agent restart, or one that
//! lagged) would otherwise keep a fork at the last state it heard, e.g. CONNECTING for a fork
//! that has long started. Publishing a status and taking a snapshot hold the same lock, so a
//! change is either in a new subscriber's snapshot or in its event stream, never both and
//! never neither.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use control_api::{Event, ForkStatus};
use tokio::sync::broadcast;

/// The statuses and the event channel they are published on.
#[derive(Clone)]
pub struct Statuses {
    current: Arc<Mutex<BTreeMap<String, Event>>>,
    events: broadcast::Sender<String>,
}

impl Statuses {
    /// Statuses published on `events` (the control API's event channel).
    pub fn new(events: broadcast::Sender<String>) -> Statuses {
        Statuses {
            current: Arc::default(),
            events,
        }
    }

    /// Sends `ev` to subscribers and, for a `fork_status`, keeps it as the fork's state (a
    /// stopped fork is forgotten).
    pub fn publish(&self, ev: Event) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Event::ForkStatus {
            call_guid, status, ..
        } = &ev
        {
            match status {
                ForkStatus::Stopped => {
                    current.remove(call_guid);
                }
                _ => {
                    current.insert(call_guid.clone(), ev.clone());
                }
            }
        }
        // No subscriber is fine: sip-agent may not be connected yet.
        let _ = self.events.send(ev.to_line());
    }

    /// A new subscription: the event stream from now on, and the snapshot lines (one per live
    /// fork, `snapshot: true`) to send before it.
    pub fn subscribe(&self) -> (broadcast::Receiver<String>, Vec<String>) {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.events.subscribe();
        let lines = current
            .values()
            .map(|ev| match ev.clone() {
                Event::ForkStatus {
                    call_guid,
                    status,
                    error,
                    reconnected,
                    fork_id,
                    ..
                } => Event::ForkStatus {
                    call_guid,
                    status,
                    error,
                    reconnected,
                    snapshot: true,
                    fork_id,
                }
                .to_line(),
                other => other.to_line(),
            })
            .collect();
        (rx, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(guid: &str, status: ForkStatus, error: Option<&str>) -> Event {
        Event::ForkStatus {
            call_guid: guid.into(),
            status,
            error: error.map(str::to_owned),
            reconnected: false,
            snapshot: false,
            fork_id: Some(7),
        }
    }

    fn decode(line: &str) -> Event {
        serde_json::from_str(line).expect("event line")
    }

    #[test]
    fn a_subscriber_gets_each_live_fork_once_either_in_the_snapshot_or_the_stream() {
        let (tx, _) = broadcast::channel(16);
        let s = Statuses::new(tx);
        s.publish(status("a", ForkStatus::Started, None));
        s.publish(status("b", ForkStatus::Started, None));
        s.publish(status(
            "b",
            ForkStatus::Error,
            Some("TCP Connection closed"),
        ));
        s.publish(status("c", ForkStatus::Started, None));
        s.publish(status("c", ForkStatus::Stopped, Some("Forking stopped")));
        let (mut rx, lines) = s.subscribe();
        let snap: Vec<Event> = lines.iter().map(|l| decode(l)).collect();
        assert_eq!(
            snap,
            vec![
                Event::ForkStatus {
                    call_guid: "a".into(),
                    status: ForkStatus::Started,
                    error: None,
                    reconnected: false,
                    snapshot: true,
                    fork_id: Some(7),
                },
                Event::ForkStatus {
                    call_guid: "b".into(),
                    status: ForkStatus::Error,
                    error: Some("TCP Connection closed".into()),
                    reconnected: false,
                    snapshot: true,
                    fork_id: Some(7),
                },
            ],
            "the last state of each live fork; the stopped one is gone"
        );
        assert!(
            rx.try_recv().is_err(),
            "nothing before the subscription is streamed"
        );
        s.publish(status("b", ForkStatus::Started, None));
        let streamed = decode(&rx.try_recv().expect("a later change is streamed"));
        assert_eq!(streamed, status("b", ForkStatus::Started, None));
    }
}
