//! The call journal (sans-IO): what a restarted ng-agent needs to go on answering for its calls.
//!
//! Role: every call the engine holds is written as one JSON line ([`Entry::Call`], a
//! [`CallRecord`]) after any request or fork-agent answer that may have changed it, and an
//! [`Entry::End`] line when it goes; [`replay`] applies a file's lines in order at start and
//! [`Engine::restore`] puts the calls back: their legs, SDP audio, installed flows, fork and
//! pending delete delay, with their ports taken out of the pool again. fork-agent kept relaying
//! the flows meanwhile (pinned maps), so nothing is sent to it on restore.
//!
//! Inputs: the engine marks a call after each input that may change it; [`Engine::poll_journal`]
//! drains those marks as entries (the shell writes them before it sends the replies, so a reply
//! the proxy saw is never for a call the journal lacks). [`Engine::restore`] takes the replayed
//! records. File format and the store: docs/ng-agent.md "Restart journal", io::call_store.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use control_api::FlowSpec;
use media_anchor::sdp::AudioMedia;
use serde::{Deserialize, Serialize};

use super::{Call, Command, Engine, Fork, Leg};

/// When to compact: shared with sip-agent's and fork-agent's journals.
pub use jsonl_journal::Journal;

/// One side of a journalled call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegRecord {
    /// Its SIP tag (`None` before the answer names it).
    pub tag: Option<String>,
    /// The address on this host its media arrives at.
    pub local: SocketAddr,
    /// Where its media goes.
    pub remote: Option<SocketAddr>,
    /// Its SDP's audio, as last seen.
    pub audio: Option<AudioMedia>,
    /// Unix seconds it was created.
    pub created: u64,
    /// A browser leg bridged through the gateway (its DTLS and SRTP state die with the
    /// process: restored, it is a plain leg kept so that `delete` removes the call's flows).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub browser: bool,
}

/// A fork of a journalled call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkRecord {
    /// fork-agent's call GUID.
    pub guid: String,
    /// fork-agent accepted its `fork_start`.
    pub started: bool,
}

/// One journalled call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The Call-ID (the call's key).
    pub call_id: String,
    /// Side A (first offer's From tag) and side B.
    pub legs: [LegRecord; 2],
    /// Unix seconds of the first offer.
    pub created: u64,
    /// Unix seconds of the last offer or answer.
    pub last_signal: u64,
    /// `strict-source` was asked for.
    pub strict_source: bool,
    /// The flows installed in fork-agent.
    pub flows: Vec<FlowSpec>,
    /// The call's fork, if any.
    pub fork: Option<ForkRecord>,
    /// Unix second its delete delay ends, after a `delete`.
    pub delete_at: Option<u64>,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    /// A call, new or changed (in a compacted journal: live).
    Call(Box<CallRecord>),
    /// The call with this Call-ID is gone.
    End {
        /// Its Call-ID.
        call_id: String,
    },
}

impl Entry {
    /// The Call-ID the line is about.
    pub fn call_id(&self) -> &str {
        match self {
            Entry::Call(r) => &r.call_id,
            Entry::End { call_id } => call_id,
        }
    }
}

/// One line, newline included.
pub fn encode(entry: &Entry) -> Result<Vec<u8>, serde_json::Error> {
    jsonl_journal::encode_line(entry)
}

/// What replaying a journal found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Live calls, by Call-ID.
    pub calls: Vec<CallRecord>,
    /// Complete lines read.
    pub lines: usize,
    /// Lines that did not parse (a write cut short by a crash, or damage); skipped.
    pub bad_lines: usize,
}

/// Applies the journal's lines in order: a later `call` line replaces an earlier one of the
/// same Call-ID, `end` removes it.
pub fn replay(text: &str) -> Replayed {
    let mut live: BTreeMap<String, CallRecord> = BTreeMap::new();
    let counts = jsonl_journal::replay(text, |e| match e {
        Entry::Call(r) => {
            live.insert(r.call_id.clone(), *r);
        }
        Entry::End { call_id } => {
            live.remove(&call_id);
        }
    });
    Replayed {
        calls: live.into_values().collect(),
        lines: counts.lines,
        bad_lines: counts.bad_lines,
    }
}

/// A journalled call [`Engine::restore`] could not take back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// A leg's port is outside the configured range or taken by another restored call.
    #[error("call {call_id}: media port {port} is not free in the configured range")]
    Port {
        /// The call.
        call_id: String,
        /// The port.
        port: u16,
    },
    /// A browser leg cannot be resumed: restored without its bridge.
    #[error("call {call_id}: its browser leg's DTLS session ended with the previous process; the call is kept for delete, the browser hears nothing more")]
    BrowserLegLost {
        /// The call.
        call_id: String,
    },
}

