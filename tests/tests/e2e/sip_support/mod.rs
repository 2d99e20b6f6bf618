//! Shared harness for the sip_* tests: the standard netns topology with fork-agent and the
//! speech-server (`Scenario`), sip-agent in the forker namespace (A side 10.77.1.1:5060, B side
//! bound to 10.77.2.1), and sipp as caller/controller (10.77.1.2) and callee (10.77.2.2).
//! Scenario files live in tests/sipp/; sipp's message logs are read back to check what
//! sip-agent sent (status INFOs are auto-answered with `-aa`).

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xdpfork_tests::{bin, Host, Scenario};

mod bot;
pub use bot::{SipBot, BOT_WS};

pub const AGENT_A: &str = "10.77.1.1:5060";
pub const CALLER_IP: &str = "10.77.1.2";
pub const CALLEE_IP: &str = "10.77.2.2";
/// sipp's media port (`-mp`) on both sides.
pub const CALLER_MEDIA_PORT: u16 = 40000;
pub const SPEECH_URL: &str = "ws://10.77.3.2:9000/stream";
/// The standard `[security]` body: the caller sipp is also the controller (CVP as the calling
/// UA), so its address may send fork requests.
pub const CALLER_IS_CONTROLLER: &str = r#"controllers = ["10.77.1.2"]"#;

