//! `fork-agent check-kernel`: will xdpfork run on this kernel, and how?
//!
//! Nothing here trusts a list of helpers (`bpftool feature probe` reports `bpf_xdp_adjust_meta`
//! as available on kernel builds that refuse it to XDP programs). Each row is proven by doing the
//! real thing: loading every program variant, pinning the maps, attaching native XDP to a scratch
//! veth pair, and sending one RTP packet through the relay and the fork broadcast into an AF_XDP
//! socket, all inside a private network namespace that exists only for this thread and vanishes
//! with it (so nothing is left behind, even if the check is killed).
//!
//! It also reads, without changing anything, the maps pinned under the agent's pin directory and
//! says what a start would do with them: adopt, migrate from an older layout, or refuse
//! (docs/maps.md "Upgrades and layout changes").
//!
//! Call order: [`run`] returns a [`Report`]; its `Display` is the table the CLI prints and
//! [`Report::runs`] decides the exit code.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::programs::XdpMode;
use fork_common::{
    FlowKey, ForkPath, ForkTag, NeighKey, NeighValue, FAMILY_V4, FLOW_F_FORK, FORK_TAG_MAGIC,
};

use crate::{
    config::{ForkPathSetting, XdpAttachMode},
    core::{flows::relay_action, map_layout::Plan},
    io::{
        ebpf::{pinned_plans, probe_programs, unpin_all, DataPlane},
        xsk::{XskReader, XDP_ZEROCOPY},
    },
};

/// How a row came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Worth knowing, not needed (zero-copy on veth, a fork path `auto` does not use).
    Note,
    /// xdpfork cannot run (or cannot use this path) because of it.
    Fail,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// A failure here stops the product from running at all (not just one fork path).
    pub essential: bool,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub kernel: String,
    pub rows: Vec<Row>,
    /// The fork path fork-agent would use with this setting, if any works.
    pub path: Option<ForkPath>,
    /// Verifier tails of refused programs, printed under the table.
    pub refusals: Vec<(String, String)>,
}

impl Report {
    /// Whether xdpfork runs here: a usable fork path and no essential failure.
    pub fn runs(&self) -> bool {
        self.path.is_some()
            && !self
                .rows
                .iter()
                .any(|r| r.essential && r.status == Status::Fail)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "xdpfork check-kernel: will xdpfork run here, and how?")?;
        writeln!(f, "kernel: {}", self.kernel)?;
        writeln!(f)?;
        let w = self.rows.iter().map(|r| r.check.len()).max().unwrap_or(5);
        writeln!(f, "  {:<w$}  {:<6}  detail", "check", "result")?;
        for r in &self.rows {
            let s = match r.status {
                Status::Ok => "OK",
                Status::Note => "note",
                Status::Fail => "FAIL",
            };
            writeln!(f, "  {:<w$}  {s:<6}  {}", r.check, r.detail)?;
        }
        for (prog, tail) in &self.refusals {
            writeln!(f, "\n{prog} was refused: {tail}")?;
        }
        writeln!(f)?;
        match (self.runs(), self.path) {
            (true, Some(p)) => write!(
                f,
                "verdict: xdpfork runs here, forking on the {} path",
                p.name()
            ),
            _ => {
                let why: Vec<&str> = self
                    .rows
                    .iter()
                    .filter(|r| r.status == Status::Fail && r.essential)
                    .map(|r| r.check.as_str())
                    .collect();
                write!(f, "verdict: xdpfork cannot run here: {}", why.join(", "))
            }
        }
    }
}

fn row(
    check: impl Into<String>,
    status: Status,
    detail: impl Into<String>,
    essential: bool,
) -> Row {
    Row {
        check: check.into(),
        status,
        detail: detail.into(),
        essential,
    }
}

