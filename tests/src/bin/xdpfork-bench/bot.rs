//! `xdpfork-bench bot`: voice bots talking back (return audio) on one fork-agent core, in
//! endpoint mode (the call ends at the bot) and in inject mode (the bot talks into a call the
//! kernel relays): how many calls' playouts it paces, the latency from the bot's message to the
//! RTP packet at the caller, and whether the caller's stream stays continuous.
//!
//! Input: the sweep of call counts (`--streams`), the modes (`--modes endpoint,inject`), the
//! spread of the bots' phases (`--spread-ms`, by default the talk period), whether each
//! utterance is interrupted by a `clear` and a new utterance (`--barge-in`) and seconds per
//! point. Output: two Markdown tables (per call count and mode: RTP packets at the
//! caller, fork-agent CPU, bot → caller latency p50/p99/max, take-overs and hand-backs; then the
//! caller's view of continuity: sequence gaps and repeats, SSRC changes, timestamp steps, by
//! where they happened) plus raw points.
//!
//! Call order: each (call count, mode) point gets a fresh topology and fork-agent (so neither
//! mode pays for the other's calls), the modes of one count run back to back so that the
//! shared host's drifting load hits both alike. In the speech namespace a bot server (a thread
//! of this process: Twilio's dialect, no subprotocol) that, once a call's `start` arrived, sends
//! every [`PERIOD`] one `media` message of [`CHUNK_MS`] of µ-law whose first bytes hold a
//! CLOCK_MONOTONIC stamp (µ-law bytes that survive decoding and re-encoding unchanged); in the
//! caller namespace one UDP socket every call's RTP goes to, the call told by the anchored
//! source port. fork-agent runs pinned to one core with `[return_audio] prebuffer_ms = 0` (the
//! pipeline, not the jitter buffer, is measured).
//! - Endpoint: per call a sink `flow_add` and a `fork_start` with `return_audio`, as sip-agent
//!   does for a bot number; the playout sends 50 packets a second (speech or silence).
//! - Inject: per call the two relayed flows of a bridged call (as e2e `bot_inject`) and a
//!   `fork_start` of the (silent) caller's stream with `return_audio` on the callee's flow,
//!   `replace` mode. A generator thread in the callee namespace streams every callee's 20 ms
//!   RTP (`load::generate_calls`, the load stamp at the start of the payload, which tells the
//!   caller a relayed packet from the bot's) through the kernel relay; each talkspurt the
//!   playout takes the stream over and hands it back.
//!
//! Then the driver waits until every call's `start` reached the bot, lets the calls run for
//! [`WARM_UP`], and counts for `secs`: every packet at the caller by sender, each utterance's
//! first packet (marker bit and stamp) for the latency, each step between consecutive packets
//! of a call for continuity, and fork-agent's CPU and counters over the window.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Result};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use nix::libc;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use xdpfork_tests::{bin, control, rtp_packet, Host, Topology};

use crate::{
    cpu,
    fork::{ctl, spawn_pinned_agent, tcp_listener, AGENT_CORE},
    load::{self, mono_ns, CallSet, Template},
    ws, Report,
};

const WS: &str = "10.77.3.2:9101";
/// Where every call's RTP to the caller goes (the callers all share one address).
const CALLER: &str = "10.77.1.2:41000";
/// First anchored port on fa0 (what the caller hears from); call `i` uses `A_BASE + 2i`.
const A_BASE: u16 = 20_000;
/// Inject mode: first anchored port on fb0 (what the callee sends to); call `i` uses
/// `B_BASE + 2i`.
const B_BASE: u16 = 40_000;
/// Inject mode: where the (silent) callers' direction would be relayed to.
const CALLEE_SINK: &str = "10.77.2.2:9999";
/// Inject mode: the callees' generator's source; call `i` has SSRC `CALLEE_SSRC + i`.
const CALLEE_SRC: &str = "10.77.2.2:0";
const CALLEE_SSRC: u32 = 0xca11_0000;
/// The bot speaks every this often...
const PERIOD: Duration = Duration::from_millis(300);
/// ... this much (the rest of the period is silence, so each utterance is a talkspurt).
const CHUNK_MS: usize = 100;
/// `--barge-in`: this far into each utterance the bot clears it and at once starts another.
const BARGE_IN_AFTER: Duration = Duration::from_millis(40);
/// Calls run this long after the last `start` before the window opens.
const WARM_UP: Duration = Duration::from_secs(1);
/// RTP timestamp units of one 20 ms G.711 packet.
const PACKET_TS: u32 = 160;
/// First two bytes of a stamped chunk.
const MAGIC: [u8; 2] = [0x2a, 0x2b];
/// Stamp: magic and 16 nibbles, each `0x10 | nibble` (µ-law codes decode and re-encode to
/// themselves, 0x7f aside).
const STAMP_LEN: usize = 18;
/// Discontinuities described one by one in the raw points (the first ones of a point).
const EXAMPLES: usize = 20;

