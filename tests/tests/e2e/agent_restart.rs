//! fork-agent killed with SIGKILL in the middle of a call: the kernel keeps relaying every packet
//! (pinned maps and links), and a restarted agent re-adopts the pinned state and resumes forking.

use std::time::Duration;

use anyhow::Result;
use nix::sys::signal::Signal;
use xdpfork_tests::{addrs::*, Scenario};

const N: u16 = 600;
const GAP: Duration = Duration::from_millis(5);

#[test]
fn sigkill_keeps_audio_and_restart_resumes_forking() -> Result<()> {
    let mut s = Scenario::start()?;
    s.add_call_flows(false)?;
    s.start_fork("guid-restart", A_LOCAL, B_LOCAL)?;

    let audio = s.play_caller_audio(N, 8, 0xabcd, GAP)?;

    // Kill the agent a third of the way in, restart it at two thirds.
    std::thread::sleep(GAP * u32::from(N) / 3);
    s.topo.signal("fork-agent", Signal::SIGKILL)?;
    std::thread::sleep(GAP * u32::from(N) / 3);
    s.start_agent()?;

    let (sent, got) = audio.finish()?;
    assert_eq!(
        got.len(),
        sent.len(),
        "the callee lost audio while fork-agent was down"
    );
    assert!(got == sent, "relayed packets differ from the ones sent");

    // The restarted agent adopted the flows (counters continue) and the fork.
    let a = s.flow(A_LOCAL)?;
    assert_eq!(a["packets"], N as u64, "flow after restart: {a}");
    assert_eq!(a["path"], "kernel");
    let forks = s.ctl(serde_json::json!({"v":1,"op":"show_forks"}))?;
    assert_eq!(
        forks.as_array().map(Vec::len),
        Some(1),
        "forks after restart: {forks}"
    );

    let summary = s.speech_summary()?;
    let caller = summary["streams"]
        .as_array()
        .and_then(|st| st.iter().find(|x| x["channel"] == "caller"))
        .cloned()
        .unwrap_or_default();
    // Frames arrived both before the kill and after the restart, on the same stream.
    assert!(
        caller["resumed_starts"].as_u64() >= Some(1),
        "summary: {caller}"
    );
    let frames = caller["frames"].as_u64().unwrap_or(0);
    assert!(frames > u64::from(N) / 3, "too few forked frames: {caller}");
    let seqs: Vec<u64> = caller["seqs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    assert!(
        seqs.first().is_some_and(|s| *s < u64::from(N) / 3)
            && seqs.last().is_some_and(|s| *s > 2 * u64::from(N) / 3),
        "forking did not span the restart: first {:?} last {:?}",
        seqs.first(),
        seqs.last()
    );
    let conns = summary["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("summary without connections: {summary}"));
    assert!(
        conns.len() >= 2,
        "expected a connection before and after the restart: {summary}"
    );
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