fn kernel_name() -> String {
    match nix::sys::utsname::uname() {
        Ok(u) => format!(
            "{} {}",
            u.release().to_string_lossy(),
            u.version().to_string_lossy()
        ),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Run every check. `setting` is the `fork_path` fork-agent would be started with, `pin_dir`
/// its `dataplane.pin_dir`.
pub fn run(setting: ForkPathSetting, pin_dir: &Path) -> Report {
    let mut rows = Vec::new();
    let mut refusals = Vec::new();

    let bpffs = crate::io::ebpf::ensure_bpffs(&PathBuf::from("/sys/fs/bpf/xdpfork-check-probe"))
        .map(|()| std::fs::remove_dir("/sys/fs/bpf/xdpfork-check-probe"));
    rows.push(match bpffs {
        Ok(_) => row("bpffs (/sys/fs/bpf)", Status::Ok, "mounted", true),
        Err(e) => row("bpffs (/sys/fs/bpf)", Status::Fail, format!("{e:#}"), true),
    });
    let btf = std::fs::metadata("/sys/kernel/btf/vmlinux");
    rows.push(match btf {
        Ok(m) => row(
            "BTF (/sys/kernel/btf/vmlinux)",
            Status::Ok,
            format!("{} KiB", m.len() / 1024),
            true,
        ),
        Err(e) => row(
            "BTF (/sys/kernel/btf/vmlinux)",
            Status::Fail,
            format!("{e}: the kernel needs CONFIG_DEBUG_INFO_BTF=y"),
            true,
        ),
    });

    rows.push(pinned_maps_row(pin_dir));

    // Every program of every path, loaded for real.
    let mut accepted: Vec<ForkPath> = ForkPath::ALL.to_vec();
    match probe_programs() {
        Ok(results) => {
            for crate::io::ebpf::ProgramProbe {
                path,
                program: prog,
                result: res,
            } in results
            {
                let check = format!("load {prog} ({} path)", path.name());
                match res {
                    Ok(()) => rows.push(row(check, Status::Ok, "verifier accepted it", false)),
                    Err(tail) => {
                        accepted.retain(|p| *p != path);
                        let first = tail.lines().last().unwrap_or("").trim().to_owned();
                        rows.push(row(check, Status::Fail, first, false));
                        refusals.push((prog.to_owned(), tail));
                    }
                }
            }
        }
        Err(e) => {
            accepted.clear();
            rows.push(row(
                "load the eBPF object",
                Status::Fail,
                format!("{e:#}"),
                true,
            ));
        }
    }
    let path = setting
        .candidates()
        .iter()
        .copied()
        .find(|p| accepted.contains(p));
    if path.is_none() {
        rows.push(row(
            "program set for fork_path",
            Status::Fail,
            format!(
                "the kernel refused every set `{}` may use",
                setting_name(setting)
            ),
            true,
        ));
    }

    // The data plane for real, in a namespace of its own.
    if let Some(p) = path {
        match std::thread::scope(|s| s.spawn(|| data_plane_checks(setting)).join()) {
            Ok(r) => rows.extend(r),
            Err(_) => rows.push(row(
                "data plane in a scratch namespace",
                Status::Fail,
                "the check thread panicked",
                true,
            )),
        }
        let used = if setting == ForkPathSetting::Auto && p != ForkPath::ALL[0] {
            format!(
                "{} (auto: the kernel refused the {} programs)",
                p.name(),
                ForkPath::ALL[0].name()
            )
        } else {
            format!("{} (fork_path = {})", p.name(), setting_name(setting))
        };
        rows.push(row("fork path fork-agent will use", Status::Ok, used, true));
    }
    Report {
        kernel: kernel_name(),
        rows,
        path,
        refusals,
    }
}

/// What a start would do with the maps pinned under `pin_dir`; reads them only.
fn pinned_maps_row(pin_dir: &Path) -> Row {
    let check = format!("pinned maps ({})", pin_dir.display());
    let plans = match pinned_plans(pin_dir) {
        Ok(p) => p,
        Err(e) => return row(check, Status::Fail, format!("{e:#}"), true),
    };
    let (mut adopted, mut migrated, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for (name, plan) in plans {
        match plan {
            Ok(Plan::Create) => {}
            Ok(Plan::Adopt) => adopted.push(name),
            Ok(Plan::Migrate(m) | Plan::Resume(m) | Plan::Finish(m)) => {
                migrated.push(format!("{name} (from the {} layout)", m.until()))
            }
            Err(e) => refused.push(e.to_string()),
        }
    }
    if !refused.is_empty() {
        return row(
            check,
            Status::Fail,
            format!(
                "fork-agent will refuse to start: {}; `fork-agent unpin --pin-dir {}` removes \
                 the pins, and calls in progress lose their kernel relay until their flows are \
                 added again",
                refused.join("; "),
                pin_dir.display()
            ),
            true,
        );
    }
    if !migrated.is_empty() {
        return row(
            check,
            Status::Note,
            format!(
                "migrated at start, entries kept and calls relayed: {}",
                migrated.join(", ")
            ),
            false,
        );
    }
    let detail = if adopted.is_empty() {
        "none pinned: the first start creates them".to_owned()
    } else {
        format!("{} fit this build and are re-adopted", adopted.len())
    };
    row(check, Status::Ok, detail, true)
}

fn setting_name(s: ForkPathSetting) -> &'static str {
    match s {
        ForkPathSetting::Auto => "auto",
        ForkPathSetting::Metadata => "metadata",
        ForkPathSetting::Headroom => "headroom",
    }
}

/// Removes the scratch pins however the check ends (the namespace goes with the thread).
struct ScratchPins(PathBuf);

impl Drop for ScratchPins {
    fn drop(&mut self) {
        let _ = unpin_all(&self.0);
    }
}

/// Scratch topology, inside the calling thread's private namespace:
/// `xck0` (relay attached) ─veth─ `xck1` (where the test packet is sent from and the relayed copy
/// comes back), and the fork veth `xckf` ─ `xckfc` (capture + AF_XDP).
fn data_plane_checks(setting: ForkPathSetting) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        rows.push(row(
            "private network namespace",
            Status::Fail,
            format!("unshare(CLONE_NEWNET): {e} (needs CAP_SYS_ADMIN)"),
            true,
        ));
        return rows;
    }
    let pins = ScratchPins(PathBuf::from(format!(
        "/sys/fs/bpf/xdpfork-check-{}",
        std::process::id()
    )));
    let mut dp = match DataPlane::load(&pins.0, setting) {
        Ok(dp) => {
            rows.push(row(
                "pin maps (BTF) and links in bpffs",
                Status::Ok,
                format!("{} maps pinned", fork_common::ALL_MAPS.len()),
                true,
            ));
            dp
        }
        Err(e) => {
            rows.push(row(
                "pin maps (BTF) and links in bpffs",
                Status::Fail,
                format!("{e:#}"),
                true,
            ));
            return rows;
        }
    };
    let outcome = scratch_relay(&mut dp, &mut rows);
    if let Err(e) = outcome {
        rows.push(row(
            "relay + fork one RTP packet",
            Status::Fail,
            format!("{e:#}"),
            true,
        ));
    }
    drop(dp);
    drop(pins);
    rows
}

