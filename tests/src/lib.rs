//! Privileged test harness for xdpfork: builds a four-host topology out of network namespaces
//! and veth pairs, starts real processes inside it, and tears everything down on success,
//! failure and panic (Drop).
//!
//! ```text
//!  caller ns            forker ns (fork-agent, XDP)            callee ns
//!  ca0 10.77.1.2 ─── fa0 10.77.1.1      fb0 10.77.2.1 ─── cb0 10.77.2.2
//!      fd77:1::2         fd77:1::1          fd77:2::1          fd77:2::2
//!                        fs0 10.77.3.1 ─── sa0 10.77.3.2  speech ns (speech-server)
//! ```
//!
//! Names carry the test process id and a counter, so tests in one process and concurrent runs
//! never share a namespace; a lock file per topology refuses a second user of the same names, and
//! topologies left by dead processes are removed when the next one is built. Only addresses
//! inside these namespaces are used.

// A test runner drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, UdpSocket},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{fcntl::Flock, sched::CloneFlags};

pub const PREFIX: &str = "xft";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The four hosts of the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Caller,
    Forker,
    Callee,
    Speech,
}

impl Host {
    fn suffix(self) -> &'static str {
        match self {
            Host::Caller => "c",
            Host::Forker => "f",
            Host::Callee => "e",
            Host::Speech => "s",
        }
    }
}

pub struct Topology {
    pub id: String,
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    children: Vec<(String, Child)>,
    _lock: Flock<File>,
}

/// Fails with a message naming the missing capability instead of skipping.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("these tests need root (CAP_SYS_ADMIN for netns, CAP_BPF, CAP_NET_ADMIN): run `cargo xtask test` as root");
    }
    Ok(())
}

fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd} (is it installed? `cargo xtask setup`)"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec NS cmd args...` for short commands that do not need bpffs.
pub fn ns_run(ns: &str, cmd: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, cmd];
    all.extend_from_slice(args);
    run("ip", &all)
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Remove namespaces and pins left by test processes that no longer exist.
fn reap_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        // xft<pid>x<n><host>
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: i32 = rest
            .split('x')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if pid > 0 && !pid_alive(pid) {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/fs/bpf") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = n.strip_prefix(&format!("{PREFIX}-")) {
                let pid: i32 = rest
                    .split('x')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                if pid > 0 && !pid_alive(pid) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

impl Topology {
    pub fn new() -> Result<Topology> {
        require_root()?;
        reap_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{PREFIX}{}x{n}", std::process::id());
        let lock_path = PathBuf::from(format!("/run/{id}.lock"));
        let file = File::create(&lock_path).context("creating the topology lock file")?;
        let lock = Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| anyhow::anyhow!("topology {id} is in use by another run: {e}"))?;
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if !is_bpffs("/sys/fs/bpf") {
            run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])?;
        }
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{PREFIX}-{}", &id[PREFIX.len()..]));
        let mut t = Topology {
            id,
            dir,
            pin_dir,
            children: Vec::new(),
            _lock: lock,
        };
        t.build()
            .with_context(|| format!("building topology {}", t.id))?;
        Ok(t)
    }

    pub fn ns(&self, h: Host) -> String {
        format!("{}{}", self.id, h.suffix())
    }

    fn build(&mut self) -> Result<()> {
        for h in [Host::Caller, Host::Forker, Host::Callee, Host::Speech] {
            run("ip", &["netns", "add", &self.ns(h)])?;
            ns_run(&self.ns(h), "ip", &["link", "set", "lo", "up"])?;
        }
        let f = self.ns(Host::Forker);
        let links = [
            (Host::Caller, "ca0", "fa0", "1"),
            (Host::Callee, "cb0", "fb0", "2"),
            (Host::Speech, "sa0", "fs0", "3"),
        ];
        for (h, outer, inner, net) in links {
            let ns = self.ns(h);
            run(
                "ip",
                &[
                    "link", "add", outer, "netns", &ns, "type", "veth", "peer", "name", inner,
                    "netns", &f,
                ],
            )?;
            for (nsn, dev, host) in [(&ns, outer, "2"), (&f, inner, "1")] {
                ns_run(
                    nsn,
                    "ip",
                    &["addr", "add", &format!("10.77.{net}.{host}/24"), "dev", dev],
                )?;
                ns_run(
                    nsn,
                    "ip",
                    &[
                        "addr",
                        "add",
                        &format!("fd77:{net}::{host}/64"),
                        "dev",
                        dev,
                        "nodad",
                    ],
                )?;
                ns_run(nsn, "ip", &["link", "set", dev, "up"])?;
                // XDP_REDIRECT into a veth needs NAPI on the receiving end: GRO enables it.
                ns_run(nsn, "ethtool", &["-K", dev, "gro", "on"])?;
            }
            // veth hands checksum-offloaded skbs to XDP with only the pseudo-header sum in the
            // UDP checksum; a real NIC delivers full checksums. Make the test hosts compute them.
            ns_run(&ns, "ethtool", &["-K", outer, "tx", "off"])?;
            // Hosts route everything else through the forker.
            ns_run(
                &ns,
                "ip",
                &["route", "add", "default", "via", &format!("10.77.{net}.1")],
            )?;
            ns_run(
                &ns,
                "ip",
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("fd77:{net}::1"),
                ],
            )?;
        }
        ns_run(&f, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=0"])?;
        Ok(())
    }

    /// A command that runs in `h`'s network namespace (only the network namespace: the mount
    /// namespace, hence bpffs, stays the host's, unlike `ip netns exec`).
    pub fn command(&self, h: Host, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let path = format!("/run/netns/{}", self.ns(h));
        let f = File::open(&path).with_context(|| format!("opening {path}"))?;
        let mut cmd = Command::new(program);
        let fd = f.as_raw_fd();
        // SAFETY: setns is async-signal-safe; `f` is kept open by the closure until exec.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &f;
                nix::sched::setns(
                    std::os::fd::BorrowedFd::borrow_raw(fd),
                    CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)
            });
        }
        Ok(cmd)
    }

    /// Start a long-running process in `h`; it is killed when the topology is dropped. Its
    /// output goes to `<dir>/<name>.log`.
    pub fn spawn(&mut self, name: &str, h: Host, program: &Path, args: &[&str]) -> Result<()> {
        let log_path = self.dir.join(format!("{name}.log"));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = self.command(h, program)?;
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    /// Send `sig` to the named child and wait (bounded) for it to exit.
    pub fn signal(&mut self, name: &str, sig: nix::sys::signal::Signal) -> Result<()> {
        let idx = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .with_context(|| format!("no process named {name}"))?;
        let (_, mut child) = self.children.remove(idx);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("{name} did not exit within 10 s of {sig}")
    }

    /// Wait (bounded) for the named child to exit by itself; its exit status.
    pub fn wait_exit(&mut self, name: &str, timeout: Duration) -> Result<std::process::ExitStatus> {
        let idx = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .with_context(|| format!("no process named {name}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.children[idx].1.try_wait()? {
                self.children.remove(idx);
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} still running after {timeout:?}; log:\n{}",
                    self.log(name)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// A UDP socket created inside `h`'s namespace (sockets keep their namespace wherever they
    /// are used): created on a helper thread that alone enters the namespace.
    pub fn udp_socket(&self, h: Host, bind: SocketAddr) -> Result<UdpSocket> {
        let path = format!("/run/netns/{}", self.ns(h));
        std::thread::spawn(move || -> Result<UdpSocket> {
            let f = File::open(&path)?;
            nix::sched::setns(&f, CloneFlags::CLONE_NEWNET)?;
            Ok(UdpSocket::bind(bind)?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns helper thread panicked"))?
    }

    /// Wait (bounded) until `path` exists.
    pub fn wait_for_path(&self, path: &Path, what: &str, logname: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if path.exists() {
                return Ok(());
            }
            if let Some((_, c)) = self.children.iter().find(|(n, _)| n == logname) {
                // A child that exited early will never create it.
                let _ = c;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{what} did not appear within 20 s; {logname} log:\n{}",
            self.log(logname)
        )
    }

    pub fn is_running(&mut self, name: &str) -> bool {
        self.children
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, c)| matches!(c.try_wait(), Ok(None)))
            .unwrap_or(false)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in [Host::Caller, Host::Forker, Host::Callee, Host::Speech] {
            let _ = run("ip", &["netns", "del", &self.ns(h)]);
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_file(format!("/run/{}.lock", self.id));
        if std::env::var_os("XDPFORK_KEEP_TEST_DIR").is_none() && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn is_bpffs(path: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut w = l.split_whitespace();
                let (_, mnt, fs) = (w.next(), w.next(), w.next());
                mnt == Some(path) && fs == Some("bpf")
            })
        })
        .unwrap_or(false)
}

/// Directory of the workspace's built binaries (target/debug or target/release), found from
/// the test executable's location (target/<profile>/deps/<test>).
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the target directory")?;
    Ok(dir.to_owned())
}

pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if !p.exists() {
        bail!(
            "{} is not built: run `cargo xtask build` (or `cargo build --workspace`)",
            p.display()
        );
    }
    Ok(p)
}

