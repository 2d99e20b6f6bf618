//! Interface plumbing over rtnetlink: interface indexes, the route to a destination, the fork
//! veth pair, managed neighbour entries, the neighbour table and interface MACs. No process is
//! started: fork-agent needs no `ip` binary (the messages are built and read in
//! [`crate::core::rtnl`]).
//!
//! Synchronous on purpose: every caller is synchronous (start-up attach, `check-kernel`, and the
//! agent loop's flow install, which already waits briefly for a new next hop), and each
//! exchange is one request answered at once by the kernel. The tokio `rtnetlink` crate would
//! add a connection task and a runtime hop per request for no gain; nix's netlink socket (already
//! a dependency) plus netlink-packet-route's typed messages is all it takes.

use std::{
    collections::HashMap,
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};
use netlink_packet_route::RouteNetlinkMessage;
use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use tracing::warn;

use crate::core::rtnl::{self, NeighbourOp, Request, RtnlError};

/// ifindex of `name` in this network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| {
        format!("interface `{name}` does not exist in this network namespace (check `ip link`)")
    })
}

/// Send `req` on a fresh rtnetlink socket and collect the answers until the kernel's
/// acknowledgement or NLMSG_DONE.
fn exchange(req: &Request) -> Result<Vec<RouteNetlinkMessage>, ExchangeError> {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let fd: OwnedFd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(|e| ExchangeError::Io("opening an rtnetlink socket", e))?;
    // The kernel answers at once; the timeout only bounds a kernel that does not.
    let timeout = nix::sys::time::TimeVal::new(1, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| ExchangeError::Io("setting the rtnetlink receive timeout", e))?;
    sendto(
        fd.as_raw_fd(),
        &req.encode(seq),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(|e| ExchangeError::Io("sending an rtnetlink request", e))?;
    let mut messages = Vec::new();
    let mut undecodable = 0;
    // Dumps are larger than a page per message batch; 64 KiB holds any datagram the kernel sends.
    let mut buf = vec![0u8; 64 * 1024];
    // A dump of even thousands of entries takes a few datagrams; the bound stops a runaway.
    for _ in 0..10_000 {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
            .map_err(|e| ExchangeError::Io("receiving an rtnetlink answer", e))?;
        let batch = rtnl::decode(&buf[..n], seq)?;
        messages.extend(batch.messages);
        undecodable += batch.undecodable;
        if batch.finished {
            if undecodable > 0 {
                warn!("{undecodable} rtnetlink answers could not be decoded and were skipped");
            }
            return Ok(messages);
        }
    }
    Err(ExchangeError::Endless)
}

/// What `pick` reads from the answers to `req`, in order.
fn answers<T>(
    req: &Request,
    pick: impl Fn(&RouteNetlinkMessage) -> Option<T>,
) -> Result<Vec<T>, ExchangeError> {
    Ok(exchange(req)?.iter().filter_map(pick).collect())
}

/// Why an rtnetlink exchange failed.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error(transparent)]
    Rtnl(#[from] RtnlError),
    #[error("{0}: {1}")]
    Io(&'static str, nix::Error),
    #[error("the kernel's answer did not end")]
    Endless,
}

impl ExchangeError {
    fn errno(&self) -> Option<i32> {
        match self {
            ExchangeError::Rtnl(RtnlError::Kernel { errno }) => Some(*errno),
            _ => None,
        }
    }
}

/// Make sure the fork veth pair `name` / `peer` exists and both ends are up. True when this call
/// created it.
pub fn ensure_fork_veth(name: &str, peer: &str) -> Result<bool> {
    let mut created = false;
    if nix::net::if_::if_nametoindex(name).is_err() {
        exchange(&rtnl::add_veth(name, peer))
            .with_context(|| format!("creating fork veth pair {name}/{peer}"))?;
        created = true;
    }
    for end in [name, peer] {
        exchange(&rtnl::set_up(ifindex(end)?)).with_context(|| format!("bringing {end} up"))?;
    }
    Ok(created)
}

/// Delete a link (for a veth, both ends go).
pub fn delete_link(name: &str) -> Result<()> {
    exchange(&rtnl::delete_link(ifindex(name)?))
        .with_context(|| format!("deleting link {name}"))?;
    Ok(())
}

/// The interface and next hop the routing table picks for `dst`.
pub fn route_to(dst: IpAddr) -> Result<(String, IpAddr)> {
    let route = answers(&rtnl::get_route(dst), |m| match m {
        RouteNetlinkMessage::NewRoute(r) => rtnl::route(r, dst),
        _ => None,
    })
    .with_context(|| format!("no route to {dst} (the kernel's route lookup failed)"))?
    .into_iter()
    .next()
    .with_context(|| format!("no route to {dst}: the route has no output interface"))?;
    let dev = nix::net::if_::if_indextoname(route.oif)
        .with_context(|| format!("the route to {dst} names ifindex {}, now gone", route.oif))?;
    let dev = dev
        .into_string()
        .with_context(|| format!("the route to {dst} names an interface that is not UTF-8"))?;
    Ok((dev, route.hop))
}

/// Ask the kernel to resolve and keep resolving `hop` on `dev` (a `managed` neighbour entry,
/// Linux >= 5.16), so `bpf_fib_lookup` finds its MAC from a flow's first packet.
pub fn keep_neighbour_resolved(dev: &str, hop: IpAddr) -> Result<()> {
    let index = ifindex(dev)?;
    // `add` fails with EEXIST when the stack already has an entry; then mark that one.
    match exchange(&rtnl::managed_neighbour(index, hop, NeighbourOp::Add)) {
        Err(e) if e.errno() == Some(libc::EEXIST) => {
            exchange(&rtnl::managed_neighbour(index, hop, NeighbourOp::Change))
                .with_context(|| format!("marking neighbour {hop} on {dev} as managed"))?;
        }
        Err(e) => {
            return Err(e).with_context(|| format!("adding managed neighbour {hop} on {dev}"))
        }
        Ok(_) => {}
    }
    Ok(())
}

/// A neighbour table: (ifindex, address) → MAC (`None` while incomplete or failed).
pub type NeighbourTable = HashMap<(u32, IpAddr), Option<[u8; 6]>>;

/// The whole neighbour table of this network namespace, one rtnetlink dump.
pub fn neighbour_table() -> Result<NeighbourTable> {
    let entries = answers(&rtnl::dump_neighbours(), |m| match m {
        RouteNetlinkMessage::NewNeighbour(n) => rtnl::neighbour(n),
        _ => None,
    })
    .context("dumping the neighbour table")?;
    Ok(entries
        .into_iter()
        .map(|n| ((n.ifindex, n.addr), n.mac))
        .collect())
}

/// The MAC address of every interface of this network namespace that has one, by ifindex.
pub fn link_macs() -> Result<HashMap<u32, [u8; 6]>> {
    let macs = answers(&rtnl::dump_links(), |m| match m {
        RouteNetlinkMessage::NewLink(l) => rtnl::link_mac(l),
        _ => None,
    })
    .context("listing interfaces")?;
    Ok(macs.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loopback interface exists in every network namespace and has a (zero) MAC; its
    /// neighbour table dump and route lookup need no privilege.
    #[test]
    fn unprivileged_reads_go_through_netlink() {
        let lo = ifindex("lo").unwrap();
        assert_eq!(link_macs().unwrap().get(&lo), Some(&[0; 6]));
        neighbour_table().unwrap();
        let (dev, hop) = route_to("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!((dev.as_str(), hop), ("lo", "127.0.0.1".parse().unwrap()));
    }
}
