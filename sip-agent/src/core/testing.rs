//! Test support for the sans-IO cores: a fake clock and a deterministic two-sided harness.
//!
//! Only compiled for tests. Time is a base `Instant` plus offsets the test steps explicitly;
//! nothing sleeps. [`Harness`] puts a [`B2bua`] between two scripted peers, caller `A` and next
//! hop `B`, over an in-memory network that can drop or duplicate messages. Call order in a test:
//! `send_from_a/b` (feeds the B2BUA, duplicating if asked), then `take_for_a/b` to read what the
//! B2BUA sent each peer, `advance` to step the clock through the B2BUA's own deadlines.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rsip::{Request, SipMessage};

use crate::core::authz::Policy;
use crate::core::b2bua::{
    B2bua, CallHandle, Config, Leg, Output, PortAllocator, Route, RoutePattern, SessionEvent,
};
use crate::core::message;
use crate::core::transaction::{Peer, Transport};

/// Origin of a test's fake clock. Reading the real clock once is the only way std offers to get
/// an `Instant`; everything after is `origin + offset`, so tests stay deterministic. This is the
/// single allowed use of `Instant::now` under `core/` (clippy.toml bans it elsewhere).
#[allow(clippy::disallowed_methods)]
pub fn epoch() -> Instant {
    Instant::now()
}

/// Port allocator for tests: even ports from 30000, remembers what is live.
#[derive(Debug, Default)]
pub struct TestPorts {
    next: u16,
    /// Ports handed out and not yet released.
    pub live: Vec<u16>,
    /// Refuse allocations (to test 503).
    pub exhausted: bool,
}

impl PortAllocator for TestPorts {
    fn allocate(&mut self, _call: CallHandle, _leg: Leg) -> Option<u16> {
        if self.exhausted {
            return None;
        }
        let p = 30_000 + self.next;
        self.next += 2;
        self.live.push(p);
        Some(p)
    }
    fn release(&mut self, port: u16) {
        self.live.retain(|p| *p != port);
    }
    fn reserve(&mut self, port: u16) -> bool {
        if self.live.contains(&port) {
            return false;
        }
        self.live.push(port);
        true
    }
}

/// Caller address.
pub const A_ADDR: &str = "198.51.100.7:5060";
/// Next hop address.
pub const B_ADDR: &str = "203.0.113.20:5060";
/// This host.
pub const HOST: &str = "192.0.2.10:5060";

/// A peer on UDP.
pub fn udp(addr: &str) -> Peer {
    Peer {
        addr: addr.parse().expect("test address"),
        transport: Transport::Udp,
    }
}

/// Which way a message travels on the emulated network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From a peer to the B2BUA.
    In,
    /// From the B2BUA to a peer.
    Out,
}

/// The two-sided harness.
pub struct Harness {
    /// Fake clock.
    pub now: Instant,
    /// System under test.
    pub b2bua: B2bua<TestPorts>,
    /// Messages the B2BUA sent, per destination, not yet taken by the test.
    pub outbox: Vec<(SocketAddr, SipMessage)>,
    /// Session events not yet taken.
    pub events: VecDeque<SessionEvent>,
    /// Drop this many of the next messages in the given direction.
    pub drop: Option<(Dir, usize)>,
    /// Deliver the next inbound message twice.
    pub duplicate_next_in: bool,
    /// Every delivered transmit as raw bytes (rsip drops reason phrases on parse, so tests that
    /// check one look here).
    pub wire: Vec<(SocketAddr, Vec<u8>)>,
}

impl Harness {
    /// B2BUA with one route `6XXX` → B, forking enabled.
    pub fn new() -> Self {
        Self::with_config(|_| {})
    }

    /// Like [`Harness::new`], with `edit` applied to the config first (session timer minimum,
    /// maximum call duration, security policy). The default policy makes caller A's address the
    /// one controller; the RNG is seeded, so every run sees the same tags.
    pub fn with_config(edit: impl FnOnce(&mut Config)) -> Self {
        let cfg = Config {
            sip_addr: HOST.parse().expect("host"),
            media_ip: "192.0.2.10".parse().expect("ip"),
            routes: vec![Route {
                pattern: RoutePattern::Pattern("6XXX".into()),
                next_hop: udp(B_ADDR),
                forking: true,
                bind: None,
            }],
            max_forks_per_call: 1,
            transport_ports: Vec::new(),
            security: Policy {
                controllers: vec![A_ADDR.split(':').next().expect("ip").parse().expect("cidr")],
                ..Policy::default()
            },
            min_se: crate::core::session_timer::MIN_SE_FLOOR,
            max_call_duration: None,
            bots: Vec::new(),
        };
        let mut cfg = cfg;
        edit(&mut cfg);
        Self {
            now: epoch(),
            b2bua: B2bua::new(
                cfg,
                TestPorts::default(),
                Box::new(rand::rngs::StdRng::seed_from_u64(42)),
            ),
            outbox: Vec::new(),
            events: VecDeque::new(),
            drop: None,
            duplicate_next_in: false,
            wire: Vec::new(),
        }
    }

