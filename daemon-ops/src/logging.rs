//! How every daemon logs: one `tracing` subscriber, set up once in `main`.
//!
//! Logs go to stderr (stdout stays for what a command prints). The style follows where stderr
//! goes, decided by [`Style::decide`]:
//! - a terminal: text with ANSI colour and a timestamp;
//! - the journal (`JOURNAL_STREAM` names stderr's device and inode, systemd.exec(5)): no colour
//!   and no timestamp, because journald stamps every line itself;
//! - anything else (a file, a pipe): no colour, with a timestamp;
//! - `--log-format json`: one JSON object per line, never coloured, timestamped unless journald
//!   stamps it.
//!
//! `NO_COLOR` (no-color.org) also turns colour off. `RUST_LOG` wins over the daemon's default
//! filter. docs/operations.md ("Logs") is the operator's view.
//!
//! A daemon adds [`LogArgs`] to its clap definition (`#[command(flatten)]`), calls
//! [`LogArgs::init`] with its default filter, then applies its config file's `[log] level`
//! ([`LogSection`]) through the returned [`LogControl`], at start and again on SIGHUP. The
//! filter is one `reload` layer, so a new level takes effect for every later event without
//! rebuilding the subscriber. `RUST_LOG`, when set at start, pins the filter: a file level is
//! then reported as ignored, so a debugging session is not undone by a reload.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Deserializer};
use tracing_subscriber::{
    fmt, layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Layer, Registry,
};

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

/// The logging flags every daemon shares.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct LogArgs {
    /// Log line format on stderr (colour only on a terminal; no timestamp under journald).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the subscriber: `RUST_LOG` if set and valid, else `default_filter` (e.g.
    /// `"info"`). Fails only if a subscriber was already installed or the filter is invalid.
    pub fn init(&self, default_filter: &str) -> Result<LogControl, LogInitError> {
        init(self.log_format, default_filter)
    }
}

/// `[log]` in a daemon's config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// An `EnvFilter` directive list (`"info"`, `"warn,fork_agent=debug"`), checked when the
    /// file is read; absent: the daemon's default.
    #[serde(default, deserialize_with = "deserialize_level")]
    level: Option<String>,
}

impl LogSection {
    /// The configured filter, if any.
    pub fn level(&self) -> Option<&str> {
        self.level.as_deref()
    }
}

fn deserialize_level<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    parse_level(&s).map(Some).map_err(serde::de::Error::custom)
}

/// `[log] level`: a non-empty `EnvFilter` directive list.
pub fn parse_level(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty log level (e.g. \"info\" or \"warn,fork_agent=debug\")".into());
    }
    EnvFilter::try_new(s).map(|_| s.to_owned()).map_err(|e| {
        format!("`{s}` is not a log filter: {e} (e.g. \"info\" or \"warn,fork_agent=debug\")")
    })
}

/// What [`LogControl::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelChange {
    /// The filter was already this.
    Unchanged,
    /// The filter is now `to` (was `from`).
    Changed {
        /// The filter before.
        from: String,
        /// The filter now.
        to: String,
    },
    /// `RUST_LOG` was set at start and stays in force; the file's level is not applied.
    PinnedByEnv {
        /// `RUST_LOG`'s value.
        env: String,
    },
}

impl std::fmt::Display for LevelChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LevelChange::Unchanged => write!(f, "log level unchanged"),
            LevelChange::Changed { from, to } => write!(f, "log level `{from}` -> `{to}`"),
            LevelChange::PinnedByEnv { env } => write!(
                f,
                "[log] level ignored: RUST_LOG=`{env}` was set at start and stays in force"
            ),
        }
    }
}

/// The running subscriber's filter, changeable at run time.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` when it was set (and valid) at start.
    env: Option<String>,
    default_filter: String,
    current: String,
}

