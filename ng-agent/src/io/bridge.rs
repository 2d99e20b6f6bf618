//! Bridged browser legs: one tokio task per leg owns a [`Bridge`] core and its three sockets.
//!
//! - The browser-facing socket is bound in the host namespace on the leg's advertised address
//!   (ICE-lite, DTLS and SRTP arrive there; XDP passes them, no flow matches).
//! - The gateway's RTP and RTCP sockets are bound inside the gateway namespace (by the thread
//!   that lives there, [`GatewayNs`]; a socket stays in the namespace it was made in) and
//!   connected to the leg's kernel anchor, so the decrypted audio enters fork-agent's kernel
//!   relay over the gateway veth like any plain caller's (docs/webrtc.md).
//!
//! Per input: feed the core, drain `poll_output`, re-read `poll_timeout`. Counters go to the
//! engine task when they changed, at most every [`COUNTER_INTERVAL`] and at every event.

#![allow(clippy::disallowed_methods)] // shell: reads the clock, spawns the per-leg tasks

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use webrtc_bridge::{
    Bridge, Certificate, EarlyAudio, Event, IceCredentials, Output, PlainKind, RemoteParams,
};

use crate::core::engine::ControlId;
use crate::core::webrtc::{BridgeOp, LegReport};
use crate::io::gateway::GatewayNs;

/// Counters reach the engine at most this often per leg (and at every event).
const COUNTER_INTERVAL: Duration = Duration::from_millis(200);

/// Commands per leg buffered before the engine task waits (there are at most a few).
const COMMAND_QUEUE: usize = 8;

/// Largest datagram read (a DTLS flight fragment or an RTP packet fit well below).
const MAX_DATAGRAM: usize = 2048;

/// The running bridges.
pub struct Bridges {
    cert: Certificate,
    gateway: GatewayNs,
    early: EarlyAudio,
    legs: HashMap<SocketAddr, mpsc::Sender<RemoteParams>>,
    reports: mpsc::Sender<LegReport>,
}

impl Bridges {
    /// Browser legs whose gateway sockets `gateway` binds; reports go to `reports`.
    pub fn new(
        cert: Certificate,
        gateway: GatewayNs,
        early: EarlyAudio,
        reports: mpsc::Sender<LegReport>,
    ) -> Bridges {
        Bridges {
            cert,
            gateway,
            early,
            legs: HashMap::new(),
            reports,
        }
    }

    /// Carries out one engine operation. For `Open`, the answer the engine waits for
    /// ([`Engine::handle_bridge_opened`](crate::core::engine::Engine::handle_bridge_opened)):
    /// the sockets are bound before the offer's reply leaves, and a failure names the address.
    #[must_use]
    pub fn apply(&mut self, op: BridgeOp) -> Option<(ControlId, Result<(), String>)> {
        match op {
            BridgeOp::Open {
                id,
                browser,
                gateway,
                kernel,
                ice,
                remote,
            } => {
                let result = self.open(browser, gateway, kernel, ice, remote);
                if let Err(e) = &result {
                    warn!(%browser, error = %format!("{e:#}"), "opening a browser leg failed; the offer is refused");
                }
                return Some((id, result.map_err(|e| format!("{e:#}"))));
            }
            BridgeOp::Remote { browser, remote } => match self.legs.get(&browser) {
                Some(tx) => {
                    if tx.try_send(remote).is_err() {
                        warn!(%browser, "a browser leg did not take its answer");
                    }
                }
                None => debug!(%browser, "answer for a browser leg that is not open"),
            },
            // Dropping the sender ends the task, which closes the sockets.
            BridgeOp::Close { browser } => {
                self.legs.remove(&browser);
            }
        }
        None
    }

