//! A call streams across two fork-agent restarts, with fork-agent running exactly as
//! fork-agent.service runs it: the installed unit's ExecStart= (config path swapped for the test
//! topology's), as an unprivileged uid, with the unit's ambient capabilities and bounding set,
//! no-new-privs and LimitMEMLOCK=, through `prlimit` + `setpriv` (systemd is not PID 1 here).
//!
//! The first restart is `systemctl restart` (SIGTERM, start again after about RestartSec=); the
//! second is a crash (SIGKILL, Restart=on-failure). Every relayed packet must arrive byte for byte,
//! the restarted agents must re-adopt the flows and the fork, and forking must span both restarts.

use std::time::Duration;

use crate::install_support::{
    agent_pid, installed_limits, limited_scenario, start_limited, status_field, ServiceLimits,
    Stage, SERVICE_UID,
};
use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use xdpfork_tests::addrs::*;

/// 1500 packets at 5 ms: long enough that forking resumes after the second restart.
const N: u16 = 1500;
const GAP: Duration = Duration::from_millis(5);
/// The unit's RestartSec=.
const RESTART_SEC: Duration = Duration::from_secs(1);

/// The running agent has the unit's uid and capabilities, and nothing more.
fn assert_limited(config: &std::path::Path, limits: &ServiceLimits) -> Result<()> {
    let pid = agent_pid(config).context("fork-agent process not found")?;
    let uid = SERVICE_UID.to_string();
    let uids: Vec<String> = status_field(pid, "Uid")?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(uids, vec![uid.clone(); 4], "real, effective, saved, fs uid");
    let want = ServiceLimits::mask(&limits.ambient)?;
    for field in ["CapEff", "CapPrm", "CapAmb"] {
        let got = u64::from_str_radix(&status_field(pid, field)?, 16)?;
        assert_eq!(got, want, "{field} {got:#x}, the unit grants {want:#x}");
    }
    let bnd = u64::from_str_radix(&status_field(pid, "CapBnd")?, 16)?;
    assert_eq!(bnd, ServiceLimits::mask(&limits.bounding)?, "CapBnd");
    assert_eq!(status_field(pid, "NoNewPrivs")?, "1");
    let memlock = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = memlock
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .context("no locked-memory limit")?;
    assert!(
        line.split_whitespace()
            .any(|w| w == limits.memlock.to_string()),
        "{line}"
    );
    Ok(())
}

#[test]
fn call_audio_survives_restarts_of_the_capability_limited_agent() -> Result<()> {
    let stage = Stage::new("install-restart")?;
    let (limits, staged_bin) = installed_limits(&stage.0)?;
    assert!(
        !limits.ambient.iter().any(|c| c == "CAP_SYS_ADMIN"),
        "the unit grants CAP_SYS_ADMIN: {limits:?}"
    );
    let mut s = limited_scenario()?;
    start_limited(&mut s, &limits, &staged_bin, &[])?;
    assert_limited(&s.config, &limits)?;
    s.add_call_flows(false)?;
    s.start_fork("guid-unit-restart", A_LOCAL, B_LOCAL)?;

    let audio = s.play_caller_audio(N, 0, 0x5eed, GAP)?;

    // systemctl restart: SIGTERM, RestartSec=, start.
    std::thread::sleep(GAP * u32::from(N) / 5);
    s.topo.signal("fork-agent", Signal::SIGTERM)?;
    std::thread::sleep(RESTART_SEC);
    start_limited(&mut s, &limits, &staged_bin, &[])?;
    assert_limited(&s.config, &limits)?;
    // A crash: SIGKILL, Restart=on-failure after RestartSec=.
    std::thread::sleep(GAP * u32::from(N) / 5);
    s.topo.signal("fork-agent", Signal::SIGKILL)?;
    std::thread::sleep(RESTART_SEC);
    start_limited(&mut s, &limits, &staged_bin, &[])?;

    let (sent, got) = audio.finish()?;
    assert_eq!(
        got.len(),
        sent.len(),
        "the callee lost relayed packets across the restarts"
    );
    assert!(got == sent, "relayed packets differ from the ones sent");

    // The third agent adopted the flow (its counters continued) and the fork.
    let a = s.flow(A_LOCAL)?;
    assert_eq!(a["packets"], u64::from(N), "flow after restarts: {a}");
    assert_eq!(a["path"], "kernel");
    let forks = s.ctl(serde_json::json!({"v":1,"op":"show_forks"}))?;
    assert_eq!(forks.as_array().map(Vec::len), Some(1), "forks: {forks}");

    let summary = s.speech_summary()?;
    let caller = summary["streams"]
        .as_array()
        .and_then(|st| st.iter().find(|x| x["channel"] == "caller"))
        .cloned()
        .unwrap_or_default();
    assert!(
        caller["resumed_starts"].as_u64() >= Some(2),
        "each restarted agent resumes the stream: {caller}"
    );
    let seqs: Vec<u64> = caller["seqs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    let n = u64::from(N);
    assert!(
        seqs.first().is_some_and(|s| *s < n / 5) && seqs.last().is_some_and(|s| *s > 4 * n / 5),
        "forking did not span the restarts: first {:?} last {:?}",
        seqs.first(),
        seqs.last()
    );
    let conns = summary["connections"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let violations: usize = conns
        .iter()
        .map(|c| c["violations"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(
        violations, 0,
        "speech server saw protocol violations: {summary}"
    );
    Ok(())
}
