//! Test fixture shared by the server's unit tests: a [`Server`] with two users and a REST
//! secret, a stepped clock, and helpers that build requests and read responses.

use rand::rngs::StdRng;
use rand::SeedableRng;

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use super::*;
use crate::credentials::{RestSecret, UserDb};
use crate::crypto::RustCrypto;
use crate::stun::{long_term_key, IntegrityCheck, IntegrityKind, MessageBuilder, TransactionId};

pub(super) const REALM: &str = "example.org";

/// Tests step time from an arbitrary origin; only differences are ever compared, so this
/// is the one clock read, and no test depends on its value.
#[allow(clippy::disallowed_methods)]
pub(super) fn origin() -> Instant {
    Instant::now()
}

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

pub(super) fn client() -> SocketAddr {
    addr("203.0.113.5:40000")
}

pub(super) fn listen() -> SocketAddr {
    addr("198.51.100.1:3478")
}

pub(super) fn wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

pub(super) struct Fx {
    pub(super) server: Server,
    pub(super) now: Instant,
    pub(super) txid: u8,
}

/// What a test needs from one response, owned.
#[derive(Debug)]
pub(super) struct Resp {
    pub(super) class: Class,
    pub(super) code: Option<u16>,
    pub(super) nonce: Option<String>,
    pub(super) relayed: Option<SocketAddr>,
    pub(super) mapped: Option<SocketAddr>,
    pub(super) lifetime: Option<u32>,
    pub(super) unknown: Option<Vec<u16>>,
    pub(super) integrity_ok: bool,
}

pub(super) fn config() -> ServerConfig {
    ServerConfig {
        server_addresses: vec![listen().ip()],
        ..ServerConfig::default()
    }
}

pub(super) fn fx_with(config: ServerConfig, ports: RangeInclusive<u16>) -> Fx {
    let users = UserDb::parse("turnuser:cisco\nother:pw\n").expect("users");
    let creds = Credentials::new(REALM)
        .with_users(users)
        .expect("realm")
        .with_rest_secret(RestSecret::new("shared"));
    let relays =
        PortRangeAllocator::new(Some(Ipv4Addr::new(198, 51, 100, 1)), None, ports).expect("ports");
    let now = origin();
    let server = Server::new(
        now,
        config,
        creds,
        Box::new(relays),
        Box::new(RustCrypto),
        Box::new(StdRng::seed_from_u64(7)),
    )
    .expect("valid config");
    Fx {
        server,
        now,
        txid: 0,
    }
}

pub(super) fn fx() -> Fx {
    fx_with(config(), PortRangeAllocator::DEFAULT_PORTS)
}

impl Fx {
    pub(super) fn next_txid(&mut self) -> TransactionId {
        self.txid = self.txid.wrapping_add(1);
        TransactionId([self.txid; 12])
    }

    pub(super) fn build(
        &mut self,
        method: Method,
        creds: Option<(&str, &str, &str)>,
        attrs: &[Attribute<'_>],
    ) -> Vec<u8> {
        let txid = self.next_txid();
        build(Class::Request, method, txid, creds, attrs)
    }

    pub(super) fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.server.poll_output()).collect()
    }

    pub(super) fn send_from(
        &mut self,
        from: SocketAddr,
        transport: Transport,
        bytes: &[u8],
    ) -> Vec<Output> {
        self.server
            .handle_stun(self.now, wall(), from, listen(), transport, bytes);
        self.drain()
    }

    /// Sends one request from `client()` over UDP and parses the single response.
    pub(super) fn request(
        &mut self,
        method: Method,
        creds: Option<(&str, &str, &str)>,
        attrs: &[Attribute<'_>],
    ) -> Resp {
        let bytes = self.build(method, creds, attrs);
        let key = creds.map(|(u, p, _)| long_term_key(&RustCrypto, u, REALM, p));
        let out = self.send_from(client(), Transport::Udp, &bytes);
        let t = transmits(&out);
        assert_eq!(t.len(), 1, "expected one response, got {out:?}");
        assert_eq!((t[0].from, t[0].to), (listen(), client()));
        resp(&t[0].bytes, key)
    }

    pub(super) fn nonce(&mut self) -> String {
        let r = self.request(
            Method::ALLOCATE,
            None,
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        assert_eq!(r.code, Some(401));
        r.nonce.expect("401 carries a nonce")
    }

    pub(super) fn allocate(&mut self, user: &str, pass: &str) -> SocketAddr {
        let nonce = self.nonce();
        let r = self.request(
            Method::ALLOCATE,
            Some((user, pass, &nonce)),
            &[Attribute::RequestedTransport(PROTO_UDP)],
        );
        assert_eq!(r.class, Class::Success, "{r:?}");
        assert!(r.integrity_ok);
        r.relayed.expect("relayed address")
    }

    pub(super) fn authed(&mut self, method: Method, attrs: &[Attribute<'_>]) -> Resp {
        let nonce = self.nonce();
        self.request(method, Some(("turnuser", "cisco", &nonce)), attrs)
    }
}

pub(super) fn build(
    class: Class,
    method: Method,
    txid: TransactionId,
    creds: Option<(&str, &str, &str)>,
    attrs: &[Attribute<'_>],
) -> Vec<u8> {
    let mut b = MessageBuilder::new(class, method, txid);
    for a in attrs {
        b.add(a).expect("fits");
    }
    if let Some((user, pass, nonce)) = creds {
        b.add(&Attribute::Username(user)).expect("fits");
        b.add(&Attribute::Realm(REALM)).expect("fits");
        b.add(&Attribute::Nonce(nonce)).expect("fits");
        let key = long_term_key(&RustCrypto, user, REALM, pass);
        b.add_integrity(&key, &RustCrypto).expect("fits");
    }
    b.add_fingerprint().expect("fits");
    b.finish()
}

pub(super) fn transmits(out: &[Output]) -> Vec<Transmit> {
    out.iter()
        .filter_map(|o| match o {
            Output::Transmit(t) => Some(t.clone()),
            Output::Event(_) => None,
        })
        .collect()
}

pub(super) fn events(out: &[Output]) -> Vec<Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            Output::Transmit(_) => None,
        })
        .collect()
}

pub(super) fn resp(bytes: &[u8], key: Option<[u8; 16]>) -> Resp {
    let m = Message::parse(bytes).expect("server output parses");
    assert!(
        m.has_fingerprint(),
        "request had FINGERPRINT so response must"
    );
    Resp {
        class: m.class(),
        code: m.error_code().expect("valid").map(|(c, _)| c),
        nonce: m.nonce().expect("valid").map(str::to_owned),
        relayed: m.xor_relayed_address().expect("valid"),
        mapped: m.xor_mapped_address().expect("valid"),
        lifetime: m.lifetime().expect("valid"),
        unknown: match m.attribute(attr::UNKNOWN_ATTRIBUTES).expect("valid") {
            Some(Attribute::UnknownAttributes(u)) => Some(u),
            _ => None,
        },
        integrity_ok: key.is_some_and(|k| {
            m.check_integrity(&k, &RustCrypto) == IntegrityCheck::Valid(IntegrityKind::Sha1)
        }),
    }
}

pub(super) fn peer_perm(ip: &str) -> Attribute<'static> {
    Attribute::XorPeerAddress(SocketAddr::new(ip.parse().expect("ip"), 5000))
}
