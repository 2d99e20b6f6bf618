//! `xdpfork-bench calls`: SIP calls per second and concurrent calls through sip-agent, with
//! media anchored (flows in fork-agent's XDP relay) and forked (fork-agent streams both parties
//! to a speech receiver).
//!
//! Input: [`Opts`] (`--cps 5,10,20`, `--calls N` per CPS point, `--hold S` seconds per call,
//! `--concurrent 100,200` held-call points, `--rtp yes|no`). Output: a Markdown report (one row
//! per CPS point and per concurrency point, the highest CPS with no failed call, the most calls
//! held with all forked, where the first failure was and what it was) plus raw points.
//!
//! Call order: [`run`] builds one topology (caller 10.77.1.2 → sip-agent/fork-agent in the
//! forker → callee 10.77.2.2, speech receiver at 10.77.3.2:9100), starts a light WebSocket
//! receiver (a thread of this process that counts each stream's `start` per call GUID and the
//! audio frames), fork-agent, sip-agent (with `--admin-socket`) and a sipp UAS in the callee
//! namespace (a copy of tests/sipp/uas_answer.xml that plays its own `rtp_stream` tone per
//! call). Per CPS point a sipp UAC (tests/sipp/bench_uac.xml) in the caller namespace places
//! `--calls` calls at the rate: INVITE, 200, ACK, RTP (`rtp_stream`, PCMU, 50 packets/s from a
//! port of its own per call, and the callee's tone the same way), the START INFO and its 200,
//! `--hold` seconds, BYE. A point passes when sipp counts every call successful and none failed,
//! every call's two streams announced `start` at the receiver, and within 10 s after the last BYE
//! fork-agent has no flow and sip-agent's `show calls` is 0. The sweep stops at the first failing point. Then per concurrency point
//! the same scenario holds N calls at once (calls placed at a moderate rate, held long enough to
//! overlap), and while they are all up the driver reads sip-agent's call counts, fork-agent's
//! flows and forks and the forked frame rate at the receiver. Over the same 5 s it takes two
//! [`Snapshot`]s of every stage a forked frame passes (the generator's interface and UDP
//! counters, `show_flows` per direction, `show_counters`, the receiver) and reports each stage
//! per call per second ([`Loss`]), so a shortfall at the receiver is placed at one stage.
//! CPU per call: the scheduler's run time of every thread of sip-agent and of fork-agent (see
//! cpu.rs) over the point, divided by its calls.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde_json::json;
use xdpfork_tests::{bin, control, Host, Topology};

use crate::{cpu, ws, Report};

const WS: &str = "10.77.3.2:9100";
const AGENT_A: &str = "10.77.1.1:5060";
const CALLER_IP: &str = "10.77.1.2";
const CALLEE_IP: &str = "10.77.2.2";
/// Seconds sip-agent and fork-agent get to clear a point's calls after its last BYE.
const DRAIN_SECS: u64 = 10;
/// Rate at which a concurrency point places its calls.
const HOLD_CPS: u32 = 50;

/// Options of the calls benchmark (`--cps`, `--calls`, `--hold`, `--concurrent`, `--rtp`).
#[derive(Clone, Debug, PartialEq)]
pub struct Opts {
    /// Calls per second of the sweep, rising.
    pub cps: Vec<u32>,
    /// Calls per CPS point.
    pub calls: usize,
    /// Seconds each call of a CPS point stays up after its fork request.
    pub hold: f64,
    /// Calls held up at once, per concurrency point.
    pub concurrent: Vec<usize>,
    /// Real RTP per call (sipp `rtp_stream` from both caller and callee).
    pub rtp: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            cps: vec![5, 10, 20, 50, 100, 200],
            calls: 200,
            hold: 5.0,
            concurrent: vec![100, 250, 500],
            rtp: true,
        }
    }
}

fn numbers<T: std::str::FromStr>(name: &str, v: &str) -> Result<Vec<T>> {
    v.split(',')
        .map(|n| {
            n.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("{name}: `{n}` is not a number"))
        })
        .collect()
}

impl Opts {
    /// The calls options among the driver's `--name value` pairs; unknown names are refused.
    pub fn from_args(args: &[(String, String)]) -> Result<Opts> {
        let mut o = Opts::default();
        for (k, v) in args {
            match k.as_str() {
                "--cps" => o.cps = numbers("--cps", v)?,
                "--calls" => o.calls = v.parse().context("--calls: a number")?,
                "--hold" => o.hold = v.parse().context("--hold: seconds")?,
                "--concurrent" => o.concurrent = numbers("--concurrent", v)?,
                "--rtp" => {
                    o.rtp = match v.as_str() {
                        "yes" => true,
                        "no" => false,
                        _ => bail!("--rtp: yes or no"),
                    }
                }
                other => bail!("unknown calls option {other}"),
            }
        }
        if o.cps.contains(&0) || o.calls == 0 || !(0.1..=600.0).contains(&o.hold) {
            bail!("--cps must be > 0, --calls > 0, --hold in [0.1, 600] s");
        }
        if o.concurrent.contains(&0) {
            bail!("--concurrent counts must be > 0");
        }
        Ok(o)
    }
}

/// What the speech receiver saw: `start` messages per call GUID, `stop`s and audio frames.
#[derive(Default)]
struct Receiver {
    starts: Mutex<HashMap<String, u32>>,
    stops: AtomicU64,
    frames: AtomicU64,
}

/// The call GUID of a `start` message (docs/speech-protocol.md §3), if it is one.
fn start_guid(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    (v["type"] == "start").then(|| v["call_guid"].as_str().map(str::to_owned))?
}

