//! `cargo xtask setup`: takes a Debian 12 host from fresh to able to build and test xdpfork.
//!
//! Inputs: rustup (the `nightly` toolchain), the user cache `${XDG_CACHE_HOME:-$HOME/.cache}/xdpfork`,
//! dpkg's database, `/proc/mounts` and `/proc/self/status` (are we root?).
//! Outputs: nightly with `rust-src` (for `-Z build-std=core`), a bpf-linker built against the nightly's
//! own libLLVM (cache layout below), the Debian packages in [`DEBIAN_PACKAGES`], the PyPI packages in
//! [`PYTHON_PACKAGES`] in the machine's `python3`, the services in [`SERVICES_OFF`] stopped, and a
//! bpf filesystem on `/sys/fs/bpf`.
//!
//! Call order: every xtask command first calls [`ensure_ready`]. It runs the fast probe [`missing`]
//! (a few process spawns, well under a second) and only falls through to the full [`setup`] when
//! something is missing. Every step of [`setup`] checks before it acts and prints one line, so a
//! second run only probes.
//!
//! Cache layout (see docs/toolchain.md; fork-agent/build.rs reads the same paths):
//! ```text
//! $CACHE/llvm/lib/libLLVM.so            -> <nightly sysroot>/lib/libLLVM.so.<ver>-rust-<ver>-nightly
//! $CACHE/llvm/lib/libLLVM.so.<ver>-...  -> same file (the soname, so bpf-linker runs outside rustup)
//! $CACHE/bpf-linker/bin/bpf-linker      (cargo install --root $CACHE/bpf-linker; RUNPATH = $CACHE/llvm/lib)
//! $CACHE/pip/                           (pip's download and wheel cache for PYTHON_PACKAGES)
//! ```

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Debian packages the project needs at build, test or demo time, with the reason for each.
/// Add a line here when your part needs another tool; `setup` installs whatever is missing.
pub(crate) const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    (
        "iputils-ping",
        "`ping`: ICMP through the XDP program in the passthrough tests",
    ),
    (
        "iproute2",
        "`ip`: network namespaces, veth pairs and XDP attach state in the tests",
    ),
    (
        "bpftool",
        "inspect loaded programs and dump pinned maps with BTF field names",
    ),
    (
        "sip-tester",
        "`sipp`: drives SIP calls through sip-agent in the tests and the demo",
    ),
    (
        "espeak-ng",
        "synthesises the spoken audio that the demo sends as RTP",
    ),
    (
        "sox",
        "resamples audio to 8 kHz G.711 and back for the demo",
    ),
    (
        "ethtool",
        "NIC queue counts and offloads that XDP/AF_XDP depend on",
    ),
    (
        "tcpdump",
        "packet captures when a test or the demo misbehaves",
    ),
    (
        "coturn",
        "reference TURN server and `turnutils_*` clients for interop tests",
    ),
    (
        "tinyproxy",
        "HTTP CONNECT proxy for the WebSocket-through-proxy tests",
    ),
    (
        "dpkg-dev",
        "`dpkg-shlibdeps` computes the .deb's Depends in `cargo xtask package`",
    ),
    (
        "jq",
        "reads sip-agent's call journal in scripts/xdpfork-try-fork",
    ),
    (
        "libssl-dev",
        "OpenSSL headers for webrtc-bridge's DTLS (the openssl crate links the system libssl)",
    ),
    (
        "pkg-config",
        "lets openssl-sys find the system libssl",
    ),
    (
        "kamailio",
        "SIP proxy whose `rtpengine` module (shipped in this package) drives ng-agent in the ng_* tests",
    ),
    (
        "kamailio-websocket-modules",
        "Kamailio's `websocket` module: browsers signal SIP over WebSocket in the webrtc_* tests",
    ),
    ("procps", "`ps`, `sysctl`, `pkill` used by test harnesses"),
    ("psmisc", "`fuser`: find who holds a port the tests need"),
    (
        "kmod",
        "`modprobe` for veth and other modules the tests load",
    ),
    (
        "systemd",
        "`systemd-analyze` checks the units; /lib/systemd/systemd runs them in the systemd_boot test",
    ),
    (
        "util-linux",
        "`unshare`, `nsenter`: the namespaces systemd boots in (systemd_boot test)",
    ),
    (
        "curl",
        "scrapes /metrics in the ops_* and systemd_boot tests",
    ),
];

