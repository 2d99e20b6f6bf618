//! The B2BUA: two dialogs per call joined by a [`CallHandle`], media anchored on this host, fork
//! requests taken from the controller.
//!
//! Role: sits on the [`TransactionLayer`] and consumes only its [`TxEvent`]s. An INVITE from the
//! caller (leg A) is routed by its Request-URI user to a next hop (leg B) with the SDP rewritten
//! so both sides send RTP to this host. In-dialog requests are relayed to the other leg; fork
//! requests (INFO `application/x-cisco-record+json`, or the JSON part of a multipart re-INVITE)
//! are validated and surfaced as [`SessionEvent::ForkRequest`]; the fork layer's answers come
//! back through [`B2bua::handle_fork_status`] and go to the controller as status INFOs.
//!
//! Inputs (each takes `now`): [`B2bua::handle_datagram`] (raw bytes, parses and answers
//! malformed requests with 400/501) or [`B2bua::handle_message`] (already parsed),
//! [`B2bua::handle_timeout`], [`B2bua::handle_transport_error`], [`B2bua::handle_fork_status`].
//! Outputs: drain [`B2bua::poll_output`] after every input ([`Output::Transmit`],
//! [`Output::Session`]), then re-read [`B2bua::poll_timeout`].
//!
//! Scope and simplifications (each also noted where it happens):
//! - Offer in the INVITE only; an INVITE without SDP (delayed offer) is answered 488.
//! - Only the first audio stream is anchored; other streams are disabled (port 0).
//! - In-dialog requests go to the address the leg was set up with (no DNS in the core).
//! - UPDATE, PRACK, REFER and friends are not supported (405 with Allow).
//! - Who may send what (docs/security.md): an in-dialog request must match its dialog's
//!   Call-ID and both tags (else 481) and come from that leg's peer or a trusted proxy (else
//!   403); a fork request must also come from a configured controller (else 403). Both refusals
//!   are counted ([`B2bua::security_counters`]). Tags, branches and Call-IDs come from the
//!   injected RNG, which the shell seeds from the OS (a CSPRNG), so they cannot be predicted.
//! - RFC 4028 session timers: sip-agent passes the negotiation between the legs, refuses
//!   intervals below [`Config::min_se`] with 422, and ends a call that was not refreshed in
//!   time; it is never the refresher (core/session_timer.rs). A call also ends after
//!   [`Config::max_call_duration`]. Both release with BYE on both legs carrying a Reason header.
//!
//! Where each part lives: this file holds the types, the router from transaction events to
//! the parts and the shared helpers (`respond`, `pump`, `emit`); `setup.rs` the initial INVITE
//! to leg B and its answers (and CANCEL), `relay.rs` requests inside a dialog and their
//! answers, `fork.rs` fork requests and status INFOs, `teardown.rs` BYE and the end of a call,
//! `timers.rs` the per-call deadlines, `restore.rs` the journal record and restart,
//! `local.rs` our own addresses, tags and branches, `config.rs` the routing configuration.

mod bot;
mod config;
mod fork;
mod local;
mod relay;
mod restore;
mod setup;
mod teardown;
mod timers;

pub use config::{Bind, BotRoute, Config, Route, RoutePattern};
pub use restore::{CallSnapshot, RestoreError};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::RngCore;
use rsip::{Header, Method, Request, Response, SipMessage};
use serde::{Deserialize, Serialize};
use tracing::{debug, trace};

use crate::core::authz::{PeerIdentities, SecurityCounters};
use crate::core::dialog::Dialog;
use crate::core::fork_request::{self, ForkRequest, ForkSequence, StatusReport};
use crate::core::message::{self, content_type, header_values, ParseError};
use crate::core::multipart;
use crate::core::sdp::{AudioMedia, Codec, Direction};
use crate::core::session_timer::{CallTimer, CallTimers};
use crate::core::status_pacer::{StatusPacer, STATUS_INTERVAL};
use crate::core::transaction::{
    Output as TxOutput, Peer, TransactionLayer, Transmit, TxEvent, TxHandle,
};

/// Methods this agent implements (sent in Allow with 405/501, RFC 3261 §20.5).
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO";

/// Opaque call id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallHandle(pub u32);

