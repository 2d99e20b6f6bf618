//! Two media nodes (fork-agent + ng-agent each, own namespaces) behind one Kamailio whose
//! rtpengine module lists both ng sockets in one set (ng_support::cluster):
//! - calls spread over both nodes;
//! - one node is lost mid-call (both daemons SIGKILLed, as a host loss would): its
//!   kernel-relayed calls keep flowing, counted at the callee; those calls still end cleanly;
//! - new calls all go to the surviving node.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use xdpfork_tests::{send_rtp_in_background, Host};

use crate::ng_support::cluster::{NgCluster, Node};
use crate::ng_support::{wait_log, PROXY};
use crate::sip_support::{CallerRun, PCMA};

/// Packets sent to each of the lost node's calls after the loss.
const AFTER_LOSS: u16 = 100;
/// Their SSRC, so the callee's capture counts only them (sipp's own audio flows too).
const SSRC: u32 = 0x5eed_0001;
const CALLEE_MEDIA: &str = "10.77.2.2:40000";

#[test]
fn calls_spread_over_two_nodes_and_survive_losing_one() -> Result<()> {
    let mut c = NgCluster::start()?;

    // 1. Eight short calls: Kamailio hashes each Call-ID onto a node; both serve some. Fixed
    // Call-IDs make the spread the same on every run.
    let run = calls(&mut c, "spread", 8, 1000)?;
    assert!(run.ok, "spread calls failed\n{}", c.diag());
    let served = [
        c.managed_sessions(&c.nodes[0])?,
        c.managed_sessions(&c.nodes[1])?,
    ];
    assert!(
        served.iter().all(|n| *n > 0) && served.iter().sum::<i64>() == 8,
        "calls per node {served:?}\n{}",
        c.diag()
    );
    c.wait_no_flows()?;

    // 2. Four long calls; the node holding most of them is lost once all are relayed.
    c.t.callee("uas_proxy_answer.xml", &PCMA, &["-rtp_echo", "-m", "4"])?;
    let args = call_args("long", 4, 15_000);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let long =
        c.t.caller_spawn_to(PROXY, "uac_proxy_call.xml", &call_keys(), &args)?;
    let held = wait_all_relayed(&c, 4)?;
    let (lost, kept) = if held[0] >= held[1] { (0, 1) } else { (1, 0) };
    let locals = toward_callee(&c.nodes[lost])?;
    assert_eq!(locals.len(), held[lost], "{}", c.diag());
    let before_loss = c.managed_sessions(&c.nodes[kept])?;

    let pcap = c.t.dir.join("after-loss.pcap");
    let pcap_s = pcap.to_string_lossy().into_owned();
    let want = (usize::from(AFTER_LOSS) * locals.len()).to_string();
    // Only the lost node's relayed packets carrying the test's SSRC (RTP header bytes 8-11,
    // after the 8-byte UDP header).
    let filter = format!(
        "udp and src host {} and dst port 40000 and udp[16:4] = {SSRC:#x}",
        c.nodes[lost].callee_ip
    );
    c.t.s.topo.spawn(
        "tcpdump",
        Host::Callee,
        std::path::Path::new("/usr/bin/tcpdump"),
        &["-i", "br0", "-n", "-U", "-c", &want, "-w", &pcap_s, &filter],
    )?;
    wait_log(&mut c.t, "tcpdump", "listening on")?;

    let node = &c.nodes[lost];
    let (ng_agent, fork_agent) = (node.ng_agent, node.fork_agent);
    c.t.s.topo.signal(ng_agent, Signal::SIGKILL)?;
    c.t.s.topo.signal(fork_agent, Signal::SIGKILL)?;

    // The lost node's kernel still relays every packet of its calls to the callee.
    let mut senders = Vec::new();
    for local in &locals {
        let tx =
            c.t.s
                .topo
                .udp_socket(Host::Caller, "10.77.1.2:0".parse()?)?;
        senders.push(send_rtp_in_background(
            tx,
            local.parse()?,
            AFTER_LOSS,
            8,
            SSRC,
            Duration::from_millis(5),
        ));
    }
    for s in senders {
        s.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
    }
    c.t.s
        .topo
        .wait_exit("tcpdump", Duration::from_secs(15))
        .with_context(|| {
            format!(
                "the callee did not get all {want} packets the lost node's kernel relays\n{}",
                c.diag()
            )
        })?;

    // Its calls still end: the BYE's delete finds no engine, the proxy relays the BYE anyway.
    let run = c.t.caller_wait(long)?;
    assert!(
        run.ok,
        "calls on the lost node did not end cleanly\n{}",
        c.diag()
    );
    c.t.wait_callee_done()?;
    c.t.s.topo.wait_exit("callee", Duration::from_secs(5))?;

    // 3. New calls: all on the surviving node.
    let run = calls(&mut c, "after", 4, 1000)?;
    assert!(run.ok, "calls after the loss failed\n{}", c.diag());
    let after_loss = c.managed_sessions(&c.nodes[kept])?;
    assert_eq!(after_loss - before_loss, 4, "{}", c.diag());
    Ok(())
}

fn call_keys() -> Vec<(&'static str, &'static str)> {
    let mut keys = PCMA.to_vec();
    keys.push(("fork", "no"));
    keys
}

/// sipp caller arguments for `n` concurrent calls of `hold_ms`, Call-IDs `<prefix>-<n>@<ip>`.
fn call_args(prefix: &str, n: u32, hold_ms: u32) -> Vec<String> {
    let n = n.to_string();
    [
        "-m",
        &n,
        "-l",
        &n,
        "-d",
        &hold_ms.to_string(),
        "-cid_str",
        &format!("{prefix}-%u@%s"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `n` calls through Kamailio with a callee for exactly those; the caller's run, after the
/// callee ended.
fn calls(c: &mut NgCluster, prefix: &str, n: u32, hold_ms: u32) -> Result<CallerRun> {
    let m = n.to_string();
    c.t.callee("uas_proxy_answer.xml", &PCMA, &["-rtp_echo", "-m", &m])?;
    let args = call_args(prefix, n, hold_ms);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let caller =
        c.t.caller_spawn_to(PROXY, "uac_proxy_call.xml", &call_keys(), &args)?;
    let run = c.t.caller_wait(caller)?;
    c.t.wait_callee_done()?;
    c.t.s.topo.wait_exit("callee", Duration::from_secs(5))?;
    Ok(run)
}

/// Waits (bounded) until `n` calls are relayed (both directions' RTP flows installed) over the
/// two nodes; how many each holds.
fn wait_all_relayed(c: &NgCluster, n: usize) -> Result<[usize; 2]> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = [
            toward_callee(&c.nodes[0])?.len(),
            toward_callee(&c.nodes[1])?.len(),
        ];
        if held[0] + held[1] == n {
            return Ok(held);
        }
        if Instant::now() > deadline {
            bail!(
                "{held:?} calls relayed after 20 s, {n} wanted\n{}",
                c.diag()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The caller-side addresses of `node`'s RTP flows toward the callee (one per call).
fn toward_callee(node: &Node) -> Result<Vec<String>> {
    Ok(node
        .flows()?
        .iter()
        .filter(|f| f["dst"] == CALLEE_MEDIA)
        .filter_map(|f| f["local"].as_str().map(str::to_owned))
        .collect())
}