/// PyPI packages (name, pinned version, reason) that the speech-server checkers in
/// `tests/checkers/` need in the machine's `python3`. Add a line when a checker needs another.
pub(crate) const PYTHON_PACKAGES: &[(&str, &str, &str)] = &[
    (
        "websockets",
        "17.4",
        "the WebSocket server of every speech-server checker",
    ),
    (
        "numpy",
        "2.4.6",
        "alignment search and correlation in tests/checkers/compare.py",
    ),
    (
        "aiortc",
        "1.16.0",
        "the browser stand-in of the webrtc_* tests (tests/webrtc/browser.py): ICE, DTLS-SRTP",
    ),
];

/// bpf-linker release built from crates.io; 0.13.0 has features `llvm-21`, `llvm-22`, `llvm-23`.
pub(crate) const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors bpf-linker [`BPF_LINKER_VERSION`] can be built against (its `llvm-N` features).
const BPF_LINKER_LLVM_MAJORS: &[u32] = &[21, 22, 23];
/// Toolchain used for the eBPF object (`-Z build-std` needs nightly).
pub(crate) const NIGHTLY: &str = "nightly";
/// Where the bpf filesystem must be mounted for pinned maps.
const BPFFS: &str = "/sys/fs/bpf";

/// `cargo xtask setup` options.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Only report what is missing (exit status 1 if anything is); change nothing.
    #[arg(long)]
    check: bool,
}

/// Entry point of `cargo xtask setup`.
pub(crate) fn run(args: Args) -> Result<()> {
    if args.check {
        let missing = missing()?;
        if missing.is_empty() {
            println!("setup: ready");
            return Ok(());
        }
        for m in &missing {
            println!("setup: missing: {m}");
        }
        bail!(
            "{} setup item(s) missing: run `cargo xtask setup`",
            missing.len()
        );
    }
    setup()
}

/// One thing the fast probe found missing, with how to get it (its `Display`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Missing {
    /// `rustc +nightly` does not run.
    Nightly,
    /// The nightly toolchain has no `rust-src` component.
    RustSrc,
    /// The cached bpf-linker is absent or does not run (e.g. nightly's libLLVM changed).
    BpfLinker(PathBuf),
    /// Debian packages that dpkg does not report as installed.
    Packages(Vec<&'static str>),
    /// [`PYTHON_PACKAGES`] that `python3` lacks or has at another version (`name==version`).
    PythonPackages(Vec<String>),
    /// `/sys/fs/bpf` is not a bpf filesystem.
    Bpffs,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Nightly => write!(
                f,
                "the `{NIGHTLY}` toolchain (rustup toolchain install {NIGHTLY} --profile minimal \
                 --component rust-src)"
            ),
            Missing::RustSrc => write!(
                f,
                "rust-src for `{NIGHTLY}` (rustup component add rust-src --toolchain {NIGHTLY})"
            ),
            Missing::BpfLinker(path) => write!(
                f,
                "bpf-linker {BPF_LINKER_VERSION} at {} (built by `cargo xtask setup`)",
                path.display()
            ),
            Missing::Packages(p) => write!(
                f,
                "Debian packages {} (apt-get install {})",
                p.join(" "),
                p.join(" ")
            ),
            Missing::PythonPackages(p) => write!(
                f,
                "PyPI packages {} (python3 -m pip install {})",
                p.join(" "),
                p.join(" ")
            ),
            Missing::Bpffs => write!(f, "bpffs on {BPFFS} (mount -t bpf bpf {BPFFS})"),
        }
    }
}

