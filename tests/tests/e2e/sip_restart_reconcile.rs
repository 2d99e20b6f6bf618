//! sip-agent restarts (docs/sip-state.md):
//! - a forked call survives a SIGKILL of sip-agent: the restarted agent restores it from its
//!   journal, the caller's BYE gets 200, the callee gets the BYE, and fork-agent is left with
//!   no flow and no fork;
//! - after the grace period, reconciliation removes the flows and the fork of a call the agent
//!   does not know (installed behind its back while it was down), keeps the flows, fork and
//!   audio of the call it restored, and leaves another client's flow outside its media range
//!   alone;
//! - fork-agent's idle timeout ends a call whose media stopped: the flows are removed, sip-agent
//!   hears `flow_removed` and releases the call with a BYE carrying `Reason: ... Media timeout`
//!   on both legs.

#![allow(clippy::disallowed_methods)] // wall clock bounds the polling of real processes

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::sip_support::*;
use anyhow::{bail, Result};
use serde_json::{json, Value};
use xdpfork_tests::Host;

/// The forks fork-agent holds, by GUID, with their stream flows.
fn forks(t: &SipTest) -> Result<Vec<(String, Vec<String>)>> {
    let v = t.s.ctl(json!({"v":1,"op":"show_forks"}))?;
    Ok(v.as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|f| {
            let guid = f["spec"]["call_guid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let flows = f["streams"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|x| x[1].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (guid, flows)
        })
        .collect())
}

/// fork-agent's flows by `local`.
fn flow_locals(t: &SipTest) -> Result<Vec<String>> {
    Ok(t.s
        .flows()?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|f| f["local"].as_str().map(str::to_string))
        .collect())
}

