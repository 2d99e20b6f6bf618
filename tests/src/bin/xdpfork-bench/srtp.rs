//! `bench srtp`: what bridging a browser leg costs in user space, per packet (docs/benchmarks.md
//! "bench srtp", docs/webrtc.md).
//!
//! Two measurements, both CPU time of the one thread doing the work:
//! - **core**: webrtc-bridge's `Bridge` alone, fed SRTP from a connected test peer
//!   (`handle_browser`: authenticate, replay-check, decrypt) and plain RTP (`handle_plain`:
//!   encrypt, tag), for AES_CM_128_HMAC_SHA1_80 and AEAD_AES_128_GCM. No sockets.
//! - **leg**: ng-agent's per-leg task (`ng_agent::io::bridge::run_leg`, the production shell)
//!   for `calls` legs on one current-thread runtime, real UDP sockets on loopback, 50 packets/s
//!   each way per call (100 per call, G.711 at 20 ms): wake-ups, syscalls and the core together,
//!   comparable with rtpengine's 83-107 µs per packet at 100 packets/s per call (issue 16).
//!
//! The senders run on other threads and are not counted.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use webrtc_bridge::testing::{peer_with, Peer, PeerProfile};
use webrtc_bridge::{
    Bridge, Certificate, EarlyAudio, Fingerprint, IceCredentials, Output, PlainKind, RemoteParams,
    Role,
};

use crate::Report;

/// Packets per direction per core repetition.
const CORE_PACKETS: u16 = 20_000;
/// Concurrent legs of the `leg` measurement: one (every packet pays its own wake-up, as in
/// issue 16's rtpengine figure) and fifty (wake-ups shared by the packets of one 20 ms tick).
const LEG_CALLS: [usize; 2] = [1, 50];
/// Packets per second each way per leg.
const LEG_PPS: u64 = 50;

fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x0B, 0xE4, 0xC4, 0x11];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend(std::iter::repeat_n(0xD5, 160));
    p
}

/// A bridge connected (ICE + DTLS in memory) to a test peer at `peer_addr`.
fn connected(
    cert: &Certificate,
    peer_addr: SocketAddr,
    profile: PeerProfile,
) -> Result<(Bridge, Peer)> {
    let now = Instant::now();
    let ice = IceCredentials {
        ufrag: "bnch".into(),
        pwd: "benchpasswordbenchpass12".into(),
    };
    let mut b = Bridge::new(cert.clone(), ice.clone(), EarlyAudio::default());
    let mut p = peer_with(peer_addr, true, profile);
    b.set_remote(
        now,
        RemoteParams {
            fingerprint: Fingerprint::parse(&p.fingerprint)?,
            role: Some(Role::Server),
        },
    );
    b.handle_browser(now, peer_addr, &p.check(&ice, true));
    let mut to_peer = Vec::new();
    for _ in 0..20 {
        while let Some(o) = b.poll_output() {
            if let Output::ToBrowser { bytes, .. } = o {
                if (20..=63).contains(&bytes[0]) {
                    to_peer.push(bytes);
                }
            }
        }
        let out = p.step(std::mem::take(&mut to_peer));
        if p.connected && out.is_empty() {
            break;
        }
        for d in out {
            b.handle_browser(now, peer_addr, &d);
        }
    }
    while b.poll_output().is_some() {}
    if !p.connected {
        bail!("in-memory DTLS handshake did not finish");
    }
    Ok((b, p))
}

/// One core repetition: ns per packet SRTP→RTP and RTP→SRTP.
fn core_rep(cert: &Certificate, profile: PeerProfile) -> Result<(f64, f64)> {
    let addr: SocketAddr = "127.0.0.1:9".parse()?;
    let (mut b, mut p) = connected(cert, addr, profile)?;
    let sealed: Vec<Vec<u8>> = (0..CORE_PACKETS).map(|s| p.seal(&rtp(s))).collect();
    let plain: Vec<Vec<u8>> = (0..CORE_PACKETS).map(rtp).collect();
    let now = Instant::now();
    let (mut to_plain, mut to_browser) = (0u32, 0u32);
    let c0 = thread_cpu_ns();
    for pkt in &sealed {
        b.handle_browser(now, addr, pkt);
        while let Some(o) = b.poll_output() {
            to_plain += u32::from(matches!(o, Output::ToPlain { .. }));
        }
    }
    let c1 = thread_cpu_ns();
    for pkt in &plain {
        b.handle_plain(now, PlainKind::Rtp, pkt);
        while let Some(o) = b.poll_output() {
            to_browser += u32::from(matches!(o, Output::ToBrowser { .. }));
        }
    }
    let c2 = thread_cpu_ns();
    if to_plain != u32::from(CORE_PACKETS) || to_browser != u32::from(CORE_PACKETS) {
        bail!("core: {to_plain} decrypted, {to_browser} encrypted of {CORE_PACKETS}");
    }
    let n = f64::from(CORE_PACKETS);
    Ok(((c1 - c0) as f64 / n, (c2 - c1) as f64 / n))
}

