//! `cargo xtask install` and `cargo xtask uninstall`: put xdpfork on a Linux host as systemd
//! services, and take it off again.
//!
//! Inputs: `--prefix` (default `/usr/local`), `--destdir` (a staging root: nothing outside it is
//! touched), `--bin-dir` (install ready binaries instead of building), and the templates in
//! `dist/` and `docs/operations.md`, embedded at compile time so an xtask binary is self-contained.
//! Outputs, relative to DESTDIR (see [`Layout`]):
//! ```text
//! PREFIX/bin/{fork-agent,sip-agent,ng-agent,turn-server}  0755, replaced atomically (rename)
//! UNITDIR/{fork-agent,sip-agent,ng-agent,turn-server}.service
//!                                                         0644, @BINDIR@/@DOCDIR@ filled in
//! SYSUSERSDIR/xdpfork.conf, TMPFILESDIR/xdpfork.conf      0644
//! /etc/xdpfork/{fork-agent,sip-agent,ng-agent,turn-server}.toml, turn-users
//!                                                         0640, never overwritten: a differing
//!                                                         existing file gets NAME.new beside it
//! PREFIX/share/doc/xdpfork/operations.md                  0644
//! PREFIX/share/man/man8/{BINARY,BINARY-SUBCOMMAND...}.8   0644, from each binary's hidden
//!                                                         `generate-docs` (clap_mangen)
//! PREFIX/share/bash-completion/completions/BINARY         0644, bash  (clap_complete)
//! PREFIX/share/zsh/site-functions/_BINARY                 0644, zsh
//! PREFIX/share/fish/vendor_completions.d/BINARY.fish      0644, fish
//! PREFIX/share/xdpfork/scripts/xdpfork-*                  0755, operator helpers (scripts/)
//! PREFIX/share/xdpfork/systemd/ng-agent-webrtc.conf       0644, inactive drop-in: the operator
//!                                                         links it into ng-agent.service.d to
//!                                                         bridge browsers (docs/operations.md)
//! PREFIX/share/xdpfork/install-manifest                   what this install put there
//! ```
//! UNITDIR etc. are `PREFIX/lib/...` for the prefixes systemd searches (`/usr`, `/usr/local`) and
//! `/etc/...` otherwise.
//!
//! Call order of `install`: build (unless `--bin-dir`), copy files, write the manifest (merged
//! with an earlier one), then, without `--destdir` only: systemd-sysusers, systemd-tmpfiles,
//! config group, and `systemctl daemon-reload` when systemd runs. Services are never enabled or
//! restarted: the default configs name documentation addresses, and only the operator knows
//! when a restart suits (fork-agent's keeps calls, sip-agent's forgets dialogs).
//!
//! `uninstall` reads the manifest. Without `--destdir` it first stops and disables the units,
//! unpins everything fork-agent pinned (`fork-agent unpin`, which detaches the XDP programs),
//! deletes the fork veth and the runtime and state directories. Then it removes every file in
//! the manifest, except configs that differ from the installed default (reported and kept).

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{build, setup};

/// `cargo xtask install` options.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Installation prefix: binaries go to PREFIX/bin.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Stage everything under this directory (packaging, tests): no users, no systemctl.
    #[arg(long)]
    destdir: Option<PathBuf>,
    /// Install fork-agent, sip-agent, ng-agent and turn-server from this directory instead of building
    /// release binaries.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// `cargo xtask uninstall` options.
#[derive(clap::Args, Debug)]
pub(crate) struct UninstallArgs {
    /// The prefix given to `install`.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// The destdir given to `install`.
    #[arg(long)]
    destdir: Option<PathBuf>,
}

/// The programs installed to PREFIX/bin, in the order services depend on each other.
pub(crate) const BINARIES: [&str; 4] = ["fork-agent", "sip-agent", "ng-agent", "turn-server"];

/// Unit files: (installed name, template).
const UNITS: [(&str, &str); 4] = [
    (
        "fork-agent.service",
        include_str!("../../dist/systemd/fork-agent.service.in"),
    ),
    (
        "sip-agent.service",
        include_str!("../../dist/systemd/sip-agent.service.in"),
    ),
    (
        "ng-agent.service",
        include_str!("../../dist/systemd/ng-agent.service.in"),
    ),
    (
        "turn-server.service",
        include_str!("../../dist/systemd/turn-server.service.in"),
    ),
];

