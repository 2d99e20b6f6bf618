//! The operator scripts of scripts/ (docs/operations.md "Operator scripts"): each parses
//! (`bash -n`), answers `--help`, refuses a bad argument with a message, and does its job once
//! for real in the test topology: `xdpfork-maps` dumps a running agent's pinned flows,
//! `xdpfork-capture-fork` captures a forked call's WebSocket traffic to a pcap file, and
//! `xdpfork-try-fork` starts a fork in an established call through sip-agent.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::sip_support::*;
use anyhow::{bail, Context, Result};
use xdpfork_tests::{addrs::*, Host, Scenario, Topology};

const SCRIPTS: [&str; 3] = ["xdpfork-maps", "xdpfork-capture-fork", "xdpfork-try-fork"];

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name)
}

/// Runs `cmd` bounded by `timeout` (coreutils), in the forker namespace when `topo` is given.
fn run(
    topo: Option<(&Topology, Host)>,
    name: &str,
    args: &[&str],
    limit_secs: u32,
) -> Result<Output> {
    let mut cmd = match topo {
        Some((t, h)) => t.command(h, "timeout")?,
        None => Command::new("timeout"),
    };
    cmd.arg(limit_secs.to_string()).arg(script(name)).args(args);
    cmd.output().with_context(|| format!("running {name}"))
}

fn text(o: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn every_script_parses_helps_and_refuses_bad_arguments() -> Result<()> {
    for name in SCRIPTS {
        let syntax = Command::new("bash").arg("-n").arg(script(name)).output()?;
        assert!(syntax.status.success(), "bash -n {name}: {}", text(&syntax));
        let help = run(None, name, &["--help"], 10)?;
        assert!(
            help.status.success() && String::from_utf8_lossy(&help.stdout).starts_with("Usage: "),
            "{name} --help: {}",
            text(&help)
        );
        let bad = run(None, name, &["--no-such-option"], 10)?;
        assert!(
            !bad.status.success()
                && String::from_utf8_lossy(&bad.stderr)
                    .contains(&format!("{name}: unknown argument `--no-such-option'")),
            "{name} with a bad argument: {}",
            text(&bad)
        );
    }
    Ok(())
}

#[test]
fn maps_and_capture_show_a_forked_call() -> Result<()> {
    let s = Scenario::start()?;
    s.add_call_flows(false)?;
    s.start_fork("guid-scripts", A_LOCAL, B_LOCAL)?;

    // xdpfork-maps, the pin directory read from the agent's config (host namespace: bpffs). The
    // call has four flows: RTP and RTCP both ways.
    let cfg = s.config.to_string_lossy().into_owned();
    let maps = run(None, "xdpfork-maps", &["--config", &cfg], 30)?;
    let out = String::from_utf8_lossy(&maps.stdout);
    assert!(maps.status.success(), "xdpfork-maps: {}", text(&maps));
    for want in [
        "FLOWS: ",
        "link_fa0: ",
        "link_fb0: ",
        "== FLOWS (4 entries)",
    ] {
        assert!(out.contains(want), "xdpfork-maps lacks {want:?}: {out}");
    }
    // BTF field names, not hex bytes.
    assert!(out.contains("\"key\": {"), "no BTF-formatted dump: {out}");
    let stats = run(
        None,
        "xdpfork-maps",
        &["--config", &cfg, "--map", "NOPE"],
        30,
    )?;
    assert!(
        !stats.status.success() && String::from_utf8_lossy(&stats.stderr).contains("no map NOPE"),
        "{}",
        text(&stats)
    );

    // xdpfork-capture-fork in the forker namespace while the call is forked: the speech server
    // comes from the config's [[speech_server]] url.
    let audio = s.play_caller_audio(400, 0, 0x5c21, Duration::from_millis(5))?;
    let pcap = s.topo.dir.join("fork.pcap");
    let pcap_s = pcap.to_string_lossy().into_owned();
    let cap = run(
        Some((&s.topo, Host::Forker)),
        "xdpfork-capture-fork",
        &[
            "--config",
            &cfg,
            "-w",
            &pcap_s,
            "--count",
            "20",
            "--duration",
            "10",
        ],
        30,
    )?;
    assert!(cap.status.success(), "xdpfork-capture-fork: {}", text(&cap));
    assert!(
        String::from_utf8_lossy(&cap.stdout).contains(&format!("20 packets in {pcap_s}")),
        "{}",
        text(&cap)
    );
    let read = Command::new("tcpdump")
        .args(["-r", &pcap_s, "-nn"])
        .output()?;
    let packets = String::from_utf8_lossy(&read.stdout);
    assert!(
        packets.lines().count() == 20 && packets.lines().all(|l| l.contains("10.77.3.2.9000")),
        "capture holds other traffic: {packets}"
    );
    assert!(
        packets.contains("> 10.77.3.2.9000"),
        "no packet to the speech server: {packets}"
    );
    let (sent, got) = audio.finish()?;
    assert_eq!(
        got.len(),
        sent.len(),
        "relay lost packets during the capture"
    );
    Ok(())
}

/// The caller leg's Call-ID of the one call in sip-agent's journal.
fn journal_call_id(journal: &Path) -> Option<String> {
    let text = std::fs::read_to_string(journal).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        v["call"]["a"]["call_id"].as_str().map(str::to_owned)
    })
}

#[test]
fn try_fork_starts_a_fork_in_an_established_call() -> Result<()> {
    let mut t = SipTest::start()?;
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let mut caller = t.caller_spawn("uac_until_message.xml", &PCMA, &[])?;
    let result = (|| -> Result<()> {
        let journal = t.dir.join("sip-state/calls.jsonl");
        let deadline = Instant::now() + Duration::from_secs(15);
        let call_id = loop {
            let flows = t.s.flows()?.as_array().map_or(0, Vec::len);
            if let (Some(id), 4) = (journal_call_id(&journal), flows) {
                break id;
            }
            if Instant::now() > deadline {
                bail!("call not up (flows {flows})\n{}", t.diag(None));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let journal_s = journal.to_string_lossy().into_owned();
        let try_fork = |call_id: &str, guid: &str| {
            let args = [
                "--call-id",
                call_id,
                "--guid",
                guid,
                "--journal",
                &journal_s,
                "--sip-agent",
                AGENT_A,
                "--url",
                SPEECH_URL,
            ];
            run(
                Some((&t.s.topo, Host::Caller)),
                "xdpfork-try-fork",
                &args,
                30,
            )
        };

        // A Call-ID sip-agent does not have: a clear refusal before anything is sent.
        let none = try_fork("nobody@nowhere", "0BAD")?;
        assert!(
            !none.status.success()
                && String::from_utf8_lossy(&none.stderr).contains("no established call"),
            "{}",
            text(&none)
        );

        // The real one, from the controller's (the caller's) address.
        let guid = "5C21A7F0D00D";
        let ok = try_fork(&call_id, guid)?;
        assert!(
            ok.status.success(),
            "xdpfork-try-fork: {}\n{}",
            text(&ok),
            t.diag(None)
        );
        assert!(String::from_utf8_lossy(&ok.stdout).contains("200 OK"));
        t.s.wait_fork_state(guid, "active")
            .with_context(|| t.diag(None))?;
        Ok(())
    })();
    let _ = caller.kill();
    let _ = caller.wait();
    result
}