/// How the bot's audio reaches the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The call ends at the bot: a sink flow, the playout owns the stream.
    Endpoint,
    /// The bot talks into a kernel-relayed call, taking the stream over per talkspurt.
    Inject,
}

impl Mode {
    /// `--modes` values, comma-separated.
    pub fn parse_list(v: &str) -> Result<Vec<Mode>> {
        v.split(',')
            .map(|m| match m.trim() {
                "endpoint" => Ok(Mode::Endpoint),
                "inject" => Ok(Mode::Inject),
                other => bail!("--modes: `{other}` is not endpoint or inject"),
            })
            .collect()
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Endpoint => "endpoint",
            Mode::Inject => "inject",
        }
    }
}

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

/// Who sent a packet the caller received: the kernel relaying the callee (the payload starts
/// with the generator's stamp) or the bot's playout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Relay,
    Bot,
}

/// Steps between two consecutive packets of a call, by senders: relay → relay, the take-over
/// (relay → bot), bot → bot, the hand-back (bot → relay).
const STEP_KINDS: [&str; 4] = ["relay", "take_over", "bot", "hand_back"];

fn step_kind(p: Origin, q: Origin) -> usize {
    match (p, q) {
        (Origin::Relay, Origin::Relay) => 0,
        (Origin::Relay, Origin::Bot) => 1,
        (Origin::Bot, Origin::Bot) => 2,
        (Origin::Bot, Origin::Relay) => 3,
    }
}

/// The RTP header fields continuity is judged on.
#[derive(Clone, Copy, Debug)]
struct Rtp {
    seq: u16,
    ts: u32,
    ssrc: u32,
    marker: bool,
    from: Origin,
    /// When the caller received it (CLOCK_MONOTONIC, ns; the receive batch's time).
    at_ns: u64,
}

impl Rtp {
    /// The header of `pkt` (fork-agent and the kernel send no CSRC or extension) and its
    /// payload; `None` if it is no RTP.
    fn parse(pkt: &[u8], at_ns: u64) -> Option<(Rtp, &[u8])> {
        if pkt.len() < 12 || pkt[0] >> 6 != 2 {
            return None;
        }
        let payload = &pkt[12..];
        let word =
            |r: std::ops::Range<usize>| pkt[r].iter().fold(0u32, |a, b| a << 8 | u32::from(*b));
        Some((
            Rtp {
                seq: word(2..4) as u16,
                ts: word(4..8),
                ssrc: word(8..12),
                marker: pkt[1] & 0x80 != 0,
                from: if load::Stamp::read(payload).is_some() {
                    Origin::Relay
                } else {
                    Origin::Bot
                },
                at_ns,
            },
            payload,
        ))
    }
}

/// What went wrong, if anything, across steps of one kind. One stream is sequence +1 per
/// packet, one SSRC, timestamps forward by whole packet times (a take-over may skip some: the
/// bot continues the media clock), and a marker bit on the bot's first packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Steps {
    steps: u64,
    /// Steps whose sequence number jumped forward by more than one, and the numbers skipped.
    gaps: u64,
    missing: u64,
    /// Steps whose sequence number did not advance (a repeat or a step back).
    repeats: u64,
    ssrc_changes: u64,
    /// Timestamp steps that are not a positive whole number of packet times.
    ts_anomalies: u64,
    /// Take-overs whose first bot packet had no marker bit.
    no_marker: u64,
    /// |arrival interval − timestamp interval| over the steps: the jitter a receiver sees at
    /// this kind of step (relay → relay is the measurement's own noise), sum and max, µs.
    dev_sum_us: u64,
    dev_max_us: u64,
}

impl Steps {
    /// Judges the step `p` → `q`; true if it broke the stream.
    fn record(&mut self, p: &Rtp, q: &Rtp) -> bool {
        self.steps += 1;
        let d = q.seq.wrapping_sub(p.seq);
        let mut broken = false;
        if d == 0 || d >= 0x8000 {
            self.repeats += 1;
            broken = true;
        } else if d > 1 {
            self.gaps += 1;
            self.missing += u64::from(d - 1);
            broken = true;
        }
        if q.ssrc != p.ssrc {
            self.ssrc_changes += 1;
            broken = true;
        }
        let step = q.ts.wrapping_sub(p.ts);
        if step == 0 || !step.is_multiple_of(PACKET_TS) || step >= 0x8000_0000 {
            self.ts_anomalies += 1;
            broken = true;
        }
        if p.from == Origin::Relay && q.from == Origin::Bot && !q.marker {
            self.no_marker += 1;
            broken = true;
        }
        if step < 0x8000_0000 {
            // 8 kHz: 125 µs per timestamp unit.
            let media_us = i64::from(step) / 8 * 1000;
            let arrival_us = (q.at_ns as i64 - p.at_ns as i64) / 1000;
            let dev = (arrival_us - media_us).unsigned_abs();
            self.dev_sum_us += dev;
            self.dev_max_us = self.dev_max_us.max(dev);
        }
        broken
    }

