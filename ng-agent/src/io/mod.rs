//! Thin tokio shell around the [`Engine`]: one task owns it and selects over the ng socket, the
//! control client's answers and the engine's next deadline; a second task talks to fork-agent.
//!
//! Per input: feed it, drain `poll_output` (replies are sent at once, control operations are
//! queued for the control task in order), re-read `poll_timeout`. The control task executes the
//! operations one at a time on one connection (a `fork_start` must follow the `flow_add`s it
//! names) and hands every answer back, so every held ng reply is eventually sent.

#![allow(clippy::disallowed_methods)] // shell: reads the clock, spawns the control task

pub mod call_store;
pub mod metrics;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use conn_limits::core::log_limit::LogLimiter;
use control_api::{AsyncClient, ClientError, Op};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::Settings;
use crate::core::engine::{ControlId, Engine, Output};
use crate::core::webrtc::{BridgeOp, LegReport, WebrtcConfig};
use call_store::CallStore;

pub mod bridge;
pub mod gateway;

/// Reports (counters, selected address) buffered from the browser legs' tasks.
const REPORT_QUEUE: usize = 1024;

/// Answers buffered from the control task (it waits when the engine task is behind).
const RESULT_QUEUE: usize = 1024;

/// How long one fork-agent answer may take: `flow_add` waits up to 1.5 s for a neighbour.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// At most one warning per cause per this interval (a flood of bad requests must not flood the
/// log); the number suppressed is logged when it ends.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How often, and how far apart, a `not ready` answer is asked again (fork-agent still loading).
const NOT_READY_RETRIES: u32 = 25;
const NOT_READY_PAUSE: Duration = Duration::from_millis(200);

