//! Tampered MESSAGE-INTEGRITY (RFC 8489 §14.5): a correctly signed Allocate crafted in the test
//! is altered in flight, once in the HMAC itself and once in a covered attribute; both get 401
//! and count as `bad_integrity`, and no allocation is made. The untampered message then works.

use crate::turn_support::*;
use anyhow::Result;
use turn_core::stun::{attr, Attribute, Class, Message, Method};

#[test]
fn altered_message_integrity_or_covered_attribute_is_rejected() -> Result<()> {
    let s = TurnScenario::start(ALLOW_TEST_PEERS)?;
    let mut c = s.client_socket()?;
    let nonce = c.challenge()?;
    let creds = Creds {
        user: USER,
        password: PASSWORD,
        nonce: &nonce,
    };
    let (txid, good) = c.build(
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17), Attribute::Lifetime(600)],
        Some(creds),
    )?;
    // MESSAGE-INTEGRITY is the last attribute (no FINGERPRINT): its 20-byte HMAC ends the
    // message, right after its type and length.
    let mi_at = good.len() - 20;
    assert_eq!(
        good[mi_at - 4..mi_at],
        [0x00, 0x08, 0x00, 0x14],
        "MESSAGE-INTEGRITY header"
    );
    let m = Message::parse(&good)?;
    let lt = m.get(attr::LIFETIME).expect("lifetime");
    let lt_at = lt.as_ptr() as usize - good.as_ptr() as usize;

    let mut bad_mac = good.clone();
    bad_mac[mi_at + 7] ^= 0x01;
    let r = c.exchange(txid, &bad_mac, Some(creds))?;
    assert_eq!(r.code, Some(401), "{r:?}");
    assert!(!r.has_integrity, "{r:?}");

    let mut bad_body = good.clone();
    bad_body[lt_at + 3] ^= 0x01;
    let r = c.exchange(txid, &bad_body, Some(creds))?;
    assert_eq!(r.code, Some(401), "{r:?}");

    let st = s.status()?;
    assert_eq!(st["counters"]["bad_integrity"], 2, "{st}");
    assert_eq!(st["allocations"], 0, "{st}");

    let r = c.exchange(txid, &good, Some(creds))?;
    assert_eq!(r.class, Class::Success, "{r:?}");
    assert!(r.integrity_ok, "{r:?}");
    assert_eq!(s.status()?["allocations"], 1);
    Ok(())
}
