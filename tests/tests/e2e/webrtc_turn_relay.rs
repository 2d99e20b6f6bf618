//! A browser behind a NAT that only a TURN relay crosses (the CMS-through-Expressway deployment
//! of ../shared/reference/cms-webrtc-proxy-expressway-turn.txt: the web client's media goes
//! through the TURN server on 3478 with `turnuser`/`cisco`, relays from 24000 up) calls a phone
//! through Kamailio, with turn-server as that relay. aiortc is given turn-server as its only ICE
//! server and the `relay` ICE transport policy, so its only candidate is the relayed one; the
//! proxy's flags are the same as for any browser (`webrtc_kamailio_call`): a browser using TURN
//! needs nothing from the engine, which only sees the relay's address as the browser's.
//!
//! ```text
//!  caller ns: browser.py 10.77.1.2 ── TURN (UDP) ──▶ 10.77.1.3:3478 turn-server (forker ns)
//!             relay 10.77.1.3:240xx ──▶ 10.77.1.1:30000 ng-agent's browser socket ── … phone
//! ```
//!
//! turn-server listens and relays on its own address, 10.77.1.3 on fa0, not on ng-agent's
//! 10.77.1.1: a server's own addresses are never allowed as peers (docs/turn.md "Denied
//! peers"). The peer, ng-agent's 10.77.1.1, is private and so denied by default; the config
//! allows exactly that address, as the Expressway example allows its CMS's LAN.
//!
//! Proved: audio both ways sample-exact and the fork of the browser's leg equal to what was
//! played (as without TURN); turn-server held the browser's allocation with a permission for
//! ng-agent's address and relayed at least every packet the bridge counted, each way; the
//! browser's only candidates were relayed ones; ng-agent's bridge took the relay's address as
//! the browser's (the source of the nominating ICE check, `webrtc.selected` in `query`).

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ng_agent::core::bencode::Value;
use xdpfork_tests::{ns_run, Host};

use crate::turn_support::{
    errors_sent, start_turn_server, turn_status, write_turn_config_on, PASSWORD, USER,
};
use crate::webrtc_support::*;

/// turn-server's address (listen and relay), a second address on the forker's browser-facing
/// interface.
const TURN_IP: &str = "10.77.1.3";
/// turn-server's UDP (and TCP) listener, the TURN port of the reference.
const TURN: &str = "10.77.1.3:3478";
/// ng-agent's browser-facing address: the relay's only peer.
const BRIDGE_IP: &str = "10.77.1.1";

