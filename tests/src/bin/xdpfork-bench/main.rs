//! `xdpfork-bench`: the benchmark driver behind `cargo xtask bench` (needs root).
//!
//! `xdpfork-bench relay [--reps N] [--secs S] [--rates 50000,100000,max] [--out DIR]` measures,
//! in one run and on the netns topology of the test harness (caller 10.77.1.2 → forker fa0
//! 10.77.1.1 / fb0 10.77.2.1 → callee 10.77.2.2), packets per second per busy relay core, loss
//! and one-way latency of four relays side by side:
//! - xdpfork's XDP relay (flows installed through fork-agent's control API), without forking,
//! - the same with the call forked to a speech server (devmap broadcast + AF_XDP + WebSocket),
//! - udp-relay, the plain tokio relay of this repository,
//! - rtpengine's user-space daemon (no kernel module, `--table=-1`), anchored over NG.
//!
//! `xdpfork-bench turn ...` does the same for TURN ChannelData: xdpfork's kernel channel offload
//! against coturn's `turnserver`.
//!
//! `xdpfork-bench fork [--secs S] [--streams 500,1000,...]` measures how many concurrent forked
//! G.711 streams one pinned fork-agent core carries (loss, CPU per frame, latency): `fork.rs`.
//!
//! Two topologies are built: one with fork-agent (XDP attached on fa0/fb0) for the kernel
//! variants, one without any XDP program for the user-space relays, so neither pays for the
//! other. Points run interleaved (for each repetition, for each rate, every variant) so slow
//! drifts of this shared, noisy machine hit every variant alike; medians over repetitions are
//! reported. Method and caveats: docs/benchmarks.md. Output: a Markdown report on stdout and in
//! `<out>/<bench>.md`, raw points in `<out>/<bench>.json`.

// A benchmark driver reads the wall clock and runs threads; this is an IO shell.
#![allow(clippy::disallowed_methods)]

mod cpu;
mod fork;
mod load;
mod ng;
mod turn;

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::json;
use xdpfork_tests::{bin, ns_run, Host, Scenario, Topology};

use crate::load::{GenStats, Template};

/// Options common to both benchmarks.
#[derive(Clone, Debug)]
pub struct Opts {
    pub reps: usize,
    pub secs: f64,
    /// Offered rates in datagrams per second; `None` is "as fast as the generator can".
    pub rates: Vec<Option<u64>>,
    pub out: PathBuf,
    /// Concurrent stream counts of `fork`.
    pub streams: Vec<usize>,
}

fn parse_args() -> Result<(String, Opts)> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().context(
        "usage: xdpfork-bench relay|turn|fork [--reps N] [--secs S] [--rates R,R,max] [--streams N,N] [--out DIR]",
    )?;
    let mut o = Opts {
        reps: 3,
        secs: 2.0,
        rates: vec![
            Some(50_000),
            Some(100_000),
            Some(200_000),
            Some(400_000),
            None,
        ],
        out: PathBuf::from("target/bench"),
        streams: vec![500, 1000, 2000, 5000],
    };
    while let Some(a) = args.next() {
        let v = args.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--reps" => o.reps = v.parse().context("--reps")?,
            "--secs" => o.secs = v.parse().context("--secs")?,
            "--out" => o.out = PathBuf::from(v),
            "--streams" => {
                o.streams = v
                    .split(',')
                    .map(|n| n.parse().context("--streams: numbers"))
                    .collect::<Result<_>>()?
            }
            "--rates" => {
                o.rates = v
                    .split(',')
                    .map(|r| match r {
                        "max" => Ok(None),
                        r => r.parse().map(Some).context("--rates: numbers or max"),
                    })
                    .collect::<Result<_>>()?
            }
            other => bail!("unknown option {other}"),
        }
    }
    if o.reps == 0 || o.secs <= 0.0 || o.secs > 10.0 || o.rates.is_empty() {
        bail!("--reps must be > 0, --secs in (0, 10], --rates non-empty");
    }
    Ok((cmd, o))
}

