//! Builds the XDP programs (`fork-ebpf`) and hands the object to fork-agent as
//! `$OUT_DIR/fork-ebpf.o`, which src/ embeds with
//! `aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fork-ebpf.o"))`.
//!
//! Input: the workspace sources, the `nightly` toolchain with `rust-src`, and the bpf-linker that
//! `cargo xtask setup` builds into `${XDG_CACHE_HOME:-$HOME/.cache}/xdpfork/bpf-linker/bin`
//! (falling back to a `bpf-linker` on PATH). Output: `$OUT_DIR/fork-ebpf.o`, always built with the
//! release profile (debug = 2 keeps BTF; see the root Cargo.toml).
//!
//! Call order: checks the toolchain and names what is missing (`cargo:warning=` lines plus a
//! panic telling the operator to run `cargo xtask setup`), then runs
//! `cargo +nightly build -p fork-ebpf --target bpfel-unknown-none -Z build-std=core --release
//! --target-dir <workspace>/target/bpf` from the workspace root, so .cargo/config.toml supplies
//! the linker and `--btf`. The separate target dir means the outer cargo's lock is never waited
//! on, and every outer target dir (CI, `CARGO_TARGET_DIR=...` per engineer, clippy) shares one
//! BPF build. This is aya-template's `aya_build` approach, done by hand: aya-build 0.2.1 needs
//! rustc 1.98 (docs/toolchain.md).
//!
//! Override: `XDPFORK_EBPF_OBJ=/path/to/fork-ebpf.o` copies that file instead of building, for
//! hosts without nightly (e.g. a cross build that ships a prebuilt object).

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const EBPF_PACKAGE: &str = "fork-ebpf";
const BPF_TARGET: &str = "bpfel-unknown-none";
const NIGHTLY: &str = "nightly";
const OBJ_OVERRIDE: &str = "XDPFORK_EBPF_OBJ";
const OBJ_NAME: &str = "fork-ebpf.o";

/// Inputs of the BPF object, relative to the workspace root.
const WATCHED: &[&str] = &[
    "fork-ebpf/src",
    "fork-ebpf/Cargo.toml",
    "fork-common/src",
    "fork-common/Cargo.toml",
    "Cargo.lock",
    ".cargo/config.toml",
];

/// Variables the outer cargo sets for this build script (or for rustc) that would misdirect a
/// nested cargo: wrong rustc/flags/target dir, a jobserver it does not own, clippy as a wrapper.
const SCRUB_EXACT: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CLIPPY_ARGS",
    "RUSTUP_TOOLCHAIN",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
];
const SCRUB_PREFIXES: &[&str] = &[
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "CARGO_MANIFEST",
];

