//! Events: the lines a `subscribe`d connection receives besides its answers (docs/control-api.md
//! "subscribe"). An event line has an `event` key, an answer an `ok` key.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One event line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A fork's status changed.
    ForkStatus {
        /// The fork.
        call_guid: String,
        /// What happened.
        status: ForkStatus,
        /// The reference's error string (CUBE "Error Strings in WebSocket Forking"), for
        /// `error` and `stopped`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// `started` again after a reconnect (streams re-announced with `resumed: true`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reconnected: bool,
        /// Not a change: the fork's current state, sent right after `subscribe` answered, one
        /// per live fork, so a subscriber that was away (reconnecting, lagged) catches up
        /// without taking a repeated line for a new change.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        snapshot: bool,
        /// The fork's first stream id (as `fork_start` answered it): tells two forks that
        /// reuse one `call_guid` apart (a START after a STOP), so a late event of the first
        /// is never taken for the second. Absent when the fork is gone (`stopped`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fork_id: Option<u32>,
    },
    /// fork-agent removed a flow by itself.
    FlowRemoved {
        /// The flow's `local`.
        local: SocketAddr,
        /// Why.
        reason: FlowRemovedReason,
    },
    /// This subscriber fell behind and `missed` events were dropped for it.
    Lagged {
        /// How many.
        missed: u64,
    },
    /// An event this version does not know (a newer agent); a subscriber skips it.
    #[serde(other)]
    Unknown,
}

/// `fork_status`'s `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForkStatus {
    /// `start` went out for the streams (first time, or again after a reconnect).
    Started,
    /// `pause` went out (or will, once connected).
    Paused,
    /// `resume` went out.
    Resumed,
    /// The fork ended.
    Stopped,
    /// Something failed; `error` says what.
    Error,
}

/// Why fork-agent removed a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowRemovedReason {
    /// No packet for `[dataplane] flow_idle_timeout_secs`.
    Idle,
    /// A reason this version does not know.
    #[serde(other)]
    Other,
}

impl Event {
    /// The event line, without the trailing `\n`.
    pub fn to_line(&self) -> String {
        // Strings, addresses and numbers only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"event":"unknown"}"#.into())
    }
}
