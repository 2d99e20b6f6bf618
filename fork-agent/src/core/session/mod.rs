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
//!
//! This file holds the service's state, its ids and outputs; each concern lives in its own
//! module (all `impl ForkService` blocks over the same state):
//! - `streams`: per-stream sequencing of the fork requests (start, pause, resume, update,
//!   stop);
//! - `media`: admission of audio frames and DTMF;
//! - `connection`: connection policy, the bridge between the pools and the forks;
//! - `status`: fork status events and the reference error strings;
//! - `views`: `show stream-service` snapshots and statistics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};
use speech_proto::{Channel, Codec, Control, ServerViolation};

use crate::core::alarms::{Alarm, Alarms, ConnHistory, HISTORY_LEN};
use crate::core::IdMap;
use rand::RngCore;

use crate::core::ws_pool::{ConnHandle, PoolConfig, PoolError, WsPool};

mod connection;
mod media;
mod status;
mod streams;
#[cfg(test)]
mod testing;
mod views;

use connection::ConnRec;
pub use connection::{CloseWhy, ConnFailure, ConnInfo};
pub use media::{AudioVerdict, DropReason, MediaCounters};
pub use status::{ForkFailure, ForkStatus, StatusEvent};
use streams::{live_conn, SessState, Session};
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
    /// Log at warn: `server` broke the protocol `errors` times since it was last healthy and
    /// gets no connection attempt for `delay`; its forks wait.
    ServerBackoff {
        /// The server.
        server: ServerId,
        /// Hold-off.
        delay: Duration,
        /// Protocol errors since it was last healthy.
        errors: u32,
    },
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
    /// The party whose stream the server may talk back on (its playout is running).
    pub return_audio: Option<Channel>,
}

struct Server {
    name: String,
    host_port: String,
    pool: WsPool,
    conns: BTreeMap<ConnHandle, ConnId>,
    awaits_acceptance: bool,
}

/// The stream service core. See the module docs.
pub struct ForkService {
    servers: BTreeMap<ServerId, Server>,
    next_server: u32,
    conns: BTreeMap<ConnId, ConnRec>,
    sessions: IdMap<u32, Session>,
    by_guid: HashMap<String, u32>,
    by_stream: IdMap<u32, (u32, usize)>,
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
    /// Connections closed for a protocol error, by what the server sent.
    protocol_violations: BTreeMap<ServerViolation, u64>,
    /// The reader → service queue dropped packets in the last batch (media.rs).
    media_queue_overflowing: bool,
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
            servers: BTreeMap::new(),
            next_server: 0,
            conns: BTreeMap::new(),
            sessions: IdMap::default(),
            by_guid: HashMap::new(),
            by_stream: IdMap::default(),
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
            protocol_violations: BTreeMap::new(),
            media_queue_overflowing: false,
        }
    }

    /// Adds a speech server (a configured one, or a destination a fork request named) with
    /// its own pool; `host_port` is what `show .. server` matches. `awaits_acceptance`: its
    /// dialect confirms a session before the fork counts as started
    /// (`speech_proto::Profile::awaits_acceptance`), reported with
    /// [`ForkService::handle_accepted`].
    pub fn add_server(
        &mut self,
        name: &str,
        host_port: &str,
        config: PoolConfig,
        awaits_acceptance: bool,
        rng: Box<dyn RngCore + Send>,
    ) -> Result<ServerId, SessionError> {
        let pool = WsPool::new(config, rng)?;
        let id = ServerId(self.next_server);
        self.next_server = self.next_server.wrapping_add(1);
        self.servers.insert(
            id,
            Server {
                name: name.to_owned(),
                host_port: host_port.to_owned(),
                pool,
                conns: BTreeMap::new(),
                awaits_acceptance,
            },
        );
        Ok(id)
    }

    /// Drops the pool of `server` if nothing uses it any more (no fork, no connection), and
    /// says whether it did. The shell drops per-request destinations this way, so a controller
    /// naming a new token per call cannot grow the table for ever.
    pub fn remove_server_if_idle(&mut self, server: ServerId) -> bool {
        let idle = self.servers.get(&server).is_some_and(|s| s.pool.is_empty())
            && !self.sessions.values().any(|s| s.req.server == server);
        if idle {
            self.servers.remove(&server);
        }
        idle
    }

    /// Renames `server` (views and logs): a pool a reload retired must not share its name
    /// with the pool that replaced it.
    pub fn rename_server(&mut self, server: ServerId, name: String) {
        if let Some(s) = self.servers.get_mut(&server) {
            s.name = name;
        }
    }

    /// Fires due timers of every pool. A spurious call is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<ServerId> = self
            .servers
            .iter()
            .filter(|(_, s)| s.pool.poll_timeout().is_some_and(|t| t <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            if let Some(s) = self.servers.get_mut(&id) {
                s.pool.handle_timeout(now);
            }
            self.drain_pool(now, id);
        }
    }

    /// Next deadline of any pool. Re-read after every input.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.servers
            .values()
            .filter_map(|s| s.pool.poll_timeout())
            .min()
    }

    fn pool(&mut self, id: ServerId) -> Result<&mut WsPool, SessionError> {
        self.servers
            .get_mut(&id)
            .map(|s| &mut s.pool)
            .ok_or(SessionError::UnknownServer(id))
    }

    /// The name `id` is shown under (`#N` once it is gone).
    pub fn server_name(&self, id: ServerId) -> String {
        self.servers
            .get(&id)
            .map_or_else(|| format!("#{}", id.0), |s| s.name.clone())
    }

    /// Next action. Drain until `None` after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }
}
