//! `cargo xtask package`: a Debian package of xdpfork, `xdpfork_<version>_<arch>.deb`.
//!
//! The package holds exactly what `cargo xtask install --prefix /usr` writes: [`install::stage`]
//! fills a scratch root, so anything install learns to put in place lands in the package too.
//! Only two things differ: install's manifest is left out (dpkg keeps its own file list), and
//! the Debian metadata is added (`/usr/share/doc/xdpfork/{copyright,changelog.Debian.gz}`,
//! `DEBIAN/`). Tools: dpkg-deb and dpkg-shlibdeps (dpkg-dev); no cargo plugin (cargo-deb would
//! describe the file set a second time, in Cargo.toml, and drift from install's).
//!
//! `DEBIAN/`: `control` (Depends = what dpkg-shlibdeps finds the binaries link against, plus
//! [`RUNTIME_DEPENDS`]), `conffiles` (every file under /etc), `md5sums`, and the maintainer
//! scripts of `dist/debian/` (what each does and why: docs/operations.md "Debian package").

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{build, install, setup};

/// `cargo xtask package` options.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Debian revision: the package version is `<workspace version>-<revision>`. Raise it to
    /// rebuild the same sources as an upgrade.
    #[arg(long, default_value = "1")]
    revision: String,
    /// Package fork-agent, sip-agent and turn-server from this directory instead of building
    /// release binaries.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the .deb goes (default: `target/debian`).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// dpkg-deb's compressor: xz (Debian's default, smallest), zstd (fast; dpkg >= 1.21.18),
    /// gzip or none. Tests use zstd: xz takes a minute on the debug binaries.
    #[arg(long, default_value = "xz", value_parser = ["xz", "zstd", "gzip", "none"])]
    compression: String,
    /// The `Maintainer:` field.
    #[arg(long, default_value = MAINTAINER)]
    maintainer: String,
}

const PACKAGE: &str = "xdpfork";
const MAINTAINER: &str = "xdpfork maintainers <xdpfork@localhost>";

/// Needed at run time besides the shared libraries: postinst runs systemd-sysusers and
/// systemd-tmpfiles (systemd, or their standalone builds). No iproute2: fork-agent talks
/// rtnetlink itself, and prerm removes the fork veth through `fork-agent unpin`.
const RUNTIME_DEPENDS: &[&str] = &[
    "systemd | systemd-standalone-sysusers",
    "systemd | systemd-standalone-tmpfiles",
];
/// The operator scripts' tools (docs/operations.md "Operator scripts"); not needed to run.
const SUGGESTS: &[&str] = &["bpftool", "tcpdump", "sip-tester", "jq"];

const DESCRIPTION: &str = "\
forks live call audio to speech servers (XDP relay, SIP B2BUA)
 fork-agent relays RTP in the kernel with XDP and forks each call's audio over
 WebSocket to speech servers; sip-agent is a SIP B2BUA that anchors the media and
 takes fork requests from a call controller; turn-server serves WebRTC clients.
 The units are installed but not enabled: edit /etc/xdpfork first.";

/// Maintainer scripts: (name in DEBIAN/, content).
const MAINTAINER_SCRIPTS: [(&str, &str); 3] = [
    ("postinst", include_str!("../../dist/debian/postinst")),
    ("prerm", include_str!("../../dist/debian/prerm")),
    ("postrm", include_str!("../../dist/debian/postrm")),
];
const COPYRIGHT: &str = include_str!("../../dist/debian/copyright");

