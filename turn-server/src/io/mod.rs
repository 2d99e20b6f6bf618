//! The tokio shell around `turn_core::Server`.
//!
//! Role: own the sockets and the clock, and feed the sans-IO core. One task ([`Shell::run`])
//! owns the core; every socket reader (UDP listen sockets, one UDP relay socket per allocation,
//! TCP/TLS connections) runs in its own small task and forwards what it reads as an [`Input`]
//! on one bounded channel. The owning task sends directly: UDP with `try_send_to` from the
//! listen or relay socket named by `Transmit::from`, streams through the connection's bounded
//! queue found by 5-tuple. Status requests arrive as [`Command`]s from the control socket.
//! With `[offload]`, [`Shell::handle_event`] also feeds every lifecycle event to the
//! [`OffloadPlanner`] and hands its commands to the offload task ([`offload`]), which programs
//! fork-agent and sends kernel counter growth back as [`Input::OffloadCounters`].
//! On SIGHUP it reads the config file again and swaps in its credentials ([`crate::reload`]).
//! Inputs: [`Input`], [`Command`], the core's timer, SIGHUP, SIGINT/SIGTERM.
//! Outputs: datagrams and stream bytes; relay sockets opened and closed on the core's events;
//! kernel offload commands; debug logs of every lifecycle event.
//! Call order per iteration (style guide §4): take **one** input, drain `poll_output` to
//! `None`, then re-read `poll_timeout`; timers are checked against the clock each iteration,
//! not only when the sleep fires.
#![allow(clippy::disallowed_methods)] // io shell: reads the clock, spawns socket tasks

pub mod control;
pub mod metrics;
pub mod offload;
pub mod relay;
pub mod stream;