/// Files in /etc/xdpfork: (name, default content).
const CONFIGS: [(&str, &str); 5] = [
    (
        "fork-agent.toml",
        include_str!("../../dist/config/fork-agent.toml"),
    ),
    (
        "sip-agent.toml",
        include_str!("../../dist/config/sip-agent.toml"),
    ),
    (
        "ng-agent.toml",
        include_str!("../../dist/config/ng-agent.toml"),
    ),
    (
        "turn-server.toml",
        include_str!("../../dist/config/turn-server.toml"),
    ),
    ("turn-users", include_str!("../../dist/config/turn-users")),
];

/// Operator helpers from scripts/: (name, content). They live in PREFIX/share/xdpfork/scripts,
/// off PATH: they need tools the services do not (bpftool, tcpdump, sipp, jq), so the package
/// only suggests those, and each says what it lacks (docs/operations.md "Operator scripts").
pub(crate) const SCRIPTS: [(&str, &str); 3] = [
    ("xdpfork-maps", include_str!("../../scripts/xdpfork-maps")),
    (
        "xdpfork-capture-fork",
        include_str!("../../scripts/xdpfork-capture-fork"),
    ),
    (
        "xdpfork-try-fork",
        include_str!("../../scripts/xdpfork-try-fork"),
    ),
];

/// The drop-in that lets ng-agent.service enter the gateway namespace (`[webrtc]`): installed
/// beside the scripts, not in a unit directory, so no install grants ng-agent those privileges
/// unasked (docs/operations.md "WebRTC bridging").
pub(crate) const WEBRTC_DROPIN: (&str, &str) = (
    "ng-agent-webrtc.conf",
    include_str!("../../dist/systemd/ng-agent-webrtc.conf.in"),
);

const SYSUSERS: &str = include_str!("../../dist/sysusers.d/xdpfork.conf");
const TMPFILES: &str = include_str!("../../dist/tmpfiles.d/xdpfork.conf");
const OPERATIONS_DOC: &str = include_str!("../../docs/operations.md");

/// The service user and group (dist/sysusers.d/xdpfork.conf).
const SERVICE_GROUP: &str = "xdpfork";
/// Directories the tmpfiles snippet creates; uninstall removes them.
const RUNTIME_DIRS: [&str; 2] = ["/run/xdpfork", "/var/lib/xdpfork"];
/// fork-agent's defaults when its config does not say (fork-agent/src/config.rs).
const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xdpfork";
const DEFAULT_FORK_INTERFACE: &str = "xfork0";

/// Where everything goes, as seen on the target system (absolute paths without DESTDIR), plus
/// the DESTDIR root they are written under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// DESTDIR, or `/`.
    pub(crate) root: PathBuf,
    pub(crate) bin_dir: PathBuf,
    pub(crate) unit_dir: PathBuf,
    pub(crate) sysusers_dir: PathBuf,
    pub(crate) tmpfiles_dir: PathBuf,
    pub(crate) conf_dir: PathBuf,
    pub(crate) doc_dir: PathBuf,
    pub(crate) data_dir: PathBuf,
    /// PREFIX/share: man pages and shell completions go below it.
    pub(crate) share_dir: PathBuf,
}

impl Layout {
    pub(crate) fn new(prefix: &Path, destdir: Option<&Path>) -> Result<Layout> {
        if !prefix.is_absolute() || prefix.components().any(|c| c == Component::ParentDir) {
            bail!(
                "--prefix {} must be an absolute path without `..`",
                prefix.display()
            );
        }
        // systemd reads units, sysusers.d and tmpfiles.d from /usr/lib and /usr/local/lib (and
        // /etc); any other prefix would install files systemd never sees, so those use /etc.
        let lib = if prefix == Path::new("/usr") || prefix == Path::new("/usr/local") {
            prefix.join("lib")
        } else {
            PathBuf::from("/etc")
        };
        let unit_dir = if lib == Path::new("/etc") {
            PathBuf::from("/etc/systemd/system")
        } else {
            lib.join("systemd/system")
        };
        Ok(Layout {
            root: destdir.map_or_else(|| PathBuf::from("/"), Path::to_owned),
            bin_dir: prefix.join("bin"),
            unit_dir,
            sysusers_dir: lib.join("sysusers.d"),
            tmpfiles_dir: lib.join("tmpfiles.d"),
            conf_dir: PathBuf::from("/etc/xdpfork"),
            doc_dir: prefix.join("share/doc/xdpfork"),
            data_dir: prefix.join("share/xdpfork"),
            share_dir: prefix.join("share"),
        })
    }

