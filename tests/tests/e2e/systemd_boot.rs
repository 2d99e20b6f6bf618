//! The installed units under a real systemd (docs/operations.md "Readiness and the watchdog"):
//! this host's `/lib/systemd/systemd` boots as PID 1 of its own PID, mount, UTS, IPC, network and
//! cgroup namespaces, over an overlay of this host's root; `cargo xtask install` runs in there for
//! real (systemd-sysusers, systemd-tmpfiles, `systemctl daemon-reload`); fork-agent, sip-agent,
//! ng-agent and turn-server start from the installed units with the installed default configs
//! (the namespace's eth0, one end of a veth pair, carries their 192.0.2.10).
//!
//! What is checked: each unit is `Type=notify` and active with its `STATUS=` text and no restart
//! (systemd saw `READY=1`); fork-agent's XDP program is on eth0; `GET /metrics` answers on
//! 9464-9467; `systemctl reload` runs each `ExecReload=` and the daemon applies it (its
//! `config_reloads_total{result="ok"}` reads 1, same main PID, still active); and the host's
//! /etc/xdpfork and /usr/local/lib/systemd/system are as before.
//!
//! The `ng_agent_with_webrtc_*` tests boot the same units with a `[webrtc]` ng-agent config and
//! a gateway namespace (docs/operations.md "WebRTC bridging"): with the installed
//! ng-agent-webrtc.conf linked in, ng-agent is ready, holds no capability once started and
//! bridges a browser offer; without it, or with it narrowed again, it fails at start naming what
//! it lacks.
//!
//! Isolation: systemd's unit search path (`$SYSTEMD_UNIT_PATH`) holds only copies of the host's
//! `*.target` and `*.slice` units (not their `.wants/`) and the installed xdpfork units, and it
//! boots into a target of its own, so none of the host's units can start. The overlay's upper
//! layer, /run and /tmp are tmpfs that vanish with the mount namespace; /proc/sys is read-only
//! (PID 1 would otherwise raise fs.file-max, which is global). Teardown SIGKILLs the namespace's
//! PID 1, which makes the kernel kill everything in it, then removes its cgroup.

#![allow(clippy::disallowed_methods)] // wall clock bounds the waits on real processes

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ng_agent::core::bencode::{self, Value};
use xdpfork_tests::{bin, bin_dir};

use crate::install_support::Stage;

const SYSTEMD: &str = "/lib/systemd/systemd";

/// Unit, metrics port.
const DAEMONS: [(&str, u16); 4] = [
    ("fork-agent.service", 9464),
    ("sip-agent.service", 9465),
    ("turn-server.service", 9466),
    ("ng-agent.service", 9467),
];

/// Run twice, as PID 1 of the new PID namespace: `cgroup` moves it into the cgroup given and
/// re-runs it in a new cgroup namespace rooted there (so the unshare parent, outside the PID
/// namespace, stays out of the tree systemd owns); `root` builds the root and execs systemd.
const BOOT: &str = r#"#!/bin/bash
set -eux
phase=$1 cg=$2 stage=$3 ws=$4 bins=$5 bpffs=$6
if [ "$phase" = cgroup ]; then
    echo $$ > "$cg/cgroup.procs"
    exec unshare --cgroup "$0" root "$cg" "$stage" "$ws" "$bins" "$bpffs"
