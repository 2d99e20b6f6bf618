//! A call to a voice bot (endpoint mode, docs/sip-agent.md "Voice bots"): sipp dials the bot
//! number, sip-agent answers it itself, the caller's audio is forked through the kernel (a sink
//! flow: nothing relayed) to the Twilio checker acting as the bot (`--bot-wav`), and the bot's
//! answer comes back as RTP from the anchored address. What reaches sipp's media port is
//! captured with tcpdump in the caller's namespace and judged: one RTP stream (one SSRC,
//! sequence and timestamp continuous), the bot's audio in it sample-exact (compare.py, through
//! the call's A-law), marks back in order; the caller's BYE gets 200, and nothing is left.
//! A second call has the bot clear its utterance and then leave mid-call: the utterance is cut,
//! the call stays up (silence on the same stream) until the caller hangs up.

// A test drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use xdpfork_tests::bot::{assert_one_stream, bot_speech, heard, pcap_udp, Rx};
use xdpfork_tests::dialects::{checkers_dir, write_linear_wav, write_ulaw_as_wav, Checker, TWILIO};
use xdpfork_tests::Host;

use crate::sip_support::{SipTest, PCMA};

const BOT_WS: &str = "10.77.3.2:9001";

struct BotCall {
    t: SipTest,
    bot: Checker,
    speech: Vec<u8>,
    bot_wav: PathBuf,
    pcap: PathBuf,
}

