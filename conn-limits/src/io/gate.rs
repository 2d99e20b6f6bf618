//! The gate: one task that accepts on a daemon's listeners and admits, refuses and expires
//! connections with one [`Admission`].
//!
//! Role: the thin tokio shell around [`Admission`], [`LogLimiter`] and [`AcceptBackoff`]. It
//! owns the listeners (TCP/TLS/WebSocket listeners of one daemon share one gate, so the limits
//! hold across them) and the admission state; connection tasks talk back to it through a
//! [`Conn`] they own, which reports progress and, when dropped, the close. The gate:
//! - refuses a connection over a limit by closing it at once, counts it, logs it rate-limited;
//! - hands an admitted connection to the daemon's `on_admit` (which spawns its task);
//! - tells a connection to close when its pending or idle deadline passes ([`Conn::expired`]);
//! - after an `accept` error stops accepting for a bounded, growing pause (EMFILE spins no
//!   more), while it keeps serving closes and timers, which is what frees descriptors.
//!
//! Inputs: the listeners, [`ConnEvent`]s from connections, the clock. Outputs: `on_admit`
//! calls, expiry signals, [`GateStats`], rate-limited log lines.
//! Call order: [`Gate::new`], then [`Gate::stats`] for status views, then run [`Gate::run`] in
//! its own task for the life of the daemon.
#![allow(clippy::disallowed_methods)] // io shell: reads the clock

use std::collections::HashMap;
use std::fmt;
use std::future::poll_fn;
use std::hash::Hash;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::core::admission::{Admission, AdmissionConfig, ConnId, ExpiryReason, Refused};
use crate::core::backoff::{is_resource_error, AcceptBackoff};
use crate::core::log_limit::LogLimiter;

/// One log line per cause per this interval (the rest is counted and summarised).
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A connection reports progress to the gate at most this often: deadlines are whole seconds,
/// and a chatty connection must not flood the gate's queue.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

fn now() -> Instant {
    // tokio's clock, so a paused test runtime controls it too (style guide §4).
    tokio::time::Instant::now().into_std()
}

/// A listening socket the gate accepts on.
pub trait Listen: Send + 'static {
    /// What an accepted connection hands to the daemon.
    type Stream: Send + 'static;
    /// What the per-key limit counts by.
    type Key: Copy + Eq + Hash + fmt::Display + Send + 'static;
    /// Polls for one connection.
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Key)>>;
}

/// The per-address key of a TCP client: its IPv4 address, or the /64 of its IPv6 address (one
/// IPv6 host usually holds a whole /64, so counting single addresses would limit nothing).
pub fn address_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

impl Listen for TcpListener {
    type Stream = (TcpStream, SocketAddr);
    type Key = IpAddr;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, IpAddr)>> {
        TcpListener::poll_accept(self, cx).map_ok(|(s, a)| ((s, a), address_key(a.ip())))
    }
}

/// The per-key key of a Unix socket client: its uid (from SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uid(pub u32);

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {}", self.0)
    }
}

impl Listen for UnixListener {
    type Stream = UnixStream;
    type Key = Uid;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(UnixStream, Uid)>> {
        UnixListener::poll_accept(self, cx).map_ok(|(s, _)| {
            // Without credentials (cannot happen on Linux) all such clients share one key.
            let uid = s.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
            (s, Uid(uid))
        })
    }
}

/// Why a connection task closed its connection, when it was the client's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCause {
    /// A message or line over the size limit.
    TooLarge,
    /// Bytes that cannot be framed or parsed.
    Malformed,
    /// TLS or WebSocket handshake failed or timed out.
    Handshake,
}

impl CloseCause {
    /// Stable name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            CloseCause::TooLarge => "too_large",
            CloseCause::Malformed => "malformed",
            CloseCause::Handshake => "handshake_failed",
        }
    }
}

/// What connection tasks tell the gate.
#[derive(Debug)]
pub enum ConnEvent {
    /// The connection did something useful.
    Progress(ConnId),
    /// The connection is closed (its [`Conn`] was dropped).
    Closed(ConnId, Option<CloseCause>),
}

/// Counters of one gate, readable from any task (status views, metrics).
#[derive(Debug, Default)]
pub struct GateStats {
    open: AtomicU64,
    admitted: AtomicU64,
    refused_per_address: AtomicU64,
    refused_global: AtomicU64,
    expired_pending: AtomicU64,
    expired_idle: AtomicU64,
    accept_errors: AtomicU64,
    closed_too_large: AtomicU64,
    closed_malformed: AtomicU64,
    closed_handshake: AtomicU64,
}

