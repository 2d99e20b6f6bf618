//! The ng engine: calls anchored through rtpengine's ng protocol, relayed by fork-agent.
//!
//! Role: answers every ng datagram (docs/ng-protocol.md), keeps per-call state keyed by Call-ID
//! and the two SIP tags, allocates the anchor ports, rewrites the SDPs, and turns offers,
//! answers, deletes and forwarding requests into control API operations (`flow_add`,
//! `flow_del`, `fork_start`, `fork_stop`) for fork-agent.
//!
//! Inputs: [`Engine::handle_datagram`] (one ng datagram and its source),
//! [`Engine::handle_control_result`] (fork-agent's answer to an [`Output::Control`]),
//! [`Engine::handle_bridge_opened`] (the shell's answer to a [`BridgeOp::Open`]),
//! [`Engine::handle_timeout`] (delete delays and the reply cache). Outputs, drained with
//! [`Engine::poll_output`] after each input: [`Output::Reply`] (a datagram to send) and
//! [`Output::Control`] (an operation the shell must send to fork-agent, in order, on one
//! connection, and answer with `handle_control_result`). [`Engine::poll_timeout`] gives the next
//! deadline.
//!
//! Replies that depend on fork-agent (an `answer` that installs flows, `start forwarding`,
//! `stop forwarding`) or on the shell binding a browser leg's sockets (an `offer` that makes
//! one) are held until every operation they caused has been answered: the proxy then learns of
//! a refused flow, a refused speech destination or a port it cannot have in the `error-reason`. A
//! retransmission (same source and cookie) gets the cached reply, or nothing while the first is
//! still pending, so a retransmitted offer never allocates twice.
//!
//! Call model: one dialog per Call-ID. The side whose tag sent the first offer is `A` (its
//! `direction` interface is the first one), the other `B`; a re-offer from either tag updates
//! that side. Media: the first `m=audio` section; other sections are disabled (port 0), as in
//! sip-agent (media-anchor's `anchor_audio`).
//!
//! Counters: `query` and `delete` replies carry fork-agent's packet counters, through
//! [`Engine::handle_control_answer`] (engine/counters.rs).
//!
//! Restarts: [`Engine::poll_journal`] and [`Engine::restore`] (engine/journal.rs) journal the
//! calls so a restarted agent takes them back.
//!
//! Size: about 1,080 lines, kept in one file on purpose: the call table, the offer/answer/
//! delete state machine and the replies it owes share one state (a call's legs, ports, pending
//! control requests and cached replies); split by command, every command would reach into it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use control_api::{Destination, FlowSpec, ForkSpec, Op, StreamSpec};
use media_anchor::port_pool::PortPool;
use media_anchor::sdp::{AudioMedia, Sdp};
use speech_proto::{Channel, Codec, StopReason};

use rand::rngs::StdRng;
use rand::SeedableRng;
use webrtc_bridge::{Counters, IceCredentials, RemoteParams};

use super::bencode::{self, Value};
use super::rate::RateLimiter;
use super::request::{split_cookie, Command, Request, RequestError};
use super::webrtc::{self as wr, BridgeOp, WebrtcConfig, WebrtcLeg, SAVPF};

/// One media interface: a name the proxy's `direction=` uses and the address advertised in SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name (`direction=<name>`).
    pub name: String,
    /// Address on this host the media arrives at and leaves from.
    pub address: IpAddr,
}

/// Engine settings (validated by the shell's config loader).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Media interfaces; the first is the default for both sides.
    pub interfaces: Vec<Interface>,
    /// First and last port of the RTP range.
    pub ports: (u16, u16),
    /// `[[speech_server]]` name in fork-agent's config that forks use.
    pub speech_server: String,
    /// Delay before a deleted call's flows go (rtpengine's `delete-delay`, default 30 s).
    pub delete_delay: Duration,
    /// Most calls at once; an offer beyond is refused.
    pub max_calls: usize,
    /// Longest datagram answered.
    pub max_message_bytes: usize,
    /// How long a reply stays cached for retransmissions.
    pub reply_cache_ttl: Duration,
    /// Most cached replies (the oldest go first).
    pub reply_cache_max: usize,
    /// Requests per second per source address (token bucket rate).
    pub rate_per_sec: u32,
    /// Token bucket depth per source.
    pub rate_burst: u32,
    /// Bencode limits.
    pub bencode: bencode::Limits,
    /// Browser legs are bridged when set (`[webrtc]`); else `UDP/TLS/RTP/SAVPF` is refused.
    pub webrtc: Option<WebrtcConfig>,
    /// Seeds the ICE credentials' RNG (the shell passes a random one; tests a fixed one).
    pub seed: u64,
}

/// Errors building an engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// No media interface.
    #[error("at least one media interface is needed")]
    NoInterface,
    /// The port range is unusable.
    #[error(transparent)]
    Ports(#[from] media_anchor::port_pool::PortPoolError),
}