/// Entry point of `cargo xtask package`.
pub(crate) fn run(args: Args) -> Result<()> {
    let version = debian_version(env!("CARGO_PKG_VERSION"), &args.revision)?;
    let bin_src = install::binaries(args.bin_dir.as_deref())?;
    let arch = tool_output(
        Command::new("dpkg").arg("--print-architecture"),
        "dpkg --print-architecture",
    )?;
    let arch = arch.trim();
    let out_dir = match args.out_dir {
        Some(d) => d,
        None => install::release_dir()
            .parent()
            .map_or_else(|| build::workspace_root().join("target"), Path::to_owned)
            .join("debian"),
    };
    let name = format!("{PACKAGE}_{version}_{arch}");
    let tree = out_dir.join(format!("{name}.tree"));
    match fs::remove_dir_all(&tree) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", tree.display())),
    }

    let layout = install::Layout::new(Path::new("/usr"), Some(&tree))?;
    install::stage(&layout, &bin_src)?;
    // dpkg's own file list replaces install's manifest.
    let manifest = layout.on_disk(&layout.manifest());
    fs::remove_file(&manifest).with_context(|| format!("removing {}", manifest.display()))?;
    let doc = layout.on_disk(&layout.doc_dir);
    write(&doc.join("copyright"), COPYRIGHT.as_bytes(), 0o644)?;
    let changelog = doc.join("changelog.Debian");
    write(
        &changelog,
        changelog_entry(&version, &args.maintainer)?.as_bytes(),
        0o644,
    )?;
    setup::run_checked(
        Command::new("gzip").arg("-9nf").arg(&changelog),
        "compressing changelog.Debian",
        "gzip is part of every Debian system",
    )?;

    let files = files_under(&tree)?;
    let conffiles: Vec<&String> = files.iter().filter(|p| p.starts_with("etc/")).collect();
    let binaries: Vec<PathBuf> = install::BINARIES
        .iter()
        .map(|b| layout.on_disk(&layout.bin_dir.join(b)))
        .collect();
    let shlibs = shlib_depends(&out_dir.join(format!("{name}.shlibs")), &binaries)?;
    let mut depends = shlibs;
    depends.extend(RUNTIME_DEPENDS.iter().map(|d| d.to_string()));

    let debian = tree.join("DEBIAN");
    fs::create_dir_all(&debian).with_context(|| format!("creating {}", debian.display()))?;
    let control = Control {
        version: &version,
        arch,
        maintainer: &args.maintainer,
        installed_size_kib: installed_size_kib(&tree, &files)?,
        depends: &depends,
    };
    write(&debian.join("control"), control.render().as_bytes(), 0o644)?;
    let conf_text: String = conffiles.iter().map(|p| format!("/{p}\n")).collect();
    write(&debian.join("conffiles"), conf_text.as_bytes(), 0o644)?;
    let sums = md5sums(&tree, files.iter().filter(|p| !p.starts_with("etc/")))?;
    write(&debian.join("md5sums"), sums.as_bytes(), 0o644)?;
    for (script, text) in MAINTAINER_SCRIPTS {
        write(&debian.join(script), text.as_bytes(), 0o755)?;
    }

    let deb = out_dir.join(format!("{name}.deb"));
    setup::run_checked(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(format!("-Z{}", args.compression))
            .arg(&tree)
            .arg(&deb),
        "dpkg-deb --build",
        "see dpkg-deb's message above",
    )?;
    fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    println!("package: {}", deb.display());
    Ok(())
}

/// `<upstream>-<revision>`; the revision takes what Debian allows there (deb-version(7)).
pub(crate) fn debian_version(upstream: &str, revision: &str) -> Result<String> {
    let ok = !revision.is_empty()
        && revision.starts_with(|c: char| c.is_ascii_digit())
        && revision
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~'));
    if !ok {
        bail!(
            "--revision `{revision}`: a Debian revision starts with a digit and holds only \
             letters, digits, `.`, `+` and `~`"
        );
    }
    Ok(format!("{upstream}-{revision}"))
}

/// The fields of DEBIAN/control.
struct Control<'a> {
    version: &'a str,
    arch: &'a str,
    maintainer: &'a str,
    installed_size_kib: u64,
    depends: &'a [String],
}

impl Control<'_> {
    fn render(&self) -> String {
        format!(
            "Package: {PACKAGE}\nVersion: {}\nArchitecture: {}\nMaintainer: {}\n\
             Installed-Size: {}\nDepends: {}\nSuggests: {}\nSection: net\nPriority: optional\n\
             Description: {DESCRIPTION}\n",
            self.version,
            self.arch,
            self.maintainer,
            self.installed_size_kib,
            self.depends.join(", "),
            SUGGESTS.join(", "),
        )
    }
}

