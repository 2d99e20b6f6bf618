//! The call journal on disk: `<state.dir>/calls.jsonl` (core::call_journal, docs/sip-state.md).
//!
//! Role: keep the file in step with the live established calls so a restarted agent still
//! releases them. One line is appended per change (O_APPEND, one `write` per line, so a crash
//! leaves at most one cut line, which replay skips); an unchanged record is not written again.
//! The file is rewritten through a temporary file and `rename` at start, when the journal says
//! it is mostly dead lines, when the owner list changes, and after a failed append (the rewrite
//! puts the whole state back). The file and its temporary are created 0600 whatever the umask:
//! they hold Call-IDs, tags, numbers and addresses.
//!
//! The last line of each live call is kept in memory (a few kB per call) so a rewrite needs
//! nothing from the cores and a repeated record is recognised by comparing bytes.
//!
//! Call order: [`CallStore::open`] once at start (returns what to restore), then
//! [`CallStore::save`] / [`CallStore::end`] after every drive of the cores.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use tracing::warn;

use crate::core::call_journal::{self, CallRecord, Entry, Journal, Replayed};
use crate::core::reconcile::Owner;

/// The journal file's name inside `state.dir`.
pub const FILE_NAME: &str = "calls.jsonl";

pub struct CallStore {
    path: PathBuf,
    /// Append handle; `None` after a failed write, until a rewrite succeeds.
    file: Option<File>,
    journal: Journal,
    owners: Vec<Owner>,
    /// The last line written for each live call.
    live: BTreeMap<u32, Vec<u8>>,
}

impl CallStore {
    /// Reads `<dir>/calls.jsonl` and rewrites it compactly with the current `owner` added.
    /// Never fails: a journal that cannot be read or written is logged, and calls go on without
    /// one (a restart then relies on reconciliation).
    pub fn open(dir: &Path, owner: &Owner) -> (CallStore, Replayed) {
        let path = dir.join(FILE_NAME);
        let replayed = match std::fs::read_to_string(&path) {
            Ok(text) => call_journal::replay(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Replayed::default(),
            Err(e) => {
                warn!(path = %path.display(), "cannot read the call journal: {e}; starting without it");
                Replayed::default()
            }
        };
        if replayed.bad_lines > 0 {
            warn!(
                path = %path.display(),
                bad_lines = replayed.bad_lines,
                "skipped unreadable lines of the call journal (a write cut short by a crash?)"
            );
        }
        let mut owners = replayed.owners.clone();
        if !owners.contains(owner) {
            owners.push(owner.clone());
        }
        let live = replayed
            .calls
            .iter()
            .filter_map(|r| {
                let line = call_journal::encode(&Entry::Call(Box::new(r.clone()))).ok()?;
                Some((r.call.call, line))
            })
            .collect();
        let mut store = CallStore {
            path,
            file: None,
            journal: Journal::new(replayed.lines + replayed.bad_lines),
            owners,
            live,
        };
        store.rewrite();
        (store, replayed)
    }

    /// Every configuration's media addresses the journal records (for reconciliation).
    pub fn owners(&self) -> &[Owner] {
        &self.owners
    }

    /// Replaces the owner list (after a reconciliation, only the current configuration's).
    pub fn set_owners(&mut self, owners: Vec<Owner>) {
        if owners != self.owners {
            self.owners = owners;
            self.rewrite();
        }
    }

    /// Records a call's current state (nothing is written when it is unchanged).
    pub fn save(&mut self, record: CallRecord) {
        let id = record.call.call;
        let line = match call_journal::encode(&Entry::Call(Box::new(record))) {
            Ok(l) => l,
            Err(e) => {
                warn!(call = id, "cannot encode a call for the journal: {e}");
                return;
            }
        };
        if self.live.get(&id) == Some(&line) {
            return;
        }
        self.live.insert(id, line.clone());
        self.append(&line);
    }

    /// Records a call's end (nothing for a call never journalled).
    pub fn end(&mut self, call: u32) {
        if self.live.remove(&call).is_none() {
            return;
        }
        match call_journal::encode(&Entry::End { call }) {
            Ok(line) => self.append(&line),
            Err(e) => warn!(call, "cannot encode a call end for the journal: {e}"),
        }
    }

    /// Live calls journalled.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True when no call is journalled.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    fn append(&mut self, line: &[u8]) {
        let written = match &mut self.file {
            Some(f) => f.write_all(line).map_err(anyhow::Error::from),
            None => Err(anyhow::anyhow!("the journal is not open")),
        };
        match written {
            Ok(()) => {
                self.journal.appended();
                if self
                    .journal
                    .needs_compaction(self.live.len() + self.owners.len())
                {
                    self.rewrite();
                }
            }
            Err(e) => {
                warn!(path = %self.path.display(), "cannot append to the call journal: {e:#}; rewriting it");
                self.file = None;
                self.rewrite();
            }
        }
    }

