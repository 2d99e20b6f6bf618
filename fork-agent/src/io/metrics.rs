//! fork-agent's Prometheus metrics (docs/operations.md "Metrics"), served by daemon-ops'
//! `/metrics` endpoint, on by default on 127.0.0.1:9464 (`[metrics] listen`).
//!
//! Each scrape asks the agent, through the same queue as the control API, for `show_counters`
//! (kernel reasons, user-space counters, per-server traffic) and the stream-service statistics,
//! and renders them next to the live histograms (fork-start latency, WebSocket connect time)
//! and the gates' connection counters. Label values come only from bounded sets: kernel reason
//! names, configured server names, alarm kinds, drop reasons, listener names; never call ids or
//! addresses. Until the data plane is up a scrape gets 503 with the start-up stage.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use conn_limits::io::gate::{GateCounters, GateStats};
use control_api::{Event, Op, Response, StreamServiceShow};
use daemon_ops::metrics::{seconds_histogram, Labels, ScrapeFuture, Snapshot};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::agent::ControlMsg;
use super::control::Readiness;
use crate::core::fork_start::ForkStartClock;

/// Fork starts handed to the latency task at once; beyond it a start is not measured.
const ACCEPTED_BACKLOG: usize = 1024;

/// A speech server's WebSocket connect time (TCP, TLS and upgrade), kept in its `ServerStats`.
#[derive(Debug, Clone)]
pub struct ConnectTime(pub Histogram);

impl Default for ConnectTime {
    fn default() -> Self {
        // 1 ms .. 8 s.
        ConnectTime(seconds_histogram(0.001, 14))
    }
}

/// A speech server's packet → frame latency: from the reader taking the forked packet off the
/// AF_XDP ring (or the fallback socket) to the connection writing its frame, in the batch
/// clock reads of both ends (no clock read per frame). Kept in its `ServerStats`.
#[derive(Debug, Clone)]
pub struct FrameLatency(pub Histogram);

impl Default for FrameLatency {
    fn default() -> Self {
        // 25 µs .. 0.8 s.
        FrameLatency(seconds_histogram(0.000_025, 16))
    }
}

