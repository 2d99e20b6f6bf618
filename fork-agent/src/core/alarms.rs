//! Stream-service alarms and connection history (sans-IO).
//!
//! Role: count the four connection events CUBE raises syslog alarms for (reference
//! cube-websocket-media-forking.txt, "Alarms": TCP failures, HTTP failures, remote WebSocket
//! closures, TCP closures), plus two of our own: speech
//! protocol errors (a server sent a frame it may not send, and we closed the connection) and
//! audio queue overflows (a connection's queue was full and its oldest audio was dropped; one
//! event per overflow episode), and decide when an alarm line is due: on the first occurrence and
//! then on every tenth ("after every ten occurences"). `clear` resets the counters, as
//! `clear voip stream-service statistics` does. It also keeps a bounded history of closed
//! connections for `show stream-service connection-history`.
//!
//! Inputs: [`Alarms::record`], [`Alarms::clear`], [`ConnHistory::push`].
//! Outputs: the `Option<Alarm>` returned by `record` (the shell logs it at warn), and the
//! snapshots [`Alarms::counts`] and [`ConnHistory::iter`]. No clock: records carry the time
//! the shell passes in.

use std::collections::VecDeque;

use serde::Serialize;

/// The four alarm kinds of the reference and our protocol-error kind, with their syslog wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// TCP (or DNS, TLS) failure while setting up a connection.
    TcpFailure,
    /// HTTP failure during the upgrade, authorization included.
    HttpFailure,
    /// The speech server closed the WebSocket gracefully (Close frame).
    RemoteWsClosure,
    /// The TCP connection to the speech server broke without a Close frame.
    TcpClosure,
    /// The speech server sent a frame the protocol does not allow (not in the reference: a
    /// garbage frame is no TCP closure, and counting it as one hid broken servers).
    ProtocolError,
    /// A connection's send queue filled up and audio was dropped, oldest first (not in the
    /// reference; one event per overflow episode, not per frame: core::ws_pool `Admit`).
    QueueOverflow,
}

impl AlarmKind {
    /// All kinds, in display order.
    pub const ALL: [AlarmKind; 6] = [
        AlarmKind::TcpFailure,
        AlarmKind::HttpFailure,
        AlarmKind::RemoteWsClosure,
        AlarmKind::TcpClosure,
        AlarmKind::ProtocolError,
        AlarmKind::QueueOverflow,
    ];

    /// Wording of the reference's syslog line (`%SIP-3-STREAM_SERVICE: 50 TCP connection failures`).
    pub fn label(self) -> &'static str {
        match self {
            AlarmKind::TcpFailure => "TCP connection failures",
            AlarmKind::HttpFailure => "HTTP connection failures",
            AlarmKind::RemoteWsClosure => "Remote WebSocket closures",
            AlarmKind::TcpClosure => "TCP closures",
            AlarmKind::ProtocolError => "speech protocol errors",
            AlarmKind::QueueOverflow => "audio queue overflows",
        }
    }

    /// Stable name for metrics and JSON.
    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::TcpFailure => "tcp_failures",
            AlarmKind::HttpFailure => "http_failures",
            AlarmKind::RemoteWsClosure => "remote_ws_closures",
            AlarmKind::TcpClosure => "tcp_closures",
            AlarmKind::ProtocolError => "protocol_errors",
            AlarmKind::QueueOverflow => "queue_overflows",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// An alarm that is due: log `"{count} {kind.label()}"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alarm {
    /// What happened.
    pub kind: AlarmKind,
    /// Occurrences since start or the last clear.
    pub count: u64,
}

/// Every tenth occurrence after the first raises an alarm again (reference "Alarms").
pub const ALARM_EVERY: u64 = 10;

/// Counters of the alarm kinds.
#[derive(Debug, Clone, Default)]
pub struct Alarms {
    counts: [u64; AlarmKind::ALL.len()],
    raised: u64,
}