/// The `shlibs:Depends=` value in dpkg-shlibdeps' output, split into its alternatives.
pub(crate) fn parse_shlibs(output: &str) -> Result<Vec<String>> {
    let value = output
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?;
    Ok(value
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The packages `binaries` need for their shared libraries, as dpkg-shlibdeps computes them
/// against this machine's dpkg database (it wants a `debian/control` beside it: `work` gets a
/// minimal one and is removed afterwards).
fn shlib_depends(work: &Path, binaries: &[PathBuf]) -> Result<Vec<String>> {
    let control = work.join("debian/control");
    write(
        &control,
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n").as_bytes(),
        0o644,
    )?;
    let mut cmd = Command::new("dpkg-shlibdeps");
    cmd.current_dir(work).arg("-O");
    for b in binaries {
        cmd.arg(format!("-e{}", b.display()));
    }
    let out = tool_output(&mut cmd, "dpkg-shlibdeps");
    fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
    parse_shlibs(&out?)
}

/// Stdout of a packaging tool; failure names the tool and the package that has it.
fn tool_output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| {
        format!("running {what}: is dpkg-dev installed? (`cargo xtask setup` installs it)")
    })?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Regular files under `root`, relative, sorted (DEBIAN/ is not there yet).
fn files_under(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(root)?.to_string_lossy().into_owned();
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Installed-Size the way dpkg-gencontrol counts it: each file's size rounded up to KiB, plus
/// one per directory.
fn installed_size_kib(root: &Path, files: &[String]) -> Result<u64> {
    let mut kib = 0;
    for f in files {
        kib += fs::metadata(root.join(f))?.len().div_ceil(1024);
    }
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let mut p = Path::new(f).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_owned());
            p = d.parent();
        }
    }
    Ok(kib + dirs.len() as u64)
}

/// DEBIAN/md5sums for `files` (conffiles are left out, as dh_md5sums does).
fn md5sums<'a>(root: &Path, files: impl Iterator<Item = &'a String>) -> Result<String> {
    let mut cmd = Command::new("md5sum");
    cmd.current_dir(root).args(files);
    tool_output(&mut cmd, "md5sum")
}

/// One changelog.Debian entry: the version, the commit it was built from and its date.
fn changelog_entry(version: &str, maintainer: &str) -> Result<String> {
    let git = tool_output(
        Command::new("git")
            .current_dir(build::workspace_root())
            .args(["log", "-1", "--format=%h%n%aD"]),
        "git log",
    );
    let lines: Vec<String> = git
        .map(|o| o.lines().map(str::to_owned).collect())
        .unwrap_or_default();
    let (commit, date) = match lines.as_slice() {
        [c, d] => (format!("commit {c}"), d.clone()),
        _ => (
            "a source tree without git history".to_owned(),
            tool_output(Command::new("date").arg("-R"), "date -R")?
                .trim()
                .to_owned(),
        ),
    };
    Ok(format!(
        "{PACKAGE} ({version}) unstable; urgency=medium\n\n  * Built by `cargo xtask package` \
         from {commit}.\n\n -- {maintainer}  {date}\n"
    ))
}

/// Write `bytes` to `path` with `mode`, creating its directory.
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_follow_deb_version() {
        assert_eq!(debian_version("0.1.0", "1").expect("v"), "0.1.0-1");
        assert_eq!(debian_version("0.1.0", "2+t1").expect("v"), "0.1.0-2+t1");
        for bad in ["", "a1", "1-2", "1_2", "1 2"] {
            assert!(debian_version("0.1.0", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn shlibs_output_is_split_into_dependencies() {
        let out = "shlibs:Depends=libc6 (>= 2.34), libgcc-s1 (>= 4.2)\n";
        assert_eq!(
            parse_shlibs(out).expect("parse"),
            vec!["libc6 (>= 2.34)", "libgcc-s1 (>= 4.2)"]
        );
        assert!(parse_shlibs("misc:Depends=\n").is_err());
    }

    #[test]
    fn control_has_the_fields_dpkg_needs_and_a_folded_description() {
        let depends = vec![
            "libc6 (>= 2.34)".to_owned(),
            "libgcc-s1 (>= 4.2)".to_owned(),
        ];
        let c = Control {
            version: "0.1.0-1",
            arch: "amd64",
            maintainer: MAINTAINER,
            installed_size_kib: 42,
            depends: &depends,
        }
        .render();
        assert!(c.starts_with("Package: xdpfork\nVersion: 0.1.0-1\nArchitecture: amd64\n"));
        assert!(
            c.contains("\nDepends: libc6 (>= 2.34), libgcc-s1 (>= 4.2)\n"),
            "{c}"
        );
        assert!(c.contains("\nInstalled-Size: 42\n"));
        // Every description line after the synopsis is a continuation (starts with a space).
        let desc = c.split("Description: ").nth(1).expect("description");
        assert!(desc.lines().skip(1).all(|l| l.starts_with(' ')), "{desc}");
        assert!(c.ends_with('\n') && !c.ends_with("\n\n"));
    }

    #[test]
    fn maintainer_scripts_are_posix_sh_with_set_e() {
        for (name, text) in MAINTAINER_SCRIPTS {
            assert!(text.starts_with("#!/bin/sh\n"), "{name}");
            assert!(text.contains("\nset -e\n"), "{name}");
        }
    }
}