/// A copy of [`GateStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateCounters {
    /// Connections open now.
    pub open: u64,
    /// Connections admitted since start.
    pub admitted: u64,
    /// Refused: the client's address (or uid) held its limit.
    pub refused_per_address: u64,
    /// Refused: the global limit was reached.
    pub refused_global: u64,
    /// Closed: no useful request within the pending timeout.
    pub expired_pending: u64,
    /// Closed: idle past the idle timeout.
    pub expired_idle: u64,
    /// `accept` failures (each followed by a pause).
    pub accept_errors: u64,
    /// Closed for a message or line over the size limit.
    pub closed_too_large: u64,
    /// Closed for bytes that cannot be framed or parsed.
    pub closed_malformed: u64,
    /// Closed in a failed or timed-out TLS/WebSocket handshake.
    pub closed_handshake: u64,
}

impl GateStats {
    /// The counters now.
    pub fn snapshot(&self) -> GateCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GateCounters {
            open: g(&self.open),
            admitted: g(&self.admitted),
            refused_per_address: g(&self.refused_per_address),
            refused_global: g(&self.refused_global),
            expired_pending: g(&self.expired_pending),
            expired_idle: g(&self.expired_idle),
            accept_errors: g(&self.accept_errors),
            closed_too_large: g(&self.closed_too_large),
            closed_malformed: g(&self.closed_malformed),
            closed_handshake: g(&self.closed_handshake),
        }
    }

    fn bump(a: &AtomicU64) {
        a.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection's link to its gate; owned by the connection's task. Dropping it reports the
/// close, however the task ends.
#[derive(Debug)]
pub struct Conn {
    id: ConnId,
    events: mpsc::UnboundedSender<ConnEvent>,
    kill: oneshot::Receiver<()>,
    killed: bool,
    cause: Option<CloseCause>,
    last_progress: Option<Instant>,
}

impl Conn {
    /// The connection did something useful (a complete request): it is no longer pending and
    /// its idle deadline restarts. Cheap to call per message (reported at most once a second).
    pub fn progress(&mut self) {
        let now = now();
        if self
            .last_progress
            .is_some_and(|t| now.saturating_duration_since(t) < PROGRESS_EVERY)
        {
            return;
        }
        self.last_progress = Some(now);
        let _ = self.events.send(ConnEvent::Progress(self.id));
    }

    /// A handle another task can use to report progress (e.g. the task owning a protocol core
    /// that decides when a connection is authenticated).
    pub fn handle(&self) -> ConnHandle {
        ConnHandle {
            id: self.id,
            events: self.events.clone(),
        }
    }

    /// Resolves when the gate wants this connection closed (its deadline passed, or the gate
    /// stopped). Cancel-safe; resolves at once once it has resolved.
    pub async fn expired(&mut self) {
        if self.killed {
            return;
        }
        let _ = (&mut self.kill).await;
        self.killed = true;
    }

    /// The client caused the close (logged rate-limited and counted by the gate).
    pub fn set_close_cause(&mut self, cause: CloseCause) {
        self.cause = Some(cause);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.events.send(ConnEvent::Closed(self.id, self.cause));
    }
}

/// Reports progress of a connection from outside its task.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    id: ConnId,
    events: mpsc::UnboundedSender<ConnEvent>,
}

