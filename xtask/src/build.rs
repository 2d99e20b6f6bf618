//! `cargo xtask build [--release]`: setup if needed, then build the default workspace members.
//!
//! Input: the release flag. Output: the binaries in the cargo target dir (fork-agent's build.rs
//! compiles the eBPF object with nightly and embeds it). Call order: [`setup::ensure_ready`], then
//! `cargo build`. Other commands (demo, bench, install) call [`build`] to get fresh binaries.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::setup;

/// `cargo xtask build` options.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Build with the release profile (BTF and symbols are kept, see the root Cargo.toml).
    #[arg(long)]
    release: bool,
}

/// Entry point of `cargo xtask build`.
pub(crate) fn run(args: Args) -> Result<()> {
    setup::ensure_ready()?;
    build(args.release)
}

/// `cargo build [--release]` of the default members (fork-ebpf and the root-only tests crate are
/// left out by the root Cargo.toml; `--workspace` would pull them in, so it is not passed).
pub(crate) fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    setup::run_checked(
        &mut cmd,
        "cargo build",
        "see the compiler output above; a missing eBPF toolchain is fixed by `cargo xtask setup`",
    )
}

/// The repository root: xtask lives in `<root>/xtask`.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// The cargo that runs xtask (cargo sets `CARGO` for `cargo run`), in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}
