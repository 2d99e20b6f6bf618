//! The .deb of `cargo xtask package` through its whole life in a clean root: installed with
//! `dpkg --root DIR --force-script-chrootless` (the maintainer scripts run on this host with
//! DPKG_ROOT=DIR, so the host's users, systemd and dpkg database stay untouched), fork-agent
//! started from the installed binary, unit and (edited) conffile the way fork-agent.service
//! starts it, a forked call, an upgrade to a rebuilt package mid-call with the agent restarted as
//! postinst restarts it, and a purge that leaves nothing behind.
//!
//! What is checked: the package holds install's file set (plus the Debian copyright and
//! changelog, minus install's manifest); its Depends are satisfied by this host's packages
//! (`dpkg --dry-run -i` against the host database; the clean root has no packages, so the real
//! install forces dependencies); postinst creates the xdpfork user, its directories and the
//! config group; the upgrade replaces the running binary, keeps the edited conffile and loses no
//! relayed packet; purge removes every packaged path, the state and runtime directories, the
//! user and the pins.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::install_support::{agent_pid, start_limited, ServiceLimits, Stage};
use crate::sip_support::stream_of;
use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use xdpfork_tests::{addrs::*, bin, bin_dir, Scenario, Topology};

/// 4000 packets at 5 ms (20 s): the upgrade (unpacking ~100 MB of debug binaries) and the
/// restart happen well inside the call.
const N: u16 = 4000;
const GAP: Duration = Duration::from_millis(5);

/// The base accounts of the clean root (what base-passwd gives every Debian system).
const SEED: [(&str, &str); 4] = [
    ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
    ("etc/group", "root:x:0:\n"),
    ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
    ("etc/gshadow", "root:*::\n"),
];

/// `cmd` with a bound on its run time; stdout, or an error with everything it printed.
fn run_bounded(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("timeout")
        .args(["120", cmd])
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `xtask package` of this target directory's binaries with `revision`; the .deb.
fn package(out: &Path, revision: &str) -> Result<PathBuf> {
    let out_s = out.to_string_lossy();
    let bins = bin_dir()?;
    let stdout = run_bounded(
        &bin("xtask")?.to_string_lossy(),
        &[
            "package",
            "--bin-dir",
            &bins.to_string_lossy(),
            "--out-dir",
            &out_s,
            "--revision",
            revision,
            // xz takes a minute per package on debug binaries; the format is the same.
            "--compression",
            "zstd",
        ],
    )?;
    let deb = stdout
        .lines()
        .find_map(|l| l.strip_prefix("package: "))
        .with_context(|| format!("xtask package named no .deb:\n{stdout}"))?;
    Ok(PathBuf::from(deb))
}

/// dpkg on the clean root; maintainer scripts run on the host with DPKG_ROOT set.
fn dpkg(root: &Path, args: &[&str]) -> Result<String> {
    let root_arg = format!("--root={}", root.display());
    let mut all = vec![root_arg.as_str(), "--force-script-chrootless"];
    all.extend_from_slice(args);
    run_bounded("dpkg", &all)
}

/// The uid and gid of `name` in the root's /etc/passwd.
fn account(root: &Path, name: &str) -> Result<Option<(u32, u32)>> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd"))?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.first() == Some(&name) && f.len() > 3 {
            return Ok(Some((f[2].parse()?, f[3].parse()?)));
        }
    }
    Ok(None)
}

/// Regular files under `root`, relative.
fn files(root: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path().strip_prefix(root)?.to_string_lossy().into_owned());
            }
        }
    }
    Ok(out)
}

/// The package's files (not directories), as dpkg-deb lists them, relative.
fn package_files(deb: &Path) -> Result<BTreeSet<String>> {
    let list = run_bounded("dpkg-deb", &["--contents", &deb.to_string_lossy()])?;
    Ok(list
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./").to_owned())
        .collect())
}

/// `/proc/PID/exe` of the agent.
fn exe(pid: i32) -> Result<String> {
    Ok(std::fs::read_link(format!("/proc/{pid}/exe"))?
        .to_string_lossy()
        .into_owned())
}