const LOCAL: &str = "10.254.0.1:4000";
const RELAY_SRC: &str = "10.254.0.1:4002";
const PEER: &str = "10.254.0.2:5000";
const STREAM: u32 = 7;

fn scratch_relay(dp: &mut DataPlane, rows: &mut Vec<Row>) -> Result<()> {
    // A veth pair with both ends up: the same plumbing as the fork veth.
    crate::io::netdev::ensure_fork_veth("xck0", "xck1").context("creating a scratch veth pair")?;
    let progs = dp.fork_path().programs();
    if let Err(e) = dp.attach(&["xck0".to_owned()], "xckf", XdpAttachMode::Native) {
        rows.push(row(
            "native XDP on a veth pair",
            Status::Fail,
            format!("{e:#}"),
            true,
        ));
        return Ok(());
    }
    rows.push(row(
        "native XDP on a veth pair",
        Status::Ok,
        format!(
            "{} and {} attached (driver mode)",
            progs.relay, progs.capture
        ),
        true,
    ));
    // The relayed copy returns to xck1; an XDP program there gives veth the NAPI it needs to
    // take redirected frames. The headroom capture program passes untagged frames to the stack
    // (on the metadata path a veth peer still sees the metadata, which the metadata capture
    // program would take for a fork copy).
    let receiver = ForkPath::Headroom.programs().capture;
    if dp.fork_path() != ForkPath::Headroom {
        dp.xdp(receiver)?
            .load()
            .context("loading a receive program for xck1")?;
    }
    dp.xdp(receiver)?
        .attach("xck1", XdpMode::Driver)
        .context("attaching a receive program to xck1")?;

    // Zero-copy first: a queue takes one socket.
    match XskReader::open_with("xckfc", 0, 64, XDP_ZEROCOPY) {
        Ok(_) => rows.push(row(
            "AF_XDP zero-copy",
            Status::Ok,
            "supported on veth",
            false,
        )),
        Err(e) => rows.push(row(
            "AF_XDP zero-copy",
            Status::Note,
            format!("not on veth ({e:#}); copy mode is used"),
            false,
        )),
    }
    let reader = XskReader::open("xckfc", 0, 64).context("AF_XDP socket in copy mode")?;
    dp.set_xsk(0, reader.fd())?;

    let ifx = |n: &str| crate::io::netdev::ifindex(n);
    let (xck0, xck1) = (ifx("xck0")?, ifx("xck1")?);
    let macs = crate::io::netdev::link_macs()?;
    let mac = |i: u32| {
        macs.get(&i)
            .copied()
            .with_context(|| format!("MAC of ifindex {i}"))
    };
    let (mac0, mac1) = (mac(xck0)?, mac(xck1)?);

    let local: SocketAddr = LOCAL.parse()?;
    let src: SocketAddr = RELAY_SRC.parse()?;
    let peer: SocketAddr = PEER.parse()?;
    let (family, addr_be) = fork_common::addr_words(local.ip());
    let key = FlowKey {
        addr_be,
        port_be: local.port().to_be(),
        family,
        _pad: 0,
    };
    let mut action = relay_action(src, peer, 0);
    action.flags |= FLOW_F_FORK;
    action.stream_id = STREAM;
    action.egress_ifindex = xck0;
    action.nexthop_be = fork_common::addr_words(peer.ip()).1;
    dp.neighbours.insert(
        NeighKey {
            addr_be: action.nexthop_be,
            ifindex: xck0,
            family: FAMILY_V4,
            _pad: [0; 3],
        },
        NeighValue {
            dmac: mac1,
            smac: mac0,
            _pad: [0; 4],
        },
        0,
    )?;
    dp.flows.insert(key, action, 0)?;

    // Listen on xck1 for the relayed copy, and on the fork socket for the clone.
    let sniff = packet_socket(xck1)?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let stop = Arc::new(AtomicBool::new(false));
    let reader_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || reader.run(stop, Duration::ZERO, &mut Collect(tx)))
    };
    let frame = rtp_frame(mac1, mac0, peer, local);
    send_frame(&sniff, xck1, &frame)?;

    let relayed = receive_relayed(&sniff, src, peer, Duration::from_secs(2));
    let forked = rx.recv_timeout(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let _ = reader_thread.join();

    // What the programs counted, for a failure's detail.
    let counted: Vec<String> = dp
        .counters()
        .map(|c| {
            c.into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| format!("{}={n}", r.name()))
                .collect()
        })
        .unwrap_or_default();
    let counted = counted.join(" ");
    match relayed {
        Ok(f) if f.len() == frame.len() && f[..6] == mac1 => rows.push(row(
            "relay + devmap broadcast: relayed copy",
            Status::Ok,
            format!(
                "left untagged ({} bytes, UDP {} -> {})",
                f.len(),
                src.port(),
                peer.port()
            ),
            true,
        )),
        Ok(f) => rows.push(row(
            "relay + devmap broadcast: relayed copy",
            Status::Fail,
            format!(
                "arrived as {} bytes (sent {}): the tag was not taken off",
                f.len(),
                frame.len()
            ),
            true,
        )),
        Err(e) => rows.push(row(
            "relay + devmap broadcast: relayed copy",
            Status::Fail,
            format!("{e:#} (counted: {counted})"),
            true,
        )),
    }
    let tag_len = std::mem::size_of::<ForkTag>();
    match forked {
        Ok(f) if f.len() == tag_len + frame.len() && tag_of(&f) == Some(STREAM) => rows.push(row(
            "fork copy into AF_XDP (XSKMAP)",
            Status::Ok,
            format!("tagged for stream {STREAM}, frame intact"),
            true,
        )),
        Ok(f) => rows.push(row(
            "fork copy into AF_XDP (XSKMAP)",
            Status::Fail,
            format!("a {}-byte frame without the expected tag", f.len()),
            true,
        )),
        Err(_) => rows.push(row(
            "fork copy into AF_XDP (XSKMAP)",
            Status::Fail,
            format!("nothing arrived within 2 s (counted: {counted})"),
            true,
        )),
    }
    Ok(())
}

