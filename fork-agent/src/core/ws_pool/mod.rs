//! WebSocket connection pool policy for ONE speech server (sans-IO, pure policy).
//!
//! Role: decide which WebSocket connection carries each forked call, when to open, close and
//! reconnect connections, and whether a frame may be queued on a connection. It reproduces
//! CUBE's load balancing (reference: cube-websocket-media-forking.txt, "Load Balancing"):
//! a connection carries up to `calls_threshold` calls (1–20, default 3), a new call goes to
//! the least busy connection, a new connection opens only when all are full, and a
//! connection with no calls closes after `idle_timeout` (default 30 min).
//!
//! Inputs (each takes `now`): [`WsPool::handle_stream_wanted`], [`WsPool::handle_call_released`],
//! [`WsPool::handle_connected`], [`WsPool::handle_closed`], [`WsPool::handle_send_backlog`],
//! [`WsPool::admit`], [`WsPool::handle_timeout`].
//! Outputs: [`WsPool::poll_output`] ([`PoolOutput`]) and [`WsPool::poll_timeout`].
//! Call order for the shell: feed one input, drain `poll_output()` until `None`, re-arm the
//! timer from `poll_timeout()`, call `handle_timeout(now)` when it fires.
//!
//! Policy details:
//! - While a connection is being opened (or waits to reconnect), new calls wait on it as long
//!   as it has room, instead of opening one connection per call.
//! - [`PoolOutput::Assign`] means "the connection is open: send `start` for this call's
//!   streams now". A waiting call gets it when its connection opens.
//! - When a connection dies, each of its calls moves to another open connection with room
//!   ([`PoolOutput::Resend`], or `Assign` if it never started); the rest stay on the dead
//!   connection, which reconnects after an exponential backoff with jitter and then emits
//!   `Resend` for them. `Resend` means: re-send `start` with `"resumed": true` (same stream
//!   ids) for each live stream of the call, then `pause` again if the stream is paused
//!   (docs/speech-protocol.md, "Reconnect and resume").
//! - After `max_connect_attempts` consecutive failed connection attempts, the waiting calls
//!   get [`PoolOutput::CallFailed`] (CUBE status "Connection failed", or "Authentication token
//!   invalid" for an HTTP 401).
//! - Send queue, per connection: the shell asks [`WsPool::admit`] before queueing a frame and
//!   reports the real queue length with [`WsPool::handle_send_backlog`] as its writer drains.
//!   Control frames are always admitted (they are few and losing one desynchronizes the
//!   server's stream state). Once `send_queue_limit` frames are queued, each new audio frame
//!   takes the place of the oldest queued one ([`Admit::SendDropOldest`], drop-oldest): a
//!   server that catches up gets the most recent audio, which is what live transcription
//!   needs, and sees a sequence gap where frames were lost, never a growing delay. Every drop
//!   is counted per connection and in total; the first drop after the queue was last below
//!   the limit starts an overflow episode (`episode: true`), which the service alarms once.
//!   A queue that stays full for `stall_timeout` closes the connection
//!   ([`CloseReason::Stalled`]) so its calls move or reconnect: a stalled server must not keep
//!   calls dark forever, and it never delays anyone else (architecture.md MUST).
//! - Protocol errors (the server sent a frame docs/speech-protocol.md does not allow it to
//!   send: [`Disconnect::ProtocolError`]) are counted for the whole server, not per connection:
//!   after `protocol_error_limit` of them with no healthy period in between, the server is
//!   held off ([`PoolOutput::ProtocolBackoff`]): no connection to it is attempted before a
//!   delay that doubles with each further hold-off (`protocol_backoff_initial` up to
//!   `protocol_backoff_max`, with jitter). While it has not been healthy since, every further
//!   protocol error holds it off again. Calls keep waiting on their connections (they are not
//!   failed: a server that behaves again carries them again), and a new call during the
//!   hold-off waits for its end instead of opening a connection. A healthy period is
//!   `healthy_after` with a connection open and no protocol error on any connection; it clears
//!   the count and the hold-off level. Without this a server that answers the upgrade and then
//!   sends garbage is reconnected to for every call, for ever, since each upgrade succeeds.
//!
//! No clock, no sockets, no logging: randomness for the jitter comes from an injected
//! [`rand::RngCore`] (the shell passes an OS-seeded generator, tests a seeded one), as in
//! turn-core. Every timer is tested by stepping a fake `now` (tests in `tests.rs`).
//!
//! Size: about 1,000 lines, half of them this policy's documentation, kept in one file on
//! purpose: the connection states, the timers and the rehoming rules form one state machine
//! whose invariants (a call is on exactly one slot; a slot's timers match its state) are
//! checked in one place.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use rand::RngCore;

