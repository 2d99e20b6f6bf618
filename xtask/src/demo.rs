//! `cargo xtask demo [OUT_DIR]`: the main job, end to end, on this host.
//!
//! Input: where to leave the WAV files (default `target/demo`) and `--profile` (the speech
//! dialect, default xdpfork). Output: the demo's report (counts
//! at each stage and the WAV paths). Call order: [`setup::ensure_ready`], build the agents, the
//! speech server and the demo driver, check root, then run `xdpfork-demo` (tests/src/bin), which
//! builds its own network namespaces and removes them when it ends.

use anyhow::{bail, Result};

use crate::{build, setup};

/// `cargo xtask demo` options.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Directory for the recorded WAV files.
    #[arg(default_value = "target/demo")]
    out_dir: String,
    /// Speech dialect: xdpfork (default), twilio, audiohook, jambonz or raw; the others stream
    /// to that dialect's strict checker (tests/checkers) and print what it received.
    #[arg(long, default_value = "xdpfork")]
    profile: String,
}

/// Entry point of `cargo xtask demo`.
pub(crate) fn run(args: Args) -> Result<()> {
    setup::ensure_ready()?;
    build::build(false)?;
    setup::run_checked(
        build::cargo().args(["build", "-p", "xdpfork-tests", "--bin", "xdpfork-demo"]),
        "building the demo driver",
        "see the compiler output above",
    )?;
    if !setup::is_root()? {
        bail!(
            "the demo creates network namespaces and attaches XDP programs: run `cargo xtask demo` \
             as root or with sudo -E"
        );
    }
    let root = build::workspace_root();
    let exe = root.join("target/debug/xdpfork-demo");
    setup::run_checked(
        std::process::Command::new(exe)
            .arg(&args.out_dir)
            .args(["--profile", &args.profile])
            .current_dir(&root),
        "the demo",
        "its output above names the stage that failed",
    )
}
