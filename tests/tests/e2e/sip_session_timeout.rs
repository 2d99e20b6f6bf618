//! sip-agent releases a call on its own: with `[calls] max_duration_secs = 3` a forked call whose
//! ends never hang up gets a BYE on both legs after 3 s, each with an RFC 3326 Reason header
//! ("Maximum call duration"); afterwards fork-agent has no flows and no fork, the speech server
//! saw both streams stopped with `call_end`, and the admin socket's call counts are back to zero.
//! (The RFC 4028 session-expiry release takes the same path in sip-agent; its 90 s minimum
//! interval is too long for an end-to-end run, so the core's unit tests cover it with a stepped
//! clock.)

#![allow(clippy::disallowed_methods)] // wall clock bounds the polling of real processes

use std::time::{Duration, Instant};

use crate::sip_support::*;
use anyhow::{bail, Context, Result};
use xdpfork_tests::{bin, Host, Scenario};

/// The configured maximum call duration, in seconds.
const MAX_SECS: u64 = 3;

/// What the BYEs must carry.
const REASON: &str = "Reason: Q.850;cause=102;text=\"Maximum call duration\"";

/// The standard sip_support setup (same config as `SipTest::start`) plus a `[calls]` section and
/// an admin socket, which `SipTest`'s constructors do not offer together.
fn start(extra: &str) -> Result<SipTest> {
    let mut s = Scenario::start()?;
    let dir = s.topo.dir.clone();
    let cfg = dir.join("sip-agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[sip]
udp = ["10.77.1.1:5060", "10.77.2.1:5060"]

[media]
ip = "10.77.1.1"
ports = "30000-30099"

[fork_agent]
socket = "{sock}"
speech_server = "asr"

[[route]]
prefix = "2"
next_hop = "10.77.2.2:5060:udp"
bind_sip = "10.77.2.1"
bind_media = "10.77.2.1"

{extra}
"#,
            sock = s.socket.display(),
        ),
    )?;
    let agent = bin("sip-agent")?;
    let cfg_s = cfg.to_string_lossy().into_owned();
    let admin = dir.join("admin.sock").to_string_lossy().into_owned();
    s.topo.spawn_env(
        "sip-agent",
        Host::Forker,
        &agent,
        &["run", "--config", &cfg_s, "--admin-socket", &admin],
        &[("RUST_LOG", "sip_agent=debug")],
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.topo.log("sip-agent").contains("sip-agent running") {
        if Instant::now() > deadline || !s.topo.is_running("sip-agent") {
            bail!("sip-agent did not start:\n{}", s.topo.log("sip-agent"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(SipTest { s, dir })
}

/// `sip-agent ctl show calls` as JSON.
fn calls(t: &SipTest) -> Result<serde_json::Value> {
    let sock = t.dir.join("admin.sock");
    let out = std::process::Command::new(bin("sip-agent")?)
        .args(["ctl", "--socket"])
        .arg(&sock)
        .args(["show", "calls"])
        .output()
        .context("running sip-agent ctl")?;
    if !out.status.success() {
        bail!("ctl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The BYE sipp received in a message log, from its request line to the end of its headers.
fn received_bye(log: &str) -> Option<&str> {
    let at = log.find("BYE sip:")?;
    let rest = &log[at..];
    Some(rest.split("\n\n").next().unwrap_or(rest))
}

#[test]
fn max_call_duration_releases_a_forked_call() -> Result<()> {
    let mut t = start(&format!("[calls]\nmax_duration_secs = {MAX_SECS}"))?;
    assert_eq!(calls(&t)?["aggregate"], 0);
    t.callee("uas_released_by_agent.xml", &PCMA, &["-rtp_echo"])?;
    let body = start_body("5E55");
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", &body));
    let began = Instant::now();
    let run = t.caller("uac_released_by_agent.xml", &keys, &[])?;
    let took = began.elapsed();
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    assert!(
        run.statuses().iter().any(|s| s.contains("\"STARTED\"")),
        "the fork never started\n{}",
        t.diag(Some(&run))
    );
    // Released by the limit, not earlier; well before sipp's own 40 s timeout.
    assert!(
        took >= Duration::from_secs(MAX_SECS) && took < Duration::from_secs(MAX_SECS + 10),
        "call lasted {took:?}\n{}",
        t.diag(Some(&run))
    );
    let caller_bye = received_bye(&run.messages).unwrap_or_default();
    assert!(caller_bye.contains(REASON), "caller's BYE: {caller_bye}");
    t.wait_callee_done()?;
    let callee_log = std::fs::read_to_string(t.dir.join("callee.msg")).unwrap_or_default();
    let callee_bye = received_bye(&callee_log).unwrap_or_default();
    assert!(
        callee_bye.contains(REASON),
        "callee's BYE: {callee_bye}\n{}",
        t.diag(Some(&run))
    );
    let log = t.s.topo.log("sip-agent");
    assert!(
        log.lines().any(|l| l.contains("INFO")
            && l.contains("releasing call")
            && l.contains("MaxDuration")),
        "no info log of the release:\n{log}"
    );
    t.wait_no_flows()?;
    let forks = t.s.ctl(serde_json::json!({"v":1,"op":"show_forks"}))?;
    assert!(
        forks.as_array().is_none_or(Vec::is_empty),
        "fork left after the release: {forks}"
    );
    let after = calls(&t)?;
    assert_eq!(
        (
            &after["aggregate"],
            &after["enhanced"],
            &after["standard"],
            &after["peak_aggregate"]
        ),
        (
            &serde_json::json!(0),
            &serde_json::json!(0),
            &serde_json::json!(0),
            &serde_json::json!(1)
        ),
        "{after}"
    );
    let summary = t.s.speech_summary()?;
    for channel in ["caller", "callee"] {
        let s = stream_of(&summary, channel);
        assert_eq!(s["stopped"], "call_end", "{channel} stream: {s}");
        assert!(s["frames"].as_u64() > Some(20), "{channel} stream: {s}");
    }
    Ok(())
}