/// Smallest allowed `calls_threshold` (CUBE `connection calls-threshold` range 1–20).
pub const MIN_CALLS_THRESHOLD: u32 = 1;
/// Largest allowed `calls_threshold`.
pub const MAX_CALLS_THRESHOLD: u32 = 20;
/// CUBE default and recommended calls per connection.
pub const DEFAULT_CALLS_THRESHOLD: u32 = 3;
/// CUBE default `connection idle-timeout` (30 minutes).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Opaque id of one WebSocket connection (kept across reconnects of that slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnHandle(pub u32);

/// Opaque id of one forked call (both its streams travel on the same connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallHandle(pub u32);

/// Pool tuning. [`PoolConfig::default`] gives the CUBE defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Calls per connection, 1–20 (default 3).
    pub calls_threshold: u32,
    /// Close a connection that has carried no call for this long (default 30 min).
    pub idle_timeout: Duration,
    /// Give up on a connection attempt (TCP + TLS + upgrade) after this long (default 10 s).
    pub connect_timeout: Duration,
    /// First reconnect delay before jitter (default 500 ms).
    pub backoff_initial: Duration,
    /// Reconnect delay cap before jitter (default 30 s).
    pub backoff_max: Duration,
    /// A connection that stayed open this long resets the backoff (default 10 s), so a server
    /// that accepts and immediately drops does not cause a tight reconnect loop.
    pub stable_after: Duration,
    /// Consecutive failed connection attempts before waiting calls fail (default 5).
    pub max_connect_attempts: u32,
    /// Audio frames queued per connection before the oldest is dropped (default 1000: 3.3 s of
    /// 20 ms audio for 3 calls × 2 streams).
    pub send_queue_limit: usize,
    /// Close a connection whose queue stays at the limit this long (default 10 s).
    pub stall_timeout: Duration,
    /// Protocol errors, with no healthy period in between, before the server is held off
    /// (default 3).
    pub protocol_error_limit: u32,
    /// First hold-off before jitter (default 10 s); doubled per further hold-off.
    pub protocol_backoff_initial: Duration,
    /// Hold-off cap before jitter (default 5 min).
    pub protocol_backoff_max: Duration,
    /// A connection open this long with no protocol error anywhere clears the protocol error
    /// count and the hold-off level (default 60 s).
    pub healthy_after: Duration,
    /// One call per connection, ever: the connection closes when its call is released and is
    /// never given another (dialects such as Twilio Media Streams name one call per socket).
    pub single_use: bool,
}

/// Default [`PoolConfig::protocol_error_limit`]: one error may be a server bug hit once;
/// three in a row without a healthy minute means the server does not speak the protocol.
pub const DEFAULT_PROTOCOL_ERROR_LIMIT: u32 = 3;
/// Largest allowed [`PoolConfig::protocol_error_limit`].
pub const MAX_PROTOCOL_ERROR_LIMIT: u32 = 1000;

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            calls_threshold: DEFAULT_CALLS_THRESHOLD,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
            max_connect_attempts: 5,
            send_queue_limit: 1000,
            stall_timeout: Duration::from_secs(10),
            protocol_error_limit: DEFAULT_PROTOCOL_ERROR_LIMIT,
            protocol_backoff_initial: Duration::from_secs(10),
            protocol_backoff_max: Duration::from_secs(5 * 60),
            healthy_after: Duration::from_secs(60),
            single_use: false,
        }
    }
}

impl PoolConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), PoolError> {
        let bad = |field: &'static str, reason: &'static str| {
            Err(PoolError::InvalidConfig { field, reason })
        };
        if !(MIN_CALLS_THRESHOLD..=MAX_CALLS_THRESHOLD).contains(&self.calls_threshold) {
            return bad("calls_threshold", "must be between 1 and 20");
        }
        if self.idle_timeout.is_zero() {
            return bad("idle_timeout", "must be greater than zero");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be greater than zero");
        }
        if self.backoff_initial.is_zero() {
            return bad("backoff_initial", "must be greater than zero");
        }
        if self.backoff_max < self.backoff_initial {
            return bad("backoff_max", "must not be smaller than backoff_initial");
        }
        if self.max_connect_attempts == 0 {
            return bad("max_connect_attempts", "must be at least 1");
        }
        if self.send_queue_limit == 0 {
            return bad("send_queue_limit", "must be at least 1");
        }
        if self.stall_timeout.is_zero() {
            return bad("stall_timeout", "must be greater than zero");
        }
        if !(1..=MAX_PROTOCOL_ERROR_LIMIT).contains(&self.protocol_error_limit) {
            return bad("protocol_error_limit", "must be between 1 and 1000");
        }
        if self.protocol_backoff_initial.is_zero() {
            return bad("protocol_backoff_initial", "must be greater than zero");
        }
        if self.protocol_backoff_max < self.protocol_backoff_initial {
            return bad(
                "protocol_backoff_max",
                "must not be smaller than protocol_backoff_initial",
            );
        }
        if self.healthy_after.is_zero() {
            return bad("healthy_after", "must be greater than zero");
        }
        Ok(())
    }
}

