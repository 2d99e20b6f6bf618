//! `cargo xtask install --destdir` stages exactly the documented file set with the right modes,
//! never overwrites an operator's config (a `.new` appears beside it instead), `uninstall` removes
//! exactly what was installed and keeps the edited config, and the installed default configs pass
//! each binary's `check-config` at the paths the units use.
//!
//! The xtask binary and the agents come from this test's target directory (`cargo build` builds
//! them: xtask is a default member), passed with `--bin-dir` so no release build is needed.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use xdpfork_tests::{bin, bin_dir, require_root};

/// Every file a staged `install --prefix /usr/local` writes, relative to DESTDIR, with its mode.
const EXPECTED: &[(&str, u32)] = &[
    ("etc/xdpfork/fork-agent.toml", 0o640),
    ("etc/xdpfork/ng-agent.toml", 0o640),
    ("etc/xdpfork/sip-agent.toml", 0o640),
    ("etc/xdpfork/turn-server.toml", 0o640),
    ("etc/xdpfork/turn-users", 0o640),
    ("usr/local/bin/fork-agent", 0o755),
    ("usr/local/bin/ng-agent", 0o755),
    ("usr/local/bin/sip-agent", 0o755),
    ("usr/local/bin/turn-server", 0o755),
    ("usr/local/lib/systemd/system/fork-agent.service", 0o644),
    ("usr/local/lib/systemd/system/ng-agent.service", 0o644),
    ("usr/local/lib/systemd/system/sip-agent.service", 0o644),
    ("usr/local/lib/systemd/system/turn-server.service", 0o644),
    ("usr/local/lib/sysusers.d/xdpfork.conf", 0o644),
    ("usr/local/lib/tmpfiles.d/xdpfork.conf", 0o644),
    ("usr/local/share/doc/xdpfork/operations.md", 0o644),
    ("usr/local/share/xdpfork/install-manifest", 0o644),
    // Generated from each binary's clap definition (`generate-docs`).
    (
        "usr/local/share/bash-completion/completions/fork-agent",
        0o644,
    ),
    (
        "usr/local/share/bash-completion/completions/ng-agent",
        0o644,
    ),
    (
        "usr/local/share/bash-completion/completions/sip-agent",
        0o644,
    ),
    (
        "usr/local/share/bash-completion/completions/turn-server",
        0o644,
    ),
    ("usr/local/share/zsh/site-functions/_fork-agent", 0o644),
    ("usr/local/share/zsh/site-functions/_ng-agent", 0o644),
    ("usr/local/share/zsh/site-functions/_sip-agent", 0o644),
    ("usr/local/share/zsh/site-functions/_turn-server", 0o644),
    (
        "usr/local/share/fish/vendor_completions.d/fork-agent.fish",
        0o644,
    ),
    (
        "usr/local/share/fish/vendor_completions.d/ng-agent.fish",
        0o644,
    ),
    (
        "usr/local/share/fish/vendor_completions.d/sip-agent.fish",
        0o644,
    ),
    (
        "usr/local/share/fish/vendor_completions.d/turn-server.fish",
        0o644,
    ),
    (
        "usr/local/share/xdpfork/scripts/xdpfork-capture-fork",
        0o755,
    ),
    ("usr/local/share/xdpfork/scripts/xdpfork-maps", 0o755),
    ("usr/local/share/xdpfork/scripts/xdpfork-try-fork", 0o755),
    // Inactive: an operator links it into ng-agent.service.d for `[webrtc]`.
    (
        "usr/local/share/xdpfork/systemd/ng-agent-webrtc.conf",
        0o644,
    ),
];

/// Man pages: one per binary and one per subcommand at every level (`BINARY-SUB-SUBSUB.8`).
/// The full list follows the binaries' subcommands, so the test pins a few of each binary and
/// checks every page is named after one.
const MAN_DIR: &str = "usr/local/share/man/man8/";
const MAN_PAGES: &[&str] = &[
    "fork-agent.8",
    "fork-agent-run.8",
    "fork-agent-ctl.8",
    "fork-agent-ctl-show.8",
    "ng-agent.8",
    "ng-agent-run.8",
    "sip-agent.8",
    "sip-agent-run.8",
    "sip-agent-ctl.8",
    "turn-server.8",
    "turn-server-user.8",
    "turn-server-user-add.8",
    "turn-server-credential.8",
];

/// Files with their permission bits, relative to DESTDIR.
type FileSet = BTreeSet<(String, u32)>;

/// Splits `files` into man pages (checked: named after a binary, 0644, a man page that
/// documents the binary's version) and the rest.
fn split_man_pages(d: &Path, files: FileSet) -> Result<(BTreeSet<String>, FileSet)> {
    let (man, rest): (BTreeSet<_>, BTreeSet<_>) =
        files.into_iter().partition(|(p, _)| p.starts_with(MAN_DIR));
    let mut pages = BTreeSet::new();
    for (p, mode) in man {
        let page = p[MAN_DIR.len()..].to_owned();
        assert_eq!(mode, 0o644, "{p}");
        assert!(
            page.ends_with(".8")
                && ["fork-agent", "ng-agent", "sip-agent", "turn-server"]
                    .iter()
                    .any(|b| page == format!("{b}.8") || page.starts_with(&format!("{b}-"))),
            "unexpected man page {p}"
        );
        let text = std::fs::read_to_string(d.join(&p))?;
        assert!(
            text.contains(".TH ") && text.contains(concat!("xdpfork ", env!("CARGO_PKG_VERSION"))),
            "{p} is not a generated man page:\n{text}"
        );
        pages.insert(page);
    }
    for want in MAN_PAGES {
        assert!(pages.contains(*want), "no man page {want}: {pages:?}");
    }
    Ok((pages, rest))
}

