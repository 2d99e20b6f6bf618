//! Nonce expiry: with `auth.nonce_lifetime_secs = 2`, a request signed with a nonce older than
//! that gets 438 Stale Nonce carrying a fresh NONCE (RFC 8489 §9.2.4), and retrying with the
//! new nonce succeeds on the same allocation.

use std::time::Duration;

use crate::turn_support::*;
use anyhow::Result;
use turn_core::stun::{Attribute, Class, Method};

#[test]
fn expired_nonce_gets_438_with_a_new_nonce_that_works() -> Result<()> {
    let s = TurnScenario::start_with("nonce_lifetime_secs = 2", ALLOW_TEST_PEERS)?;
    let mut c = s.client_socket()?;
    let (nonce, r) = c.allocate(USER, PASSWORD)?;
    assert_eq!(r.class, Class::Success, "{r:?}");

    // Fresh nonce: a Refresh works.
    let creds = Creds {
        user: USER,
        password: PASSWORD,
        nonce: &nonce,
    };
    let r = c.request(Method::REFRESH, &[Attribute::Lifetime(600)], Some(creds))?;
    assert_eq!(r.class, Class::Success, "{r:?}");

    // Let it expire (nonce lifetime 2 s).
    std::thread::sleep(Duration::from_millis(2500));
    let r = c.request(Method::REFRESH, &[Attribute::Lifetime(600)], Some(creds))?;
    assert_eq!(r.code, Some(438), "{r:?}");
    let fresh = r.nonce.clone().expect("438 carries a new NONCE");
    assert_ne!(fresh, nonce);
    assert_eq!(r.realm.as_deref(), Some(REALM), "{r:?}");

    let r = c.request(
        Method::REFRESH,
        &[Attribute::Lifetime(600)],
        Some(Creds {
            nonce: &fresh,
            ..creds
        }),
    )?;
    assert_eq!(r.class, Class::Success, "{r:?}");
    assert!(r.integrity_ok, "{r:?}");
    let st = s.status()?;
    assert_eq!(st["counters"]["stale_nonce"], 1, "{st}");
    assert_eq!(errors_sent(&st, 438), 1, "{st}");
    assert_eq!(st["allocations"], 1, "{st}");
    Ok(())
}
