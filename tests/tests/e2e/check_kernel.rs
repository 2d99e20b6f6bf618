//! `fork-agent check-kernel` answers "will xdpfork run here, and how?" by doing the real thing:
//! every program variant loaded, maps pinned, native XDP on a scratch veth pair, and one RTP
//! packet relayed and forked into AF_XDP in a namespace of its own. It leaves nothing behind, and
//! a host that lacks something essential gets a non-zero exit and a line naming it.
//!
//! Also here: fork-agent's start-up failures are loud (the error chain on stderr, not a bare
//! "Error: ") and `--help`/`--version` of every binary print and exit without side effects.

use std::{path::Path, process::Command};

use anyhow::{ensure, Context, Result};
use fork_common::ForkPath;
use xdpfork_tests::{bin, empty_dir, require_root, run};

/// `fork-agent check-kernel ARGS` with an empty PATH: the scratch veth is made over rtnetlink,
/// no `ip` is needed.
fn check_kernel(args: &[&str]) -> Result<(bool, String)> {
    let empty = std::env::temp_dir().join(format!("xdpfork-check-path-{}", std::process::id()));
    let out = Command::new(bin("fork-agent")?)
        .env("PATH", empty_dir(&empty)?)
        .arg("check-kernel")
        .args(args)
        .output()
        .context("running fork-agent check-kernel");
    let _ = std::fs::remove_dir(&empty);
    let out = out?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// The status word (OK, note, FAIL) of the row whose check starts with `check`.
fn status<'a>(report: &'a str, check: &str) -> Option<&'a str> {
    let line = report.lines().find(|l| l.trim_start().starts_with(check))?;
    line.split_whitespace()
        .find(|w| ["OK", "note", "FAIL"].contains(w))
}

/// Rows of the table that say FAIL.
fn failures(report: &str) -> Vec<&str> {
    report
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == "FAIL"))
        .collect()
}

fn leftovers() -> Result<Vec<String>> {
    let mut left: Vec<String> = std::fs::read_dir("/sys/fs/bpf")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("xdpfork-check"))
        .collect();
    for dev in ["xck0", "xck1", "xckf", "xckfc"] {
        if Path::new(&format!("/sys/class/net/{dev}")).exists() {
            left.push(dev.to_owned());
        }
    }
    Ok(left)
}

#[test]
fn every_fork_path_the_kernel_accepts_relays_and_forks_one_packet() -> Result<()> {
    require_root()?;
    // The environment may force a path (CI's headroom pass): judge that one, else each in turn.
    let forced = std::env::var("XDPFORK_FORK_PATH").ok();
    let paths: Vec<String> = match &forced {
        Some(p) => vec![p.clone()],
        None => ForkPath::ALL.iter().map(|p| p.name().to_owned()).collect(),
    };
    let mut ran = 0;
    for path in &paths {
        let (ok, report) = check_kernel(&["--fork-path", path])?;
        println!("{report}");
        if !ok && path == "metadata" && status(&report, "load xdp_relay_meta") == Some("FAIL") {
            // A kernel build that refuses bpf_xdp_adjust_meta: the headroom run below must pass.
            println!("this kernel refuses the metadata path; it is judged by the headroom run");
            continue;
        }
        ensure!(ok, "check-kernel --fork-path {path} failed:\n{report}");
        ensure!(
            report.contains(&format!(
                "verdict: xdpfork runs here, forking on the {path} path"
            )),
            "verdict for {path}:\n{report}"
        );
        for check in [
            "bpffs (/sys/fs/bpf)",
            "pin maps (BTF) and links in bpffs",
            "native XDP on a veth pair",
            "relay + devmap broadcast: relayed copy",
            "fork copy into AF_XDP (XSKMAP)",
        ] {
            ensure!(
                status(&report, check) == Some("OK"),
                "`{check}` is not OK:\n{report}"
            );
        }
        ran += 1;
    }
    ensure!(ran > 0, "no fork path passed check-kernel");
    let left = leftovers()?;
    ensure!(left.is_empty(), "check-kernel left behind: {left:?}");
    Ok(())
}