/// Whether `command` can change a call (and so its journal line).
pub(super) fn changes_call(command: Command) -> bool {
    matches!(
        command,
        Command::Offer
            | Command::Answer
            | Command::Delete
            | Command::StartForwarding
            | Command::StopForwarding
    )
}

impl Engine {
    /// The next journal line owed: a changed call's record, or the end of a removed one. Drain
    /// until `None` after every `handle_*` call, before sending the replies; `now` and
    /// `unix_now` turn a pending delete delay into a wall-clock second.
    #[must_use]
    pub fn poll_journal(&mut self, now: Instant, unix_now: u64) -> Option<Entry> {
        let call_id = self.journal_dirty.pop_first()?;
        Some(match self.calls.get(&call_id) {
            Some(call) => Entry::Call(Box::new(record(&call_id, call, now, unix_now))),
            None => Entry::End { call_id },
        })
    }

    /// Every call's record (a compacted journal).
    pub fn journal_records(&self, now: Instant, unix_now: u64) -> Vec<CallRecord> {
        let mut out: Vec<CallRecord> = self
            .calls
            .iter()
            .map(|(id, call)| record(id, call, now, unix_now))
            .collect();
        out.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        out
    }

    /// Takes back the calls of a replayed journal (at start, before any request): their ports
    /// leave the pool, their delete delays are scheduled again (a delay that ended while the
    /// agent was down fires at the next `handle_timeout`, tearing the call down in fork-agent).
    /// A call whose ports are not free is skipped and reported.
    pub fn restore(
        &mut self,
        now: Instant,
        unix_now: u64,
        records: Vec<CallRecord>,
    ) -> Vec<RestoreError> {
        let mut problems = Vec::new();
        for r in records {
            if self.calls.contains_key(&r.call_id) {
                continue;
            }
            let (pa, pb) = (r.legs[0].local.port(), r.legs[1].local.port());
            let taken = if !self.ports.reserve(pa) {
                Some(pa)
            } else if !self.ports.reserve(pb) {
                self.ports.release(pa);
                Some(pb)
            } else {
                None
            };
            if let Some(port) = taken {
                problems.push(RestoreError::Port {
                    call_id: r.call_id,
                    port,
                });
                continue;
            }
            let delete_at = r
                .delete_at
                .map(|at| now + Duration::from_secs(at.saturating_sub(unix_now)));
            if r.legs.iter().any(|l| l.browser) {
                problems.push(RestoreError::BrowserLegLost {
                    call_id: r.call_id.clone(),
                });
            }
            let [a, b] = r.legs;
            let call = Call {
                legs: [leg(a), leg(b)],
                created: r.created,
                last_signal: r.last_signal,
                strict_source: r.strict_source,
                flows: r.flows.into_iter().map(|f| (f.local, f)).collect(),
                fork: r.fork.map(|f| Fork {
                    guid: f.guid,
                    started: f.started,
                }),
                delete_at,
            };
            if let Some(at) = delete_at {
                self.deletions.insert((at, r.call_id.clone()));
            }
            self.calls.insert(r.call_id, call);
        }
        problems
    }
}

fn leg(r: LegRecord) -> Leg {
    Leg {
        tag: r.tag,
        local: r.local,
        remote: r.remote,
        audio: r.audio,
        created: r.created,
        webrtc: None,
    }
}

fn record(call_id: &str, call: &Call, now: Instant, unix_now: u64) -> CallRecord {
    let leg = |l: &Leg| LegRecord {
        tag: l.tag.clone(),
        local: l.local,
        remote: l.remote,
        audio: l.audio.clone(),
        created: l.created,
        browser: l.webrtc.is_some(),
    };
    CallRecord {
        call_id: call_id.to_owned(),
        legs: [leg(&call.legs[0]), leg(&call.legs[1])],
        created: call.created,
        last_signal: call.last_signal,
        strict_source: call.strict_source,
        flows: call.flows.values().cloned().collect(),
        fork: call.fork.as_ref().map(|f| ForkRecord {
            guid: f.guid.clone(),
            started: f.started,
        }),
        // Rounded up, so a restored delay never ends before the original one.
        delete_at: call.delete_at.map(|at| {
            let left = at.saturating_duration_since(now);
            unix_now + left.as_secs() + u64::from(left.subsec_nanos() > 0)
        }),
    }
}
