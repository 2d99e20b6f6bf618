//! The gateway namespace (docs/webrtc.md "The gateway peer"): one thread enters it at start and
//! stays there. First it turns transmit checksum offload off on the interface that holds
//! `webrtc.gateway_address`, over ethtool's generic netlink family (messages in
//! [`crate::core::ethtool`], which says why; no `ethtool` binary); then it drops its
//! capabilities and binds every browser leg's gateway sockets on request (a socket stays in the
//! namespace it was made in; the runtime's threads never move). So ng-agent needs CAP_SYS_ADMIN
//! (setns) and CAP_NET_ADMIN (the offload) only until [`GatewayNs::enter`] returns, and the
//! caller drops them from its own thread right after (docs/operations.md "WebRTC bridging").
//!
//! Before entering, [`GatewayNs::enter`] checks what the process holds, so an ng-agent started
//! without the privileges `[webrtc]` needs (a plain ng-agent.service, without its
//! `ng-agent-webrtc.conf` drop-in) fails naming them, not with a bare EPERM.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc;

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

use crate::core::ethtool::{self, GRO, TX_CHECKSUM};

/// The capabilities `[webrtc]` needs, with their bit in `/proc/PID/status` (linux/capability.h):
/// `setns(CLONE_NEWNET)` needs CAP_SYS_ADMIN, the ethtool features request CAP_NET_ADMIN.
const NEEDED: [(&str, u32); 2] = [("CAP_SYS_ADMIN", 21), ("CAP_NET_ADMIN", 12)];

/// Where to look when a privilege is missing.
const REMEDY: &str = "under systemd, enable the ng-agent-webrtc.conf drop-in (docs/operations.md \
                      \"WebRTC bridging\")";

/// The capabilities of [`NEEDED`] missing from the `CapEff:` line of a `/proc/PID/status` text.
fn missing_capabilities(status: &str) -> Result<Vec<&'static str>> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff line")?;
    let eff = u64::from_str_radix(hex.trim(), 16).with_context(|| format!("CapEff {hex:?}"))?;
    Ok(NEEDED
        .iter()
        .filter(|(_, bit)| eff & (1 << bit) == 0)
        .map(|(name, _)| *name)
        .collect())
}

/// One browser leg's gateway RTP and RTCP sockets, bound and connected in the namespace.
type GatewayPair = [StdUdpSocket; 2];

/// A request to the namespace thread: bind `gateway` and connect it to `kernel`, and the same
/// one port up for RTCP.
struct Request {
    gateway: SocketAddr,
    kernel: SocketAddr,
    reply: mpsc::SyncSender<Result<GatewayPair>>,
}

/// The thread living in the gateway namespace; it ends when this handle is dropped.
pub struct GatewayNs {
    requests: mpsc::Sender<Request>,
}

impl GatewayNs {
    /// Enters `netns` on a thread of its own, turns transmit checksum offload off on the
    /// interface holding `address` there and drops that thread's capabilities; returns the
    /// handle and the interface's name. Fails first, naming them, when this process lacks the
    /// capabilities for it.
    pub fn enter(netns: &Path, address: IpAddr) -> Result<(GatewayNs, String)> {
        let status =
            std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
        let missing = missing_capabilities(&status).context("reading /proc/self/status")?;
        if !missing.is_empty() {
            bail!(
                "[webrtc] needs {} to enter the gateway namespace {} and set its veth's offload, \
                 and ng-agent lacks {}: {REMEDY}",
                NEEDED.map(|(n, _)| n).join(" and "),
                netns.display(),
                missing.join(" and "),
            );
        }
        let ns = File::open(netns).with_context(|| {
            format!(
                "opening the gateway namespace {} (webrtc.gateway_netns): create it and its veth \
                 first (docs/webrtc.md)",
                netns.display()
            )
        })?;
        let netns = netns.display().to_string();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<String>>(1);
        let (requests, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("gateway-netns".into())
            .spawn(move || {
                let setup = set_up(ns, &netns, address);
                let ok = setup.is_ok();
                let _ = ready_tx.send(setup);
                if ok {
                    // Ends when the handle (the only sender) is dropped.
                    for r in rx {
                        let _ = r.reply.send(bind_pair(r.gateway, r.kernel));
                    }
                }
            })
            .context("starting the gateway namespace thread")?;
        let dev = ready_rx
            .recv()
            .map_err(|_| anyhow!("the gateway namespace thread ended"))??;
        Ok((GatewayNs { requests }, dev))
    }

    /// Binds the gateway's RTP and RTCP sockets in the namespace and connects them to the
    /// kernel anchor's RTP and RTCP ports. Blocks until the namespace thread answers, which it
    /// does at once (two binds).
    pub fn sockets(&self, gateway: SocketAddr, kernel: SocketAddr) -> Result<GatewayPair> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.requests
            .send(Request {
                gateway,
                kernel,
                reply,
            })
            .map_err(|_| anyhow!("the gateway namespace thread ended"))?;
        answer
            .recv()
            .map_err(|_| anyhow!("the gateway namespace thread ended"))?
    }
}

