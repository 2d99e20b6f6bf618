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

use anyhow::{Context, Result};
use xdpfork_tests::bot::{assert_one_stream, heard, Rx};
use xdpfork_tests::dialects::TWILIO;

use crate::sip_support::{received_bye, SipBot, SipTest, BOT_WS, PCMA};

struct BotCall {
    t: SipTest,
    bot: SipBot,
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
    // The bot, and what reaches sipp's media port, captured where sipp is.
    let bot = SipBot::start(&mut t, speech_ms, bot_args)?;
    Ok(BotCall { t, bot })
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
    fn finish(&mut self) -> Result<(serde_json::Value, Vec<Rx>)> {
        self.t.wait_no_flows()?;
        self.bot.finish(&mut self.t)
    }

    /// The A-law the caller heard equals the bot's speech through A-law, sample for sample.
    fn compare_heard(&self, heard: &[u8]) -> Result<String> {
        self.bot.compare_heard(&self.t.dir, heard)
    }
}

/// Every packet to sipp comes from one anchored address: the port sip-agent answered with.
fn anchor_of(got: &[Rx]) -> Result<SocketAddr> {
    got.first().map(|p| p.from).context("sipp received nothing")
}

#[test]
fn sip_bot_call_the_caller_hears_the_bot() -> Result<()> {
    let mut b = start(1500, &[])?;
    b.call(4000)?;
    let (r, got) = b.finish()?;
    let anchor = anchor_of(&got)?;
    assert_eq!(anchor.ip().to_string(), "10.77.1.1");
    assert_one_stream(&got, anchor, 8);
    assert_eq!(got.iter().filter(|p| p.marker).count(), 1, "one talkspurt");
    let audio = heard(&got, 0xd5);
    assert_eq!(audio.len(), b.bot.speech.len(), "the whole utterance");
    eprintln!("{}", b.compare_heard(&audio)?);
    let (sent, echoed) = SipBot::marks(&r);
    assert_eq!(echoed, sent, "marks back in order: {r:#}");
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

/// Nobody answers at the bot's address: fork-agent gives up connecting and sip-agent ends the
/// call with a BYE saying why, instead of leaving the caller in silence until a timer.
#[test]
fn sip_bot_call_ends_when_the_bot_cannot_be_reached() -> Result<()> {
    // The bot's address, where nothing listens (no checker is started).
    let asr_extra = format!(
        "\n[[speech_server]]\nname = \"bot\"\nurl = \"ws://{BOT_WS}/media\"\n\
         backoff_initial_ms = 100\nbackoff_max_ms = 200\nmax_connect_attempts = 2\n{}",
        TWILIO.server_toml()
    );
    let t = SipTest::start_with_speech_and(
        &[],
        &asr_extra,
        "[[bot]]\npattern = \"7000\"\nspeech_server = \"bot\"\n",
    )?;
    let run = t.caller("uac_bot_released.xml", &PCMA, &["-s", "7000"])?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let bye = received_bye(&run.messages).unwrap_or_default();
    assert!(
        bye.contains("Reason: SIP;cause=503;text=\"Voice bot unavailable\""),
        "the caller's BYE: {bye}"
    );
    t.wait_no_flows()?;
    Ok(())
}

/// sip-agent is killed in the middle of a bot call: the restarted agent restores the call from
/// its journal, the caller's BYE gets its 200 from it, and the call's flow and fork go at once
/// (not after reconciliation's grace period).
#[test]
fn sip_bot_call_survives_a_sip_agent_restart() -> Result<()> {
    let mut b = start(1000, &[])?;
    let child = b.t.caller_spawn(
        "uac_bot.xml",
        &[PCMA[0], PCMA[1]],
        &["-s", "7000", "-d", "6000"],
    )?;
    // Journalled once answered: wait (bounded) for its line.
    let journal = b.t.dir.join("sip-state").join("calls.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&journal)
        .unwrap_or_default()
        .contains("\"bot\":true")
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the bot call was not journalled:\n{}",
            std::fs::read_to_string(&journal).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    b.t.kill_and_restart_sip_agent(|_| Ok(()))?;
    let log = b.t.s.topo.log("sip-agent");
    assert!(
        log.contains("restored=1"),
        "the restarted agent restores the bot call:\n{log}"
    );
    let run = b.t.caller_wait(child)?;
    assert!(
        run.ok,
        "the caller's BYE did not get its 200 from the restarted agent\n{}",
        b.t.diag(Some(&run))
    );
    b.t.wait_no_flows()?;
    let (_, got) = b.bot.finish(&mut b.t)?;
    assert!(!got.is_empty(), "the caller heard the bot");
    Ok(())
}