fn main() {
    let manifest_dir = PathBuf::from(required_env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("invariant: fork-agent lives one level below the workspace root")
        .to_path_buf();
    let out = PathBuf::from(required_env("OUT_DIR")).join(OBJ_NAME);

    println!("cargo:rerun-if-env-changed={OBJ_OVERRIDE}");
    // The bpf-linker location follows the cache dir.
    println!("cargo:rerun-if-env-changed=XDG_CACHE_HOME");
    if let Some(prebuilt) = env::var_os(OBJ_OVERRIDE).filter(|v| !v.is_empty()) {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        copy(&prebuilt, &out, &format!("{OBJ_OVERRIDE} points at"));
        return;
    }
    for path in WATCHED {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    let linker_dir = cache_root().map(|c| c.join("bpf-linker/bin"));
    let sysroot = check_toolchain(linker_dir.as_deref());

    let target_dir = root.join("target/bpf");
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{NIGHTLY}"))
        .args(["build", "-p", EBPF_PACKAGE, "--target", BPF_TARGET])
        .args(["-Z", "build-std=core", "--release", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&root)
        // Our stdout is parsed for `cargo:` directives; the nested cargo's output is for humans.
        .stdout(Stdio::from(std::io::stderr()));
    scrub_env(&mut cmd);
    cmd.env("PATH", path_with(linker_dir.as_deref()));
    // rustc runs bpf-linker; make nightly's libLLVM findable even for a linker built elsewhere.
    cmd.env(
        "LD_LIBRARY_PATH",
        prepend_path(sysroot.join("lib"), env::var_os("LD_LIBRARY_PATH")),
    );

    let status = cmd.status().unwrap_or_else(|e| {
        panic!("could not start `cargo +{NIGHTLY}` ({e}): is rustup's cargo on PATH? run `cargo xtask setup`")
    });
    if !status.success() {
        panic!(
            "building {EBPF_PACKAGE} for {BPF_TARGET} failed ({status}); see the output above. \
             Toolchain problems are fixed by `cargo xtask setup`; to use a prebuilt object set \
             {OBJ_OVERRIDE}=/path/to/{OBJ_NAME}."
        );
    }
    let built = target_dir
        .join(BPF_TARGET)
        .join("release")
        .join(EBPF_PACKAGE);
    copy(&built, &out, "the nested cargo build should have produced");
}

/// Checks nightly, rust-src and bpf-linker; returns nightly's sysroot. Names everything missing
/// at once (warnings plus one panic) so a single `cargo xtask setup` fixes it.
fn check_toolchain(linker_dir: Option<&Path>) -> PathBuf {
    let mut missing = Vec::new();
    let sysroot = Command::new("rustc")
        .args([format!("+{NIGHTLY}").as_str(), "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match &sysroot {
        None => missing.push(format!(
            "the `{NIGHTLY}` toolchain (`rustc +{NIGHTLY}` does not run)"
        )),
        Some(s)
            if !s
                .join("lib/rustlib/src/rust/library/core/src/lib.rs")
                .is_file() =>
        {
            missing.push(format!(
                "rust-src for `{NIGHTLY}` (needed by -Z build-std=core)"
            ))
        }
        Some(_) => {}
    }
    let candidates: Vec<PathBuf> = linker_dir
        .map(|d| d.join("bpf-linker"))
        .into_iter()
        .chain(
            env::split_paths(&env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join("bpf-linker")),
        )
        .collect();
    let lib = sysroot.as_ref().map(|s| s.join("lib"));
    if !candidates
        .iter()
        .any(|bin| linker_runs(bin, lib.as_deref()))
    {
        missing.push(format!(
            "a working bpf-linker (looked for {} and on PATH)",
            linker_dir
                .map(|d| d.join("bpf-linker").display().to_string())
                .unwrap_or_else(|| "the xdpfork cache (HOME unset)".into())
        ));
    }
    if !missing.is_empty() {
        for m in &missing {
            println!("cargo:warning=fork-ebpf cannot be built: missing {m}");
        }
        panic!(
            "missing {}: run `cargo xtask setup` (or set {OBJ_OVERRIDE} to a prebuilt {OBJ_NAME})",
            missing.join(", ")
        );
    }
    sysroot.expect("invariant: a missing sysroot was reported above")
}

/// True when `bin --version` succeeds with nightly's lib dir on the loader path (as under rustc).
fn linker_runs(bin: &Path, nightly_lib: Option<&Path>) -> bool {
    if !bin.is_file() {
        return false;
    }
    let mut cmd = Command::new(bin);
    cmd.arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(lib) = nightly_lib {
        cmd.env(
            "LD_LIBRARY_PATH",
            prepend_path(lib.to_path_buf(), env::var_os("LD_LIBRARY_PATH")),
        );
    }
    cmd.status().is_ok_and(|s| s.success())
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/xdpfork`, the same rule as xtask/src/setup.rs `cache_root`.
fn cache_root() -> Option<PathBuf> {
    let base = match env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(xdg) => PathBuf::from(xdg),
        None => PathBuf::from(env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("xdpfork"))
}

fn scrub_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(name) = key.to_str() else { continue };
        if SCRUB_EXACT.contains(&name) || SCRUB_PREFIXES.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
}

/// PATH with the bpf-linker cache dir first.
fn path_with(linker_dir: Option<&Path>) -> OsString {
    match linker_dir {
        Some(dir) => prepend_path(dir.to_path_buf(), env::var_os("PATH")),
        None => env::var_os("PATH").unwrap_or_default(),
    }
}

fn prepend_path(first: PathBuf, rest: Option<OsString>) -> OsString {
    let rest = rest.unwrap_or_default();
    env::join_paths(std::iter::once(first.clone()).chain(env::split_paths(&rest))).unwrap_or_else(
        |e| {
            panic!(
                "cannot put {} on a search path ({e}): move it",
                first.display()
            )
        },
    )
}

fn copy(from: &Path, to: &Path, what: &str) {
    // fs::copy rewrites an existing file in place: a target dir warmed with hard links
    // (`cp -al`) would hand the object to every tree sharing the inode. A new file does not.
    let _ = fs::remove_file(to);
    if let Err(e) = fs::copy(from, to) {
        panic!(
            "{what} {}, but copying it to {} failed: {e}",
            from.display(),
            to.display()
        );
    }
}

fn required_env(key: &str) -> OsString {
    env::var_os(key).unwrap_or_else(|| panic!("cargo sets {key} for build scripts; run via cargo"))
}
