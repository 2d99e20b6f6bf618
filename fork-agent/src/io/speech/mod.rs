//! The stream service shell: one task owns the [`ForkService`] core and every speech-server
//! connection handle; connection tasks (`conn.rs`) do the network IO.
//!
//! Inputs of the task, in priority order: [`Command`]s from the agent (fork start/stop in the
//! order the control API executed them, stream-service ops with their reply channel),
//! [`ConnEvent`]s from connection tasks, the core's timer, and forked media from the AF_XDP
//! reader ([`Media`], a whole drained batch at a time through [`queue::MediaQueue`]). After
//! each input (one batch of media counts as one) the core's outputs are performed in order
//! (connect, queue control, close, publish status events, log alarms), then the timer is
//! re-armed.
//!
//! Destinations: every `[[speech_server]]` has a pool from the start. A fork request naming its
//! own destination (URL, token, profile; control-api `Destination`) is checked against
//! `[destinations] allow` by [`SpeechService::check_fork`] before the control API answers, and
//! gets a pool of its own keyed by server, URL, token and profile: forks with different tokens
//! never share a connection. Such a pool is dropped as soon as nothing uses it.
//!
//! Media: a forked packet names its kernel tap (core::flows); every fork stream fed from that
//! tap (core::fanout) gets the frame under its own stream id, one copy per extra fork and none
//! when a single fork uses the flow. Frames go to each connection's bounded
//! [`queue::ConnQueue`]; when the pool says the queue is full the oldest queued audio frame
//! makes room and the core counts it for its stream (and alarms once per overflow episode).
//!
//! Reload (SIGHUP, `reload.rs`): `[[speech_server]]` and `[destinations]` are swapped in by the
//! task itself, so no fork sees half a change. An unchanged server keeps its pool and
//! connections; a changed or removed one retires its pools: their streams run on until they
//! stop, new forks get the new definition, and a retired pool is dropped once idle.
//!
//! Status events are published as control-api `fork_status` event lines on a broadcast
//! channel the control API's `subscribe` hands to its clients.

pub mod conn;
pub mod queue;
pub mod reload;
pub mod tls;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock, RwLockReadGuard,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use rand::{rngs::StdRng, SeedableRng};
use serde_json::{json, Value};
use speech_proto::{Dtmf, StopReason};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::io::bot::{BotCounters, BotEvent, BotLink};
use crate::{
    config::{DestinationsConfig, SpeechServerConfig},
    core::{
        destinations::{AllowList, Verdict},
        fanout::FanOut,
        flows::Fork,
        session::{AudioVerdict, ConnId, ForkRequest, ForkService, Output, ServerId, SessionError},
        ws_url::WsUrl,
        IdMap,
    },
};
use conn::{ConnCounters, ConnEvent, ConnTx, Outgoing, Target};
use control_api::{Destination, ForkSpec, Op, Response, StreamServiceShow};
use queue::MediaQueue;

/// A forked packet from the AF_XDP reader, already encoded as a speech-protocol frame.
#[derive(Debug)]
pub enum Media {
    /// One audio frame (docs/speech-protocol.md §3) of `stream_id`.
    Audio {
        /// The kernel tap the packet was forked under (also in the frame's header).
        stream_id: u32,
        /// Encoded frame (header + payload).
        frame: Vec<u8>,
        /// When the reader took it from the AF_XDP ring (one clock read per drained batch),
        /// for the packet → frame latency histogram.
        at: Instant,
    },
    /// One RFC 4733 report (its `stream_id` is the tap).
    Dtmf(Dtmf),
}

impl Media {
    /// Encodes the speech-protocol frame (the one copy of the payload on the media path) of a
    /// packet taken from the ring at `at`.
    pub fn encode(f: crate::core::forked::Forked<'_>, at: Instant) -> Media {
        match f {
            crate::core::forked::Forked::Audio { header, payload } => {
                let mut frame = Vec::with_capacity(speech_proto::AUDIO_HEADER_LEN + payload.len());
                speech_proto::encode_audio(&mut frame, &header, payload);
                Media::Audio {
                    stream_id: header.stream_id,
                    frame,
                    at,
                }
            }
            crate::core::forked::Forked::Dtmf(d) => Media::Dtmf(d),
        }
    }
}

/// What the agent asks of the service.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per control request, never on the media path
pub enum Command {
    /// Start (or, after a restart, resume) forking a call.
    Start {
        /// The fork as the flow table holds it.
        fork: Box<Fork>,
        /// The kernel tap each stream is fed from (order of `fork.streams`).
        taps: Vec<u32>,
        /// Announce the streams with `resumed: true`.
        resumed: bool,
        /// The playout of the fork's return audio, if it has one.
        bot: Option<BotLink>,
    },
    /// Stop forking a call.
    Stop {
        /// Call GUID.
        call_guid: String,
        /// Why.
        reason: StopReason,
    },
    /// A stream-service op of the control API, answered on `reply`.
    Op {
        /// The op ([`Op::is_stream_service`]).
        op: Op,
        /// Where the answer goes.
        reply: oneshot::Sender<Response>,
    },
    /// SIGHUP: new `[[speech_server]]` and `[destinations]` settings (already validated).
    Reload {
        /// Every configured server, as the file now says.
        servers: Vec<SpeechServerConfig>,
        /// The allow-list and its limit.
        destinations: DestinationsConfig,
        /// What changed, or why nothing did.
        reply: oneshot::Sender<Result<reload::Changes>>,
    },
}