/// A side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Leg {
    /// The inbound leg (calling party).
    A,
    /// The outbound leg (called party).
    B,
}

impl Leg {
    /// The other side.
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }
}

/// Hands out RTP ports on `media_ip` (injected so the shell can back it with real sockets or
/// kernel flows). Ports are even; the RTCP port is the next one (RFC 3550 §11).
pub trait PortAllocator {
    /// A free port for `leg` of `call`, or `None` when exhausted.
    fn allocate(&mut self, call: CallHandle, leg: Leg) -> Option<u16>;
    /// Gives a port back.
    fn release(&mut self, port: u16);
    /// Marks `port` in use without a call asking for it (a call restored from the journal, or
    /// a port an unknown flow still holds); false when it was in use already or is not ours.
    fn reserve(&mut self, port: u16) -> bool;
}

/// One leg's negotiated audio as the fork/relay layer needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedMedia {
    /// Where this leg's peer wants RTP; `None` while it holds with `c=0.0.0.0`.
    pub remote: Option<SocketAddr>,
    /// Our address this leg's peer sends RTP to (the leg's [`Bind::media_ip`]).
    pub local_ip: IpAddr,
    /// Our port this leg's peer sends RTP to.
    pub local_port: u16,
    /// Codec media flows with (first non-DTMF format of the answer).
    pub codec: Option<Codec>,
    /// RFC 4733 payload type, if negotiated.
    pub telephone_event: Option<u8>,
    /// Direction this leg's peer declared.
    pub direction: Direction,
    /// True when this leg's peer put the call on hold (sendonly/inactive/recvonly/0.0.0.0).
    pub hold: bool,
    /// `a=ptime`.
    pub ptime: Option<u32>,
}

impl NegotiatedMedia {
    fn from_audio(a: &AudioMedia, local_ip: IpAddr, local_port: u16) -> Self {
        Self {
            remote: (!a.addr.is_unspecified() && a.port != 0)
                .then(|| SocketAddr::new(a.addr, a.port)),
            local_ip,
            local_port,
            codec: a.primary_codec().cloned(),
            telephone_event: a.telephone_event_pt(),
            direction: a.direction,
            hold: a.is_hold(),
            ptime: a.ptime,
        }
    }
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// That leg sent BYE.
    Bye(Leg),
    /// The called side answered with this final failure code.
    Rejected(u16),
    /// The caller cancelled.
    Cancelled,
    /// A transaction timed out (no answer, or no ACK to our 2xx).
    Timeout,
    /// The transport to a peer failed.
    TransportError,
    /// No RFC 4028 session refresh arrived in time (§10); BYE sent on both legs.
    SessionExpired,
    /// The call reached [`Config::max_call_duration`]; BYE sent on both legs.
    MaxDuration,
    /// fork-agent removed one of the call's RTP flows because no packet had arrived for its
    /// idle timeout (docs/fork-agent.md "Idle flows"); BYE sent on both legs.
    MediaTimeout,
    /// A voice bot's fork failed for good (fork-agent refused it or gave up connecting): the
    /// caller would hear nothing more, so the call ends; BYE sent to the caller.
    BotFailed,
}

/// The Reason header on the BYEs of a call released for dead media: Q.850 cause 102,
/// "recovery on timer expiry", the cause the maximum duration uses too, with its own text.
pub const REASON_MEDIA_TIMEOUT: &str = "Q.850;cause=102;text=\"Media timeout\"";

/// The Reason header on the BYE of a bot call whose bot could not be reached (RFC 3326: the
/// SIP status the call would have been refused with, had it failed before the answer).
pub const REASON_BOT_FAILED: &str = "SIP;cause=503;text=\"Voice bot unavailable\"";

impl EndReason {
    /// The RFC 3326 Reason header value for BYEs sent because of this reason, if any.
    fn reason_header(self) -> Option<&'static str> {
        match self {
            EndReason::SessionExpired => Some(CallTimer::SessionExpires.reason_header()),
            EndReason::MaxDuration => Some(CallTimer::MaxDuration.reason_header()),
            EndReason::MediaTimeout => Some(REASON_MEDIA_TIMEOUT),
            EndReason::BotFailed => Some(REASON_BOT_FAILED),
            _ => None,
        }
    }
}

