//! `systemctl reload turn-server` (SIGHUP) under a live allocation. A client allocates as
//! turnuser and relays ChannelData through coturn's echo peer. Then, with the server running:
//! `turn-server user add carol`, `user del other` and a new REST shared secret in its file.
//! Before the SIGHUP none of it applies (carol and the new secret's credential get 401); after
//! it, the live allocation still relays on the same channel, carol and the new secret's
//! credential allocate, and the deleted user gets 401. A SIGHUP with a broken users file is
//! refused and changes nothing.

use crate::turn_support::*;
use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use turn_core::stun::Class;
use xdpfork_tests::Topology;

const CAROL: &str = "carol";
const CAROL_PASSWORD: &str = "carol-pw";
const CHANNEL: u16 = 0x4001;

/// Sends one ChannelData message on `channel` and waits (bounded) for the peer's echo.
fn echo(c: &StunClient, channel: u16, payload: &[u8]) -> Result<()> {
    c.sock.send_to(&channel_data(channel, payload), c.server)?;
    let mut buf = [0u8; 2048];
    for _ in 0..20 {
        let n = c.sock.recv(&mut buf).context("no echo through the relay")?;
        if buf[..n] == channel_data(channel, payload)[..] {
            return Ok(());
        }
    }
    bail!("the echo of {payload:?} never came back on channel {channel:#06x}")
}

/// Sends SIGHUP and waits until the status view counts `reloads` applied and `failed`
/// refused.
fn reload(s: &TurnScenario, reloads: u64, failed: u64) -> Result<()> {
    s.topo.send_signal("turn-server", Signal::SIGHUP)?;
    wait("the reload", || {
        let st = s.status()?;
        Ok(st["shell"]["reloads"] == reloads && st["shell"]["reload_failed"] == failed)
    })
}

/// A credential for `user` from `turn-server credential` (the config's current secret file).
fn rest_credential(cfg: &str, user: &str) -> Result<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(&turn_cli(
        &["credential", "--config", cfg, "--user", user, "--json"],
        "",
    )?)?;
    Ok((
        v["username"].as_str().context("username")?.to_owned(),
        v["password"].as_str().context("password")?.to_owned(),
    ))
}

#[test]
fn sighup_swaps_credentials_while_an_allocation_relays() -> Result<()> {
    require_coturn_tools()?;
    let mut topo = Topology::new()?;
    let secret = topo.dir.join("turn-secret");
    std::fs::write(&secret, "first-secret\n")?;
    let config = write_turn_config(
        &topo,
        &format!("rest_secret_file = \"{}\"", secret.display()),
        ALLOW_TEST_PEERS,
        false,
        true,
    )?;
    let cfg = config.to_string_lossy().into_owned();
    let socket = start_turn_server(&mut topo, &config, &[])?;
    let mut s = TurnScenario { topo, socket };
    s.start_peer()?;
    let peer = format!("{PEER_IP}:{PEER_PORT}").parse()?;

    let mut live = s.client_socket()?;
    bind_channel(&mut live, CHANNEL, peer)?;
    echo(&live, CHANNEL, b"before the reload")?;

    turn_cli(
        &["user", "--config", &cfg, "add", CAROL, "--password-stdin"],
        &format!("{CAROL_PASSWORD}\n"),
    )?;
    turn_cli(&["user", "--config", &cfg, "del", OTHER_USER], "")?;
    std::fs::write(&secret, "second-secret\n")?;
    let (rest_user, rest_password) = rest_credential(&cfg, "dave")?;
    // Nothing applies until the signal.
    let (_, r) = s.client_socket()?.allocate(CAROL, CAROL_PASSWORD)?;
    assert_eq!(r.code, Some(401), "carol allowed before the reload: {r:?}");
    let (_, r) = s.client_socket()?.allocate(&rest_user, &rest_password)?;
    assert_eq!(
        r.code,
        Some(401),
        "new secret used before the reload: {r:?}"
    );

    reload(&s, 1, 0)?;
    echo(&live, CHANNEL, b"after the reload")?;
    let st = s.status()?;
    assert_eq!(st["allocations"], 1, "{st}");
    assert_eq!(st["active"][0]["username"], USER, "{st}");
    let (_, r) = s.client_socket()?.allocate(CAROL, CAROL_PASSWORD)?;
    assert_eq!(
        r.class,
        Class::Success,
        "carol refused after the reload: {r:?}"
    );
    let (_, r) = s.client_socket()?.allocate(&rest_user, &rest_password)?;
    assert_eq!(r.class, Class::Success, "new secret refused: {r:?}");
    let (_, r) = s.client_socket()?.allocate(OTHER_USER, OTHER_PASSWORD)?;
    assert_eq!(r.code, Some(401), "deleted user allowed: {r:?}");

    // A file that no longer validates: refused, the running credentials stay.
    let users = s.topo.dir.join("turn-users");
    std::fs::write(
        &users,
        "realm=another.realm\nbroken line without a password\n",
    )?;
    reload(&s, 1, 1)?;
    let (_, r) = s.client_socket()?.allocate(CAROL, CAROL_PASSWORD)?;
    assert_eq!(
        r.class,
        Class::Success,
        "a refused reload changed the users: {r:?}"
    );
    echo(&live, CHANNEL, b"after a refused reload")?;
    assert!(
        s.topo.log("turn-server").contains("reload refused"),
        "{}",
        s.topo.log("turn-server")
    );
    Ok(())
}
