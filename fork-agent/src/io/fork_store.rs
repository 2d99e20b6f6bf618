//! The fork state file: the journal of core::fork_journal on disk.
//!
//! Role: keep `<state_dir>/forks.jsonl` in step with the fork table so a restarted agent
//! resumes every fork. One line is appended per START and STOP (O_APPEND, one `write` per
//! line, so a crash leaves at most one cut line, which replay skips); the file is rewritten
//! through a temporary file and `rename` when the journal says it is mostly dead lines, or when
//! an append failed (the rewrite puts the whole state back).
//! Call order: [`ForkStore::open`] once at start (returns the forks to restore), then
//! [`ForkStore::record`] after every change of the table's forks.
//! An agent older than the journal kept a JSON array in `forks.json`; `open` reads it when no
//! journal exists and replaces it.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Result;
use tracing::{info, warn};

use crate::core::{
    flows::Fork,
    fork_journal::{self, Entry, Journal},
};

pub struct ForkStore {
    path: PathBuf,
    /// Append handle; `None` after a failed write, until a rewrite succeeds.
    file: Option<File>,
    journal: Journal,
}

impl ForkStore {
    /// Read the state in `dir` and open the journal for appending. Never fails: a state that
    /// cannot be read or written is logged, and forking goes on without resumable state.
    pub fn open(dir: &Path) -> (ForkStore, Vec<Fork>) {
        let path = dir.join("forks.jsonl");
        let legacy = dir.join("forks.json");
        let (forks, lines) = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let r = fork_journal::replay(&text);
                if r.bad_lines > 0 {
                    warn!(
                        path = %path.display(),
                        bad_lines = r.bad_lines,
                        "skipped unreadable lines of the fork journal (a write cut short by a crash?)"
                    );
                }
                (r.forks, r.lines + r.bad_lines)
            }
            Err(_) => (read_legacy(&legacy), 0),
        };
        let mut store = ForkStore {
            path,
            file: None,
            journal: Journal::new(lines),
        };
        // Start from a compact file holding exactly what is restored.
        store.rewrite(forks.iter());
        if store.file.is_some() && legacy.exists() {
            match std::fs::remove_file(&legacy) {
                Ok(()) => info!(path = %legacy.display(), "fork state moved to forks.jsonl"),
                Err(e) => warn!(path = %legacy.display(), "cannot remove old fork state: {e}"),
            }
        }
        (store, forks)
    }

    /// Record one change. `live` is the table's forks after it, used only when the file is
    /// rewritten.
    pub fn record<'a>(
        &mut self,
        entry: &Entry,
        live_count: usize,
        live: impl Iterator<Item = &'a Fork>,
    ) {
        let appended = match (&mut self.file, fork_journal::encode(entry)) {
            (Some(f), Ok(line)) => f.write_all(&line).map_err(anyhow::Error::from),
            (None, _) => Err(anyhow::anyhow!("the journal is not open")),
            (_, Err(e)) => Err(e.into()),
        };
        match appended {
            Ok(()) => {
                self.journal.appended();
                if self.journal.needs_compaction(live_count) {
                    self.rewrite(live);
                }
            }
            Err(e) => {
                warn!(path = %self.path.display(), "cannot append to the fork journal: {e:#}; rewriting it");
                self.file = None;
                self.rewrite(live);
            }
        }
    }

    /// Lines in the file now.
    #[cfg(test)]
    fn lines(&self) -> usize {
        self.journal.lines()
    }

    fn rewrite<'a>(&mut self, live: impl Iterator<Item = &'a Fork>) {
        match self.try_rewrite(live) {
            Ok((file, n)) => {
                self.file = Some(file);
                self.journal.compacted(n);
            }
            Err(e) => {
                self.file = None;
                warn!(
                    path = %self.path.display(),
                    "cannot write fork state: {e:#} (a restart will not resume these forks)"
                );
            }
        }
    }

    fn try_rewrite<'a>(&self, live: impl Iterator<Item = &'a Fork>) -> Result<(File, usize)> {
        let mut body = Vec::new();
        let mut n = 0;
        for fork in live {
            body.extend(fork_journal::encode(&Entry::Start(fork.clone()))?);
            n += 1;
        }
        // Owner only, whatever the umask: the journal holds call ids, numbers and metadata.
        let file = jsonl_journal::rewrite_owner_only(&self.path, &body)?;
        Ok((file, n))
    }
}

fn read_legacy(path: &Path) -> Vec<Fork> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!("ignoring unreadable fork state {}: {e}", path.display());
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use control_api::{ForkSpec, StreamSpec};
    use speech_proto::{Channel, Codec};

    fn fork(guid: &str) -> Fork {
        let flow = "10.77.1.1:30000".parse().unwrap();
        Fork {
            spec: ForkSpec {
                destination: None,
                call_guid: guid.into(),
                call_id: String::new(),
                from: String::new(),
                to: String::new(),
                server: "asr".into(),
                codec: Codec::Pcma,
                ptime_ms: 20,
                metadata: Default::default(),
                streams: vec![StreamSpec {
                    channel: Channel::Callee,
                    flow,
                }],
                return_audio: None,
            },
            streams: vec![(9, flow)],
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fork-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn changes_survive_a_reopen_and_the_file_stays_compact() {
        let dir = scratch("reopen");
        let (mut s, forks) = ForkStore::open(&dir);
        assert!(forks.is_empty());
        let mut live: Vec<Fork> = Vec::new();
        for i in 0..3000 {
            let f = fork(&format!("g{i}"));
            live.push(f.clone());
            s.record(&Entry::Start(f), live.len(), live.iter());
            if i % 3 != 0 {
                let gone = live.remove(0);
                let stop = Entry::Stop {
                    call_guid: gone.spec.call_guid,
                };
                s.record(&stop, live.len(), live.iter());
            }
        }
        assert!(
            s.lines() <= 2 * live.len().max(1024),
            "compacted: {} lines for {} live forks",
            s.lines(),
            live.len()
        );
        drop(s);
        let (_s, mut back) = ForkStore::open(&dir);
        back.sort_by(|a, b| a.spec.call_guid.cmp(&b.spec.call_guid));
        live.sort_by(|a, b| a.spec.call_guid.cmp(&b.spec.call_guid));
        assert_eq!(back, live);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_journal_is_readable_by_its_owner_only_whatever_the_umask() {
        let dir = scratch("mode");
        std::fs::create_dir_all(&dir).unwrap();
        // A file an older agent left world-readable is replaced by an owner-only one.
        std::fs::write(dir.join("forks.jsonl"), b"").unwrap();
        std::fs::set_permissions(
            dir.join("forks.jsonl"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        let (mut s, _) = ForkStore::open(&dir);
        let f = fork("g");
        s.record(&Entry::Start(f.clone()), 1, std::iter::once(&f));
        nix::sys::stat::umask(old);
        let mode = std::fs::metadata(dir.join("forks.jsonl"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_older_agents_forks_json_is_taken_over() {
        let dir = scratch("legacy");
        std::fs::create_dir_all(&dir).unwrap();
        let old = vec![fork("a"), fork("b")];
        std::fs::write(dir.join("forks.json"), serde_json::to_vec(&old).unwrap()).unwrap();
        let (_s, forks) = ForkStore::open(&dir);
        assert_eq!(forks, old);
        assert!(!dir.join("forks.json").exists());
        let (_s, again) = ForkStore::open(&dir);
        assert_eq!(again, old, "now read from forks.jsonl");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