    fn json(&self) -> Value {
        json!({"steps": self.steps, "seq_gaps": self.gaps, "seq_missing": self.missing,
               "seq_repeats": self.repeats, "ssrc_changes": self.ssrc_changes,
               "ts_anomalies": self.ts_anomalies, "take_over_without_marker": self.no_marker,
               "jitter_mean_us": self.dev_mean_us(), "jitter_max_us": self.dev_max_us})
    }

    fn dev_mean_us(&self) -> u64 {
        self.dev_sum_us / self.steps.max(1)
    }
}

/// What the callers received in the current window.
#[derive(Default)]
struct Acc {
    packets: u64,
    bot: u64,
    relayed: u64,
    /// Not RTP, or from no call's anchor.
    foreign: u64,
    /// Bot stamp → receipt of each utterance's first packet.
    lat_ns: Vec<u32>,
    /// Last packet of each call.
    last: Vec<Option<Rtp>>,
    steps: [Steps; 4],
    broken_calls: Vec<bool>,
    examples: Vec<String>,
}

impl Acc {
    fn new(calls: usize) -> Acc {
        Acc {
            last: vec![None; calls],
            broken_calls: vec![false; calls],
            ..Acc::default()
        }
    }

    /// One datagram from anchored port `port`, received at `now` (CLOCK_MONOTONIC).
    fn packet(&mut self, port: u16, pkt: &[u8], now: u64) {
        self.packets += 1;
        let call = usize::from(port.wrapping_sub(A_BASE)) / 2;
        let (Some((q, payload)), true) = (Rtp::parse(pkt, now), call < self.last.len()) else {
            self.foreign += 1;
            return;
        };
        match q.from {
            Origin::Relay => self.relayed += 1,
            Origin::Bot => self.bot += 1,
        }
        if q.marker && q.from == Origin::Bot {
            if let Some(t) = read_stamp(payload) {
                self.lat_ns
                    .push(now.saturating_sub(t).min(u64::from(u32::MAX)) as u32);
            }
        }
        let Some(p) = self.last[call].replace(q) else {
            return;
        };
        let kind = step_kind(p.from, q.from);
        if self.steps[kind].record(&p, &q) {
            self.broken_calls[call] = true;
            if self.examples.len() < EXAMPLES {
                self.examples
                    .push(format!("call {call} {}: {p:?} -> {q:?}", STEP_KINDS[kind]));
            }
        }
    }
}

/// The callers: one socket, every packet judged (see [`Acc::packet`]), in `recvmmsg` batches
/// with each datagram's source (the call's anchor).
fn spawn_callers(sock: UdpSocket, acc: Arc<Mutex<Acc>>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        load::boost_thread();
        let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
        let mut bufs = vec![[0u8; 512]; load::BATCH];
        // SAFETY: sockaddr_in and mmsghdr are plain data; zeroed is valid before use.
        let mut names: Vec<libc::sockaddr_in> = (0..load::BATCH)
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        let mut iovs = load::iovecs(&mut bufs);
        let mut msgs: Vec<libc::mmsghdr> = (0..load::BATCH)
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        while !stop.load(Ordering::Relaxed) {
            for ((m, iov), name) in msgs.iter_mut().zip(iovs.iter_mut()).zip(names.iter_mut()) {
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_name = (name as *mut libc::sockaddr_in).cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            }
            // SAFETY: BATCH headers over live buffers and address slots; SO_RCVTIMEO bounds
            // the wait.
            let r = unsafe {
                libc::recvmmsg(
                    sock.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    load::BATCH as u32,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            let now = mono_ns();
            if r <= 0 {
                continue;
            }
            let mut a = acc.lock().unwrap_or_else(|e| e.into_inner());
            for i in 0..r as usize {
                let len = msgs[i].msg_len as usize;
                a.packet(u16::from_be(names[i].sin_port), &bufs[i][..len], now);
            }
        }
    })
}

/// Inject mode: what the callees' generator sent, or why it stopped.
#[derive(Default)]
struct CalleeStats {
    sent: u64,
    send_errors: u64,
    error: Option<String>,
}

