//! Prometheus text endpoint (exposition format 0.0.4), off unless `[metrics] listen` is set.
//!
//! Each scrape asks the agent, through the same queue as the control API, for `show_counters`
//! (kernel reasons, user-space counters, per-server traffic) and the stream-service statistics,
//! and renders them. Label values come only from bounded sets: kernel reason names, configured
//! server names, the alarm kinds and the drop reasons; never call ids or addresses.

use std::{fmt::Write as _, net::SocketAddr};

use anyhow::{Context, Result};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

use control_api::{Op, Response, StreamServiceShow};

type ControlMsg = (Op, oneshot::Sender<Response>);

/// Binds `addr` and serves scrapes until the process ends.
pub async fn spawn(addr: SocketAddr, ctl: mpsc::Sender<ControlMsg>) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr} ([metrics] listen)"))?;
    info!(%addr, "Prometheus metrics at /metrics");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let ctl = ctl.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                // The request head fits one read for any scraper; its content is irrelevant
                // beyond the path.
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if head.starts_with("GET /metrics") {
                    match scrape(&ctl).await {
                        Ok(b) => ("200 OK", b),
                        Err(e) => {
                            warn!("metrics scrape failed: {e:#}");
                            ("503 Service Unavailable", format!("{e:#}\n"))
                        }
                    }
                } else {
                    ("404 Not Found", "try /metrics\n".to_owned())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(())
}

async fn ask(ctl: &mpsc::Sender<ControlMsg>, op: Op) -> Result<Value> {
    let (tx, rx) = oneshot::channel();
    ctl.send((op, tx)).await.context("agent gone")?;
    let r = rx.await.context("agent gone")?;
    match r.ok {
        true => Ok(r.data),
        false => anyhow::bail!("{}", r.error.unwrap_or_default()),
    }
}

async fn scrape(ctl: &mpsc::Sender<ControlMsg>) -> Result<String> {
    let counters = ask(ctl, Op::ShowCounters).await?;
    let stats = ask(
        ctl,
        Op::ShowStreamService {
            what: StreamServiceShow::Statistics,
            arg: None,
        },
    )
    .await?;
    Ok(render(&counters, &stats))
}

fn num(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_bool().map(u64::from))
        .unwrap_or(0)
}

/// Renders both JSON documents as Prometheus text.
pub fn render(counters: &Value, stats: &Value) -> String {
    let mut o = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let obj = |v: &Value| v.as_object().cloned().unwrap_or_default();
    family(
        "xdpfork_kernel_packets_total",
        "counter",
        "Packets by kernel exit reason (summed over CPUs).",
        obj(&counters["kernel"])
            .iter()
            .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), num(v)))
            .collect(),
    );
    for (k, v) in obj(&counters["user"]) {
        family(
            &format!("xdpfork_user_{k}_total"),
            "counter",
            "fork-agent user-space counter.",
            vec![(String::new(), num(&v))],
        );
    }
    let servers = obj(&counters["servers"]);
    for (field, kind, help) in [
        ("connections_open", "gauge", "Open WebSocket connections."),
        ("frames_sent", "counter", "Frames written to the server."),
        ("bytes_sent", "counter", "WebSocket payload bytes written."),
        (
            "frames_dropped",
            "counter",
            "Audio frames dropped for the server.",
        ),
        ("connects", "counter", "Connection attempts."),
        (
            "failures",
            "counter",
            "Connection attempts or connections that failed.",
        ),
        (
            "protocol_errors",
            "counter",
            "Connections closed because the server sent a frame it may not send.",
        ),
    ] {
        family(
            &format!("xdpfork_speech_{field}"),
            kind,
            help,
            servers
                .iter()
                .map(|(n, s)| (format!("{{server=\"{n}\"}}"), num(&s[field])))
                .collect(),
        );
    }
    family(
        "xdpfork_forks",
        "gauge",
        "Forks live.",
        vec![(String::new(), num(&stats["forks"]))],
    );
    family(
        "xdpfork_streams",
        "gauge",
        "Forked streams live.",
        vec![(String::new(), num(&stats["streams"]))],
    );
    family(
        "xdpfork_alarms_total",
        "counter",
        "Stream-service alarm events by kind.",
        obj(&stats["alarms"])
            .iter()
            .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), num(v)))
            .collect(),
    );
    let media = &stats["media"];
    family(
        "xdpfork_audio_dropped_total",
        "counter",
        "Forked audio frames dropped, by reason.",
        ["unknown_stream", "paused", "not_connected", "queue_full"]
            .iter()
            .map(|r| {
                (
                    format!("{{reason=\"{r}\"}}"),
                    num(&media[format!("dropped_{r}")]),
                )
            })
            .collect(),
    );
    family(
        "xdpfork_audio_queued_total",
        "counter",
        "Forked audio frames queued to connections.",
        vec![(String::new(), num(&media["frames_queued"]))],
    );
    for (k, help) in [
        ("forks_started", "Forks started."),
        ("forks_stopped", "Forks stopped."),
        ("forks_failed", "Forks failed."),
    ] {
        family(
            &format!("xdpfork_{k}_total"),
            "counter",
            help,
            vec![(String::new(), num(&stats[k]))],
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_bounded_label_sets() {
        let counters = json!({"kernel":{"relayed":5,"pass":1},"user":{"xsk_frames":3},
            "servers":{"asr":{"connections_open":1,"frames_sent":7,"bytes_sent":700,
            "frames_dropped":2,"connects":1,"failures":0}}});
        let stats = json!({"forks":1,"streams":2,"alarms":{"tcp_failures":1},
            "media":{"dropped_paused":4,"frames_queued":7},"forks_started":1});
        let text = render(&counters, &stats);
        for line in [
            "xdpfork_kernel_packets_total{reason=\"relayed\"} 5",
            "xdpfork_user_xsk_frames_total 3",
            "xdpfork_speech_frames_sent{server=\"asr\"} 7",
            "xdpfork_alarms_total{kind=\"tcp_failures\"} 1",
            "xdpfork_audio_dropped_total{reason=\"paused\"} 4",
            "xdpfork_streams 2",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
