//! `xdpfork-bench bot`: voice bots talking back (return audio, endpoint mode) on one fork-agent
//! core: how many calls' playouts it paces, and the latency from the bot's message to the RTP
//! packet at the caller.
//!
//! Input: the sweep of call counts (`--streams`) and seconds per point. Output: a Markdown table
//! (calls, RTP packets expected and received at the caller, fork-agent CPU, bot → caller latency
//! p50/p99/max) plus raw points.
//!
//! Call order: build a topology; in the speech namespace a bot server (a thread of this
//! process: Twilio's dialect, no subprotocol) that, once a call's `start` arrived, sends every
//! [`PERIOD`] one `media` message of [`CHUNK_MS`] of µ-law whose first bytes hold a
//! CLOCK_MONOTONIC stamp (µ-law bytes that survive decoding and re-encoding unchanged); in the
//! caller namespace one UDP socket every call's bot RTP goes to. fork-agent runs pinned to one
//! core with `[return_audio] prebuffer_ms = 0` (the pipeline, not the jitter buffer, is
//! measured). Per point: install the missing calls (a sink `flow_add` and a `fork_start` with
//! `return_audio`, as sip-agent does for a bot number), wait until every call's `start`
//! reached the bot, then count for `secs`: every call's playout sends 50 packets a second
//! (speech or silence), and each utterance's first packet (marker bit) carries the stamp.

use std::{
    net::{SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{bail, Result};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use xdpfork_tests::{bin, control, Host, Topology};

use crate::{
    cpu,
    fork::{ctl, tcp_listener},
    load::{self, mono_ns},
    Report,
};

const WS: &str = "10.77.3.2:9101";
/// Where every call's bot RTP goes (the callers all share one address).
const CALLER: &str = "10.77.1.2:41000";
/// First anchored port on fa0; call `i` uses `A_BASE + 2i`.
const A_BASE: u16 = 20_000;
const AGENT_CORE: &str = "1";
/// The bot speaks every this often...
const PERIOD: Duration = Duration::from_millis(300);
/// ... this much (the rest of the period is silence, so each utterance is a talkspurt).
const CHUNK_MS: usize = 100;
/// First two bytes of a stamped chunk.
const MAGIC: [u8; 2] = [0x2a, 0x2b];
/// Stamp: magic and 16 nibbles, each `0x10 | nibble` (µ-law codes decode and re-encode to
/// themselves, 0x7f aside).
const STAMP_LEN: usize = 18;

fn stamp(ns: u64, out: &mut [u8]) {
    out[..2].copy_from_slice(&MAGIC);
    for i in 0..16 {
        out[2 + i] = 0x10 | ((ns >> (60 - 4 * i)) & 0xf) as u8;
    }
}

fn read_stamp(p: &[u8]) -> Option<u64> {
    if p.len() < STAMP_LEN || p[..2] != MAGIC {
        return None;
    }
    p[2..STAMP_LEN].iter().try_fold(0u64, |acc, b| {
        (b & 0xf0 == 0x10).then_some((acc << 4) | u64::from(b & 0xf))
    })
}

#[derive(Default)]
struct Acc {
    packets: u64,
    lat_ns: Vec<u32>,
}

struct Bot {
    starts: AtomicU64,
    utterances: AtomicU64,
}

/// The bot server: per connection, talk every PERIOD once `start` arrived.
fn spawn_bot(listener: TcpListener, bot: Arc<Bot>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        load::boost_thread();
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            eprintln!("bot bench: no runtime");
            return;
        };
        rt.block_on(async move {
            let _ = listener.set_nonblocking(true);
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while !stop.load(Ordering::Relaxed) {
                let Ok(Ok((tcp, _))) =
                    tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
                else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (bot, stop) = (bot.clone(), stop.clone());
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let (mut tx, mut rx) = ws.split();
                    let mut sid = None;
                    while let Some(Ok(m)) = rx.next().await {
                        if let Message::Text(t) = m {
                            let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                            if v["event"] == "start" {
                                sid = v["streamSid"].as_str().map(str::to_owned);
                                break;
                            }
                        }
                    }
                    let Some(sid) = sid else { return };
                    let k = bot.starts.fetch_add(1, Ordering::Relaxed);
                    // Spread the bots' phases over the playouts' 20 ms packet grid (a bot that
                    // always spoke just after a packet went out would always wait a whole one).
                    tokio::time::sleep(Duration::from_micros(k * 7_300 % 20_000)).await;
                    // Drain what fork-agent sends (nothing much: the callers are silent).
                    tokio::spawn(async move { while rx.next().await.is_some() {} });
                    let mut tick = tokio::time::interval(PERIOD);
                    let mut audio = vec![0x20u8; CHUNK_MS * 8];
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        stamp(mono_ns(), &mut audio);
                        let msg = json!({"event":"media","streamSid":sid,"media":{"payload":
                            base64::engine::general_purpose::STANDARD.encode(&audio)}});
                        if tx.send(Message::text(msg.to_string())).await.is_err() {
                            return;
                        }
                        bot.utterances.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
    });
}

/// The callers: every packet counted, each utterance's first packet's latency recorded.
fn spawn_callers(sock: std::net::UdpSocket, acc: Arc<Mutex<Acc>>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        load::boost_thread();
        let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = sock.recv(&mut buf) else { continue };
            let now = mono_ns();
            let mut a = acc.lock().unwrap_or_else(|e| e.into_inner());
            a.packets += 1;
            if n > 12 && buf[1] & 0x80 != 0 {
                if let Some(t) = read_stamp(&buf[12..n]) {
                    a.lat_ns
                        .push(now.saturating_sub(t).min(u64::from(u32::MAX)) as u32);
                }
            }
        }
    });
}

