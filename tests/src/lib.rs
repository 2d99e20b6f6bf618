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

/// The four hosts of the topology, plus any further media node a multi-node test adds
/// ([`Topology::add_host`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Caller,
    Forker,
    Callee,
    Speech,
    /// A further host with no links of its own (the ng cluster's media nodes).
    Node(u8),
}

impl Host {
    fn suffix(self) -> String {
        match self {
            Host::Caller => "c".into(),
            Host::Forker => "f".into(),
            Host::Callee => "e".into(),
            Host::Speech => "s".into(),
            Host::Node(n) => format!("n{n}"),
        }
    }
}

/// The hosts [`Topology::new`] builds and links.
const STANDARD_HOSTS: [Host; 4] = [Host::Caller, Host::Forker, Host::Callee, Host::Speech];

pub struct Topology {
    pub id: String,
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    children: Vec<(String, Child)>,
    /// Hosts added by [`Topology::add_host`], removed with the standard ones.
    extra_hosts: Vec<Host>,
    _lock: Flock<File>,
}

/// Fails with a message naming the missing capability instead of skipping.
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("these tests need root (CAP_SYS_ADMIN for netns, CAP_BPF, CAP_NET_ADMIN): run `cargo xtask test` as root");
    }
    Ok(())
}

/// Run `cmd` in this process's network namespace; its stdout, or an error with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
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
            extra_hosts: Vec::new(),
            _lock: lock,
        };
        t.build()
            .with_context(|| format!("building topology {}", t.id))?;
        Ok(t)
    }

    pub fn ns(&self, h: Host) -> String {
        format!("{}{}", self.id, h.suffix())
    }

    /// Creates `h`'s namespace (loopback up, no links: the caller wires it), removed with the
    /// topology.
    pub fn add_host(&mut self, h: Host) -> Result<()> {
        self.extra_hosts.push(h);
        self.create_ns(h)
    }

    fn create_ns(&self, h: Host) -> Result<()> {
        run("ip", &["netns", "add", &self.ns(h)])?;
        ns_run(&self.ns(h), "ip", &["link", "set", "lo", "up"])?;
        // Fresh links run IPv6 duplicate address detection on their link-local address for
        // a second or more, delaying neighbour discovery: the test hosts skip it.
        ns_run(
            &self.ns(h),
            "sysctl",
            &[
                "-q",
                "-w",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        for h in STANDARD_HOSTS {
            self.create_ns(h)?;
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
        self.spawn_env(name, h, program, args, &[])
    }

    /// `spawn` with extra environment variables for the child only (tests share one process,
    /// so nothing is set process-wide).
    pub fn spawn_env(
        &mut self,
        name: &str,
        h: Host,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        let log_path = self.dir.join(format!("{name}.log"));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = self.command(h, program)?;
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    /// The pid of the process `name` started by [`Topology::spawn`].
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// Sends `sig` to the process `name` and returns at once; the process stays in the
    /// topology (SIGSTOP/SIGCONT to freeze and thaw a server in a test).
    pub fn send_signal(&self, name: &str, sig: nix::sys::signal::Signal) -> Result<()> {
        let (_, child) = self
            .children
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("no process named {name}"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)?;
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
    /// are used).
    pub fn udp_socket(&self, h: Host, bind: SocketAddr) -> Result<UdpSocket> {
        self.in_ns(h, move || Ok(UdpSocket::bind(bind)?))
    }

    /// A TCP connection made from inside `h`'s namespace.
    pub fn tcp_connect(&self, h: Host, to: SocketAddr) -> Result<std::net::TcpStream> {
        self.in_ns(h, move || Ok(std::net::TcpStream::connect(to)?))
    }

    /// Runs `f` (which opens a socket) on a helper thread that alone enters `h`'s namespace.
    fn in_ns<T: Send + 'static>(
        &self,
        h: Host,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        in_netns(format!("/run/netns/{}", self.ns(h)), f)
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

    /// The last `n` lines of the named child's log, for error messages.
    pub fn log_tail(&self, name: &str, n: usize) -> String {
        tail_lines(&self.log(name), n)
    }

    /// Wait (bounded) until the fork-agent `name` answers on `socket`: the socket exists and a
    /// request gets an answer that is not "not ready". Fails at once, with the tail of its log,
    /// if the agent exits or answers with another error.
    pub fn wait_fork_agent(&mut self, socket: &Path, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let probe = serde_json::json!({"v": 1, "op": "show_counters"});
        loop {
            if !self.is_running(name) {
                bail!(
                    "{name} exited while starting; last lines of its log:\n{}",
                    self.log_tail(name, 40)
                );
            }
            if socket.exists() {
                match control(socket, &probe) {
                    Ok(_) => return Ok(()),
                    Err(e) if format!("{e:#}").contains(NOT_READY) => {}
                    // Connection refused or reset: the agent is gone or going; the next round
                    // sees it exit.
                    Err(e)
                        if e.downcast_ref::<control_api::ClientError>()
                            .is_some_and(control_api::ClientError::is_broken) => {}
                    Err(e) => bail!(
                        "{name} is not serving: {e:#}; last lines of its log:\n{}",
                        self.log_tail(name, 40)
                    ),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} not ready within 30 s; last lines of its log:\n{}",
                    self.log_tail(name, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
        for h in STANDARD_HOSTS.iter().chain(&self.extra_hosts) {
            let _ = run("ip", &["netns", "del", &self.ns(*h)]);
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

/// Directory of the workspace's built binaries (target/debug or target/release), found from the
/// running executable: target/<profile>/deps/<test> for tests, target/<profile>/<bin> for the demo.
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("cannot locate the target directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("cannot locate the target directory")?;
    }
    Ok(dir.to_owned())
}

/// Create `dir` if needed and check it is empty (a child's PATH with no program on it).
pub fn empty_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty", dir.display());
    }
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

/// Talk to a fork-agent's control socket: one request line, one response line (control-api's
/// blocking client; the request is JSON so tests can also send what no typed client would).
/// A connection failure is a [`control_api::ClientError`], a refusal a [`control_api::ApiError`].
pub fn control(socket: &Path, request: &serde_json::Value) -> Result<serde_json::Value> {
    let mut c = control_api::BlockingClient::connect(socket)?;
    let resp = c.call_line(&request.to_string())?;
    resp.into_result()
        .with_context(|| format!("control request {request} failed"))
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What fork-agent's control API errors start with while its data plane is coming up.
pub const NOT_READY: &str = fork_agent::io::control::NOT_READY;

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

/// Send `n` RTP packets (160-byte payloads, payload type `pt`) from `tx` to `dst`, `gap` apart,
/// on a thread; joining it gives the packets sent, in order.
pub fn send_rtp_in_background(
    tx: UdpSocket,
    dst: SocketAddr,
    n: u16,
    pt: u8,
    ssrc: u32,
    gap: Duration,
) -> std::thread::JoinHandle<Result<Vec<Vec<u8>>>> {
    std::thread::spawn(move || {
        let mut sent = Vec::with_capacity(n as usize);
        for i in 0..n {
            let payload = vec![(i & 0xff) as u8; 160];
            let p = rtp_packet(pt, i, 160 * u32::from(i), ssrc, &payload);
            tx.send_to(&p, dst)?;
            sent.push(p);
            std::thread::sleep(gap);
        }
        Ok(sent)
    })
}

/// The standard call's caller → callee audio, sent and received on threads (see
/// [`Scenario::play_caller_audio`]).
pub struct CallAudio {
    sender: std::thread::JoinHandle<Result<Packets>>,
    receiver: std::thread::JoinHandle<Result<Packets>>,
}

/// Datagrams, in order.
pub type Packets = Vec<Vec<u8>>;

impl CallAudio {
    /// Wait for both ends; `(sent, received)`, each in order.
    pub fn finish(self) -> Result<(Packets, Packets)> {
        let sent = self
            .sender
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))??;
        let got = self
            .receiver
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        Ok((sent, got))
    }
}

/// Receive up to `n` datagrams, stopping after `quiet` without one.
pub fn recv_all(sock: &UdpSocket, n: usize, quiet: Duration) -> Result<Vec<Vec<u8>>> {
    sock.set_read_timeout(Some(quiet))?;
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; 65_536];
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
/// The speech dialects, their checkers and WAV matching (e2e tests and the demo).
pub mod dialects;

/// What a voice bot's caller receives, and the checks a phone makes of it.
pub mod bot;

/// Test certificates made with rcgen: a CA, and leaves for a name or an IP address.
pub mod pki {
    use std::path::Path;

    use anyhow::Result;
    use rcgen::{
        date_time_ymd, BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };

    /// A self-signed CA named `name`.
    pub fn ca(name: &str) -> Result<(Certificate, KeyPair)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok((p.self_signed(&key)?, key))
    }

    /// A leaf for `san` (an IP literal becomes an IP SAN) signed by `issuer`, valid now unless
    /// `expired`; written as `<name>.crt` / `<name>.key` in `dir`.
    pub fn leaf(
        dir: &Path,
        name: &str,
        san: &str,
        issuer: &(Certificate, KeyPair),
        expired: bool,
    ) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![san.to_owned()])?;
        p.distinguished_name.push(DnType::CommonName, san);
        if expired {
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &issuer.0, &issuer.1)?;
        let crt = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        // Chain: leaf then its issuer, as a server sends it.
        std::fs::write(&crt, format!("{}{}", cert.pem(), issuer.0.pem()))?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((
            crt.to_string_lossy().into_owned(),
            k.to_string_lossy().into_owned(),
        ))
    }
}

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

/// An ng-agent configuration (docs/ng-agent.md): ng on `listen` with `ng_extra` TOML keys,
/// media ports 30000-39999 on `interfaces` (name, address), fork-agent's `control` socket and
/// speech server `asr`, the journal in `state`.
pub fn ng_agent_config(
    listen: &str,
    ng_extra: &str,
    interfaces: &[(&str, &str)],
    control: &Path,
    state: &Path,
) -> String {
    let mut cfg =
        format!("[ng]\nlisten = \"{listen}\"\n{ng_extra}\n[media]\nports = \"30000-39999\"\n");
    for (name, address) in interfaces {
        cfg += &format!("\n[[interface]]\nname = \"{name}\"\naddress = \"{address}\"\n");
    }
    cfg + &format!(
        "\n[fork_agent]\nsocket = \"{}\"\nspeech_server = \"asr\"\n\n[state]\ndir = \"{}\"\n",
        control.display(),
        state.display()
    )
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
    /// The standard fork-agent config of the topology: XDP on fa0/fb0, fork veth xfork0,
    /// per-request destinations allowed on the speech network, one speech server `asr` at
    /// `ws://{speech_ws}/stream` (the speech-server in the speech namespace listens on
    /// [`addrs::SPEECH_WS`]). It ends inside the `[[speech_server]]` table,
    /// so keys appended to it land there.
    pub fn fork_agent_config(
        pin_dir: &Path,
        socket: &Path,
        state_dir: &Path,
        speech_ws: &str,
    ) -> String {
        format!(
            r#"[dataplane]
pin_dir = "{pin}"
interfaces = ["fa0", "fb0"]
fork_interface = "xfork0"

[control]
socket = "{sock}"
state_dir = "{state}"

# Controllers (sip-agent's START url) may name servers on the speech network, and one name
# that never resolves (RFC 6761), for the DNS failure tests.
[destinations]
allow = ["*://10.77.3.0/24", "ws://asr.invalid"]

[[speech_server]]
name = "asr"
url = "ws://{ws}/stream"
"#,
            pin = pin_dir.display(),
            sock = socket.display(),
            state = state_dir.display(),
            ws = speech_ws,
        )
    }

    /// Build the topology, start speech-server and fork-agent, and wait until both are ready.
    pub fn start() -> Result<Scenario> {
        Scenario::start_with(&[], "")
    }

    /// [`Scenario::start`] with extra speech-server arguments (its test switches) and TOML
    /// keys appended to the `asr` `[[speech_server]]` entry of fork-agent's config.
    pub fn start_with(speech_args: &[&str], asr_extra: &str) -> Result<Scenario> {
        let mut topo = Topology::new()?;
        let (speech_out, summary) = Scenario::spawn_speech_server_with(&mut topo, speech_args)?;
        let mut s = Scenario::start_agent_in(topo, addrs::SPEECH_WS, asr_extra)?;
        s.speech_out = speech_out;
        s.summary = summary;
        Ok(s)
    }

    /// fork-agent in `topo` with the standard config for a speech server at `speech_ws` and
    /// `asr_extra` appended (keys of the `asr` entry, then any further tables). Starts no
    /// speech server: the caller runs its own (a checker, say), so `speech_out` and `summary`
    /// are empty.
    pub fn start_agent_in(topo: Topology, speech_ws: &str, asr_extra: &str) -> Result<Scenario> {
        let socket = topo.dir.join("fork-agent.sock");
        let config = topo.dir.join("fork-agent.toml");
        std::fs::write(
            &config,
            Scenario::fork_agent_config(&topo.pin_dir, &socket, &topo.dir.join("state"), speech_ws)
                + asr_extra,
        )?;
        let mut s = Scenario {
            topo,
            socket,
            config,
            speech_out: PathBuf::new(),
            summary: PathBuf::new(),
        };
        s.start_agent()?;
        Ok(s)
    }

    /// The reference speech-server, then fork-agent in `topo` with the standard config as
    /// `edit` changes it (an extra interface, `[control]` limits, ...), ready.
    pub fn start_edited(
        mut topo: Topology,
        edit: impl FnOnce(String) -> Result<String>,
    ) -> Result<Scenario> {
        let (speech_out, summary) = Scenario::spawn_speech_server(&mut topo)?;
        let socket = topo.dir.join("fork-agent.sock");
        let config = topo.dir.join("fork-agent.toml");
        let text = Scenario::fork_agent_config(
            &topo.pin_dir,
            &socket,
            &topo.dir.join("state"),
            addrs::SPEECH_WS,
        );
        std::fs::write(&config, edit(text)?)?;
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

    /// Start the reference speech-server at [`addrs::SPEECH_WS`] in the speech namespace;
    /// returns its output directory and summary file.
    pub fn spawn_speech_server(topo: &mut Topology) -> Result<(PathBuf, PathBuf)> {
        Scenario::spawn_speech_server_with(topo, &[])
    }

    /// [`Scenario::spawn_speech_server`] with extra arguments (test switches such as
    /// `--reject-handshake 503`).
    pub fn spawn_speech_server_with(
        topo: &mut Topology,
        extra: &[&str],
    ) -> Result<(PathBuf, PathBuf)> {
        let speech_out = topo.dir.join("speech");
        std::fs::create_dir_all(&speech_out)?;
        let summary = topo.dir.join("speech-summary.json");
        let speech_bin = bin("speech-server")?;
        let (out_s, summary_s) = (speech_out.to_string_lossy(), summary.to_string_lossy());
        let mut args = vec![
            "--listen",
            addrs::SPEECH_WS,
            "--out-dir",
            &out_s,
            "--summary",
            &summary_s,
            "--duration-secs",
            "300",
        ];
        args.extend_from_slice(extra);
        topo.spawn("speech-server", Host::Speech, &speech_bin, &args)?;
        Ok((speech_out, summary))
    }

    /// (Re)start fork-agent and wait for its control socket.
    pub fn start_agent(&mut self) -> Result<()> {
        self.start_agent_with_env(&[])
    }

    /// [`Scenario::start_agent`] with extra environment variables (e.g. `NOTIFY_SOCKET`).
    /// fork-agent's PATH is an empty directory (unless `env` sets one): it runs no program, so
    /// every test proves that a host without iproute2 works.
    pub fn start_agent_with_env(&mut self, env: &[(&str, &str)]) -> Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        let agent = bin("fork-agent")?;
        let cfg = self.config.to_string_lossy().into_owned();
        let empty = empty_dir(&self.topo.dir.join("empty-path"))?;
        let empty = empty.to_string_lossy();
        let mut env_with_path = vec![("PATH", empty.as_ref())];
        env_with_path.extend_from_slice(env);
        self.topo.spawn_env(
            "fork-agent",
            Host::Forker,
            &agent,
            &["run", "--config", &cfg],
            &env_with_path,
        )?;
        self.topo.wait_fork_agent(&self.socket, "fork-agent")
    }

    /// Fails unless the running fork-agent's PATH holds no `ip` (nor any other program): the
    /// harness really ran it without iproute2.
    pub fn assert_agent_runs_without_ip(&self) -> Result<()> {
        let pid = self
            .topo
            .pid("fork-agent")
            .context("fork-agent is not running")?;
        let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
        let path = environ
            .split(|b| *b == 0)
            .find_map(|v| v.strip_prefix(b"PATH="))
            .context("fork-agent has no PATH")?;
        for dir in String::from_utf8_lossy(path).split(':') {
            let programs: Vec<_> = std::fs::read_dir(dir)
                .with_context(|| format!("fork-agent's PATH entry {dir}"))?
                .collect();
            if !programs.is_empty() {
                bail!("fork-agent's PATH entry {dir} is not empty: {programs:?}");
            }
        }
        Ok(())
    }

    /// A control request; a failure carries the tail of fork-agent's log.
    pub fn ctl(&self, req: serde_json::Value) -> Result<serde_json::Value> {
        // The cause first (tests match on it), then where to look.
        control(&self.socket, &req).map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\nlast lines of the fork-agent log:\n{}",
                self.topo.log_tail("fork-agent", 20)
            )
        })
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

    /// Start forking and wait (bounded) until the speech server connection carries the call:
    /// like CUBE, audio is forked from the moment the stream is established.
    pub fn start_fork(
        &self,
        guid: &str,
        caller_flow: &str,
        callee_flow: &str,
    ) -> Result<serde_json::Value> {
        let started = self.ctl(serde_json::json!({"v":1,"op":"fork_start","fork":{
            "call_guid": guid, "call_id": "call-1", "from": "1000", "to": "2000",
            "server": "asr", "codec": "PCMU",
            "streams": [{"channel":"caller","flow":caller_flow},{"channel":"callee","flow":callee_flow}]
        }}))?;
        self.wait_fork_state(guid, "active")?;
        Ok(started)
    }

    /// Wait (bounded) until fork `guid` is in `state` (waiting, active, paused, reconnecting,
    /// failed) as `show_stream_service callid` reports it.
    pub fn wait_fork_state(&self, guid: &str, state: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.ctl(
                serde_json::json!({"v":1,"op":"show_stream_service","what":"callid","arg":guid}),
            )?;
            if v[0]["state"] == state {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("fork {guid} not {state} within 10 s: {v}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn counters(&self) -> Result<serde_json::Value> {
        self.ctl(serde_json::json!({"v":1,"op":"show_counters"}))
    }

    pub fn flows(&self) -> Result<serde_json::Value> {
        self.ctl(serde_json::json!({"v":1,"op":"show_flows"}))
    }

    /// Start the caller's audio of the standard v4 call: `n` RTP packets (`pt`, `ssrc`) from
    /// CALLER_RTP to A_LOCAL, `gap` apart, while the callee (CALLEE_RTP) collects them until
    /// 5 s pass without one.
    pub fn play_caller_audio(&self, n: u16, pt: u8, ssrc: u32, gap: Duration) -> Result<CallAudio> {
        use addrs::*;
        let tx = self.topo.udp_socket(Host::Caller, CALLER_RTP.parse()?)?;
        let receiver = spawn_receiver(
            self.topo.udp_socket(Host::Callee, CALLEE_RTP.parse()?)?,
            n as usize,
            Duration::from_secs(5),
        );
        let sender = send_rtp_in_background(tx, A_LOCAL.parse()?, n, pt, ssrc, gap);
        Ok(CallAudio { sender, receiver })
    }

    /// The `show_flows` entry of the flow at `local`; an error names the flows there are.
    pub fn flow(&self, local: &str) -> Result<serde_json::Value> {
        let flows = self.flows()?;
        flows
            .as_array()
            .and_then(|f| f.iter().find(|f| f["local"] == local))
            .cloned()
            .with_context(|| format!("no flow {local} in {flows}"))
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

/// Packet-level harness for the XDP programs: frame builders with from-scratch checksums, and an
/// [`kernel::XdpBench`] that loads the real fork-ebpf object through fork-agent's loader inside a
/// private network namespace and runs single frames through `BPF_PROG_TEST_RUN`.
///
/// Call order: [`kernel::XdpBench::run`] creates the namespace (`lo` plus two veth pairs), pins
/// the maps under a private bpffs directory, and calls the test body on a thread that entered the
/// namespace (test runs resolve `ingress_ifindex`, and `TX_PORTS` resolves its devices, in the
/// calling thread's namespace). The body installs flows and neighbours through the public map
/// handles of `DataPlane` and calls [`kernel::XdpBench::relay`] / [`kernel::XdpBench::capture`],
/// which return the action, the output frame split into metadata and packet, and the delta of
/// every `COUNTERS` slot. Everything is removed when `run` returns, also on panic.
pub mod kernel {
    use std::{
        fs::File,
        net::{IpAddr, SocketAddr},
        path::PathBuf,
        sync::atomic::Ordering,
    };

    use anyhow::{bail, Context, Result};
    use aya::programs::{TestRun, TestRunOptions};
    use fork_agent::{
        config::ForkPathSetting,
        io::ebpf::{unpin_all, DataPlane},
    };
    use fork_common::{
        FlowAction, FlowKey, FlowStats, ForkPath, ForkTag, NeighKey, NeighValue, Reason, Renumber,
        FORK_TAG_MAGIC, MAX_REASONS,
    };
    use nix::sched::CloneFlags;

    use super::{ns_run, run, COUNTER, PREFIX};

    pub const XDP_ABORTED: u32 = 0;
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const XDP_TX: u32 = 3;
    pub const XDP_REDIRECT: u32 = 4;

    /// The kernel's `struct xdp_md` as `BPF_PROG_TEST_RUN` takes it in `ctx_in`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    struct XdpMd {
        data: u32,
        data_end: u32,
        data_meta: u32,
        ingress_ifindex: u32,
        rx_queue_index: u32,
        egress_ifindex: u32,
    }

    impl XdpMd {
        fn bytes(&self) -> [u8; 24] {
            let mut b = [0u8; 24];
            for (i, w) in [
                self.data,
                self.data_end,
                self.data_meta,
                self.ingress_ifindex,
                self.rx_queue_index,
                self.egress_ifindex,
            ]
            .iter()
            .enumerate()
            {
                b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
            }
            b
        }

        fn from_bytes(b: &[u8; 24]) -> XdpMd {
            let w =
                |i: usize| u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
            XdpMd {
                data: w(0),
                data_end: w(1),
                data_meta: w(2),
                ingress_ifindex: w(3),
                rx_queue_index: w(4),
                egress_ifindex: w(5),
            }
        }
    }

    /// What one test run of a program did.
    #[derive(Clone, Debug)]
    pub struct Outcome {
        /// The program's return value (`XDP_*`).
        pub action: u32,
        /// XDP metadata in front of the frame after the run (the fork tag, if one was written).
        pub meta: Vec<u8>,
        /// The frame after the run (for the relay: without a tag pushed in front of it).
        pub frame: Vec<u8>,
        /// The fork tag the relay attached: in the metadata, or (headroom path) in front of the
        /// frame.
        pub tag: Option<ForkTag>,
        /// `COUNTERS` slots that changed, with their deltas (summed over CPUs).
        pub counted: Vec<(Reason, u64)>,
    }

    impl Outcome {
        /// The fork tag the relay attached, wherever the fork path puts it.
        pub fn tag(&self) -> Option<ForkTag> {
            self.tag
        }

        /// No tag anywhere: neither metadata nor a tag in front of the frame.
        pub fn untagged(&self) -> bool {
            self.tag.is_none() && self.meta.is_empty()
        }

        /// Assert the action and that exactly `reason` was counted, once.
        #[track_caller]
        pub fn expect(&self, action: u32, reason: Reason) {
            assert_eq!(
                (self.action, self.counted.as_slice()),
                (action, [(reason, 1)].as_slice()),
                "action and counted reasons"
            );
        }
    }

    const TAG_LEN: usize = std::mem::size_of::<ForkTag>();

    /// Decode a [`ForkTag`] from its 20 memory-order bytes.
    pub fn parse_tag(b: &[u8]) -> ForkTag {
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u16_at = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
        ForkTag {
            magic: u32_at(0),
            stream_id: u32_at(4),
            egress_ifindex: u32_at(8),
            rtp_off: u16_at(12),
            payload_off: u16_at(14),
            payload_len: u16_at(16),
            flags: u16_at(18),
        }
    }

    /// Encode a [`ForkTag`] as the kernel lays it out in memory.
    pub fn tag_bytes(t: &ForkTag) -> Vec<u8> {
        let mut b = Vec::with_capacity(20);
        for w in [t.magic, t.stream_id, t.egress_ifindex] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        for h in [t.rtp_off, t.payload_off, t.payload_len, t.flags] {
            b.extend_from_slice(&h.to_ne_bytes());
        }
        b
    }

    /// A loaded data plane in a private network namespace.
    pub struct XdpBench {
        pub dp: DataPlane,
        /// The fork path whose programs this run loaded.
        pub path: ForkPath,
        /// Namespace name (`ip netns`).
        pub ns: String,
        pub pin_dir: PathBuf,
        /// `lo` of the namespace: the ingress interface of a test run without `ingress_ifindex`.
        pub lo: u32,
        /// Media interfaces (veth `xk0` and `xk1`, peers of each other).
        pub media: [u32; 2],
        /// The fork veth (`xkf0`) and its peer (`xkf0c`).
        pub fork_if: u32,
        pub fork_peer: u32,
    }

    /// Removes the namespace and the pins however the bench ends.
    struct Cleanup {
        ns: String,
        pin_dir: PathBuf,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = unpin_all(&self.pin_dir);
            let _ = std::fs::remove_dir_all(&self.pin_dir);
            let _ = run("ip", &["netns", "del", &self.ns]);
        }
    }

    /// The ifindex of `dev` in network namespace `ns`.
    pub fn ifindex(ns: &str, dev: &str) -> Result<u32> {
        let out = ns_run(ns, "cat", &[&format!("/sys/class/net/{dev}/ifindex")])?;
        out.trim()
            .parse()
            .with_context(|| format!("ifindex of {dev}: {out:?}"))
    }

    impl XdpBench {
        /// Run `body` once per fork path: each time in a fresh namespace with that path's
        /// programs. A kernel that refuses the metadata programs runs the headroom path only, and
        /// says so; the headroom path must load everywhere.
        pub fn run<T: Send>(body: impl Fn(&mut XdpBench) -> Result<T> + Sync) -> Result<T> {
            let mut last = None;
            for path in ForkPath::ALL {
                match XdpBench::run_path(path, &body) {
                    Ok(t) => last = Some(t),
                    Err(e)
                        if path == ForkPath::Metadata
                            && format!("{e:#}").contains("verifier rejected") =>
                    {
                        eprintln!(
                            "this kernel refuses the metadata fork path; tested the headroom \
                             path only: {e:#}"
                        );
                    }
                    Err(e) => return Err(e.context(format!("on the {} fork path", path.name()))),
                }
            }
            last.context("no fork path ran")
        }

        /// Build the namespace, load the programs of `path` and run `body` inside the namespace.
        pub fn run_path<T: Send>(
            path: ForkPath,
            body: &(impl Fn(&mut XdpBench) -> Result<T> + Sync),
        ) -> Result<T> {
            super::require_root()?;
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let id = format!("{PREFIX}{}x{n}k", std::process::id());
            let cleanup = Cleanup {
                ns: id.clone(),
                pin_dir: PathBuf::from(format!("/sys/fs/bpf/{PREFIX}-{}", &id[PREFIX.len()..])),
            };
            if !super::is_bpffs("/sys/fs/bpf") {
                run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])?;
            }
            run("ip", &["netns", "add", &id])?;
            ns_run(&id, "ip", &["link", "set", "lo", "up"])?;
            for (a, b) in [("xk0", "xk1"), ("xkf0", "xkf0c")] {
                ns_run(
                    &id,
                    "ip",
                    &["link", "add", a, "type", "veth", "peer", "name", b],
                )?;
                ns_run(&id, "ip", &["link", "set", a, "up"])?;
                ns_run(&id, "ip", &["link", "set", b, "up"])?;
            }
            let lo = ifindex(&id, "lo")?;
            let media = [ifindex(&id, "xk0")?, ifindex(&id, "xk1")?];
            let (fork_if, fork_peer) = (ifindex(&id, "xkf0")?, ifindex(&id, "xkf0c")?);
            let ns_path = format!("/run/netns/{id}");
            let pin_dir = cleanup.pin_dir.clone();
            let result = std::thread::scope(|s| {
                s.spawn(move || -> Result<T> {
                    let f = File::open(&ns_path).with_context(|| format!("opening {ns_path}"))?;
                    nix::sched::setns(&f, CloneFlags::CLONE_NEWNET)?;
                    let setting = match path {
                        ForkPath::Metadata => ForkPathSetting::Metadata,
                        ForkPath::Headroom => ForkPathSetting::Headroom,
                    };
                    let dp = DataPlane::load(&pin_dir, setting)?;
                    let mut bench = XdpBench {
                        dp,
                        path,
                        ns: id.clone(),
                        pin_dir,
                        lo,
                        media,
                        fork_if,
                        fork_peer,
                    };
                    body(&mut bench)
                })
                .join()
            });
            drop(cleanup);
            match result {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }

        /// Every `COUNTERS` slot summed over CPUs, indexed by `Reason as usize`.
        pub fn counters(&self) -> Result<Vec<u64>> {
            (0..MAX_REASONS)
                .map(|i| Ok(self.dp.counters.get(&i, 0)?.iter().sum()))
                .collect()
        }

        /// `FLOW_STATS[index]`.
        pub fn stats(&self, index: u32) -> Result<FlowStats> {
            Ok(self.dp.flow_stats.get(&index, 0)?)
        }

        /// Run `prog` once over `meta ++ frame` arriving on `ingress` (0: the kernel's default,
        /// `lo`) and split its output.
        pub fn test_run(
            &mut self,
            prog: &str,
            meta: &[u8],
            frame: &[u8],
            ingress: u32,
        ) -> Result<Outcome> {
            let before = self.counters()?;
            let mut data_in = meta.to_vec();
            data_in.extend_from_slice(frame);
            let ctx = XdpMd {
                data: meta.len() as u32,
                data_end: data_in.len() as u32,
                ingress_ifindex: ingress,
                ..XdpMd::default()
            }
            .bytes();
            // Room for the frame plus whatever a program may prepend from the headroom.
            let mut data_out = vec![0u8; data_in.len() + 256];
            let mut ctx_out = [0u8; 24];
            let res = self
                .dp
                .xdp(prog)?
                .test_run(TestRunOptions {
                    data_in: Some(&data_in),
                    data_out: Some(&mut data_out),
                    ctx_in: Some(&ctx),
                    ctx_out: Some(&mut ctx_out),
                    ..TestRunOptions::default()
                })
                .with_context(|| format!("BPF_PROG_TEST_RUN of {prog}"))?;
            let out_ctx = XdpMd::from_bytes(&ctx_out);
            let size = res.data_size_out as usize;
            let meta_len = out_ctx.data as usize;
            if meta_len > size || size > data_out.len() {
                bail!("test run returned {size} bytes with {meta_len} of metadata");
            }
            let after = self.counters()?;
            let counted = before
                .iter()
                .zip(&after)
                .enumerate()
                .filter(|(_, (b, a))| a != b)
                .map(|(i, (b, a))| {
                    let reason = Reason::try_from(i as u32)
                        .map_err(|v| anyhow::anyhow!("counter slot {v} has no Reason"))?;
                    Ok((reason, a.wrapping_sub(*b)))
                })
                .collect::<Result<Vec<_>>>()?;
            let meta = data_out[..meta_len].to_vec();
            let tag = (meta.len() == TAG_LEN).then(|| parse_tag(&meta));
            Ok(Outcome {
                action: res.return_value,
                meta,
                frame: data_out[meta_len..size].to_vec(),
                tag,
                counted,
            })
        }

        /// The relay program of this path over `frame` arriving on `lo`. On the headroom path a
        /// tag pushed in front of the frame is split off into [`Outcome::tag`].
        pub fn relay(&mut self, frame: &[u8]) -> Result<Outcome> {
            let mut out = self.test_run(self.path.programs().relay, &[], frame, 0)?;
            if self.path == ForkPath::Headroom
                && out.frame.len() >= TAG_LEN
                && out.frame[..4] == FORK_TAG_MAGIC.to_ne_bytes()
            {
                out.tag = Some(parse_tag(&out.frame[..TAG_LEN]));
                out.frame.drain(..TAG_LEN);
            }
            Ok(out)
        }

        /// The capture program of this path over a frame carrying `tag` (metadata, or in front of
        /// the frame on the headroom path) arriving on the fork veth's peer.
        pub fn capture(&mut self, tag: &[u8], frame: &[u8]) -> Result<Outcome> {
            let peer = self.fork_peer;
            let prog = self.path.programs().capture;
            match self.path {
                ForkPath::Metadata => self.test_run(prog, tag, frame, peer),
                ForkPath::Headroom => {
                    let data = [tag, frame].concat();
                    self.test_run(prog, &[], &data, peer)
                }
            }
        }
    }

    /// MACs the relay writes, as `NEIGHBOURS` holds them.
    pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0d];
    pub const EGRESS_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x05];

    /// One `FLOWS` entry as a test describes it.
    #[derive(Clone, Debug)]
    pub struct FlowCfg {
        /// The anchored address packets arrive at (the key).
        pub local: SocketAddr,
        /// Our address on the egress leg (new source).
        pub src: SocketAddr,
        /// The peer on the egress leg (new destination).
        pub dst: SocketAddr,
        pub egress_ifindex: u32,
        /// Next hop on `egress_ifindex`: `dst`'s address unless a test routes elsewhere.
        pub nexthop: IpAddr,
        /// `FLOW_F_*`.
        pub flags: u8,
        pub stream_id: u32,
        pub stats_index: u32,
        /// Payload types forked as audio.
        pub pts: Vec<u8>,
        pub dtmf_pt: u8,
        /// Expected source for strict-source flows.
        pub expect: Option<SocketAddr>,
        /// Family written into the action (defaults to `local`'s).
        pub family: Option<u8>,
        /// Used with `FLOW_F_RENUMBER`.
        pub renumber: Renumber,
    }

    impl FlowCfg {
        pub fn new(local: SocketAddr, src: SocketAddr, dst: SocketAddr, egress: u32) -> FlowCfg {
            FlowCfg {
                local,
                src,
                dst,
                egress_ifindex: egress,
                nexthop: dst.ip(),
                flags: 0,
                stream_id: 7,
                stats_index: 3,
                pts: vec![0, 8],
                dtmf_pt: 101,
                expect: None,
                family: None,
                renumber: Renumber::default(),
            }
        }

        pub fn key(&self) -> FlowKey {
            FlowKey::new(self.local)
        }

        pub fn action(&self) -> FlowAction {
            let (family, src) = fork_common::addr_words(self.src.ip());
            let (_, dst) = fork_common::addr_words(self.dst.ip());
            let (_, nexthop_be) = fork_common::addr_words(self.nexthop);
            let (expect_addr_be, expect_port_be) = self.expect.map_or(([0; 4], 0), |e| {
                (fork_common::addr_words(e.ip()).1, e.port().to_be())
            });
            FlowAction {
                src_addr_be: src,
                dst_addr_be: dst,
                expect_addr_be,
                src_port_be: self.src.port().to_be(),
                dst_port_be: self.dst.port().to_be(),
                expect_port_be,
                family: self.family.unwrap_or(family),
                flags: self.flags,
                stream_id: self.stream_id,
                stats_index: self.stats_index,
                pt_mask: FlowAction::mask_of(&self.pts),
                dtmf_pt: self.dtmf_pt,
                _pad: [0; 3],
                egress_ifindex: self.egress_ifindex,
                nexthop_be,
                renumber: self.renumber,
            }
        }

        /// The frame the relay must emit for `input`: new MACs, addresses and ports, TTL 64,
        /// checksums recomputed from scratch by the builder.
        pub fn expected(&self, input: &FrameSpec) -> FrameSpec {
            FrameSpec {
                dmac: NEXT_HOP_MAC,
                smac: EGRESS_MAC,
                src: self.src,
                dst: self.dst,
                ttl: 64,
                ..input.clone()
            }
        }
    }

    impl XdpBench {
        /// Install `f` ready to relay and fork: its egress interface and the fork veth in
        /// `TX_PORTS`, the fork veth configured, its next hop resolved.
        pub fn install_forking(&mut self, f: &FlowCfg) -> Result<()> {
            self.add_tx_port(f.egress_ifindex)?;
            self.add_tx_port(self.fork_if)?;
            self.set_fork_if(self.fork_if)?;
            self.add_neighbour(f)?;
            self.install(f)
        }

        /// Replace the flow's action in one map update, keeping its stats (a talkspurt's start or
        /// end in inject mode).
        pub fn update(&mut self, f: &FlowCfg) -> Result<()> {
            self.dp.flows.insert(f.key(), f.action(), 0)?;
            Ok(())
        }

        /// Insert the flow and zero its `FLOW_STATS` slot (as fork-agent does on slot reuse).
        pub fn install(&mut self, f: &FlowCfg) -> Result<()> {
            self.dp.flows.insert(f.key(), f.action(), 0)?;
            self.dp
                .flow_stats
                .set(f.stats_index, FlowStats::default(), 0)?;
            Ok(())
        }

        /// Resolve `f`'s next hop in `NEIGHBOURS` to [`NEXT_HOP_MAC`] / [`EGRESS_MAC`].
        pub fn add_neighbour(&mut self, f: &FlowCfg) -> Result<()> {
            let (family, addr_be) = fork_common::addr_words(f.nexthop);
            let key = NeighKey {
                addr_be,
                ifindex: f.egress_ifindex,
                family,
                _pad: [0; 3],
            };
            let value = NeighValue {
                dmac: NEXT_HOP_MAC,
                smac: EGRESS_MAC,
                _pad: [0; 4],
            };
            self.dp.neighbours.insert(key, value, 0)?;
            Ok(())
        }

        /// Add an interface of this namespace to `TX_PORTS` (no devmap program).
        pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
            self.dp.tx_ports.insert(ifindex, ifindex, None, 0)?;
            Ok(())
        }

        /// Set `CONFIG.fork_ifindex` (0: forking unavailable).
        pub fn set_fork_if(&mut self, ifindex: u32) -> Result<()> {
            self.dp.config.set(
                0,
                fork_common::Config {
                    fork_ifindex: ifindex,
                    _pad: 0,
                },
                0,
            )?;
            Ok(())
        }

        /// A flow from `local` relayed out of media interface 1 with its neighbour resolved and
        /// the interface in `TX_PORTS`: the common case.
        pub fn relay_flow(&mut self, local: &str, src: &str, dst: &str) -> Result<FlowCfg> {
            let f = FlowCfg::new(local.parse()?, src.parse()?, dst.parse()?, self.media[1]);
            self.add_tx_port(f.egress_ifindex)?;
            self.add_neighbour(&f)?;
            self.install(&f)?;
            Ok(f)
        }
    }

    pub const ETH_P_IP: u16 = 0x0800;
    pub const ETH_P_IPV6: u16 = 0x86dd;
    pub const ETH_P_ARP: u16 = 0x0806;
    pub const ETH_P_8021Q: u16 = 0x8100;
    pub const ETH_P_8021AD: u16 = 0x88a8;

    /// An RTP packet (RFC 3550 §5.1) with every optional part.
    #[derive(Clone, Debug)]
    pub struct RtpSpec {
        pub version: u8,
        pub marker: bool,
        pub pt: u8,
        pub seq: u16,
        pub ts: u32,
        pub ssrc: u32,
        pub csrcs: Vec<u32>,
        /// Header extension (§5.3.1): profile word and data (a multiple of 4 bytes).
        pub ext: Option<(u16, Vec<u8>)>,
        pub payload: Vec<u8>,
        /// Padding octets to append (the last one holds the count), 0 for none.
        pub padding: u8,
    }

    impl RtpSpec {
        /// A plain PCMU packet with a 160-byte payload.
        pub fn pcmu(seq: u16) -> RtpSpec {
            RtpSpec {
                version: 2,
                marker: false,
                pt: 0,
                seq,
                ts: u32::from(seq).wrapping_mul(160),
                ssrc: 0x1122_3344,
                csrcs: Vec::new(),
                ext: None,
                payload: (0..160u16).map(|i| (i as u8) ^ 0x5a).collect(),
                padding: 0,
            }
        }

        /// Length of the header (fixed part, CSRCs and extension).
        pub fn header_len(&self) -> usize {
            12 + 4 * self.csrcs.len() + self.ext.as_ref().map_or(0, |(_, d)| 4 + d.len())
        }

        pub fn bytes(&self) -> Vec<u8> {
            let mut p = Vec::new();
            p.push(
                (self.version << 6)
                    | (u8::from(self.padding > 0) << 5)
                    | (u8::from(self.ext.is_some()) << 4)
                    | (self.csrcs.len() as u8 & 0x0f),
            );
            p.push((u8::from(self.marker) << 7) | (self.pt & 0x7f));
            p.extend_from_slice(&self.seq.to_be_bytes());
            p.extend_from_slice(&self.ts.to_be_bytes());
            p.extend_from_slice(&self.ssrc.to_be_bytes());
            for c in &self.csrcs {
                p.extend_from_slice(&c.to_be_bytes());
            }
            if let Some((profile, data)) = &self.ext {
                p.extend_from_slice(&profile.to_be_bytes());
                p.extend_from_slice(&((data.len() / 4) as u16).to_be_bytes());
                p.extend_from_slice(data);
            }
            p.extend_from_slice(&self.payload);
            if self.padding > 0 {
                p.extend(std::iter::repeat_n(0u8, usize::from(self.padding) - 1));
                p.push(self.padding);
            }
            p
        }
    }

    /// An RTCP sender report header plus `n` filler words (RFC 3550 §6.4.1): enough for the
    /// relay's classification, which looks at the first two octets only.
    pub fn rtcp_sr(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 200, 0, 6];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0u8; 20]);
        p
    }

    /// An Ethernet frame carrying one IP datagram. Every field a test varies is public; the
    /// builder computes lengths and checksums from scratch (RFC 791, RFC 768, RFC 8200 §8.1).
    #[derive(Clone, Debug)]
    pub struct FrameSpec {
        pub dmac: [u8; 6],
        pub smac: [u8; 6],
        /// VLAN tags, outermost first: (TPID, TCI).
        pub vlans: Vec<(u16, u16)>,
        pub src: SocketAddr,
        pub dst: SocketAddr,
        /// TTL / hop limit.
        pub ttl: u8,
        /// IP protocol / next header of the transport (17 = UDP).
        pub proto: u8,
        /// IPv4 options (a multiple of 4 bytes).
        pub ip_options: Vec<u8>,
        /// IPv4 flags and fragment offset word (DF = 0x4000).
        pub frag: u16,
        /// IPv6 extension header in front of the transport: (its type, its bytes; the builder
        /// writes the transport's next header into byte 0).
        pub v6_ext: Option<(u8, Vec<u8>)>,
        /// Leave the UDP checksum 0 (IPv4 only: "no checksum").
        pub zero_udp_csum: bool,
        /// UDP payload (for `proto != 17`, the transport bytes).
        pub payload: Vec<u8>,
    }

    pub const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    pub const OUR_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

    impl FrameSpec {
        pub fn udp(src: SocketAddr, dst: SocketAddr, payload: Vec<u8>) -> FrameSpec {
            FrameSpec {
                dmac: OUR_MAC,
                smac: PEER_MAC,
                vlans: Vec::new(),
                src,
                dst,
                ttl: 61,
                proto: 17,
                ip_options: Vec::new(),
                frag: 0x4000,
                v6_ext: None,
                zero_udp_csum: false,
                payload,
            }
        }

        fn transport(&self) -> Vec<u8> {
            if self.proto != 17 {
                return self.payload.clone();
            }
            let len = (8 + self.payload.len()) as u16;
            let mut u = Vec::with_capacity(len as usize);
            u.extend_from_slice(&self.src.port().to_be_bytes());
            u.extend_from_slice(&self.dst.port().to_be_bytes());
            u.extend_from_slice(&len.to_be_bytes());
            u.extend_from_slice(&[0, 0]);
            u.extend_from_slice(&self.payload);
            if !self.zero_udp_csum {
                let c = udp_checksum(self.src.ip(), self.dst.ip(), &u);
                u[6..8].copy_from_slice(&c.to_be_bytes());
            }
            u
        }

        pub fn bytes(&self) -> Vec<u8> {
            let mut f = Vec::new();
            f.extend_from_slice(&self.dmac);
            f.extend_from_slice(&self.smac);
            for (tpid, tci) in &self.vlans {
                f.extend_from_slice(&tpid.to_be_bytes());
                f.extend_from_slice(&tci.to_be_bytes());
            }
            let l4 = self.transport();
            match (self.src.ip(), self.dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                    let ihl = 20 + self.ip_options.len();
                    let mut h = Vec::with_capacity(ihl);
                    h.push(0x40 | (ihl / 4) as u8);
                    h.push(0xb8); // DSCP EF, as media usually is.
                    h.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
                    h.extend_from_slice(&0x1c46u16.to_be_bytes());
                    h.extend_from_slice(&self.frag.to_be_bytes());
                    h.push(self.ttl);
                    h.push(self.proto);
                    h.extend_from_slice(&[0, 0]);
                    h.extend_from_slice(&s.octets());
                    h.extend_from_slice(&d.octets());
                    h.extend_from_slice(&self.ip_options);
                    let c = !fold(sum16(&h, 0));
                    h[10..12].copy_from_slice(&c.to_be_bytes());
                    f.extend_from_slice(&h);
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                    let ext = self.v6_ext.as_ref().map(|(t, b)| {
                        let mut b = b.clone();
                        b[0] = self.proto;
                        (*t, b)
                    });
                    let ext_len = ext.as_ref().map_or(0, |(_, b)| b.len());
                    f.extend_from_slice(&[0x60, 0x00, 0x00, 0x00]);
                    f.extend_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                    f.push(ext.as_ref().map_or(self.proto, |(t, _)| *t));
                    f.push(self.ttl);
                    f.extend_from_slice(&s.octets());
                    f.extend_from_slice(&d.octets());
                    if let Some((_, b)) = ext {
                        f.extend_from_slice(&b);
                    }
                }
                _ => panic!("FrameSpec: source and destination must be one family"),
            }
            f.extend_from_slice(&l4);
            f
        }
    }

    /// An ARP request (RFC 826) for 10.0.0.1 from 10.0.0.2.
    pub fn arp_frame() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&PEER_MAC);
        f.extend_from_slice(&[10, 0, 0, 2]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 0, 1]);
        f
    }

    /// One's complement sum of `b` as big-endian 16-bit words (odd length: zero-padded), added to
    /// `acc` without folding.
    pub fn sum16(b: &[u8], mut acc: u64) -> u64 {
        let mut chunks = b.chunks_exact(2);
        for c in &mut chunks {
            acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            acc += u64::from(*last) << 8;
        }
        acc
    }

    pub fn fold(mut s: u64) -> u16 {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// UDP checksum over the pseudo-header and `udp` (its checksum field zero), 0 sent as 0xffff.
    pub fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
        let mut acc = 0;
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                acc = sum16(&s.octets(), acc);
                acc = sum16(&d.octets(), acc);
                acc += 17 + udp.len() as u64;
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                acc = sum16(&s.octets(), acc);
                acc = sum16(&d.octets(), acc);
                acc += udp.len() as u64 + 17;
            }
            _ => panic!("udp_checksum: mixed families"),
        }
        let c = !fold(sum16(udp, acc));
        if c == 0 {
            0xffff
        } else {
            c
        }
    }

    /// Where the layers of a frame built by [`FrameSpec`] start.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Layout {
        pub l3: usize,
        pub l4: usize,
        pub v6: bool,
    }

    /// Locate L3 and L4 of an Ethernet frame (VLAN tags, IPv4 options, no IPv6 extensions).
    pub fn layout(f: &[u8]) -> Result<Layout> {
        let mut off = 12;
        let mut proto = u16::from_be_bytes([f[off], f[off + 1]]);
        while proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            off += 4;
            proto = u16::from_be_bytes([f[off], f[off + 1]]);
        }
        let l3 = off + 2;
        match proto {
            ETH_P_IP => Ok(Layout {
                l3,
                l4: l3 + usize::from(f[l3] & 0x0f) * 4,
                v6: false,
            }),
            ETH_P_IPV6 => Ok(Layout {
                l3,
                l4: l3 + 40,
                v6: true,
            }),
            other => bail!("ethertype {other:#06x} is not IP"),
        }
    }

    /// Recompute the IPv4 header checksum and the UDP checksum of `f` from scratch and compare
    /// them with the frame's (a zero IPv4 UDP checksum is accepted as "none").
    pub fn check_checksums(f: &[u8]) -> Result<()> {
        let l = layout(f)?;
        let (src, dst): (IpAddr, IpAddr) = if l.v6 {
            let s: [u8; 16] = f[l.l3 + 8..l.l3 + 24].try_into()?;
            let d: [u8; 16] = f[l.l3 + 24..l.l3 + 40].try_into()?;
            (s.into(), d.into())
        } else {
            let mut h = f[l.l3..l.l4].to_vec();
            let got = u16::from_be_bytes([h[10], h[11]]);
            h[10..12].copy_from_slice(&[0, 0]);
            let want = !fold(sum16(&h, 0));
            if got != want {
                bail!("IPv4 header checksum {got:#06x}, recomputed {want:#06x}");
            }
            let s: [u8; 4] = f[l.l3 + 12..l.l3 + 16].try_into()?;
            let d: [u8; 4] = f[l.l3 + 16..l.l3 + 20].try_into()?;
            (s.into(), d.into())
        };
        let ulen = usize::from(u16::from_be_bytes([f[l.l4 + 4], f[l.l4 + 5]]));
        let mut u = f[l.l4..l.l4 + ulen].to_vec();
        let got = u16::from_be_bytes([u[6], u[7]]);
        if got == 0 && !l.v6 {
            return Ok(());
        }
        u[6..8].copy_from_slice(&[0, 0]);
        let want = udp_checksum(src, dst, &u);
        if got != want {
            bail!("UDP checksum {got:#06x}, recomputed {want:#06x}");
        }
        Ok(())
    }
}

