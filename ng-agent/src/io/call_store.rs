//! The call journal on disk: `<state.dir>/calls.jsonl` (core::engine::journal, docs/ng-agent.md
//! "Restart journal"), kept by jsonl-journal's [`KeyedStore`]: one line appended per change of a
//! call, unchanged records not written again, the file rewritten compactly (0600, rename) at
//! start and when it is mostly dead lines.
//!
//! Call order: [`CallStore::open`] once at start (returns the calls to restore), then
//! [`CallStore::record`] for every entry `Engine::poll_journal` yields.

use std::collections::BTreeMap;
use std::path::Path;

use jsonl_journal::KeyedStore;
use tracing::warn;

use crate::core::engine::journal::{self, CallRecord, Entry, Replayed};

/// The journal file's name inside `state.dir`.
pub const FILE_NAME: &str = "calls.jsonl";

/// The journal, open for appending.
pub struct CallStore {
    store: KeyedStore<String>,
}

impl CallStore {
    /// Reads `<dir>/calls.jsonl` and rewrites it compactly. Never fails: a journal that cannot be
    /// read or written is logged, and calls go on without one (a restart then forgets them).
    pub fn open(dir: &Path) -> (CallStore, Vec<CallRecord>) {
        let path = dir.join(FILE_NAME);
        let replayed = match std::fs::read_to_string(&path) {
            Ok(text) => journal::replay(&text),
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
        let live: BTreeMap<String, Vec<u8>> = replayed
            .calls
            .iter()
            .filter_map(|r| {
                let line = journal::encode(&Entry::Call(Box::new(r.clone()))).ok()?;
                Some((r.call_id.clone(), line))
            })
            .collect();
        let (store, written) = KeyedStore::open(path, replayed.lines + replayed.bad_lines, live);
        let store = CallStore { store };
        store.log(written);
        (store, replayed.calls)
    }

    /// Writes one entry of `Engine::poll_journal`.
    pub fn record(&mut self, entry: &Entry) {
        let written = match journal::encode(entry) {
            Ok(line) => match entry {
                Entry::Call(r) => self.store.save(r.call_id.clone(), line),
                Entry::End { call_id } => self.store.end(call_id, &line),
            },
            Err(e) => {
                warn!(
                    call_id = entry.call_id(),
                    "cannot encode a call for the journal: {e}"
                );
                return;
            }
        };
        self.log(written);
    }

    fn log(&self, written: Result<(), jsonl_journal::RewriteError>) {
        if let Err(e) = written {
            warn!(
                "cannot write the call journal: {e} (a restart will forget the calls since; \
                 fork-agent keeps relaying them until they go idle)"
            );
        }
    }
}
