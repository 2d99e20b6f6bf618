//! udp-relay: the plain user-space media relay that `cargo xtask bench relay` compares the XDP
//! relay against. It is what an RTP anchor without kernel help does for every packet: one
//! `recvfrom` and one `sendto` through the socket stack.
//!
//! Input: two local addresses and the peer behind each (`--a 10.77.1.1:32000 --a-peer
//! 10.77.1.2:42000 --b 10.77.2.1:32002 --b-peer 10.77.2.2:42000`), and optionally `--pairs N`
//! for N calls: pair `i` is A's port + `i` and B's port + `i` (one port pair per call, as an
//! RTP anchor allocates them), all relaying to the same two peers. Output: every datagram that
//! arrives on a pair's A is sent from that pair's B to B's peer, and every datagram arriving on
//! B is sent from A to A's peer, unchanged. Call order: parse the arguments, bind all sockets,
//! run one task per direction and pair until SIGTERM/SIGINT, then print the per-direction
//! counts on stderr.
//!
//! Deliberately plain: a multi-threaded tokio runtime with default settings, one
//! `recv_from`/`send_to` pair per datagram, default socket buffers, no batching (no
//! recvmmsg/sendmmsg, no GSO/GRO), no source latching. That is the baseline the benchmark
//! describes; docs/benchmarks.md records how it was run.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use anyhow::{Context, Result};
use clap::Parser;
use tokio::net::UdpSocket;

/// Command line of udp-relay. One pair by default, so `--a/--a-peer/--b/--b-peer` alone is the
/// original one-call relay.
#[derive(Parser, Debug, PartialEq, Eq)]
#[command(
    name = "udp-relay",
    version,
    about = "Relay UDP datagrams between two local ports (user-space benchmark baseline)"
)]
struct Args {
    /// Local address A: datagrams arriving here go out of B to `--b-peer`.
    #[arg(long)]
    a: SocketAddr,
    /// Where datagrams arriving on B are sent (from A).
    #[arg(long)]
    a_peer: SocketAddr,
    /// Local address B: datagrams arriving here go out of A to `--a-peer`.
    #[arg(long)]
    b: SocketAddr,
    /// Where datagrams arriving on A are sent (from B).
    #[arg(long)]
    b_peer: SocketAddr,
    /// Number of port pairs (calls): pair `i` binds A's port + `i` and B's port + `i`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pairs: u16,
}

impl Args {
    /// The local (A, B) addresses of every pair; fails if a port would pass 65535.
    fn pair_addrs(&self) -> Result<Vec<(SocketAddr, SocketAddr)>> {
        let shift = |base: SocketAddr, i: u16| -> Result<SocketAddr> {
            let port = base
                .port()
                .checked_add(i)
                .with_context(|| format!("{} pairs from {base} run past port 65535", self.pairs))?;
            Ok(SocketAddr::new(base.ip(), port))
        };
        (0..self.pairs)
            .map(|i| Ok((shift(self.a, i)?, shift(self.b, i)?)))
            .collect()
    }
}

/// Largest UDP payload relayed (an IPv4 datagram can carry at most 65 507 bytes).
const MAX_DATAGRAM: usize = 65_536;

