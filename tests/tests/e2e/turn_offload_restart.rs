//! turn-server's kernel offload survives fork-agent restarts: when fork-agent is killed, the
//! pinned maps keep relaying the bound channel; turn-server notices the lost connection, reports
//! it in `turn-server status`, reconnects with backoff once fork-agent is back (it re-adopts the
//! pinned channel), keeps reading its counters, and can still remove it (Refresh LIFETIME 0).

use std::{net::SocketAddr, time::Duration};

use crate::turn_support::*;
use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use turn_core::stun::{Attribute, Class, Method};
use xdpfork_tests::{recv_all, Host, Scenario};

const CHANNEL: u16 = 0x4001;
const PEER: &str = "10.77.2.2:60000";
/// turn-server's counter read-back interval in this test (2 s by default).
const COUNTERS_INTERVAL_MS: u64 = 500;

#[test]
fn offload_reconnects_after_fork_agent_restart() -> Result<()> {
    let mut s = Scenario::start()?;
    let extra = format!(
        "{ALLOW_TEST_PEERS}\n[offload]\nfork_agent_socket = \"{}\"\ncounters_interval_ms = {COUNTERS_INTERVAL_MS}\n",
        s.socket.display()
    );
    let tsock = spawn_turn_server(&mut s.topo, "", &extra, false, false)?;
    let peer_addr: SocketAddr = PEER.parse()?;
    let peer = s.topo.udp_socket(Host::Callee, peer_addr)?;
    let mut c = stun_client(&s.topo)?;
    let server: SocketAddr = SERVER.parse()?;
    let nonce = bind_channel(&mut c, CHANNEL, peer_addr)?;
    let relay: SocketAddr = turn_status(&tsock)?["active"][0]["relay"]
        .as_str()
        .context("no relay in status")?
        .parse()?;
    wait("the channel in show_turn", || Ok(show_turn(&s)?.len() == 1))?;

    // Peer → client datagrams, each answered through the kernel.
    let exchange = |n: usize, tag: u8| -> Result<()> {
        let mut buf = [0u8; 2048];
        for i in 0..n {
            let data = vec![tag.wrapping_add(i as u8); 60 + i];
            peer.send_to(&data, relay)?;
            let (len, from) = c.sock.recv_from(&mut buf)?;
            assert_eq!(from, server);
            assert_eq!(&buf[..len], &channel_data(CHANNEL, &data)[..]);
        }
        Ok(())
    };
    exchange(10, 1)?;
    wait("10 kernel packets in status", || {
        Ok(turn_status(&tsock)?["active"][0]["kernel"]["from_peer_packets"] == 10)
    })?;

    // fork-agent dies: the pinned maps keep relaying, turn-server sees the connection go.
    s.topo.signal("fork-agent", Signal::SIGKILL)?;
    exchange(5, 2)?;
    wait("turn-server to notice fork-agent is gone", || {
        Ok(turn_status(&tsock)?["offload"]["connected"] == false)
    })
    .with_context(|| s.topo.log("turn-server"))?;
    let log = s.topo.log("turn-server");
    assert!(
        log.contains("lost the connection to fork-agent")
            || log.contains("cannot reach fork-agent"),
        "the failure must be logged at warn:\n{log}"
    );

    // fork-agent is back (re-adopting the pinned channel): turn-server reconnects, keeps the
    // channel (no duplicate add) and counts what the kernel relayed meanwhile.
    s.start_agent()?;
    wait("turn-server to reconnect", || {
        Ok(turn_status(&tsock)?["offload"]["connected"] == true)
    })
    .with_context(|| s.topo.log("turn-server"))?;
    assert_eq!(show_turn(&s)?.len(), 1, "{:?}", show_turn(&s)?);
    exchange(5, 3)?;
    wait("all 20 kernel packets in status", || {
        Ok(turn_status(&tsock)?["active"][0]["kernel"]["from_peer_packets"] == 20)
    })
    .with_context(|| format!("{:?}", turn_status(&tsock)))?;
    let st = turn_status(&tsock)?;
    assert_eq!(st["active"][0]["traffic"]["from_peer_packets"], 20, "{st}");

    // Removal still works over the new connection.
    let creds = Creds {
        user: USER,
        password: PASSWORD,
        nonce: &nonce,
    };
    let r = c.request(Method::REFRESH, &[Attribute::Lifetime(0)], Some(creds))?;
    assert_eq!(r.class, Class::Success, "{r:?}");
    wait("show_turn to be empty", || Ok(show_turn(&s)?.is_empty()))?;
    peer.send_to(b"after the allocation ended", relay)?;
    assert!(recv_all(&c.sock, 1, Duration::from_millis(500))?.is_empty());
    Ok(())
}
