//! User-space fallback relay: what the kernel hands to the stack instead of relaying (IP
//! fragments, a next hop not resolved yet, a layout it does not rewrite) still reaches the far end.
//!
//! fork-agent binds a UDP socket on every flow's local address (which also keeps the anchored port
//! from being taken by another program, as rtpengine does) and on every source address it relays
//! from. A datagram the stack delivers to a flow's socket is sent from the flow's source socket to
//! its destination. Each such packet is counted per flow, so `show flows` tells an operator when a
//! call is not fully in the kernel instead of hiding it.
//!
//! A forked flow's fallback packets are forked here too, by the kernel's rules (core::rtp), into
//! the same queue as the AF_XDP frames: a call whose packets take the slow path still reaches
//! the speech server whole. A sink flow's packets (endpoint mode) are forked and never relayed;
//! its socket is also the one a voice bot's RTP is sent from (io::bot). [`Fallback::set_action`] follows the flow's fork flag and stream, and a bot's hold (inject mode: not
//! relayed while it talks). Not followed: renumbering after a hand-back (`FLOW_F_RENUMBER`);
//! the odd packet relayed here leaves with the party's own numbering.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use anyhow::{Context, Result};
use fork_common::{FlowAction, FLOW_F_FORK, FLOW_F_INJECT, FLOW_F_RTCP};
use tokio::{net::UdpSocket, sync::watch, task::JoinHandle};
use tracing::{debug, warn};

use crate::{
    core::rtp,
    io::speech::{queue::MediaQueue, Media},
};

/// Per-flow counters of the fallback path.
#[derive(Debug, Default)]
pub struct FallbackStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Dropped by strict source checking.
    pub strict_drops: AtomicU64,
    /// Send errors (e.g. no route).
    pub errors: AtomicU64,
    /// Forked in user space (the flow was forked and the packet was audio or DTMF).
    pub forked: AtomicU64,
    /// To fork, but the speech service's queue was full.
    pub fork_drops: AtomicU64,
}

/// Where a forked flow's fallback packets go.
#[derive(Clone)]
struct ForkTo {
    /// The flow's kernel action: stream id, payload types, DTMF type, flags.
    action: FlowAction,
    media: Arc<MediaQueue>,
}

#[derive(Clone)]
struct Route {
    /// A sink flow (the call ends here): forked, never relayed.
    sink: bool,
    /// A voice bot talks on the flow's stream now (inject mode): forked, not relayed.
    inject: bool,
    dst: SocketAddr,
    out: Arc<UdpSocket>,
    expect: Option<SocketAddr>,
    stats: Arc<FallbackStats>,
    fork: Option<ForkTo>,
}

struct Bound {
    sock: Arc<UdpSocket>,
    route: watch::Sender<Option<Route>>,
    reader: JoinHandle<()>,
    /// Flows using this socket, as their local or their source address.
    users: u32,
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The fallback sockets, owned by the agent task.
pub struct Fallback {
    sockets: HashMap<SocketAddr, Bound>,
    stats: HashMap<SocketAddr, Arc<FallbackStats>>,
    /// The speech service's media queue, shared with the AF_XDP reader.
    media: Arc<MediaQueue>,
}

impl Fallback {
    pub fn new(media: Arc<MediaQueue>) -> Self {
        Self {
            sockets: HashMap::new(),
            stats: HashMap::new(),
            media,
        }
    }

    /// Follow a change of `local`'s kernel action (fork started or stopped): fallback packets
    /// are forked exactly when the kernel forks the flow's packets.
    pub fn set_action(&mut self, local: SocketAddr, action: &FlowAction) {
        let fork =
            (action.flags & FLOW_F_FORK != 0 && action.flags & FLOW_F_RTCP == 0).then(|| ForkTo {
                action: *action,
                media: self.media.clone(),
            });
        if let Some(b) = self.sockets.get(&local) {
            b.route.send_modify(|r| {
                if let Some(r) = r {
                    r.fork = fork;
                    r.inject = action.flags & FLOW_F_INJECT != 0;
                }
            });
        }
    }

