//! Each speech dialect against its independent checker (tests/checkers, written from the public
//! specifications, not from our code): a two-party call relayed in the kernel and forked, the
//! checker's verdict on every message, and the audio it decoded matched against what the
//! parties sent (sample-exact for G.711 and 8 kHz L16, correlation ≥ 0.99 after resampling to
//! 16 kHz). A second pass per dialect pauses and resumes the fork and has the server close the
//! connection mid-call (1001), so the reconnect is judged too.

// A test drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use xdpfork_tests::dialects::{
    compare, write_ulaw_as_wav, Checker, Dialect, AUDIOHOOK, JAMBONZ, RAW, RAW_L16_16K, TWILIO,
};
use xdpfork_tests::fork_rig::{has, Events};
use xdpfork_tests::{addrs, rtp_packet, Host, Scenario, Topology};

/// Where the checker listens (the speech namespace).
const CHECKER: &str = "10.77.3.2:9000";
/// 20 ms frames per party.
const FRAMES: u16 = 150;

/// A sine of `hz` at `amp`, µ-law, `n` samples from sample `from`.
fn sine_ulaw(hz: f64, amp: f64, from: usize, n: usize) -> Vec<u8> {
    (from..from + n)
        .map(|i| {
            let x = amp * (2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin();
            speech_proto::linear_to_ulaw(x as i16)
        })
        .collect()
}

/// The call's two parties: the caller plays 440 Hz, the callee 1 kHz, one packet each per
/// 20 ms tick from one thread, so the two streams reach fork-agent interleaved in step.
struct Parties {
    caller: std::net::UdpSocket,
    callee: std::net::UdpSocket,
    sent: usize,
}

impl Parties {
    fn new(t: &Topology) -> Result<Parties> {
        Ok(Parties {
            caller: t.udp_socket(Host::Caller, addrs::CALLER_RTP.parse()?)?,
            callee: t.udp_socket(Host::Callee, addrs::CALLEE_RTP.parse()?)?,
            sent: 0,
        })
    }

    /// Plays `frames` more 20 ms frames on both sides; returns what each side sent.
    fn play(&mut self, frames: u16) -> Result<(Vec<u8>, Vec<u8>)> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let start = Instant::now();
        for k in 0..u32::from(frames) {
            let i = self.sent;
            let pa = sine_ulaw(440.0, 8000.0, i * 160, 160);
            let pb = sine_ulaw(1000.0, 6000.0, i * 160, 160);
            let (seq, ts) = (i as u16, (i * 160) as u32);
            self.caller.send_to(
                &rtp_packet(0, seq, ts, 0x1111, &pa),
                addrs::A_LOCAL.parse::<std::net::SocketAddr>()?,
            )?;
            self.callee.send_to(
                &rtp_packet(0, seq, ts, 0x2222, &pb),
                addrs::B_LOCAL.parse::<std::net::SocketAddr>()?,
            )?;
            a.extend_from_slice(&pa);
            b.extend_from_slice(&pb);
            self.sent += 1;
            // Paced on the clock, not on the sleeps, so the parties never drift behind.
            let due = start + Duration::from_millis(20) * (k + 1);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        Ok((a, b))
    }
}

/// A running call forked to a checker of `d`.
struct Run {
    s: Scenario,
    checker: Checker,
    ev: Events,
}

/// The checker's `--expect`s: the fork request's metadata and parties where the dialect
/// carries them (docs/speech-protocol.md, each profile's mapping).
fn metadata_expects(d: &Dialect) -> &'static [&'static str] {
    match d.profile {
        "twilio" => &[
            "--expect",
            "customParameters.agent-id=1042",
            "--expect",
            "customParameters.language=en-US",
        ],
        "audiohook" => &[
            "--expect",
            "customConfig.agent-id=1042",
            "--expect",
            "language=en-US",
            "--expect",
            "participant.ani=sip:1000@pbx",
            "--expect",
            "participant.dnis=sip:2000@pbx",
        ],
        "jambonz" => &[
            "--expect",
            "agent-id=1042",
            "--expect",
            "callSid=6f0c9a2e-1d3b-11ee-b5d6-000c29f1a2b3",
            "--expect",
            "mixType=stereo",
            "--expect",
            "sampleRate=8000",
        ],
        _ => &[],
    }
}