fn main() -> Result<()> {
    let (cmd, opts) = parse_args()?;
    xdpfork_tests::require_root()?;
    std::fs::create_dir_all(&opts.out)?;
    let report = match cmd.as_str() {
        "relay" => relay(&opts)?,
        "turn" => turn::run(&opts)?,
        "fork" => fork::run(&opts.streams, opts.secs)?,
        other => bail!("unknown benchmark {other}: relay, turn or fork"),
    };
    println!("{}", report.markdown);
    std::fs::write(opts.out.join(format!("{cmd}.md")), &report.markdown)?;
    std::fs::write(
        opts.out.join(format!("{cmd}.json")),
        serde_json::to_string_pretty(&report.raw)?,
    )?;
    eprintln!(
        "xdpfork-bench: report written to {}/{cmd}.md (raw points in {cmd}.json)",
        opts.out.display()
    );
    Ok(())
}

/// What a benchmark hands back: the Markdown report and the raw points.
pub struct Report {
    pub markdown: String,
    pub raw: serde_json::Value,
}

/// One relay under test: where the load enters and leaves, and which tasks do its work.
pub struct Variant {
    pub name: String,
    /// Caller-side socket, connected to the relay's address.
    pub tx: UdpSocket,
    /// Callee-side socket.
    pub rx: UdpSocket,
    pub template: Template,
    /// Offset of the stamp in what the callee receives.
    pub rx_stamp_at: usize,
    /// Task groups doing the relay's work (their CPU is the relay CPU).
    pub relay: cpu::Tasks,
    /// Task groups reported for information only (receive paths of the callee, consumers).
    pub other: cpu::Tasks,
    /// Datagrams sent so far (the next point's sequence base).
    pub sent: std::cell::Cell<u64>,
    /// Namespaces (caller, forker, callee), for the drop counters of [`drops`].
    pub ns: [String; 3],
}

/// Where datagrams were dropped, read from the kernel's counters: the caller's veth
/// (`ca0` tx_dropped: the forker's receive ring was full), the forker's UDP sockets
/// (RcvbufErrors: a user-space relay did not read fast enough) and the callee's UDP sockets.
pub fn drops(ns: &[String; 3]) -> [u64; 3] {
    let udp_rcvbuf = |ns: &str| -> u64 {
        let snmp = ns_run(ns, "cat", &["/proc/net/snmp"]).unwrap_or_default();
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
        let (Some(h), Some(v)) = (udp.next(), udp.next()) else {
            return 0;
        };
        h.split_whitespace()
            .zip(v.split_whitespace())
            .find(|(k, _)| *k == "RcvbufErrors")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    let ring = ns_run(&ns[0], "cat", &["/sys/class/net/ca0/statistics/tx_dropped"])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    [ring, udp_rcvbuf(&ns[1]), udp_rcvbuf(&ns[2])]
}

/// One measured point.
#[derive(Clone, Debug)]
pub struct Point {
    pub variant: String,
    pub rate: Option<u64>,
    pub rep: usize,
    pub gen: GenStats,
    pub received: u64,
    pub duplicates: u64,
    pub relay_cpu_ns: u64,
    pub relay_groups: Vec<(String, u64)>,
    pub other_groups: Vec<(String, u64)>,
    pub recv_cpu_ns: u64,
    /// Machine busy time (all CPUs, /proc/stat, tick-sampled) minus generator and receiver
    /// thread time, over the window: the brief's whole-machine cross-check, polluted by
    /// everything else running on the host.
    pub machine_busy_minus_load_ns: i64,
    pub window_ns: u64,
    pub lat_kernel_p50_us: f64,
    pub lat_kernel_p99_us: f64,
    pub lat_app_p50_us: f64,
    pub lat_app_p99_us: f64,
    /// Drop counter deltas: [caller veth ring, forker UDP rcvbuf, callee UDP rcvbuf].
    pub drops: [u64; 3],
}

impl Point {
    pub fn loss(&self) -> f64 {
        if self.gen.sent == 0 {
            return 0.0;
        }
        self.gen.sent.saturating_sub(self.received) as f64 / self.gen.sent as f64
    }

    pub fn offered_pps(&self) -> f64 {
        self.gen.sent as f64 / self.gen.elapsed.as_secs_f64().max(1e-9)
    }

    /// Delivered datagrams per second of the relay's CPU time.
    pub fn pps_per_core(&self) -> f64 {
        self.received as f64 / (self.relay_cpu_ns as f64 / 1e9).max(1e-9)
    }

    /// Relay CPU time as a share of one core over the generator's run.
    pub fn relay_cores(&self) -> f64 {
        self.relay_cpu_ns as f64 / self.gen.elapsed.as_nanos().max(1) as f64
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "variant": self.variant, "rate": self.rate, "rep": self.rep,
            "sent": self.gen.sent, "send_errors": self.gen.send_errors,
            "gen_secs": self.gen.elapsed.as_secs_f64(), "gen_cpu_ns": self.gen.cpu_ns,
            "received": self.received, "duplicates": self.duplicates, "loss": self.loss(),
            "relay_cpu_ns": self.relay_cpu_ns, "relay_groups": self.relay_groups,
            "other_groups": self.other_groups, "recv_cpu_ns": self.recv_cpu_ns,
            "machine_busy_minus_load_ns": self.machine_busy_minus_load_ns,
            "window_ns": self.window_ns, "pps_per_core": self.pps_per_core(),
            "lat_kernel_p50_us": self.lat_kernel_p50_us, "lat_kernel_p99_us": self.lat_kernel_p99_us,
            "lat_app_p50_us": self.lat_app_p50_us, "lat_app_p99_us": self.lat_app_p99_us,
            "drops_caller_veth_ring": self.drops[0], "drops_forker_udp_rcvbuf": self.drops[1],
            "drops_callee_udp_rcvbuf": self.drops[2],
        })
    }
}