/// Per-server counters read by `show_counters` and metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Frames and bytes written by this server's connections.
    pub wire: Arc<ConnCounters>,
    /// Frames dropped (paused, not connected, queue full, lost on close).
    pub frames_dropped: AtomicU64,
    /// Connection attempts.
    pub connects: AtomicU64,
    /// Attempts or connections that failed (not closed by us).
    pub failures: AtomicU64,
    /// Connections closed because the server sent a frame it may not send (a subset of
    /// `failures`).
    pub protocol_errors: AtomicU64,
    /// Open connections.
    pub connected: AtomicU64,
    /// Connect time of the connections that opened (metrics).
    pub connect_seconds: crate::io::metrics::ConnectTime,
    /// Packet → frame latency of the frames written (metrics).
    pub frame_latency: crate::io::metrics::FrameLatency,
}

/// Counters per configured server name, shared with `show_counters` and metrics; a reload
/// adds names, and a removed name goes once its last stream has stopped.
pub type StatsByServer = Arc<RwLock<HashMap<String, Arc<ServerStats>>>>;

/// Cloneable handle of the service task.
#[derive(Clone)]
pub struct SpeechService {
    cmd: mpsc::Sender<Command>,
    policy: Arc<RwLock<Policy>>,
    /// Counters per server name.
    pub stats: StatsByServer,
    /// Where playouts report marks played.
    bot_events: mpsc::UnboundedSender<BotEvent>,
    /// Counters of every playout.
    pub bot_counters: Arc<BotCounters>,
}

/// Reads a lock whose writer cannot leave it inconsistent (each write is one assignment or
/// one map insert/remove), so a poisoned lock is still read.
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// What [`SpeechService::check_fork`] needs: the configured servers and the allow-list.
struct Policy {
    servers: HashMap<String, ServerEntry>,
    allow: AllowList,
    max_active: usize,
    /// Per-request destinations with a pool now (the task keeps it current).
    active: Arc<AtomicU64>,
}

/// One `[[speech_server]]`, as forks use it.
struct ServerEntry {
    cfg: SpeechServerConfig,
    url: WsUrl,
    /// Built for every server (not only `wss://` ones): a per-request `wss://` destination
    /// uses its server's TLS settings.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The bytes of the TLS files it was built from: a reload that finds them changed (a
    /// rotated CA or client certificate) treats the server as changed.
    tls_files: Vec<u8>,
}

impl ServerEntry {
    /// Parses the URL, builds the TLS settings and reads their files.
    fn build(s: &SpeechServerConfig) -> Result<ServerEntry> {
        let url = WsUrl::parse(&s.url)
            .map_err(|e| anyhow::anyhow!("speech_server {}: url {e}", s.name))?;
        let tls = Some(
            tls::client_config(&s.tls)
                .with_context(|| format!("speech_server {}: TLS settings", s.name))?,
        );
        let mut tls_files = Vec::new();
        for f in [&s.tls.ca_file, &s.tls.client_cert, &s.tls.client_key]
            .into_iter()
            .flatten()
        {
            let bytes = std::fs::read(f)
                .with_context(|| format!("speech_server {}: reading {}", s.name, f.display()))?;
            tls_files.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            tls_files.extend_from_slice(&bytes);
        }
        Ok(ServerEntry {
            cfg: s.clone(),
            url,
            tls,
            tls_files,
        })
    }

    /// Whether forks may keep using a pool built from `self` when the file now says `new`.
    fn same_as(&self, new: &ServerEntry) -> bool {
        self.cfg == new.cfg && self.tls_files == new.tls_files
    }
}

/// The error text of a refused destination (control-api `destination not allowed: …`, which
/// sip-agent reports as "Connection failed").
fn not_allowed(why: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{}: {why}", control_api::DESTINATION_NOT_ALLOWED)
}

impl Policy {
    /// Where a fork goes: its server and, for a per-request destination, the checked URL and
    /// the networks its resolved addresses must be in.
    fn resolve(&self, spec: &ForkSpec) -> Result<Resolved, anyhow::Error> {
        let entry = self
            .servers
            .get(&spec.server)
            .ok_or_else(|| anyhow::anyhow!("no speech_server named `{}`", spec.server))?;
        let Some(dest) = &spec.destination else {
            return Ok(Resolved {
                url: entry.url.clone(),
                within: None,
                own: true,
            });
        };
        let url = WsUrl::parse(&dest.url).map_err(|e| not_allowed(format!("url {e}")))?;
        if let Some(p) = dest.profile {
            if p != entry.cfg.protocol.profile {
                // Another dialect with this entry's settings: they must make sense for it.
                let cfg = speech_proto::ProfileConfig {
                    profile: p,
                    ..entry.cfg.protocol.clone()
                };
                speech_proto::Dialect::new(&cfg)
                    .map_err(|e| not_allowed(format!("profile {p}: {e}")))?;
            }
        }
        if url.secure && entry.tls.is_none() {
            return Err(not_allowed(
                "wss:// needs TLS settings the server entry lacks",
            ));
        }
        // The operator's own URLs are always allowed.
        if self.servers.values().any(|e| e.url == url) {
            return Ok(Resolved {
                url,
                within: None,
                own: false,
            });
        }
        match self.allow.check(&url) {
            Verdict::Allowed => Ok(Resolved {
                url,
                within: None,
                own: false,
            }),
            Verdict::ResolvedWithin(nets) => Ok(Resolved {
                url,
                within: Some(nets),
                own: false,
            }),
            Verdict::Refused(why) => Err(not_allowed(why)),
        }
    }
}