    fn open(
        &mut self,
        browser: SocketAddr,
        gateway: SocketAddr,
        kernel: SocketAddr,
        ice: IceCredentials,
        remote: Option<RemoteParams>,
    ) -> Result<()> {
        let b = StdUdpSocket::bind(browser)
            .with_context(|| format!("binding the browser-facing socket {browser}"))?;
        let [rtp, rtcp] = self.gateway.sockets(gateway, kernel)?;
        let sockets = [b, rtp, rtcp].map(|s| {
            s.set_nonblocking(true)?;
            UdpSocket::from_std(s)
        });
        let [Ok(b), Ok(rtp), Ok(rtcp)] = sockets else {
            return Err(anyhow!("registering the browser leg's sockets with tokio"));
        };
        let mut bridge = Bridge::new(self.cert.clone(), ice, self.early);
        if let Some(r) = remote {
            bridge.set_remote(Instant::now().into_std(), r);
        }
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        self.legs.insert(browser, tx);
        let reports = self.reports.clone();
        tokio::spawn(run_leg(browser, bridge, b, rtp, rtcp, rx, reports));
        info!(%browser, %gateway, %kernel, "browser leg open");
        Ok(())
    }
}

/// Drives one browser leg until its `remote` sender is dropped (public for `bench srtp`).
pub async fn run_leg(
    key: SocketAddr,
    mut bridge: Bridge,
    browser: UdpSocket,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    mut remote: mpsc::Receiver<RemoteParams>,
    reports: mpsc::Sender<LegReport>,
) {
    let mut b1 = vec![0u8; MAX_DATAGRAM];
    let mut b2 = vec![0u8; MAX_DATAGRAM];
    let mut b3 = vec![0u8; MAX_DATAGRAM];
    let mut selected = None;
    let current = |bridge: &Bridge, selected| LegReport {
        browser: key,
        counters: bridge.counters(),
        selected,
    };
    let mut reported = current(&bridge, selected);
    let mut reported_at = Instant::now();
    loop {
        // What changed since the last report is sent at the latest one interval on.
        let report_at =
            (current(&bridge, selected) != reported).then(|| reported_at + COUNTER_INTERVAL);
        let deadline = [bridge.poll_timeout().map(Instant::from_std), report_at]
            .into_iter()
            .flatten()
            .min();
        let mut event = false;
        tokio::select! {
            r = browser.recv_from(&mut b1) => match r {
                Ok((n, from)) => bridge.handle_browser(Instant::now().into_std(), from, &b1[..n]),
                Err(e) => debug!(%key, error = %e, "browser socket receive error"),
            },
            r = rtp.recv(&mut b2) => match r {
                Ok(n) => bridge.handle_plain(Instant::now().into_std(), PlainKind::Rtp, &b2[..n]),
                Err(e) => debug!(%key, error = %e, "gateway RTP receive error"),
            },
            r = rtcp.recv(&mut b3) => match r {
                Ok(n) => bridge.handle_plain(Instant::now().into_std(), PlainKind::Rtcp, &b3[..n]),
                Err(e) => debug!(%key, error = %e, "gateway RTCP receive error"),
            },
            r = remote.recv() => match r {
                Some(p) => bridge.set_remote(Instant::now().into_std(), p),
                None => break,
            },
            () = sleep_until(deadline) => bridge.handle_timeout(Instant::now().into_std()),
        }
        while let Some(out) = bridge.poll_output() {
            match out {
                Output::ToBrowser { to, bytes } => {
                    if let Err(e) = browser.send_to(&bytes, to).await {
                        debug!(%key, %to, error = %e, "sending to the browser failed");
                    }
                }
                Output::ToPlain { kind, bytes } => {
                    let s = match kind {
                        PlainKind::Rtp => &rtp,
                        PlainKind::Rtcp => &rtcp,
                    };
                    if let Err(e) = s.send(&bytes).await {
                        debug!(%key, error = %e, "sending to the kernel anchor failed");
                    }
                }
                Output::Event(e) => {
                    event = true;
                    if let Event::Selected(a) = e {
                        selected = Some(a);
                    }
                    match &e {
                        Event::Failed(why) => warn!(%key, %why, "browser leg failed"),
                        other => info!(%key, event = ?other, "browser leg"),
                    }
                }
            }
        }
        let now = current(&bridge, selected);
        if now != reported && (event || reported_at.elapsed() >= COUNTER_INTERVAL) {
            // A full queue only delays the report: the next change sends it again.
            if reports.try_send(now).is_ok() {
                reported = now;
                reported_at = Instant::now();
            }
        }
    }
    let _ = reports.try_send(current(&bridge, selected));
    debug!(%key, "browser leg closed");
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
