//! `cargo xtask bench relay|turn|fork|calls|dialects|ng|srtp|bot [--reps N] [--secs S] [--rates LIST]
//! [--streams LIST] [--cps LIST] [--calls N] [--hold S] [--concurrent LIST] [--rtp yes|no]
//! [--ng-calls N] [--windows LIST] [--modes LIST] [--spread-ms MS] [--barge-in]
//! [--out DIR]`: the
//! benchmarks of docs/benchmarks.md (needs root; never part of `cargo xtask test`).
//!
//! Input: which benchmark and its sweep options. Output: the report of `xdpfork-bench`
//! (tests/src/bin/xdpfork-bench) on stdout and in `<out>/<bench>.md` plus raw points in
//! `<out>/<bench>.json`. Call order: [`setup::ensure_ready`], install the comparison daemon if
//! it is missing (rtpengine-daemon for `relay` and `ng`; coturn is already in setup's list), build the
//! agents, udp-relay and the driver with the release profile (a debug user-space baseline would
//! be an unfair comparison), check root, run the driver. The driver builds and removes its own
//! network namespaces.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::{build, setup};

/// Which benchmark to run.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum Which {
    /// RTP relaying: XDP relay (with and without forking) vs udp-relay vs rtpengine.
    Relay,
    /// TURN ChannelData relaying: XDP channel offload vs coturn.
    Turn,
    /// Concurrent forked G.711 streams on one fork-agent core (loss, CPU, latency).
    Fork,
    /// SIP calls per second and concurrent calls through sip-agent, media anchored and forked.
    Calls,
    /// Per-frame cost of each speech dialect (twilio, audiohook, jambonz, raw) against ours.
    Dialects,
    /// The rtpengine ng protocol (offer/answer/delete per second) through ng-agent vs rtpengine.
    Ng,
    /// User-space cost per packet of a bridged browser leg (SRTP<->RTP, docs/webrtc.md).
    Srtp,
    /// Voice bots talking back (return audio, endpoint and inject mode): calls per fork-agent
    /// core, bot → caller latency, the caller's stream continuity.
    Bot,
}

/// `cargo xtask bench` options.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The benchmark to run.
    #[arg(value_enum)]
    which: Which,
    /// Repetitions of every point (the report shows medians).
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Seconds of load per point.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Offered rates in packets per second, comma-separated; `max` means unpaced.
    #[arg(long, default_value = "50000,100000,200000,400000,max")]
    rates: String,
    /// `relay` only: calls the offered rate is spread over, comma-separated (each call its own
    /// port pair and SSRC; 2000 calls at 100k pkt/s is 50 pkt/s per call, like G.711).
    #[arg(long, default_value = "2000")]
    relay_calls: String,
    /// Where the report and the raw points go.
    #[arg(long, default_value = "target/bench")]
    out: String,
    /// `fork`: concurrent stream counts, comma-separated (the sweep stops at the first count
    /// with loss); `bot`: concurrent bot calls (e.g. 50,200,500,1000).
    #[arg(long, default_value = "500,1000,2000,5000")]
    streams: String,
    /// `calls` only: calls per second, comma-separated (the sweep stops at the first rate with
    /// a failed call).
    #[arg(long, default_value = "5,10,20,50,100,200")]
    cps: String,
    /// `calls` only: calls per CPS point.
    #[arg(long, default_value_t = 200)]
    calls: u32,
    /// `calls` only: seconds each call stays up after its fork request.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// `calls` only: calls held up at once, comma-separated.
    #[arg(long, default_value = "100,250,500")]
    concurrent: String,
    /// `calls` only: real RTP per call (sipp rtp_stream, echoed by the callee).
    #[arg(long, default_value = "yes", value_parser = ["yes", "no"])]
    rtp: String,
    /// fork-agent's fork paths (docs/maps.md "Fork path"), comma-separated: the benchmark runs
    /// once per path, each with its own baselines, into `<out>/<path>` when there are several.
    #[arg(long, default_value = "auto")]
    fork_paths: String,
    /// `fork` only: record `perf` of fork-agent at 1,000 streams (added to the sweep) and put a
    /// summary of where its cycles go into the report.
    #[arg(long)]
    profile: bool,
    /// `fork` only: also build fork-agent at this git revision (release, from `git archive`)
    /// and run the same sweep with it first, for before/after in one run.
    #[arg(long)]
    baseline: Option<String>,
    /// `fork` only: after the sweep, an overload point: the most streams held with fork-agent
    /// capped at half the CPU they took (relayed audio, memory bound, drops and alarms).
    #[arg(long)]
    overload: bool,
    /// `ng` only: calls set up and deleted per point (at most 2000).
    #[arg(long, default_value_t = 2000)]
    ng_calls: u32,
    /// `ng` only: calls in flight, comma-separated (one point per value).
    #[arg(long, default_value = "1,16,64")]
    windows: String,
    /// `bot` only: return-audio modes, comma-separated: endpoint (the call ends at the bot; the
    /// baseline), inject (the bot talks into a kernel-relayed call). Each call count runs every
    /// mode in turn.
    #[arg(long, default_value = "endpoint,inject")]
    modes: String,
    /// `bot` only: the bots' first utterances are spread over this many ms, at most the talk
    /// period of 300 ms (the default: calls talk independently); 20 has every bot talk in the
    /// same packet time, the worst burst of take-overs.
    #[arg(long, default_value_t = 300)]
    spread_ms: u64,
    /// `bot` only: every utterance is cleared 40 ms into it and followed at once by another
    /// (barge-in and re-prompt: a hand-back and a take-over back to back).
    #[arg(long)]
    barge_in: bool,
}

