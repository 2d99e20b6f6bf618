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
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{bail, Result};
use futures_util::StreamExt;
use nix::libc;
use serde_json::json;
use xdpfork_tests::{bin, control, Host, Topology};

use crate::{
    cpu,
    load::{self, mono_ns, Stamp, STAMP_LEN},
    Report,
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
const AGENT_CORE: &str = "1";
/// The core the forker's NAPI threads are pinned to.
const NAPI_CORE: &str = "0";

/// What the receiver counted for the current run.
#[derive(Default)]
struct Acc {
    run: u32,
    frames: u64,
    foreign: u64,
    lat_ns: Vec<u32>,
    seen: Vec<u64>,
    duplicates: u64,
}

struct Receiver {
    acc: Mutex<Acc>,
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
    let stamp = speech_proto::decode_audio(frame)
        .ok()
        .and_then(|(_, payload)| Stamp::read(payload));
    let mut a = r.acc.lock().unwrap_or_else(|e| e.into_inner());
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
    std::thread::spawn(move || {
        load::boost_thread();
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("fork bench: receiver runtime: {e}");
                return;
            }
        };
        rt.block_on(async move {
            let _ = listener.set_nonblocking(true);
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let cpu_r = r.clone();
            let cpu_stop = stop.clone();
            tokio::spawn(async move {
                while !cpu_stop.load(Ordering::Relaxed) {
                    cpu_r.cpu_ns.store(load::thread_cpu_ns(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            while !stop.load(Ordering::Relaxed) {
                let Ok(Ok((tcp, _))) =
                    tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
                else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let r = r.clone();
                tokio::spawn(async move {
                    // tungstenite's callback signature returns its (large) error response type.
                    #[allow(clippy::result_large_err)]
                    let cb = |_req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                              mut resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                        if let Ok(v) = speech_proto::SUBPROTOCOL.parse() {
                            resp.headers_mut().insert("Sec-WebSocket-Protocol", v);
                        }
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        match msg {
                            tokio_tungstenite::tungstenite::Message::Binary(b) => on_binary(&r, &b),
                            tokio_tungstenite::tungstenite::Message::Text(t)
                                if t.contains("\"start\"") =>
                            {
                                r.starts.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
    });
}

/// Destinations and sockets of the paced generator.
struct Gen {
    sock: std::net::UdpSocket,
    dests: Vec<libc::sockaddr_in>,
    /// Next RTP sequence number per call.
    seq: Vec<u16>,
    /// Each call's datagram (RTP header + 160 bytes), patched in place per send.
    pkts: Vec<Vec<u8>>,
}

fn sockaddr(a: SocketAddr) -> Result<libc::sockaddr_in> {
    let SocketAddr::V4(a) = a else {
        bail!("IPv4 only");
    };
    // SAFETY: plain data.
    let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    Ok(s)
}

impl Gen {
    /// Send 50 packets/s to each of the first `n` calls for `secs`, call `i` at offset
    /// `i * 20 ms / n` in every 20 ms period, in 1 ms slots. Stamps carry `run` and a sequence
    /// counting every packet of the run. Returns (packets sent, send errors, elapsed s).
    fn run(&mut self, n: usize, secs: f64, run: u32) -> Result<(u64, u64, f64)> {
        load::boost_thread();
        const SLOTS: usize = 20;
        let periods = (secs * 50.0).round() as usize;
        let start = mono_ns();
        let (mut sent, mut errors) = (0u64, 0u64);
        for p in 0..periods {
            for slot in 0..SLOTS {
                let due = start + (p * SLOTS + slot) as u64 * 1_000_000;
                let now = mono_ns();
                if due > now {
                    std::thread::sleep(Duration::from_nanos(due - now));
                }
                let (lo, hi) = (slot * n / SLOTS, (slot + 1) * n / SLOTS);
                for chunk in (lo..hi).collect::<Vec<_>>().chunks(64) {
                    let stamp_mono = mono_ns();
                    for (k, &call) in chunk.iter().enumerate() {
                        let seq = self.seq[call];
                        self.seq[call] = seq.wrapping_add(1);
                        let b = &mut self.pkts[call];
                        b[2..4].copy_from_slice(&seq.to_be_bytes());
                        b[4..8].copy_from_slice(&u32::from(seq).wrapping_mul(160).to_be_bytes());
                        Stamp {
                            run,
                            seq: sent + k as u64,
                            mono_ns: stamp_mono,
                            real_ns: 0,
                        }
                        .write(&mut b[12..12 + STAMP_LEN]);
                    }
                    let mut iovs: Vec<libc::iovec> = chunk
                        .iter()
                        .map(|&call| libc::iovec {
                            iov_base: self.pkts[call].as_mut_ptr().cast(),
                            iov_len: self.pkts[call].len(),
                        })
                        .collect();
                    let mut msgs: Vec<libc::mmsghdr> = chunk
                        .iter()
                        .zip(iovs.iter_mut())
                        .map(|(&call, iov)| {
                            // SAFETY: plain data, filled below.
                            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                            m.msg_hdr.msg_name = (&self.dests[call] as *const libc::sockaddr_in)
                                .cast_mut()
                                .cast();
                            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                            m.msg_hdr.msg_iov = iov;
                            m.msg_hdr.msg_iovlen = 1;
                            m
                        })
                        .collect();
                    // SAFETY: headers point at live buffers and addresses for the call.
                    let r = unsafe {
                        libc::sendmmsg(
                            self.sock.as_raw_fd(),
                            msgs.as_mut_ptr(),
                            msgs.len() as u32,
                            0,
                        )
                    };
                    if r < 0 {
                        errors += 1;
                    } else {
                        sent += r as u64;
                        errors += (msgs.len() - r as usize) as u64;
                    }
                }
            }
        }
        Ok((sent, errors, (mono_ns() - start) as f64 / 1e9))
    }
}

/// One measured point.
struct Point {
    streams: usize,
    sent: u64,
    send_errors: u64,
    received: u64,
    duplicates: u64,
    secs: f64,
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
}

impl Point {
    fn loss(&self) -> f64 {
        self.sent.saturating_sub(self.received) as f64 / self.sent.max(1) as f64
    }
    /// fork-agent CPU (share of one core) per 1,000 streams.
    fn agent_cores_per_1k(&self) -> f64 {
        self.agent_cpu_ns as f64 / (self.secs * 1e9) / (self.streams as f64 / 1000.0)
    }
    /// fork-agent CPU per frame it sent, µs: the figure that does not depend on whether it kept
    /// up (a saturated agent's "cores per 1,000 streams" only shows the core it got).
    fn agent_us_per_frame(&self) -> f64 {
        self.agent_cpu_ns as f64 / 1000.0 / self.frames_sent.max(1) as f64
    }
    fn json(&self) -> serde_json::Value {
        json!({"streams": self.streams, "sent": self.sent, "send_errors": self.send_errors,
               "received": self.received, "duplicates": self.duplicates, "secs": self.secs,
               "loss": self.loss(), "agent_cpu_ns": self.agent_cpu_ns,
               "agent_cores": self.agent_cpu_ns as f64 / (self.secs * 1e9),
               "agent_cores_per_1k_streams": self.agent_cores_per_1k(),
               "napi_forker_cpu_ns": self.napi_cpu_ns, "receiver_cpu_ns": self.recv_cpu_ns,
               "lat_p50_us": self.p50_us, "lat_p99_us": self.p99_us, "lat_max_us": self.max_us,
               "agent_frames_dropped_delta": self.frames_dropped,
               "caller_veth_ring_drops": self.ring_drops, "xdp_fork_captured": self.captured,
               "agent_frames_sent": self.frames_sent,
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

/// fork-agent's counters that locate loss along the path: (its queue drops, i.e. every
/// `servers.*` counter named `*drop*` plus `user.media_queue_drops`; `kernel.fork_captured`;
/// `servers.*.frames_sent`). -1 when the agent does not answer.
fn agent_counters(sock: &std::path::Path) -> (i64, i64, i64) {
    let Ok(c) = control(sock, &json!({"v":1,"op":"show_counters"})) else {
        return (-1, -1, -1);
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
        + c["user"]["media_queue_drops"].as_i64().unwrap_or(0);
    let sent: i64 = servers
        .iter()
        .filter_map(|s| s.get("frames_sent").and_then(|v| v.as_i64()))
        .sum();
    (
        dropped,
        c["kernel"]["fork_captured"].as_i64().unwrap_or(-1),
        sent,
    )
}

pub fn run(streams: &[usize], secs: f64) -> Result<Report> {
    let facts = crate::host_facts();
    let mut t = Topology::new()?;
    let listener = tcp_listener(&t, Host::Speech, WS.parse()?)?;
    let rx = Arc::new(Receiver {
        acc: Mutex::new(Acc::default()),
        starts: AtomicU64::new(0),
        cpu_ns: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    spawn_ws_receiver(listener, rx.clone(), stop.clone());

    let socket = t.dir.join("fork-agent.sock");
    let config = t.dir.join("fork-agent.toml");
    // The standard config ends inside its [[speech_server]] table: the key lands there.
    let mut text =
        xdpfork_tests::Scenario::fork_agent_config(&t.pin_dir, &socket, &t.dir.join("state"), WS);
    text.push_str("calls_threshold = 20\n");
    std::fs::write(&config, text)?;
    let agent = bin("fork-agent")?;
    let cfg = config.to_string_lossy().into_owned();
    let agent_s = agent.to_string_lossy().into_owned();
    t.spawn(
        "fork-agent",
        Host::Forker,
        std::path::Path::new("/usr/bin/taskset"),
        &["-c", AGENT_CORE, &agent_s, "run", "--config", &cfg],
    )?;
    t.wait_fork_agent(&socket, "fork-agent")?;
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
    let mut points = Vec::new();
    let mut install_secs = Vec::new();
    let mut note = String::new();
    for (i, &n) in streams.iter().enumerate() {
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
            "  installed {n} calls: {:.1} s in flow_add, {:.1} s in all",
            flow_ns as f64 / 1e9,
            (mono_ns() - t0) as f64 / 1e9
        );
        // Every call announces two streams; wait until all reached the receiver.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
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
        let run = 1000 + i as u32;
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
        let (a0, n0) = (
            cpu::process_cpu_ns(agent_pid),
            napi.iter().map(|p| cpu::process_cpu_ns(*p)).sum::<u64>(),
        );
        let r0 = rx.cpu_ns.load(Ordering::Relaxed);
        let (sent, send_errors, elapsed) = gen.run(n, secs, run)?;
        std::thread::sleep(Duration::from_millis(500));
        let (a1, n1) = (
            cpu::process_cpu_ns(agent_pid),
            napi.iter().map(|p| cpu::process_cpu_ns(*p)).sum::<u64>(),
        );
        let r1 = rx.cpu_ns.load(Ordering::Relaxed);
        let d1 = agent_counters(&socket);
        let ring1 = crate::drops(&ns)[0];
        let mut acc = {
            let mut a = rx.acc.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *a)
        };
        let p = Point {
            streams: n,
            sent,
            send_errors,
            received: acc.frames,
            duplicates: acc.duplicates,
            secs: elapsed,
            agent_cpu_ns: a1 - a0,
            napi_cpu_ns: n1 - n0,
            recv_cpu_ns: r1.saturating_sub(r0),
            p50_us: load::quantile_us(&mut acc.lat_ns, 0.5),
            p99_us: load::quantile_us(&mut acc.lat_ns, 0.99),
            max_us: load::quantile_us(&mut acc.lat_ns, 1.0),
            frames_dropped: d1.0 - d0.0,
            ring_drops: ring1.saturating_sub(ring0),
            captured: d1.1 - d0.1,
            frames_sent: d1.2 - d0.2,
        };
        eprintln!(
            "  {n:>6} streams: sent {} veth-ring drops {} XDP captured {} agent frames sent {} got {} loss {:.3}% fork-agent {:.3} cores ({:.3}/1k streams), napi {:.3} cores, latency p50 {:.0} µs p99 {:.0} µs (setup {:.1} s)",
            p.sent,
            p.ring_drops,
            p.captured,
            p.frames_sent,
            p.received,
            p.loss() * 100.0,
            p.agent_cpu_ns as f64 / (p.secs * 1e9),
            p.agent_cores_per_1k(),
            p.napi_cpu_ns as f64 / (p.secs * 1e9),
            p.p50_us,
            p.p99_us,
            install_secs.last().map_or(0.0, |x| x.1)
        );
        // Loss before the XDP program (the caller veth's ring) is the host failing to offer
        // the load, not fork-agent; the sweep goes on through it while it stays small so that
        // fork-agent's own limit still shows, and stops at fork-agent's first loss.
        let agent_lost = p.captured > p.received as i64;
        let host_lost = p.loss() > MAX_HOST_LOSS;
        // A median latency of 100 ms is a backlog growing inside fork-agent: a longer run
        // would lose frames at its queues.
        let backlog = p.p50_us > 100_000.0;
        points.push(p);
        if agent_lost || host_lost || backlog {
            note = format!(
                "The sweep stopped at {n} streams: {}.\n",
                if agent_lost {
                    "frames that reached the XDP program were lost after it"
                } else if backlog {
                    "fork-agent fell behind (median latency above 100 ms, a growing backlog)"
                } else {
                    "more than 5% of the offered packets were dropped before the XDP program"
                }
            );
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(sink);
    // A fork-agent still working off a backlog may not answer in time; the report does not
    // depend on these totals.
    let counters = control(&socket, &json!({"v":1,"op":"show_counters"}))
        .unwrap_or_else(|e| json!({"error": e.to_string()}));
    let mut md = format!(
        "## `cargo xtask bench fork`\n\n{facts}\nfork-agent pinned to CPU {AGENT_CORE} (`taskset`), the forker's NAPI threads to CPU {NAPI_CORE}, `calls_threshold = 20`. One forked caller → callee RTP stream per call (172-byte G.711 packets, 50 packets/s, spread evenly over each 20 ms period), {secs} s per point; the speech side is a light counting WebSocket receiver in the speech namespace. Latency: caller's CLOCK_MONOTONIC stamp in the RTP payload → the receiver decoding the audio frame.\n\n{note}\n| streams | frames sent | offered pkt/s (target 50 × streams) | frames received | loss | fork-agent CPU (cores) | fork-agent cores per 1,000 streams | fork-agent µs per frame | forker NAPI (XDP) cores | latency p50 / p99 / max (ms) | receiver cores | where lost: caller veth ring / XDP captured / fork-agent frames sent / fork-agent queue drops |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for p in &points {
        md.push_str(&format!(
            "| {} | {} | {:.0} | {} | {:.3}% | {:.3} | {:.3} | {:.1} | {:.3} | {:.2} / {:.2} / {:.2} | {:.2} | {} / {} / {} / {} |\n",
            p.streams,
            p.sent,
            p.sent as f64 / p.secs,
            p.received,
            p.loss() * 100.0,
            p.agent_cpu_ns as f64 / (p.secs * 1e9),
            p.agent_cores_per_1k(),
            p.agent_us_per_frame(),
            p.napi_cpu_ns as f64 / (p.secs * 1e9),
            p.p50_us / 1000.0,
            p.p99_us / 1000.0,
            p.max_us / 1000.0,
            p.recv_cpu_ns as f64 / (p.secs * 1e9),
            p.ring_drops,
            p.captured,
            p.frames_sent,
            p.frames_dropped,
        ));
    }
    let best = points
        .iter()
        .filter(|p| p.received >= p.sent)
        .map(|p| p.streams)
        .max();
    let agent_best = points
        .iter()
        .filter(|p| p.captured <= p.received as i64)
        .map(|p| p.streams)
        .max();
    let target = points
        .iter()
        .filter(|p| p.received >= p.sent && p.p99_us <= 5000.0)
        .map(|p| p.streams)
        .max();
    md.push_str(&format!(
        "\nMost streams with zero loss end to end: {}; with zero loss and p99 ≤ 5 ms (the issue's target): {}. Most streams where fork-agent delivered every frame its XDP program captured: {}.\n",
        best.map_or("none".into(), |b| b.to_string()),
        target.map_or("none".into(), |b| b.to_string()),
        agent_best.map_or("none".into(), |b| b.to_string())
    ));
    let per_stream: HashMap<String, f64> = install_secs
        .iter()
        .map(|(n, s)| (n.to_string(), *s))
        .collect();
    Ok(Report {
        markdown: md,
        raw: json!({
            "facts": facts,
            "points": points.iter().map(Point::json).collect::<Vec<_>>(),
            "install_secs": per_stream,
            "fork_agent_counters": counters,
        }),
    })
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
            sent: 1000,
            send_errors: 0,
            received: 990,
            duplicates: 0,
            secs: 2.0,
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
        };
        assert!((p.loss() - 0.01).abs() < 1e-12);
        assert!((p.agent_cores_per_1k() - 0.25).abs() < 1e-12);
        let p = Point {
            frames_sent: 100_000,
            ..p
        };
        assert!((p.agent_us_per_frame() - 10.0).abs() < 1e-9);
    }
}
