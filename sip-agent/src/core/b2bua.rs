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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::RngCore;
use rsip::{Header, Method, Request, Response, SipMessage};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, trace};

use crate::core::authz::{self, PeerIdentities, SecurityCounters};
use crate::core::dialog::{header_values, uri_of, Dialog, RequestParts};
use crate::core::fork_request::{
    self, Carrier, ForkError, ForkRequest, ForkSequence, ForkState, StatusReport,
};
use crate::core::message::{self, ParseError};
use crate::core::multipart;
use crate::core::sdp::{AudioMedia, Codec, Direction, Sdp};
use crate::core::session_timer::{self, CallTimer, CallTimers, RequestCheck, SessionExpires};
use crate::core::transaction::{
    Output as TxOutput, Peer, TransactionLayer, Transmit, Transport, TxEvent, TxHandle,
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

/// How a route matches the Request-URI user part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePattern {
    /// The user starts with this string.
    Prefix(String),
    /// Same length as the user; `X` and `.` match any one character, anything else itself (the
    /// single-digit wildcards of Cisco dial-peer destination patterns).
    Pattern(String),
}

impl RoutePattern {
    /// Number of literal characters matched, or `None` for no match. More literal characters is
    /// a more specific route (dial-peer "longest explicit match").
    pub fn score(&self, user: &str) -> Option<usize> {
        match self {
            Self::Prefix(p) => user.starts_with(p.as_str()).then_some(p.len()),
            Self::Pattern(p) => {
                if p.chars().count() != user.chars().count() {
                    return None;
                }
                let mut literal = 0;
                for (pc, uc) in p.chars().zip(user.chars()) {
                    match pc {
                        'X' | 'x' | '.' => {}
                        c if c == uc => literal += 1,
                        _ => return None,
                    }
                }
                Some(literal)
            }
        }
    }
}

/// A routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// What it matches.
    pub pattern: RoutePattern,
    /// Where matching calls go.
    pub next_hop: Peer,
    /// Whether fork requests are allowed on calls using this route (the reference's media-class
    /// binding on the dial-peer); without it a START gets "Unsupported flow".
    pub forking: bool,
    /// Local addresses the outbound leg uses; `None` means [`Config::sip_addr`] and
    /// [`Config::media_ip`]. The dial-peer's `voice-class sip bind control|media
    /// source-interface` in CUBE terms: a B2BUA between two networks speaks to each from its own
    /// interface.
    pub bind: Option<Bind>,
}

/// Local addresses one leg of a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// IP written in Via, Contact and Call-ID host (the port comes from the transport, see
    /// [`Config::transport_ports`]).
    pub sip_ip: IpAddr,
    /// Address written into SDP `c=` and `o=` for this leg's anchored media.
    pub media_ip: IpAddr,
}

/// Static configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Our SIP address as written in Via and Contact.
    pub sip_addr: SocketAddr,
    /// Address written into SDP `c=` for anchored media.
    pub media_ip: IpAddr,
    /// Routing rules; the most specific match wins, ties go to the earlier rule.
    pub routes: Vec<Route>,
    /// Listening port per transport, written into Via sent-by and Contact for messages on that
    /// transport; a transport not listed uses `sip_addr`'s port.
    pub transport_ports: Vec<(Transport, u16)>,
    /// Who may send in-dialog and fork requests (`[security]`).
    pub security: authz::Policy,
    /// Shortest RFC 4028 session interval accepted: a request asking for less gets 422 with this
    /// `Min-SE` (§8.1). At least [`session_timer::MIN_SE_FLOOR`] (90 s).
    pub min_se: Duration,
    /// A call connected this long is released (BYE on both legs); `None` means no limit.
    pub max_call_duration: Option<Duration>,
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
}

/// The Reason header on the BYEs of a call released for dead media: Q.850 cause 102,
/// "recovery on timer expiry", the cause the maximum duration uses too, with its own text.
pub const REASON_MEDIA_TIMEOUT: &str = "Q.850;cause=102;text=\"Media timeout\"";

impl EndReason {
    /// The RFC 3326 Reason header value for BYEs sent because of this reason, if any.
    fn reason_header(self) -> Option<&'static str> {
        match self {
            EndReason::SessionExpired => Some(CallTimer::SessionExpires.reason_header()),
            EndReason::MaxDuration => Some(CallTimer::MaxDuration.reason_header()),
            EndReason::MediaTimeout => Some(REASON_MEDIA_TIMEOUT),
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
    },
    /// The call is over; its handle will not appear again.
    CallEnded {
        /// Call.
        call: CallHandle,
        /// Why.
        reason: EndReason,
    },
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

/// Why [`B2bua::restore`] refused a journalled call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// A live call already has this handle.
    #[error("call {0} exists already")]
    DuplicateCall(u32),
    /// A live call already has one of its dialogs (Call-ID and our tag).
    #[error("a dialog of call {0} belongs to another call")]
    DialogInUse(u32),
    /// A leg has no peer tag: the call was never established.
    #[error("call {0} has an unconfirmed dialog")]
    NotEstablished(u32),
    /// Its media port is in use or outside the port range.
    #[error("media port {port} of call {call} is taken or outside the range")]
    PortUnavailable {
        /// Call.
        call: u32,
        /// Port.
        port: u16,
    },
}

