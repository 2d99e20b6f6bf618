//! Operating the daemons like distro services (docs/operations.md "Metrics", "Readiness and the
//! watchdog"), with fork-agent, sip-agent and turn-server in one test topology:
//! - each sends `READY=1` on `$NOTIFY_SOCKET` only once it serves (fork-agent: its control API
//!   answers; sip-agent: its listeners are bound; turn-server: its control socket and listeners
//!   are up), `WATCHDOG=1` from its main loop when `WATCHDOG_USEC` is set, and `STOPPING=1` on
//!   SIGTERM;
//! - each answers `GET /metrics` on its default 127.0.0.1 port with Prometheus text that an
//!   independent parser reads, and counters move with real traffic: a forked call through
//!   sip-agent and a TURN allocation.

#![allow(clippy::disallowed_methods)] // wall clock bounds the waits on real processes

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use turn_core::stun::Class;
use xdpfork_tests::{control, ns_run, Host, Topology};

use crate::sip_support::*;
use crate::turn_support::{self, PASSWORD, USER};

const FORK_METRICS: &str = "127.0.0.1:9464";
const SIP_METRICS: &str = "127.0.0.1:9465";
const TURN_METRICS: &str = "127.0.0.1:9466";

/// `GET http://addr/metrics` with curl inside the forker namespace; the parsed samples by
/// `name{labels}` (labels sorted, `le` included), after checking the text line by line.
pub(crate) fn scrape(topo: &Topology, addr: &str) -> Result<HashMap<String, f64>> {
    let text = ns_run(
        &topo.ns(Host::Forker),
        "curl",
        &[
            "-sS",
            "--fail",
            "--max-time",
            "10",
            &format!("http://{addr}/metrics"),
        ],
    )?;
    strict_check(&text)?;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .with_context(|| format!("parsing the scrape of {addr}:\n{text}"))?;
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let prometheus_parse::Value::Histogram(buckets) = &s.value {
            // The parser folds buckets into one sample; the count is the +Inf bucket.
            if let Some(b) = buckets.iter().find(|b| b.less_than.is_infinite()) {
                out.insert(
                    format!("{}_count{{{}}}", s.metric, labels.join(",")),
                    b.count,
                );
            }
            continue;
        }
        labels.sort();
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), v);
    }
    Ok(out)
}

/// The text format's rules the lenient parser does not check: every sample belongs to a
/// `# TYPE`d family of the `xdpfork_` namespace, counters end in `_total`, values are numbers.
fn strict_check(text: &str) -> Result<()> {
    let mut family: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let (name, kind) = (p.next().unwrap_or(""), p.next().unwrap_or(""));
            if !name.starts_with("xdpfork_") {
                bail!("family outside the xdpfork_ namespace: {line}");
            }
            if (kind == "counter") != name.ends_with("_total") {
                bail!("counter naming: {line}");
            }
            family = Some((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((name, kind)) = &family else {
            bail!("sample before any # TYPE: {line}");
        };
        let metric = line.split(['{', ' ']).next().unwrap_or("");
        let ok = match kind.as_str() {
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| metric == format!("{name}{s}")),
            _ => metric == name,
        };
        if !ok {
            bail!("sample {metric} outside its family {name}: {line}");
        }
        let value = line.rsplit(' ').next().unwrap_or("");
        if value.parse::<f64>().is_err() {
            bail!("not a number: {line}");
        }
    }
    Ok(())
}