#[test]
fn auto_names_the_path_it_will_use() -> Result<()> {
    require_root()?;
    let (ok, report) = check_kernel(&["--fork-path", "auto"])?;
    ensure!(ok, "check-kernel failed:\n{report}");
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with("fork path fork-agent will use"))
        .with_context(|| format!("no fork path row:\n{report}"))?;
    let refused_meta = status(&report, "load xdp_relay_meta") == Some("FAIL");
    let want = if refused_meta {
        "headroom (auto"
    } else {
        "metadata (fork_path = auto)"
    };
    ensure!(line.contains(want), "expected `{want}` in: {line}");
    Ok(())
}

/// Without bpffs (a private mount namespace where /sys/fs/bpf is unmounted) xdpfork cannot pin
/// its maps: check-kernel fails and the verdict names what is missing.
#[test]
fn a_missing_essential_is_named_in_one_line() -> Result<()> {
    require_root()?;
    let agent = bin("fork-agent")?;
    let script = format!(
        "umount /sys/fs/bpf 2>/dev/null; umount /sys/fs/bpf 2>/dev/null; exec {} check-kernel",
        agent.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .context("running check-kernel in a private mount namespace")?;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{report}");
    ensure!(
        !out.status.success(),
        "check-kernel passed without bpffs:\n{report}"
    );
    let verdict = report
        .lines()
        .find(|l| l.starts_with("verdict:"))
        .with_context(|| format!("no verdict:\n{report}"))?;
    ensure!(
        verdict.contains("cannot run here") && verdict.contains("bpffs"),
        "verdict does not name bpffs: {verdict}"
    );
    ensure!(
        failures(&report).iter().any(|l| l.contains("mount -t bpf")),
        "the bpffs row does not say how to fix it:\n{report}"
    );
    Ok(())
}

/// A fork-agent that cannot start says why on stderr, as one error chain, and exits non-zero.
#[test]
fn a_failed_start_prints_the_whole_error_chain() -> Result<()> {
    require_root()?;
    let dir = tempdir()?;
    let cfg = dir.join("fork-agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\npin_dir = \"/sys/fs/bpf/xdpfork-check-failstart-{pid}\"\n\
             interfaces = [\"nosuchdev0\"]\n[control]\nsocket = \"{dir}/ctl.sock\"\n\
             state_dir = \"{dir}/state\"\n",
            pid = std::process::id(),
            dir = dir.display()
        ),
    )?;
    let out = Command::new(bin("fork-agent")?)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(
        !out.status.success(),
        "fork-agent started without its interface"
    );
    ensure!(
        stderr.contains("fork-agent: error:") && stderr.contains("`nosuchdev0` does not exist"),
        "stderr does not carry the cause:\n{stderr}"
    );
    ensure!(
        !Path::new(&format!(
            "/sys/fs/bpf/xdpfork-check-failstart-{}",
            std::process::id()
        ))
        .exists(),
        "a failed start left its pins"
    );
    Ok(())
}

/// `--help` and `--version` print and exit 0 on every binary, creating nothing (the demo once
/// took `--help` as its output folder and ran).
#[test]
fn help_and_version_are_harmless_everywhere() -> Result<()> {
    let dir = tempdir()?;
    for name in [
        "fork-agent",
        "sip-agent",
        "turn-server",
        "speech-server",
        "udp-relay",
        "xdpfork-demo",
        "xdpfork-bench",
    ] {
        let exe = bin(name)?;
        for flag in ["--help", "--version"] {
            let out = Command::new(&exe).arg(flag).current_dir(&dir).output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(
                out.status.success(),
                "{name} {flag} exited with {}: {}{}",
                out.status,
                text,
                String::from_utf8_lossy(&out.stderr)
            );
            let want = if flag == "--help" {
                "Usage"
            } else {
                env!("CARGO_PKG_VERSION")
            };
            ensure!(
                text.contains(want),
                "{name} {flag} printed no `{want}`:\n{text}"
            );
        }
    }
    let made: Vec<_> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok()).collect();
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(made.is_empty(), "--help/--version created files: {made:?}");
    let ns = run("ip", &["netns", "list"])?;
    ensure!(
        !ns.lines().any(|l| l.starts_with("xdpdemo")),
        "--help built namespaces: {ns}"
    );
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "xdpfork-check-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