/// A fork's checked destination.
struct Resolved {
    url: WsUrl,
    within: Option<Vec<conn_limits::core::cidr::Cidr>>,
    /// The server entry's own URL and token (no per-request destination).
    own: bool,
}

/// What makes two per-request destinations share a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DestKey {
    server: String,
    dest: Destination,
}

/// Commands waiting for the service task (fork requests arrive at control-API pace).
const COMMAND_QUEUE: usize = 1024;
/// Status events kept for slow subscribers before they see `lagged`.
pub const EVENT_BACKLOG: usize = 1024;

impl SpeechService {
    /// Builds every server's target (TLS configs included) and starts the task, which publishes
    /// status events on `events`.
    pub fn spawn(
        servers: &[SpeechServerConfig],
        destinations: &DestinationsConfig,
        media: Arc<MediaQueue>,
        statuses: crate::io::statuses::Statuses,
    ) -> Result<Self> {
        let entries = servers
            .iter()
            .map(ServerEntry::build)
            .collect::<Result<Vec<_>>>()?;
        let allow = AllowList::parse(&destinations.allow)
            .map_err(|e| anyhow::anyhow!("destinations.{e}"))?;
        let policy = Arc::new(RwLock::new(Policy {
            servers: HashMap::new(),
            allow,
            max_active: destinations.max_active,
            active: Arc::new(AtomicU64::new(0)),
        }));
        let stats: StatsByServer = Arc::default();
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (bot_tx, bot_rx) = mpsc::unbounded_channel();
        let mut task = Task {
            core: ForkService::new(),
            targets: HashMap::new(),
            by_name: HashMap::new(),
            dests: HashMap::new(),
            dest_of: HashMap::new(),
            retired: HashMap::new(),
            retirements: 0,
            policy: policy.clone(),
            stats: stats.clone(),
            stream_server: IdMap::default(),
            fanout: FanOut::new(),
            conns: IdMap::default(),
            conn_counters: HashMap::new(),
            open: HashSet::new(),
            connecting: HashMap::new(),
            flush: HashSet::new(),
            ev_tx,
            statuses,
            batch: std::collections::VecDeque::new(),
            bots: HashMap::new(),
            mix_taps: HashMap::new(),
        };
        let mut named = HashMap::new();
        for entry in entries {
            task.add_entry(&entry)?;
            named.insert(entry.cfg.name.clone(), entry);
        }
        policy.write().unwrap_or_else(|e| e.into_inner()).servers = named;
        tokio::spawn(task.run(cmd_rx, ev_rx, bot_rx, media));
        Ok(SpeechService {
            cmd: cmd_tx,
            policy,
            stats,
            bot_events: bot_tx,
            bot_counters: Arc::new(BotCounters::default()),
        })
    }

    /// Swaps in new `[[speech_server]]` and `[destinations]` settings (SIGHUP); see `reload.rs`.
    pub async fn reload(
        &self,
        servers: Vec<SpeechServerConfig>,
        destinations: DestinationsConfig,
    ) -> Result<reload::Changes> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Reload {
                servers,
                destinations,
                reply,
            })
            .await
            .map_err(|_| anyhow::anyhow!("stream service gone"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("stream service gone"))?
    }

    /// Checks where a fork would go before anything else happens: its server exists and a
    /// per-request destination passes `[destinations] allow` (the error text is the control
    /// API's answer: `no speech_server named …` or `destination not allowed: …`).
    pub fn check_fork(&self, spec: &ForkSpec) -> Result<()> {
        let policy = read(&self.policy);
        let r = policy.resolve(spec)?;
        if let Some(ra) = &spec.return_audio {
            let profile = spec
                .destination
                .as_ref()
                .and_then(|d| d.profile)
                .or_else(|| {
                    policy
                        .servers
                        .get(&spec.server)
                        .map(|e| e.cfg.protocol.profile)
                })
                .unwrap_or_default();
            profile.check_return_audio()?;
            if !spec.streams.iter().any(|s| s.channel == ra.to) {
                anyhow::bail!("return_audio.to: the fork has no {} stream", ra.to.as_str());
            }
        }
        if !r.own && policy.active.load(Ordering::Relaxed) >= policy.max_active as u64 {
            return Err(not_allowed(format!(
                "{} per-request destinations are in use ([destinations] max_active)",
                policy.max_active
            )));
        }
        Ok(())
    }

    /// Queues a fork start (after the flow table accepted it, before the kernel forks); its
    /// streams are fed from `taps` (order of `fork.streams`).
    pub fn start_fork(
        &self,
        fork: &Fork,
        taps: &[u32],
        resumed: bool,
        bot: Option<BotLink>,
    ) -> Result<()> {
        self.send(Command::Start {
            fork: Box::new(fork.clone()),
            taps: taps.to_vec(),
            resumed,
            bot,
        })
    }

    /// Where a playout reports marks played (io::bot).
    pub fn bot_events(&self) -> mpsc::UnboundedSender<BotEvent> {
        self.bot_events.clone()
    }

    /// Queues a fork stop.
    pub fn stop_fork(&self, call_guid: &str, reason: StopReason) -> Result<()> {
        self.send(Command::Stop {
            call_guid: call_guid.to_owned(),
            reason,
        })
    }

    /// Hands a stream-service op to the task; it answers on `reply`.
    pub fn request(&self, op: Op, reply: oneshot::Sender<Response>) {
        if let Err(e) = self.cmd.try_send(Command::Op { op, reply }) {
            let reply = match e {
                mpsc::error::TrySendError::Full(Command::Op { reply, .. })
                | mpsc::error::TrySendError::Closed(Command::Op { reply, .. }) => reply,
                _ => return,
            };
            let _ = reply.send(Response::err("Internal error: stream service busy or gone"));
        }
    }

    fn send(&self, c: Command) -> Result<()> {
        self.cmd
            .try_send(c)
            .map_err(|_| anyhow::anyhow!("Internal error: stream service busy or gone"))
    }
}

