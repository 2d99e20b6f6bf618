//! `xdpfork-bench`: the benchmark driver behind `cargo xtask bench` (needs root).
//!
//! `xdpfork-bench relay [--reps N] [--secs S] [--rates 50000,100000,max] [--relay-calls 200,2000]
//! [--out DIR]` measures, in one run and on the netns topology of the test harness (caller
//! 10.77.1.2 → forker fa0 10.77.1.1 / fb0 10.77.2.1 → callee 10.77.2.2), packets per second per
//! busy relay core, loss and one-way latency of four relays side by side, the offered rate spread
//! over many calls (each its own port pair and SSRC; `relay.rs`):
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
//! `xdpfork-bench calls [--cps 5,10,...] [--calls N] [--hold S] [--concurrent N,...] [--rtp yes|no]`
//! drives SIP calls with sipp through sip-agent, media anchored and forked: `calls.rs`.
//!
//! `xdpfork-bench ng [--reps N] [--ng-calls N] [--windows 1,16,64]` drives the rtpengine ng
//! protocol (offer, answer, delete) through ng-agent and through rtpengine: `ngctl.rs`.
//! `xdpfork-bench bot [--secs S] [--streams 50,200,...] [--modes endpoint,inject] [--spread-ms
//! 300] [--barge-in]` measures voice
//! bots talking back (return audio) on one fork-agent core, in endpoint and inject mode: `bot.rs`.
//! `xdpfork-bench srtp [--reps N] [--secs S]` measures the user-space cost per packet of a
//! bridged browser leg (webrtc-bridge's core, then ng-agent's leg task on loopback): `srtp.rs`.
//!
//! Two topologies are built: one with fork-agent (XDP attached on fa0/fb0) for the kernel
//! variants, one without any XDP program for the user-space relays, so neither pays for the
//! other. Points run interleaved (for each repetition, for each rate, every variant) so slow
//! drifts of this shared, noisy machine hit every variant alike; medians over repetitions are
//! reported. Method and caveats: docs/benchmarks.md. Output: a Markdown report on stdout and in
//! `<out>/<bench>.md`, raw points in `<out>/<bench>.json`.

// A benchmark driver reads the wall clock and runs threads; this is an IO shell.
#![allow(clippy::disallowed_methods)]

/// Counts the driver's allocations for `bench dialects` (the daemons are other processes).
#[global_allocator]
static ALLOC: dialects::Counting = dialects::Counting;

mod bot;
mod calls;
mod cpu;
mod dialects;
mod fork;
mod load;
mod ng;
mod ngctl;
mod relay;
mod srtp;
mod turn;
mod ws;

use std::{
    cell::RefCell,
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::json;
use xdpfork_tests::{ns_run, Host, Topology};

use crate::load::{CallSet, GenStats, Template};

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
    /// Calls counts of `relay`: the offered rate is spread over this many calls.
    pub relay_calls: Vec<usize>,
    /// `calls` options (`--cps`, `--calls`, `--hold`, `--concurrent`, `--rtp`), parsed by calls.rs.
    pub calls_args: Vec<(String, String)>,
    /// `fork` options beyond the sweep.
    pub profile_at: Option<usize>,
    pub agents: Vec<(String, PathBuf)>,
    pub overload: bool,
    /// `ng`: calls per point.
    pub ng_calls: usize,
    /// `ng`: calls in flight, one point per value.
    pub windows: Vec<usize>,
    /// `bot`: the return-audio modes measured, and the spread of the bots' phases.
    pub bot_modes: Vec<bot::Mode>,
    pub bot_spread: Duration,
    pub bot_barge_in: bool,
}

