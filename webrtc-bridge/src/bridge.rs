//! One bridged leg: a browser's ICE-lite + DTLS-SRTP on one side, plain RTP/RTCP on the other.
//!
//! Inputs, each with `now`: [`Bridge::handle_browser`] (a datagram that arrived on the
//! browser-facing port, with its source), [`Bridge::handle_plain`] (a plain RTP or RTCP packet
//! from the phone's side), [`Bridge::set_remote`] (the browser's SDP parameters, when its offer
//! or answer is known), [`Bridge::handle_timeout`]. Outputs, drained with
//! [`Bridge::poll_output`] after every input: datagrams for the browser, plain packets for the
//! phone's side, and [`Event`]s. [`Bridge::poll_timeout`] gives the next deadline.
//!
//! Demultiplexing on the browser port follows RFC 7983 (first byte: 0-3 STUN, 20-63 DTLS,
//! 128-191 RTP/RTCP) and RFC 5761 §4 (payload type 192-223 is RTCP): the browser muxes RTP and
//! RTCP on one port, the phone's side gets them apart ([`PlainKind`]).
//!
//! Nothing reaches the plain side unless it came from an address that passed an ICE check,
//! after a DTLS handshake with a certificate matching the browser's `a=fingerprint`, and
//! decrypted and authenticated under the SRTP keys of that handshake. Everything else is
//! dropped and counted in [`Counters`].
//!
//! Early audio: the phone may start before DTLS is up. Its RTP is held (at most
//! [`EarlyAudio::max_packets`], none older than [`EarlyAudio::max_age`]) and sent, in order,
//! the moment SRTP keys exist; what the limits push out is counted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dtls::{Certificate, Dtls, DtlsEvent, Fingerprint, Role};
use crate::ice::{self, Check, IceCredentials};
use crate::srtp::{Reject, Srtp};

/// How often OpenSSL is asked to retransmit a lost handshake flight (it keeps its own 1 s
/// doubling timer, RFC 6347 §4.2.4.1; this only bounds how late it notices).
const DTLS_POLL: Duration = Duration::from_millis(100);

/// The handshake gives up after this long without finishing.
const DTLS_GIVE_UP: Duration = Duration::from_secs(30);

/// Source addresses remembered as having passed an ICE check.
const MAX_VALIDATED: usize = 8;

/// Early audio limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyAudio {
    /// Most packets held.
    pub max_packets: usize,
    /// A held packet older than this is dropped rather than sent late.
    pub max_age: Duration,
}

impl Default for EarlyAudio {
    /// 25 packets, 500 ms: a 20 ms ptime call's first half second.
    fn default() -> Self {
        EarlyAudio {
            max_packets: 25,
            max_age: Duration::from_millis(500),
        }
    }
}

/// What the browser told us in its SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteParams {
    /// `a=fingerprint` (sha-256).
    pub fingerprint: Fingerprint,
    /// Our DTLS role as the SDP exchange settled it; `None` while our `actpass` offer waits for
    /// an answer that says.
    pub role: Option<Role>,
}

/// Plain side packet kind (RTP on the even port, RTCP on the next one: the phone has no
/// rtcp-mux).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlainKind {
    /// RTP.
    Rtp,
    /// RTCP.
    Rtcp,
}

/// Something that happened on the leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The browser nominated this address (USE-CANDIDATE); media goes there.
    Selected(SocketAddr),
    /// DTLS finished with a matching fingerprint: SRTP flows.
    Connected,
    /// DTLS failed, or the certificate did not match the fingerprint: the leg carries no
    /// media. The text says why.
    Failed(String),
    /// The browser closed DTLS.
    Closed,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `bytes` to the browser at `to` from the browser-facing port.
    ToBrowser {
        /// The browser's address.
        to: SocketAddr,
        /// One datagram.
        bytes: Vec<u8>,
    },
    /// Send a plain packet toward the phone (RTP or RTCP socket of the plain side).
    ToPlain {
        /// Which socket.
        kind: PlainKind,
        /// The packet.
        bytes: Vec<u8>,
    },
    /// Something happened.
    Event(Event),
}

