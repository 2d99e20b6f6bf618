//! Fork sessions over pooled WebSocket connections: the stream service core (sans-IO).
//!
//! Role: the one owner of every forked call's speech-server state. It keeps, per call, the
//! streams (two per call: caller and callee, reference "Feature Characteristics"), their
//! pause state and codec, the metadata, and which connection carries them; it owns one
//! [`WsPool`] per speech server (pool policy: `ws_pool.rs`) and turns pool decisions into the
//! speech-protocol messages of docs/speech-protocol.md, in order: `start` strictly before
//! audio, `pause`/`resume`/`update`/`stop` in request order on the call's connection. It maps
//! every connection failure to the reference's error strings ([`ForkFailure`]), reports fork
//! status changes ([`StatusEvent`]) for the controller, counts alarms ([`Alarms`]) and keeps a
//! bounded history of closed connections.
//!
//! Inputs (each takes `now`): [`ForkService::add_server`], [`ForkService::handle_fork_start`],
//! [`ForkService::handle_fork_pause`], [`ForkService::handle_fork_resume`],
//! [`ForkService::handle_fork_update`], [`ForkService::handle_fork_stop`],
//! [`ForkService::handle_audio`] and [`ForkService::handle_dtmf`] (media path),
//! [`ForkService::handle_connected`], [`ForkService::handle_closed`],
//! [`ForkService::handle_clear_connection`], [`ForkService::handle_timeout`].
//! Outputs: [`ForkService::poll_output`] ([`Output`]) and [`ForkService::poll_timeout`].
//! Call order for the shell: feed one input, drain `poll_output()` until `None` (perform each
//! output in order: a `Send` queued before a later audio verdict is what keeps `start` ahead
//! of media), re-arm the timer from `poll_timeout()`.
//!
//! Audio of a paused stream is never sent: [`ForkService::handle_audio`] answers
//! [`AudioVerdict::Drop`] with [`DropReason::Paused`], and every drop is counted by reason.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};
use speech_proto::{
    Channel, Codec, Control, Pause, PauseReason, Resume, Start, Stop, StopReason, Update,
};

use crate::core::alarms::{Alarm, Alarms, ConnHistory, HISTORY_LEN};
use crate::core::ws_pool::{CallHandle, ConnHandle, JitterRng, PoolConfig, PoolError, WsPool};

mod connection;
mod media;
mod status;
#[cfg(test)]
mod testing;
mod views;

use connection::ConnRec;
pub use connection::{CloseWhy, ConnFailure, ConnInfo};
pub use media::{AudioVerdict, DropReason, MediaCounters};
pub use status::{ForkFailure, ForkStatus, StatusEvent};
pub use views::{ConnView, PoolCounters, SessionView, StatsView, StreamView};

/// Index of a speech server (one pool each), from [`ForkService::add_server`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ServerId(pub u32);

/// Process-wide connection id shown by `show stream-service connection` (stable across the
/// reconnects of one pool slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ConnId(pub u32);

/// Misuse of the service API (protocol and network failures are outputs, not errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// No fork with this call GUID (CUBE "Invalid Stop/Update Fork Request").
    #[error("no fork for call_guid {0}")]
    UnknownCall(String),
    /// A fork with this call GUID already exists (CUBE "Invalid Start Fork Request").
    #[error("a fork for call_guid {0} already exists")]
    DuplicateCall(String),
    /// The fork's streams are already paused.
    #[error("fork {0} is already paused")]
    AlreadyPaused(String),
    /// `resume` for a fork that is not paused.
    #[error("fork {0} is not paused")]
    NotPaused(String),
    /// The fork failed (its status said why); only `fork_stop` is accepted.
    #[error("fork {0} has failed ({1}); stop it")]
    Failed(String, &'static str),
    /// A server id that [`ForkService::add_server`] never returned.
    #[error("unknown speech server {0:?}")]
    UnknownServer(ServerId),
    /// A connection id that is not live.
    #[error("no connection with id {0}")]
    UnknownConn(u32),
    /// A fork request without streams.
    #[error("fork {0} has no streams")]
    NoStreams(String),
    /// The pool refused its configuration or an input.
    #[error("connection pool: {0}")]
    Pool(PoolError),
}

