//! Shared harness for the webrtc_* tests: ng_support's topology, plus the gateway peer's
//! namespace joined to the forker by a veth whose forker end (`fg0`, 10.77.9.1) is one of
//! fork-agent's XDP interfaces, ng-agent with `[webrtc]` pointing at it, Kamailio with
//! tests/kamailio/webrtc_proxy.cfg (SIP over WebSocket on 10.77.1.1:8080), and the aiortc
//! browser of tests/webrtc/browser.py in the caller namespace.
//!
//! ```text
//!  caller ns: browser.py ── WS + DTLS-SRTP ──▶ fa0 10.77.1.1 (ng-agent's browser socket)
//!  forker ns: fg0 10.77.9.1 (XDP) ─── gw0 10.77.9.2  gateway ns (ng-agent's plain sockets)
//!  callee ns: sipp (the phone, -rtp_echo) ◀── kernel relay ── fb0 10.77.2.1
//! ```

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xdpfork_tests::{ns_run, run, Host, Scenario, Topology};

use crate::ng_support::NgTest;
use crate::sip_support::SipTest;

/// Kamailio's WebSocket listener (the browser's `ws://`).
pub const WS: &str = "ws://10.77.1.1:8080";
/// The proxy's SIP domain for the browser.
pub const DOMAIN: &str = "10.77.1.1";
/// Host end of the gateway veth: the kernel anchors of browser legs.
pub const KERNEL: &str = "10.77.9.1";
/// The gateway peer's address.
pub const GATEWAY: &str = "10.77.9.2";
/// ng-agent's `/metrics` (its default, in the forker namespace).
pub const NG_METRICS: &str = "127.0.0.1:9467";
/// PCMU at payload type 0 (what the browser stand-in offers).
pub const PCMU: [(&str, &str); 2] = [("pt", "0"), ("codec", "PCMU")];

/// ng-agent's `statistics.webrtc` dictionary.
pub struct WebrtcTotals(ng_agent::core::bencode::Value);

impl WebrtcTotals {
    /// Counter `k`; -1 when missing.
    pub fn count(&self, k: &str) -> i64 {
        match self.0.get(k) {
            Some(ng_agent::core::bencode::Value::Int(n)) => *n,
            _ => -1,
        }
    }
}

/// Deletes the gateway namespace (and with it the veth) on drop; stale ones left by a dead
/// test process are reaped by the topology like its own (same `xft<pid>x<n>` prefix).
struct GatewayNs(String);

impl Drop for GatewayNs {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

/// A running WebRTC setup.
pub struct WebrtcTest {
    pub ng: NgTest,
    _gateway: GatewayNs,
}

impl WebrtcTest {
    /// Topology, gateway namespace and veth, speech-server, fork-agent on fa0/fb0/fg0,
    /// ng-agent with `[webrtc]`, Kamailio.
    pub fn start() -> Result<WebrtcTest> {
        let topo = Topology::new()?;
        let gateway = GatewayNs(format!("{}g", topo.id));
        build_gateway(&topo, &gateway.0)?;
        let s = Scenario::start_edited(topo, |text| {
            let with_gateway = text.replace(
                r#"interfaces = ["fa0", "fb0"]"#,
                r#"interfaces = ["fa0", "fb0", "fg0"]"#,
            );
            if with_gateway == text {
                bail!("fork-agent's test config no longer lists fa0/fb0 as expected:\n{text}");
            }
            Ok(with_gateway)
        })?;
        let webrtc = format!(
            r#"
[webrtc]
gateway_netns = "/run/netns/{ns}"
gateway_address = "{GATEWAY}"
kernel_address = "{KERNEL}"
"#,
            ns = gateway.0
        );
        let before = ns_run(&gateway.0, "ethtool", &["-k", "gw0"])?;
        let ng = NgTest::start_in(
            SipTest::without_sip_agent(s),
            &webrtc,
            "kamailio/webrtc_proxy.cfg",
        )?;
        // The product, not the test, turns transmit checksum offload off and GRO on on the
        // gateway veth.
        let after = ns_run(&gateway.0, "ethtool", &["-k", "gw0"])?;
        let feature = |k: &str, name: &str| {
            k.lines()
                .find(|l| l.trim_start().starts_with(&format!("{name}:")))
                .map(|l| l.trim().to_owned())
        };
        for (name, was, now) in [
            ("tx-checksum-ip-generic", "on", "off"),
            ("generic-receive-offload", "off", "on"),
        ] {
            let (b, a) = (feature(&before, name), feature(&after, name));
            if b.as_deref() != Some(&format!("{name}: {was}"))
                || !a
                    .as_deref()
                    .is_some_and(|l| l.starts_with(&format!("{name}: {now}")))
            {
                bail!("gw0's {name}: {b:?} before ng-agent started, {a:?} after");
            }
        }
        Ok(WebrtcTest {
            ng,
            _gateway: gateway,
        })
    }

