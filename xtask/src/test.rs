//! `cargo xtask test [-- <filter>...]`: the whole CI gate, in the order CI runs it.
//!
//! Input: optional test filter/args, forwarded after `--` to both `cargo test` runs.
//! Output: the cargo tools' own output, a header and wall time per stage, and a summary table.
//! Call order: [`setup::ensure_ready`], then the stages of [`stages`] in order; the first failing
//! stage stops the run with a non-zero exit. The last stage needs root (network namespaces, XDP,
//! bpffs) and fails with a message saying so instead of skipping.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::build::{cargo, workspace_root};
use crate::setup;

const GIB: u64 = 1 << 30;

/// A cold run writes about 2.5 GB under target/ (measured in docs/toolchain.md); incremental
/// caches are about 1 GB of that.
const COLD_RUN_BYTES: u64 = 5 * GIB / 2;
/// Below this much free space the run goes without incremental caches.
const ROOMY_BYTES: u64 = 4 * GIB;

/// What the free space under target/ means for this run.
#[derive(Debug, PartialEq, Eq)]
enum DiskPlan {
    /// Enough room: build as usual.
    Normal,
    /// Tight: build without incremental caches (`CARGO_INCREMENTAL=0`).
    NoIncremental,
    /// Probably too little even so: warn, then try (a warm target dir needs far less).
    TooLittle,
}

fn disk_plan(free: u64) -> DiskPlan {
    if free >= ROOMY_BYTES {
        DiskPlan::Normal
    } else if free >= COLD_RUN_BYTES - GIB {
        DiskPlan::NoIncremental
    } else {
        DiskPlan::TooLittle
    }
}

/// Free bytes on the file system that holds the target dir (or the workspace, before the first
/// build).
fn free_bytes() -> Result<u64> {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let at = if target.exists() { target } else { root };
    let st = nix::sys::statvfs::statvfs(&at)
        .map_err(|e| anyhow::anyhow!("statvfs {}: {e}", at.display()))?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Checks the free space, says what it means and returns extra environment for the stages.
fn disk_preflight() -> Vec<(&'static str, &'static str)> {
    let free = match free_bytes() {
        Ok(free) => free,
        Err(e) => {
            eprintln!("xtask: could not read the free disk space ({e}); going on");
            return Vec::new();
        }
    };
    let gib = free as f64 / GIB as f64;
    let user_set = std::env::var_os("CARGO_INCREMENTAL").is_some();
    match disk_plan(free) {
        DiskPlan::Normal => Vec::new(),
        DiskPlan::NoIncremental | DiskPlan::TooLittle if user_set => {
            println!("xtask: {gib:.1} GiB free under target/ (CARGO_INCREMENTAL is yours)");
            Vec::new()
        }
        DiskPlan::NoIncremental => {
            println!(
                "xtask: {gib:.1} GiB free under target/: building without incremental caches \
                 (CARGO_INCREMENTAL=0) to save about 1 GB"
            );
            vec![("CARGO_INCREMENTAL", "0")]
        }
        DiskPlan::TooLittle => {
            eprintln!(
                "xtask: warning: only {gib:.1} GiB free under target/; a cold run writes about \
                 {:.1} GiB (1.5 without incremental caches). Going on without incremental \
                 caches; free space if a stage fails with \"No space left on device\"",
                COLD_RUN_BYTES as f64 / GIB as f64
            );
            vec![("CARGO_INCREMENTAL", "0")]
        }
    }
}

/// `cargo xtask test` options.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Test name filter and libtest flags, forwarded to both `cargo test` runs.
    #[arg(last = true)]
    test_args: Vec<String>,
}

/// What a stage runs, in the workspace root.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Program {
    /// The cargo that runs xtask.
    Cargo,
    /// The machine's `python3` (with setup's [`setup::PYTHON_PACKAGES`]).
    Python3,
}

