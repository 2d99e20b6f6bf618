//! `xdpfork-bench relay`: RTP relaying of many calls by xdpfork's XDP relay (with and without
//! forking), udp-relay (tokio) and rtpengine's user-space daemon, side by side.
//!
//! Input: [`Opts`] (`--relay-calls 200,2000`, `--rates`, `--reps`, `--secs`). Output: the
//! [`Report`] (Markdown tables and raw points). Call order: [`run`] builds two topologies (one
//! with fork-agent's XDP program, one without any, for the user-space relays), sets up the
//! largest calls count in every relay and times it, warms every relay up, runs the interleaved
//! sweep (for each repetition, calls count and rate, every relay in turn; a point with `n`
//! calls uses the first `n` calls set up), then a bpf_stats pass for the XDP programs' own run
//! time.
//!
//! The load is what a media relay carries: many calls, each its own port pair and SSRC, the
//! offered rate spread evenly over them (`load::generate_calls`). Call `i`'s ports:
//! - XDP relay: 10.77.1.1:(20000+i) → from 10.77.2.1:(20000+i) to the callee, `flow_add` both
//!   directions through fork-agent's control API, exactly as sip-agent installs a call.
//! - XDP relay + fork: the same at 30000+i, and every [`FORK_EVERY`]-th call (i = 0, 10, ...)
//!   forked to the speech server with `fork_start` (caller and callee stream).
//! - udp-relay: `--pairs N` from 10.77.1.1:20000 / 10.77.2.1:20000.
//! - rtpengine: `offer`/`answer` over NG per call; rtpengine picks the ports from 40000–59999 on
//!   both interfaces. Before each of its points the calls it uses are deleted and anchored
//!   afresh ([`Rtpengine`] says why).
//!
//! All calls of one relay share one caller address (the generator's socket) and one callee
//! address (the counting receiver's socket); the relays' per-call state is keyed by their own
//! port, which is what differs per call.