/// xdpfork benchmarks (root): each builds its own namespaces and prints a Markdown report
/// (docs/benchmarks.md explains the method). `cargo xtask bench` builds and runs them.
#[derive(clap::Parser)]
#[command(version)]
struct Cli {
    /// Which benchmark to run.
    #[arg(value_parser = ["relay", "turn", "fork", "calls", "dialects", "ng", "srtp", "bot"])]
    bench: String,
    /// Repetitions of every point (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(usize))]
    reps: usize,
    /// Seconds per point, in (0, 10].
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Offered rates in datagrams per second, comma-separated; `max` is as fast as the
    /// generator can.
    #[arg(long, default_value = "50000,100000,200000,400000,max")]
    rates: String,
    /// Where the report and raw points go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// fork: concurrent stream counts; bot: concurrent bot calls; comma-separated.
    #[arg(long, default_value = "500,1000,2000,5000")]
    streams: String,
    /// fork: record `perf` of fork-agent at this stream count (added to the sweep).
    #[arg(long)]
    profile_at: Option<usize>,
    /// fork: the fork-agents to compare, `label=path`, in order (default: `current=` the
    /// fork-agent next to this driver). Each runs the whole sweep in its own topology.
    #[arg(long = "agent")]
    agents: Vec<String>,
    /// fork: after the sweep, an overload point: the most streams held with fork-agent capped
    /// at half the CPU they took.
    #[arg(long)]
    overload: bool,
    /// relay: numbers of calls the offered rate is spread over, comma-separated.
    #[arg(long, default_value = "2000")]
    relay_calls: String,
    /// calls: calls per second, comma-separated.
    #[arg(long)]
    cps: Option<String>,
    /// calls: calls per point.
    #[arg(long)]
    calls: Option<String>,
    /// calls: seconds each call is held.
    #[arg(long)]
    hold: Option<String>,
    /// calls: held-call counts, comma-separated.
    #[arg(long)]
    concurrent: Option<String>,
    /// calls: whether calls carry RTP (yes or no).
    #[arg(long)]
    rtp: Option<String>,
    /// ng: calls set up and deleted per point.
    #[arg(long, default_value_t = 2000)]
    ng_calls: usize,
    /// ng: calls in flight, comma-separated (one point per value).
    #[arg(long, default_value = "1,16,64")]
    windows: String,
    /// bot: return-audio modes, comma-separated: endpoint (the call ends at the bot), inject
    /// (the bot talks into a kernel-relayed call). Each call count runs every mode in turn.
    #[arg(long, default_value = "endpoint,inject")]
    modes: String,
    /// bot: the bots' first utterances are spread over this many ms, at most the talk period
    /// (the default: calls talk independently); 20 has every bot talk in the same packet time.
    #[arg(long, default_value_t = bot::Opts::DEFAULT_SPREAD_MS)]
    spread_ms: u64,
    /// bot: every utterance is cleared 40 ms into it and followed at once by another (barge-in
    /// and re-prompt).
    #[arg(long)]
    barge_in: bool,
}

fn numbers(flag: &str, v: &str) -> Result<Vec<usize>> {
    v.split(',')
        .map(|n| n.parse().with_context(|| format!("--{flag}: numbers")))
        .collect()
}

fn parse_args() -> Result<(String, Opts)> {
    let cli = <Cli as clap::Parser>::parse();
    let rates = cli
        .rates
        .split(',')
        .map(|r| match r {
            "max" => Ok(None),
            r => r.parse().map(Some).context("--rates: numbers or max"),
        })
        .collect::<Result<Vec<_>>>()?;
    let calls_args = [
        ("--cps", &cli.cps),
        ("--calls", &cli.calls),
        ("--hold", &cli.hold),
        ("--concurrent", &cli.concurrent),
        ("--rtp", &cli.rtp),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k.to_owned(), v)))
    .collect();
    let o = Opts {
        reps: cli.reps,
        secs: cli.secs,
        rates,
        out: cli.out,
        streams: numbers("streams", &cli.streams)?,
        relay_calls: numbers("relay-calls", &cli.relay_calls)?,
        calls_args,
        profile_at: cli.profile_at,
        agents: cli
            .agents
            .iter()
            .map(|a| match a.split_once('=') {
                Some((label, path)) if !label.is_empty() => {
                    Ok((label.to_owned(), PathBuf::from(path)))
                }
                _ => bail!("--agent {a}: expected label=path"),
            })
            .collect::<Result<_>>()?,
        overload: cli.overload,
        ng_calls: cli.ng_calls,
        windows: numbers("windows", &cli.windows)?,
        bot_modes: bot::Mode::parse_list(&cli.modes)?,
        bot_spread: Duration::from_millis(cli.spread_ms),
        bot_barge_in: cli.barge_in,
    };
    if o.reps == 0 || o.secs <= 0.0 || o.secs > 10.0 || o.rates.is_empty() {
        bail!("--reps must be > 0, --secs in (0, 10], --rates non-empty");
    }
    Ok((cli.bench, o))
}

