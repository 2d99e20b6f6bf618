//! `xdpfork-bench ng [--reps N] [--ng-calls N] [--windows 1,16,64]`: the rtpengine ng protocol
//! as a SIP proxy drives it, through ng-agent and through rtpengine, in one run.
//!
//! Engines, both in the forker namespace of one topology and both driven over loopback by the
//! same client with the same messages (ng.rs's `offer`, `answer`, `delete`):
//! - ng-agent (ng on 127.0.0.1:2224, interfaces `a` 10.77.1.1 and `b` 10.77.2.1, its journal on)
//!   programming fork-agent (XDP on fa0/fb0): its `answer` is sent once fork-agent has installed
//!   the call's four kernel flows (RTP and RTCP both ways), its `delete` (delay 0) reads the
//!   call's counters and removes the flows;
//! - rtpengine-daemon with relay.rs's arguments (user space, `--delete-delay=0`): its `offer`
//!   and `answer` open the call's sockets, its `delete` closes them.
//!
//! A point is one engine, one window: `--ng-calls` calls set up (`offer` then `answer`, at most
//! `window` calls in flight on one socket, each call's next request sent when the previous one
//! is answered), then all deleted the same way. Measured: wall time of each phase, each
//! command's latency, and the CPU of the engine's processes (ng-agent + fork-agent; rtpengine).
//! Points run interleaved (for each repetition, for each window, both engines); medians over
//! repetitions are reported. No media flows: this is the control plane only.
//!
//! The report is assembled from parts that each take the running [`Engines`]: [`control_plane`]
//! here. A media part (packets per second per core through each engine, such as SRTP↔RTP
//! bridging) takes the same engines and adds its own section and raw points in [`run`].

