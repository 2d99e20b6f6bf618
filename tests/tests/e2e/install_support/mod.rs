//! Shared by the install_* tests: a scratch DESTDIR, a staged `cargo xtask install`, and
//! fork-agent started the way fork-agent.service starts it, without systemd.
//!
//! [`ServiceLimits::from_unit`] reads the installed unit's `ExecStart=`, `AmbientCapabilities=`,
//! `CapabilityBoundingSet=`, `LimitMEMLOCK=` and `NoNewPrivileges=`; [`limited_scenario`] builds
//! the netns topology with speech-server and a pin directory owned by an unprivileged uid (what
//! the unit's `ExecStartPre=+install -d -o xdpfork` does); [`start_limited`] runs the unit's
//! command line under `prlimit` and `setpriv` with exactly those limits, in the forker namespace.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xdpfork_tests::{addrs, bin, bin_dir, Host, Scenario, Topology};

/// The uid (and gid) fork-agent runs as in these tests, standing in for the `xdpfork` user
/// (no passwd entry needed: setpriv takes numbers).
pub const SERVICE_UID: u32 = 64_123;

/// A scratch directory removed on drop.
pub struct Stage(pub PathBuf);

impl Stage {
    pub fn new(name: &str) -> Result<Stage> {
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

/// `xtask install --destdir <root> --bin-dir <this target dir>`; the staged root.
pub fn stage_install(root: &Path) -> Result<()> {
    let out = Command::new(bin("xtask")?)
        .args(["install", "--destdir"])
        .arg(root)
        .arg("--bin-dir")
        .arg(bin_dir()?)
        .output()
        .context("running xtask install")?;
    if !out.status.success() {
        bail!(
            "xtask install failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// What fork-agent.service grants and runs.
#[derive(Debug, Clone)]
pub struct ServiceLimits {
    /// `ExecStart=` split on spaces (the unit uses no quoting there).
    pub exec_start: Vec<String>,
    /// Ambient capabilities, e.g. `CAP_BPF`.
    pub ambient: Vec<String>,
    /// Bounding set.
    pub bounding: Vec<String>,
    /// `LimitMEMLOCK=` in bytes.
    pub memlock: u64,
    pub no_new_privs: bool,
    /// The uid and gid `User=`/`Group=` stand for: [`SERVICE_UID`], or the `xdpfork` user a
    /// package created.
    pub uid: u32,
    pub gid: u32,
}

impl ServiceLimits {
    pub fn from_unit(text: &str) -> Result<ServiceLimits> {
        let get = |key: &str| -> Result<String> {
            let prefix = format!("{key}=");
            let mut found = text
                .lines()
                .filter_map(|l| l.strip_prefix(&prefix))
                .map(str::to_owned);
            let v = found
                .next()
                .with_context(|| format!("unit has no {key}="))?;
            if found.next().is_some() {
                bail!("unit sets {key}= twice; this parser takes one");
            }
            Ok(v)
        };
        let words = |v: String| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let memlock = get("LimitMEMLOCK")?;
        let memlock = match memlock.strip_suffix('M') {
            Some(n) => n.parse::<u64>()? << 20,
            None => memlock.parse()?,
        };
        // systemd (PID 1) can raise the hard limit; a test without CAP_SYS_RESOURCE (this
        // container has none) cannot, so it applies the lower of the two. The default
        // umem_frames (4096 x 2 KiB = 8 MiB) fits the usual 8 MiB hard limit.
        let memlock = memlock.min(hard_memlock()?);
        Ok(ServiceLimits {
            exec_start: words(get("ExecStart")?),
            ambient: words(get("AmbientCapabilities")?),
            bounding: words(get("CapabilityBoundingSet")?),
            memlock,
            no_new_privs: get("NoNewPrivileges")? == "yes",
            uid: SERVICE_UID,
            gid: SERVICE_UID,
        })
    }

    /// The capability mask /proc/PID/status shows for `caps`.
    pub fn mask(caps: &[String]) -> Result<u64> {
        let mut m = 0u64;
        for c in caps {
            let bit = match c.as_str() {
                "CAP_NET_BIND_SERVICE" => 10,
                "CAP_NET_ADMIN" => 12,
                "CAP_NET_RAW" => 13,
                "CAP_SYS_ADMIN" => 21,
                "CAP_PERFMON" => 38,
                "CAP_BPF" => 39,
                other => bail!("capability {other} is not in this test's table"),
            };
            m |= 1 << bit;
        }
        Ok(m)
    }

    /// setpriv's spelling: `-all,+bpf,+net_admin`.
    fn setpriv_caps(caps: &[String]) -> String {
        let mut s = String::from("-all");
        for c in caps {
            s.push_str(",+");
            s.push_str(&c.trim_start_matches("CAP_").to_ascii_lowercase());
        }
        s
    }

    /// Arguments of `prlimit`: `--memlock=N:N -- setpriv ... -- <ExecStart>`, with the unit's
    /// binary directory replaced by `bin_dir` and the config path by `config`.
    pub fn command(&self, bin_dir: &Path, config: &Path) -> Result<Vec<String>> {
        let mut exec = self.exec_start.clone();
        let program = Path::new(&exec[0])
            .file_name()
            .context("ExecStart= has no program")?
            .to_owned();
        exec[0] = bin_dir.join(program).to_string_lossy().into_owned();
        let cfg = exec
            .iter()
            .position(|w| w == "--config")
            .context("ExecStart= has no --config")?;
        exec[cfg + 1] = config.to_string_lossy().into_owned();
        let mut cmd = vec![
            format!("--memlock={0}:{0}", self.memlock),
            "--".into(),
            "setpriv".into(),
            "--reuid".into(),
            self.uid.to_string(),
            "--regid".into(),
            self.gid.to_string(),
            "--clear-groups".into(),
            format!("--inh-caps={}", Self::setpriv_caps(&self.ambient)),
            format!("--ambient-caps={}", Self::setpriv_caps(&self.ambient)),
            format!("--bounding-set={}", Self::setpriv_caps(&self.bounding)),
        ];
        if self.no_new_privs {
            cmd.push("--no-new-privs".into());
        }
        cmd.push("--".into());
        cmd.extend(exec);
        Ok(cmd)
    }
}

/// Stage an install into `stage`; the installed fork-agent.service's limits and the staged
/// binary directory its ExecStart= points into.
pub fn installed_limits(stage: &Path) -> Result<(ServiceLimits, PathBuf)> {
    stage_install(stage)?;
    let unit =
        std::fs::read_to_string(stage.join("usr/local/lib/systemd/system/fork-agent.service"))?;
    let limits = ServiceLimits::from_unit(&unit)?;
    let unit_bin_dir = Path::new(&limits.exec_start[0])
        .parent()
        .context("ExecStart= is not a path")?;
    let staged = stage.join(unit_bin_dir.strip_prefix("/")?);
    Ok((limits, staged))
}

/// This process's hard RLIMIT_MEMLOCK in bytes (from /proc/self/limits).
fn hard_memlock() -> Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .context("no locked-memory line in /proc/self/limits")?;
    let hard = line
        .split_whitespace()
        .nth(4)
        .context("malformed locked-memory line")?;
    Ok(if hard == "unlimited" {
        u64::MAX
    } else {
        hard.parse()?
    })
}

fn chown(path: &Path) -> Result<()> {
    std::os::unix::fs::chown(path, Some(SERVICE_UID), Some(SERVICE_UID))
        .with_context(|| format!("chown {}", path.display()))
}

/// Topology + speech-server + a fork-agent config whose pin, runtime and state directories
/// belong to [`SERVICE_UID`]; fork-agent is not started yet.
pub fn limited_scenario() -> Result<Scenario> {
    let mut topo = Topology::new()?;
    let (speech_out, summary) = Scenario::spawn_speech_server(&mut topo)?;
    // What the unit's ExecStartPre=+ and tmpfiles do for the xdpfork user.
    let run_dir = topo.dir.join("run");
    let state_dir = topo.dir.join("state");
    for d in [&run_dir, &state_dir, &topo.pin_dir] {
        std::fs::create_dir_all(d)?;
        chown(d)?;
    }
    let socket = run_dir.join("fork-agent.sock");
    let config = topo.dir.join("fork-agent.toml");
    std::fs::write(
        &config,
        Scenario::fork_agent_config(&topo.pin_dir, &socket, &state_dir, addrs::SPEECH_WS),
    )?;
    Ok(Scenario {
        topo,
        socket,
        config,
        speech_out,
        summary,
    })
}

/// Start fork-agent (from `bin_dir`, the staged PREFIX/bin) in the forker namespace with the
/// unit's limits, and wait (bounded) until its control API answers. `outer` (e.g. strace as
/// root) runs the whole `prlimit ... setpriv ... fork-agent` line when non-empty.
pub fn start_limited(
    s: &mut Scenario,
    limits: &ServiceLimits,
    bin_dir: &Path,
    outer: &[&str],
) -> Result<()> {
    let _ = std::fs::remove_file(&s.socket);
    let mut args: Vec<String> = outer.iter().skip(1).map(|a| a.to_string()).collect();
    let program = match outer.first() {
        Some(p) => {
            args.push("/usr/bin/prlimit".into());
            PathBuf::from(p)
        }
        None => PathBuf::from("/usr/bin/prlimit"),
    };
    args.extend(limits.command(bin_dir, &s.config)?);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.topo.spawn("fork-agent", Host::Forker, &program, &args)?;
    s.topo
        .wait_for_path(&s.socket, "fork-agent control socket", "fork-agent")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match s.counters() {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!(
                    "fork-agent under the unit's limits never answered: {e:#}; log:\n{}",
                    s.topo.log("fork-agent")
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The fork-agent process running with `config` (found through /proc: prlimit and setpriv exec
/// into it, a wrapper such as strace does not).
pub fn agent_pid(config: &Path) -> Option<i32> {
    let want = config.to_string_lossy();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_agent = args.first()?.ends_with("/fork-agent")
            && args.get(1).map(String::as_str) == Some("run")
            && args.iter().any(|a| a == want.as_ref());
        is_agent.then_some(pid)
    })
}

/// `Field:` of /proc/PID/status.
pub fn status_field(pid: i32, field: &str) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
