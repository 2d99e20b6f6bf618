//! The offload task: runs the [`OffloadPlanner`](crate::offload::OffloadPlanner)'s commands on
//! fork-agent's control socket and reads the kernel's counters back.
//!
//! Role: own the one Unix stream connection to fork-agent (docs/control-api.md: one JSON line
//! per request, one answer line each, in order). Commands arrive in order on a bounded channel
//! from the core task, which never waits on it (it `try_send`s; on overflow it sends a full
//! snapshot later, [`OffloadMsg::Sync`]). The task keeps its own copy of what should be in the
//! kernel, so whenever it (re)connects, gets a snapshot, or every `counters_interval`, it
//! reconciles: `show_turn`, delete entries of our listen addresses that nobody wants (left by a
//! crashed run, or changed), add the missing ones (fork-agent restarted without its pinned
//! maps), and send the counters' growth per allocation to the core task as
//! [`Input::OffloadCounters`], which adds it with `Server::record_offloaded` so
//! `turn-server status` includes kernel-relayed traffic. Before a channel is deleted the same
//! pass reads its last counters.
//! A dead or restarting fork-agent costs nothing but offload: requests time out, the
//! connection is dropped, reconnects back off from 250 ms to 30 s, and every failure is logged
//! at warn with what to check. Meanwhile the channels stay in user space (the kernel passes what
//! it has no entry for), and entries it still has keep relaying.
//! Inputs: [`OffloadMsg`]s. Outputs: control requests, [`Input::OffloadCounters`], the
//! [`OffloadGauge`].
//! Call order: [`spawn`] once; send messages; [`OffloadMsg::Shutdown`] last, then await its
//! reply (the task deletes every channel it added first).
#![allow(clippy::disallowed_methods)] // io shell: reads the clock

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use control_api::{Answer, ApiError, AsyncClient, ClientError, Op, TurnRow};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};
use tracing::{debug, info, warn};
use turn_core::{server::AllocationCounters, AllocationHandle};

use super::Input;
use crate::offload::{ChannelKey, ChannelSpec, OffloadCommand};

/// A fork-agent request may wait for next-hop resolution (up to 1.5 s per direction), so
/// allow well beyond that before calling the agent stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnect delay after a failure; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Messages from the core task.
#[derive(Debug)]
pub enum OffloadMsg {
    /// One planner command, in order.
    Command(OffloadCommand),
    /// Everything that should be in the kernel now (sent after commands were lost to a full
    /// queue); replaces the task's copy and reconciles.
    Sync(Vec<(AllocationHandle, ChannelSpec)>),
    /// Delete every channel this task added, then answer and stop.
    Shutdown(oneshot::Sender<()>),
}

/// Offload state the status view shows, shared with the task.
#[derive(Debug, Clone, Default)]
pub struct OffloadGauge(Arc<GaugeInner>);

#[derive(Debug, Default)]
struct GaugeInner {
    connected: AtomicBool,
    refused: AtomicU64,
    connection_failures: AtomicU64,
}

impl OffloadGauge {
    /// Whether the task is connected to fork-agent now.
    pub fn connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed)
    }

    /// Requests fork-agent refused (each is logged at warn the first time for its channel).
    pub fn refused(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }

    /// Connection attempts that failed and connections lost.
    pub fn connection_failures(&self) -> u64 {
        self.0.connection_failures.load(Ordering::Relaxed)
    }
}

/// Starts the task. `ours` are the UDP listen addresses: kernel entries with another server
/// address belong to someone else and are never touched.
pub fn spawn(
    socket: PathBuf,
    ours: Vec<SocketAddr>,
    interval: Duration,
    messages: mpsc::Receiver<OffloadMsg>,
    inputs: mpsc::Sender<Input>,
    gauge: OffloadGauge,
) -> JoinHandle<()> {
    let now = Instant::now();
    let task = Task {
        socket,
        ours: ours.into_iter().collect(),
        interval,
        desired: BTreeMap::new(),
        seen: HashMap::new(),
        refused: HashSet::new(),
        conn: None,
        backoff: BACKOFF_MIN,
        next_connect: now,
        next_poll: now,
        inputs,
        gauge,
    };
    tokio::spawn(task.run(messages))
}