use daemon_ops::notify::Notifier;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use tokio::{
    net::UdpSocket,
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{debug, info, trace, warn};
use turn_core::{
    server::{AllocationCounters, DeleteReason},
    stun::PacketKind,
    AllocationHandle, Event, FiveTuple, Output, PortRangeAllocator, RustCrypto, Server, Transmit,
    Transport,
};

use crate::{
    config::Config,
    offload::OffloadPlanner,
    pii::Pii,
    reload,
    status::{transport_name, OffloadView, ShellCounters, StatusReport, Traffic},
};
use conn_limits::io::gate::{ConnHandle, GateStats};
use offload::{OffloadGauge, OffloadMsg};
use relay::{BindingAllocator, BoundRelays};

/// Inputs queued towards the core task. Bounded: readers wait (UDP then drops in the kernel
/// buffer) rather than letting memory grow.
const INPUT_QUEUE: usize = 8192;
/// Offload messages queued towards the offload task. The core task never waits on it: when
/// it is full, commands are dropped (counted) and a full snapshot follows once there is room.
const OFFLOAD_QUEUE: usize = 4096;
/// How long shutdown waits for the offload task to remove the kernel channels.
const OFFLOAD_SHUTDOWN: Duration = Duration::from_secs(5);
/// Largest UDP datagram read (STUN and relayed media are far smaller; a bigger one is cut and
/// then fails to parse, which the core counts).
const MAX_DATAGRAM: usize = 65_535;

/// Something a socket task read, for the core task.
#[derive(Debug)]
pub enum Input {
    /// A datagram on a UDP listen socket (`local` is the socket's bound address).
    Datagram {
        /// Listen socket address.
        local: SocketAddr,
        /// Client address.
        from: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// A datagram a peer sent to a relay socket.
    Peer {
        /// Relay address it arrived on.
        relay: SocketAddr,
        /// Peer address.
        peer: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// A TCP/TLS client connection is ready; `tx` queues bytes to it.
    StreamOpened {
        /// Its 5-tuple.
        tuple: FiveTuple,
        /// Bounded queue to its writer.
        tx: mpsc::Sender<Vec<u8>>,
        /// Its gate link: an allocation on it ends its unauthenticated deadline.
        conn: ConnHandle,
    },
    /// One STUN or ChannelData frame from a connection.
    StreamFrame {
        /// Its 5-tuple.
        tuple: FiveTuple,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// The connection closed.
    StreamClosed {
        /// Its 5-tuple.
        tuple: FiveTuple,
    },
    /// A connection failed its TLS handshake, for the counters (limit refusals are counted by
    /// the gate).
    StreamRefused {
        /// Always true today (kept as a field so the status counters stay one match).
        tls_failed: bool,
    },
    /// A relay socket's reader failed and stopped.
    RelayFailed {
        /// Relay address.
        relay: SocketAddr,
    },
    /// Traffic the kernel relayed on offloaded channels since the last report.
    OffloadCounters {
        /// Growth per allocation.
        deltas: Vec<(AllocationHandle, AllocationCounters)>,
    },
}

/// Requests from the control socket.
#[derive(Debug)]
pub enum Command {
    /// Send back the status view.
    Status(oneshot::Sender<StatusReport>),
}

/// One allocation's relay socket and its reader task.
struct RelaySocket {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

/// The core task's side of kernel offload.
struct OffloadLink {
    planner: OffloadPlanner,
    tx: mpsc::Sender<OffloadMsg>,
    /// A command was dropped on a full queue: send a snapshot when there is room.
    resync: bool,
    gauge: OffloadGauge,
    task: JoinHandle<()>,
    socket: String,
    /// Kernel-relayed share of each live allocation's counters.
    kernel: HashMap<AllocationHandle, AllocationCounters>,
    commands_dropped: u64,
}

impl OffloadLink {
    /// Hands the planner's commands to the task without waiting.
    fn flush(&mut self) {
        while let Some(c) = self.planner.poll_command() {
            if self.resync {
                // A snapshot follows anyway; it includes this command's effect.
                continue;
            }
            if self.tx.try_send(OffloadMsg::Command(c)).is_err() {
                self.commands_dropped += 1;
                self.resync = true;
                warn!("offload queue full; the kernel channels are resynchronised when it drains");
            }
        }
        if self.resync
            && self
                .tx
                .try_send(OffloadMsg::Sync(self.planner.offloaded()))
                .is_ok()
        {
            self.resync = false;
        }
    }

    /// Removes every channel from the kernel and stops the task (bounded wait).
    async fn shutdown(mut self) {
        self.planner.shutdown();
        let mut cmds = Vec::new();
        while let Some(c) = self.planner.poll_command() {
            cmds.push(c);
        }
        let (done_tx, done_rx) = oneshot::channel();
        let finish = async {
            for c in cmds {
                self.tx.send(OffloadMsg::Command(c)).await?;
            }
            self.tx.send(OffloadMsg::Shutdown(done_tx)).await?;
            done_rx.await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(OFFLOAD_SHUTDOWN, finish).await {
            Ok(Ok(())) => info!("kernel channels removed"),
            _ => {
                warn!("could not confirm that the kernel channels were removed; check `fork-agent ctl` show_turn");
                self.task.abort();
            }
        }
    }
}

/// The task that owns the core.
pub struct Shell {
    server: Server,
    listen_udp: HashMap<SocketAddr, Arc<UdpSocket>>,
    relays: HashMap<SocketAddr, RelaySocket>,
    streams: HashMap<FiveTuple, (mpsc::Sender<Vec<u8>>, ConnHandle)>,
    bound: BoundRelays,
    inputs_tx: mpsc::Sender<Input>,
    counters: ShellCounters,
    gate: Arc<GateStats>,
    offload: Option<OffloadLink>,
}

fn now() -> Instant {
    // tokio's clock, so a paused test runtime controls it too (style guide §4).
    tokio::time::Instant::now().into_std()
}

/// Binds everything in `cfg` and serves until SIGINT/SIGTERM; SIGHUP re-reads `config_path`
/// (the file `cfg` came from) and applies its credentials and `[log] level` through `log`.
pub async fn run(
    cfg: Config,
    config_path: &std::path::Path,
    mut log: daemon_ops::logging::LogControl,
) -> Result<()> {
    let (inputs_tx, mut inputs_rx) = mpsc::channel::<Input>(INPUT_QUEUE);
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(64);
    let bound = BoundRelays::default();
    let ports = PortRangeAllocator::new(
        cfg.relay.ipv4,
        cfg.relay.ipv6,
        cfg.relay.min_port..=cfg.relay.max_port,
    )
    .context("relay: building the port allocator")?;
    let server = Server::new(
        now(),
        cfg.server.clone(),
        cfg.credentials.clone(),
        Box::new(BindingAllocator::new(ports, bound.clone())),
        Box::new(RustCrypto),
        Box::new(<rand::rngs::StdRng as rand::SeedableRng>::from_entropy()),
    )
    .context("building the TURN core from the configuration")?;

    let mut listen_udp = HashMap::new();
    for addr in &cfg.listen.udp {
        let sock = UdpSocket::bind(addr).await.with_context(|| {
            format!("listen.udp: cannot bind {addr} (port in use, e.g. by coturn? address not on this host?)")
        })?;
        let local = sock.local_addr()?;
        let sock = Arc::new(sock);
        tokio::spawn(read_udp(sock.clone(), local, inputs_tx.clone()));
        listen_udp.insert(local, sock);
        info!(%local, "listening for TURN over UDP");
    }
    let mut tcp = Vec::new();
    for addr in &cfg.listen.tcp {
        let l = stream::bind(*addr).await.with_context(|| {
            format!("listen.tcp: cannot bind {addr} (port in use? address not on this host?)")
        })?;
        info!(local = %addr, "listening for TURN over TCP");
        tcp.push(l);
    }
    let mut tls = None;
    if let Some(t) = &cfg.tls {
        let mut ls = Vec::new();
        for addr in &cfg.listen.tls {
            let l = stream::bind(*addr).await.with_context(|| {
                format!("listen.tls: cannot bind {addr} (port in use? address not on this host?)")
            })?;
            info!(local = %addr, "listening for TURN over TLS");
            ls.push(l);
        }
        tls = Some((ls, tokio_rustls::TlsAcceptor::from(t.clone())));
    }
    let gate = stream::spawn_gate(tcp, tls, inputs_tx.clone(), cfg.limits);
    let control = control::bind(&cfg.control_socket)?;
    if let Some(addr) = cfg.metrics_listen {
        metrics::spawn(daemon_ops::metrics::bind(addr).await?, cmd_tx.clone());
    }
    tokio::spawn(control::serve(control, cmd_tx));
    info!(socket = %cfg.control_socket.display(), "control socket ready");

    let offload = cfg.offload.as_ref().map(|o| {
        let (tx, rx) = mpsc::channel(OFFLOAD_QUEUE);
        let gauge = OffloadGauge::default();
        let task = offload::spawn(
            o.fork_agent_socket.clone(),
            listen_udp.keys().copied().collect(),
            o.counters_interval,
            rx,
            inputs_tx.clone(),
            gauge.clone(),
        );
        info!(socket = %o.fork_agent_socket.display(), "kernel offload of bound UDP channels through fork-agent");
        OffloadLink {
            planner: OffloadPlanner::new(),
            tx,
            resync: false,
            gauge,
            task,
            socket: o.fork_agent_socket.display().to_string(),
            kernel: HashMap::new(),
            commands_dropped: 0,
        }
    });
    let mut shell = Shell {
        server,
        listen_udp,
        relays: HashMap::new(),
        streams: HashMap::new(),
        bound,
        inputs_tx,
        counters: ShellCounters::default(),
        gate,
        offload,
    };
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // Every listener is bound and the loop below serves them from here on.
    let notify = Notifier::from_env();
    let serving = format!(
        "serving TURN on {} UDP, {} TCP, {} TLS listeners",
        cfg.listen.udp.len(),
        cfg.listen.tcp.len(),
        cfg.listen.tls.len()
    );
    notify.ready(&serving);
    let mut running = cfg;
    let mut watchdog = notify.watchdog_ticker();
    loop {
        let deadline = shell.server.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(input) = inputs_rx.recv() => shell.handle_input(input),
            Some(cmd) = cmd_rx.recv() => shell.handle_command(cmd),
            // From this loop, so a wedged loop stops the pings (WatchdogSec=).
            () = watchdog.tick() => notify.watchdog_ping(),
            () = sleep => {}
            _ = hup.recv() => {
                notify.reloading();
                shell.reload(&mut running, config_path, &mut log);
                notify.ready(&serving);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        // Fire due timers against the clock, whichever branch woke us.
        let now = now();
        if shell.server.poll_timeout().is_some_and(|t| t <= now) {
            shell.server.handle_timeout(now);
        }
        shell.drain(now);
    }
    notify.stopping();
    info!("shutting down");
    if let Some(o) = shell.offload.take() {
        o.shutdown().await;
    }
    let _ = std::fs::remove_file(&running.control_socket);
    Ok(())
}

fn add_counters(total: &mut AllocationCounters, d: &AllocationCounters) {
    total.to_peer_packets += d.to_peer_packets;
    total.to_peer_bytes += d.to_peer_bytes;
    total.from_peer_packets += d.from_peer_packets;
    total.from_peer_bytes += d.from_peer_bytes;
    total.dropped_no_permission += d.dropped_no_permission;
}

/// Reads one UDP listen socket forever.
async fn read_udp(sock: Arc<UdpSocket>, local: SocketAddr, inputs: mpsc::Sender<Input>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let input = Input::Datagram {
                    local,
                    from,
                    bytes: buf[..n].to_vec(),
                };
                if inputs.send(input).await.is_err() {
                    return;
                }
            }
            // ICMP errors (ECONNREFUSED from an earlier send) surface here on Linux; they
            // say nothing about this socket, so keep reading.
            Err(e) => trace!(error = %e, "UDP listen recv error"),
        }
    }
}

/// Reads one relay socket until aborted (allocation deleted) or it fails.
async fn read_relay(sock: Arc<UdpSocket>, relay: SocketAddr, inputs: mpsc::Sender<Input>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                let input = Input::Peer {
                    relay,
                    peer,
                    bytes: buf[..n].to_vec(),
                };
                if inputs.send(input).await.is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                trace!("relay: ICMP port unreachable from a peer")
            }
            Err(e) => {
                warn!(%relay, error = %e, "relay socket failed");
                let _ = inputs.send(Input::RelayFailed { relay }).await;
                return;
            }
        }
    }
}

impl Shell {
    /// Feeds one input to the core (outputs are drained by the caller).
    fn handle_input(&mut self, input: Input) {
        let now = now();
        match input {
            Input::Datagram { local, from, bytes } => {
                self.feed_client(now, from, local, Transport::Udp, &bytes)
            }
            Input::StreamFrame { tuple, bytes } => {
                self.feed_client(now, tuple.client, tuple.server, tuple.transport, &bytes)
            }
            Input::Peer { relay, peer, bytes } => {
                self.server.handle_peer_data(now, relay, peer, &bytes)
            }
            Input::StreamOpened { tuple, tx, conn } => {
                debug!(client = %Pii(tuple.client), transport = transport_name(tuple.transport), "connection opened");
                self.streams.insert(tuple, (tx, conn));
            }
            Input::StreamClosed { tuple } => {
                debug!(client = %Pii(tuple.client), "connection closed");
                self.streams.remove(&tuple);
                self.server.handle_connection_closed(now, tuple);
            }
            Input::StreamRefused { tls_failed } => {
                if tls_failed {
                    self.counters.tls_handshake_failed += 1;
                }
            }
            Input::RelayFailed { relay } => {
                if let Some(h) = self.allocation_of_relay(now, relay) {
                    self.server.delete_allocation(now, h, DeleteReason::Shell);
                }
            }
            Input::OffloadCounters { deltas } => {
                let Some(o) = &mut self.offload else { return };
                for (h, d) in deltas {
                    // Growth reported after its allocation ended has nowhere to go.
                    if let Some(k) = o.kernel.get_mut(&h) {
                        add_counters(k, &d);
                        self.server.record_offloaded(h, d);
                    }
                }
            }
        }
    }

    fn feed_client(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
        transport: Transport,
        bytes: &[u8],
    ) {
        match Server::classify(bytes) {
            PacketKind::Stun => {
                self.server
                    .handle_stun(now, SystemTime::now(), from, to, transport, bytes)
            }
            PacketKind::ChannelData => self
                .server
                .handle_channel_data(now, from, to, transport, bytes),
            PacketKind::Other => trace!("ignoring non-STUN datagram"),
        }
    }

    fn allocation_of_relay(&self, now: Instant, relay: SocketAddr) -> Option<AllocationHandle> {
        self.server
            .allocations(now)
            .into_iter()
            .find(|a| a.relay == relay)
            .map(|a| a.handle)
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let now = now();
                let mut shell = self.counters;
                let g = self.gate.snapshot();
                shell.stream_connections = g.open;
                shell.stream_refused = g.refused_per_address + g.refused_global;
                shell.stream_refused_per_address = g.refused_per_address;
                shell.stream_refused_global = g.refused_global;
                shell.stream_unauthenticated_timeout = g.expired_pending;
                shell.stream_too_large = g.closed_too_large;
                shell.accept_errors = g.accept_errors;
                let mut report =
                    StatusReport::new(&self.server.status(), &self.server.allocations(now), shell);
                if let Some(o) = &self.offload {
                    for a in &mut report.active {
                        if let Some(k) = o.kernel.get(&AllocationHandle(a.handle)) {
                            a.kernel = Traffic::from(*k);
                        }
                    }
                    report.offload = Some(OffloadView {
                        fork_agent_socket: o.socket.clone(),
                        connected: o.gauge.connected(),
                        channels: o.planner.offloaded().len(),
                        refused: o.gauge.refused(),
                        connection_failures: o.gauge.connection_failures(),
                        commands_dropped: o.commands_dropped,
                    });
                }
                let _ = reply.send(report);
            }
        }
    }

    /// SIGHUP: reads `path` again and validates it as at start; swaps in changed credentials
    /// (live allocations go on, later requests use the new set) and names the changed
    /// settings that need a restart. A file that no longer validates changes nothing.
    fn reload(
        &mut self,
        running: &mut Config,
        path: &std::path::Path,
        log: &mut daemon_ops::logging::LogControl,
    ) {
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                self.counters.reload_failed += 1;
                warn!(error = %e, "reload refused: the running settings stay (fix the file, then `systemctl reload turn-server`)");
                return;
            }
        };
        self.counters.reloads += 1;
        match log.apply(&new.log) {
            Ok(daemon_ops::logging::LevelChange::Unchanged) => {}
            Ok(c) => info!("reload: {c}"),
            Err(e) => warn!("reload: {e}"),
        }
        let plan = reload::plan(running, new);
        if !plan.needs_restart.is_empty() {
            warn!(
                changed = plan.needs_restart.join(", "),
                "reload: these settings apply only after `systemctl restart turn-server` (which ends every allocation)"
            );
        }
        match plan.credentials {
            Some(c) => {
                self.server.set_credentials(c.clone());
                running.credentials = c;
                info!("reload: credentials swapped in (users file, REST secret); live allocations continue");
            }
            None => info!("reload: credentials unchanged"),
        }
    }

    /// Drains the core's outputs until `None`.
    fn drain(&mut self, now: Instant) {
        while let Some(out) = self.server.poll_output() {
            match out {
                Output::Transmit(t) => self.transmit(t),
                Output::Event(e) => self.handle_event(now, e),
            }
        }
        if let Some(o) = &mut self.offload {
            o.flush();
        }
    }

    /// Sends one transmit from the socket it names; never waits (a full buffer drops and
    /// counts, which UDP and media tolerate better than a stalled core).
    fn transmit(&mut self, t: Transmit) {
        let sent = match t.transport {
            Transport::Udp => {
                let sock = self
                    .listen_udp
                    .get(&t.from)
                    .or_else(|| self.relays.get(&t.from).map(|r| &r.socket));
                match sock {
                    Some(s) => s.try_send_to(&t.bytes, t.to).is_ok(),
                    None => false,
                }
            }
            Transport::Tcp | Transport::Tls => {
                let tuple = FiveTuple {
                    transport: t.transport,
                    client: t.to,
                    server: t.from,
                };
                self.streams
                    .get(&tuple)
                    .is_some_and(|(tx, _)| tx.try_send(t.bytes).is_ok())
            }
        };
        if !sent {
            self.counters.send_dropped += 1;
            trace!(to = %Pii(t.to), "transmit dropped");
        }
    }

    /// Acts on one core event. This is the single place lifecycle events reach the shell:
    /// relay sockets are opened and closed here, and with `[offload]` every event goes to the
    /// [`OffloadPlanner`] (docs/turn.md "Relay offload to XDP"), whose commands
    /// [`Shell::drain`] hands to the offload task.
    pub fn handle_event(&mut self, now: Instant, event: Event) {
        if let Some(o) = &mut self.offload {
            o.planner.handle_event(&event);
            match &event {
                Event::AllocationCreated { allocation, .. } => {
                    o.kernel.insert(*allocation, AllocationCounters::default());
                }
                Event::AllocationDeleted { allocation, .. } => {
                    o.kernel.remove(allocation);
                }
                _ => {}
            }
        }
        match event {
            Event::AllocationCreated {
                allocation,
                client,
                relay,
                username,
                lifetime,
            } => {
                debug!(
                    allocation = allocation.0,
                    transport = transport_name(client.transport),
                    client = %Pii(client.client),
                    %relay,
                    user = %Pii(&username),
                    lifetime_secs = lifetime.as_secs(),
                    "allocation created"
                );
                if client.transport != Transport::Udp {
                    // An allocation authenticates its connection: no more deadline for it.
                    if let Some((_, conn)) = self.streams.get(&client) {
                        conn.progress();
                    }
                }
                if let Err(e) = self.open_relay(relay) {
                    warn!(allocation = allocation.0, %relay, error = %e, "relay socket setup failed; deleting the allocation");
                    self.counters.relay_setup_failed += 1;
                    self.server
                        .delete_allocation(now, allocation, DeleteReason::Shell);
                }
            }
            Event::AllocationDeleted {
                allocation,
                client,
                relay,
                reason,
                counters,
            } => {
                if let Some(r) = self.relays.remove(&relay) {
                    r.reader.abort();
                }
                debug!(
                    allocation = allocation.0,
                    client = %Pii(client.client),
                    %relay,
                    ?reason,
                    to_peer_packets = counters.to_peer_packets,
                    to_peer_bytes = counters.to_peer_bytes,
                    from_peer_packets = counters.from_peer_packets,
                    from_peer_bytes = counters.from_peer_bytes,
                    "allocation deleted"
                );
            }
            Event::PermissionInstalled {
                allocation, peer, ..
            } => debug!(allocation = allocation.0, peer = %Pii(peer), "permission installed"),
            Event::PermissionExpired {
                allocation, peer, ..
            } => debug!(allocation = allocation.0, peer = %Pii(peer), "permission expired"),
            Event::ChannelBound {
                allocation,
                client,
                relay,
                peer,
                channel,
            } => debug!(
                allocation = allocation.0,
                transport = transport_name(client.transport),
                client = %Pii(client.client),
                %relay,
                peer = %Pii(peer),
                channel = format_args!("{channel:#06x}"),
                "channel bound"
            ),
            Event::ChannelExpired {
                allocation,
                relay,
                peer,
                channel,
                ..
            } => debug!(
                allocation = allocation.0,
                %relay,
                peer = %Pii(peer),
                channel = format_args!("{channel:#06x}"),
                "channel expired"
            ),
        }
    }

    /// Takes the socket the allocator bound for `relay` and starts its reader.
    fn open_relay(&mut self, relay: SocketAddr) -> Result<()> {
        let std_sock = self
            .bound
            .take(relay)
            .context("no socket was bound for this relay address")?;
        let sock = Arc::new(UdpSocket::from_std(std_sock).context("registering with tokio")?);
        let reader = tokio::spawn(read_relay(sock.clone(), relay, self.inputs_tx.clone()));
        self.relays.insert(
            relay,
            RelaySocket {
                socket: sock,
                reader,
            },
        );
        Ok(())
    }
}