/// Talk to a fork-agent's control socket: one request line, one response line.
pub fn control(socket: &Path, request: &serde_json::Value) -> Result<serde_json::Value> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = request.to_string();
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut resp = String::new();
    BufReader::new(&s).read_line(&mut resp)?;
    let v: serde_json::Value = serde_json::from_str(&resp)?;
    if v["ok"] != serde_json::Value::Bool(true) {
        bail!("control request {request} failed: {}", v["error"]);
    }
    Ok(v["data"].clone())
}

/// An RTP packet (RFC 3550 §5.1) with a fixed header, no CSRC.
pub fn rtp_packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push(pt & 0x7f);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Receive on a thread while the caller sends (a socket left unread overflows its buffer: veth
/// XDP frames carry page-sized truesize).
pub fn spawn_receiver(
    sock: UdpSocket,
    n: usize,
    quiet: Duration,
) -> std::thread::JoinHandle<Result<Vec<Vec<u8>>>> {
    let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
    std::thread::spawn(move || recv_all(&sock, n, quiet))
}

/// Receive up to `n` datagrams, stopping after `quiet` without one.
pub fn recv_all(sock: &UdpSocket, n: usize, quiet: Duration) -> Result<Vec<Vec<u8>>> {
    sock.set_read_timeout(Some(quiet))?;
    let mut out = Vec::with_capacity(n);
    let mut buf = [0u8; 2048];
    while out.len() < n {
        match sock.recv(&mut buf) {
            Ok(len) => out.push(buf[..len].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Addresses of the standard scenario: caller media arrives at `A_LOCAL` and leaves towards the
/// callee from `B_LOCAL`; the reverse flow mirrors it.
pub mod addrs {
    pub const CALLER_RTP: &str = "10.77.1.2:40000";
    pub const CALLEE_RTP: &str = "10.77.2.2:40000";
    pub const A_LOCAL: &str = "10.77.1.1:30000";
    pub const B_LOCAL: &str = "10.77.2.1:30002";
    pub const CALLER_RTP6: &str = "[fd77:1::2]:40000";
    pub const CALLEE_RTP6: &str = "[fd77:2::2]:40000";
    pub const A_LOCAL6: &str = "[fd77:1::1]:30000";
    pub const B_LOCAL6: &str = "[fd77:2::1]:30002";
    pub const SPEECH_WS: &str = "10.77.3.2:9000";
}

/// A running fork-agent plus speech-server in a [`Topology`].
pub struct Scenario {
    pub topo: Topology,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub speech_out: PathBuf,
    pub summary: PathBuf,
}

impl Scenario {
    /// Build the topology, start speech-server and fork-agent, and wait until both are ready.
    pub fn start() -> Result<Scenario> {
        let mut topo = Topology::new()?;
        let speech_out = topo.dir.join("speech");
        std::fs::create_dir_all(&speech_out)?;
        let summary = topo.dir.join("speech-summary.json");
        let speech_bin = bin("speech-server")?;
        topo.spawn(
            "speech-server",
            Host::Speech,
            &speech_bin,
            &[
                "--listen",
                addrs::SPEECH_WS,
                "--out-dir",
                &speech_out.to_string_lossy(),
                "--summary",
                &summary.to_string_lossy(),
                "--duration-secs",
                "300",
            ],
        )?;
        let socket = topo.dir.join("fork-agent.sock");
        let config = topo.dir.join("fork-agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"[dataplane]
pin_dir = "{pin}"
interfaces = ["fa0", "fb0"]
fork_interface = "xfork0"

[control]
socket = "{sock}"
state_dir = "{state}"

[[speech_server]]
name = "asr"
url = "ws://{ws}/stream"
"#,
                pin = topo.pin_dir.display(),
                sock = socket.display(),
                state = topo.dir.join("state").display(),
                ws = addrs::SPEECH_WS,
            ),
        )?;
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

    /// (Re)start fork-agent and wait for its control socket.
    pub fn start_agent(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        let agent = bin("fork-agent")?;
        let cfg = self.config.to_string_lossy().into_owned();
        self.topo.spawn(
            "fork-agent",
            Host::Forker,
            &agent,
            &["run", "--config", &cfg],
        )?;
        self.topo
            .wait_for_path(&self.socket, "fork-agent control socket", "fork-agent")
    }

    pub fn ctl(&self, req: serde_json::Value) -> Result<serde_json::Value> {
        control(&self.socket, &req)
    }

    /// Install both directions of a call's media: caller → A_LOCAL → (from B_LOCAL) → callee,
    /// and back.
    pub fn add_call_flows(&self, v6: bool) -> Result<()> {
        use addrs::*;
        let (caller, callee, a, b) = if v6 {
            (CALLER_RTP6, CALLEE_RTP6, A_LOCAL6, B_LOCAL6)
        } else {
            (CALLER_RTP, CALLEE_RTP, A_LOCAL, B_LOCAL)
        };
        self.ctl(
            serde_json::json!({"v":1,"op":"flow_add","flow":{"local":a,"src":b,"dst":callee}}),
        )?;
        self.ctl(
            serde_json::json!({"v":1,"op":"flow_add","flow":{"local":b,"src":a,"dst":caller}}),
        )?;
        Ok(())
    }

    pub fn start_fork(
        &self,
        guid: &str,
        caller_flow: &str,
        callee_flow: &str,
    ) -> Result<serde_json::Value> {
        self.ctl(serde_json::json!({"v":1,"op":"fork_start","fork":{
            "call_guid": guid, "call_id": "call-1", "from": "1000", "to": "2000",
            "server": "asr", "codec": "PCMU",
            "streams": [{"channel":"caller","flow":caller_flow},{"channel":"callee","flow":callee_flow}]
        }}))
    }

    pub fn counters(&self) -> Result<serde_json::Value> {
        self.ctl(serde_json::json!({"v":1,"op":"show_counters"}))
    }

    pub fn flows(&self) -> Result<serde_json::Value> {
        self.ctl(serde_json::json!({"v":1,"op":"show_flows"}))
    }

    /// Wait (bounded) until fork-agent has sent `n` audio frames to server `name`.
    pub fn wait_frames_sent(&self, name: &str, n: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.counters()?;
            if c["servers"][name]["frames_sent"].as_u64() >= Some(n) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("fork-agent sent fewer than {n} frames to {name} within 10 s: {c}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the speech server and read its JSON summary.
    pub fn speech_summary(&mut self) -> Result<serde_json::Value> {
        self.topo
            .signal("speech-server", nix::sys::signal::Signal::SIGTERM)?;
        let text = std::fs::read_to_string(&self.summary).with_context(|| {
            format!(
                "speech-server wrote no summary; log:\n{}",
                self.topo.log("speech-server")
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }
}