struct Point {
    calls: usize,
    secs: f64,
    packets: u64,
    utterances: u64,
    stamped: usize,
    agent_cpu_ns: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl Point {
    fn expected(&self) -> f64 {
        self.calls as f64 * 50.0 * self.secs
    }
    fn json(&self) -> serde_json::Value {
        json!({"calls": self.calls, "secs": self.secs, "packets": self.packets,
               "expected_packets": self.expected(), "utterances_sent": self.utterances,
               "utterances_timed": self.stamped, "agent_cpu_ns": self.agent_cpu_ns,
               "agent_cores": self.agent_cpu_ns as f64 / (self.secs * 1e9),
               "lat_p50_us": self.p50_us, "lat_p99_us": self.p99_us, "lat_max_us": self.max_us})
    }
}

pub fn run(calls: &[usize], secs: f64) -> Result<Report> {
    let facts = crate::host_facts();
    let mut t = Topology::new()?;
    let listener = tcp_listener(&t, Host::Speech, WS.parse()?)?;
    let bot = Arc::new(Bot {
        starts: AtomicU64::new(0),
        utterances: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    spawn_bot(listener, bot.clone(), stop.clone());
    let acc = Arc::new(Mutex::new(Acc::default()));
    let caller = t.udp_socket(Host::Caller, CALLER.parse()?)?;
    let _ = nix::sys::socket::setsockopt(&caller, nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
    spawn_callers(caller, acc.clone(), stop.clone());

    let socket = t.dir.join("fork-agent.sock");
    let config = t.dir.join("fork-agent.toml");
    // The standard config ends inside its [[speech_server]] table: the bot speaks Twilio's
    // dialect there; the playout starts each utterance at once.
    let mut text =
        xdpfork_tests::Scenario::fork_agent_config(&t.pin_dir, &socket, &t.dir.join("state"), WS);
    text.push_str("[speech_server.protocol]\nprofile = \"twilio\"\n\n");
    text.push_str("[return_audio]\nprebuffer_ms = 0\n");
    std::fs::write(&config, text)?;
    let agent = bin("fork-agent")?.to_string_lossy().into_owned();
    let cfg = config.to_string_lossy().into_owned();
    t.spawn(
        "fork-agent",
        Host::Forker,
        std::path::Path::new("/usr/bin/taskset"),
        &["-c", AGENT_CORE, &agent, "run", "--config", &cfg],
    )?;
    t.wait_fork_agent(&socket, "fork-agent")?;
    let agent_pid = crate::one_pid(&t, Host::Forker, "fork-agent")?;
    let mut installed = 0usize;
    let mut points = Vec::new();
    for &n in calls {
        while installed < n {
            let c = installed;
            let a: SocketAddr = format!("10.77.1.1:{}", A_BASE as usize + 2 * c).parse()?;
            ctl(
                &socket,
                json!({"v":1,"op":"flow_add","flow":{"local":a,"src":a,"dst":CALLER,"sink":true}}),
            )?;
            ctl(
                &socket,
                json!({"v":1,"op":"fork_start","fork":{
                    "call_guid": format!("bot-{c}"), "server": "asr", "codec": "PCMU",
                    "streams": [{"channel":"caller","flow":a}],
                    "return_audio": {"flow": a}}}),
            )?;
            installed += 1;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while bot.starts.load(Ordering::Relaxed) < n as u64 {
            if std::time::Instant::now() > deadline || !t.is_running("fork-agent") {
                bail!(
                    "{} of {n} calls reached the bot; fork-agent log:\n{}",
                    bot.starts.load(Ordering::Relaxed),
                    crate::tail(&t.log("fork-agent"), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        load::boost_process(agent_pid);
        // Let every playout reach its steady state, then count.
        std::thread::sleep(Duration::from_millis(500));
        *acc.lock().unwrap_or_else(|e| e.into_inner()) = Acc::default();
        let (u0, c0, t0) = (
            bot.utterances.load(Ordering::Relaxed),
            cpu::process_cpu_ns(agent_pid),
            mono_ns(),
        );
        std::thread::sleep(Duration::from_secs_f64(secs));
        let mut a = std::mem::take(&mut *acc.lock().unwrap_or_else(|e| e.into_inner()));
        let (u1, c1, t1) = (
            bot.utterances.load(Ordering::Relaxed),
            cpu::process_cpu_ns(agent_pid),
            mono_ns(),
        );
        let p = Point {
            calls: n,
            secs: (t1 - t0) as f64 / 1e9,
            packets: a.packets,
            utterances: u1 - u0,
            stamped: a.lat_ns.len(),
            agent_cpu_ns: c1 - c0,
            p50_us: load::quantile_us(&mut a.lat_ns, 0.5),
            p99_us: load::quantile_us(&mut a.lat_ns, 0.99),
            max_us: load::quantile_us(&mut a.lat_ns, 1.0),
        };
        eprintln!(
            "  {n:>5} calls: {} RTP packets of {:.0} expected, {} utterances timed, fork-agent {:.3} cores, latency p50 {:.1} ms p99 {:.1} ms",
            p.packets,
            p.expected(),
            p.stamped,
            p.agent_cpu_ns as f64 / (p.secs * 1e9),
            p.p50_us / 1000.0,
            p.p99_us / 1000.0
        );
        points.push(p);
    }
    stop.store(true, Ordering::Relaxed);
    let counters = control(&socket, &json!({"v":1,"op":"show_counters"}))
        .unwrap_or_else(|e| json!({"error": e.to_string()}));
    let mut md = format!(
        "## `cargo xtask bench bot`\n\n{facts}\nfork-agent pinned to CPU {AGENT_CORE}; every call a voice bot's (sink flow, fork with return audio, Twilio dialect, `prebuffer_ms = 0`); each bot sends a {CHUNK_MS} ms utterance every {} ms; {secs} s per point. Latency: the bot's CLOCK_MONOTONIC stamp in the `media` message → the caller receiving the utterance's first RTP packet; it includes the wait for the call's next 20 ms packet time (0–20 ms, the bots' phases spread over it).\n\n| calls | RTP packets at the callers (expected: 50/s per call) | utterances timed | fork-agent CPU (cores) | fork-agent µs per RTP packet | latency p50 / p99 / max (ms) |\n|---|---|---|---|---|---|\n",
        PERIOD.as_millis()
    );
    for p in &points {
        md.push_str(&format!(
            "| {} | {} of {:.0} | {} | {:.3} | {:.1} | {:.2} / {:.2} / {:.2} |\n",
            p.calls,
            p.packets,
            p.expected(),
            p.stamped,
            p.agent_cpu_ns as f64 / (p.secs * 1e9),
            p.agent_cpu_ns as f64 / 1000.0 / p.packets.max(1) as f64,
            p.p50_us / 1000.0,
            p.p99_us / 1000.0,
            p.max_us / 1000.0,
        ));
    }
    Ok(Report {
        markdown: md,
        raw: json!({"facts": facts, "points": points.iter().map(Point::json).collect::<Vec<_>>(),
                    "fork_agent_counters": counters}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_through_mu_law() {
        let mut b = [0u8; STAMP_LEN];
        stamp(0x0123_4567_89ab_cdef, &mut b);
        let through: Vec<u8> = b
            .iter()
            .map(|&x| speech_proto::linear_to_ulaw(speech_proto::ulaw_to_linear(x)))
            .collect();
        assert_eq!(read_stamp(&through), Some(0x0123_4567_89ab_cdef));
        assert_eq!(read_stamp(&[0x20; STAMP_LEN]), None);
    }
}
