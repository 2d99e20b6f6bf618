//! The TURN allocation server (RFC 8656) as a sans-IO state machine.
//!
//! Role: answer STUN Binding and the TURN methods on the listen ports, keep allocations,
//! permissions and channel bindings keyed by the client 5-tuple, and relay data between the
//! client and peers.
//! Inputs: [`Server::handle_stun`] (a STUN message from a client), [`Server::handle_channel_data`]
//! (ChannelData from a client), [`Server::handle_peer_data`] (a UDP datagram a peer sent to a
//! relay address), [`Server::handle_connection_closed`] (a TCP/TLS client connection went away),
//! [`Server::handle_timeout`].
//! Outputs: [`Server::poll_output`] yields [`Output::Transmit`] (bytes to send from a listen
//! address to a client, or from a relay address to a peer) and [`Output::Event`] (allocation,
//! permission and channel lifecycle, so a shell can bind relay sockets and program XDP maps).
//! [`Server::status`] and [`Server::allocations`] give the snapshot for a CLI.
//! Call order: feed one input, drain `poll_output` until `None`, then arm a timer at
//! `poll_timeout` and call `handle_timeout` when it fires.
//!
//! Authentication is the long-term credential mechanism (RFC 8489 §9.2) with stateless
//! nonces: a nonce carries its expiry and an HMAC under a per-process random key bound to the
//! client address, so no table grows with unauthenticated traffic.
//!
//! This file holds the shared types, the [`Server`] struct and request dispatch; each concern
//! lives in its own module (all `impl Server` blocks over the same state):
//! - `allocation`: Allocate, Refresh, deletion, quotas;
//! - `auth`: long-term credentials and stateless nonces;
//! - `permissions`: CreatePermission and ChannelBind;
//! - `peer_policy`: which peer addresses are allowed ([`IpRange`]);
//! - `data`: the relay data path (Send/Data indications, ChannelData, peer datagrams);
//! - `timers`: the timer heap, `poll_timeout`, `handle_timeout`;
//! - `respond`: response encoding and signing; `rate_limit`: the per-source limit on unsigned
//!   responses;
//! - `config`, `relay_ports`, `status`: settings, relay address allocation, operator view.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use rand::RngCore;
use tracing::trace;

use crate::credentials::Credentials;
use crate::crypto::Crypto;
use crate::stun::{self, attr, Attribute, Class, Message, Method};
use crate::TurnError;

mod allocation;
mod auth;
mod config;
mod data;
mod peer_policy;
mod permissions;
mod rate_limit;
mod relay_ports;
mod respond;
mod status;
#[cfg(test)]
mod testing;
mod timers;

use allocation::Allocation;
pub use allocation::{AllocationCounters, DeleteReason};
use auth::Auth;
pub use config::{RateLimit, ServerConfig};
pub use peer_policy::IpRange;
use peer_policy::{canonical, ranges, DEFAULT_DENIED, PRIVATE_RANGES};
use permissions::Channel;
use rate_limit::Bucket;
pub use relay_ports::{PortRangeAllocator, RelayAllocator};
use respond::Reply;
pub use status::{AllocationInfo, ServerCounters, Status};
use timers::Timer;

/// REQUESTED-TRANSPORT value for UDP, the only relayed transport supported (RFC 8656 §18.8).
const PROTO_UDP: u8 = 17;

/// Comprehension-required attributes this server understands. DONT-FRAGMENT is left out on
/// purpose: a server that cannot set DF must treat it as unknown (RFC 8656 §7.2 step 4), and
/// USERHASH / PASSWORD-ALGORITHM belong to the password-algorithm negotiation this server
/// does not offer (it never sends the nonce cookie of RFC 8489 §9.2).
const KNOWN_ATTRIBUTES: &[u16] = &[
    attr::MAPPED_ADDRESS,
    attr::USERNAME,
    attr::ERROR_CODE,
    attr::UNKNOWN_ATTRIBUTES,
    attr::CHANNEL_NUMBER,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REALM,
    attr::NONCE,
    attr::XOR_RELAYED_ADDRESS,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::EVEN_PORT,
    attr::REQUESTED_TRANSPORT,
    attr::XOR_MAPPED_ADDRESS,
    attr::RESERVATION_TOKEN,
];