/// One leg repetition: CPU ns per packet of the runtime thread and the packets it bridged.
fn leg_rep(cert: &Certificate, secs: f64, n_calls: usize) -> Result<(f64, u64)> {
    struct Call {
        browser_tx: UdpSocket,
        browser_at: SocketAddr,
        plain_tx: UdpSocket,
        gateway_at: SocketAddr,
        sealed: Vec<Vec<u8>>,
    }
    let n_pkts = (LEG_PPS as f64 * secs) as u16;
    let mut calls = Vec::new();
    let mut legs = Vec::new();
    for _ in 0..n_calls {
        let browser_tx = UdpSocket::bind("127.0.0.1:0")?;
        let (bridge, mut p) = connected(cert, browser_tx.local_addr()?, PeerProfile::Sha1_80)?;
        let browser_sock = UdpSocket::bind("127.0.0.1:0")?;
        let rtp_sock = UdpSocket::bind("127.0.0.1:0")?;
        let rtcp_sock = UdpSocket::bind("127.0.0.1:0")?;
        let plain_tx = UdpSocket::bind("127.0.0.1:0")?;
        let sink_rtcp = UdpSocket::bind("127.0.0.1:0")?;
        rtp_sock.connect(plain_tx.local_addr()?)?;
        rtcp_sock.connect(sink_rtcp.local_addr()?)?;
        calls.push(Call {
            browser_at: browser_sock.local_addr()?,
            gateway_at: rtp_sock.local_addr()?,
            sealed: (0..n_pkts).map(|s| p.seal(&rtp(s))).collect(),
            browser_tx,
            plain_tx,
        });
        legs.push((bridge, browser_sock, rtp_sock, rtcp_sock, sink_rtcp));
    }
    let (cpu_tx, cpu_rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || -> Result<(u64, u64)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (rep_tx, mut rep_rx) = mpsc::channel(4096);
            let mut stops = Vec::new();
            let mut tasks = Vec::new();
            for (bridge, b, r, c, sink) in legs {
                let (stop, rx) = mpsc::channel::<RemoteParams>(1);
                stops.push(stop);
                let key = b.local_addr()?;
                let [b, r, c] = [b, r, c].map(|s| {
                    s.set_nonblocking(true)
                        .and_then(|()| tokio::net::UdpSocket::from_std(s))
                });
                let (Ok(b), Ok(r), Ok(c)) = (b, r, c) else {
                    bail!("registering the leg sockets");
                };
                tasks.push(tokio::spawn(ng_agent::io::bridge::run_leg(
                    key,
                    bridge,
                    b,
                    r,
                    c,
                    rx,
                    rep_tx.clone(),
                )));
                drop(sink);
            }
            drop(rep_tx);
            let c0 = thread_cpu_ns();
            let _ = cpu_tx.send(());
            // The senders run for `secs`; then the legs are stopped and report their totals.
            tokio::time::sleep(Duration::from_secs_f64(secs + 0.3)).await;
            let c1 = thread_cpu_ns();
            drop(stops);
            let mut last = std::collections::HashMap::new();
            while let Some(r) = rep_rx.recv().await {
                last.insert(r.browser, r.counters);
            }
            for t in tasks {
                let _ = t.await;
            }
            let pkts: u64 = last.values().map(|c| c.to_plain + c.to_browser).sum();
            Ok((c1 - c0, pkts))
        })
    });
    cpu_rx
        .recv_timeout(Duration::from_secs(30))
        .context("the leg runtime did not start")?;
    let start = Instant::now();
    for i in 0..usize::from(n_pkts) {
        let due = start + Duration::from_secs_f64(i as f64 / LEG_PPS as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for c in &calls {
            c.browser_tx.send_to(&c.sealed[i], c.browser_at)?;
            c.plain_tx.send_to(&rtp(i as u16), c.gateway_at)?;
        }
    }
    let (cpu, pkts) = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the leg runtime panicked"))??;
    Ok((cpu as f64 / pkts.max(1) as f64, pkts))
}

/// Runs both measurements `reps` times (medians reported).
pub fn run(reps: usize, secs: f64) -> Result<Report> {
    let cert = Certificate::generate()?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for (name, profile) in [
        ("AES_CM_128_HMAC_SHA1_80", PeerProfile::Sha1_80),
        ("AEAD_AES_128_GCM", PeerProfile::Gcm),
    ] {
        let (mut dec, mut enc) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let (d, e) = core_rep(&cert, profile)?;
            dec.push(d);
            enc.push(e);
        }
        raw.push(json!({"core": name, "srtp_to_rtp_ns": dec, "rtp_to_srtp_ns": enc}));
        rows.push(format!(
            "| core, {name} | {:.2} | {:.2} |",
            median(dec) / 1000.0,
            median(enc) / 1000.0
        ));
    }
    for calls in LEG_CALLS {
        let mut per_pkt = Vec::new();
        let mut counts = Vec::new();
        for _ in 0..reps {
            let (ns, pkts) = leg_rep(&cert, secs, calls)?;
            per_pkt.push(ns);
            counts.push(pkts);
        }
        raw.push(json!({"leg_calls": calls, "pps_per_call": 2 * LEG_PPS,
            "ns_per_packet": per_pkt, "packets": counts}));
        let leg = median(per_pkt) / 1000.0;
        rows.push(format!(
            "| leg task, {calls} call(s) at {} packets/s each (both ways), AES_CM_128_HMAC_SHA1_80 | {leg:.1} (either direction) | |",
            2 * LEG_PPS
        ));
    }
    let markdown = format!(
        "## bench srtp: user-space cost of a bridged browser leg\n\n\
         CPU time of the one working thread, median of {reps} repetitions. Core: {CORE_PACKETS} \
         packets of 172 bytes (160-byte G.711 payload) per direction through webrtc-bridge's \
         `Bridge`, no sockets. Leg task: ng-agent's `run_leg` on one current-thread runtime, \
         loopback UDP, {secs} s per repetition; µs per packet bridged in either direction, \
         wake-ups and syscalls included.\n\n\
         | what | µs/packet SRTP→RTP | µs/packet RTP→SRTP |\n|---|---:|---:|\n{}\n",
        rows.join("\n")
    );
    Ok(Report {
        markdown,
        raw: Value::Array(raw),
    })
}