fn start(speech_ms: usize, bot_args: &[&str]) -> Result<BotCall> {
    // fork-agent: a second speech server, the bot, speaking Twilio's dialect.
    let asr_extra = format!(
        "\n[[speech_server]]\nname = \"bot\"\nurl = \"ws://{BOT_WS}/media\"\n\
         backoff_initial_ms = 200\nbackoff_max_ms = 400\n{}",
        TWILIO.server_toml()
    );
    let mut t = SipTest::start_with_speech_and(
        &[],
        &asr_extra,
        "[[bot]]\npattern = \"7000\"\nspeech_server = \"bot\"\n",
    )?;
    let dir = t.dir.clone();
    let speech = bot_speech(speech_ms);
    let bot_wav = dir.join("bot.wav");
    write_ulaw_as_wav(&bot_wav, &speech)?;
    let wav_s = bot_wav.to_string_lossy().into_owned();
    let mut args = vec!["--bot-wav", wav_s.as_str(), "--bot-chunk-ms", "100"];
    args.extend_from_slice(bot_args);
    let bot = TWILIO.spawn_checker(&mut t.s.topo, "bot", BOT_WS, &dir, &args)?;
    // What reaches sipp's media port, captured where sipp is.
    let pcap = dir.join("caller-rx.pcap");
    let pcap_s = pcap.to_string_lossy().into_owned();
    t.s.topo.spawn(
        "tcpdump",
        Host::Caller,
        std::path::Path::new("/usr/bin/tcpdump"),
        &[
            "-i",
            "ca0",
            "-U",
            "-n",
            "-w",
            &pcap_s,
            "udp and dst host 10.77.1.2 and dst port 40000",
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.s.topo.log("tcpdump").contains("listening on") {
        anyhow::ensure!(
            Instant::now() < deadline && t.s.topo.is_running("tcpdump"),
            "tcpdump did not start: {}",
            t.s.topo.log("tcpdump")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(BotCall {
        t,
        bot,
        speech,
        bot_wav,
        pcap,
    })
}

impl BotCall {
    /// sipp calls the bot number, plays its A-law speech and hangs up after `hold_ms`.
    fn call(&mut self, hold_ms: u32) -> Result<()> {
        let d = hold_ms.to_string();
        let run = self.t.caller(
            "uac_bot.xml",
            &[PCMA[0], PCMA[1]],
            &["-s", "7000", "-d", &d],
        )?;
        assert!(
            run.ok,
            "the caller's call (INVITE 200, BYE 200) failed:\n{}",
            self.t.diag(Some(&run))
        );
        Ok(())
    }

    /// After the call: nothing left in fork-agent; the bot's report and what sipp received.
    fn finish(&mut self) -> Result<(Value, Vec<Rx>)> {
        self.t.wait_no_flows()?;
        self.bot
            .wait_closed(Duration::from_secs(10))
            .with_context(|| format!("bot log:\n{}", self.t.s.topo.log("bot")))?;
        for name in ["bot", "tcpdump"] {
            self.t
                .s
                .topo
                .signal(name, nix::sys::signal::Signal::SIGTERM)?;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.t.s.topo.is_running("tcpdump") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let got = pcap_udp(&self.pcap)?
            .into_iter()
            .filter_map(|(from, _, d)| Rx::parse(from, 0.0, &d))
            .collect();
        Ok((self.bot.read_report(), got))
    }

    /// The A-law the caller heard equals the bot's speech through A-law, sample for sample.
    fn compare_heard(&self, heard: &[u8]) -> Result<String> {
        let wav = self.t.dir.join("heard.wav");
        let linear: Vec<i16> = heard
            .iter()
            .map(|&a| speech_proto::alaw_to_linear(a))
            .collect();
        write_linear_wav(&wav, &linear)?;
        let out = std::process::Command::new("python3")
            .arg(checkers_dir()?.join("compare.py"))
            .arg(&wav)
            .arg(&self.bot_wav)
            .args(["--mode", "exact", "--quantize", "alaw"])
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(out.status.success(), "heard audio is not the bot's: {text}");
        Ok(text.trim().to_owned())
    }
}

/// Every packet to sipp comes from one anchored address: the port sip-agent answered with.
fn anchor_of(got: &[Rx]) -> Result<SocketAddr> {
    got.first().map(|p| p.from).context("sipp received nothing")
}

fn assert_clean(r: &Value, log: &str) {
    assert_eq!(r["violations"], json!([]), "bot checker: {r:#}\n{log}");
}

#[test]
fn sip_bot_call_the_caller_hears_the_bot() -> Result<()> {
    let mut b = start(1500, &[])?;
    b.call(4000)?;
    let (r, got) = b.finish()?;
    assert_clean(&r, &b.t.s.topo.log("bot"));
    let anchor = anchor_of(&got)?;
    assert_eq!(anchor.ip().to_string(), "10.77.1.1");
    assert_one_stream(&got, anchor, 8);
    assert_eq!(got.iter().filter(|p| p.marker).count(), 1, "one talkspurt");
    let audio = heard(&got, 0xd5);
    assert_eq!(audio.len(), b.speech.len(), "the whole utterance");
    eprintln!("{}", b.compare_heard(&audio)?);
    let bot = &r["per_connection"][0]["bot"];
    let sent: Vec<&str> = bot["marks_sent"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let echoed: Vec<&str> = bot["marks_echoed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(echoed, sent, "{bot:#}");
    assert_eq!(sent.len(), 15);
    // The caller's A-law, forked through the kernel, reached the bot (as µ-law, Twilio's).
    let inbound = r["tracks"]["inbound"]["samples"].as_u64().unwrap_or(0);
    assert!(inbound >= 8000 * 3, "caller audio at the bot: {r:#}");
    Ok(())
}

#[test]
fn sip_bot_call_clear_then_the_bot_leaves_and_the_call_stays_up() -> Result<()> {
    let mut b = start(
        3000,
        &["--bot-clear-after-ms", "400", "--bot-close-after-ms", "800"],
    )?;
    b.call(4000)?;
    let (r, got) = b.finish()?;
    assert_clean(&r, &b.t.s.topo.log("bot"));
    let anchor = anchor_of(&got)?;
    // One stream from answer to BYE: the bot's leaving interrupts nothing on the wire.
    assert_one_stream(&got, anchor, 8);
    let audio = heard(&got, 0xd5);
    assert!(
        !audio.is_empty() && audio.len() < 1000 * 8,
        "cut by the clear: {} ms played",
        audio.len() / 8
    );
    b.compare_heard(&audio)?;
    let after = got.iter().skip_while(|p| !p.marker).skip(audio.len() / 160);
    assert!(after.clone().count() > 50, "the call went on for seconds");
    assert!(
        after
            .into_iter()
            .all(|p| p.payload == [0xd5; 160] && !p.marker),
        "silence after the cut"
    );
    // The fork reconnected after the bot left (the checker's second connection is silent).
    assert_eq!(r["connections"], 2, "{r:#}");
    Ok(())
}