/// Shared setup of the fork_* tests that run fork-agent against one or more real
/// speech-server processes in a [`Topology`]: start servers and fork-agent with the given
/// `[[speech_server]]` sections, subscribe to `fork_status` events, add caller flows, start a
/// caller-only fork, send RTP from the caller namespace and read a server's JSON summary.
///
/// Call order: [`fork_rig::spawn_speech`] (one per server), [`fork_rig::start_fork_agent`],
/// [`fork_rig::Events::subscribe`], then [`fork_rig::caller_flow`] / [`fork_rig::fork_caller`] /
/// [`fork_rig::send_rtp`] per call, [`fork_rig::Events::until`] to wait for statuses, and
/// [`fork_rig::speech_summary`] at the end.
pub mod fork_rig {
    use super::*;
    use serde_json::{json, Value};

    /// The speech namespace's address.
    pub const SPEECH_IP: &str = "10.77.3.2";

    /// Starts speech-server `name` on `SPEECH_IP:port` (extra flags appended); returns the path of
    /// the summary it writes on SIGTERM.
    pub fn spawn_speech(
        t: &mut Topology,
        name: &str,
        port: u16,
        extra: &[&str],
    ) -> Result<PathBuf> {
        let out = t.dir.join(name);
        std::fs::create_dir_all(&out)?;
        let summary = t.dir.join(format!("{name}-summary.json"));
        let listen = format!("{SPEECH_IP}:{port}");
        let out_s = out.to_string_lossy().into_owned();
        let sum_s = summary.to_string_lossy().into_owned();
        let mut args = vec![
            "--listen",
            &listen,
            "--out-dir",
            &out_s,
            "--summary",
            &sum_s,
            "--duration-secs",
            "120",
        ];
        args.extend_from_slice(extra);
        t.spawn(name, Host::Speech, &bin("speech-server")?, &args)?;
        Ok(summary)
    }