    /// The test's directory.
    pub fn dir(&self) -> PathBuf {
        self.ng.t.dir.clone()
    }

    /// Starts the browser stand-in (`mode` call or answer) in the caller namespace as process
    /// `browser`; its report goes to `<dir>/browser.json`, its recording to
    /// `<dir>/browser-heard.wav`.
    pub fn spawn_browser(&mut self, mode: &str, play: &Path, fork: &str) -> Result<()> {
        self.spawn_browser_with(mode, play, fork, &[])
    }

    /// [`WebrtcTest::spawn_browser`] with more of browser.py's options (e.g. `--turn`).
    pub fn spawn_browser_with(
        &mut self,
        mode: &str,
        play: &Path,
        fork: &str,
        extra: &[&str],
    ) -> Result<()> {
        let dir = self.dir();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("webrtc/browser.py");
        let (script, play) = (script.to_string_lossy(), play.to_string_lossy());
        let record = dir.join("browser-heard.wav");
        let report = dir.join("browser.json");
        let (record, report) = (record.to_string_lossy(), report.to_string_lossy());
        let args = [
            "python3",
            &script,
            mode,
            "--ws",
            WS,
            "--proxy",
            DOMAIN,
            "--play",
            &play,
            "--record",
            &record,
            "--report",
            &report,
            "--seconds",
            "4",
            "--fork",
            fork,
        ];
        self.ng.t.s.topo.spawn(
            "browser",
            Host::Caller,
            Path::new("/usr/bin/env"),
            &[&args[..], extra].concat(),
        )
    }