/// A target for `url` with the entry's transport settings.
fn target(
    entry: &ServerEntry,
    url: WsUrl,
    token: Option<String>,
    protocol: speech_proto::ProfileConfig,
    resolved_within: Option<Vec<conn_limits::core::cidr::Cidr>>,
    frame_latency: crate::io::metrics::FrameLatency,
) -> Target {
    let s = &entry.cfg;
    Target {
        name: s.name.clone(),
        tls: if url.secure { entry.tls.clone() } else { None },
        url,
        token,
        protocol,
        resolved_within,
        proxy: s.proxy.as_ref().map(|p| (p.host.clone(), p.port)),
        source: s.source_address,
        connect_timeout: Duration::from_millis(s.connect_timeout_ms),
        frame_latency,
    }
}

struct Task {
    core: ForkService,
    targets: HashMap<ServerId, Arc<Target>>,
    by_name: HashMap<String, (ServerId, Arc<ServerStats>)>,
    /// Pools of per-request destinations, and the way back.
    dests: HashMap<DestKey, ServerId>,
    dest_of: HashMap<ServerId, DestKey>,
    /// Pools a reload replaced or removed, with their server's name: dropped once idle.
    retired: HashMap<ServerId, String>,
    /// Pools retired so far (their shown names are numbered).
    retirements: u64,
    policy: Arc<RwLock<Policy>>,
    stats: StatsByServer,
    /// Connections sent control messages in this round: they get an end-of-batch mark.
    flush: HashSet<ConnId>,
    stream_server: IdMap<u32, Arc<ServerStats>>,
    /// Kernel tap → fork streams.
    fanout: FanOut,
    conns: IdMap<ConnId, ConnTx>,
    conn_counters: HashMap<ConnId, Arc<ConnCounters>>,
    open: HashSet<ConnId>,
    /// When each connection still connecting was started (connect-time histogram).
    connecting: HashMap<ConnId, Instant>,
    ev_tx: mpsc::UnboundedSender<ConnEvent>,
    /// Where status events go (and each live fork's current one is kept).
    statuses: crate::io::statuses::Statuses,
    /// The batch of media being handled (swapped with the reader's queue, capacity kept).
    batch: std::collections::VecDeque<Media>,
    /// Playouts by the stream the bot talks on.
    bots: HashMap<u32, BotRoute>,
    /// Mix mode: kernel tap → the stream whose playout mixes that tap's audio in.
    mix_taps: HashMap<u32, u32>,
}

