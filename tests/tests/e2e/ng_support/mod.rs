//! Shared harness for the ng_* tests: the standard topology with fork-agent and the speech
//! server ([`Scenario`]), ng-agent in the forker namespace serving the ng protocol on loopback,
//! and Debian's Kamailio there too (caller side 10.77.1.1:5060, callee side 10.77.2.1:5060) with
//! tests/kamailio/ng_proxy.cfg, its `rtpengine` module pointed at ng-agent. The sipp caller and
//! callee of sip_support make the calls through Kamailio.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ng_agent::core::bencode::{self, Value};
use xdpfork_tests::{bin, ns_run, Host, Scenario};

use crate::sip_support::{CallerRun, SipTest};

/// Where Kamailio takes the caller's INVITE.
pub const PROXY: &str = "10.77.1.1:5060";
/// ng-agent's ng socket (loopback of the forker namespace, as rtpengine's `-n 127.0.0.1:...`).
pub const NG: &str = "127.0.0.1:2223";
/// Debian's Kamailio module directory (package `kamailio`, which ships `rtpengine.so`).
pub const KAMAILIO_MODULES: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules/";

/// A running ng setup; Kamailio is stopped with SIGTERM on drop, so its worker processes go with
/// it (the topology's own cleanup SIGKILLs only the main process).
pub struct NgTest {
    pub t: SipTest,
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

    /// [`NgTest::start`] on a prepared scenario, with `ng_extra` appended to ng-agent's config
    /// and `kamailio_cfg` (relative to the tests crate) as Kamailio's script.
    pub fn start_in(mut t: SipTest, ng_extra: &str, kamailio_cfg: &str) -> Result<NgTest> {
        let dir = t.dir.clone();
        let cfg = dir.join("ng-agent.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"[ng]
listen = "{NG}"

[media]
ports = "30000-30099"

[[interface]]
name = "caller"
address = "10.77.1.1"

[[interface]]
name = "callee"
address = "10.77.2.1"

[fork_agent]
socket = "{sock}"
speech_server = "asr"
{ng_extra}"#,
                sock = t.s.socket.display()
            ),
        )?;
        let cfg_s = cfg.to_string_lossy().into_owned();
        t.s.topo.spawn_env(
            "ng-agent",
            Host::Forker,
            &bin("ng-agent")?,
            &["run", "--config", &cfg_s],
            &[("RUST_LOG", "info,ng_agent=debug")],
        )?;
        wait_log(&mut t, "ng-agent", "ng-agent running")?;

        let kcfg = dir.join("kamailio.cfg");
        let template =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(kamailio_cfg))?;
        std::fs::write(
            &kcfg,
            template
                .replace("@NG_SOCK@", NG)
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
        )?;
        let ng = NgTest { t };
        ng.wait_kamailio()?;
        Ok(ng)
    }

    /// Waits (bounded) until Kamailio listens on both sides.
    fn wait_kamailio(&self) -> Result<()> {
        let ns = self.t.s.topo.ns(Host::Forker);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ss = ns_run(&ns, "ss", &["-Hlun"]).unwrap_or_default();
            if ss.contains("10.77.1.1:5060") && ss.contains("10.77.2.1:5060") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "Kamailio is not listening after 10 s:\n{}",
                    self.t.s.topo.log("kamailio")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One ng request from a client in the forker namespace; the decoded reply dictionary.
    pub fn ng(&self, request: Value) -> Result<Value> {
        let sock = self
            .t
            .s
            .topo
            .udp_socket(Host::Forker, "127.0.0.1:0".parse()?)?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut msg = b"test_1 ".to_vec();
        request.encode(&mut msg);
        sock.send_to(&msg, NG)?;
        let mut buf = vec![0u8; 65_536];
        let n = sock.recv(&mut buf).context("no ng reply within 3 s")?;
        let body = buf[..n]
            .strip_prefix(b"test_1 ")
            .context("reply does not echo the cookie")?;
        Ok(bencode::decode(body, bencode::Limits::default())?)
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
        let _ = self
            .t
            .s
            .topo
            .signal("kamailio", nix::sys::signal::Signal::SIGTERM);
    }
}

fn wait_log(t: &mut SipTest, name: &str, needle: &str) -> Result<()> {
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