impl From<PoolError> for SessionError {
    fn from(e: PoolError) -> Self {
        SessionError::Pool(e)
    }
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a connection for `conn` to `server`; report `handle_connected` or `handle_closed`.
    Connect {
        /// Connection id.
        conn: ConnId,
        /// Its server.
        server: ServerId,
    },
    /// Queue this control message on `conn` (never dropped).
    Send {
        /// Connection.
        conn: ConnId,
        /// Message.
        msg: Control,
    },
    /// Close `conn` (or abort its attempt), then report `handle_closed(.., Local)`.
    Close {
        /// Connection.
        conn: ConnId,
        /// Why.
        why: CloseWhy,
    },
    /// Report a fork status change to subscribers.
    Status(StatusEvent),
    /// Log an alarm at warn (`"{count} {label}"`).
    Alarm(Alarm),
}

/// A fork request as the service needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ForkRequest {
    /// Call GUID (key of the fork).
    pub call_guid: String,
    /// SIP Call-ID.
    pub call_id: String,
    /// Calling party.
    pub from: String,
    /// Called party.
    pub to: String,
    /// Pool that carries it.
    pub server: ServerId,
    /// Initial codec.
    pub codec: Codec,
    /// Packetization time.
    pub ptime_ms: u32,
    /// Metadata for `start`.
    pub metadata: Map<String, Value>,
    /// Stream ids (unique for the process lifetime) and their party.
    pub streams: Vec<(u32, Channel)>,
    /// Re-announce after an agent restart: the first `start` carries `resumed: true`.
    pub resumed: bool,
}

#[derive(Debug, Clone)]
struct StreamRec {
    id: u32,
    channel: Channel,
    codec: Codec,
    paused: Option<PauseReason>,
    first: bool,
    frames: u64,
    bytes: u64,
    dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessState {
    /// Waiting for its first connection.
    Waiting,
    /// Its streams are announced on this open connection.
    Live(ConnId),
    /// Lost its connection; the pool reconnects or rehomes it.
    Reconnecting,
    /// The pool gave up or the connection was cleared.
    Failed(ForkFailure),
}

#[derive(Debug, Clone)]
struct Session {
    req: ForkRequest,
    call: CallHandle,
    streams: Vec<StreamRec>,
    state: SessState,
    started_once: bool,
}

impl Session {
    fn start_msgs(&self, resumed: bool) -> Vec<Control> {
        let mut out = Vec::new();
        for s in &self.streams {
            out.push(Control::Start(Start {
                version: speech_proto::VERSION,
                stream_id: s.id,
                call_guid: self.req.call_guid.clone(),
                call_id: self.req.call_id.clone(),
                channel: s.channel,
                from: self.req.from.clone(),
                to: self.req.to.clone(),
                codec: s.codec,
                sample_rate: speech_proto::SAMPLE_RATE,
                ptime_ms: self.req.ptime_ms,
                metadata: self.req.metadata.clone(),
                resumed,
            }));
            if let Some(reason) = s.paused {
                out.push(Control::Pause(Pause {
                    stream_id: s.id,
                    reason,
                }));
            }
        }
        out
    }

    fn paused(&self) -> bool {
        self.streams.iter().any(|s| s.paused.is_some())
    }
}

struct Server {
    name: String,
    host_port: String,
    pool: WsPool,
    conns: BTreeMap<ConnHandle, ConnId>,
}

/// The stream service core. See the module docs.
pub struct ForkService {
    servers: Vec<Server>,
    conns: BTreeMap<ConnId, ConnRec>,
    sessions: HashMap<u32, Session>,
    by_guid: HashMap<String, u32>,
    by_stream: HashMap<u32, (u32, usize)>,
    next_call: u32,
    next_conn: u32,
    outputs: VecDeque<Output>,
    alarms: Alarms,
    history: ConnHistory,
    media: MediaCounters,
    forks_started: u64,
    forks_stopped: u64,
    forks_failed: u64,
    /// Cause of the close being handled, for `CallFailed` outputs it triggers.
    closing_failure: Option<ForkFailure>,
}

impl Default for ForkService {
    fn default() -> Self {
        Self::new()
    }
}

impl ForkService {
    /// An empty service.
    pub fn new() -> Self {
        Self {
            servers: Vec::new(),
            conns: BTreeMap::new(),
            sessions: HashMap::new(),
            by_guid: HashMap::new(),
            by_stream: HashMap::new(),
            next_call: 1,
            next_conn: 1,
            outputs: VecDeque::new(),
            alarms: Alarms::default(),
            history: ConnHistory::new(HISTORY_LEN),
            media: MediaCounters::default(),
            forks_started: 0,
            forks_stopped: 0,
            forks_failed: 0,
            closing_failure: None,
        }
    }