/// What the fork layer and the operator must know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// Both legs negotiated; `media` is `leg`'s side. Emitted once per leg when the call
    /// connects.
    MediaUp {
        /// Call.
        call: CallHandle,
        /// Leg.
        leg: Leg,
        /// That leg's media.
        media: NegotiatedMedia,
    },
    /// A re-INVITE changed a leg's media (address, codec, hold). The fork layer turns hold or a
    /// non-fork codec into PAUSE and the way back into RESUME.
    MediaChanged {
        /// Call.
        call: CallHandle,
        /// Leg.
        leg: Leg,
        /// That leg's new media.
        media: NegotiatedMedia,
    },
    /// Media for the call is gone; remove flows.
    MediaDown {
        /// Call.
        call: CallHandle,
    },
    /// A valid, in-sequence fork request from the controller on `leg`.
    ForkRequest {
        /// Call.
        call: CallHandle,
        /// Leg the controller talks on (status INFOs go there).
        leg: Leg,
        /// What to do.
        request: ForkRequest,
        /// Who the call is between (sent to the speech server in `start`).
        parties: CallParties,
    },
    /// A call to a bot number was answered (bot.rs): `media` is the caller's side; the media
    /// layer installs the caller's flow as a sink and forks it to the bot with return audio.
    BotUp {
        /// Call.
        call: CallHandle,
        /// The call and its bot (boxed: the event is moved around for every call).
        bot: Box<BotCall>,
    },
    /// The call is over; its handle will not appear again.
    CallEnded {
        /// Call.
        call: CallHandle,
        /// Why.
        reason: EndReason,
    },
}

/// A call answered for a bot ([`SessionEvent::BotUp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotCall {
    /// The caller's media (leg A), codec as answered.
    pub media: NegotiatedMedia,
    /// The bot.
    pub route: BotRoute,
    /// GUID of the bot's fork.
    pub guid: String,
    /// Who the call is between.
    pub parties: CallParties,
}

/// Who a call is between, as the caller's leg (A) names it: what fork-agent shows for a fork
/// and sends to the speech server in `start` (control-api `ForkSpec`'s `call_id`, `from`,
/// `to`; docs/speech-protocol.md "start").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallParties {
    /// Leg A's Call-ID.
    pub call_id: String,
    /// The calling party: the URI of leg A's From.
    pub from: String,
    /// The called party: the URI of leg A's To.
    pub to: String,
}

/// Everything `poll_output` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Bytes to send.
    Transmit(Transmit),
    /// Event for the fork layer.
    Session(SessionEvent),
}

/// API misuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum B2buaError {
    /// No such call.
    #[error("unknown call")]
    UnknownCall,
    /// A status report for a call that never had a fork request.
    #[error("call has no fork controller")]
    NoForkController,
    /// [`B2bua::release`] of a call that is not established yet.
    #[error("call is not established")]
    NotEstablished,
}

/// Call counts as the reference's licensing section defines them: a call is Standard until a
/// fork START reaches the speech server, then Enhanced until it ends (even after STOP), counted
/// once per call however often forking is invoked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Connected calls now (CUBE Aggregate Trunk).
    pub aggregate: u32,
    /// Connected calls that forked successfully (CUBE Enhanced Trunk).
    pub enhanced: u32,
    /// Peak of `aggregate` since the last report.
    pub peak_aggregate: u32,
    /// Peak of `enhanced` since the last report.
    pub peak_enhanced: u32,
}

impl CallCounts {
    /// Calls that are not enhanced (CUBE Standard Trunk).
    pub fn standard(&self) -> u32 {
        self.aggregate - self.enhanced
    }

    /// Standard-tag value for a report: peak aggregate minus peak enhanced (reference "License
    /// Usage Reporting", standalone mode).
    pub fn standard_peak(&self) -> u32 {
        self.peak_aggregate.saturating_sub(self.peak_enhanced)
    }