/// What the journal keeps of an established call (docs/sip-state.md): both dialogs (Call-IDs,
/// tags, CSeqs, remote targets, route sets and the transport peers the authorization rules
/// check), the anchored media and the fork sequence. It is enough to answer a BYE on one leg and
/// send one on the other, to refuse requests from outside the dialog exactly as before the
/// restart, and to go on relaying re-INVITEs and fork requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSnapshot {
    /// The [`CallHandle`] number.
    pub call: u32,
    /// Leg A's dialog.
    pub a: Dialog,
    /// Leg B's dialog.
    pub b: Dialog,
    /// Whether the route allows forking.
    pub route_forking: bool,
    /// Our RTP port per leg (A, B).
    pub ports: [u16; 2],
    /// Our addresses per leg.
    pub binds: [Bind; 2],
    /// Each leg's peer's audio, as last negotiated.
    pub media: [Option<AudioMedia>; 2],
    /// SDP `o=` version we last sent.
    pub sdp_version: u64,
    /// SDP `o=` session id.
    pub session_id: u64,
    /// The fork request sequence (active fork GUID, carrier).
    pub fork: ForkSequence,
    /// The leg the controller talks on.
    pub fork_leg: Option<Leg>,
    /// The call forked successfully once (licensing).
    pub enhanced: bool,
    /// The RFC 4028 interval in force, seconds.
    pub session_interval_secs: Option<u64>,
    /// CSeq of our INVITE on leg B (ACKs of its 2xx reuse it).
    pub b_invite_cseq: u32,
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
}

const SDP: &str = "application/sdp";

