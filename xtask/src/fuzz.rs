//! `cargo xtask fuzz TARGET [--secs N] [-- LIBFUZZER_FLAGS]` and `cargo xtask fuzz --list`:
//! coverage-guided fuzzing of the parsers with cargo-fuzz (libFuzzer). Never part of
//! `cargo xtask test`; method and results in docs/fuzzing.md.
//!
//! Inputs: the fuzz crate in `fuzz/` (its own workspace, one `[[bin]]` per target), the seed
//! corpus `fuzz/corpus/<target>/` (tracked, read only), the `nightly` toolchain.
//! Outputs: new inputs libFuzzer finds in `fuzz/work/corpus/<target>/`, crash inputs in
//! `fuzz/artifacts/<target>/` (both git-ignored), libFuzzer's log in `fuzz/work/logs/<target>.log`,
//! and one summary line (executions, exec/s, `cov:`, `ft:`, corpus, crash) on stdout.
//!
//! Call order: [`setup::ensure_ready`] (fork-agent, which one target links, builds the eBPF
//! object with nightly and bpf-linker), then [`ensure_cargo_fuzz`] (installs cargo-fuzz
//! [`CARGO_FUZZ_VERSION`] from crates.io when `cargo +nightly fuzz` does not run), then
//! `cargo +nightly fuzz run` with `-max_total_time`. One libFuzzer process, one core.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{build, setup};

/// cargo-fuzz release installed when missing (`cargo install cargo-fuzz --locked`).
pub(crate) const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// `cargo xtask fuzz` options.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Fuzz target to run (one per parser; `--list` shows them).
    #[arg(required_unless_present = "list")]
    target: Option<String>,
    /// List the fuzz targets and exit.
    #[arg(long)]
    list: bool,
    /// Seconds of fuzzing (libFuzzer `-max_total_time`).
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Extra libFuzzer flags after `--`, e.g. `-- -max_len=8192 -dict=my.dict`.
    #[arg(last = true)]
    libfuzzer: Vec<String>,
}