    fn bump(&mut self) {
        self.peak_aggregate = self.peak_aggregate.max(self.aggregate);
        self.peak_enhanced = self.peak_enhanced.max(self.enhanced);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// INVITE sent to B, no final answer yet.
    Proceeding,
    /// A cancelled; waiting for B's final response to clean up.
    Cancelling,
    /// Both dialogs confirmed.
    Established,
}

#[derive(Debug)]
struct Call {
    state: CallState,
    a: Dialog,
    b: Dialog,
    route_forking: bool,
    /// The caller's INVITE and its server transaction, while it can still be answered; `None`
    /// for a call restored from the journal (it was answered before the restart).
    a_invite: Option<(TxHandle, Request)>,
    b_invite_tx: Option<TxHandle>,
    b_invite_via: String,
    b_invite_to: String,
    b_invite_cseq: u32,
    b_provisional: bool,
    cancel_pending: bool,
    ports: [u16; 2],
    /// Local addresses per leg (A from the config, B from the route's bind).
    binds: [Bind; 2],
    media: [Option<AudioMedia>; 2],
    sdp_version: u64,
    session_id: u64,
    fork: ForkSequence,
    fork_leg: Option<Leg>,
    enhanced: bool,
    counted: bool,
    /// Session expiry and maximum duration deadlines (mirrored in `B2bua::deadlines`).
    timers: CallTimers,
    /// The RFC 4028 interval of the last 2xx that armed the session timer (journalled, so a
    /// restored call is armed again).
    session_interval: Option<Duration>,
    /// A voice bot's call (bot.rs): leg B is the bot, with no SIP peer.
    bot: Option<BotLeg>,
}

/// The bot side of a bot's call.
#[derive(Debug, Clone, Default)]
struct BotLeg {
    /// The caller's ACK for our 2xx arrived (RFC 3261 §15: no BYE before it).
    acked: bool,
    /// The bot's fork failed before the ACK: the call ends when it comes.
    failed: bool,
}

impl Call {
    fn dialog(&mut self, leg: Leg) -> &mut Dialog {
        match leg {
            Leg::A => &mut self.a,
            Leg::B => &mut self.b,
        }
    }
    /// Port a leg's peer sends to.
    fn port(&self, leg: Leg) -> u16 {
        self.ports[leg as usize]
    }
    /// The caller's INVITE transaction, its request and our leg A tag, while answerable.
    fn a_setup(&self) -> Option<(TxHandle, Request, String)> {
        let (tx, inv) = self.a_invite.as_ref()?;
        Some((*tx, inv.clone(), self.a.local_tag.clone()))
    }
}

/// What an in-dialog request's identifiers and source match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialogMatch {
    /// No dialog has this Call-ID and both tags: 481.
    None,
    /// The dialog of `leg` of the call, from an allowed source.
    Allowed(CallHandle, Leg),
    /// The dialog of `leg` of the call, from a source outside it: 403.
    Forbidden(CallHandle, Leg),
}

#[derive(Debug)]
enum Pending {
    /// Our INVITE on leg B for a new call.
    InitialInvite(CallHandle),
    /// A request relayed from `from` to the other leg; its response goes back on `server_tx`.
    Relay {
        call: CallHandle,
        from: Leg,
        server_tx: TxHandle,
        orig: Box<Request>,
        /// The relayed offer's audio (re-INVITE), recorded for `from` when the answer arrives.
        offer: Option<Box<AudioMedia>>,
    },
    /// A request we originated (BYE, CANCEL, status INFO); the response needs no action.
    Own,
}

/// The B2BUA core.
pub struct B2bua<P: PortAllocator> {
    cfg: Config,
    ports: P,
    tl: TransactionLayer,
    calls: BTreeMap<CallHandle, Call>,
    by_dialog: HashMap<(String, String), (CallHandle, Leg)>,
    server_invites: HashMap<TxHandle, CallHandle>,
    pending: HashMap<TxHandle, Pending>,
    out: VecDeque<Output>,
    next_call: u32,
    /// Source of tags, branches, Call-IDs and SDP session ids: a CSPRNG in the shell, a seeded
    /// one in tests. Predictable ids would let a third party address a dialog (issue 13).
    rng: Box<dyn RngCore + Send>,
    /// Certificate names of live TLS connections (for `security.controller_tls_names`).
    identities: PeerIdentities,
    security: SecurityCounters,
    counts: CallCounts,
    /// Every armed per-call timer, soonest first; each entry mirrors a `Call::timers` slot so
    /// `poll_timeout` is a lookup rather than a scan over calls.
    deadlines: BTreeSet<(Instant, CallHandle, CallTimer)>,
    /// Calls whose journalled state changed since the last [`B2bua::take_changed`].
    changed: BTreeSet<CallHandle>,
    /// Status INFOs caused by a fork's speech-server connection, at most one per fork per
    /// [`STATUS_INTERVAL`] (fork.rs).
    /// Keyed by call and fork GUID.
    pacer: StatusPacer<(CallHandle, String), StatusReport>,
}

