//! SIGHUP reloads under live traffic (docs/operations.md "Reload"):
//! - fork-agent: a live fork keeps streaming on its connection while its speech server's
//!   definition changes; new forks use the new definition; an added server takes forks; a
//!   removed one refuses new forks while its running fork goes on; `[log] level` changes the
//!   filter of the running process; a broken file is refused whole; reloads are counted in
//!   /metrics.
//! - sip-agent and ng-agent: SIGHUP no longer ends them; they re-read and validate the file,
//!   report that `RUST_LOG` (set by the harness) pins their filter, refuse a broken file and
//!   count both.

#![allow(clippy::disallowed_methods)] // wall clock bounds the waits on real processes

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use xdpfork_tests::{
    control,
    fork_rig::{
        caller_flow as flow, fork_caller as fork, has, send_rtp, spawn_speech, start_fork_agent,
        Events, SPEECH_IP as SPEECH,
    },
    Topology,
};

use crate::ng_support::NgTest;
use crate::ops_metrics_notify::{get, scrape};
use crate::sip_support::SipTest;

/// `[[speech_server]]` sections: `asr` at `asr_port`, `extra` appended.
fn servers(asr_port: u16, extra: &str) -> String {
    format!(
        "[[speech_server]]\nname = \"asr\"\nurl = \"ws://{SPEECH}:{asr_port}/fork\"\n\
         idle_timeout_secs = 1\n\
         [[speech_server]]\nname = \"dead\"\nurl = \"ws://{SPEECH}:9009/fork\"\n\
         max_connect_attempts = 1\nbackoff_initial_ms = 100\n{extra}"
    )
}

/// Rewrites fork-agent's config with `servers` (same dataplane and control sections as
/// `start_fork_agent` wrote) and sends SIGHUP.
fn reload(t: &mut Topology, servers: &str) -> Result<()> {
    let cfg = t.dir.join("fork-agent.toml");
    let text = std::fs::read_to_string(&cfg)?;
    let head = text
        .split("[[speech_server]]")
        .next()
        .unwrap_or_default()
        .to_owned();
    std::fs::write(&cfg, format!("{head}{servers}"))?;
    t.send_signal("fork-agent", Signal::SIGHUP)
}