/// Id of one control operation, echoed in [`Engine::handle_control_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ControlId(pub u64);

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send `bytes` to `to` from the ng socket.
    Reply {
        /// Destination.
        to: SocketAddr,
        /// The whole datagram (cookie, space, bencoded dictionary).
        bytes: Vec<u8>,
        /// The `error-reason` when the reply is an error (for the log).
        error: Option<String>,
    },
    /// A datagram was dropped unanswered (for the log; it is counted in [`Stats`] too).
    Dropped {
        /// Its source.
        from: SocketAddr,
        /// Why: [`DROP_RATE_LIMIT`] or [`DROP_NO_COOKIE`].
        cause: &'static str,
    },
    /// Send `op` to fork-agent (in output order) and report its answer with `id`.
    Control {
        /// Echo in `handle_control_result`.
        id: ControlId,
        /// The operation.
        op: Op,
    },
    /// Open, update or close a browser leg's bridge (docs/webrtc.md).
    Bridge(BridgeOp),
}

/// [`Output::Dropped`] cause: the source sent more than its rate allows.
pub const DROP_RATE_LIMIT: &str = "over the per-source request rate";
/// [`Output::Dropped`] cause: no cookie, so no reply can be addressed.
pub const DROP_NO_COOKIE: &str = "no cookie";

/// Counters for `statistics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls created by an offer.
    pub managed_sessions: u64,
    /// Offers refused (limits, bad SDP, refused flags).
    pub rejected_sessions: u64,
    /// Calls torn down by `delete`.
    pub terminated_sessions: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Datagrams dropped by the per-source rate limit.
    pub rate_limited: u64,
    /// Datagrams that carried no usable cookie (never answered).
    pub unanswerable: u64,
    /// Retransmissions answered from the reply cache.
    pub retransmissions: u64,
    /// Control operations fork-agent refused.
    pub control_errors: u64,
    /// Bridge counters of every browser leg, torn down and live: each report replaces its leg's
    /// share, so reading the total costs nothing per call.
    pub webrtc: Counters,
}