const SDP: &str = "application/sdp";

/// The SDP part and the fork JSON part of a body, each if present.
type BodyParts = (Option<Vec<u8>>, Option<Vec<u8>>);

/// SDP and fork JSON parts of a request body.
fn body_parts(headers: &rsip::Headers, body: &[u8]) -> Result<BodyParts, &'static str> {
    if body.is_empty() {
        return Ok((None, None));
    }
    let ct = content_type(headers).unwrap_or_default();
    let mt = multipart::media_type(&ct);
    if mt == SDP {
        return Ok((Some(body.to_vec()), None));
    }
    if mt == fork_request::CONTENT_TYPE {
        return Ok((None, Some(body.to_vec())));
    }
    if mt.starts_with("multipart/") {
        let parts = multipart::split(&ct, body).map_err(|_| "Malformed Multipart Body")?;
        let find = |t: &str| {
            parts
                .iter()
                .find(|p| p.media_type() == t)
                .map(|p| p.body.clone())
        };
        return Ok((find(SDP), find(fork_request::CONTENT_TYPE)));
    }
    Ok((None, None))
}

impl<P: PortAllocator> B2bua<P> {
    /// A B2BUA with no calls. `rng` must be a CSPRNG seeded from the OS outside tests
    /// (`StdRng::from_entropy()`): every tag, branch and Call-ID comes from it.
    pub fn new(cfg: Config, ports: P, rng: Box<dyn RngCore + Send>) -> Self {
        Self {
            cfg,
            ports,
            tl: TransactionLayer::new(),
            calls: BTreeMap::new(),
            by_dialog: HashMap::new(),
            server_invites: HashMap::new(),
            pending: HashMap::new(),
            out: VecDeque::new(),
            next_call: 0,
            rng,
            identities: PeerIdentities::default(),
            security: SecurityCounters::default(),
            counts: CallCounts::default(),
            deadlines: BTreeSet::new(),
            changed: BTreeSet::new(),
            pacer: StatusPacer::new(STATUS_INTERVAL),
        }
    }

    /// Calls whose [`CallSnapshot`] may have changed (or that ended) since the last call: the
    /// shell journals [`B2bua::snapshot`] of each, or its end when that is `None`. Drain after
    /// every input, with [`B2bua::poll_output`].
    #[must_use]
    pub fn take_changed(&mut self) -> Vec<CallHandle> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    fn touch(&mut self, call: CallHandle) {
        self.changed.insert(call);
    }

    /// `leg`'s negotiated media of a live call (what `SessionEvent::MediaUp` carried), for
    /// restoring the media layer next to [`B2bua::restore`].
    pub fn negotiated_media(&self, call: CallHandle, leg: Leg) -> Option<NegotiatedMedia> {
        self.negotiated(call, leg)
    }

    /// Next transmit or session event. Drain until `None` after every `handle_*` call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Current call counts.
    pub fn counts(&self) -> CallCounts {
        self.counts
    }

    /// Returns the counts for a license report and starts a new peak interval.
    pub fn take_license_report(&mut self) -> CallCounts {
        let r = self.counts;
        self.counts.peak_aggregate = self.counts.aggregate;
        self.counts.peak_enhanced = self.counts.enhanced;
        r
    }

    /// Live calls.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// The port allocator (tests and the shell inspect it).
    pub fn ports(&self) -> &P {
        &self.ports
    }

    /// The port allocator, to reserve ports no call asked for (restart reconciliation).
    pub fn ports_mut(&mut self) -> &mut P {
        &mut self.ports
    }

    /// Requests refused by the security policy since start.
    pub fn security_counters(&self) -> SecurityCounters {
        self.security
    }

    /// The TLS connection `conn` from `peer` presented a verified certificate naming `names`
    /// (subject CN and DNS SANs). Call before feeding that connection's first message.
    pub fn handle_peer_identity(&mut self, peer: Peer, conn: u64, names: Vec<String>) {
        self.identities.connected(peer, conn, names);
    }

