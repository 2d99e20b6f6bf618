//! turn-server offloads its bound channels to fork-agent's XDP program: once a UDP client has
//! a permission and a channel (0x4001) for a peer, ChannelData from the client and UDP from the
//! peer are relayed by the kernel without user space; turn-server reads the kernel counters
//! back into the allocation's counters; deleting the allocation (Refresh with LIFETIME 0)
//! removes the kernel entry, and stopping turn-server removes what is left.
//!
//! ```text
//!  caller ns                forker ns: fork-agent (XDP on fa0/fb0) + turn-server    callee ns
//!  10.77.1.2 (StunClient) ── 10.77.1.1:3478              relay 10.77.2.1:240xx ── 10.77.2.2:60000
//! ```
//!
//! coturn's turnutils_uclient has no option to fix its channel number and picks from RFC 5766's
//! 0x4000-0x7FFF, which the kernel does not relay, so the client here is turn-core's codec.

use std::{net::SocketAddr, time::Duration};

use crate::turn_support::*;
use anyhow::{Context, Result};
use turn_core::stun::{Attribute, Class, Method};
use xdpfork_tests::{recv_all, spawn_receiver, Host, Scenario};

const CHANNEL: u16 = 0x4001;
const PEER: &str = "10.77.2.2:60000";
const N: usize = 40;
/// turn-server's counter read-back interval in this test (2 s by default).
const COUNTERS_INTERVAL_MS: u64 = 500;

