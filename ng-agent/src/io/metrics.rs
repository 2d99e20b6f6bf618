//! ng-agent's Prometheus metrics (docs/operations.md "Metrics"), served by daemon-ops'
//! `/metrics` endpoint, on by default on 127.0.0.1:9467 (`[metrics] listen`).
//!
//! The main loop publishes the engine's counters on a watch channel after each input; a
//! scrape renders the latest, with the reload counters and the endpoint's own connection
//! counters. No label carries a call id or an address.

use daemon_ops::metrics::{by, one, ScrapeFuture, Snapshot};
use daemon_ops::reload::ReloadCounters;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use webrtc_bridge::Counters;

use crate::core::engine::Stats;

/// What the main loop publishes for scrapes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// The engine's counters.
    pub stats: Stats,
    /// Calls the engine holds now.
    pub calls: usize,
}

/// Serves `/metrics` on `listener`.
pub fn spawn(
    listener: TcpListener,
    published: watch::Receiver<Published>,
    reloads: ReloadCounters,
) {
    daemon_ops::metrics::spawn(listener, move |own| -> ScrapeFuture {
        let mut snap = render(&published.borrow());
        snap.gates(&[("metrics", own)]);
        reloads.add_to(&mut snap);
        let mut reg = Registry::with_prefix("xdpfork_ng");
        reg.register_collector(Box::new(snap));
        Box::pin(std::future::ready(Ok(reg)))
    });
}

/// The engine's counters as metric families.
pub fn render(p: &Published) -> Snapshot {
    let s = &p.stats;
    let mut snap = Snapshot::default();
    snap.counter(
        "sessions",
        "Calls by what ended their offer or their life: managed (created by an offer), rejected (offer refused), terminated (deleted).",
        by(
            "result",
            &[
                ("managed", s.managed_sessions),
                ("rejected", s.rejected_sessions),
                ("terminated", s.terminated_sessions),
            ],
        ),
    );
    snap.counter(
        "request_errors",
        "ng requests answered with an error.",
        one(s.errors),
    );
    snap.counter(
        "datagrams_dropped",
        "ng datagrams never answered, by cause: rate_limited (per-source limit), no_cookie.",
        by(
            "cause",
            &[
                ("rate_limited", s.rate_limited),
                ("no_cookie", s.unanswerable),
            ],
        ),
    );
    snap.counter(
        "retransmissions",
        "Requests answered again from the reply cache.",
        one(s.retransmissions),
    );
    snap.counter(
        "control_errors",
        "Control operations fork-agent refused or did not answer.",
        one(s.control_errors),
    );
    snap.gauge("calls", "Calls held now.", one(p.calls as u64));
    webrtc(&mut snap, &s.webrtc);
    snap
}

/// The browser legs' families (docs/webrtc.md "Counters").
fn webrtc(snap: &mut Snapshot, w: &Counters) {
    snap.counter(
        "webrtc_packets",
        "Packets bridged on browser legs, by where they went: to_plain (decrypted, toward the phone), to_browser.",
        by(
            "direction",
            &[("to_plain", w.to_plain), ("to_browser", w.to_browser)],
        ),
    );
    snap.counter(
        "webrtc_dropped",
        "Packets a browser leg dropped, by reason.",
        by(
            "reason",
            &[
                ("srtp_auth_failed", w.srtp_auth_failed),
                ("srtp_replayed", w.srtp_replayed),
                ("unverified_source", w.unverified_source),
                ("stun_rejected", w.stun_rejected),
                ("malformed", w.malformed),
                ("not_ready", w.not_ready),
                ("early_expired", w.early_dropped),
            ],
        ),
    );
    snap.counter(
        "webrtc_handshakes_failed",
        "DTLS handshakes of browser legs that failed: fingerprint_mismatch (certificate not the SDP's), dtls (any other failure or timeout).",
        by(
            "reason",
            &[
                ("fingerprint_mismatch", w.fingerprint_mismatch),
                ("dtls", w.dtls_failed),
            ],
        ),
    );
    snap.counter(
        "webrtc_early_sent",
        "Phone packets held before DTLS was up, then sent to the browser.",
        one(w.early_sent),
    );
    snap.counter(
        "webrtc_stun_answered",
        "ICE connectivity checks answered.",
        one(w.stun_answered),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_bounded_labels() {
        let p = Published {
            stats: Stats {
                managed_sessions: 3,
                rejected_sessions: 1,
                terminated_sessions: 2,
                errors: 4,
                rate_limited: 5,
                unanswerable: 6,
                retransmissions: 7,
                control_errors: 8,
                webrtc: Counters {
                    srtp_auth_failed: 9,
                    fingerprint_mismatch: 1,
                    to_plain: 40,
                    ..Counters::default()
                },
            },
            calls: 1,
        };
        let mut reg = Registry::with_prefix("xdpfork_ng");
        reg.register_collector(Box::new(render(&p)));
        let text = daemon_ops::metrics::render(&reg);
        for line in [
            "xdpfork_ng_sessions_total{result=\"managed\"} 3\n",
            "xdpfork_ng_sessions_total{result=\"terminated\"} 2\n",
            "xdpfork_ng_request_errors_total 4\n",
            "xdpfork_ng_datagrams_dropped_total{cause=\"no_cookie\"} 6\n",
            "xdpfork_ng_control_errors_total 8\n",
            "xdpfork_ng_calls 1\n",
            "xdpfork_ng_webrtc_dropped_total{reason=\"srtp_auth_failed\"} 9\n",
            "xdpfork_ng_webrtc_handshakes_failed_total{reason=\"fingerprint_mismatch\"} 1\n",
            "xdpfork_ng_webrtc_packets_total{direction=\"to_plain\"} 40\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