/// Inject mode: every callee streams 20 ms RTP to its anchor `dests[i]` (own SSRC, sequence and
/// timestamp running on) until `stop`, paced 50 packets a second per call and spread evenly
/// over the 20 ms period, in one-second runs of the load generator.
fn spawn_callees(
    sock: UdpSocket,
    dests: Vec<SocketAddr>,
    out: Arc<Mutex<CalleeStats>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let run = || -> Result<()> {
            let n = dests.len();
            let mut calls = CallSet::rtp(&dests, CALLEE_SSRC)?;
            let template = Template {
                bytes: rtp_packet(0, 0, 0, 0, &[0xd5; 160]),
                stamp_at: 12,
                patch: |b, seq| {
                    b[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
                    b[4..8].copy_from_slice(&(seq as u32).wrapping_mul(PACKET_TS).to_be_bytes());
                },
                seq_base: 0,
            };
            while !stop.load(Ordering::Relaxed) {
                let g = load::generate_calls(
                    &sock,
                    &template,
                    &mut calls,
                    n,
                    1,
                    Some(50 * n as u64),
                    Duration::from_secs(1),
                )?;
                let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                o.sent += g.sent;
                o.send_errors += g.send_errors;
            }
            Ok(())
        };
        if let Err(e) = run() {
            out.lock().unwrap_or_else(|e| e.into_inner()).error = Some(format!("{e:#}"));
        }
    })
}