/// A scratch DESTDIR removed on drop.
struct Stage(PathBuf);

impl Stage {
    fn new(name: &str) -> Result<Stage> {
        let dir = std::env::temp_dir().join(format!("xdpfork-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Stage(dir))
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn xtask(args: &[&str], destdir: &Path) -> Result<String> {
    let out = Command::new(bin("xtask")?)
        .args(args)
        .arg("--destdir")
        .arg(destdir)
        .output()
        .context("running xtask")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "xtask {args:?} failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

fn install(destdir: &Path) -> Result<String> {
    let bins = bin_dir()?;
    let bins = bins.to_string_lossy();
    xtask(&["install", "--bin-dir", &bins], destdir)
}

/// Files (not directories) under `root`, relative, with their permission bits.
fn files(root: &Path) -> Result<BTreeSet<(String, u32)>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(root)?.to_string_lossy().into_owned();
                out.insert((rel, meta.permissions().mode() & 0o7777));
            }
        }
    }
    Ok(out)
}

fn expected() -> BTreeSet<(String, u32)> {
    EXPECTED.iter().map(|(p, m)| (p.to_string(), *m)).collect()
}

#[test]
fn staged_install_writes_the_file_set_keeps_edited_configs_and_uninstalls_exactly() -> Result<()> {
    let stage = Stage::new("install-files")?;
    let d = &stage.0;
    let out = install(d)?;
    let (pages, rest) = split_man_pages(d, files(d)?)?;
    assert_eq!(rest, expected(), "installed file set; output:\n{out}");
    // The completions know the subcommands.
    let bash =
        std::fs::read_to_string(d.join("usr/local/share/bash-completion/completions/turn-server"))?;
    assert!(
        bash.contains("credential") && bash.contains("--password-stdin"),
        "{bash}"
    );

    // The units run the installed binaries with the installed configs.
    let unit = std::fs::read_to_string(d.join("usr/local/lib/systemd/system/fork-agent.service"))?;
    assert!(
        unit.contains(
            "\nExecStart=/usr/local/bin/fork-agent run --config /etc/xdpfork/fork-agent.toml\n"
        ),
        "{unit}"
    );
    // The binaries are the ones given, byte for byte.
    for b in ["fork-agent", "sip-agent", "ng-agent", "turn-server"] {
        let a = std::fs::read(bin(b)?)?;
        let i = std::fs::read(d.join("usr/local/bin").join(b))?;
        assert!(a == i, "{b} differs from its source");
    }

    // An operator edits one config; a reinstall keeps it and puts the default beside it.
    let sip = d.join("etc/xdpfork/sip-agent.toml");
    let default = std::fs::read_to_string(&sip)?;
    let edited = default.replace("192.0.2.10:5060", "198.51.100.7:5060");
    assert_ne!(edited, default);
    std::fs::write(&sip, &edited)?;
    let out = install(d)?;
    assert!(
        out.contains("kept your /etc/xdpfork/sip-agent.toml")
            && out.contains("/etc/xdpfork/sip-agent.toml.new"),
        "reinstall must say it kept the config: {out}"
    );
    assert_eq!(std::fs::read_to_string(&sip)?, edited, "config overwritten");
    assert_eq!(
        std::fs::read_to_string(d.join("etc/xdpfork/sip-agent.toml.new"))?,
        default
    );
    let mut with_new = expected();
    with_new.insert(("etc/xdpfork/sip-agent.toml.new".into(), 0o640));
    with_new.remove(&("etc/xdpfork/sip-agent.toml".to_string(), 0o640));
    let (pages_now, rest) = split_man_pages(d, files(d)?)?;
    assert_eq!(pages_now, pages, "man pages after reinstall");
    let now: BTreeSet<(String, u32)> = rest
        .into_iter()
        .filter(|(p, _)| p != "etc/xdpfork/sip-agent.toml")
        .collect();
    assert_eq!(now, with_new, "file set after reinstall");

    // Uninstall removes everything it installed, the .new included, and keeps the edit.
    let out = xtask(&["uninstall"], d)?;
    let left: Vec<String> = files(d)?.into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        left,
        vec!["etc/xdpfork/sip-agent.toml".to_string()],
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&sip)?, edited);
    assert!(out.contains("kept /etc/xdpfork/sip-agent.toml"), "{out}");

    // A second uninstall has no manifest to go by and says so.
    let err = xtask(&["uninstall"], d).expect_err("no manifest left");
    assert!(err.to_string().contains("install-manifest"), "{err}");
    Ok(())
}

#[test]
fn installed_default_configs_pass_check_config() -> Result<()> {
    // A private mount namespace overlays the staged /etc on the host's, so each binary checks
    // the file at the path its unit names, and the files it refers to (turn-users) resolve.
    require_root()?;
    let stage = Stage::new("install-check")?;
    let d = &stage.0;
    install(d)?;
    for b in ["fork-agent", "sip-agent", "ng-agent", "turn-server"] {
        let script = format!(
            "mount -t overlay overlay -o lowerdir={etc}:/etc /etc && \
             exec {bin} check-config --config /etc/xdpfork/{b}.toml",
            etc = d.join("etc").display(),
            bin = d.join("usr/local/bin").join(b).display(),
        );
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .output()
            .context("running unshare (util-linux)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{b} check-config of the installed default failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.starts_with(&format!("/etc/xdpfork/{b}.toml: ok")),
            "{b}: {stdout}"
        );
    }
    Ok(())
}