    /// Where a file `generate-docs` wrote (relative to its `--out-dir`) is installed: the
    /// directories man(1), bash-completion, zsh and fish search under the prefix.
    pub(crate) fn cli_doc_target(&self, rel: &Path) -> Option<PathBuf> {
        let mut parts = rel.components();
        let kind = parts.next()?.as_os_str().to_str()?;
        let name = parts.next()?.as_os_str();
        if parts.next().is_some() {
            return None;
        }
        let dir = match kind {
            "man8" => "man/man8",
            "bash" => "bash-completion/completions",
            "zsh" => "zsh/site-functions",
            "fish" => "fish/vendor_completions.d",
            _ => return None,
        };
        Some(self.share_dir.join(dir).join(name))
    }

    /// The operator scripts' directory, as seen on the target.
    pub(crate) fn scripts_dir(&self) -> PathBuf {
        self.data_dir.join("scripts")
    }

    /// The inactive drop-ins' directory, as seen on the target.
    pub(crate) fn dropin_dir(&self) -> PathBuf {
        self.data_dir.join("systemd")
    }

    /// The manifest, as seen on the target.
    pub(crate) fn manifest(&self) -> PathBuf {
        self.data_dir.join("install-manifest")
    }

    /// Where a target path is written: under DESTDIR.
    pub(crate) fn on_disk(&self, target: &Path) -> PathBuf {
        self.root.join(target.strip_prefix("/").unwrap_or(target))
    }

    fn staged(&self) -> bool {
        self.root != Path::new("/")
    }
}

/// `@BINDIR@`, `@DOCDIR@` and `@DROPINDIR@` in a unit template replaced by the layout's
/// directories.
pub(crate) fn render_unit(template: &str, layout: &Layout) -> String {
    template
        .replace("@BINDIR@", &layout.bin_dir.to_string_lossy())
        .replace("@DOCDIR@", &layout.doc_dir.to_string_lossy())
        .replace("@DROPINDIR@", &layout.dropin_dir().to_string_lossy())
}

/// One line of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Entry {
    /// Removed by uninstall.
    File(PathBuf),
    /// Removed by uninstall only while its content is still the installed default.
    Config(PathBuf),
}

const MANIFEST_HEADER: &str =
    "# xdpfork install manifest: written by `cargo xtask install`, read by \
`cargo xtask uninstall`.\n# \"file PATH\" is removed; \"config PATH\" is removed only while it \
still holds the default.\n";

pub(crate) fn format_manifest(entries: &BTreeSet<Entry>) -> String {
    let mut out = String::from(MANIFEST_HEADER);
    for e in entries {
        let (kind, p) = match e {
            Entry::File(p) => ("file", p),
            Entry::Config(p) => ("config", p),
        };
        out.push_str(&format!("{kind} {}\n", p.display()));
    }
    out
}

pub(crate) fn parse_manifest(text: &str) -> Result<BTreeSet<Entry>> {
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = match line.split_once(' ') {
            Some(("file", p)) if p.starts_with('/') => Entry::File(PathBuf::from(p)),
            Some(("config", p)) if p.starts_with('/') => Entry::Config(PathBuf::from(p)),
            _ => bail!(
                "manifest line {}: expected `file /path` or `config /path`, got `{line}`",
                i + 1
            ),
        };
        out.insert(entry);
    }
    Ok(out)
}

/// What to do with a default config given what is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigAction {
    /// Nothing there: install the default.
    Install,
    /// Already the default: leave it.
    Same,
    /// The operator's file: keep it, put the default at NAME.new.
    KeepAndWriteNew,
}

pub(crate) fn config_action(existing: Option<&[u8]>, default: &str) -> ConfigAction {
    match existing {
        None => ConfigAction::Install,
        Some(b) if b == default.as_bytes() => ConfigAction::Same,
        Some(_) => ConfigAction::KeepAndWriteNew,
    }
}

/// `NAME.new` beside `path`.
fn new_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".new");
    PathBuf::from(s)
}