    /// Adds a speech server with its own pool; `host_port` is what `show .. server` matches.
    pub fn add_server(
        &mut self,
        name: &str,
        host_port: &str,
        config: PoolConfig,
        rng: Box<dyn JitterRng>,
    ) -> Result<ServerId, SessionError> {
        let pool = WsPool::new(config, rng)?;
        self.servers.push(Server {
            name: name.to_owned(),
            host_port: host_port.to_owned(),
            pool,
            conns: BTreeMap::new(),
        });
        Ok(ServerId(self.servers.len() as u32 - 1))
    }

    /// Starts forking a call. Its streams are announced once a connection is open.
    pub fn handle_fork_start(
        &mut self,
        now: Instant,
        req: ForkRequest,
    ) -> Result<(), SessionError> {
        if self.by_guid.contains_key(&req.call_guid) {
            return Err(SessionError::DuplicateCall(req.call_guid));
        }
        if req.streams.is_empty() {
            return Err(SessionError::NoStreams(req.call_guid));
        }
        let server = req.server;
        if self.servers.get(server.0 as usize).is_none() {
            return Err(SessionError::UnknownServer(server));
        }
        let key = self.next_call;
        self.next_call = self.next_call.wrapping_add(1).max(1);
        let call = CallHandle(key);
        let streams: Vec<StreamRec> = req
            .streams
            .iter()
            .map(|&(id, channel)| StreamRec {
                id,
                channel,
                codec: req.codec,
                paused: None,
                first: true,
                frames: 0,
                bytes: 0,
                dropped: 0,
            })
            .collect();
        for (i, s) in streams.iter().enumerate() {
            self.by_stream.insert(s.id, (key, i));
        }
        self.by_guid.insert(req.call_guid.clone(), key);
        self.sessions.insert(
            key,
            Session {
                req,
                call,
                streams,
                state: SessState::Waiting,
                started_once: false,
            },
        );
        self.forks_started += 1;
        let res = self.servers[server.0 as usize]
            .pool
            .handle_stream_wanted(now, call);
        self.drain_pool(now, server);
        res.map_err(SessionError::from)
    }

    /// Pauses both streams (hold, codec change, request): `pause` goes out now if connected,
    /// else right after the `start`s; audio is dropped until resumed.
    pub fn handle_fork_pause(
        &mut self,
        _now: Instant,
        call_guid: &str,
        reason: PauseReason,
    ) -> Result<(), SessionError> {
        let s = self.session_mut(call_guid)?;
        if s.paused() {
            return Err(SessionError::AlreadyPaused(call_guid.to_owned()));
        }
        let mut msgs = Vec::new();
        for st in &mut s.streams {
            st.paused = Some(reason);
            msgs.push(Control::Pause(Pause {
                stream_id: st.id,
                reason,
            }));
        }
        let live = live_conn(s.state);
        self.send_all(live, msgs);
        self.status(call_guid, ForkStatus::Paused, None, false);
        Ok(())
    }

