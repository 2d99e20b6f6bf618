//! Admin socket: a Unix stream socket answering one line-based request per connection with the
//! current call counts (core/call_count.rs), for `sip-agent ctl` and for scraping.
//!
//! Requests: `show calls` → one JSON object (`CallCounts`) and a newline; `show security` → one
//! JSON object (`SecurityCounters`) and a newline; `metrics` → the same Prometheus text as the
//! `GET /metrics` endpoint ([`spawn_metrics`], on 127.0.0.1:9465 by default). Anything else →
//! `error: unknown command`. The numbers come from a `watch` channel the B2BUA task updates
//! after every input; neither task touches the cores.
//!
//! The socket goes through its own [`Gate`] (`limits.admin_max_connections`, the request
//! deadline `limits.first_message_timeout_secs`), so a client that floods it, or a full file
//! table, never turns into a busy accept loop or takes the agent down.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use conn_limits::io::gate::{Gate, GateCounters, GateOptions, GateStats};
use daemon_ops::metrics::{render, Labels, ScrapeFuture, Snapshot};
use prometheus_client::registry::Registry;
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

/// The metrics registry (docs/operations.md "Metrics"): call counts, security refusals and the
/// connection counters of the gates (`sip` listeners, `admin` socket, `metrics` endpoint).
pub fn registry(s: &Stats, gates: &[(&'static str, GateCounters)]) -> Registry {
    let c = &s.calls;
    let one = |v: u64| vec![(Labels::new(), v)];
    let mut snap = Snapshot::default();
    for (name, help, v) in [
        (
            "calls_standard",
            "Calls up without a started fork.",
            c.standard,
        ),
        ("calls_enhanced", "Calls up whose fork started.", c.enhanced),
        (
            "calls_aggregate",
            "Standard plus enhanced calls.",
            c.aggregate,
        ),
        (
            "calls_peak_aggregate",
            "Highest aggregate since start.",
            c.peak_aggregate,
        ),
        (
            "calls_peak_enhanced",
            "Highest enhanced since start.",
            c.peak_enhanced,
        ),
        (
            "calls_peak_standard",
            "Peak aggregate minus peak enhanced.",
            c.peak_standard,
        ),
    ] {
        snap.gauge(name, help, one(v));
    }
    snap.counter("calls", "Calls whose media came up.", one(c.started_total));
    snap.counter(
        "calls_forked",
        "Calls that became enhanced (a fork started).",
        one(c.enhanced_total),
    );
    snap.counter(
        "requests_forbidden",
        "Requests answered 403 by the security policy, by cause.",
        vec![
            (
                vec![("cause", "dialog_source".into())],
                s.security.forbidden_dialog_source,
            ),
            (
                vec![("cause", "fork_not_controller".into())],
                s.security.forbidden_fork_request,
            ),
        ],
    );
    snap.gates(gates);
    let mut reg = Registry::with_prefix("xdpfork_sip");
    reg.register_collector(Box::new(snap));
    reg
}

/// Answer to one request line (`gates`: the connection counters for `metrics`).
pub fn answer(line: &str, s: &Stats, gates: &[(&'static str, GateCounters)]) -> String {
    match line.trim() {
        "show calls" => serde_json::to_string(&s.calls)
            .map(|j| j + "\n")
            .unwrap_or_default(),
        "show security" => serde_json::to_string(&s.security)
            .map(|j| j + "\n")
            .unwrap_or_default(),
        // The same text as `GET /metrics` (its `metrics` listener aside).
        "metrics" => render(&registry(s, gates)),
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
) -> Result<Arc<GateStats>> {
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let gate = Gate::new(GateOptions::new("admin"), vec![listener], limits.admin);
    let admin = gate.stats();
    let own = admin.clone();
    tokio::spawn(gate.run(move |_, stream, mut conn| {
        let counts = *counts.borrow();
        let mut gates = vec![("admin", own.snapshot())];
        if let Some(g) = &sip {
            gates.push(("sip", g.snapshot()));
        }
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
            let _ = w.write_all(answer(&line, &counts, &gates).as_bytes()).await;
        });
    }));
    Ok(admin)
}

/// Serves `GET /metrics` on `listener` (`admin`: the admin socket's gate, if there is one).
pub fn spawn_metrics(
    listener: tokio::net::TcpListener,
    counts: watch::Receiver<Stats>,
    sip: Option<Arc<GateStats>>,
    admin: Option<Arc<GateStats>>,
    reloads: daemon_ops::reload::ReloadCounters,
) {
    daemon_ops::metrics::spawn(listener, move |own| -> ScrapeFuture {
        let mut gates = vec![("metrics", own)];
        for (name, g) in [("sip", &sip), ("admin", &admin)] {
            if let Some(g) = g {
                gates.push((name, g.snapshot()));
            }
        }
        let mut reg = registry(&counts.borrow(), &gates);
        let mut snap = Snapshot::default();
        reloads.add_to(&mut snap);
        reg.register_collector(Box::new(snap));
        Box::pin(std::future::ready(Ok(reg)))
    });
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
                started_total: 9,
                enhanced_total: 3,
            },
            security: SecurityCounters {
                forbidden_dialog_source: 5,
                forbidden_fork_request: 7,
            },
        }
    }

    #[test]
    fn show_calls_is_one_json_line() {
        let a = answer("show calls\n", &counts(), &[]);
        assert!(a.ends_with('\n') && a.lines().count() == 1, "{a:?}");
        let v: serde_json::Value = serde_json::from_str(&a).expect("json");
        assert_eq!(v["enhanced"], 2);
        assert_eq!(v["peak_standard"], 2);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let m = answer("metrics", &counts(), &[]);
        assert!(
            m.contains("# TYPE xdpfork_sip_calls_enhanced gauge\nxdpfork_sip_calls_enhanced 2\n")
        );
        assert!(m.contains("\nxdpfork_sip_calls_peak_aggregate 4\n"));
        assert!(m.contains("\nxdpfork_sip_calls_total 9\n"), "{m}");
        assert!(m.contains("\nxdpfork_sip_calls_forked_total 3\n"), "{m}");
        assert!(
            m.contains("\nxdpfork_sip_requests_forbidden_total{cause=\"fork_not_controller\"} 7\n")
        );
        assert_eq!(m.lines().filter(|l| !l.starts_with('#')).count(), 10);
    }

    #[test]
    fn show_security_is_one_json_line() {
        let a = answer("show security", &counts(), &[]);
        let v: serde_json::Value = serde_json::from_str(&a).expect("json");
        assert_eq!(v["forbidden_dialog_source"], 5);
        assert_eq!(v["forbidden_fork_request"], 7);
    }

    #[test]
    fn unknown_command_is_an_error_line() {
        assert!(answer("show flows", &counts(), &[]).starts_with("error:"));
    }

    #[test]
    fn metrics_carry_the_connection_counters() {
        let g = GateCounters {
            open: 3,
            refused_per_address: 7,
            closed_too_large: 2,
            ..GateCounters::default()
        };
        let m = answer("metrics", &counts(), &[("sip", g)]);
        assert!(
            m.contains("\nxdpfork_sip_connections_open{listener=\"sip\"} 3\n"),
            "{m}"
        );
        assert!(m.contains(
            "\nxdpfork_sip_connections_closed_total{listener=\"sip\",reason=\"per_address_limit\"} 7\n"
        ));
        assert!(m.contains(
            "\nxdpfork_sip_connections_closed_total{listener=\"sip\",reason=\"too_large\"} 2\n"
        ));
    }
}