    /// Connection `conn` from `peer` closed; its certificate names no longer apply.
    pub fn handle_connection_closed(&mut self, peer: Peer, conn: u64) {
        self.identities.closed(peer, conn);
    }

    /// Feeds raw bytes from `from`. Unparseable requests are answered here, statelessly: 400
    /// with the reason, or 501 with Allow for an unknown method (RFC 3261 §8.2.1, §21.5.2).
    pub fn handle_datagram(&mut self, now: Instant, from: Peer, bytes: &[u8]) {
        match message::parse(bytes) {
            Ok(msg) => self.handle_message(now, from, msg),
            Err(ParseError::UnknownMethod { head, .. }) => {
                if let Some(b) =
                    message::raw_response(&head, 501, "Not Implemented", &[("Allow", ALLOW)])
                {
                    self.out.push_back(Output::Transmit(Transmit {
                        dest: from,
                        payload: b,
                        tx: None,
                    }));
                }
            }
            Err(ParseError::Malformed {
                reason,
                head: Some(head),
            }) => {
                if let Some(b) = message::raw_response(&head, 400, reason, &[]) {
                    self.out.push_back(Output::Transmit(Transmit {
                        dest: from,
                        payload: b,
                        tx: None,
                    }));
                }
            }
            Err(e) => trace!(%e, "dropping unparseable datagram"),
        }
    }

    /// Feeds a parsed message.
    pub fn handle_message(&mut self, now: Instant, from: Peer, msg: SipMessage) {
        self.tl.handle_message(now, from, msg);
        self.pump(now);
    }

    /// The shell failed to send a transmit that carried `tx`.
    pub fn handle_transport_error(&mut self, now: Instant, tx: TxHandle) {
        self.tl.handle_transport_error(now, tx);
        self.pump(now);
    }

    fn pump(&mut self, now: Instant) {
        while let Some(o) = self.tl.poll_output() {
            match o {
                TxOutput::Transmit(t) => self.out.push_back(Output::Transmit(t)),
                TxOutput::Event(e) => self.on_tx_event(now, e),
            }
        }
    }

    fn emit(&mut self, e: SessionEvent) {
        debug!(?e, "session event");
        self.out.push_back(Output::Session(e));
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        now: Instant,
        tx: TxHandle,
        req: &Request,
        code: u16,
        reason: Option<&str>,
        to_tag: Option<&str>,
        extra: Vec<Header>,
        body: Option<(&str, Vec<u8>)>,
    ) {
        let mut r = message::response_to(req, code, reason, to_tag);
        r.headers.extend(extra);
        if let Some((ct, b)) = body {
            r.headers
                .push(Header::Other("Content-Type".into(), ct.into()));
            r.body = b;
        }
        if let Err(e) = self.tl.send_response(now, tx, r) {
            trace!(%e, "response not sent");
        }
    }

    fn on_tx_event(&mut self, now: Instant, e: TxEvent) {
        match e {
            TxEvent::Request { tx, from, request } => self.on_request(now, tx, from, request),
            TxEvent::Ack { from, request, .. } => {
                // We ACK leg B ourselves when its 2xx arrives, so A's ACK needs no relaying.
                trace!("ACK absorbed");
                // An ACK to a 2xx is its own transaction (RFC 3261 §17.1.1.3): found by dialog.
                let keys = message::keys(&SipMessage::Request(request));
                let to_tag = keys.as_ref().and_then(|k| k.to_tag.as_deref());
                if let (Some(k), Some(to_tag)) = (&keys, to_tag) {
                    if let DialogMatch::Allowed(call, Leg::A) =
                        self.match_dialog(&k.call_id, to_tag, k.from_tag.as_deref(), from)
                    {
                        self.bot_acked(now, call);
                    }
                }
            }
            TxEvent::Response { tx, response } => self.on_response(now, tx, response),
            TxEvent::Timeout { tx, .. } | TxEvent::TransportError { tx } => {
                let reason = if matches!(e, TxEvent::Timeout { .. }) {
                    EndReason::Timeout
                } else {
                    EndReason::TransportError
                };
                self.on_failure(now, tx, reason)
            }
            TxEvent::Terminated { tx } => {
                self.pending.remove(&tx);
                self.server_invites.remove(&tx);
            }
        }
    }