/// Transport between client and server. Relayed transport to peers is always UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP on the listen port.
    Udp,
    /// TCP on the listen port.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// Stream transports need ChannelData padded to 4 bytes (RFC 8656 §12.5).
    fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// The client 5-tuple an allocation is keyed by (RFC 8656 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// Client-to-server transport.
    pub transport: Transport,
    /// Client address as the server sees it (the server-reflexive address).
    pub client: SocketAddr,
    /// Server listen address the client sent to.
    pub server: SocketAddr,
}

/// Opaque id of an allocation, stable for its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationHandle(pub u32);

/// Bytes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Local address to send from: a listen address (to clients) or a relay address (to peers).
    pub from: SocketAddr,
    /// Destination.
    pub to: SocketAddr,
    /// Transport; to peers always UDP, to clients the client's transport (for TCP/TLS, the
    /// connection identified by `from`/`to`).
    pub transport: Transport,
    /// The datagram or stream frame.
    pub bytes: Vec<u8>,
}

/// Lifecycle events for the shell (socket binding, XDP map programming, logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A relay address is now in use: bind its UDP socket.
    AllocationCreated {
        /// Allocation id.
        allocation: AllocationHandle,
        /// Client 5-tuple.
        client: FiveTuple,
        /// Relay transport address.
        relay: SocketAddr,
        /// Authenticated username.
        username: String,
        /// Granted lifetime.
        lifetime: Duration,
    },
    /// The allocation is gone; every channel and permission got its expiry event before this.
    AllocationDeleted {
        /// Allocation id.
        allocation: AllocationHandle,
        /// Client 5-tuple.
        client: FiveTuple,
        /// Relay transport address, now free.
        relay: SocketAddr,
        /// Why.
        reason: DeleteReason,
        /// Final counters.
        counters: AllocationCounters,
    },
    /// Peer IP may now send to the relay address (RFC 8656 §9).
    PermissionInstalled {
        /// Allocation id.
        allocation: AllocationHandle,
        /// Client 5-tuple.
        client: FiveTuple,
        /// Relay transport address.
        relay: SocketAddr,
        /// Peer IP (permissions ignore the port).
        peer: IpAddr,
    },
    /// The permission lapsed or its allocation ended.
    PermissionExpired {
        /// Allocation id.
        allocation: AllocationHandle,
        /// Client 5-tuple.
        client: FiveTuple,
        /// Relay transport address.
        relay: SocketAddr,
        /// Peer IP.
        peer: IpAddr,
    },
    /// Channel bound: ChannelData `channel` from `client` goes to `peer` from `relay`, and
    /// `peer` to `relay` traffic goes to `client` as ChannelData (RFC 8656 §12).
    ChannelBound {
        /// Allocation id.
        allocation: AllocationHandle,
        /// Client 5-tuple.
        client: FiveTuple,
        /// Relay transport address.
        relay: SocketAddr,
        /// Peer transport address.
        peer: SocketAddr,
        /// Channel number 0x4000-0x4FFF.
        channel: u16,
    },
    /// The channel lapsed or its allocation ended.
    ChannelExpired {
        /// Allocation id.
        allocation: AllocationHandle,
        /// Client 5-tuple.
        client: FiveTuple,
        /// Relay transport address.
        relay: SocketAddr,
        /// Peer transport address.
        peer: SocketAddr,
        /// Channel number.
        channel: u16,
    },
}

/// One item from [`Server::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send bytes.
    Transmit(Transmit),
    /// Something happened.
    Event(Event),
}