/// Runs the full setup only when the fast probe finds something missing.
pub(crate) fn ensure_ready() -> Result<()> {
    let started = crate::now();
    let missing = missing()?;
    if missing.is_empty() {
        println!(
            "setup: ready (checked in {:.1}s)",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    for m in &missing {
        println!("setup: missing: {m}");
    }
    setup()
}

/// Fast probe: what is missing for build and test (empty = ready). Changes nothing.
pub(crate) fn missing() -> Result<Vec<Missing>> {
    let mut missing = Vec::new();
    match Nightly::probe() {
        Ok(nightly) if !nightly.has_rust_src() => missing.push(Missing::RustSrc),
        Ok(_) => {}
        Err(_) => missing.push(Missing::Nightly),
    }
    let cache = Cache::locate()?;
    if !bpf_linker_runs(&cache.linker_bin()) {
        missing.push(Missing::BpfLinker(cache.linker_bin()));
    }
    let packages = missing_packages()?;
    if !packages.is_empty() {
        missing.push(Missing::Packages(packages));
    }
    let python = missing_python_packages();
    if !python.is_empty() {
        missing.push(Missing::PythonPackages(python));
    }
    if !bpffs_mounted(&read_proc_mounts()?) {
        missing.push(Missing::Bpffs);
    }
    Ok(missing)
}

/// `cargo xtask setup`: every step checks, acts only if needed, and prints one line.
pub(crate) fn setup() -> Result<()> {
    let started = crate::now();
    let nightly = step_nightly()?;
    step_rust_src(&nightly)?;
    let cache = Cache::locate()?;
    step_llvm_link(&nightly, &cache)?;
    step_bpf_linker(&nightly, &cache)?;
    step_packages()?;
    step_python_packages(&cache)?;
    step_services_off();
    step_bpffs()?;
    step_check_kernel()?;
    println!("setup: ready in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Will xdpfork run on this kernel, and how? Builds fork-agent and runs its `check-kernel`, which
/// proves each piece by doing it (docs/toolchain.md "Kernel compatibility"); its table is the
/// answer. A kernel that cannot run xdpfork fails setup here, not later in a test.
fn step_check_kernel() -> Result<()> {
    if !is_root()? {
        println!(
            "setup: kernel check ... skipped (needs root: run `fork-agent check-kernel` as root)"
        );
        return Ok(());
    }
    println!("setup: kernel check ... building fork-agent");
    run_checked(
        crate::build::cargo().args(["build", "-p", "fork-agent"]),
        "build fork-agent for the kernel check",
        "see the compiler output above",
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::build::workspace_root().join("target"));
    let exe = target.join("debug/fork-agent");
    let status = Command::new(&exe)
        .arg("check-kernel")
        .status()
        .with_context(|| format!("running {} check-kernel", exe.display()))?;
    if !status.success() {
        bail!(
            "xdpfork cannot run on this kernel: the table above names what is missing \
             (docs/toolchain.md \"Kernel compatibility\")"
        );
    }
    println!("setup: kernel check ... ok");
    Ok(())
}

fn step_nightly() -> Result<Nightly> {
    if let Ok(n) = Nightly::probe() {
        println!(
            "setup: {NIGHTLY} toolchain ... ok ({}, LLVM {})",
            n.release, n.llvm_version
        );
        return Ok(n);
    }
    println!("setup: {NIGHTLY} toolchain ... missing, installing with rustup");
    run_checked(
        Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]),
        "install the nightly toolchain",
        "install rustup (https://rustup.rs) and check network access",
    )?;
    let n = Nightly::probe()?;
    println!(
        "setup: {NIGHTLY} toolchain ... ok (installed {}, LLVM {})",
        n.release, n.llvm_version
    );
    Ok(n)
}

fn step_rust_src(nightly: &Nightly) -> Result<()> {
    if nightly.has_rust_src() {
        println!("setup: rust-src for {NIGHTLY} ... ok");
        return Ok(());
    }
    println!("setup: rust-src for {NIGHTLY} ... missing, adding with rustup");
    run_checked(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
        "add rust-src to the nightly toolchain",
        "check network access to static.rust-lang.org",
    )?;
    if !nightly.has_rust_src() {
        bail!(
            "rustup reported success but {} is still absent: reinstall with \
             `rustup component remove rust-src --toolchain {NIGHTLY} && rustup component add \
             rust-src --toolchain {NIGHTLY}`",
            nightly.rust_src_marker().display()
        );
    }
    println!("setup: rust-src for {NIGHTLY} ... ok (added)");
    Ok(())
}

/// bpf-linker finds LLVM through `LLVM_PREFIX/lib/libLLVM.so` at build time and keeps
/// `LLVM_PREFIX/lib` as its RUNPATH, so this directory must outlive the build.
fn step_llvm_link(nightly: &Nightly, cache: &Cache) -> Result<()> {
    let target = nightly.libllvm()?;
    let soname = target
        .file_name()
        .context("invariant: libllvm() returns a path with a file name")?
        .to_owned();
    let dir = cache.llvm_lib();
    fs::create_dir_all(&dir).with_context(|| {
        format!(
            "create {}: check permissions of the cache dir",
            dir.display()
        )
    })?;
    let mut changed = false;
    // A stale soname link from an older nightly would shadow nothing but confuses readers.
    for entry in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name != "libLLVM.so" && name != soname.as_os_str() && is_libllvm_name(&name) {
            fs::remove_file(entry.path())
                .with_context(|| format!("remove stale {}", entry.path().display()))?;
            changed = true;
        }
    }
    changed |= ensure_symlink(&dir.join("libLLVM.so"), &target)?;
    changed |= ensure_symlink(&dir.join(&soname), &target)?;
    println!(
        "setup: libLLVM link for bpf-linker ... ok ({}{} -> {})",
        dir.join("libLLVM.so").display(),
        if changed { ", updated" } else { "" },
        target.display()
    );
    Ok(())
}

fn step_bpf_linker(nightly: &Nightly, cache: &Cache) -> Result<()> {
    let bin = cache.linker_bin();
    if bpf_linker_runs(&bin) {
        println!(
            "setup: bpf-linker {BPF_LINKER_VERSION} ... ok ({})",
            bin.display()
        );
        return Ok(());
    }
    let major = nightly.llvm_major;
    if !BPF_LINKER_LLVM_MAJORS.contains(&major) {
        bail!(
            "{NIGHTLY} uses LLVM {major}, but bpf-linker {BPF_LINKER_VERSION} only builds against \
             LLVM {BPF_LINKER_LLVM_MAJORS:?}: install a nightly with one of those \
             (`rustc +nightly -vV` shows its LLVM) or raise BPF_LINKER_VERSION in xtask/src/setup.rs"
        );
    }
    println!(
        "setup: bpf-linker {BPF_LINKER_VERSION} ... missing, building against {NIGHTLY}'s LLVM \
         {major} (about 90 s)"
    );
    let started = crate::now();
    let feature = format!("llvm-{major}");
    run_checked(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                &feature,
                "--force",
                "--root",
            ])
            .arg(cache.linker_root())
            .env("LLVM_PREFIX", cache.llvm_prefix())
            // Build in cargo's throwaway temp dir, not in a target dir the caller exported.
            .env_remove("CARGO_TARGET_DIR"),
        "build bpf-linker",
        "see the compiler output above; `rm -rf ~/.cache/xdpfork` and rerun `cargo xtask setup`",
    )?;
    if !bpf_linker_runs(&bin) {
        bail!(
            "bpf-linker was installed at {} but `{} --version` does not print `bpf-linker \
             {BPF_LINKER_VERSION}`: check that {} points at {NIGHTLY}'s libLLVM",
            bin.display(),
            bin.display(),
            cache.llvm_lib().join("libLLVM.so").display()
        );
    }
    println!(
        "setup: bpf-linker {BPF_LINKER_VERSION} ... ok (built in {:.0}s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn step_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        println!(
            "setup: debian packages ... ok (all {} present)",
            DEBIAN_PACKAGES.len()
        );
        return Ok(());
    }
    if !is_root()? {
        bail!(
            "Debian packages missing: {}. setup installs Debian packages and needs root: run as \
             root or with sudo -E (or install them yourself: apt-get install {})",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!(
        "setup: debian packages ... missing {}, installing",
        missing.join(" ")
    );
    run_checked(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get update",
        "check network access and /etc/apt/sources.list",
    )?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
        "see apt's output above; `apt-get -f install` repairs a half-finished install",
    )?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!(
            "apt-get succeeded but dpkg still lacks {}: check `dpkg --audit`",
            still.join(" ")
        );
    }
    println!(
        "setup: debian packages ... ok (installed {})",
        missing.join(" ")
    );
    Ok(())
}

