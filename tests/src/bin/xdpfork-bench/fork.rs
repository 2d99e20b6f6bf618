//! `xdpfork-bench fork`: how many concurrent forked G.711 streams one fork-agent core sustains.
//!
//! Input: the sweep of stream counts (`--streams 500,1000,...`) and seconds per point. Output: a
//! Markdown table (streams, frames expected/received at the speech side, loss, fork-agent CPU
//! per 1,000 streams, forker NAPI CPU, latency p50/p99 from the caller's send to the speech
//! server's receive) plus raw points.
//!
//! Call order: build a topology, start a light WebSocket receiver in the speech namespace (a
//! thread of this process, so the reference speech-server's per-stream recording to disk is
//! not what limits the result), start fork-agent pinned to one core with `taskset` and
//! `calls_threshold = 20`, then per point: install the missing calls (two `flow_add` and one
//! `fork_start` each, like one call of kernel_relay_fork.rs), wait until every stream's `start`
//! reached the receiver, pace 172-byte RTP at 50 packets/s per call, spread evenly over the
//! 20 ms period, from the caller namespace to every call's relay port, and compare what the
//! receiver counted. Each call forks its caller → callee direction (one active stream; the
//! callee stream of the call is announced but silent). The stamp (`load::Stamp`, CLOCK_MONOTONIC
//! send time) sits at the start of the RTP payload, which fork-agent forwards verbatim, so the
//! receiver reads it in the audio frame. The sweep stops at fork-agent's first loss (a frame
//! captured by XDP that never reached the receiver) or when more than 5% is lost before XDP (the
//! host cannot offer more).

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use nix::libc;
use serde_json::json;
use xdpfork_tests::{control, Host, Topology};

use crate::{
    cpu,
    load::{self, mono_ns, Stamp, STAMP_LEN},
    ws, Report,
};

const WS: &str = "10.77.3.2:9100";
const CALLER_IP: &str = "10.77.1.2";
const SINK: &str = "10.77.2.2:9999";
/// First relay port on fa0 (caller side); call `i` uses `A_BASE + i` and `B_BASE + i`.
const A_BASE: u16 = 20_000;
const B_BASE: u16 = 40_000;
/// Loss before the XDP program (the forker's veth ring) above which the host cannot offer the
/// load any more and the sweep stops.
const MAX_HOST_LOSS: f64 = 0.05;
/// The core fork-agent is pinned to.
pub const AGENT_CORE: &str = "1";
/// The core the forker's NAPI threads are pinned to.
const NAPI_CORE: &str = "0";
/// The core the generator and the receiver threads are pinned to (the NAPI core).
const LOAD_CORE: usize = 0;
/// Calls per WebSocket connection (the protocol's maximum).
const CALLS_PER_CONN: usize = 20;
/// Audio frames queued per connection (`queue_frames`) before audio is dropped: about 1 s
/// of 20 calls' caller streams.
const QUEUE_LIMIT: usize = 1000;
/// Frames fork-agent's AF_XDP reader may queue for its stream service (`MEDIA_QUEUE`).
const READER_QUEUE: usize = 65_536;
/// Upper bound of what one queued frame holds in memory (header, payload, WebSocket framing
/// and allocation slack), for the overload point's memory bound.
const FRAME_BYTES_BOUND: usize = 512;

/// What the receiver counted for the current run.
#[derive(Default)]
struct Acc {
    run: u32,
    frames: u64,
    foreign: u64,
    lat_ns: Vec<u32>,
    seen: Vec<u64>,
    duplicates: u64,
    /// RTP sequence numbers missing between consecutive frames of one stream (what a speech
    /// server sees when fork-agent drops frames: a gap, not a stall).
    gaps: u64,
}

struct Receiver {
    acc: Mutex<Acc>,
    /// Last RTP sequence number per stream id, across points.
    last_seq: Mutex<HashMap<u32, u16>>,
    starts: AtomicU64,
    cpu_ns: AtomicU64,
}

