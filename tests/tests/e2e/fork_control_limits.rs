//! fork-agent's control socket under a local client that misbehaves (docs/security.md
//! "Resource limits"):
//! - more connections than `control.max_connections_per_user`: the extra ones are closed at
//!   once, counted and logged once per interval; the idle ones are closed after
//!   `request_timeout_secs`, and then `fork-agent ctl show flows` answers again;
//! - a 100 MB request line gets the documented error answer and RSS stays bounded; a line that
//!   is not UTF-8 gets an error answer and the connection stays usable;
//! - with its file table exhausted (RLIMIT_NOFILE lowered with prlimit) the agent does not spin
//!   in accept, and answers again once descriptors are free.
#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    process::Command,
    time::Duration,
};

use crate::limits_support::*;
use anyhow::{Context, Result};
use xdpfork_tests::{bin, Scenario, Topology};

/// fork-agent with `control_lines` added to its `[control]` section.
fn start(control_lines: &str) -> Result<Scenario> {
    let s = Scenario::start_edited(Topology::new()?, |text| {
        Ok(text.replacen("[control]\n", &format!("[control]\n{control_lines}\n"), 1))
    })?;
    // The socket is bound before the data plane loads; the first answer means it is up.
    s.flows().context("fork-agent answers its first request")?;
    // Until the agent has seen those connections close they count against the limits: wait
    // until only the asking connection is open.
    wait_for(
        "earlier control connections closed",
        Duration::from_secs(5),
        || Ok(s.counters()?["control_socket"]["open"] == 1),
    )?;
    // ... and that last one's close, which no request can observe without opening another.
    std::thread::sleep(Duration::from_millis(500));
    Ok(s)
}

/// `fork-agent ctl show flows` (bounded by `timeout`): whether it answered, and its output.
fn ctl_show_flows(s: &Scenario) -> Result<(bool, String)> {
    let out = Command::new("timeout")
        .arg("15")
        .arg(bin("fork-agent")?)
        .args(["ctl", "--socket"])
        .arg(&s.socket)
        .args(["show", "flows"])
        .output()
        .context("running fork-agent ctl")?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

fn connect_many(s: &Scenario, n: usize) -> Result<Vec<UnixStream>> {
    (0..n)
        .map(|_| UnixStream::connect(&s.socket).context("connecting to the control socket"))
        .collect()
}

#[test]
fn idle_connections_over_the_limit_are_refused_then_expired() -> Result<()> {
    let s = start("max_connections_per_user = 8\nmax_connections = 32\nrequest_timeout_secs = 2")?;
    let idle = connect_many(&s, 40)?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count_open(&idle), 8, "8 held, 32 closed at once");
    // The CLI runs as the same user: refused while the 8 idle connections hold its share.
    let (ok, out) = ctl_show_flows(&s)?;
    assert!(!ok, "answered while the user's limit was full: {out}");
    wait_for("idle connections expired", Duration::from_secs(10), || {
        Ok(count_open(&idle) == 0)
    })?;
    let (ok, out) = ctl_show_flows(&s)?;
    assert!(ok, "ctl show flows after the expiry: {out}");
    let c = s.counters()?;
    let cs = &c["control_socket"];
    assert!(cs["refused_per_user"].as_u64() >= Some(33), "{cs}");
    assert_eq!(cs["expired_no_request"], 8, "{cs}");
    // 33 refusals, logged once in the 10 s interval.
    let log = s.topo.log("fork-agent");
    let lines = log_lines(&log, "connection refused: over the connection limit");
    assert!((1..=2).contains(&lines), "{lines} refusal lines:\n{log}");
    Ok(())
}

#[test]
fn oversize_and_non_utf8_lines_get_error_answers_and_rss_stays_bounded() -> Result<()> {
    let s = start("")?;
    let pid = pid_of(&s.config.to_string_lossy())?;
    let rss0 = vm_rss_kib(pid)?;
    let c = UnixStream::connect(&s.socket)?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = c.try_clone()?;
    // 100 MB without a newline; the agent answers and closes long before the end, so the
    // writer stops at the first failed write.
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0usize;
        while sent < 100 << 20 {
            match w.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let mut answer = String::new();
    BufReader::new(&c).read_line(&mut answer)?;
    let sent = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))?;
    let v: serde_json::Value = serde_json::from_str(&answer).context("answer is one JSON line")?;
    assert_eq!(v["ok"], false, "{answer}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("longer than 65536 bytes")),
        "{answer}"
    );
    let rss1 = vm_rss_kib(pid)?;
    eprintln!("VmRSS {rss0} KiB -> {rss1} KiB after {sent} bytes of one line");
    assert!(
        rss1 < rss0 + 16 * 1024,
        "RSS grew by {} KiB on one long line",
        rss1 - rss0
    );

    // Not UTF-8: an error answer, and the connection still serves the next request.
    let mut c = UnixStream::connect(&s.socket)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(b"{\"v\":1,\"op\":\"show_\xff\xfe\"}\n{\"v\":1,\"op\":\"show_flows\"}\n")?;
    let mut r = BufReader::new(&c);
    let mut first = String::new();
    r.read_line(&mut first)?;
    let v: serde_json::Value = serde_json::from_str(&first)?;
    assert_eq!(v["ok"], false, "{first}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("not UTF-8")),
        "{first}"
    );
    let mut second = String::new();
    r.read_line(&mut second)?;
    let v: serde_json::Value = serde_json::from_str(&second)?;
    assert_eq!(v["ok"], true, "{second}");
    let cs = &s.counters()?["control_socket"];
    assert_eq!(cs["closed_too_large"], 1, "{cs}");
    Ok(())
}

#[test]
fn exhausted_file_table_does_not_spin_and_service_resumes() -> Result<()> {
    // Generous limits and timeout: only the file table binds in this test.
    let s =
        start("max_connections_per_user = 500\nmax_connections = 500\nrequest_timeout_secs = 120")?;
    let pid = pid_of(&s.config.to_string_lossy())?;
    let limit = open_fds(pid)? + 8;
    xdpfork_tests::run(
        "prlimit",
        &[
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ],
    )?;
    // 8 are accepted, then accept fails with EMFILE while the rest wait in the backlog.
    let conns = connect_many(&s, 60)?;
    std::thread::sleep(Duration::from_secs(1));
    let window = Duration::from_secs(3);
    let t0 = cpu_ticks(pid)?;
    std::thread::sleep(window);
    let used = cpu_ticks(pid)? - t0;
    let budget = CLK_TCK * window.as_secs() / 4;
    eprintln!(
        "fork-agent used {used} ticks in {window:?} with its file table full (budget {budget})"
    );
    assert!(
        used < budget,
        "fork-agent used {used} CPU ticks in {window:?} while out of descriptors: it spins"
    );
    assert!(count_open(&conns) >= 8);
    drop(conns);
    let (ok, out) = ctl_show_flows(&s)?;
    assert!(ok, "ctl show flows once descriptors are free again: {out}");
    let cs = &s.counters()?["control_socket"];
    assert!(cs["accept_errors"].as_u64() >= Some(1), "{cs}");
    let log = s.topo.log("fork-agent");
    assert!(
        log_lines(&log, "accept failed; pausing accepts") <= 2,
        "accept errors are logged rate-limited:\n{log}"
    );
    Ok(())
}