/// Per-leg counters (the ng `query` and the metrics sum them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Binding requests answered.
    pub stun_answered: u64,
    /// STUN messages dropped: not a Binding request for our ufrag, or bad MESSAGE-INTEGRITY.
    pub stun_rejected: u64,
    /// DTLS or SRTP from an address that never passed an ICE check.
    pub unverified_source: u64,
    /// Handshakes whose certificate did not match `a=fingerprint`.
    pub fingerprint_mismatch: u64,
    /// Handshakes that failed otherwise.
    pub dtls_failed: u64,
    /// SRTP/SRTCP packets whose authentication tag did not verify.
    pub srtp_auth_failed: u64,
    /// SRTP/SRTCP packets replayed (index seen or behind the window).
    pub srtp_replayed: u64,
    /// SRTP/SRTCP packets too broken to parse, or other datagrams we do not know.
    pub malformed: u64,
    /// SRTP from the browser before the keys existed.
    pub not_ready: u64,
    /// Plain RTP/RTCP out to the phone's side.
    pub to_plain: u64,
    /// SRTP/SRTCP out to the browser.
    pub to_browser: u64,
    /// Phone RTP held before DTLS was up, then sent.
    pub early_sent: u64,
    /// Phone packets dropped before DTLS was up (held too long, over the limit, or RTCP).
    pub early_dropped: u64,
}

impl Counters {
    /// `f` applied field by field.
    fn zip(self, b: Counters, f: impl Fn(u64, u64) -> u64) -> Counters {
        Counters {
            stun_answered: f(self.stun_answered, b.stun_answered),
            stun_rejected: f(self.stun_rejected, b.stun_rejected),
            unverified_source: f(self.unverified_source, b.unverified_source),
            fingerprint_mismatch: f(self.fingerprint_mismatch, b.fingerprint_mismatch),
            dtls_failed: f(self.dtls_failed, b.dtls_failed),
            srtp_auth_failed: f(self.srtp_auth_failed, b.srtp_auth_failed),
            srtp_replayed: f(self.srtp_replayed, b.srtp_replayed),
            malformed: f(self.malformed, b.malformed),
            not_ready: f(self.not_ready, b.not_ready),
            to_plain: f(self.to_plain, b.to_plain),
            to_browser: f(self.to_browser, b.to_browser),
            early_sent: f(self.early_sent, b.early_sent),
            early_dropped: f(self.early_dropped, b.early_dropped),
        }
    }
}

/// Sums of legs (ng `statistics`, metrics). Wrapping, so that a total kept by subtracting a
/// leg's previous report and adding its next one is exact whichever is larger.
impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, b: Counters) {
        *self = self.zip(b, u64::wrapping_add);
    }
}

/// See the `AddAssign` impl.
impl std::ops::SubAssign for Counters {
    fn sub_assign(&mut self, b: Counters) {
        *self = self.zip(b, u64::wrapping_sub);
    }
}

/// The bridge's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Give OpenSSL a chance to retransmit.
    DtlsPoll = 0,
    /// Stop waiting for the handshake.
    DtlsGiveUp = 1,
    /// The oldest held early packet expires.
    EarlyExpiry = 2,
}

const TIMERS: usize = 3;

#[derive(Debug)]
enum Keys {
    /// No handshake finished.
    None,
    /// Handshake done, waiting for `a=fingerprint` to check it against.
    Unverified(Box<Srtp>, Fingerprint),
    /// Verified.
    Ready(Box<Srtp>),
    /// Failed or closed for good.
    Dead,
}

