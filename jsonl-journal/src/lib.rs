//! What fork-agent's fork journal (`forks.jsonl`) and sip-agent's call journal (`calls.jsonl`)
//! share: one JSON line appended per change, the file rewritten compactly when it is mostly dead
//! lines, and every write owner-only. Each agent keeps its own record format and replay.
//!
//! - [`Journal`] (sans-IO): counts lines and says when to compact. Inputs: `appended`,
//!   `compacted`; query: `needs_compaction(live)`.
//! - [`rewrite_owner_only`] (IO, std only): replaces the file atomically (temporary file, mode
//!   0600, rename) and returns a handle for appending.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

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
}
