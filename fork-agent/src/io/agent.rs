//! The fork-agent daemon: owns the data plane and the flow table, serves the control API, and
//! moves forked packets from AF_XDP to the speech server connections.
//!
//! Tasks: the agent loop (control requests, one at a time, so map writes never interleave), the
//! media task (stream id → connection routing, one input at a time), one task per speech server,
//! and a blocking AF_XDP reader thread.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use control_api::{
    ChannelAdded, Event, FlowAdded, FlowPath, FlowRow, FlowSpec, Op, Response, TurnDirection,
    TurnRow,
};
use fork_common::{FlowStats, NeighKey, NeighValue, TurnAction};
use serde_json::{json, Value};
use tokio::{
    net::UnixListener,
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

use crate::io::control::Readiness;
use crate::io::metrics::Live;
use crate::{
    config::Config,
    core::{
        dataplane::{Action, Orchestrator},
        flows::relay_action,
        fork_journal,
        route_cache::RouteCache,
        turn_offload::{self, ChannelSpec, MapOp, Offloaded, TurnOffload},
    },
    io::{
        ebpf::DataPlane,
        fork_store::ForkStore,
        netdev,
        speech::{queue::MediaQueue, Media as Forked, SpeechService},
        xsk::{RxSink, XskReader},
    },
};
use daemon_ops::notify::Notifier;

mod return_audio;
mod turn;
mod views;

/// User-space counters (the kernel's are in `COUNTERS` and `FLOW_STATS`).
#[derive(Debug, Default)]
pub struct AgentStats {
    pub xsk_frames: AtomicU64,
    pub xsk_bad_frames: AtomicU64,
    pub media_queue_drops: AtomicU64,
    /// Forked packets the kernel dropped because the AF_XDP ring was full or had no free
    /// frame (XDP_STATISTICS `rx_ring_full` + `rx_dropped`): the reader did not keep up.
    pub xsk_ring_drops: AtomicU64,
    pub dtmf_events: AtomicU64,
}

/// A request for the agent loop and where its answer goes.
pub(crate) type ControlMsg = (Op, oneshot::Sender<Response>);

/// Serves until SIGINT/SIGTERM; SIGHUP re-reads the file through `reloader` and applies
/// `[log]`, `[[speech_server]]` and `[destinations]` (docs/operations.md "Reload").
pub async fn run(cfg: Config, reloader: daemon_ops::reload::Reloader) -> Result<()> {
    // Bind the control socket first: a second agent on the same socket fails before it touches
    // the data plane. It answers "not ready" until the data plane is up.
    let listener = bind_control(&cfg.control.socket)?;
    // The metrics port too: a taken port fails the start before the data plane is touched.
    let metrics = match cfg.metrics.listen(daemon_ops::metrics::FORK_AGENT_DEFAULT) {
        Some(addr) => Some(daemon_ops::metrics::bind(addr).await?),
        None => None,
    };
    let notify = Notifier::from_env();
    notify.status("loading the XDP programs");
    let (ctl_tx, ctl_rx) = mpsc::channel::<ControlMsg>(64);
    let (events, _) = tokio::sync::broadcast::channel(crate::io::speech::EVENT_BACKLOG);
    let (ready_tx, ready_rx) =
        tokio::sync::watch::channel(Readiness::Starting("loading the XDP programs"));
    let ready_rx_metrics = ready_rx.clone();
    let statuses = crate::io::statuses::Statuses::new(events.clone());
    let control_stats = crate::io::control::spawn(
        listener,
        &cfg.control,
        ctl_tx.clone(),
        statuses.clone(),
        ready_rx,
    );
    let metrics = metrics.map(|l| {
        (
            l,
            crate::io::metrics::Sources {
                ctl: ctl_tx.clone(),
                ready: ready_rx_metrics,
                live: Live::spawn(&events),
                servers: Default::default(),
                control_gate: control_stats.clone(),
                reloads: reloader.counters.clone(),
            },
        )
    });
    let started = Started {
        ready: ready_tx,
        control_stats,
        metrics,
        notify,
        reloader,
        statuses,
    };
    let result = serve(&cfg, ctl_rx, events, started).await;
    notify.stopping();
    // Pinned maps and links stay: calls keep their audio until the next agent adopts them.
    let _ = std::fs::remove_file(&cfg.control.socket);
    result
}

/// What `run` set up before the data plane: readiness for the control API, the metrics
/// endpoint (bound, not yet serving), the service manager.
struct Started {
    ready: tokio::sync::watch::Sender<Readiness>,
    control_stats: Arc<conn_limits::io::gate::GateStats>,
    metrics: Option<(tokio::net::TcpListener, crate::io::metrics::Sources)>,
    notify: Notifier,
    reloader: daemon_ops::reload::Reloader,
    /// Fork statuses, published by the stream service, snapshotted for new subscribers.
    statuses: crate::io::statuses::Statuses,
}

async fn serve(
    cfg: &Config,
    mut ctl_rx: mpsc::Receiver<ControlMsg>,
    events: tokio::sync::broadcast::Sender<String>,
    started: Started,
) -> Result<()> {
    let Started {
        ready,
        control_stats,
        metrics,
        notify,
        mut reloader,
        statuses,
    } = started;
    // Without an endpoint the latency task still runs (cheap), so the agent has one code path.
    let live = metrics
        .as_ref()
        .map_or_else(|| Live::spawn(&events), |(_, m)| m.live.clone());
    let d = &cfg.dataplane;
    let mut dp = DataPlane::load(&d.pin_dir, d.fork_path)?;
    for r in dp.refused() {
        warn!(fork_path = r.path.name(), "not used: {r}");
    }
    info!(
        fork_path = dp.fork_path().name(),
        "XDP programs loaded (docs/maps.md \"Fork path\")"
    );
    let _ = ready.send(Readiness::Starting("attaching the XDP programs"));
    notify.status("attaching the XDP programs");
    let (_fork_ifindex, fork_peer) = dp.attach(&d.interfaces, &d.fork_interface, d.xdp_mode)?;
    let reader = match XskReader::open(&fork_peer, 0, d.umem_frames)
        .and_then(|r| dp.set_xsk(0, r.fd()).map(|()| r))
    {
        Ok(r) => r,
        Err(e) => {
            dp.rollback();
            return Err(e);
        }
    };

    if let Some(logger) = dp.take_logger() {
        #[allow(clippy::disallowed_methods)] // io shell
        tokio::spawn(flush_ebpf_logs(logger));
    }

    let mut orch = Orchestrator::new();
    let mut pinned = Vec::new();
    for item in dp.flows.iter() {
        let (key, action) = item.context("reading pinned FLOWS")?;
        let turn_marker = fork_common::FLOW_F_TURN_LISTENER | fork_common::FLOW_F_TURN_RELAY;
        if action.flags & turn_marker == 0 {
            pinned.push((key, action));
        }
    }
    let mut turn = TurnOffload::new();
    for item in dp.turn_channels.iter() {
        let (key, to_peer) = item.context("reading pinned TURN_CHANNELS")?;
        let fam = key.family;
        let addr = |w, port_be: u16| {
            SocketAddr::new(fork_common::words_addr(fam, w), u16::from_be(port_be))
        };
        let spec = ChannelSpec {
            client: addr(key.client_addr_be, key.client_port_be),
            server: addr(key.server_addr_be, key.server_port_be),
            number: u16::from_be(key.channel_be),
            relay: addr(to_peer.flow.src_addr_be, to_peer.flow.src_port_be),
            peer: addr(to_peer.flow.dst_addr_be, to_peer.flow.dst_port_be),
        };
        let Ok(to_client) = dp.turn_peers.get(&turn_offload::peer_key(&spec), 0) else {
            warn!(client = %spec.client, channel = spec.number, "pinned TURN channel without its peer entry; left to expire");
            continue;
        };
        orch.table_mut()
            .adopt_stats(to_peer.flow.stats_index, spec.client);
        orch.table_mut()
            .adopt_stats(to_client.flow.stats_index, spec.client);
        turn.commit(Offloaded {
            spec,
            to_peer_stats: to_peer.flow.stats_index,
            to_client_stats: to_client.flow.stats_index,
        });
    }
    let (fork_store, restored) = ForkStore::open(&cfg.control.state_dir);
    // Adopted flows count as installed now: their idle time starts with this agent.
    let (found, resume) = orch.adopt(pinned, restored, monotonic_ns());
    info!(
        adopted_flows = found.flows,
        forks = found.forks,
        "data plane ready"
    );

    let stats = Arc::new(AgentStats::default());
    // AF_XDP reader thread → stream service (io/speech: pools, fork sessions, media routing),
    // a drained batch at a time.
    let media = Arc::new(MediaQueue::new(MEDIA_QUEUE));
    let speech = SpeechService::spawn(
        &cfg.speech_servers,
        &cfg.destinations,
        media.clone(),
        statuses,
    )?;
    let fallback_media = media.clone();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let mut rx = RxBatch::new(media, stats.clone());
        std::thread::Builder::new()
            .name("xsk-rx".into())
            .spawn(move || reader.run(stop, RX_COALESCE, &mut rx))
            .context("starting the AF_XDP reader thread")?;
    }

    if let Some((listener, mut sources)) = metrics {
        sources.servers = speech.stats.clone();
        crate::io::metrics::spawn(listener, sources);
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // Inject-mode playouts' take-overs and hand-backs: each playout has at most one take-over
    // waiting, so this only fills if thousands of bots start talking in the same instant.
    let (inject_tx, mut inject_rx) = mpsc::channel(INJECT_QUEUE);
    let mut agent = Agent {
        dp,
        fallback: crate::io::fallback::Fallback::new(fallback_media),
        return_audio: cfg.return_audio,
        inject_tx,
        turn,
        neighbours: HashMap::new(),
        routes: RouteCache::new(ROUTE_CACHE_TTL, ROUTE_CACHE_CAPACITY),
        interfaces: d.interfaces.clone(),
        orch,
        speech,
        stats,
        fork_store,
        idle_timeout: Duration::from_secs(d.flow_idle_timeout_secs),
        control_stats,
        events,
        live,
    };
    // Adopted flows get their fallback sockets back.
    let adopted_flows: Vec<_> = agent
        .orch
        .table()
        .flows()
        .map(|f| (f.local, f.src, f.dst, f.expect(), f.is_sink()))
        .collect();
    for (local, src, dst, expect, sink) in adopted_flows {
        if let Err(e) = agent.fallback.add(local, src, dst, expect, sink) {
            warn!(%local, "no user-space fallback for this flow: {e:#}");
        }
    }
    // A bot that was talking when the previous agent stopped holds the relay no more.
    agent.hand_back_stale_injects();
    // Restored forks: their fallbacks fork too, and the servers hear they resume.
    agent.perform(resume);
    // Adopted flows and TURN channels keep their next hops followed like new ones.
    let mut actions: Vec<fork_common::FlowAction> =
        agent.orch.table().flows().map(|f| f.action).collect();
    actions.extend(
        agent
            .dp
            .turn_channels
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, t)| t.flow),
    );
    actions.extend(
        agent
            .dp
            .turn_peers
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, t)| t.flow),
    );
    let hops: Vec<(u32, u8, [u32; 4])> = actions
        .iter()
        .filter(|a| a.egress_ifindex != 0)
        .map(|a| (a.egress_ifindex, a.family, a.nexthop_be))
        .collect();
    for (ifindex, family, addr_be) in hops {
        if let Ok(dev) = nix::net::if_::if_indextoname(ifindex) {
            let key = NeighKey {
                addr_be,
                ifindex,
                family,
                _pad: [0; 3],
            };
            let hop = fork_common::words_addr(family, addr_be);
            agent
                .neighbours
                .insert(key, (dev.to_string_lossy().into_owned(), hop));
        }
    }
    let _ = ready.send(Readiness::Ready);
    info!(socket = %cfg.control.socket.display(), "control API ready");
    notify.ready(&format!(
        "serving: {} flows and {} forks adopted",
        found.flows, found.forks
    ));
    let mut watchdog = notify.watchdog_ticker();
    let mut idle_check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            // From this loop, so a wedged agent loop stops the pings (WatchdogSec=).
            () = watchdog.tick() => notify.watchdog_ping(),
            Some(req) = inject_rx.recv() => agent.inject_request(req),
            Some((op, reply)) = ctl_rx.recv() => {
                if op.is_stream_service() {
                    // Same queue as fork start/stop: ops reach the service in request order.
                    agent.speech.request(op, reply);
                } else {
                    let resp = agent.handle(op);
                    let _ = reply.send(resp);
                }
            }
            _ = idle_check.tick() => {
                agent.refresh_neighbours();
                if !agent.idle_timeout.is_zero() {
                    agent.expire_idle();
                }
            }
            _ = sighup.recv() => {
                notify.reloading();
                let path = reloader.path().to_owned();
                if let Some(new) = reloader.reread(|t| Config::parse_at(t, &path), |c| &c.log) {
                    let result = agent
                        .speech
                        .reload(new.speech_servers, new.destinations)
                        .await;
                    if let Err(e) = &result {
                        warn!("reload: speech servers unchanged: {e:#}");
                    }
                    reloader.finish(result.is_ok());
                }
                notify.ready("serving (reloaded)");
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    info!("fork-agent stopped; the kernel keeps relaying pinned flows");
    Ok(())
}

