//! A flow whose destination is behind a gateway: fork-agent's route lookup (RTM_GETROUTE over
//! rtnetlink, no `ip`) names the gateway as the next hop, keeps the gateway resolved with a
//! managed neighbour entry, and the kernel relays to the gateway's MAC with the destination's
//! address left in the packet.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use xdpfork_tests::{addrs::*, ns_run, send_rtp_in_background, spawn_receiver, Host, Scenario};

/// Behind the callee, which acts as the gateway (10.77.2.2) for this prefix.
const REMOTE_RTP: &str = "10.99.0.5:41000";
const N: u16 = 20;

#[test]
fn the_next_hop_of_a_routed_destination_is_its_gateway() -> Result<()> {
    let s = Scenario::start()?;
    s.assert_agent_runs_without_ip()?;
    let (forker, callee) = (s.topo.ns(Host::Forker), s.topo.ns(Host::Callee));
    ns_run(
        &forker,
        "ip",
        &[
            "route",
            "add",
            "10.99.0.0/24",
            "via",
            "10.77.2.2",
            "dev",
            "fb0",
        ],
    )?;
    ns_run(
        &callee,
        "ip",
        &["addr", "add", "10.99.0.5/32", "dev", "cb0"],
    )?;
    s.ctl(serde_json::json!({"v":1,"op":"flow_add",
        "flow":{"local":A_LOCAL,"src":B_LOCAL,"dst":REMOTE_RTP}}))?;

    // The gateway, not the destination, is the neighbour fork-agent keeps resolved.
    let gateway = ns_run(&forker, "ip", &["neigh", "show", "10.77.2.2", "dev", "fb0"])?;
    assert!(gateway.contains("managed"), "gateway entry: {gateway:?}");
    let remote = ns_run(&forker, "ip", &["neigh", "show", "10.99.0.5"])?;
    assert!(
        remote.trim().is_empty(),
        "a neighbour entry for the routed destination: {remote:?}"
    );

    let rx = spawn_receiver(
        s.topo.udp_socket(Host::Callee, REMOTE_RTP.parse()?)?,
        N as usize,
        Duration::from_millis(700),
    );
    let tx = s.topo.udp_socket(Host::Caller, CALLER_RTP.parse()?)?;
    let dst: SocketAddr = A_LOCAL.parse()?;
    let join = |h: std::thread::JoinHandle<Result<Vec<Vec<u8>>>>| {
        h.join()
            .map_err(|_| anyhow::anyhow!("sender or receiver panicked"))?
    };
    let sent = join(send_rtp_in_background(
        tx,
        dst,
        N,
        0,
        0x9a7e,
        Duration::from_millis(2),
    ))?;
    let got = join(rx)?;
    assert_eq!(
        got,
        sent,
        "the destination behind the gateway got {} of {N}; flows {}; log:\n{}",
        got.len(),
        s.flows()?,
        s.topo.log("fork-agent")
    );
    let a = s.flow(A_LOCAL)?;
    assert_eq!(a["path"], "kernel", "relayed in the kernel: {a}");
    assert_eq!(a["packets"], N as u64, "{a}");
    Ok(())
}
