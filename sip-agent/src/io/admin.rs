//! Admin socket: a Unix stream socket answering one line-based request per connection with the
//! current call counts (core/call_count.rs), for `sip-agent ctl` and for scraping.
//!
//! Requests: `show calls` → one JSON object (`CallCounts`) and a newline; `show security` → one
//! JSON object (`SecurityCounters`) and a newline; `metrics` → both as Prometheus text
//! exposition. Anything else → `error: unknown command`. The numbers come from a `watch` channel
//! the B2BUA task updates after every input; this task never touches the cores. `metrics` also
//! carries the connection counters of the SIP listeners' gate.
//!
//! The socket goes through its own [`Gate`] (`limits.admin_max_connections`, the request
//! deadline `limits.first_message_timeout_secs`), so a client that floods it, or a full file
//! table, never turns into a busy accept loop or takes the agent down.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use conn_limits::io::gate::{Gate, GateCounters, GateOptions, GateStats};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::debug;

use crate::config::Limits;
use crate::core::authz::SecurityCounters;
use crate::core::call_count::CallCounts;

/// What the admin socket reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// License call counts.
    pub calls: CallCounts,
    /// Requests refused by the `[security]` policy.
    pub security: SecurityCounters,
}

/// Longest request line read (a command is a few bytes; this bounds a misbehaving client).
const MAX_LINE: u64 = 256;

/// Prometheus text for the SIP listeners' connection counters.
pub fn prometheus_connections(g: &GateCounters) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP sip_agent_connections_open Inbound TCP/TLS/WebSocket connections open now.\n\
         # TYPE sip_agent_connections_open gauge\n",
    );
    out.push_str(&format!("sip_agent_connections_open {}\n", g.open));
    out.push_str(
        "# HELP sip_agent_connections_closed_total Inbound connections refused or closed by a limit.\n\
         # TYPE sip_agent_connections_closed_total counter\n",
    );
    for (reason, v) in [
        ("per_address_limit", g.refused_per_address),
        ("global_limit", g.refused_global),
        ("no_message_in_time", g.expired_pending),
        ("idle", g.expired_idle),
        ("too_large", g.closed_too_large),
        ("malformed", g.closed_malformed),
        ("handshake_failed", g.closed_handshake),
    ] {
        out.push_str(&format!(
            "sip_agent_connections_closed_total{{reason=\"{reason}\"}} {v}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP sip_agent_accept_errors_total Failed accepts (each followed by a pause).\n\
         # TYPE sip_agent_accept_errors_total counter\nsip_agent_accept_errors_total {}\n",
        g.accept_errors
    ));
    out
}

