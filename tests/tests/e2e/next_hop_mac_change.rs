//! The callee's MAC address changes mid-call (a replaced gateway, a VRRP failover): fork-agent
//! follows the neighbour table (one rtnetlink dump a second) and the kernel relay sends to the
//! new MAC, without the flow being touched. fork-agent runs with no `ip` on its PATH: the
//! managed neighbour entry, the neighbour dump and the interface MACs all go over rtnetlink.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Result};
use xdpfork_tests::{addrs::*, ns_run, rtp_packet, run, spawn_receiver, Host, Scenario};

const NEW_MAC: &str = "02:00:00:77:02:99";

fn send_and_receive(s: &Scenario, first_seq: u16, n: u16) -> Result<usize> {
    let tx = s.topo.udp_socket(Host::Caller, CALLER_RTP.parse()?)?;
    let rx = spawn_receiver(
        s.topo.udp_socket(Host::Callee, CALLEE_RTP.parse()?)?,
        n as usize,
        Duration::from_millis(700),
    );
    let dst: SocketAddr = A_LOCAL.parse()?;
    for i in 0..n {
        let seq = first_seq + i;
        tx.send_to(
            &rtp_packet(0, seq, 160 * u32::from(seq), 0x3ac, &[0xd5; 160]),
            dst,
        )?;
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??
        .len())
}

#[test]
fn the_kernel_relay_follows_a_next_hop_mac_change() -> Result<()> {
    let s = Scenario::start()?;
    s.assert_agent_runs_without_ip()?;
    s.add_call_flows(false)?;
    assert_eq!(send_and_receive(&s, 0, 20)?, 20, "before the change");
    // The flow asked the kernel to keep its next hop resolved (NTF_EXT_MANAGED).
    let entry = ns_run(
        &s.topo.ns(Host::Forker),
        "ip",
        &["neigh", "show", "10.77.2.2", "dev", "fb0"],
    )?;
    assert!(entry.contains("managed"), "no managed entry: {entry:?}");

    // The callee takes a new MAC and the forker learns it (as a gratuitous ARP would teach it).
    let (callee, forker) = (s.topo.ns(Host::Callee), s.topo.ns(Host::Forker));
    ns_run(&callee, "ip", &["link", "set", "cb0", "address", NEW_MAC])?;
    ns_run(
        &forker,
        "ip",
        &[
            "neigh",
            "replace",
            "10.77.2.2",
            "lladdr",
            NEW_MAC,
            "dev",
            "fb0",
        ],
    )?;

    // fork-agent copies it into NEIGHBOURS within its one-second refresh.
    let dump_path = s.topo.pin_dir.join("NEIGHBOURS");
    let dump_path = dump_path.to_string_lossy();
    let mut seen = String::new();
    for _ in 0..50 {
        // Not through `ip netns exec`, which mounts its own /sys and so hides bpffs.
        seen = run("bpftool", &["map", "dump", "pinned", &dump_path])?;
        if dump_has_mac(&seen, NEW_MAC) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !dump_has_mac(&seen, NEW_MAC) {
        bail!(
            "NEIGHBOURS never got {NEW_MAC}:\n{seen}\nlog:\n{}",
            s.topo.log("fork-agent")
        );
    }
    let got = send_and_receive(&s, 20, 20)?;
    assert_eq!(
        got,
        20,
        "after the change the callee got {got} of 20; flows {}",
        s.flows()?
    );
    let a = s.flow(A_LOCAL)?;
    assert_eq!(a["path"], "kernel", "still relayed in the kernel: {a}");
    assert_eq!(a["packets"], 40, "{a}");
    Ok(())
}

/// bpftool prints BTF-formatted values with decimal bytes: `"dmac": [2,0,0,119,2,153\n ]`.
fn dump_has_mac(dump: &str, mac: &str) -> bool {
    let bytes: Vec<String> = mac
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .map(|b| b.to_string())
        .collect();
    let compact: String = dump.split_whitespace().collect();
    compact.contains(&format!("\"dmac\":[{}]", bytes.join(",")))
}