/// The driver's threads of one point; stopped and joined when dropped (also on an error), before
/// the topology they live in goes.
struct Threads {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

struct Bot {
    starts: AtomicU64,
    utterances: AtomicU64,
}

/// The bot server: per connection, talk every PERIOD once `start` arrived, the connections'
/// first utterances spread over `spread`; with `barge_in`, [`BARGE_IN_AFTER`] into each
/// utterance a `clear` and a new utterance in one write (a bot re-prompting after the caller
/// interrupted it).
fn spawn_bot(
    listener: TcpListener,
    bot: Arc<Bot>,
    spread: Duration,
    barge_in: bool,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let serve_stop = stop.clone();
    ws::spawn_acceptor("bot", listener, stop, load::boost_thread, move |tcp| {
        let (bot, stop) = (bot.clone(), serve_stop.clone());
        async move {
            let _ = tcp.set_nodelay(true);
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
            // Spread the bots' phases (by default over the period, and so over the
            // playouts' 20 ms packet grid: a bot that always spoke just after a packet
            // went out would always wait a whole one, and calls talk independently).
            let spread_us = (spread.as_micros() as u64).max(1);
            tokio::time::sleep(Duration::from_micros(k * 7_300 % spread_us)).await;
            // Drain what fork-agent sends (nothing much: the callers are silent).
            tokio::spawn(async move { while rx.next().await.is_some() {} });
            let mut tick = tokio::time::interval(PERIOD);
            let mut audio = vec![0x20u8; CHUNK_MS * 8];
            let media = |audio: &mut Vec<u8>| {
                stamp(mono_ns(), audio);
                Message::text(
                    json!({"event":"media","streamSid":sid,"media":{"payload":
                        base64::engine::general_purpose::STANDARD.encode(&*audio)}})
                    .to_string(),
                )
            };
            let clear = Message::text(json!({"event":"clear","streamSid":sid}).to_string());
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if tx.send(media(&mut audio)).await.is_err() {
                    return;
                }
                bot.utterances.fetch_add(1, Ordering::Relaxed);
                if barge_in {
                    tokio::time::sleep(BARGE_IN_AFTER).await;
                    let again = media(&mut audio);
                    if tx.feed(clear.clone()).await.is_err() || tx.send(again).await.is_err() {
                        return;
                    }
                    bot.utterances.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

/// One measured point.
struct Point {
    mode: Mode,
    calls: usize,
    secs: f64,
    /// The host's 1-minute load average at the end of the window.
    load1: f64,
    packets: u64,
    bot: u64,
    relayed: u64,
    foreign: u64,
    utterances: u64,
    stamped: usize,
    agent_cpu_ns: u64,
    /// Deltas of fork-agent's `show_counters` over the window (`None`: not reported).
    counters: Vec<(&'static str, Option<i64>)>,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    steps: [Steps; 4],
    broken_calls: usize,
    examples: Vec<String>,
    /// Datagrams the caller's socket refused (its buffer full: the driver's loss, not the
    /// stream's), and datagrams the callee's veth dropped (the forker's ring full: before XDP).
    caller_drops: u64,
    callee_ring_drops: u64,
}

/// fork-agent's counters of a point: `show_counters` paths.
const COUNTERS: [(&str, &str); 6] = [
    ("paced", "/return_audio/packets"),
    ("take_overs", "/return_audio/take_overs"),
    ("hand_backs", "/return_audio/hand_backs"),
    ("take_over_failures", "/return_audio/take_over_failures"),
    ("inject_dropped", "/kernel/inject_dropped"),
    ("inject_forked", "/kernel/inject_forked"),
];

impl Point {
    fn expected(&self) -> f64 {
        self.calls as f64 * 50.0 * self.secs
    }
    fn counter(&self, name: &str) -> Option<i64> {
        self.counters.iter().find(|(n, _)| *n == name)?.1
    }
    fn cores(&self) -> f64 {
        self.agent_cpu_ns as f64 / (self.secs * 1e9)
    }
    /// fork-agent CPU per RTP packet its playouts paced (by its own count, else the caller's).
    fn us_per_paced(&self) -> f64 {
        let paced = self
            .counter("paced")
            .filter(|p| *p > 0)
            .map_or(self.bot, |p| p as u64);
        self.agent_cpu_ns as f64 / 1000.0 / paced.max(1) as f64
    }
    /// Inject mode: the callee's packets the kernel dropped while the bot held the stream
    /// beyond those the bot's packets replaced (media time lost at the switches), and that per
    /// take-over.
    fn unreplaced(&self) -> Option<(i64, f64)> {
        if self.mode != Mode::Inject {
            return None;
        }
        let lost = self.counter("inject_dropped")? - self.counter("paced")?;
        let per = lost as f64 / self.counter("take_overs").filter(|t| *t > 0)? as f64;
        Some((lost, per))
    }
    fn total(&self, f: impl Fn(&Steps) -> u64) -> u64 {
        self.steps.iter().map(f).sum()
    }
    fn json(&self) -> Value {
        let counters: serde_json::Map<String, Value> = self
            .counters
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let steps: serde_json::Map<String, Value> = STEP_KINDS
            .iter()
            .zip(&self.steps)
            .map(|(k, s)| ((*k).to_owned(), s.json()))
            .collect();
        json!({"mode": self.mode.name(), "calls": self.calls, "secs": self.secs,
               "load_avg_1min": self.load1, "packets": self.packets, "bot_packets": self.bot,
               "relayed_packets": self.relayed, "foreign_packets": self.foreign,
               "expected_packets": self.expected(), "utterances_sent": self.utterances,
               "utterances_timed": self.stamped, "agent_cpu_ns": self.agent_cpu_ns,
               "agent_cores": self.cores(), "agent_us_per_paced_packet": self.us_per_paced(),
               "agent_counter_deltas": counters,
               "callee_packets_not_replaced": self.unreplaced().map(|u| u.0),
               "lat_p50_us": self.p50_us, "lat_p99_us": self.p99_us, "lat_max_us": self.max_us,
               "steps": steps, "calls_with_discontinuity": self.broken_calls,
               "discontinuities": self.examples, "caller_socket_drops": self.caller_drops,
               "callee_veth_ring_drops": self.callee_ring_drops})
    }
}

fn load_avg_1min() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn agent_counters(socket: &std::path::Path) -> Value {
    control(socket, &json!({"v":1,"op":"show_counters"})).unwrap_or(Value::Null)
}

/// One point: a fresh topology and fork-agent with `n` bot calls in `mode`, counted for `secs`.
fn point(mode: Mode, n: usize, o: &Opts) -> Result<Point> {
    let secs = o.secs;
    let mut t = Topology::new()?;
    let listener = tcp_listener(&t, Host::Speech, WS.parse()?)?;
    let bot = Arc::new(Bot {
        starts: AtomicU64::new(0),
        utterances: AtomicU64::new(0),
    });
    let acc = Arc::new(Mutex::new(Acc::new(n)));
    let caller = t.udp_socket(Host::Caller, CALLER.parse()?)?;
    // The driver's socket must not be where packets are lost (counted below in any case).
    let _ =
        nix::sys::socket::setsockopt(&caller, nix::sys::socket::sockopt::RcvBufForce, &(32 << 20));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Threads {
        stop: stop.clone(),
        handles: vec![
            spawn_bot(listener, bot.clone(), o.spread, o.barge_in, stop.clone()),
            spawn_callers(caller, acc.clone(), stop.clone()),
        ],
    };

    // The standard config ends inside its [[speech_server]] table: the bot speaks Twilio's
    // dialect there; the playout starts each utterance at once.
    let extra =
        "[speech_server.protocol]\nprofile = \"twilio\"\n\n[return_audio]\nprebuffer_ms = 0\n";
    let socket = spawn_pinned_agent(&mut t, &bin("fork-agent")?, WS, extra)?;
    let agent_pid = crate::one_pid(&t, Host::Forker, "fork-agent")?;
    let anchor = |c: usize| -> Result<SocketAddr> {
        Ok(format!("10.77.1.1:{}", A_BASE as usize + 2 * c).parse()?)
    };
    let callee_anchor = |c: usize| -> Result<SocketAddr> {
        Ok(format!("10.77.2.1:{}", B_BASE as usize + 2 * c).parse()?)
    };
    let callees = Arc::new(Mutex::new(CalleeStats::default()));
    if mode == Mode::Inject {
        // The bridged calls first, the callees streaming through the relay before any bot
        // talks (as on a real call).
        let mut dests = Vec::with_capacity(n);
        for c in 0..n {
            let (a, b) = (anchor(c)?, callee_anchor(c)?);
            ctl(
                &socket,
                json!({"v":1,"op":"flow_add","flow":{"local":a,"src":b,"dst":CALLEE_SINK}}),
            )?;
            ctl(
                &socket,
                json!({"v":1,"op":"flow_add","flow":{"local":b,"src":a,"dst":CALLER}}),
            )?;
            dests.push(b);
        }
        let gen = t.udp_socket(Host::Callee, CALLEE_SRC.parse()?)?;
        threads
            .handles
            .push(spawn_callees(gen, dests, callees.clone(), stop.clone()));
    }
    for c in 0..n {
        let a = anchor(c)?;
        let fork = match mode {
            Mode::Endpoint => {
                ctl(
                    &socket,
                    json!({"v":1,"op":"flow_add","flow":{"local":a,"src":a,"dst":CALLER,"sink":true}}),
                )?;
                json!({"call_guid": format!("bot-{c}"), "server": "asr", "codec": "PCMU",
                       "streams": [{"channel":"caller","flow":a}],
                       "return_audio": {"flow": a}})
            }
            // The bot hears the caller and talks to the caller over the callee.
            Mode::Inject => json!({"call_guid": format!("bot-{c}"), "server": "asr",
                "codec": "PCMU", "streams": [{"channel":"caller","flow":a}],
                "return_audio": {"to": "caller", "flow": callee_anchor(c)?, "mode": "replace"}}),
        };
        ctl(&socket, json!({"v":1,"op":"fork_start","fork":fork}))?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
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
    std::thread::sleep(WARM_UP);
    let (caller_ns, callee_ns) = (t.ns(Host::Caller), t.ns(Host::Callee));
    let drops = || {
        (
            crate::udp_rcvbuf_errors(&caller_ns),
            crate::veth_stat(&callee_ns, "cb0", "tx_dropped"),
        )
    };
    let (d0, k0) = (drops(), agent_counters(&socket));
    *acc.lock().unwrap_or_else(|e| e.into_inner()) = Acc::new(n);
    let (u0, c0, t0) = (
        bot.utterances.load(Ordering::Relaxed),
        cpu::process_cpu_ns(agent_pid),
        mono_ns(),
    );
    std::thread::sleep(Duration::from_secs_f64(secs));
    let mut a = std::mem::replace(
        &mut *acc.lock().unwrap_or_else(|e| e.into_inner()),
        Acc::new(n),
    );
    let (u1, c1, t1) = (
        bot.utterances.load(Ordering::Relaxed),
        cpu::process_cpu_ns(agent_pid),
        mono_ns(),
    );
    let (d1, k1) = (drops(), agent_counters(&socket));
    if !t.is_running("fork-agent") {
        bail!(
            "fork-agent died during the point; its log:\n{}",
            crate::tail(&t.log("fork-agent"), 20)
        );
    }
    drop(threads);
    let callees = std::mem::take(&mut *callees.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(e) = callees.error {
        bail!("the callees' generator stopped: {e}");
    }
    let p = Point {
        mode,
        calls: n,
        secs: (t1 - t0) as f64 / 1e9,
        load1: load_avg_1min(),
        packets: a.packets,
        bot: a.bot,
        relayed: a.relayed,
        foreign: a.foreign,
        utterances: u1 - u0,
        stamped: a.lat_ns.len(),
        agent_cpu_ns: c1 - c0,
        counters: COUNTERS
            .iter()
            .map(|(name, path)| {
                let v = |k: &Value| k.pointer(path).and_then(Value::as_i64);
                (*name, v(&k1).zip(v(&k0)).map(|(b, a)| b - a))
            })
            .collect(),
        p50_us: load::quantile_us(&mut a.lat_ns, 0.5),
        p99_us: load::quantile_us(&mut a.lat_ns, 0.99),
        max_us: load::quantile_us(&mut a.lat_ns, 1.0),
        steps: a.steps,
        broken_calls: a.broken_calls.iter().filter(|b| **b).count(),
        examples: a.examples,
        caller_drops: d1.0 - d0.0,
        callee_ring_drops: d1.1 - d0.1,
    };
    eprintln!(
        "  {n:>5} calls {:>8}: {} RTP packets ({} bot, {} relayed) of {:.0} expected, {} utterances timed, fork-agent {:.3} cores ({:.1} µs per paced packet), latency p50 {:.1} ms p99 {:.1} ms, take-overs {:?} hand-backs {:?} failures {:?}, {} calls with a discontinuity",
        mode.name(),
        p.packets,
        p.bot,
        p.relayed,
        p.expected(),
        p.stamped,
        p.cores(),
        p.us_per_paced(),
        p.p50_us / 1000.0,
        p.p99_us / 1000.0,
        p.counter("take_overs"),
        p.counter("hand_backs"),
        p.counter("take_over_failures"),
        p.broken_calls,
    );
    for e in &p.examples {
        eprintln!("    {e}");
    }
    Ok(p)
}

/// "mean (max)" of a kind of step's jitter in ms, or "–" if there was no such step.
fn jitter(s: &Steps) -> String {
    if s.steps == 0 {
        return "–".to_owned();
    }
    format!(
        "{:.1} ({:.1})",
        s.dev_mean_us() as f64 / 1000.0,
        s.dev_max_us as f64 / 1000.0
    )
}

/// `n` or "n/a".
fn opt(v: Option<i64>) -> String {
    v.map_or("n/a".to_owned(), |v| v.to_string())
}

/// A continuity count with where it happened: "0", or "total (take-over a, hand-back b, relay
/// c, bot d)" naming the kinds of step that had any.
fn by_kind(p: &Point, f: impl Fn(&Steps) -> u64) -> String {
    let total = p.total(&f);
    if total == 0 {
        return "0".to_owned();
    }
    let parts: Vec<String> = [(1, "take-over"), (3, "hand-back"), (0, "relay"), (2, "bot")]
        .iter()
        .filter(|(k, _)| f(&p.steps[*k]) > 0)
        .map(|(k, name)| format!("{name} {}", f(&p.steps[*k])))
        .collect();
    format!("{total} ({})", parts.join(", "))
}

/// What `bench bot` measures.
pub struct Opts {
    /// Call counts, one point per count and mode.
    pub calls: Vec<usize>,
    pub modes: Vec<Mode>,
    /// Seconds counted per point.
    pub secs: f64,
    /// The bots' first utterances are spread over this (the talk period by default; 20 ms has
    /// every call's bot talk within the same packet time: the agent loop's worst burst).
    pub spread: Duration,
    /// Each utterance is cleared [`BARGE_IN_AFTER`] into it and followed at once by another.
    pub barge_in: bool,
}

impl Opts {
    /// The talk period, the default of `--spread-ms`.
    pub const DEFAULT_SPREAD_MS: u64 = PERIOD.as_millis() as u64;
}

pub fn run(o: &Opts) -> Result<Report> {
    if o.spread.is_zero() || o.spread > PERIOD {
        bail!("--spread-ms must be in 1..={}", Opts::DEFAULT_SPREAD_MS);
    }
    let facts = crate::host_facts();
    let secs = o.secs;
    let mut points = Vec::new();
    for &n in &o.calls {
        for &mode in &o.modes {
            points.push(point(mode, n, o)?);
        }
    }
    let mut md = format!(
        "## `cargo xtask bench bot`\n\n{facts}\nfork-agent pinned to CPU {AGENT_CORE}, `prebuffer_ms = 0`, Twilio dialect; a fresh topology and fork-agent per point. Each bot sends a {CHUNK_MS} ms utterance every {} ms, the bots' phases spread over {} ms{}; {secs} s per point after {} s of warm-up. Endpoint: sink flows, the playout sends 50 packets a second per call (speech or silence). Inject: bridged calls, every callee streaming 20 ms RTP through the kernel relay; the bot replaces the callee while it talks (one take-over and one hand-back per utterance). Latency: the bot's CLOCK_MONOTONIC stamp in the `media` message → the caller receiving the utterance's first RTP packet; in endpoint mode it includes the wait for the call's next 20 ms packet time; in inject mode the talkspurt starts as soon as the take-over is answered.\n\n| calls | mode | load avg (1 min) | RTP at the caller: bot + relayed of expected (50/s per call) | utterances timed / sent | fork-agent CPU (cores) | µs per paced packet | latency p50 / p99 / max (ms) | take-overs / hand-backs / failures |\n|---|---|---|---|---|---|---|---|---|\n",
        PERIOD.as_millis(),
        o.spread.as_millis(),
        if o.barge_in {
            format!(
                ", each utterance cleared {} ms into it and followed at once (same write) by another",
                BARGE_IN_AFTER.as_millis()
            )
        } else {
            String::new()
        },
        WARM_UP.as_secs_f64(),
    );
    for p in &points {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {} + {} of {:.0} | {} / {} | {:.3} | {:.1} | {:.2} / {:.2} / {:.2} | {} / {} / {} |\n",
            p.calls,
            p.mode.name(),
            p.load1,
            p.bot,
            p.relayed,
            p.expected(),
            p.stamped,
            p.utterances,
            p.cores(),
            p.us_per_paced(),
            p.p50_us / 1000.0,
            p.p99_us / 1000.0,
            p.max_us / 1000.0,
            opt(p.counter("take_overs")),
            opt(p.counter("hand_backs")),
            opt(p.counter("take_over_failures")),
        ));
    }
    md.push_str("\nContinuity at the caller, per call, between consecutive packets (where: the step from the relay to the bot, the take-over; from the bot to the relay, the hand-back; relay to relay; bot to bot). Jitter: |arrival interval − timestamp interval| of the step (receive batches' times, so relay→relay shows the measurement's own noise):\n\n| calls | mode | take-overs / hand-backs seen | sequence gaps (numbers skipped) | repeats or steps back | SSRC changes | timestamp steps not whole packet times | take-overs without marker | calls affected | caller socket drops / callee veth drops | callee packets dropped, not replaced (per take-over) | jitter at take-over / hand-back / relay→relay / bot→bot, mean (max) ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for p in &points {
        md.push_str(&format!(
            "| {} | {} | {} / {} | {} ({}) | {} | {} | {} | {} | {} of {} | {} / {} | {} | {} / {} / {} / {} |\n",
            p.calls,
            p.mode.name(),
            p.steps[1].steps,
            p.steps[3].steps,
            by_kind(p, |s| s.gaps),
            p.total(|s| s.missing),
            by_kind(p, |s| s.repeats),
            by_kind(p, |s| s.ssrc_changes),
            by_kind(p, |s| s.ts_anomalies),
            p.steps[1].no_marker,
            p.broken_calls,
            p.calls,
            p.caller_drops,
            p.callee_ring_drops,
            p.unreplaced()
                .map_or("–".to_owned(), |(n, per)| format!("{n} ({per:.2})")),
            jitter(&p.steps[1]),
            jitter(&p.steps[3]),
            jitter(&p.steps[0]),
            jitter(&p.steps[2]),
        ));
    }
    Ok(Report {
        markdown: md,
        raw: json!({"facts": facts, "points": points.iter().map(Point::json).collect::<Vec<_>>()}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet as the caller receives it: the relay's carry the generator's stamp.
    fn pkt(from: Origin, seq: u16, ts: u32, ssrc: u32, marker: bool) -> Vec<u8> {
        let mut payload = vec![0x20u8; 160];
        if from == Origin::Relay {
            load::Stamp {
                run: 1,
                seq: 0,
                mono_ns: 0,
                real_ns: 0,
            }
            .write(&mut payload);
        }
        let mut p = rtp_packet(0, seq, ts, ssrc, &payload);
        if marker {
            p[1] |= 0x80;
        }
        p
    }

    #[test]
    fn one_stream_across_switches_is_continuous() {
        let mut a = Acc::new(2);
        let port = A_BASE + 2;
        let steps = [
            (Origin::Relay, 10, 1600, false),
            (Origin::Relay, 11, 1760, false),
            // Take-over a packet time later: the media clock skips one, the sequence does not.
            (Origin::Bot, 12, 2080, true),
            (Origin::Bot, 13, 2240, false),
            (Origin::Relay, 14, 2400, false),
        ];
        for (i, (from, seq, ts, marker)) in steps.into_iter().enumerate() {
            let at = 1_000_000 + i as u64 * 20_000_000;
            a.packet(port, &pkt(from, seq, ts, 7, marker), at);
        }
        assert_eq!((a.packets, a.bot, a.relayed, a.foreign), (5, 2, 3, 0));
        assert_eq!(a.steps.map(|s| s.steps), [1, 1, 1, 1]);
        assert!(a.steps.iter().all(|s| s.gaps
            + s.repeats
            + s.ssrc_changes
            + s.ts_anomalies
            + s.no_marker
            == 0));
        assert_eq!(a.broken_calls, [false, false]);
        // The take-over's timestamp skipped 20 ms that did not pass: 20 ms of jitter.
        assert_eq!(a.steps[1].dev_max_us, 20_000);
        assert_eq!(a.steps[3].dev_max_us, 0);
        a.packet(A_BASE + 100, &pkt(Origin::Bot, 1, 0, 7, false), 0);
        assert_eq!(a.foreign, 1, "no such call");
    }

    #[test]
    fn gaps_repeats_ssrc_and_timestamp_breaks_are_counted_where_they_happen() {
        let mut a = Acc::new(1);
        let steps = [
            (Origin::Relay, 10, 1600, 7, false),
            // Take-over: two numbers skipped, no marker.
            (Origin::Bot, 13, 1760, 7, false),
            (Origin::Bot, 14, 1920, 7, false),
            // Hand-back: the relay steps back, on the callee's own SSRC, mid-packet clock.
            (Origin::Relay, 12, 2000, 9, false),
        ];
        for (from, seq, ts, ssrc, marker) in steps {
            a.packet(A_BASE, &pkt(from, seq, ts, ssrc, marker), 0);
        }
        let (to, hb) = (a.steps[1], a.steps[3]);
        assert_eq!((to.gaps, to.missing, to.no_marker), (1, 2, 1));
        assert_eq!((hb.repeats, hb.ssrc_changes, hb.ts_anomalies), (1, 1, 1));
        assert_eq!(a.steps[2].gaps + a.steps[2].repeats, 0);
        assert_eq!(a.broken_calls, [true]);
        assert_eq!(a.examples.len(), 2);
        assert!(
            a.examples[0].starts_with("call 0 take_over"),
            "{:?}",
            a.examples
        );
    }

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
