//! Admin socket: a Unix stream socket answering one line-based request per connection with the
//! current call counts (core/call_count.rs) and security counters (core/authz.rs), for
//! `sip-agent ctl` and for scraping.
//!
//! Requests: `show calls` → one JSON object (`CallCounts`) and a newline; `show security` → one
//! JSON object (`SecurityCounters`) and a newline; `metrics` → both as Prometheus text
//! exposition. Anything else → `error: unknown command`. The numbers come from a `watch` channel
//! the B2BUA task updates after every input; this task never touches the cores.

use std::path::Path;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::{debug, warn};

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

/// Prometheus text for `s`.
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

/// Answer to one request line.
pub fn answer(line: &str, s: &Stats) -> String {
    match line.trim() {
        "show calls" => serde_json::to_string(&s.calls)
            .map(|j| j + "\n")
            .unwrap_or_default(),
        "show security" => serde_json::to_string(&s.security)
            .map(|j| j + "\n")
            .unwrap_or_default(),
        "metrics" => prometheus(s),
        _ => "error: unknown command (show calls, show security, metrics)\n".into(),
    }
}

/// Binds `path` (replacing a stale socket file) and serves it on a task.
#[allow(clippy::disallowed_methods)] // io shell: the admin server is its own task
pub fn spawn(path: &Path, counts: watch::Receiver<Stats>) -> Result<()> {
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    continue;
                }
            };
            let counts = *counts.borrow();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                if let Err(e) = BufReader::new(r.take(MAX_LINE)).read_line(&mut line).await {
                    debug!(error = %e, "admin read failed");
                    return;
                }
                let _ = w.write_all(answer(&line, &counts).as_bytes()).await;
            });
        }
    });
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
        let a = answer("show calls\n", &counts());
        assert!(a.ends_with('\n') && a.lines().count() == 1, "{a:?}");
        let v: serde_json::Value = serde_json::from_str(&a).expect("json");
        assert_eq!(v["enhanced"], 2);
        assert_eq!(v["peak_standard"], 2);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let m = answer("metrics", &counts());
        assert!(m.contains("# TYPE sip_agent_calls_enhanced gauge\nsip_agent_calls_enhanced 2\n"));
        assert!(m.contains("\nsip_agent_calls_peak_aggregate 4\n"));
        assert!(
            m.contains("\nsip_agent_requests_forbidden_total{cause=\"fork_not_controller\"} 7\n")
        );
        assert_eq!(m.lines().filter(|l| !l.starts_with('#')).count(), 8);
    }

    #[test]
    fn show_security_is_one_json_line() {
        let a = answer("show security", &counts());
        let v: serde_json::Value = serde_json::from_str(&a).expect("json");
        assert_eq!(v["forbidden_dialog_source"], 5);
        assert_eq!(v["forbidden_fork_request"], 7);
    }

    #[test]
    fn unknown_command_is_an_error_line() {
        assert!(answer("show flows", &counts()).starts_with("error:"));
    }
}
