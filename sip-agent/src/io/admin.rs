//! Admin socket: a Unix stream socket answering one line-based request per connection with the
//! current call counts (core/call_count.rs), for `sip-agent ctl` and for scraping.
//!
//! Requests: `show calls` → one JSON object (`CallCounts`) and a newline; `metrics` → the same
//! counts as Prometheus text exposition. Anything else → `error: unknown command`. The counts come
//! from a `watch` channel the B2BUA task updates after every input; this task never touches the
//! cores.

use std::path::Path;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::core::call_count::CallCounts;

/// Longest request line read (a command is a few bytes; this bounds a misbehaving client).
const MAX_LINE: u64 = 256;

/// Prometheus text for `c`.
pub fn prometheus(c: &CallCounts) -> String {
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
    out
}

/// Answer to one request line.
pub fn answer(line: &str, c: &CallCounts) -> String {
    match line.trim() {
        "show calls" => serde_json::to_string(c)
            .map(|j| j + "\n")
            .unwrap_or_default(),
        "metrics" => prometheus(c),
        _ => "error: unknown command (show calls, metrics)\n".into(),
    }
}

/// Binds `path` (replacing a stale socket file) and serves it on a task.
#[allow(clippy::disallowed_methods)] // io shell: the admin server is its own task
pub fn spawn(path: &Path, counts: watch::Receiver<CallCounts>) -> Result<()> {
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

    fn counts() -> CallCounts {
        CallCounts {
            standard: 1,
            enhanced: 2,
            aggregate: 3,
            peak_aggregate: 4,
            peak_enhanced: 2,
            peak_standard: 2,
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
        assert_eq!(m.lines().filter(|l| !l.starts_with('#')).count(), 6);
    }

    #[test]
    fn unknown_command_is_an_error_line() {
        assert!(answer("show flows", &counts()).starts_with("error:"));
    }
}