/// Which side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
    fn idx(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// One side of a call: where we receive its media and what it told us.
#[derive(Debug, Clone)]
struct Leg {
    tag: Option<String>,
    /// Local address this side sends its media to.
    local: SocketAddr,
    /// Where its media goes (from its SDP); `None` before its SDP or while it holds with
    /// `c=0.0.0.0` or rejects the stream (port 0).
    remote: Option<SocketAddr>,
    /// Its SDP's audio, as last seen.
    audio: Option<AudioMedia>,
    created: u64,
    /// A browser leg: `local` is then its kernel anchor and `remote` the gateway peer.
    webrtc: Option<WebrtcLeg>,
}

#[derive(Debug, Clone)]
struct Fork {
    guid: String,
    /// fork-agent accepted the `fork_start`.
    started: bool,
}

#[derive(Debug)]
struct Call {
    legs: [Leg; 2],
    created: u64,
    last_signal: u64,
    strict_source: bool,
    /// Flows installed (or being installed) in fork-agent, by `local`.
    flows: BTreeMap<SocketAddr, FlowSpec>,
    fork: Option<Fork>,
    delete_at: Option<Instant>,
}

impl Call {
    fn side_of(&self, tag: &str) -> Option<Side> {
        [Side::A, Side::B]
            .into_iter()
            .find(|s| self.legs[s.idx()].tag.as_deref() == Some(tag))
    }
}

/// What an outstanding control operation was for.
#[derive(Debug)]
struct PendingOp {
    call_id: String,
    kind: OpKind,
    /// The held reply this operation belongs to.
    reply: Option<ReplyKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    FlowAdd(SocketAddr),
    FlowDel,
    ForkStart,
    ForkStop,
    /// Counters for a held `query`/`delete` reply (engine/counters.rs).
    FlowStats,
    /// The shell binding a browser leg's sockets ([`BridgeOp::Open`]); the offer that made the
    /// leg waits for it, and a failure refuses the offer and removes the call.
    BridgeOpen(SocketAddr),
}

/// A retransmission key: the source and its cookie.
type ReplyKey = (SocketAddr, Vec<u8>);

/// A reply held until its control operations are answered.
#[derive(Debug)]
struct HeldReply {
    ok: Value,
    outstanding: usize,
    error: Option<String>,
}

#[derive(Debug)]
enum Cached {
    Pending,
    Done(Vec<u8>),
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    ports: PortPool,
    calls: HashMap<String, Call>,
    /// Deletion deadlines: (when, call-id).
    deletions: BTreeSet<(Instant, String)>,
    replies: HashMap<ReplyKey, (Instant, Cached)>,
    reply_order: VecDeque<(Instant, ReplyKey)>,
    held: HashMap<ReplyKey, HeldReply>,
    pending: BTreeMap<ControlId, PendingOp>,
    next_id: u64,
    rate: RateLimiter,
    out: VecDeque<Output>,
    stats: Stats,
    started: Option<Instant>,
    /// Calls whose journal line may be stale ([`Engine::poll_journal`]).
    journal_dirty: BTreeSet<String>,
    rng: StdRng,
}

/// Decides the media address of a side from its request and SDP.
fn peer_addr(req: &Request, audio: &AudioMedia) -> Option<SocketAddr> {
    if audio.port == 0 || audio.addr.is_unspecified() {
        return None;
    }
    let ip = req
        .media_address
        .or(req.received_from.filter(|_| req.sip_source_address))
        .unwrap_or(audio.addr);
    Some(SocketAddr::new(ip, audio.port))
}

fn plus_one(a: SocketAddr) -> Option<SocketAddr> {
    a.port().checked_add(1).map(|p| SocketAddr::new(a.ip(), p))
}

impl Engine {
    /// An engine with no calls.
    pub fn new(cfg: EngineConfig) -> Result<Engine, EngineError> {
        if cfg.interfaces.is_empty() {
            return Err(EngineError::NoInterface);
        }
        let ports = PortPool::new(cfg.ports.0, cfg.ports.1)?;
        let rate = RateLimiter::new(cfg.rate_per_sec, cfg.rate_burst, 1024);
        let rng = StdRng::seed_from_u64(cfg.seed);
        Ok(Engine {
            cfg,
            ports,
            calls: HashMap::new(),
            deletions: BTreeSet::new(),
            replies: HashMap::new(),
            reply_order: VecDeque::new(),
            held: HashMap::new(),
            pending: BTreeMap::new(),
            next_id: 0,
            rate,
            out: VecDeque::new(),
            stats: Stats::default(),
            started: None,
            journal_dirty: BTreeSet::new(),
            rng,
        })
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Number of calls (including those waiting for their delete delay).
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// The next output. Drain until `None` after every `handle_*` call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next deadline (a delete delay or a cached reply's expiry); `None` when there is none.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let del = self.deletions.iter().next().map(|(t, _)| *t);
        let cache = self.reply_order.front().map(|(t, _)| *t);
        match (del, cache) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires due deletions and expires cached replies. A spurious call is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((t, id)) = self.deletions.iter().next().cloned() {
            if t > now {
                break;
            }
            self.deletions.remove(&(t, id.clone()));
            self.teardown(&id);
        }
        self.expire_replies(now);
    }

    fn expire_replies(&mut self, now: Instant) {
        while let Some((t, _)) = self.reply_order.front() {
            if *t > now && self.reply_order.len() <= self.cfg.reply_cache_max {
                break;
            }
            if let Some((t, key)) = self.reply_order.pop_front() {
                // A held reply stays until it is sent, and an entry replaced since has an
                // order entry of its own.
                if matches!(self.replies.get(&key), Some((u, Cached::Done(_))) if *u == t) {
                    self.replies.remove(&key);
                }
            }
        }
    }

    /// One ng datagram from `from`; `unix_now` (seconds since the epoch) stamps `created` and
    /// `last signal` in `query`.
    pub fn handle_datagram(&mut self, now: Instant, unix_now: u64, from: SocketAddr, bytes: &[u8]) {
        self.started.get_or_insert(now);
        if !self.rate.check(now, from.ip()) {
            self.stats.rate_limited += 1;
            self.out.push_back(Output::Dropped {
                from,
                cause: DROP_RATE_LIMIT,
            });
            return;
        }
        let Ok((cookie, doc)) = split_cookie(bytes) else {
            self.stats.unanswerable += 1;
            self.out.push_back(Output::Dropped {
                from,
                cause: DROP_NO_COOKIE,
            });
            return;
        };
        let key: ReplyKey = (from, cookie.to_vec());
        if let Some((_, cached)) = self.replies.get(&key) {
            if let Cached::Done(b) = cached {
                self.stats.retransmissions += 1;
                self.out.push_back(Output::Reply {
                    to: from,
                    bytes: b.clone(),
                    error: None,
                });
            }
            return;
        }
        let result = if bytes.len() > self.cfg.max_message_bytes {
            Err(format!(
                "message longer than {} bytes",
                self.cfg.max_message_bytes
            ))
        } else {
            bencode::decode(doc, self.cfg.bencode)
                .map_err(|e| e.to_string())
                .and_then(|v| Request::from_dict(&v).map_err(|e| e.to_string()))
        };
        let req = match result {
            Ok(r) => r,
            Err(reason) => {
                self.reply_error(now, key, reason);
                return;
            }
        };
        let Some(command) = req.command else {
            self.reply_error(now, key, RequestError::NoCommand.to_string());
            return;
        };
        let outcome = match command {
            Command::Ping => Ok(Value::dict([("result", Value::str("pong"))])),
            Command::Offer => self.offer(unix_now, &req, &key),
            Command::Answer => self.answer(unix_now, &req, &key),
            Command::Delete => self.delete(now, &req, &key),
            Command::Query => self.query_with_counters(&req, &key),
            Command::List => Ok(self.list(&req)),
            Command::Statistics => Ok(self.statistics(now)),
            Command::StartForwarding => self.start_forwarding(&req, &key),
            Command::StopForwarding => self.stop_forwarding(&req, &key),
        };
        if journal::changes_call(command) {
            self.journal_dirty.insert(req.call_id.clone());
        }
        match outcome {
            Ok(mut v) => {
                if let (Some(w), Value::Dict(d)) = (req.warning(), &mut v) {
                    if d.get(b"result".as_slice()) != Some(&Value::str("pong")) {
                        d.insert(b"warning".to_vec(), Value::str(&w));
                    }
                }
                if let Some(h) = self.held.get_mut(&key) {
                    h.ok = v;
                    self.remember(now, key, Cached::Pending);
                } else {
                    self.reply(now, key, &v);
                }
            }
            Err(reason) => {
                if command == Command::Offer {
                    self.stats.rejected_sessions += 1;
                }
                // Answered now: operations it had started must not answer it again.
                self.held.remove(&key);
                self.reply_error(now, key, reason);
            }
        }
    }

    fn remember(&mut self, now: Instant, key: ReplyKey, c: Cached) {
        let until = now + self.cfg.reply_cache_ttl;
        if self.replies.insert(key.clone(), (until, c)).is_none() {
            self.reply_order.push_back((until, key));
        }
        self.expire_replies(now);
    }

    fn reply(&mut self, now: Instant, key: ReplyKey, v: &Value) {
        let mut bytes = key.1.clone();
        bytes.push(b' ');
        v.encode(&mut bytes);
        let error = match v.get("result").and_then(Value::as_str) {
            Some("error") => v
                .get("error-reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        };
        self.out.push_back(Output::Reply {
            to: key.0,
            bytes: bytes.clone(),
            error,
        });
        self.remember(now, key, Cached::Done(bytes));
    }

    fn reply_error(&mut self, now: Instant, key: ReplyKey, reason: String) {
        self.stats.errors += 1;
        let v = Value::dict([
            ("result", Value::str("error")),
            ("error-reason", Value::str(&reason)),
        ]);
        self.reply(now, key, &v);
    }

    fn control(&mut self, call_id: &str, kind: OpKind, op: Op, reply: Option<&ReplyKey>) {
        let id = self.pend(call_id, kind, reply);
        self.out.push_back(Output::Control { id, op });
    }

    /// Records an operation the shell will answer with `id`, holding `reply` until it does.
    fn pend(&mut self, call_id: &str, kind: OpKind, reply: Option<&ReplyKey>) -> ControlId {
        let id = ControlId(self.next_id);
        self.next_id += 1;
        if let Some(k) = reply {
            let held = self.held.entry(k.clone()).or_insert_with(|| HeldReply {
                ok: Value::dict([("result", Value::str("ok"))]),
                outstanding: 0,
                error: None,
            });
            held.outstanding += 1;
        }
        self.pending.insert(
            id,
            PendingOp {
                call_id: call_id.to_owned(),
                kind,
                reply: reply.cloned(),
            },
        );
        id
    }

    /// fork-agent's answer to the operation `id`: `Err` carries its error text.
    pub fn handle_control_result(
        &mut self,
        now: Instant,
        id: ControlId,
        result: Result<(), String>,
    ) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        self.journal_dirty.insert(p.call_id.clone());
        if let (Err(e), OpKind::BridgeOpen(browser)) = (&result, p.kind) {
            // The proxy must not get SDP pointing at a port nobody listens on: the offer is
            // refused and the call it created goes, as if it had never been offered.
            if let Some(h) = p.reply.as_ref().and_then(|k| self.held.get_mut(k)) {
                h.error.get_or_insert_with(|| {
                    format!("cannot bridge the browser leg on {browser}: {e}")
                });
            }
            if self.remove_call(&p.call_id) {
                self.stats.managed_sessions = self.stats.managed_sessions.saturating_sub(1);
                self.stats.rejected_sessions += 1;
            }
        } else if let Err(e) = &result {
            self.stats.control_errors += 1;
            if let Some(call) = self.calls.get_mut(&p.call_id) {
                match p.kind {
                    // Not installed: never delete it later.
                    OpKind::FlowAdd(local) => {
                        call.flows.remove(&local);
                    }
                    OpKind::ForkStart => call.fork = None,
                    OpKind::FlowDel
                    | OpKind::ForkStop
                    | OpKind::FlowStats
                    | OpKind::BridgeOpen(_) => {}
                }
            }
            if let Some(h) = p.reply.as_ref().and_then(|k| self.held.get_mut(k)) {
                h.error.get_or_insert_with(|| format!("fork-agent: {e}"));
            }
        } else if let (OpKind::ForkStart, Some(call)) = (p.kind, self.calls.get_mut(&p.call_id)) {
            if let Some(f) = call.fork.as_mut() {
                f.started = true;
            }
        }
        let Some(key) = p.reply else { return };
        let done = match self.held.get_mut(&key) {
            Some(h) => {
                h.outstanding -= 1;
                h.outstanding == 0
            }
            None => false,
        };
        if done {
            if let Some(h) = self.held.remove(&key) {
                self.replies.remove(&key);
                match h.error {
                    Some(e) => self.reply_error(now, key, e),
                    None => self.reply(now, key, &h.ok),
                }
            }
        }
    }

    fn interface(&self, name: Option<&String>) -> Result<IpAddr, String> {
        match name.filter(|n| !n.is_empty()) {
            None => Ok(self.cfg.interfaces[0].address),
            Some(n) => self
                .cfg
                .interfaces
                .iter()
                .find(|i| &i.name == n)
                .map(|i| i.address)
                .ok_or_else(|| format!("unknown interface '{n}' in direction")),
        }
    }

    fn parse_sdp(&self, req: &Request) -> Result<(Sdp, AudioMedia), String> {
        let body = req.sdp.as_deref().unwrap_or_default();
        let sdp = Sdp::parse(body).map_err(|e| format!("bad SDP: {e}"))?;
        let audio = sdp
            .audio()
            .ok_or_else(|| "bad SDP: no m=audio section with a connection address".to_string())?;
        let bridged = audio.proto == SAVPF && self.cfg.webrtc.is_some();
        if audio.proto != "RTP/AVP" && !bridged {
            return Err(format!(
                "unsupported: SDP media protocol {} (plain RTP/AVP is relayed{}; SDES-keyed \
                 SRTP is not available)",
                audio.proto,
                if self.cfg.webrtc.is_some() {
                    ", browsers' UDP/TLS/RTP/SAVPF is bridged"
                } else {
                    "; WebRTC bridging is off: no [webrtc] section"
                }
            ));
        }
        Ok((sdp, audio))
    }

    /// Rewrites `sdp` to point at `local` (the side that will receive it sends there).
    fn rewrite(mut sdp: Sdp, local: SocketAddr, replace_origin: bool) -> Vec<u8> {
        sdp.anchor_audio(local.ip(), local.port());
        if replace_origin {
            sdp.set_origin_address(local.ip());
        }
        sdp.to_bytes()
    }

    fn offer(&mut self, unix_now: u64, req: &Request, key: &ReplyKey) -> Result<Value, String> {
        let (sdp, audio) = self.parse_sdp(req)?;
        let plan = self.webrtc_plan(req, &sdp, &audio, None)?;
        if !self.calls.contains_key(&req.call_id) {
            if self.calls.len() >= self.cfg.max_calls {
                return Err(format!("call limit of {} reached", self.cfg.max_calls));
            }
            let a_ip = self.interface(req.direction.first())?;
            let b_ip = self.interface(req.direction.get(1))?;
            let pa = self.ports.allocate().ok_or("no free media port")?;
            let Some(pb) = self.ports.allocate() else {
                self.ports.release(pa);
                return Err("no free media port".into());
            };
            let leg = |tag: Option<String>, ip, port| Leg {
                tag,
                local: SocketAddr::new(ip, port),
                remote: None,
                audio: None,
                created: unix_now,
                webrtc: None,
            };
            let mut legs = [
                leg(Some(req.from_tag.clone()), a_ip, pa),
                leg(req.to_tag.clone(), b_ip, pb),
            ];
            if let Err(e) = self.make_browser_legs(&mut legs, &plan, &req.call_id, key) {
                legs.iter().for_each(|l| self.free_leg(l));
                return Err(e);
            }
            self.calls.insert(
                req.call_id.clone(),
                Call {
                    legs,
                    created: unix_now,
                    last_signal: unix_now,
                    strict_source: req.strict_source,
                    flows: BTreeMap::new(),
                    fork: None,
                    delete_at: None,
                },
            );
            self.stats.managed_sessions += 1;
        } else if let Some(side) = self.calls[&req.call_id].side_of(&req.from_tag) {
            self.reoffer_browser(&req.call_id, side, &plan)?;
        }
        let call = self.calls.get_mut(&req.call_id).ok_or("call vanished")?;
        let side = call
            .side_of(&req.from_tag)
            .ok_or_else(|| format!("from-tag '{}' is not a party of this call", req.from_tag))?;
        // A re-offer revives a call that was waiting for its delete delay.
        if let Some(t) = call.delete_at.take() {
            self.deletions.remove(&(t, req.call_id.clone()));
        }
        call.last_signal = unix_now;
        call.strict_source |= req.strict_source;
        let leg = &mut call.legs[side.idx()];
        // A browser leg's remote is the gateway peer, whatever its SDP says.
        if leg.webrtc.is_none() {
            leg.remote = peer_addr(req, &audio);
        }
        leg.audio = Some(audio);
        let out = self.sdp_toward(&req.call_id, side.other(), sdp, req.replace_origin)?;
        self.sync_flows(&req.call_id, Some(key));
        Ok(Value::dict([
            ("result", Value::str("ok")),
            ("sdp", Value::Bytes(out)),
        ]))
    }

    fn answer(&mut self, unix_now: u64, req: &Request, key: &ReplyKey) -> Result<Value, String> {
        let (sdp, audio) = self.parse_sdp(req)?;
        let to_tag = req.to_tag.clone().unwrap_or_default();
        let call = self
            .calls
            .get(&req.call_id)
            .ok_or_else(|| format!("unknown call-id '{}'", req.call_id))?;
        // The offerer is the From tag; the SDP comes from the other tag.
        let offerer = call
            .side_of(&req.from_tag)
            .ok_or_else(|| format!("from-tag '{}' is not a party of this call", req.from_tag))?;
        let answerer = offerer.other();
        let offerer_browser = call.legs[offerer.idx()].webrtc.is_some();
        self.webrtc_plan(req, &sdp, &audio, Some(offerer_browser))?;
        self.browser_answered(&req.call_id, answerer, &sdp, &audio)?;
        let call = self.calls.get_mut(&req.call_id).ok_or("call vanished")?;
        let leg = &mut call.legs[answerer.idx()];
        match &leg.tag {
            Some(t) if *t != to_tag => {
                // A later branch answered (SIP forking): it becomes the call's other side.
                leg.tag = Some(to_tag);
            }
            Some(_) => {}
            None => {
                leg.tag = Some(to_tag);
                leg.created = unix_now;
            }
        }
        if leg.webrtc.is_none() {
            leg.remote = peer_addr(req, &audio);
        }
        leg.audio = Some(audio);
        call.last_signal = unix_now;
        let out = self.sdp_toward(&req.call_id, offerer, sdp, req.replace_origin)?;
        self.sync_flows(&req.call_id, Some(key));
        Ok(Value::dict([
            ("result", Value::str("ok")),
            ("sdp", Value::Bytes(out)),
        ]))
    }

    /// The flows a call needs now: for each side with a known remote, the other side's local
    /// relays to it (RTP and RTCP on the next port, RFC 3550 §11), as sip-agent installs them.
    fn wanted_flows(call: &Call) -> BTreeMap<SocketAddr, FlowSpec> {
        let mut out = BTreeMap::new();
        for to in [Side::A, Side::B] {
            let from = to.other();
            let (src_leg, dst_leg) = (&call.legs[from.idx()], &call.legs[to.idx()]);
            let Some(dst) = dst_leg.remote else { continue };
            // Both parties must have spoken: until the answer, the receiving side has no
            // local address the sender was told of.
            if src_leg.audio.is_none() {
                continue;
            }
            let codec = src_leg
                .audio
                .as_ref()
                .and_then(|a| a.primary_codec().cloned())
                .or_else(|| {
                    dst_leg
                        .audio
                        .as_ref()
                        .and_then(|a| a.primary_codec().cloned())
                });
            let mut payload_types = control_api::default_pts();
            if let Some(c) = codec.filter(|c| c.is_g711() && !payload_types.contains(&c.pt)) {
                payload_types.push(c.pt);
            }
            let dtmf_pt = src_leg
                .audio
                .as_ref()
                .and_then(AudioMedia::telephone_event_pt)
                .or_else(|| {
                    dst_leg
                        .audio
                        .as_ref()
                        .and_then(AudioMedia::telephone_event_pt)
                });
            let expect = if call.strict_source {
                src_leg.remote
            } else {
                None
            };
            let rtp = FlowSpec {
                local: src_leg.local,
                src: dst_leg.local,
                dst,
                expect,
                rtcp: false,
                payload_types,
                dtmf_pt,
                sink: false,
            };
            if let (Some(l), Some(s), Some(d)) =
                (plus_one(rtp.local), plus_one(rtp.src), plus_one(dst))
            {
                out.insert(
                    l,
                    FlowSpec {
                        local: l,
                        src: s,
                        dst: d,
                        expect: expect.and_then(plus_one),
                        rtcp: true,
                        payload_types: Vec::new(),
                        dtmf_pt: None,
                        sink: false,
                    },
                );
            }
            out.insert(rtp.local, rtp);
        }
        out
    }

    /// Brings fork-agent's flows of a call to what the call needs now.
    fn sync_flows(&mut self, call_id: &str, reply: Option<&ReplyKey>) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        let wanted = Self::wanted_flows(call);
        let have = call.flows.clone();
        for (local, spec) in &have {
            if wanted.get(local) != Some(spec) {
                self.control(
                    call_id,
                    OpKind::FlowDel,
                    Op::FlowDel { local: *local },
                    reply,
                );
            }
        }
        for (local, spec) in &wanted {
            if have.get(local) != Some(spec) {
                self.control(
                    call_id,
                    OpKind::FlowAdd(*local),
                    Op::FlowAdd { flow: spec.clone() },
                    reply,
                );
            }
        }
        if let Some(call) = self.calls.get_mut(call_id) {
            call.flows = wanted;
        }
    }

    fn delete(&mut self, now: Instant, req: &Request, key: &ReplyKey) -> Result<Value, String> {
        let known = self
            .calls
            .get(&req.call_id)
            .is_some_and(|c| c.side_of(&req.from_tag).is_some());
        if !known {
            let reason = format!("Unknown call-id or from-tag '{}'", req.call_id);
            if req.fatal {
                return Err(reason);
            }
            return Ok(Value::dict([
                ("result", Value::str("ok")),
                ("warning", Value::str(&reason)),
            ]));
        }
        let delay = req
            .delete_delay
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(self.cfg.delete_delay);
        let reply = self.query(req)?;
        self.request_counters(&req.call_id, key);
        if delay.is_zero() {
            self.teardown(&req.call_id);
        } else if let Some(call) = self.calls.get_mut(&req.call_id) {
            if let Some(t) = call.delete_at.take() {
                self.deletions.remove(&(t, req.call_id.clone()));
            }
            let at = now + delay;
            call.delete_at = Some(at);
            self.deletions.insert((at, req.call_id.clone()));
        }
        Ok(reply)
    }

    /// Removes a call: stops its fork, deletes its flows, frees its ports.
    fn teardown(&mut self, call_id: &str) {
        if self.remove_call(call_id) {
            self.stats.terminated_sessions += 1;
        }
    }

    /// Removes a call with everything it holds: its fork, its flows in fork-agent, its ports,
    /// its bridges and its journal line. Whether there was such a call.
    fn remove_call(&mut self, call_id: &str) -> bool {
        let Some(call) = self.calls.remove(call_id) else {
            return false;
        };
        self.journal_dirty.insert(call_id.to_owned());
        if let Some(t) = call.delete_at {
            self.deletions.remove(&(t, call_id.to_owned()));
        }
        if let Some(f) = &call.fork {
            let op = Op::ForkStop {
                call_guid: f.guid.clone(),
                reason: StopReason::CallEnd,
            };
            self.control(call_id, OpKind::ForkStop, op, None);
        }
        for local in call.flows.keys() {
            self.control(
                call_id,
                OpKind::FlowDel,
                Op::FlowDel { local: *local },
                None,
            );
        }
        for leg in &call.legs {
            self.free_leg(leg);
        }
        true
    }

    fn query(&self, req: &Request) -> Result<Value, String> {
        /// rtpengine's endpoint dictionary (`family`, `address`, `port`); empty when unknown.
        fn endpoint_value(a: Option<SocketAddr>) -> Value {
            match a {
                Some(a) => Value::dict([
                    (
                        "family",
                        Value::str(if a.is_ipv4() { "IPv4" } else { "IPv6" }),
                    ),
                    ("address", Value::str(&a.ip().to_string())),
                    ("port", Value::Int(i64::from(a.port()))),
                ]),
                None => Value::dict([]),
            }
        }
        let call = self
            .calls
            .get(&req.call_id)
            .ok_or_else(|| format!("Unknown call-id '{}'", req.call_id))?;
        let mut tags = BTreeMap::new();
        for side in [Side::A, Side::B] {
            let leg = &call.legs[side.idx()];
            let other = &call.legs[side.other().idx()];
            let endpoint = endpoint_value(leg.remote);
            let stream = |local: SocketAddr, ep: Value| {
                Value::dict([
                    ("local port", Value::Int(i64::from(local.port()))),
                    ("local address", Value::str(&local.ip().to_string())),
                    ("endpoint", ep),
                ])
            };
            let mut media = vec![
                ("index", Value::Int(1)),
                ("type", Value::str("audio")),
                ("protocol", Value::str("RTP/AVP")),
                ("streams", Value::List(vec![stream(leg.local, endpoint)])),
            ];
            if let Some(w) = &leg.webrtc {
                media[2].1 = Value::str(SAVPF);
                let mut webrtc = bridged::counters_value(&w.counters);
                if let Value::Dict(d) = &mut webrtc {
                    d.insert(b"selected".to_vec(), endpoint_value(w.selected));
                }
                media.push(("webrtc", webrtc));
            }
            let media = Value::dict(media);
            let tag = leg.tag.clone().unwrap_or_default();
            let mut d = vec![
                ("tag", Value::str(&tag)),
                ("created", Value::Int(leg.created as i64)),
                ("medias", Value::List(vec![media])),
            ];
            if let Some(o) = &other.tag {
                d.push(("in dialogue with", Value::str(o)));
            }
            tags.insert(tag.into_bytes(), Value::dict(d));
        }
        let mut d = vec![
            ("result", Value::str("ok")),
            ("created", Value::Int(call.created as i64)),
            ("last signal", Value::Int(call.last_signal as i64)),
            ("tags", Value::Dict(tags)),
            (
                "flows",
                Value::List(
                    call.flows
                        .keys()
                        .map(|l| Value::str(&l.to_string()))
                        .collect(),
                ),
            ),
        ];
        if let Some(f) = &call.fork {
            d.push((
                "forwarding",
                Value::dict([
                    ("call-guid", Value::str(&f.guid)),
                    (
                        "state",
                        Value::str(if f.started { "started" } else { "starting" }),
                    ),
                ]),
            ));
        }
        Ok(Value::dict(d))
    }

    fn list(&self, req: &Request) -> Value {
        let mut ids: Vec<&String> = self.calls.keys().collect();
        ids.sort();
        let limit = req.limit.unwrap_or(32);
        Value::dict([
            ("result", Value::str("ok")),
            (
                "calls",
                Value::List(ids.into_iter().take(limit).map(|c| Value::str(c)).collect()),
            ),
        ])
    }

    fn statistics(&self, now: Instant) -> Value {
        let n = |v: u64| Value::Int(v as i64);
        let uptime = self
            .started
            .map(|s| now.saturating_duration_since(s).as_secs())
            .unwrap_or(0);
        let own = self.calls.len() as u64;
        Value::dict([
            ("result", Value::str("ok")),
            (
                "statistics",
                Value::dict([
                    (
                        "currentstatistics",
                        Value::dict([
                            ("sessionsown", n(own)),
                            ("sessionsforeign", n(0)),
                            ("sessionstotal", n(own)),
                            ("transcodedmedia", n(0)),
                        ]),
                    ),
                    (
                        "totalstatistics",
                        Value::dict([
                            ("uptime", Value::str(&uptime.to_string())),
                            ("managedsessions", n(self.stats.managed_sessions)),
                            ("rejectedsessions", n(self.stats.rejected_sessions)),
                            (
                                "regularterminatedsessions",
                                n(self.stats.terminated_sessions),
                            ),
                            ("errors", n(self.stats.errors)),
                            ("ratelimited", n(self.stats.rate_limited)),
                            ("retransmissions", n(self.stats.retransmissions)),
                            ("controlerrors", n(self.stats.control_errors)),
                        ]),
                    ),
                    ("webrtc", bridged::counters_value(&self.stats.webrtc)),
                ]),
            ),
        ])
    }

    fn start_forwarding(&mut self, req: &Request, key: &ReplyKey) -> Result<Value, String> {
        let server = self.cfg.speech_server.clone();
        let call = self
            .calls
            .get_mut(&req.call_id)
            .ok_or_else(|| format!("Unknown call-id '{}'", req.call_id))?;
        if call.fork.is_some() {
            return Err("forwarding is already running for this call".into());
        }
        let only = match req.from_tag.as_str() {
            "" => None,
            t => Some(
                call.side_of(t)
                    .ok_or_else(|| format!("from-tag '{t}' is not a party of this call"))?,
            ),
        };
        let [a, b] = &call.legs;
        let (a_audio, b_audio) = a
            .audio
            .as_ref()
            .zip(b.audio.as_ref())
            .ok_or("the call has no answer yet: nothing to forward")?;
        // The law the call runs with: the answer's first codec (RFC 3264 §6.1: the answerer
        // picks from the offer), else the offer's.
        let codec = b_audio
            .primary_codec()
            .or(a_audio.primary_codec())
            .and_then(|c| c.name.as_deref())
            .and_then(Codec::from_name)
            .ok_or("Codec is not supported")?;
        let ptime = a.audio.as_ref().and_then(|m| m.ptime);
        let mut streams = Vec::new();
        for (side, channel) in [(Side::A, Channel::Caller), (Side::B, Channel::Callee)] {
            if only.is_some_and(|o| o != side) {
                continue;
            }
            let local = call.legs[side.idx()].local;
            if !call.flows.contains_key(&local) {
                return Err(format!(
                    "the {} side's media is not relayed",
                    channel.as_str()
                ));
            }
            streams.push(StreamSpec {
                channel,
                flow: local,
            });
        }
        let guid = req.call_guid.clone().unwrap_or_else(|| req.call_id.clone());
        let mut metadata = serde_json::Map::new();
        if let Some(m) = &req.metadata {
            metadata.insert("ng_metadata".into(), serde_json::Value::String(m.clone()));
        }
        let spec = ForkSpec {
            call_guid: guid.clone(),
            call_id: req.call_id.clone(),
            from: a.tag.clone().unwrap_or_default(),
            to: b.tag.clone().unwrap_or_default(),
            server,
            destination: req.destination.clone().map(|url| Destination {
                url,
                auth_token: req.auth_token.clone(),
                profile: req.profile,
            }),
            codec,
            ptime_ms: ptime.unwrap_or(control_api::DEFAULT_PTIME_MS),
            metadata,
            streams,
            return_audio: None,
        };
        call.fork = Some(Fork {
            guid,
            started: false,
        });
        let call_id = req.call_id.clone();
        self.control(
            &call_id,
            OpKind::ForkStart,
            Op::ForkStart { fork: spec },
            Some(key),
        );
        Ok(Value::dict([("result", Value::str("ok"))]))
    }

    fn stop_forwarding(&mut self, req: &Request, key: &ReplyKey) -> Result<Value, String> {
        let call = self
            .calls
            .get_mut(&req.call_id)
            .ok_or_else(|| format!("Unknown call-id '{}'", req.call_id))?;
        let fork = call
            .fork
            .take()
            .ok_or("no forwarding is running for this call")?;
        let op = Op::ForkStop {
            call_guid: fork.guid,
            reason: StopReason::Request,
        };
        let call_id = req.call_id.clone();
        self.control(&call_id, OpKind::ForkStop, op, Some(key));
        Ok(Value::dict([("result", Value::str("ok"))]))
    }
}

mod bridged;
mod counters;
pub mod journal;
#[cfg(test)]
mod journal_tests;

#[cfg(test)]
mod tests;
