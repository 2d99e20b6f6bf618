//! Shared harness for the ng_* tests: the standard topology with fork-agent and the speech
//! server ([`Scenario`]), ng-agent in the forker namespace serving the ng protocol on loopback,
//! and Debian's Kamailio there too (caller side 10.77.1.1:5060, callee side 10.77.2.1:5060) with
//! tests/kamailio/ng_proxy.cfg, its `rtpengine` module pointed at ng-agent. The sipp caller and
//! callee of sip_support make the calls through Kamailio. [`cluster`] puts two media nodes
//! behind one Kamailio instead.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ng_agent::core::bencode::{self, Value};
use xdpfork_tests::{bin, ng_agent_config, ns_run, Host, Scenario, Topology};

use crate::sip_support::{CallerRun, SipTest};

pub mod cluster;

/// Where Kamailio takes the caller's INVITE.
pub const PROXY: &str = "10.77.1.1:5060";
/// ng-agent's ng socket (loopback of the forker namespace, as rtpengine's `-n 127.0.0.1:...`).
pub const NG: &str = "127.0.0.1:2223";
/// Debian's Kamailio module directory (package `kamailio`, which ships `rtpengine.so`).
pub const KAMAILIO_MODULES: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules/";

/// A running ng setup; Kamailio is stopped on drop ([`stop_kamailio`]).
pub struct NgTest {
    pub t: SipTest,
    pub node: NgNode,
}

impl NgTest {
    /// Topology, fork-agent, speech-server, ng-agent, then Kamailio (which pings ng-agent as it
    /// starts, so ng-agent must answer first).
    pub fn start() -> Result<NgTest> {
        NgTest::start_in(
            SipTest::without_sip_agent(Scenario::start()?),
            "",
            "kamailio/ng_proxy.cfg",
        )
    }

    /// [`NgTest::start`] on a prepared scenario, with `extra` appended to ng-agent's config
    /// (e.g. a `[webrtc]` section) and `kamailio_cfg` (relative to the tests crate) as
    /// Kamailio's script.
    pub fn start_in(mut t: SipTest, extra: &str, kamailio_cfg: &str) -> Result<NgTest> {
        let node = NgNode {
            name: "ng-agent",
            host: Host::Forker,
            listen: NG,
            caller_ip: "10.77.1.1",
            callee_ip: "10.77.2.1",
            control: t.s.socket.clone(),
            extra: extra.to_owned(),
        };
        spawn_ng_agent(&mut t, &node)?;
        spawn_kamailio_with(&mut t, kamailio_cfg, &format!("udp:{NG}"))?;
        let ng = NgTest { t, node };
        wait_kamailio(&ng.t)?;
        Ok(ng)
    }

    /// Kills ng-agent with SIGKILL (no chance to write anything more), keeps its log as
    /// `ng-agent.killed.log`, and starts it again with the same configuration (and journal).
    pub fn kill_and_restart_ng_agent(&mut self) -> Result<()> {
        self.t
            .s
            .topo
            .signal(self.node.name, nix::sys::signal::Signal::SIGKILL)?;
        std::fs::rename(
            self.t.dir.join(format!("{}.log", self.node.name)),
            self.t.dir.join(format!("{}.killed.log", self.node.name)),
        )?;
        spawn_ng_agent(&mut self.t, &self.node)
    }

    /// One ng request from a client in the forker namespace; the decoded reply dictionary.
    pub fn ng(&self, request: Value) -> Result<Value> {
        ng_request(&self.t.s.topo, Host::Forker, NG, request)
    }

    /// The Call-IDs ng-agent holds (`list`).
    pub fn calls(&self) -> Result<Vec<String>> {
        let r = self.ng(Value::dict([("command", Value::str("list"))]))?;
        match r.get("calls") {
            Some(Value::List(l)) => Ok(l
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()),
            _ => bail!("list reply without calls: {r:?}"),
        }
    }

