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

use crate::build::cargo;
use crate::setup;

/// `cargo xtask test` options.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Test name filter and libtest flags, forwarded to both `cargo test` runs.
    #[arg(last = true)]
    test_args: Vec<String>,
}

/// One step of the gate: a name for the summary and the cargo arguments.
#[derive(Debug, PartialEq, Eq)]
struct Stage {
    name: &'static str,
    args: Vec<String>,
    needs_root: bool,
}

/// The gate, in order. `test_args` go after `--` of both test runs.
fn stages(test_args: &[String]) -> Vec<Stage> {
    let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let with_args = |mut base: Vec<String>| {
        base.extend(test_args.iter().cloned());
        base
    };
    vec![
        Stage {
            name: "fmt",
            args: words("fmt --all -- --check"),
            needs_root: false,
        },
        // Default members (no --workspace: that would add the BPF-only fork-ebpf crate).
        Stage {
            name: "clippy",
            args: words("clippy --all-targets -- -D warnings"),
            needs_root: false,
        },
        // The root-only tests crate is not a default member: lint it explicitly.
        Stage {
            name: "clippy tests",
            args: words("clippy -p xdpfork-tests --all-targets -- -D warnings"),
            needs_root: false,
        },
        Stage {
            name: "unit tests",
            args: with_args(words("test --")),
            needs_root: false,
        },
        // The privileged tests run the agents' binaries from the target dir: build them all.
        Stage {
            name: "build",
            args: words("build"),
            needs_root: false,
        },
        Stage {
            name: "privileged tests",
            args: with_args(words("test -p xdpfork-tests -- --test-threads=1")),
            needs_root: true,
        },
    ]
}

/// Entry point of `cargo xtask test`.
pub(crate) fn run(args: Args) -> Result<()> {
    setup::ensure_ready()?;
    let stages = stages(&args.test_args);
    let mut done: Vec<(&str, Duration, bool)> = Vec::new();
    let total = stages.len();
    for (i, stage) in stages.iter().enumerate() {
        println!(
            "==> xtask test [{}/{total}] {}: cargo {}",
            i + 1,
            stage.name,
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
        let ok = run_stage(cargo().args(&stage.args));
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
            bail!("stage `{}` failed: see cargo's output above", stage.name);
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
    fn filter_goes_to_both_test_runs_only() {
        let s = stages(&["turn_refresh".to_string()]);
        let names: Vec<&str> = s.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "fmt",
                "clippy",
                "clippy tests",
                "unit tests",
                "build",
                "privileged tests"
            ]
        );
        assert_eq!(s[0].args.join(" "), "fmt --all -- --check");
        assert_eq!(s[1].args.join(" "), "clippy --all-targets -- -D warnings");
        assert_eq!(s[3].args.join(" "), "test -- turn_refresh");
        assert_eq!(s[4].args.join(" "), "build");
        assert_eq!(
            s[5].args.join(" "),
            "test -p xdpfork-tests -- --test-threads=1 turn_refresh"
        );
        assert!(s[5].needs_root && !s[3].needs_root);
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