/// Kernel counters of one channel, as `show_turn` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Kernel {
    to_peer_packets: u64,
    to_peer_bytes: u64,
    to_client_packets: u64,
    to_client_bytes: u64,
}

impl Kernel {
    /// Growth since `prev`. A counter that went down was reset (fork-agent reused the stats
    /// slot), so all of the new value is growth.
    fn since(self, prev: Kernel) -> AllocationCounters {
        let d = |now: u64, before: u64| {
            if now >= before {
                now - before
            } else {
                now
            }
        };
        AllocationCounters {
            to_peer_packets: d(self.to_peer_packets, prev.to_peer_packets),
            to_peer_bytes: d(self.to_peer_bytes, prev.to_peer_bytes),
            from_peer_packets: d(self.to_client_packets, prev.to_client_packets),
            from_peer_bytes: d(self.to_client_bytes, prev.to_client_bytes),
            dropped_no_permission: 0,
        }
    }
}

/// A `show_turn` row's counters.
fn kernel(row: &TurnRow) -> Kernel {
    Kernel {
        to_peer_packets: row.to_peer.packets,
        to_peer_bytes: row.to_peer.bytes,
        to_client_packets: row.to_client.packets,
        to_client_bytes: row.to_client.bytes,
    }
}

fn add_to(total: &mut AllocationCounters, d: &AllocationCounters) {
    total.to_peer_packets += d.to_peer_packets;
    total.to_peer_bytes += d.to_peer_bytes;
    total.from_peer_packets += d.from_peer_packets;
    total.from_peer_bytes += d.from_peer_bytes;
}

struct Task {
    socket: PathBuf,
    ours: HashSet<SocketAddr>,
    interval: Duration,
    /// What should be in the kernel, from the commands so far.
    desired: BTreeMap<ChannelKey, (AllocationHandle, ChannelSpec)>,
    /// Counters last read per channel (zero right after this task added it).
    seen: HashMap<ChannelKey, Kernel>,
    /// Channels whose add was refused and logged, so a retry every pass stays quiet.
    refused: HashSet<ChannelKey>,
    conn: Option<AsyncClient>,
    backoff: Duration,
    next_connect: Instant,
    next_poll: Instant,
    inputs: mpsc::Sender<Input>,
    gauge: OffloadGauge,
}

