//! Shared pieces of the connection-limit tests (fork_control_limits, sip_conn_limits,
//! sip_oversize_message, turn_conn_limits, turn_oversize_frame): extra client addresses in a
//! namespace, many TCP connections from a chosen source address, telling which of them the
//! server closed, and a daemon's RSS and CPU time from /proc.
#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::{
    fs::File,
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;
use xdpfork_tests::{ns_run, Host, Topology};

/// Adds `ip`/24 to the caller's link (`ca0`), so attacks can come from an address other than
/// the legitimate client's 10.77.1.2.
pub fn add_caller_address(topo: &Topology, ip: &str) -> Result<()> {
    ns_run(
        &topo.ns(Host::Caller),
        "ip",
        &["addr", "add", &format!("{ip}/24"), "dev", "ca0"],
    )?;
    Ok(())
}

/// `n` TCP connections from `bind` (in `h`'s namespace) to `to`, opened on a helper thread that
/// alone enters the namespace. A connect the server's backlog cannot take fails the call.
pub fn tcp_connect_many(
    topo: &Topology,
    h: Host,
    bind: IpAddr,
    to: SocketAddr,
    n: usize,
) -> Result<Vec<TcpStream>> {
    use nix::sys::socket::{
        bind as bind_fd, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let path = format!("/run/netns/{}", topo.ns(h));
    std::thread::spawn(move || -> Result<Vec<TcpStream>> {
        let f = File::open(&path)?;
        nix::sched::setns(&f, CloneFlags::CLONE_NEWNET)?;
        let (IpAddr::V4(b), SocketAddr::V4(t)) = (bind, to) else {
            bail!("IPv4 only");
        };
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            bind_fd(
                fd.as_raw_fd(),
                &SockaddrIn::from(std::net::SocketAddrV4::new(b, 0)),
            )?;
            connect(fd.as_raw_fd(), &SockaddrIn::from(t))
                .with_context(|| format!("connect {to}"))?;
            out.push(TcpStream::from(fd));
        }
        Ok(out)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns helper thread panicked"))?
}

/// Whether the server closed this connection (EOF or reset), without waiting.
pub fn is_closed<S: AsRawFd>(s: &S) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let mut b = [0u8; 1];
    match recv(
        s.as_raw_fd(),
        &mut b,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_PEEK,
    ) {
        Ok(0) => true,
        Ok(_) => false,
        Err(nix::errno::Errno::EAGAIN) => false,
        Err(_) => true,
    }
}

/// How many of `conns` the server still holds open.
pub fn count_open<S: AsRawFd>(conns: &[S]) -> usize {
    conns.iter().filter(|c| !is_closed(*c)).count()
}

/// Polls `f` every 50 ms until it holds or `limit` passes.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of the one process whose command line contains `needle` (e.g. its config path,
/// unique per test topology).
pub fn pid_of(needle: &str) -> Result<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && !cmd.contains("check-config") {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [pid] => Ok(*pid),
        _ => bail!("expected one process with {needle:?} in its command line, found {found:?}"),
    }
}

/// VmRSS of `pid` in KiB.
pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// User plus system CPU time of `pid` (all threads) in clock ticks (/proc/PID/stat fields 14
/// and 15).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Clock ticks per second in /proc/PID/stat: USER_HZ, 100 on every Linux ABI.
pub const CLK_TCK: u64 = 100;

/// Open descriptors of `pid`.
pub fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Lines of `log` containing `needle`.
pub fn log_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}