/// Misuse of the pool API or a bad configuration (protocol failures are outputs, not errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// A [`PoolConfig`] field is out of range.
    InvalidConfig {
        /// Name of the field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `handle_stream_wanted` for a call the pool already holds.
    CallAlreadyWanted(CallHandle),
    /// A call handle the pool does not know (never wanted, released, or failed).
    UnknownCall(CallHandle),
    /// A connection handle the pool does not know (never emitted, or already removed).
    UnknownConn(ConnHandle),
    /// `handle_connected` for a connection that is not being opened.
    NotConnecting(ConnHandle),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::InvalidConfig { field, reason } => {
                write!(f, "invalid pool configuration: {field} {reason}")
            }
            PoolError::CallAlreadyWanted(c) => write!(f, "call {} is already in the pool", c.0),
            PoolError::UnknownCall(c) => write!(f, "call {} is not in the pool", c.0),
            PoolError::UnknownConn(c) => write!(f, "connection {} is not in the pool", c.0),
            PoolError::NotConnecting(c) => {
                write!(f, "connection {} was not being connected", c.0)
            }
        }
    }
}

impl std::error::Error for PoolError {}

/// How a connection went away, as seen by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// TCP connect, DNS or TLS failed before the upgrade (CUBE "TCP failures").
    ConnectFailed,
    /// The upgrade got an HTTP answer other than 101 (CUBE "HTTP failures"; 401 = token).
    HandshakeRejected {
        /// HTTP status received.
        status: u16,
    },
    /// The server sent a Close frame (CUBE "Remote WebSocket closure").
    RemoteClose {
        /// Close status code (RFC 6455 §7.4).
        code: u16,
    },
    /// The TCP connection broke without a Close (CUBE "TCP closure").
    TransportError,
    /// The server sent a frame the speech protocol does not allow it to send (binary, garbage
    /// text, oversize, a bad Close, broken framing); the shell closed the connection.
    ProtocolError,
    /// The shell closed it after a [`PoolOutput::Close`] (or an operator clear).
    LocalClose,
}

impl Disconnect {
    fn is_connect_failure(self) -> bool {
        matches!(
            self,
            Disconnect::ConnectFailed | Disconnect::HandshakeRejected { .. }
        )
    }
}

/// Why the pool asks the shell to close a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No call for `idle_timeout` (CUBE "closed locally due to idle-timeout expiry").
    IdleTimeout,
    /// The send queue stayed full for `stall_timeout`.
    Stalled,
    /// The connection attempt took longer than `connect_timeout`: abort it.
    ConnectTimeout,
    /// `single_use`: its call ended, and the dialect allows one call per connection.
    CallEnded,
}

/// Something the shell must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolOutput {
    /// Open (or re-open) a WebSocket for `conn`; report `handle_connected` or `handle_closed`.
    Connect {
        /// Connection slot to open.
        conn: ConnHandle,
    },
    /// `conn` is open: send `start` for the call's streams on it now.
    Assign {
        /// The call.
        call: CallHandle,
        /// Its connection.
        conn: ConnHandle,
    },
    /// Close `conn` (or abort the attempt), then report `handle_closed(.., LocalClose)`.
    Close {
        /// Connection to close.
        conn: ConnHandle,
        /// Why.
        reason: CloseReason,
    },
    /// The call was moved to `conn` (reconnect or rehoming): re-send `start` with
    /// `"resumed": true` for its live streams, and `pause` for paused ones.
    Resend {
        /// The call.
        call: CallHandle,
        /// Its new connection.
        conn: ConnHandle,
    },
    /// The pool gave up connecting for this call and forgot it; report the status to the
    /// controller ("Connection failed", or "Authentication token invalid" after a 401).
    CallFailed {
        /// The call.
        call: CallHandle,
        /// The last connection failure.
        last: Disconnect,
    },
    /// Too many protocol errors: no connection to this server is attempted for `delay`
    /// (log it; the calls wait).
    ProtocolBackoff {
        /// Hold-off chosen (jitter included).
        delay: Duration,
        /// Protocol errors since the server was last healthy.
        errors: u32,
    },
}

