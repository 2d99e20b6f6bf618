//! Wrong credentials, the case Expressway logs as "431 Integrity Check Failure": turn-server
//! answers 401 with a fresh challenge (RFC 8489 §9.2.4) and counts it as `bad_integrity`;
//! a request on someone else's allocation gets 441 Wrong Credentials (RFC 8656 §5). coturn's
//! client with a wrong password cannot allocate.

use std::time::Duration;

use crate::turn_support::*;
use anyhow::Result;
use turn_core::stun::{Attribute, Class, Method};

#[test]
fn wrong_password_gets_401_then_other_users_request_gets_441() -> Result<()> {
    let s = TurnScenario::start(ALLOW_TEST_PEERS)?;
    let mut c = s.client_socket()?;

    // First round trip: no MESSAGE-INTEGRITY, so 401 with REALM and NONCE, no integrity.
    let nonce = c.challenge()?;
    // Second: a wrong password is still 401 (not 431), again with a nonce, and the response
    // carries no MESSAGE-INTEGRITY because authentication failed.
    let wrong = Creds {
        user: USER,
        password: "not-cisco",
        nonce: &nonce,
    };
    let r = c.request(
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17)],
        Some(wrong),
    )?;
    assert_eq!(r.code, Some(401), "{r:?}");
    assert!(r.nonce.is_some() && !r.has_integrity, "{r:?}");
    let st = s.status()?;
    assert_eq!(st["counters"]["bad_integrity"], 1, "{st}");
    assert_eq!(st["allocations"], 0, "{st}");

    // An unknown user is also 401, counted apart.
    let r = c.request(
        Method::ALLOCATE,
        &[Attribute::RequestedTransport(17)],
        Some(Creds {
            user: "nobody",
            password: PASSWORD,
            nonce: &nonce,
        }),
    )?;
    assert_eq!(r.code, Some(401), "{r:?}");
    assert_eq!(s.status()?["counters"]["unknown_user"], 1);

    // The right password allocates; the success is signed with the user's key.
    let (nonce, r) = c.allocate(USER, PASSWORD)?;
    assert_eq!(r.class, Class::Success, "{r:?}");
    assert!(r.integrity_ok, "{r:?}");
    // Another valid user on the same 5-tuple: 441 Wrong Credentials, signed with *its* key.
    let other = Creds {
        user: OTHER_USER,
        password: OTHER_PASSWORD,
        nonce: &nonce,
    };
    let r = c.request(Method::REFRESH, &[], Some(other))?;
    assert_eq!(r.code, Some(441), "{r:?}");
    assert!(
        r.integrity_ok,
        "errors after authentication carry MESSAGE-INTEGRITY: {r:?}"
    );

    // A real client with a wrong password gets nowhere, and the server counts it.
    let before = s.status()?["counters"]["bad_integrity"]
        .as_u64()
        .unwrap_or(0);
    let (_, out) = s.uclient(
        &[
            "-u", USER, "-w", "wrong", "-e", PEER_IP, "-r", "3480", "-n", "3", "-c",
        ],
        Duration::from_secs(30),
    )?;
    assert!(out.contains("Cannot complete Allocation"), "{out}");
    let st = s.status()?;
    assert!(
        st["counters"]["bad_integrity"].as_u64() > Some(before),
        "uclient's wrong password was not counted: {st}"
    );
    assert_eq!(
        st["allocations"], 1,
        "only the crafted allocation exists: {st}"
    );
    // No password ever reaches the log.
    let log = s.topo.log("turn-server");
    assert!(
        !log.contains(PASSWORD) && !log.contains("not-cisco"),
        "{log}"
    );
    Ok(())
}