/// On the namespace thread: enter, set the offload, drop this thread's capabilities.
fn set_up(ns: File, netns: &str, address: IpAddr) -> Result<String> {
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| {
        // Holding CAP_SYS_ADMIN, an EPERM is a seccomp filter's (systemd's RestrictNamespaces=).
        let why = if e == Errno::EPERM {
            format!(
                ": network namespaces are forbidden to ng-agent (RestrictNamespaces=); {REMEDY}"
            )
        } else {
            String::new()
        };
        anyhow!("entering the gateway namespace {netns}: {e}{why}")
    })?;
    let dev = interface_with(address).with_context(|| {
        format!("finding webrtc.gateway_address {address} in the gateway namespace {netns}")
    })?;
    prepare_veth(&dev).with_context(|| {
        format!(
            "turning transmit checksum offload off and GRO on on {dev} in {netns} (ng-agent \
             needs CAP_NET_ADMIN there)"
        )
    })?;
    drop_capabilities("the gateway namespace thread")?;
    Ok(dev)
}

/// Drops the calling thread's capabilities; `who` names it in the error.
pub fn drop_capabilities(who: &str) -> Result<()> {
    daemon_ops::caps::drop_all().map_err(|e| {
        let why = if e.raw_os_error() == Some(Errno::EPERM as i32) {
            format!(
                " (a system call filter forbids capset: the unit's SystemCallFilter= must allow \
                 it); {REMEDY}"
            )
        } else {
            String::new()
        };
        anyhow!("dropping the capabilities of {who}: {e}{why}")
    })
}

/// Binds `gateway` (connected to `kernel`) and the pair one port up, in this thread's namespace.
fn bind_pair(gateway: SocketAddr, kernel: SocketAddr) -> Result<GatewayPair> {
    let plus_one = |a: SocketAddr| {
        a.port()
            .checked_add(1)
            .map(|p| SocketAddr::new(a.ip(), p))
            .ok_or_else(|| anyhow!("{a}: no RTCP port above"))
    };
    let bind = |local: SocketAddr, peer: SocketAddr| -> Result<StdUdpSocket> {
        let s = StdUdpSocket::bind(local)
            .with_context(|| format!("binding the gateway socket {local}"))?;
        s.connect(peer)
            .with_context(|| format!("connecting the gateway socket to {peer}"))?;
        Ok(s)
    };
    Ok([
        bind(gateway, kernel)?,
        bind(plus_one(gateway)?, plus_one(kernel)?)?,
    ])
}

/// The name of the interface holding `address` in this thread's namespace.
fn interface_with(address: IpAddr) -> Result<String> {
    let held = |a: &nix::sys::socket::SockaddrStorage| -> Option<IpAddr> {
        a.as_sockaddr_in()
            .map(|v4| IpAddr::V4(v4.ip()))
            .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
    };
    nix::ifaddrs::getifaddrs()
        .map_err(netlink_refused)
        .context("listing the interfaces' addresses")?
        .find(|i| i.address.as_ref().and_then(held) == Some(address))
        .map(|i| i.interface_name)
        .ok_or_else(|| anyhow!("no interface holds {address} (create the gateway veth first)"))
}

/// Sets the transmit checksum features off and GRO on on `dev`, and reads them back.
fn prepare_veth(dev: &str) -> Result<()> {
    let fd: OwnedFd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkGeneric,
    )
    .map_err(netlink_refused)
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
        &ethtool::features_set(family, 2, dev, &TX_CHECKSUM, &[GRO]),
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
    if !on.iter().any(|o| o == GRO) {
        bail!("the driver keeps {GRO} off");
    }
    Ok(())
}

/// EAFNOSUPPORT on a netlink socket is an address family filter's (systemd's
/// RestrictAddressFamilies=): says so.
fn netlink_refused(e: Errno) -> anyhow::Error {
    if e == Errno::EAFNOSUPPORT {
        anyhow!("{e}: netlink sockets are forbidden to ng-agent (RestrictAddressFamilies= lacks AF_NETLINK); {REMEDY}")
    } else {
        e.into()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tng-agent\nCapInh:\t0000000000000000\nCapEff:\t";

    #[test]
    fn missing_capabilities_are_named_from_cap_eff() {
        let with = |eff: &str| missing_capabilities(&format!("{STATUS}{eff}\nCapBnd:\t0\n"));
        assert!(with("0000000000201000").unwrap().is_empty());
        assert_eq!(with("0000000000200000").unwrap(), ["CAP_NET_ADMIN"]);
        assert_eq!(with("0000000000001000").unwrap(), ["CAP_SYS_ADMIN"]);
        assert_eq!(
            with("0000000000000000").unwrap(),
            ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]
        );
        assert!(with("zz").is_err());
        assert!(missing_capabilities("Name:\tx\n").is_err());
    }
}
