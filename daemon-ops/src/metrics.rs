//! The `/metrics` endpoint: Prometheus text format 0.0.4 over a minimal HTTP/1.x handler.
//!
//! Why not hyper: the endpoint answers one `GET` per connection with `Connection: close`; a
//! request head is read up to [`MAX_HEAD`] bytes and only its request line is looked at. That
//! is a few dozen lines, and the connection limits and deadlines come from the same
//! [`Gate`] as every other listener of the daemons, so a scraper that hangs or a local process
//! that floods the port costs at most [`LIMITS`] connections.
//!
//! Each scrape calls the daemon's scrape function, which returns a fresh [`Registry`] (live
//! metrics such as histograms are shared handles registered again; snapshot values are
//! `Const*` metrics). Label values must come from bounded sets (configured names, fixed
//! reasons), never from calls, users or addresses.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use conn_limits::core::admission::AdmissionConfig;
use conn_limits::io::gate::{CloseCause, Conn, Gate, GateCounters, GateOptions};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Deserializer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Longest request head read (request line and headers); a scraper sends a few hundred bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// After a 431, at most this much more of the request is read and dropped (then the
/// connection closes whatever comes).
const DRAIN_AFTER_REFUSAL: usize = 64 * 1024;

/// Connection limits of the endpoint: a few scrapers at a time, each with 5 s to send its
/// request and 10 s more to take the answer.
pub const LIMITS: AdmissionConfig = AdmissionConfig {
    max_per_key: 8,
    max_total: 16,
    pending_timeout: Some(Duration::from_secs(5)),
    idle_timeout: Some(Duration::from_secs(10)),
};

/// Default `[metrics] listen` of each daemon (distinct, so all four run on one host).
pub const FORK_AGENT_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);
/// See [`FORK_AGENT_DEFAULT`].
pub const SIP_AGENT_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9465);
/// See [`FORK_AGENT_DEFAULT`].
pub const TURN_SERVER_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9466);
/// See [`FORK_AGENT_DEFAULT`].
pub const NG_AGENT_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9467);

/// A daemon's `[metrics]` section as written; each daemon applies its own default port.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `"ADDR:PORT"`, `""` (off), or absent (`None`: the daemon's default).
    #[serde(default, deserialize_with = "deserialize_listen")]
    listen: Option<Option<SocketAddr>>,
}

impl MetricsSection {
    /// Where to serve, `default` unless the file says otherwise; `None`: off.
    pub fn listen(&self, default: SocketAddr) -> Option<SocketAddr> {
        self.listen.unwrap_or(Some(default))
    }
}

fn deserialize_listen<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<SocketAddr>>, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen(&s).map(Some).map_err(serde::de::Error::custom)
}

/// `[metrics] listen`: `"ADDR:PORT"`, or `""` to turn the endpoint off.
pub fn parse_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        format!("`{s}` is not ADDRESS:PORT (e.g. \"127.0.0.1:9464\"; \"\" turns metrics off)")
    })
}

/// The registry as Prometheus text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a metric's labels.
    if let Err(e) = prometheus_text::encode(&mut out, registry) {
        warn!(error = %e, "encoding metrics failed");
    }
    out
}

