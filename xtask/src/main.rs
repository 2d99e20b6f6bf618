//! xtask: the developer and CI entry point of xdpfork (`cargo xtask <command>`, alias in
//! .cargo/config.toml). One module per command; each exposes `Args` (clap) and `run(Args)`.
//! To add a command: a module, one `Command` variant and one match arm below.
//!
//! Every command starts with `setup::ensure_ready()`, which probes the toolchain, the bpf-linker
//! cache, the Debian packages and bpffs in well under a second and runs the full setup only when
//! something is missing. See docs/toolchain.md for why each piece is there.

mod bench;
mod build;
mod demo;
mod fuzz;
mod install;
mod package;
mod setup;
mod test;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build and test xdpfork"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install what building and testing need: nightly + rust-src, bpf-linker, Debian packages, bpffs.
    Setup(setup::Args),
    /// Set up if needed, then `cargo build` the workspace (embeds a fresh eBPF object).
    Build(build::Args),
    /// Set up if needed, then fmt, clippy, unit tests and the privileged integration tests.
    Test(test::Args),
    /// Run the main job: one call relayed in the kernel and forked to a speech server (needs root).
    Demo(demo::Args),
    /// Build release binaries and install them with configs and systemd units (see docs/operations.md).
    Install(install::Args),
    /// Build release binaries and a Debian package of what `install` puts in place (target/debian).
    Package(package::Args),
    /// Remove what `install` put there; without --destdir also stop the services and detach XDP.
    Uninstall(install::UninstallArgs),
    /// Benchmark side by side (needs root): `relay` (XDP vs udp-relay vs rtpengine), `turn`, `fork`, `calls`, `dialects`, `ng` (ng-agent vs rtpengine).
    Bench(bench::Args),
    /// Fuzz one parser with cargo-fuzz/libFuzzer for --secs seconds, or --list the targets (not in CI).
    Fuzz(fuzz::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup(args) => setup::run(args),
        Command::Build(args) => build::run(args),
        Command::Test(args) => test::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Install(args) => install::run(args),
        Command::Uninstall(args) => install::run_uninstall(args),
        Command::Package(args) => package::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Fuzz(args) => fuzz::run(args),
    };
    // Print the context chain ourselves: anyhow's `Termination` adds a backtrace whenever
    // RUST_BACKTRACE is set (it is on CI), which buries the one line telling the operator what to do.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The clock for step and stage timings. clippy.toml keeps clock reads out of sans-IO cores and
/// allows them in main.rs; xtask is a shell, so this is its one place to read the time.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> Instant {
    Instant::now()
}