fi
mount --make-rprivate /
mount -t tmpfs tmpfs "$stage/mnt"
mkdir "$stage/mnt/upper" "$stage/mnt/work" "$stage/mnt/root"
r=$stage/mnt/root
mount -t overlay overlay -o "lowerdir=/,upperdir=$stage/mnt/upper,workdir=$stage/mnt/work" "$r"
mount -t proc proc "$r/proc"
mount --bind "$r/proc/sys" "$r/proc/sys"
mount -o remount,bind,ro "$r/proc/sys"
mount -t sysfs sysfs "$r/sys"
mount -t cgroup2 cgroup2 "$r/sys/fs/cgroup"
# A host's systemd mounts bpffs at boot; `absent` leaves it to fork-agent.service.
if [ "$bpffs" = mounted ]; then mount -t bpf bpf "$r/sys/fs/bpf"; fi
mount --rbind /dev "$r/dev"
mount -t tmpfs tmpfs "$r/run"
mount -t tmpfs tmpfs "$r/tmp"
# The host may hold units of its own there: the namespace starts with none.
mkdir -p "$r/usr/local/lib/systemd/system" "$r/run/xdpfork-test/units" "$r$ws" "$r$bins"
mount -t tmpfs tmpfs "$r/usr/local/lib/systemd/system"
cp "$stage/units/"* "$r/run/xdpfork-test/units/"
# Visible at the same paths inside, whatever file system they live on.
mount --bind "$ws" "$r$ws"
mount --bind "$bins" "$r$bins"
ip link set lo up
ip link add eth0 type veth peer name eth0-peer
ip addr add 192.0.2.10/24 dev eth0
ip link set eth0 up
ip link set eth0-peer up
echo xdpfork-test > "$r/etc/hostname"
cd "$r"
mkdir -p oldroot
pivot_root . oldroot
umount -l /oldroot
rmdir /oldroot
exec env -i container=xdpfork-test \
    SYSTEMD_UNIT_PATH=/run/xdpfork-test/units:/usr/local/lib/systemd/system \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --system --unit=xdpfork-test.target --log-target=kmsg --log-level=warning
"#;

/// The target systemd boots into: nothing but itself (the test starts the units).
const TARGET: &str = "[Unit]\nDescription=xdpfork systemd boot test\n";

/// The booted namespace; dropping it kills everything in it and removes its cgroup.
struct Booted {
    unshare: Child,
    /// systemd, as this host's PID namespace sees it.
    pid: u32,
    cgroup: PathBuf,
}

impl Drop for Booted {
    fn drop(&mut self) {
        // PID 1's death kills the rest of its PID namespace; the mount and network namespaces
        // (overlay, tmpfs, bpffs pins, veth and XDP) go with their last process.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while remove_tree(&self.cgroup).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// rmdir of a cgroup and its children, deepest first (cgroup directories hold no files to
/// remove: their files go with the directory).
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

/// Where this process sits in the cgroup2 hierarchy, as a host path (hybrid hosts mount it on
/// /sys/fs/cgroup/unified, unified ones on /sys/fs/cgroup).
fn own_cgroup2() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mount = mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_owned())
        })
        .context("no cgroup2 hierarchy mounted: systemd needs one to own a subtree of")?;
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup2 entry in /proc/self/cgroup")?;
    Ok(Path::new(&mount).join(path.trim_start_matches('/')))
}

/// Copies of the host's targets and slices (their `.wants/` directories are what would start
/// the host's units; they stay behind) and the boot target.
fn stage_units(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir("/lib/systemd/system")? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_file() && (name.ends_with(".target") || name.ends_with(".slice")) {
            std::fs::copy(e.path(), dir.join(&name))?;
        }
    }
    std::fs::write(dir.join("xdpfork-test.target"), TARGET)?;
    Ok(())
}