fn main() -> Result<()> {
    let (cmd, opts) = parse_args()?;
    xdpfork_tests::require_root()?;
    std::fs::create_dir_all(&opts.out)?;
    let report = match cmd.as_str() {
        "relay" => relay::run(&opts)?,
        "turn" => turn::run(&opts)?,
        "fork" => {
            let agents = if opts.agents.is_empty() {
                vec![("current".to_owned(), xdpfork_tests::bin("fork-agent")?)]
            } else {
                opts.agents.clone()
            };
            fork::run(&fork::Opts {
                streams: opts.streams.clone(),
                secs: opts.secs,
                profile_at: opts.profile_at,
                agents,
                overload: opts.overload,
                out: opts.out.clone(),
            })?
        }
        "calls" => calls::run(&calls::Opts::from_args(&opts.calls_args)?)?,
        "dialects" => dialects::run(opts.reps)?,
        "ng" => ngctl::run(&ngctl::NgOpts {
            reps: opts.reps,
            calls: opts.ng_calls,
            windows: opts.windows.clone(),
        })?,
        "srtp" => srtp::run(opts.reps, opts.secs)?,
        "bot" => bot::run(&bot::Opts {
            calls: opts.streams.clone(),
            modes: opts.bot_modes.clone(),
            secs: opts.secs,
            spread: opts.bot_spread,
            barge_in: opts.bot_barge_in,
        })?,
        other => {
            bail!("unknown benchmark {other}: relay, turn, fork, calls, dialects, ng, srtp or bot")
        }
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
    /// Caller-side socket: connected to the relay's address for a one-destination load,
    /// unconnected for a many-call load (each datagram names its call's address).
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
    [
        veth_stat(&ns[0], "ca0", "tx_dropped"),
        udp_rcvbuf_errors(&ns[1]),
        udp_rcvbuf_errors(&ns[2]),
    ]
}

/// `Udp: RcvbufErrors` of namespace `ns` (datagrams a socket's full buffer refused); 0 if
/// unreadable.
pub fn udp_rcvbuf_errors(ns: &str) -> u64 {
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
}

/// One statistic of interface `dev` in namespace `ns` (`/sys/class/net/<dev>/statistics`); 0
/// if unreadable.
pub fn veth_stat(ns: &str, dev: &str, stat: &str) -> u64 {
    ns_run(
        ns,
        "cat",
        &[&format!("/sys/class/net/{dev}/statistics/{stat}")],
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

/// A variant with the calls it relays: `None` is the one-destination load on the connected
/// `tx` socket (TURN), `Some` a [`CallSet`] of which a point uses the first `n`.
pub type Subject<'a> = (&'a Variant, Option<&'a RefCell<CallSet>>);

/// One measured point.
#[derive(Clone, Debug)]
pub struct Point {
    pub variant: String,
    /// Calls the offered rate was spread over (0: one connected destination).
    pub calls: usize,
    /// Calls that lost at least one datagram, and calls that received none.
    pub calls_lossy: usize,
    pub calls_silent: usize,
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
            "variant": self.variant, "calls": self.calls, "calls_lossy": self.calls_lossy,
            "calls_silent": self.calls_silent, "rate": self.rate, "rep": self.rep,
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

/// Run one point: receiver up, CPU sampled, generator for `secs` (over the first `n` calls of
/// the subject's [`CallSet`], if it has one), drain, CPU sampled again.
pub fn measure(
    (v, calls): Subject,
    n: usize,
    rate: Option<u64>,
    secs: f64,
    run: u32,
    rep: usize,
) -> Result<Point> {
    let n = if calls.is_some() { n } else { 0 };
    let stop = Arc::new(AtomicBool::new(false));
    let rx = load::spawn_receiver(v.rx.try_clone()?, v.rx_stamp_at, n, run, stop.clone());
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
    let duration = Duration::from_secs_f64(secs);
    // The call set moves into the generator thread and comes back with its sequences advanced.
    let set = calls.map(|c| c.take());
    let (gen, set) = std::thread::spawn(move || match set {
        None => load::generate(&tx, &template, run, rate, duration).map(|g| (g, None)),
        Some(mut set) => load::generate_calls(&tx, &template, &mut set, n, run, rate, duration)
            .map(|g| (g, Some(set))),
    })
    .join()
    .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    if let (Some(c), Some(set)) = (calls, set) {
        c.replace(set);
    }
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
    let (calls_lossy, calls_silent) = got.call_losses(gen.sent);
    let busy_ns = (r1.stat.busy - r0.stat.busy) * cpu::ProcStat::ns_per_jiffy();
    Ok(Point {
        variant: v.name.clone(),
        calls: n,
        calls_lossy,
        calls_silent,
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
    warm_up_calls((v, None), 0, run)
}

/// [`warm_up`] over the first `n` calls of a subject (10k datagrams/s spread over them).
pub fn warm_up_calls(s: Subject, n: usize, run: u32) -> Result<()> {
    let v = s.0;
    let p = measure(s, n, Some(10_000), 0.5, run, 0)?;
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
    xdp_run_time_calls((v, None), 0, ns, rate, secs, run)
}

/// [`xdp_run_time`] over the first `n` calls of a subject.
pub fn xdp_run_time_calls(
    s: Subject,
    n: usize,
    ns: &str,
    rate: u64,
    secs: f64,
    run: u32,
) -> Result<Vec<XdpRow>> {
    let v = s.0;
    let progs = xdp_progs(ns)?;
    if progs.is_empty() {
        bail!("no XDP program attached in {ns}");
    }
    let _stats = BpfStats::enable()?;
    let before: Vec<_> = progs
        .iter()
        .map(|(_, id)| prog_stats(*id))
        .collect::<Result<_>>()?;
    let p = measure(s, n, Some(rate), secs, run, 0)?;
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

/// Median rows per (variant, calls, rate) and a summary per (variant, calls), as Markdown. The
/// calls columns appear when the points spread their load over calls.
pub fn summarize(
    points: &[Point],
    variants: &[String],
    rates: &[Option<u64>],
    unit: &str,
) -> String {
    let mut calls: Vec<usize> = points.iter().map(|p| p.calls).collect();
    calls.sort_unstable();
    calls.dedup();
    let per_call = calls.iter().any(|c| *c > 0);
    let (ch, cs) = if per_call {
        ("calls | ", "---|")
    } else {
        ("", "")
    };
    let mut md = format!(
        "| relay | {ch}offered | offered {unit}/s | delivered {unit}/s | loss | {}relay CPU (cores) | {unit}/s per relay core | latency p50 / p99 (µs) | app latency p50 (µs) |\n|---|{cs}---|---|---|---|{}---|---|---|---|\n",
        if per_call { "calls with loss | " } else { "" },
        if per_call { "---|" } else { "" },
    );
    let mut summary = format!(
        "| relay | {ch}best delivered/s with loss ≤ 0.1% | at rate | its per-core rate | saturation (first rate with loss > 0.1%) |\n|---|{cs}---|---|---|---|\n",
    );
    for v in variants {
        for n in &calls {
            let mut best: Option<(f64, Option<u64>, f64)> = None;
            let mut saturation = None;
            let mut any = false;
            for r in rates {
                let ps: Vec<&Point> = points
                    .iter()
                    .filter(|p| &p.variant == v && p.rate == *r && p.calls == *n)
                    .collect();
                if ps.is_empty() {
                    continue;
                }
                any = true;
                let m = |f: &dyn Fn(&Point) -> f64| median(ps.iter().map(|p| f(p)).collect());
                let delivered = m(&|p| p.received as f64 / p.gen.elapsed.as_secs_f64());
                let loss = m(&|p| p.loss());
                let per_core = m(&|p| p.pps_per_core());
                let mut row = format!("| {v} | ");
                if per_call {
                    row.push_str(&format!("{n} | "));
                }
                row.push_str(&format!(
                    "{} | {:.0} | {:.0} | {:.3}% | ",
                    rate_label(*r),
                    m(&|p| p.offered_pps()),
                    delivered,
                    loss * 100.0
                ));
                if per_call {
                    row.push_str(&format!("{:.0} of {n} | ", m(&|p| p.calls_lossy as f64)));
                }
                row.push_str(&format!(
                    "{:.2} | {:.0} | {:.0} / {:.0} | {:.0} |\n",
                    m(&|p| p.relay_cores()),
                    per_core,
                    m(&|p| p.lat_kernel_p50_us),
                    m(&|p| p.lat_kernel_p99_us),
                    m(&|p| p.lat_app_p50_us),
                ));
                md.push_str(&row);
                if loss <= SATURATION_LOSS {
                    if best.is_none_or(|(d, _, _)| delivered > d) {
                        best = Some((delivered, *r, per_core));
                    }
                } else if saturation.is_none() {
                    saturation = Some(*r);
                }
            }
            if !any {
                continue;
            }
            let calls_col = if per_call {
                format!("{n} | ")
            } else {
                String::new()
            };
            summary.push_str(&match best {
                Some((d, r, pc)) => format!(
                    "| {v} | {calls_col}{d:.0} | {} | {pc:.0} | {} |\n",
                    rate_label(r),
                    saturation.map_or("none in the sweep".into(), rate_label)
                ),
                None => format!(
                    "| {v} | {calls_col}none | – | – | {} |\n",
                    saturation.map_or("none in the sweep".into(), rate_label)
                ),
            });
        }
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
    // fork-agent inherits the variable (docs/maps.md "Fork path").
    let fork_path = std::env::var("XDPFORK_FORK_PATH").unwrap_or_else(|_| "auto".into());
    format!(
        "Host: {cpus} CPUs ({model}), kernel {}, load average {}, background busy before the run {bg:.2} cores (other work on this shared machine). fork-agent's fork path: {fork_path}.\n",
        kernel.trim(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

/// Run the sweep over `variants` (one destination each, interleaved) and return the points.
pub fn sweep(variants: &[Variant], opts: &Opts, run: &mut u32) -> Result<Vec<Point>> {
    let subjects: Vec<Subject> = variants.iter().map(|v| (v, None)).collect();
    sweep_calls(&subjects, &[0], opts, run, &mut |_, _| Ok(()))
}

/// Run the sweep over `subjects`, interleaved: for each repetition, for each calls count, for
/// each rate, every subject in turn (slow drifts of the shared host hit all of them alike).
/// `before(subject index, calls)` runs before each point (rtpengine gets fresh calls there).
pub fn sweep_calls(
    subjects: &[Subject],
    calls: &[usize],
    opts: &Opts,
    run: &mut u32,
    before: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Vec<Point>> {
    let mut points = Vec::new();
    for rep in 0..opts.reps {
        for n in calls {
            for rate in &opts.rates {
                for (k, s) in subjects.iter().enumerate() {
                    before(k, *n)?;
                    *run += 1;
                    let p = measure(*s, *n, *rate, opts.secs, *run, rep)?;
                    eprintln!(
                        "  rep {rep} {:>5} calls {:>4} {:<28} sent {:>8} got {:>8} loss {:>7.3}% (calls lossy {} silent {}) relay CPU {:.2} cores, {:>9.0}/s per core, lat p50 {:.0} µs, drops ring/relay/callee {:?}",
                        p.calls,
                        rate_label(*rate),
                        s.0.name,
                        p.gen.sent,
                        p.received,
                        p.loss() * 100.0,
                        p.calls_lossy,
                        p.calls_silent,
                        p.relay_cores(),
                        p.pps_per_core(),
                        p.lat_kernel_p50_us,
                        p.drops
                    );
                    points.push(p);
                }
            }
        }
    }
    Ok(points)
}
