//! turn-core's sans-IO server (turn-core/src/server.rs) fed whole datagrams through its
//! `handle_*` inputs, with a fixed clock and a seeded RNG, so the allocation state machine is
//! fuzzed and not only the codec.
//!
//! Input: the first byte picks config switches, then [`xdpfork_fuzz::Records`]; each record is
//! one step, `tag & 7` says which, `(tag >> 3) % 3` which client:
//! - 0: the payload as a STUN datagram from the client (`handle_stun`);
//! - 1: the payload as a STUN request the harness signs: USERNAME, REALM and the last NONCE the
//!   server sent that client are put in and MESSAGE-INTEGRITY (SHA-256 if tag bit 6, else
//!   SHA-1) and FINGERPRINT appended, with a static user, or a REST user if tag bit 7. Without
//!   this a fuzzer never gets past the 401 challenge;
//! - 2: the payload as ChannelData from the client (`handle_channel_data`);
//! - 3: peer data to a relay address the server handed out, from a peer a signed request named
//!   (`handle_peer_data`; payload bytes 0 and 1 pick them, the rest is the data);
//! - 4: advance the clock by the payload's first two bytes in seconds, then `handle_timeout`;
//! - 5: jump to `poll_timeout()` and `handle_timeout`;
//! - 6: the client's TCP/TLS connection closed;
//! - 7: the payload as a TCP/TLS byte stream, cut with `stun::frame_len`.
//!
//! After every step all output is drained; what the server sends a client must parse.
//! `XDPFORK_FUZZ_TRACE=1` prints each step and the server's outputs.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;
use turn_core::stun::{
    self, attr, Attribute, ChannelData, IntegrityKind, Message, MessageBuilder, PacketKind,
};
use turn_core::{
    Credentials, Event, FiveTuple, Output, PortRangeAllocator, RestSecret, RustCrypto, Server,
    ServerConfig, Transport, UserDb,
};
use xdpfork_fuzz::Records;

const REALM: &str = "example.org";
const SECRET: &str = "rest-secret";

fn listen() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 3478)
}

const CLIENTS: [(&str, Transport); 3] = [
    ("203.0.113.5:40000", Transport::Udp),
    ("203.0.113.6:40001", Transport::Tcp),
    ("203.0.113.5:40002", Transport::Tls),
];

/// One `Instant` for the whole process: every step is an offset from it, so runs repeat. std
/// offers no other way to get an `Instant`; the server itself only sees `base() + offset`.
#[allow(clippy::disallowed_methods)]
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

struct Harness {
    server: Server,
    now: Instant,
    wall: SystemTime,
    /// Last NONCE sent to each client (index into CLIENTS).
    nonces: [Option<String>; 3],
    relays: Vec<SocketAddr>,
    peers: Vec<SocketAddr>,
}