/// A string value of `key` in table `[section]` of a TOML file, for the simple `key = "value"`
/// lines our own configs use (xtask has no TOML parser; anything fancier falls back to the
/// default, which is also what fork-agent does when the key is absent).
pub(crate) fn toml_string(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
            continue;
        }
        if current != section {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim() != key {
            continue;
        }
        let v = v.trim();
        let v = v.strip_prefix('"')?;
        let end = v.find('"')?;
        return Some(v[..end].to_owned());
    }
    None
}

/// Write `bytes` to `path` with `mode` through a temporary file and a rename, so a running
/// binary is replaced (not overwritten: ETXTBSY) and a crash never leaves half a file.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.xdpfork-tmp", name.to_string_lossy()));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// The release binaries' directory: `$CARGO_TARGET_DIR/release` or `<root>/target/release`.
pub(crate) fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| {
            if d.is_absolute() {
                d
            } else {
                build::workspace_root().join(d)
            }
        })
        .unwrap_or_else(|| build::workspace_root().join("target"))
        .join("release")
}

/// systemd is PID 1 and running (sd_booted(3): /run/systemd/system exists).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Run `cmd`; on failure print what failed (for best-effort steps).
fn run_reported(cmd: &mut Command, what: &str) -> bool {
    match cmd.status() {
        Ok(st) if st.success() => true,
        Ok(st) => {
            eprintln!("install: warning: {what} failed ({st})");
            false
        }
        Err(e) => {
            eprintln!(
                "install: warning: {what}: cannot run {:?}: {e}",
                cmd.get_program()
            );
            false
        }
    }
}

/// Entry point of `cargo xtask install`.
pub(crate) fn run(args: Args) -> Result<()> {
    let layout = Layout::new(&args.prefix, args.destdir.as_deref())?;
    if !layout.staged() && !setup::is_root()? {
        bail!("installing into / needs root (or stage it with --destdir DIR)");
    }
    let bin_src = binaries(args.bin_dir.as_deref())?;
    stage(&layout, &bin_src)?;
    if layout.staged() {
        println!(
            "install: staged under {}: create the user with systemd-sysusers and the directories \
             with systemd-tmpfiles on the target, then `systemctl daemon-reload`",
            layout.root.display()
        );
        return Ok(());
    }
    integrate_system(&layout)
}

/// The directory holding the binaries to install: `bin_dir`, or release binaries built now.
pub(crate) fn binaries(bin_dir: Option<&Path>) -> Result<PathBuf> {
    let bin_src = match bin_dir {
        Some(d) => d.to_owned(),
        None => {
            setup::ensure_ready()?;
            build::build(true)?;
            release_dir()
        }
    };
    for b in BINARIES {
        let p = bin_src.join(b);
        if !p.is_file() {
            bail!(
                "{} is missing: build it (`cargo xtask build --release`) or pass --bin-dir",
                p.display()
            );
        }
    }
    Ok(bin_src)
}

/// Write every file of the install under `layout` (binaries from `bin_src`) and the manifest;
/// nothing outside `layout.root` is touched. `cargo xtask package` builds the .deb from this.
pub(crate) fn stage(layout: &Layout, bin_src: &Path) -> Result<()> {
    let entries = install_files(layout, bin_src)?;

    let manifest = layout.on_disk(&layout.manifest());
    let mut all = match fs::read_to_string(&manifest) {
        // A reinstall keeps what an earlier install recorded (e.g. a NAME.new from then).
        Ok(text) => parse_manifest(&text)
            .with_context(|| format!("reading the earlier {}", manifest.display()))?,
        Err(e) if e.kind() == ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", manifest.display())),
    };
    all.extend(entries);
    all.insert(Entry::File(layout.manifest()));
    write_atomic(&manifest, format_manifest(&all).as_bytes(), 0o644)?;
    println!("install: manifest {}", manifest.display());
    Ok(())
}

