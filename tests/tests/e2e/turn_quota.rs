//! Quotas: with `quotas.user = 1` a user's second allocation gets 486 Allocation Quota Reached
//! (RFC 8656 §7.2) until the first is deleted; with `quotas.total = 1` the same holds across
//! users.

use crate::turn_support::*;
use anyhow::Result;
use turn_core::stun::{Attribute, Class, Method};

fn delete(c: &mut StunClient, user: &str, password: &str, nonce: &str) -> Result<()> {
    let r = c.request(
        Method::REFRESH,
        &[Attribute::Lifetime(0)],
        Some(Creds {
            user,
            password,
            nonce,
        }),
    )?;
    anyhow::ensure!(r.class == Class::Success, "delete failed: {r:?}");
    Ok(())
}

#[test]
fn per_user_quota_refuses_the_second_allocation() -> Result<()> {
    let s = TurnScenario::start(&format!("{ALLOW_TEST_PEERS}\n[quotas]\nuser = 1\n"))?;
    let (mut a, mut b) = (s.client_socket()?, s.client_socket()?);
    let (nonce_a, r) = a.allocate(USER, PASSWORD)?;
    assert_eq!(r.class, Class::Success, "{r:?}");
    let (_, r) = b.allocate(USER, PASSWORD)?;
    assert_eq!(r.code, Some(486), "{r:?}");
    assert!(r.integrity_ok, "{r:?}");
    // Another user is not affected by turnuser's quota.
    let (_, r) = b.allocate(OTHER_USER, OTHER_PASSWORD)?;
    assert_eq!(r.class, Class::Success, "{r:?}");
    let st = s.status()?;
    assert_eq!(st["allocations"], 2, "{st}");
    assert_eq!(errors_sent(&st, 486), 1, "{st}");

    // Freeing turnuser's allocation makes room again.
    delete(&mut a, USER, PASSWORD, &nonce_a)?;
    let mut c = s.client_socket()?;
    let (_, r) = c.allocate(USER, PASSWORD)?;
    assert_eq!(r.class, Class::Success, "{r:?}");
    Ok(())
}

#[test]
fn total_quota_refuses_any_second_allocation() -> Result<()> {
    let s = TurnScenario::start(&format!("{ALLOW_TEST_PEERS}\n[quotas]\ntotal = 1\n"))?;
    let (mut a, mut b) = (s.client_socket()?, s.client_socket()?);
    let (_, r) = a.allocate(USER, PASSWORD)?;
    assert_eq!(r.class, Class::Success, "{r:?}");
    let (_, r) = b.allocate(OTHER_USER, OTHER_PASSWORD)?;
    assert_eq!(r.code, Some(486), "{r:?}");
    let st = s.status()?;
    assert_eq!(st["allocations"], 1, "{st}");
    assert_eq!(st["relays_udp"], 1, "{st}");
    Ok(())
}