impl Harness {
    fn new(switches: u8) -> Self {
        let config = ServerConfig {
            server_addresses: vec![listen().ip()],
            user_quota: Some(2),
            total_quota: Some(4),
            rfc5766_channels: switches & 1 != 0,
            unauthenticated_rate: if switches & 2 != 0 {
                None
            } else {
                ServerConfig::default().unauthenticated_rate
            },
            allow_private_peers: switches & 4 != 0,
            ..ServerConfig::default()
        };
        let users = UserDb::parse("turnuser:cisco\nother:pw\n").expect("users file");
        let creds = Credentials::new(REALM)
            .with_users(users)
            .expect("realm")
            .with_rest_secret(RestSecret::new(SECRET));
        // A small port range so that exhausting it (508) is reachable.
        let relays =
            PortRangeAllocator::new(Some(Ipv4Addr::new(198, 51, 100, 1)), None, 24000..=24005)
                .expect("ports");
        let now = base();
        let server = Server::new(
            now,
            config,
            creds,
            Box::new(relays),
            Box::new(RustCrypto),
            Box::new(StdRng::seed_from_u64(7)),
        )
        .expect("valid config");
        Harness {
            server,
            now,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            nonces: [None, None, None],
            relays: Vec::new(),
            peers: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.server.poll_output() {
            if trace() {
                eprintln!("  -> {out:?}");
            }
            match out {
                Output::Transmit(t) if t.from == listen() => {
                    let Some(ci) = CLIENTS
                        .iter()
                        .position(|(a, _)| a.parse::<SocketAddr>().ok() == Some(t.to))
                    else {
                        panic!("transmit from the listen address to a stranger: {t:?}");
                    };
                    match stun::classify(&t.bytes) {
                        PacketKind::Stun => {
                            let m = Message::parse(&t.bytes).expect("server's STUN parses");
                            if let Ok(Some(n)) = m.nonce() {
                                self.nonces[ci] = Some(n.to_owned());
                            }
                            if let Ok(Some(r)) = m.xor_relayed_address() {
                                remember(&mut self.relays, r);
                            }
                        }
                        PacketKind::ChannelData => {
                            ChannelData::parse(&t.bytes).expect("server's ChannelData parses");
                        }
                        PacketKind::Other => panic!("server sent a non-TURN packet: {t:?}"),
                    }
                }
                Output::Transmit(_) => {}
                Output::Event(Event::AllocationCreated { relay, .. }) => {
                    remember(&mut self.relays, relay)
                }
                Output::Event(_) => {}
            }
        }
    }

    fn timeout(&mut self) {
        self.server.handle_timeout(self.now);
        self.drain();
        if let Some(t) = self.server.poll_timeout() {
            assert!(t > self.now, "a due timer survived handle_timeout");
        }
    }

    /// Rebuilds a request with credentials and integrity; `None` if it does not parse.
    fn sign(&mut self, ci: usize, tag: u8, payload: &[u8]) -> Option<Vec<u8>> {
        let msg = Message::parse(payload).ok()?;
        let mut b = MessageBuilder::new(msg.class(), msg.method(), msg.transaction_id());
        for a in msg.raw_attributes() {
            if [attr::USERNAME, attr::REALM, attr::NONCE].contains(&a.typ) {
                continue;
            }
            b.add(&Attribute::Other {
                typ: a.typ,
                value: a.value,
            })
            .ok()?;
        }
        if let Ok(peers) = msg.xor_peer_addresses() {
            for p in peers {
                remember(&mut self.peers, p);
            }
        }
        let (user, password) = if tag & 0x80 != 0 {
            let expiry = self
                .wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()?
                .as_secs()
                + 86_400;
            let (u, p) = RestSecret::new(SECRET).issue("alice", expiry, &RustCrypto);
            (u, p.expose().to_owned())
        } else {
            ("turnuser".to_owned(), "cisco".to_owned())
        };
        let nonce = self.nonces[ci].clone().unwrap_or_default();
        b.add(&Attribute::Username(&user)).ok()?;
        b.add(&Attribute::Realm(REALM)).ok()?;
        b.add(&Attribute::Nonce(&nonce)).ok()?;
        let key = stun::long_term_key(&RustCrypto, &user, REALM, &password);
        let kind = if tag & 0x40 != 0 {
            IntegrityKind::Sha256
        } else {
            IntegrityKind::Sha1
        };
        b.add_integrity_kind(kind, &key, &RustCrypto).ok()?;
        b.add_fingerprint().ok()?;
        Some(b.finish())
    }

    fn step(&mut self, tag: u8, payload: &[u8]) {
        if trace() {
            eprintln!(
                "step tag {tag:#04x} kind {} payload {} bytes",
                tag & 7,
                payload.len()
            );
        }
        let ci = usize::from(tag >> 3) % CLIENTS.len();
        let (client, transport) = CLIENTS[ci];
        let client: SocketAddr = client.parse().expect("client address");
        match tag & 7 {
            0 => self.stun(client, transport, payload),
            1 => match self.sign(ci, tag, payload) {
                Some(bytes) => self.stun(client, transport, &bytes),
                None => self.stun(client, transport, payload),
            },
            2 => self
                .server
                .handle_channel_data(self.now, client, listen(), transport, payload),
            3 => {
                let (Some(&r), Some(&p)) = (payload.first(), payload.get(1)) else {
                    return;
                };
                let relay = pick(&self.relays, r).unwrap_or(SocketAddr::new(listen().ip(), 24000));
                let peer = pick(&self.peers, p).unwrap_or(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99)),
                    5000,
                ));
                self.server
                    .handle_peer_data(self.now, relay, peer, &payload[2..]);
            }
            4 => {
                let secs = match payload {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    [a] => u16::from(*a),
                    [] => 1,
                };
                self.advance(Duration::from_secs(u64::from(secs)));
                self.timeout();
            }
            5 => {
                if let Some(t) = self.server.poll_timeout() {
                    let d = t.saturating_duration_since(self.now);
                    self.advance(d);
                }
                self.timeout();
            }
            6 => self.server.handle_connection_closed(
                self.now,
                FiveTuple {
                    transport,
                    client,
                    server: listen(),
                },
            ),
            _ => {
                let mut rest = payload;
                while let stun::Frame::Stun(n) | stun::Frame::ChannelData(n) = stun::frame_len(rest)
                {
                    let Some(frame) = rest.get(..n) else { break };
                    match stun::classify(frame) {
                        PacketKind::Stun => self.stun(client, transport, frame),
                        _ => self.server.handle_channel_data(
                            self.now,
                            client,
                            listen(),
                            transport,
                            frame,
                        ),
                    }
                    self.drain();
                    rest = &rest[n..];
                }
            }
        }
        self.drain();
    }

    fn stun(&mut self, client: SocketAddr, transport: Transport, bytes: &[u8]) {
        self.server
            .handle_stun(self.now, self.wall, client, listen(), transport, bytes);
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.wall += d;
    }
}

/// `XDPFORK_FUZZ_TRACE=1` prints every step and output, to check what an input reaches:
/// `XDPFORK_FUZZ_TRACE=1 cargo +nightly fuzz run turn_server corpus/turn_server/<file>`.
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("XDPFORK_FUZZ_TRACE").is_some())
}

fn remember(list: &mut Vec<SocketAddr>, a: SocketAddr) {
    if !list.contains(&a) && list.len() < 8 {
        list.push(a);
    }
}

fn pick(list: &[SocketAddr], i: u8) -> Option<SocketAddr> {
    (!list.is_empty()).then(|| list[usize::from(i) % list.len()])
}

fuzz_target!(|data: &[u8]| {
    let Some((&switches, rest)) = data.split_first() else {
        return;
    };
    let mut h = Harness::new(switches);
    for (tag, payload) in Records::new(rest) {
        h.step(tag, payload);
    }
    let status = h.server.status();
    assert!(status.allocations <= 4, "total quota exceeded: {status:?}");
    let _ = h.server.allocations(h.now);
});