/// Label pairs of one sample (keys are static; values from bounded sets only).
pub type Labels = Vec<(&'static str, String)>;

/// The rows of a family with one unlabelled sample.
pub fn one(v: u64) -> Vec<(Labels, u64)> {
    vec![(Labels::new(), v)]
}

/// The rows of a family labelled by `key`, one per `(value, sample)`.
pub fn by(key: &'static str, rows: &[(&str, u64)]) -> Vec<(Labels, u64)> {
    rows.iter()
        .map(|(l, v)| (vec![(key, (*l).to_owned())], *v))
        .collect()
}

#[derive(Debug)]
struct Family {
    name: String,
    help: &'static str,
    kind: MetricType,
    rows: Vec<(Labels, u64)>,
}

/// Values read at scrape time (counter snapshots, current gauges), registered with
/// [`Registry::register_collector`]. A family with no rows is not rendered.
#[derive(Debug, Default)]
pub struct Snapshot {
    families: Vec<Family>,
    histograms: Vec<HistogramFamily>,
}

/// Name, help and members of a histogram family.
type HistogramFamily = (String, &'static str, Vec<(Labels, Histogram)>);

/// A latency histogram in seconds with `count` buckets doubling from `first` (the `le` bounds
/// are fixed at start, so a series never changes shape).
pub fn seconds_histogram(first: f64, count: u16) -> Histogram {
    Histogram::new(exponential_buckets(first, 2.0, count))
}

impl Snapshot {
    /// A counter family `name` (rendered `name_total`; give the name without it).
    pub fn counter(
        &mut self,
        name: impl Into<String>,
        help: &'static str,
        rows: Vec<(Labels, u64)>,
    ) {
        self.push(name.into(), help, MetricType::Counter, rows);
    }

    /// A gauge family.
    pub fn gauge(&mut self, name: impl Into<String>, help: &'static str, rows: Vec<(Labels, u64)>) {
        self.push(name.into(), help, MetricType::Gauge, rows);
    }

    fn push(
        &mut self,
        name: String,
        help: &'static str,
        kind: MetricType,
        rows: Vec<(Labels, u64)>,
    ) {
        if !rows.is_empty() {
            self.families.push(Family {
                name,
                help,
                kind,
                rows,
            });
        }
    }

    /// A histogram family whose members live elsewhere (one per configured name, say).
    pub fn histograms(
        &mut self,
        name: impl Into<String>,
        help: &'static str,
        rows: Vec<(Labels, Histogram)>,
    ) {
        if !rows.is_empty() {
            self.histograms.push((name.into(), help, rows));
        }
    }

    /// The connection counters of the daemon's [`Gate`]s, one series per gate (`listener`):
    /// `connections_open`, `connections_closed_total{reason}`, `accept_errors_total`.
    pub fn gates(&mut self, gates: &[(&'static str, GateCounters)]) {
        let by = |f: fn(&GateCounters) -> u64| -> Vec<(Labels, u64)> {
            gates
                .iter()
                .map(|(l, g)| (vec![("listener", (*l).to_owned())], f(g)))
                .collect()
        };
        self.gauge(
            "connections_open",
            "Connections open now, by listener.",
            by(|g| g.open),
        );
        self.counter(
            "connections_admitted",
            "Connections admitted, by listener.",
            by(|g| g.admitted),
        );
        let mut closed = Vec::new();
        for (l, g) in gates {
            for (reason, v) in [
                ("per_address_limit", g.refused_per_address),
                ("global_limit", g.refused_global),
                ("no_request_in_time", g.expired_pending),
                ("idle", g.expired_idle),
                ("too_large", g.closed_too_large),
                ("malformed", g.closed_malformed),
                ("handshake_failed", g.closed_handshake),
            ] {
                closed.push((
                    vec![("listener", (*l).to_owned()), ("reason", reason.to_owned())],
                    v,
                ));
            }
        }
        self.counter(
            "connections_closed",
            "Connections refused or closed by a limit or for bad input, by listener and reason.",
            closed,
        );
        self.counter(
            "accept_errors",
            "Failed accepts (each followed by a pause), by listener.",
            by(|g| g.accept_errors),
        );
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let mut m = encoder.encode_descriptor(&f.name, f.help, None, f.kind)?;
            for (labels, v) in &f.rows {
                let fam = m.encode_family(labels)?;
                match f.kind {
                    MetricType::Counter => ConstCounter::new(*v).encode(fam)?,
                    _ => ConstGauge::new(i64::try_from(*v).unwrap_or(i64::MAX)).encode(fam)?,
                }
            }
        }
        for (name, help, rows) in &self.histograms {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (labels, h) in rows {
                h.encode(m.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// What one request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (`head_only` for `HEAD`).
    Metrics { head_only: bool },
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line.
    BadRequest,
}

/// Routes a request by its request line (`head` is the head up to the blank line).
pub fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Route::BadRequest;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => Route::Metrics { head_only },
        _ => Route::NotFound,
    }
}

/// A complete response with `Connection: close`.
pub fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// What a scrape returns: the registry to render, or why there is none (answered 503).
pub type ScrapeFuture = Pin<Box<dyn Future<Output = Result<Registry, String>> + Send>>;

/// Binds `addr`; the error names the config field.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("binding the metrics endpoint {addr} ([metrics] listen): {e}"),
        )
    })
}

/// Serves `/metrics` on `listener` for the life of the process. `scrape` gets the endpoint's
/// own connection counters (to render with [`Snapshot::gates`] as listener `metrics`).
#[allow(clippy::disallowed_methods)] // io shell: the gate task and one task per scrape
pub fn spawn<F>(listener: TcpListener, scrape: F)
where
    F: Fn(GateCounters) -> ScrapeFuture + Send + Sync + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "Prometheus metrics at /metrics");
    }
    let gate = Gate::new(GateOptions::new("metrics"), vec![listener], LIMITS);
    let stats = gate.stats();
    let scrape = Arc::new(scrape);
    tokio::spawn(gate.run(move |_, stream, conn| {
        let scrape = scrape.clone();
        let stats = stats.clone();
        let (stream, _peer) = stream;
        tokio::spawn(async move { serve(stream, conn, || scrape(stats.snapshot())).await });
    }));
}