/// Prometheus text for `c`.
pub fn prometheus(s: &Stats) -> String {
    let c = &s.calls;
    let mut out = String::new();
    for (name, help, kind, v) in [
        (
            "sip_agent_calls_standard",
            "Calls up without a started fork.",
            "gauge",
            c.standard,
        ),
        (
            "sip_agent_calls_enhanced",
            "Calls up whose fork started.",
            "gauge",
            c.enhanced,
        ),
        (
            "sip_agent_calls_aggregate",
            "Standard plus enhanced calls.",
            "gauge",
            c.aggregate,
        ),
        (
            "sip_agent_calls_peak_aggregate",
            "Highest aggregate since start.",
            "gauge",
            c.peak_aggregate,
        ),
        (
            "sip_agent_calls_peak_enhanced",
            "Highest enhanced since start.",
            "gauge",
            c.peak_enhanced,
        ),
        (
            "sip_agent_calls_peak_standard",
            "Peak aggregate minus peak enhanced.",
            "gauge",
            c.peak_standard,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    }
    let name = "sip_agent_requests_forbidden_total";
    out.push_str(&format!(
        "# HELP {name} Requests answered 403 by the security policy, by cause.\n\
         # TYPE {name} counter\n\
         {name}{{cause=\"dialog_source\"}} {}\n\
         {name}{{cause=\"fork_not_controller\"}} {}\n",
        s.security.forbidden_dialog_source, s.security.forbidden_fork_request
    ));
    out
}

/// Answer to one request line (`sip` is the SIP listeners' gate, when there are any).
pub fn answer(line: &str, s: &Stats, sip: Option<&GateCounters>) -> String {
    match line.trim() {
        "show calls" => serde_json::to_string(&s.calls)
            .map(|j| j + "\n")
            .unwrap_or_default(),
        "show security" => serde_json::to_string(&s.security)
            .map(|j| j + "\n")
            .unwrap_or_default(),
        "metrics" => {
            let mut m = prometheus(s);
            if let Some(g) = sip {
                m.push_str(&prometheus_connections(g));
            }
            m
        }
        _ => "error: unknown command (show calls, show security, metrics)\n".into(),
    }
}

/// Binds `path` (replacing a stale socket file) and serves it on a task.
#[allow(clippy::disallowed_methods)] // io shell: the admin gate and one task per client
pub fn spawn(
    path: &Path,
    counts: watch::Receiver<Stats>,
    limits: &Limits,
    sip: Option<Arc<GateStats>>,
) -> Result<()> {
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let gate = Gate::new(GateOptions::new("admin"), vec![listener], limits.admin);
    tokio::spawn(gate.run(move |_, stream, mut conn| {
        let counts = *counts.borrow();
        let sip = sip.as_ref().map(|g| g.snapshot());
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(r.take(MAX_LINE));
            let res = tokio::select! {
                res = reader.read_line(&mut line) => res,
                () = conn.expired() => return,
            };
            if let Err(e) = res {
                debug!(error = %e, "admin read failed");
                return;
            }
            conn.progress();
            let _ = w
                .write_all(answer(&line, &counts, sip.as_ref()).as_bytes())
                .await;
        });
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> Stats {
        Stats {
            calls: CallCounts {
                standard: 1,
                enhanced: 2,
                aggregate: 3,
                peak_aggregate: 4,
                peak_enhanced: 2,
                peak_standard: 2,
            },
            security: SecurityCounters {
                forbidden_dialog_source: 5,
                forbidden_fork_request: 7,
            },
        }
    }

    #[test]
    fn show_calls_is_one_json_line() {
        let a = answer("show calls\n", &counts(), None);
        assert!(a.ends_with('\n') && a.lines().count() == 1, "{a:?}");
        let v: serde_json::Value = serde_json::from_str(&a).expect("json");
        assert_eq!(v["enhanced"], 2);
        assert_eq!(v["peak_standard"], 2);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let m = answer("metrics", &counts(), None);
        assert!(m.contains("# TYPE sip_agent_calls_enhanced gauge\nsip_agent_calls_enhanced 2\n"));
        assert!(m.contains("\nsip_agent_calls_peak_aggregate 4\n"));
        assert!(
            m.contains("\nsip_agent_requests_forbidden_total{cause=\"fork_not_controller\"} 7\n")
        );
        assert_eq!(m.lines().filter(|l| !l.starts_with('#')).count(), 8);
    }

    #[test]
    fn show_security_is_one_json_line() {
        let a = answer("show security", &counts(), None);
        let v: serde_json::Value = serde_json::from_str(&a).expect("json");
        assert_eq!(v["forbidden_dialog_source"], 5);
        assert_eq!(v["forbidden_fork_request"], 7);
    }

    #[test]
    fn unknown_command_is_an_error_line() {
        assert!(answer("show flows", &counts(), None).starts_with("error:"));
    }

    #[test]
    fn metrics_carry_the_connection_counters() {
        let g = GateCounters {
            open: 3,
            refused_per_address: 7,
            closed_too_large: 2,
            ..GateCounters::default()
        };
        let m = answer("metrics", &counts(), Some(&g));
        assert!(m.contains("\nsip_agent_connections_open 3\n"), "{m}");
        assert!(m.contains("sip_agent_connections_closed_total{reason=\"per_address_limit\"} 7\n"));
        assert!(m.contains("sip_agent_connections_closed_total{reason=\"too_large\"} 2\n"));
    }
}