    /// Resumes both streams in `codec` (which may be the other G.711 law; `None` keeps each
    /// stream's codec).
    pub fn handle_fork_resume(
        &mut self,
        _now: Instant,
        call_guid: &str,
        codec: Option<Codec>,
    ) -> Result<(), SessionError> {
        let s = self.session_mut(call_guid)?;
        if !s.paused() {
            return Err(SessionError::NotPaused(call_guid.to_owned()));
        }
        let mut msgs = Vec::new();
        for st in &mut s.streams {
            st.paused = None;
            st.codec = codec.unwrap_or(st.codec);
            st.first = true;
            msgs.push(Control::Resume(Resume {
                stream_id: st.id,
                codec: st.codec,
            }));
        }
        let live = live_conn(s.state);
        self.send_all(live, msgs);
        self.status(call_guid, ForkStatus::Resumed, None, false);
        Ok(())
    }

    /// Replaces the metadata (CUBE UPDATE: metadata only; the connection never changes).
    pub fn handle_fork_update(
        &mut self,
        _now: Instant,
        call_guid: &str,
        metadata: Map<String, Value>,
    ) -> Result<(), SessionError> {
        let s = self.session_mut(call_guid)?;
        s.req.metadata = metadata.clone();
        let msgs = s
            .streams
            .iter()
            .map(|st| {
                Control::Update(Update {
                    stream_id: st.id,
                    metadata: metadata.clone(),
                })
            })
            .collect();
        let live = live_conn(s.state);
        self.send_all(live, msgs);
        Ok(())
    }

    /// Ends the fork: `stop` for each announced stream, the call leaves its connection.
    /// Accepted for failed forks too (they only need forgetting).
    pub fn handle_fork_stop(
        &mut self,
        now: Instant,
        call_guid: &str,
        reason: StopReason,
    ) -> Result<(), SessionError> {
        let key = *self
            .by_guid
            .get(call_guid)
            .ok_or_else(|| SessionError::UnknownCall(call_guid.to_owned()))?;
        let Some(s) = self.sessions.remove(&key) else {
            return Err(SessionError::UnknownCall(call_guid.to_owned()));
        };
        self.by_guid.remove(call_guid);
        for st in &s.streams {
            self.by_stream.remove(&st.id);
        }
        let msgs = s
            .streams
            .iter()
            .map(|st| {
                Control::Stop(Stop {
                    stream_id: st.id,
                    reason,
                })
            })
            .collect();
        self.send_all(live_conn(s.state), msgs);
        if !matches!(s.state, SessState::Failed(_)) {
            let server = s.req.server;
            // The pool forgot calls it failed; anything else is released.
            let _ = self.servers[server.0 as usize]
                .pool
                .handle_call_released(now, s.call);
            self.drain_pool(now, server);
        }
        self.forks_stopped += 1;
        let error = (reason == StopReason::Request).then_some(ForkFailure::ForkingStopped);
        self.status(call_guid, ForkStatus::Stopped, error, false);
        Ok(())
    }

    /// Fires due timers of every pool. A spurious call is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.servers.len() {
            let due = self.servers[i]
                .pool
                .poll_timeout()
                .is_some_and(|t| t <= now);
            if due {
                self.servers[i].pool.handle_timeout(now);
                self.drain_pool(now, ServerId(i as u32));
            }
        }
    }

    /// Next deadline of any pool. Re-read after every input.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.servers
            .iter()
            .filter_map(|s| s.pool.poll_timeout())
            .min()
    }

    /// Next action. Drain until `None` after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn session_mut(&mut self, call_guid: &str) -> Result<&mut Session, SessionError> {
        let key = self
            .by_guid
            .get(call_guid)
            .ok_or_else(|| SessionError::UnknownCall(call_guid.to_owned()))?;
        let s = self
            .sessions
            .get_mut(key)
            .ok_or_else(|| SessionError::UnknownCall(call_guid.to_owned()))?;
        if let SessState::Failed(f) = s.state {
            return Err(SessionError::Failed(call_guid.to_owned(), f.as_str()));
        }
        Ok(s)
    }

    /// Queues control messages on a live connection (accounted in its backlog). Without a
    /// live connection nothing is sent: the `start`s sent on (re)connection carry the state.
    fn send_all(&mut self, conn: Option<ConnId>, msgs: Vec<Control>) {
        let Some(conn) = conn else { return };
        let Some(rec) = self.conns.get(&conn) else {
            return;
        };
        // Control is never dropped (ws_pool: losing one desynchronizes the server); the pool
        // learns the real queue length before the next audio admission.
        let _ = rec;
        for msg in msgs {
            self.outputs.push_back(Output::Send { conn, msg });
        }
    }
}