#[test]
fn bound_channel_is_relayed_in_kernel_counted_and_removed() -> Result<()> {
    let mut s = Scenario::start()?;
    let extra = format!(
        "{ALLOW_TEST_PEERS}\n[offload]\nfork_agent_socket = \"{}\"\ncounters_interval_ms = {COUNTERS_INTERVAL_MS}\n",
        s.socket.display()
    );
    // RFC 8656 channel numbers only, so everything the client binds may be offloaded.
    let tsock = spawn_turn_server(&mut s.topo, "", &extra, false, false)?;
    let peer_addr: SocketAddr = PEER.parse()?;
    let peer = s.topo.udp_socket(Host::Callee, peer_addr)?;
    let mut c = stun_client(&s.topo)?;
    let server: SocketAddr = SERVER.parse()?;

    let nonce = bind_channel(&mut c, CHANNEL, peer_addr)?;
    let st = turn_status(&tsock)?;
    let relay: SocketAddr = st["active"][0]["relay"]
        .as_str()
        .context("no relay in status")?
        .parse()?;
    wait("the channel in fork-agent's show_turn", || {
        Ok(show_turn(&s)?.len() == 1)
    })
    .with_context(|| s.topo.log("turn-server"))?;
    let entry = &show_turn(&s)?[0];
    assert_eq!(entry["channel"], CHANNEL, "{entry}");
    assert_eq!(entry["client"], c.sock.local_addr()?.to_string(), "{entry}");
    assert_eq!(entry["server"], SERVER, "{entry}");
    assert_eq!(entry["relay"], relay.to_string(), "{entry}");
    assert_eq!(entry["peer"], PEER, "{entry}");
    let st = turn_status(&tsock)?;
    assert_eq!(st["offload"]["connected"], true, "{st}");
    assert_eq!(st["offload"]["channels"], 1, "{st}");

    let to_peer0 = kernel_counter(&s, "turn_to_peer")?;
    let to_client0 = kernel_counter(&s, "turn_to_client")?;
    let before = turn_status(&tsock)?["active"][0]["traffic"].clone();
    assert_eq!(before["to_peer_packets"], 0, "{before}");

    // Client → peer through the kernel: the peer gets the bare data from the relayed address.
    let peer_rx = spawn_receiver(peer.try_clone()?, N, Duration::from_secs(3));
    let mut sent = Vec::new();
    let mut to_peer_bytes = 0;
    for i in 0..N {
        let data: Vec<u8> = (0..(80 + i)).map(|j| (i + j) as u8).collect();
        c.sock.send_to(&channel_data(CHANNEL, &data), server)?;
        to_peer_bytes += data.len() as u64;
        sent.push(data);
        std::thread::sleep(Duration::from_millis(2));
    }
    let got = peer_rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    assert_eq!(
        got, sent,
        "the peer must get every datagram, header stripped"
    );

    // Peer → client through the kernel: ChannelData from the server's address.
    let mut buf = [0u8; 2048];
    let mut from_peer_bytes = 0;
    for i in 0..N {
        let data: Vec<u8> = (0..(50 + i)).map(|j| (3 * i + j) as u8).collect();
        peer.send_to(&data, relay)?;
        from_peer_bytes += data.len() as u64;
        let (len, from) = c.sock.recv_from(&mut buf)?;
        assert_eq!(
            from, server,
            "ChannelData must come from the listen address"
        );
        assert_eq!(&buf[..len], &channel_data(CHANNEL, &data)[..]);
    }
    assert_eq!(kernel_counter(&s, "turn_to_peer")? - to_peer0, N as u64);
    assert_eq!(kernel_counter(&s, "turn_to_client")? - to_client0, N as u64);

    // turn-server's counters include the kernel traffic after the read-back interval, and all
    // of it is the kernel's share: user space relayed none of these packets.
    wait("kernel traffic in turn-server status", || {
        let a = &turn_status(&tsock)?["active"][0];
        Ok(a["kernel"]["to_peer_packets"] == N as u64
            && a["kernel"]["from_peer_packets"] == N as u64)
    })
    .with_context(|| format!("{:?}", turn_status(&tsock)))?;
    let a = turn_status(&tsock)?["active"][0].clone();
    assert_eq!(a["traffic"]["to_peer_packets"], N as u64, "{a}");
    assert_eq!(a["traffic"]["from_peer_packets"], N as u64, "{a}");
    assert_eq!(a["traffic"]["to_peer_bytes"], to_peer_bytes, "{a}");
    assert_eq!(a["traffic"]["from_peer_bytes"], from_peer_bytes, "{a}");
    assert_eq!(a["kernel"]["to_peer_bytes"], to_peer_bytes, "{a}");
    assert_eq!(a["kernel"]["from_peer_bytes"], from_peer_bytes, "{a}");
    let text = s.topo.log("turn-server");
    assert!(
        text.contains("connected to fork-agent"),
        "turn-server log:\n{text}"
    );

    // Refresh with LIFETIME 0 deletes the allocation: the kernel entry goes with it.
    let creds = Creds {
        user: USER,
        password: PASSWORD,
        nonce: &nonce,
    };
    let r = c.request(Method::REFRESH, &[Attribute::Lifetime(0)], Some(creds))?;
    assert_eq!(r.class, Class::Success, "{r:?}");
    wait("show_turn to be empty", || Ok(show_turn(&s)?.is_empty()))?;
    let to_client1 = kernel_counter(&s, "turn_to_client")?;
    peer.send_to(b"after the allocation ended", relay)?;
    assert!(
        recv_all(&c.sock, 1, Duration::from_millis(500))?.is_empty(),
        "data from the peer must no longer reach the client"
    );
    assert_eq!(kernel_counter(&s, "turn_to_client")?, to_client1);

    // A new allocation's channel is offloaded again; stopping turn-server removes it.
    let mut c2 = stun_client(&s.topo)?;
    bind_channel(&mut c2, CHANNEL, peer_addr)?;
    wait("the new channel in show_turn", || {
        Ok(show_turn(&s)?.len() == 1)
    })?;
    s.topo
        .signal("turn-server", nix::sys::signal::Signal::SIGTERM)?;
    assert!(
        show_turn(&s)?.is_empty(),
        "turn-server must remove its kernel channels when it stops"
    );
    Ok(())
}
