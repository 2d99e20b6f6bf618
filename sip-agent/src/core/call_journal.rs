//! The call journal (sans-IO): what a restarted sip-agent needs to release its calls.
//!
//! Role: every established call's dialogs, media and fork (a [`CallRecord`]) is appended as
//! one JSON line when it is answered and whenever its journalled state changes (an in-dialog
//! request, a relayed re-INVITE, a status INFO, a fork change), and an `end` line when it ends.
//! Replay at start applies the lines in order (a later `call` line of the same call replaces
//! the earlier one, `end` removes it) and yields the calls to restore. The file is rewritten
//! as one line per live call when it has grown to more than twice that (and at least
//! [`MIN_LINES_TO_COMPACT`] lines), so each change costs one short append, amortized O(1). A
//! line cut short by a crash is skipped; every complete line before it counts. `owner` lines
//! record which media addresses this agent hands out (restart reconciliation only touches
//! those, core::reconcile), so a configuration change does not orphan the old range's flows.
//!
//! Inputs: [`encode`] per change, [`replay`] of the file's text at start,
//! [`Journal::appended`] / [`Journal::compacted`] as the shell writes.
//! Outputs: the lines, the [`Replayed`] calls and owners, [`Journal::needs_compaction`].
//! File format: docs/sip-state.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::b2bua::CallSnapshot;
use super::media::MediaSnapshot;
use super::reconcile::Owner;

/// One journalled call: the B2BUA's part and the media layer's part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Dialogs, ports, negotiated media, fork sequence.
    #[serde(flatten)]
    pub call: CallSnapshot,
    /// Flows asked for and the fork.
    pub media_layer: MediaSnapshot,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    /// A configuration's media addresses.
    Owner(Owner),
    /// A call, established or changed (in a compacted journal: live).
    Call(Box<CallRecord>),
    /// The call with this handle number ended.
    End {
        /// `call` of its record.
        call: u32,
    },
}

/// One line, newline included.
pub fn encode(entry: &Entry) -> Result<Vec<u8>, serde_json::Error> {
    jsonl_journal::encode_line(entry)
}

/// What replaying a journal found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Live calls, in handle order.
    pub calls: Vec<CallRecord>,
    /// Every distinct owner line, in file order.
    pub owners: Vec<Owner>,
    /// Complete lines read.
    pub lines: usize,
    /// Lines that did not parse (a write cut short by a crash, or damage); skipped.
    pub bad_lines: usize,
}

/// Applies the journal's lines in order.
pub fn replay(text: &str) -> Replayed {
    let mut live: BTreeMap<u32, CallRecord> = BTreeMap::new();
    let mut owners: Vec<Owner> = Vec::new();
    let counts = jsonl_journal::replay(text, |e| match e {
        Entry::Owner(o) => {
            if !owners.contains(&o) {
                owners.push(o);
            }
        }
        Entry::Call(r) => {
            live.insert(r.call.call, *r);
        }
        Entry::End { call } => {
            live.remove(&call);
        }
    });
    Replayed {
        calls: live.into_values().collect(),
        owners,
        lines: counts.lines,
        bad_lines: counts.bad_lines,
    }
}

