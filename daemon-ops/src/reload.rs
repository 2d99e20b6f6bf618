//! SIGHUP reload, the part every daemon shares: which top-level sections of the configuration
//! file changed, split into those the daemon applies live and those that need a restart.
//!
//! Comparing parsed TOML (not text) means reformatting or comments never count as a change.
//! Each daemon reads the file again with its own loader first (a file that no longer
//! validates is refused whole and the running settings stay), then asks [`diff`] what
//! changed, applies its reloadable sections and names the others in a warning.
//! docs/operations.md ("Reload") lists, per daemon, which sections reload.
//!
//! [`Reloader`] does the shared steps of a SIGHUP: read and validate the file again (a file
//! that does not read or validate is refused whole, logged and counted), warn about the
//! changed sections that need a restart, and apply `[log] level`. Live sections are always
//! re-applied from the file (applying an unchanged one is a no-op), so a value changed and
//! changed back is never left half-applied; restart-only sections are compared with the file
//! the daemon started with, so the warning repeats until the daemon is restarted.

use std::{
    fmt::Display,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use tracing::{info, warn};

use crate::{
    logging::{LevelChange, LogControl, LogSection},
    metrics::Snapshot,
};

/// What changed between the running file and the new one, by top-level key, in the new
/// file's order (then keys only the running file had).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Changed sections the daemon applies on SIGHUP.
    pub reloadable: Vec<String>,
    /// Changed sections that apply only at the next restart.
    pub restart_only: Vec<String>,
}

impl Diff {
    /// Whether the reloadable section `key` changed.
    pub fn reloads(&self, key: &str) -> bool {
        self.reloadable.iter().any(|k| k == key)
    }
}

/// Compares two configuration files (both already validated by the daemon's loader).
pub fn diff(running: &str, new: &str, reloadable: &[&str]) -> Result<Diff, toml::de::Error> {
    let old: toml::Table = toml::from_str(running)?;
    let new: toml::Table = toml::from_str(new)?;
    let mut d = Diff::default();
    let keys = new
        .keys()
        .chain(old.keys().filter(|k| !new.contains_key(*k)));
    for k in keys {
        if old.get(k) == new.get(k) {
            continue;
        }
        if reloadable.contains(&k.as_str()) {
            d.reloadable.push(k.clone());
        } else {
            d.restart_only.push(k.clone());
        }
    }
    Ok(d)
}

/// SIGHUP outcomes, for the daemon's metrics (`config_reloads_total{result}`).
#[derive(Debug, Clone, Default)]
pub struct ReloadCounters {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ReloadCounters {
    /// Adds the `config_reloads` family to a scrape.
    pub fn add_to(&self, snap: &mut Snapshot) {
        snap.counter(
            "config_reloads",
            "SIGHUP reloads, by result (failed: the file no longer read or validated; the running settings stay).",
            crate::metrics::by(
                "result",
                &[
                    ("ok", self.ok.load(Ordering::Relaxed)),
                    ("failed", self.failed.load(Ordering::Relaxed)),
                ],
            ),
        );
    }

    /// Counts a reload by its result.
    fn count(&self, ok: bool) {
        let c = if ok { &self.ok } else { &self.failed };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The shared part of a daemon's SIGHUP handling (see the module comment).
pub struct Reloader {
    daemon: &'static str,
    path: PathBuf,
    started: String,
    live: &'static [&'static str],
    log: LogControl,
    /// The last `reread` could not swap the log filter in: that reload counts as failed.
    log_failed: bool,
    /// Outcomes, for metrics.
    pub counters: ReloadCounters,
}

impl Reloader {
    /// `started`: the file's text the daemon runs with; `live`: the top-level keys it applies
    /// on SIGHUP besides `log`.
    pub fn new(
        daemon: &'static str,
        path: PathBuf,
        started: String,
        live: &'static [&'static str],
        log: LogControl,
    ) -> Reloader {
        Reloader {
            daemon,
            path,
            started,
            live,
            log,
            log_failed: false,
            counters: ReloadCounters::default(),
        }
    }