    fn bind(&mut self, addr: SocketAddr) -> Result<&mut Bound> {
        use std::collections::hash_map::Entry;
        match self.sockets.entry(addr) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let std = std::net::UdpSocket::bind(addr).with_context(|| {
                    format!(
                        "binding the fallback socket {addr} (is the port used by another program?)"
                    )
                })?;
                std.set_nonblocking(true)?;
                let sock = Arc::new(UdpSocket::from_std(std)?);
                let (tx, rx) = watch::channel(None);
                #[allow(clippy::disallowed_methods)] // io shell: one reader per bound address
                let reader = tokio::spawn(read_loop(addr, sock.clone(), rx));
                Ok(e.insert(Bound {
                    sock,
                    route: tx,
                    reader,
                    users: 0,
                }))
            }
        }
    }

    /// Start relaying in user space what reaches `local` and the kernel did not relay.
    pub fn add(
        &mut self,
        local: SocketAddr,
        src: SocketAddr,
        dst: SocketAddr,
        expect: Option<SocketAddr>,
        sink: bool,
    ) -> Result<()> {
        let out = {
            let b = self.bind(src)?;
            b.users += 1;
            b.sock.clone()
        };
        let stats = Arc::new(FallbackStats::default());
        let bound = match self.bind(local) {
            Ok(b) => b,
            Err(e) => {
                self.release(src);
                return Err(e);
            }
        };
        bound.users += 1;
        bound.route.send_replace(Some(Route {
            sink,
            inject: false,
            dst,
            out,
            expect,
            stats: stats.clone(),
            fork: None,
        }));
        self.stats.insert(local, stats);
        Ok(())
    }

    /// Stop relaying `local` (its source socket goes when no other flow uses it).
    pub fn remove(&mut self, local: SocketAddr, src: SocketAddr) {
        if let Some(b) = self.sockets.get_mut(&local) {
            b.route.send_replace(None);
        }
        self.stats.remove(&local);
        self.release(local);
        self.release(src);
    }

    fn release(&mut self, addr: SocketAddr) {
        if let Some(b) = self.sockets.get_mut(&addr) {
            b.users = b.users.saturating_sub(1);
            if b.users == 0 {
                self.sockets.remove(&addr);
            }
        }
    }

    /// The socket bound to `addr` (a flow's local or source address), to send from it.
    pub fn socket(&self, addr: &SocketAddr) -> Option<Arc<UdpSocket>> {
        self.sockets.get(addr).map(|b| b.sock.clone())
    }

    pub fn stats(&self, local: &SocketAddr) -> Option<&FallbackStats> {
        self.stats.get(local).map(|s| s.as_ref())
    }

    /// Packets forked in user space over all flows.
    pub fn total_forked(&self) -> u64 {
        self.stats
            .values()
            .map(|s| s.forked.load(Ordering::Relaxed))
            .sum()
    }

    /// Packets relayed in user space over all flows.
    pub fn total_packets(&self) -> u64 {
        self.stats
            .values()
            .map(|s| s.packets.load(Ordering::Relaxed))
            .sum()
    }
}

async fn read_loop(addr: SocketAddr, sock: Arc<UdpSocket>, route: watch::Receiver<Option<Route>>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                warn!(%addr, "fallback socket receive failed: {e}");
                continue;
            }
        };
        let Some(r) = route.borrow().clone() else {
            // A source-only socket: replies to it belong to another flow or to nobody.
            debug!(%addr, "datagram on a fallback socket without a flow; dropped");
            continue;
        };
        if r.expect.is_some_and(|e| e != from) {
            r.stats.strict_drops.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if let Some(f) = &r.fork {
            fork(&buf[..len], f, &r.stats);
        }
        if r.sink || r.inject {
            // The call ends here, or a bot has the stream: nothing to relay (as in the kernel).
            continue;
        }
        match r.out.send_to(&buf[..len], r.dst).await {
            Ok(_) => {
                r.stats.packets.fetch_add(1, Ordering::Relaxed);
                r.stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            Err(e) => {
                r.stats.errors.fetch_add(1, Ordering::Relaxed);
                debug!(%addr, dst = %r.dst, "fallback relay send failed: {e}");
            }
        }
    }
}

/// Hand a fallback datagram of a forked flow to the speech service, as the AF_XDP reader does
/// with the kernel's clones (never blocking the relay).
fn fork(dgram: &[u8], f: &ForkTo, stats: &FallbackStats) {
    let Some(part) = rtp::to_fork(dgram, &f.action) else {
        return;
    };
    let Some(item) =
        crate::core::forked::from_rtp(f.action.stream_id, part.header, part.payload, part.dtmf)
    else {
        return;
    };
    // The fallback sees the odd packet the kernel passes (fragments): one clock read each.
    #[allow(clippy::disallowed_methods)] // io shell
    let at = std::time::Instant::now();
    stats.forked.fetch_add(1, Ordering::Relaxed);
    let dropped = f.media.push_batch([Media::encode(item, at)]);
    if dropped > 0 {
        stats.fork_drops.fetch_add(dropped, Ordering::Relaxed);
    }
}