/// The TURN server core. See the module documentation for the call order.
pub struct Server {
    config: ServerConfig,
    credentials: Credentials,
    crypto: Box<dyn Crypto + Send>,
    rng: Box<dyn RngCore + Send>,
    relays: Box<dyn RelayAllocator + Send>,
    default_denied: Vec<IpRange>,
    private: Vec<IpRange>,
    own_ips: HashSet<IpAddr>,
    nonce_key: [u8; 20],
    epoch: Instant,
    allocations: HashMap<AllocationHandle, Allocation>,
    by_tuple: HashMap<FiveTuple, AllocationHandle>,
    by_relay: HashMap<SocketAddr, AllocationHandle>,
    per_user: HashMap<String, usize>,
    next_handle: u32,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    buckets: HashMap<IpAddr, Bucket>,
    sweep_armed: bool,
    out: VecDeque<Output>,
    counters: ServerCounters,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("credentials", &self.credentials)
            .field("allocations", &self.allocations.len())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Builds a server. `rng` seeds the nonce key and picks relay ports and nonces.
    pub fn new(
        now: Instant,
        config: ServerConfig,
        credentials: Credentials,
        relays: Box<dyn RelayAllocator + Send>,
        crypto: Box<dyn Crypto + Send>,
        mut rng: Box<dyn RngCore + Send>,
    ) -> Result<Self, TurnError> {
        config.validate()?;
        let mut nonce_key = [0u8; 20];
        rng.fill_bytes(&mut nonce_key);
        let own_ips = config
            .server_addresses
            .iter()
            .map(|ip| canonical(*ip))
            .collect();
        Ok(Server {
            config,
            credentials,
            crypto,
            rng,
            relays,
            default_denied: ranges(DEFAULT_DENIED),
            private: ranges(PRIVATE_RANGES),
            own_ips,
            nonce_key,
            epoch: now,
            allocations: HashMap::new(),
            by_tuple: HashMap::new(),
            by_relay: HashMap::new(),
            per_user: HashMap::new(),
            next_handle: 1,
            timers: BinaryHeap::new(),
            buckets: HashMap::new(),
            sweep_armed: false,
            out: VecDeque::new(),
            counters: ServerCounters::default(),
        })
    }

    /// Replaces the credentials (users file reload). Existing allocations keep running; their
    /// next request is checked against the new credentials.
    pub fn set_credentials(&mut self, credentials: Credentials) {
        self.credentials = credentials;
    }

    /// Next transmit or event. Drain until `None` after every `handle_*` call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Whether `bytes` arriving on a listen port belong to the STUN path (`handle_stun`) or
    /// ChannelData (`handle_channel_data`).
    pub fn classify(bytes: &[u8]) -> stun::PacketKind {
        stun::classify(bytes)
    }