/// Whether the shell may queue a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Queue it.
    Send,
    /// The queue is full: queue it and drop the oldest queued audio frame (already counted;
    /// the queue length stays at the limit).
    SendDropOldest {
        /// The first drop since the queue was last below the limit (alarm once per episode).
        episode: bool,
    },
    /// Drop it (already counted): the connection is not open.
    Drop,
}

/// Kind of frame offered to [`WsPool::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Text control message: never dropped while the connection is open.
    Control,
    /// Binary audio frame: replaces the oldest queued audio frame when the queue is full.
    Audio,
}

/// Life-cycle state of a connection slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// A `Connect` was emitted and no outcome is known yet.
    Connecting,
    /// Upgraded and usable.
    Open,
    /// A `Close` was emitted; waiting for `handle_closed`.
    Closing,
    /// Failed; waiting for the reconnect timer.
    Backoff,
}

/// Per-connection timers (one table per connection, next deadline = minimum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Abort a connection attempt.
    Connect = 0,
    /// Retry after backoff.
    Reconnect = 1,
    /// Close an unused open connection.
    Idle = 2,
    /// Close a connection whose queue stayed full.
    Stall = 3,
    /// An open connection saw `healthy_after` with no protocol error: clear the count.
    Healthy = 4,
}

const TIMER_COUNT: usize = 5;
const TIMERS: [Timer; TIMER_COUNT] = [
    Timer::Connect,
    Timer::Reconnect,
    Timer::Idle,
    Timer::Stall,
    Timer::Healthy,
];

#[derive(Debug)]
struct Conn {
    state: ConnState,
    calls: BTreeSet<CallHandle>,
    timers: [Option<Instant>; TIMER_COUNT],
    /// Frames the shell holds for this connection (admitted minus drained).
    backlog: usize,
    audio_dropped: u64,
    /// Audio was dropped since the backlog was last below the limit.
    overflowing: bool,
    opened_at: Option<Instant>,
    /// Consecutive failed attempts (reset when an attempt succeeds).
    connect_failures: u32,
    /// Backoff exponent (reset when a connection was stable).
    backoff_level: u32,
    /// Set while Closing: why we asked.
    closing: Option<CloseReason>,
    last_failure: Option<Disconnect>,
}

impl Conn {
    fn new(state: ConnState) -> Self {
        Self {
            state,
            calls: BTreeSet::new(),
            timers: [None; TIMER_COUNT],
            backlog: 0,
            audio_dropped: 0,
            overflowing: false,
            opened_at: None,
            connect_failures: 0,
            backoff_level: 0,
            closing: None,
            last_failure: None,
        }
    }

    fn set(&mut self, t: Timer, at: Option<Instant>) {
        self.timers[t as usize] = at;
    }

    fn next_deadline(&self) -> Option<(Instant, Timer)> {
        TIMERS
            .iter()
            .filter_map(|&t| self.timers[t as usize].map(|at| (at, t)))
            .min_by_key(|&(at, _)| at)
    }
}

#[derive(Debug, Clone, Copy)]
struct Call {
    conn: ConnHandle,
    /// `Assign` was emitted once: later moves are `Resend`.
    started: bool,
}

/// Statistics of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnStats {
    /// The connection.
    pub conn: ConnHandle,
    /// Its state.
    pub state: ConnState,
    /// Calls assigned to it (waiting ones included).
    pub calls: usize,
    /// Frames the shell holds for it.
    pub backlog: usize,
    /// Audio frames dropped on it.
    pub audio_dropped: u64,
}

/// Snapshot of the pool (for `show` commands and Prometheus).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Calls held (started or waiting).
    pub calls: usize,
    /// Calls on a connection that is not open.
    pub calls_waiting: usize,
    /// Connection attempts started (`Connect` outputs).
    pub connects: u64,
    /// Attempts that failed before the upgrade completed (CUBE TCP + HTTP failures).
    pub connect_failures: u64,
    /// Open connections closed by the server (CUBE "Remote WebSocket closures").
    pub remote_closes: u64,
    /// Open connections lost without a Close (CUBE "TCP closures").
    pub transport_closes: u64,
    /// Connections closed for idleness.
    pub idle_closes: u64,
    /// Connections closed because their queue stalled.
    pub stall_closes: u64,
    /// Connections closed because the server broke the protocol.
    pub protocol_errors: u64,
    /// Times the server was held off for protocol errors.
    pub protocol_backoffs: u64,
    /// Protocol errors since the server was last healthy (state, not cleared by `clear_stats`).
    pub protocol_error_streak: u32,
    /// Calls failed after `max_connect_attempts`.
    pub calls_failed: u64,
    /// Audio frames dropped, all connections (including ones offered to a closed connection).
    pub audio_dropped: u64,
    /// Per connection, by handle.
    pub conns: Vec<ConnStats>,
}