/// Waits (bounded) until `guid` forks on four flows of the call and the journal holds it.
fn wait_forked_and_journalled(t: &SipTest, guid: &str) -> Result<Vec<String>> {
    let journal = t.dir.join("sip-state").join("calls.jsonl");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let f = forks(t)?;
        let text = std::fs::read_to_string(&journal).unwrap_or_default();
        if let Some((_, streams)) = f.iter().find(|(g, _)| g == guid) {
            if flow_locals(t)?.len() >= 4 && text.contains(guid) {
                return Ok(streams.clone());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "call never forked and journalled: forks {f:?}, journal {text}\n{}",
                t.diag(None)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A log without its ANSI colour codes (tracing colours field names and `=`).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn no_forks_left(t: &SipTest) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let f = forks(t)?;
        if f.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("forks left: {f:?}\n{}", t.diag(None));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_sip_agent_still_releases_its_call_on_bye() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let guid = "8E5A27B3C0DE11EE";
    let body = start_body(guid);
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    // The caller hangs up 8 s after its fork request: long after the restart below.
    let child = t.caller_spawn("uac_call.xml", &keys, &["-d", "8000"])?;
    wait_forked_and_journalled(&t, guid)?;
    let journal = t.dir.join("sip-state").join("calls.jsonl");
    let mode = std::fs::metadata(&journal)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "journal mode {mode:o}");

    t.kill_and_restart_sip_agent(|_| Ok(()))?;
    let log = plain(&t.s.topo.log("sip-agent"));
    assert!(
        log.contains("calls restored from the journal restored=1"),
        "restart log:\n{log}"
    );

    let run = t.caller_wait(child)?;
    // sipp's message log: blocks separated by dashed lines; the 200 to the BYE (CSeq 3) must be
    // among the received ones (sipp's exit status alone does not say which final response came).
    let bye_ok = run
        .messages
        .split("\n-----")
        .any(|m| m.contains("received") && m.contains("SIP/2.0 200") && m.contains("CSeq: 3 BYE"));
    assert!(
        run.ok && bye_ok,
        "the caller's BYE did not get its 200 from the restarted agent\n{}",
        t.diag(Some(&run))
    );
    t.wait_callee_done()?;
    let callee_log = std::fs::read_to_string(t.dir.join("callee.msg")).unwrap_or_default();
    assert!(
        received_bye(&callee_log).is_some(),
        "the callee never got the BYE\n{}",
        t.diag(Some(&run))
    );
    t.wait_no_flows()?;
    no_forks_left(&t)?;
    // The journal no longer holds the call (its end was recorded).
    let text = std::fs::read_to_string(&journal)?;
    let live = text.lines().filter(|l| l.starts_with("{\"call\"")).count();
    let ends = text.lines().filter(|l| l.starts_with("{\"end\"")).count();
    assert!(live >= 1 && ends >= 1, "journal after the BYE:\n{text}");
    Ok(())
}

/// Adds a flow through fork-agent's control API (as a lost call or another client would).
fn flow_add(t: &SipTest, local: &str, src: &str, dst: &str) -> Result<Value> {
    t.s.ctl(json!({"v":1,"op":"flow_add","flow":{"local":local,"src":src,"dst":dst}}))
}

#[test]
fn reconciliation_removes_only_the_flows_and_forks_of_unknown_calls() -> Result<()> {
    let grace = Duration::from_secs(3);
    let mut t = SipTest::start_with_config_and_args(
        &format!(
            "[state]\ndir = \"{{dir}}/sip-state\"\nreconcile_grace_secs = {}\n",
            grace.as_secs()
        ),
        &[],
    )?;
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let guid = "A11CE00000000ABC";
    let body = start_body(guid);
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    let child = t.caller_spawn("uac_call.xml", &keys, &["-d", "12000"])?;
    let streams = wait_forked_and_journalled(&t, guid)?;
    let known_flows = flow_locals(&t)?;
    assert_eq!(known_flows.len(), 4, "{known_flows:?}");

    // While sip-agent is down: a call it will not know (two flows inside its media range and a
    // fork on them) and another client's flow outside the range.
    let (lost_a, lost_b) = ("10.77.1.1:30050", "10.77.2.1:30052");
    let foreign = "10.77.1.1:31000";
    // Taken just before the new sip-agent is started, so its grace period ends after
    // `restarted + grace`.
    let spawned = std::cell::Cell::new(Instant::now());
    t.kill_and_restart_sip_agent(|t| {
        flow_add(t, lost_a, lost_b, "10.77.2.2:40050")?;
        flow_add(t, lost_b, lost_a, "10.77.1.2:40050")?;
        flow_add(t, foreign, "10.77.2.1:31002", "10.77.2.2:41000")?;
        t.s.ctl(json!({"v":1,"op":"fork_start","fork":{
            "call_guid":"LOST-CALL","call_id":"lost","from":"1","to":"2","server":"asr",
            "codec":"PCMA","ptime_ms":20,"metadata":{},
            "streams":[{"channel":"caller","flow":lost_a},{"channel":"callee","flow":lost_b}]}}))?;
        spawned.set(Instant::now());
        Ok(())
    })?;
    let restarted = spawned.get();

    // Within the grace period nothing is removed yet.
    let early = flow_locals(&t)?;
    if restarted.elapsed() < grace {
        assert!(
            early.iter().any(|l| l == lost_a),
            "removed before the grace period: {early:?}"
        );
    }

    // After it, the unknown call's flows and fork are gone.
    let deadline = Instant::now() + grace + Duration::from_secs(15);
    loop {
        let flows = flow_locals(&t)?;
        let f = forks(&t)?;
        if !flows.iter().any(|l| l == lost_a || l == lost_b)
            && !f.iter().any(|(g, _)| g == "LOST-CALL")
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "unknown call not reconciled: flows {flows:?} forks {f:?}\n{}",
                t.diag(None)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        restarted.elapsed() >= grace,
        "reconciled before the grace period ({:?})",
        restarted.elapsed()
    );
    let flows = flow_locals(&t)?;
    for l in &known_flows {
        assert!(
            flows.contains(l),
            "the restored call lost flow {l}: {flows:?}"
        );
    }
    assert!(
        flows.iter().any(|l| l == foreign),
        "another client's flow was removed: {flows:?}"
    );
    let f = forks(&t)?;
    assert!(
        f.iter().any(|(g, _)| g == guid),
        "the restored call's fork was removed: {f:?}"
    );
    let log = plain(&t.s.topo.log("sip-agent"));
    assert!(
        log.contains("reconciliation with fork-agent done forks=1 flows=2"),
        "reconciliation log:\n{log}"
    );

    // The restored call still relays (and forks) audio: RTP to its caller-side anchor is relayed
    // by the kernel to the callee, whose echo comes back through the callee-side anchor.
    let a_local = streams
        .first()
        .cloned()
        .unwrap_or_else(|| "10.77.1.1:30000".into());
    let packets =
        |local: &str| -> Result<u64> { Ok(t.s.flow(local)?["packets"].as_u64().unwrap_or(0)) };
    let before = packets(&a_local)?;
    let sock =
        t.s.topo
            .udp_socket(Host::Caller, "10.77.1.2:45000".parse()?)?;
    let target: std::net::SocketAddr = a_local.parse()?;
    for seq in 0..50u16 {
        let pkt = xdpfork_tests::rtp_packet(8, seq, u32::from(seq) * 160, 0x5eed, &[0xd5; 160]);
        sock.send_to(&pkt, target)?;
        std::thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while packets(&a_local)? < before + 50 {
        if Instant::now() > deadline {
            bail!(
                "audio of the restored call not relayed after reconciliation: {} -> {}\n{}",
                before,
                packets(&a_local)?,
                t.diag(None)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let run = t.caller_wait(child)?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    t.wait_callee_done()?;
    // The restored call's BYE removed its flows; the foreign flow is still there.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let flows = flow_locals(&t)?;
        if flows == vec![foreign.to_string()] {
            break;
        }
        if Instant::now() > deadline {
            bail!("flows after the BYE: {flows:?}\n{}", t.diag(Some(&run)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    no_forks_left(&t)?;
    Ok(())
}

#[test]
fn fork_agent_idle_timeout_releases_a_call_whose_media_stopped() -> Result<()> {
    let mut t = SipTest::start()?;
    // fork-agent with a 2 s idle timeout: rewrite its [dataplane] and restart it (pinned state
    // is adopted; nothing is installed yet).
    let cfg = std::fs::read_to_string(&t.s.config)?;
    let cfg = cfg.replacen(
        "fork_interface = \"xfork0\"\n",
        "fork_interface = \"xfork0\"\nflow_idle_timeout_secs = 2\n",
        1,
    );
    std::fs::write(&t.s.config, cfg)?;
    t.s.topo
        .signal("fork-agent", nix::sys::signal::Signal::SIGTERM)?;
    t.s.start_agent()?;

    t.callee("uas_released_by_agent.xml", &PCMA, &["-rtp_echo"])?;
    let body = start_body("DEADA0D10");
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    // The caller plays about 6 s of audio, then sends nothing and waits for a BYE.
    let run = t.caller("uac_released_by_agent.xml", &keys, &[])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    const REASON: &str = "Reason: Q.850;cause=102;text=\"Media timeout\"";
    let caller_bye = received_bye(&run.messages).unwrap_or_default();
    assert!(
        caller_bye.contains(REASON),
        "caller's BYE: {caller_bye}\n{}",
        t.diag(Some(&run))
    );
    t.wait_callee_done()?;
    let callee_log = std::fs::read_to_string(t.dir.join("callee.msg")).unwrap_or_default();
    let callee_bye = received_bye(&callee_log).unwrap_or_default();
    assert!(callee_bye.contains(REASON), "callee's BYE: {callee_bye}");
    let fa = t.s.topo.log("fork-agent");
    assert!(
        fa.contains("flow removed after idle timeout"),
        "fork-agent log:\n{fa}"
    );
    t.wait_no_flows()?;
    no_forks_left(&t)?;
    Ok(())
}