/// Entry point of `cargo xtask fuzz`.
pub(crate) fn run(args: Args) -> Result<()> {
    let dir = fuzz_dir();
    let manifest = dir.join("Cargo.toml");
    let text = fs::read_to_string(&manifest)
        .with_context(|| format!("read {}: is this an xdpfork checkout?", manifest.display()))?;
    let targets = bin_names(&text);
    if args.list {
        for t in &targets {
            println!("{t}");
        }
        return Ok(());
    }
    let Some(target) = args.target else {
        bail!("name a fuzz target (`cargo xtask fuzz --list` shows them)");
    };
    if !targets.contains(&target) {
        bail!(
            "no fuzz target `{target}`; the targets are: {}",
            targets.join(", ")
        );
    }
    if args.secs == 0 {
        bail!("--secs must be at least 1 (libFuzzer reads 0 as \"no limit\")");
    }
    let seeds = dir.join("corpus").join(&target);
    if !seeds.is_dir() {
        bail!(
            "seed corpus {} is missing: regenerate it with `cargo +nightly run --example \
             make_seeds` in fuzz/",
            seeds.display()
        );
    }
    setup::ensure_ready()?;
    ensure_cargo_fuzz()?;

    let work = dir.join("work");
    let corpus = work.join("corpus").join(&target);
    let logs = work.join("logs");
    fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let log_path = logs.join(format!("{target}.log"));
    let mut log =
        fs::File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;

    println!(
        "fuzz: {target} for {} s (seeds {}, corpus {}, log {})",
        args.secs,
        seeds.display(),
        corpus.display(),
        log_path.display()
    );
    let mut cmd = nightly_cargo();
    cmd.current_dir(&dir)
        .args(["fuzz", "run", &target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", args.secs))
        // A slow input is a finding too (libFuzzer's default is 1200 s per input).
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .args(&args.libfuzzer)
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("start `cargo +nightly fuzz run`")?;
    let stderr = child.stderr.take().context("libFuzzer's stderr")?;
    let mut summary = Summary::default();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("read libFuzzer output")?;
        eprintln!("{line}");
        writeln!(log, "{line}").with_context(|| format!("write {}", log_path.display()))?;
        summary.feed(&line);
    }
    let status = child.wait().context("wait for cargo fuzz")?;
    println!("fuzz: {target}: {}", summary.describe());
    if !status.success() {
        match &summary.artifact {
            Some(a) => bail!(
                "{target} found a failing input: {a} (reproduce: cd fuzz && cargo +nightly fuzz \
                 run {target} {a}; full log {})",
                log_path.display()
            ),
            None => bail!(
                "cargo fuzz run {target} failed ({status}); see the output above or {}",
                log_path.display()
            ),
        }
    }
    Ok(())
}

fn fuzz_dir() -> PathBuf {
    build::workspace_root().join("fuzz")
}

/// `cargo +nightly` through rustup, without what `cargo run` set for xtask itself: its
/// toolchain choice, and the `CARGO_PKG_*`/`CARGO_MANIFEST_*` variables, which build scripts
/// (ring's, for one) watch, so leaving them in would rebuild the fuzz crate's dependencies
/// whenever the fuzzer is started another way.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{}", setup::NIGHTLY));
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if is_xtask_run_var(k) {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Variables `cargo run` (and rustup) set for the xtask process.
fn is_xtask_run_var(key: &str) -> bool {
    matches!(
        key,
        "RUSTUP_TOOLCHAIN"
            | "CARGO"
            | "CARGO_CRATE_NAME"
            | "CARGO_BIN_NAME"
            | "CARGO_PRIMARY_PACKAGE"
    ) || key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_MANIFEST_")
}

/// Installs cargo-fuzz when `cargo +nightly fuzz --version` does not run.
fn ensure_cargo_fuzz() -> Result<()> {
    if let Some(v) = cargo_fuzz_version() {
        println!("fuzz: {v} ... ok");
        return Ok(());
    }
    println!("fuzz: cargo-fuzz ... missing, installing {CARGO_FUZZ_VERSION} (about 2 min)");
    setup::run_checked(
        Command::new("cargo")
            .args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
            ])
            // Build in cargo's throwaway temp dir, not in a target dir the caller exported.
            .env_remove("CARGO_TARGET_DIR"),
        "install cargo-fuzz",
        "see the compiler output above; cargo-fuzz goes to ~/.cargo/bin, which must be on PATH",
    )?;
    match cargo_fuzz_version() {
        Some(v) => {
            println!("fuzz: {v} ... ok (installed)");
            Ok(())
        }
        None => bail!(
            "cargo-fuzz was installed but `cargo +{} fuzz --version` does not run: is \
             ~/.cargo/bin on PATH?",
            setup::NIGHTLY
        ),
    }
}

/// `cargo-fuzz X.Y.Z` when cargo-fuzz runs.
fn cargo_fuzz_version() -> Option<String> {
    let out = nightly_cargo()
        .args(["fuzz", "--version"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let v = text.trim();
    (out.status.success() && v.starts_with("cargo-fuzz")).then(|| v.to_string())
}

/// Names of the `[[bin]]` targets in the fuzz crate's manifest, in order.
fn bin_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
            continue;
        }
        if !in_bin {
            continue;
        }
        if let Some(v) = line
            .strip_prefix("name")
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('='))
        {
            names.push(v.trim().trim_matches('"').to_string());
        }
    }
    names
}

/// What libFuzzer reported, read from its stderr.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    /// Executions (`#N` of the last status line, or `stat::number_of_executed_units`).
    runs: Option<u64>,
    /// `stat::average_exec_per_sec`, else `exec/s:` of the last status line.
    exec_per_sec: Option<u64>,
    /// `cov:` of the last status line: covered edges/PCs.
    cov: Option<u64>,
    /// `ft:` of the last status line: features (edges with hit counts, compares, ...).
    ft: Option<u64>,
    /// `corp:` of the last status line, e.g. `345/28Kb` (units in memory / their size).
    corpus: Option<String>,
    /// `stat::new_units_added`.
    new_units: Option<u64>,
    /// `stat::peak_rss_mb`.
    peak_rss_mb: Option<u64>,
    /// `Test unit written to PATH`: the failing input.
    artifact: Option<String>,
}