pub(crate) fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[test]
fn every_daemon_serves_metrics_that_move_with_real_traffic() -> Result<()> {
    let mut t = SipTest::start()?;
    turn_support::spawn_turn_server(&mut t.s.topo, "", "", false, true)?;
    let fork0 = scrape(&t.s.topo, FORK_METRICS)?;
    let sip0 = scrape(&t.s.topo, SIP_METRICS)?;
    let turn0 = scrape(&t.s.topo, TURN_METRICS)?;
    assert_eq!(get(&sip0, "xdpfork_sip_calls_total{}"), 0.0, "{sip0:?}");
    assert_eq!(
        get(&fork0, "xdpfork_forks_started_total{}"),
        0.0,
        "{fork0:?}"
    );
    assert_eq!(
        get(&turn0, "xdpfork_turn_allocations_created_total{}"),
        0.0,
        "{turn0:?}"
    );

    // A forked call through sip-agent.
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let body = start_body("0B5E0001");
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    let caller = t.caller_spawn("uac_call.xml", &keys, &["-d", "3000"])?;
    let run = t.caller_wait(caller)?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    t.wait_callee_done()?;
    // A TURN allocation.
    let mut client = turn_support::stun_client(&t.s.topo)?;
    let (_nonce, resp) = client.allocate(USER, PASSWORD)?;
    assert_eq!(resp.class, Class::Success, "allocate: {resp:?}");

    let fork = scrape(&t.s.topo, FORK_METRICS)?;
    let sip = scrape(&t.s.topo, SIP_METRICS)?;
    let turn = scrape(&t.s.topo, TURN_METRICS)?;
    assert_eq!(get(&sip, "xdpfork_sip_calls_total{}"), 1.0, "{sip:?}");
    assert_eq!(
        get(&sip, "xdpfork_sip_calls_forked_total{}"),
        1.0,
        "{sip:?}"
    );
    assert_eq!(get(&fork, "xdpfork_forks_started_total{}"), 1.0, "{fork:?}");
    assert_eq!(
        get(&fork, "xdpfork_fork_start_seconds_count{}"),
        1.0,
        "{fork:?}"
    );
    assert!(
        get(&fork, "xdpfork_speech_connect_seconds_count{server=asr}") >= 1.0,
        "{fork:?}"
    );
    assert!(
        get(&fork, "xdpfork_speech_frames_sent_total{server=asr}") > 0.0,
        "{fork:?}"
    );
    // Packet -> frame latency: one observation per forked audio frame written (the frames
    // sent also count the control messages).
    let observed = get(
        &fork,
        "xdpfork_forked_frame_latency_seconds_count{server=asr}",
    );
    assert!(
        observed > 0.0 && observed <= get(&fork, "xdpfork_speech_frames_sent_total{server=asr}"),
        "{fork:?}"
    );
    assert!(
        get(
            &fork,
            "xdpfork_forked_frame_latency_seconds_sum{server=asr}"
        ) > 0.0,
        "{fork:?}"
    );
    assert!(
        get(&fork, "xdpfork_kernel_packets_total{reason=relayed}")
            > get(&fork0, "xdpfork_kernel_packets_total{reason=relayed}"),
        "{fork:?}"
    );
    assert_eq!(
        get(&turn, "xdpfork_turn_allocations_created_total{}"),
        1.0,
        "{turn:?}"
    );
    assert_eq!(get(&turn, "xdpfork_turn_allocations{}"), 1.0, "{turn:?}");
    // The endpoint counts its own connections: at least the first scrape and this one.
    assert!(
        get(
            &fork,
            "xdpfork_connections_admitted_total{listener=metrics}"
        ) >= 2.0
    );
    // Every metric the shipped Grafana dashboard queries is one the daemons serve.
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/grafana/xdpfork-dashboard.json"),
    )?;
    let served: Vec<&String> = fork.keys().chain(sip.keys()).chain(turn.keys()).collect();
    for name in dashboard_metrics(&dashboard) {
        let base = name.strip_suffix("_bucket").unwrap_or(&name);
        assert!(
            served.iter().any(|k| k.starts_with(base)),
            "the dashboard queries {name}, which no daemon serves"
        );
    }
    Ok(())
}

