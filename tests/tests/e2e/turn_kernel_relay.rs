//! TURN ChannelData relayed by the XDP program, both directions, without user space: the channel
//! is installed through fork-agent's control API (what the TURN server does on ChannelBind), a
//! client in the caller namespace and a peer in the callee namespace exchange data.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use xdpfork_tests::{recv_all, spawn_receiver, Host, Scenario};

const CLIENT: &str = "10.77.1.2:50000";
const SERVER: &str = "10.77.1.1:3478";
const RELAY: &str = "10.77.2.1:24000";
const PEER: &str = "10.77.2.2:60000";
const CHANNEL: u16 = 0x4001;
const N: usize = 50;

fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut p = channel.to_be_bytes().to_vec();
    p.extend_from_slice(&(data.len() as u16).to_be_bytes());
    p.extend_from_slice(data);
    p
}

#[test]
fn channel_data_is_relayed_in_kernel_both_ways() -> Result<()> {
    let s = Scenario::start()?;
    let added = s.ctl(serde_json::json!({"v":1,"op":"turn_channel_add","channel":{
        "client": CLIENT, "server": SERVER, "number": CHANNEL, "relay": RELAY, "peer": PEER
    }}))?;
    assert!(added["to_peer_stats"].is_u64(), "{added}");

    let client = s.topo.udp_socket(Host::Caller, CLIENT.parse()?)?;
    let peer = s.topo.udp_socket(Host::Callee, PEER.parse()?)?;
    let server: SocketAddr = SERVER.parse()?;
    let relay: SocketAddr = RELAY.parse()?;

    // Client → peer: the peer gets the bare data, from the relayed address.
    let peer_rx = spawn_receiver(peer.try_clone()?, N, Duration::from_secs(3));
    let mut sent = Vec::new();
    for i in 0..N {
        let data: Vec<u8> = (0..(100 + i)).map(|j| (i + j) as u8).collect();
        client.send_to(&channel_data(CHANNEL, &data), server)?;
        sent.push(data);
        std::thread::sleep(Duration::from_millis(2));
    }
    let got = peer_rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    assert_eq!(
        got, sent,
        "peer must receive the data without the ChannelData header"
    );

    // Peer → client: the client gets ChannelData from the server's listening address.
    let mut buf = [0u8; 2048];
    client.set_read_timeout(Some(Duration::from_secs(3)))?;
    for i in 0..N {
        let data: Vec<u8> = (0..(60 + i)).map(|j| (3 * i + j) as u8).collect();
        peer.send_to(&data, relay)?;
        let (len, from) = client.recv_from(&mut buf)?;
        assert_eq!(
            from, server,
            "ChannelData must come from the server address"
        );
        assert_eq!(&buf[..len], &channel_data(CHANNEL, &data)[..]);
    }

    let k = s.counters()?["kernel"].clone();
    assert_eq!(k["turn_to_peer"], N as u64, "{k}");
    assert_eq!(k["turn_to_client"], N as u64, "{k}");
    let turn = s.ctl(serde_json::json!({"v":1,"op":"show_turn"}))?;
    assert_eq!(turn[0]["to_peer"]["packets"], N as u64, "{turn}");
    assert_eq!(turn[0]["to_client"]["packets"], N as u64, "{turn}");

    // Out-of-range channel and an unbound channel go to user space, untouched (nobody listens
    // there in this test, so nothing reaches the peer).
    let peer_rx = spawn_receiver(peer.try_clone()?, 1, Duration::from_millis(500));
    client.send_to(&channel_data(0x3fff, b"bad"), server)?;
    client.send_to(&channel_data(0x4002, b"unbound"), server)?;
    assert!(peer_rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??
        .is_empty());
    let k2 = s.counters()?["kernel"].clone();
    assert_eq!(
        k2["pass_turn_malformed"].as_u64(),
        k["pass_turn_malformed"].as_u64().map(|v| v + 1)
    );
    assert_eq!(
        k2["pass_turn_no_channel"].as_u64(),
        k["pass_turn_no_channel"].as_u64().map(|v| v + 1)
    );

    // After the channel is removed, data from the peer is no longer relayed.
    s.ctl(serde_json::json!({"v":1,"op":"turn_channel_del","client":CLIENT,"server":SERVER,"number":CHANNEL}))?;
    peer.send_to(b"after expiry", relay)?;
    assert!(recv_all(&client, 1, Duration::from_millis(500))?.is_empty());
    Ok(())
}