/// One fork's return audio, as the service routes it.
#[derive(Debug)]
struct BotRoute {
    call_guid: String,
    link: BotLink,
    /// The connection the bot spoke on last: its marks are answered there.
    conn: Option<ConnId>,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Task {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut conn_events: mpsc::UnboundedReceiver<ConnEvent>,
        mut bot_events: mpsc::UnboundedReceiver<BotEvent>,
        media: Arc<MediaQueue>,
    ) {
        loop {
            let deadline = self.core.poll_timeout();
            let sleep = crate::io::sleep_until(deadline);
            tokio::select! {
                biased;
                c = cmds.recv() => match c {
                    Some(c) => self.command(c),
                    None => return,
                },
                Some(ev) = conn_events.recv() => self.conn_event(ev),
                Some(ev) = bot_events.recv() => self.bot_event(ev),
                _ = sleep => self.core.handle_timeout(now()),
                dropped = media.take(&mut self.batch) => self.media_batch(dropped),
            }
            self.perform();
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Start {
                fork,
                taps,
                resumed,
                bot,
            } => {
                let guid = fork.spec.call_guid.clone();
                let (server, stats) = match self.server_for(&fork.spec) {
                    Ok(s) => s,
                    Err(e) => {
                        // check_fork passed moments ago: the table filled up meanwhile, or a
                        // restarted agent re-reads a fork the config no longer allows.
                        warn!(call_guid = %guid, "fork not started: {e}");
                        self.publish(control_api::Event::ForkStatus {
                            call_guid: guid,
                            status: control_api::ForkStatus::Error,
                            error: Some("Connection failed".into()),
                            reconnected: false,
                            snapshot: false,
                            fork_id: None,
                        });
                        return;
                    }
                };
                let streams = fork
                    .streams
                    .iter()
                    .zip(&fork.spec.streams)
                    .map(|((id, _), s)| (*id, s.channel))
                    .collect::<Vec<_>>();
                for (id, _) in &streams {
                    self.stream_server.insert(*id, stats.clone());
                }
                // Mix mode: the tap of the flow the bot mixes in feeds its playout too.
                let mix_tap = bot.as_ref().and_then(|b| b.mix_from).and_then(|flow| {
                    fork.streams
                        .iter()
                        .position(|(_, l)| *l == flow)
                        .and_then(|i| taps.get(i).copied())
                });
                let pairs: Vec<(u32, u32)> = taps
                    .into_iter()
                    .zip(streams.iter().map(|(id, _)| *id))
                    .collect();
                let spec = fork.spec;
                let req = ForkRequest {
                    call_guid: spec.call_guid,
                    call_id: spec.call_id,
                    from: spec.from,
                    to: spec.to,
                    server,
                    codec: spec.codec,
                    ptime_ms: spec.ptime_ms,
                    metadata: spec.metadata,
                    streams,
                    resumed,
                    return_audio: bot.as_ref().and_then(|_| spec.return_audio.map(|r| r.to)),
                };
                if let Some(link) = bot {
                    if let Some(tap) = mix_tap {
                        self.mix_taps.insert(tap, link.stream_id);
                    }
                    self.bots.insert(
                        link.stream_id,
                        BotRoute {
                            call_guid: guid.clone(),
                            link,
                            conn: None,
                        },
                    );
                }
                match self.core.handle_fork_start(now(), req) {
                    Ok(()) => {
                        self.fanout.add(&guid, pairs);
                        info!(call_guid = %guid, "forking requested");
                    }
                    Err(e) => warn!(call_guid = %guid, "fork not started: {e}"),
                }
            }
            Command::Stop { call_guid, reason } => {
                self.fanout.remove(&call_guid);
                // Dropping the link ends the playout: nothing more is sent.
                self.bots.retain(|_, b| b.call_guid != call_guid);
                let bots = &self.bots;
                self.mix_taps.retain(|_, bot| bots.contains_key(bot));
                let server = self.core.server_of(&call_guid);
                if let Err(e) = self.core.handle_fork_stop(now(), &call_guid, reason) {
                    warn!(%call_guid, "fork stop: {e}");
                }
                if let Some(server) = server {
                    self.drop_if_idle(server);
                }
            }
            Command::Reload {
                servers,
                destinations,
                reply,
            } => {
                let _ = reply.send(self.reload(&servers, &destinations));
            }
            Command::Op { op, reply } => {
                let resp = match self.op(op) {
                    Ok(v) => Response::ok(v),
                    Err(e) => Response::err(e.to_string()),
                };
                let _ = reply.send(resp);
            }
        }
    }

    fn op(&mut self, op: Op) -> Result<Value, OpError> {
        let t = now();
        match op {
            Op::ForkPause { call_guid, reason } => {
                self.core.handle_fork_pause(t, &call_guid, reason)?;
                Ok(Value::Null)
            }
            Op::ForkResume { call_guid, codec } => {
                self.core.handle_fork_resume(t, &call_guid, codec)?;
                Ok(Value::Null)
            }
            Op::ForkUpdate {
                call_guid,
                metadata,
            } => {
                self.core.handle_fork_update(t, &call_guid, metadata)?;
                Ok(Value::Null)
            }
            Op::ClearStreamConnection { id, forced } => {
                if !forced {
                    return Err(OpError::Usage(
                        "clearing a connection ends its forks: add `forced`".into(),
                    ));
                }
                self.core.handle_clear_connection(t, id)?;
                Ok(Value::Null)
            }
            Op::ClearStreamStatistics => {
                self.core.clear_statistics();
                Ok(Value::Null)
            }
            Op::ShowStreamService { what, arg } => self.show(what, arg.as_deref()),
            other => Err(OpError::Usage(format!(
                "op {other:?} is not a stream-service op"
            ))),
        }
    }