fn tag_of(f: &[u8]) -> Option<u32> {
    let w =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(f.get(o..o + 4)?.try_into().ok()?)) };
    (w(0)? == FORK_TAG_MAGIC).then(|| w(4)).flatten()
}

/// An Ethernet/IPv4/UDP/RTP (PCMU, 160 bytes of silence) frame from `from` to `to`.
fn rtp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], from: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let ip = |a: SocketAddr| match a.ip() {
        std::net::IpAddr::V4(v4) => v4,
        std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    let mut rtp = vec![0x80, 0x00, 0x00, 0x01, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78];
    rtp.extend_from_slice(&[0xff; 160]);
    let udp_len = 8 + rtp.len();
    let total = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut iph = [0u8; 20];
    iph[0] = 0x45;
    iph[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    iph[8] = 64;
    iph[9] = 17;
    iph[12..16].copy_from_slice(&ip(from).octets());
    iph[16..20].copy_from_slice(&ip(to).octets());
    let sum = checksum(&iph, 0);
    iph[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&iph);
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&rtp);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip(from).octets());
    pseudo.extend_from_slice(&ip(to).octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let c = checksum(&udp, sum_words(&pseudo));
    udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    f.extend_from_slice(&udp);
    f
}

fn sum_words(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// RFC 1071 checksum of `b` on top of a partial sum.
fn checksum(b: &[u8], initial: u32) -> u16 {
    let mut s = initial + sum_words(b);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A raw AF_PACKET socket bound to `ifindex` (all protocols), with a receive timeout.
fn packet_socket(ifindex: u32) -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        bail!(
            "AF_PACKET socket: {} (needs CAP_NET_RAW)",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        bail!("binding AF_PACKET: {}", std::io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: valid timeval for SO_RCVTIMEO.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    Ok(fd)
}

fn send_frame(fd: &OwnedFd, ifindex: u32, frame: &[u8]) -> Result<()> {
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    // SAFETY: frame and sll are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
            0,
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if n != frame.len() as isize {
        bail!(
            "sending the test frame: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The first frame arriving on the socket's interface that is UDP `src` → `dst` (bounded wait).
fn receive_relayed(
    fd: &OwnedFd,
    src: SocketAddr,
    dst: SocketAddr,
    within: Duration,
) -> Result<Vec<u8>> {
    let want_ports = [src.port().to_be_bytes(), dst.port().to_be_bytes()].concat();
    let mut buf = vec![0u8; 2048];
    let rounds = (within.as_millis() / 200).max(1);
    for _ in 0..rounds {
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buf and from are valid for the lengths given.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                &mut len,
            )
        };
        if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let f = &buf[..n as usize];
        // Untagged IPv4 without options: UDP ports at 34..38. A tagged frame would not match.
        if f.len() >= 38 && f[12..14] == [0x08, 0x00] && f[34..38] == want_ports[..] {
            return Ok(f.to_vec());
        }
    }
    bail!(
        "no relayed packet UDP {} -> {} came back within {within:?}",
        src.port(),
        dst.port()
    )
}

/// Hands every AF_XDP frame of the check to the checking thread.
struct Collect(mpsc::Sender<Vec<u8>>);

impl crate::io::xsk::RxSink for Collect {
    fn frame(&mut self, bytes: &[u8]) {
        let _ = self.0.send(bytes.to_vec());
    }
    fn drained(&mut self, _ring_drops: u64) {}
}