/// Path of a scenario file in tests/sipp/.
pub fn sipp_file(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sipp")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

pub struct SipTest {
    pub s: Scenario,
    pub dir: PathBuf,
    /// `sip-agent run` arguments, for [`SipTest::restart_sip_agent`].
    run_args: Vec<String>,
    /// Extra environment of sip-agent from its next (re)start on (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
}

/// The finished caller run.
pub struct CallerRun {
    pub ok: bool,
    pub messages: String,
    pub errors: String,
}

impl CallerRun {
    /// Bodies of the fork status INFOs sip-agent sent to the caller/controller, in order.
    pub fn statuses(&self) -> Vec<String> {
        self.messages
            .split("INFO sip:")
            .skip(1)
            .filter_map(|m| {
                let body = m.find("{\"type\":\"STATUS\"")?;
                let rest = &m[body..];
                let end = rest.find('}').map(|e| {
                    // Include nested arrays/objects: take up to the line end.
                    rest[e..].find('\n').map(|n| e + n).unwrap_or(rest.len())
                })?;
                Some(rest[..end].trim().to_string())
            })
            .collect()
    }

    /// [`CallerRun::statuses`] as JSON, each with the time sipp logged it (UTC, `YYYY-MM-DD
    /// HH:MM:SS.ffffff`; the caller's sipp runs with `TZ=UTC`).
    pub fn timed_statuses(&self) -> Vec<(String, serde_json::Value)> {
        let mut out = vec![];
        for entry in self
            .messages
            .split("----------------------------------------------- ")
        {
            let Some((stamp, rest)) = entry.split_once('\n') else {
                continue;
            };
            if !rest.contains("INFO sip:") {
                continue;
            }
            let Some(body) = rest.find("{\"type\":\"STATUS\"") else {
                continue;
            };
            let line = rest[body..].lines().next().unwrap_or_default();
            if let Ok(v) = serde_json::from_str(line.trim()) {
                out.push((stamp.trim().to_string(), v));
            }
        }
        out
    }
}

impl SipTest {
    /// Topology, fork-agent, speech-server and sip-agent (with `extra` TOML appended to the
    /// standard config: one route `2...` to the callee over UDP).
    pub fn start() -> Result<SipTest> {
        Self::start_with(
            r#"udp = ["10.77.1.1:5060", "10.77.2.1:5060"]"#,
            "10.77.2.2:5060:udp",
            "",
        )
    }

    pub fn start_with(listen: &str, next_hop: &str, extra: &str) -> Result<SipTest> {
        Self::start_full(listen, next_hop, extra, CALLER_IS_CONTROLLER, &[])
    }

    /// The standard UDP setup with `security` as the body of `[security]` and extra `run`
    /// arguments.
    pub fn start_with_security(security: &str, args: &[&str]) -> Result<SipTest> {
        Self::start_full(
            r#"udp = ["10.77.1.1:5060", "10.77.2.1:5060"]"#,
            "10.77.2.2:5060:udp",
            "",
            security,
            args,
        )
    }

    /// The standard setup with extra `sip-agent run` arguments (`{dir}` is replaced by the test
    /// directory).
    pub fn start_with_args(args: &[&str]) -> Result<SipTest> {
        Self::start_full(
            r#"udp = ["10.77.1.1:5060", "10.77.2.1:5060"]"#,
            "10.77.2.2:5060:udp",
            "",
            CALLER_IS_CONTROLLER,
            args,
        )
    }

    /// The standard UDP setup with both `extra` config and extra `run` arguments.
    pub fn start_with_config_and_args(extra: &str, args: &[&str]) -> Result<SipTest> {
        Self::start_full(
            r#"udp = ["10.77.1.1:5060", "10.77.2.1:5060"]"#,
            "10.77.2.2:5060:udp",
            extra,
            CALLER_IS_CONTROLLER,
            args,
        )
    }

    /// Any listeners, next hop, `extra` config and extra `run` arguments (`{dir}` replaced).
    pub fn start_custom(
        listen: &str,
        next_hop: &str,
        extra: &str,
        args: &[&str],
    ) -> Result<SipTest> {
        Self::start_full(listen, next_hop, extra, CALLER_IS_CONTROLLER, args)
    }

    /// `sip-agent ctl <cmd>` against the admin socket `{dir}/admin.sock` (start sip-agent with
    /// `--admin-socket {dir}/admin.sock`).
    pub fn admin_ctl(&self, cmd: &[&str]) -> Result<String> {
        let out = Command::new(bin("sip-agent")?)
            .args(["ctl", "--socket"])
            .arg(self.dir.join("admin.sock"))
            .args(cmd)
            .output()
            .context("running sip-agent ctl")?;
        if !out.status.success() {
            bail!("ctl failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sip-agent ctl show calls` as JSON.
    pub fn calls(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.admin_ctl(&["show", "calls"])?)?)
    }

    /// The standard setup with every part given: listeners, next hop, `extra` TOML after the
    /// route, the body of `[security]`, and extra `run` arguments.
    pub fn start_full(
        listen: &str,
        next_hop: &str,
        extra: &str,
        security: &str,
        args: &[&str],
    ) -> Result<SipTest> {
        Self::start_on(Scenario::start()?, listen, next_hop, extra, security, args)
    }

    /// The standard UDP setup on a speech server started with `speech_args` (its test
    /// switches), fork-agent's `asr` server entry getting `asr_extra` TOML keys.
    pub fn start_with_speech(speech_args: &[&str], asr_extra: &str) -> Result<SipTest> {
        Self::start_with_speech_and(speech_args, asr_extra, "")
    }

    /// [`SipTest::start_with_speech`] with `extra` sip-agent TOML after the route.
    pub fn start_with_speech_and(
        speech_args: &[&str],
        asr_extra: &str,
        extra: &str,
    ) -> Result<SipTest> {
        Self::start_on(
            Scenario::start_with(speech_args, asr_extra)?,
            r#"udp = ["10.77.1.1:5060", "10.77.2.1:5060"]"#,
            "10.77.2.2:5060:udp",
            extra,
            CALLER_IS_CONTROLLER,
            &[],
        )
    }

    /// sip-agent on a running [`Scenario`] (see [`SipTest::start_full`]).
    fn start_on(
        s: Scenario,
        listen: &str,
        next_hop: &str,
        extra: &str,
        security: &str,
        args: &[&str],
    ) -> Result<SipTest> {
        let dir = s.topo.dir.clone();
        let cfg = dir.join("sip-agent.toml");
        let dir_s = dir.to_string_lossy().into_owned();
        // The call journal in the test's directory (never the host's default), unless the test
        // configures `[state]` itself in `extra` (`{dir}` is the test directory there too).
        let extra = extra.replace("{dir}", &dir_s);
        let state = if extra.contains("[state]") {
            String::new()
        } else {
            format!("[state]\ndir = \"{dir_s}/sip-state\"\n")
        };
        std::fs::write(
            &cfg,
            format!(
                r#"[sip]
{listen}

[media]
ip = "10.77.1.1"
ports = "30000-30099"

[fork_agent]
socket = "{sock}"
speech_server = "asr"

[security]
{security}

{state}
[[route]]
prefix = "2"
next_hop = "{next_hop}"
bind_sip = "10.77.2.1"
bind_media = "10.77.2.1"
{extra}
"#,
                sock = s.socket.display(),
            ),
        )?;
        let cfg_s = cfg.to_string_lossy().into_owned();
        let mut run_args = vec!["run".to_string(), "--config".to_string(), cfg_s];
        run_args.extend(args.iter().map(|a| a.replace("{dir}", &dir_s)));
        let mut t = SipTest {
            s,
            dir,
            run_args,
            env: Vec::new(),
        };
        t.spawn_sip_agent()?;
        Ok(t)
    }

    /// The sipp caller and callee on a running [`Scenario`] without sip-agent: something else
    /// (Kamailio with ng-agent in the ng_* tests) carries the calls.
    pub fn without_sip_agent(s: Scenario) -> SipTest {
        let dir = s.topo.dir.clone();
        SipTest {
            s,
            dir,
            run_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Starts sip-agent with the test's arguments and waits (bounded) until it runs.
    fn spawn_sip_agent(&mut self) -> Result<()> {
        let agent = bin("sip-agent")?;
        let args: Vec<&str> = self.run_args.iter().map(String::as_str).collect();
        // Debug logs land in sip-agent.log, where a failure's message points.
        let mut env = vec![("RUST_LOG", "info,sip_agent=debug")];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.s
            .topo
            .spawn_env("sip-agent", Host::Forker, &agent, &args, &env)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.s.topo.log("sip-agent").contains("sip-agent running") {
            if Instant::now() > deadline || !self.s.topo.is_running("sip-agent") {
                bail!("sip-agent did not start:\n{}", self.s.topo.log("sip-agent"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills sip-agent with SIGKILL (no chance to clean anything up), keeps its log as
    /// `sip-agent.killed.log`, then starts it again with the same configuration; `between`
    /// runs while it is down.
    pub fn kill_and_restart_sip_agent(
        &mut self,
        between: impl FnOnce(&Self) -> Result<()>,
    ) -> Result<()> {
        self.s
            .topo
            .signal("sip-agent", nix::sys::signal::Signal::SIGKILL)?;
        std::fs::rename(
            self.dir.join("sip-agent.log"),
            self.dir.join("sip-agent.killed.log"),
        )?;
        between(self)?;
        self.spawn_sip_agent()
    }

    /// Starts the callee sipp (UAS) with `scenario` and keys; `-rtp_echo` sends the caller's
    /// audio back as the callee's.
    pub fn callee(&mut self, scenario: &str, keys: &[(&str, &str)], extra: &[&str]) -> Result<()> {
        self.callee_at(&sipp_file(scenario), keys, extra)
    }

    /// [`SipTest::callee`] with a scenario file anywhere (one the test wrote).
    pub fn callee_at(&mut self, sf: &str, keys: &[(&str, &str)], extra: &[&str]) -> Result<()> {
        let msg = self.dir.join("callee.msg").to_string_lossy().into_owned();
        let err = self.dir.join("callee.err").to_string_lossy().into_owned();
        let mut args: Vec<String> = [
            "-sf",
            sf,
            "-i",
            CALLEE_IP,
            "-p",
            "5060",
            "-mi",
            CALLEE_IP,
            "-mp",
            "40000",
            "-m",
            "1",
            "-nostdin",
            "-trace_msg",
            "-message_file",
            &msg,
            "-trace_err",
            "-error_file",
            &err,
            "-timeout",
            "50s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (k, v) in keys {
            args.extend(["-key".to_string(), k.to_string(), v.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.s
            .topo
            .spawn("callee", Host::Callee, Path::new("/usr/bin/sipp"), &a)?;
        // sipp binds its SIP socket within milliseconds; give it a moment before the INVITE.
        std::thread::sleep(Duration::from_millis(400));
        if !self.s.topo.is_running("callee") {
            bail!(
                "callee sipp exited at start:\n{}",
                self.s.topo.log("callee")
            );
        }
        Ok(())
    }

    /// Starts the caller sipp towards sip-agent's A side.
    pub fn caller_spawn(
        &self,
        scenario: &str,
        keys: &[(&str, &str)],
        extra: &[&str],
    ) -> Result<Child> {
        self.caller_spawn_to(AGENT_A, scenario, keys, extra)
    }

    /// Starts the caller sipp towards `target` (ip:port of a sip-agent listener).
    pub fn caller_spawn_to(
        &self,
        target: &str,
        scenario: &str,
        keys: &[(&str, &str)],
        extra: &[&str],
    ) -> Result<Child> {
        let msg = self.dir.join("caller.msg").to_string_lossy().into_owned();
        let err = self.dir.join("caller.err").to_string_lossy().into_owned();
        let sf = sipp_file(scenario);
        let mut args: Vec<String> = [
            target,
            "-sf",
            &sf,
            "-i",
            CALLER_IP,
            "-p",
            "5060",
            "-mi",
            CALLER_IP,
            "-mp",
            "40000",
            "-m",
            "1",
            "-s",
            "2000",
            "-nostdin",
            "-aa",
            "-trace_msg",
            "-message_file",
            &msg,
            "-trace_err",
            "-error_file",
            &err,
            "-timeout",
            "40s",
            "-timeout_error",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (k, v) in keys {
            args.extend(["-key".to_string(), k.to_string(), v.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd: Command = self.s.topo.command(Host::Caller, "/usr/bin/sipp")?;
        // sipp logs local time; UTC makes its log comparable with the other processes'.
        cmd.env("TZ", "UTC")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().context("starting caller sipp")
    }

    /// Waits (bounded by sipp's own -timeout plus a margin) for the caller to finish.
    pub fn caller_wait(&self, mut child: Child) -> Result<CallerRun> {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output()?;
        let read = |n: &str| std::fs::read_to_string(self.dir.join(n)).unwrap_or_default();
        Ok(CallerRun {
            ok: out.status.success(),
            messages: read("caller.msg"),
            errors: read("caller.err"),
        })
    }

    pub fn caller(
        &self,
        scenario: &str,
        keys: &[(&str, &str)],
        extra: &[&str],
    ) -> Result<CallerRun> {
        let c = self.caller_spawn(scenario, keys, extra)?;
        self.caller_wait(c)
    }

    /// Everything a failing assertion should print.
    pub fn diag(&self, run: Option<&CallerRun>) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.join(n)).unwrap_or_default();
        format!(
            "caller ok={:?}\ncaller errors:\n{}\ncaller messages:\n{}\ncallee messages:\n{}\nsip-agent log:\n{}\nfork-agent log (tail):\n{}",
            run.map(|r| r.ok),
            run.map(|r| r.errors.as_str()).unwrap_or(""),
            run.map(|r| r.messages.as_str()).unwrap_or(""),
            read("callee.msg"),
            self.s.topo.log("sip-agent"),
            tail(&self.s.topo.log("fork-agent"), 40),
        )
    }

    /// Waits (bounded) until fork-agent has no flow left.
    pub fn wait_no_flows(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let f = self.s.flows()?;
            if f.as_array().is_some_and(Vec::is_empty) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("flows left after the call: {f}\n{}", self.diag(None));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until the callee sipp has exited.
    pub fn wait_callee_done(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.s.topo.is_running("callee") {
            if Instant::now() > deadline {
                bail!("callee sipp still running:\n{}", self.diag(None));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A START body for the reference speech server.
pub fn start_body(guid: &str) -> String {
    format!(r#"{{"type":"START","call-guid":"{guid}","url":"{SPEECH_URL}"}}"#)
}

pub const PCMA: [(&str, &str); 2] = [("pt", "8"), ("codec", "PCMA")];

/// A forked call that goes on hold and comes back (re-INVITEs from `scenario`, the hold
/// direction `hold_dir`): checks STARTED < PAUSED < RESUMED and no ERROR, that the caller's
/// forked stream paused, resumed, stayed PCMA and shows the hold as a gap of at least 60 RTP
/// sequence numbers with audio on both sides. Returns the speech server's summary.
pub fn hold_and_resume(guid: &str, scenario: &str, hold_dir: &str) -> Result<serde_json::Value> {
    let mut t = SipTest::start()?;
    t.callee("uas_mirror.xml", &PCMA, &["-rtp_echo"])?;
    let body = start_body(guid);
    let mut keys = PCMA.to_vec();
    keys.extend([
        ("fork_body", body.as_str()),
        ("pt2", "8"),
        ("codec2", "PCMA"),
        ("dir2", hold_dir),
        ("pt3", "8"),
        ("codec3", "PCMA"),
        ("dir3", "sendrecv"),
    ]);
    let run = t.caller(scenario, &keys, &[])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let st = run.statuses();
    let pos = |state: &str| st.iter().position(|s| s.contains(state));
    let (started, paused, resumed) = (pos("\"STARTED\""), pos("\"PAUSED\""), pos("\"RESUMED\""));
    assert!(
        matches!((started, paused, resumed), (Some(a), Some(b), Some(c)) if a < b && b < c),
        "statuses {st:?}\n{}",
        t.diag(Some(&run))
    );
    assert!(st.iter().all(|s| !s.contains("\"ERROR\"")), "{st:?}");
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    let summary = t.s.speech_summary()?;
    let caller = stream_of(&summary, "caller");
    assert!(caller["pauses"].as_u64() >= Some(1), "{caller}");
    assert!(caller["resumes"].as_u64() >= Some(1), "{caller}");
    assert_eq!(caller["codec"], "PCMA", "{caller}");
    // No audio while on hold: the ~2 s hold leaves a gap of well over 50 RTP sequence numbers
    // (20 ms frames) between two consecutive forked frames, while audio flowed on both sides.
    let (gap_at, seqs) = hold_gap(&caller);
    assert!(
        gap_at.is_some(),
        "no hold gap of 60+ sequence numbers: {caller}"
    );
    assert!(seqs.len() > 40, "{caller}");
    Ok(summary)
}

/// The stream of `channel` in a speech-server summary.
pub fn stream_of(summary: &serde_json::Value, channel: &str) -> serde_json::Value {
    summary["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["channel"] == channel))
        .cloned()
        .unwrap_or_else(|| panic!("no {channel} stream in {summary}"))
}

/// Where a stream's forked sequence numbers jump by 60 or more (a hold), and the numbers.
pub fn hold_gap(stream: &serde_json::Value) -> (Option<usize>, Vec<u64>) {
    let seqs: Vec<u64> = stream["seqs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    let at = seqs
        .windows(2)
        .position(|w| (w[1].wrapping_sub(w[0]) & 0xffff) >= 60);
    (at, seqs)
}

/// fork-agent settings for the fork status tests: a failed connection attempt is retried once,
/// quickly, so a failure reaches the controller within a second or so.
pub const QUICK_GIVE_UP: &str =
    "max_connect_attempts = 2\nbackoff_initial_ms = 100\nbackoff_max_ms = 400\n";

/// A START by the caller/controller naming `url`, with `extra` JSON members (`,"k":v`).
pub fn start_body_to(guid: &str, url: &str, extra: &str) -> String {
    format!(r#"{{"type":"START","call-guid":"{guid}","url":"{url}"{extra}}}"#)
}

/// A call whose caller (the controller) sends `body` by INFO and keeps the call up `hold_ms`
/// after it; returns the caller's run (status INFOs in it).
pub fn forked_call(t: &mut SipTest, body: &str, hold_ms: u32) -> Result<CallerRun> {
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let mut keys = PCMA.to_vec();
    keys.push(("fork_body", body));
    let d = hold_ms.to_string();
    let run = t.caller("uac_call.xml", &keys, &["-d", &d])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    Ok(run)
}

/// The statuses' `state` values, in order.
pub fn states(st: &[serde_json::Value]) -> Vec<&str> {
    st.iter().filter_map(|s| s["state"].as_str()).collect()
}

/// Fails unless the speech server's summary holds no stream (it heard nothing of any call).
pub fn assert_no_streams(summary: &serde_json::Value) {
    assert!(
        summary["streams"].as_array().is_none_or(Vec::is_empty),
        "the speech server got streams: {summary}"
    );
}

/// A further speech-server process `name` on `listen` in the speech namespace (besides the one
/// fork-agent's config names), with `extra` switches; returns its summary file, written when it
/// gets SIGTERM ([`read_summary`]).
pub fn spawn_speech_server(
    t: &mut SipTest,
    name: &str,
    listen: &str,
    extra: &[&str],
) -> Result<std::path::PathBuf> {
    let out = t.dir.join(name);
    std::fs::create_dir_all(&out)?;
    let summary = t.dir.join(format!("{name}-summary.json"));
    let (out_s, sum_s) = (out.to_string_lossy(), summary.to_string_lossy());
    let mut args = vec![
        "--listen",
        listen,
        "--out-dir",
        &out_s,
        "--summary",
        &sum_s,
        "--duration-secs",
        "120",
    ];
    args.extend_from_slice(extra);
    t.s.topo
        .spawn(name, Host::Speech, &bin("speech-server")?, &args)?;
    Ok(summary)
}

/// Stops the speech server `name` started by [`spawn_speech_server`] and reads its summary.
pub fn read_summary(
    t: &mut SipTest,
    name: &str,
    summary: &std::path::Path,
) -> Result<serde_json::Value> {
    t.s.topo.signal(name, nix::sys::signal::Signal::SIGTERM)?;
    let text = std::fs::read_to_string(summary)
        .with_context(|| format!("{name} wrote no summary:\n{}", t.s.topo.log(name)))?;
    Ok(serde_json::from_str(&text)?)
}

/// The BYE sipp received in a message log, from its request line to the end of its headers.
pub fn received_bye(log: &str) -> Option<&str> {
    let at = log.find("BYE sip:")?;
    let rest = &log[at..];
    Some(rest.split("\n\n").next().unwrap_or(rest))
}