    fn show(&self, what: StreamServiceShow, arg: Option<&str>) -> Result<Value, OpError> {
        let conns_json = |host_port: Option<&str>| -> Value {
            let list: Vec<Value> = self
                .core
                .conns_view(host_port)
                .into_iter()
                .map(|c| {
                    let mut v = serde_json::to_value(&c).unwrap_or(Value::Null);
                    if let Some(k) = self.conn_counters.get(&ConnId(c.id)) {
                        v["frames_sent"] = json!(k.frames_sent.load(Ordering::Relaxed));
                        v["bytes_sent"] = json!(k.bytes_sent.load(Ordering::Relaxed));
                        v["dropped_on_close"] = json!(k.dropped_on_close.load(Ordering::Relaxed));
                        v["server_errors"] = json!(k.server_errors.load(Ordering::Relaxed));
                    }
                    v
                })
                .collect();
            Value::Array(list)
        };
        let v = match what {
            StreamServiceShow::Callid => serde_json::to_value(self.core.sessions_view(arg))?,
            StreamServiceShow::Connection => conns_json(None),
            StreamServiceShow::ConnectionHistory => serde_json::to_value(self.core.history())?,
            StreamServiceShow::ConnectionId => {
                let id: u32 = arg
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| OpError::Usage("connection_id needs a numeric `arg`".into()))?;
                let all = conns_json(None);
                all.as_array()
                    .and_then(|a| a.iter().find(|c| c["id"] == json!(id)).cloned())
                    .ok_or(OpError::Session(SessionError::UnknownConn(id)))?
            }
            StreamServiceShow::Server => {
                let hp =
                    arg.ok_or_else(|| OpError::Usage("server needs `arg` host:port".into()))?;
                conns_json(Some(hp))
            }
            StreamServiceShow::Statistics => serde_json::to_value(self.core.stats_view())?,
        };
        Ok(v)
    }

    fn conn_event(&mut self, ev: ConnEvent) {
        let t = now();
        match ev {
            ConnEvent::Connected { conn, info } => {
                let url = self.url_of(conn);
                info!(conn = conn.0, %url, local = ?info.local, tls = ?info.tls_version,
                    "WebSocket Connection creation successful");
                let began = self.connecting.remove(&conn);
                if self.open.insert(conn) {
                    if let Some(s) = self.stats_of(conn) {
                        s.connected.fetch_add(1, Ordering::Relaxed);
                        if let Some(b) = began {
                            let secs = t.saturating_duration_since(b).as_secs_f64();
                            s.connect_seconds.0.observe(secs);
                        }
                    }
                }
                if let Err(e) = self.core.handle_connected(t, conn, info) {
                    warn!(conn = conn.0, "connected event: {e}");
                }
            }
            ConnEvent::Accepted { conn } => {
                info!(conn = conn.0, url = %self.url_of(conn), "speech server accepted the session");
                if let Err(e) = self.core.handle_accepted(t, conn) {
                    warn!(conn = conn.0, "accepted event: {e}");
                }
            }
            ConnEvent::StartsWritten { conn, streams } => {
                if let Err(e) = self.core.handle_starts_written(t, conn, &streams) {
                    warn!(conn = conn.0, "starts-written event: {e}");
                }
            }
            ConnEvent::Bot {
                conn,
                stream_id,
                command,
            } => self.bot_command(conn, stream_id, command),
            ConnEvent::Closed {
                conn,
                failure,
                detail,
            } => {
                self.connecting.remove(&conn);
                let server = self.core.conn_server(conn);
                let url = self.url_of(conn);
                let stats = self.stats_of(conn);
                if self.open.remove(&conn) {
                    if let Some(s) = &stats {
                        s.connected.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                if failure != crate::core::session::ConnFailure::Local {
                    if let Some(s) = &stats {
                        s.failures.fetch_add(1, Ordering::Relaxed);
                        if matches!(failure, crate::core::session::ConnFailure::Protocol { .. }) {
                            s.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    warn!(conn = conn.0, %url, ?failure, "WebSocket Connection ended: {detail}");
                } else {
                    info!(conn = conn.0, %url, "WebSocket Connection closed: {detail}");
                }
                // A bot that left stops talking: its queued audio belonged to a conversation the
                // next connection's server knows nothing about (the playout goes on in silence).
                for b in self.bots.values_mut().filter(|b| b.conn == Some(conn)) {
                    b.link.send(speech_proto::BotCommand::Clear);
                    b.conn = None;
                }
                if let Some(tx) = self.conns.remove(&conn) {
                    let lost = tx.counters.dropped_on_close.swap(0, Ordering::Relaxed);
                    if let Some(s) = &stats {
                        s.frames_dropped.fetch_add(lost, Ordering::Relaxed);
                    }
                }
                if let Err(e) = self.core.handle_closed(t, unix_now(), conn, failure) {
                    warn!(conn = conn.0, "closed event: {e}");
                }
                if let Some(server) = server {
                    self.drop_if_idle(server);
                }
            }
        }
    }

    /// A bot command from `conn`: to the stream's playout (a stream without one stopped
    /// meanwhile, and nothing plays it).
    fn bot_command(&mut self, conn: ConnId, stream_id: u32, command: speech_proto::BotCommand) {
        match self.bots.get_mut(&stream_id) {
            Some(b) => {
                b.conn = Some(conn);
                b.link.send(command);
            }
            None => tracing::debug!(
                conn = conn.0,
                stream_id,
                "bot command for a stream without playout"
            ),
        }
    }

    /// A playout's report: a mark is answered on the connection the bot spoke on.
    fn bot_event(&mut self, ev: BotEvent) {
        match ev {
            BotEvent::MarkPlayed { stream_id, name } => {
                let tx = self
                    .bots
                    .get(&stream_id)
                    .and_then(|b| b.conn)
                    .and_then(|c| self.conns.get(&c));
                if let Some(tx) = tx {
                    tx.send(Outgoing::MarkPlayed { stream_id, name });
                }
            }
        }
    }

    /// One batch from the reader: one clock read for all of it. `dropped`: packets the
    /// reader's queue dropped (oldest first) since the last batch.
    fn media_batch(&mut self, dropped: u64) {
        let t = now();
        self.core.handle_media_queue(dropped);
        let mut batch = std::mem::take(&mut self.batch);
        for m in batch.drain(..) {
            self.media(t, m);
        }
        self.batch = batch;
    }

    fn media(&mut self, t: Instant, m: Media) {
        match m {
            Media::Audio {
                stream_id: tap,
                frame,
                at,
            } => {
                // A lookup in an empty map returns before hashing: no cost without mix mode.
                let mixer = self.mix_taps.get(&tap).and_then(|s| self.bots.get(s));
                if let Some(bot) = mixer {
                    if let Ok((_, payload)) = speech_proto::decode_audio(&frame) {
                        bot.link.party(payload);
                    }
                }
                let (core, conns, servers) = (&mut self.core, &self.conns, &self.stream_server);
                let mut send = |stream, frame| {
                    send_audio(
                        core,
                        conns,
                        servers,
                        t,
                        tap,
                        stream,
                        Outgoing::Audio { frame, at },
                    )
                };
                match self.fanout.streams(tap).split_last() {
                    // Every stream but the last gets a copy; the last one the frame itself.
                    Some((last, extra)) => {
                        for &stream in extra {
                            send(stream, frame.clone());
                        }
                        send(*last, frame);
                    }
                    // No fork on this tap (stopped a moment ago): the core counts the drop.
                    None => send(tap, frame),
                }
            }
            Media::Dtmf(d) => {
                let streams = self.fanout.streams(d.stream_id);
                if streams.is_empty() {
                    self.core.handle_dtmf(t, d);
                    return;
                }
                for &stream_id in streams {
                    self.core.handle_dtmf(
                        t,
                        Dtmf {
                            stream_id,
                            ..d.clone()
                        },
                    );
                }
            }
        }
    }

    /// Performs the core's outputs in order.
    fn perform(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Connect { conn, server } => {
                    let Some(target) = self.targets.get(&server).cloned() else {
                        continue;
                    };
                    if let Some(s) = self.by_name.get(&target.name) {
                        s.1.connects.fetch_add(1, Ordering::Relaxed);
                    }
                    let wire = self
                        .by_name
                        .get(&target.name)
                        .map(|s| s.1.wire.clone())
                        .unwrap_or_default();
                    let counters = Arc::new(ConnCounters::default());
                    self.conn_counters.insert(conn, counters.clone());
                    self.connecting.insert(conn, now());
                    let tx = conn::spawn(conn, target, self.ev_tx.clone(), counters, wire);
                    self.conns.insert(conn, tx);
                }
                Output::Send { conn, msg } => {
                    if let Some(tx) = self.conns.get(&conn) {
                        tx.send(Outgoing::Control(msg));
                        self.flush.insert(conn);
                    }
                }
                Output::Close { conn, why } => {
                    info!(conn = conn.0, url = %self.url_of(conn), "WebSocket Connection {}", why.describe());
                    if let Some(tx) = self.conns.get_mut(&conn) {
                        tx.close();
                    }
                }
                Output::Status(ev) => {
                    info!(call_guid = %ev.call_guid, status = ?ev.status,
                        error = ev.error.map(|e| e.as_str()), "fork status");
                    self.publish(ev.into());
                }
                Output::Alarm(a) => {
                    warn!(
                        target: "stream_service",
                        "%SIP-3-STREAM_SERVICE: {} {}",
                        a.count,
                        a.kind.label()
                    );
                }
                Output::ServerBackoff {
                    server,
                    delay,
                    errors,
                } => {
                    let name = self.targets.get(&server).map_or("?", |t| t.name.as_str());
                    warn!(server = %name, errors, ?delay,
                        "speech server keeps breaking the protocol: no connection to it for {delay:?}; its forks wait");
                }
            }
        }
        // End of this round's control messages on each connection that got some.
        for conn in self.flush.drain() {
            if let Some(tx) = self.conns.get(&conn) {
                tx.send(Outgoing::Flush);
            }
        }
        // Forget counters of connections the core no longer has.
        if self.conn_counters.len() > self.conns.len() + 64 {
            let live: HashSet<u32> = self.core.conns_view(None).iter().map(|c| c.id).collect();
            self.conn_counters.retain(|c, _| live.contains(&c.0));
        }
    }

    fn url_of(&self, conn: ConnId) -> String {
        self.core
            .conn_server(conn)
            .and_then(|s| self.targets.get(&s))
            .map(|t| t.url.to_url())
            .unwrap_or_default()
    }

    fn stats_of(&self, conn: ConnId) -> Option<Arc<ServerStats>> {
        let s = self.core.conn_server(conn)?;
        let t = self.targets.get(&s)?;
        self.by_name.get(&t.name).map(|x| x.1.clone())
    }

    /// Publishes a status event to subscribers (none is fine: sip-agent may not be
    /// connected yet).
    fn publish(&self, ev: control_api::Event) {
        self.statuses.publish(ev);
    }

    /// The pool a fork goes to: its server's, or its per-request destination's (made now if
    /// it has none). Counters are the server entry's either way.
    fn server_for(&mut self, spec: &ForkSpec) -> Result<(ServerId, Arc<ServerStats>)> {
        let (own, stats) = self
            .by_name
            .get(&spec.server)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no speech_server named `{}`", spec.server))?;
        let policy = self.policy.clone();
        let policy = read(&policy);
        let resolved = policy.resolve(spec)?;
        let Some(dest) = spec.destination.clone().filter(|_| !resolved.own) else {
            return Ok((own, stats));
        };
        let key = DestKey {
            server: spec.server.clone(),
            dest,
        };
        if let Some(&id) = self.dests.get(&key) {
            return Ok((id, stats));
        }
        if self.dests.len() >= policy.max_active {
            return Err(not_allowed("[destinations] max_active reached"));
        }
        let entry = policy
            .servers
            .get(&spec.server)
            .ok_or_else(|| anyhow::anyhow!("no speech_server named `{}`", spec.server))?;
        let protocol = speech_proto::ProfileConfig {
            profile: key.dest.profile.unwrap_or(entry.cfg.protocol.profile),
            ..entry.cfg.protocol.clone()
        };
        let profile = protocol.profile;
        let url = resolved.url;
        // Names show in `show stream-service` and logs; the token never does.
        let name = format!("{} {}", spec.server, url.to_url());
        let id = self.core.add_server(
            &name,
            &url.host_port(),
            entry.cfg.pool_config_for(profile),
            profile.awaits_acceptance(),
            Box::new(StdRng::from_entropy()),
        )?;
        let t = target(
            entry,
            url,
            key.dest.auth_token.clone(),
            protocol,
            resolved.within,
            stats.frame_latency.clone(),
        );
        self.targets.insert(id, Arc::new(t));
        self.dest_of.insert(id, key.clone());
        self.dests.insert(key, id);
        policy
            .active
            .store(self.dests.len() as u64, Ordering::Relaxed);
        Ok((id, stats))
    }

    /// Drops a per-request destination's pool, or one a reload retired, once nothing uses it.
    fn drop_if_idle(&mut self, server: ServerId) {
        let droppable = self.dest_of.contains_key(&server) || self.retired.contains_key(&server);
        if !droppable || !self.core.remove_server_if_idle(server) {
            return;
        }
        if let Some(key) = self.dest_of.remove(&server) {
            self.dests.remove(&key);
        }
        self.targets.remove(&server);
        if let Some(name) = self.retired.remove(&server) {
            self.forget_stats_if_unused(&name);
        }
        read(&self.policy)
            .active
            .store(self.dests.len() as u64, Ordering::Relaxed);
    }
}

/// One stream's audio frame (an [`Outgoing::Audio`]), forked under `tap`: admitted by the
/// core, it goes out under `stream`'s id (rewritten in the header when it differs) with its
/// own "first" flag. On a full queue the oldest queued frame makes room; whoever's frame is
/// dropped is counted for its stream and server.
fn send_audio(
    core: &mut ForkService,
    conns: &IdMap<ConnId, ConnTx>,
    stream_server: &IdMap<u32, Arc<ServerStats>>,
    t: Instant,
    tap: u32,
    stream: u32,
    mut item: Outgoing,
) {
    let Outgoing::Audio { frame, .. } = &mut item else {
        return;
    };
    let verdict = core.handle_audio(t, stream, frame.len(), |c| {
        conns
            .get(&c)
            .map_or(0, |tx| tx.backlog.load(Ordering::Relaxed))
    });
    let dropped_of = match verdict {
        AudioVerdict::Send { conn, first, evict } => {
            if stream != tap {
                speech_proto::set_audio_stream_id(frame, stream);
            }
            if first {
                if let Some(b) = frame.get_mut(3) {
                    *b |= speech_proto::FLAG_FIRST;
                }
            }
            match conns.get(&conn) {
                Some(tx) if evict => {
                    let old = tx.send_evicting(item);
                    let of = audio_stream_id(&old).unwrap_or(stream);
                    core.handle_audio_evicted(of);
                    Some(of)
                }
                Some(tx) => {
                    tx.send(item);
                    None
                }
                None => Some(stream),
            }
        }
        AudioVerdict::Drop(_) => Some(stream),
    };
    if let Some(s) = dropped_of.and_then(|of| stream_server.get(&of)) {
        s.frames_dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// The stream id in a queued audio frame's header.
fn audio_stream_id(item: &Outgoing) -> Option<u32> {
    match item {
        Outgoing::Audio { frame, .. } => speech_proto::decode_audio(frame)
            .ok()
            .map(|(h, _)| h.stream_id),
        _ => None,
    }
}

/// Failures of a stream-service op (the message is the response's `error`).
#[derive(Debug, thiserror::Error)]
enum OpError {
    /// The core refused it.
    #[error("{0}")]
    Session(#[from] SessionError),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A view did not serialize (never expected).
    #[error("Internal error: {0}")]
    Json(#[from] serde_json::Error),
}