/// Index just past the blank line ending the head, if it is in `buf`.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// One connection: a request head in, one response out. Every wait also ends when the gate
/// expires the connection (no request within 5 s, or 10 s to answer).
async fn serve<F>(mut stream: TcpStream, mut conn: Conn, scrape: F)
where
    F: Fn() -> ScrapeFuture,
{
    macro_rules! or_expired {
        ($fut:expr) => {
            tokio::select! {
                r = $fut => r,
                () = conn.expired() => return,
            }
        };
    }
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if head_end(&buf).is_some() {
            break;
        }
        if buf.len() >= MAX_HEAD {
            conn.set_close_cause(CloseCause::TooLarge);
            let r = response(
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
                false,
            );
            let _ = or_expired!(stream.write_all(&r));
            // Closing with the rest of the head unread would make the kernel answer it with a
            // reset, which can overtake the 431: send FIN, then read and drop what is still
            // coming (bounded) so the client reads the answer.
            let _ = or_expired!(stream.shutdown());
            let mut left = DRAIN_AFTER_REFUSAL;
            while left > 0 {
                match or_expired!(stream.read(&mut chunk)) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
            return;
        }
        let want = chunk.len().min(MAX_HEAD - buf.len());
        match or_expired!(stream.read(&mut chunk[..want])) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    conn.progress();
    let reply = match route(&buf) {
        Route::Metrics { head_only } => match or_expired!(scrape()) {
            Ok(reg) => response("200 OK", CONTENT_TYPE, &render(&reg), head_only),
            Err(e) => {
                warn!("metrics scrape failed: {e}");
                response(
                    "503 Service Unavailable",
                    "text/plain",
                    &format!("{e}\n"),
                    head_only,
                )
            }
        },
        Route::NotFound => response("404 Not Found", "text/plain", "try /metrics\n", false),
        Route::MethodNotAllowed => response(
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n",
            false,
        ),
        Route::BadRequest => {
            conn.set_close_cause(CloseCause::Malformed);
            response("400 Bad Request", "text/plain", "", false)
        }
    };
    let _ = or_expired!(stream.write_all(&reply));
    let _ = or_expired!(stream.shutdown());
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn routes_by_request_line() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            r("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(r("GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(r("GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(
            route(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"),
            Route::BadRequest
        );
    }

    #[test]
    fn section_defaults_per_daemon_and_empty_turns_off() {
        let parse = |t: &str| toml::from_str::<MetricsSection>(t);
        let absent = parse("").expect("empty section");
        assert_eq!(absent.listen(SIP_AGENT_DEFAULT), Some(SIP_AGENT_DEFAULT));
        let off = parse("listen = \"\"").expect("off");
        assert_eq!(off.listen(SIP_AGENT_DEFAULT), None);
        let set = parse("listen = \"[::1]:9000\"").expect("set");
        assert_eq!(set.listen(SIP_AGENT_DEFAULT), "[::1]:9000".parse().ok());
        let bad = parse("listen = \"9000\"").expect_err("no address");
        assert!(bad.to_string().contains("ADDRESS:PORT"), "{bad}");
        assert!(parse("port = 1").is_err(), "unknown keys are refused");
    }

    #[test]
    fn listen_empty_is_off_and_bad_input_is_named() {
        assert_eq!(parse_listen(""), Ok(None));
        assert_eq!(parse_listen("127.0.0.1:9464"), Ok(Some(FORK_AGENT_DEFAULT)));
        assert!(parse_listen("localhost").unwrap_err().contains("localhost"));
    }

    #[test]
    fn counters_get_the_total_suffix() {
        let mut reg = Registry::with_prefix("xdpfork");
        let c: Counter = Counter::default();
        c.inc_by(3);
        reg.register("things", "Things seen.", c);
        let text = render(&reg);
        assert!(
            text.contains("# TYPE xdpfork_things_total counter\n"),
            "{text}"
        );
        assert!(text.contains("\nxdpfork_things_total 3\n"), "{text}");
    }

    #[test]
    fn snapshot_renders_labelled_counters_and_gauges() {
        let mut snap = Snapshot::default();
        snap.counter(
            "kernel_packets",
            "Packets.",
            vec![(vec![("reason", "relayed".into())], 5)],
        );
        snap.gauge("streams", "Streams.", vec![(vec![], 2)]);
        snap.counter("empty", "Never rendered.", vec![]);
        let h = seconds_histogram(0.001, 4);
        h.observe(0.003);
        snap.histograms(
            "connect_seconds",
            "Connect time.",
            vec![(vec![("server", "asr".into())], h)],
        );
        snap.gates(&[(
            "control",
            GateCounters {
                open: 1,
                refused_global: 4,
                ..Default::default()
            },
        )]);
        let mut reg = Registry::with_prefix("xdpfork");
        reg.register_collector(Box::new(snap));
        let text = render(&reg);
        for line in [
            "# TYPE xdpfork_kernel_packets_total counter\n",
            "\nxdpfork_kernel_packets_total{reason=\"relayed\"} 5\n",
            "# TYPE xdpfork_streams gauge\nxdpfork_streams 2\n",
            "\nxdpfork_connections_open{listener=\"control\"} 1\n",
            "\nxdpfork_connections_closed_total{listener=\"control\",reason=\"global_limit\"} 4\n",
            "# TYPE xdpfork_connect_seconds histogram\n",
            "\nxdpfork_connect_seconds_bucket{server=\"asr\",le=\"0.002\"} 0\n",
            "\nxdpfork_connect_seconds_bucket{server=\"asr\",le=\"0.004\"} 1\n",
            "\nxdpfork_connect_seconds_count{server=\"asr\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("empty"), "{text}");
    }

    #[test]
    fn head_only_response_has_no_body() {
        let r = response("200 OK", CONTENT_TYPE, "abc", true);
        let text = String::from_utf8(r).expect("ascii");
        assert!(text.ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n"));
    }

    async fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_scrapes_and_refuses_oversize_heads() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let c: Counter = Counter::default();
        let live = c.clone();
        spawn(listener, move |own| {
            let c = live.clone();
            Box::pin(async move {
                c.inc();
                let mut reg = Registry::with_prefix("xdpfork");
                reg.register("scrapes", "Scrapes.", c);
                let mut snap = Snapshot::default();
                snap.gates(&[("metrics", own)]);
                reg.register_collector(Box::new(snap));
                Ok(reg)
            })
        });
        let a = get(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
        assert!(a.contains("\nxdpfork_scrapes_total 1\n"), "{a}");
        assert!(
            a.contains("\nxdpfork_connections_open{listener=\"metrics\"} 1\n"),
            "{a}"
        );
        let b = get(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(b.starts_with("HTTP/1.1 404 "), "{b}");
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        let c2 = get(addr, &big).await;
        assert!(c2.starts_with("HTTP/1.1 431 "), "{c2}");
        // A client still sending after the limit: the rest is drained, so its later writes
        // succeed and it reads the 431, not a reset.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&big).await.expect("write");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        s.write_all(&[b'a'; 1024]).await.expect("later write");
        s.write_all(b"\r\n\r\n").await.expect("later write");
        let mut c3 = String::new();
        s.read_to_string(&mut c3).await.expect("read");
        assert!(c3.starts_with("HTTP/1.1 431 "), "{c3}");
        assert_eq!(c.get(), 1, "only the good request scraped");
    }
}