/// Why a filter could not be swapped in.
#[derive(Debug, thiserror::Error)]
pub enum LogApplyError {
    /// The directive does not parse (a [`LogSection`] checks this when read).
    #[error("log level `{level}`: {source}")]
    Filter {
        /// The directive given.
        level: String,
        /// What the parser said.
        source: tracing_subscriber::filter::ParseError,
    },
    /// The subscriber is gone (the process is shutting down).
    #[error("log level: {0}")]
    Reload(#[from] reload::Error),
}

impl LogControl {
    /// Applies `section`'s level (or the daemon's default when it has none), unless `RUST_LOG`
    /// pins the filter.
    pub fn apply(&mut self, section: &LogSection) -> Result<LevelChange, LogApplyError> {
        if let Some(env) = &self.env {
            return Ok(if section.level().is_some() {
                LevelChange::PinnedByEnv { env: env.clone() }
            } else {
                LevelChange::Unchanged
            });
        }
        let want = section.level().unwrap_or(&self.default_filter).to_owned();
        if want == self.current {
            return Ok(LevelChange::Unchanged);
        }
        let filter = EnvFilter::try_new(&want).map_err(|source| LogApplyError::Filter {
            level: want.clone(),
            source,
        })?;
        self.handle.reload(filter)?;
        let from = std::mem::replace(&mut self.current, want.clone());
        Ok(LevelChange::Changed { from, to: want })
    }

    /// A control whose subscriber is gone: every change fails (tests of its callers).
    #[cfg(test)]
    pub(crate) fn detached() -> LogControl {
        let (layer, handle) = reload::Layer::<EnvFilter, Registry>::new(EnvFilter::new("info"));
        drop(layer);
        LogControl {
            handle,
            env: None,
            default_filter: "info".into(),
            current: "info".into(),
        }
    }