    /// Waits (bounded) until the kernel relayed at least `n` packets on the flow at `local`;
    /// that flow's `show_flows` row.
    pub fn wait_relayed(&self, local: &str, n: u64) -> Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(f) = self.t.s.flow(local) {
                if f["packets"].as_u64() >= Some(n) {
                    return Ok(f);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the kernel relayed fewer than {n} packets on {local} within 15 s: {}\n{}",
                    self.t.s.flows()?,
                    self.diag(None)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// sip_support's diagnostics plus Kamailio's and ng-agent's logs.
    pub fn diag(&self, run: Option<&CallerRun>) -> String {
        format!(
            "{}\nkamailio log:\n{}\nng-agent log:\n{}",
            self.t.diag(run),
            self.t.s.topo.log("kamailio"),
            self.t.s.topo.log("ng-agent"),
        )
    }
}

impl Drop for NgTest {
    fn drop(&mut self) {
        stop_kamailio(&mut self.t);
    }
}

/// SIGTERM to Kamailio, so its worker processes go with it (the topology's own cleanup
/// SIGKILLs only the main process).
pub fn stop_kamailio(t: &mut SipTest) {
    let _ =
        t.s.topo
            .signal("kamailio", nix::sys::signal::Signal::SIGTERM);
}

/// One ng-agent: its process name, namespace, ng address, the interfaces' addresses (named
/// `caller` and `callee`, media ports 30000-39999) and its fork-agent's control socket. Its
/// journal is `<test dir>/<name>-state/calls.jsonl`.
pub struct NgNode {
    pub name: &'static str,
    pub host: Host,
    pub listen: &'static str,
    pub caller_ip: &'static str,
    pub callee_ip: &'static str,
    pub control: PathBuf,
    /// Appended to its config (e.g. `[webrtc]`).
    pub extra: String,
}

/// Starts `node`'s ng-agent (debug log in `<name>.log`) and waits (bounded) until it serves.
pub fn spawn_ng_agent(t: &mut SipTest, node: &NgNode) -> Result<()> {
    let cfg = t.dir.join(format!("{}.toml", node.name));
    std::fs::write(
        &cfg,
        ng_agent_config(
            node.listen,
            "",
            &[("caller", node.caller_ip), ("callee", node.callee_ip)],
            &node.control,
            &t.dir.join(format!("{}-state", node.name)),
        ) + &node.extra,
    )?;
    let cfg_s = cfg.to_string_lossy().into_owned();
    t.s.topo.spawn_env(
        node.name,
        node.host,
        &bin("ng-agent")?,
        &["run", "--config", &cfg_s],
        &[("RUST_LOG", "info,ng_agent=debug")],
    )?;
    wait_log(t, node.name, "ng-agent running")
}

/// Starts Debian's Kamailio in the forker namespace with tests/kamailio/ng_proxy.cfg, its
/// rtpengine set being `ng_socks` (the module's `rtpengine_sock` syntax). Every ng-agent of the
/// set must answer already: Kamailio pings them as it starts. The caller owns stopping it with
/// SIGTERM ([`stop_kamailio`]) and then [`wait_kamailio`].
pub fn spawn_kamailio(t: &mut SipTest, ng_socks: &str) -> Result<()> {
    spawn_kamailio_with(t, "kamailio/ng_proxy.cfg", ng_socks)
}

/// [`spawn_kamailio`] with another script (relative to the tests crate; it has the same
/// `@NG_SOCKS@` and `@MODULES@` placeholders).
pub fn spawn_kamailio_with(t: &mut SipTest, script: &str, ng_socks: &str) -> Result<()> {
    let dir = t.dir.clone();
    let kcfg = dir.join("kamailio.cfg");
    let template = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(script))?;
    std::fs::write(
        &kcfg,
        template
            .replace("@NG_SOCKS@", ng_socks)
            .replace("@MODULES@", KAMAILIO_MODULES),
    )?;
    let kcfg_s = kcfg.to_string_lossy().into_owned();
    let rundir = dir.join("kamailio-run");
    std::fs::create_dir_all(&rundir)?;
    let rundir_s = rundir.to_string_lossy().into_owned();
    // -DD: stay in the foreground (workers are still forked); -E: log to stderr (the log
    // file); -Y: runtime directory inside the test's directory, not /run/kamailio.
    t.s.topo.spawn(
        "kamailio",
        Host::Forker,
        Path::new("/usr/sbin/kamailio"),
        &["-DD", "-E", "-f", &kcfg_s, "-Y", &rundir_s, "-w", &rundir_s],
    )
}

/// Waits (bounded) until Kamailio listens on both sides.
pub fn wait_kamailio(t: &SipTest) -> Result<()> {
    let ns = t.s.topo.ns(Host::Forker);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ss = ns_run(&ns, "ss", &["-Hlun"]).unwrap_or_default();
        if ss.contains("10.77.1.1:5060") && ss.contains("10.77.2.1:5060") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "Kamailio is not listening after 10 s:\n{}",
                t.s.topo.log("kamailio")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One ng request to `to` from a client in `h`'s namespace; the decoded reply dictionary.
pub fn ng_request(topo: &Topology, h: Host, to: &str, request: Value) -> Result<Value> {
    let sock = topo.udp_socket(h, "0.0.0.0:0".parse()?)?;
    sock.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut msg = b"test_1 ".to_vec();
    request.encode(&mut msg);
    sock.send_to(&msg, to)?;
    let mut buf = vec![0u8; 65_536];
    let n = sock
        .recv(&mut buf)
        .with_context(|| format!("no ng reply from {to} within 3 s"))?;
    let body = buf[..n]
        .strip_prefix(b"test_1 ")
        .context("reply does not echo the cookie")?;
    Ok(bencode::decode(body, bencode::Limits::default())?)
}

/// Waits (bounded) until the log of `name` holds `needle`; fails if `name` exits first.
pub fn wait_log(t: &mut SipTest, name: &str, needle: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.s.topo.log(name).contains(needle) {
        if Instant::now() > deadline || !t.s.topo.is_running(name) {
            bail!("{name} did not start:\n{}", t.s.topo.log(name));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The SDP body of the first message in a sipp message log that starts with `first_line`.
pub fn sdp_after(log: &str, first_line: &str) -> String {
    log.split(first_line)
        .nth(1)
        .and_then(|m| m.find("v=0").map(|i| &m[i..]))
        .map(|s| s.split("---------").next().unwrap_or(s).to_string())
        .unwrap_or_default()
}