use std::{
    collections::{BTreeMap, HashMap},
    net::{SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ng_agent::core::bencode::{self, Value};
use serde_json::json;
use xdpfork_tests::{addrs::SPEECH_WS, bin, ng_agent_config, Host, Scenario};

use crate::{cpu, host_facts, ng, relay, Report};

const NG_AGENT: &str = "127.0.0.1:2224";
const CALLER: &str = "10.77.1.2:44000";
const CALLEE: &str = "10.77.2.2:44002";
/// A request unanswered this long is sent again with the same cookie, as Kamailio's rtpengine
/// module does (`rtpengine_tout_ms` 1000, `rtpengine_retr` 5); both engines answer a repeated
/// cookie from their reply cache. Retransmissions are counted and reported.
const RETRANSMIT_AFTER: Duration = Duration::from_secs(1);
/// Sends of one request before the benchmark fails.
const MAX_SENDS: u32 = 6;
/// Calls of the unrecorded warm-up point per engine.
const WARM_UP_CALLS: usize = 50;

/// `bench ng` options.
pub struct NgOpts {
    pub reps: usize,
    /// Calls per point (at most 2000: ng-agent's 30000-39999 range holds 2500 calls).
    pub calls: usize,
    /// Calls in flight, one point per value.
    pub windows: Vec<usize>,
}

/// One engine under test.
pub struct Engine {
    pub name: &'static str,
    pub ng: SocketAddr,
    /// Processes whose CPU is the engine's.
    pub pids: Vec<(&'static str, i32)>,
}

/// The running engines (and the topology they live in: dropping it stops everything).
pub struct Engines {
    pub scenario: Scenario,
    pub engines: Vec<Engine>,
}

impl Engines {
    /// Topology, fork-agent, ng-agent and rtpengine, each answering `ping`.
    pub fn start() -> Result<Engines> {
        let topo = xdpfork_tests::Topology::new()?;
        let mut s = Scenario::start_agent_in(topo, SPEECH_WS, "")?;
        let cfg = s.topo.dir.join("ng-agent.toml");
        // The benchmark is one source sending as fast as the engine answers.
        let ng_extra = "delete_delay_secs = 0\nmax_calls = 100000\n\
                        requests_per_sec = 1000000\nrequest_burst = 1000000\n";
        std::fs::write(
            &cfg,
            ng_agent_config(
                NG_AGENT,
                ng_extra,
                &[("a", "10.77.1.1"), ("b", "10.77.2.1")],
                &s.socket,
                &s.topo.dir.join("ng-agent-state"),
            ),
        )?;
        let cfg_s = cfg.to_string_lossy().into_owned();
        s.topo.spawn_env(
            "ng-agent",
            Host::Forker,
            &bin("ng-agent")?,
            &["run", "--config", &cfg_s],
            &[("RUST_LOG", "ng_agent=warn")],
        )?;
        let args = relay::rtpengine_args(&s.topo.dir.join("rtpengine.pid"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.topo
            .spawn(
                "rtpengine",
                Host::Forker,
                Path::new("/usr/bin/rtpengine"),
                &args,
            )
            .context("starting rtpengine (cargo xtask bench installs rtpengine-daemon)")?;
        let pid = |name: &str| -> Result<i32> {
            s.topo
                .pid(name)
                .map(|p| p as i32)
                .with_context(|| format!("{name} is not running"))
        };
        let engines = vec![
            Engine {
                name: "ng-agent + fork-agent",
                ng: NG_AGENT.parse()?,
                pids: vec![
                    ("ng-agent", pid("ng-agent")?),
                    ("fork-agent", pid("fork-agent")?),
                ],
            },
            Engine {
                name: "rtpengine (user space)",
                ng: relay::RTPENGINE_NG.parse()?,
                pids: vec![("rtpengine", pid("rtpengine")?)],
            },
        ];
        let e = Engines {
            scenario: s,
            engines,
        };
        for engine in &e.engines {
            e.wait_ping(engine)?;
        }
        Ok(e)
    }

    /// A client socket in the engines' namespace.
    fn client(&self) -> Result<UdpSocket> {
        let sock = self
            .scenario
            .topo
            .udp_socket(Host::Forker, "127.0.0.1:0".parse()?)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        // Room for a full window of replies (rtpengine's `delete` reply carries every stream's
        // statistics, a few kB): a reply lost at the client would be charged to the engine.
        let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
        Ok(sock)
    }

    fn wait_ping(&self, engine: &Engine) -> Result<()> {
        let sock = self.client()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = vec![0u8; 65_536];
        loop {
            let mut msg = b"ping ".to_vec();
            Value::dict([("command", Value::str("ping"))]).encode(&mut msg);
            sock.send_to(&msg, engine.ng)?;
            if let Ok(n) = sock.recv(&mut buf) {
                if buf[..n].starts_with(b"ping ") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let topo = &self.scenario.topo;
                bail!(
                    "{} does not answer ping on {} within 15 s\nng-agent log:\n{}\nrtpengine log:\n{}",
                    engine.name,
                    engine.ng,
                    crate::tail(&topo.log("ng-agent"), 20),
                    crate::tail(&topo.log("rtpengine"), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One phase of a point: its wall time, its CPU per process, each command's latencies (from the
/// first send), the retransmissions it needed.
struct Phase {
    secs: f64,
    cpu_ns: Vec<u64>,
    lat_us: BTreeMap<&'static str, Vec<f64>>,
    retransmissions: u64,
}

impl Phase {
    fn cpu_total_ns(&self) -> u64 {
        self.cpu_ns.iter().sum()
    }
}

struct Point {
    engine: usize,
    window: usize,
    rep: usize,
    calls: usize,
    setup: Phase,
    teardown: Phase,
}

/// Cookie source: every request of the run gets its own (ng-agent caches replies by cookie).
struct Cookies(u64);

impl Cookies {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("b{}", self.0)
    }
}

/// One call's request waiting for its reply.
struct InFlight {
    call: usize,
    plan: Vec<(&'static str, Value)>,
    step: usize,
    first: Instant,
    last: Instant,
    sends: u32,
}

impl InFlight {
    fn new(call: usize, plan: Vec<(&'static str, Value)>, step: usize) -> InFlight {
        let now = Instant::now();
        InFlight {
            call,
            plan,
            step,
            first: now,
            last: now,
            sends: 1,
        }
    }
}

fn send(sock: &UdpSocket, to: SocketAddr, cookie: &str, msg: &Value) -> Result<()> {
    let mut out = format!("{cookie} ").into_bytes();
    msg.encode(&mut out);
    sock.send_to(&out, to)?;
    Ok(())
}

/// Runs the requests `steps(i)` of calls `0..n` in order per call, at most `window` calls in
/// flight; returns the phase (CPU sampled around it for `pids`).
fn pipeline(
    sock: &UdpSocket,
    engine: &Engine,
    n: usize,
    window: usize,
    cookies: &mut Cookies,
    steps: &dyn Fn(usize) -> Vec<(&'static str, Value)>,
) -> Result<Phase> {
    // cookie → (call, its requests, which one, first sent, last sent, sends)
    let mut inflight: HashMap<String, InFlight> = HashMap::new();
    let mut retransmissions = 0;
    let mut lat_us: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut next = 0;
    let mut buf = vec![0u8; 65_536];
    let cpu0: Vec<u64> = engine
        .pids
        .iter()
        .map(|(_, p)| cpu::process_cpu_ns(*p))
        .collect();
    let t0 = Instant::now();
    loop {
        while inflight.len() < window && next < n {
            let plan = steps(next);
            let cookie = cookies.next();
            send(sock, engine.ng, &cookie, &plan[0].1)?;
            inflight.insert(cookie, InFlight::new(next, plan, 0));
            next += 1;
        }
        if inflight.is_empty() {
            break;
        }
        let len = match sock.recv(&mut buf) {
            Ok(len) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                for (cookie, f) in inflight.iter_mut() {
                    if f.last.elapsed() < RETRANSMIT_AFTER {
                        continue;
                    }
                    if f.sends >= MAX_SENDS {
                        bail!(
                            "{}: no reply to {} of call {} (cookie {cookie}) after {MAX_SENDS} sends",
                            engine.name,
                            f.plan[f.step].0,
                            f.call
                        );
                    }
                    send(sock, engine.ng, cookie, &f.plan[f.step].1)?;
                    f.sends += 1;
                    f.last = Instant::now();
                    retransmissions += 1;
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let reply = &buf[..len];
        let Some(sp) = reply.iter().position(|b| *b == b' ') else {
            bail!("{}: reply without a cookie", engine.name);
        };
        let cookie = String::from_utf8_lossy(&reply[..sp]).into_owned();
        // A late reply to a retransmitted request has no entry any more.
        let Some(InFlight {
            call: i,
            plan,
            step: k,
            first: at,
            ..
        }) = inflight.remove(&cookie)
        else {
            continue;
        };
        let v = bencode::decode(&reply[sp + 1..], bencode::Limits::default())?;
        if v.get("result").and_then(Value::as_str) != Some("ok") {
            bail!(
                "{}: {} of call {i} refused: {}",
                engine.name,
                plan[k].0,
                String::from_utf8_lossy(&reply[sp + 1..])
            );
        }
        lat_us
            .entry(plan[k].0)
            .or_default()
            .push(at.elapsed().as_secs_f64() * 1e6);
        if k + 1 < plan.len() {
            let cookie = cookies.next();
            send(sock, engine.ng, &cookie, &plan[k + 1].1)?;
            inflight.insert(cookie, InFlight::new(i, plan, k + 1));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu_ns = engine
        .pids
        .iter()
        .zip(&cpu0)
        .map(|((_, p), c0)| cpu::process_cpu_ns(*p).saturating_sub(*c0))
        .collect();
    Ok(Phase {
        secs,
        cpu_ns,
        lat_us,
        retransmissions,
    })
}

/// Sets up `n` calls named `<prefix>-<i>` and deletes them again.
fn point(
    e: &Engines,
    engine: &Engine,
    prefix: &str,
    n: usize,
    window: usize,
    cookies: &mut Cookies,
) -> Result<(Phase, Phase)> {
    let sock = e.client()?;
    let (caller, callee): (SocketAddr, SocketAddr) = (CALLER.parse()?, CALLEE.parse()?);
    let id = |i: usize| format!("{prefix}-{i}");
    let setup = pipeline(&sock, engine, n, window, cookies, &|i| {
        vec![
            ("offer", ng::offer(&id(i), caller)),
            ("answer", ng::answer(&id(i), callee)),
        ]
    })?;
    let teardown = pipeline(&sock, engine, n, window, cookies, &|i| {
        vec![("delete", ng::delete(&id(i)))]
    })?;
    Ok((setup, teardown))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The control-plane part: calls set up and deleted per second, latencies, CPU per call.
pub fn control_plane(e: &Engines, o: &NgOpts) -> Result<(String, serde_json::Value)> {
    let mut cookies = Cookies(0);
    for (k, engine) in e.engines.iter().enumerate() {
        point(
            e,
            engine,
            &format!("warm{k}"),
            WARM_UP_CALLS,
            8,
            &mut cookies,
        )
        .with_context(|| format!("warming up {}", engine.name))?;
    }
    let mut points = Vec::new();
    for rep in 0..o.reps {
        for &window in &o.windows {
            for (k, engine) in e.engines.iter().enumerate() {
                let prefix = format!("r{rep}-w{window}-e{k}");
                let (setup, teardown) = point(e, engine, &prefix, o.calls, window, &mut cookies)?;
                let p = Point {
                    engine: k,
                    window,
                    rep,
                    calls: o.calls,
                    setup,
                    teardown,
                };
                eprintln!(
                    "  rep {rep} window {window:>3} {:<24} set-up {:>7.0}/s delete {:>7.0}/s, CPU {:.0} µs per call, {} retransmissions",
                    engine.name,
                    p.calls as f64 / p.setup.secs,
                    p.calls as f64 / p.teardown.secs,
                    (p.setup.cpu_total_ns() + p.teardown.cpu_total_ns()) as f64 / 1e3 / p.calls as f64,
                    p.setup.retransmissions + p.teardown.retransmissions,
                );
                points.push(p);
            }
        }
    }
    Ok((markdown(e, o, &points), raw(e, &points)))
}

fn markdown(e: &Engines, o: &NgOpts, points: &[Point]) -> String {
    let mut md = format!(
        "### `bench ng`: the ng control plane, {} calls per point, median of {} repetitions\n\n\
         | engine | calls in flight | set-ups/s (offer + answer) | deletes/s | offer p50 / p99 ms | answer p50 / p99 ms | delete p50 / p99 ms | CPU µs per call (set-up + delete) | set-ups per CPU-second | retransmissions (all reps) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        o.calls, o.reps
    );
    for &window in &o.windows {
        for (k, engine) in e.engines.iter().enumerate() {
            let ps: Vec<&Point> = points
                .iter()
                .filter(|p| p.engine == k && p.window == window)
                .collect();
            let med = |f: &dyn Fn(&Point) -> f64| median(ps.iter().map(|p| f(p)).collect());
            let lat = |phase: &dyn Fn(&Point) -> &Phase, cmd: &str| {
                let all: Vec<f64> = ps
                    .iter()
                    .flat_map(|p| phase(p).lat_us.get(cmd).cloned().unwrap_or_default())
                    .collect();
                format!(
                    "{:.2} / {:.2}",
                    percentile(&all, 0.5) / 1e3,
                    percentile(&all, 0.99) / 1e3
                )
            };
            let retransmissions: u64 = ps
                .iter()
                .map(|p| p.setup.retransmissions + p.teardown.retransmissions)
                .sum();
            md += &format!(
                "| {} | {window} | {:.0} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {retransmissions} |\n",
                engine.name,
                med(&|p| p.calls as f64 / p.setup.secs),
                med(&|p| p.calls as f64 / p.teardown.secs),
                lat(&|p| &p.setup, "offer"),
                lat(&|p| &p.setup, "answer"),
                lat(&|p| &p.teardown, "delete"),
                med(
                    &|p| (p.setup.cpu_total_ns() + p.teardown.cpu_total_ns()) as f64
                        / 1e3
                        / p.calls as f64
                ),
                med(&|p| p.calls as f64 / (p.setup.cpu_total_ns() as f64 / 1e9)),
            );
        }
    }
    md += "\nCPU per process (median µs per call, set-up + delete): ";
    let mut parts = Vec::new();
    for (k, engine) in e.engines.iter().enumerate() {
        for (j, (name, _)) in engine.pids.iter().enumerate() {
            let v: Vec<f64> = points
                .iter()
                .filter(|p| p.engine == k)
                .map(|p| (p.setup.cpu_ns[j] + p.teardown.cpu_ns[j]) as f64 / 1e3 / p.calls as f64)
                .collect();
            parts.push(format!("{name} {:.0}", median(v)));
        }
    }
    md += &parts.join(", ");
    md += " (over every window).\n";
    md
}

fn raw(e: &Engines, points: &[Point]) -> serde_json::Value {
    let phase = |p: &Phase| {
        json!({
            "secs": p.secs,
            "cpu_ns": p.cpu_ns,
            "latency_us": p.lat_us,
            "retransmissions": p.retransmissions,
        })
    };
    json!(points
        .iter()
        .map(|p| json!({
            "engine": e.engines[p.engine].name,
            "processes": e.engines[p.engine].pids.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            "window": p.window,
            "rep": p.rep,
            "calls": p.calls,
            "setup": phase(&p.setup),
            "teardown": phase(&p.teardown),
        }))
        .collect::<Vec<_>>())
}

/// `bench ng`: every part against the same running engines.
pub fn run(o: &NgOpts) -> Result<Report> {
    if o.calls == 0 || o.calls > 2000 || o.windows.contains(&0) {
        bail!("--ng-calls must be 1-2000 and every --windows value above 0");
    }
    let facts = host_facts();
    let engines = Engines::start()?;
    let (control_md, control_raw) = control_plane(&engines, o)?;
    Ok(Report {
        markdown: format!("{facts}\n{control_md}"),
        raw: json!({ "control_plane": control_raw }),
    })
}