/// Time the relay gets to deliver what is queued after the generator stops.
const DRAIN: Duration = Duration::from_millis(300);

/// Run one point: receiver up, CPU sampled, generator for `secs`, drain, CPU sampled again.
pub fn measure(v: &Variant, rate: Option<u64>, secs: f64, run: u32, rep: usize) -> Result<Point> {
    let stop = Arc::new(AtomicBool::new(false));
    let rx = load::spawn_receiver(v.rx.try_clone()?, v.rx_stamp_at, run, stop.clone());
    let d0 = drops(&v.ns);
    std::thread::sleep(Duration::from_millis(20));
    let t0 = load::mono_ns();
    let (r0, o0) = (v.relay.sample(), v.other.sample());
    let tx = v.tx.try_clone()?;
    let template = Template {
        bytes: v.template.bytes.clone(),
        stamp_at: v.template.stamp_at,
        patch: v.template.patch,
        seq_base: v.sent.get(),
    };
    let gen = std::thread::spawn(move || {
        load::generate(&tx, &template, run, rate, Duration::from_secs_f64(secs))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    v.sent.set(v.sent.get() + gen.sent);
    std::thread::sleep(DRAIN);
    let (r1, o1) = (v.relay.sample(), v.other.sample());
    let t1 = load::mono_ns();
    let d1 = drops(&v.ns);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut got = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))??;
    let delta = |a: &cpu::Sample, b: &cpu::Sample, t: &cpu::Tasks| -> Vec<(String, u64)> {
        t.groups
            .iter()
            .zip(a.groups.iter().zip(&b.groups))
            .map(|(g, (x, y))| (g.name.clone(), y.saturating_sub(*x)))
            .collect()
    };
    let relay_groups = delta(&r0, &r1, &v.relay);
    let busy_ns = (r1.stat.busy - r0.stat.busy) * cpu::ProcStat::ns_per_jiffy();
    Ok(Point {
        variant: v.name.clone(),
        rate,
        rep,
        gen,
        received: got.received,
        duplicates: got.duplicates,
        relay_cpu_ns: relay_groups.iter().map(|(_, n)| n).sum(),
        relay_groups,
        other_groups: delta(&o0, &o1, &v.other),
        recv_cpu_ns: got.cpu_ns,
        machine_busy_minus_load_ns: busy_ns as i64 - gen.cpu_ns as i64 - got.cpu_ns as i64,
        window_ns: t1 - t0,
        lat_kernel_p50_us: load::quantile_us(&mut got.lat_kernel_ns, 0.5),
        lat_kernel_p99_us: load::quantile_us(&mut got.lat_kernel_ns, 0.99),
        lat_app_p50_us: load::quantile_us(&mut got.lat_app_ns, 0.5),
        lat_app_p99_us: load::quantile_us(&mut got.lat_app_ns, 0.99),
        drops: [0, 1, 2].map(|i| d1[i].saturating_sub(d0[i])),
    })
}