    /// A STUN message from a client (`from`) to a listen address (`to`). Over TCP/TLS, pass
    /// one frame cut with [`stun::frame_len`].
    pub fn handle_stun(
        &mut self,
        now: Instant,
        wall_time: SystemTime,
        from: SocketAddr,
        to: SocketAddr,
        transport: Transport,
        bytes: &[u8],
    ) {
        let tuple = FiveTuple {
            transport,
            client: from,
            server: to,
        };
        let msg = match Message::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.counters.malformed += 1;
                trace!(error = %e, "dropping malformed STUN message");
                return;
            }
        };
        match msg.class() {
            Class::Request => {
                self.counters.requests += 1;
                self.handle_request(now, wall_time, tuple, &msg);
            }
            Class::Indication if msg.method() == Method::SEND => {
                self.handle_send_indication(now, tuple, &msg)
            }
            // Binding indications are keepalives (RFC 8489 §6.3.2); responses are not
            // expected by a server.
            _ => trace!(method = msg.method().0, "ignoring STUN message"),
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        wall: SystemTime,
        tuple: FiveTuple,
        msg: &Message<'_>,
    ) {
        let mut reply = Reply {
            tuple,
            method: msg.method(),
            txid: msg.transaction_id(),
            integrity: None,
            fingerprint: msg.has_fingerprint(),
        };
        let method = msg.method();
        if method == Method::BINDING {
            return self.handle_binding(now, &reply, msg);
        }
        if ![
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
        ]
        .contains(&method)
        {
            return self.send_error(now, &reply, 400, &[]);
        }
        let Some(auth) = self.authenticate(now, wall, &reply, msg) else {
            return;
        };
        reply.integrity = Some((auth.kind, auth.key));
        // RFC 8489 §6.3.1.1: unknown comprehension-required attributes get 420.
        let unknown = msg.unknown_comprehension_required(KNOWN_ATTRIBUTES);
        if !unknown.is_empty() {
            return self.send_error(now, &reply, 420, &[Attribute::UnknownAttributes(unknown)]);
        }
        if method == Method::ALLOCATE {
            return self.handle_allocate(now, &reply, msg, auth);
        }
        // RFC 8656 §7.3, §9.2, §11.2: other requests need an allocation on this 5-tuple...
        let Some(handle) = self.by_tuple.get(&tuple).copied() else {
            return self.send_error(now, &reply, 437, &[]);
        };
        // ...created with the same credentials (RFC 8656 §5: else 441 Wrong Credentials).
        if self
            .allocations
            .get(&handle)
            .is_none_or(|a| a.username != auth.username)
        {
            return self.send_error(now, &reply, 441, &[]);
        }
        match method {
            Method::REFRESH => self.handle_refresh(now, &reply, msg, handle),
            Method::CREATE_PERMISSION => self.handle_create_permission(now, &reply, msg, handle),
            _ => self.handle_channel_bind(now, &reply, msg, handle),
        }
    }

    fn handle_binding(&mut self, now: Instant, reply: &Reply, msg: &Message<'_>) {
        let unknown = msg.unknown_comprehension_required(KNOWN_ATTRIBUTES);
        if !unknown.is_empty() {
            return self.send_error(now, reply, 420, &[Attribute::UnknownAttributes(unknown)]);
        }
        self.send_success(
            now,
            reply,
            &[Attribute::XorMappedAddress(reply.tuple.client)],
        );
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::testing::*;
    use super::*;
    use crate::crypto::RustCrypto;
    use crate::stun::long_term_key;
    use crate::stun::{MessageBuilder, TransactionId};

    #[test]
    fn binding_returns_reflexive_address() {
        let mut f = fx();
        let r = f.request(Method::BINDING, None, &[]);
        assert_eq!(r.class, Class::Success);
        assert_eq!(r.mapped, Some(client()));
    }

    #[test]
    fn unknown_methods_and_attributes() {
        let mut f = fx();
        let r = f.request(Method(0x0FF), None, &[]);
        assert_eq!(r.code, Some(400));
        let r = f.request(
            Method::BINDING,
            None,
            &[Attribute::Other {
                typ: 0x7FFF,
                value: b"x",
            }],
        );
        assert_eq!(r.code, Some(420));
        assert_eq!(r.unknown, Some(vec![0x7FFF]));
        // Comprehension-optional unknowns are ignored.
        let r = f.request(
            Method::BINDING,
            None,
            &[Attribute::Other {
                typ: 0xC001,
                value: b"x",
            }],
        );
        assert_eq!(r.class, Class::Success);
    }

    #[test]
    fn garbage_inputs_never_panic() {
        let mut f = fx();
        let relay = f.allocate("turnuser", "cisco");
        let nonce = f.nonce();
        let samples = [
            f.build(
                Method::CHANNEL_BIND,
                Some(("turnuser", "cisco", &nonce)),
                &[Attribute::ChannelNumber(0x4000), peer_perm("192.0.2.7")],
            ),
            f.build(
                Method::CREATE_PERMISSION,
                Some(("turnuser", "cisco", &nonce)),
                &[peer_perm("192.0.2.7"), peer_perm("192.0.2.8")],
            ),
            build(
                Class::Indication,
                Method::SEND,
                TransactionId([5; 12]),
                None,
                &[peer_perm("192.0.2.7"), Attribute::Data(b"abc")],
            ),
        ];
        for msg in &samples {
            for i in 0..msg.len() {
                for v in [0u8, 0xFF, msg[i] ^ 0x01] {
                    let mut m = msg.clone();
                    m[i] = v;
                    for cut in [m.len(), i] {
                        f.server.handle_stun(
                            f.now,
                            wall(),
                            client(),
                            listen(),
                            Transport::Udp,
                            &m[..cut],
                        );
                        f.server.handle_channel_data(
                            f.now,
                            client(),
                            listen(),
                            Transport::Udp,
                            &m[..cut],
                        );
                        f.server
                            .handle_peer_data(f.now, relay, addr("192.0.2.7:5000"), &m[..cut]);
                    }
                }
            }
            let _ = f.drain();
        }
    }

    /// Bounded fuzz run through the whole server (not only the codec): 20 000 inputs, half of
    /// them correctly signed requests whose attributes are random (so authentication passes
    /// and every method handler sees garbage), the rest byte-mutated messages and ChannelData,
    /// plus peer datagrams and timer steps. Nothing may panic, and the server must stay
    /// consistent: every byte sent to a client is well-formed STUN or ChannelData.
    #[test]
    fn fuzzed_inputs_never_panic_the_server() {
        let mut f = fx_with(
            ServerConfig {
                allow_private_peers: true,
                unauthenticated_rate: None,
                ..config()
            },
            24000..=24031,
        );
        let mut rng = StdRng::seed_from_u64(0x5EED);
        let methods = [
            Method::BINDING,
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
            Method::SEND,
            Method(0x0FF),
        ];
        let types = [
            attr::XOR_PEER_ADDRESS,
            attr::CHANNEL_NUMBER,
            attr::LIFETIME,
            attr::REQUESTED_TRANSPORT,
            attr::REQUESTED_ADDRESS_FAMILY,
            attr::EVEN_PORT,
            attr::RESERVATION_TOKEN,
            attr::DATA,
            attr::DONT_FRAGMENT,
            attr::USERHASH,
            0x7F00,
            0xC001,
        ];
        let clients: Vec<SocketAddr> = (0..4)
            .map(|i| addr(&format!("203.0.113.{}:4000{i}", i + 5)))
            .collect();
        let mut seen: Vec<Vec<u8>> = Vec::new();
        for i in 0..20_000u32 {
            let from = clients[rng.next_u32() as usize % clients.len()];
            let transport = [Transport::Udp, Transport::Tcp][rng.next_u32() as usize % 2];
            let bytes = match i % 4 {
                // A signed request with random attribute values.
                0 | 1 => {
                    let nonce = f.nonce();
                    let method = methods[rng.next_u32() as usize % methods.len()];
                    let class = if method == Method::SEND {
                        Class::Indication
                    } else {
                        Class::Request
                    };
                    let mut txid = [0u8; 12];
                    rng.fill_bytes(&mut txid);
                    let mut b = MessageBuilder::new(class, method, TransactionId(txid));
                    let mut values = Vec::new();
                    for _ in 0..(rng.next_u32() % 4) {
                        let typ = types[rng.next_u32() as usize % types.len()];
                        let len = [0usize, 1, 4, 8, 20, 32][rng.next_u32() as usize % 6];
                        let mut v = vec![0u8; len];
                        rng.fill_bytes(&mut v);
                        // Keep some values well-formed so deeper checks are reached.
                        if typ == attr::REQUESTED_TRANSPORT && len == 4 && rng.next_u32() % 2 == 0 {
                            v = vec![17, 0, 0, 0];
                        }
                        values.push((typ, v));
                    }
                    for (typ, v) in &values {
                        // Oversized combinations are simply skipped.
                        let _ = b.add(&Attribute::Other {
                            typ: *typ,
                            value: v,
                        });
                    }
                    let _ = b.add(&Attribute::Username("turnuser"));
                    let _ = b.add(&Attribute::Realm(REALM));
                    let _ = b.add(&Attribute::Nonce(&nonce));
                    let key = long_term_key(&RustCrypto, "turnuser", REALM, "cisco");
                    let _ = b.add_integrity(&key, &RustCrypto);
                    if rng.next_u32() % 2 == 0 {
                        let _ = b.add_fingerprint();
                    }
                    b.finish()
                }
                // A byte-mutated earlier input or fresh ChannelData.
                2 => {
                    let mut m = if seen.is_empty() || rng.next_u32() % 3 == 0 {
                        let mut cd = Vec::new();
                        let ch = 0x4000 + (rng.next_u32() % 0x4000) as u16;
                        let mut data = vec![0u8; (rng.next_u32() % 64) as usize];
                        rng.fill_bytes(&mut data);
                        stun::encode_channel_data(ch, &data, rng.next_u32() % 2 == 0, &mut cd)
                            .expect("valid channel");
                        cd
                    } else {
                        seen[rng.next_u32() as usize % seen.len()].clone()
                    };
                    for _ in 0..(rng.next_u32() % 4) {
                        if !m.is_empty() {
                            let j = rng.next_u32() as usize % m.len();
                            m[j] = rng.next_u32() as u8;
                        }
                    }
                    let cut = rng.next_u32() as usize % (m.len() + 1);
                    m.truncate(cut.max(m.len() / 2));
                    m
                }
                // Random bytes from a peer to some relay port, then time moves on.
                _ => {
                    let mut data = vec![0u8; (rng.next_u32() % 32) as usize];
                    rng.fill_bytes(&mut data);
                    let relay = addr(&format!("198.51.100.1:{}", 24000 + rng.next_u32() % 32));
                    let peer = addr(&format!("192.0.2.{}:5000", rng.next_u32() % 4));
                    f.server.handle_peer_data(f.now, relay, peer, &data);
                    f.now += Duration::from_secs(u64::from(rng.next_u32() % 90));
                    f.server.handle_timeout(f.now);
                    data
                }
            };
            if i % 4 != 3 {
                match stun::classify(&bytes) {
                    stun::PacketKind::ChannelData => {
                        f.server
                            .handle_channel_data(f.now, from, listen(), transport, &bytes)
                    }
                    _ => f
                        .server
                        .handle_stun(f.now, wall(), from, listen(), transport, &bytes),
                }
            }
            for out in f.drain() {
                if let Output::Transmit(t) = out {
                    if t.from == listen() {
                        let ok = match stun::classify(&t.bytes) {
                            stun::PacketKind::Stun => Message::parse(&t.bytes).is_ok(),
                            stun::PacketKind::ChannelData => {
                                stun::ChannelData::parse(&t.bytes).is_ok()
                            }
                            stun::PacketKind::Other => false,
                        };
                        assert!(ok, "server sent malformed bytes to a client: {:?}", t.bytes);
                    }
                }
            }
            if seen.len() < 256 {
                seen.push(bytes);
            } else {
                let j = rng.next_u32() as usize % seen.len();
                seen[j] = bytes;
            }
            let st = f.server.status();
            assert_eq!(
                st.allocations,
                st.relays_udp + st.relays_tcp + st.relays_tls
            );
        }
        // The run reached deep paths, not only the parser.
        let c = f.server.status().counters;
        assert!(c.allocations_created > 0, "{c:?}");
        assert!(c.errors_sent.keys().count() >= 4, "{c:?}");
    }
}
