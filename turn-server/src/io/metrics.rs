//! turn-server's Prometheus metrics (docs/operations.md "Metrics"), served by daemon-ops'
//! `/metrics` endpoint, on by default on 127.0.0.1:9466 (`[metrics] listen`).
//!
//! Each scrape asks the main loop for the same [`StatusReport`] as `turn-server status` (through
//! the bounded command queue) and renders its totals. Labels come from fixed sets (transport,
//! direction, reason, STUN error code); never users, clients or peers.

use anyhow::Context;
use conn_limits::io::gate::GateCounters;
use daemon_ops::metrics::{by, one, ScrapeFuture, Snapshot};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::Command;
use crate::status::StatusReport;

/// Serves `/metrics` on `listener`, asking the main loop on `cmd`.
pub fn spawn(listener: TcpListener, cmd: mpsc::Sender<Command>) {
    daemon_ops::metrics::spawn(listener, move |own| -> ScrapeFuture {
        let cmd = cmd.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let report = async {
                cmd.send(Command::Status(tx))
                    .await
                    .ok()
                    .context("turn-server stopping")?;
                rx.await.context("turn-server stopping")
            };
            let report: StatusReport = report.await.map_err(|e| format!("{e:#}"))?;
            Ok(registry(&report, own))
        })
    });
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The registry for one status report (`own`: the endpoint's connection counters).
pub fn registry(r: &StatusReport, own: GateCounters) -> Registry {
    let mut s = Snapshot::default();
    s.gauge(
        "allocations",
        "Active allocations.",
        one(count(r.allocations)),
    );
    s.gauge(
        "clients",
        "Distinct client addresses with an allocation.",
        one(count(r.clients)),
    );
    s.gauge(
        "relays",
        "Active allocations by client transport.",
        by(
            "transport",
            &[
                ("udp", count(r.relays_udp)),
                ("tcp", count(r.relays_tcp)),
                ("tls", count(r.relays_tls)),
            ],
        ),
    );
    s.gauge(
        "permissions",
        "Installed permissions.",
        one(count(r.permissions)),
    );
    s.gauge("channels", "Bound channels.", one(count(r.channels)));
    let t = &r.traffic;
    s.counter(
        "relayed_packets",
        "Packets relayed by user space, by direction (kernel-offloaded channels not included).",
        by(
            "direction",
            &[
                ("to_peer", t.to_peer_packets),
                ("from_peer", t.from_peer_packets),
            ],
        ),
    );
    s.counter(
        "relayed_bytes",
        "Payload bytes relayed by user space, by direction.",
        by(
            "direction",
            &[
                ("to_peer", t.to_peer_bytes),
                ("from_peer", t.from_peer_bytes),
            ],
        ),
    );
    let c = &r.counters;
    for (name, help, v) in [
        ("requests", "STUN requests received.", c.requests),
        (
            "malformed",
            "Inputs that were neither STUN nor ChannelData.",
            c.malformed,
        ),
        (
            "rate_limited",
            "Unauthenticated responses dropped by the rate limit.",
            c.rate_limited,
        ),
        (
            "challenges",
            "401 challenges to requests without MESSAGE-INTEGRITY.",
            c.challenges,
        ),
        (
            "allocations_created",
            "Allocations created.",
            c.allocations_created,
        ),
        (
            "allocations_expired",
            "Allocations that ended by expiry.",
            c.allocations_expired,
        ),
        (
            "relay_setup_failures",
            "Allocations whose relay socket could not be set up.",
            r.shell.relay_setup_failed,
        ),
    ] {
        s.counter(name, help, one(v));
    }
    s.counter(
        "auth_failures",
        "Requests refused by authentication, by reason.",
        by(
            "reason",
            &[
                ("unknown_user", c.unknown_user),
                ("wrong_realm", c.wrong_realm),
                ("expired_credentials", c.expired_credentials),
                ("bad_integrity", c.bad_integrity),
                ("stale_nonce", c.stale_nonce),
            ],
        ),
    );
    s.counter(
        "config_reloads",
        "SIGHUP reloads, by result (failed: the file no longer validated; the running settings stay).",
        by(
            "result",
            &[("ok", r.shell.reloads), ("failed", r.shell.reload_failed)],
        ),
    );
    s.counter(
        "errors_sent",
        "STUN error responses sent, by error code.",
        c.errors_sent
            .iter()
            .map(|(code, v)| (vec![("code", code.clone())], *v))
            .collect(),
    );
    s.counter(
        "dropped",
        "Client or peer data dropped, by reason.",
        by(
            "reason",
            &[
                ("no_allocation", c.dropped_no_allocation),
                ("no_permission", c.dropped_no_permission),
                ("no_channel", c.dropped_no_channel),
                ("send_failed", r.shell.send_dropped),
            ],
        ),
    );
    let sh = &r.shell;
    let stream = GateCounters {
        open: sh.stream_connections,
        refused_per_address: sh.stream_refused_per_address,
        refused_global: sh.stream_refused_global,
        expired_pending: sh.stream_unauthenticated_timeout,
        closed_too_large: sh.stream_too_large,
        accept_errors: sh.accept_errors,
        ..GateCounters::default()
    };
    s.gates(&[("stream", stream), ("metrics", own)]);
    let mut reg = Registry::with_prefix("xdpfork_turn");
    reg.register_collector(Box::new(s));
    reg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_totals_with_bounded_labels() {
        let mut r = StatusReport {
            allocations: 2,
            clients: 1,
            relays_udp: 2,
            relays_tcp: 0,
            relays_tls: 0,
            permissions: 0,
            channels: 0,
            traffic: Default::default(),
            counters: Default::default(),
            shell: Default::default(),
            active: vec![],
            offload: None,
        };
        r.traffic.to_peer_packets = 5;
        r.counters.requests = 7;
        r.counters.allocations_created = 3;
        r.counters.errors_sent.insert("401".into(), 4);
        r.shell.stream_refused_global = 1;
        let text = daemon_ops::metrics::render(&registry(&r, GateCounters::default()));
        for line in [
            "\nxdpfork_turn_allocations 2\n",
            "\nxdpfork_turn_relays{transport=\"udp\"} 2\n",
            "\nxdpfork_turn_relayed_packets_total{direction=\"to_peer\"} 5\n",
            "\nxdpfork_turn_requests_total 7\n",
            "\nxdpfork_turn_allocations_created_total 3\n",
            "\nxdpfork_turn_errors_sent_total{code=\"401\"} 4\n",
            "\nxdpfork_turn_connections_closed_total{listener=\"stream\",reason=\"global_limit\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
