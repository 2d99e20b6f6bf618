//! The gateway namespace at start (docs/webrtc.md "The gateway peer"): the interface that holds
//! `webrtc.gateway_address` gets transmit checksum offload turned off, over ethtool's generic
//! netlink family (messages in [`crate::core::ethtool`], which says why), from a thread that
//! alone enters the namespace. No `ethtool` binary.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

use crate::core::ethtool::{self, TX_CHECKSUM};

/// Turns transmit checksum offload off on the interface holding `address` inside `netns`;
/// returns that interface's name.
pub fn prepare(netns: &Path, address: IpAddr) -> Result<String> {
    let netns = netns.to_owned();
    std::thread::spawn(move || -> Result<String> {
        let ns = File::open(&netns)
            .with_context(|| format!("opening the gateway namespace {}", netns.display()))?;
        setns(ns, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering the gateway namespace {}", netns.display()))?;
        let dev = interface_with(address).with_context(|| {
            format!(
                "finding webrtc.gateway_address {address} in the gateway namespace {}",
                netns.display()
            )
        })?;
        tx_checksum_off(&dev).with_context(|| {
            format!(
                "turning transmit checksum offload off on {dev} in {} (ng-agent needs \
                 CAP_NET_ADMIN there)",
                netns.display()
            )
        })?;
        Ok(dev)
    })
    .join()
    .map_err(|_| anyhow!("the gateway namespace thread panicked"))?
}

/// The name of the interface holding `address` in this thread's namespace.
fn interface_with(address: IpAddr) -> Result<String> {
    let held = |a: &nix::sys::socket::SockaddrStorage| -> Option<IpAddr> {
        a.as_sockaddr_in()
            .map(|v4| IpAddr::V4(v4.ip()))
            .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
    };
    nix::ifaddrs::getifaddrs()
        .context("listing the interfaces' addresses")?
        .find(|i| i.address.as_ref().and_then(held) == Some(address))
        .map(|i| i.interface_name)
        .ok_or_else(|| anyhow!("no interface holds {address} (create the gateway veth first)"))
}

/// Sets the transmit checksum features off on `dev` and reads them back.
fn tx_checksum_off(dev: &str) -> Result<()> {
    let fd: OwnedFd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkGeneric,
    )
    .context("opening a generic netlink socket")?;
    // The kernel answers at once; the timeout only bounds a kernel that does not.
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(1, 0),
    )
    .context("setting the netlink receive timeout")?;
    // A verbose features answer is a few KiB; one datagram holds any of them.
    let mut buf = vec![0u8; 64 * 1024];
    let n = exchange(&fd, &ethtool::family_request(1), &mut buf)?;
    let family = ethtool::family_id(&buf[..n], 1)?;
    let n = exchange(
        &fd,
        &ethtool::features_set(family, 2, dev, &TX_CHECKSUM),
        &mut buf,
    )?;
    ethtool::ack(&buf[..n], 2)?;
    let n = exchange(&fd, &ethtool::features_get(family, 3, dev), &mut buf)?;
    let on = ethtool::active_features(&buf[..n], 3)?;
    let kept: Vec<&str> = TX_CHECKSUM
        .into_iter()
        .filter(|f| on.iter().any(|o| o == f))
        .collect();
    if !kept.is_empty() {
        bail!("the driver keeps {} on", kept.join(", "));
    }
    Ok(())
}

/// Sends `req` and receives the first answer datagram into `buf`.
fn exchange(fd: &OwnedFd, req: &[u8], buf: &mut [u8]) -> Result<usize> {
    sendto(
        fd.as_raw_fd(),
        req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .context("sending a netlink request")?;
    recv(fd.as_raw_fd(), buf, MsgFlags::empty()).context("receiving a netlink answer")
}