    /// The filter in force.
    pub fn current(&self) -> &str {
        self.env.as_deref().unwrap_or(&self.current)
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogInitError {
    /// The daemon's own default filter does not parse (a programming error).
    #[error("log filter `{filter}`: {source}")]
    Filter {
        /// The filter given.
        filter: String,
        /// What the parser said.
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed.
    #[error("logging was already set up: {0}")]
    AlreadySet(#[from] tracing_subscriber::util::TryInitError),
}

/// What the log lines look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// JSON objects instead of text.
    pub json: bool,
    /// ANSI colour codes.
    pub ansi: bool,
    /// A timestamp on each line.
    pub timestamps: bool,
}

/// Where stderr goes, as far as the style cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stderr {
    /// stderr is a terminal.
    pub terminal: bool,
    /// stderr is the stream systemd connected to journald.
    pub journal: bool,
    /// `NO_COLOR` is set to a non-empty value.
    pub no_color: bool,
}

impl Stderr {
    /// This process's stderr and environment.
    pub fn detect() -> Stderr {
        let stderr = std::io::stderr();
        Stderr {
            terminal: stderr.is_terminal(),
            journal: std::env::var("JOURNAL_STREAM")
                .ok()
                .zip(stderr_dev_ino())
                .is_some_and(|(var, id)| is_journal_stream(&var, id)),
            no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        }
    }
}

impl Style {
    /// The style for `format` on `stderr`.
    pub fn decide(format: LogFormat, stderr: Stderr) -> Style {
        let json = format == LogFormat::Json;
        Style {
            json,
            ansi: !json && stderr.terminal && !stderr.journal && !stderr.no_color,
            timestamps: !stderr.journal,
        }
    }
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, decimal) names the file `dev_ino` is: only then is
/// stderr really the journal, and not, say, a file a child of a journald-run shell redirected
/// it to while inheriting the variable (systemd.exec(5), "$JOURNAL_STREAM").
pub fn is_journal_stream(var: &str, dev_ino: (u64, u64)) -> bool {
    let Some((dev, ino)) = var.split_once(':') else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(dev_ino.0) && ino.parse::<u64>().ok() == Some(dev_ino.1)
}

/// stderr's device and inode, if it can be stat'ed.
fn stderr_dev_ino() -> Option<(u64, u64)> {
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Installs the global subscriber for `format` on this process's stderr.
pub fn init(format: LogFormat, default_filter: &str) -> Result<LogControl, LogInitError> {
    let default = || {
        EnvFilter::try_new(default_filter).map_err(|source| LogInitError::Filter {
            filter: default_filter.to_owned(),
            source,
        })
    };
    let (filter, env) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, std::env::var(EnvFilter::DEFAULT_ENV).ok()),
        Err(_) => (default()?, None),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let style = Style::decide(format, Stderr::detect());
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(style.ansi);
    // Each combination is its own type; boxing gives the registry one.
    let layer = match (style.json, style.timestamps) {
        (true, true) => layer.json().boxed(),
        (true, false) => layer.json().without_time().boxed(),
        (false, true) => layer.boxed(),
        (false, false) => layer.without_time().boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()?;
    Ok(LogControl {
        handle,
        env,
        default_filter: default_filter.to_owned(),
        current: default_filter.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERMINAL: Stderr = Stderr {
        terminal: true,
        journal: false,
        no_color: false,
    };
    const PIPE: Stderr = Stderr {
        terminal: false,
        journal: false,
        no_color: false,
    };
    const JOURNAL: Stderr = Stderr {
        terminal: false,
        journal: true,
        no_color: false,
    };

    fn style(json: bool, ansi: bool, timestamps: bool) -> Style {
        Style {
            json,
            ansi,
            timestamps,
        }
    }

    #[test]
    fn colour_only_on_a_terminal_and_no_timestamp_in_the_journal() {
        use LogFormat::{Json, Text};
        let cases = [
            (Text, TERMINAL, style(false, true, true)),
            (Text, PIPE, style(false, false, true)),
            (Text, JOURNAL, style(false, false, false)),
            (
                Text,
                Stderr {
                    no_color: true,
                    ..TERMINAL
                },
                style(false, false, true),
            ),
            (Json, TERMINAL, style(true, false, true)),
            (Json, PIPE, style(true, false, true)),
            (Json, JOURNAL, style(true, false, false)),
        ];
        for (format, stderr, want) in cases {
            assert_eq!(Style::decide(format, stderr), want, "{format:?} {stderr:?}");
        }
    }

    #[test]
    fn log_section_checks_the_filter_when_read() {
        let parse = |t: &str| toml::from_str::<LogSection>(t);
        assert_eq!(parse("").expect("empty section").level(), None);
        let set = parse("level = \"warn,fork_agent=debug\"").expect("valid filter");
        assert_eq!(set.level(), Some("warn,fork_agent=debug"));
        let bad = parse("level = \"fork_agent=loud\"").expect_err("bad level");
        assert!(bad.to_string().contains("not a log filter"), "{bad}");
        let empty = parse("level = \" \"").expect_err("empty level");
        assert!(empty.to_string().contains("empty log level"), "{empty}");
        assert!(parse("lvl = \"info\"").is_err(), "unknown keys are refused");
    }

    /// A control over a filter layer the test keeps alive (no global subscriber in tests).
    fn control(env: Option<&str>) -> (reload::Layer<EnvFilter, Registry>, LogControl) {
        let (layer, handle) = reload::Layer::new(EnvFilter::new("info"));
        let c = LogControl {
            handle,
            env: env.map(str::to_owned),
            default_filter: "info".into(),
            current: "info".into(),
        };
        (layer, c)
    }

    fn section(level: &str) -> LogSection {
        LogSection {
            level: Some(level.into()),
        }
    }

    #[test]
    fn a_new_level_is_swapped_in_and_absent_means_the_default() {
        let (_layer, mut c) = control(None);
        assert_eq!(
            c.apply(&LogSection::default()).expect("apply"),
            LevelChange::Unchanged
        );
        assert_eq!(
            c.apply(&section("debug")).expect("apply"),
            LevelChange::Changed {
                from: "info".into(),
                to: "debug".into()
            }
        );
        assert_eq!(c.current(), "debug");
        assert_eq!(
            c.apply(&section("debug")).expect("apply"),
            LevelChange::Unchanged
        );
        assert_eq!(
            c.apply(&LogSection::default()).expect("apply"),
            LevelChange::Changed {
                from: "debug".into(),
                to: "info".into()
            }
        );
    }

    #[test]
    fn rust_log_pins_the_filter() {
        let (_layer, mut c) = control(Some("trace"));
        let change = c.apply(&section("warn")).expect("apply");
        assert_eq!(
            change,
            LevelChange::PinnedByEnv {
                env: "trace".into()
            }
        );
        assert!(change.to_string().contains("RUST_LOG"), "{change}");
        assert_eq!(c.current(), "trace");
    }

    #[test]
    fn a_gone_subscriber_is_an_error_not_a_panic() {
        let (layer, mut c) = control(None);
        drop(layer);
        assert!(matches!(
            c.apply(&section("debug")),
            Err(LogApplyError::Reload(_))
        ));
    }

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(is_journal_stream("8:123456", (8, 123_456)));
        assert!(!is_journal_stream("8:123456", (8, 123_457)));
        assert!(!is_journal_stream("9:123456", (8, 123_456)));
        for bad in ["", "8", "8:", ":1", "a:b", "8:123456:7"] {
            assert!(!is_journal_stream(bad, (8, 123_456)), "{bad:?}");
        }
    }
}