#[test]
fn browser_behind_turn_calls_phone_media_through_the_relay() -> Result<()> {
    let mut w = WebrtcTest::start()?;
    let socket = start_turn(&mut w)?;
    let source = source_wav(&w.dir(), 3)?;
    w.ng.t
        .callee("uas_proxy_answer.xml", &PCMU, &["-rtp_echo"])?;
    let turn_uri = format!("turn:{TURN}");
    w.spawn_browser_with(
        "call",
        &source,
        "yes",
        &[
            "--turn",
            &turn_uri,
            "--turn-user",
            USER,
            "--turn-password",
            PASSWORD,
        ],
    )?;

    // While the call is up (the kernel has relayed the browser's audio toward the phone): the
    // browser's allocation, from its own address, with a permission for ng-agent's.
    w.ng.wait_relayed(&format!("{KERNEL}:30004"), 50)?;
    let live = turn_status(&socket)?;
    let active = live["active"].as_array().cloned().unwrap_or_default();
    assert_eq!(active.len(), 1, "{live:#}");
    let alloc = &active[0];
    assert!(
        alloc["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("10.77.1.2:")),
        "{alloc}"
    );
    assert_eq!(alloc["username"], USER, "{alloc}");
    assert_eq!(
        alloc["permissions"],
        serde_json::json!([BRIDGE_IP]),
        "{alloc}"
    );
    let relay = alloc["relay"]
        .as_str()
        .context("allocation without a relay address")?
        .to_owned();
    assert!(relay.starts_with(&format!("{TURN_IP}:")), "{alloc}");

    // ng-agent's bridge answered ICE checks from the relay and nominated it: its `query` shows
    // the relay's address as the browser's selected one.
    assert_eq!(selected_browser_address(&w)?, relay, "{}", w.diag());

    let report = w.browser_report()?;
    assert_eq!(report["ok"], true, "{report:#}\n{}", w.diag());
    let offer = report["offer"].as_str().unwrap_or_default();
    let candidates: Vec<&str> = offer
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert!(!candidates.is_empty(), "{offer}");
    for c in &candidates {
        assert!(
            c.contains(&format!(" {TURN_IP} ")) && c.contains(" typ relay"),
            "a non-relayed candidate left the browser: {c}\n{offer}"
        );
    }

    // Both ways, sample-exact, and the fork, exactly as without TURN.
    let heard = w.dir().join("browser-heard.wav");
    xdpfork_tests::dialects::compare(8000, &heard, &source)?;
    w.ng.t.wait_callee_done()?;
    w.ng.t.wait_no_flows()?;
    let totals = w.assert_bridged_cleanly()?;
    assert_eq!(totals.count("unverified-source"), 0);
    w.assert_fork_matches(&source)?;

    // Every SRTP packet the bridge decrypted came through the relay, and every one it sent went
    // back through it (plus the STUN checks and DTLS both ways); nothing was refused.
    let status = turn_status(&socket)?;
    let t = &status["traffic"];
    let relayed = |k: &str| t[k].as_i64().unwrap_or(-1);
    assert!(
        relayed("to_peer_packets") >= totals.count("to-plain"),
        "{status:#}"
    );
    assert!(
        relayed("from_peer_packets") >= totals.count("to-browser"),
        "{status:#}"
    );
    assert_eq!(status["counters"]["allocations_created"], 1, "{status:#}");
    assert_eq!(errors_sent(&status, 403), 0, "{status:#}");
    assert_eq!(t["dropped_no_permission"], 0, "{status:#}");
    Ok(())
}

/// Adds turn-server's address to fa0 (it goes with the namespace) and starts turn-server on it
/// (turn_support's config: relays 24000-24099, the test users) with ng-agent's address as the
/// one allowed peer; returns its control socket.
fn start_turn(w: &mut WebrtcTest) -> Result<PathBuf> {
    let topo = &mut w.ng.t.s.topo;
    ns_run(
        &topo.ns(Host::Forker),
        "ip",
        &["addr", "add", &format!("{TURN_IP}/24"), "dev", "fa0"],
    )?;
    // ng-agent's browser-facing address is private (denied by default): allow exactly it.
    let peers = format!("[peers]\nallowed = [\"{BRIDGE_IP}/32\"]\n");
    let config = write_turn_config_on(topo, (TURN, TURN_IP), "", &peers, false, false)?;
    start_turn_server(topo, &config, &[])
}

/// The browser leg's selected address (`address:port`) in ng-agent's `query` of the one call
/// (`tags.<tag>.medias[0].webrtc.selected`, docs/webrtc.md "Counters").
fn selected_browser_address(w: &WebrtcTest) -> Result<String> {
    let calls = w.ng.calls()?;
    let [call_id] = calls.as_slice() else {
        bail!("expected one call in ng-agent, got {calls:?}");
    };
    let reply = w.ng.ng(Value::dict([
        ("command", Value::str("query")),
        ("call-id", Value::str(call_id)),
    ]))?;
    let Some(Value::Dict(tags)) = reply.get("tags") else {
        bail!("query without tags: {reply:?}");
    };
    let selected = tags
        .values()
        .filter_map(|t| match t.get("medias") {
            Some(Value::List(m)) => m.first(),
            _ => None,
        })
        .find_map(|m| m.get("webrtc")?.get("selected"))
        .with_context(|| format!("no browser leg with a selected address in {reply:?}"))?;
    match (
        selected.get("address").and_then(Value::as_str),
        selected.get("port"),
    ) {
        (Some(a), Some(Value::Int(p))) => Ok(format!("{a}:{p}")),
        _ => bail!("no address selected yet: {reply:?}"),
    }
}
