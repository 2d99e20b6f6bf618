//! What every xdpfork daemon (fork-agent, sip-agent, ng-agent, turn-server) does for its operator, done
//! once:
//! - [`metrics`]: `GET /metrics` in the Prometheus text format (0.0.4) on a small, bounded TCP
//!   endpoint, rendered by prometheus-client from a registry each daemon builds per scrape;
//! - [`notify`]: sd_notify(3) readiness (`READY=1`), `STATUS=` lines, `STOPPING=1` and the
//!   watchdog (`WATCHDOG=1` when `WATCHDOG_USEC` is set), through the sd-notify crate;
//! - [`logging`]: the tracing subscriber (`--log-format text|json`, colour only on a terminal,
//!   no timestamp under journald);
//! - [`cli_docs`]: man pages and shell completions from the binary's clap definition (the
//!   hidden `generate-docs` subcommand `cargo xtask install` runs);
//! - [`config_file`]: reading the configuration file, with one error text for all daemons;
//! - [`reload`]: what a SIGHUP changed in that file, split into live and restart-only sections;
//! - [`caps`]: dropping a thread's capabilities once a daemon no longer needs them.
//!
//! docs/operations.md ("Metrics", "Readiness and the watchdog", "Logs", "Man pages and
//! completions") is the operator's view.

pub mod caps;
pub mod cli_docs;
pub mod config_file;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod reload;
