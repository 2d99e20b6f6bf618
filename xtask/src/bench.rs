//! `cargo xtask bench relay|turn|fork|calls|dialects|bot [--reps N] [--secs S] [--rates LIST] [--streams LIST]
//! [--cps LIST] [--calls N] [--hold S] [--concurrent LIST] [--rtp yes|no] [--out DIR]`: the
//! benchmarks of docs/benchmarks.md (needs root; never part of `cargo xtask test`).
//!
//! Input: which benchmark and its sweep options. Output: the report of `xdpfork-bench`
//! (tests/src/bin/xdpfork-bench) on stdout and in `<out>/<bench>.md` plus raw points in
//! `<out>/<bench>.json`. Call order: [`setup::ensure_ready`], install the comparison daemon if
//! it is missing (rtpengine-daemon for `relay`; coturn is already in setup's list), build the
//! agents, udp-relay and the driver with the release profile (a debug user-space baseline would
//! be an unfair comparison), check root, run the driver. The driver builds and removes its own
//! network namespaces.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Result};

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
    /// Voice bots talking back (return audio): calls per fork-agent core, bot → caller latency.
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
}

/// Debian packages a benchmark needs beyond `cargo xtask setup`'s list, with their binary.
fn extra_packages(which: Which) -> &'static [(&'static str, &'static str)] {
    match which {
        // rtpengine's user-space daemon is the comparison of the relay benchmark only, so it is
        // installed here, lazily, and not by setup.
        Which::Relay => &[("rtpengine-daemon", "/usr/bin/rtpengine")],
        Which::Turn => &[("coturn", "/usr/bin/turnserver")],
        Which::Fork | Which::Dialects | Which::Bot => &[],
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
        run_one(&args, which, path, &out)?;
    }
    Ok(())
}

fn run_one(args: &Args, which: &str, fork_path: &str, out: &str) -> Result<()> {
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
                Which::Fork | Which::Bot => vec!["--streams", args.streams.as_str()],
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