    fn on_failure(&mut self, now: Instant, tx: TxHandle, reason: EndReason) {
        if let Some(call) = self.server_invites.get(&tx).copied() {
            // No ACK for our 2xx to A (Timer L), §13.3.1.4: end the call.
            if self
                .calls
                .get(&call)
                .is_some_and(|c| c.state == CallState::Established)
            {
                self.hangup(now, call, None, reason);
            }
            return;
        }
        match self.pending.remove(&tx) {
            Some(Pending::InitialInvite(call)) => {
                let Some(c) = self.calls.get(&call) else {
                    return;
                };
                let Some((atx, inv, tag)) = c.a_setup() else {
                    return self.end_call(call, reason);
                };
                if self.tl.can_respond(atx) {
                    let code = if reason == EndReason::Timeout {
                        408
                    } else {
                        503
                    };
                    self.respond(now, atx, &inv, code, None, Some(&tag), vec![], None);
                }
                self.end_call(call, reason);
            }
            Some(Pending::Relay {
                server_tx,
                orig,
                call,
                ..
            }) => {
                let tag = self
                    .calls
                    .get(&call)
                    .map(|c| c.dialog_tag_for_response(&orig));
                self.respond(
                    now,
                    server_tx,
                    &orig,
                    408,
                    None,
                    tag.flatten().as_deref(),
                    vec![],
                    None,
                );
            }
            Some(Pending::Own) | None => {}
        }
    }

    fn on_request(&mut self, now: Instant, tx: TxHandle, from: Peer, req: Request) {
        let Some(k) = message::keys(&SipMessage::Request(req.clone())) else {
            return;
        };
        // §8.2.2 / §16.3: a request that has used up its hops stops here.
        if let Some(mf) = header_values(&req.headers, "Max-Forwards").first() {
            if mf.trim() == "0" && req.method != Method::Options {
                self.respond(now, tx, &req, 483, None, None, vec![], None);
                return;
            }
        }
        if let Some(to_tag) = &k.to_tag {
            match self.match_dialog(&k.call_id, to_tag, k.from_tag.as_deref(), from) {
                DialogMatch::Allowed(call, leg) => {
                    self.in_dialog(now, tx, from, call, leg, req, k.cseq)
                }
                DialogMatch::Forbidden(call, leg) => {
                    self.security.forbidden_dialog_source += 1;
                    debug!(
                        ?call,
                        ?leg,
                        from = %from.addr,
                        method = %req.method,
                        "in-dialog request from outside the dialog: 403"
                    );
                    self.respond(now, tx, &req, 403, None, None, vec![], None)
                }
                DialogMatch::None => self.respond(now, tx, &req, 481, None, None, vec![], None),
            }
            return;
        }
        match req.method {
            Method::Invite => self.new_call(now, tx, from, req),
            Method::Cancel => self.on_cancel(now, tx, from, req),
            Method::Options => {
                let allow = Header::Other("Allow".into(), ALLOW.into());
                let accept = Header::Other(
                    "Accept".into(),
                    format!("{SDP}, {}", fork_request::CONTENT_TYPE),
                );
                let tag = self.token();
                self.respond(
                    now,
                    tx,
                    &req,
                    200,
                    None,
                    Some(&tag),
                    vec![allow, accept],
                    None,
                );
            }
            // Out-of-dialog INFO/BYE: no call to act on (reference: INFO outside a call gets 4xx).
            Method::Info | Method::Bye | Method::Update | Method::PRack => {
                self.respond(now, tx, &req, 481, None, None, vec![], None)
            }
            _ => {
                let allow = Header::Other("Allow".into(), ALLOW.into());
                self.respond(now, tx, &req, 405, None, None, vec![allow], None);
            }
        }
    }