use std::{
    cell::RefCell,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::json;
use xdpfork_tests::{addrs, bin, Host, Scenario, Topology};

use crate::{
    cpu, load,
    load::{mono_ns, CallSet},
    napi_of, ng, one_pid, rtp_template, summarize, sweep_calls, tail, thread_all, warm_up_calls,
    xdp_run_time_calls, Opts, Report, Subject, Variant,
};

/// Most calls per relay: the port plan below (20000+i, 30000+i below 40000, rtpengine's two
/// ports per call and interface in 40000–59999) and rtpengine's four sockets per call within
/// the 20,000 open files of this host.
pub const MAX_CALLS: usize = 4000;
/// One call in this many is forked in the "XDP relay + fork" variant (10%): the relay path with
/// the fork machinery busy. How many forked streams one fork-agent core carries is
/// `xdpfork-bench fork`'s question; forking every call at 100k+ pkt/s would need ~2 cores of
/// fork-agent on this 2-CPU host and measure that instead of the relay.
pub const FORK_EVERY: usize = 10;

const K_CALLER: &str = "10.77.1.2:41000";
const K_CALLEE: &str = "10.77.2.2:41000";
const K_PORT: u16 = 20000;
const KF_CALLER: &str = "10.77.1.2:40000";
const KF_CALLEE: &str = "10.77.2.2:40000";
const KF_PORT: u16 = 30000;
const U_CALLER: &str = "10.77.1.2:42000";
const U_CALLEE: &str = "10.77.2.2:42000";
const U_PORT: u16 = 20000;
const R_CALLER: &str = "10.77.1.2:43000";
const R_CALLEE: &str = "10.77.2.2:43000";
pub const RTPENGINE_NG: &str = "127.0.0.1:2223";
const A_IP: &str = "10.77.1.1";
const B_IP: &str = "10.77.2.1";

fn at(ip: &str, port: u16, i: usize) -> String {
    format!("{ip}:{}", usize::from(port) + i)
}

/// How long setting up the calls of one relay took.
struct Setup {
    relay: &'static str,
    calls: usize,
    secs: f64,
    what: &'static str,
}

/// fork-agent and the reference speech-server, like [`Scenario::start`] but with the speech
/// server running long enough for a whole sweep (Scenario's stops after 300 s) and 20 calls per
/// WebSocket connection (the protocol's maximum; the default 3 would open a connection per
/// three forked calls).
fn start_scenario() -> Result<Scenario> {
    let mut topo = Topology::new()?;
    let speech_out = topo.dir.join("speech");
    std::fs::create_dir_all(&speech_out)?;
    let summary = topo.dir.join("speech-summary.json");
    let speech_bin = bin("speech-server")?;
    let (out_s, summary_s) = (
        speech_out.to_string_lossy().into_owned(),
        summary.to_string_lossy().into_owned(),
    );
    topo.spawn(
        "speech-server",
        Host::Speech,
        &speech_bin,
        &[
            "--listen",
            addrs::SPEECH_WS,
            "--out-dir",
            &out_s,
            "--summary",
            &summary_s,
            "--duration-secs",
            "7200",
        ],
    )?;
    let socket = topo.dir.join("fork-agent.sock");
    let config = topo.dir.join("fork-agent.toml");
    // The standard config ends inside its [[speech_server]] table: the key lands there.
    let mut text = Scenario::fork_agent_config(
        &topo.pin_dir,
        &socket,
        &topo.dir.join("state"),
        addrs::SPEECH_WS,
    );
    text.push_str("calls_threshold = 20\n");
    std::fs::write(&config, text)?;
    let mut s = Scenario {
        topo,
        socket,
        config,
        speech_out,
        summary,
    };
    s.start_agent()?;
    Ok(s)
}

/// Install `n` calls through the control API (`flow_add` both directions per call, from port
/// `port + i` on both sides); every [`FORK_EVERY`]-th call also forked when `fork`. Returns
/// (seconds of `flow_add`, seconds of `fork_start` and waiting for the forks to be active).
fn install_calls(
    s: &Scenario,
    port: u16,
    caller: &str,
    callee: &str,
    n: usize,
    fork: bool,
) -> Result<(f64, f64)> {
    let mut flow_ns = 0u64;
    let mut fork_ns = 0u64;
    let mut guids = Vec::new();
    for i in 0..n {
        let (a, b) = (at(A_IP, port, i), at(B_IP, port, i));
        let t0 = mono_ns();
        s.ctl(json!({"v":1,"op":"flow_add","flow":{"local":a,"src":b,"dst":callee}}))?;
        s.ctl(json!({"v":1,"op":"flow_add","flow":{"local":b,"src":a,"dst":caller}}))?;
        let t1 = mono_ns();
        flow_ns += t1 - t0;
        if fork && i % FORK_EVERY == 0 {
            let guid = format!("bench-fork-{i}");
            s.ctl(json!({"v":1,"op":"fork_start","fork":{
                "call_guid": guid, "call_id": format!("call-{i}"), "from": "1000", "to": "2000",
                "server": "asr", "codec": "PCMU",
                "streams": [{"channel":"caller","flow":a},{"channel":"callee","flow":b}]}}))?;
            guids.push(guid);
            fork_ns += mono_ns() - t1;
        }
        if (i + 1) % 500 == 0 {
            eprintln!(
                "  {}/{n} calls installed ({:.1} ms per call so far)",
                i + 1,
                flow_ns as f64 / 1e6 / (i + 1) as f64
            );
        }
    }
    let t = mono_ns();
    for g in &guids {
        s.wait_fork_state(g, "active")?;
    }
    fork_ns += mono_ns() - t;
    Ok((flow_ns as f64 / 1e9, fork_ns as f64 / 1e9))
}

/// Start udp-relay with `n` port pairs and wait (bounded) until it has bound them all.
fn start_udp_relay(u: &mut Topology, n: usize) -> Result<()> {
    let (a, b) = (at(A_IP, U_PORT, 0), at(B_IP, U_PORT, 0));
    let pairs = n.to_string();
    let args = [
        "--a", &a, "--a-peer", U_CALLER, "--b", &b, "--b-peer", U_CALLEE, "--pairs", &pairs,
    ];
    u.spawn("udp-relay", Host::Forker, &bin("udp-relay")?, &args)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    // It prints the pair count once every socket is bound.
    while !u.log("udp-relay").contains("pair(s)") {
        if Instant::now() > deadline || !u.is_running("udp-relay") {
            bail!("udp-relay did not bind its ports:\n{}", u.log("udp-relay"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// rtpengine's command line: user space only, two logical interfaces, NG on loopback.
pub fn rtpengine_args(pidfile: &Path) -> Vec<String> {
    [
        "--config-file=none",
        // No kernel forwarding table: every packet goes through the daemon.
        "--table=-1",
        "--interface=a/10.77.1.1",
        "--interface=b/10.77.2.1",
        &format!("--listen-ng={RTPENGINE_NG}"),
        // Two ports (RTP, RTCP) per call and interface.
        "--port-min=40000",
        "--port-max=59999",
        // One worker thread per CPU (its default, said explicitly).
        "--num-threads=2",
        // Calls stay up however long the set-up of the other relays takes (the default RTP
        // timeout of 60 s would delete calls that are silent between their points).
        "--timeout=3600",
        "--silent-timeout=3600",
        // A deleted call frees its ports at once (default: kept 30 s), so re-anchoring the
        // calls before every point (see `Rtpengine::renew`) never runs out of ports.
        "--delete-delay=0",
        "--foreground",
        "--log-stderr",
        "--log-level=5",
        &format!("--pidfile={}", pidfile.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// rtpengine's NG client and the calls it has anchored.
///
/// rtpengine stops reading a socket for good once it found more than 50 datagrams queued on it
/// (`MAX_RECV_ITERS`) five times (`MAX_RECV_LOOP_STRIKES`, both compile-time constants of
/// daemon/media_socket.c): its edge-triggered poller is never re-armed for that socket, so the
/// call is dead until it is deleted. One overloaded point would then carry dead calls into every
/// later point. So every rtpengine point starts with fresh calls ([`Rtpengine::renew`]: NG
/// `delete` and a new `offer`/`answer` for each call the point uses). This favours rtpengine:
/// a production call hit this way stays broken.
struct Rtpengine {
    ctl: std::net::UdpSocket,
    ng: SocketAddr,
    caller: SocketAddr,
    callee: SocketAddr,
    /// Call-ids of the calls now anchored, by call index.
    live: Vec<String>,
    generation: usize,
    /// Calls renewed and the time it took (delete + offer + answer).
    renewed: usize,
    renew_ns: u64,
}

impl Rtpengine {
    /// Start rtpengine in the forker namespace of `u` and anchor `n` calls over NG. Returns it,
    /// where the caller sends for each call, and the seconds the NG exchanges took (after the
    /// first call succeeded, i.e. without rtpengine's start-up).
    fn start(u: &mut Topology, n: usize) -> Result<(Rtpengine, Vec<SocketAddr>, f64)> {
        let args = rtpengine_args(&u.dir.join("rtpengine.pid"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        u.spawn(
            "rtpengine",
            Host::Forker,
            Path::new("/usr/bin/rtpengine"),
            &args,
        )
        .context("starting rtpengine (cargo xtask bench installs rtpengine-daemon)")?;
        let mut r = Rtpengine {
            ctl: u.udp_socket(Host::Forker, "127.0.0.1:0".parse()?)?,
            ng: RTPENGINE_NG.parse()?,
            caller: R_CALLER.parse()?,
            callee: R_CALLEE.parse()?,
            live: Vec::new(),
            generation: 0,
            renewed: 0,
            renew_ns: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::with_capacity(n);
        loop {
            match r.anchor("bench-0-0") {
                Ok(to) => break out.push(to),
                Err(_) if Instant::now() < deadline && u.is_running("rtpengine") => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e.context(format!("rtpengine log:\n{}", u.log("rtpengine")))),
            }
        }
        r.live.push("bench-0-0".into());
        let t0 = mono_ns();
        for i in 1..n {
            let id = format!("bench-0-{i}");
            out.push(r.anchor(&id).with_context(|| {
                format!("anchoring call {i}: {}", tail(&u.log("rtpengine"), 5))
            })?);
            r.live.push(id);
        }
        // The first call's exchange is not timed (it waited for start-up): scale to n calls.
        let secs = (mono_ns() - t0) as f64 / 1e9 * n as f64 / (n - 1).max(1) as f64;
        Ok((r, out, secs))
    }

    fn anchor(&self, id: &str) -> Result<SocketAddr> {
        Ok(ng::anchor_call(&self.ctl, self.ng, id, self.caller, self.callee)?.0)
    }

    /// Replace the first `n` calls by fresh ones and point `set`'s destinations at them.
    fn renew(&mut self, n: usize, set: &RefCell<CallSet>) -> Result<()> {
        self.generation += 1;
        let t0 = mono_ns();
        let mut dests = Vec::with_capacity(n);
        for i in 0..n {
            ng::delete_call(&self.ctl, self.ng, &self.live[i])?;
            let id = format!("bench-{}-{i}", self.generation);
            dests.push(load::sockaddr(self.anchor(&id)?)?);
            self.live[i] = id;
        }
        self.renew_ns += mono_ns() - t0;
        self.renewed += n;
        set.borrow_mut().dests[..n].copy_from_slice(&dests);
        Ok(())
    }
}

/// The callee-facing and caller-facing addresses of `n` calls from `port` on.
fn dests(port: u16, n: usize) -> Result<Vec<SocketAddr>> {
    (0..n)
        .map(|i| at(A_IP, port, i).parse().context("address"))
        .collect()
}

pub fn run(opts: &Opts) -> Result<Report> {
    let n_max = *opts
        .relay_calls
        .iter()
        .max()
        .context("--relay-calls is empty")?;
    if opts.relay_calls.contains(&0) || n_max > MAX_CALLS {
        bail!("--relay-calls: each count in 1..={MAX_CALLS}");
    }
    let facts = crate::host_facts();
    let mut setups = Vec::new();
    eprintln!("xdpfork-bench relay: kernel topology, {n_max} calls per XDP variant");
    let s = start_scenario()?;
    let (flow_s, _) = install_calls(&s, K_PORT, K_CALLER, K_CALLEE, n_max, false)?;
    setups.push(Setup {
        relay: "xdpfork XDP relay",
        calls: n_max,
        secs: flow_s,
        what: "2 × flow_add per call (control API)",
    });
    let (flow_s, fork_s) = install_calls(&s, KF_PORT, KF_CALLER, KF_CALLEE, n_max, true)?;
    setups.push(Setup {
        relay: "xdpfork XDP relay + fork",
        calls: n_max,
        secs: flow_s,
        what: "2 × flow_add per call (control API)",
    });
    setups.push(Setup {
        relay: "xdpfork XDP relay + fork",
        calls: n_max.div_ceil(FORK_EVERY),
        secs: fork_s,
        what: "fork_start per forked call, until active",
    });
    let k_napi = thread_all(&s.topo, &[Host::Forker, Host::Callee, Host::Speech])?;

    eprintln!("xdpfork-bench relay: user-space topology");
    let mut u = Topology::new()?;
    let t0 = mono_ns();
    start_udp_relay(&mut u, n_max)?;
    setups.push(Setup {
        relay: "udp-relay (tokio)",
        calls: n_max,
        secs: (mono_ns() - t0) as f64 / 1e9,
        what: "process start and binding 2 sockets per call",
    });
    let (mut rtpe, rtpengine_at, ng_s) = Rtpengine::start(&mut u, n_max)?;
    setups.push(Setup {
        relay: "rtpengine (user space)",
        calls: n_max,
        secs: ng_s,
        what: "NG offer + answer per call",
    });
    let u_napi = thread_all(&u, &[Host::Forker, Host::Callee])?;

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
    let variant = |name: &str,
                   t: &Topology,
                   caller: &str,
                   callee: &str,
                   (relay, other): (cpu::Tasks, cpu::Tasks)|
     -> Result<Variant> {
        Ok(Variant {
            name: name.into(),
            tx: t.udp_socket(Host::Caller, caller.parse()?)?,
            rx: t.udp_socket(Host::Callee, callee.parse()?)?,
            template: rtp_template(),
            rx_stamp_at: 12,
            relay,
            other,
            sent: Default::default(),
            ns: [Host::Caller, Host::Forker, Host::Callee].map(|h| t.ns(h)),
        })
    };
    let variants = [
        (
            variant(
                "xdpfork XDP relay",
                &s.topo,
                K_CALLER,
                K_CALLEE,
                kernel_tasks(false),
            )?,
            dests(K_PORT, n_max)?,
        ),
        (
            variant(
                "xdpfork XDP relay + fork",
                &s.topo,
                KF_CALLER,
                KF_CALLEE,
                kernel_tasks(true),
            )?,
            dests(KF_PORT, n_max)?,
        ),
        (
            variant(
                "udp-relay (tokio)",
                &u,
                U_CALLER,
                U_CALLEE,
                user_tasks(udp_relay, "udp-relay"),
            )?,
            dests(U_PORT, n_max)?,
        ),
        (
            variant(
                "rtpengine (user space)",
                &u,
                R_CALLER,
                R_CALLEE,
                user_tasks(rtpengine, "rtpengine"),
            )?,
            rtpengine_at,
        ),
    ];
    let sets: Vec<RefCell<CallSet>> = variants
        .iter()
        .enumerate()
        .map(|(k, (_, d))| {
            Ok(RefCell::new(CallSet::rtp(
                d,
                0x5eed_0000 + (k as u32) * 0x10_0000,
            )?))
        })
        .collect::<Result<_>>()?;
    let subjects: Vec<Subject> = variants
        .iter()
        .zip(&sets)
        .map(|((v, _), c)| (v, Some(c)))
        .collect();

    let mut run = 0u32;
    let mut warnings = String::new();
    for s in &subjects {
        run += 1;
        // A relay that fails its warm-up is still measured (its loss is the finding), but the
        // report says so; the kernel variants must work, or the setup is broken.
        if let Err(e) = warm_up_calls(*s, n_max, run) {
            if s.0.name.starts_with("xdpfork") {
                return Err(e);
            }
            eprintln!("xdpfork-bench relay: warning: {e:#}");
            warnings.push_str(&format!("Warning: {e:#}.\n\n"));
        }
    }
    eprintln!(
        "xdpfork-bench relay: {} reps x {:?} calls x {} rates x {} relays, {} s each",
        opts.reps,
        opts.relay_calls,
        opts.rates.len(),
        subjects.len(),
        opts.secs
    );
    const RTPENGINE: usize = 3;
    let points = sweep_calls(&subjects, &opts.relay_calls, opts, &mut run, &mut |k, n| {
        if k == RTPENGINE {
            rtpe.renew(n, &sets[RTPENGINE])?;
        }
        Ok(())
    })?;
    if rtpe.renewed > 0 {
        setups.push(Setup {
            relay: "rtpengine (user space)",
            calls: rtpe.renewed,
            secs: rtpe.renew_ns as f64 / 1e9,
            what: "fresh calls before each point: NG delete + offer + answer per call",
        });
    }

    // XDP programs' own run time, in a separate pass with bpf_stats on.
    let mut xdp_rows = Vec::new();
    for sub in &subjects[..2] {
        run += 1;
        let ns = s.topo.ns(Host::Forker);
        for row in xdp_run_time_calls(*sub, n_max, &ns, 100_000, opts.secs, run)? {
            xdp_rows.push((sub.0.name.clone(), row));
        }
    }
    let counters = s.counters()?;

    let names: Vec<String> = subjects.iter().map(|s| s.0.name.clone()).collect();
    let mut md = format!(
        "## `cargo xtask bench relay`\n\n{facts}\nRTP datagrams of 172 bytes (12-byte header + 160 bytes G.711), caller → callee, the offered rate spread evenly over {:?} calls (each its own port pair and SSRC; per call rate = rate / calls); {} repetitions × {} s per point, medians shown.\n\n",
        opts.relay_calls, opts.reps, opts.secs
    );
    md.push_str(&warnings);
    md.push_str(&summarize(&points, &names, &opts.rates, "pkt"));
    md.push_str("\nSet-up of the calls (once, for the largest calls count):\n\n| relay | calls | what | total (s) | per call (ms) |\n|---|---|---|---|---|\n");
    for st in &setups {
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} |\n",
            st.relay,
            st.calls,
            st.what,
            st.secs,
            st.secs * 1e3 / st.calls.max(1) as f64
        ));
    }
    md.push_str(&format!(
        "\nrtpengine log (last lines):\n\n```\n{}\n```\n",
        tail(&u.log("rtpengine"), 8)
    ));
    md.push_str(&format!("\nXDP program run time (bpf_stats, separate pass at 100k pkt/s over {n_max} calls):\n\n| relay | device | program | runs | ns per run | runs per delivered packet |\n|---|---|---|---|---|---|\n"));
    for (v, r) in &xdp_rows {
        md.push_str(&format!(
            "| {v} | {} | {} | {} | {:.0} | {:.2} |\n",
            r.dev, r.prog, r.runs, r.ns_per_run, r.runs_per_delivered
        ));
    }
    let rtpengine_log: PathBuf = u.dir.join("rtpengine.log");
    Ok(Report {
        markdown: md,
        raw: json!({
            "facts": facts,
            "calls": opts.relay_calls,
            "fork_every": FORK_EVERY,
            "rtpengine_args": rtpengine_args(Path::new("rtpengine.pid")),
            "rtpengine_log": rtpengine_log,
            "setup": setups.iter().map(|s| json!({"relay": s.relay, "calls": s.calls, "what": s.what, "secs": s.secs})).collect::<Vec<_>>(),
            "points": points.iter().map(crate::Point::json).collect::<Vec<_>>(),
            "xdp": xdp_rows.iter().map(|(v, r)| json!({"variant": v, "row": r.json()})).collect::<Vec<_>>(),
            "fork_agent_kernel_counters": counters["kernel"].clone(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_plan_fits_below_rtpengine_and_the_other_variant() {
        let last = |port: u16| usize::from(port) + MAX_CALLS - 1;
        assert!(last(K_PORT) < usize::from(KF_PORT), "XDP variants apart");
        assert!(last(KF_PORT) < 40000, "below rtpengine's range");
        assert!(last(U_PORT) < 40000);
        assert_eq!(at(A_IP, K_PORT, 7), "10.77.1.1:20007");
        let d = dests(KF_PORT, 3).expect("addresses");
        assert_eq!(d[2], "10.77.1.1:30002".parse().expect("addr"));
    }

    #[test]
    fn rtpengine_runs_user_space_only_with_room_for_every_call() {
        let a = rtpengine_args(Path::new("/x.pid"));
        assert!(a.contains(&"--table=-1".to_owned()));
        let port = |k: &str| -> usize {
            a.iter()
                .find_map(|s| s.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .expect("port option")
        };
        // RTP and RTCP per call on each interface.
        assert!(port("--port-max=") - port("--port-min=") + 1 >= 2 * MAX_CALLS);
    }
}
