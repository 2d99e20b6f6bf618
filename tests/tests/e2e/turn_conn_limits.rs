//! turn-server's TCP and TLS listeners under one client that opens more connections than the
//! limits allow (`[limits]`, docs/security.md "Resource limits"):
//! - from one address, on both listeners: 8 held (the per-address limit spans TCP and TLS),
//!   the rest closed at once; the real coturn client then relays over TCP and over TLS from
//!   another address;
//! - the flood's connections, which never allocate, are closed after
//!   `unauthenticated_timeout_secs`, while an allocated connection is not;
//! - from five addresses: the global limit holds, a new client is refused until the idle ones
//!   time out, then the real client succeeds again;
//! - the status view counts each kind of refusal and expiry.
#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::{net::IpAddr, time::Duration};

use crate::limits_support::*;
use crate::turn_support::*;
use anyhow::Result;
use xdpfork_tests::Host;

const LIMITS: &str = "[limits]\nmax_connections_per_address = 8\nmax_connections = 32\nunauthenticated_timeout_secs = 3\n";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[test]
fn connection_flood_is_bounded_and_real_clients_relay() -> Result<()> {
    let mut s = TurnScenario::start_tls(&format!("{ALLOW_TEST_PEERS}{LIMITS}"))?;
    s.start_peer()?;
    let attackers = [
        "10.77.1.3",
        "10.77.1.4",
        "10.77.1.5",
        "10.77.1.6",
        "10.77.1.7",
    ];
    for a in attackers {
        add_caller_address(&s.topo, a)?;
    }
    let tcp = SERVER.parse()?;
    let tls = TLS_SERVER.parse()?;

    let mut flood = tcp_connect_many(&s.topo, Host::Caller, ip(attackers[0]), tcp, 20)?;
    flood.extend(tcp_connect_many(
        &s.topo,
        Host::Caller,
        ip(attackers[0]),
        tls,
        20,
    )?);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count_open(&flood),
        8,
        "per-address limit across TCP and TLS"
    );

    // The real client from 10.77.1.2, over TCP and over TLS, during the flood.
    let (ok, out) = s.uclient(
        &[
            "-t", "-u", USER, "-w", PASSWORD, "-e", PEER_IP, "-r", "3480", "-n", "20", "-l", "100",
            "-c",
        ],
        Duration::from_secs(60),
    )?;
    assert!(ok, "uclient over TCP during the flood:\n{out}");
    let stats = parse_uclient_stats(&out)?;
    assert_eq!((stats.send_msgs, stats.recv_msgs), (20, 20), "{out}");
    let (ok, out) = s.uclient(
        &[
            "-S", "-t", "-p", "5349", "-u", USER, "-w", PASSWORD, "-e", PEER_IP, "-r", "3480",
            "-n", "20", "-l", "100", "-c",
        ],
        Duration::from_secs(60),
    )?;
    assert!(ok, "uclient over TLS during the flood:\n{out}");
    assert_eq!(parse_uclient_stats(&out)?.recv_msgs, 20, "{out}");

    // The flood never allocated: closed after 3 s.
    wait_for(
        "unauthenticated connections closed",
        Duration::from_secs(10),
        || Ok(count_open(&flood) == 0),
    )?;
    drop(flood);

    // Five addresses, 8 each: the global limit (32) holds, a new client is refused.
    let mut held = Vec::new();
    for a in attackers {
        held.extend(tcp_connect_many(&s.topo, Host::Caller, ip(a), tcp, 8)?);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count_open(&held), 32, "global limit");
    let late = tcp_connect_many(&s.topo, Host::Caller, ip(CLIENT_IP), tcp, 1)?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count_open(&late),
        0,
        "refused while the global limit is full"
    );
    wait_for("flood timed out", Duration::from_secs(10), || {
        Ok(count_open(&held) == 0)
    })?;
    let (ok, out) = s.uclient(
        &[
            "-t", "-u", USER, "-w", PASSWORD, "-e", PEER_IP, "-r", "3480", "-n", "20", "-l", "100",
            "-c",
        ],
        Duration::from_secs(60),
    )?;
    assert!(ok, "uclient over TCP after the flood:\n{out}");

    let st = s.status()?;
    let shell = &st["shell"];
    assert_eq!(shell["stream_refused_per_address"], 32, "{st}");
    assert!(shell["stream_refused_global"].as_u64() >= Some(9), "{st}");
    assert!(
        shell["stream_unauthenticated_timeout"].as_u64() >= Some(40),
        "{st}"
    );
    let log = s.topo.log("turn-server");
    assert!(
        log_lines(&log, "connection refused: over the connection limit") <= 4,
        "refusals are logged once per cause per 10 s"
    );
    Ok(())
}
