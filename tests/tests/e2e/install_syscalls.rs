//! fork-agent.service's SystemCallFilter= and RestrictAddressFamilies= let fork-agent work.
//! systemd cannot run services here, so the filter is checked the other way round: fork-agent
//! runs under the unit's limits (as in install_restart_caps.rs) traced by strace (as root,
//! outside), does a call's work (flows, a fork to the speech server, relayed and forked media,
//! control requests, SIGTERM), and every system call it (and any process it started) makes
//! must be allowed by the unit's SystemCallFilter= lines, as expanded by this host's
//! `systemd-analyze syscall-filter`; every socket family it opens must be in
//! RestrictAddressFamilies=. It starts no process at all: routes, links and neighbours go over
//! rtnetlink, so the one execve is its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    process::Command,
    time::Duration,
};

use crate::install_support::{agent_pid, installed_limits, limited_scenario, start_limited, Stage};
use anyhow::{bail, Context, Result};
use nix::{sys::signal::Signal, unistd::Pid};
use xdpfork_tests::{addrs::*, rtp_packet, Host};

/// The system calls of a systemd group (`@system-service`), nested groups expanded.
fn expand_group(group: &str, depth: usize) -> Result<BTreeSet<String>> {
    if depth > 8 {
        bail!("syscall groups nest too deep at {group}");
    }
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", group])
        .output()
        .context("running systemd-analyze syscall-filter")?;
    if !out.status.success() {
        bail!(
            "systemd-analyze syscall-filter {group}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut set = BTreeSet::new();
    for line in text.lines().skip_while(|l| l.trim() != group).skip(1) {
        let item = line.trim();
        if item.is_empty() || item.starts_with('#') {
            continue;
        }
        if item.starts_with('@') {
            set.extend(expand_group(item, depth + 1)?);
        } else {
            set.insert(item.to_owned());
        }
    }
    if set.is_empty() {
        bail!("systemd-analyze knows no syscalls in {group}:\n{text}");
    }
    Ok(set)
}

fn expand(item: &str) -> Result<BTreeSet<String>> {
    if item.starts_with('@') {
        expand_group(item, 0)
    } else {
        Ok(BTreeSet::from([item.to_owned()]))
    }
}

/// The set the unit's `SystemCallFilter=` lines allow: allow lists add, `~` lines remove.
fn allowed_by(unit: &str) -> Result<BTreeSet<String>> {
    let mut allowed = BTreeSet::new();
    for line in unit.lines() {
        let Some(v) = line.strip_prefix("SystemCallFilter=") else {
            continue;
        };
        match v.strip_prefix('~') {
            Some(deny) => {
                for item in deny.split_whitespace() {
                    for s in expand(item)? {
                        allowed.remove(&s);
                    }
                }
            }
            None => {
                for item in v.split_whitespace() {
                    allowed.extend(expand(item)?);
                }
            }
        }
    }
    Ok(allowed)
}

/// One `strace -f` line: pid, system call name and rest of the line (`--- SIG` and `+++ exited`
/// lines give `None`). `<... clone3 resumed>` lines give the resumed call's name.
fn parse_line(line: &str) -> Option<(u32, &str, &str)> {
    let (pid, rest) = line.split_once(' ')?;
    let pid = pid.parse().ok()?;
    let rest = rest.trim_start();
    let name = match rest.strip_prefix("<... ") {
        Some(r) => r.split(' ').next()?,
        None => rest.split('(').next()?,
    };
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some((pid, name, rest))
}

/// The return value of a finished call (`...) = 42`, or `...)    = 42` after a resume).
fn ret_of(rest: &str) -> Option<i64> {
    rest.rsplit_once(" = ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
}

/// System calls (with a count) and socket families of fork-agent and every process it starts,
/// from an `strace -f` log. prlimit and setpriv, which run in the same pid before the exec of
/// fork-agent, are left out. Children (threads, and any process) are found from clone return
/// values over the whole log first, because a vfork child logs its calls before the parent's
/// clone returns.
fn agent_calls(log: &str) -> (BTreeMap<String, usize>, BTreeSet<String>) {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut agent = None;
    for line in log.lines() {
        let Some((pid, name, rest)) = parse_line(line) else {
            continue;
        };
        let ret = ret_of(rest);
        if name == "execve" && rest.contains("/fork-agent\"") && ret == Some(0) {
            agent = Some(pid);
        }
        if matches!(name, "clone" | "clone3" | "fork" | "vfork") {
            if let Some(child) = ret.filter(|r| *r > 0) {
                children.entry(pid).or_default().push(child as u32);
            }
        }
    }
    let mut agents = BTreeSet::new();
    let mut todo: Vec<u32> = agent.into_iter().collect();
    while let Some(p) = todo.pop() {
        if agents.insert(p) {
            todo.extend(children.get(&p).into_iter().flatten());
        }
    }
    let mut calls = BTreeMap::new();
    let mut families = BTreeSet::new();
    let mut agent_execed = false;
    for line in log.lines() {
        let Some((pid, name, rest)) = parse_line(line) else {
            continue;
        };
        if Some(pid) == agent && !agent_execed {
            // prlimit and setpriv until the exec of fork-agent.
            agent_execed = name == "execve" && rest.contains("/fork-agent\"");
            if !agent_execed {
                continue;
            }
        }
        if !agents.contains(&pid) {
            continue;
        }
        *calls.entry(name.to_owned()).or_insert(0) += 1;
        if name == "socket" {
            if let Some(f) = rest
                .strip_prefix("socket(")
                .and_then(|a| a.split(',').next())
            {
                families.insert(f.to_owned());
            }
        }
    }
    (calls, families)
}

#[test]
fn unit_syscall_filter_and_address_families_cover_what_fork_agent_does() -> Result<()> {
    let stage = Stage::new("install-syscalls")?;
    let (limits, staged_bin) = installed_limits(&stage.0)?;
    let unit = std::fs::read_to_string(
        stage
            .0
            .join("usr/local/lib/systemd/system/fork-agent.service"),
    )?;
    let allowed = allowed_by(&unit)?;
    assert!(allowed.contains("bpf") && allowed.contains("read") && !allowed.contains("setrlimit"));

    let mut s = limited_scenario()?;
    let trace = s.topo.dir.join("strace.log");
    let trace_s = trace.to_string_lossy().into_owned();
    start_limited(
        &mut s,
        &limits,
        &staged_bin,
        &["/usr/bin/strace", "-f", "-qq", "-o", &trace_s],
    )?;
    s.add_call_flows(false)?;
    s.start_fork("guid-syscalls", A_LOCAL, B_LOCAL)?;
    let tx = s.topo.udp_socket(Host::Caller, CALLER_RTP.parse()?)?;
    let _rx = s.topo.udp_socket(Host::Callee, CALLEE_RTP.parse()?)?;
    let dst: SocketAddr = A_LOCAL.parse()?;
    for i in 0..200u16 {
        tx.send_to(
            &rtp_packet(0, i, 160 * u32::from(i), 0x1234, &[0x55; 160]),
            dst,
        )?;
        std::thread::sleep(Duration::from_millis(5));
    }
    s.wait_frames_sent("asr", 50)?;
    s.flows()?;
    s.ctl(
        serde_json::json!({"v":1,"op":"fork_stop","call_guid":"guid-syscalls","reason":"request"}),
    )?;
    // SIGTERM to the agent itself (strace would only detach on its own SIGTERM).
    let pid = agent_pid(&s.config).context("fork-agent process not found")?;
    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM)?;
    let status = s.topo.wait_exit("fork-agent", Duration::from_secs(20))?;
    assert!(
        status.success(),
        "traced agent: {status}; log:\n{}",
        s.topo.log("fork-agent")
    );

    let log = std::fs::read_to_string(&trace)?;
    let (calls, families) = agent_calls(&log);
    assert!(
        calls.contains_key("bpf") && calls.len() > 30,
        "the trace did not capture the agent and its threads: {calls:?}"
    );
    assert_eq!(
        calls.get("execve"),
        Some(&1),
        "fork-agent must start no process (its own exec is the one execve): {calls:?}"
    );
    let denied: Vec<(&String, &usize)> = calls
        .iter()
        .filter(|(c, _)| !allowed.contains(*c))
        .collect();
    assert!(
        denied.is_empty(),
        "fork-agent.service's SystemCallFilter= would deny (call, count): {denied:?}"
    );
    let restrict = unit
        .lines()
        .find_map(|l| l.strip_prefix("RestrictAddressFamilies="))
        .context("no RestrictAddressFamilies=")?;
    let allowed_families: BTreeSet<&str> = restrict.split_whitespace().collect();
    for f in &families {
        assert!(
            allowed_families.contains(f.as_str()),
            "fork-agent opened an {f} socket; RestrictAddressFamilies={restrict}"
        );
    }
    assert!(
        families.contains("AF_XDP") && families.contains("AF_NETLINK"),
        "{families:?}"
    );
    println!(
        "fork-agent used {} system calls: {:?}",
        calls.len(),
        calls.keys()
    );
    println!("socket families: {families:?}");
    Ok(())
}