impl ConnHandle {
    /// See [`Conn::progress`] (not throttled: meant for rare events such as an allocation).
    pub fn progress(&self) {
        let _ = self.events.send(ConnEvent::Progress(self.id));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LogCause {
    Refused(Refused),
    Expired(ExpiryReason),
    AcceptError,
    Closed(CloseCause),
}

impl LogCause {
    fn name(self) -> &'static str {
        match self {
            LogCause::Refused(r) => r.name(),
            LogCause::Expired(r) => r.name(),
            LogCause::AcceptError => "accept_error",
            LogCause::Closed(c) => c.name(),
        }
    }
}

/// How the gate names itself and its clients in logs.
#[derive(Debug, Clone, Copy)]
pub struct GateOptions<K> {
    /// Which listener set, e.g. "sip", "turn", "control".
    pub name: &'static str,
    /// Renders a client key for a log line (e.g. hiding addresses unless PII logging is on).
    pub show_key: fn(&K) -> String,
}

/// What one `accept` gave: the connection and its key, or the error.
type Accepted<L> = io::Result<(<L as Listen>::Stream, <L as Listen>::Key)>;

fn poll_accept_any<L: Listen>(
    listeners: &[L],
    next: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<(usize, Accepted<L>)> {
    let n = listeners.len();
    for k in 0..n {
        // Start after the last listener served, so one busy listener cannot starve another.
        let i = (*next + k) % n;
        if let Poll::Ready(r) = listeners[i].poll_accept(cx) {
            *next = (i + 1) % n;
            return Poll::Ready((i, r));
        }
    }
    Poll::Pending
}

/// See the module documentation.
pub struct Gate<L: Listen> {
    opts: GateOptions<L::Key>,
    listeners: Vec<L>,
    admission: Admission<L::Key>,
    log: LogLimiter<LogCause>,
    backoff: AcceptBackoff,
    /// Per open connection: its expiry signal (taken when sent) and its key, for log lines.
    kills: HashMap<ConnId, (Option<oneshot::Sender<()>>, L::Key)>,
    events_tx: mpsc::UnboundedSender<ConnEvent>,
    events_rx: mpsc::UnboundedReceiver<ConnEvent>,
    stats: Arc<GateStats>,
    paused_until: Option<Instant>,
    next_listener: usize,
}

fn show_plain<K: fmt::Display>(k: &K) -> String {
    k.to_string()
}

impl<K: fmt::Display> GateOptions<K> {
    /// Named `name`, keys shown as they are.
    pub fn new(name: &'static str) -> Self {
        GateOptions {
            name,
            show_key: show_plain::<K>,
        }
    }
}

impl<L: Listen> Gate<L> {
    /// A gate over `listeners` with `limits` (which should have passed
    /// [`AdmissionConfig::check`]).
    pub fn new(opts: GateOptions<L::Key>, listeners: Vec<L>, limits: AdmissionConfig) -> Self {
        // Unbounded on purpose: each admitted connection sends at most one Closed and one
        // Progress a second, and admitted connections are bounded by `max_total`; a bounded
        // queue could lose a Closed (sent from Drop, which cannot wait) and leak a slot.
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Gate {
            opts,
            listeners,
            admission: Admission::new(limits),
            log: LogLimiter::new(LOG_INTERVAL),
            backoff: AcceptBackoff::default(),
            kills: HashMap::new(),
            events_tx,
            events_rx,
            stats: Arc::new(GateStats::default()),
            paused_until: None,
            next_listener: 0,
        }
    }

    /// The gate's counters, for status views.
    pub fn stats(&self) -> Arc<GateStats> {
        self.stats.clone()
    }

    /// Accepts forever. `on_admit(listener index, stream, conn)` gets each admitted connection
    /// and must not block (it spawns the connection's task, which owns `conn`).
    pub async fn run<F>(mut self, mut on_admit: F)
    where
        F: FnMut(usize, L::Stream, Conn),
    {
        loop {
            let deadline = [
                self.admission.poll_timeout(),
                self.log.poll_timeout(),
                self.paused_until,
            ]
            .into_iter()
            .flatten()
            .min();
            let accepting = self.paused_until.is_none();
            tokio::select! {
                // Closes first: they free the slots and descriptors the accepts need.
                biased;
                Some(ev) = self.events_rx.recv() => self.handle_event(ev),
                (i, r) = poll_fn(|cx| poll_accept_any(&self.listeners, &mut self.next_listener, cx)), if accepting => {
                    self.handle_accept(i, r, &mut on_admit)
                }
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            self.handle_timeout(now());
        }
    }

    fn handle_accept<F>(&mut self, listener: usize, r: Accepted<L>, on_admit: &mut F)
    where
        F: FnMut(usize, L::Stream, Conn),
    {
        let now = now();
        let (stream, key) = match r {
            Ok(x) => x,
            Err(e) => {
                let pause = self.backoff.handle_error(is_resource_error(&e));
                self.paused_until = Some(now + pause);
                GateStats::bump(&self.stats.accept_errors);
                if self.log.check(now, LogCause::AcceptError) {
                    warn!(
                        listener = self.opts.name,
                        error = %e,
                        pause_ms = pause.as_millis() as u64,
                        "accept failed; pausing accepts (closes and timers are still served)"
                    );
                }
                return;
            }
        };
        self.backoff.handle_success();
        match self.admission.handle_accept(now, key) {
            Ok(id) => {
                GateStats::bump(&self.stats.admitted);
                let (kill_tx, kill_rx) = oneshot::channel();
                self.kills.insert(id, (Some(kill_tx), key));
                self.stats
                    .open
                    .store(self.admission.open() as u64, Ordering::Relaxed);
                on_admit(
                    listener,
                    stream,
                    Conn {
                        id,
                        events: self.events_tx.clone(),
                        kill: kill_rx,
                        killed: false,
                        cause: None,
                        last_progress: None,
                    },
                );
            }
            Err(refused) => {
                // Dropping the stream closes it at once.
                drop(stream);
                GateStats::bump(match refused {
                    Refused::PerKey => &self.stats.refused_per_address,
                    Refused::Total => &self.stats.refused_global,
                });
                if self.log.check(now, LogCause::Refused(refused)) {
                    let cfg = self.admission.config();
                    warn!(
                        listener = self.opts.name,
                        client = %(self.opts.show_key)(&key),
                        limit = refused.name(),
                        per_address = cfg.max_per_key,
                        global = cfg.max_total,
                        open = self.admission.open(),
                        "connection refused: over the connection limit"
                    );
                }
            }
        }
    }

    fn handle_event(&mut self, ev: ConnEvent) {
        let now = now();
        match ev {
            ConnEvent::Progress(id) => self.admission.handle_progress(now, id),
            ConnEvent::Closed(id, cause) => {
                let key = self.kills.remove(&id).map(|(_, k)| k);
                self.admission.handle_closed(id);
                self.stats
                    .open
                    .store(self.admission.open() as u64, Ordering::Relaxed);
                if let Some(c) = cause {
                    GateStats::bump(match c {
                        CloseCause::TooLarge => &self.stats.closed_too_large,
                        CloseCause::Malformed => &self.stats.closed_malformed,
                        CloseCause::Handshake => &self.stats.closed_handshake,
                    });
                    if self.log.check(now, LogCause::Closed(c)) {
                        warn!(
                            listener = self.opts.name,
                            client = %key.map(|k| (self.opts.show_key)(&k)).unwrap_or_default(),
                            cause = c.name(),
                            "connection closed by the server: client error"
                        );
                    }
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
        }
        self.admission.handle_timeout(now);
        while let Some(x) = self.admission.poll_output() {
            GateStats::bump(match x.reason {
                ExpiryReason::Pending => &self.stats.expired_pending,
                ExpiryReason::Idle => &self.stats.expired_idle,
            });
            let Some((kill, key)) = self.kills.get_mut(&x.id) else {
                continue;
            };
            let key = *key;
            if let Some(k) = kill.take() {
                let _ = k.send(());
            }
            if self.log.check(now, LogCause::Expired(x.reason)) {
                warn!(
                    listener = self.opts.name,
                    client = %(self.opts.show_key)(&key),
                    reason = x.reason.name(),
                    "closing a connection that sent no useful request in time"
                );
            }
        }
        self.log.handle_timeout(now);
        while let Some((cause, n)) = self.log.poll_output() {
            info!(
                listener = self.opts.name,
                cause = cause.name(),
                suppressed = n,
                interval_secs = self.log.interval().as_secs(),
                "more connection events of this kind were not logged"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits() -> AdmissionConfig {
        AdmissionConfig {
            max_per_key: 2,
            max_total: 3,
            pending_timeout: Some(Duration::from_millis(300)),
            idle_timeout: None,
        }
    }

    /// A gate on a loopback listener whose connections echo one byte as "progress" and close on
    /// expiry.
    async fn start() -> (SocketAddr, Arc<GateStats>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let gate = Gate::new(GateOptions::new("test"), vec![l], limits());
        let stats = gate.stats();
        tokio::spawn(
            gate.run(|_, (mut s, _): (TcpStream, SocketAddr), mut conn| {
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    loop {
                        tokio::select! {
                            r = s.read(&mut b) => match r {
                                Ok(1) => { conn.progress(); let _ = s.write_all(&b).await; }
                                _ => break,
                            },
                            () = conn.expired() => break,
                        }
                    }
                });
            }),
        );
        (addr, stats)
    }

    async fn closed_soon(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn refuses_over_the_limit_and_expires_idle_connections() {
        let (addr, stats) = start().await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // 127.0.0.1 holds 2: the third is closed at once.
        let mut third = held.pop().expect("third");
        assert!(closed_soon(&mut third).await, "over the per-address limit");
        // One connection makes progress; the other stays silent and is expired.
        held[0].write_all(b"x").await.expect("write");
        let mut b = [0u8; 1];
        held[0].read_exact(&mut b).await.expect("echo");
        assert!(closed_soon(&mut held[1]).await, "silent connection expired");
        let s = stats.snapshot();
        assert_eq!(s.refused_per_address, 1, "{s:?}");
        assert_eq!(s.expired_pending, 1, "{s:?}");
        // The busy one is still served.
        held[0].write_all(b"y").await.expect("write");
        held[0].read_exact(&mut b).await.expect("still open");
        // Its slot freed, the address may connect again.
        let mut again = TcpStream::connect(addr).await.expect("connect");
        again.write_all(b"z").await.expect("write");
        again
            .read_exact(&mut b)
            .await
            .expect("admitted after the expiry");
        assert_eq!(stats.snapshot().open, 2);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let v4: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(address_key(v4), v4);
    }
}