/// Streams of the `--profile` point (the issue asks for a profile at 1,000 streams).
const PROFILE_STREAMS: &str = "1000";

/// Debian packages a benchmark needs beyond `cargo xtask setup`'s list, with their binary.
fn extra_packages(which: Which) -> &'static [(&'static str, &'static str)] {
    match which {
        // rtpengine's user-space daemon is the comparison of the relay benchmark only, so it is
        // installed here, lazily, and not by setup.
        Which::Relay | Which::Ng => &[("rtpengine-daemon", "/usr/bin/rtpengine")],
        Which::Turn => &[("coturn", "/usr/bin/turnserver")],
        // perf for `bench fork --profile`.
        Which::Fork => &[("linux-perf", "/usr/bin/perf")],
        Which::Dialects | Which::Srtp | Which::Bot => &[],
        Which::Calls => &[("sip-tester", "/usr/bin/sipp")],
    }
}

fn ensure_packages(which: Which) -> Result<()> {
    let missing: Vec<&str> = extra_packages(which)
        .iter()
        .filter(|(_, bin)| !std::path::Path::new(bin).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("bench: installing {}", missing.join(" "));
    setup::run_checked(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get update",
        "check network access and /etc/apt/sources.list",
    )?;
    setup::run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
        "see apt's output above",
    )?;
    // Debian enables the packaged daemon; the benchmark starts its own copy inside a network
    // namespace and the system one is not wanted. Best effort: without systemd there is none.
    for unit in ["rtpengine-daemon", "coturn"] {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", unit])
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status();
    }
    Ok(())
}

/// Where cargo puts release binaries (honours CARGO_TARGET_DIR like cargo does).
fn release_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| build::workspace_root().join("target"));
    let target = if target.is_relative() {
        build::workspace_root().join(target)
    } else {
        target
    };
    target.join("release")
}

/// Entry point of `cargo xtask bench`.
pub(crate) fn run(args: Args) -> Result<()> {
    setup::ensure_ready()?;
    if !setup::is_root()? {
        bail!(
            "the benchmarks create network namespaces, attach XDP programs and install packages: \
             run `cargo xtask bench` as root or with sudo -E"
        );
    }
    ensure_packages(args.which)?;
    // Before the current build, which must be the last to write target/release/fork-agent.
    let mut agents = Vec::new();
    if let (Which::Fork, Some(rev)) = (args.which, &args.baseline) {
        agents.push(format!("{rev}={}", build_baseline(rev)?.display()));
        agents.push(format!(
            "current={}",
            release_dir().join("fork-agent").display()
        ));
    }
    setup::run_checked(
        build::cargo().args([
            "build",
            "--release",
            "-p",
            "fork-agent",
            "-p",
            "speech-server",
            "-p",
            "udp-relay",
            "-p",
            "sip-agent",
            "-p",
            "ng-agent",
        ]),
        "building the agents and udp-relay (release)",
        "see the compiler output above",
    )?;
    setup::run_checked(
        build::cargo().args([
            "build",
            "--release",
            "-p",
            "xdpfork-tests",
            "--bin",
            "xdpfork-bench",
        ]),
        "building the benchmark driver (release)",
        "see the compiler output above",
    )?;
    let which = match args.which {
        Which::Relay => "relay",
        Which::Turn => "turn",
        Which::Fork => "fork",
        Which::Bot => "bot",
        Which::Calls => "calls",
        Which::Dialects => "dialects",
        Which::Ng => "ng",
        Which::Srtp => "srtp",
    };
    let paths: Vec<&str> = args.fork_paths.split(',').map(str::trim).collect();
    if let Some(bad) = paths
        .iter()
        .find(|p| !["auto", "metadata", "headroom"].contains(p))
    {
        bail!("--fork-paths: `{bad}` is not auto, metadata or headroom");
    }
    for path in &paths {
        let out = if paths.len() > 1 {
            format!("{}/{path}", args.out)
        } else {
            args.out.clone()
        };
        println!("bench: {which} with fork path {path}");
        run_one(&args, which, path, &out, &agents)?;
    }
    Ok(())
}