/// The pool for one speech server.
pub struct WsPool {
    config: PoolConfig,
    rng: Box<dyn RngCore + Send>,
    conns: BTreeMap<ConnHandle, Conn>,
    calls: BTreeMap<CallHandle, Call>,
    next_conn: u32,
    outputs: VecDeque<PoolOutput>,
    stats: PoolStats,
    /// Protocol errors since the server was last healthy.
    protocol_errors: u32,
    /// Hold-offs since then (exponent of the next one).
    hold_level: u32,
    /// No connection attempt before this instant (protocol hold-off).
    hold_until: Option<Instant>,
}

impl fmt::Debug for WsPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsPool")
            .field("conns", &self.conns)
            .field("calls", &self.calls)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

impl WsPool {
    /// A pool with no connections. Fails if `config` is invalid.
    pub fn new(config: PoolConfig, rng: Box<dyn RngCore + Send>) -> Result<Self, PoolError> {
        config.validate()?;
        Ok(Self {
            config,
            rng,
            conns: BTreeMap::new(),
            calls: BTreeMap::new(),
            next_conn: 1,
            outputs: VecDeque::new(),
            stats: PoolStats::default(),
            protocol_errors: 0,
            hold_level: 0,
            hold_until: None,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// A call wants its streams forked to this server. Emits `Assign` (an open connection has
    /// room), nothing (it waits on a pending connection), or `Connect` (all are full).
    pub fn handle_stream_wanted(
        &mut self,
        now: Instant,
        call: CallHandle,
    ) -> Result<(), PoolError> {
        if self.calls.contains_key(&call) {
            return Err(PoolError::CallAlreadyWanted(call));
        }
        if let Some(conn) = self.least_busy(|s| s == ConnState::Open, None) {
            self.bind(now, call, conn, false);
            return Ok(());
        }
        let pending = |s| s == ConnState::Connecting || s == ConnState::Backoff;
        let conn = match self.least_busy(pending, None) {
            Some(conn) => conn,
            None => self.open_new(now),
        };
        self.calls.insert(
            call,
            Call {
                conn,
                started: false,
            },
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            c.calls.insert(call);
        }
        Ok(())
    }

    /// The call ended (or stopped forking). Its connection goes idle when it was the last.
    pub fn handle_call_released(
        &mut self,
        now: Instant,
        call: CallHandle,
    ) -> Result<(), PoolError> {
        let Some(entry) = self.calls.remove(&call) else {
            return Err(PoolError::UnknownCall(call));
        };
        let Some(c) = self.conns.get_mut(&entry.conn) else {
            return Ok(());
        };
        c.calls.remove(&call);
        if c.calls.is_empty() && self.config.single_use {
            match c.state {
                // Done with its one call: close (its queued frames go first) or abort.
                ConnState::Open | ConnState::Connecting => {
                    self.ask_close(entry.conn, CloseReason::CallEnded)
                }
                ConnState::Backoff => {
                    self.conns.remove(&entry.conn);
                }
                ConnState::Closing => {}
            }
        } else if c.calls.is_empty() {
            match c.state {
                ConnState::Open => c.set(Timer::Idle, Some(now + self.config.idle_timeout)),
                // Nobody needs the reconnect any more.
                ConnState::Backoff => {
                    self.conns.remove(&entry.conn);
                }
                ConnState::Connecting | ConnState::Closing => {}
            }
        }
        Ok(())
    }

    /// No connection and no call: a pool of a per-request destination may be dropped.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty() && self.calls.is_empty()
    }

    /// The upgrade of `conn` succeeded. Waiting calls get `Assign` (first time) or `Resend`.
    pub fn handle_connected(&mut self, now: Instant, conn: ConnHandle) -> Result<(), PoolError> {
        let idle_timeout = self.config.idle_timeout;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Err(PoolError::UnknownConn(conn));
        };
        match c.state {
            ConnState::Connecting => {}
            // We already asked to abort it (connect timeout): handle_closed follows.
            ConnState::Closing => return Ok(()),
            ConnState::Open | ConnState::Backoff => return Err(PoolError::NotConnecting(conn)),
        }
        c.state = ConnState::Open;
        c.opened_at = Some(now);
        c.connect_failures = 0;
        c.last_failure = None;
        c.backlog = 0;
        c.set(Timer::Connect, None);
        if c.calls.is_empty() {
            c.set(Timer::Idle, Some(now + idle_timeout));
        }
        if self.protocol_errors > 0 || self.hold_level > 0 {
            c.set(Timer::Healthy, Some(now + self.config.healthy_after));
        }
        let waiting: Vec<CallHandle> = c.calls.iter().copied().collect();
        for call in waiting {
            if let Some(entry) = self.calls.get_mut(&call) {
                self.outputs.push_back(if entry.started {
                    PoolOutput::Resend { call, conn }
                } else {
                    PoolOutput::Assign { call, conn }
                });
                entry.started = true;
            }
        }
        Ok(())
    }

    /// `conn` is gone (failed attempt, remote close, transport error, or our own close).
    /// Its calls move to other open connections with room; the rest wait for a reconnect.
    pub fn handle_closed(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        reason: Disconnect,
    ) -> Result<(), PoolError> {
        if !self.conns.contains_key(&conn) {
            return Err(PoolError::UnknownConn(conn));
        }
        if reason == Disconnect::ProtocolError {
            self.protocol_error(now);
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return Err(PoolError::UnknownConn(conn));
        };
        let was = c.state;
        let asked = c.closing.take();
        // What kind of end this was, for the counters and the retry decision.
        let connect_failure = was == ConnState::Connecting
            || reason.is_connect_failure()
            || asked == Some(CloseReason::ConnectTimeout);
        if connect_failure {
            self.stats.connect_failures += 1;
        } else {
            match (asked, reason) {
                (Some(CloseReason::IdleTimeout), _) => self.stats.idle_closes += 1,
                (Some(CloseReason::Stalled), _) => self.stats.stall_closes += 1,
                (_, Disconnect::RemoteClose { .. }) => self.stats.remote_closes += 1,
                (_, Disconnect::TransportError) => self.stats.transport_closes += 1,
                (_, Disconnect::ProtocolError) => self.stats.protocol_errors += 1,
                _ => {}
            }
        }
        c.state = ConnState::Backoff;
        c.timers = [None; TIMER_COUNT];
        c.backlog = 0;
        if was == ConnState::Open
            && c.opened_at
                .is_some_and(|at| now.saturating_duration_since(at) >= self.config.stable_after)
        {
            c.backoff_level = 0;
        }
        c.opened_at = None;
        if connect_failure {
            c.connect_failures += 1;
            c.last_failure = Some(reason);
        }

        // Rehome calls onto other open connections with room, least busy first.
        let calls: Vec<CallHandle> = c.calls.iter().copied().collect();
        for call in calls {
            let Some(target) = self.least_busy(|s| s == ConnState::Open, Some(conn)) else {
                break;
            };
            if let Some(c) = self.conns.get_mut(&conn) {
                c.calls.remove(&call);
            }
            self.bind(now, call, target, true);
        }

        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if c.calls.is_empty() {
            self.conns.remove(&conn);
            return Ok(());
        }
        if c.connect_failures >= self.config.max_connect_attempts {
            let last = c.last_failure.unwrap_or(reason);
            let failed: Vec<CallHandle> = c.calls.iter().copied().collect();
            self.conns.remove(&conn);
            for call in failed {
                self.calls.remove(&call);
                self.stats.calls_failed += 1;
                self.outputs
                    .push_back(PoolOutput::CallFailed { call, last });
            }
            return Ok(());
        }
        c.backoff_level = c.backoff_level.saturating_add(1);
        let delay = backoff_delay(
            self.config.backoff_initial,
            self.config.backoff_max,
            c.backoff_level,
            self.rng.as_mut(),
        );
        let at = (now + delay).max(self.hold_until.unwrap_or(now));
        c.set(Timer::Reconnect, Some(at));
        Ok(())
    }

    /// Counts a protocol error of the server and holds it off once there were
    /// `protocol_error_limit` of them since it was last healthy. Every open connection's
    /// healthy period starts again.
    fn protocol_error(&mut self, now: Instant) {
        self.protocol_errors = self.protocol_errors.saturating_add(1);
        let healthy_at = now + self.config.healthy_after;
        for c in self.conns.values_mut() {
            if c.state == ConnState::Open {
                c.set(Timer::Healthy, Some(healthy_at));
            }
        }
        if self.protocol_errors < self.config.protocol_error_limit {
            return;
        }
        self.hold_level = self.hold_level.saturating_add(1);
        let delay = backoff_delay(
            self.config.protocol_backoff_initial,
            self.config.protocol_backoff_max,
            self.hold_level,
            self.rng.as_mut(),
        );
        let until = now + delay;
        self.hold_until = Some(until);
        self.stats.protocol_backoffs += 1;
        // Slots already waiting to reconnect wait for the end of the hold-off too.
        for c in self.conns.values_mut() {
            if let Some(at) = c.timers[Timer::Reconnect as usize] {
                c.set(Timer::Reconnect, Some(at.max(until)));
            }
        }
        self.outputs.push_back(PoolOutput::ProtocolBackoff {
            delay,
            errors: self.protocol_errors,
        });
    }

    /// The server behaved for a healthy period: protocol errors are forgotten.
    fn healthy(&mut self) {
        self.protocol_errors = 0;
        self.hold_level = 0;
        for c in self.conns.values_mut() {
            c.set(Timer::Healthy, None);
        }
    }

    /// The shell's send queue for `conn` now holds `len` frames (report after draining).
    pub fn handle_send_backlog(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        len: usize,
    ) -> Result<(), PoolError> {
        let limit = self.config.send_queue_limit;
        let stall = self.config.stall_timeout;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Err(PoolError::UnknownConn(conn));
        };
        c.backlog = len;
        if len < limit {
            c.overflowing = false;
        }
        update_stall(c, now, limit, stall);
        Ok(())
    }