/// Boots systemd in `stage`; `bpffs_mounted`: whether /sys/fs/bpf is mounted before it runs.
fn boot(stage: &Path, bpffs_mounted: bool) -> Result<Booted> {
    if !Path::new(SYSTEMD).exists() {
        bail!("{SYSTEMD} is missing: install the `systemd` package (`cargo xtask setup`)");
    }
    stage_units(&stage.join("units"))?;
    std::fs::create_dir_all(stage.join("mnt"))?;
    let script = stage.join("boot.sh");
    std::fs::write(&script, BOOT)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let cgroup = own_cgroup2()?.join(format!("xdpfork-systemd-{}", std::process::id()));
    let _ = remove_tree(&cgroup);
    std::fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let log = std::fs::File::create(stage.join("boot.log"))?;
    let unshare = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
        ])
        .arg(&script)
        .arg("cgroup")
        .arg(&cgroup)
        .arg(stage)
        .arg(ws)
        .arg(bin_dir()?)
        .arg(if bpffs_mounted { "mounted" } else { "absent" })
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("running unshare (util-linux)")?;
    let unshare_pid = unshare.id();
    let mut booted = Booted {
        unshare,
        pid: 0,
        cgroup,
    };
    // The forked child keeps its PID through every exec up to systemd's.
    let children = format!("/proc/{unshare_pid}/task/{unshare_pid}/children");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if booted.pid == 0 {
            booted.pid = std::fs::read_to_string(&children)
                .unwrap_or_default()
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
        }
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", booted.pid));
        if booted.pid != 0 && comm.is_ok_and(|c| c.trim() == "systemd") {
            break;
        }
        if booted.unshare.try_wait()?.is_some() || Instant::now() > deadline {
            bail!(
                "systemd did not start:\n{}",
                std::fs::read_to_string(stage.join("boot.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // `is-system-running --wait` needs D-Bus; the namespace has only systemd's private socket.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = booted.run(&["systemctl", "is-system-running"]);
        match state {
            Ok(s) if s.trim() == "running" => return Ok(booted),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => bail!(
                "systemd did not reach its target: {other:?}\n{}",
                booted
                    .run(&["systemctl", "list-units", "--failed", "--no-pager"])
                    .unwrap_or_default()
            ),
        }
    }
}

impl Booted {
    /// `args` inside every namespace of the booted systemd; stdout, or an error with all output.
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.pid.to_string())
            .args(["-a", "--"])
            .args(args)
            .output()
            .context("running nsenter (util-linux)")?;
        if !out.status.success() {
            bail!(
                "`{}` in the namespace failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `systemctl show -p ...` of `unit` as (property, value) pairs.
    fn show(&self, unit: &str) -> Result<Vec<(String, String)>> {
        let text = self.run(&[
            "systemctl",
            "show",
            "-p",
            "Type,ActiveState,SubState,StatusText,NRestarts,MainPID",
            unit,
        ])?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    fn status(&self, unit: &str) -> String {
        self.run(&["systemctl", "status", "--no-pager", "--lines=0", unit])
            .unwrap_or_else(|e| e.to_string())
    }

    fn scrape(&self, port: u16) -> Result<String> {
        self.run(&[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{port}/metrics"),
        ])
    }
}

fn prop<'a>(props: &'a [(String, String)], key: &str) -> &'a str {
    props
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// The value of the one `*config_reloads_total{result="ok"}` sample in a scrape.
fn reloads_ok(text: &str) -> Result<f64> {
    let values: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| k.ends_with("config_reloads_total{result=\"ok\"}"))
        .map(|(_, v)| v)
        .collect();
    match values.as_slice() {
        [v] => Ok(v.trim().parse()?),
        _ => bail!("not one config_reloads_total{{result=\"ok\"}} sample:\n{text}"),
    }
}

/// What the host has at the paths an install inside writes to.
fn host_view() -> Vec<(PathBuf, bool)> {
    [
        "/etc/xdpfork",
        "/usr/local/lib/systemd/system/fork-agent.service",
        "/usr/local/bin/fork-agent",
    ]
    .iter()
    .map(|p| (PathBuf::from(p), Path::new(p).exists()))
    .collect()
}

#[test]
fn installed_units_are_ready_through_sd_notify_under_systemd() -> Result<()> {
    xdpfork_tests::require_root()?;
    let host_before = host_view();
    let stage = Stage::new("systemd-boot")?;
    let t0 = Instant::now();
    let booted = boot(&stage.0, true)?;
    let booted_in = t0.elapsed();

    let t = Instant::now();
    let xtask = bin("xtask")?.to_string_lossy().into_owned();
    let bins = bin_dir()?.to_string_lossy().into_owned();
    booted.run(&[&xtask, "install", "--bin-dir", &bins])?;
    let installed_in = t.elapsed();

    let t = Instant::now();
    let units: Vec<&str> = DAEMONS.iter().map(|(u, _)| *u).collect();
    let mut start = vec!["timeout", "120", "systemctl", "start"];
    start.extend(&units);
    if let Err(e) = booted.run(&start) {
        let status: Vec<String> = units.iter().map(|u| booted.status(u)).collect();
        bail!("{e}\n{}", status.join("\n"));
    }
    let started_in = t.elapsed();

    let mut pids = Vec::new();
    for (unit, port) in DAEMONS {
        let p = booted.show(unit)?;
        let status = booted.status(unit);
        assert_eq!(prop(&p, "Type"), "notify", "{unit}:\n{status}");
        assert_eq!(
            (prop(&p, "ActiveState"), prop(&p, "SubState")),
            ("active", "running"),
            "{unit}:\n{status}"
        );
        assert!(!prop(&p, "StatusText").is_empty(), "{unit}: no STATUS=");
        assert_eq!(prop(&p, "NRestarts"), "0", "{unit}:\n{status}");
        println!("{unit}: StatusText={}", prop(&p, "StatusText"));
        let before = booted.scrape(port)?;
        assert_eq!(reloads_ok(&before)?, 0.0, "{unit} reloaded before reload");
        pids.push(prop(&p, "MainPID").to_owned());
    }
    let link = booted.run(&["ip", "-d", "link", "show", "eth0"])?;
    assert!(link.contains("prog/xdp"), "no XDP program on eth0:\n{link}");

    let t = Instant::now();
    for ((unit, port), pid) in DAEMONS.iter().zip(&pids) {
        booted.run(&["timeout", "60", "systemctl", "reload", unit])?;
        // ExecReload= only sends SIGHUP: wait for the daemon to count it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while reloads_ok(&booted.scrape(*port)?)? < 1.0 {
            if Instant::now() > deadline {
                bail!("{unit} did not apply the reload:\n{}", booted.status(unit));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(reloads_ok(&booted.scrape(*port)?)?, 1.0, "{unit}");
        let p = booted.show(unit)?;
        assert_eq!(
            prop(&p, "MainPID"),
            pid,
            "{unit} restarted instead of reloading"
        );
        assert_eq!(prop(&p, "ActiveState"), "active", "{unit}");
        assert_eq!(prop(&p, "NRestarts"), "0", "{unit}");
        println!("{unit}: after reload StatusText={}", prop(&p, "StatusText"));
    }
    let reloaded_in = t.elapsed();
    println!(
        "timings: boot {booted_in:?}, install {installed_in:?}, start {started_in:?}, \
         reload x4 {reloaded_in:?}"
    );

    drop(booted);
    assert_eq!(host_view(), host_before, "the host changed");
    Ok(())
}

/// A host whose /sys/fs/bpf is not mounted: fork-agent.service's `ExecStartPre=+` mounts it in
/// the host's (here: systemd's) mount namespace, so the later lines and the agent see it and
/// the pins outlive the service.
#[test]
fn fork_agent_service_mounts_bpffs_where_the_host_has_not() -> Result<()> {
    xdpfork_tests::require_root()?;
    let stage = Stage::new("systemd-boot-bpffs")?;
    let booted = boot(&stage.0, false)?;
    assert!(
        booted.run(&["mountpoint", "-q", "/sys/fs/bpf"]).is_err(),
        "bpffs is mounted before the service starts"
    );
    let xtask = bin("xtask")?.to_string_lossy().into_owned();
    let bins = bin_dir()?.to_string_lossy().into_owned();
    booted.run(&[&xtask, "install", "--bin-dir", &bins])?;
    let unit = "fork-agent.service";
    if let Err(e) = booted.run(&["timeout", "120", "systemctl", "start", unit]) {
        // No journald here: the failed line and its status are in ExecStartPre's record.
        let pre = booted
            .run(&[
                "systemctl",
                "show",
                "-p",
                "ExecStartPre",
                "-p",
                "Result",
                unit,
            ])
            .unwrap_or_default();
        bail!("{e}\n{}\n{pre}", booted.status(unit));
    }
    let p = booted.show(unit)?;
    assert_eq!(prop(&p, "ActiveState"), "active", "{}", booted.status(unit));
    let fs = booted.run(&["stat", "-f", "-c", "%T", "/sys/fs/bpf"])?;
    assert_eq!(fs.trim(), "bpf_fs", "in systemd's own mount namespace");
    booted.run(&["test", "-d", "/sys/fs/bpf/xdpfork"])?;
    booted.run(&["timeout", "60", "systemctl", "stop", unit])?;
    let pins = booted.run(&["ls", "/sys/fs/bpf/xdpfork"])?;
    assert!(
        pins.contains("FLOWS"),
        "the pins outlive the service: {pins}"
    );
    Ok(())
}

/// The gateway namespace `[webrtc]` names, made in the booted namespace the way docs/webrtc.md
/// "The gateway peer" asks the operator to: a veth with `gw0` inside, `fg0` outside.
const GATEWAY_NETNS: &str = "ip netns add xdpfork-gw
ip link add fg0 type veth peer name gw0 netns xdpfork-gw
ip addr add 10.77.9.1/24 dev fg0
ip link set fg0 up
ip -n xdpfork-gw addr add 10.77.9.2/24 dev gw0
ip -n xdpfork-gw link set gw0 up
";

const WEBRTC_SECTION: &str = "
[webrtc]
gateway_netns = \"/run/netns/xdpfork-gw\"
gateway_address = \"10.77.9.2\"
kernel_address = \"10.77.9.1\"
";

/// A browser's offer (ICE-lite peer, DTLS actpass); the fingerprint is never checked here, as
/// no DTLS runs.
const BROWSER_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nt=0 0\r\n\
m=audio 50000 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 198.51.100.7\r\na=mid:0\r\na=rtcp-mux\r\n\
a=rtpmap:0 PCMU/8000\r\na=ice-ufrag:brws\r\na=ice-pwd:browserpasswordbrowserpw\r\n\
a=fingerprint:sha-256 \
AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\
\r\na=setup:actpass\r\na=sendrecv\r\n";

/// Where the test's own drop-in sends ng-agent's output (the namespace has no journald).
const NG_LOG: &str = "/run/xdpfork-test/ng-agent.log";

/// Boots, installs, makes the gateway namespace and appends `[webrtc]` to the installed
/// ng-agent.toml; with `dropin`, enables the installed ng-agent-webrtc.conf. systemd's unit path
/// here is /run/xdpfork-test/units (not /etc/systemd/system, docs/operations.md "WebRTC
/// bridging"), so the drop-in is linked into that directory's ng-agent.service.d, which
/// systemd reads the same way.
/// `narrow`, when not empty, is a drop-in of the operator's that applies after the WebRTC one.
fn boot_webrtc(stage: &Path, dropin: bool, narrow: &str) -> Result<Booted> {
    let booted = boot(stage, true)?;
    let xtask = bin("xtask")?.to_string_lossy().into_owned();
    let bins = bin_dir()?.to_string_lossy().into_owned();
    booted.run(&[&xtask, "install", "--bin-dir", &bins])?;
    booted.run(&["sh", "-eu", "-c", GATEWAY_NETNS])?;
    let root = PathBuf::from(format!("/proc/{}/root", booted.pid));
    let config = root.join("etc/xdpfork/ng-agent.toml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, text + WEBRTC_SECTION)?;
    let dir = root.join("run/xdpfork-test/units/ng-agent.service.d");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("zz-test-log.conf"),
        format!("[Service]\nStandardOutput=append:{NG_LOG}\nStandardError=append:{NG_LOG}\n"),
    )?;
    if dropin {
        std::os::unix::fs::symlink(
            "/usr/local/share/xdpfork/systemd/ng-agent-webrtc.conf",
            dir.join("webrtc.conf"),
        )?;
    }
    if !narrow.is_empty() {
        std::fs::write(dir.join("zz-narrow.conf"), narrow)?;
    }
    booted.run(&["systemctl", "daemon-reload"])?;
    Ok(booted)
}

impl Booted {
    /// One ng request to the installed ng-agent (`[ng] listen` 127.0.0.1:22222 in there).
    fn ng(&self, request: Value) -> Result<Value> {
        let sock = xdpfork_tests::in_netns(format!("/proc/{}/ns/net", self.pid), || {
            Ok(std::net::UdpSocket::bind("127.0.0.1:0")?)
        })?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut msg = b"boot_1 ".to_vec();
        request.encode(&mut msg);
        sock.send_to(&msg, "127.0.0.1:22222")?;
        let mut buf = vec![0u8; 65_536];
        let n = sock.recv(&mut buf).context("no ng reply within 10 s")?;
        let body = buf[..n]
            .strip_prefix(b"boot_1 ")
            .context("reply does not echo the cookie")?;
        Ok(bencode::decode(body, bencode::Limits::default())?)
    }

    fn ng_log(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/root{NG_LOG}", self.pid)).unwrap_or_default()
    }
}

/// docs/operations.md "WebRTC bridging": with the installed drop-in linked in, ng-agent.service
/// with `[webrtc]` enters the gateway namespace, turns gw0's transmit checksum offload off and
/// reaches READY=1, holding CAP_SYS_ADMIN and CAP_NET_ADMIN and allowed only network
/// namespaces.
#[test]
fn ng_agent_with_webrtc_and_its_drop_in_is_ready_under_systemd() -> Result<()> {
    xdpfork_tests::require_root()?;
    let stage = Stage::new("systemd-boot-webrtc")?;
    let booted = boot_webrtc(&stage.0, true, "")?;
    let unit = "ng-agent.service";
    let sandbox = booted.run(&[
        "systemctl",
        "show",
        "-p",
        "RestrictNamespaces,AmbientCapabilities,RestrictAddressFamilies",
        unit,
    ])?;
    assert!(
        sandbox.contains("RestrictNamespaces=net\n"),
        "only network namespaces:\n{sandbox}"
    );
    if let Err(e) = booted.run(&["timeout", "120", "systemctl", "start", unit]) {
        bail!("{e}\n{}\n{}", booted.status(unit), booted.ng_log());
    }
    let p = booted.show(unit)?;
    let status = booted.status(unit);
    assert_eq!(
        (prop(&p, "ActiveState"), prop(&p, "SubState")),
        ("active", "running"),
        "{status}\n{}",
        booted.ng_log()
    );
    assert_eq!(prop(&p, "NRestarts"), "0", "{status}");
    let log = booted.ng_log();
    assert!(log.contains("WebRTC bridging on"), "{log}");
    let offload = booted.run(&["ip", "netns", "exec", "xdpfork-gw", "ethtool", "-k", "gw0"])?;
    assert!(
        offload
            .lines()
            .any(|l| l.trim() == "tx-checksum-ip-generic: off"),
        "ng-agent did not turn gw0's offload off:\n{offload}"
    );
    // A browser offer: ng-agent binds the leg's gateway sockets by entering the namespace
    // again (per leg, not only at start) and only then answers, with the plain side's SDP.
    let reply = booted.ng(Value::dict([
        ("command", Value::str("offer")),
        ("call-id", Value::str("systemd-webrtc")),
        ("from-tag", Value::str("browser")),
        ("sdp", Value::str(BROWSER_OFFER)),
        ("transport-protocol", Value::str("RTP/AVP")),
        ("ICE", Value::str("remove")),
    ]))?;
    let sdp = match reply.get("sdp") {
        Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => bail!(
            "offer not answered with an SDP: {reply:?}\n{}",
            booted.ng_log()
        ),
    };
    assert_eq!(reply.get("result").and_then(Value::as_str), Some("ok"));
    assert!(
        sdp.contains(" RTP/AVP ") && sdp.contains("c=IN IP4 192.0.2.10"),
        "{sdp}"
    );
    let gateway = booted.run(&["ip", "netns", "exec", "xdpfork-gw", "ss", "-Huan"])?;
    assert!(
        gateway.contains("10.77.9.2:"),
        "no gateway socket bound in the namespace:\n{gateway}"
    );
    // The unit grants both capabilities; ng-agent holds none once ready, in any thread (the
    // offer above was bound by its namespace thread without them). MainPID is a PID of the
    // booted namespace: its /proc is read from in there.
    let granted = booted.run(&["systemctl", "show", "-p", "AmbientCapabilities", unit])?;
    assert_eq!(
        granted.trim(),
        "AmbientCapabilities=cap_net_admin cap_sys_admin"
    );
    let tasks = format!("/proc/{}/task/*/status", prop(&p, "MainPID"));
    let caps = booted.run(&["sh", "-c", &format!("grep -H '^Cap[EP][fr][fm]:' {tasks}")])?;
    assert!(caps.lines().count() >= 2, "{caps}");
    assert!(
        caps.lines().all(|l| l.ends_with("\t0000000000000000")),
        "capabilities held after start:\n{caps}"
    );
    assert!(log.contains("capabilities dropped"), "{log}");
    Ok(())
}

/// Boots as [`boot_webrtc`] does and starts ng-agent.service, which must fail; its output.
fn webrtc_start_fails(name: &str, dropin: bool, narrow: &str) -> Result<String> {
    xdpfork_tests::require_root()?;
    let stage = Stage::new(name)?;
    let booted = boot_webrtc(&stage.0, dropin, narrow)?;
    let unit = "ng-agent.service";
    if booted
        .run(&["timeout", "120", "systemctl", "start", unit])
        .is_ok()
    {
        bail!("{unit} started:\n{}", booted.status(unit));
    }
    Ok(booted.ng_log())
}

/// The same host and config without the drop-in: ng-agent.service fails at start, and what it
/// says names the missing capabilities and the drop-in.
#[test]
fn ng_agent_with_webrtc_without_its_drop_in_fails_naming_what_is_missing() -> Result<()> {
    let log = webrtc_start_fails("systemd-boot-webrtc-nodropin", false, "")?;
    assert!(
        log.contains("ng-agent lacks CAP_SYS_ADMIN and CAP_NET_ADMIN")
            && log.contains("ng-agent-webrtc.conf drop-in"),
        "{log}"
    );
    Ok(())
}

/// The drop-in enabled, then narrowed again by a later one: with `RestrictNamespaces=yes` the
/// kernel refuses `setns` to an ng-agent holding the capabilities; with `~capset` ng-agent
/// enters but cannot drop them, and refuses to serve holding them. Each error names the setting.
#[test]
fn ng_agent_with_webrtc_in_a_narrowed_sandbox_names_the_setting() -> Result<()> {
    let cases = [
        (
            "namespaces",
            "RestrictNamespaces=yes",
            [
                "entering the gateway namespace /run/netns/xdpfork-gw: EPERM",
                "(RestrictNamespaces=)",
            ],
        ),
        (
            "capset",
            "SystemCallFilter=~capset",
            [
                "dropping the capabilities of the gateway namespace thread",
                "SystemCallFilter= must allow it",
            ],
        ),
    ];
    for (name, setting, expected) in cases {
        let narrow = format!("[Service]\n{setting}\n");
        let log = webrtc_start_fails(&format!("systemd-boot-webrtc-{name}"), true, &narrow)?;
        assert!(
            expected.iter().all(|e| log.contains(e)),
            "{setting}:\n{log}"
        );
    }
    Ok(())
}