impl Program {
    fn command(self) -> Command {
        match self {
            Program::Cargo => cargo(),
            Program::Python3 => {
                let mut cmd = Command::new("python3");
                cmd.current_dir(workspace_root());
                cmd
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Program::Cargo => "cargo",
            Program::Python3 => "python3",
        }
    }
}

/// One step of the gate: a name for the summary, the program and its arguments, and extra
/// environment.
#[derive(Debug, PartialEq, Eq)]
struct Stage {
    name: &'static str,
    program: Program,
    args: Vec<String>,
    needs_root: bool,
    env: Vec<(&'static str, &'static str)>,
}

/// The e2e modules whose calls fork through the kernel. The second privileged pass runs them
/// again with the headroom fork path forced, so the path that kernels refusing
/// `bpf_xdp_adjust_meta` use is exercised on every machine (docs/maps.md "Fork path"). The
/// packet-level kernel_packets_* tests need no second pass: they run every path themselves.
const HEADROOM_PASS: &[&str] = &[
    "check_kernel",
    "kernel_relay_fork",
    "kernel_mixed_egress",
    "fallback_fork",
    "fork_",
    "agent_restart",
    "sip_fork_",
    "sip_hold_resume",
    "sip_codec_change",
    "turn_kernel_relay",
    "turn_offload",
    "next_hop_mac_change",
    // Voice bots: sink flows fork by a plain redirect to the fork veth (docs/maps.md); inject
    // mode holds and renumbers relayed flows.
    "bot_endpoint",
    "bot_inject",
    "sip_bot_call",
    "sip_bot_inject",
    // Migrated pins must load under either fork path's programs.
    "upgrade_pinned_layout",
];

/// The gate, in order. `test_args` go after `--` of both test runs.
fn stages(test_args: &[String]) -> Vec<Stage> {
    let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let with_args = |mut base: Vec<String>| {
        base.extend(test_args.iter().cloned());
        base
    };
    // A filter given on the command line applies to the second pass too.
    let mut headroom = words("test -p xdpfork-tests --test e2e -- --test-threads=1");
    if test_args.is_empty() {
        headroom.extend(HEADROOM_PASS.iter().map(|m| m.to_string()));
    } else {
        headroom.extend(test_args.iter().cloned());
    }
    vec![
        Stage {
            name: "fmt",
            program: Program::Cargo,
            args: words("fmt --all -- --check"),
            needs_root: false,
            env: Vec::new(),
        },
        // Default members (no --workspace: that would add the BPF-only fork-ebpf crate).
        Stage {
            name: "clippy",
            program: Program::Cargo,
            args: words("clippy --all-targets -- -D warnings"),
            needs_root: false,
            env: Vec::new(),
        },
        // The root-only tests crate is not a default member: lint it explicitly.
        Stage {
            name: "clippy tests",
            program: Program::Cargo,
            args: words("clippy -p xdpfork-tests --all-targets -- -D warnings"),
            needs_root: false,
            env: Vec::new(),
        },
        // The cargo-fuzz crate is a workspace of its own (docs/fuzzing.md); lint it so it keeps
        // compiling (stable, no sanitizer flags), sharing the workspace's target dir so its
        // dependencies are not checked a second time.
        Stage {
            name: "clippy fuzz",
            program: Program::Cargo,
            args: fuzz_clippy_args(),
            needs_root: false,
            env: Vec::new(),
        },
        Stage {
            name: "unit tests",
            program: Program::Cargo,
            args: with_args(words("test --")),
            needs_root: false,
            env: Vec::new(),
        },
        // The strict speech-server checkers (tests/checkers/README.md) prove on their own that
        // they catch violations; the e2e tests then trust them. Seconds, no filter applies.
        Stage {
            name: "speech checkers",
            program: Program::Python3,
            args: words("-m unittest discover -s tests/checkers -t tests/checkers"),
            needs_root: false,
            env: Vec::new(),
        },
        // The privileged tests run the agents' binaries from the target dir: build them all.
        Stage {
            name: "build",
            program: Program::Cargo,
            args: words("build"),
            needs_root: false,
            env: Vec::new(),
        },
        Stage {
            name: "privileged tests",
            program: Program::Cargo,
            args: with_args(words("test -p xdpfork-tests -- --test-threads=1")),
            needs_root: true,
            env: Vec::new(),
        },
        Stage {
            name: "headroom path",
            program: Program::Cargo,
            args: headroom,
            needs_root: true,
            env: vec![("XDPFORK_FORK_PATH", "headroom")],
        },
    ]
}

/// `cargo clippy` of fuzz/, in the workspace's target dir unless CARGO_TARGET_DIR names one.
fn fuzz_clippy_args() -> Vec<String> {
    let mut args: Vec<String> = [
        "clippy",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--all-targets",
    ]
    .map(String::from)
    .to_vec();
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        args.push("--target-dir".into());
        args.push(
            crate::build::workspace_root()
                .join("target")
                .display()
                .to_string(),
        );
    }
    args.extend(["--", "-D", "warnings"].map(String::from));
    args
}

/// Entry point of `cargo xtask test`.
pub(crate) fn run(args: Args) -> Result<()> {
    setup::ensure_ready()?;
    let env = disk_preflight();
    let stages = stages(&args.test_args);
    let mut done: Vec<(&str, Duration, bool)> = Vec::new();
    let total = stages.len();
    for (i, stage) in stages.iter().enumerate() {
        let env_words: String = stage.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        println!(
            "==> xtask test [{}/{total}] {}: {env_words}{} {}",
            i + 1,
            stage.name,
            stage.program.name(),
            stage.args.join(" ")
        );
        if stage.needs_root && !setup::is_root()? {
            print_summary(&done);
            bail!(
                "stage `{}` needs root (network namespaces, XDP attach, bpffs): run `cargo xtask \
                 test` as root or with sudo -E",
                stage.name
            );
        }
        let started = crate::now();
        let ok = run_stage(
            stage
                .program
                .command()
                .args(&stage.args)
                .envs(env.iter().copied())
                .envs(stage.env.iter().copied()),
        );
        let took = started.elapsed();
        println!(
            "<== {} {} in {}",
            stage.name,
            if ok { "ok" } else { "FAILED" },
            format_duration(took)
        );
        done.push((stage.name, took, ok));
        if !ok {
            print_summary(&done);
            bail!(
                "stage `{}` failed: see {}'s output above",
                stage.name,
                stage.program.name()
            );
        }
    }
    print_summary(&done);
    Ok(())
}

