//! Denied peers by default: the callee network 10.77.2.0/24 is private (RFC 1918), so without
//! `peers.allowed` a CreatePermission or ChannelBind towards 10.77.2.2 gets 403 Forbidden and
//! coturn's client relays nothing. With the network allowed, the server's own relay address
//! 10.77.2.1 stays denied (no relay loops), and so does loopback.

use std::time::Duration;

use crate::turn_support::*;
use anyhow::Result;
use turn_core::stun::{Attribute, Class, Method};

#[test]
fn private_peer_is_denied_unless_allowed_and_own_address_always() -> Result<()> {
    // Default policy: nothing allowed.
    let mut s = TurnScenario::start("")?;
    s.start_peer()?;
    let mut c = s.client_socket()?;
    let (nonce, r) = c.allocate(USER, PASSWORD)?;
    assert_eq!(r.class, Class::Success, "{r:?}");
    let creds = Creds {
        user: USER,
        password: PASSWORD,
        nonce: &nonce,
    };
    let peer = format!("{PEER_IP}:{PEER_PORT}").parse()?;
    let r = c.request(
        Method::CREATE_PERMISSION,
        &[Attribute::XorPeerAddress(peer)],
        Some(creds),
    )?;
    assert_eq!(r.code, Some(403), "{r:?}");
    assert!(r.integrity_ok, "{r:?}");
    let r = c.request(
        Method::CHANNEL_BIND,
        &[
            Attribute::ChannelNumber(0x4000),
            Attribute::XorPeerAddress(peer),
        ],
        Some(creds),
    )?;
    assert_eq!(r.code, Some(403), "{r:?}");

    // The real client: allocation works, but nothing is relayed.
    let (_, out) = s.uclient(
        &[
            "-u", USER, "-w", PASSWORD, "-e", PEER_IP, "-r", "3480", "-n", "5", "-c",
        ],
        Duration::from_secs(30),
    )?;
    let st = s.status()?;
    assert!(
        errors_sent(&st, 403) >= 3,
        "uclient's request was not refused: {st}\n{out}"
    );
    assert_eq!(st["traffic"]["to_peer_packets"], 0, "{st}");
    assert_eq!(st["traffic"]["from_peer_packets"], 0, "{st}");
    assert_eq!(st["permissions"], 0, "{st}");
    drop(s);

    // Allowed network: the peer works, the server's own relay IP and loopback do not.
    let s = TurnScenario::start(ALLOW_TEST_PEERS)?;
    let mut c = s.client_socket()?;
    let (nonce, r) = c.allocate(USER, PASSWORD)?;
    assert_eq!(r.class, Class::Success, "{r:?}");
    let creds = Creds {
        user: USER,
        password: PASSWORD,
        nonce: &nonce,
    };
    let r = c.request(
        Method::CREATE_PERMISSION,
        &[Attribute::XorPeerAddress(peer)],
        Some(creds),
    )?;
    assert_eq!(r.class, Class::Success, "{r:?}");
    for denied in [
        format!("{RELAY_IP}:24000"),
        "10.77.1.1:3478".into(),
        "127.0.0.1:9".into(),
    ] {
        let r = c.request(
            Method::CREATE_PERMISSION,
            &[Attribute::XorPeerAddress(denied.parse()?)],
            Some(creds),
        )?;
        assert_eq!(r.code, Some(403), "{denied}: {r:?}");
    }
    let st = s.status()?;
    assert_eq!(st["permissions"], 1, "{st}");
    Ok(())
}