fn start(d: &Dialect, extra_checker: &[&str], expect: &str) -> Result<Run> {
    let mut topo = Topology::new()?;
    let dir = topo.dir.clone();
    let mut args = metadata_expects(d).to_vec();
    args.extend_from_slice(extra_checker);
    let checker = d.spawn_checker(&mut topo, "checker", CHECKER, &dir, &args)?;
    let extra = format!(
        "backoff_initial_ms = 200\nbackoff_max_ms = 400\nmax_connect_attempts = 2\n{}",
        d.server_toml()
    );
    let s = Scenario::start_agent_in(topo, CHECKER, &extra)?;
    s.add_call_flows(false)?;
    let ev = Events::subscribe(&s.socket)?;
    let mut run = Run { s, checker, ev };
    run.s.ctl(json!({"v":1,"op":"fork_start","fork":{
        "call_guid": GUID, "call_id": "call-1@pbx",
        "from": "sip:1000@pbx", "to": "sip:2000@pbx", "server": "asr", "codec": "PCMU",
        "metadata": {"agent-id": "1042", "language": "en-US"},
        "streams": [{"channel":"caller","flow":addrs::A_LOCAL},
                    {"channel":"callee","flow":addrs::B_LOCAL}]}}))?;
    // STARTED only once the server has the stream (for AudioHook: once it said `opened`).
    run.wait_status(expect)?;
    Ok(run)
}

const GUID: &str = "6f0c9a2e-1d3b-11ee-b5d6-000c29f1a2b3";

impl Run {
    fn wait_status(&mut self, status: &str) -> Result<()> {
        let n = self.ev.seen.len();
        let r = self.ev.until(Duration::from_secs(15), |s| {
            s[n..]
                .iter()
                .any(|e| e["call_guid"] == GUID && e["status"] == status)
        });
        r.with_context(|| {
            format!(
                "fork-agent log:\n{}",
                self.s.topo.log_tail("fork-agent", 30)
            )
        })
    }

    /// Stops the fork, lets the checker see the close, stops the checker, reads its report.
    fn finish(&mut self) -> Result<Value> {
        self.s
            .ctl(json!({"v":1,"op":"fork_stop","call_guid":GUID}))?;
        self.wait_status("stopped")?;
        // The single-use connection closes after its goodbye; the checker reports each close.
        self.checker
            .wait_closed(Duration::from_secs(10))
            .with_context(|| format!("checker log:\n{}", self.s.topo.log("checker")))?;
        self.s
            .topo
            .signal("checker", nix::sys::signal::Signal::SIGTERM)?;
        Ok(self.checker.read_report())
    }
}

fn assert_clean(r: &Value, log: &str) {
    assert_eq!(
        r["violations"],
        json!([]),
        "the checker found violations: {r:#}\nchecker log:\n{log}"
    );
    assert_eq!(r["ok"], true, "{r:#}");
}

/// A clean call: handshake, metadata, both parties' audio, stop.
fn faithful_audio(d: &Dialect) -> Result<()> {
    let mut run = start(d, &[], "started")?;
    let mut parties = Parties::new(&run.s.topo)?;
    let (a, b) = parties.play(FRAMES)?;
    // Let the last frames through the AF_XDP reader and the writer.
    std::thread::sleep(Duration::from_millis(300));
    let r = run.finish()?;
    assert_clean(&r, &run.s.topo.log("checker"));
    assert_eq!(r["connections"], 1, "{r:#}");
    let dir = run.s.topo.dir.clone();
    for (track, sent, name) in [(d.tracks[0], &a, "caller"), (d.tracks[1], &b, "callee")] {
        let source = dir.join(format!("sent-{name}.wav"));
        write_ulaw_as_wav(&source, sent)?;
        let samples = r["tracks"][track]["samples"].as_u64().unwrap_or(0);
        // Every frame but a few at the edges (the fork starts and stops around the call).
        let want = u64::from(FRAMES - 5) * 160 * u64::from(d.rate) / 8000;
        assert!(
            samples >= want,
            "{track}: {samples} samples < {want}: {r:#}"
        );
        compare(d.rate, &run.checker.wav(1, track), &source)?;
    }
    Ok(())
}

