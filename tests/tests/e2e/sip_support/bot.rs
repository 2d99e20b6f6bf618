//! The voice-bot side of the sip_bot_* tests: the Twilio checker as the bot, speaking known
//! audio (`--bot-wav`), and a capture of what reaches the caller's media port.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use xdpfork_tests::bot::{bot_speech, pcap_udp_at, realtime_ahead_ms, Rx};
use xdpfork_tests::dialects::{
    compare_through, write_alaw_as_wav, write_ulaw_as_wav, Checker, TWILIO,
};
use xdpfork_tests::Host;

use super::{SipTest, CALLER_IP, CALLER_MEDIA_PORT};

/// Where the bot listens (speech namespace).
pub const BOT_WS: &str = "10.77.3.2:9001";

/// The bot (process `bot`) and the caller's capture (process `tcpdump`).
pub struct SipBot {
    /// The checker's output.
    pub checker: Checker,
    /// The bot's utterance, µ-law ([`bot_speech`]).
    pub speech: Vec<u8>,
    /// The utterance as a WAV (what compare.py matches against).
    pub wav: PathBuf,
    capture: CallerCapture,
}

impl SipBot {
    /// Starts the Twilio checker on [`BOT_WS`] sending `speech_ms` of speech, 100 ms per
    /// `media` message (each followed by a mark), with its `extra` switches; then the capture.
    pub fn start(t: &mut SipTest, speech_ms: usize, extra: &[&str]) -> Result<SipBot> {
        let dir = t.dir.clone();
        let speech = bot_speech(speech_ms);
        let wav = dir.join("bot.wav");
        write_ulaw_as_wav(&wav, &speech)?;
        let wav_s = wav.to_string_lossy().into_owned();
        let mut args = vec!["--bot-wav", wav_s.as_str(), "--bot-chunk-ms", "100"];
        args.extend_from_slice(extra);
        let checker = TWILIO.spawn_checker(&mut t.s.topo, "bot", BOT_WS, &dir, &args)?;
        let capture = CallerCapture::start(t)?;
        Ok(SipBot {
            checker,
            speech,
            wav,
            capture,
        })
    }

    /// After the call: waits (bounded) until the bot's connections closed, stops it and the
    /// capture; the bot's report (checked free of violations) and what the caller received.
    pub fn finish(&self, t: &mut SipTest) -> Result<(Value, Vec<Rx>)> {
        self.checker
            .wait_closed(Duration::from_secs(10))
            .with_context(|| format!("bot log:\n{}", t.s.topo.log("bot")))?;
        t.s.topo.signal("bot", nix::sys::signal::Signal::SIGTERM)?;
        let got = self.capture.finish(t)?;
        let r = self.checker.read_report();
        if r["violations"] != json!([]) {
            bail!("bot checker: {r:#}\n{}", t.s.topo.log("bot"));
        }
        Ok((r, got))
    }

    /// The A-law the caller heard equals the bot's speech through A-law, sample for sample
    /// (written as `heard.wav` in `dir` for compare.py).
    pub fn compare_heard(&self, dir: &Path, heard: &[u8]) -> Result<String> {
        let wav = dir.join("heard.wav");
        write_alaw_as_wav(&wav, heard)?;
        compare_through("alaw", &wav, &self.wav).context("heard audio is not the bot's")
    }

    /// The marks the bot sent on its first connection and those that came back, by name.
    pub fn marks(r: &Value) -> (Vec<String>, Vec<String>) {
        crate::bot_support::marks(r)
    }
}

/// tcpdump in the caller's namespace, recording what reaches sipp's media port (what the
/// caller hears: relayed audio, a bot's).
struct CallerCapture {
    pcap: PathBuf,
}

impl CallerCapture {
    /// Starts the capture (process `tcpdump`) and waits (bounded) until it listens.
    pub fn start(t: &mut SipTest) -> Result<CallerCapture> {
        let pcap = t.dir.join("caller-rx.pcap");
        let pcap_s = pcap.to_string_lossy().into_owned();
        let filter = format!("udp and dst host {CALLER_IP} and dst port {CALLER_MEDIA_PORT}");
        t.s.topo.spawn(
            "tcpdump",
            Host::Caller,
            Path::new("/usr/bin/tcpdump"),
            &["-i", "ca0", "-U", "-n", "-w", &pcap_s, &filter],
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !t.s.topo.log("tcpdump").contains("listening on") {
            if Instant::now() > deadline || !t.s.topo.is_running("tcpdump") {
                bail!("tcpdump did not start: {}", t.s.topo.log("tcpdump"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(CallerCapture { pcap })
    }

    /// Stops the capture and reads its RTP packets, in order, each with its capture time on
    /// CLOCK_MONOTONIC (`mono_ms`).
    pub fn finish(&self, t: &mut SipTest) -> Result<Vec<Rx>> {
        t.s.topo
            .signal("tcpdump", nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while t.s.topo.is_running("tcpdump") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let ahead = realtime_ahead_ms()?;
        Ok(pcap_udp_at(&self.pcap)?
            .into_iter()
            .filter_map(|(at, from, _, d)| Rx::parse(from, at - ahead, &d))
            .collect())
    }
}