impl Alarms {
    /// Counts one event; returns the alarm when one is due (first, then every tenth).
    pub fn record(&mut self, kind: AlarmKind) -> Option<Alarm> {
        let c = &mut self.counts[kind.index()];
        *c += 1;
        let count = *c;
        (count == 1 || count.is_multiple_of(ALARM_EVERY)).then(|| {
            self.raised += 1;
            Alarm { kind, count }
        })
    }

    /// Occurrences of `kind` since start or the last clear.
    pub fn count(&self, kind: AlarmKind) -> u64 {
        self.counts[kind.index()]
    }

    /// Alarm lines raised since start or the last clear.
    pub fn raised(&self) -> u64 {
        self.raised
    }

    /// `clear stream-service statistics`: back to zero, so the next event alarms again.
    pub fn clear(&mut self) {
        *self = Alarms::default();
    }
}

/// One closed connection, for `show stream-service connection-history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClosedConn {
    /// Connection id as shown by `show stream-service connection`.
    pub id: u32,
    /// Server label (`name host:port`).
    pub server: String,
    /// Unix seconds of the upgrade, if it ever completed.
    pub connected_at: Option<u64>,
    /// Unix seconds of the close.
    pub closed_at: u64,
    /// Why it closed, in the reference's words where it has them.
    pub reason: String,
    /// Calls it carried over its life.
    pub calls: u64,
}

/// Bounded history of closed connections, oldest dropped first.
#[derive(Debug, Clone)]
pub struct ConnHistory {
    cap: usize,
    items: VecDeque<ClosedConn>,
    dropped: u64,
}

/// Default history length.
pub const HISTORY_LEN: usize = 100;

impl ConnHistory {
    /// A history keeping at most `cap` (at least 1) records.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            items: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Appends a record, dropping (and counting) the oldest when full.
    pub fn push(&mut self, rec: ClosedConn) {
        if self.items.len() == self.cap {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(rec);
    }

    /// Records, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &ClosedConn> {
        self.items.iter()
    }

    /// Records pushed out by newer ones.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_on_first_then_every_tenth() {
        let mut a = Alarms::default();
        let due: Vec<u64> = (0..25)
            .filter_map(|_| a.record(AlarmKind::TcpFailure))
            .map(|al| al.count)
            .collect();
        assert_eq!(due, [1, 10, 20]);
        assert_eq!(a.count(AlarmKind::TcpFailure), 25);
        assert_eq!(a.count(AlarmKind::TcpClosure), 0);
        assert_eq!(a.raised(), 3);
        // Kinds are independent.
        assert_eq!(
            a.record(AlarmKind::HttpFailure),
            Some(Alarm {
                kind: AlarmKind::HttpFailure,
                count: 1
            })
        );
    }

    #[test]
    fn clear_resets_so_the_next_event_alarms() {
        let mut a = Alarms::default();
        for _ in 0..3 {
            a.record(AlarmKind::RemoteWsClosure);
        }
        a.clear();
        assert_eq!(a.count(AlarmKind::RemoteWsClosure), 0);
        assert!(a.record(AlarmKind::RemoteWsClosure).is_some());
        assert_eq!(AlarmKind::TcpClosure.label(), "TCP closures");
        a.record(AlarmKind::ProtocolError);
        assert_eq!(a.count(AlarmKind::ProtocolError), 1);
        assert_eq!(a.count(AlarmKind::TcpClosure), 0, "kinds are apart");
        assert_eq!(AlarmKind::ProtocolError.name(), "protocol_errors");
    }

    #[test]
    fn history_is_bounded_and_counts_what_it_forgot() {
        let mut h = ConnHistory::new(2);
        for id in 1..=3 {
            h.push(ClosedConn {
                id,
                server: "asr".into(),
                connected_at: None,
                closed_at: 0,
                reason: "Connection closed".into(),
                calls: 0,
            });
        }
        let ids: Vec<u32> = h.iter().map(|c| c.id).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(h.dropped(), 1);
    }
}