/// RTP datagram as a G.711 20 ms packet carries it: 12-byte header + 160 bytes of audio
/// (RFC 3550 §5.1, RFC 3551 §4.5.14), PT 0; the stamp sits at the start of the audio.
pub fn rtp_template() -> Template {
    let payload = vec![0xd5u8; 160]; // µ-law silence-ish filler
    Template {
        bytes: xdpfork_tests::rtp_packet(0, 0, 0, 0x5eed_0001, &payload),
        stamp_at: 12,
        patch: |b, seq| {
            b[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
            b[4..8].copy_from_slice(&((seq as u32).wrapping_mul(160)).to_be_bytes());
        },
        seq_base: 0,
    }
}

/// A socket in `h` bound to `bind` and connected to `to`.
pub fn connected(t: &Topology, h: Host, bind: &str, to: SocketAddr) -> Result<UdpSocket> {
    let s = t.udp_socket(h, bind.parse()?)?;
    s.connect(to)?;
    Ok(s)
}

/// Thread NAPI in every namespace of a topology that receives traffic.
///
/// First, the callee's veth gets `rx-udp-gro-forwarding`: veth hands a datagram to the peer's
/// NAPI only if the skb is eligible for GRO there, and a UDP skb from a local socket on a
/// TSO-capable veth (a user-space relay's `sendto` out of fb0) is eligible only with that
/// feature. Without it the callee's whole receive path would run inside the user-space relay's
/// `sendto` and be charged to it, while the XDP relay's redirected frames always go through the
/// callee's NAPI. With it, both kinds of relay hand over at the same point.
pub fn thread_all(t: &Topology, hosts: &[Host]) -> Result<Vec<(Host, Vec<i32>)>> {
    ns_run(
        &t.ns(Host::Callee),
        "ethtool",
        &["-K", "cb0", "rx-udp-gro-forwarding", "on"],
    )?;
    hosts
        .iter()
        .map(|h| Ok((*h, cpu::thread_napi(&t.ns(*h))?)))
        .collect()
}

fn napi_of(threads: &[(Host, Vec<i32>)], h: Host) -> Vec<i32> {
    threads
        .iter()
        .filter(|(x, _)| *x == h)
        .flat_map(|(_, p)| p.clone())
        .collect()
}

/// One process by command name in `h`'s namespace.
pub fn one_pid(t: &Topology, h: Host, comm: &str) -> Result<i32> {
    let pids = cpu::pids_in_ns(&t.ns(h), comm)?;
    match pids.as_slice() {
        [p] => Ok(*p),
        _ => bail!("expected one {comm} process in {:?}, found {pids:?}", h),
    }
}

/// Warm a variant up (ARP, rtpengine's endpoint learning, page faults) and check that it
/// relays at all; nothing is recorded.
pub fn warm_up(v: &Variant, run: u32) -> Result<()> {
    let p = measure(v, Some(10_000), 0.5, run, 0)?;
    if p.received * 10 < p.gen.sent * 9 {
        bail!(
            "{}: warm-up delivered {} of {} datagrams; the relay is not set up",
            v.name,
            p.received,
            p.gen.sent
        );
    }
    Ok(())
}

/// Restores `kernel.bpf_stats_enabled` when dropped.
pub struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let previous = std::fs::read_to_string(BPF_STATS)
            .context("reading kernel.bpf_stats_enabled")?
            .trim()
            .to_owned();
        std::fs::write(BPF_STATS, "1").context("sysctl -w kernel.bpf_stats_enabled=1")?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.previous);
    }
}

/// XDP programs attached in namespace `ns`: (device, program id), from `ip -j link show`.
pub fn xdp_progs(ns: &str) -> Result<Vec<(String, u64)>> {
    let links: serde_json::Value =
        serde_json::from_str(&ns_run(ns, "ip", &["-j", "-d", "link", "show"])?)?;
    let mut out: Vec<(String, u64)> = Vec::new();
    for l in links.as_array().into_iter().flatten() {
        let dev = l["ifname"].as_str().unwrap_or("?").to_owned();
        let xdp = &l["xdp"];
        let mut ids: Vec<u64> = xdp["prog"]["id"].as_u64().into_iter().collect();
        for a in xdp["attached"].as_array().into_iter().flatten() {
            ids.extend(a["prog"]["id"].as_u64());
        }
        ids.dedup();
        for id in ids {
            // One program attached to several devices: one row, devices joined.
            match out.iter_mut().find(|(_, i)| *i == id) {
                Some((d, _)) => {
                    d.push('+');
                    d.push_str(&dev);
                }
                None => out.push((dev.clone(), id)),
            }
        }
    }
    Ok(out)
}