/// Installs the [`PYTHON_PACKAGES`] that `python3` lacks, at their pinned versions, with pip's
/// cache under ours so a reinstall after a Python upgrade downloads nothing.
fn step_python_packages(cache: &Cache) -> Result<()> {
    let missing = missing_python_packages();
    if missing.is_empty() {
        println!(
            "setup: python packages ... ok (all {} present)",
            PYTHON_PACKAGES.len()
        );
        return Ok(());
    }
    println!(
        "setup: python packages ... missing {}, installing with pip",
        missing.join(" ")
    );
    run_checked(
        Command::new("python3")
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .arg("--cache-dir")
            .arg(cache.pip())
            .args(&missing),
        "pip install",
        "see pip's output above; python3 needs pip (`python3 -m ensurepip`) and PyPI must be \
         reachable",
    )?;
    let still = missing_python_packages();
    if !still.is_empty() {
        bail!(
            "pip succeeded but python3 still lacks {}: is `python3` the interpreter pip \
             installed into (`python3 -m pip --version`)?",
            still.join(" ")
        );
    }
    println!(
        "setup: python packages ... ok (installed {})",
        missing.join(" ")
    );
    Ok(())
}

/// [`PYTHON_PACKAGES`] that `python3` does not have at the pinned version, as `name==version`.
/// A `python3` that does not run lacks them all (the pip step then says why).
fn missing_python_packages() -> Vec<String> {
    // importlib.metadata reads the installed distributions without importing them (fast).
    const PROBE: &str = "import importlib.metadata as m, sys\n\
        for n in sys.argv[1:]:\n\
        \x20   try: print(n, m.version(n))\n\
        \x20   except m.PackageNotFoundError: print(n, '-')\n";
    let out = Command::new("python3")
        .args(["-c", PROBE])
        .args(PYTHON_PACKAGES.iter().map(|(name, _, _)| *name))
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    parse_python_missing(&out, PYTHON_PACKAGES)
}

