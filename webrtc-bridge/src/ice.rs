//! ICE-lite responder (RFC 8445 §2.5, §7.3): answers STUN Binding requests whose USERNAME
//! starts with our ufrag and whose MESSAGE-INTEGRITY verifies with our password, and nominates
//! the source of a request that carries USE-CANDIDATE. A lite agent sends no checks.
//!
//! STUN encoding and the integrity check are turn-core's.

use std::net::SocketAddr;

use turn_core::stun::{Attribute, Class, IntegrityCheck, Message, MessageBuilder, Method};
use turn_core::RustCrypto;

/// USE-CANDIDATE (RFC 8445 §16.1).
const USE_CANDIDATE: u16 = 0x0025;

/// Our ICE credentials (`a=ice-ufrag`, `a=ice-pwd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceCredentials {
    /// At least 4 ICE characters (RFC 8839 §5.4).
    pub ufrag: String,
    /// At least 22 ICE characters.
    pub pwd: String,
}

impl IceCredentials {
    /// Random credentials from `rng` (ufrag 8, password 24 characters of `[A-Za-z0-9]`).
    pub fn random(rng: &mut impl rand::Rng) -> IceCredentials {
        use rand::distributions::{Alphanumeric, DistString};
        IceCredentials {
            ufrag: Alphanumeric.sample_string(rng, 8),
            pwd: Alphanumeric.sample_string(rng, 24),
        }
    }
}

/// What one STUN request amounted to.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// A valid check: send `response` back to the source; `nominate` when USE-CANDIDATE was set.
    Valid {
        /// The Binding success response.
        response: Vec<u8>,
        /// The controlling agent picked this pair.
        nominate: bool,
    },
    /// Not a Binding request for us, or it failed integrity: dropped.
    Rejected,
}

/// Answers one STUN message from `from`.
pub fn answer(local: &IceCredentials, from: SocketAddr, bytes: &[u8]) -> Check {
    let Ok(msg) = Message::parse(bytes) else {
        return Check::Rejected;
    };
    if msg.class() != Class::Request || msg.method() != Method::BINDING {
        return Check::Rejected;
    }
    // USERNAME is "<our ufrag>:<their ufrag>" (RFC 8445 §7.2.2).
    let ours = match msg.username() {
        Ok(Some(u)) => u.split(':').next() == Some(local.ufrag.as_str()),
        _ => false,
    };
    if !ours {
        return Check::Rejected;
    }
    let crypto = RustCrypto;
    if !matches!(
        msg.check_integrity(local.pwd.as_bytes(), &crypto),
        IntegrityCheck::Valid(_)
    ) {
        return Check::Rejected;
    }
    let mut b = MessageBuilder::new(Class::Success, Method::BINDING, msg.transaction_id());
    let built = b
        .add(&Attribute::XorMappedAddress(from))
        .and_then(|b| b.add_integrity(local.pwd.as_bytes(), &crypto))
        .and_then(|b| b.add_fingerprint())
        .is_ok();
    if !built {
        return Check::Rejected;
    }
    Check::Valid {
        response: b.finish(),
        nominate: msg.get(USE_CANDIDATE).is_some(),
    }
}
