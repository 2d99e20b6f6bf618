//! What fork-agent's fork journal (`forks.jsonl`) and sip-agent's call journal (`calls.jsonl`)
//! share: one JSON line appended per change, the file rewritten compactly when it is mostly dead
//! lines, and every write owner-only. Each agent keeps its own record format and replay.
//!
//! - [`Journal`] (sans-IO): counts lines and says when to compact. Inputs: `appended`,
//!   `compacted`; query: `needs_compaction(live)`.
//! - [`encode_line`] and [`replay`] (pure): one entry as a line; a file's lines parsed in order,
//!   a line that does not parse (cut short by a crash) counted and skipped.
//! - [`rewrite_owner_only`] (IO, std only): replaces the file atomically (temporary file, mode
//!   0600, rename) and returns a handle for appending.
//! - [`KeyedStore`] (IO, std only): a whole journal file of one line per live key (ng-agent's
//!   `calls.jsonl`): appends a key's new line unless it is unchanged, its end line when it goes,
//!   and rewrites the file from the live lines when it is mostly dead or an append failed.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// One entry as a JSON line, newline included.
pub fn encode_line<E: serde::Serialize>(entry: &E) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(entry)?;
    line.push(b'\n');
    Ok(line)
}

/// How many lines a [`replay`] read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LineCounts {
    /// Complete lines read.
    pub lines: usize,
    /// Lines that did not parse (a write cut short by a crash, or damage); skipped.
    pub bad_lines: usize,
}

/// Parses every non-blank line of `text` as an `E` and hands it to `apply`, in file order; a
/// line that does not parse is counted and skipped (every complete line before and after it
/// still counts).
pub fn replay<E: serde::de::DeserializeOwned>(text: &str, mut apply: impl FnMut(E)) -> LineCounts {
    let mut counts = LineCounts::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<E>(line) {
            Ok(e) => {
                counts.lines += 1;
                apply(e);
            }
            Err(_) => counts.bad_lines += 1,
        }
    }
    counts
}

/// A journal shorter than this is never compacted (it is cheap to replay anyway).
pub const MIN_LINES_TO_COMPACT: usize = 1024;

/// Line counts that decide when to compact.
#[derive(Debug, Default)]
pub struct Journal {
    /// Lines in the file now.
    lines: usize,
}

impl Journal {
    /// The state after a replay (or a fresh, empty file).
    pub fn new(lines_in_file: usize) -> Self {
        Self {
            lines: lines_in_file,
        }
    }

    /// One line was appended.
    pub fn appended(&mut self) {
        self.lines += 1;
    }

    /// The file was rewritten with `lines` lines.
    pub fn compacted(&mut self, lines: usize) {
        self.lines = lines;
    }

    /// True when the file holds more than twice the lines the `live` state needs.
    pub fn needs_compaction(&self, live: usize) -> bool {
        self.lines >= MIN_LINES_TO_COMPACT && self.lines > 2 * live
    }

    /// Lines in the file now.
    pub fn lines(&self) -> usize {
        self.lines
    }
}

/// Which step of [`rewrite_owner_only`] failed, for the caller's error message.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The directory could not be created.
    #[error("creating {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    /// The temporary file could not be created or written.
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    /// The temporary file could not be renamed into place.
    #[error("renaming {path} into place: {source}")]
    Rename {
        path: String,
        source: std::io::Error,
    },
    /// The new file could not be opened for appending.
    #[error("opening {path} for appending: {source}")]
    Append {
        path: String,
        source: std::io::Error,
    },
}

/// Replace `path` with `body` atomically, owner-only (0600) whatever the umask (the journals hold
/// call ids, numbers and metadata), and open it for appending.
pub fn rewrite_owner_only(path: &Path, body: &[u8]) -> Result<File, RewriteError> {
    let shown = |p: &Path| p.display().to_string();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| RewriteError::Dir {
            path: shown(dir),
            source,
        })?;
    }
    let tmp = path.with_extension("jsonl.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // A temporary an older run left with another mode keeps it through `open`: set it.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(body)
    };
    write().map_err(|source| RewriteError::Write {
        path: shown(&tmp),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| RewriteError::Rename {
        path: shown(&tmp),
        source,
    })?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|source| RewriteError::Append {
            path: shown(path),
            source,
        })
}