    /// Finds the dialog an in-dialog request belongs to and applies the dialog-source rule.
    /// The dialog id is the Call-ID, our tag (the request's To-tag) and the peer's tag (its
    /// From-tag, RFC 3261 §12.2.2); a request that differs in any of them matches no dialog
    /// (481). A full match from a source that is neither the leg's peer nor a trusted proxy is
    /// [`DialogMatch::Forbidden`] (403). Before the callee's 2xx, leg B has no peer tag yet, so
    /// requests on it match nothing; none would have an effect then.
    fn match_dialog(
        &self,
        call_id: &str,
        to_tag: &str,
        from_tag: Option<&str>,
        from: Peer,
    ) -> DialogMatch {
        let Some(&(call, leg)) = self
            .by_dialog
            .get(&(call_id.to_string(), to_tag.to_string()))
        else {
            return DialogMatch::None;
        };
        let Some(c) = self.calls.get(&call) else {
            return DialogMatch::None;
        };
        let d = match leg {
            Leg::A => &c.a,
            Leg::B => &c.b,
        };
        if d.remote_tag.as_deref() != from_tag {
            return DialogMatch::None;
        }
        if self
            .cfg
            .security
            .dialog_source_allowed(d.peer, &d.remote_target, from)
        {
            DialogMatch::Allowed(call, leg)
        } else {
            DialogMatch::Forbidden(call, leg)
        }
    }

    /// True when a fork request from `from` may be acted on (`security.controllers` or
    /// `security.controller_tls_names`).
    fn is_controller(&self, from: Peer) -> bool {
        self.cfg
            .security
            .is_controller(from, self.identities.names(from))
    }

    fn on_response(&mut self, now: Instant, tx: TxHandle, resp: Response) {
        let code = resp.status_code.code();
        match self.pending.get(&tx) {
            Some(Pending::InitialInvite(call)) => {
                let call = *call;
                if code >= 200 {
                    // The transaction stays (Accepted/Completed) but its outcome is handled now;
                    // a 2xx retransmission still maps here and is re-ACKed.
                    if code >= 300 {
                        self.pending.remove(&tx);
                    }
                }
                self.on_invite_response(now, call, resp);
            }
            Some(Pending::Relay { .. }) => {
                if code < 200 {
                    return; // provisional responses to relayed requests are not forwarded
                }
                if let Some(Pending::Relay {
                    call,
                    from,
                    server_tx,
                    orig,
                    offer,
                }) = self.pending.remove(&tx)
                {
                    self.on_relay_response(
                        now,
                        call,
                        from,
                        server_tx,
                        *orig,
                        offer.map(|o| *o),
                        resp,
                    );
                }
            }
            Some(Pending::Own) | None => {
                // A 2xx retransmission to a relayed re-INVITE lands here after the relay
                // finished; re-ACK is not possible without the dialog, and our first ACK already
                // went out. Nothing else needs a reaction.
            }
        }
    }

    fn negotiated(&self, call: CallHandle, leg: Leg) -> Option<NegotiatedMedia> {
        let c = self.calls.get(&call)?;
        let own = c.media[leg as usize].as_ref()?;
        // The codec that flows is the answer's choice; take it from the B side's answer when
        // present so both legs report the same codec.
        let mut m = NegotiatedMedia::from_audio(own, c.binds[leg as usize].media_ip, c.port(leg));
        if let Some(answer) = c.media[Leg::B as usize].as_ref() {
            m.codec = answer.primary_codec().cloned();
        }
        Some(m)
    }

    /// Moves transmits produced by stateless sends to the output queue (they carry no events).
    fn pump_quiet(&mut self) {
        while let Some(o) = self.tl.poll_output() {
            match o {
                TxOutput::Transmit(t) => self.out.push_back(Output::Transmit(t)),
                TxOutput::Event(e) => trace!(?e, "event during stateless send deferred"),
            }
        }
    }
}

impl Call {
    fn dialog_peer(&self, leg: Leg) -> Peer {
        match leg {
            Leg::A => self.a.peer,
            Leg::B => self.b.peer,
        }
    }

    /// Our tag on the leg `req` arrived on (for responses to in-dialog requests it is already in
    /// To, so this is only needed when it is missing).
    fn dialog_tag_for_response(&self, req: &Request) -> Option<String> {
        let k = message::keys(&SipMessage::Request(req.clone()))?;
        if k.call_id == self.a.call_id {
            Some(self.a.local_tag.clone())
        } else {
            Some(self.b.local_tag.clone())
        }
    }
}

#[cfg(test)]
mod fork_status_tests;
#[cfg(test)]
mod restart_tests;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod tests;