    fn rewrite(&mut self) {
        match self.try_rewrite() {
            Ok((file, n)) => {
                self.file = Some(file);
                self.journal.compacted(n);
            }
            Err(e) => {
                self.file = None;
                warn!(
                    path = %self.path.display(),
                    "cannot write the call journal: {e:#} (a restart will not release these calls \
                     on BYE; reconciliation removes their flows)"
                );
            }
        }
    }

    fn try_rewrite(&self) -> Result<(File, usize)> {
        let mut body = Vec::new();
        for o in &self.owners {
            body.extend(call_journal::encode(&Entry::Owner(o.clone()))?);
        }
        for line in self.live.values() {
            body.extend_from_slice(line);
        }
        let file = jsonl_journal::rewrite_owner_only(&self.path, &body)?;
        Ok((file, self.owners.len() + self.live.len()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::core::b2bua::{Bind, CallSnapshot};
    use crate::core::dialog::Dialog;
    use crate::core::fork_request::ForkSequence;
    use crate::core::media::MediaSnapshot;
    use crate::core::transaction::{Peer, Transport};

    fn record(call: u32, cseq: u32) -> CallRecord {
        let dialog = |cid: String| Dialog {
            call_id: cid,
            local_tag: "l".into(),
            remote_tag: Some("r".into()),
            local_header: "<sip:a@10.77.1.1>;tag=l".into(),
            remote_header: "<sip:b@10.77.1.2>;tag=r".into(),
            remote_target: "sip:b@10.77.1.2".into(),
            route_set: vec![],
            local_cseq: cseq,
            remote_cseq: Some(1),
            peer: Peer {
                addr: "10.77.1.2:5060".parse().unwrap(),
                transport: Transport::Udp,
            },
        };
        let bind = Bind {
            sip_ip: "10.77.1.1".parse().unwrap(),
            media_ip: "10.77.1.1".parse().unwrap(),
        };
        CallRecord {
            call: CallSnapshot {
                call,
                a: dialog(format!("a{call}")),
                b: dialog(format!("b{call}")),
                route_forking: true,
                ports: [30000, 30002],
                binds: [bind, bind],
                media: [None, None],
                sdp_version: 1,
                session_id: 1,
                fork: ForkSequence::new(),
                fork_leg: None,
                enhanced: false,
                session_interval_secs: None,
                b_invite_cseq: 1,
                bot: false,
            },
            media_layer: MediaSnapshot::default(),
        }
    }

    fn owner(first: u16) -> Owner {
        Owner {
            ips: vec!["10.77.1.1".parse().unwrap()],
            first,
            last: first + 99,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("call-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn calls_survive_a_reopen_and_the_file_stays_compact() {
        let dir = scratch("reopen");
        let (mut s, r) = CallStore::open(&dir, &owner(30000));
        assert!(r.calls.is_empty());
        let mut live = Vec::new();
        for i in 0..3000u32 {
            s.save(record(i, 1));
            s.save(record(i, 1)); // unchanged: not written again
            live.push(i);
            if i % 3 != 0 {
                let gone = live.remove(0);
                s.end(gone);
            }
        }
        s.save(record(live[0], 9));
        s.end(99_999); // never journalled: nothing written
        assert!(
            s.journal.lines() <= 2 * (live.len() + 1).max(1024),
            "compacted: {} lines for {} live calls",
            s.journal.lines(),
            live.len()
        );
        drop(s);
        // A new configuration: the old range stays recorded until reconciliation is done.
        let (mut s, back) = CallStore::open(&dir, &owner(40000));
        let ids: Vec<u32> = back.calls.iter().map(|r| r.call.call).collect();
        let mut want = live.clone();
        want.sort();
        assert_eq!(ids, want);
        assert_eq!(back.calls[0].call.a.local_cseq, 9, "the latest record wins");
        assert_eq!(s.owners(), &[owner(30000), owner(40000)]);
        s.set_owners(vec![owner(40000)]);
        drop(s);
        let (_s, again) = CallStore::open(&dir, &owner(40000));
        assert_eq!(again.owners, vec![owner(40000)]);
        assert_eq!(again.calls.len(), live.len());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_journal_is_readable_by_its_owner_only_whatever_the_umask() {
        let dir = scratch("mode");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE_NAME), b"").unwrap();
        std::fs::set_permissions(dir.join(FILE_NAME), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        // An older file left 0644 is replaced by an owner-only one.
        let (mut s, _) = CallStore::open(&dir, &owner(30000));
        s.save(record(1, 1));
        let mode = std::fs::metadata(dir.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