/// A TCP listener bound inside `h`'s namespace.
fn tcp_listener(t: &Topology, h: Host, bind: SocketAddr) -> Result<TcpListener> {
    let path = format!("/run/netns/{}", t.ns(h));
    std::thread::spawn(move || -> Result<TcpListener> {
        let f = std::fs::File::open(&path)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(TcpListener::bind(bind)?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns helper thread panicked"))?
}

/// One thread with a current-thread tokio runtime: accepts fork-agent's WebSocket connections
/// (echoing the subprotocol, docs/speech-protocol.md §1) and counts what arrives.
fn spawn_ws_receiver(listener: TcpListener, r: Arc<Receiver>, stop: Arc<AtomicBool>) {
    ws::spawn_acceptor(
        "calls",
        listener,
        stop,
        || {},
        move |tcp| {
            let r = r.clone();
            async move {
                let Some(mut ws) = ws::accept_speech(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    use tokio_tungstenite::tungstenite::Message;
                    match msg {
                        Message::Binary(_) => {
                            r.frames.fetch_add(1, Ordering::Relaxed);
                        }
                        Message::Text(t) => {
                            if let Some(g) = start_guid(&t) {
                                let mut s = r.starts.lock().unwrap_or_else(|e| e.into_inner());
                                *s.entry(g).or_insert(0) += 1;
                            } else if t.contains("\"stop\"") {
                                r.stops.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {}
                    }
                }
            }
        },
    );
}

/// sipp's final statistics (`-trace_stat` CSV, cumulative columns of its last line).
#[derive(Clone, Debug, Default, PartialEq)]
struct SippStats {
    successful: u64,
    failed: u64,
    retransmissions: u64,
    /// Non-zero `Failed*` columns (sipp's failure reasons) and unexpected/dead-call messages.
    reasons: Vec<(String, u64)>,
    /// INVITE → 200 (rtd 1) and START INFO → 200 (rtd 2), ms, averages over the run.
    rtd_invite_ms: f64,
    rtd_info_ms: f64,
}

/// sipp's time format in the CSV: `HH:MM:SS:uuuuuu` (or plain milliseconds).
fn sipp_ms(v: &str) -> f64 {
    let parts: Vec<&str> = v.trim().split(':').collect();
    match parts.as_slice() {
        [h, m, s, us] => {
            let f = |x: &str| x.parse::<f64>().unwrap_or(0.0);
            (f(h) * 3600.0 + f(m) * 60.0 + f(s)) * 1000.0 + f(us) / 1000.0
        }
        _ => v.trim().parse().unwrap_or(0.0),
    }
}

fn parse_stat_csv(text: &str) -> Option<SippStats> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let head: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.next_back()?.split(';').collect();
    let get = |name: &str| -> Option<&str> {
        head.iter()
            .position(|h| *h == name)
            .and_then(|i| last.get(i).copied())
    };
    let num = |name: &str| get(name).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let reasons = head
        .iter()
        .filter(|h| {
            h.ends_with("(C)")
                && (h.starts_with("Failed")
                    || h.starts_with("OutOfCallMsgs")
                    || h.starts_with("DeadCallMsgs"))
                && **h != "FailedCall(C)"
        })
        .map(|h| (h.trim_end_matches("(C)").to_owned(), num(h)))
        .filter(|(_, n)| *n > 0)
        .collect();
    Some(SippStats {
        successful: num("SuccessfulCall(C)"),
        failed: num("FailedCall(C)"),
        retransmissions: num("Retransmissions(C)"),
        reasons,
        rtd_invite_ms: get("ResponseTime1(C)").map_or(0.0, sipp_ms),
        rtd_info_ms: get("ResponseTime2(C)").map_or(0.0, sipp_ms),
    })
}

/// The running system under test.
struct Bench {
    t: Topology,
    fork_sock: PathBuf,
    admin_sock: PathBuf,
    rx: Arc<Receiver>,
    stop: Arc<AtomicBool>,
    sip_pid: i32,
    fork_pid: i32,
    /// The UAC scenario with the RTP line filled in or removed.
    uac: PathBuf,
    /// Lines of sip-agent's and fork-agent's logs already reported.
    log_seen: HashMap<&'static str, usize>,
}

/// 2 s of a 400 Hz tone as G.711 µ-law (looped by sipp): audio the speech side could check.
fn pcmu_tone() -> Vec<u8> {
    (0..16_000)
        .map(|i| {
            let s =
                (f64::sin(2.0 * std::f64::consts::PI * 400.0 * i as f64 / 8000.0) * 8000.0) as i16;
            linear_to_ulaw(s)
        })
        .collect()
}

/// ITU-T G.711 µ-law encoding of one 16-bit sample.
fn linear_to_ulaw(s: i16) -> u8 {
    const BIAS: i32 = 0x84;
    let mut v = i32::from(s);
    let sign = if v < 0 {
        v = -v;
        0x80
    } else {
        0
    };
    let v = (v.min(32_635) + BIAS) as u32;
    let exp = (31 - v.leading_zeros()).saturating_sub(7).min(7);
    let mant = (v >> (exp + 3)) & 0x0f;
    !(sign | (exp << 4) as u8 | mant as u8)
}

fn sipp_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sipp")
        .join(name)
}

impl Bench {
    fn start(rtp: bool) -> Result<Bench> {
        let mut t = Topology::new()?;
        let rx = Arc::new(Receiver::default());
        let stop = Arc::new(AtomicBool::new(false));
        spawn_ws_receiver(
            tcp_listener(&t, Host::Speech, WS.parse()?)?,
            rx.clone(),
            stop.clone(),
        );
        let dir = t.dir.clone();
        let fork_sock = dir.join("fork-agent.sock");
        let fork_cfg = dir.join("fork-agent.toml");
        // The standard config ends inside its [[speech_server]] table: the key lands there.
        let mut text = xdpfork_tests::Scenario::fork_agent_config(
            &t.pin_dir,
            &fork_sock,
            &dir.join("state"),
            WS,
        );
        text.push_str("calls_threshold = 20\n");
        std::fs::write(&fork_cfg, text)?;
        let cfg = fork_cfg.to_string_lossy().into_owned();
        t.spawn_env(
            "fork-agent",
            Host::Forker,
            &bin("fork-agent")?,
            &["run", "--config", &cfg],
            &[("RUST_LOG", "fork_agent=info")],
        )?;
        t.wait_fork_agent(&fork_sock, "fork-agent")?;

        let sip_cfg = dir.join("sip-agent.toml");
        std::fs::write(
            &sip_cfg,
            format!(
                r#"[sip]
udp = ["10.77.1.1:5060", "10.77.2.1:5060"]

[media]
ip = "10.77.1.1"
ports = "20000-59999"

[fork_agent]
socket = "{sock}"
speech_server = "asr"

[security]
# The caller sipp is also the controller (it sends the fork INFOs).
controllers = ["{CALLER_IP}"]

[state]
# The call journal in the run's directory, as production journals every call.
dir = "{state}"

[[route]]
prefix = "2"
next_hop = "{CALLEE_IP}:5060:udp"
bind_sip = "10.77.2.1"
bind_media = "10.77.2.1"
"#,
                sock = fork_sock.display(),
                state = dir.join("sip-state").display(),
            ),
        )?;
        let admin_sock = dir.join("sip-admin.sock");
        let (sc, sa) = (
            sip_cfg.to_string_lossy().into_owned(),
            admin_sock.to_string_lossy().into_owned(),
        );
        t.spawn_env(
            "sip-agent",
            Host::Forker,
            &bin("sip-agent")?,
            &["run", "--config", &sc, "--admin-socket", &sa],
            &[("RUST_LOG", "sip_agent=info")],
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !t.log("sip-agent").contains("sip-agent running") || !admin_sock.exists() {
            if Instant::now() > deadline || !t.is_running("sip-agent") {
                bail!("sip-agent did not start:\n{}", t.log("sip-agent"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }

        let tone = dir.join("tone.pcmu");
        std::fs::write(&tone, pcmu_tone())?;
        // The callee answers every call and plays the tone from a port of its own per call
        // (its copy of uas_answer.xml with `rtp_stream` after the ACK), so both directions of
        // every call carry 50 packets/s. sipp's `-rtp_echo` answers all calls on one socket,
        // whose receive buffer overflowed above 100 calls: the echo, not the relay, lost audio.
        let uas_text = std::fs::read_to_string(sipp_file("uas_answer.xml"))?;
        let uas_text = if rtp {
            let ack = r#"<recv request="ACK" crlf="true"/>"#;
            if !uas_text.contains(ack) || !uas_text.contains("m=audio [media_port]") {
                bail!("uas_answer.xml: no ACK receive or media line to add the callee's audio to");
            }
            let play = format!(
                "{ack}\n  <nop><action><exec rtp_stream=\"{},-1,0\"/></action></nop>",
                tone.display()
            );
            uas_text
                .replacen("m=audio [media_port]", "m=audio [rtpstream_audio_port]", 1)
                .replacen(ack, &play, 1)
        } else {
            uas_text
        };
        let uas_path = dir.join("bench_uas.xml");
        std::fs::write(&uas_path, uas_text)?;
        let uas = uas_path.to_string_lossy().into_owned();
        let err = dir.join("callee.err").to_string_lossy().into_owned();
        t.spawn(
            "callee",
            Host::Callee,
            Path::new("/usr/bin/sipp"),
            &[
                "-sf",
                &uas,
                "-i",
                CALLEE_IP,
                "-p",
                "5060",
                "-mi",
                CALLEE_IP,
                "-mp",
                "40000",
                "-key",
                "pt",
                "0",
                "-key",
                "codec",
                "PCMU",
                "-nostdin",
                "-trace_err",
                "-error_file",
                &err,
            ],
        )?;

        let text = std::fs::read_to_string(sipp_file("bench_uac.xml"))?;
        let text = if rtp {
            text.replace("@PCMU@", &tone.to_string_lossy())
        } else {
            text.lines()
                .filter(|l| !l.contains("rtp_stream="))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let uac = dir.join("bench_uac.xml");
        std::fs::write(&uac, text)?;

        let sip_pid = crate::one_pid(&t, Host::Forker, "sip-agent")?;
        let fork_pid = crate::one_pid(&t, Host::Forker, "fork-agent")?;
        // sipp binds its SIP socket within milliseconds; give it a moment before the INVITEs.
        std::thread::sleep(Duration::from_millis(400));
        if !t.is_running("callee") {
            bail!("callee sipp exited at start:\n{}", t.log("callee"));
        }
        Ok(Bench {
            t,
            fork_sock,
            admin_sock,
            rx,
            stop,
            sip_pid,
            fork_pid,
            uac,
            log_seen: HashMap::new(),
        })
    }

    /// sip-agent's `show calls` (aggregate, enhanced, standard and peaks).
    fn calls(&self) -> Result<serde_json::Value> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.admin_sock)
            .context("sip-agent admin socket")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"show calls\n")?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        serde_json::from_str(&line).with_context(|| format!("show calls answered {line:?}"))
    }

    fn flows(&self) -> Result<Vec<serde_json::Value>> {
        let f = control(&self.fork_sock, &json!({"v":1,"op":"show_flows"}))?;
        Ok(f.as_array().cloned().unwrap_or_default())
    }

    fn forks(&self) -> Result<usize> {
        let f = control(&self.fork_sock, &json!({"v":1,"op":"show_forks"}))?;
        Ok(f.as_array().map_or(0, Vec::len))
    }

    /// Reads every stage counter of the loss-location row (see [`Loss`]).
    fn snapshot(&self) -> Result<Snapshot> {
        let flows = self.flows()?;
        let c = control(&self.fork_sock, &json!({"v":1,"op":"show_counters"}))?;
        let kernel = c["kernel"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let servers = c["servers"].as_object().cloned().unwrap_or_default();
        let server_sum =
            |k: &str| -> u64 { servers.values().map(|s| s[k].as_u64().unwrap_or(0)).sum() };
        let rx_frames = self.rx.frames.load(Ordering::Relaxed);
        // Interface counters and /proc/net/snmp in one `cat` per namespace.
        let read = |h: Host, dev: &str| -> Result<(u64, u64, HashMap<String, u64>)> {
            let out = xdpfork_tests::ns_run(
                &self.t.ns(h),
                "cat",
                &[
                    &format!("/sys/class/net/{dev}/statistics/tx_packets"),
                    &format!("/sys/class/net/{dev}/statistics/rx_packets"),
                    "/proc/net/snmp",
                ],
            )?;
            let mut lines = out.lines();
            let mut num = || -> u64 {
                lines
                    .next()
                    .and_then(|l| l.trim().parse().ok())
                    .unwrap_or(0)
            };
            let (tx, rx) = (num(), num());
            Ok((tx, rx, udp_snmp(&out)))
        };
        let (ca0_tx, ca0_rx, caller_udp) = read(Host::Caller, "ca0")?;
        let (cb0_tx, cb0_rx, callee_udp) = read(Host::Callee, "cb0")?;
        Ok(Snapshot {
            flows,
            kernel,
            xsk_frames: c["user"]["xsk_frames"].as_u64().unwrap_or(0),
            media_queue_drops: c["user"]["media_queue_drops"].as_u64().unwrap_or(0),
            frames_sent: server_sum("frames_sent"),
            frames_dropped: server_sum("frames_dropped"),
            rx_frames,
            ca0_tx,
            ca0_rx,
            cb0_rx,
            cb0_tx,
            caller_udp,
            callee_udp,
        })
    }

    /// Warning and error lines `name` logged since the last call.
    fn new_warnings(&mut self, name: &'static str) -> Vec<String> {
        let log = self.t.log(name);
        let lines: Vec<&str> = log.lines().collect();
        let seen = self.log_seen.insert(name, lines.len()).unwrap_or(0);
        lines[seen.min(lines.len())..]
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(|l| l.to_string())
            .collect()
    }

    /// Starts the caller: `calls` calls at `cps`, each held `hold_ms` after its fork request,
    /// at most `limit` at once; call GUIDs are `{run:x}-N`.
    fn spawn_caller(
        &self,
        run: u32,
        cps: u32,
        calls: usize,
        hold_ms: u64,
        limit: usize,
    ) -> Result<(Child, PathBuf, PathBuf)> {
        let stat = self.t.dir.join(format!("caller-{run}.csv"));
        let err = self.t.dir.join(format!("caller-{run}.err"));
        let _ = std::fs::remove_file(&stat);
        // Bound: placing the calls, holding them, and a margin for retransmissions.
        let timeout = calls as u64 / u64::from(cps) + hold_ms / 1000 + 60;
        let uac = self.uac.to_string_lossy().into_owned();
        let mut cmd = self.t.command(Host::Caller, "/usr/bin/sipp")?;
        cmd.args([
            AGENT_A,
            "-sf",
            &uac,
            "-s",
            "2000",
            "-i",
            CALLER_IP,
            "-p",
            "5060",
            "-mi",
            CALLER_IP,
            "-mp",
            "6000",
            "-aa",
            "-nostdin",
            "-r",
            &cps.to_string(),
            "-m",
            &calls.to_string(),
            "-l",
            &limit.to_string(),
            "-d",
            &hold_ms.to_string(),
            "-key",
            "run",
            &format!("{run:x}"),
            "-key",
            "url",
            &format!("ws://{WS}/stream"),
            "-trace_stat",
            "-stf",
            &stat.to_string_lossy(),
            "-fd",
            "1",
            "-trace_err",
            "-error_file",
            &err.to_string_lossy(),
            "-timeout",
            &format!("{timeout}s"),
            "-timeout_error",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let child = cmd.spawn().context("starting caller sipp")?;
        Ok((child, stat, err))
    }

    /// Waits until fork-agent has no flow and sip-agent no call (bounded); returns what was
    /// left (flows, calls).
    fn drain(&self) -> Result<(usize, u64)> {
        let deadline = Instant::now() + Duration::from_secs(DRAIN_SECS);
        loop {
            let flows = self.flows()?.len();
            let calls = self.calls()?["aggregate"].as_u64().unwrap_or(u64::MAX);
            if (flows == 0 && calls == 0) || Instant::now() > deadline {
                return Ok((flows, calls));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Calls of run `run` (GUID `{run:x}-N`, N = 1..=calls) whose two streams both started.
    fn forked_calls(&self, run: u32, calls: usize) -> usize {
        let s = self.rx.starts.lock().unwrap_or_else(|e| e.into_inner());
        (1..=calls)
            .filter(|n| s.get(&format!("{run:x}-{n}")).copied().unwrap_or(0) >= 2)
            .count()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        // The topology ends the processes; the receiver thread ends here.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits (bounded) for the caller to exit; returns its exit success, stats and first errors.
fn finish_caller(
    mut child: Child,
    stat: &Path,
    err: &Path,
    bound: Duration,
) -> Result<(bool, SippStats, String, u64)> {
    let pid = child.id() as i32;
    let deadline = Instant::now() + bound;
    let mut cpu_ns = 0;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        cpu_ns = cpu::process_cpu_ns(pid).max(cpu_ns);
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let stats = std::fs::read_to_string(stat)
        .ok()
        .and_then(|t| parse_stat_csv(&t))
        .unwrap_or_default();
    let errors = std::fs::read_to_string(err).unwrap_or_default();
    let first: Vec<&str> = errors
        .lines()
        .chain(stderr.lines())
        .filter(|l| !l.trim().is_empty())
        .take(6)
        .collect();
    Ok((
        status.is_some_and(|s| s.success()),
        stats,
        first.join(" / "),
        cpu_ns,
    ))
}

/// One CPS point.
#[derive(Debug)]
struct CpsPoint {
    cps: u32,
    calls: usize,
    sipp_ok: bool,
    stats: SippStats,
    forked: usize,
    flows_left: usize,
    calls_left: u64,
    secs: f64,
    sip_cpu_ns: u64,
    fork_cpu_ns: u64,
    sipp_cpu_ns: u64,
    frames: u64,
    errors: String,
    warnings: Vec<String>,
}

impl CpsPoint {
    fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if !self.sipp_ok {
            f.push("sipp exited with an error".to_owned());
        }
        if self.stats.failed > 0 || self.stats.successful < self.calls as u64 {
            f.push(format!(
                "{} of {} calls successful, {} failed{}",
                self.stats.successful,
                self.calls,
                self.stats.failed,
                if self.stats.reasons.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        self.stats
                            .reasons
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ));
        }
        if self.forked < self.calls {
            f.push(format!(
                "{} of {} calls had both streams started at the speech side",
                self.forked, self.calls
            ));
        }
        if self.flows_left > 0 || self.calls_left > 0 {
            f.push(format!(
                "{DRAIN_SECS} s after the last BYE: {} flows in fork-agent, {} calls in sip-agent",
                self.flows_left, self.calls_left
            ));
        }
        f
    }

    fn json(&self) -> serde_json::Value {
        json!({"cps": self.cps, "calls": self.calls, "sipp_ok": self.sipp_ok,
               "successful": self.stats.successful, "failed": self.stats.failed,
               "retransmissions": self.stats.retransmissions,
               "failure_reasons": self.stats.reasons.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
               "rtd_invite_ms": self.stats.rtd_invite_ms, "rtd_info_ms": self.stats.rtd_info_ms,
               "forked_calls": self.forked, "flows_left": self.flows_left,
               "calls_left": self.calls_left, "secs": self.secs,
               "sip_agent_cpu_ns": self.sip_cpu_ns, "fork_agent_cpu_ns": self.fork_cpu_ns,
               "sipp_caller_cpu_ns": self.sipp_cpu_ns, "forked_frames": self.frames,
               "sipp_errors": self.errors, "agent_warnings": self.warnings,
               "failures": self.failures()})
    }
}

/// One concurrency point.
#[derive(Debug)]
struct HoldPoint {
    target: usize,
    /// The most calls sip-agent counted up at once, and enhanced (forked) among them then.
    aggregate: u64,
    enhanced: u64,
    /// fork-agent's flows, flows the kernel relayed (`path` kernel…), and forks at that moment.
    flows: usize,
    kernel_flows: usize,
    forks: usize,
    /// Calls of the point whose two streams started at the receiver.
    forked: usize,
    /// Forked audio frames per second at the receiver while all calls were up.
    frames_per_s: f64,
    sipp_ok: bool,
    stats: SippStats,
    flows_left: usize,
    calls_left: u64,
    sip_cpu_ns: u64,
    fork_cpu_ns: u64,
    /// fork-agent and sip-agent CPU (cores) while all calls were up and nothing was set up.
    fork_cores_held: f64,
    sip_cores_held: f64,
    /// Stage counts over the 5 s window (where forked frames go missing).
    loss: Loss,
    errors: String,
    warnings: Vec<String>,
}

impl HoldPoint {
    fn passed(&self) -> bool {
        self.sipp_ok
            && self.stats.failed == 0
            && self.stats.successful == self.target as u64
            && self.enhanced == self.target as u64
            && self.forked == self.target
            && self.flows_left == 0
            && self.calls_left == 0
    }

    fn json(&self) -> serde_json::Value {
        json!({"target": self.target, "aggregate": self.aggregate, "enhanced": self.enhanced,
               "flows": self.flows, "kernel_flows": self.kernel_flows, "forks": self.forks,
               "forked_calls": self.forked, "frames_per_s": self.frames_per_s,
               "sipp_ok": self.sipp_ok, "successful": self.stats.successful,
               "failed": self.stats.failed, "retransmissions": self.stats.retransmissions,
               "failure_reasons": self.stats.reasons.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
               "rtd_invite_ms": self.stats.rtd_invite_ms, "rtd_info_ms": self.stats.rtd_info_ms,
               "flows_left": self.flows_left, "calls_left": self.calls_left,
               "sip_agent_cpu_ns": self.sip_cpu_ns, "fork_agent_cpu_ns": self.fork_cpu_ns,
               "fork_agent_cores_held": self.fork_cores_held,
               "sip_agent_cores_held": self.sip_cores_held,
               "loss": self.loss.json(),
               "sipp_errors": self.errors, "agent_warnings": self.warnings, "passed": self.passed()})
    }
}

/// Counters of one RTP direction's flows (sums over the flows of that direction).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct DirCounters {
    flows: u64,
    packets: u64,
    forked: u64,
    lost: u64,
    out_of_order: u64,
    errors: u64,
    passed: u64,
    userspace_packets: u64,
}

impl DirCounters {
    fn add(&mut self, f: &serde_json::Value) {
        let n = |k: &str| f[k].as_u64().unwrap_or(0);
        self.flows += 1;
        self.packets += n("packets");
        self.forked += n("forked");
        self.lost += n("lost");
        self.out_of_order += n("out_of_order");
        self.errors += n("errors");
        self.passed += n("passed");
        self.userspace_packets += n("userspace_packets");
    }

    fn minus(&self, o: &DirCounters) -> DirCounters {
        DirCounters {
            flows: self.flows.min(o.flows),
            packets: self.packets.saturating_sub(o.packets),
            forked: self.forked.saturating_sub(o.forked),
            lost: self.lost.saturating_sub(o.lost),
            out_of_order: self.out_of_order.saturating_sub(o.out_of_order),
            errors: self.errors.saturating_sub(o.errors),
            passed: self.passed.saturating_sub(o.passed),
            userspace_packets: self.userspace_packets.saturating_sub(o.userspace_packets),
        }
    }
}

/// Per-flow counters of the RTP flows present in both snapshots, split by direction: flows
/// anchored on the caller side (local 10.77.1.1, packets from the caller, relayed to the
/// callee) and on the callee side (local 10.77.2.1, the callee's audio, relayed to the caller).
/// RTP flows are the even local ports (RFC 3550 §11: RTP even, RTCP the next odd port).
fn rtp_flow_deltas(
    before: &[serde_json::Value],
    after: &[serde_json::Value],
) -> (DirCounters, DirCounters) {
    let by_local: HashMap<&str, &serde_json::Value> = before
        .iter()
        .filter_map(|f| f["local"].as_str().map(|l| (l, f)))
        .collect();
    let (mut a0, mut a1, mut b0, mut b1) = Default::default();
    for f in after {
        let Some(local) = f["local"].as_str() else {
            continue;
        };
        let Ok(addr) = local.parse::<SocketAddr>() else {
            continue;
        };
        let Some(f0) = by_local.get(local) else {
            continue;
        };
        if addr.port() % 2 != 0 {
            continue;
        }
        let (d0, d1): (&mut DirCounters, &mut DirCounters) =
            if addr.ip().to_string() == AGENT_A.split(':').next().unwrap_or_default() {
                (&mut a0, &mut a1)
            } else {
                (&mut b0, &mut b1)
            };
        d0.add(f0);
        d1.add(f);
    }
    (a1.minus(&a0), b1.minus(&b0))
}

/// The `Udp:` counters of a namespace's /proc/net/snmp (header line, then values).
fn udp_snmp(text: &str) -> HashMap<String, u64> {
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(head), Some(vals)) = (udp.next(), udp.next()) else {
        return HashMap::new();
    };
    head.split_whitespace()
        .skip(1)
        .zip(vals.split_whitespace().skip(1))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

/// Everything the loss-location row compares, read at one instant while the calls are held.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    flows: Vec<serde_json::Value>,
    kernel: HashMap<String, u64>,
    xsk_frames: u64,
    media_queue_drops: u64,
    frames_sent: u64,
    frames_dropped: u64,
    rx_frames: u64,
    /// Interface packet counters: caller ca0 tx/rx, callee cb0 rx/tx.
    ca0_tx: u64,
    ca0_rx: u64,
    cb0_rx: u64,
    cb0_tx: u64,
    /// UDP counters (`/proc/net/snmp`) of the caller and callee namespaces.
    caller_udp: HashMap<String, u64>,
    callee_udp: HashMap<String, u64>,
}

/// Stage counts over the measurement window (deltas of two snapshots).
#[derive(Clone, Debug, Default, PartialEq)]
struct Loss {
    secs: f64,
    /// RTP flows counted per direction (calls with that direction anchored).
    a_flows: u64,
    b_flows: u64,
    /// Caller's interface: packets sipp sent (RTP plus a little SIP).
    caller_sent: u64,
    a: DirCounters,
    callee_received: u64,
    /// Callee's interface: packets the callee sent (RTP plus a little SIP).
    callee_sent: u64,
    b: DirCounters,
    caller_received: u64,
    relayed_forked: u64,
    fork_captured: u64,
    fork_no_socket: u64,
    fork_no_headroom: u64,
    xsk_frames: u64,
    media_queue_drops: u64,
    frames_sent: u64,
    frames_dropped: u64,
    rx_frames: u64,
    callee_rcvbuf_errors: u64,
    caller_rcvbuf_errors: u64,
}

impl Loss {
    fn between(s0: &Snapshot, s1: &Snapshot, secs: f64) -> Loss {
        let (a, b) = rtp_flow_deltas(&s0.flows, &s1.flows);
        let k = |name: &str| {
            s1.kernel
                .get(name)
                .copied()
                .unwrap_or(0)
                .saturating_sub(s0.kernel.get(name).copied().unwrap_or(0))
        };
        let udp = |m1: &HashMap<String, u64>, m0: &HashMap<String, u64>| {
            m1.get("RcvbufErrors")
                .copied()
                .unwrap_or(0)
                .saturating_sub(m0.get("RcvbufErrors").copied().unwrap_or(0))
        };
        Loss {
            secs,
            a_flows: a.flows,
            b_flows: b.flows,
            caller_sent: s1.ca0_tx.saturating_sub(s0.ca0_tx),
            a,
            callee_received: s1.cb0_rx.saturating_sub(s0.cb0_rx),
            callee_sent: s1.cb0_tx.saturating_sub(s0.cb0_tx),
            b,
            caller_received: s1.ca0_rx.saturating_sub(s0.ca0_rx),
            relayed_forked: k("relayed_forked"),
            fork_captured: k("fork_captured"),
            fork_no_socket: k("fork_no_socket"),
            fork_no_headroom: k("fork_no_headroom"),
            xsk_frames: s1.xsk_frames.saturating_sub(s0.xsk_frames),
            media_queue_drops: s1.media_queue_drops.saturating_sub(s0.media_queue_drops),
            frames_sent: s1.frames_sent.saturating_sub(s0.frames_sent),
            frames_dropped: s1.frames_dropped.saturating_sub(s0.frames_dropped),
            rx_frames: s1.rx_frames.saturating_sub(s0.rx_frames),
            callee_rcvbuf_errors: udp(&s1.callee_udp, &s0.callee_udp),
            caller_rcvbuf_errors: udp(&s1.caller_udp, &s0.caller_udp),
        }
    }

    /// `v` packets over the window as packets per second per call (`calls` calls).
    fn rate(&self, v: u64, calls: u64) -> f64 {
        v as f64 / self.secs.max(1e-9) / calls.max(1) as f64
    }

    /// Stages in path order: (name, packets per second per call). One-direction stages are
    /// divided by that direction's flows; two-direction stages by the calls (the A flows).
    fn stages(&self) -> Vec<(&'static str, f64)> {
        let (na, nb) = (self.a_flows, self.b_flows);
        vec![
            ("caller sent (ca0 tx)", self.rate(self.caller_sent, na)),
            ("A relayed", self.rate(self.a.packets, na)),
            ("A forked", self.rate(self.a.forked, na)),
            ("callee got (cb0 rx)", self.rate(self.callee_received, na)),
            ("callee sent (cb0 tx)", self.rate(self.callee_sent, nb)),
            ("B relayed", self.rate(self.b.packets, nb)),
            ("B forked", self.rate(self.b.forked, nb)),
            ("relayed_forked", self.rate(self.relayed_forked, na)),
            ("fork_captured", self.rate(self.fork_captured, na)),
            ("xsk_frames", self.rate(self.xsk_frames, na)),
            ("frames_sent", self.rate(self.frames_sent, na)),
            ("receiver", self.rate(self.rx_frames, na)),
        ]
    }

    /// Losses along the way, per call per second: anything not zero is where frames went.
    fn drops(&self) -> Vec<(&'static str, f64)> {
        let (na, nb) = (self.a_flows, self.b_flows);
        vec![
            ("A lost (RTP seq gaps)", self.rate(self.a.lost, na)),
            ("A out_of_order", self.rate(self.a.out_of_order, na)),
            ("B lost (RTP seq gaps)", self.rate(self.b.lost, nb)),
            ("B out_of_order", self.rate(self.b.out_of_order, nb)),
            (
                "passed + userspace",
                self.rate(
                    self.a.passed
                        + self.b.passed
                        + self.a.userspace_packets
                        + self.b.userspace_packets,
                    na,
                ),
            ),
            ("flow errors", self.rate(self.a.errors + self.b.errors, na)),
            (
                "callee UDP RcvbufErrors",
                self.rate(self.callee_rcvbuf_errors, na),
            ),
            (
                "caller UDP RcvbufErrors",
                self.rate(self.caller_rcvbuf_errors, na),
            ),
            ("fork_no_socket", self.rate(self.fork_no_socket, na)),
            ("fork_no_headroom", self.rate(self.fork_no_headroom, na)),
            ("media_queue_drops", self.rate(self.media_queue_drops, na)),
            ("frames_dropped", self.rate(self.frames_dropped, na)),
        ]
    }

    fn json(&self) -> serde_json::Value {
        let obj = |v: &[(&str, f64)]| -> serde_json::Map<String, serde_json::Value> {
            v.iter().map(|(k, r)| ((*k).to_owned(), json!(r))).collect()
        };
        json!({"secs": self.secs, "a_flows": self.a_flows, "b_flows": self.b_flows,
               "caller_sent": self.caller_sent, "callee_received": self.callee_received,
               "callee_sent": self.callee_sent, "caller_received": self.caller_received,
               "a": {"packets": self.a.packets, "forked": self.a.forked, "lost": self.a.lost,
                     "out_of_order": self.a.out_of_order, "errors": self.a.errors,
                     "passed": self.a.passed, "userspace_packets": self.a.userspace_packets},
               "b": {"packets": self.b.packets, "forked": self.b.forked, "lost": self.b.lost,
                     "out_of_order": self.b.out_of_order, "errors": self.b.errors,
                     "passed": self.b.passed, "userspace_packets": self.b.userspace_packets},
               "relayed_forked": self.relayed_forked, "fork_captured": self.fork_captured,
               "fork_no_socket": self.fork_no_socket, "fork_no_headroom": self.fork_no_headroom,
               "xsk_frames": self.xsk_frames, "media_queue_drops": self.media_queue_drops,
               "frames_sent": self.frames_sent, "frames_dropped": self.frames_dropped,
               "receiver_frames": self.rx_frames,
               "callee_rcvbuf_errors": self.callee_rcvbuf_errors,
               "caller_rcvbuf_errors": self.caller_rcvbuf_errors,
               "stages_per_call_per_s": obj(&self.stages()),
               "drops_per_call_per_s": obj(&self.drops())})
    }
}

fn cps_point(b: &mut Bench, run: u32, cps: u32, o: &Opts) -> Result<CpsPoint> {
    let hold_ms = (o.hold * 1000.0) as u64;
    let (s0, f0) = (
        cpu::process_cpu_ns(b.sip_pid),
        cpu::process_cpu_ns(b.fork_pid),
    );
    let fr0 = b.rx.frames.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let (child, stat, err) = b.spawn_caller(run, cps, o.calls, hold_ms, o.calls)?;
    let bound = Duration::from_secs(o.calls as u64 / u64::from(cps) + hold_ms / 1000 + 90);
    let (sipp_ok, stats, errors, sipp_cpu_ns) = finish_caller(child, &stat, &err, bound)?;
    let secs = t0.elapsed().as_secs_f64();
    let (flows_left, calls_left) = b.drain()?;
    let (s1, f1) = (
        cpu::process_cpu_ns(b.sip_pid),
        cpu::process_cpu_ns(b.fork_pid),
    );
    let mut warnings = b.new_warnings("sip-agent");
    warnings.extend(b.new_warnings("fork-agent"));
    Ok(CpsPoint {
        cps,
        calls: o.calls,
        sipp_ok,
        stats,
        forked: b.forked_calls(run, o.calls),
        flows_left,
        calls_left,
        secs,
        sip_cpu_ns: s1.saturating_sub(s0),
        fork_cpu_ns: f1.saturating_sub(f0),
        sipp_cpu_ns,
        frames: b.rx.frames.load(Ordering::Relaxed) - fr0,
        errors,
        warnings,
    })
}

fn hold_point(b: &mut Bench, run: u32, n: usize) -> Result<HoldPoint> {
    // Placing n calls takes n / HOLD_CPS s; every call stays up long enough that the last one
    // is placed, forked and measured for 5 s while the first is still up.
    let ramp = n as u64 / u64::from(HOLD_CPS) + 1;
    let hold_ms = (ramp + 15) * 1000;
    let (s0, f0) = (
        cpu::process_cpu_ns(b.sip_pid),
        cpu::process_cpu_ns(b.fork_pid),
    );
    let (child, stat, err) = b.spawn_caller(run, HOLD_CPS, n, hold_ms, n)?;
    // Wait (bounded) until all n calls are up and forked, then measure for 5 s.
    let deadline = Instant::now() + Duration::from_secs(ramp + 12);
    let (mut aggregate, mut enhanced) = (0, 0);
    loop {
        let c = b.calls()?;
        aggregate = aggregate.max(c["aggregate"].as_u64().unwrap_or(0));
        enhanced = enhanced.max(c["enhanced"].as_u64().unwrap_or(0));
        if (enhanced >= n as u64 && b.forked_calls(run, n) >= n) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each snapshot reads its counters in the same order, so every counter's window is the
    // time between the two snapshots' starts (show_flows over 2000 flows takes a while).
    let w0 = Instant::now();
    let snap0 = b.snapshot()?;
    let (sh0, fh0, th0) = (
        cpu::process_cpu_ns(b.sip_pid),
        cpu::process_cpu_ns(b.fork_pid),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(5));
    let held = th0.elapsed().as_secs_f64();
    let window = w0.elapsed().as_secs_f64();
    let snap1 = b.snapshot()?;
    let loss = Loss::between(&snap0, &snap1, window);
    let frames_per_s = loss.rx_frames as f64 / window;
    let (fork_cores_held, sip_cores_held) = (
        cpu::process_cpu_ns(b.fork_pid).saturating_sub(fh0) as f64 / (held * 1e9),
        cpu::process_cpu_ns(b.sip_pid).saturating_sub(sh0) as f64 / (held * 1e9),
    );
    let c = b.calls()?;
    aggregate = aggregate.max(c["aggregate"].as_u64().unwrap_or(0));
    enhanced = enhanced.max(c["enhanced"].as_u64().unwrap_or(0));
    let flows = b.flows()?;
    let kernel_flows = flows
        .iter()
        .filter(|f| f["path"].as_str().is_some_and(|p| p.starts_with("kernel")))
        .count();
    let forks = b.forks()?;
    let forked = b.forked_calls(run, n);
    let bound = Duration::from_secs(ramp * 2 + hold_ms / 1000 + 90);
    let (sipp_ok, stats, errors, _) = finish_caller(child, &stat, &err, bound)?;
    let (flows_left, calls_left) = b.drain()?;
    let mut warnings = b.new_warnings("sip-agent");
    warnings.extend(b.new_warnings("fork-agent"));
    Ok(HoldPoint {
        target: n,
        aggregate,
        enhanced,
        flows: flows.len(),
        kernel_flows,
        forks,
        forked,
        frames_per_s,
        sipp_ok,
        stats,
        flows_left,
        calls_left,
        sip_cpu_ns: cpu::process_cpu_ns(b.sip_pid).saturating_sub(s0),
        fork_cpu_ns: cpu::process_cpu_ns(b.fork_pid).saturating_sub(f0),
        fork_cores_held,
        sip_cores_held,
        loss,
        errors,
        warnings,
    })
}

fn first_lines(v: &[String], n: usize) -> String {
    v.iter()
        .take(n)
        .map(|l| l.chars().take(240).collect::<String>())
        .collect::<Vec<_>>()
        .join("<br>")
}

pub fn run(o: &Opts) -> Result<Report> {
    let facts = crate::host_facts();
    let mut b = Bench::start(o.rtp)?;
    let mut cps_points: Vec<CpsPoint> = Vec::new();
    for (i, &cps) in o.cps.iter().enumerate() {
        let p = cps_point(&mut b, 1 + i as u32, cps, o)?;
        let fails = p.failures();
        eprintln!(
            "  {cps:>4} cps × {} calls: {} ok {} failed, {} retrans, forked {}, left {} flows {} calls, INVITE→200 {:.1} ms, sip-agent {:.2} ms CPU/call, fork-agent {:.2} ms CPU/call{}",
            p.calls,
            p.stats.successful,
            p.stats.failed,
            p.stats.retransmissions,
            p.forked,
            p.flows_left,
            p.calls_left,
            p.stats.rtd_invite_ms,
            p.sip_cpu_ns as f64 / 1e6 / p.calls as f64,
            p.fork_cpu_ns as f64 / 1e6 / p.calls as f64,
            if fails.is_empty() { String::new() } else { format!(" FAILED: {}", fails.join("; ")) }
        );
        cps_points.push(p);
        if !fails.is_empty() {
            break;
        }
    }
    let mut hold_points: Vec<HoldPoint> = Vec::new();
    for (i, &n) in o.concurrent.iter().enumerate() {
        let p = hold_point(&mut b, 100 + i as u32, n)?;
        eprintln!(
            "  {n:>5} held: sip-agent aggregate {} enhanced {}, fork-agent {} flows ({} kernel) {} forks, {} calls forked at the receiver, {:.0} frames/s, fork-agent {:.3} cores sip-agent {:.3} cores while held, sipp {} ok {} failed{}",
            p.aggregate,
            p.enhanced,
            p.flows,
            p.kernel_flows,
            p.forks,
            p.forked,
            p.frames_per_s,
            p.fork_cores_held,
            p.sip_cores_held,
            p.stats.successful,
            p.stats.failed,
            if p.passed() { String::new() } else { " FAILED".to_owned() }
        );
        eprintln!(
            "  {n:>5} held, per call per s: {}; losses: {}",
            p.loss
                .stages()
                .iter()
                .map(|(k, v)| format!("{k} {v:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            p.loss
                .drops()
                .iter()
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let passed = p.passed();
        hold_points.push(p);
        if !passed {
            break;
        }
    }
    let sip_log_tail = crate::tail(&b.t.log("sip-agent"), 20);
    let fork_log_tail = crate::tail(&b.t.log("fork-agent"), 20);
    drop(b);
    let md = markdown(o, &facts, &cps_points, &hold_points);
    Ok(Report {
        markdown: md,
        raw: json!({
            "facts": facts,
            "opts": {"cps": o.cps, "calls": o.calls, "hold": o.hold,
                     "concurrent": o.concurrent, "rtp": o.rtp},
            "cps_points": cps_points.iter().map(CpsPoint::json).collect::<Vec<_>>(),
            "hold_points": hold_points.iter().map(HoldPoint::json).collect::<Vec<_>>(),
            "sip_agent_log_tail": sip_log_tail,
            "fork_agent_log_tail": fork_log_tail,
        }),
    })
}

fn markdown(o: &Opts, facts: &str, cps: &[CpsPoint], hold: &[HoldPoint]) -> String {
    let mut md = format!(
        "## `cargo xtask bench calls`\n\n{facts}\nsipp UAC in the caller namespace → sip-agent (B2BUA, UDP) → sipp UAS in the callee namespace; fork-agent anchors each call's media in XDP (four flows) and forks both parties to a light counting WebSocket receiver in the speech namespace. Per call: INVITE/100/180/200/ACK, {}the START INFO (`application/x-cisco-record+json`) and its 200, {} s up, BYE/200. Nothing is pinned: sipp, sip-agent and fork-agent share the host's cores. CPU: scheduler run time of all threads of each process over the point (set-up, hold and tear-down of every call plus its media), divided by the calls.\n\n### Calls per second ({} calls per point)\n\n| CPS | calls ok / failed | retrans | INVITE→200 avg (ms) | INFO→200 avg (ms) | both streams at the speech side | left after 10 s (flows / calls) | run (s) | sip-agent ms CPU per call | fork-agent ms CPU per call | sipp caller cores | result |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        if o.rtp {
            "RTP (PCMU 50 packets/s from sipp's `rtp_stream` in the caller and in the callee, so both directions are relayed and forked), "
        } else {
            "no RTP, "
        },
        o.hold,
        o.calls
    );
    for p in cps {
        let fails = p.failures();
        md.push_str(&format!(
            "| {} | {} / {} | {} | {:.1} | {:.1} | {} | {} / {} | {:.1} | {:.2} | {:.2} | {:.2} | {} |\n",
            p.cps,
            p.stats.successful,
            p.stats.failed,
            p.stats.retransmissions,
            p.stats.rtd_invite_ms,
            p.stats.rtd_info_ms,
            p.forked,
            p.flows_left,
            p.calls_left,
            p.secs,
            p.sip_cpu_ns as f64 / 1e6 / p.calls as f64,
            p.fork_cpu_ns as f64 / 1e6 / p.calls as f64,
            p.sipp_cpu_ns as f64 / 1e9 / p.secs.max(1e-9),
            if fails.is_empty() {
                "pass".to_owned()
            } else {
                format!("**fail**: {}", fails.join("; "))
            }
        ));
    }
    let best = cps
        .iter()
        .filter(|p| p.failures().is_empty())
        .map(|p| p.cps)
        .max();
    md.push_str(&format!(
        "\nHighest CPS with no failed call: {}.\n",
        best.map_or("none".into(), |b| b.to_string())
    ));
    if let Some(f) = cps.iter().find(|p| !p.failures().is_empty()) {
        md.push_str(&format!(
            "First failure at {} CPS: {}. sipp's first errors: {}. Agent warnings: {}\n",
            f.cps,
            f.failures().join("; "),
            if f.errors.is_empty() {
                "none"
            } else {
                &f.errors
            },
            if f.warnings.is_empty() {
                "none".to_owned()
            } else {
                first_lines(&f.warnings, 5)
            }
        ));
    } else if !cps.is_empty() {
        md.push_str("No point failed: the sweep did not reach a limit.\n");
    }
    if hold.is_empty() {
        return md;
    }
    md.push_str(&format!(
        "\n### Concurrent calls (placed at {HOLD_CPS} CPS, all held together, measured for 5 s while all are up)\n\n| calls | sip-agent aggregate / enhanced | fork-agent flows (kernel-relayed) / forks | both streams at the speech side | forked frames/s | fork-agent cores while held | sip-agent cores while held | sipp ok / failed | left after 10 s (flows / calls) | result |\n|---|---|---|---|---|---|---|---|---|---|\n"
    ));
    for p in hold {
        md.push_str(&format!(
            "| {} | {} / {} | {} ({}) / {} | {} | {:.0} | {:.3} | {:.3} | {} / {} | {} / {} | {} |\n",
            p.target,
            p.aggregate,
            p.enhanced,
            p.flows,
            p.kernel_flows,
            p.forks,
            p.forked,
            p.frames_per_s,
            p.fork_cores_held,
            p.sip_cores_held,
            p.stats.successful,
            p.stats.failed,
            p.flows_left,
            p.calls_left,
            if p.passed() { "pass" } else { "**fail**" }
        ));
    }
    md.push_str(&loss_tables(hold));
    let most = hold.iter().filter(|p| p.passed()).map(|p| p.target).max();
    md.push_str(&format!(
        "\nMost calls held at once with every call forked: {}.\n",
        most.map_or("none".into(), |m| m.to_string())
    ));
    if let Some(f) = hold.iter().find(|p| !p.passed()) {
        md.push_str(&format!(
            "First failure at {} held calls: sipp {} ok / {} failed ({}), sipp's first errors: {}. Agent warnings: {}\n",
            f.target,
            f.stats.successful,
            f.stats.failed,
            f.stats
                .reasons
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            if f.errors.is_empty() { "none" } else { &f.errors },
            if f.warnings.is_empty() {
                "none".to_owned()
            } else {
                first_lines(&f.warnings, 5)
            }
        ));
    }
    md
}

/// The loss-location tables: each stage's packets per second per call over the window (A =
/// caller→callee, B = callee→caller; nominal 50 per direction, 100 for two-direction stages),
/// then each counter that names a loss.
fn loss_tables(hold: &[HoldPoint]) -> String {
    let Some(first) = hold.first() else {
        return String::new();
    };
    let table = |rows: &dyn Fn(&Loss) -> Vec<(&'static str, f64)>, prec: usize| -> String {
        let names: Vec<&str> = rows(&first.loss).iter().map(|(k, _)| *k).collect();
        let mut t = format!(
            "| calls | RTP flows A / B | {} |\n|---|---|{}\n",
            names.join(" | "),
            "---|".repeat(names.len())
        );
        for p in hold {
            t.push_str(&format!(
                "| {} | {} / {} | {} |\n",
                p.target,
                p.loss.a_flows,
                p.loss.b_flows,
                rows(&p.loss)
                    .iter()
                    .map(|(_, v)| format!("{v:.prec$}"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
        t
    };
    format!(
        "\nWhere forked frames go (packets per second per call over the window; A = caller→callee, B = callee→caller, nominal 50 each; two-direction stages nominal 100):\n\n{}\nLoss counters over the same window (per second per call):\n\n{}",
        table(&Loss::stages, 1),
        table(&Loss::drops, 2)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_refuse() {
        let a = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let o = Opts::from_args(&a(&[
            ("--cps", "5,10"),
            ("--calls", "50"),
            ("--hold", "2.5"),
            ("--concurrent", "100"),
            ("--rtp", "no"),
        ]))
        .unwrap();
        assert_eq!(
            o,
            Opts {
                cps: vec![5, 10],
                calls: 50,
                hold: 2.5,
                concurrent: vec![100],
                rtp: false
            }
        );
        assert_eq!(Opts::from_args(&[]).unwrap(), Opts::default());
        assert!(Opts::from_args(&a(&[("--cps", "5,x")])).is_err());
        assert!(Opts::from_args(&a(&[("--cps", "0")])).is_err());
        assert!(Opts::from_args(&a(&[("--rtp", "maybe")])).is_err());
        assert!(Opts::from_args(&a(&[("--reps", "3")])).is_err());
    }

    #[test]
    fn stat_csv_last_line_and_failure_reasons() {
        let csv = "StartTime;SuccessfulCall(C);FailedCall(C);Retransmissions(C);FailedMaxUDPRetrans(C);FailedUnexpectedMessage(C);DeadCallMsgs(C);ResponseTime1(C);ResponseTime2(C);\n\
                   x;1;0;0;0;0;0;00:00:00:001000;00:00:00:000000;\n\
                   y;97;3;12;2;1;0;00:00:00:002500;00:00:00:000800;\n";
        let s = parse_stat_csv(csv).unwrap();
        assert_eq!(s.successful, 97);
        assert_eq!(s.failed, 3);
        assert_eq!(s.retransmissions, 12);
        assert_eq!(
            s.reasons,
            vec![
                ("FailedMaxUDPRetrans".to_owned(), 2),
                ("FailedUnexpectedMessage".to_owned(), 1)
            ]
        );
        assert!((s.rtd_invite_ms - 2.5).abs() < 1e-9);
        assert!((s.rtd_info_ms - 0.8).abs() < 1e-9);
        assert_eq!(parse_stat_csv(""), None);
    }

    #[test]
    fn sipp_times_in_ms() {
        assert!((sipp_ms("00:00:01:500000") - 1500.0).abs() < 1e-9);
        assert!((sipp_ms("12.5") - 12.5).abs() < 1e-9);
    }

    #[test]
    fn start_guid_only_for_start() {
        assert_eq!(
            start_guid(r#"{"type":"start","call_guid":"1-7","stream_id":3}"#),
            Some("1-7".to_owned())
        );
        assert_eq!(start_guid(r#"{"type":"stop","call_guid":"1-7"}"#), None);
        assert_eq!(start_guid("not json"), None);
    }

    #[test]
    fn ulaw_matches_g711_reference_points() {
        // G.711 µ-law: 0 → 0xFF, full-scale positive → 0x80, full-scale negative → 0x00.
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(-32_767), 0x00);
        assert_eq!(pcmu_tone().len(), 16_000);
    }

    #[test]
    fn udp_snmp_reads_the_udp_lines_only() {
        let t = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                 Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                 Udp: 100 2 7 90 7 0\n\
                 UdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        let u = udp_snmp(t);
        assert_eq!(u.get("InDatagrams"), Some(&100));
        assert_eq!(u.get("RcvbufErrors"), Some(&7));
        assert_eq!(u.len(), 6);
        assert!(udp_snmp("Ip: 1\n").is_empty());
    }

    fn flow(local: &str, packets: u64, forked: u64, lost: u64) -> serde_json::Value {
        json!({"local": local, "packets": packets, "forked": forked, "lost": lost,
               "out_of_order": 1, "errors": 0, "passed": 0, "userspace_packets": 0})
    }

    #[test]
    fn flow_deltas_split_by_direction_and_skip_rtcp_and_new_flows() {
        let before = vec![
            flow("10.77.1.1:20000", 100, 100, 0),
            flow("10.77.1.1:20001", 0, 0, 0),
            flow("10.77.2.1:20002", 80, 80, 1),
        ];
        let after = vec![
            flow("10.77.1.1:20000", 350, 350, 0),
            // RTCP (odd port): not an RTP stage.
            flow("10.77.1.1:20001", 9, 0, 0),
            flow("10.77.2.1:20002", 280, 270, 4),
            // Appeared during the window: no baseline, left out.
            flow("10.77.2.1:20004", 50, 50, 0),
        ];
        let (a, b) = rtp_flow_deltas(&before, &after);
        assert_eq!((a.flows, a.packets, a.forked, a.lost), (1, 250, 250, 0));
        assert_eq!((b.flows, b.packets, b.forked, b.lost), (1, 200, 190, 3));
        assert_eq!(a.out_of_order, 0);
    }

    #[test]
    fn loss_rates_are_per_call_per_second() {
        let mut s0 = Snapshot::default();
        let mut s1 = Snapshot {
            flows: vec![
                flow("10.77.1.1:20000", 500, 500, 0),
                flow("10.77.2.1:20000", 400, 400, 0),
            ],
            rx_frames: 800,
            ca0_tx: 500,
            cb0_rx: 500,
            cb0_tx: 400,
            ..Snapshot::default()
        };
        s0.flows = vec![
            flow("10.77.1.1:20000", 0, 0, 0),
            flow("10.77.2.1:20000", 0, 0, 0),
        ];
        s0.callee_udp.insert("RcvbufErrors".into(), 10);
        s1.callee_udp.insert("RcvbufErrors".into(), 110);
        s1.kernel.insert("relayed_forked".into(), 900);
        let l = Loss::between(&s0, &s1, 10.0);
        let st: HashMap<_, _> = l.stages().into_iter().collect();
        assert!((st["caller sent (ca0 tx)"] - 50.0).abs() < 1e-9);
        assert!((st["callee sent (cb0 tx)"] - 40.0).abs() < 1e-9);
        assert!((st["B relayed"] - 40.0).abs() < 1e-9);
        assert!((st["relayed_forked"] - 90.0).abs() < 1e-9);
        assert!((st["receiver"] - 80.0).abs() < 1e-9);
        let dr: HashMap<_, _> = l.drops().into_iter().collect();
        assert!((dr["callee UDP RcvbufErrors"] - 10.0).abs() < 1e-9);
        assert!(loss_tables(&[]).is_empty());
    }

    #[test]
    fn cps_point_failures_name_what_failed() {
        let p = CpsPoint {
            cps: 50,
            calls: 10,
            sipp_ok: true,
            stats: SippStats {
                successful: 10,
                ..SippStats::default()
            },
            forked: 10,
            flows_left: 0,
            calls_left: 0,
            secs: 1.0,
            sip_cpu_ns: 0,
            fork_cpu_ns: 0,
            sipp_cpu_ns: 0,
            frames: 0,
            errors: String::new(),
            warnings: Vec::new(),
        };
        assert!(p.failures().is_empty());
        let p = CpsPoint {
            forked: 9,
            flows_left: 4,
            ..p
        };
        let f = p.failures();
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].contains("9 of 10"));
    }
}
