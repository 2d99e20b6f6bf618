//! Thin tokio shell around the sans-IO cores (docs/sip-agent.md, ../../shared/style.md §4).
//!
//! One task owns the [`B2bua`] and the [`MediaLayer`]. Its loop selects over: a network event
//! ([`net::NetEvent`]), a control API answer ([`control`]), the core's next deadline, and
//! shutdown. It feeds exactly one input, then [`drive`]s: drains the B2BUA's outputs (transmits
//! to [`net::Net`], session events into the media layer), drains the media layer's outputs
//! (control requests to the client task, fork statuses back into the B2BUA), repeats until both
//! are empty, and re-reads `poll_timeout`.
//!
//! Shutdown (SIGINT/SIGTERM) leaves fork-agent's flows and forks alone on purpose: established
//! calls keep their audio in the kernel (architecture.md "MUST"), only SIP signalling stops.

pub mod admin;
pub mod cert_names;
pub mod control;
pub mod net;

use std::time::Instant;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::Settings;
use crate::core::b2bua::{B2bua, Output};
use crate::core::call_count::CallCounter;
use crate::core::media::{MediaLayer, MediaOutput};
use crate::core::port_pool::PortPool;
use net::{Net, NetEvent};

/// Network events buffered towards the B2BUA task; transport tasks wait when it is full
/// (backpressure instead of unbounded memory).
pub const NET_QUEUE: usize = 4096;

/// Outputs handled per [`drive`] round before yielding back to the select loop (quinn's
/// MAX_TRANSMIT_DATAGRAMS idea: one busy input must not starve the others).
pub const MAX_DRIVE_ROUNDS: usize = 64;

/// The clock the cores see: tokio's, so `tokio::time::pause` works in tests.
#[allow(clippy::disallowed_methods)] // shell: the one place the clock is read
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Runs the agent until SIGINT/SIGTERM.
/// `admin_socket`: where `sip-agent ctl` asks for call counts (none: no admin socket).
pub async fn run(settings: Settings, admin_socket: Option<std::path::PathBuf>) -> Result<()> {
    let (net_tx, mut net_rx) = mpsc::channel::<NetEvent>(NET_QUEUE);
    let mut net = Net::start(&settings, net_tx).await?;
    let (ctl_tx, mut ctl_rx) = control::spawn(settings.control_socket.clone());
    let (first, last) = settings.media_ports;
    let ports = PortPool::new(first, last).context("media.ports")?;
    // Tags, branches and Call-IDs must be unpredictable (docs/security.md): ChaCha12 seeded
    // from the OS.
    let rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    let mut core = B2bua::new(settings.core.clone(), ports, Box::new(rng));
    let mut media = MediaLayer::new(settings.media.clone());
    let mut counter = CallCounter::new();
    let stats = |counter: &CallCounter, core: &B2bua<PortPool>| admin::Stats {
        calls: counter.snapshot(),
        security: core.security_counters(),
    };
    let (stats_tx, stats_rx) = tokio::sync::watch::channel(stats(&counter, &core));
    if let Some(path) = &admin_socket {
        admin::spawn(path, stats_rx, &settings.limits, net.gate_stats())?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    info!(
        sip = %settings.core.sip_addr,
        control = %settings.control_socket.display(),
        "sip-agent running"
    );
    loop {
        let deadline = core.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = net_rx.recv() => {
                let Some(ev) = ev else { break };
                let now = now();
                match ev {
                    NetEvent::Message { peer, bytes } => core.handle_datagram(now, peer, &bytes),
                    NetEvent::Connected { peer, id, writer } => net.connected(peer, id, writer),
                    NetEvent::PeerNames { peer, id, names } => {
                        core.handle_peer_identity(peer, id, names)
                    }
                    NetEvent::Closed { peer, id } => {
                        core.handle_connection_closed(peer, id);
                        net.closed(peer, id)
                    }
                    NetEvent::SendFailed { tx } => core.handle_transport_error(now, tx),
                }
            }
            res = ctl_rx.recv() => {
                let Some((job, result)) = res else { break };
                media.handle_control_result(job, result);
            }
            () = sleep => {
                // Check against the clock, not only the timer future (style.md §4).
                let now = now();
                if deadline.is_some_and(|d| d <= now) {
                    core.handle_timeout(now);
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        drive(&mut core, &mut media, &mut counter, &mut net, &ctl_tx);
        let now_stats = stats(&counter, &core);
        stats_tx.send_if_modified(|s| {
            let changed = *s != now_stats;
            if s.calls != now_stats.calls {
                info!(counts = ?now_stats.calls, "call counts");
            }
            *s = now_stats;
            changed
        });
    }
    info!(
        calls = core.call_count(),
        "sip-agent stopping; kernel flows stay"
    );
    Ok(())
}

/// Drains both cores until neither has output (bounded; anything left is drained after the next
/// input, which the select loop provides at once if the core has a due timer).
fn drive(
    core: &mut B2bua<PortPool>,
    media: &mut MediaLayer,
    counter: &mut CallCounter,
    net: &mut Net,
    ctl: &mpsc::Sender<(crate::core::media::JobId, crate::core::media::ControlOp)>,
) {
    for _ in 0..MAX_DRIVE_ROUNDS {
        let mut progressed = false;
        let mut failed = Vec::new();
        while let Some(o) = core.poll_output() {
            progressed = true;
            match o {
                Output::Transmit(t) => {
                    if let Err(Some(tx)) = net.send(t) {
                        failed.push(tx);
                    }
                }
                Output::Session(e) => {
                    debug!(?e, "session");
                    media.handle_session(&e);
                    counter.handle_session(&e);
                }
            }
        }
        while let Some(o) = media.poll_output() {
            progressed = true;
            match o {
                MediaOutput::Control { job, op } => {
                    if let Err(e) = ctl.try_send((job, op)) {
                        let (job, _) = match e {
                            mpsc::error::TrySendError::Full(x)
                            | mpsc::error::TrySendError::Closed(x) => x,
                        };
                        media.handle_control_result(job, Err("control queue full".into()));
                    }
                }
                MediaOutput::Status { call, report } => {
                    counter.handle_fork_status(call, &report);
                    if let Err(e) = core.handle_fork_status(now(), call, report) {
                        // The call ended meanwhile: nobody to tell.
                        debug!(?call, error = %e, "fork status dropped");
                    }
                }
            }
        }
        let now = now();
        for tx in failed {
            progressed = true;
            core.handle_transport_error(now, tx);
        }
        if !progressed {
            return;
        }
    }
    warn!("output still pending after {MAX_DRIVE_ROUNDS} rounds; continuing after the next input");
}