    /// May the shell queue one frame of `kind` on `conn`? Audio for a connection that is not
    /// open is dropped and counted; audio beyond `send_queue_limit` replaces the oldest queued
    /// audio (counted); control is always admitted on an open connection.
    pub fn admit(&mut self, now: Instant, conn: ConnHandle, kind: FrameKind) -> Admit {
        let limit = self.config.send_queue_limit;
        let stall = self.config.stall_timeout;
        let open = self
            .conns
            .get_mut(&conn)
            .filter(|c| c.state == ConnState::Open);
        let Some(c) = open else {
            if kind == FrameKind::Audio {
                self.stats.audio_dropped += 1;
            }
            return Admit::Drop;
        };
        if kind == FrameKind::Audio && c.backlog >= limit {
            c.audio_dropped += 1;
            self.stats.audio_dropped += 1;
            let episode = !std::mem::replace(&mut c.overflowing, true);
            update_stall(c, now, limit, stall);
            return Admit::SendDropOldest { episode };
        }
        c.backlog += 1;
        update_stall(c, now, limit, stall);
        Admit::Send
    }

    /// Fires every due timer. A spurious call is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<(ConnHandle, Timer)> = self
            .conns
            .iter()
            .flat_map(|(&h, c)| {
                TIMERS
                    .iter()
                    .filter(move |&&t| c.timers[t as usize].is_some_and(|at| at <= now))
                    .map(move |&t| (h, t))
            })
            .collect();
        for (conn, timer) in due {
            let connect_timeout = self.config.connect_timeout;
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            c.set(timer, None);
            match (timer, c.state) {
                (Timer::Reconnect, ConnState::Backoff) => {
                    c.state = ConnState::Connecting;
                    c.set(Timer::Connect, Some(now + connect_timeout));
                    self.stats.connects += 1;
                    self.outputs.push_back(PoolOutput::Connect { conn });
                }
                (Timer::Connect, ConnState::Connecting) => {
                    self.ask_close(conn, CloseReason::ConnectTimeout);
                }
                (Timer::Idle, ConnState::Open) if c.calls.is_empty() => {
                    self.ask_close(conn, CloseReason::IdleTimeout);
                }
                (Timer::Stall, ConnState::Open) => {
                    self.ask_close(conn, CloseReason::Stalled);
                }
                (Timer::Healthy, ConnState::Open) => self.healthy(),
                // A timer left over from an earlier state: nothing to do.
                _ => {}
            }
        }
    }

    /// Next deadline, if any timer is armed. Re-read after every input.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(|c| c.next_deadline().map(|(at, _)| at))
            .min()
    }

    /// Which timer is next and for which connection (debugging aid).
    pub fn timeout_reason(&self) -> Option<(ConnHandle, &'static str)> {
        self.conns
            .iter()
            .filter_map(|(&h, c)| c.next_deadline().map(|(at, t)| (at, h, t)))
            .min_by_key(|&(at, _, _)| at)
            .map(|(_, h, t)| {
                let name = match t {
                    Timer::Connect => "connect",
                    Timer::Reconnect => "reconnect",
                    Timer::Idle => "idle",
                    Timer::Stall => "stall",
                    Timer::Healthy => "healthy",
                };
                (h, name)
            })
    }

    /// Next action for the shell. Drain until `None` after every `handle_*` call and after
    /// `handle_timeout`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<PoolOutput> {
        self.outputs.pop_front()
    }

    /// Connection currently holding `call`.
    pub fn conn_of(&self, call: CallHandle) -> Option<ConnHandle> {
        self.calls.get(&call).map(|c| c.conn)
    }

    /// Counters and per-connection state.
    pub fn stats(&self) -> PoolStats {
        let mut s = self.stats.clone();
        s.protocol_error_streak = self.protocol_errors;
        s.calls = self.calls.len();
        s.calls_waiting = self
            .calls
            .values()
            .filter(|c| {
                self.conns
                    .get(&c.conn)
                    .is_none_or(|conn| conn.state != ConnState::Open)
            })
            .count();
        s.conns = self
            .conns
            .iter()
            .map(|(&conn, c)| ConnStats {
                conn,
                state: c.state,
                calls: c.calls.len(),
                backlog: c.backlog,
                audio_dropped: c.audio_dropped,
            })
            .collect();
        s
    }

    /// Zeroes the counters (`clear stream-service statistics`); state and calls are kept.
    pub fn clear_stats(&mut self) {
        self.stats = PoolStats::default();
        for c in self.conns.values_mut() {
            c.audio_dropped = 0;
        }
    }

    fn ask_close(&mut self, conn: ConnHandle, reason: CloseReason) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Closing;
            c.closing = Some(reason);
            c.timers = [None; TIMER_COUNT];
            self.outputs.push_back(PoolOutput::Close { conn, reason });
        }
    }

    /// Least busy connection in a state accepted by `want` with room, lowest handle on ties.
    fn least_busy(
        &self,
        want: impl Fn(ConnState) -> bool,
        except: Option<ConnHandle>,
    ) -> Option<ConnHandle> {
        let threshold = self.config.calls_threshold as usize;
        self.conns
            .iter()
            .filter(|&(&h, c)| Some(h) != except && want(c.state) && c.calls.len() < threshold)
            .min_by_key(|&(&h, c)| (c.calls.len(), h))
            .map(|(&h, _)| h)
    }

    /// Binds `call` to the open connection `conn` and emits Assign or Resend.
    fn bind(&mut self, _now: Instant, call: CallHandle, conn: ConnHandle, moved: bool) {
        let started = moved && self.calls.get(&call).is_some_and(|c| c.started);
        self.calls.insert(
            call,
            Call {
                conn,
                started: true,
            },
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            c.calls.insert(call);
            c.set(Timer::Idle, None);
        }
        self.outputs.push_back(if started {
            PoolOutput::Resend { call, conn }
        } else {
            PoolOutput::Assign { call, conn }
        });
    }

    fn open_new(&mut self, now: Instant) -> ConnHandle {
        let conn = ConnHandle(self.next_conn);
        self.next_conn = self.next_conn.wrapping_add(1);
        if let Some(until) = self.hold_until.filter(|&u| u > now) {
            // Held off for protocol errors: the slot waits like one that is reconnecting.
            let mut c = Conn::new(ConnState::Backoff);
            c.set(Timer::Reconnect, Some(until));
            self.conns.insert(conn, c);
            return conn;
        }
        let mut c = Conn::new(ConnState::Connecting);
        c.set(Timer::Connect, Some(now + self.config.connect_timeout));
        self.conns.insert(conn, c);
        self.stats.connects += 1;
        self.outputs.push_back(PoolOutput::Connect { conn });
        conn
    }
}

/// Arms or clears the stall timer after the backlog changed.
fn update_stall(c: &mut Conn, now: Instant, limit: usize, stall: Duration) {
    if c.state != ConnState::Open {
        return;
    }
    if c.backlog >= limit {
        if c.timers[Timer::Stall as usize].is_none() {
            c.set(Timer::Stall, Some(now + stall));
        }
    } else {
        c.set(Timer::Stall, None);
    }
}

/// Exponential backoff with "equal jitter": base = min(max, initial × 2^(level−1)), delay is
/// uniform in [base/2, base]. Never zero, so a dead server is never hammered, and spread so
/// many agents restarting together do not reconnect in lockstep.
fn backoff_delay(initial: Duration, max: Duration, level: u32, rng: &mut dyn RngCore) -> Duration {
    let shift = level.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << shift).min(max);
    let base_ms = base.as_millis().max(1) as u64;
    let half = base_ms / 2;
    let jitter = rng.next_u64() % (base_ms - half + 1);
    Duration::from_millis(half + jitter)
}

#[cfg(test)]
mod tests;