fn live_conn(state: SessState) -> Option<ConnId> {
    match state {
        SessState::Live(c) => Some(c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use std::time::Duration;

    #[test]
    fn pause_resume_update_stop_in_order_and_paused_audio_dropped() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
        let c = connect_id(&drain(&mut s));
        s.handle_connected(t0, c, ConnInfo::default()).expect("ok");
        drain(&mut s);
        s.handle_fork_pause(t0, "g1", PauseReason::Hold)
            .expect("ok");
        assert_eq!(
            s.handle_fork_pause(t0, "g1", PauseReason::Hold),
            Err(SessionError::AlreadyPaused("g1".into()))
        );
        assert_eq!(
            s.handle_audio(t0, 2, 176, |_| 0),
            AudioVerdict::Drop(DropReason::Paused)
        );
        s.handle_fork_resume(t0, "g1", Some(Codec::Pcma))
            .expect("ok");
        assert_eq!(
            s.handle_fork_resume(t0, "g1", Some(Codec::Pcma)),
            Err(SessionError::NotPaused("g1".into()))
        );
        assert_eq!(
            s.handle_audio(t0, 2, 176, |_| 0),
            AudioVerdict::Send {
                conn: c,
                first: true
            },
            "first frame after resume is flagged"
        );
        let mut md = Map::new();
        md.insert("agent".into(), Value::from("1042"));
        s.handle_fork_update(t0, "g1", md).expect("ok");
        s.handle_fork_stop(t0, "g1", StopReason::Request)
            .expect("ok");
        let outs = drain(&mut s);
        assert_eq!(
            sent(&outs),
            [
                "pause:1", "pause:2", "resume:1", "resume:2", "update:1", "update:2", "stop:1",
                "stop:2"
            ]
        );
        assert_eq!(
            statuses(&outs),
            [
                (ForkStatus::Paused, None),
                (ForkStatus::Resumed, None),
                (ForkStatus::Stopped, Some("Forking stopped"))
            ]
        );
        assert_eq!(s.media_counters().dropped_paused, 1);
        assert_eq!(
            s.handle_fork_stop(t0, "g1", StopReason::Request),
            Err(SessionError::UnknownCall("g1".into()))
        );
        // The idle connection closes after the idle timeout.
        s.handle_timeout(t0 + Duration::from_secs(1800));
        assert_eq!(
            drain(&mut s),
            [Output::Close {
                conn: c,
                why: CloseWhy::IdleTimeout
            }]
        );
        // ...and the history says why, although the pool already marked it Closing.
        s.handle_closed(t0 + Duration::from_secs(1800), 99, c, ConnFailure::Local)
            .expect("ok");
        let h = s.history();
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].reason, "closed locally due to idle-timeout expiry");
        assert!(s.conns_view(None).is_empty());
    }

    #[test]
    fn pause_before_connect_is_sent_after_start() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
        let c = connect_id(&drain(&mut s));
        s.handle_fork_pause(t0, "g1", PauseReason::CodecChange)
            .expect("ok");
        assert_eq!(sent(&drain(&mut s)), Vec::<String>::new());
        s.handle_connected(t0, c, ConnInfo::default()).expect("ok");
        assert_eq!(
            sent(&drain(&mut s)),
            ["start:1", "pause:1", "start:2", "pause:2"]
        );
    }

    #[test]
    fn restored_fork_announces_resumed_start() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        let mut r = req("g1", srv, 1);
        r.resumed = true;
        s.handle_fork_start(t0, r).expect("ok");
        let c = connect_id(&drain(&mut s));
        s.handle_connected(t0, c, ConnInfo::default()).expect("ok");
        let outs = drain(&mut s);
        assert!(outs.iter().any(|o| matches!(o,
            Output::Send { msg: Control::Start(st), .. } if st.resumed)));
    }
}
