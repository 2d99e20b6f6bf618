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
//!
//! Restarts (docs/sip-state.md): after every drive, each call the cores changed is written to
//! the call journal ([`call_store`]); at start the journal's calls are restored into both
//! cores, and a [`Reconciler`] removes the fork-agent flows and forks of calls not restored
//! after the grace period. fork-agent's `flow_removed` events (a flow's idle timeout) release
//! the call the flow belonged to; its `fork_status` events go to the media layer, which turns
//! them into STARTED, RECONNECTING and ERROR statuses for the controller.

pub mod admin;
pub mod call_store;
pub mod cert_names;
pub mod control;
pub mod net;

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use daemon_ops::notify::Notifier;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::Settings;
use crate::core::b2bua::{B2bua, CallHandle, EndReason, Leg, Output};
use crate::core::call_count::CallCounter;
use crate::core::call_journal::CallRecord;
use crate::core::media::{JobId, MediaLayer, MediaOutput};
use crate::core::port_pool::PortPool;
use crate::core::reconcile::{Listing, Ownership, Query, ReconcileOutput, Reconciler};
use call_store::CallStore;
use control::AgentEvent;
use control_api::{Answer, ClientError, FlowRow, Fork, Op, StopReason};
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
/// Serves until SIGINT/SIGTERM; SIGHUP re-reads the file through `reloader` and applies its
/// `[log] level` (everything else is restart-only, docs/operations.md "Reload").
pub async fn run(
    settings: Settings,
    admin_socket: Option<std::path::PathBuf>,
    mut reloader: daemon_ops::reload::Reloader,
) -> Result<()> {
    let (net_tx, mut net_rx) = mpsc::channel::<NetEvent>(NET_QUEUE);
    let mut net = Net::start(&settings, net_tx).await?;
    let (ctl_tx, mut ctl_rx) = control::spawn(settings.control_socket.clone());
    let mut events = control::spawn_events(settings.control_socket.clone());
    let (first, last) = settings.media_ports;
    let ports = PortPool::new(first, last).context("media.ports")?;
    // Tags, branches and Call-IDs must be unpredictable (docs/security.md): ChaCha12 seeded
    // from the OS.
    let rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    let mut core = B2bua::new(settings.core.clone(), ports, Box::new(rng));
    let mut media = MediaLayer::new(settings.media.clone());
    let mut counter = CallCounter::new();
    let mut store = settings.state.dir.as_ref().map(|dir| {
        let (mut store, replayed) = CallStore::open(dir, &settings.state.owner);
        restore(
            now(),
            &mut core,
            &mut media,
            &mut counter,
            &mut store,
            replayed.calls,
        );
        store
    });
    let mut restart = settings.state.reconcile.then(|| {
        let owners = store
            .as_ref()
            .map(|s| s.owners().to_vec())
            .unwrap_or_else(|| vec![settings.state.owner.clone()]);
        Restart::new(now(), settings.state.reconcile_grace, Ownership(owners))
    });
    let stats = |counter: &CallCounter, core: &B2bua<PortPool>| admin::Stats {
        calls: counter.snapshot(),
        security: core.security_counters(),
    };
    let (stats_tx, stats_rx) = tokio::sync::watch::channel(stats(&counter, &core));
    let admin_gate = match &admin_socket {
        Some(path) => Some(admin::spawn(
            path,
            stats_rx.clone(),
            &settings.limits,
            net.gate_stats(),
        )?),
        None => None,
    };
    if let Some(addr) = settings.metrics_listen {
        let listener = daemon_ops::metrics::bind(addr).await?;
        admin::spawn_metrics(
            listener,
            stats_rx,
            net.gate_stats(),
            admin_gate,
            reloader.counters.clone(),
        );
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    info!(
        sip = %settings.core.sip_addr,
        control = %settings.control_socket.display(),
        "sip-agent running"
    );
    // Ready once the listeners are bound. fork-agent need not answer yet: requests to it are
    // made per call and a call that cannot reach it is told so (its unit orders fork-agent
    // first anyway).
    let notify = Notifier::from_env();
    notify.ready(&format!("serving SIP on {}", settings.core.sip_addr));
    let mut watchdog = notify.watchdog_ticker();
    loop {
        let reconcile_at = restart.as_ref().and_then(|r| r.reconciler.poll_timeout());
        let deadline = match (core.poll_timeout(), reconcile_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // From this loop, so a wedged B2BUA loop stops the pings (WatchdogSec=).
            () = watchdog.tick() => notify.watchdog_ping(),
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
                match restart.as_mut() {
                    Some(r) if r.owns(job) => r.handle_result(now(), job, result, &media),
                    _ => media.handle_control_result(job, result),
                }
            }
            ev = events.recv() => {
                let Some(ev) = ev else { continue };
                match ev {
                    AgentEvent::FlowRemoved { local, reason } => {
                        // A flow fork-agent removed by itself: the call's media is dead (an RTP
                        // flow), or an RTCP flow idled out on a live call (forgotten, the call
                        // goes on).
                        if let Some(removed) = media.handle_flow_removed(local) {
                            info!(call = ?removed.call, %local, ?reason, rtp = removed.rtp, "fork-agent removed a flow of this call");
                            if removed.rtp {
                                if let Err(e) = core.release(now(), removed.call, EndReason::MediaTimeout) {
                                    debug!(call = ?removed.call, error = %e, "not released");
                                }
                            }
                        }
                    }
                    AgentEvent::ForkStatus(ev) => media.handle_fork_event(&ev),
                }
            }
            () = sleep => {
                // Check against the clock, not only the timer future (style.md §4).
                let now = now();
                if core.poll_timeout().is_some_and(|d| d <= now) {
                    core.handle_timeout(now);
                }
                if let Some(r) = restart.as_mut() {
                    if r.reconciler.poll_timeout().is_some_and(|d| d <= now) {
                        r.reconciler.handle_timeout(now);
                    }
                }
            }
            _ = hup.recv() => {
                notify.reloading();
                let ok = reloader
                    .reread(Settings::from_toml, |s| &s.log)
                    .is_some();
                if ok {
                    reloader.finish(true);
                }
                notify.ready("serving (reloaded)");
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        drive(&mut core, &mut media, &mut counter, &mut net, &ctl_tx);
        if let Some(r) = restart.as_mut() {
            if r.drive(&mut core, &ctl_tx, &media) {
                // Reconciled: only the current configuration's addresses are ours from now on.
                if let Some(s) = store.as_mut() {
                    s.set_owners(vec![settings.state.owner.clone()]);
                }
                restart = None;
            }
        }
        if let Some(s) = store.as_mut() {
            persist(&mut core, &mut media, s);
        }
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
    notify.stopping();
    info!(
        calls = core.call_count(),
        "sip-agent stopping; kernel flows stay"
    );
    Ok(())
}

/// Restores the journal's calls into both cores; a call that cannot be restored is logged and
/// left to reconciliation.
fn restore(
    now: Instant,
    core: &mut B2bua<PortPool>,
    media: &mut MediaLayer,
    counter: &mut CallCounter,
    store: &mut CallStore,
    calls: Vec<CallRecord>,
) {
    let total = calls.len();
    let mut restored = 0;
    for rec in calls {
        let call = CallHandle(rec.call.call);
        let enhanced = rec.call.enhanced;
        match core.restore(now, rec.call) {
            Ok(()) => {
                counter.restore(call, enhanced);
                let legs = [Leg::A, Leg::B].map(|l| core.negotiated_media(call, l));
                media.restore(call, legs, rec.media_layer);
                restored += 1;
            }
            Err(e) => {
                warn!(?call, error = %e, "journalled call not restored; reconciliation removes its flows");
                store.end(call.0);
            }
        }
    }
    // Restoring changes nothing worth a line: forget the marks.
    let _ = core.take_changed();
    let _ = media.take_changed();
    if total > 0 {
        info!(
            restored,
            journalled = total,
            "calls restored from the journal"
        );
    }
}

/// Journals every call the cores changed: its record while established, its end once gone.
fn persist(core: &mut B2bua<PortPool>, media: &mut MediaLayer, store: &mut CallStore) {
    let mut changed = core.take_changed();
    changed.extend(media.take_changed());
    changed.sort();
    changed.dedup();
    for call in changed {
        match core.snapshot(call) {
            Some(snap) => store.save(CallRecord {
                call: snap,
                media_layer: media.snapshot(call),
            }),
            None => store.end(call.0),
        }
    }
}

/// Control jobs of the reconciler use ids from here up, apart from the media layer's (which
/// count from 1).
const RECONCILE_JOBS: u64 = 1 << 62;

/// What a reconciler's control job asked.
#[derive(Debug, Clone, Copy)]
enum Asked {
    Flows(Query),
    Forks(Query),
    Removal,
}

/// `show_flows`' rows, or why they could not be read.
type FlowsAnswer = Result<Vec<FlowRow>, String>;
/// `show_forks`' forks, or why they could not be read.
type ForksAnswer = Result<Vec<Fork>, String>;

/// The reconciler and its control jobs in flight.
struct Restart {
    reconciler: Reconciler,
    jobs: HashMap<JobId, Asked>,
    next_job: u64,
    /// Answers of the current query: `show_flows`, `show_forks`.
    answers: (Option<FlowsAnswer>, Option<ForksAnswer>),
}

impl Restart {
    fn new(now: Instant, grace: std::time::Duration, owned: Ownership) -> Self {
        info!(
            grace_secs = grace.as_secs(),
            "reconciling with fork-agent after the grace period"
        );
        Self {
            reconciler: Reconciler::new(now, grace, owned),
            jobs: HashMap::new(),
            next_job: RECONCILE_JOBS,
            answers: (None, None),
        }
    }

    fn owns(&self, job: JobId) -> bool {
        job.0 >= RECONCILE_JOBS
    }

    /// Queues one control request; false when the queue is full (nothing queued).
    fn send(&mut self, ctl: &mpsc::Sender<(JobId, Op)>, asked: Asked, op: Op) -> bool {
        self.next_job += 1;
        let job = JobId(self.next_job);
        if ctl.try_send((job, op)).is_err() {
            warn!("control queue full: reconciliation request not sent");
            return false;
        }
        self.jobs.insert(job, asked);
        true
    }

    /// One control answer for a reconciler job.
    fn handle_result(
        &mut self,
        now: Instant,
        job: JobId,
        result: Result<Answer, ClientError>,
        media: &MediaLayer,
    ) {
        let Some(asked) = self.jobs.remove(&job) else {
            return;
        };
        let query = match asked {
            Asked::Removal => {
                if let Err(e) = result {
                    warn!(error = %e, "reconciliation removal refused");
                }
                return;
            }
            Asked::Flows(q) => {
                self.answers.0 = Some(match result {
                    Ok(Answer::Flows(rows)) => Ok(rows),
                    Ok(other) => Err(format!("show_flows answered {other:?}")),
                    Err(e) => Err(e.to_string()),
                });
                q
            }
            Asked::Forks(q) => {
                self.answers.1 = Some(match result {
                    Ok(Answer::Forks(forks)) => Ok(forks),
                    Ok(other) => Err(format!("show_forks answered {other:?}")),
                    Err(e) => Err(e.to_string()),
                });
                q
            }
        };
        if let (Some(flows), Some(forks)) = (&self.answers.0, &self.answers.1) {
            let listing = match (flows, forks) {
                (Ok(f), Ok(k)) => Ok(Listing::from_answers(f, k)),
                (Err(e), _) | (_, Err(e)) => Err(e.clone()),
            };
            if let Err(e) = &listing {
                warn!(?query, error = %e, "cannot list fork-agent's flows and forks; asking again");
            }
            self.answers = (None, None);
            self.reconciler
                .handle_listing(now, query, listing, &media.known());
        }
    }

    /// Carries out the reconciler's outputs; true once it is done.
    fn drive(
        &mut self,
        core: &mut B2bua<PortPool>,
        ctl: &mpsc::Sender<(JobId, Op)>,
        media: &MediaLayer,
    ) -> bool {
        while let Some(o) = self.reconciler.poll_output() {
            match o {
                ReconcileOutput::Ask(q) => {
                    if !(self.send(ctl, Asked::Flows(q), Op::ShowFlows)
                        && self.send(ctl, Asked::Forks(q), Op::ShowForks))
                    {
                        // Asked again after a pause, like an unreachable fork-agent.
                        self.jobs.retain(|_, a| matches!(a, Asked::Removal));
                        self.answers = (None, None);
                        let err = Err("control queue full".to_string());
                        self.reconciler
                            .handle_listing(now(), q, err, &media.known());
                    }
                }
                ReconcileOutput::Reserve(port) => {
                    if core.ports_mut().reserve(port) {
                        debug!(
                            port,
                            "port of an unknown flow reserved until reconciliation"
                        );
                    } else {
                        self.reconciler.handle_not_reserved(port);
                    }
                }
                ReconcileOutput::Release(port) => core.ports_mut().release(port),
                ReconcileOutput::ForkStop(call_guid) => {
                    info!(%call_guid, "reconciliation: stopping the fork of a call this agent does not know");
                    let _ = self.send(
                        ctl,
                        Asked::Removal,
                        Op::ForkStop {
                            call_guid,
                            reason: StopReason::CallEnd,
                        },
                    );
                }
                ReconcileOutput::FlowDel(local) => {
                    info!(%local, "reconciliation: removing the flow of a call this agent does not know");
                    let _ = self.send(ctl, Asked::Removal, Op::FlowDel { local });
                }
                ReconcileOutput::Done { forks, flows } => {
                    info!(forks, flows, "reconciliation with fork-agent done");
                }
            }
        }
        self.reconciler.is_done() && self.jobs.is_empty()
    }
}

/// Drains both cores until neither has output (bounded; anything left is drained after the next
/// input, which the select loop provides at once if the core has a due timer).
fn drive(
    core: &mut B2bua<PortPool>,
    media: &mut MediaLayer,
    counter: &mut CallCounter,
    net: &mut Net,
    ctl: &mpsc::Sender<(JobId, Op)>,
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
                        let full = std::io::Error::other("control request queue full");
                        media.handle_control_result(job, Err(ClientError::Io(full)));
                    }
                }
                MediaOutput::Status { call, report } => {
                    counter.handle_fork_status(call, &report);
                    if let Err(e) = core.handle_fork_status(now(), call, report) {
                        // The call ended meanwhile: nobody to tell.
                        debug!(?call, error = %e, "fork status dropped");
                    }
                }
                MediaOutput::ConnectionStatus { call, report } => {
                    counter.handle_fork_status(call, &report);
                    if let Err(e) = core.handle_connection_status(now(), call, report) {
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