    /// Writes a fork-agent config with `servers` (TOML `[[speech_server]]` sections) after the
    /// topology's dataplane and control sections, starts fork-agent in the forker namespace and
    /// waits for its control socket; returns the socket path.
    pub fn start_fork_agent(t: &mut Topology, servers: &str) -> Result<PathBuf> {
        let socket = t.dir.join("fork-agent.sock");
        let cfg = t.dir.join("fork-agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "[dataplane]\npin_dir = \"{pin}\"\ninterfaces = [\"fa0\", \"fb0\"]\n\
                 [control]\nsocket = \"{sock}\"\nstate_dir = \"{state}\"\n{servers}",
                pin = t.pin_dir.display(),
                sock = socket.display(),
                state = t.dir.join("state").display(),
            ),
        )?;
        let cfg_s = cfg.to_string_lossy().into_owned();
        // No program on PATH, as in Scenario::start_agent_with_env: fork-agent runs none.
        let empty = crate::empty_dir(&t.dir.join("empty-path"))?;
        t.spawn_env(
            "fork-agent",
            Host::Forker,
            &bin("fork-agent")?,
            &["run", "--config", &cfg_s],
            &[("PATH", &empty.to_string_lossy())],
        )?;
        t.wait_fork_agent(&socket, "fork-agent")?;
        Ok(socket)
    }

    /// A `subscribe`d control connection and the `fork_status` events read from it so far
    /// (as JSON, the way the tests look at them).
    pub struct Events {
        client: control_api::BlockingClient,
        pub seen: Vec<Value>,
    }

    impl Events {
        pub fn subscribe(socket: &Path) -> Result<Events> {
            let mut client =
                control_api::BlockingClient::connect(socket).context("subscribe connection")?;
            client.subscribe().context("subscribe")?;
            Ok(Events {
                client,
                seen: Vec::new(),
            })
        }

        /// Reads events until `done(seen)` holds, bounded by `limit`.
        pub fn until(&mut self, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Result<()> {
            let deadline = Instant::now() + limit;
            while !done(&self.seen) {
                if Instant::now() > deadline {
                    bail!("events so far: {:#?}", self.seen);
                }
                match self.client.next_event(Duration::from_millis(200)) {
                    Ok(Some(ev @ control_api::Event::ForkStatus { .. })) => {
                        self.seen.push(serde_json::to_value(ev)?);
                    }
                    Ok(_) => {}
                    Err(control_api::ClientError::Closed) => bail!("control connection closed"),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }
    }

    /// Whether `seen` holds a `fork_status` of `guid` with `status` (and `error`, when given).
    pub fn has(seen: &[Value], guid: &str, status: &str, error: Option<&str>) -> bool {
        seen.iter().any(|e| {
            e["call_guid"] == guid && e["status"] == status && error.is_none_or(|x| e["error"] == x)
        })
    }

    /// The callee-side address call `n`'s caller flow relays to.
    pub fn callee_addr(n: u16) -> String {
        format!("10.77.2.2:{}", 41000 + 2 * n)
    }

    /// Adds call `n`'s caller flow (10.77.1.1:31000+2n → 10.77.2.2:41000+2n); its local address.
    pub fn caller_flow(socket: &Path, n: u16) -> Result<String> {
        let local = format!("10.77.1.1:{}", 31000 + 2 * n);
        let src = format!("10.77.2.1:{}", 31000 + 2 * n);
        control(
            socket,
            &json!({"v":1,"op":"flow_add","flow":{"local":local,"src":src,"dst":callee_addr(n)}}),
        )?;
        Ok(local)
    }

    /// Starts a PCMU fork of one caller stream on `flow` to profile `server`.
    pub fn fork_caller(socket: &Path, guid: &str, server: &str, flow: &str) -> Result<Value> {
        fork_caller_to(socket, guid, server, flow, None)
    }

    /// [`fork_caller`] with a per-request `destination` object (control-api `Destination`).
    pub fn fork_caller_to(
        socket: &Path,
        guid: &str,
        server: &str,
        flow: &str,
        destination: Option<Value>,
    ) -> Result<Value> {
        let mut fork = json!({"call_guid":guid,"server":server,"codec":"PCMU",
            "streams":[{"channel":"caller","flow":flow}]});
        if let Some(d) = destination {
            fork["destination"] = d;
        }
        control(socket, &json!({"v":1,"op":"fork_start","fork":fork}))
    }

    /// Sends `n` 20 ms PCMU packets (every `gap`) from the caller namespace to `to`.
    pub fn send_rtp(t: &Topology, to: &str, n: u16, gap: Duration) -> Result<()> {
        let tx = t.udp_socket(Host::Caller, "10.77.1.2:0".parse()?)?;
        let dst: SocketAddr = to.parse()?;
        for i in 0..n {
            tx.send_to(&rtp_packet(0, i, 160 * u32::from(i), 7, &[0xff; 160]), dst)?;
            std::thread::sleep(gap);
        }
        Ok(())
    }

    /// Stops speech-server `name` (SIGTERM) and reads the summary it wrote.
    pub fn speech_summary(t: &mut Topology, name: &str, summary: &Path) -> Result<Value> {
        t.signal(name, nix::sys::signal::Signal::SIGTERM)?;
        let text = std::fs::read_to_string(summary)
            .with_context(|| format!("{name} wrote no summary; log:\n{}", t.log(name)))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// Runs `f` (which opens a socket) on a helper thread that alone enters the network namespace
/// at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`); the socket stays in there.
pub fn in_netns<T: Send + 'static>(
    path: String,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || -> Result<T> {
        let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {path}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns helper thread panicked"))?
}