/// Forward every datagram from `from` to `peer` through `out`, counting them; returns only on a
/// receive error (a send error, e.g. ICMP unreachable reported on the socket, is counted and
/// the datagram dropped, as a media relay must keep going).
async fn pump(
    from: Arc<UdpSocket>,
    out: Arc<UdpSocket>,
    peer: SocketAddr,
    relayed: Arc<AtomicU64>,
    send_errors: Arc<AtomicU64>,
) -> Result<()> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, _src) = from
            .recv_from(&mut buf)
            .await
            .context("receiving on a relay socket")?;
        match out.send_to(&buf[..len], peer).await {
            Ok(_) => relayed.fetch_add(1, Ordering::Relaxed),
            Err(_) => send_errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Counters of one direction.
#[derive(Default)]
struct Direction {
    relayed: Arc<AtomicU64>,
    send_errors: Arc<AtomicU64>,
}

async fn bind(addr: SocketAddr) -> Result<Arc<UdpSocket>> {
    Ok(Arc::new(UdpSocket::bind(addr).await.with_context(
        || format!("binding {addr} (is the address on this host, the port free?)"),
    )?))
}

// The binary's IO shell: one tokio task per direction and pair is the plain way to relay many
// sockets on a multi-threaded runtime, which is the baseline this binary stands for.
#[allow(clippy::disallowed_methods)]
#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (a_to_b, b_to_a) = (Direction::default(), Direction::default());
    let mut pumps = tokio::task::JoinSet::new();
    for (a, b) in args.pair_addrs()? {
        let (a, b) = (bind(a).await?, bind(b).await?);
        pumps.spawn(pump(
            a.clone(),
            b.clone(),
            args.b_peer,
            a_to_b.relayed.clone(),
            a_to_b.send_errors.clone(),
        ));
        pumps.spawn(pump(
            b,
            a,
            args.a_peer,
            b_to_a.relayed.clone(),
            b_to_a.send_errors.clone(),
        ));
    }
    eprintln!(
        "udp-relay: {} pair(s): {}+i -> {} via {}+i, {}+i -> {} via {}+i",
        args.pairs, args.a, args.b_peer, args.b, args.b, args.a_peer, args.a
    );
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let result = tokio::select! {
        // A pump returns only on a receive error; the first one ends the relay.
        Some(r) = pumps.join_next() => r.context("a relay task panicked").and_then(|r| r),
        _ = sigterm.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    pumps.abort_all();
    eprintln!(
        "udp-relay: a->b relayed {} send errors {}, b->a relayed {} send errors {}",
        a_to_b.relayed.load(Ordering::Relaxed),
        a_to_b.send_errors.load(Ordering::Relaxed),
        b_to_a.relayed.load(Ordering::Relaxed),
        b_to_a.send_errors.load(Ordering::Relaxed),
    );
    result
}

// The test drives both pumps as tasks, as main's select! does; this is the binary's IO shell.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_name_both_sides() {
        let args = Args::try_parse_from([
            "udp-relay",
            "--a",
            "10.77.1.1:32000",
            "--a-peer",
            "10.77.1.2:42000",
            "--b",
            "10.77.2.1:32002",
            "--b-peer",
            "10.77.2.2:42000",
        ])
        .expect("valid arguments");
        assert_eq!(args.a, "10.77.1.1:32000".parse().expect("addr"));
        assert_eq!(args.b_peer, "10.77.2.2:42000".parse().expect("addr"));
    }

    #[test]
    fn pairs_shift_both_ports_and_default_to_one() {
        let parse = |extra: &[&str]| {
            let mut v = vec![
                "udp-relay",
                "--a",
                "10.77.1.1:20000",
                "--a-peer",
                "10.77.1.2:42000",
                "--b",
                "10.77.2.1:20000",
                "--b-peer",
                "10.77.2.2:42000",
            ];
            v.extend_from_slice(extra);
            Args::try_parse_from(v)
        };
        let one = parse(&[]).expect("valid");
        assert_eq!(one.pairs, 1);
        assert_eq!(one.pair_addrs().expect("fits").len(), 1);
        let three = parse(&["--pairs", "3"]).expect("valid");
        let addrs = three.pair_addrs().expect("fits");
        assert_eq!(
            addrs[2],
            (
                "10.77.1.1:20002".parse().expect("addr"),
                "10.77.2.1:20002".parse().expect("addr")
            )
        );
        assert!(parse(&["--pairs", "0"]).is_err());
        assert!(parse(&["--pairs", "65535"])
            .expect("parses")
            .pair_addrs()
            .is_err());
    }

    #[test]
    fn a_missing_peer_is_rejected() {
        assert!(Args::try_parse_from(["udp-relay", "--a", "10.77.1.1:32000"]).is_err());
    }

    #[tokio::test]
    async fn datagrams_are_relayed_both_ways_unchanged() {
        let bind = || async { Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind")) };
        let (a, b, caller, callee) = (bind().await, bind().await, bind().await, bind().await);
        let (ab, ba) = (Direction::default(), Direction::default());
        let t1 = tokio::spawn(pump(
            a.clone(),
            b.clone(),
            callee.local_addr().expect("addr"),
            ab.relayed.clone(),
            ab.send_errors.clone(),
        ));
        let t2 = tokio::spawn(pump(
            b.clone(),
            a.clone(),
            caller.local_addr().expect("addr"),
            ba.relayed.clone(),
            ba.send_errors.clone(),
        ));
        let mut buf = [0u8; 64];
        caller
            .send_to(b"to callee", a.local_addr().expect("addr"))
            .await
            .expect("send");
        let (n, from) = callee.recv_from(&mut buf).await.expect("recv");
        assert_eq!(&buf[..n], b"to callee");
        assert_eq!(from, b.local_addr().expect("addr"), "sent from B");
        callee
            .send_to(b"to caller", b.local_addr().expect("addr"))
            .await
            .expect("send");
        let (n, from) = caller.recv_from(&mut buf).await.expect("recv");
        assert_eq!(&buf[..n], b"to caller");
        assert_eq!(from, a.local_addr().expect("addr"), "sent from A");
        assert_eq!(ab.relayed.load(Ordering::Relaxed), 1);
        assert_eq!(ba.relayed.load(Ordering::Relaxed), 1);
        t1.abort();
        t2.abort();
    }
}