/// (run_time_ns, run_cnt, name) of BPF program `id`, from `bpftool prog show`.
pub fn prog_stats(id: u64) -> Result<(u64, u64, String)> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "prog", "show", "id", &id.to_string()])
        .output()
        .context("running bpftool (cargo xtask setup installs it)")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "bpftool prog show id {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((
        v["run_time_ns"].as_u64().unwrap_or(0),
        v["run_cnt"].as_u64().unwrap_or(0),
        v["name"].as_str().unwrap_or("?").to_owned(),
    ))
}

/// One XDP program's share of a bpf_stats pass.
pub struct XdpRow {
    pub dev: String,
    pub prog: String,
    pub runs: u64,
    pub ns_per_run: f64,
    pub runs_per_delivered: f64,
}

impl XdpRow {
    pub fn json(&self) -> serde_json::Value {
        json!({"dev": self.dev, "prog": self.prog, "runs": self.runs,
               "ns_per_run": self.ns_per_run, "runs_per_delivered": self.runs_per_delivered})
    }
}

/// Measure the XDP programs' own run time per invocation while `v` runs at `rate`, with
/// `kernel.bpf_stats_enabled` on only for this pass (it costs every BPF program two clock
/// reads per run, so the main sweep runs without it). Returns rows (device, program, runs,
/// ns per run, runs per delivered datagram).
pub fn xdp_run_time(v: &Variant, ns: &str, rate: u64, secs: f64, run: u32) -> Result<Vec<XdpRow>> {
    let progs = xdp_progs(ns)?;
    if progs.is_empty() {
        bail!("no XDP program attached in {ns}");
    }
    let _stats = BpfStats::enable()?;
    let before: Vec<_> = progs
        .iter()
        .map(|(_, id)| prog_stats(*id))
        .collect::<Result<_>>()?;
    let p = measure(v, Some(rate), secs, run, 0)?;
    let after: Vec<_> = progs
        .iter()
        .map(|(_, id)| prog_stats(*id))
        .collect::<Result<_>>()?;
    eprintln!(
        "  bpf_stats {}: {progs:?} before {before:?} after {after:?}",
        v.name
    );
    Ok(progs
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| a.1 > b.1)
        .map(|((dev, _), (b, a))| {
            let runs = a.1 - b.1;
            XdpRow {
                dev: dev.clone(),
                prog: a.2.clone(),
                runs,
                ns_per_run: (a.0 - b.0) as f64 / runs as f64,
                runs_per_delivered: runs as f64 / p.received.max(1) as f64,
            }
        })
        .collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn rate_label(r: Option<u64>) -> String {
    match r {
        Some(r) if r % 1000 == 0 => format!("{}k", r / 1000),
        Some(r) => r.to_string(),
        None => "max".into(),
    }
}

/// Loss above which a rate counts as saturated.
pub const SATURATION_LOSS: f64 = 0.001;

/// Median rows per (variant, rate) and a per-variant summary, as Markdown.
pub fn summarize(
    points: &[Point],
    variants: &[String],
    rates: &[Option<u64>],
    unit: &str,
) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "| relay | offered | offered {unit}/s | delivered {unit}/s | loss | relay CPU (cores) | {unit}/s per relay core | latency p50 / p99 (µs) | app latency p50 (µs) |\n|---|---|---|---|---|---|---|---|---|\n"
    ));
    let mut summary = String::from(
        "| relay | best delivered/s with loss ≤ 0.1% | at rate | its per-core rate | saturation (first rate with loss > 0.1%) |\n|---|---|---|---|---|\n",
    );
    for v in variants {
        let mut best: Option<(f64, Option<u64>, f64)> = None;
        let mut saturation = None;
        for r in rates {
            let ps: Vec<&Point> = points
                .iter()
                .filter(|p| &p.variant == v && p.rate == *r)
                .collect();
            if ps.is_empty() {
                continue;
            }
            let m = |f: &dyn Fn(&Point) -> f64| median(ps.iter().map(|p| f(p)).collect());
            let delivered = m(&|p| p.received as f64 / p.gen.elapsed.as_secs_f64());
            let loss = m(&|p| p.loss());
            let per_core = m(&|p| p.pps_per_core());
            md.push_str(&format!(
                "| {v} | {} | {:.0} | {:.0} | {:.3}% | {:.2} | {:.0} | {:.0} / {:.0} | {:.0} |\n",
                rate_label(*r),
                m(&|p| p.offered_pps()),
                delivered,
                loss * 100.0,
                m(&|p| p.relay_cores()),
                per_core,
                m(&|p| p.lat_kernel_p50_us),
                m(&|p| p.lat_kernel_p99_us),
                m(&|p| p.lat_app_p50_us),
            ));
            if loss <= SATURATION_LOSS {
                if best.is_none_or(|(d, _, _)| delivered > d) {
                    best = Some((delivered, *r, per_core));
                }
            } else if saturation.is_none() {
                saturation = Some(*r);
            }
        }
        let (d, r, pc) = best.unwrap_or((0.0, Some(0), 0.0));
        summary.push_str(&format!(
            "| {v} | {d:.0} | {} | {pc:.0} | {} |\n",
            rate_label(r),
            saturation.map_or("none in the sweep".into(), rate_label)
        ));
    }
    format!("{md}\n{summary}")
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Host facts printed with every report.
pub fn host_facts() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let s0 = cpu::ProcStat::read();
    std::thread::sleep(Duration::from_secs(1));
    let s1 = cpu::ProcStat::read();
    let bg = (s1.busy - s0.busy) as f64 / (s1.total - s0.total).max(1) as f64 * cpus as f64;
    format!(
        "Host: {cpus} CPUs ({model}), kernel {}, load average {}, background busy before the run {bg:.2} cores (other work on this shared machine).\n",
        kernel.trim(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

/// Run the relay sweep over `variants` (interleaved) and return the points.
pub fn sweep(variants: &[Variant], opts: &Opts, run: &mut u32) -> Result<Vec<Point>> {
    let mut points = Vec::new();
    for rep in 0..opts.reps {
        for rate in &opts.rates {
            for v in variants {
                *run += 1;
                let p = measure(v, *rate, opts.secs, *run, rep)?;
                eprintln!(
                    "  rep {rep} {:>4} {:<28} sent {:>8} got {:>8} loss {:>7.3}% relay CPU {:.2} cores, {:>9.0}/s per core, lat p50 {:.0} µs, drops ring/relay/callee {:?}",
                    rate_label(*rate),
                    v.name,
                    p.gen.sent,
                    p.received,
                    p.loss() * 100.0,
                    p.relay_cores(),
                    p.pps_per_core(),
                    p.lat_kernel_p50_us,
                    p.drops
                );
                points.push(p);
            }
        }
    }
    Ok(points)
}

// Addresses of the relay benchmark. Each variant has its own ports so late datagrams of one
// never reach another's receiver.
const K_CALLER: &str = "10.77.1.2:41000";
const K_A: &str = "10.77.1.1:31000";
const K_B: &str = "10.77.2.1:31002";
const K_CALLEE: &str = "10.77.2.2:41000";
const KF_CALLER: &str = "10.77.1.2:40000";
const KF_A: &str = "10.77.1.1:30000";
const KF_B: &str = "10.77.2.1:30002";
const KF_CALLEE: &str = "10.77.2.2:40000";
const U_CALLER: &str = "10.77.1.2:42000";
const U_A: &str = "10.77.1.1:32000";
const U_B: &str = "10.77.2.1:32002";
const U_CALLEE: &str = "10.77.2.2:42000";
const R_CALLER: &str = "10.77.1.2:43000";
const R_CALLEE: &str = "10.77.2.2:43000";
const RTPENGINE_NG: &str = "127.0.0.1:2223";

fn flow_pair(s: &Scenario, caller: &str, a: &str, b: &str, callee: &str) -> Result<()> {
    s.ctl(json!({"v":1,"op":"flow_add","flow":{"local":a,"src":b,"dst":callee}}))?;
    s.ctl(json!({"v":1,"op":"flow_add","flow":{"local":b,"src":a,"dst":caller}}))?;
    Ok(())
}

/// Start rtpengine (user space only) in the forker namespace of `t` and anchor one call.
/// Returns where the caller sends.
pub fn start_rtpengine(t: &mut Topology) -> Result<SocketAddr> {
    let pidfile = t.dir.join("rtpengine.pid");
    let args = [
        "--config-file=none".to_owned(),
        // No kernel forwarding table: every packet goes through the daemon.
        "--table=-1".to_owned(),
        "--interface=a/10.77.1.1".to_owned(),
        "--interface=b/10.77.2.1".to_owned(),
        format!("--listen-ng={RTPENGINE_NG}"),
        "--port-min=33000".to_owned(),
        "--port-max=33999".to_owned(),
        "--foreground".to_owned(),
        "--log-stderr".to_owned(),
        "--log-level=5".to_owned(),
        format!("--pidfile={}", pidfile.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    t.spawn(
        "rtpengine",
        Host::Forker,
        Path::new("/usr/bin/rtpengine"),
        &args,
    )
    .context("starting rtpengine (cargo xtask bench installs rtpengine-daemon)")?;
    let ctl = t.udp_socket(Host::Forker, "127.0.0.1:0".parse()?)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match ng::anchor_call(
            &ctl,
            RTPENGINE_NG.parse()?,
            &format!("bench-{attempt}"),
            R_CALLER.parse()?,
            R_CALLEE.parse()?,
        ) {
            Ok((caller_sends_to, _)) => return Ok(caller_sends_to),
            Err(e) if std::time::Instant::now() < deadline && t.is_running("rtpengine") => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(e.context(format!("rtpengine log:\n{}", t.log("rtpengine"))));
            }
        }
    }
}

fn relay(opts: &Opts) -> Result<Report> {
    let facts = host_facts();
    eprintln!("xdpfork-bench relay: building topologies");
    // Kernel topology: fork-agent with XDP on fa0/fb0, two calls (one forked).
    let s = Scenario::start()?;
    flow_pair(&s, K_CALLER, K_A, K_B, K_CALLEE)?;
    flow_pair(&s, KF_CALLER, KF_A, KF_B, KF_CALLEE)?;
    s.start_fork("bench-fork", KF_A, KF_B)?;
    let k_napi = thread_all(&s.topo, &[Host::Forker, Host::Callee, Host::Speech])?;
    // User-space topology: no XDP anywhere.
    let mut u = Topology::new()?;
    let relay_bin = bin("udp-relay")?;
    let relay_args = [
        "--a", U_A, "--a-peer", U_CALLER, "--b", U_B, "--b-peer", U_CALLEE,
    ];
    u.spawn("udp-relay", Host::Forker, &relay_bin, &relay_args)?;
    let rtpengine_at = start_rtpengine(&mut u)?;
    let u_napi = thread_all(&u, &[Host::Forker, Host::Callee])?;
    std::thread::sleep(Duration::from_millis(200)); // udp-relay bound (warm-up checks it)

    let agent = one_pid(&s.topo, Host::Forker, "fork-agent")?;
    let speech = one_pid(&s.topo, Host::Speech, "speech-server")?;
    let udp_relay = one_pid(&u, Host::Forker, "udp-relay")?;
    let rtpengine = one_pid(&u, Host::Forker, "rtpengine")?;
    for pid in [agent, speech, udp_relay, rtpengine] {
        load::boost_process(pid);
    }
    let kernel_tasks = |with_fork: bool| {
        let mut relay = cpu::Tasks::default();
        relay.add("napi threads (forker ns)", napi_of(&k_napi, Host::Forker));
        relay.add("fork-agent", vec![agent]);
        let mut other = cpu::Tasks::default();
        other.add("napi threads (callee ns)", napi_of(&k_napi, Host::Callee));
        if with_fork {
            other.add("napi threads (speech ns)", napi_of(&k_napi, Host::Speech));
            other.add("speech-server", vec![speech]);
        }
        (relay, other)
    };
    let user_tasks = |pid: i32, name: &str| {
        let mut relay = cpu::Tasks::default();
        relay.add("napi threads (forker ns)", napi_of(&u_napi, Host::Forker));
        relay.add(name, vec![pid]);
        let mut other = cpu::Tasks::default();
        other.add("napi threads (callee ns)", napi_of(&u_napi, Host::Callee));
        (relay, other)
    };
    let mut variants = Vec::new();
    let (relay, other) = kernel_tasks(false);
    variants.push(Variant {
        name: "xdpfork XDP relay".into(),
        tx: connected(&s.topo, Host::Caller, K_CALLER, K_A.parse()?)?,
        rx: s.topo.udp_socket(Host::Callee, K_CALLEE.parse()?)?,
        template: rtp_template(),
        rx_stamp_at: 12,
        relay,
        other,
        sent: Default::default(),
        ns: [Host::Caller, Host::Forker, Host::Callee].map(|h| s.topo.ns(h)),
    });
    let (relay, other) = kernel_tasks(true);
    variants.push(Variant {
        name: "xdpfork XDP relay + fork".into(),
        tx: connected(&s.topo, Host::Caller, KF_CALLER, KF_A.parse()?)?,
        rx: s.topo.udp_socket(Host::Callee, KF_CALLEE.parse()?)?,
        template: rtp_template(),
        rx_stamp_at: 12,
        relay,
        other,
        sent: Default::default(),
        ns: [Host::Caller, Host::Forker, Host::Callee].map(|h| s.topo.ns(h)),
    });
    let (relay, other) = user_tasks(udp_relay, "udp-relay");
    variants.push(Variant {
        name: "udp-relay (tokio)".into(),
        tx: connected(&u, Host::Caller, U_CALLER, U_A.parse()?)?,
        rx: u.udp_socket(Host::Callee, U_CALLEE.parse()?)?,
        template: rtp_template(),
        rx_stamp_at: 12,
        relay,
        other,
        sent: Default::default(),
        ns: [Host::Caller, Host::Forker, Host::Callee].map(|h| u.ns(h)),
    });
    let (relay, other) = user_tasks(rtpengine, "rtpengine");
    variants.push(Variant {
        name: "rtpengine (user space)".into(),
        tx: connected(&u, Host::Caller, R_CALLER, rtpengine_at)?,
        rx: u.udp_socket(Host::Callee, R_CALLEE.parse()?)?,
        template: rtp_template(),
        rx_stamp_at: 12,
        relay,
        other,
        sent: Default::default(),
        ns: [Host::Caller, Host::Forker, Host::Callee].map(|h| u.ns(h)),
    });
    let mut run = 0u32;
    let mut warnings = String::new();
    for v in &variants {
        run += 1;
        // A relay that fails its warm-up is still measured (its loss is the finding), but the
        // report says so; the kernel variants must work, or the setup is broken.
        if let Err(e) = warm_up(v, run) {
            if v.name.starts_with("xdpfork") {
                return Err(e);
            }
            eprintln!("xdpfork-bench relay: warning: {e:#}");
            warnings.push_str(&format!("Warning: {e:#}.\n\n"));
        }
    }
    eprintln!(
        "xdpfork-bench relay: {} reps x {} rates x {} relays, {} s each",
        opts.reps,
        opts.rates.len(),
        variants.len(),
        opts.secs
    );
    let points = sweep(&variants, opts, &mut run)?;

    // XDP programs' own run time, in a separate pass with bpf_stats on.
    let mut xdp_rows = Vec::new();
    for v in &variants[..2] {
        run += 1;
        for row in xdp_run_time(v, &s.topo.ns(Host::Forker), 100_000, opts.secs, run)? {
            xdp_rows.push((v.name.clone(), row));
        }
    }
    let counters = s.counters()?;

    let names: Vec<String> = variants.iter().map(|v| v.name.clone()).collect();
    let mut md = format!(
        "## `cargo xtask bench relay`\n\n{facts}\nRTP datagrams of 172 bytes (12-byte header + 160 bytes G.711), one call, caller → callee; {} repetitions × {} s per point, medians shown.\n\n",
        opts.reps, opts.secs
    );
    md.push_str(&warnings);
    md.push_str(&summarize(&points, &names, &opts.rates, "pkt"));
    md.push_str(&format!(
        "\nrtpengine log (last lines):\n\n```\n{}\n```\n",
        tail(&u.log("rtpengine"), 8)
    ));
    md.push_str("\nXDP program run time (bpf_stats, separate pass at 100k pkt/s):\n\n| relay | device | program | runs | ns per run | runs per delivered packet |\n|---|---|---|---|---|---|\n");
    for (v, r) in &xdp_rows {
        md.push_str(&format!(
            "| {v} | {} | {} | {} | {:.0} | {:.2} |\n",
            r.dev, r.prog, r.runs, r.ns_per_run, r.runs_per_delivered
        ));
    }
    let kernel_pass = counters["kernel"].clone();
    Ok(Report {
        markdown: md,
        raw: json!({
            "facts": facts,
            "points": points.iter().map(Point::json).collect::<Vec<_>>(),
            "xdp": xdp_rows.iter().map(|(v, r)| json!({"variant": v, "row": r.json()})).collect::<Vec<_>>(),
            "fork_agent_kernel_counters": kernel_pass,
        }),
    })
}
