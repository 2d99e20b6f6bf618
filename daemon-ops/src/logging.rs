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
//! A daemon adds [`LogArgs`] to its clap definition (`#[command(flatten)]`) and calls
//! [`LogArgs::init`] with its default filter.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

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
    pub fn init(&self, default_filter: &str) -> Result<(), LogInitError> {
        init(self.log_format, default_filter)
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
pub fn init(format: LogFormat, default_filter: &str) -> Result<(), LogInitError> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => EnvFilter::try_new(default_filter).map_err(|source| LogInitError::Filter {
            filter: default_filter.to_owned(),
            source,
        })?,
    };
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
        .with(layer.with_filter(filter))
        .try_init()?;
    Ok(())
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
    fn journal_stream_must_name_stderr_itself() {
        assert!(is_journal_stream("8:123456", (8, 123_456)));
        assert!(!is_journal_stream("8:123456", (8, 123_457)));
        assert!(!is_journal_stream("9:123456", (8, 123_456)));
        for bad in ["", "8", "8:", ":1", "a:b", "8:123456:7"] {
            assert!(!is_journal_stream(bad, (8, 123_456)), "{bad:?}");
        }
    }
}