/// Copy every file; returns the manifest entries.
fn install_files(layout: &Layout, bin_src: &Path) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut put = |target: PathBuf, bytes: &[u8], mode: u32| -> Result<()> {
        write_atomic(&layout.on_disk(&target), bytes, mode)?;
        println!("install: {}", target.display());
        entries.push(Entry::File(target));
        Ok(())
    };
    for b in BINARIES {
        let src = bin_src.join(b);
        let bytes = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        put(layout.bin_dir.join(b), &bytes, 0o755)?;
    }
    for b in BINARIES {
        for (target, bytes) in cli_docs(layout, &bin_src.join(b))? {
            put(target, &bytes, 0o644)?;
        }
    }
    for (name, template) in UNITS {
        put(
            layout.unit_dir.join(name),
            render_unit(template, layout).as_bytes(),
            0o644,
        )?;
    }
    let (name, template) = WEBRTC_DROPIN;
    put(
        layout.dropin_dir().join(name),
        render_unit(template, layout).as_bytes(),
        0o644,
    )?;
    put(
        layout.sysusers_dir.join("xdpfork.conf"),
        SYSUSERS.as_bytes(),
        0o644,
    )?;
    put(
        layout.tmpfiles_dir.join("xdpfork.conf"),
        TMPFILES.as_bytes(),
        0o644,
    )?;
    put(
        layout.doc_dir.join("operations.md"),
        OPERATIONS_DOC.as_bytes(),
        0o644,
    )?;
    for (name, text) in SCRIPTS {
        put(layout.scripts_dir().join(name), text.as_bytes(), 0o755)?;
    }
    for (name, default) in CONFIGS {
        let target = layout.conf_dir.join(name);
        let disk = layout.on_disk(&target);
        let existing = match fs::read(&disk) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", disk.display())),
        };
        match config_action(existing.as_deref(), default) {
            ConfigAction::Install => {
                write_atomic(&disk, default.as_bytes(), 0o640)?;
                println!("install: {} (default config: edit it)", target.display());
            }
            ConfigAction::Same => {
                println!("install: {} already holds the default", target.display());
            }
            ConfigAction::KeepAndWriteNew => {
                let new = new_path(&target);
                write_atomic(&layout.on_disk(&new), default.as_bytes(), 0o640)?;
                println!(
                    "install: kept your {}; the new default is {} (compare with `diff -u {} {}`)",
                    target.display(),
                    new.display(),
                    target.display(),
                    new.display()
                );
                entries.push(Entry::File(new));
            }
        }
        entries.push(Entry::Config(target));
    }
    Ok(entries)
}