/// Runs the agent until SIGINT or SIGTERM; SIGHUP re-reads the file through `reloader` and
/// applies its `[log] level` (everything else is restart-only, docs/operations.md "Reload").
pub async fn run(settings: Settings, mut reloader: daemon_ops::reload::Reloader) -> Result<()> {
    let socket = UdpSocket::bind(settings.listen)
        .await
        .with_context(|| format!("binding the ng socket {} (ng.listen)", settings.listen))?;
    let max = settings.engine.max_message_bytes;
    let mut engine_cfg = settings.engine.clone();
    let (report_tx, mut report_rx) = mpsc::channel::<LegReport>(REPORT_QUEUE);
    let mut bridges = match &settings.webrtc {
        Some(w) => {
            let cert = webrtc_bridge::Certificate::generate()
                .context("generating the DTLS certificate (ECDSA P-256) for browser legs")?;
            engine_cfg.webrtc = Some(WebrtcConfig {
                fingerprint: cert.fingerprint().clone(),
                kernel_address: w.kernel_address,
                gateway: w.gateway_address,
            });
            engine_cfg.seed = rand::random();
            info!(fingerprint = %cert.fingerprint(), netns = %w.gateway_netns.display(), "WebRTC bridging on");
            // The relay's incremental UDP checksum update needs full checksums (core/ethtool.rs).
            let (ns, dev) = gateway::GatewayNs::enter(&w.gateway_netns, w.gateway_address)?;
            info!(%dev, "gateway veth: transmit checksum offload off");
            // Nothing needs them from here on: the namespace thread binds the legs' sockets
            // without any, and it has dropped its own (no other thread exists yet).
            gateway::drop_capabilities("ng-agent's main thread")?;
            let holding = daemon_ops::caps::held_by_any()
                .context("reading the threads' capabilities in /proc/self/task")?;
            if !holding.is_empty() {
                anyhow::bail!("threads {holding:?} still hold capabilities after dropping them");
            }
            info!("capabilities dropped: the gateway namespace is entered");
            Some(bridge::Bridges::new(cert, ns, w.early_audio, report_tx))
        }
        None => None,
    };
    let mut engine = Engine::new(engine_cfg).context("media settings")?;
    let mut store = settings.state_dir.as_deref().map(|dir| {
        let (store, calls) = CallStore::open(dir);
        let n = calls.len();
        for problem in engine.restore(Instant::now().into_std(), unix_now(), calls) {
            warn!(%problem, "a journalled call was not restored");
        }
        info!(journal = %dir.join(call_store::FILE_NAME).display(), restored = engine.call_count(), journalled = n, "calls restored");
        store
    });
    let (op_tx, mut res_rx) = spawn_control(settings.control_socket.clone());
    let mut ops: VecDeque<(ControlId, Op)> = VecDeque::new();
    let mut log_limit: LogLimiter<&'static str> = LogLimiter::new(LOG_INTERVAL);
    // One byte more than accepted, so an overlong datagram is seen as such, not truncated.
    let mut buf = vec![0u8; max + 1];
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let (published, published_rx) = tokio::sync::watch::channel(metrics::Published::default());
    if let Some(addr) = settings.metrics_listen {
        let listener = daemon_ops::metrics::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint {addr} (metrics.listen)"))?;
        metrics::spawn(listener, published_rx, reloader.counters.clone());
    }
    info!(listen = %settings.listen, control = %settings.control_socket.display(), "ng-agent running");
    // Ready once the ng socket is bound (fork-agent may come later: requests wait for it).
    let notify = daemon_ops::notify::Notifier::from_env();
    notify.ready(&format!("ng on {}", settings.listen));
    let mut watchdog = notify.watchdog_ticker();
    loop {
        let deadline = [engine.poll_timeout(), log_limit.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .map(Instant::from_std);
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let (n, from) = match r {
                    Ok(x) => x,
                    // ICMP errors from a previous reply surface here on Linux; nothing is lost.
                    Err(e) => { debug!(error = %e, "ng socket receive error"); continue; }
                };
                debug!(%from, len = n, "ng request");
                engine.handle_datagram(Instant::now().into_std(), unix_now(), from, &buf[..n]);
            }
            Some((id, result)) = res_rx.recv() => {
                let result = result.map_err(|e| {
                    warn!(error = %e, "fork-agent refused or did not answer a control request");
                    match e {
                        ClientError::Api(api) => api.to_string(),
                        other => format!("unreachable: {other}"),
                    }
                });
                engine.handle_control_answer(Instant::now().into_std(), id, result);
            }
            Some(report) = report_rx.recv() => {
                // Falls through: the new counters are published for scrapes below.
                engine.handle_bridge_report(report);
            }
            permit = op_tx.reserve(), if !ops.is_empty() => {
                let Ok(permit) = permit else { anyhow::bail!("the control task ended") };
                if let Some(op) = ops.pop_front() {
                    permit.send(op);
                }
                continue;
            }
            () = sleep_until(deadline) => {
                let now = Instant::now().into_std();
                engine.handle_timeout(now);
                log_limit.handle_timeout(now);
                while let Some((cause, n)) = log_limit.poll_output() {
                    warn!(cause, suppressed = n, "more ng requests were refused or dropped");
                }
            }
            () = watchdog.tick() => {
                notify.watchdog_ping();
                continue;
            }
            _ = hup.recv() => {
                notify.reloading();
                if reloader.reread(Settings::from_toml, |s| &s.log).is_some() {
                    reloader.finish(true);
                }
                notify.ready("ng (reloaded)");
                continue;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        let now = Instant::now().into_std();
        let unix = unix_now();
        loop {
            // Journal first, before every output: a reply the proxy sees is never for a call a
            // restart would forget (nor for one refused and removed while draining).
            while let Some(entry) = engine.poll_journal(now, unix) {
                if let Some(store) = store.as_mut() {
                    store.record(&entry);
                }
            }
            let Some(out) = engine.poll_output() else {
                break;
            };
            match out {
                Output::Reply { to, bytes, error } => {
                    if let Some(reason) = error {
                        if log_limit.check(now, "refused") {
                            warn!(%to, %reason, "ng request refused");
                        }
                    }
                    if let Err(e) = socket.send_to(&bytes, to).await {
                        warn!(%to, error = %e, "sending an ng reply failed");
                    }
                }
                Output::Control { id, op } => ops.push_back((id, op)),
                Output::Bridge(op) => {
                    let opened = match bridges.as_mut() {
                        Some(b) => b.apply(op),
                        None => {
                            warn!(?op, "bridge operation without [webrtc]: engine bug");
                            match op {
                                BridgeOp::Open { id, .. } => {
                                    Some((id, Err("WebRTC bridging is off".to_owned())))
                                }
                                _ => None,
                            }
                        }
                    };
                    // Synchronous: the held offer reply is among the outputs drained next.
                    if let Some((id, result)) = opened {
                        engine.handle_bridge_opened(now, id, result);
                    }
                }
                Output::Dropped { from, cause } => {
                    if log_limit.check(now, cause) {
                        warn!(%from, cause, "ng datagram dropped");
                    }
                }
            }
        }
        // For scrapes: the latest counters (a no-op when nothing changed), once the outputs are
        // drained, so an offer refused while draining is never shown as managed first.
        published.send_if_modified(|p| {
            let now = metrics::Published {
                stats: engine.stats(),
                calls: engine.call_count(),
            };
            std::mem::replace(p, now) != now
        });
    }
    info!(
        calls = engine.call_count(),
        "ng-agent stopping; installed flows stay in fork-agent's kernel relay"
    );
    notify.stopping();
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

type ControlResult = (ControlId, Result<control_api::Answer, ClientError>);

/// Starts the control task: operations in, answers out, strictly in order.
fn spawn_control(
    socket: PathBuf,
) -> (mpsc::Sender<(ControlId, Op)>, mpsc::Receiver<ControlResult>) {
    let (op_tx, mut op_rx) = mpsc::channel::<(ControlId, Op)>(RESULT_QUEUE);
    let (res_tx, res_rx) = mpsc::channel(RESULT_QUEUE);
    tokio::spawn(async move {
        let mut conn: Option<AsyncClient> = None;
        while let Some((id, op)) = op_rx.recv().await {
            let mut result =
                AsyncClient::call_connecting(&mut conn, &socket, ANSWER_TIMEOUT, &op).await;
            for _ in 0..NOT_READY_RETRIES {
                match &result {
                    Err(ClientError::Api(e)) if e.is_not_ready() => {
                        tokio::time::sleep(NOT_READY_PAUSE).await;
                        result =
                            AsyncClient::call_connecting(&mut conn, &socket, ANSWER_TIMEOUT, &op)
                                .await;
                    }
                    _ => break,
                }
            }
            if result.as_ref().is_err_and(ClientError::is_broken) {
                // Re-open for the next request; this one is not sent twice (it may have run).
                conn = None;
            }
            debug!(request = %op.to_line(), ok = result.is_ok(), "control");
            if res_tx.send((id, result)).await.is_err() {
                return;
            }
        }
    });
    (op_tx, res_rx)
}
