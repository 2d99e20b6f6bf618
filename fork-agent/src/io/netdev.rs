//! Interface plumbing: interface indexes, the fork veth pair and managed neighbour entries
//! through iproute2 (rare: start and new next hops), and the neighbour table and interface MACs
//! through rtnetlink and getifaddrs (every second: no process per next hop).

use std::{
    collections::HashMap,
    net::IpAddr,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

use crate::core::neigh_dump;

/// ifindex of `name` in this network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| {
        format!("interface `{name}` does not exist in this network namespace (check `ip link`)")
    })
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Make sure the fork veth pair `name` / `peer` exists and both ends are up. True when this call
/// created it.
pub fn ensure_fork_veth(name: &str, peer: &str) -> Result<bool> {
    let mut created = false;
    if nix::net::if_::if_nametoindex(name).is_err() {
        ip(&["link", "add", name, "type", "veth", "peer", "name", peer])
            .with_context(|| format!("creating fork veth pair {name}/{peer}"))?;
        created = true;
    }
    ip(&["link", "set", name, "up"])?;
    ip(&["link", "set", peer, "up"])?;
    Ok(created)
}

/// Delete a link (for a veth, both ends go).
pub fn delete_link(name: &str) -> Result<()> {
    ip(&["link", "del", name]).map(|_| ())
}

/// The interface and next hop the routing table picks for `dst`.
pub fn route_to(dst: IpAddr) -> Result<(String, IpAddr)> {
    let route = ip(&["-o", "route", "get", &dst.to_string()])?;
    let words: Vec<&str> = route.split_whitespace().collect();
    let field = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    let dev = field("dev").with_context(|| format!("no route to {dst}: `{}`", route.trim()))?;
    let hop: IpAddr = match field("via") {
        Some(gw) => gw
            .parse()
            .with_context(|| format!("unexpected gateway `{gw}` in `ip route get`"))?,
        None => dst,
    };
    Ok((dev.to_owned(), hop))
}

/// Ask the kernel to resolve and keep resolving `hop` on `dev` (a `managed` neighbour entry,
/// Linux >= 5.16), so `bpf_fib_lookup` finds its MAC from a flow's first packet.
pub fn keep_neighbour_resolved(dev: &str, hop: IpAddr) -> Result<()> {
    let hop_s = hop.to_string();
    // `add` fails with EEXIST when the stack already has an entry; then mark that one.
    if ip(&["neigh", "add", &hop_s, "dev", dev, "managed"]).is_err() {
        ip(&["neigh", "change", &hop_s, "dev", dev, "managed"])
            .with_context(|| format!("marking neighbour {hop_s} on {dev} as managed"))?;
    }
    Ok(())
}

/// A neighbour table: (ifindex, address) → MAC (`None` while incomplete or failed).
pub type NeighbourTable = HashMap<(u32, IpAddr), Option<[u8; 6]>>;

/// The whole neighbour table of this network namespace, one rtnetlink dump.
pub fn neighbour_table() -> Result<NeighbourTable> {
    use nix::sys::socket::{
        recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
        SockType,
    };
    static SEQ: AtomicU32 = AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .context("opening an rtnetlink socket")?;
    // The kernel answers a dump at once; the timeout only bounds a kernel that does not.
    let timeout = nix::sys::time::TimeVal::new(1, 0);
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
    sendto(
        fd.as_raw_fd(),
        &neigh_dump::request(seq),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .context("sending the neighbour dump request")?;
    let mut table = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    // A dump of even thousands of entries takes a few datagrams; the bound stops a runaway.
    for _ in 0..10_000 {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
            .context("receiving the neighbour dump")?;
        let parsed = neigh_dump::parse(&buf[..n], seq)?;
        for e in parsed.entries {
            table.insert((e.ifindex, e.addr), e.mac);
        }
        if parsed.done {
            return Ok(table);
        }
    }
    bail!("the neighbour dump did not end")
}

/// The MAC address of every interface of this network namespace that has one.
pub fn link_macs() -> Result<HashMap<String, [u8; 6]>> {
    let mut out = HashMap::new();
    for ifa in nix::ifaddrs::getifaddrs().context("listing interfaces (getifaddrs)")? {
        if let Some(mac) = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_link_addr())
            .and_then(|l| l.addr())
        {
            out.insert(ifa.interface_name, mac);
        }
    }
    Ok(out)
}