impl FrameLatency {
    /// One frame written `d` after its packet was read.
    pub fn observe(&self, d: std::time::Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

/// The live metrics the agent feeds.
#[derive(Debug, Clone)]
pub struct Live {
    /// fork_start accepted → first `started` (seconds).
    fork_start: Histogram,
    accepted: mpsc::Sender<(String, Instant)>,
}

impl Live {
    /// Starts the fork-start latency task on the agent's status events.
    #[allow(clippy::disallowed_methods)] // io shell: the latency task
    pub fn spawn(events: &broadcast::Sender<String>) -> Live {
        // 5 ms .. 40 s: a start waits for the connection, the upgrade and the server's answer.
        let fork_start = seconds_histogram(0.005, 14);
        let (accepted, mut rx) = mpsc::channel::<(String, Instant)>(ACCEPTED_BACKLOG);
        let mut events = events.subscribe();
        let h = fork_start.clone();
        tokio::spawn(async move {
            let mut clock = ForkStartClock::default();
            loop {
                tokio::select! {
                    // Accepts first: one is always queued before its `started` is published.
                    biased;
                    a = rx.recv() => match a {
                        Some((guid, t)) => clock.handle_accepted(t, &guid),
                        None => return,
                    },
                    line = events.recv() => match line {
                        Ok(line) => {
                            let Ok(ev) = serde_json::from_str::<Event>(&line) else { continue };
                            if let Some(d) = clock.handle_event(now(), &ev) {
                                h.observe(d.as_secs_f64());
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        Live {
            fork_start,
            accepted,
        }
    }

    /// The agent accepted `fork_start` for `call_guid` (never blocks; a full queue skips it).
    pub fn fork_accepted(&self, call_guid: &str) {
        let _ = self.accepted.try_send((call_guid.to_owned(), now()));
    }
}

#[allow(clippy::disallowed_methods)] // io shell: the latency clock
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What a scrape needs besides the agent's answers.
pub(crate) struct Sources {
    pub(crate) ctl: mpsc::Sender<ControlMsg>,
    pub(crate) ready: watch::Receiver<Readiness>,
    pub(crate) live: Live,
    /// Per configured server: its counters, with the connect-time histogram (a reload adds
    /// and removes servers, so this is read at each scrape).
    pub(crate) servers: crate::io::speech::StatsByServer,
    pub(crate) control_gate: Arc<GateStats>,
    /// SIGHUP outcomes.
    pub(crate) reloads: daemon_ops::reload::ReloadCounters,
}

/// Serves `/metrics` on `listener`.
pub(crate) fn spawn(listener: TcpListener, src: Sources) {
    let src = Arc::new(src);
    daemon_ops::metrics::spawn(listener, move |own| -> ScrapeFuture {
        let src = src.clone();
        Box::pin(async move { scrape(&src, own).await.map_err(|e| format!("{e:#}")) })
    });
}

async fn ask(ctl: &mpsc::Sender<ControlMsg>, op: Op) -> Result<Value> {
    let (tx, rx) = oneshot::channel();
    ctl.send((op, tx)).await.context("agent gone")?;
    let r: Response = rx.await.context("agent gone")?;
    match r.ok {
        true => Ok(r.data),
        false => anyhow::bail!("{}", r.error.unwrap_or_default()),
    }
}

async fn scrape(src: &Sources, own: GateCounters) -> Result<Registry> {
    if let Readiness::Starting(stage) = *src.ready.borrow() {
        anyhow::bail!("{}: {stage}", control_api::NOT_READY);
    }
    let counters = ask(&src.ctl, Op::ShowCounters).await?;
    let stats = ask(
        &src.ctl,
        Op::ShowStreamService {
            what: StreamServiceShow::Statistics,
            arg: None,
        },
    )
    .await?;
    let mut snap = render(&counters, &stats);
    snap.gates(&[("control", src.control_gate.snapshot()), ("metrics", own)]);
    src.reloads.add_to(&mut snap);
    snap.histograms(
        "speech_connect_seconds",
        "WebSocket connect time (TCP, TLS, upgrade) of connections that opened, by server.",
        src.servers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, s)| (server(n), s.connect_seconds.0.clone()))
            .collect(),
    );
    snap.histograms(
        "forked_frame_latency_seconds",
        "Packet -> frame latency of forked audio: AF_XDP ring (or fallback socket) to the frame's WebSocket write, by server.",
        src.servers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, s)| (server(n), s.frame_latency.0.clone()))
            .collect(),
    );
    let mut reg = Registry::with_prefix("xdpfork");
    reg.register(
        "fork_start_seconds",
        "Time from fork_start accepted to the fork's first `started` status.",
        src.live.fork_start.clone(),
    );
    reg.register_collector(Box::new(snap));
    Ok(reg)
}

fn num(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_bool().map(u64::from))
        .unwrap_or(0)
}

fn server(name: &str) -> Labels {
    vec![("server", name.to_owned())]
}

fn obj(v: &Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// The snapshot families of the two JSON documents (`show_counters`, stream statistics).
pub fn render(counters: &Value, stats: &Value) -> Snapshot {
    let mut s = Snapshot::default();
    let one = |v: &Value| vec![(Labels::new(), num(v))];
    s.counter(
        "kernel_packets",
        "Packets by kernel exit reason (summed over CPUs).",
        obj(&counters["kernel"])
            .iter()
            .map(|(k, v)| (vec![("reason", k.clone())], num(v)))
            .collect(),
    );
    for (k, v) in obj(&counters["user"]) {
        s.counter(
            format!("user_{k}"),
            "fork-agent user-space counter.",
            one(&v),
        );
    }
    let servers = obj(&counters["servers"]);
    let per_server = |field: &str| -> Vec<(Labels, u64)> {
        servers
            .iter()
            .map(|(n, v)| (server(n), num(&v[field])))
            .collect()
    };
    s.gauge(
        "speech_connections_open",
        "Open WebSocket connections, by server.",
        per_server("connections_open"),
    );
    for (field, name, help) in [
        (
            "frames_sent",
            "speech_frames_sent",
            "Frames written to the server.",
        ),
        (
            "bytes_sent",
            "speech_sent_bytes",
            "WebSocket payload bytes written to the server.",
        ),
        (
            "frames_dropped",
            "speech_frames_dropped",
            "Audio frames dropped for the server.",
        ),
        ("connects", "speech_connects", "Connection attempts."),
        (
            "failures",
            "speech_failures",
            "Connection attempts or connections that failed.",
        ),
        (
            "protocol_errors",
            "speech_protocol_errors",
            "Connections closed because the server sent a frame it may not send.",
        ),
    ] {
        s.counter(name, help, per_server(field));
    }
    s.gauge("forks", "Forks live.", one(&stats["forks"]));
    s.gauge("streams", "Forked streams live.", one(&stats["streams"]));
    s.counter(
        "alarms",
        "Stream-service alarm events, by kind.",
        obj(&stats["alarms"])
            .iter()
            .map(|(k, v)| (vec![("kind", k.clone())], num(v)))
            .collect(),
    );
    let media = &stats["media"];
    s.counter(
        "audio_dropped",
        "Forked audio frames dropped, by reason.",
        ["unknown_stream", "paused", "not_connected", "queue_full"]
            .iter()
            .map(|r| {
                (
                    vec![("reason", (*r).to_owned())],
                    num(&media[format!("dropped_{r}")]),
                )
            })
            .collect(),
    );
    s.counter(
        "audio_queued",
        "Forked audio frames queued to connections.",
        one(&media["frames_queued"]),
    );
    for (k, help) in [
        ("forks_started", "Forks started."),
        ("forks_stopped", "Forks stopped."),
        ("forks_failed", "Forks failed."),
    ] {
        s.counter(k, help, one(&stats[k]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_conventional_names_and_bounded_labels() {
        let counters = json!({"kernel":{"relayed":5,"pass":1},"user":{"xsk_frames":3},
            "servers":{"asr":{"connections_open":1,"frames_sent":7,"bytes_sent":700,
            "frames_dropped":2,"connects":1,"failures":0}}});
        let stats = json!({"forks":1,"streams":2,"alarms":{"tcp_failures":1},
            "media":{"dropped_paused":4,"frames_queued":7},"forks_started":1});
        let mut reg = Registry::with_prefix("xdpfork");
        reg.register_collector(Box::new(render(&counters, &stats)));
        let h = ConnectTime::default();
        h.0.observe(0.02);
        reg.register("speech_connect_seconds", "t", h.0);
        let text = daemon_ops::metrics::render(&reg);
        for line in [
            "\nxdpfork_kernel_packets_total{reason=\"relayed\"} 5\n",
            "\nxdpfork_user_xsk_frames_total 3\n",
            "\nxdpfork_speech_frames_sent_total{server=\"asr\"} 7\n",
            "\nxdpfork_speech_sent_bytes_total{server=\"asr\"} 700\n",
            "\nxdpfork_speech_connections_open{server=\"asr\"} 1\n",
            "\nxdpfork_alarms_total{kind=\"tcp_failures\"} 1\n",
            "\nxdpfork_audio_dropped_total{reason=\"paused\"} 4\n",
            "\nxdpfork_streams 2\n",
            "\nxdpfork_forks_started_total 1\n",
            "\nxdpfork_speech_connect_seconds_count 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // Every counter sample ends in _total; every name carries the prefix.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("xdpfork_"), "{l}");
        }
        for l in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut p = l.split(' ').skip(2);
            let (name, kind) = (p.next().unwrap_or(""), p.next().unwrap_or(""));
            assert_eq!(kind == "counter", name.ends_with("_total"), "{l}");
        }
    }
}