/// Builds fork-agent at `rev` (release) from a `git archive` of it under target/bench-baseline
/// and returns the binary, copied to target/bench-baseline/<rev>/fork-agent. The build shares
/// our target directory: registry crates are reused and only the workspace crates of `rev`
/// compile (their own artifacts: another source path is another package id). It overwrites
/// target/release/fork-agent, so it runs before the current build, which is then forced to
/// link again.
fn build_baseline(rev: &str) -> Result<PathBuf> {
    let root = build::workspace_root();
    let base = root.join("target/bench-baseline");
    let src = base.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    setup::run_checked(
        Command::new("sh").arg("-c").arg(format!(
            "git -C '{}' archive --format=tar '{rev}' | tar -x -C '{}'",
            root.display(),
            src.display()
        )),
        "extracting the baseline revision (git archive)",
        "is the revision known to this repository?",
    )?;
    let target = release_dir()
        .parent()
        .map(PathBuf::from)
        .context("the release directory has no parent")?;
    setup::run_checked(
        build::cargo()
            .args(["build", "--release", "-p", "fork-agent"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&src),
        "building the baseline fork-agent (release)",
        "see the compiler output above",
    )?;
    let dir = base.join(rev.replace('/', "_"));
    std::fs::create_dir_all(&dir)?;
    // Named fork-agent like the current one: the driver finds the process by its name.
    let bin = dir.join("fork-agent");
    let built = release_dir().join("fork-agent");
    std::fs::copy(&built, &bin).context("copying the baseline fork-agent")?;
    // The current build must put its own binary back: without this, a current build that
    // cargo finds fresh could leave the baseline's in place.
    std::fs::remove_file(&built)?;
    setup::run_checked(
        Command::new("touch").arg(root.join("fork-agent/src/main.rs")),
        "touching fork-agent/src/main.rs",
        "check the file's permissions",
    )?;
    let _ = std::fs::remove_dir_all(&src);
    Ok(bin)
}

fn run_one(args: &Args, which: &str, fork_path: &str, out: &str, agents: &[String]) -> Result<()> {
    setup::run_checked(
        Command::new(release_dir().join("xdpfork-bench"))
            .env("XDPFORK_FORK_PATH", fork_path)
            .args([which, "--reps", &args.reps.to_string()])
            .args(["--secs", &args.secs.to_string(), "--rates", &args.rates])
            .args(["--out", out])
            .args(match args.which {
                Which::Relay => vec!["--relay-calls", args.relay_calls.as_str()],
                _ => vec![],
            })
            .args(match args.which {
                Which::Calls => vec![
                    "--calls".to_owned(),
                    args.calls.to_string(),
                    "--hold".to_owned(),
                    args.hold.to_string(),
                ],
                _ => vec![],
            })
            .args(match args.which {
                Which::Fork => {
                    let mut v = vec!["--streams".to_owned(), args.streams.clone()];
                    if args.profile {
                        v.extend(["--profile-at".to_owned(), PROFILE_STREAMS.to_owned()]);
                    }
                    if args.overload {
                        v.push("--overload".to_owned());
                    }
                    for a in agents {
                        v.extend(["--agent".to_owned(), a.clone()]);
                    }
                    v
                }
                Which::Bot => {
                    let mut v = vec![
                        "--streams".to_owned(),
                        args.streams.clone(),
                        "--modes".to_owned(),
                        args.modes.clone(),
                        "--spread-ms".to_owned(),
                        args.spread_ms.to_string(),
                    ];
                    if args.barge_in {
                        v.push("--barge-in".to_owned());
                    }
                    v
                }
                _ => vec![],
            })
            .args(match args.which {
                Which::Ng => vec![
                    "--ng-calls".to_owned(),
                    args.ng_calls.to_string(),
                    "--windows".to_owned(),
                    args.windows.clone(),
                ],
                _ => vec![],
            })
            .args(match args.which {
                Which::Calls => vec![
                    "--cps",
                    args.cps.as_str(),
                    "--concurrent",
                    args.concurrent.as_str(),
                    "--rtp",
                    args.rtp.as_str(),
                ],
                _ => vec![],
            })
            .current_dir(build::workspace_root()),
        "the benchmark",
        "its output above names the stage that failed",
    )
}