/// A journal file holding, once compacted, one line per live key. Lines are appended with one
/// `write` each (`O_APPEND`), so a crash cuts at most the last one, which the owner's replay
/// skips. The last line of each live key is kept in memory: a rewrite needs nothing from the
/// caller, and an unchanged line is recognised by its bytes and not written again.
///
/// Call order: [`KeyedStore::open`] once with what the replay found (it rewrites the file
/// compactly), then [`KeyedStore::save`] / [`KeyedStore::end`] per change. A write error is
/// returned for the caller to log; the store then retries with a rewrite at the next change.
#[derive(Debug)]
pub struct KeyedStore<K: Ord> {
    path: PathBuf,
    /// Append handle; `None` after a failed write, until a rewrite succeeds.
    file: Option<File>,
    journal: Journal,
    live: BTreeMap<K, Vec<u8>>,
}

impl<K: Ord> KeyedStore<K> {
    /// A store for `path`, whose replay read `lines_in_file` lines and found the `live` keys'
    /// lines (newline included); the file is rewritten with exactly those.
    pub fn open(
        path: PathBuf,
        lines_in_file: usize,
        live: BTreeMap<K, Vec<u8>>,
    ) -> (KeyedStore<K>, Result<(), RewriteError>) {
        let mut store = KeyedStore {
            path,
            file: None,
            journal: Journal::new(lines_in_file),
            live,
        };
        let r = store.rewrite();
        (store, r)
    }

    /// Records `key`'s current line (nothing is written when it is unchanged).
    pub fn save(&mut self, key: K, line: Vec<u8>) -> Result<(), RewriteError> {
        if self.live.get(&key) == Some(&line) {
            return Ok(());
        }
        self.live.insert(key, line.clone());
        self.append(&line)
    }

    /// Records `key`'s end with `line` (nothing for a key never saved).
    pub fn end(&mut self, key: &K, line: &[u8]) -> Result<(), RewriteError> {
        if self.live.remove(key).is_none() {
            return Ok(());
        }
        self.append(line)
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True when no key is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Lines in the file now.
    pub fn lines(&self) -> usize {
        self.journal.lines()
    }

    fn append(&mut self, line: &[u8]) -> Result<(), RewriteError> {
        let appended = self.file.as_mut().map(|f| f.write_all(line));
        match appended {
            Some(Ok(())) => {
                self.journal.appended();
                if self.journal.needs_compaction(self.live.len()) {
                    return self.rewrite();
                }
                Ok(())
            }
            // The rewrite puts the whole live state back, this change included.
            Some(Err(_)) | None => self.rewrite(),
        }
    }

    fn rewrite(&mut self) -> Result<(), RewriteError> {
        let body: Vec<u8> = self.live.values().flatten().copied().collect();
        match rewrite_owner_only(&self.path, &body) {
            Ok(f) => {
                self.file = Some(f);
                self.journal.compacted(self.live.len());
                Ok(())
            }
            Err(e) => {
                self.file = None;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_only_long_journals_that_are_mostly_dead() {
        let mut j = Journal::new(0);
        for _ in 0..MIN_LINES_TO_COMPACT - 1 {
            j.appended();
        }
        assert!(!j.needs_compaction(0), "short journals are never compacted");
        j.appended();
        assert!(!j.needs_compaction(MIN_LINES_TO_COMPACT / 2));
        assert!(j.needs_compaction(MIN_LINES_TO_COMPACT / 2 - 1));
        j.compacted(3);
        assert_eq!(j.lines(), 3);
        assert!(!j.needs_compaction(0));
    }

    #[test]
    fn rewrite_is_owner_only_and_appendable() {
        let dir = std::env::temp_dir().join(format!("jsonl-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("x.jsonl");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(&path, b"old\n").expect("old file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut f = rewrite_owner_only(&path, b"a\n").expect("rewrite");
        f.write_all(b"b\n").expect("append");
        assert_eq!(std::fs::read(&path).expect("read"), b"a\nb\n");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keyed_store_appends_changes_only_and_compacts() {
        let dir = std::env::temp_dir().join(format!("jsonl-keyed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("k.jsonl");
        let live = BTreeMap::from([(1u32, b"one\n".to_vec())]);
        let (mut st, r) = KeyedStore::open(path.clone(), 7, live);
        r.expect("rewrite at open");
        assert_eq!(std::fs::read(&path).expect("read"), b"one\n");
        st.save(1, b"one\n".to_vec()).expect("save");
        st.save(2, b"two\n".to_vec()).expect("save");
        st.end(&3, b"end3\n").expect("never saved: nothing");
        st.end(&1, b"end1\n").expect("end");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"one\ntwo\nend1\n",
            "an unchanged line and an unknown end are not written"
        );
        for i in 0..3 * MIN_LINES_TO_COMPACT as u32 {
            st.save(2, format!("two {i}\n").into_bytes()).expect("save");
        }
        assert!(st.lines() <= MIN_LINES_TO_COMPACT, "{} lines", st.lines());
        assert_eq!(st.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