/// Waits (bounded) until `name`'s log has `needle` `n` times.
fn wait_log(t: &Topology, name: &str, needle: &str, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.log(name).matches(needle).count() < n {
        if Instant::now() > deadline {
            bail!(
                "{name} never logged {needle:?} {n} times:\n{}",
                t.log_tail(name, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Audio frames fork-agent wrote to the speech server at `port`, over all its connections.
fn frames_to(socket: &Path, port: u16) -> Result<u64> {
    let conns = control(
        socket,
        &json!({"v":1,"op":"show_stream_service","what":"server","arg":format!("{SPEECH}:{port}")}),
    )?;
    Ok(conns
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["frames_sent"].as_u64()).sum())
        .unwrap_or(0))
}

/// Waits (bounded) until more than `before` frames reached the server at `port`.
fn wait_frames(socket: &Path, port: u16, before: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = frames_to(socket, port)?;
        if n > before {
            return Ok(n);
        }
        if Instant::now() > deadline {
            bail!("no new frames reached port {port} (still {n})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fork_agent_reloads_speech_servers_and_log_level_under_a_live_fork() -> Result<()> {
    let mut t = Topology::new()?;
    spawn_speech(&mut t, "speech-a", 9000, &[])?;
    spawn_speech(&mut t, "speech-b", 9001, &[])?;
    let socket = start_fork_agent(&mut t, &servers(9000, ""))?;
    let mut ev = Events::subscribe(&socket)?;

    // A live fork on server A; at `info`, a failed connect is not logged at debug.
    let f1 = flow(&socket, 1)?;
    fork(&socket, "g1", "asr", &f1)?;
    ev.until(Duration::from_secs(15), |s| has(s, "g1", "started", None))?;
    send_rtp(&t, &f1, 10, Duration::from_millis(2))?;
    let a0 = wait_frames(&socket, 9000, 0)?;
    let fd = flow(&socket, 9)?;
    fork(&socket, "gd1", "dead", &fd)?;
    ev.until(Duration::from_secs(15), |s| has(s, "gd1", "error", None))?;
    assert!(
        !t.log("fork-agent").contains("connect failed"),
        "debug line at info"
    );
    control(&socket, &json!({"v":1,"op":"fork_stop","call_guid":"gd1"}))?;

    // Reload: `asr` moves to B, `asr2` (at A) is added, the log level goes to debug.
    reload(
        &mut t,
        &format!(
            "{}[[speech_server]]\nname = \"asr2\"\nurl = \"ws://{SPEECH}:9000/fork\"\n\
             [log]\nlevel = \"info,fork_agent=debug\"\n",
            servers(9001, "")
        ),
    )?;
    wait_log(
        &t,
        "fork-agent",
        "reload: speech servers added: asr2; changed: asr",
        1,
    )?;
    wait_log(
        &t,
        "fork-agent",
        "log level `info` -> `info,fork_agent=debug`",
        1,
    )?;

    // The live fork stays on its connection to A.
    send_rtp(&t, &f1, 10, Duration::from_millis(2))?;
    wait_frames(&socket, 9000, a0)?;
    // New forks: `asr` now reaches B, `asr2` reaches A.
    let f2 = flow(&socket, 2)?;
    fork(&socket, "g2", "asr", &f2)?;
    let f3 = flow(&socket, 3)?;
    fork(&socket, "g3", "asr2", &f3)?;
    ev.until(Duration::from_secs(15), |s| {
        has(s, "g2", "started", None) && has(s, "g3", "started", None)
    })?;
    send_rtp(&t, &f2, 10, Duration::from_millis(2))?;
    wait_frames(&socket, 9001, 0)?;
    // The new filter is in force: the same failed connect is now logged at debug.
    fork(&socket, "gd2", "dead", &fd)?;
    wait_log(&t, "fork-agent", "connect failed", 1)?;
    control(&socket, &json!({"v":1,"op":"fork_stop","call_guid":"gd2"}))?;

    // Remove `asr2`: new forks naming it are refused; its running fork goes on.
    reload(
        &mut t,
        &servers(9001, "[log]\nlevel = \"info,fork_agent=debug\"\n"),
    )?;
    wait_log(&t, "fork-agent", "removed: asr2", 1)?;
    let f4 = flow(&socket, 4)?;
    let e = fork(&socket, "g4", "asr2", &f4).expect_err("asr2 is gone");
    assert!(
        format!("{e:#}").contains("no speech_server named `asr2`"),
        "{e:#}"
    );
    let a1 = frames_to(&socket, 9000)?;
    send_rtp(&t, &f3, 10, Duration::from_millis(2))?;
    wait_frames(&socket, 9000, a1)?;

    // A broken file changes nothing.
    let cfg = t.dir.join("fork-agent.toml");
    let good = std::fs::read_to_string(&cfg)?;
    std::fs::write(&cfg, format!("{good}\n[[speech_server]]\nname = \"asr\"\n"))?;
    t.send_signal("fork-agent", Signal::SIGHUP)?;
    wait_log(
        &t,
        "fork-agent",
        "reload refused, the running settings stay",
        1,
    )?;
    std::fs::write(&cfg, good)?;
    let f5 = flow(&socket, 5)?;
    fork(&socket, "g5", "asr", &f5)?;
    ev.until(Duration::from_secs(15), |s| has(s, "g5", "started", None))?;

    // No live fork was disturbed by any of it.
    for g in ["g1", "g2", "g3"] {
        let bad: Vec<&Value> = ev
            .seen
            .iter()
            .filter(|e| e["call_guid"] == g && e["status"] != "started")
            .collect();
        assert!(bad.is_empty(), "{g} saw {bad:?}");
    }
    let m = scrape(&t, "127.0.0.1:9464")?;
    assert_eq!(
        get(&m, "xdpfork_config_reloads_total{result=ok}"),
        2.0,
        "{m:?}"
    );
    assert_eq!(
        get(&m, "xdpfork_config_reloads_total{result=failed}"),
        1.0,
        "{m:?}"
    );

    // The retired pool of `asr` (A) is dropped once g1 stops and its connection idles out.
    control(&socket, &json!({"v":1,"op":"fork_stop","call_guid":"g1"}))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = control(
            &socket,
            &json!({"v":1,"op":"show_stream_service","what":"statistics"}),
        )?;
        let retired = st["servers"]
            .as_object()
            .is_some_and(|m| m.keys().any(|k| k.starts_with("asr (retired")));
        if !retired {
            break;
        }
        if Instant::now() > deadline {
            bail!("the retired pool was not dropped: {st}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(t.is_running("fork-agent"));
    Ok(())
}

/// Appends `[log] level = "warn"` to `cfg`, sends SIGHUP to `name`: the file is read and the
/// level reported as pinned by the test's `RUST_LOG`; then a broken file is refused. `name`
/// runs on throughout.
fn reload_pinned_then_broken(t: &mut Topology, name: &str, cfg: &Path) -> Result<()> {
    let good = std::fs::read_to_string(cfg)?;
    std::fs::write(cfg, format!("{good}\n[log]\nlevel = \"warn\"\n"))?;
    t.send_signal(name, Signal::SIGHUP)?;
    wait_log(t, name, "[log] level ignored: RUST_LOG=", 1)?;
    std::fs::write(cfg, format!("{good}\n[log]\nlevel = \"{name}=loud\"\n"))?;
    t.send_signal(name, Signal::SIGHUP)?;
    wait_log(t, name, "reload refused, the running settings stay", 1)?;
    assert!(
        t.log(name).contains("is not a log filter"),
        "{}",
        t.log_tail(name, 20)
    );
    assert!(t.is_running(name), "{name} ended on SIGHUP");
    Ok(())
}

#[test]
fn sip_agent_and_ng_agent_reread_their_file_on_sighup() -> Result<()> {
    let mut sip = SipTest::start()?;
    let cfg = sip.dir.join("sip-agent.toml");
    reload_pinned_then_broken(&mut sip.s.topo, "sip-agent", &cfg)?;
    let m = scrape(&sip.s.topo, "127.0.0.1:9465")?;
    assert_eq!(
        get(&m, "xdpfork_sip_config_reloads_total{result=ok}"),
        1.0,
        "{m:?}"
    );
    assert_eq!(
        get(&m, "xdpfork_sip_config_reloads_total{result=failed}"),
        1.0,
        "{m:?}"
    );
    drop(sip);

    let mut ng = NgTest::start()?;
    let cfg = ng.t.dir.join("ng-agent.toml");
    reload_pinned_then_broken(&mut ng.t.s.topo, "ng-agent", &cfg)?;
    let pong = ng.ng(ng_agent::core::bencode::Value::dict([(
        "command",
        ng_agent::core::bencode::Value::str("ping"),
    )]))?;
    assert_eq!(
        pong.get("result").and_then(|v| v.as_str()),
        Some("pong"),
        "{pong:?}"
    );
    // ng-agent's /metrics counts the reloads and a request it refused.
    let bad = ng.ng(ng_agent::core::bencode::Value::dict([(
        "command",
        ng_agent::core::bencode::Value::str("no such command"),
    )]))?;
    assert_eq!(
        bad.get("result").and_then(|v| v.as_str()),
        Some("error"),
        "{bad:?}"
    );
    let m = scrape(&ng.t.s.topo, "127.0.0.1:9467")?;
    assert_eq!(
        get(&m, "xdpfork_ng_config_reloads_total{result=ok}"),
        1.0,
        "{m:?}"
    );
    assert_eq!(
        get(&m, "xdpfork_ng_config_reloads_total{result=failed}"),
        1.0,
        "{m:?}"
    );
    assert_eq!(get(&m, "xdpfork_ng_request_errors_total{}"), 1.0, "{m:?}");
    assert_eq!(get(&m, "xdpfork_ng_calls{}"), 0.0, "{m:?}");
    Ok(())
}