    fn dropped(&mut self, dir: Dir) -> bool {
        match &mut self.drop {
            Some((d, n)) if *d == dir && *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Collects what the B2BUA sent after a call made on `b2bua` directly.
    pub fn drain_for_test(&mut self) {
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(o) = self.b2bua.poll_output() {
            match o {
                Output::Transmit(t) => {
                    if self.dropped(Dir::Out) {
                        continue;
                    }
                    self.wire.push((t.dest.addr, t.payload.clone()));
                    // A 501 to an extension method echoes a CSeq rsip cannot represent (its
                    // Method enum is closed), so such transmits are only in `wire`.
                    if let Ok(msg) = message::parse(&t.payload) {
                        self.outbox.push((t.dest.addr, msg));
                    }
                }
                Output::Session(e) => self.events.push_back(e),
            }
        }
    }

    /// Delivers raw bytes from `from` (subject to drop/duplicate).
    pub fn send_raw(&mut self, from: &str, bytes: &[u8]) {
        if self.dropped(Dir::In) {
            return;
        }
        let times = if std::mem::take(&mut self.duplicate_next_in) {
            2
        } else {
            1
        };
        for _ in 0..times {
            self.b2bua.handle_datagram(self.now, udp(from), bytes);
            self.drain();
        }
    }

    /// Delivers a message from `peer` (any transport), without drop/duplicate.
    pub fn send_peer(&mut self, peer: Peer, msg: &SipMessage) {
        self.b2bua
            .handle_datagram(self.now, peer, &message::encode(msg));
        self.drain();
    }

    /// Delivers a message from `from` over UDP (a third party in tests of the security rules).
    pub fn send_from(&mut self, from: &str, msg: &SipMessage) {
        self.send_raw(from, &message::encode(msg));
    }

    /// Delivers a message from caller A.
    pub fn send_from_a(&mut self, msg: &SipMessage) {
        self.send_raw(A_ADDR, &message::encode(msg));
    }

    /// Delivers a message from next hop B.
    pub fn send_from_b(&mut self, msg: &SipMessage) {
        self.send_raw(B_ADDR, &message::encode(msg));
    }

    /// Passes a fork status to the B2BUA and collects what it sends.
    pub fn fork_status(
        &mut self,
        call: CallHandle,
        report: crate::core::fork_request::StatusReport,
    ) {
        self.b2bua
            .handle_fork_status(self.now, call, report)
            .expect("status for a live call with a controller");
        self.drain();
    }

    /// Passes a connection status (paced) to the B2BUA and collects what it sends.
    pub fn connection_status(
        &mut self,
        call: CallHandle,
        report: crate::core::fork_request::StatusReport,
    ) {
        self.b2bua
            .handle_connection_status(self.now, call, report)
            .expect("status for a live call with a controller");
        self.drain();
    }

    /// Takes every message sent to `addr` so far.
    pub fn take_for(&mut self, addr: &str) -> Vec<SipMessage> {
        let addr: SocketAddr = addr.parse().expect("addr");
        let (mine, rest) = std::mem::take(&mut self.outbox)
            .into_iter()
            .partition(|(a, _)| *a == addr);
        self.outbox = rest;
        mine.into_iter().map(|(_, m)| m).collect()
    }

    /// Takes the messages for A.
    pub fn take_for_a(&mut self) -> Vec<SipMessage> {
        self.take_for(A_ADDR)
    }

    /// Takes the messages for B.
    pub fn take_for_b(&mut self) -> Vec<SipMessage> {
        self.take_for(B_ADDR)
    }

    /// Takes all session events.
    pub fn take_events(&mut self) -> Vec<SessionEvent> {
        self.events.drain(..).collect()
    }

    /// Steps the clock by `d`, firing every B2BUA deadline on the way, in order.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) = self.b2bua.poll_timeout() {
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.b2bua.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// SDP offer from a phone at `ip:port` with the given payload types.
pub fn sdp(ip: &str, port: u16, pts: &str, extra: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pts}\r\na=rtpmap:101 telephone-event/8000\r\n{extra}"
    )
}

/// The caller's initial INVITE.
pub fn invite(user: &str, branch: &str, body: &str) -> SipMessage {
    let text = format!(
        "INVITE sip:{user}@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP {A_ADDR};branch={branch}\r\nMax-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@198.51.100.7>;tag=atag\r\nTo: <sip:{user}@192.0.2.10>\r\nCall-ID: call-a@198.51.100.7\r\n\
CSeq: 1 INVITE\r\nContact: <sip:alice@{A_ADDR}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    message::parse(text.as_bytes()).expect("test INVITE parses")
}

/// `msg` with extra headers appended (session timer headers in tests).
pub fn with_headers(mut msg: SipMessage, extra: &[(&str, &str)]) -> SipMessage {
    let headers = match &mut msg {
        SipMessage::Request(r) => &mut r.headers,
        SipMessage::Response(r) => &mut r.headers,
    };
    for (n, v) in extra {
        headers.push(rsip::Header::Other((*n).into(), (*v).into()));
    }
    msg
}

/// A request on leg A's dialog, as the caller would send it: `to_tag` is the B2BUA's tag.
pub fn a_in_dialog(
    method: &str,
    cseq: u32,
    branch: &str,
    to_tag: &str,
    ct: Option<&str>,
    body: &[u8],
) -> SipMessage {
    let mut text = format!(
        "{method} sip:xdpfork@{HOST} SIP/2.0\r\nVia: SIP/2.0/UDP {A_ADDR};branch={branch}\r\nMax-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@198.51.100.7>;tag=atag\r\nTo: <sip:6777@192.0.2.10>;tag={to_tag}\r\nCall-ID: call-a@198.51.100.7\r\n\
CSeq: {cseq} {method}\r\nContact: <sip:alice@{A_ADDR}>\r\n"
    );
    if let Some(ct) = ct {
        text.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    message::parse(&bytes).expect("test request parses")
}

/// A response a peer sends to `req`, with its tag, a Contact and an optional SDP body.
pub fn answer(req: &Request, code: u16, tag: &str, contact: &str, sdp: Option<&str>) -> SipMessage {
    let mut r = message::response_to(req, code, None, Some(tag));
    r.headers.push(rsip::Header::Other(
        "Contact".into(),
        format!("<sip:peer@{contact}>"),
    ));
    if let Some(s) = sdp {
        r.headers.push(rsip::Header::Other(
            "Content-Type".into(),
            "application/sdp".into(),
        ));
        r.body = s.as_bytes().to_vec();
    }
    SipMessage::Response(r)
}

/// The request in a message (panics in tests if it is a response).
pub fn request(m: &SipMessage) -> &Request {
    match m {
        SipMessage::Request(r) => r,
        SipMessage::Response(_) => panic!("expected a request, got {m}"),
    }
}

/// Status code of a message, 0 for a request.
pub fn code(m: &SipMessage) -> u16 {
    match m {
        SipMessage::Response(r) => r.status_code.code(),
        SipMessage::Request(_) => 0,
    }
}

/// Method of a request (or of a response's CSeq).
pub fn method(m: &SipMessage) -> String {
    message::keys(m)
        .map(|k| k.method.to_string())
        .unwrap_or_default()
}

/// A harness whose number `7000` is answered by a voice bot (`speech_server = "bot"`).
pub fn bot_harness() -> Harness {
    Harness::with_config(|c| {
        c.bots.push(crate::core::b2bua::BotRoute {
            pattern: RoutePattern::Pattern("7000".into()),
            speech_server: "bot".into(),
        })
    })
}

/// A's INVITE to the bot number (µ-law), answered: our To-tag, the call and its bot's GUID.
pub fn answered_bot_call(h: &mut Harness, branch: &str) -> (String, CallHandle, String) {
    h.send_from_a(&invite(
        "7000",
        branch,
        &sdp("198.51.100.7", 16384, "0", ""),
    ));
    let ok = h
        .take_for_a()
        .into_iter()
        .find(|m| code(m) == 200)
        .expect("answered");
    let tag = message::keys(&ok).and_then(|k| k.to_tag).expect("our tag");
    let ev = h.take_events();
    let [SessionEvent::BotUp { call, bot }] = &ev[..] else {
        panic!("one BotUp: {ev:?}");
    };
    (tag, *call, bot.guid.clone())
}