/// When to compact: shared with fork-agent's fork journal.
pub use jsonl_journal::{Journal, MIN_LINES_TO_COMPACT};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::b2bua::{Bind, Leg};
    use crate::core::dialog::Dialog;
    use crate::core::fork_request::ForkSequence;
    use crate::core::media::ForkSnapshot;
    use crate::core::transaction::{Peer, Transport};
    use control_api::FlowSpec;

    fn record(call: u32, cseq: u32) -> CallRecord {
        let peer = |a: &str| Peer {
            addr: a.parse().unwrap(),
            transport: Transport::Udp,
        };
        let dialog = |cid: &str, l: &str, r: &str, p: &str| Dialog {
            call_id: cid.into(),
            local_tag: l.into(),
            remote_tag: Some(r.into()),
            local_header: format!("<sip:x@10.77.1.1>;tag={l}"),
            remote_header: format!("<sip:y@{p}>;tag={r}"),
            remote_target: format!("sip:y@{p}"),
            route_set: vec!["<sip:proxy.example;lr>".into()],
            local_cseq: cseq,
            remote_cseq: Some(1),
            peer: peer(p),
        };
        let bind = Bind {
            sip_ip: "10.77.1.1".parse().unwrap(),
            media_ip: "10.77.1.1".parse().unwrap(),
        };
        CallRecord {
            call: CallSnapshot {
                call,
                a: dialog(&format!("a{call}"), "la", "ra", "10.77.1.2:5060"),
                b: dialog(&format!("b{call}"), "lb", "rb", "10.77.2.2:5060"),
                route_forking: true,
                ports: [30000, 30002],
                binds: [bind, bind],
                media: [None, None],
                sdp_version: 2,
                session_id: 7,
                fork: ForkSequence::new(),
                fork_leg: Some(Leg::A),
                enhanced: true,
                session_interval_secs: Some(1800),
                b_invite_cseq: 1,
                bot: false,
            },
            media_layer: MediaSnapshot {
                flows: vec![FlowSpec {
                    local: "10.77.1.1:30000".parse().unwrap(),
                    src: "10.77.1.1:30002".parse().unwrap(),
                    dst: "10.77.2.2:40000".parse().unwrap(),
                    expect: None,
                    rtcp: false,
                    payload_types: vec![0, 8],
                    dtmf_pt: Some(101),
                    sink: false,
                }],
                forks: vec![ForkSnapshot {
                    call_guid: "g".into(),
                    codec: "PCMA".into(),
                    requested: None,
                    paused: false,
                    streams: [Some("10.77.1.1:30000".parse().unwrap()), None],
                    channel_ids: [Some(7), None],
                }],
            },
        }
    }

    fn text(entries: &[Entry]) -> String {
        let mut t = Vec::new();
        for e in entries {
            t.extend(encode(e).unwrap());
        }
        String::from_utf8(t).unwrap()
    }

    fn owner(first: u16) -> Owner {
        Owner {
            ips: vec!["10.77.1.1".parse().unwrap()],
            first,
            last: first + 99,
        }
    }

    #[test]
    fn calls_and_ends_replay_to_the_live_calls() {
        let t = text(&[
            Entry::Owner(owner(30000)),
            Entry::Call(Box::new(record(1, 1))),
            Entry::Call(Box::new(record(2, 1))),
            Entry::End { call: 1 },
            Entry::Call(Box::new(record(3, 1))),
            // A later line of the same call replaces the earlier one (its CSeq moved on).
            Entry::Call(Box::new(record(2, 5))),
            Entry::Owner(owner(30000)),
            Entry::Owner(owner(40000)),
        ]);
        let r = replay(&t);
        assert_eq!(r.calls, vec![record(2, 5), record(3, 1)]);
        assert_eq!(r.owners, vec![owner(30000), owner(40000)]);
        assert_eq!((r.lines, r.bad_lines), (8, 0));
    }

    #[test]
    fn a_line_cut_short_is_skipped_and_everything_before_it_counts() {
        let mut t = text(&[Entry::Call(Box::new(record(1, 1)))]);
        let cut = text(&[Entry::End { call: 1 }]);
        t.push_str(&cut[..cut.len() / 2]);
        let r = replay(&t);
        assert_eq!(r.calls, vec![record(1, 1)]);
        assert_eq!((r.lines, r.bad_lines), (1, 1));
        assert_eq!(replay(""), Replayed::default());
    }

    #[test]
    fn a_record_round_trips_with_everything_a_bye_needs() {
        let line = encode(&Entry::Call(Box::new(record(9, 4)))).unwrap();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        let c = &v["call"];
        assert_eq!(c["call"], 9);
        for leg in ["a", "b"] {
            for field in [
                "call_id",
                "local_tag",
                "remote_tag",
                "remote_target",
                "route_set",
                "local_cseq",
                "peer",
            ] {
                assert!(!c[leg][field].is_null(), "{leg}.{field} missing: {c}");
            }
        }
        assert_eq!(c["a"]["peer"]["addr"], "10.77.1.2:5060");
        assert_eq!(c["a"]["peer"]["transport"], "udp");
        assert_eq!(c["media_layer"]["fork"]["call_guid"], "g");
        assert_eq!(
            encode(&Entry::End { call: 9 }).unwrap(),
            b"{\"end\":{\"call\":9}}\n"
        );
        let back = replay(std::str::from_utf8(&line).unwrap());
        assert_eq!(back.calls, vec![record(9, 4)]);
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
        assert!(!j.needs_compaction(MIN_LINES_TO_COMPACT / 2));
        assert!(j.needs_compaction(MIN_LINES_TO_COMPACT / 2 - 1));
        j.compacted(10);
        assert_eq!(j.lines(), 10);
        assert!(!j.needs_compaction(10));
    }
}
