//! The operator's TURN tools reach the real server. Before turn-server starts:
//! `turn-server user add carol --password-stdin` stores carol's key (not her password) in the
//! users file, `user del other` removes a user, and `turn-server credential` issues a TURN REST
//! credential from the configured shared secret. Then coturn's turnutils_uclient, as carol,
//! allocates, binds channels and gets every byte back through the relay; the REST credential
//! allocates; the deleted user gets 401.

use crate::turn_support::*;
use anyhow::{Context, Result};
use turn_core::stun::Class;
use xdpfork_tests::Topology;

const CAROL: &str = "carol";
const CAROL_PASSWORD: &str = "carol's pass:word";
const SECRET: &str = "e2e-shared-secret";

#[test]
fn cli_added_user_relays_with_coturn_and_rest_credential_allocates() -> Result<()> {
    require_coturn_tools()?;
    let mut topo = Topology::new()?;
    let config = write_turn_config(
        &topo,
        &format!("rest_secret = \"{SECRET}\""),
        ALLOW_TEST_PEERS,
        false,
        true,
    )?;
    let cfg = config.to_string_lossy().into_owned();

    turn_cli(
        &["user", "--config", &cfg, "add", CAROL, "--password-stdin"],
        &format!("{CAROL_PASSWORD}\n"),
    )?;
    turn_cli(&["user", "--config", &cfg, "del", OTHER_USER], "")?;
    let list = turn_cli(&["user", "--config", &cfg, "list"], "")?;
    assert_eq!(list, format!("{CAROL}\tkey\n{USER}\tpassword\n"));
    let users = std::fs::read_to_string(topo.dir.join("turn-users"))?;
    assert!(!users.contains(CAROL_PASSWORD), "password stored: {users}");
    let rest: serde_json::Value = serde_json::from_str(&turn_cli(
        &[
            "credential",
            "--config",
            &cfg,
            "--user",
            "dave",
            "--ttl",
            "600",
            "--json",
        ],
        "",
    )?)?;
    let (rest_user, rest_password) = (
        rest["username"].as_str().context("username")?.to_owned(),
        rest["password"].as_str().context("password")?.to_owned(),
    );
    assert!(rest_user.ends_with(":dave"), "{rest}");

    let socket = start_turn_server(&mut topo, &config, &[])?;
    let mut s = TurnScenario { topo, socket };
    s.start_peer()?;
    channel_round_trip_as(&s, (CAROL, CAROL_PASSWORD), &[], 20, 100, |_| true)?;

    let (_, r) = s.client_socket()?.allocate(&rest_user, &rest_password)?;
    assert_eq!(r.class, Class::Success, "REST credential refused: {r:?}");
    let (_, r) = s.client_socket()?.allocate(OTHER_USER, OTHER_PASSWORD)?;
    assert_eq!(r.code, Some(401), "deleted user allowed: {r:?}");
    Ok(())
}