fn content_type(headers: &rsip::Headers) -> Option<String> {
    header_values(headers, "Content-Type").into_iter().next()
}

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

    /// The journal record of an established call; `None` for a call still being set up (not
    /// journalled: it has no flows yet) or gone.
    pub fn snapshot(&self, call: CallHandle) -> Option<CallSnapshot> {
        let c = self.calls.get(&call)?;
        if c.state != CallState::Established {
            return None;
        }
        Some(CallSnapshot {
            call: call.0,
            a: c.a.clone(),
            b: c.b.clone(),
            route_forking: c.route_forking,
            ports: c.ports,
            binds: c.binds,
            media: c.media.clone(),
            sdp_version: c.sdp_version,
            session_id: c.session_id,
            fork: c.fork.clone(),
            fork_leg: c.fork_leg,
            enhanced: c.enhanced,
            session_interval_secs: c.session_interval.map(|d| d.as_secs()),
            b_invite_cseq: c.b_invite_cseq,
        })
    }

    /// Brings back an established call from the journal after a restart. Its dialogs go through
    /// the same matching and source rules as before ([`Config::security`]), its ports are
    /// reserved in the allocator, and its session timer and maximum duration are armed again
    /// counting from `now` (the journal holds no clock reading, so a restart can only lengthen
    /// them). Emits nothing: its flows and fork are still in fork-agent.
    pub fn restore(&mut self, now: Instant, snap: CallSnapshot) -> Result<(), RestoreError> {
        let id = snap.call;
        let call = CallHandle(id);
        if self.calls.contains_key(&call) {
            return Err(RestoreError::DuplicateCall(id));
        }
        if snap.a.remote_tag.is_none() || snap.b.remote_tag.is_none() {
            return Err(RestoreError::NotEstablished(id));
        }
        let keys = [
            (snap.a.call_id.clone(), snap.a.local_tag.clone()),
            (snap.b.call_id.clone(), snap.b.local_tag.clone()),
        ];
        if keys[0] == keys[1] || keys.iter().any(|k| self.by_dialog.contains_key(k)) {
            return Err(RestoreError::DialogInUse(id));
        }
        for (i, &port) in snap.ports.iter().enumerate() {
            if !self.ports.reserve(port) {
                for &p in &snap.ports[..i] {
                    self.ports.release(p);
                }
                return Err(RestoreError::PortUnavailable { call: id, port });
            }
        }
        let [ka, kb] = keys;
        self.by_dialog.insert(ka, (call, Leg::A));
        self.by_dialog.insert(kb, (call, Leg::B));
        self.next_call = self.next_call.max(id);
        self.counts.aggregate += 1;
        if snap.enhanced {
            self.counts.enhanced += 1;
        }
        self.counts.bump();
        let session_interval = snap.session_interval_secs.map(Duration::from_secs);
        self.calls.insert(
            call,
            Call {
                state: CallState::Established,
                a: snap.a,
                b: snap.b,
                route_forking: snap.route_forking,
                a_invite: None,
                b_invite_tx: None,
                // Only a CANCEL uses these, and an established call is never cancelled.
                b_invite_via: String::new(),
                b_invite_to: String::new(),
                b_invite_cseq: snap.b_invite_cseq,
                b_provisional: true,
                cancel_pending: false,
                ports: snap.ports,
                binds: snap.binds,
                media: snap.media,
                sdp_version: snap.sdp_version,
                session_id: snap.session_id,
                fork: snap.fork,
                fork_leg: snap.fork_leg,
                enhanced: snap.enhanced,
                counted: true,
                timers: CallTimers::default(),
                session_interval,
            },
        );
        if let Some(interval) = session_interval {
            let at = session_timer::bye_deadline(now, interval);
            self.set_timer(call, CallTimer::SessionExpires, Some(at));
        }
        if let Some(max) = self.cfg.max_call_duration {
            self.set_timer(call, CallTimer::MaxDuration, Some(now + max));
        }
        Ok(())
    }

    /// Ends an established call from outside SIP (fork-agent removed its media as dead): BYE
    /// on both legs with `reason`'s Reason header, then the usual teardown events.
    pub fn release(
        &mut self,
        now: Instant,
        call: CallHandle,
        reason: EndReason,
    ) -> Result<(), B2buaError> {
        let c = self.calls.get(&call).ok_or(B2buaError::UnknownCall)?;
        if c.state != CallState::Established {
            return Err(B2buaError::NotEstablished);
        }
        info!(?call, call_id = %c.a.call_id, ?reason, "releasing call: BYE on both legs");
        self.hangup(now, call, None, reason);
        self.pump(now);
        Ok(())
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

    /// Next deadline (transaction timers, session expiry, maximum duration); re-read after
    /// every input and after [`B2bua::handle_timeout`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let call = self.deadlines.first().map(|(at, _, _)| *at);
        match (self.tl.poll_timeout(), call) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The soonest per-call timer, for debugging (transaction timers have
    /// `TransactionLayer::timeout_reason`).
    pub fn timeout_reason(&self) -> Option<(CallHandle, CallTimer, Instant)> {
        self.deadlines.first().map(|(at, c, t)| (*c, *t, *at))
    }

    /// Arms (`Some`) or stops (`None`) a call's timer, keeping the deadline index in step.
    fn set_timer(&mut self, call: CallHandle, timer: CallTimer, at: Option<Instant>) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if let Some(old) = c.timers.set(timer, at) {
            self.deadlines.remove(&(old, call, timer));
        }
        if let Some(at) = at {
            self.deadlines.insert((at, call, timer));
        }
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

    /// A fresh random token: 128 bits from the injected RNG, as 32 hex digits. Used for tags,
    /// branches and Call-IDs; RFC 3261 §19.3 asks for at least 32 random bits in a tag, §8.1.1.4
    /// for Call-IDs that are hard to guess. 128 bits keep a full dialog id unguessable even when
    /// the peer's own tag and Call-ID are predictable.
    fn token(&mut self) -> String {
        let mut b = [0u8; 16];
        self.rng.fill_bytes(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The addresses `leg` of `call` uses (the config's defaults once the call is gone).
    fn bind_of(&self, call: CallHandle, leg: Leg) -> Bind {
        self.calls
            .get(&call)
            .map(|c| c.binds[leg as usize])
            .unwrap_or(self.default_bind())
    }

    fn default_bind(&self) -> Bind {
        Bind {
            sip_ip: self.cfg.sip_addr.ip(),
            media_ip: self.cfg.media_ip,
        }
    }

    /// Our SIP address on `transport` from `bind`.
    fn sip_addr(&self, transport: Transport, bind: Bind) -> SocketAddr {
        let port = self
            .cfg
            .transport_ports
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|(_, p)| *p)
            .unwrap_or(self.cfg.sip_addr.port());
        SocketAddr::new(bind.sip_ip, port)
    }

    /// The transport towards `leg`'s peer (UDP once the call is gone).
    fn leg_transport(&self, call: CallHandle, leg: Leg) -> Transport {
        self.calls
            .get(&call)
            .map_or(Transport::Udp, |c| c.dialog_peer(leg).transport)
    }

    /// A fresh Via for a request we send on `leg`.
    fn leg_via(&mut self, call: CallHandle, leg: Leg) -> String {
        let transport = self.leg_transport(call, leg);
        self.via(transport, self.bind_of(call, leg))
    }

    fn via(&mut self, transport: Transport, bind: Bind) -> String {
        let t = match transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        };
        let token = self.token();
        format!(
            "SIP/2.0/{t} {};branch={}{token}",
            self.sip_addr(transport, bind),
            message::BRANCH_COOKIE
        )
    }

    fn contact(&self, transport: Transport, bind: Bind) -> String {
        let param = match transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
            Transport::Ws | Transport::Wss => ";transport=ws",
        };
        format!("<sip:xdpfork@{}{param}>", self.sip_addr(transport, bind))
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

    /// Fires due timers: transaction timers first, then calls whose session expired or that
    /// reached the maximum duration. A call not due is left alone, so a spurious call is a
    /// no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tl.handle_timeout(now);
        self.pump(now);
        while let Some(&(at, call, timer)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.set_timer(call, timer, None);
            self.deadlines.remove(&(at, call, timer));
            let reason = match timer {
                CallTimer::SessionExpires => EndReason::SessionExpired,
                CallTimer::MaxDuration => EndReason::MaxDuration,
            };
            if let Some(c) = self.calls.get(&call) {
                info!(
                    ?call,
                    call_id = %c.a.call_id,
                    ?reason,
                    "releasing call: BYE on both legs"
                );
            }
            self.hangup(now, call, None, reason);
            self.pump(now);
        }
    }

    /// The shell failed to send a transmit that carried `tx`.
    pub fn handle_transport_error(&mut self, now: Instant, tx: TxHandle) {
        self.tl.handle_transport_error(now, tx);
        self.pump(now);
    }

    /// A fork status from the fork layer: sent to the controller in an INFO; `Started` makes the
    /// call Enhanced for licensing; `Stopped`/`Error` on the active fork ends it so START is
    /// allowed again.
    pub fn handle_fork_status(
        &mut self,
        now: Instant,
        call: CallHandle,
        report: StatusReport,
    ) -> Result<(), B2buaError> {
        let c = self.calls.get_mut(&call).ok_or(B2buaError::UnknownCall)?;
        let leg = c.fork_leg.ok_or(B2buaError::NoForkController)?;
        self.changed.insert(call);
        match report.state {
            ForkState::Started if !c.enhanced => {
                c.enhanced = true;
                if c.counted {
                    self.counts.enhanced += 1;
                    self.counts.bump();
                }
            }
            ForkState::Stopped | ForkState::Error
                if report.call_guid.as_deref() == c.fork.active_guid() =>
            {
                c.fork.end()
            }
            _ => {}
        }
        self.send_status(now, call, leg, &report);
        self.pump(now);
        Ok(())
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
            TxEvent::Ack { .. } => {
                // We ACK leg B ourselves when its 2xx arrives, so A's ACK needs no relaying.
                trace!("ACK absorbed")
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

    fn route(&self, user: &str) -> Option<Route> {
        let mut best: Option<(usize, &Route)> = None;
        for r in &self.cfg.routes {
            if let Some(s) = r.pattern.score(user) {
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, r));
                }
            }
        }
        best.map(|(_, r)| r.clone())
    }

    fn new_call(&mut self, now: Instant, tx: TxHandle, from: Peer, req: Request) {
        let reject = |me: &mut Self, code: u16, reason: Option<&str>| {
            me.respond(now, tx, &req, code, reason, None, vec![], None)
        };
        let user = req.uri.user().unwrap_or_default().to_string();
        let Some(route) = self.route(&user) else {
            return reject(self, 404, None);
        };
        let Some(contact) = header_values(&req.headers, "Contact").into_iter().next() else {
            return reject(self, 400, Some("Missing Contact"));
        };
        if session_timer::check_request(&req.headers, self.cfg.min_se) == RequestCheck::TooSmall {
            let min_se = session_timer::min_se_header(self.cfg.min_se);
            return self.respond(now, tx, &req, 422, None, None, vec![min_se], None);
        }
        let (sdp_bytes, _) = match body_parts(&req.headers, &req.body) {
            Ok(p) => p,
            Err(reason) => return reject(self, 400, Some(reason)),
        };
        // Delayed offer (INVITE without SDP) is not supported: see module doc.
        let Some(sdp_bytes) = sdp_bytes else {
            return reject(self, 488, None);
        };
        let Ok(mut sdp) = Sdp::parse(&sdp_bytes) else {
            return reject(self, 400, Some("Malformed SDP"));
        };
        let Some(offer) = sdp.audio() else {
            return reject(self, 488, None);
        };
        self.next_call = self.next_call.wrapping_add(1);
        let call = CallHandle(self.next_call);
        let Some(pa) = self.ports.allocate(call, Leg::A) else {
            return reject(self, 503, None);
        };
        let Some(pb) = self.ports.allocate(call, Leg::B) else {
            self.ports.release(pa);
            return reject(self, 503, None);
        };
        let Some(k) = message::keys(&SipMessage::Request(req.clone())) else {
            return;
        };
        let to = header_values(&req.headers, "To")
            .into_iter()
            .next()
            .unwrap_or_default();
        let from_hdr = header_values(&req.headers, "From")
            .into_iter()
            .next()
            .unwrap_or_default();
        let a_tag = self.token();
        let a = Dialog {
            call_id: k.call_id.clone(),
            local_tag: a_tag.clone(),
            remote_tag: k.from_tag.clone(),
            local_header: format!("{to};tag={a_tag}"),
            remote_header: from_hdr.clone(),
            remote_target: uri_of(&contact).to_string(),
            route_set: header_values(&req.headers, "Record-Route"),
            local_cseq: 0,
            remote_cseq: Some(k.cseq),
            peer: from,
        };
        let bind_a = self.default_bind();
        let bind_b = route.bind.unwrap_or(bind_a);
        let b_tag = self.token();
        let b_call_id = format!("{}@{}", self.token(), bind_b.sip_ip);
        let caller = uri_of(&from_hdr).to_string();
        let caller_user = caller.split_once(':').map(|(_, r)| r).unwrap_or(&caller);
        let caller_user = caller_user
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string();
        let target = format!("sip:{user}@{}", route.next_hop.addr);
        let mut b = Dialog {
            call_id: b_call_id,
            local_tag: b_tag.clone(),
            remote_tag: None,
            local_header: format!("<sip:{caller_user}@{}>;tag={b_tag}", bind_b.sip_ip),
            remote_header: format!("<{target}>"),
            remote_target: target,
            route_set: Vec::new(),
            local_cseq: 0,
            remote_cseq: None,
            peer: route.next_hop,
        };
        // SDP o= sess-id (RFC 4566 §5.2): any numeric value; kept below 2^62 for parsers that
        // read it as a signed 64-bit number.
        let session_id = self.rng.next_u64() >> 2;
        sdp.anchor_audio(bind_b.media_ip, pb);
        sdp.set_origin("xdpfork", session_id, 1, bind_b.media_ip);
        let body = sdp.to_bytes();
        let via = self.via(route.next_hop.transport, bind_b);
        let contact_b = self.contact(route.next_hop.transport, bind_b);
        let mf = header_values(&req.headers, "Max-Forwards")
            .first()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(70)
            .saturating_sub(1);
        let Some(mut b_req) = b.request(RequestParts {
            method: "INVITE",
            via: &via,
            contact: Some(&contact_b),
            body: Some((SDP, &body)),
            cseq: None,
            max_forwards: mf,
        }) else {
            self.ports.release(pa);
            self.ports.release(pb);
            return reject(self, 500, None);
        };
        b_req.headers.extend(session_timer::forward_request(
            &req.headers,
            self.cfg.min_se,
        ));
        let b_invite_to = b.remote_header.clone();
        let b_cseq = b.local_cseq;
        let b_tx = match self.tl.send_request(now, route.next_hop, b_req) {
            Ok(t) => t,
            Err(_) => {
                self.ports.release(pa);
                self.ports.release(pb);
                return reject(self, 500, None);
            }
        };
        debug!(?call, "new call routed");
        self.by_dialog
            .insert((a.call_id.clone(), a.local_tag.clone()), (call, Leg::A));
        self.by_dialog
            .insert((b.call_id.clone(), b.local_tag.clone()), (call, Leg::B));
        self.server_invites.insert(tx, call);
        self.pending.insert(b_tx, Pending::InitialInvite(call));
        self.calls.insert(
            call,
            Call {
                state: CallState::Proceeding,
                a,
                b,
                route_forking: route.forking,
                a_invite: Some((tx, req)),
                b_invite_tx: Some(b_tx),
                b_invite_via: via,
                b_invite_to,
                b_invite_cseq: b_cseq,
                b_provisional: false,
                cancel_pending: false,
                ports: [pa, pb],
                binds: [bind_a, bind_b],
                media: [Some(offer), None],
                sdp_version: 1,
                session_id,
                fork: ForkSequence::new(),
                fork_leg: None,
                enhanced: false,
                counted: false,
                timers: CallTimers::default(),
                session_interval: None,
            },
        );
    }

    fn on_cancel(&mut self, now: Instant, tx: TxHandle, from: Peer, req: Request) {
        // Only a CANCEL from the IP the INVITE came from finds it: the caller's branch may be
        // predictable, so a third party's copy must not cancel the call (docs/security.md).
        let target = self.tl.invite_for_cancel(&req, from);
        let call = target.and_then(|t| self.server_invites.get(&t).copied());
        let (Some(inv_tx), Some(call)) = (target, call) else {
            return self.respond(now, tx, &req, 481, None, None, vec![], None);
        };
        self.respond(now, tx, &req, 200, None, None, vec![], None);
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.state != CallState::Proceeding || !self.tl.can_respond(inv_tx) {
            return; // already answered: the CANCEL has no effect (§9.2)
        }
        let Some((_, inv, tag)) = c.a_setup() else {
            return;
        };
        c.state = CallState::Cancelling;
        // §9.1: CANCEL only after a provisional response; otherwise wait for one.
        if c.b_provisional {
            self.send_cancel_b(now, call);
        } else if let Some(c) = self.calls.get_mut(&call) {
            c.cancel_pending = true;
        }
        self.respond(now, inv_tx, &inv, 487, None, Some(&tag), vec![], None);
    }

    fn send_cancel_b(&mut self, now: Instant, call: CallHandle) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        c.cancel_pending = false;
        // §9.1: same Request-URI, Call-ID, From, To, CSeq number and single Via as the INVITE.
        let text = format!(
            "CANCEL {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} CANCEL\r\nContent-Length: 0\r\n\r\n",
            c.b.remote_target, c.b_invite_via, c.b.local_header, c.b_invite_to, c.b.call_id, c.b_invite_cseq
        );
        let peer = c.b.peer;
        if let Ok(SipMessage::Request(r)) = message::parse(text.as_bytes()) {
            if let Ok(t) = self.tl.send_request(now, peer, r) {
                self.pending.insert(t, Pending::Own);
            }
        }
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

    fn on_invite_response(&mut self, now: Instant, call: CallHandle, resp: Response) {
        let code = resp.status_code.code();
        let Some(k) = message::keys(&SipMessage::Response(resp.clone())) else {
            return;
        };
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if code < 200 {
            if code == 100 {
                return;
            }
            c.b_provisional = true;
            if c.cancel_pending {
                self.send_cancel_b(now, call);
                return;
            }
            if c.state != CallState::Proceeding {
                return;
            }
            let body = self.answer_for_a(call, &resp);
            let Some(c) = self.calls.get(&call) else {
                return;
            };
            let Some((atx, inv, tag)) = c.a_setup() else {
                return;
            };
            let contact = Header::Other(
                "Contact".into(),
                self.contact(c.a.peer.transport, c.binds[Leg::A as usize]),
            );
            self.respond(
                now,
                atx,
                &inv,
                code,
                None,
                Some(&tag),
                vec![contact],
                body.map(|b| (SDP, b)),
            );
            return;
        }
        if code >= 300 {
            let state = c.state;
            if let Some((atx, inv, tag)) = c
                .a_setup()
                .filter(|(atx, _, _)| state == CallState::Proceeding && self.tl.can_respond(*atx))
            {
                // Relay the failure code; 6xx and 4xx keep their class (§16.7 style). A 422
                // keeps its Min-SE so the caller can retry with a longer interval (RFC 4028 §6).
                let extra = session_timer::forward_response(code, &resp.headers);
                self.respond(now, atx, &inv, code, None, Some(&tag), extra, None);
            }
            let reason = if state == CallState::Cancelling {
                EndReason::Cancelled
            } else {
                EndReason::Rejected(code)
            };
            self.end_call(call, reason);
            return;
        }
        // 2xx: confirm the B dialog and ACK it (§13.2.2.4), also for retransmissions.
        let first = c.b.remote_tag.is_none()
            || c.state == CallState::Proceeding
            || c.state == CallState::Cancelling;
        if c.b.remote_tag.is_none() || c.b.remote_tag != k.to_tag {
            c.b.remote_tag = k.to_tag.clone();
            if let Some(to) = header_values(&resp.headers, "To").into_iter().next() {
                c.b.remote_header = to;
            }
            if let Some(ct) = header_values(&resp.headers, "Contact").into_iter().next() {
                c.b.remote_target = uri_of(&ct).to_string();
            }
            let mut rr = header_values(&resp.headers, "Record-Route");
            rr.reverse();
            c.b.route_set = rr;
        }
        self.ack_b(call);
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        match c.state {
            CallState::Cancelling => {
                // CANCEL race (§9.1): B answered anyway; ACK done above, now BYE it.
                self.send_bye(now, call, Leg::B, None);
                self.end_call(call, EndReason::Cancelled);
            }
            CallState::Proceeding if first => {
                c.state = CallState::Established;
                self.changed.insert(call);
                let body = self.answer_for_a(call, &resp);
                let Some(c) = self.calls.get_mut(&call) else {
                    return;
                };
                c.counted = true;
                let Some((atx, inv, tag)) = c.a_setup() else {
                    return;
                };
                let transport = c.a.peer.transport;
                let bind = c.binds[Leg::A as usize];
                let contact = Header::Other("Contact".into(), self.contact(transport, bind));
                let mut extra = vec![contact];
                extra.extend(session_timer::forward_response(code, &resp.headers));
                self.respond(
                    now,
                    atx,
                    &inv,
                    200,
                    None,
                    Some(&tag),
                    extra,
                    body.map(|b| (SDP, b)),
                );
                self.counts.aggregate += 1;
                self.counts.bump();
                self.arm_session_timer(now, call, &resp);
                if let Some(max) = self.cfg.max_call_duration {
                    self.set_timer(call, CallTimer::MaxDuration, Some(now + max));
                }
                for leg in [Leg::A, Leg::B] {
                    if let Some(media) = self.negotiated(call, leg) {
                        self.emit(SessionEvent::MediaUp { call, leg, media });
                    }
                }
            }
            _ => {}
        }
    }

    /// Records B's SDP answer (if any) and returns it rewritten for leg A.
    fn answer_for_a(&mut self, call: CallHandle, resp: &Response) -> Option<Vec<u8>> {
        let (sdp, _) = body_parts(&resp.headers, &resp.body).ok()?;
        let mut sdp = Sdp::parse(&sdp?).ok()?;
        let c = self.calls.get_mut(&call)?;
        let media_ip = c.binds[Leg::A as usize].media_ip;
        c.media[Leg::B as usize] = sdp.audio();
        sdp.anchor_audio(media_ip, c.port(Leg::A));
        sdp.set_origin("xdpfork", c.session_id, c.sdp_version, media_ip);
        Some(sdp.to_bytes())
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

    fn ack_b(&mut self, call: CallHandle) {
        let via = self.via(
            self.calls
                .get(&call)
                .map(|c| c.b.peer.transport)
                .unwrap_or(Transport::Udp),
            self.bind_of(call, Leg::B),
        );
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let cseq = c.b_invite_cseq;
        let peer = c.b.peer;
        if let Some(ack) = c.b.request(RequestParts {
            method: "ACK",
            via: &via,
            contact: None,
            body: None,
            cseq: Some(cseq),
            max_forwards: 70,
        }) {
            self.tl.send_stateless(peer, &SipMessage::Request(ack));
            self.pump_quiet();
        }
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

    /// Sends BYE on `leg`; `reason` is an RFC 3326 Reason header value for BYEs we originate
    /// for a reason of our own (session expiry, maximum duration).
    fn send_bye(&mut self, now: Instant, call: CallHandle, leg: Leg, reason: Option<&str>) {
        let via = self.leg_via(call, leg);
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let d = c.dialog(leg);
        let peer = d.peer;
        if let Some(mut bye) = d.request(RequestParts {
            method: "BYE",
            via: &via,
            contact: None,
            body: None,
            cseq: None,
            max_forwards: 70,
        }) {
            if let Some(r) = reason {
                bye.headers.push(Header::Other("Reason".into(), r.into()));
            }
            if let Ok(t) = self.tl.send_request(now, peer, bye) {
                self.pending.insert(t, Pending::Own);
            }
        }
    }

    /// (Re)arms the session expiry from a 2xx to an INVITE: the interval is the 2xx's
    /// `Session-Expires`, and a 2xx without one means the session has no expiry any more
    /// (RFC 4028 §7.2 for the client's view; the proxy learns the same from the 2xx, §8.2).
    fn arm_session_timer(&mut self, now: Instant, call: CallHandle, resp: &Response) {
        let se = SessionExpires::from_headers(&resp.headers);
        let at = se.map(|se| session_timer::bye_deadline(now, se.interval));
        if let Some(c) = self.calls.get_mut(&call) {
            c.session_interval = se.map(|se| se.interval);
        }
        if let Some(se) = se {
            debug!(?call, interval = se.interval.as_secs(), refresher = ?se.refresher, "session timer armed");
        }
        self.set_timer(call, CallTimer::SessionExpires, at);
    }

    fn hangup(&mut self, now: Instant, call: CallHandle, except: Option<Leg>, reason: EndReason) {
        for leg in [Leg::A, Leg::B] {
            if Some(leg) != except {
                self.send_bye(now, call, leg, reason.reason_header());
            }
        }
        self.end_call(call, reason);
    }

    fn end_call(&mut self, call: CallHandle, reason: EndReason) {
        self.touch(call);
        for t in CallTimer::ALL {
            self.set_timer(call, t, None);
        }
        let Some(c) = self.calls.remove(&call) else {
            return;
        };
        for p in c.ports {
            self.ports.release(p);
        }
        self.by_dialog
            .remove(&(c.a.call_id.clone(), c.a.local_tag.clone()));
        self.by_dialog
            .remove(&(c.b.call_id.clone(), c.b.local_tag.clone()));
        if c.counted {
            self.counts.aggregate -= 1;
            if c.enhanced {
                self.counts.enhanced -= 1;
            }
            self.emit(SessionEvent::MediaDown { call });
        }
        if let Some(t) = c.b_invite_tx {
            // Keep the INVITE client transaction's outcome mapping only while it can still
            // deliver a 2xx we must ACK; after end_call nothing refers to the call.
            if matches!(self.pending.get(&t), Some(Pending::InitialInvite(_))) {
                self.pending.insert(t, Pending::Own);
            }
        }
        self.emit(SessionEvent::CallEnded { call, reason });
    }

    #[allow(clippy::too_many_arguments)]
    fn in_dialog(
        &mut self,
        now: Instant,
        tx: TxHandle,
        from: Peer,
        call: CallHandle,
        leg: Leg,
        req: Request,
        cseq: u32,
    ) {
        self.touch(call);
        let Some(c) = self.calls.get_mut(&call) else {
            return self.respond(now, tx, &req, 481, None, None, vec![], None);
        };
        if !c.dialog(leg).accept_remote_cseq(cseq) {
            // §12.2.2: lower CSeq than already seen.
            return self.respond(
                now,
                tx,
                &req,
                500,
                Some("Out Of Order CSeq"),
                None,
                vec![],
                None,
            );
        }
        let established = c.state == CallState::Established;
        match req.method {
            Method::Bye => {
                self.respond(now, tx, &req, 200, None, None, vec![], None);
                if established {
                    self.send_bye(now, call, leg.other(), None);
                    self.end_call(call, EndReason::Bye(leg));
                }
            }
            Method::Options => self.respond(
                now,
                tx,
                &req,
                200,
                None,
                None,
                vec![Header::Other("Allow".into(), ALLOW.into())],
                None,
            ),
            Method::Info | Method::Invite => {
                let (sdp, json) = match body_parts(&req.headers, &req.body) {
                    Ok(p) => p,
                    Err(reason) => {
                        return self.respond(now, tx, &req, 400, Some(reason), None, vec![], None)
                    }
                };
                if json.is_some() && !self.is_controller(from) {
                    // A dialog party that is not a controller: the whole request is refused
                    // (a re-INVITE is not relayed either), so it changes nothing.
                    self.security.forbidden_fork_request += 1;
                    debug!(
                        ?call,
                        ?leg,
                        from = %from.addr,
                        method = %req.method,
                        "fork request from a peer that is not a controller: 403"
                    );
                    return self.respond(now, tx, &req, 403, None, None, vec![], None);
                }
                if !established {
                    // Mid-setup re-INVITE/INFO: §14.1 says 491 when an INVITE is in progress.
                    let code = if req.method == Method::Invite {
                        491
                    } else {
                        481
                    };
                    return self.respond(now, tx, &req, code, None, None, vec![], None);
                }
                if req.method == Method::Invite
                    && session_timer::check_request(&req.headers, self.cfg.min_se)
                        == RequestCheck::TooSmall
                {
                    // RFC 4028 §8.1 applies to session refreshes too; the fork JSON of a
                    // refused re-INVITE is not acted on.
                    let min_se = session_timer::min_se_header(self.cfg.min_se);
                    return self.respond(now, tx, &req, 422, None, None, vec![min_se], None);
                }
                if req.method == Method::Info && json.is_some() {
                    // Reference: the INFO fork request is answered 200 at once; the outcome
                    // goes back in a status INFO.
                    self.respond(now, tx, &req, 200, None, None, vec![], None);
                    if let Some(j) = json {
                        self.on_fork_body(now, call, leg, &j, Carrier::Info);
                    }
                    return;
                }
                if let Some(j) = &json {
                    self.on_fork_body(now, call, leg, j, Carrier::ReInvite);
                }
                self.relay(now, tx, call, leg, req, sdp);
            }
            Method::Ack | Method::Cancel => {}
            _ => {
                let allow = Header::Other("Allow".into(), ALLOW.into());
                self.respond(now, tx, &req, 405, None, None, vec![allow], None);
            }
        }
    }

    /// Relays an in-dialog request to the other leg (a re-INVITE's SDP re-anchored).
    fn relay(
        &mut self,
        now: Instant,
        tx: TxHandle,
        call: CallHandle,
        from: Leg,
        req: Request,
        sdp: Option<Vec<u8>>,
    ) {
        let to = from.other();
        self.touch(call);
        let via = self.leg_via(call, to);
        let contact = self.contact(self.leg_transport(call, to), self.bind_of(call, to));
        let media_ip = self.bind_of(call, to).media_ip;
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let mut offer = None;
        let body: Option<(String, Vec<u8>)> = match (&req.method, sdp) {
            (Method::Invite, Some(s)) => match Sdp::parse(&s) {
                Ok(mut sdp) => {
                    offer = sdp.audio();
                    sdp.anchor_audio(media_ip, c.port(to));
                    c.sdp_version += 1;
                    sdp.set_origin("xdpfork", c.session_id, c.sdp_version, media_ip);
                    Some((SDP.to_string(), sdp.to_bytes()))
                }
                Err(_) => {
                    return self.respond(
                        now,
                        tx,
                        &req,
                        400,
                        Some("Malformed SDP"),
                        None,
                        vec![],
                        None,
                    );
                }
            },
            (Method::Invite, None) => None,
            _ => (!req.body.is_empty()).then(|| {
                (
                    content_type(&req.headers).unwrap_or_default(),
                    req.body.clone(),
                )
            }),
        };
        let method = req.method.to_string();
        let d = c.dialog(to);
        let peer = d.peer;
        let Some(mut out) = d.request(RequestParts {
            method: &method,
            via: &via,
            contact: (req.method == Method::Invite).then_some(contact.as_str()),
            body: body.as_ref().map(|(ct, b)| (ct.as_str(), b.as_slice())),
            cseq: None,
            max_forwards: 70,
        }) else {
            return self.respond(now, tx, &req, 500, None, None, vec![], None);
        };
        if req.method == Method::Invite {
            // A re-INVITE is a session refresh (RFC 4028 §7.4); its negotiation passes through.
            out.headers.extend(session_timer::forward_request(
                &req.headers,
                self.cfg.min_se,
            ));
        }
        match self.tl.send_request(now, peer, out) {
            Ok(t) => {
                self.pending.insert(
                    t,
                    Pending::Relay {
                        call,
                        from,
                        server_tx: tx,
                        orig: Box::new(req),
                        offer: offer.map(Box::new),
                    },
                );
            }
            Err(_) => self.respond(now, tx, &req, 500, None, None, vec![], None),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_relay_response(
        &mut self,
        now: Instant,
        call: CallHandle,
        from: Leg,
        server_tx: TxHandle,
        orig: Request,
        offer: Option<AudioMedia>,
        resp: Response,
    ) {
        let code = resp.status_code.code();
        let to = from.other();
        self.touch(call);
        let media_ip = self.bind_of(call, from).media_ip;
        let mut body: Option<(String, Vec<u8>)> = None;
        let mut changed = Vec::new();
        if orig.method == Method::Invite && (200..300).contains(&code) {
            // ACK the relayed re-INVITE on the other leg ourselves (§13.2.2.4).
            let cseq = message::keys(&SipMessage::Response(resp.clone())).map(|k| k.cseq);
            let via = self.leg_via(call, to);
            let Some(c) = self.calls.get_mut(&call) else {
                return;
            };
            let peer = c.dialog_peer(to);
            if let Some(ack) = c.dialog(to).request(RequestParts {
                method: "ACK",
                via: &via,
                contact: None,
                body: None,
                cseq,
                max_forwards: 70,
            }) {
                self.tl.send_stateless(peer, &SipMessage::Request(ack));
                self.pump_quiet();
            }
            let Some(c) = self.calls.get_mut(&call) else {
                return;
            };
            if let Some(o) = offer {
                if c.media[from as usize].as_ref() != Some(&o) {
                    c.media[from as usize] = Some(o);
                    changed.push(from);
                }
            }
            if let Ok((Some(s), _)) = body_parts(&resp.headers, &resp.body) {
                if let Ok(mut sdp) = Sdp::parse(&s) {
                    let answer = sdp.audio();
                    if answer.is_some() && c.media[to as usize] != answer {
                        c.media[to as usize] = answer;
                        changed.push(to);
                    }
                    sdp.anchor_audio(media_ip, c.port(from));
                    c.sdp_version += 1;
                    sdp.set_origin("xdpfork", c.session_id, c.sdp_version, media_ip);
                    body = Some((SDP.to_string(), sdp.to_bytes()));
                }
            }
        } else if !resp.body.is_empty() {
            body = Some((
                content_type(&resp.headers).unwrap_or_default(),
                resp.body.clone(),
            ));
        }
        let reason = match &resp.status_code {
            rsip::StatusCode::Other(_, r) => Some(r.clone()),
            _ => None,
        };
        let extra = if orig.method == Method::Invite {
            let transport = self.leg_transport(call, from);
            let mut extra = vec![Header::Other(
                "Contact".into(),
                self.contact(transport, self.bind_of(call, from)),
            )];
            extra.extend(session_timer::forward_response(code, &resp.headers));
            if (200..300).contains(&code) {
                // A successful refresh: the session interval restarts (RFC 4028 §10).
                self.arm_session_timer(now, call, &resp);
            }
            extra
        } else {
            vec![]
        };
        let tag = self
            .calls
            .get(&call)
            .and_then(|c| c.dialog_tag_for_response(&orig));
        let body_ref = body.as_ref().map(|(ct, b)| (ct.as_str(), b.clone()));
        self.respond(
            now,
            server_tx,
            &orig,
            code,
            reason.as_deref(),
            tag.as_deref(),
            extra,
            body_ref,
        );
        // Report every leg whose media changed (codec, address, hold) so the fork layer can
        // PAUSE/RESUME; both legs carry the codec from the latest answer.
        if !changed.is_empty() {
            for leg in [Leg::A, Leg::B] {
                if let Some(media) = self.negotiated(call, leg) {
                    self.emit(SessionEvent::MediaChanged { call, leg, media });
                }
            }
        }
    }

    fn on_fork_body(
        &mut self,
        now: Instant,
        call: CallHandle,
        leg: Leg,
        body: &[u8],
        carrier: Carrier,
    ) {
        let parsed = ForkRequest::parse(body);
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.fork_leg.is_none() {
            c.fork_leg = Some(leg);
        }
        let result = parsed.and_then(|req| {
            if let ForkRequest::Start(s) = &req {
                if !c.route_forking {
                    return Err(ForkError::UnsupportedFlow);
                }
                let media: Vec<&AudioMedia> = c.media.iter().flatten().collect();
                if media.iter().any(|m| m.is_srtp() || m.addr.is_ipv6()) {
                    return Err(ForkError::UnsupportedFlow);
                }
                let codec = c.media[Leg::B as usize]
                    .as_ref()
                    .and_then(|m| m.primary_codec());
                match codec {
                    Some(k) if k.is_g711() => {
                        if let Some(want) = s.codec {
                            if k.name.as_deref() != Some(want_name(want)) {
                                return Err(ForkError::CodecNotSupported);
                            }
                        }
                    }
                    _ => return Err(ForkError::CodecNotSupported),
                }
            }
            let kind = req.kind();
            c.fork.apply(req, carrier).map(|cmd| (kind, cmd))
        });
        match result {
            Ok((_, command)) => self.emit(SessionEvent::ForkRequest {
                call,
                leg,
                request: command,
            }),
            Err(err) => {
                let guid = fork_request::guid_hint(body);
                let kind = ForkRequest::parse(body).ok().map(|r| r.kind());
                let report = StatusReport::rejected(guid, kind, err);
                self.send_status(now, call, leg, &report);
            }
        }
    }

    fn send_status(&mut self, now: Instant, call: CallHandle, leg: Leg, report: &StatusReport) {
        self.touch(call);
        let via = self.leg_via(call, leg);
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let body = report.to_json();
        let d = c.dialog(leg);
        let peer = d.peer;
        if let Some(info) = d.request(RequestParts {
            method: "INFO",
            via: &via,
            contact: None,
            body: Some((fork_request::CONTENT_TYPE, &body)),
            cseq: None,
            max_forwards: 70,
        }) {
            if let Ok(t) = self.tl.send_request(now, peer, info) {
                self.pending.insert(t, Pending::Own);
            }
        }
    }
}

fn want_name(c: fork_request::ForkCodec) -> &'static str {
    match c {
        fork_request::ForkCodec::G711Ulaw => "PCMU",
        fork_request::ForkCodec::G711Alaw => "PCMA",
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
mod restart_tests;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod tests;