fn run_stage(cmd: &mut Command) -> bool {
    match cmd.status() {
        Ok(status) => status.success(),
        Err(e) => {
            eprintln!("xtask: could not start {:?}: {e}", cmd.get_program());
            false
        }
    }
}

fn print_summary(done: &[(&str, Duration, bool)]) {
    println!("{}", summary_table(done));
}

/// A fixed-width table of the stages that ran, their result and wall time.
fn summary_table(done: &[(&str, Duration, bool)]) -> String {
    let mut out = String::from("xtask test summary:\n");
    out.push_str(&format!(
        "  {:<18} {:<7} {:>9}\n",
        "stage", "result", "wall"
    ));
    for (name, took, ok) in done {
        let result = if *ok { "ok" } else { "FAILED" };
        out.push_str(&format!(
            "  {name:<18} {result:<7} {:>9}\n",
            format_duration(*took)
        ));
    }
    let total: Duration = done.iter().map(|(_, d, _)| *d).sum();
    out.push_str(&format!(
        "  {:<18} {:<7} {:>9}",
        "total",
        "",
        format_duration(total)
    ));
    out
}

/// `12.3s`, or `2m05s` from a minute on.
fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_goes_to_the_test_runs_only() {
        let s = stages(&["turn_refresh".to_string()]);
        let names: Vec<&str> = s.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "fmt",
                "clippy",
                "clippy tests",
                "clippy fuzz",
                "unit tests",
                "speech checkers",
                "build",
                "privileged tests",
                "headroom path"
            ]
        );
        assert_eq!(s[0].args.join(" "), "fmt --all -- --check");
        assert_eq!(s[1].args.join(" "), "clippy --all-targets -- -D warnings");
        assert!(s[3]
            .args
            .join(" ")
            .starts_with("clippy --manifest-path fuzz/Cargo.toml --all-targets"));
        assert_eq!(s[4].args.join(" "), "test -- turn_refresh");
        assert_eq!(s[5].program, Program::Python3);
        assert_eq!(
            s[5].args.join(" "),
            "-m unittest discover -s tests/checkers -t tests/checkers"
        );
        assert!(s.iter().filter(|st| st.program == Program::Python3).count() == 1);
        assert_eq!(s[6].args.join(" "), "build");
        assert_eq!(
            s[7].args.join(" "),
            "test -p xdpfork-tests -- --test-threads=1 turn_refresh"
        );
        assert!(s[7].needs_root && !s[4].needs_root);
        assert_eq!(
            s[8].args.join(" "),
            "test -p xdpfork-tests --test e2e -- --test-threads=1 turn_refresh"
        );
        assert_eq!(s[8].env, [("XDPFORK_FORK_PATH", "headroom")]);
    }

    #[test]
    fn without_a_filter_the_headroom_pass_runs_the_forking_modules() {
        let s = stages(&[]);
        let last = s.last().expect("stages");
        assert_eq!(last.env, [("XDPFORK_FORK_PATH", "headroom")]);
        assert!(last.args.iter().any(|a| a == "kernel_relay_fork"));
        assert!(last.args.iter().any(|a| a == "sip_fork_"));
        assert!(s[..s.len() - 1].iter().all(|st| st.env.is_empty()));
    }

    #[test]
    fn disk_plan_drops_incremental_caches_when_space_is_tight() {
        assert_eq!(disk_plan(50 * GIB), DiskPlan::Normal);
        assert_eq!(disk_plan(ROOMY_BYTES), DiskPlan::Normal);
        assert_eq!(disk_plan(ROOMY_BYTES - 1), DiskPlan::NoIncremental);
        assert_eq!(disk_plan(COLD_RUN_BYTES - GIB), DiskPlan::NoIncremental);
        assert_eq!(disk_plan(COLD_RUN_BYTES - GIB - 1), DiskPlan::TooLittle);
        assert_eq!(disk_plan(0), DiskPlan::TooLittle);
    }

    #[test]
    fn durations_format_seconds_then_minutes() {
        assert_eq!(format_duration(Duration::from_millis(12_345)), "12.3s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn summary_lists_stages_and_total() {
        let table = summary_table(&[
            ("fmt", Duration::from_secs(1), true),
            ("clippy", Duration::from_secs(2), false),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[2].contains("fmt") && lines[2].contains("ok") && lines[2].contains("1.0s"));
        assert!(lines[3].contains("FAILED"));
        assert!(lines[4].contains("total") && lines[4].contains("3.0s"));
    }
}