/// The plain metric names in the dashboard's queries (regex selectors left out).
fn dashboard_metrics(json: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = json;
    while let Some(i) = rest.find("xdpfork_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !tail[end..].starts_with('(') {
            out.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// What a daemon sent on its notify socket, read on a thread: each message, and whether
/// `serving()` held when `READY=1` arrived.
struct NotifyLog {
    rx: mpsc::Receiver<(String, bool)>,
    seen: Vec<(String, bool)>,
}

impl NotifyLog {
    fn listen(path: &Path, serving: impl Fn() -> bool + Send + 'static) -> Result<NotifyLog> {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path).context("binding the notify socket")?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let end = Instant::now() + Duration::from_secs(120);
            while Instant::now() < end {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let at_ready = msg.lines().any(|l| l == "READY=1") && serving();
                if tx.send((msg, at_ready)).is_err() {
                    return;
                }
            }
        });
        Ok(NotifyLog { rx, seen: vec![] })
    }

    /// Waits (bounded) for a message with the line `line`; returns whether serving held then.
    fn wait(&mut self, line: &str, limit: Duration) -> Result<bool> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(m) = self.rx.recv_timeout(Duration::from_millis(200)) {
                let hit = m.0.lines().any(|l| l == line);
                self.seen.push(m.clone());
                if hit {
                    return Ok(m.1);
                }
            }
        }
        bail!("no {line} within {limit:?}; got {:?}", self.seen)
    }
}

#[test]
fn every_daemon_notifies_ready_once_it_serves_pings_the_watchdog_and_says_stopping() -> Result<()> {
    let mut t = SipTest::start()?;
    let dir = t.dir.clone();
    // The watchdog interval is 1 s: pings every 0.5 s.
    let env = |sock: &Path| -> Vec<(String, String)> {
        vec![
            ("NOTIFY_SOCKET".into(), sock.display().to_string()),
            ("WATCHDOG_USEC".into(), "1000000".into()),
        ]
    };

    // fork-agent, restarted under a notify socket: READY=1 only once the control API answers.
    let fork_sock = dir.join("notify-fork.sock");
    let control_socket = t.s.socket.clone();
    let probe = serde_json::json!({"v": 1, "op": "show_counters"});
    let mut fork = NotifyLog::listen(&fork_sock, move || control(&control_socket, &probe).is_ok())?;
    t.s.topo.signal("fork-agent", Signal::SIGTERM)?;
    let fork_env = env(&fork_sock);
    let fork_env: Vec<(&str, &str)> = fork_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    t.s.start_agent_with_env(&fork_env)?;
    assert!(
        fork.wait("READY=1", Duration::from_secs(30))?,
        "{:?}",
        fork.seen
    );
    assert!(
        fork.seen.iter().any(|(m, _)| m.contains("STATUS=")),
        "{:?}",
        fork.seen
    );
    fork.wait("WATCHDOG=1", Duration::from_secs(10))?;

    // sip-agent, restarted under a notify socket: READY=1 once its listeners are bound (it
    // logs "sip-agent running" right after binding them).
    let sip_sock = dir.join("notify-sip.sock");
    let log = dir.join("sip-agent.log");
    let mut sip = NotifyLog::listen(&sip_sock, move || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("sip-agent running"))
    })?;
    t.env = env(&sip_sock);
    t.kill_and_restart_sip_agent(|_| Ok(()))?;
    assert!(
        sip.wait("READY=1", Duration::from_secs(30))?,
        "{:?}",
        sip.seen
    );
    sip.wait("WATCHDOG=1", Duration::from_secs(10))?;

    // turn-server: READY=1 once its control socket (bound before the listeners are served)
    // answers.
    let turn_sock = dir.join("notify-turn.sock");
    let turn_control = dir.join("turn-server.sock");
    let mut turn = NotifyLog::listen(&turn_sock, move || {
        turn_support::turn_status(&turn_control).is_ok()
    })?;
    let turn_env = env(&turn_sock);
    let turn_env: Vec<(&str, &str)> = turn_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    turn_support::spawn_turn_server_env(&mut t.s.topo, "", "", false, true, &turn_env)?;
    assert!(
        turn.wait("READY=1", Duration::from_secs(30))?,
        "{:?}",
        turn.seen
    );
    turn.wait("WATCHDOG=1", Duration::from_secs(10))?;

    // SIGTERM: STOPPING=1 from each.
    for (name, log) in [
        ("turn-server", &mut turn),
        ("sip-agent", &mut sip),
        ("fork-agent", &mut fork),
    ] {
        t.s.topo.signal(name, Signal::SIGTERM)?;
        log.wait("STOPPING=1", Duration::from_secs(15))
            .with_context(|| format!("{name} on SIGTERM"))?;
    }
    Ok(())
}