/// A TCP listener bound inside `h`'s namespace (like `Topology::udp_socket`).
pub(crate) fn tcp_listener(t: &Topology, h: Host, bind: SocketAddr) -> Result<TcpListener> {
    let path = format!("/run/netns/{}", t.ns(h));
    std::thread::spawn(move || -> Result<TcpListener> {
        let f = std::fs::File::open(&path)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(TcpListener::bind(bind)?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns helper thread panicked"))?
}

fn on_binary(r: &Receiver, frame: &[u8]) {
    let now = mono_ns();
    let Ok((header, payload)) = speech_proto::decode_audio(frame) else {
        return;
    };
    let stamp = Stamp::read(payload);
    let gap = {
        let mut last = r.last_seq.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last.insert(header.stream_id, header.seq);
        // Forward jumps only (a late, reordered frame is no gap).
        let missing = prev.map_or(0, |p| header.seq.wrapping_sub(p.wrapping_add(1)));
        if missing < 0x8000 {
            u64::from(missing)
        } else {
            0
        }
    };
    let mut a = r.acc.lock().unwrap_or_else(|e| e.into_inner());
    a.gaps += gap;
    let Some(st) = stamp.filter(|s| s.run == a.run) else {
        a.foreign += 1;
        return;
    };
    let (word, bit) = ((st.seq / 64) as usize, st.seq % 64);
    if a.seen.len() <= word {
        a.seen.resize(word + 1, 0);
    }
    if a.seen[word] & (1 << bit) != 0 {
        a.duplicates += 1;
        return;
    }
    a.seen[word] |= 1 << bit;
    a.frames += 1;
    let lat = now.saturating_sub(st.mono_ns).min(u64::from(u32::MAX)) as u32;
    a.lat_ns.push(lat);
}

/// One thread running a current-thread tokio runtime: accepts fork-agent's connections, echoes
/// the subprotocol (docs/speech-protocol.md §1), counts `start` messages and stamped frames.
fn spawn_ws_receiver(listener: TcpListener, r: Arc<Receiver>, stop: Arc<AtomicBool>) {
    let (cpu_r, cpu_stop) = (r.clone(), stop.clone());
    let prepare = move || {
        load::boost_thread();
        pin_thread(LOAD_CORE);
        tokio::spawn(async move {
            while !cpu_stop.load(Ordering::Relaxed) {
                cpu_r.cpu_ns.store(load::thread_cpu_ns(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    };
    ws::spawn_acceptor("fork", listener, stop, prepare, move |tcp| {
        let r = r.clone();
        async move {
            let _ = tcp.set_nodelay(true);
            let Some(mut ws) = ws::accept_speech(tcp).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    tokio_tungstenite::tungstenite::Message::Binary(b) => on_binary(&r, &b),
                    tokio_tungstenite::tungstenite::Message::Text(t) if t.contains("\"start\"") => {
                        r.starts.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    });
}

/// Starts fork-agent (`agent`) in the forker, pinned to [`AGENT_CORE`], with the standard
/// config against the speech server `ws` followed by `extra`, and waits for it; its control
/// socket.
pub fn spawn_pinned_agent(
    t: &mut Topology,
    agent: &Path,
    ws: &str,
    extra: &str,
) -> Result<PathBuf> {
    let socket = t.dir.join("fork-agent.sock");
    let config = t.dir.join("fork-agent.toml");
    let mut text =
        xdpfork_tests::Scenario::fork_agent_config(&t.pin_dir, &socket, &t.dir.join("state"), ws);
    text.push_str(extra);
    std::fs::write(&config, text)?;
    let cfg = config.to_string_lossy().into_owned();
    let agent_s = agent.to_string_lossy().into_owned();
    t.spawn(
        "fork-agent",
        Host::Forker,
        Path::new("/usr/bin/taskset"),
        &["-c", AGENT_CORE, &agent_s, "run", "--config", &cfg],
    )?;
    t.wait_fork_agent(&socket, "fork-agent")?;
    Ok(socket)
}

/// The paced generator: every call's datagram and `sendmmsg` header built once per point, so a
/// slot only patches sequence, timestamp and stamp and sends its calls in one system call.
struct Gen {
    sock: std::net::UdpSocket,
    dests: Vec<libc::sockaddr_in>,
    /// Next RTP sequence number per call.
    seq: Vec<u16>,
    /// Each call's datagram (RTP header + 160 bytes), patched in place per send.
    pkts: Vec<Vec<u8>>,
}

/// What the generator did in one point.
#[derive(Clone, Copy, Debug, Default)]
struct GenRun {
    sent: u64,
    errors: u64,
    secs: f64,
    /// 1 ms slots whose send started more than 1 ms after it was due (the generator fell
    /// behind: its CPU was taken), and the worst lateness.
    late_slots: u64,
    slots: u64,
    max_late_us: u64,
    cpu_ns: u64,
}

impl GenRun {
    /// True when the generator did not offer the load the point names: more than 1% of its
    /// slots late, or less than 99% of the datagrams.
    fn behind(&self, target: u64) -> bool {
        self.late_slots * 100 > self.slots || self.sent * 100 < target * 99
    }
}

fn sockaddr(a: SocketAddr) -> Result<libc::sockaddr_in> {
    load::sockaddr(a)
}

/// Pins the calling thread to `cpu` (the generator and the receiver share the NAPI core, so
/// fork-agent's core is its own).
fn pin_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity on the calling
    // thread (pid 0) with its size have no other memory effects.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

impl Gen {
    /// Send 50 packets/s to each of the first `n` calls for `secs`, call `i` at offset
    /// `i * 20 ms / n` in every 20 ms period, in 1 ms slots: one `sendmmsg` per slot carrying
    /// every call of the slot. Stamps carry `run` and a sequence counting every packet of the
    /// run.
    fn run(&mut self, n: usize, secs: f64, run: u32) -> Result<GenRun> {
        load::boost_thread();
        pin_thread(LOAD_CORE);
        const SLOTS: usize = 20;
        let periods = (secs * 50.0).round() as usize;
        // Built once: the slot's calls are a contiguous range of these headers.
        let mut iovs: Vec<libc::iovec> = self.pkts[..n]
            .iter_mut()
            .map(|p| libc::iovec {
                iov_base: p.as_mut_ptr().cast(),
                iov_len: p.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(&self.dests)
            .map(|(iov, dest)| {
                // SAFETY: plain data, filled below.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = (dest as *const libc::sockaddr_in).cast_mut().cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let cpu0 = load::thread_cpu_ns();
        let start = mono_ns();
        let mut g = GenRun::default();
        for p in 0..periods {
            for slot in 0..SLOTS {
                let due = start + (p * SLOTS + slot) as u64 * 1_000_000;
                let now = mono_ns();
                if due > now {
                    std::thread::sleep(Duration::from_nanos(due - now));
                } else if now - due > 1_000_000 {
                    g.late_slots += 1;
                    g.max_late_us = g.max_late_us.max((now - due) / 1000);
                }
                g.slots += 1;
                let (lo, hi) = (slot * n / SLOTS, (slot + 1) * n / SLOTS);
                let stamp_mono = mono_ns();
                for (k, call) in (lo..hi).enumerate() {
                    let seq = self.seq[call];
                    self.seq[call] = seq.wrapping_add(1);
                    let b = &mut self.pkts[call];
                    b[2..4].copy_from_slice(&seq.to_be_bytes());
                    b[4..8].copy_from_slice(&u32::from(seq).wrapping_mul(160).to_be_bytes());
                    Stamp {
                        run,
                        seq: g.sent + g.errors + k as u64,
                        mono_ns: stamp_mono,
                        real_ns: 0,
                    }
                    .write(&mut b[12..12 + STAMP_LEN]);
                }
                let mut at = lo;
                while at < hi {
                    // SAFETY: headers point at live buffers and addresses of their calls.
                    let r = unsafe {
                        libc::sendmmsg(
                            self.sock.as_raw_fd(),
                            msgs[at..hi].as_mut_ptr(),
                            (hi - at) as u32,
                            0,
                        )
                    };
                    if r <= 0 {
                        // This datagram is lost; the rest of the slot still goes.
                        g.errors += 1;
                        at += 1;
                    } else {
                        g.sent += r as u64;
                        at += r as usize;
                    }
                }
            }
        }
        g.secs = (mono_ns() - start) as f64 / 1e9;
        g.cpu_ns = load::thread_cpu_ns() - cpu0;
        Ok(g)
    }
}

/// One measured point.
struct Point {
    streams: usize,
    /// An overload point (twice what the sweep sustained), not part of the sweep.
    overload: bool,
    gen: GenRun,
    received: u64,
    duplicates: u64,
    gaps: u64,
    agent_cpu_ns: u64,
    napi_cpu_ns: u64,
    recv_cpu_ns: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    frames_dropped: i64,
    /// Datagrams dropped at the caller's veth (the forker's receive ring was full: before XDP).
    ring_drops: u64,
    /// Packets the XDP program relayed and captured for forking (`fork_captured` delta).
    captured: i64,
    /// Audio frames fork-agent handed to its WebSocket connections (`frames_sent` delta).
    frames_sent: i64,
    /// Relayed datagrams that reached the callee's veth (`cb0` rx_packets delta).
    relayed: u64,
    /// Stream-service alarm events during the point (all kinds).
    alarms: i64,
    /// fork-agent's resident memory before and after the point (VmRSS, bytes).
    rss_before: u64,
    rss: u64,
    /// The overload point's CPU cap on fork-agent (share of one core).
    cap: Option<f64>,
}

impl Point {
    fn loss(&self) -> f64 {
        self.gen.sent.saturating_sub(self.received) as f64 / self.gen.sent.max(1) as f64
    }
    /// Frames that reached the XDP program and never reached the receiver.
    fn agent_lost(&self) -> bool {
        self.captured > self.received as i64
    }
    /// fork-agent CPU (share of one core) per 1,000 streams.
    fn agent_cores_per_1k(&self) -> f64 {
        self.agent_cpu_ns as f64 / (self.gen.secs * 1e9) / (self.streams as f64 / 1000.0)
    }
    /// fork-agent CPU per frame it sent, µs: the figure that does not depend on whether it kept
    /// up (a saturated agent's "cores per 1,000 streams" only shows the core it got).
    fn agent_us_per_frame(&self) -> f64 {
        self.agent_cpu_ns as f64 / 1000.0 / self.frames_sent.max(1) as f64
    }
    fn rss_mib_per_1k(&self) -> f64 {
        self.rss as f64 / (1 << 20) as f64 / (self.streams as f64 / 1000.0)
    }
    /// The issue's criterion: every frame XDP captured reached the speech side, p99 ≤ 5 ms.
    fn held(&self) -> bool {
        !self.agent_lost() && self.p99_us <= 5000.0
    }
    fn json(&self) -> serde_json::Value {
        let g = &self.gen;
        json!({"streams": self.streams, "overload": self.overload, "sent": g.sent,
               "send_errors": g.errors, "gen_late_slots": g.late_slots, "gen_slots": g.slots,
               "gen_max_late_us": g.max_late_us, "gen_cpu_ns": g.cpu_ns,
               "gen_behind": g.behind(50 * self.streams as u64 * g.slots / 1000),
               "received": self.received, "duplicates": self.duplicates,
               "speech_side_seq_gaps": self.gaps, "secs": g.secs,
               "loss": self.loss(), "agent_cpu_ns": self.agent_cpu_ns,
               "agent_cores": self.agent_cpu_ns as f64 / (g.secs * 1e9),
               "agent_cores_per_1k_streams": self.agent_cores_per_1k(),
               "napi_forker_cpu_ns": self.napi_cpu_ns, "receiver_cpu_ns": self.recv_cpu_ns,
               "lat_p50_us": self.p50_us, "lat_p99_us": self.p99_us, "lat_max_us": self.max_us,
               "agent_frames_dropped_delta": self.frames_dropped,
               "caller_veth_ring_drops": self.ring_drops, "xdp_fork_captured": self.captured,
               "agent_frames_sent": self.frames_sent, "relayed_to_callee": self.relayed,
               "alarms_delta": self.alarms, "agent_rss_bytes": self.rss,
               "agent_rss_before_bytes": self.rss_before, "agent_cpu_cap_cores": self.cap,
               "agent_us_per_frame": self.agent_us_per_frame()})
    }
}

pub(crate) fn ctl(sock: &std::path::Path, v: serde_json::Value) -> Result<serde_json::Value> {
    let r = control(sock, &v)?;
    if r.get("error").is_some() {
        bail!("control {v}: {r}");
    }
    Ok(r)
}

/// fork-agent's counters that locate loss along the path.
#[derive(Clone, Copy, Default)]
struct Counters {
    /// Its drops: every `servers.*` counter named `*drop*` plus `user.*drops` (its reader's
    /// queue, the AF_XDP ring).
    dropped: i64,
    /// `kernel.fork_captured`.
    captured: i64,
    /// `servers.*.frames_sent`.
    sent: i64,
    /// Stream-service alarm events, all kinds.
    alarms: i64,
}

/// -1 everywhere when the agent does not answer.
fn agent_counters(sock: &std::path::Path) -> Counters {
    let Ok(c) = control(sock, &json!({"v":1,"op":"show_counters"})) else {
        return Counters {
            dropped: -1,
            captured: -1,
            sent: -1,
            alarms: -1,
        };
    };
    let servers: Vec<&serde_json::Map<String, serde_json::Value>> = c["servers"]
        .as_object()
        .map(|m| m.values().filter_map(|s| s.as_object()).collect())
        .unwrap_or_default();
    let dropped: i64 = servers
        .iter()
        .flat_map(|s| {
            s.iter()
                .filter(|(k, _)| k.contains("drop"))
                .filter_map(|(_, v)| v.as_i64())
        })
        .sum::<i64>()
        + c["user"]
            .as_object()
            .map(|u| {
                u.iter()
                    .filter(|(k, _)| k.ends_with("drops"))
                    .filter_map(|(_, v)| v.as_i64())
                    .sum::<i64>()
            })
            .unwrap_or(0);
    let sent: i64 = servers
        .iter()
        .filter_map(|s| s.get("frames_sent").and_then(|v| v.as_i64()))
        .sum();
    let alarms = control(
        sock,
        &json!({"v":1,"op":"show_stream_service","what":"statistics"}),
    )
    .ok()
    .and_then(|s| {
        s["alarms"]
            .as_object()
            .map(|a| a.values().filter_map(|v| v.as_i64()).sum())
    })
    .unwrap_or(0);
    Counters {
        dropped,
        captured: c["kernel"]["fork_captured"].as_i64().unwrap_or(-1),
        sent,
        alarms,
    }
}

/// Resident memory of `pid` in bytes (0 when unreadable).
fn rss_bytes(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Packets the callee's veth received (relayed datagrams).
fn callee_rx(t: &Topology) -> u64 {
    crate::veth_stat(&t.ns(Host::Callee), "cb0", "rx_packets")
}

/// A CPU cap on one process through the cgroup v1 `cpu` controller (CFS quota), for the
/// overload point: the generator on this 2-CPU host cannot offer twice what fork-agent
/// sustains, so fork-agent gets half the CPU it needed instead. Removed on drop.
struct CpuCap {
    dir: PathBuf,
    pid: i32,
}

const CPU_CGROUP: &str = "/sys/fs/cgroup/cpu";

impl CpuCap {
    fn new(pid: i32, cores: f64) -> Result<CpuCap> {
        let root = std::path::Path::new(CPU_CGROUP);
        if !root.join("cpu.cfs_quota_us").exists() {
            bail!("no cgroup v1 cpu controller at {CPU_CGROUP}: the overload point needs it");
        }
        let dir = root.join(format!("xdpfork-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).context("creating the bench's cpu cgroup")?;
        // A short period: a process throttled for the usual 100 ms would overflow its AF_XDP
        // ring (4,096 frames, 41 ms at 100k frames/s) while asleep, which measures the ring,
        // not fork-agent's own queues. 10 ms keeps each throttled spell shorter than that.
        let period = 10_000u64;
        let quota = ((cores * period as f64) as u64).max(1_000);
        std::fs::write(dir.join("cpu.cfs_period_us"), period.to_string())?;
        std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .context("moving fork-agent into the capped cgroup")?;
        Ok(CpuCap { dir, pid })
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        let _ = std::fs::write(
            std::path::Path::new(CPU_CGROUP).join("cgroup.procs"),
            self.pid.to_string(),
        );
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `cargo xtask bench fork` options.
pub struct Opts {
    pub streams: Vec<usize>,
    pub secs: f64,
    /// Record `perf` of fork-agent during the point with this many streams (added to the sweep
    /// when missing).
    pub profile_at: Option<usize>,
    /// The fork-agents compared, in order: (label, binary). Each gets its own topology and
    /// the same sweep.
    pub agents: Vec<(String, PathBuf)>,
    /// After the sweep, one overload point: the most streams held (p99 ≤ 5 ms, no loss after
    /// XDP) with fork-agent capped at half the CPU it used for them (twice what it sustains):
    /// relayed audio, memory, drops and alarms under overload.
    pub overload: bool,
    /// Where the profile and its summary go.
    pub out: PathBuf,
}

/// `perf record` of one process for the length of a point.
struct Profiler {
    child: std::process::Child,
    data: PathBuf,
}

impl Profiler {
    /// Samples `pid` at 999 Hz with DWARF call graphs (release builds have no frame pointers, so
    /// `-g`'s default frame-pointer unwinding stops at the first Rust frame).
    fn start(pid: i32, secs: f64, data: PathBuf) -> Result<Profiler> {
        let child = std::process::Command::new("perf")
            .args(["record", "-F", "999", "--call-graph", "dwarf,16384", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&data)
            .args(["--", "sleep", &format!("{secs:.2}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting perf record (install linux-perf)")?;
        Ok(Profiler { child, data })
    }

    /// Waits for the recording and summarises it: self cycles by symbol, by shared object, and
    /// inclusive cycles (children) by symbol.
    fn finish(mut self) -> Result<String> {
        let st = self.child.wait()?;
        if !st.success() {
            bail!("perf record failed ({st})");
        }
        let report = |args: &[&str]| -> Result<String> {
            let o = std::process::Command::new("perf")
                .arg("report")
                .arg("-i")
                .arg(&self.data)
                .args(["--stdio", "--no-inline", "-g", "none", "--percent-limit"])
                .args(args)
                .output()
                .context("perf report")?;
            Ok(String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .take(30)
                .map(|l| l.trim_end().to_owned())
                .collect::<Vec<_>>()
                .join("\n"))
        };
        Ok(format!(
            "Self cycles by shared object:\n\n```\n{}\n```\n\nSelf cycles by symbol (≥ 0.7 %):\n\n```\n{}\n```\n\nInclusive cycles (self + callees) by symbol (≥ 4 %):\n\n```\n{}\n```\n",
            report(&["1", "--no-children", "--sort", "dso"])?,
            report(&["0.7", "--no-children", "--sort", "symbol"])?,
            report(&["4", "--children", "--sort", "symbol"])?,
        ))
    }
}

/// Runs the sweep once per agent and puts the reports side by side.
pub fn run(o: &Opts) -> Result<Report> {
    let facts = crate::host_facts();
    let mut md = format!("## `cargo xtask bench fork`\n\n{facts}\n");
    let mut raw = Vec::new();
    for (label, agent) in &o.agents {
        let (section, r) = run_agent(o, label, agent)?;
        md.push_str(&section);
        raw.push(json!({"agent": label, "binary": agent.display().to_string(), "run": r}));
    }
    Ok(Report {
        markdown: md,
        raw: json!({"facts": facts, "agents": raw}),
    })
}

fn run_agent(o: &Opts, label: &str, agent: &Path) -> Result<(String, serde_json::Value)> {
    let secs = o.secs;
    let mut streams = o.streams.clone();
    if let Some(p) = o.profile_at {
        if !streams.contains(&p) {
            streams.push(p);
            streams.sort_unstable();
        }
    }
    let mut t = Topology::new()?;
    let listener = tcp_listener(&t, Host::Speech, WS.parse()?)?;
    let rx = Arc::new(Receiver {
        acc: Mutex::new(Acc::default()),
        last_seq: Mutex::new(HashMap::new()),
        starts: AtomicU64::new(0),
        cpu_ns: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    spawn_ws_receiver(listener, rx.clone(), stop.clone());

    // The standard config ends inside its [[speech_server]] table: the keys land there.
    let extra = format!("calls_threshold = {CALLS_PER_CONN}\nqueue_frames = {QUEUE_LIMIT}\n");
    let socket = spawn_pinned_agent(&mut t, agent, WS, &extra)?;
    let napi = cpu::thread_napi(&t.ns(Host::Forker))?;
    // The forker's NAPI threads (XDP) run SCHED_FIFO; kept off fork-agent's core so that the
    // core measured is fork-agent's alone (apart from other work on the host).
    for pid in &napi {
        let _ = std::process::Command::new("taskset")
            .args(["-pc", NAPI_CORE, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status();
    }
    let agent_pid = crate::one_pid(&t, Host::Forker, "fork-agent")?;
    let rss_idle = rss_bytes(agent_pid);
    // A sink at the callee that is never read: relayed datagrams end there without ICMP.
    let sink = t.udp_socket(Host::Callee, SINK.parse()?)?;
    let gen_sock = t.udp_socket(Host::Caller, format!("{CALLER_IP}:0").parse()?)?;
    let mut gen = Gen {
        sock: gen_sock,
        dests: Vec::new(),
        seq: Vec::new(),
        pkts: Vec::new(),
    };
    let mut installed = 0usize;
    let mut points: Vec<Point> = Vec::new();
    let mut install_secs = Vec::new();
    let mut note = String::new();
    let mut profile = None;
    let mut plan: std::collections::VecDeque<(usize, bool)> =
        streams.iter().map(|&n| (n, false)).collect();
    let mut run = 1000u32;
    while let Some((n, overload)) = plan.pop_front() {
        run += 1;
        let t0 = mono_ns();
        let mut flow_ns = 0u64;
        while installed < n {
            let f0 = mono_ns();
            let c = installed;
            let a = format!("10.77.1.1:{}", A_BASE as usize + c);
            let b = format!("10.77.2.1:{}", B_BASE as usize + c);
            let caller = format!("{CALLER_IP}:{}", A_BASE as usize + c);
            ctl(
                &socket,
                json!({"v":1,"op":"flow_add","flow":{"local":a,"src":b,"dst":SINK}}),
            )?;
            ctl(
                &socket,
                json!({"v":1,"op":"flow_add","flow":{"local":b,"src":a,"dst":caller}}),
            )?;
            flow_ns += mono_ns() - f0;
            ctl(
                &socket,
                json!({"v":1,"op":"fork_start","fork":{
                    "call_guid": format!("bench-{c}"), "call_id": format!("call-{c}"),
                    "from": "1000", "to": "2000", "server": "asr", "codec": "PCMU",
                    "streams": [{"channel":"caller","flow":a},{"channel":"callee","flow":b}]}}),
            )?;
            gen.dests.push(sockaddr(a.parse()?)?);
            gen.seq.push(0);
            gen.pkts.push(xdpfork_tests::rtp_packet(
                0,
                0,
                0,
                0x5eed_0000 + c as u32,
                &[0xd5u8; 160],
            ));
            installed += 1;
        }
        eprintln!(
            "  [{label}] installed {n} calls: {:.1} s in flow_add, {:.1} s in all",
            flow_ns as f64 / 1e9,
            (mono_ns() - t0) as f64 / 1e9
        );
        // Every call announces two streams; wait until all reached the receiver.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while rx.starts.load(Ordering::Relaxed) < 2 * n as u64 {
            if std::time::Instant::now() > deadline || !t.is_running("fork-agent") {
                bail!(
                    "{} of {} stream starts reached the receiver; fork-agent log:\n{}",
                    rx.starts.load(Ordering::Relaxed),
                    2 * n,
                    crate::tail(&t.log("fork-agent"), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        install_secs.push((n, (mono_ns() - t0) as f64 / 1e9));
        load::boost_process(agent_pid);
        {
            let mut a = rx.acc.lock().unwrap_or_else(|e| e.into_inner());
            *a = Acc {
                run,
                ..Acc::default()
            };
        }
        let d0 = agent_counters(&socket);
        let ns = [Host::Caller, Host::Forker, Host::Callee].map(|h| t.ns(h));
        let ring0 = crate::drops(&ns)[0];
        let relayed0 = callee_rx(&t);
        let (a0, n0) = (
            cpu::process_cpu_ns(agent_pid),
            napi.iter().map(|p| cpu::process_cpu_ns(*p)).sum::<u64>(),
        );
        let r0 = rx.cpu_ns.load(Ordering::Relaxed);
        let rss_before = rss_bytes(agent_pid);
        let cap = if overload {
            // Half the CPU the same stream count took unconstrained.
            let cores = points
                .iter()
                .filter(|p| p.streams == n && !p.overload)
                .map(|p| p.agent_cpu_ns as f64 / (p.gen.secs * 1e9))
                .fold(0.0, f64::max)
                / 2.0;
            Some((CpuCap::new(agent_pid, cores.max(0.02))?, cores.max(0.02)))
        } else {
            None
        };
        let profiler = match o.profile_at {
            Some(p) if p == n && !overload => Some(Profiler::start(
                agent_pid,
                secs,
                o.out.join(format!("fork-{label}.perf.data")),
            )?),
            _ => None,
        };
        let g = gen.run(n, secs, run)?;
        std::thread::sleep(Duration::from_millis(500));
        // The counters below need fork-agent's answer: uncapped first.
        let cap = cap.map(|(c, cores)| {
            drop(c);
            cores
        });
        let (a1, n1) = (
            cpu::process_cpu_ns(agent_pid),
            napi.iter().map(|p| cpu::process_cpu_ns(*p)).sum::<u64>(),
        );
        let r1 = rx.cpu_ns.load(Ordering::Relaxed);
        let d1 = agent_counters(&socket);
        let ring1 = crate::drops(&ns)[0];
        let relayed1 = callee_rx(&t);
        if let Some(p) = profiler {
            profile = Some(p.finish()?);
        }
        let mut acc = {
            let mut a = rx.acc.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *a)
        };
        let p = Point {
            streams: n,
            overload,
            gen: g,
            received: acc.frames,
            duplicates: acc.duplicates,
            gaps: acc.gaps,
            agent_cpu_ns: a1 - a0,
            napi_cpu_ns: n1 - n0,
            recv_cpu_ns: r1.saturating_sub(r0),
            p50_us: load::quantile_us(&mut acc.lat_ns, 0.5),
            p99_us: load::quantile_us(&mut acc.lat_ns, 0.99),
            max_us: load::quantile_us(&mut acc.lat_ns, 1.0),
            frames_dropped: d1.dropped - d0.dropped,
            ring_drops: ring1.saturating_sub(ring0),
            captured: d1.captured - d0.captured,
            frames_sent: d1.sent - d0.sent,
            relayed: relayed1.saturating_sub(relayed0),
            alarms: d1.alarms - d0.alarms,
            rss_before,
            rss: rss_bytes(agent_pid),
            cap,
        };
        eprintln!(
            "  [{label}] {n:>6} streams{}: sent {} (generator {} late slots of {}, max {} µs) veth-ring drops {} XDP captured {} agent frames sent {} got {} gaps {} loss {:.3}% fork-agent {:.3} cores ({:.2} µs/frame), napi {:.3} cores, latency p50 {:.0} µs p99 {:.0} µs, RSS {:.1} MiB",
            if overload { " (overload)" } else { "" },
            p.gen.sent,
            p.gen.late_slots,
            p.gen.slots,
            p.gen.max_late_us,
            p.ring_drops,
            p.captured,
            p.frames_sent,
            p.received,
            p.gaps,
            p.loss() * 100.0,
            p.agent_cpu_ns as f64 / (p.gen.secs * 1e9),
            p.agent_us_per_frame(),
            p.napi_cpu_ns as f64 / (p.gen.secs * 1e9),
            p.p50_us,
            p.p99_us,
            p.rss as f64 / (1 << 20) as f64,
        );
        let host_lost = p.loss() > MAX_HOST_LOSS && !p.agent_lost();
        // A median latency of 100 ms is a backlog growing inside fork-agent: a longer run
        // would lose frames at its queues.
        let backlog = p.p50_us > 100_000.0;
        let stop_sweep = !overload && (p.agent_lost() || host_lost || backlog);
        points.push(p);
        if stop_sweep {
            note = format!(
                "The sweep stopped at {n} streams: {}.\n",
                if backlog {
                    "fork-agent fell behind (median latency above 100 ms, a growing backlog)"
                } else if host_lost {
                    "more than 5% of the offered packets were dropped before the XDP program"
                } else {
                    "frames that reached the XDP program were lost after it"
                }
            );
            plan.retain(|(_, o)| *o);
        }
        if o.overload && plan.is_empty() && !overload {
            let held = points.iter().filter(|p| p.held()).map(|p| p.streams).max();
            plan.push_back((held.unwrap_or(streams[0]), true));
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(sink);
    // A fork-agent still working off a backlog may not answer in time; the report does not
    // depend on these totals.
    let counters = control(&socket, &json!({"v":1,"op":"show_counters"}))
        .unwrap_or_else(|e| json!({"error": e.to_string()}));
    let mut md = format!(
        "### fork-agent `{label}` ({})\n\nfork-agent pinned to CPU {AGENT_CORE} (`taskset`); the forker's NAPI threads, the generator and the receiver to CPU {NAPI_CORE}; `calls_threshold = {CALLS_PER_CONN}`, `queue_frames = {QUEUE_LIMIT}`. One forked caller → callee RTP stream per call (172-byte G.711 packets, 50 packets/s, spread evenly over each 20 ms period; one `sendmmsg` per 1 ms slot), {secs} s per point; the speech side is a light counting WebSocket receiver in the speech namespace. Latency: caller's CLOCK_MONOTONIC stamp in the RTP payload → the receiver decoding the audio frame. fork-agent's RSS idle: {:.1} MiB.\n\n{note}\n| streams | frames sent | offered pkt/s (target 50 × streams) | generator late slots (max µs) | frames received | loss | seq gaps at the speech side | fork-agent CPU (cores) | fork-agent µs per frame | forker NAPI (XDP) cores | latency p50 / p99 / max (ms) | receiver cores | RSS MiB (per 1,000 streams) | where lost: caller veth ring / XDP captured / fork-agent frames sent / fork-agent drops |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        agent.display(),
        rss_idle as f64 / (1 << 20) as f64,
    );
    for p in &points {
        md.push_str(&format!(
            "| {}{} | {} | {:.0}{} | {} ({}) | {} | {:.3}% | {} | {:.3} | {:.2} | {:.3} | {:.2} / {:.2} / {:.2} | {:.2}{} | {:.1} ({:.1}) | {} / {} / {} / {} |\n",
            p.streams,
            if p.overload { " (overload)" } else { "" },
            p.gen.sent,
            p.gen.sent as f64 / p.gen.secs,
            if p.gen.behind(50 * p.streams as u64 * p.gen.slots / 1000) { " (generator behind)" } else { "" },
            p.gen.late_slots,
            p.gen.max_late_us,
            p.received,
            p.loss() * 100.0,
            p.gaps,
            p.agent_cpu_ns as f64 / (p.gen.secs * 1e9),
            p.agent_us_per_frame(),
            p.napi_cpu_ns as f64 / (p.gen.secs * 1e9),
            p.p50_us / 1000.0,
            p.p99_us / 1000.0,
            p.max_us / 1000.0,
            p.recv_cpu_ns as f64 / (p.gen.secs * 1e9),
            if p.recv_cpu_ns as f64 > 0.9 * p.gen.secs * 1e9 { " (receiver saturated)" } else { "" },
            p.rss as f64 / (1 << 20) as f64,
            p.rss_mib_per_1k(),
            p.ring_drops,
            p.captured,
            p.frames_sent,
            p.frames_dropped,
        ));
    }
    let sweep = || points.iter().filter(|p| !p.overload);
    let held = sweep().filter(|p| p.held()).map(|p| p.streams).max();
    let best = sweep()
        .filter(|p| p.received >= p.gen.sent)
        .map(|p| p.streams)
        .max();
    md.push_str(&format!(
        "\nStreams held (every frame XDP captured delivered, p99 ≤ 5 ms): **{}**; with zero loss end to end (generator to receiver): {}.\n",
        held.map_or("none".into(), |b| b.to_string()),
        best.map_or("none".into(), |b| b.to_string()),
    ));
    if let Some(p) = points.iter().find(|p| p.overload) {
        let conns = p.streams.div_ceil(CALLS_PER_CONN);
        let queued = (conns * QUEUE_LIMIT + READER_QUEUE) * FRAME_BYTES_BOUND;
        let growth = p.rss.saturating_sub(p.rss_before);
        let expected_relay = p.gen.sent.saturating_sub(p.ring_drops);
        md.push_str(&format!(
            "\nOverload ({} streams, fork-agent capped at {:.3} of a core, half what it used for them: twice what it sustains): relayed datagrams at the callee {} of {} that passed the caller's ring ({}); fork-agent RSS grew {:.1} MiB to {:.1} MiB, against a queue bound of {:.1} MiB ({conns} connections × {QUEUE_LIMIT} frames + the reader's {READER_QUEUE}, × {FRAME_BYTES_BOUND} B) ({}); frames XDP captured {} and delivered {}; dropped by fork-agent {} and sequence gaps at the speech side {} ({}); alarm events {} ({}).\n",
            p.streams,
            p.cap.unwrap_or(0.0),
            p.relayed,
            expected_relay,
            if p.relayed >= expected_relay { "untouched" } else { "RELAYED AUDIO LOST" },
            growth as f64 / (1 << 20) as f64,
            p.rss as f64 / (1 << 20) as f64,
            queued as f64 / (1 << 20) as f64,
            if growth as usize <= queued { "within" } else { "ABOVE THE BOUND" },
            p.captured,
            p.received,
            p.frames_dropped,
            p.gaps,
            if p.frames_dropped > 0 && p.gaps > 0 { "dropped and seen as gaps" } else if p.frames_dropped == 0 { "no drop: not overloaded" } else { "drops without gaps" },
            p.alarms,
            if p.alarms > 0 { "fired" } else if p.frames_dropped > 0 { "DID NOT FIRE" } else { "none needed" },
        ));
    }
    if let Some(prof) = &profile {
        md.push_str(&format!(
            "\n#### Profile of fork-agent `{label}` at {} streams (`perf record -F 999 --call-graph dwarf`, {secs} s; data in {}/fork-{label}.perf.data)\n\n{prof}\n",
            o.profile_at.unwrap_or(0),
            o.out.display(),
        ));
    }
    let per_stream: HashMap<String, f64> = install_secs
        .iter()
        .map(|(n, s)| (n.to_string(), *s))
        .collect();
    Ok((
        md,
        json!({
            "points": points.iter().map(Point::json).collect::<Vec<_>>(),
            "install_secs": per_stream,
            "rss_idle_bytes": rss_idle,
            "profile": profile,
            "fork_agent_counters": counters,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_is_network_order() {
        let s = sockaddr("10.77.1.1:20001".parse().unwrap()).unwrap();
        assert_eq!(u16::from_be(s.sin_port), 20001);
        assert_eq!(u32::from_be(s.sin_addr.s_addr), 0x0a4d_0101);
        assert!(sockaddr("[::1]:1".parse().unwrap()).is_err());
    }

    #[test]
    fn loss_and_cpu_per_1k() {
        let p = Point {
            streams: 2000,
            overload: false,
            gen: GenRun {
                sent: 1000,
                secs: 2.0,
                ..GenRun::default()
            },
            received: 990,
            duplicates: 0,
            gaps: 0,
            agent_cpu_ns: 1_000_000_000,
            napi_cpu_ns: 0,
            recv_cpu_ns: 0,
            p50_us: 0.0,
            p99_us: 0.0,
            max_us: 0.0,
            frames_dropped: 0,
            ring_drops: 0,
            captured: 0,
            frames_sent: 0,
            relayed: 0,
            alarms: 0,
            rss_before: 0,
            rss: 4 << 20,
            cap: None,
        };
        assert!((p.loss() - 0.01).abs() < 1e-12);
        assert!((p.agent_cores_per_1k() - 0.25).abs() < 1e-12);
        let p = Point {
            frames_sent: 100_000,
            ..p
        };
        assert!((p.agent_us_per_frame() - 10.0).abs() < 1e-9);
        assert!((p.rss_mib_per_1k() - 2.0).abs() < 1e-9);
        assert!(p.held());
        let lost = Point { captured: 991, ..p };
        assert!(!lost.held());
    }

    #[test]
    fn generator_behind_when_late_or_short() {
        let g = GenRun {
            sent: 1000,
            slots: 100,
            ..GenRun::default()
        };
        assert!(!g.behind(1000));
        assert!(g.behind(1020), "2% short");
        assert!(
            GenRun { late_slots: 2, ..g }.behind(1000),
            "2% of slots late"
        );
    }
}