/// Given `<name> <version or ->` lines, the `name==version` pins not installed as pinned.
fn parse_python_missing(output: &str, wanted: &[(&str, &str, &str)]) -> Vec<String> {
    wanted
        .iter()
        .filter(|(name, version, _)| {
            !output.lines().any(|line| {
                let mut cols = line.split_whitespace();
                cols.next() == Some(*name) && cols.next() == Some(*version)
            })
        })
        .map(|(name, version, _)| format!("{name}=={version}"))
        .collect()
}

/// System services that Debian starts on install but xdpfork never uses, with the reason they
/// must stay off. Add a line when a package you add to [`DEBIAN_PACKAGES`] starts a daemon.
pub(crate) const SERVICES_OFF: &[(&str, &str)] = &[
    (
        "coturn",
        "Debian enables `coturn.service`; it would hold port 3478, which the TURN tests bind",
    ),
    (
        "kamailio",
        "Debian enables `kamailio.service`; the ng tests start their own Kamailio in a namespace",
    ),
];

/// Stops and disables each of [`SERVICES_OFF`] that systemd has enabled or running. Works when
/// systemd is not PID 1 too: `systemctl disable` then only edits the unit links, and the failed
/// `--now` stop does not matter because nothing was started.
fn step_services_off() {
    let systemctl = |args: &[&str]| {
        Command::new("systemctl")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    for (unit, _why) in SERVICES_OFF {
        let state = || {
            (
                systemctl(&["is-active", "--quiet", unit]),
                systemctl(&["is-enabled", "--quiet", unit]),
            )
        };
        let before = state();
        if before == (false, false) {
            println!("setup: {unit} system service ... ok (not enabled, not running)");
            continue;
        }
        // Exit status ignored: without a running systemd the stop half fails; re-check instead.
        systemctl(&["disable", "--now", unit]);
        let after = state();
        if after == (false, false) {
            println!(
                "setup: {unit} system service ... ok (stopped and disabled; was active={} \
                 enabled={})",
                before.0, before.1
            );
        } else {
            println!(
                "setup: {unit} system service ... still active={} enabled={}: run `systemctl \
                 disable --now {unit}` yourself if its port is taken",
                after.0, after.1
            );
        }
    }
}

fn step_bpffs() -> Result<()> {
    if bpffs_mounted(&read_proc_mounts()?) {
        println!("setup: bpffs on {BPFFS} ... ok");
        return Ok(());
    }
    if !is_root()? {
        bail!(
            "{BPFFS} is not a bpf filesystem and mounting it needs root: run `cargo xtask setup` \
             as root or with sudo -E (or `mount -t bpf bpf {BPFFS}` yourself)"
        );
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("create {BPFFS}: is /sys mounted?"))?;
    run_checked(
        Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]),
        "mount bpffs",
        "the kernel needs CONFIG_BPF_SYSCALL; in a container, run it with --privileged",
    )?;
    if !bpffs_mounted(&read_proc_mounts()?) {
        bail!("mount reported success but /proc/mounts shows no bpf filesystem on {BPFFS}");
    }
    println!("setup: bpffs on {BPFFS} ... ok (mounted)");
    Ok(())
}