    /// Waits (bounded) for the browser to finish; its JSON report.
    pub fn browser_report(&mut self) -> Result<serde_json::Value> {
        let status = self
            .ng
            .t
            .s
            .topo
            .wait_exit("browser", Duration::from_secs(60))?;
        let text = std::fs::read_to_string(self.dir().join("browser.json")).with_context(|| {
            format!(
                "browser.py wrote no report ({status}):\n{}",
                self.ng.t.s.topo.log("browser")
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Waits (bounded) until the browser's log says `needle`.
    pub fn wait_browser_log(&mut self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ng.t.s.topo.log("browser").contains(needle) {
            if Instant::now() > deadline || !self.ng.t.s.topo.is_running("browser") {
                bail!(
                    "browser.py never said '{needle}':\n{}\n{}",
                    self.ng.t.s.topo.log("browser"),
                    self.ng.diag(None)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// ng-agent's `/metrics` sample `line_start` (e.g. `xdpfork_ng_calls `), fetched with curl
    /// inside the forker namespace; its value.
    pub fn metric(&self, line_start: &str) -> Result<f64> {
        let text = ns_run(
            &self.ng.t.s.topo.ns(Host::Forker),
            "curl",
            &[
                "-sS",
                "--fail",
                "--max-time",
                "10",
                &format!("http://{NG_METRICS}/metrics"),
            ],
        )?;
        text.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {line_start} in ng-agent's metrics:\n{text}"))
    }

    /// ng-agent's `statistics.webrtc` totals after a clean call (docs/webrtc.md "Counters"):
    /// more than 100 packets bridged each way and no SRTP, DTLS or fingerprint failure. Returns
    /// the totals for further checks.
    pub fn assert_bridged_cleanly(&self) -> Result<WebrtcTotals> {
        use ng_agent::core::bencode::Value;
        let stats = self
            .ng
            .ng(Value::dict([("command", Value::str("statistics"))]))?;
        let totals = stats
            .get("statistics")
            .and_then(|s| s.get("webrtc"))
            .cloned()
            .map(WebrtcTotals)
            .with_context(|| format!("no statistics.webrtc in {stats:?}"))?;
        assert!(totals.count("to-plain") > 100, "{stats:?}");
        assert!(totals.count("to-browser") > 100, "{stats:?}");
        for k in [
            "srtp-auth-failed",
            "srtp-replayed",
            "fingerprint-mismatch",
            "dtls-failed",
        ] {
            assert_eq!(totals.count(k), 0, "{k}: {stats:?}");
        }
        Ok(totals)
    }

    /// The speech server's recording of the fork of the browser's leg (`caller`) is PCMU and
    /// sample-exact `source`: the decrypted audio, what the browser played.
    pub fn assert_fork_matches(&mut self, source: &Path) -> Result<()> {
        let summary = self.ng.t.s.speech_summary()?;
        let caller = crate::sip_support::stream_of(&summary, "caller");
        assert_eq!(caller["codec"], "PCMU", "{caller}");
        let wav = caller["wav"].as_str().unwrap_or_default();
        xdpfork_tests::dialects::compare(8000, Path::new(wav), source)?;
        Ok(())
    }

    /// Everything worth reading when a step fails.
    pub fn diag(&self) -> String {
        format!(
            "browser log:\n{}\n{}",
            self.ng.t.s.topo.log("browser"),
            self.ng.diag(None)
        )
    }
}

/// The gateway namespace and its veth: `gw0` inside, `fg0` in the forker namespace (where
/// fork-agent attaches XDP, which gives it NAPI). `gw0`'s transmit checksum offload and GRO are
/// left as the kernel made them (on and off): ng-agent sets them itself at start
/// ([`WebrtcTest::start`] checks; docs/webrtc.md, "The gateway peer").
fn build_gateway(topo: &Topology, ns: &str) -> Result<()> {
    let f = topo.ns(Host::Forker);
    run("ip", &["netns", "add", ns])?;
    ns_run(ns, "ip", &["link", "set", "lo", "up"])?;
    run(
        "ip",
        &[
            "link", "add", "gw0", "netns", ns, "type", "veth", "peer", "name", "fg0", "netns", &f,
        ],
    )?;
    for (n, dev, addr) in [(ns, "gw0", GATEWAY), (f.as_str(), "fg0", KERNEL)] {
        ns_run(n, "ip", &["addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ns_run(n, "ip", &["link", "set", dev, "up"])?;
    }
    Ok(())
}

/// Deterministic µ-law noise (`seconds` of it, never silence) as the WAV the browser plays:
/// every sample is exactly a µ-law value, so PCMU carries it losslessly. Returns its path.
pub fn source_wav(dir: &Path, seconds: u32) -> Result<PathBuf> {
    let mut x: u32 = 0x1234_5678;
    let ulaw: Vec<u8> = (0..seconds * 8000)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            // Skip the two codes of zero amplitude: the alignment needs signal everywhere.
            match (x >> 24) as u8 {
                0xFF | 0x7F => 0xF0,
                b => b,
            }
        })
        .collect();
    let path = dir.join("browser-source.wav");
    xdpfork_tests::dialects::write_ulaw_as_wav(&path, &ulaw)?;
    Ok(path)
}