/// Pause and resume mid-call, then the server closes with 1001 and the fork reconnects.
fn pause_resume_reconnect(d: &Dialect) -> Result<()> {
    let mut run = start(d, &["--close-after-ms", "2500"], "started")?;
    let mut parties = Parties::new(&run.s.topo)?;
    parties.play(50)?;
    run.s
        .ctl(json!({"v":1,"op":"fork_pause","call_guid":GUID,"reason":"hold"}))?;
    parties.play(25)?;
    run.s
        .ctl(json!({"v":1,"op":"fork_resume","call_guid":GUID}))?;
    // 2.5 s of audio reach the checker, which then closes the connection (1001).
    parties.play(100)?;
    let n = run.ev.seen.len();
    run.ev.until(Duration::from_secs(15), |s| {
        s[n..]
            .iter()
            .any(|e| e["call_guid"] == GUID && e["status"] == "started" && e["reconnected"] == true)
    })?;
    assert!(
        has(&run.ev.seen, GUID, "error", Some("Connection closed")),
        "{:#?}",
        run.ev.seen
    );
    parties.play(50)?;
    std::thread::sleep(Duration::from_millis(300));
    let r = run.finish()?;
    assert_clean(&r, &run.s.topo.log("checker"));
    assert_eq!(r["connections"], 2, "one reconnect: {r:#}");
    for track in d.tracks {
        let c2 = run.checker.wav(2, track);
        assert!(c2.exists(), "audio after the reconnect on {track}: {r:#}");
    }
    Ok(())
}

#[test]
fn twilio_faithful_audio() -> Result<()> {
    faithful_audio(&TWILIO)
}

#[test]
fn twilio_pause_resume_reconnect() -> Result<()> {
    pause_resume_reconnect(&TWILIO)
}

#[test]
fn audiohook_faithful_audio() -> Result<()> {
    faithful_audio(&AUDIOHOOK)
}

#[test]
fn audiohook_pause_resume_reconnect() -> Result<()> {
    pause_resume_reconnect(&AUDIOHOOK)
}

#[test]
fn jambonz_faithful_audio() -> Result<()> {
    faithful_audio(&JAMBONZ)
}

#[test]
fn jambonz_pause_resume_reconnect() -> Result<()> {
    pause_resume_reconnect(&JAMBONZ)
}

#[test]
fn raw_faithful_audio() -> Result<()> {
    faithful_audio(&RAW)
}

#[test]
fn raw_l16_16k_faithful_audio() -> Result<()> {
    faithful_audio(&RAW_L16_16K)
}

#[test]
fn raw_pause_resume_reconnect() -> Result<()> {
    pause_resume_reconnect(&RAW)
}

#[test]
fn a_server_refusing_the_upgrade_fails_the_fork_with_the_cube_string() -> Result<()> {
    for (code, string) in [
        ("401", "Authentication token invalid"),
        ("503", "Connection failed"),
    ] {
        let mut run = start(&TWILIO, &["--reject-upgrade", code], "error")?;
        assert!(
            has(&run.ev.seen, GUID, "error", Some(string)),
            "HTTP {code}: {:#?}",
            run.ev.seen
        );
        assert!(
            !has(&run.ev.seen, GUID, "started", None),
            "never STARTED: {:#?}",
            run.ev.seen
        );
        run.s
            .topo
            .signal("checker", nix::sys::signal::Signal::SIGTERM)?;
        let r = run.checker.read_report();
        assert_eq!(
            r["rejected_upgrades"], 2,
            "two attempts, both refused: {r:#}"
        );
    }
    Ok(())
}

#[test]
fn an_audiohook_server_that_never_accepts_fails_the_fork_not_holds_it() -> Result<()> {
    // A server that upgrades but never answers `open` with `opened` (here a Twilio server,
    // which has no such message): the fork must fail within the connect timeout, never STARTED.
    let d = Dialect {
        checker: &[],
        ..AUDIOHOOK
    };
    let mut topo = Topology::new()?;
    let dir = topo.dir.clone();
    TWILIO.spawn_checker(&mut topo, "checker", CHECKER, &dir, &[])?;
    let extra = format!(
        "connect_timeout_ms = 1500\nmax_connect_attempts = 1\n{}",
        d.server_toml()
    );
    let s = Scenario::start_agent_in(topo, CHECKER, &extra)?;
    s.add_call_flows(false)?;
    let mut ev = Events::subscribe(&s.socket)?;
    s.ctl(json!({"v":1,"op":"fork_start","fork":{
        "call_guid": GUID, "server": "asr", "codec": "PCMU",
        "streams": [{"channel":"caller","flow":addrs::A_LOCAL}]}}))?;
    ev.until(Duration::from_secs(15), |e| {
        has(e, GUID, "error", Some("Connection failed"))
    })?;
    assert!(!has(&ev.seen, GUID, "started", None), "{:#?}", ev.seen);
    assert!(
        s.topo
            .log("fork-agent")
            .contains("did not accept the session within"),
        "{}",
        s.topo.log_tail("fork-agent", 20)
    );
    Ok(())
}