/// What `rustc +nightly` reports about itself.
#[derive(Debug)]
pub(crate) struct Nightly {
    release: String,
    llvm_version: String,
    llvm_major: u32,
    sysroot: PathBuf,
}

impl Nightly {
    fn probe() -> Result<Self> {
        let plus = format!("+{NIGHTLY}");
        let vv = output_of(Command::new("rustc").args([plus.as_str(), "-vV"]))
            .with_context(|| format!("`rustc {plus} -vV` failed: {}", Missing::Nightly))?;
        let info = parse_rustc_vv(&vv).with_context(|| {
            format!("`rustc {plus} -vV` printed no `release:`/`LLVM version:` lines:\n{vv}")
        })?;
        let sysroot = output_of(Command::new("rustc").args([plus.as_str(), "--print", "sysroot"]))
            .with_context(|| format!("`rustc {plus} --print sysroot` failed"))?;
        Ok(Nightly {
            release: info.release,
            llvm_version: info.llvm_version,
            llvm_major: info.llvm_major,
            sysroot: PathBuf::from(sysroot.trim()),
        })
    }

    /// A file that exists only when the `rust-src` component is installed.
    fn rust_src_marker(&self) -> PathBuf {
        self.sysroot
            .join("lib/rustlib/src/rust/library/core/src/lib.rs")
    }

    fn has_rust_src(&self) -> bool {
        self.rust_src_marker().is_file()
    }

    /// The nightly's shared libLLVM (`<sysroot>/lib/libLLVM.so.*`).
    fn libllvm(&self) -> Result<PathBuf> {
        let lib = self.sysroot.join("lib");
        let mut found: Vec<PathBuf> = fs::read_dir(&lib)
            .with_context(|| format!("read {}", lib.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| is_libllvm_name(&e.file_name()))
            .map(|e| e.path())
            .collect();
        found.sort();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => bail!(
                "no libLLVM.so.* in {}: bpf-linker needs the nightly's shared LLVM; reinstall \
                 with `rustup toolchain uninstall {NIGHTLY} && cargo xtask setup`",
                lib.display()
            ),
            many => bail!(
                "several libLLVM.so.* in {} ({many:?}): remove the stale ones",
                lib.display()
            ),
        }
    }
}

/// The fields of `rustc -vV` that setup needs.
#[derive(Debug, PartialEq, Eq)]
struct RustcInfo {
    release: String,
    llvm_version: String,
    llvm_major: u32,
}

/// Parses `rustc -vV`: `release: 1.97.0-nightly` and `LLVM version: 22.1.4`.
fn parse_rustc_vv(text: &str) -> Option<RustcInfo> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
    };
    let release = field("release:")?;
    let llvm_version = field("LLVM version:")?;
    let llvm_major = llvm_version.split('.').next()?.parse().ok()?;
    Some(RustcInfo {
        release,
        llvm_version,
        llvm_major,
    })
}