/// One bridged leg.
#[derive(Debug)]
pub struct Bridge {
    cert: Certificate,
    ice: IceCredentials,
    remote: Option<RemoteParams>,
    validated: VecDeque<SocketAddr>,
    selected: Option<SocketAddr>,
    dtls: Option<Dtls>,
    keys: Keys,
    early: VecDeque<(Instant, Vec<u8>)>,
    early_cfg: EarlyAudio,
    timers: [Option<Instant>; TIMERS],
    out: VecDeque<Output>,
    counters: Counters,
}

impl Bridge {
    /// A leg answering ICE checks for `ice`, with `cert` as its DTLS identity.
    pub fn new(cert: Certificate, ice: IceCredentials, early_cfg: EarlyAudio) -> Bridge {
        Bridge {
            cert,
            ice,
            remote: None,
            validated: VecDeque::new(),
            selected: None,
            dtls: None,
            keys: Keys::None,
            early: VecDeque::new(),
            early_cfg,
            timers: [None; TIMERS],
            out: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Our ICE credentials (for the SDP toward the browser).
    pub fn ice_credentials(&self) -> &IceCredentials {
        &self.ice
    }

    /// The next output. Drain to `None` after every `handle_*`, `set_remote` and
    /// `handle_timeout`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next deadline, `None` when no timer runs.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    /// Which timer fires next (for debugging).
    pub fn timeout_reason(&self) -> Option<&'static str> {
        let (i, _) = self
            .timers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .min_by_key(|(_, t)| *t)?;
        Some(["dtls poll", "dtls give up", "early audio expiry"][i])
    }

    /// The browser's fingerprint and our role, from its offer or answer. May come after
    /// packets: a handshake that finished first is checked now. Setting the role to
    /// [`Role::Client`] starts our handshake once a candidate is selected.
    pub fn set_remote(&mut self, now: Instant, remote: RemoteParams) {
        self.remote = Some(remote);
        if let Keys::Unverified(..) = self.keys {
            if let Keys::Unverified(srtp, peer) = std::mem::replace(&mut self.keys, Keys::None) {
                self.verify(now, srtp, peer);
            }
        }
        self.maybe_start_client(now);
    }

    /// One datagram that arrived on the browser-facing port from `from`.
    pub fn handle_browser(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        match bytes.first() {
            Some(0..=3) => self.handle_stun(now, from, bytes),
            Some(20..=63) => {
                if !self.validated.contains(&from) {
                    self.counters.unverified_source += 1;
                    return;
                }
                self.handle_dtls(now, from, bytes);
            }
            Some(128..=191) => {
                if !self.validated.contains(&from) {
                    self.counters.unverified_source += 1;
                    return;
                }
                self.handle_srtp(bytes);
            }
            _ => self.counters.malformed += 1,
        }
    }

    /// One plain packet from the phone's side.
    pub fn handle_plain(&mut self, now: Instant, kind: PlainKind, bytes: &[u8]) {
        let (Keys::Ready(srtp), Some(to)) = (&mut self.keys, self.selected) else {
            if kind == PlainKind::Rtp && !matches!(self.keys, Keys::Dead) {
                self.hold_early(now, bytes);
            } else {
                self.counters.early_dropped += 1;
            }
            return;
        };
        let sealed = match kind {
            PlainKind::Rtp => srtp.protect_rtp(bytes),
            PlainKind::Rtcp => srtp.protect_rtcp(bytes),
        };
        match sealed {
            Ok(b) => {
                self.counters.to_browser += 1;
                self.out.push_back(Output::ToBrowser { to, bytes: b });
            }
            Err(_) => self.counters.malformed += 1,
        }
    }

    /// Fires due timers; a spurious call is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.due(Timer::DtlsGiveUp, now) {
            self.timers[Timer::DtlsPoll as usize] = None;
            if self.dtls.as_ref().is_some_and(Dtls::is_handshaking) {
                self.counters.dtls_failed += 1;
                self.fail("DTLS handshake did not finish in 30 s".into());
            }
        }
        if self.due(Timer::DtlsPoll, now) {
            if let Some(d) = self.dtls.as_mut() {
                d.handle_timeout();
            }
            self.drain_dtls(now);
        }
        if self.due(Timer::EarlyExpiry, now) {
            self.expire_early(now);
        }
    }

    fn due(&mut self, t: Timer, now: Instant) -> bool {
        match self.timers[t as usize] {
            Some(at) if at <= now => {
                self.timers[t as usize] = None;
                true
            }
            _ => false,
        }
    }

    fn handle_stun(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        match ice::answer(&self.ice, from, bytes) {
            Check::Valid { response, nominate } => {
                self.counters.stun_answered += 1;
                if !self.validated.contains(&from) {
                    if self.validated.len() == MAX_VALIDATED {
                        self.validated.pop_front();
                    }
                    self.validated.push_back(from);
                }
                self.out.push_back(Output::ToBrowser {
                    to: from,
                    bytes: response,
                });
                // A lite agent takes the controlling side's nomination (RFC 8445 §8.2); the
                // first valid check is used until one arrives, so early media has a path.
                if (nominate || self.selected.is_none()) && self.selected != Some(from) {
                    self.selected = Some(from);
                    self.out.push_back(Output::Event(Event::Selected(from)));
                }
                self.maybe_start_client(now);
                self.flush_early(now);
            }
            Check::Rejected => self.counters.stun_rejected += 1,
        }
    }

    /// As the DTLS client, send the ClientHello only once the answer gave us that role and
    /// the browser proved its address: never before the answer takes effect.
    fn maybe_start_client(&mut self, now: Instant) {
        let client = self
            .remote
            .as_ref()
            .is_some_and(|r| r.role == Some(Role::Client));
        if !client || self.dtls.is_some() || self.selected.is_none() {
            return;
        }
        self.start_dtls(now, Role::Client);
    }

    fn start_dtls(&mut self, now: Instant, role: Role) {
        match Dtls::start(&self.cert, role) {
            Ok(d) => {
                self.dtls = Some(d);
                self.timers[Timer::DtlsGiveUp as usize] = Some(now + DTLS_GIVE_UP);
                self.drain_dtls(now);
            }
            Err(e) => {
                self.counters.dtls_failed += 1;
                self.fail(e.to_string());
            }
        }
    }

    fn handle_dtls(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if self.dtls.is_none() {
            // Until an answer says otherwise we are the server: a ClientHello settles an
            // actpass offer (RFC 5763 §5), and `passive` is what we answer with.
            let role = self.remote.as_ref().and_then(|r| r.role);
            if role == Some(Role::Client) || matches!(self.keys, Keys::Dead) {
                self.counters.malformed += 1;
                return;
            }
            self.start_dtls(now, Role::Server);
        }
        // The browser may have moved (a later nomination); DTLS answers where it came from.
        if self.selected.is_none() {
            self.selected = Some(from);
        }
        if let Some(d) = self.dtls.as_mut() {
            d.handle_datagram(bytes);
        }
        self.drain_dtls(now);
    }

    fn drain_dtls(&mut self, now: Instant) {
        let Some(d) = self.dtls.as_mut() else { return };
        let mut events = Vec::new();
        while let Some(b) = d.poll_transmit() {
            if let Some(to) = self.selected {
                self.out.push_back(Output::ToBrowser { to, bytes: b });
            }
        }
        while let Some(e) = d.poll_event() {
            events.push(e);
        }
        let handshaking = d.is_handshaking();
        self.timers[Timer::DtlsPoll as usize] = handshaking.then(|| now + DTLS_POLL);
        if !handshaking {
            self.timers[Timer::DtlsGiveUp as usize] = None;
        }
        for e in events {
            match e {
                DtlsEvent::Connected { keys, peer } => match Srtp::new(&keys) {
                    Ok(srtp) => self.verify(now, Box::new(srtp), peer),
                    Err(e) => {
                        self.counters.dtls_failed += 1;
                        self.fail(e.to_string());
                    }
                },
                DtlsEvent::Failed(why) => {
                    self.counters.dtls_failed += 1;
                    self.fail(format!("DTLS: {why}"));
                }
                DtlsEvent::Closed => {
                    self.keys = Keys::Dead;
                    self.out.push_back(Output::Event(Event::Closed));
                }
            }
        }
    }

    fn verify(&mut self, now: Instant, srtp: Box<Srtp>, peer: Fingerprint) {
        let Some(remote) = &self.remote else {
            self.keys = Keys::Unverified(srtp, peer);
            return;
        };
        if remote.fingerprint != peer {
            self.counters.fingerprint_mismatch += 1;
            self.fail(format!(
                "the browser's certificate ({peer}) does not match its a=fingerprint ({})",
                remote.fingerprint
            ));
            return;
        }
        self.keys = Keys::Ready(srtp);
        self.out.push_back(Output::Event(Event::Connected));
        self.flush_early(now);
    }

    /// Ends the leg's media for good; the caller counts why.
    fn fail(&mut self, why: String) {
        self.keys = Keys::Dead;
        self.timers = [None; TIMERS];
        self.counters.early_dropped += self.early.len() as u64;
        self.early.clear();
        self.out.push_back(Output::Event(Event::Failed(why)));
    }

    fn handle_srtp(&mut self, bytes: &[u8]) {
        let Keys::Ready(srtp) = &mut self.keys else {
            self.counters.not_ready += 1;
            return;
        };
        // RFC 5761 §4: RTCP packet types 200-204 (and 192-223 in general) sit where RTP has
        // marker + payload type; audio payload types stay below 96+32.
        let rtcp = bytes.get(1).is_some_and(|b| (192..=223).contains(b));
        let opened = if rtcp {
            srtp.unprotect_rtcp(bytes)
        } else {
            srtp.unprotect_rtp(bytes)
        };
        match opened {
            Ok(plain) => {
                self.counters.to_plain += 1;
                let kind = if rtcp {
                    PlainKind::Rtcp
                } else {
                    PlainKind::Rtp
                };
                self.out.push_back(Output::ToPlain { kind, bytes: plain });
            }
            Err(Reject::Auth) => self.counters.srtp_auth_failed += 1,
            Err(Reject::Replay) => self.counters.srtp_replayed += 1,
            Err(Reject::Malformed) => self.counters.malformed += 1,
        }
    }

    fn hold_early(&mut self, now: Instant, bytes: &[u8]) {
        self.expire_early(now);
        if self.early.len() == self.early_cfg.max_packets {
            // Drop the oldest: the newest audio is the one still worth playing.
            self.early.pop_front();
            self.counters.early_dropped += 1;
        }
        self.early.push_back((now, bytes.to_vec()));
        self.arm_early();
    }

    fn expire_early(&mut self, now: Instant) {
        while let Some((t, _)) = self.early.front() {
            if now.saturating_duration_since(*t) < self.early_cfg.max_age {
                break;
            }
            self.early.pop_front();
            self.counters.early_dropped += 1;
        }
        self.arm_early();
    }

    fn arm_early(&mut self) {
        self.timers[Timer::EarlyExpiry as usize] =
            self.early.front().map(|(t, _)| *t + self.early_cfg.max_age);
    }

    fn flush_early(&mut self, now: Instant) {
        if !matches!(self.keys, Keys::Ready(_)) || self.selected.is_none() {
            return;
        }
        self.expire_early(now);
        let held = std::mem::take(&mut self.early);
        self.arm_early();
        for (_, pkt) in held {
            // Counted sent only once sealed for the browser (a failure counts `malformed`).
            let sealed = self.counters.to_browser;
            self.handle_plain(now, PlainKind::Rtp, &pkt);
            self.counters.early_sent += self.counters.to_browser - sealed;
        }
    }
}