impl Summary {
    fn feed(&mut self, line: &str) {
        if let Some(path) = line.split("Test unit written to ").nth(1) {
            self.artifact = Some(path.trim().to_string());
            return;
        }
        if let Some((key, value)) = line.strip_prefix("stat::").and_then(|s| s.split_once(':')) {
            let n = value.trim().parse().ok();
            match key {
                "number_of_executed_units" => self.runs = n.or(self.runs),
                "average_exec_per_sec" => self.exec_per_sec = n.or(self.exec_per_sec),
                "new_units_added" => self.new_units = n,
                "peak_rss_mb" => self.peak_rss_mb = n,
                _ => {}
            }
            return;
        }
        // Status lines: `#1048576\tpulse  cov: 1234 ft: 5678 corp: 345/28Kb ... exec/s: 2057 ...`
        let Some(rest) = line.strip_prefix('#') else {
            return;
        };
        let mut words = rest.split_whitespace();
        let Some(Ok(runs)) = words.next().map(str::parse::<u64>) else {
            return;
        };
        let words: Vec<&str> = words.collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        let Some(cov) = after("cov:").and_then(|v| v.parse().ok()) else {
            return;
        };
        self.runs = Some(runs);
        self.cov = Some(cov);
        self.ft = after("ft:").and_then(|v| v.parse().ok());
        self.corpus = after("corp:").map(str::to_string);
        if let Some(e) = after("exec/s:").and_then(|v| v.parse().ok()) {
            self.exec_per_sec = Some(e);
        }
    }

    fn describe(&self) -> String {
        let n = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
        format!(
            "{} runs, {} exec/s, cov {}, ft {}, corpus {} (units/size), {} new units, peak RSS {} MB, {}",
            n(self.runs),
            n(self.exec_per_sec),
            n(self.cov),
            n(self.ft),
            self.corpus.as_deref().unwrap_or("?"),
            n(self.new_units),
            n(self.peak_rss_mb),
            match &self.artifact {
                Some(a) => format!("FAILING INPUT {a}"),
                None => "no crash".to_string(),
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_names_come_from_bin_tables_only() {
        let manifest = "[package]\nname = \"xdpfork-fuzz\"\n\n[[bin]]\nname = \"sip_message\"\n\
                        path = \"x.rs\"\n\n[[bin]]\nname=\"stun\"\n[profile.release]\nname = \"no\"\n";
        assert_eq!(bin_names(manifest), vec!["sip_message", "stun"]);
    }

    #[test]
    fn summary_reads_status_stats_and_artifact() {
        let mut s = Summary::default();
        for line in [
            "INFO: Seed: 1234",
            "#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb",
            "#1048576\tpulse  cov: 1234 ft: 5678 corp: 345/28Kb lim: 4096 exec/s: 2057 rss: 500Mb",
            "#1234567\tDONE   cov: 1240 ft: 5700 corp: 350/29Kb lim: 4096 exec/s: 2050 rss: 510Mb",
            "stat::number_of_executed_units: 1234567",
            "stat::average_exec_per_sec:     2057",
            "stat::new_units_added:          349",
            "stat::peak_rss_mb:              512",
        ] {
            s.feed(line);
        }
        assert_eq!(s.runs, Some(1_234_567));
        assert_eq!((s.cov, s.ft), (Some(1240), Some(5700)));
        assert_eq!(s.corpus.as_deref(), Some("350/29Kb"));
        assert_eq!(s.exec_per_sec, Some(2057));
        assert_eq!((s.new_units, s.peak_rss_mb), (Some(349), Some(512)));
        assert!(s.describe().ends_with("no crash"), "{}", s.describe());

        s.feed("artifact_prefix='x/'; Test unit written to fuzz/artifacts/stun/crash-abc");
        assert_eq!(s.artifact.as_deref(), Some("fuzz/artifacts/stun/crash-abc"));
        assert!(s
            .describe()
            .contains("FAILING INPUT fuzz/artifacts/stun/crash-abc"));
    }

    #[test]
    fn only_cargo_run_variables_are_scrubbed() {
        for k in [
            "CARGO",
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "RUSTUP_TOOLCHAIN",
        ] {
            assert!(is_xtask_run_var(k), "{k}");
        }
        for k in ["CARGO_HOME", "CARGO_TARGET_DIR", "RUSTFLAGS", "PATH"] {
            assert!(!is_xtask_run_var(k), "{k}");
        }
    }

    #[test]
    fn status_lines_without_coverage_are_ignored() {
        let mut s = Summary::default();
        s.feed("#42 some other line");
        s.feed("#x\tpulse cov: 1");
        assert_eq!(s, Summary::default());
    }
}