/// `libLLVM.so.<anything>`: the glob rustup's lib dir is searched with.
fn is_libllvm_name(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| {
        n.strip_prefix("libLLVM.so.")
            .is_some_and(|rest| !rest.is_empty())
    })
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/xdpfork` and the paths inside it.
#[derive(Debug)]
pub(crate) struct Cache {
    root: PathBuf,
}

impl Cache {
    pub(crate) fn locate() -> Result<Self> {
        let root = cache_root(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
            .context("neither XDG_CACHE_HOME nor HOME is set: set HOME (with sudo, use sudo -E)")?;
        Ok(Cache { root })
    }

    /// `LLVM_PREFIX` for building bpf-linker.
    fn llvm_prefix(&self) -> PathBuf {
        self.root.join("llvm")
    }

    fn llvm_lib(&self) -> PathBuf {
        self.llvm_prefix().join("lib")
    }

    /// `cargo install --root` for bpf-linker.
    fn linker_root(&self) -> PathBuf {
        self.root.join("bpf-linker")
    }

    pub(crate) fn linker_bin(&self) -> PathBuf {
        self.linker_root().join("bin/bpf-linker")
    }

    /// `pip install --cache-dir` for [`PYTHON_PACKAGES`].
    fn pip(&self) -> PathBuf {
        self.root.join("pip")
    }
}

/// Same rule as the shell's `${XDG_CACHE_HOME:-$HOME/.cache}/xdpfork` (empty counts as unset).
fn cache_root(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let base = match xdg_cache_home.filter(|v| !v.is_empty()) {
        Some(xdg) => PathBuf::from(xdg),
        None => PathBuf::from(home.filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("xdpfork"))
}

/// True when the binary runs on its own (no rustup LD_LIBRARY_PATH) and is the pinned version.
fn bpf_linker_runs(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .env_remove("LD_LIBRARY_PATH")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim()
                    == format!("bpf-linker {BPF_LINKER_VERSION}")
        })
}

/// Packages of [`DEBIAN_PACKAGES`] that dpkg does not report as installed.
fn missing_packages() -> Result<Vec<&'static str>> {
    let names: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(name, _)| *name).collect();
    // dpkg-query exits 1 when a package is unknown to it; that is an answer, not a failure.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package}\\t${Status}\\n"])
        .args(&names)
        .stderr(Stdio::null())
        .output()
        .context("run dpkg-query: setup supports Debian/Ubuntu hosts only")?;
    Ok(parse_dpkg_missing(
        &String::from_utf8_lossy(&out.stdout),
        &names,
    ))
}

/// Given `dpkg-query -W -f='${Package}\t${Status}\n'` output, the wanted names not installed.
/// A package is installed when its status is `<want> ok installed` (`install` or `hold`);
/// `deinstall ok config-files`, `unknown ok not-installed` or no line at all mean missing.
fn parse_dpkg_missing<'a>(output: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    let installed = |name: &str| {
        output.lines().any(|line| {
            let mut cols = line.splitn(2, '\t');
            let pkg = cols.next().unwrap_or("").trim();
            let status: Vec<&str> = cols.next().unwrap_or("").split_whitespace().collect();
            // `${Package}` has no arch suffix, but be lenient if a caller adds one.
            let pkg = pkg.split(':').next().unwrap_or(pkg);
            pkg == name && matches!(status.as_slice(), [_, "ok", "installed"])
        })
    };
    wanted
        .iter()
        .copied()
        .filter(|name| !installed(name))
        .collect()
}

fn read_proc_mounts() -> Result<String> {
    fs::read_to_string("/proc/mounts").context("read /proc/mounts: is /proc mounted?")
}

/// True when some line of `/proc/mounts` mounts a `bpf` filesystem on [`BPFFS`].
fn bpffs_mounted(proc_mounts: &str) -> bool {
    proc_mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.as_slice(), [_, mountpoint, "bpf", ..] if *mountpoint == BPFFS)
    })
}

/// Effective uid 0, read from `/proc/self/status` (keeps xtask free of unsafe libc calls).
pub(crate) fn is_root() -> Result<bool> {
    let status = fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    effective_uid(&status)
        .map(|uid| uid == 0)
        .context("no `Uid:` line in /proc/self/status")
}

/// `Uid:\t<real>\t<effective>\t<saved>\t<fs>` → effective.
fn effective_uid(proc_status: &str) -> Option<u32> {
    let line = proc_status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Points `link` at `target`; returns whether it had to change anything.
fn ensure_symlink(link: &Path, target: &Path) -> Result<bool> {
    match fs::read_link(link) {
        Ok(current) if current == target => return Ok(false),
        Ok(_) => fs::remove_file(link),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        // Exists but is not a symlink (e.g. a copied file): replace it.
        Err(_) => fs::remove_file(link),
    }
    .with_context(|| format!("remove old {}", link.display()))?;
    symlink(target, link)
        .with_context(|| format!("symlink {} -> {}", link.display(), target.display()))?;
    Ok(true)
}

/// Runs `cmd` with inherited stdio; on failure says what failed and what to try.
pub(crate) fn run_checked(cmd: &mut Command, what: &str, hint: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start {:?} ({hint})", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status}): {hint}");
    }
    Ok(())
}

/// Stdout of `cmd` when it exits 0.
fn output_of(cmd: &mut Command) -> Result<String> {
    let out = cmd.stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[cfg(test)]
mod tests;
