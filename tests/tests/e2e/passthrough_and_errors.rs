//! Traffic the relay does not own reaches the host stack untouched, and a bad start leaves the
//! host as it was.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use xdpfork_tests::{
    addrs::*, bin, empty_dir, ns_run, recv_all, rtp_packet, spawn_receiver, Host, Scenario,
    Topology,
};

#[test]
fn unknown_traffic_passes_to_the_host_stack() -> Result<()> {
    let s = Scenario::start()?;
    s.add_call_flows(false)?;
    let before = s.counters()?["kernel"].clone();

    // ICMP to the forker itself.
    ns_run(
        &s.topo.ns(Host::Caller),
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "2", "10.77.1.1"],
    )?;

    // UDP to a port without a flow: a local socket on the forker gets it (not RTP either).
    let local = s.topo.udp_socket(Host::Forker, "10.77.1.1:7777".parse()?)?;
    let tx = s.topo.udp_socket(Host::Caller, CALLER_RTP.parse()?)?;
    for i in 0..5u8 {
        tx.send_to(&[b'h', b'i', i], "10.77.1.1:7777".parse::<SocketAddr>()?)?;
    }
    let got = recv_all(&local, 5, Duration::from_secs(2))?;
    assert_eq!(
        got.len(),
        5,
        "datagrams to a non-flow port must reach the stack"
    );
    assert_eq!(got[0], b"hi\0");

    let after = s.counters()?["kernel"].clone();
    let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    assert!(delta("pass_no_flow") >= 5, "before {before} after {after}");
    assert!(
        delta("pass_not_udp") >= 3,
        "ICMP counted as not UDP: before {before} after {after}"
    );
    assert_eq!(delta("relayed") + delta("relayed_forked"), 0);

    // Non-RTP on a flow port is still relayed (the flow owns the port) but counted as an error
    // and never forked.
    let rx = spawn_receiver(
        s.topo.udp_socket(Host::Callee, CALLEE_RTP.parse()?)?,
        3,
        Duration::from_secs(2),
    );
    for _ in 0..3 {
        tx.send_to(b"not rtp at all", A_LOCAL.parse::<SocketAddr>()?)?;
    }
    let got = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    assert_eq!(got.len(), 3);
    let a = s.flow(A_LOCAL)?;
    assert_eq!(a["errors"], 3, "{a}");
    assert_eq!(a["forked"], 0, "{a}");
    // And a valid RTP packet after it still goes through.
    let rx = spawn_receiver(
        s.topo.udp_socket(Host::Callee, CALLEE_RTP.parse()?)?,
        1,
        Duration::from_secs(2),
    );
    tx.send_to(
        &rtp_packet(0, 1, 160, 7, &[0xff; 160]),
        A_LOCAL.parse::<SocketAddr>()?,
    )?;
    assert_eq!(
        rx.join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??
            .len(),
        1
    );
    Ok(())
}

#[test]
fn missing_interface_fails_clearly_and_leaves_nothing_behind() -> Result<()> {
    let mut t = Topology::new()?;
    let config = t.dir.join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "[dataplane]\npin_dir = \"{}\"\ninterfaces = [\"fa0\", \"nope0\"]\n[control]\nsocket = \"{}\"\nstate_dir = \"{}\"\n",
            t.pin_dir.display(),
            t.dir.join("sock").display(),
            t.dir.join("state").display()
        ),
    )?;
    let agent = bin("fork-agent")?;
    // The rollback deletes the fork veth over rtnetlink: no `ip` on PATH.
    let empty = empty_dir(&t.dir.join("empty-path"))?;
    t.spawn_env(
        "fork-agent",
        Host::Forker,
        &agent,
        &["run", "--config", &config.to_string_lossy()],
        &[("PATH", &empty.to_string_lossy())],
    )?;
    let status = t.wait_exit("fork-agent", Duration::from_secs(20))?;
    assert!(!status.success(), "fork-agent must fail");
    let log = t.log("fork-agent");
    assert!(
        log.contains("nope0"),
        "the error must name the missing interface: {log}"
    );
    assert!(
        !t.pin_dir.exists(),
        "pins left behind in {}",
        t.pin_dir.display()
    );
    let links = ns_run(&t.ns(Host::Forker), "ip", &["-d", "link", "show"])?;
    assert!(
        !links.contains("xdp"),
        "an XDP program is still attached:\n{links}"
    );
    assert!(
        !links.contains("xfork0"),
        "the fork veth was left behind:\n{links}"
    );
    Ok(())
}

#[test]
fn invalid_config_is_rejected_naming_the_field() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("xdpfork-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("bad.toml");
    std::fs::write(&config, "[dataplane]\ninterfaces = []\n")?;
    let out = std::process::Command::new(bin("fork-agent")?)
        .args(["check-config", "--config", &config.to_string_lossy()])
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dataplane.interfaces"), "{err}");
    Ok(())
}

/// IP fragments are never rewritten in the kernel: they go to the stack, which reassembles them,
/// and fork-agent's fallback socket relays the datagram. `show flows` says so.
#[test]
fn fragments_are_passed_to_the_stack_and_relayed_in_user_space() -> Result<()> {
    let s = Scenario::start()?;
    s.add_call_flows(false)?;
    let tx = s.topo.udp_socket(Host::Caller, CALLER_RTP.parse()?)?;
    let rx = spawn_receiver(
        s.topo.udp_socket(Host::Callee, CALLEE_RTP.parse()?)?,
        2,
        Duration::from_secs(2),
    );
    let big = rtp_packet(
        0,
        7,
        1120,
        9,
        &(0..3000u32).map(|i| i as u8).collect::<Vec<u8>>(),
    );
    tx.send_to(&big, A_LOCAL.parse::<SocketAddr>()?)?;
    std::thread::sleep(Duration::from_millis(200));
    let small = rtp_packet(0, 8, 1280, 9, &[0x55; 160]);
    tx.send_to(&small, A_LOCAL.parse::<SocketAddr>()?)?;
    let got = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let lens: Vec<usize> = got.iter().map(Vec::len).collect();
    assert!(
        got == vec![big.clone(), small.clone()],
        "both datagrams must reach the callee intact, in order: got lengths {lens:?}, sent {} and {}; counters {}",
        big.len(),
        small.len(),
        s.counters()?
    );

    let k = s.counters()?;
    assert!(k["kernel"]["pass_fragment"].as_u64() >= Some(3), "{k}");
    assert_eq!(k["user"]["userspace_relayed"], 1, "{k}");
    let a = s.flow(A_LOCAL)?;
    assert_eq!(a["userspace_packets"], 1, "{a}");
    assert_eq!(a["packets"], 1, "{a}");
    assert_eq!(a["path"], "kernel+user-space", "{a}");
    Ok(())
}