    /// The configuration file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Reads the file again and validates it with `parse` (the daemon's own loader); warns
    /// about restart-only changes; applies `[log] level` (found by `log`). `None`: refused,
    /// already logged and counted as failed; the running settings stay. `Some`: the daemon
    /// applies its live sections, then counts the outcome with [`Reloader::finish`].
    pub fn reread<C, E: Display>(
        &mut self,
        parse: impl FnOnce(&str) -> Result<C, E>,
        log: impl FnOnce(&C) -> &LogSection,
    ) -> Option<C> {
        let refused = |what: String| {
            warn!(
                file = %self.path.display(),
                "reload refused, the running settings stay: {what} (fix the file, then `systemctl reload {}`)",
                self.daemon
            );
            self.counters.count(false);
            None
        };
        let text = match crate::config_file::read(&self.path) {
            Ok(t) => t,
            Err(e) => return refused(e.to_string()),
        };
        let cfg = match parse(&text) {
            Ok(c) => c,
            Err(e) => return refused(e.to_string()),
        };
        let mut live = vec!["log"];
        live.extend_from_slice(self.live);
        match diff(&self.started, &text, &live) {
            Ok(d) if !d.restart_only.is_empty() => warn!(
                changed = d.restart_only.join(", "),
                "reload: these sections apply only after `systemctl restart {}`", self.daemon
            ),
            Ok(_) => {}
            // Both texts parsed as the daemon's config, so they are TOML: not expected.
            Err(e) => warn!("reload: comparing the files failed: {e}"),
        }
        self.log_failed = false;
        match self.log.apply(log(&cfg)) {
            Ok(LevelChange::Unchanged) => {}
            Ok(c @ LevelChange::Changed { .. }) => info!("reload: {c}"),
            Ok(c @ LevelChange::PinnedByEnv { .. }) => warn!("reload: {c}"),
            Err(e) => {
                warn!("reload: {e}");
                self.log_failed = true;
            }
        }
        Some(cfg)
    }

    /// Counts a reload [`Reloader::reread`] accepted: `ok` unless a live section (the daemon's,
    /// or the log filter) could not be applied.
    pub fn finish(&self, ok: bool) {
        // Counted ok only if the log filter was swapped in too: never "ok" for half a reload.
        self.counters.count(ok && !self.log_failed);
    }

    /// Applies `[log] level` once the daemon has read its file at start.
    pub fn apply_initial_log(&mut self, section: &LogSection) {
        match self.log.apply(section) {
            Ok(LevelChange::PinnedByEnv { env }) if section.level().is_some() => {
                info!("[log] level not applied: RUST_LOG=`{env}` is set")
            }
            Ok(_) => {}
            Err(e) => warn!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = "[log]\nlevel = \"info\"\n[control]\nsocket = \"/run/a.sock\"\n\
                           [[speech_server]]\nname = \"asr\"\nurl = \"ws://127.0.0.1:1/\"\n";

    #[test]
    fn formatting_and_comments_are_not_changes() {
        let same = "# comment\n[control]\nsocket   = \"/run/a.sock\"\n[log]\nlevel = 'info'\n\
                    [[speech_server]]\nurl = \"ws://127.0.0.1:1/\"\nname = \"asr\"\n";
        assert_eq!(
            diff(RUNNING, same, &["log"]).expect("diff"),
            Diff::default()
        );
    }

    #[test]
    fn changes_are_split_by_what_reloads() {
        let new = "[log]\nlevel = \"debug\"\n[control]\nsocket = \"/run/b.sock\"\n\
                   [[speech_server]]\nname = \"asr\"\nurl = \"ws://127.0.0.1:2/\"\n\
                   [metrics]\nlisten = \"\"\n";
        let d = diff(RUNNING, new, &["log", "speech_server"]).expect("diff");
        assert_eq!(d.reloadable, ["log", "speech_server"]);
        assert_eq!(d.restart_only, ["control", "metrics"]);
        assert!(d.reloads("log") && !d.reloads("control"));
    }

    #[test]
    fn a_reload_whose_log_filter_was_not_swapped_in_counts_as_failed() {
        let dir = std::env::temp_dir().join(format!("xdpfork-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("d.toml");
        std::fs::write(&path, "[log]\nlevel = \"debug\"\n").expect("write");
        #[derive(serde::Deserialize)]
        struct Cfg {
            log: LogSection,
        }
        let mut r = Reloader::new(
            "d",
            path.clone(),
            String::new(),
            &[],
            LogControl::detached(),
        );
        let cfg = r
            .reread(toml::from_str::<Cfg>, |c| &c.log)
            .expect("the file is valid");
        r.finish(true);
        assert_eq!(cfg.log.level(), Some("debug"));
        assert_eq!(r.counters.ok.load(Ordering::Relaxed), 0);
        assert_eq!(r.counters.failed.load(Ordering::Relaxed), 1);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_removed_section_is_a_change() {
        let d = diff(RUNNING, "[control]\nsocket = \"/run/a.sock\"\n", &["log"]).expect("diff");
        assert_eq!(d.reloadable, ["log"]);
        assert_eq!(d.restart_only, ["speech_server"]);
    }
}