/// The man pages and completions `binary generate-docs` writes, with their install targets.
/// The binary describes itself, so the pages match exactly what is installed (xtask cannot
/// link the daemons: fork-agent's build needs the BPF toolchain xtask sets up).
fn cli_docs(layout: &Layout, binary: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let name = binary
        .file_name()
        .map_or_else(|| "binary".into(), |n| n.to_string_lossy().into_owned());
    let out = std::env::temp_dir().join(format!("xdpfork-docs-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out);
    let result = (|| {
        setup::run_checked(
            Command::new(binary)
                .arg("generate-docs")
                .arg("--out-dir")
                .arg(&out),
            &format!("generating {name}'s man pages and completions"),
            "is the binary from this tree? (`generate-docs` is a hidden subcommand)",
        )?;
        let mut files = Vec::new();
        let mut stack = vec![out.clone()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                let path = e?.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path.strip_prefix(&out)?;
                let target = layout.cli_doc_target(rel).with_context(|| {
                    format!("{name} generate-docs wrote an unexpected {}", rel.display())
                })?;
                let bytes =
                    fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                files.push((target, bytes));
            }
        }
        files.sort();
        Ok(files)
    })();
    let _ = fs::remove_dir_all(&out);
    result
}

/// Without a destdir: the user, the directories, config ownership and systemd's view.
fn integrate_system(layout: &Layout) -> Result<()> {
    let sysusers = layout.sysusers_dir.join("xdpfork.conf");
    setup::run_checked(
        Command::new("systemd-sysusers").arg(&sysusers),
        "creating the xdpfork user (systemd-sysusers)",
        "install the `systemd` package",
    )?;
    let tmpfiles = layout.tmpfiles_dir.join("xdpfork.conf");
    setup::run_checked(
        Command::new("systemd-tmpfiles")
            .arg("--create")
            .arg(&tmpfiles),
        "creating /run/xdpfork and /var/lib/xdpfork (systemd-tmpfiles)",
        "install the `systemd` package",
    )?;
    // The services read their configs as the xdpfork group; others may not (tokens, secrets).
    for (name, _) in CONFIGS {
        let p = layout.conf_dir.join(name);
        setup::run_checked(
            Command::new("chown")
                .arg(format!("root:{SERVICE_GROUP}"))
                .arg(&p),
            "giving the configs to the xdpfork group",
            "is the xdpfork group there? (systemd-sysusers above)",
        )?;
    }
    fs::set_permissions(&layout.conf_dir, fs::Permissions::from_mode(0o750))
        .with_context(|| format!("chmod {}", layout.conf_dir.display()))?;
    setup::run_checked(
        Command::new("chown")
            .arg(format!("root:{SERVICE_GROUP}"))
            .arg(&layout.conf_dir),
        "giving /etc/xdpfork to the xdpfork group",
        "is the xdpfork group there? (systemd-sysusers above)",
    )?;
    if !systemd_running() {
        println!(
            "install: systemd is not running on this host: the units are in place but not loaded"
        );
        return Ok(());
    }
    setup::run_checked(
        Command::new("systemctl").arg("daemon-reload"),
        "systemctl daemon-reload",
        "see `journalctl -b -u init.scope`",
    )?;
    let active = Command::new("systemctl")
        .args(["is-active", "--quiet", "fork-agent.service"])
        .status()
        .is_ok_and(|s| s.success());
    if active {
        println!(
            "install: fork-agent is running the old binary: `systemctl restart fork-agent` \
             switches to the new one without dropping a call (pinned maps and links stay)"
        );
    }
    println!(
        "install: next: edit /etc/xdpfork/*.toml, check them with `fork-agent check-config` and \
         `sip-agent check-config`, then `systemctl enable --now fork-agent sip-agent` (or \
         `ng-agent` instead of sip-agent when a Kamailio/OpenSIPS rtpengine module drives this host)"
    );
    Ok(())
}

/// Entry point of `cargo xtask uninstall`.
pub(crate) fn run_uninstall(args: UninstallArgs) -> Result<()> {
    let layout = Layout::new(&args.prefix, args.destdir.as_deref())?;
    if !layout.staged() && !setup::is_root()? {
        bail!("uninstalling from / needs root");
    }
    let manifest = layout.on_disk(&layout.manifest());
    let text = fs::read_to_string(&manifest).with_context(|| {
        format!(
            "reading {} (was xdpfork installed with this --prefix and --destdir?)",
            manifest.display()
        )
    })?;
    let entries = parse_manifest(&text)?;
    if !layout.staged() {
        stop_and_detach(&layout, &entries)?;
    }
    let defaults: Vec<(PathBuf, &str)> = CONFIGS
        .iter()
        .map(|(name, d)| (layout.conf_dir.join(name), *d))
        .collect();
    let mut kept = Vec::new();
    for e in &entries {
        let (target, is_config) = match e {
            Entry::File(p) => (p, false),
            Entry::Config(p) => (p, true),
        };
        if target == &layout.manifest() {
            continue;
        }
        let disk = layout.on_disk(target);
        if is_config {
            let default = defaults.iter().find(|(p, _)| p == target).map(|(_, d)| *d);
            match fs::read(&disk) {
                Ok(b) if Some(b.as_slice()) == default.map(str::as_bytes) => {}
                Ok(_) => {
                    kept.push(target.clone());
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", disk.display())),
            }
        }
        match fs::remove_file(&disk) {
            Ok(()) => println!("uninstall: removed {}", target.display()),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                println!("uninstall: {} was already gone", target.display())
            }
            Err(e) => return Err(e).with_context(|| format!("removing {}", disk.display())),
        }
    }
    fs::remove_file(&manifest).with_context(|| format!("removing {}", manifest.display()))?;
    // Our own directories, when empty (a kept config keeps /etc/xdpfork).
    for d in [
        &layout.conf_dir,
        &layout.doc_dir,
        &layout.scripts_dir(),
        &layout.dropin_dir(),
        &layout.data_dir,
    ] {
        let _ = fs::remove_dir(layout.on_disk(d));
    }
    for k in &kept {
        println!(
            "uninstall: kept {} (it differs from the default; remove it yourself)",
            k.display()
        );
    }
    if !layout.staged() && systemd_running() {
        run_reported(
            Command::new("systemctl").arg("daemon-reload"),
            "systemctl daemon-reload",
        );
    }
    println!("uninstall: done");
    Ok(())
}

/// Stop the services, then remove what fork-agent created in the kernel and on disk.
fn stop_and_detach(layout: &Layout, entries: &BTreeSet<Entry>) -> Result<()> {
    if systemd_running() {
        run_reported(
            Command::new("systemctl").args([
                "disable",
                "--now",
                "sip-agent.service",
                "ng-agent.service",
                "turn-server.service",
                "fork-agent.service",
            ]),
            "stopping and disabling the services",
        );
    } else {
        println!(
            "uninstall: systemd is not running: stop any fork-agent, sip-agent, ng-agent or turn-server \
             started by hand before the data plane is detached"
        );
    }
    let config = fs::read_to_string(layout.conf_dir.join("fork-agent.toml")).unwrap_or_default();
    let pin_dir =
        toml_string(&config, "dataplane", "pin_dir").unwrap_or_else(|| DEFAULT_PIN_DIR.to_owned());
    let fork_if = toml_string(&config, "dataplane", "fork_interface")
        .unwrap_or_else(|| DEFAULT_FORK_INTERFACE.to_owned());
    let agent = layout.bin_dir.join("fork-agent");
    if Path::new(&pin_dir).exists() {
        // Removing the pinned links detaches the XDP programs; removing the map pins frees the
        // maps. Calls still up lose their kernel relay: this is the point of uninstalling.
        let unpinned = entries.contains(&Entry::File(agent.clone()))
            && run_reported(
                Command::new(&agent).args(["unpin", "--pin-dir", &pin_dir]),
                "fork-agent unpin",
            );
        if !unpinned {
            fs::remove_dir_all(&pin_dir).with_context(|| format!("removing {pin_dir}"))?;
        }
        println!("uninstall: unpinned {pin_dir} (XDP programs detached, maps freed)");
    }
    if Path::new("/sys/class/net").join(&fork_if).exists()
        && run_reported(
            Command::new("ip").args(["link", "del", &fork_if]),
            "deleting the fork veth",
        )
    {
        println!("uninstall: deleted the fork veth {fork_if}");
    }
    for d in RUNTIME_DIRS {
        match fs::remove_dir_all(d) {
            Ok(()) => println!("uninstall: removed {d}"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {d}")),
        }
    }
    println!(
        "uninstall: the xdpfork system user stays (system users are not removed, so files it \
         owned elsewhere keep a known owner); `userdel xdpfork` removes it"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_docs_go_where_man_and_the_shells_look() {
        let l = Layout::new(Path::new("/usr/local"), None).expect("layout");
        let t = |rel: &str| l.cli_doc_target(Path::new(rel));
        assert_eq!(
            t("man8/turn-server-user-add.8"),
            Some(PathBuf::from(
                "/usr/local/share/man/man8/turn-server-user-add.8"
            ))
        );
        assert_eq!(
            t("bash/sip-agent"),
            Some(PathBuf::from(
                "/usr/local/share/bash-completion/completions/sip-agent"
            ))
        );
        assert_eq!(
            t("zsh/_fork-agent"),
            Some(PathBuf::from(
                "/usr/local/share/zsh/site-functions/_fork-agent"
            ))
        );
        assert_eq!(
            t("fish/fork-agent.fish"),
            Some(PathBuf::from(
                "/usr/local/share/fish/vendor_completions.d/fork-agent.fish"
            ))
        );
        for odd in ["man1/x.1", "x", "man8/a/b.8"] {
            assert_eq!(t(odd), None, "{odd}");
        }
    }

    #[test]
    fn usr_local_keeps_systemd_files_under_the_prefix() {
        let l = Layout::new(Path::new("/usr/local"), None).expect("layout");
        assert_eq!(l.bin_dir, Path::new("/usr/local/bin"));
        assert_eq!(l.unit_dir, Path::new("/usr/local/lib/systemd/system"));
        assert_eq!(l.sysusers_dir, Path::new("/usr/local/lib/sysusers.d"));
        assert_eq!(l.tmpfiles_dir, Path::new("/usr/local/lib/tmpfiles.d"));
        assert_eq!(l.conf_dir, Path::new("/etc/xdpfork"));
        assert_eq!(
            l.manifest(),
            Path::new("/usr/local/share/xdpfork/install-manifest")
        );
        assert_eq!(
            l.on_disk(&l.bin_dir),
            Path::new("/usr/local/bin"),
            "no destdir: paths are the target's"
        );
    }

    #[test]
    fn other_prefixes_put_systemd_files_in_etc_and_destdir_prefixes_everything() {
        let l = Layout::new(Path::new("/opt/xdpfork"), Some(Path::new("/tmp/stage"))).expect("l");
        assert_eq!(l.unit_dir, Path::new("/etc/systemd/system"));
        assert_eq!(l.sysusers_dir, Path::new("/etc/sysusers.d"));
        assert_eq!(l.bin_dir, Path::new("/opt/xdpfork/bin"));
        assert_eq!(
            l.on_disk(&l.unit_dir.join("fork-agent.service")),
            Path::new("/tmp/stage/etc/systemd/system/fork-agent.service")
        );
        let usr = Layout::new(Path::new("/usr"), None).expect("l");
        assert_eq!(usr.unit_dir, Path::new("/usr/lib/systemd/system"));
    }

    #[test]
    fn relative_or_dotdot_prefixes_are_refused() {
        assert!(Layout::new(Path::new("usr/local"), None).is_err());
        assert!(Layout::new(Path::new("/usr/../etc"), None).is_err());
    }

    /// An `@UPPER_CASE@` word (systemd's own `@system-service` groups are lower case).
    fn has_placeholder(text: &str) -> bool {
        text.match_indices('@').any(|(i, _)| {
            let rest = &text[i + 1..];
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            !word.is_empty() && rest[word.len()..].starts_with('@')
        })
    }

    #[test]
    fn units_get_the_prefix_and_no_placeholder_is_left() {
        let l = Layout::new(Path::new("/opt/x"), None).expect("l");
        for (name, t) in UNITS {
            let u = render_unit(t, &l);
            // Placeholders are @UPPERCASE@; "@system-service" and the like are systemd's.
            assert!(!has_placeholder(&u), "{name} still has a placeholder: {u}");
            assert!(
                has_placeholder(t),
                "{name}: the template has no placeholder to fill"
            );
            assert!(t.contains("@BINDIR@") && u.contains("file:/opt/x/share/doc/xdpfork/"));
            let bin = name.trim_end_matches(".service");
            assert!(
                u.contains(&format!(
                    "ExecStart=/opt/x/bin/{bin} run --config /etc/xdpfork/{bin}.toml"
                )),
                "{name}: {u}"
            );
        }
    }

    #[test]
    fn manifest_round_trips_and_rejects_garbage() {
        let mut set = BTreeSet::new();
        set.insert(Entry::File(PathBuf::from("/usr/local/bin/fork-agent")));
        set.insert(Entry::Config(PathBuf::from("/etc/xdpfork/fork-agent.toml")));
        let text = format_manifest(&set);
        assert_eq!(parse_manifest(&text).expect("parse"), set);
        assert!(parse_manifest("file relative/path\n").is_err());
        assert!(parse_manifest("dir /x\n").is_err());
    }

    #[test]
    fn configs_are_never_overwritten() {
        assert_eq!(config_action(None, "a"), ConfigAction::Install);
        assert_eq!(config_action(Some(b"a"), "a"), ConfigAction::Same);
        assert_eq!(
            config_action(Some(b"edited"), "a"),
            ConfigAction::KeepAndWriteNew
        );
        assert_eq!(
            new_path(Path::new("/etc/xdpfork/sip-agent.toml")),
            Path::new("/etc/xdpfork/sip-agent.toml.new")
        );
    }

    #[test]
    fn pin_dir_is_read_from_the_dataplane_table_only() {
        let cfg = "[control]\npin_dir = \"/wrong\"\n[dataplane]\n# pin_dir = \"/commented\"\n\
                   interfaces = [\"eth0\"]\npin_dir = \"/sys/fs/bpf/mine\"  # note\n";
        assert_eq!(
            toml_string(cfg, "dataplane", "pin_dir").as_deref(),
            Some("/sys/fs/bpf/mine")
        );
        assert_eq!(toml_string(cfg, "dataplane", "fork_interface"), None);
        // The installed default names the same pin directory the unit prepares.
        let default = CONFIGS[0].1;
        assert_eq!(
            toml_string(default, "dataplane", "pin_dir").as_deref(),
            Some(DEFAULT_PIN_DIR)
        );
        assert!(UNITS[0]
            .1
            .contains(&format!("ReadWritePaths=-{DEFAULT_PIN_DIR}")));
    }
}
