//! sip-agent's TCP listener under one client that opens more connections than the limits
//! allow (`[limits]`, docs/security.md "Resource limits"):
//! - from one address: connections beyond `max_connections_per_address` are closed at once,
//!   and a real call over TCP from another address (sipp) goes through meanwhile;
//! - the idle ones are closed after `first_message_timeout_secs`;
//! - from five addresses: connections beyond `max_connections` are closed at once, a new client
//!   too, until the idle ones time out, after which it is answered;
//! - refusals are counted (admin `metrics`) and logged once per interval.
#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::{
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    time::Duration,
};

use crate::limits_support::*;
use crate::sip_support::*;
use anyhow::{Context, Result};
use xdpfork_tests::Host;

const LIMITS: &str = "[limits]\nmax_connections_per_address = 8\nmax_connections = 32\nfirst_message_timeout_secs = 3\n";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[test]
fn connection_flood_is_bounded_and_a_real_call_gets_through() -> Result<()> {
    let mut t = SipTest::start_custom(
        r#"udp = ["10.77.1.1:5060"]
tcp = ["10.77.1.1:5060", "10.77.2.1:5060"]"#,
        "10.77.2.2:5060:tcp",
        LIMITS,
        &["--admin-socket", "{dir}/admin.sock"],
    )?;
    let topo = &t.s.topo;
    let attackers = [
        "10.77.1.3",
        "10.77.1.4",
        "10.77.1.5",
        "10.77.1.6",
        "10.77.1.7",
    ];
    for a in attackers {
        add_caller_address(topo, a)?;
    }
    let agent = AGENT_A.parse()?;

    // One address, 40 idle connections: 8 held, 32 closed at once.
    let flood = tcp_connect_many(topo, Host::Caller, ip(attackers[0]), agent, 40)?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count_open(&flood), 8, "per-address limit");

    // A real call over TCP from 10.77.1.2 meanwhile.
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo", "-t", "t1"])?;
    let body = start_body("7D1");
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    let run = t.caller("uac_call.xml", &keys, &["-d", "1000", "-t", "t1"])?;
    assert!(
        run.ok,
        "caller failed during the flood\n{}",
        t.diag(Some(&run))
    );
    t.wait_callee_done()?;

    // The flood's idle connections sent no message: closed after 3 s.
    wait_for("idle connections closed", Duration::from_secs(10), || {
        Ok(count_open(&flood) == 0)
    })?;
    drop(flood);

    // Five addresses, 8 each: 32 held (the global limit), 8 closed at once.
    let topo = &t.s.topo;
    let mut held = Vec::new();
    for a in attackers {
        held.extend(tcp_connect_many(topo, Host::Caller, ip(a), agent, 8)?);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count_open(&held), 32, "global limit");
    let late = tcp_connect_many(topo, Host::Caller, ip(CALLER_IP), agent, 1)?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count_open(&late),
        0,
        "a new client is refused while the global limit is full"
    );

    // Once the idle ones time out, a new client is served.
    wait_for("flood timed out", Duration::from_secs(10), || {
        Ok(count_open(&held) == 0)
    })?;
    let mut c = tcp_connect_many(topo, Host::Caller, ip(CALLER_IP), agent, 1)?
        .pop()
        .context("one connection")?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let options = "OPTIONS sip:10.77.1.1:5060 SIP/2.0\r\n\
        Via: SIP/2.0/TCP 10.77.1.2:5099;branch=z9hG4bK-limits-1\r\n\
        From: <sip:probe@10.77.1.2>;tag=l1\r\nTo: <sip:10.77.1.1>\r\n\
        Call-ID: limits-1@10.77.1.2\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\
        Content-Length: 0\r\n\r\n";
    c.write_all(options.as_bytes())?;
    let mut status = String::new();
    BufReader::new(&c).read_line(&mut status)?;
    assert!(
        status.starts_with("SIP/2.0 200"),
        "OPTIONS after the flood: {status:?}"
    );

    let metrics = t.admin_ctl(&["metrics"])?;
    let counter = |reason: &str| -> u64 {
        let key = format!(
            "xdpfork_sip_connections_closed_total{{listener=\"sip\",reason=\"{reason}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(counter("per_address_limit"), 32, "{metrics}");
    assert!(counter("global_limit") >= 9, "{metrics}");
    assert!(counter("no_request_in_time") >= 40, "{metrics}");
    let log = t.s.topo.log("sip-agent");
    let lines = log_lines(&log, "connection refused: over the connection limit");
    assert!(
        lines <= 4,
        "{lines} refusal lines for 41 refusals (one per cause per 10 s)"
    );
    Ok(())
}
