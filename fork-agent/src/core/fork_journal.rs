//! The fork state journal (sans-IO): what a restarted agent needs to resume every fork.
//!
//! Role: fork-agent used to rewrite the whole fork list on every START and STOP, so setting up
//! n calls wrote O(n²) bytes (about 1.5 MB per START at 5,000 forks). The journal appends one
//! JSON line per change instead and is compacted (rewritten as one `start` line per live fork)
//! only when it has grown to more than twice the live state, so each change costs O(1)
//! amortized. A line cut short by a crash in the middle of a write is skipped on replay; every
//! complete line before it still counts.
//!
//! Inputs: [`encode`] for each change, [`replay`] of the file's text at start,
//! [`Journal::appended`] / [`Journal::compacted`] as the shell writes.
//! Outputs: the lines to append, the forks to restore, and [`Journal::needs_compaction`].
//! Wire format: docs/control-api.md, "Restart and state".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::flows::Fork;

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // one per fork start/stop, never on the media path
pub enum Entry {
    /// A fork started (or, in a compacted journal, is live).
    Start(Fork),
    /// The fork of this call stopped.
    Stop {
        /// The call GUID of the fork.
        call_guid: String,
    },
}

/// One line, newline included.
pub fn encode(entry: &Entry) -> Result<Vec<u8>, serde_json::Error> {
    jsonl_journal::encode_line(entry)
}

/// What replaying a journal found.
#[derive(Debug, Default, PartialEq)]
pub struct Replayed {
    /// Live forks, in call GUID order.
    pub forks: Vec<Fork>,
    /// Complete lines read.
    pub lines: usize,
    /// Lines that did not parse (a write cut short by a crash, or damage); skipped.
    pub bad_lines: usize,
}

/// Apply the journal's lines in order: a later `start` of the same call replaces an earlier
/// one, a `stop` removes it.
pub fn replay(text: &str) -> Replayed {
    let mut live: BTreeMap<String, Fork> = BTreeMap::new();
    let counts = jsonl_journal::replay(text, |e| match e {
        Entry::Start(fork) => {
            live.insert(fork.spec.call_guid.clone(), fork);
        }
        Entry::Stop { call_guid } => {
            live.remove(&call_guid);
        }
    });
    Replayed {
        forks: live.into_values().collect(),
        lines: counts.lines,
        bad_lines: counts.bad_lines,
    }
}

/// When to compact: shared with sip-agent's call journal.
pub use jsonl_journal::{Journal, MIN_LINES_TO_COMPACT};

#[cfg(test)]
mod tests {
    use super::*;
    use control_api::{ForkSpec, StreamSpec};
    use speech_proto::{Channel, Codec};

    fn fork(guid: &str, stream: u32) -> Fork {
        let flow = "10.77.1.1:30000".parse().unwrap();
        Fork {
            spec: ForkSpec {
                destination: None,
                call_guid: guid.into(),
                call_id: format!("call-{guid}"),
                from: "1000".into(),
                to: "2000".into(),
                server: "asr".into(),
                codec: Codec::Pcmu,
                ptime_ms: 20,
                metadata: Default::default(),
                streams: vec![StreamSpec {
                    channel: Channel::Caller,
                    flow,
                }],
                return_audio: None,
            },
            streams: vec![(stream, flow)],
        }
    }

    fn text(entries: &[Entry]) -> String {
        let mut t = Vec::new();
        for e in entries {
            t.extend(encode(e).unwrap());
        }
        String::from_utf8(t).unwrap()
    }

    #[test]
    fn starts_and_stops_replay_to_the_live_forks() {
        let t = text(&[
            Entry::Start(fork("a", 1)),
            Entry::Start(fork("b", 2)),
            Entry::Stop {
                call_guid: "a".into(),
            },
            Entry::Start(fork("c", 3)),
            // A second start of the same call replaces the first.
            Entry::Start(fork("b", 4)),
        ]);
        let r = replay(&t);
        assert_eq!(r.forks, vec![fork("b", 4), fork("c", 3)]);
        assert_eq!((r.lines, r.bad_lines), (5, 0));
    }

    #[test]
    fn a_line_cut_short_is_skipped_and_everything_before_it_counts() {
        let mut t = text(&[Entry::Start(fork("a", 1)), Entry::Start(fork("b", 2))]);
        let cut = text(&[Entry::Stop {
            call_guid: "a".into(),
        }]);
        t.push_str(&cut[..cut.len() / 2]);
        let r = replay(&t);
        assert_eq!(r.forks, vec![fork("a", 1), fork("b", 2)]);
        assert_eq!((r.lines, r.bad_lines), (2, 1));
        assert_eq!(replay(""), Replayed::default());
    }

    #[test]
    fn lines_are_one_json_object_each() {
        let line = encode(&Entry::Stop {
            call_guid: "g".into(),
        })
        .unwrap();
        assert_eq!(line, b"{\"stop\":{\"call_guid\":\"g\"}}\n");
        let start = encode(&Entry::Start(fork("g", 7))).unwrap();
        assert_eq!(start.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(start.starts_with(b"{\"start\":{\"spec\":"));
    }

    #[test]
    fn compaction_is_due_only_when_the_file_is_long_and_mostly_dead() {
        let mut j = Journal::new(0);
        for _ in 0..MIN_LINES_TO_COMPACT - 1 {
            j.appended();
        }
        assert!(!j.needs_compaction(0), "short files are left alone");
        j.appended();
        assert!(j.needs_compaction(0));
        assert!(
            !j.needs_compaction(MIN_LINES_TO_COMPACT / 2),
            "half live: not yet"
        );
        assert!(j.needs_compaction(MIN_LINES_TO_COMPACT / 2 - 1));
        j.compacted(10);
        assert_eq!(j.lines(), 10);
        assert!(!j.needs_compaction(10));
    }
}