fn bind_control(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    // Owner and group only: the API programs the kernel data plane.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// Inject requests queued for the agent loop (see where the channel is made).
const INJECT_QUEUE: usize = 4096;

struct Agent {
    dp: DataPlane,
    fallback: crate::io::fallback::Fallback,
    turn: TurnOffload,
    /// Next hops in use: kernel key → (interface, address).
    neighbours: HashMap<NeighKey, (String, std::net::IpAddr)>,
    /// Recent route lookups (RTM_GETROUTE): destination → (interface, next hop).
    routes: RouteCache<std::net::IpAddr, (String, std::net::IpAddr)>,
    interfaces: Vec<String>,
    /// Flow table and the decisions around it (core::dataplane).
    orch: Orchestrator,
    speech: SpeechService,
    stats: Arc<AgentStats>,
    fork_store: ForkStore,
    idle_timeout: Duration,
    /// The control socket's connection counters.
    control_stats: Arc<conn_limits::io::gate::GateStats>,
    /// When each flow was installed or adopted (CLOCK_MONOTONIC ns), for the idle timeout of
    /// flows that never saw a packet.
    /// Status events for `subscribe`rs (`flow_removed` from here, `fork_status` from the stream
    /// service).
    events: tokio::sync::broadcast::Sender<String>,
    /// Live metrics (fork-start latency).
    live: Live,
    /// Playout settings of forks with return audio.
    return_audio: crate::config::ReturnAudioConfig,
    /// Where inject-mode playouts ask for a flow's relay to stop or resume.
    inject_tx: mpsc::Sender<crate::io::bot::InjectRequest>,
}

impl Agent {
    fn handle(&mut self, op: Op) -> Response {
        match self.try_handle(op) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        }
    }

    fn try_handle(&mut self, op: Op) -> Result<Value> {
        match op {
            Op::FlowAdd { flow } => {
                let (key, entry) = self.orch.table_mut().add(&flow)?;
                match self.install_flow(&flow, key, entry.stats_index) {
                    Ok(()) => {
                        info!(local = %flow.local, dst = %flow.dst, "flow installed in kernel");
                        self.orch.flow_installed(flow.local, monotonic_ns());
                        // The kernel relays; the fallback catches what it hands to the stack.
                        let fallback = match self.fallback.add(
                            flow.local,
                            flow.src,
                            flow.dst,
                            flow.expect,
                            flow.sink,
                        ) {
                            Ok(()) => {
                                // A flow re-added while its call forks stays forked.
                                self.sync_fallback_fork(flow.local);
                                "bound".to_owned()
                            }
                            Err(e) => {
                                warn!(local = %flow.local, "no user-space fallback for this flow: {e:#}");
                                format!("unavailable: {e:#}")
                            }
                        };
                        Ok(serde_json::to_value(FlowAdded {
                            stats_index: entry.stats_index,
                            fallback,
                        })?)
                    }
                    Err(e) => {
                        let _ = self.orch.table_mut().remove(flow.local);
                        Err(e)
                    }
                }
            }
            Op::FlowDel { local } => {
                self.keep_numbering(local);
                let actions = self.orch.remove_flow(local)?;
                self.perform_checked(actions)
                    .context("removing the flow from FLOWS")?;
                Ok(Value::Null)
            }
            Op::ForkStart { fork } => {
                // Server known, destination allowed: refused here, before any state changes.
                self.speech.check_fork(&fork)?;
                self.check_return_audio(&fork)?;
                let txn = self.orch.begin_fork(fork)?;
                // Hand the fork to the stream service before the kernel forks, so no packet
                // arrives for an unknown stream.
                let started = self
                    .playout_for(&txn.fork)
                    .and_then(|bot| self.speech.start_fork(&txn.fork, &txn.taps, false, bot));
                if let Err(e) = started {
                    let undo = self.orch.abort_fork(&txn, &[], false);
                    self.perform(undo);
                    return Err(e);
                }
                let mut written = Vec::new();
                for (key, action) in &txn.writes {
                    if let Err(e) = self.dp.flows.insert(key, action, 0) {
                        // All or nothing (core::dataplane): the kernel stops forking the flows
                        // already switched, the table forgets the fork, the server hears `stop`.
                        let undo = self.orch.abort_fork(&txn, &written, true);
                        self.perform(undo);
                        return Err(anyhow::Error::new(e)
                            .context("enabling fork in FLOWS (the fork start was rolled back)"));
                    }
                    written.push(*key);
                }
                let (started, actions) = self.orch.commit_fork(&txn);
                self.live.fork_accepted(&txn.fork.spec.call_guid);
                self.perform(actions);
                Ok(serde_json::to_value(started)?)
            }
            Op::ForkStop { call_guid, reason } => {
                let actions = self.orch.stop_fork(&call_guid, reason)?;
                self.perform_checked(actions)
                    .context("disabling fork in FLOWS")?;
                Ok(Value::Null)
            }
            // Served by the stream service or the control connection itself (see `run`).
            op @ (Op::Subscribe
            | Op::ForkPause { .. }
            | Op::ForkResume { .. }
            | Op::ForkUpdate { .. }
            | Op::ShowStreamService { .. }
            | Op::ClearStreamConnection { .. }
            | Op::ClearStreamStatistics) => {
                anyhow::bail!("Internal error: {op:?} reached the data-plane handler")
            }
            Op::TurnChannelAdd { channel } => self.turn_channel_add(channel),
            Op::TurnChannelDel {
                client,
                server,
                number,
            } => {
                let (o, ops) = self.turn.remove(client, server, number)?;
                self.apply_turn_ops(&ops)?;
                self.orch.table_mut().release_stats(o.to_peer_stats);
                self.orch.table_mut().release_stats(o.to_client_stats);
                Ok(Value::Null)
            }
            Op::ShowTurn => self.show_turn(),
            Op::ShowFlows => self.show_flows(),
            Op::FlowStats { locals } => self.flow_stats(&locals),
            Op::ShowCounters => self.show_counters(),
            Op::ShowForks => Ok(serde_json::to_value(
                self.orch.table().forks().collect::<Vec<_>>(),
            )?),
        }
    }

    /// Egress interface (one of ours) and next hop towards `dst`, kept resolved in NEIGHBOURS.
    /// The common case, a destination seen moments ago through a next hop already resolved,
    /// sends no rtnetlink request and does not wait.
    fn prepare_egress(&mut self, dst: std::net::IpAddr) -> Result<(u32, std::net::IpAddr)> {
        #[allow(clippy::disallowed_methods)] // io shell: the cache's clock
        let now = std::time::Instant::now();
        let (dev, hop) = match self.routes.get(dst, now) {
            Some(route) => route,
            None => {
                let route = netdev::route_to(dst)?;
                self.routes.insert(dst, route.clone(), now);
                route
            }
        };
        if !self.interfaces.contains(&dev) {
            anyhow::bail!(
                "{dst} is routed via {dev}, which is not one of dataplane.interfaces {:?}",
                self.interfaces
            );
        }
        let ifindex = netdev::ifindex(&dev)?;
        let (family, addr_be) = fork_common::addr_words(hop);
        let nkey = NeighKey {
            addr_be,
            ifindex,
            family,
            _pad: [0; 3],
        };
        // Already followed by the periodic refresh and resolved in the kernel map.
        if self.neighbours.contains_key(&nkey) && self.dp.neighbours.get(&nkey, 0).is_ok() {
            return Ok((ifindex, hop));
        }
        if let Err(e) = netdev::keep_neighbour_resolved(&dev, hop) {
            warn!("next hop {hop} of {dst} not kept resolved: {e:#}");
        }
        self.neighbours.insert(nkey, (dev, hop));
        // Wait briefly for resolution so the kernel relays from the first packet; if the next
        // hop stays silent the periodic refresh fills it in later.
        #[allow(clippy::disallowed_methods)] // io shell: bounded wait for a new next hop
        let deadline = std::time::Instant::now() + Duration::from_millis(1500);
        #[allow(clippy::disallowed_methods)] // io shell
        while !self.refresh_neighbour(&nkey) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((ifindex, hop))
    }

    /// Pick the egress interface, keep its next hop resolved, and write the flow into the kernel.
    fn install_flow(
        &mut self,
        flow: &FlowSpec,
        key: fork_common::FlowKey,
        stats_index: u32,
    ) -> Result<()> {
        if self.turn.owns(&flow.local) {
            anyhow::bail!("{} is a TURN address", flow.local);
        }
        let (ifindex, hop) = self.prepare_egress(flow.dst.ip())?;
        let action = self.orch.table_mut().set_egress(flow.local, ifindex, hop)?;
        self.dp
            .flow_stats
            .set(stats_index, FlowStats::default(), 0)
            .and_then(|()| self.dp.flows.insert(key, action, 0))
            .context("writing the flow into the kernel (FLOWS full?)")
    }

    /// Copy one next hop's MACs from the kernel neighbour table into `NEIGHBOURS`; true when
    /// the entry is resolved.
    fn refresh_neighbour(&mut self, key: &NeighKey) -> bool {
        match (netdev::neighbour_table(), netdev::link_macs()) {
            (Ok(table), Ok(macs)) => self.apply_neighbour(key, &table, &macs),
            (Err(e), _) | (_, Err(e)) => {
                warn!("cannot read the neighbour table: {e:#}");
                false
            }
        }
    }

    /// Follow MAC changes (and late resolutions) of every next hop in use: one neighbour dump
    /// and one interface listing for all of them.
    fn refresh_neighbours(&mut self) {
        if self.neighbours.is_empty() {
            return;
        }
        let (table, macs) = match (netdev::neighbour_table(), netdev::link_macs()) {
            (Ok(t), Ok(m)) => (t, m),
            (Err(e), _) | (_, Err(e)) => {
                warn!("cannot read the neighbour table: {e:#}");
                return;
            }
        };
        let keys: Vec<NeighKey> = self.neighbours.keys().copied().collect();
        for k in keys {
            self.apply_neighbour(&k, &table, &macs);
        }
    }

    fn apply_neighbour(
        &mut self,
        key: &NeighKey,
        table: &netdev::NeighbourTable,
        macs: &HashMap<u32, [u8; 6]>,
    ) -> bool {
        let Some((dev, hop)) = self.neighbours.get(key).cloned() else {
            return false;
        };
        let (Some(Some(dmac)), Some(smac)) =
            (table.get(&(key.ifindex, hop)), macs.get(&key.ifindex))
        else {
            return false;
        };
        let value = NeighValue {
            dmac: *dmac,
            smac: *smac,
            _pad: [0; 4],
        };
        if self.dp.neighbours.get(key, 0).ok() != Some(value) {
            if let Err(e) = self.dp.neighbours.insert(*key, value, 0) {
                warn!("cannot write next hop {hop} on {dev} to NEIGHBOURS: {e}");
                return false;
            }
            info!(%hop, %dev, "next hop resolved for the kernel relay");
        }
        true
    }

    /// Removes the flows idle past `flow_idle_timeout_secs` (core::idle), tells subscribers
    /// (`flow_removed`, so sip-agent releases the call), and stops the forks left without any
    /// flow (reason `call_end`), forked flows included: a media-dead call must not keep its
    /// fork either.
    fn expire_idle(&mut self) {
        let now = monotonic_ns();
        let last_seen: Vec<(SocketAddr, u64)> = self
            .orch
            .idle_candidates()
            .into_iter()
            .map(|(local, slot)| {
                let seen = self.dp.flow_stats.get(&slot, 0).unwrap_or_default();
                (local, seen.last_seen_ns)
            })
            .collect();
        let limit = u64::try_from(self.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        let actions = self.orch.expire_idle(now, limit, &last_seen);
        for a in &actions {
            match a {
                Action::Publish(Event::FlowRemoved { local, .. }) => {
                    info!(%local, idle_secs = self.idle_timeout.as_secs(), "flow removed after idle timeout");
                }
                Action::StopStreams { call_guid, .. } => {
                    info!(%call_guid, "fork stopped: all its flows idled out");
                }
                _ => {}
            }
        }
        self.perform(actions);
    }

    /// Performs the core's actions in order; map failures are logged (the table already moved
    /// on: the next reconciliation or the idle timeout catches up).
    fn perform(&mut self, actions: Vec<Action>) {
        if let Err(e) = self.perform_checked(actions) {
            warn!("{e:#}");
        }
    }

    /// Performs every action; returns the first map failure, after trying the rest.
    fn perform_checked(&mut self, actions: Vec<Action>) -> Result<()> {
        let mut first = None;
        for a in actions {
            let r = match a {
                Action::WriteFlow { key, action } => self
                    .dp
                    .flows
                    .insert(key, action, 0)
                    .context("writing FLOWS"),
                Action::RemoveFlow { key } => {
                    self.dp.flows.remove(&key).context("removing from FLOWS")
                }
                Action::RemoveFallback { local, src } => {
                    self.fallback.remove(local, src);
                    Ok(())
                }
                Action::SyncFallback { local, action } => {
                    self.fallback.set_action(local, &action);
                    Ok(())
                }
                Action::StartStreams {
                    fork,
                    taps,
                    resumed,
                } => {
                    let bot = self.playout_for(&fork).unwrap_or_else(|e| {
                        warn!(call_guid = %fork.spec.call_guid, "return audio not restored: {e:#}");
                        None
                    });
                    if let Err(e) = self.speech.start_fork(&fork, &taps, resumed, bot) {
                        warn!(call_guid = %fork.spec.call_guid, "fork not handed to the stream service: {e:#}");
                    }
                    Ok(())
                }
                Action::StopStreams { call_guid, reason } => {
                    if let Err(e) = self.speech.stop_fork(&call_guid, reason) {
                        warn!(%call_guid, "stop not sent: {e:#}");
                    }
                    Ok(())
                }
                Action::Journal(entry) => {
                    self.record_fork(&entry);
                    Ok(())
                }
                Action::Publish(ev) => {
                    // No subscriber is fine: nobody to tell.
                    let _ = self.events.send(ev.to_line());
                    Ok(())
                }
            };
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Give the fallback relay of `local` the flow's current action (fork on or off, stream).
    fn sync_fallback_fork(&mut self, local: std::net::SocketAddr) {
        if let Some(action) = self.orch.table().flow(&local).map(|f| f.action) {
            self.fallback.set_action(local, &action);
        }
    }

    /// Keep the fork state file in step with the table (see io::fork_store).
    fn record_fork(&mut self, entry: &fork_journal::Entry) {
        let live = self.orch.table().fork_count();
        self.fork_store
            .record(entry, live, self.orch.table().forks());
    }
}

/// Forked packets the reader hands to the stream service at most (about 1.3 s of 1,000
/// streams); beyond it the oldest are dropped and counted (`media_queue_drops`).
const MEDIA_QUEUE: usize = 65_536;
/// The reader drains the AF_XDP ring at most once per this interval while packets keep coming
/// (io::xsk): one wake-up of the reader and one of the stream service per batch instead of per
/// packet. A packet waits at most this long in the ring; the first one after a quiet spell
/// does not wait.
const RX_COALESCE: Duration = Duration::from_micros(1000);

/// The AF_XDP thread's batch: frames decoded and encoded since the last hand-over, and the
/// drain's one clock read.
struct RxBatch {
    out: Arc<MediaQueue>,
    stats: Arc<AgentStats>,
    items: Vec<Forked>,
    at: Option<std::time::Instant>,
    /// Counted locally and added to the shared counters once per batch.
    frames: u64,
    bad: u64,
    dtmf: u64,
}

impl RxBatch {
    fn new(out: Arc<MediaQueue>, stats: Arc<AgentStats>) -> Self {
        RxBatch {
            out,
            stats,
            items: Vec::new(),
            at: None,
            frames: 0,
            bad: 0,
            dtmf: 0,
        }
    }
}

impl RxSink for RxBatch {
    /// Validates the tag, picks out the RTP fields and encodes the frame.
    fn frame(&mut self, frame: &[u8]) {
        #[allow(clippy::disallowed_methods)] // io shell: one clock read per drained batch
        let at = *self.at.get_or_insert_with(std::time::Instant::now);
        self.frames += 1;
        let Some(item) = crate::core::forked::from_xsk(frame) else {
            self.bad += 1;
            return;
        };
        if matches!(item, crate::core::forked::Forked::Dtmf(_)) {
            self.dtmf += 1;
        }
        self.items.push(Forked::encode(item, at));
    }

    /// Hands the batch to the stream service (one lock, one wake-up) and publishes the counts.
    /// Packets the kernel dropped at the ring count as the queue's drops too, so the service
    /// alarms the overflow either way.
    fn drained(&mut self, ring_drops: u64) {
        self.at = None;
        if ring_drops > 0 {
            self.stats
                .xsk_ring_drops
                .fetch_add(ring_drops, Ordering::Relaxed);
            self.out.note_dropped(ring_drops);
        }
        if self.frames == 0 {
            return;
        }
        let dropped = self.out.push_batch(self.items.drain(..));
        let stats = &self.stats;
        for (counter, n) in [
            (&stats.xsk_frames, std::mem::take(&mut self.frames)),
            (&stats.xsk_bad_frames, std::mem::take(&mut self.bad)),
            (&stats.dtmf_events, std::mem::take(&mut self.dtmf)),
            (&stats.media_queue_drops, dropped),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// How long a route lookup is reused for new flows (existing flows keep their egress).
const ROUTE_CACHE_TTL: Duration = Duration::from_secs(5);
/// Destinations remembered at most; a contact center has few border elements.
const ROUTE_CACHE_CAPACITY: usize = 1024;

/// Forward the programs' aya-log records (rare events only: no logging on the hot path).
async fn flush_ebpf_logs(logger: crate::io::ebpf::Logger) {
    // The logger owns its fd (AsFd) and lives inside the AsyncFd, the case the deprecation note
    // says is sound; the replacement is an `unsafe fn`.
    #[allow(deprecated)]
    let Ok(mut fd) = tokio::io::unix::AsyncFd::with_interest(logger, tokio::io::Interest::READABLE) else {
        warn!("cannot poll the eBPF log ring buffer; kernel log lines will not be shown");
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// CLOCK_MONOTONIC in ns, the clock `bpf_ktime_get_ns` uses.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