#[test]
fn deb_installs_upgrades_mid_call_without_loss_and_purges_clean() -> Result<()> {
    xdpfork_tests::require_root()?;
    let stage = Stage::new("package-deb")?;
    let out = stage.0.join("out");
    let v1 = package(&out, "1")?;
    let v2 = package(&out, "2")?;

    // The file set is install's (prefix /usr) without its manifest, plus the Debian metadata.
    let staged = stage.0.join("staged");
    run_bounded(
        &bin("xtask")?.to_string_lossy(),
        &[
            "install",
            "--prefix",
            "/usr",
            "--destdir",
            &staged.to_string_lossy(),
            "--bin-dir",
            &bin_dir()?.to_string_lossy(),
        ],
    )?;
    let mut expected = files(&staged)?;
    assert!(expected.remove("usr/share/xdpfork/install-manifest"));
    expected.insert("usr/share/doc/xdpfork/copyright".into());
    expected.insert("usr/share/doc/xdpfork/changelog.Debian.gz".into());
    let packaged = package_files(&v1)?;
    assert_eq!(packaged, expected, "package file set vs install's");
    let conffiles = run_bounded("dpkg-deb", &["--info", &v1.to_string_lossy(), "conffiles"])?;
    let conf: BTreeSet<&str> = conffiles.lines().collect();
    let etc: BTreeSet<String> = packaged
        .iter()
        .filter(|p| p.starts_with("etc/"))
        .map(|p| format!("/{p}"))
        .collect();
    assert_eq!(
        conf,
        etc.iter().map(String::as_str).collect(),
        "conffiles = every file under /etc"
    );
    // Depends hold on this host (its dpkg database; --dry-run changes nothing).
    run_bounded("dpkg", &["--dry-run", "--install", &v1.to_string_lossy()])
        .context("the package's Depends are not satisfied on this host")?;

    // A clean root: an empty dpkg database and the base accounts.
    let root = stage.0.join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "")?;
    for (path, text) in SEED {
        std::fs::write(root.join(path), text)?;
    }
    dpkg(
        &root,
        &["--force-depends", "--install", &v1.to_string_lossy()],
    )?;

    // postinst: the user, its directories, the config group.
    let (uid, gid) = account(&root, "xdpfork")?.context("postinst created no xdpfork user")?;
    assert!(uid > 0 && uid < 1000, "xdpfork is a system user: uid {uid}");
    for d in ["run/xdpfork", "var/lib/xdpfork"] {
        let m = std::fs::metadata(root.join(d)).with_context(|| format!("stat {d}"))?;
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (uid, gid, 0o750),
            "{d}"
        );
    }
    let m = std::fs::metadata(root.join("etc/xdpfork"))?;
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, gid, 0o750));
    for f in etc {
        let m = std::fs::metadata(root.join(f.trim_start_matches('/')))?;
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, gid, 0o640),
            "{f}"
        );
    }

    // "Start the units": fork-agent as its installed unit runs it, with the conffile edited to
    // the test topology (its own pin directory and a fork veth name no host uses).
    let mut topo = Topology::new()?;
    let (speech_out, summary) = Scenario::spawn_speech_server(&mut topo)?;
    std::fs::create_dir_all(&topo.pin_dir)?;
    std::os::unix::fs::chown(&topo.pin_dir, Some(uid), Some(gid))?; // the unit's ExecStartPre=+
    let config = root.join("etc/xdpfork/fork-agent.toml");
    let socket = root.join("run/xdpfork/fork-agent.sock");
    let fork_if = format!("xfd{}", std::process::id() % 100_000);
    let edited = Scenario::fork_agent_config(
        &topo.pin_dir,
        &socket,
        &root.join("var/lib/xdpfork"),
        SPEECH_WS,
    )
    .replace("\"xfork0\"", &format!("\"{fork_if}\""));
    std::fs::write(&config, &edited)?; // keeps the conffile's owner and mode
    let mut limits = ServiceLimits::from_unit(&std::fs::read_to_string(
        root.join("usr/lib/systemd/system/fork-agent.service"),
    )?)?;
    assert_eq!(limits.exec_start[0], "/usr/bin/fork-agent");
    (limits.uid, limits.gid) = (uid, gid);
    let installed_bin = root.join("usr/bin");
    let mut s = Scenario {
        topo,
        socket,
        config: config.clone(),
        speech_out,
        summary,
    };
    start_limited(&mut s, &limits, &installed_bin, &[])?;
    s.add_call_flows(false)?;
    s.start_fork("guid-deb-upgrade", A_LOCAL, B_LOCAL)?;
    let audio = s.play_caller_audio(N, 0, 0xdeb, GAP)?;
    std::thread::sleep(GAP * u32::from(N) / 10);

    // The upgrade: dpkg replaces the running binary (rename), prerm upgrade leaves the agent
    // running; then the restart postinst asks systemd for (try-restart: SIGTERM, start).
    let old = agent_pid(&config).context("fork-agent not running before the upgrade")?;
    dpkg(
        &root,
        &["--force-depends", "--install", &v2.to_string_lossy()],
    )?;
    assert!(
        exe(old)?.ends_with(" (deleted)"),
        "the upgrade did not replace the running binary: {}",
        exe(old)?
    );
    let status = dpkg(&root, &["--status", "xdpfork"])?;
    assert!(status.contains("\nVersion: 0.1.0-2\n"), "{status}");
    assert_eq!(
        std::fs::read_to_string(&config)?,
        edited,
        "the upgrade replaced the edited conffile"
    );
    s.topo.signal("fork-agent", Signal::SIGTERM)?;
    start_limited(&mut s, &limits, &installed_bin, &[])?;
    let new = agent_pid(&config).context("fork-agent not running after the upgrade")?;
    assert_eq!(
        exe(new)?,
        installed_bin.join("fork-agent").to_string_lossy(),
        "the restarted agent runs the upgraded binary"
    );
    let during = s.flow(A_LOCAL)?["packets"].as_u64().unwrap_or(u64::MAX);
    if during >= u64::from(N) {
        bail!("the upgrade took longer than the call ({during} packets relayed): raise N");
    }

    let (sent, got) = audio.finish()?;
    assert_eq!(
        got.len(),
        sent.len(),
        "the callee lost relayed packets across the upgrade"
    );
    assert!(got == sent, "relayed packets differ from the ones sent");
    let a = s.flow(A_LOCAL)?;
    assert_eq!(a["packets"], u64::from(N), "flow after the upgrade: {a}");
    let forks = s.ctl(serde_json::json!({"v":1,"op":"show_forks"}))?;
    assert_eq!(forks.as_array().map(Vec::len), Some(1), "forks: {forks}");
    let summary = s.speech_summary()?;
    let caller = stream_of(&summary, "caller");
    assert!(
        caller["resumed_starts"].as_u64() >= Some(1),
        "the upgraded agent resumes the stream: {caller}"
    );

    // Purge: the units stop first (prerm's `systemctl disable --now`; here by hand), then
    // prerm unpins, postrm purge removes the directories and the user.
    s.topo.signal("fork-agent", Signal::SIGTERM)?;
    assert!(s.topo.pin_dir.exists(), "the pins outlive the agent");
    dpkg(&root, &["--purge", "xdpfork"])?;
    assert!(
        !s.topo.pin_dir.exists(),
        "prerm did not unpin {}",
        s.topo.pin_dir.display()
    );
    for p in &packaged {
        assert!(!root.join(p).exists(), "purge left {p}");
    }
    for d in [
        "etc/xdpfork",
        "run/xdpfork",
        "var/lib/xdpfork",
        "usr/share/xdpfork",
    ] {
        assert!(!root.join(d).exists(), "purge left {d}");
    }
    assert_eq!(account(&root, "xdpfork")?, None, "purge left the user");
    for (path, text) in SEED {
        assert_eq!(
            std::fs::read_to_string(root.join(path))?,
            text,
            "{path} after purge"
        );
    }
    // Nothing else: only dpkg's database and the account tools' backups and lock remain.
    let left: Vec<String> = files(&root)?
        .into_iter()
        .filter(|p| !p.starts_with("var/lib/dpkg/"))
        .filter(|p| !SEED.iter().any(|(s, _)| p == s || *p == format!("{s}-")))
        .filter(|p| p != "etc/.pwd.lock")
        .collect();
    assert!(left.is_empty(), "purge left files: {left:?}");
    let listed = dpkg(&root, &["--status", "xdpfork"]);
    assert!(
        listed
            .as_ref()
            .map_or(true, |st| st.contains("not-installed")),
        "dpkg still knows the package: {listed:?}"
    );
    Ok(())
}