impl Task {
    async fn run(mut self, mut messages: mpsc::Receiver<OffloadMsg>) {
        loop {
            let wake = if self.conn.is_some() {
                self.next_poll
            } else {
                self.next_connect
            };
            tokio::select! {
                msg = messages.recv() => match msg {
                    Some(OffloadMsg::Command(c)) => self.command(c).await,
                    Some(OffloadMsg::Sync(all)) => {
                        self.desired = all.into_iter().map(|(h, s)| (s.key(), (h, s))).collect();
                        self.reconcile().await;
                    }
                    Some(OffloadMsg::Shutdown(done)) => {
                        self.remove_all().await;
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                () = tokio::time::sleep_until(wake) => self.reconcile().await,
            }
        }
    }

    /// Connected: commands go straight to fork-agent (a fresh connection was reconciled as
    /// part of connecting).
    fn ready(&self) -> bool {
        self.conn.is_some()
    }

    async fn command(&mut self, c: OffloadCommand) {
        match c {
            OffloadCommand::Add { allocation, spec } => {
                self.desired.insert(spec.key(), (allocation, spec));
                if self.ready() {
                    self.add(allocation, spec).await;
                } else {
                    self.reconcile().await;
                }
            }
            OffloadCommand::Del { key, .. } => {
                // Read the channel's last counters while its allocation may still want them
                // (a channel or permission expiring leaves the allocation alive).
                if self.ready() && self.desired.contains_key(&key) {
                    self.reconcile().await;
                }
                self.desired.remove(&key);
                self.refused.remove(&key);
                if self.ready() {
                    self.del(key).await;
                }
                self.seen.remove(&key);
            }
        }
    }

    /// Connects if not connected and the backoff allows; true when connected.
    async fn connect(&mut self) -> bool {
        if self.conn.is_some() {
            return true;
        }
        let now = Instant::now();
        if now < self.next_connect {
            return false;
        }
        match AsyncClient::connect(&self.socket).await {
            Ok(c) => {
                self.conn = Some(c.with_timeout(REQUEST_TIMEOUT));
                self.backoff = BACKOFF_MIN;
                self.gauge.0.connected.store(true, Ordering::Relaxed);
                info!(socket = %self.socket.display(), "connected to fork-agent: bound UDP channels are relayed in the kernel");
                true
            }
            Err(e) => {
                self.gauge
                    .0
                    .connection_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(
                    socket = %self.socket.display(),
                    error = %e,
                    retry_in_ms = self.backoff.as_millis() as u64,
                    "cannot reach fork-agent; channels stay in user space until it answers (is fork-agent running? does offload.fork_agent_socket match its [control] socket? may this user open it?)"
                );
                self.next_connect = now + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                false
            }
        }
    }

    /// One request; `None` when the connection broke (it is dropped, and a reconnect is
    /// scheduled), `Some(Err(_))` when fork-agent refused or answered in a shape this build
    /// does not know.
    async fn request(&mut self, op: Op) -> Option<Result<Answer, ClientError>> {
        let conn = self.conn.as_mut()?;
        match conn.call(&op).await {
            Ok(a) => Some(Ok(a)),
            Err(e) if !e.is_broken() => Some(Err(e)),
            Err(e) => {
                warn!(
                    socket = %self.socket.display(),
                    op = op.name(),
                    error = %e,
                    "lost the connection to fork-agent; reconnecting (check fork-agent's log: restarting or stuck?)"
                );
                self.conn = None;
                self.gauge.0.connected.store(false, Ordering::Relaxed);
                self.gauge
                    .0
                    .connection_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.next_connect = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                None
            }
        }
    }

    async fn add(&mut self, allocation: AllocationHandle, spec: ChannelSpec) {
        let key = spec.key();
        match self.request(Op::TurnChannelAdd { channel: spec }).await {
            Some(Ok(_)) => {
                self.seen.insert(key, Kernel::default());
                self.refused.remove(&key);
                debug!(
                    allocation = allocation.0,
                    channel = format_args!("{:#06x}", spec.number),
                    "channel relayed in the kernel"
                );
            }
            Some(Err(e)) => {
                self.gauge.0.refused.fetch_add(1, Ordering::Relaxed);
                if matches!(e.api(), Some(ApiError::Refused(text)) if text.contains("already")) {
                    // An entry from an earlier run or a changed binding: the next reconcile
                    // sees it in show_turn and replaces it.
                    self.next_poll = Instant::now();
                }
                if self.refused.insert(key) {
                    warn!(
                        allocation = allocation.0,
                        channel = format_args!("{:#06x}", spec.number),
                        error = %e,
                        "fork-agent refused to relay a channel in the kernel; it stays in user space (check that the client and peer are routed via fork-agent's dataplane.interfaces)"
                    );
                }
            }
            None => {}
        }
    }

    async fn del(&mut self, key: ChannelKey) {
        match self.request(key.del_op()).await {
            Some(Ok(_)) => debug!(
                channel = format_args!("{:#06x}", key.number),
                "channel removed from the kernel"
            ),
            // Already gone (fork-agent restarted without its pinned maps): nothing to undo.
            Some(Err(ClientError::Api(ApiError::Refused(text))))
                if text.contains("no offloaded channel") =>
            {
                debug!(error = %text, "channel was not in the kernel")
            }
            Some(Err(e)) => {
                self.gauge.0.refused.fetch_add(1, Ordering::Relaxed);
                warn!(
                    channel = format_args!("{:#06x}", key.number),
                    error = %e,
                    "fork-agent refused to remove a channel; it may keep relaying until removed (fork-agent ctl show_turn)"
                );
            }
            None => {}
        }
    }

    /// Makes the kernel match `desired` and reports counter growth. Also the periodic poll.
    async fn reconcile(&mut self) {
        if !self.connect().await {
            return;
        }
        self.next_poll = Instant::now() + self.interval;
        let rows = match self.request(Op::ShowTurn).await {
            Some(Ok(Answer::Turn(rows))) => rows,
            Some(Ok(other)) => {
                warn!(answer = ?other, "fork-agent's show_turn answer is not a channel list");
                return;
            }
            Some(Err(e @ ClientError::Api(_))) => {
                warn!(error = %e, "fork-agent refused show_turn (a fork-agent without TURN offload?)");
                return;
            }
            Some(Err(e)) => {
                warn!(error = %e, "fork-agent's show_turn answer is not understood (version mismatch between fork-agent and turn-server?)");
                return;
            }
            None => return,
        };
        let mut growth: BTreeMap<AllocationHandle, AllocationCounters> = BTreeMap::new();
        let mut present = HashSet::new();
        let mut stale = Vec::new();
        for row in &rows {
            let spec = row.spec();
            if !self.ours.contains(&spec.server) {
                continue;
            }
            let key = spec.key();
            match self.desired.get(&key) {
                Some((h, want)) if *want == spec => {
                    present.insert(key);
                    let now = kernel(row);
                    if let Some(prev) = self.seen.insert(key, now) {
                        add_to(growth.entry(*h).or_default(), &now.since(prev));
                    }
                }
                _ => stale.push(key),
            }
        }
        for key in stale {
            debug!(
                channel = format_args!("{:#06x}", key.number),
                "removing a kernel channel nobody bound"
            );
            self.seen.remove(&key);
            self.del(key).await;
        }
        let missing: Vec<_> = self
            .desired
            .iter()
            .filter(|(k, _)| !present.contains(*k))
            .map(|(_, v)| *v)
            .collect();
        for (h, spec) in missing {
            self.add(h, spec).await;
        }
        let deltas: Vec<_> = growth
            .into_iter()
            .filter(|(_, c)| c.to_peer_packets > 0 || c.from_peer_packets > 0)
            .collect();
        if !deltas.is_empty() {
            let _ = self.inputs.send(Input::OffloadCounters { deltas }).await;
        }
    }

    /// Shutdown: delete what this task added (nobody would remove it when it expires).
    async fn remove_all(&mut self) {
        self.next_connect = Instant::now();
        if !self.connect().await {
            return;
        }
        let keys: Vec<_> = self.desired.keys().copied().collect();
        for key in keys {
            self.del(key).await;
            if self.conn.is_none() {
                return;
            }
        }
        self.desired.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use control_api::{Response, TurnDirection};
    use tokio::{
        io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
        net::UnixListener,
    };

    use super::*;
    use crate::offload::ChannelKey;

    fn spec(number: u16, peer_port: u16) -> ChannelSpec {
        ChannelSpec {
            client: "10.77.1.2:50000".parse().expect("addr"),
            server: "10.77.1.1:3478".parse().expect("addr"),
            number,
            relay: "10.77.2.1:24000".parse().expect("addr"),
            peer: SocketAddr::new("10.77.2.2".parse().expect("ip"), peer_port),
        }
    }

    #[test]
    fn growth_handles_counter_resets() {
        let a = Kernel {
            to_peer_packets: 10,
            to_peer_bytes: 1000,
            to_client_packets: 5,
            to_client_bytes: 500,
        };
        let b = Kernel {
            to_peer_packets: 12,
            to_peer_bytes: 1200,
            to_client_packets: 2,
            to_client_bytes: 200,
        };
        let g = b.since(a);
        assert_eq!((g.to_peer_packets, g.to_peer_bytes), (2, 200));
        assert_eq!((g.from_peer_packets, g.from_peer_bytes), (2, 200));
    }

    /// A fake fork-agent: keeps channels with their counters, answers like docs/control-api.md,
    /// and logs every op.
    struct FakeAgent {
        channels: BTreeMap<ChannelKey, (ChannelSpec, u64)>,
        ops: Vec<String>,
        /// Close the connection instead of answering the next request (a crash).
        crash_next: bool,
    }

    type Shared = Arc<std::sync::Mutex<FakeAgent>>;

    /// Answers one request line as fork-agent would, read with control-api's server parser.
    fn answer(agent: &Shared, line: &str) -> Response {
        let mut a = agent.lock().expect("fake agent lock");
        let op = match control_api::parse_request(line) {
            Ok(op) => op,
            Err(e) => return Response::error(&e),
        };
        a.ops.push(op.name().to_owned());
        match op {
            Op::TurnChannelAdd { channel: s } => {
                if a.channels.contains_key(&s.key()) {
                    return Response::err("channel already offloaded");
                }
                a.channels.insert(s.key(), (s, 0));
                Response::ok_typed(&control_api::ChannelAdded {
                    to_peer_stats: 1,
                    to_client_stats: 2,
                })
            }
            Op::TurnChannelDel {
                client,
                server,
                number,
            } => {
                let key = ChannelKey {
                    client,
                    server,
                    number,
                };
                match a.channels.remove(&key) {
                    Some(_) => Response::ok(serde_json::Value::Null),
                    None => Response::err("no offloaded channel"),
                }
            }
            Op::ShowTurn => {
                let rows: Vec<TurnRow> = a
                    .channels
                    .values()
                    .map(|(s, n)| TurnRow {
                        client: s.client,
                        server: s.server,
                        channel: s.number,
                        relay: s.relay,
                        peer: s.peer,
                        to_peer: TurnDirection {
                            packets: *n,
                            bytes: n * 100,
                            passed: 0,
                        },
                        to_client: TurnDirection {
                            packets: 2 * n,
                            bytes: n * 200,
                            passed: 0,
                        },
                    })
                    .collect();
                Response::ok_typed(&rows)
            }
            other => Response::err(format!("unknown op {}", other.name())),
        }
    }

    async fn serve(listener: UnixListener, agent: Shared) {
        while let Ok((s, _)) = listener.accept().await {
            let agent = agent.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if std::mem::take(&mut agent.lock().expect("lock").crash_next) {
                        return;
                    }
                    let out = control_api::codec::encode_response(&answer(&agent, &line));
                    if w.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    fn temp_socket(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("turn-offload-{}-{name}.sock", std::process::id()))
    }

    /// Waits (bounded) for the next counters message.
    async fn next_counters(
        rx: &mut mpsc::Receiver<Input>,
    ) -> Vec<(AllocationHandle, AllocationCounters)> {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(Input::OffloadCounters { deltas })) => deltas,
            other => panic!("expected counters, got {other:?}"),
        }
    }

    /// Waits (bounded: 10 s) until the fake agent holds `key`.
    async fn wait_for(agent: &Shared, key: ChannelKey) -> bool {
        for _ in 0..200 {
            if agent.lock().expect("lock").channels.contains_key(&key) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn start(path: &Path, stale: Option<ChannelSpec>) -> Shared {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind fake agent");
        let mut channels = BTreeMap::new();
        if let Some(s) = stale {
            channels.insert(s.key(), (s, 7));
        }
        let agent = Arc::new(std::sync::Mutex::new(FakeAgent {
            channels,
            ops: Vec::new(),
            crash_next: false,
        }));
        tokio::spawn(serve(listener, agent.clone()));
        agent
    }

    #[tokio::test]
    async fn adds_reports_growth_removes_stale_and_cleans_up_on_shutdown() {
        let path = temp_socket("main");
        // A channel left by a crashed run, and one of another server that is not ours.
        let stale = spec(0x4009, 1);
        let agent = start(&path, Some(stale));
        let mut foreign = spec(0x4001, 9);
        foreign.server = "10.77.1.1:3479".parse().expect("addr");
        agent
            .lock()
            .expect("lock")
            .channels
            .insert(foreign.key(), (foreign, 1));

        let (tx, rx) = mpsc::channel(16);
        let (in_tx, mut in_rx) = mpsc::channel(16);
        let gauge = OffloadGauge::default();
        let task = spawn(
            path.clone(),
            vec!["10.77.1.1:3478".parse().expect("addr")],
            Duration::from_millis(100),
            rx,
            in_tx,
            gauge.clone(),
        );
        let h = AllocationHandle(3);
        tx.send(OffloadMsg::Command(OffloadCommand::Add {
            allocation: h,
            spec: spec(0x4001, 60000),
        }))
        .await
        .expect("send");
        assert!(
            wait_for(&agent, spec(0x4001, 60000).key()).await,
            "channel added"
        );
        // Traffic in the kernel shows up as growth on the allocation.
        let bump = |n: u64| {
            let mut a = agent.lock().expect("lock");
            if let Some(e) = a.channels.get_mut(&spec(0x4001, 60000).key()) {
                e.1 = n;
            }
        };
        let mut total = AllocationCounters::default();
        for n in [5u64, 9] {
            bump(n);
            while total.to_peer_packets < n {
                for (got_h, d) in next_counters(&mut in_rx).await {
                    assert_eq!(got_h, h);
                    add_to(&mut total, &d);
                }
            }
        }
        assert_eq!(total.to_peer_packets, 9);
        assert_eq!(total.to_peer_bytes, 900);
        assert_eq!(total.from_peer_packets, 18);
        assert!(gauge.connected());
        {
            let a = agent.lock().expect("lock");
            assert!(
                !a.channels.contains_key(&stale.key()),
                "stale entry removed"
            );
            assert!(
                a.channels.contains_key(&foreign.key()),
                "foreign entry kept"
            );
        }
        // Delete: the last counters are read first, then the entry goes.
        bump(11);
        tx.send(OffloadMsg::Command(OffloadCommand::Del {
            allocation: h,
            key: spec(0x4001, 60000).key(),
        }))
        .await
        .expect("send");
        let last = next_counters(&mut in_rx).await;
        assert_eq!(last[0].1.to_peer_packets, 2);
        // Shutdown removes what is left of ours.
        tx.send(OffloadMsg::Command(OffloadCommand::Add {
            allocation: h,
            spec: spec(0x4002, 60001),
        }))
        .await
        .expect("send");
        let (done_tx, done_rx) = oneshot::channel();
        tx.send(OffloadMsg::Shutdown(done_tx)).await.expect("send");
        tokio::time::timeout(Duration::from_secs(5), done_rx)
            .await
            .expect("shutdown answered in time")
            .expect("shutdown answered");
        let _ = task.await;
        let a = agent.lock().expect("lock");
        assert_eq!(
            a.channels.keys().copied().collect::<Vec<_>>(),
            vec![foreign.key()]
        );
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn reconnects_and_restores_channels_after_fork_agent_restarts() {
        let path = temp_socket("restart");
        let _ = std::fs::remove_file(&path);
        let (tx, rx) = mpsc::channel(16);
        let (in_tx, _in_rx) = mpsc::channel(16);
        let gauge = OffloadGauge::default();
        let _task = spawn(
            path.clone(),
            vec!["10.77.1.1:3478".parse().expect("addr")],
            Duration::from_millis(100),
            rx,
            in_tx,
            gauge.clone(),
        );
        // fork-agent is not there yet: the command is kept, not lost.
        tx.send(OffloadMsg::Command(OffloadCommand::Add {
            allocation: AllocationHandle(1),
            spec: spec(0x4001, 60000),
        }))
        .await
        .expect("send");
        for _ in 0..100 {
            if gauge.connection_failures() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gauge.connection_failures() >= 1);
        assert!(!gauge.connected());
        let key = spec(0x4001, 60000).key();
        let agent = start(&path, None);
        assert!(wait_for(&agent, key).await, "added once fork-agent is up");
        // fork-agent crashes mid-request and comes back without its pinned state: the task
        // reconnects and adds the channel again.
        {
            let mut a = agent.lock().expect("lock");
            a.crash_next = true;
            a.channels.clear();
        }
        assert!(
            wait_for(&agent, key).await,
            "restored after the agent lost it"
        );
        let failures = gauge.connection_failures();
        assert!(
            failures >= 2,
            "the crash was seen as a lost connection: {failures}"
        );
        assert!(gauge.connected());
        assert!(
            agent
                .lock()
                .expect("lock")
                .ops
                .iter()
                .filter(|o| *o == "turn_channel_add")
                .count()
                >= 2
        );
        let _ = std::fs::remove_file(&path);
    }
}
