//! Return audio in endpoint mode, through the control API (the sip-agent call is
//! sip_bot_call.rs): the caller's flow is a sink (forked, never relayed), the fork's speech
//! server is the Twilio checker acting as a voice bot (tests/checkers/twilio_checker.py
//! `--bot-wav`), and the caller receives the bot's RTP from the anchored address it sends to.
//! Judged: the audio is the bot's, sample-exact (compare.py); one RTP stream (one SSRC,
//! sequence +1 and timestamp +160 per packet, one marker bit per talkspurt); marks come back in
//! order, each only once its audio was on the wire; a `clear` cuts the utterance; the bot
//! leaving mid-utterance stops its audio and leaves the call streaming.

// A test drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use xdpfork_tests::bot::{assert_one_stream, heard, recv_until, Rx};
use xdpfork_tests::dialects::{compare, write_ulaw_as_wav, Dialect, JAMBONZ, TWILIO};
use xdpfork_tests::{addrs, rtp_packet, Host};

use crate::bot_support::{marks, BotCall, BotRig, CHUNK_MS};

const GUID: &str = "0b07e5d1-5eb3-4c4e-9a57-c0ffee000017";

/// The call's caller (a socket in its namespace), beside the bot.
struct Caller {
    caller: UdpSocket,
}

type Bot = BotCall<Caller>;

fn start(speech_ms: usize, checker_args: &[&str]) -> Result<Bot> {
    start_with(&TWILIO, speech_ms, checker_args)
}

fn start_with(dialect: &Dialect, speech_ms: usize, checker_args: &[&str]) -> Result<Bot> {
    let rig = BotRig::start(dialect, speech_ms, checker_args)?;
    let s = &rig.s;
    let caller = s
        .topo
        .udp_socket(Host::Caller, addrs::CALLER_RTP.parse()?)?;
    caller.set_read_timeout(Some(Duration::from_millis(5)))?;
    // The call ends here: the caller's flow forks and relays nothing; the bot's RTP goes from
    // the anchored address back to the caller.
    s.ctl(
        json!({"v":1,"op":"flow_add","flow":{"local":addrs::A_LOCAL,"src":addrs::A_LOCAL,
        "dst":addrs::CALLER_RTP,"sink":true}}),
    )?;
    s.ctl(json!({"v":1,"op":"fork_start","fork":{
        "call_guid": GUID, "call_id": "bot-1@pbx", "from": "sip:1000@pbx", "to": "sip:bot@pbx",
        "server": "asr", "codec": "PCMU",
        "streams": [{"channel":"caller","flow":addrs::A_LOCAL}],
        "return_audio": {"flow": addrs::A_LOCAL}}}))?;
    Ok(BotCall {
        rig,
        parties: Caller { caller },
    })
}

impl Bot {
    /// The caller talks (20 ms packets, paced) for `ms` and records everything it receives.
    fn converse(&mut self, ms: u64) -> Result<(Vec<u8>, Vec<Rx>)> {
        let to: SocketAddr = addrs::A_LOCAL.parse()?;
        let start = Instant::now();
        let (mut sent, mut got) = (Vec::new(), Vec::new());
        let caller = &self.parties.caller;
        for k in 0..(ms / 20) as u32 {
            let payload: Vec<u8> = (0..160).map(|i| ((k * 7 + i) % 200) as u8).collect();
            caller.send_to(&rtp_packet(0, k as u16, 160 * k, 0xca11, &payload), to)?;
            sent.extend_from_slice(&payload);
            recv_until(
                caller,
                start + Duration::from_millis(20) * (k + 1),
                &mut got,
            )?;
        }
        Ok((sent, got))
    }

    fn wait_status(&mut self, status: &str, reconnected: bool) -> Result<()> {
        self.rig.wait_status(GUID, status, reconnected)
    }

    /// Stops the fork and the checker; its report.
    fn finish(&mut self) -> Result<Value> {
        self.rig.finish(GUID)
    }
}

fn a_local() -> SocketAddr {
    addrs::A_LOCAL.parse().expect("address")
}

fn assert_clean(r: &Value, log: &str) {
    assert_eq!(r["violations"], json!([]), "checker: {r:#}\n{log}");
}

/// The caller hears the whole utterance, exactly, in one talkspurt; the bot's marks come
/// back in order, none before its audio was played; the caller's own audio reached the bot.
#[test]
fn bot_endpoint_plays_the_bots_audio_and_echoes_marks_once_played() -> Result<()> {
    let mut b = start(1000, &[])?;
    b.wait_status("started", false)?;
    let (sent, got) = b.converse(2000)?;
    let counters = b.s.ctl(json!({"v":1,"op":"show_counters"}))?;
    let r = b.finish()?;
    let sent_rtp = counters["return_audio"]["packets"].as_u64().unwrap_or(0);
    assert!(
        sent_rtp >= got.len() as u64 && counters["return_audio"]["send_errors"] == 0,
        "return_audio counters: {counters:#}"
    );
    assert_clean(&r, &b.s.topo.log("bot"));
    assert_one_stream(&got, a_local(), 0);
    assert_eq!(
        got.iter().filter(|p| p.marker).count(),
        1,
        "one talkspurt, one marker bit"
    );
    let heard_wav = b.s.topo.dir.join("heard.wav");
    let audio = heard(&got, 0xff);
    assert_eq!(audio.len(), b.speech.len(), "the whole utterance");
    write_ulaw_as_wav(&heard_wav, &audio)?;
    eprintln!("{}", compare(8000, &heard_wav, &b.bot_wav)?);
    assert_eq!(audio, b.speech, "byte for byte");

    let bot = &r["per_connection"][0]["bot"];
    let sent_marks: Vec<&str> = bot["marks_sent"]
        .as_array()
        .context("marks_sent")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let echoed = bot["marks_echoed"].as_array().context("marks_echoed")?;
    let echoed_names: Vec<&str> = echoed.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(echoed_names, sent_marks, "every mark, in order: {bot:#}");
    for (k, m) in echoed.iter().enumerate() {
        // Mark k follows k chunks of audio: paced at 20 ms a packet, they cannot all have
        // been played sooner (one packet time of slack for the tick grid).
        let floor = ((k as u64 + 1) * CHUNK_MS).saturating_sub(20) as f64;
        let ms = m["ms"].as_f64().context("ms")?;
        assert!(
            ms >= floor,
            "mark {} echoed after {ms} ms < {floor}: {bot:#}",
            k + 1
        );
    }

    // The sink flow forked the caller: its audio reached the bot, sample-exact.
    let source = b.s.topo.dir.join("caller.wav");
    write_ulaw_as_wav(&source, &sent)?;
    compare(8000, &b.checker.wav(1, "inbound"), &source)?;
    Ok(())
}

/// Barge-in: a `clear` 500 ms into a 3 s utterance cuts it at once; what was played is the
/// utterance's beginning, then silence on the same stream; the pending marks come back.
#[test]
fn bot_endpoint_clear_cuts_the_utterance() -> Result<()> {
    let mut b = start(3000, &["--bot-clear-after-ms", "500"])?;
    b.wait_status("started", false)?;
    let (_, got) = b.converse(2500)?;
    let r = b.finish()?;
    assert_clean(&r, &b.s.topo.log("bot"));
    assert_one_stream(&got, a_local(), 0);
    let audio = heard(&got, 0xff);
    assert!(
        !audio.is_empty() && audio.len() < 1000 * 8,
        "cut well before its 3 s: {} ms played",
        audio.len() / 8
    );
    assert_eq!(
        audio[..],
        b.speech[..audio.len()],
        "the utterance's beginning"
    );
    let talk_end = got
        .iter()
        .skip_while(|p| !p.marker)
        .position(|p| p.payload == [0xff; 160])
        .context("silence after the cut")?;
    let after = &got[got.iter().position(|p| p.marker).unwrap_or(0) + talk_end..];
    assert!(
        after.iter().all(|p| p.payload == [0xff; 160] && !p.marker),
        "nothing of the bot after the cut"
    );
    let bot = &r["per_connection"][0]["bot"];
    assert_eq!(
        bot["marks_echoed"].as_array().map(Vec::len),
        bot["marks_sent"].as_array().map(Vec::len),
        "the clear reports the pending marks: {bot:#}"
    );
    // Measured, not asserted (speed lives in benchmarks): from the bot's `clear` on the
    // checker's clock to the last packet of its audio at the caller, same clock.
    let first = got.iter().position(|p| p.marker).unwrap_or(0);
    let last_audio = &got[first + talk_end - 1];
    let cleared = bot["cleared_monotonic_ms"]
        .as_f64()
        .context("cleared_monotonic_ms")?;
    eprintln!(
        "clear: {} ms of the utterance played; last bot packet {:.1} ms after the clear was sent",
        audio.len() / 8,
        last_audio.mono_ms - cleared
    );
    Ok(())
}

/// The bot leaves mid-utterance: its audio stops, the call's stream goes on (silence, same
/// SSRC and sequence), the fork reconnects and the caller's audio reaches the new connection.
#[test]
fn bot_endpoint_bot_leaving_mid_utterance_leaves_the_call_up() -> Result<()> {
    let mut b = start(3000, &["--bot-close-after-ms", "600"])?;
    b.wait_status("started", false)?;
    let (_, got) = b.converse(1500)?;
    b.wait_status("started", true)?;
    let (_, more) = b.converse(1000)?;
    let r = b.finish()?;
    assert_clean(&r, &b.s.topo.log("bot"));
    let all: Vec<Rx> = got.into_iter().chain(more).collect();
    // One stream across the bot's departure (the caller's sends pause nothing on our side).
    assert_one_stream(&all, a_local(), 0);
    let audio = heard(&all, 0xff);
    assert!(
        !audio.is_empty() && audio.len() < 3000 * 8,
        "cut when the bot left: {} ms played",
        audio.len() / 8
    );
    assert_eq!(audio[..], b.speech[..audio.len()]);
    assert_eq!(r["connections"], 2, "reconnected: {r:#}");
    assert!(
        b.checker.wav(2, "inbound").exists(),
        "the caller's audio reaches the new connection: {r:#}"
    );
    Ok(())
}

/// jambonz's bidirectional audio: the bot streams binary L16 with a mark after each 100 ms;
/// the caller hears it exactly and every mark is answered `playout`, in order. Then a second
/// utterance as a `playAudio` clip is answered `playDone`.
#[test]
fn bot_endpoint_jambonz_streams_l16_and_marks() -> Result<()> {
    let mut b = start_with(&JAMBONZ, 1000, &[])?;
    b.wait_status("started", false)?;
    let (_, got) = b.converse(2000)?;
    let r = b.finish()?;
    assert_clean(&r, &b.s.topo.log("bot"));
    assert_one_stream(&got, a_local(), 0);
    let audio = heard(&got, 0xff);
    assert_eq!(
        audio, b.speech,
        "the bot's L16, through the call's µ-law, byte for byte"
    );
    let (sent, echoed) = marks(&r);
    assert_eq!(sent.len(), 10);
    assert_eq!(echoed, sent, "{:#}", r["per_connection"][0]["bot"]);
    Ok(())
}

/// jambonz `clearMarks` 450 ms into a 2 s utterance: the marks not played yet are forgotten
/// (never answered) and the audio plays on in full.
#[test]
fn bot_endpoint_jambonz_clear_marks_forgets_pending_marks_not_audio() -> Result<()> {
    let mut b = start_with(&JAMBONZ, 2000, &["--bot-clear-marks-after-ms", "450"])?;
    b.wait_status("started", false)?;
    let (_, got) = b.converse(3000)?;
    let r = b.finish()?;
    assert_clean(&r, &b.s.topo.log("bot"));
    assert_one_stream(&got, a_local(), 0);
    assert_eq!(
        heard(&got, 0xff),
        b.speech,
        "the whole utterance, unchanged"
    );
    let bot = &r["per_connection"][0]["bot"];
    let echoed = bot["marks_echoed"].as_array().map_or(0, Vec::len);
    let forgotten = bot["marks_forgotten"].as_array().map_or(0, Vec::len);
    let late = bot["marks_late"].as_array().map_or(0, Vec::len);
    assert_eq!(echoed + forgotten, 20, "{bot:#}");
    assert!(
        (3..=6).contains(&echoed) && forgotten >= 14,
        "marks before the clearMarks answered, the rest forgotten: {bot:#}"
    );
    assert!(late <= 1, "at most one answer already on its way: {bot:#}");
    Ok(())
}

#[test]
fn bot_endpoint_jambonz_play_audio_is_answered_play_done() -> Result<()> {
    let mut b = start_with(&JAMBONZ, 600, &["--bot-mode", "play"])?;
    b.wait_status("started", false)?;
    let (_, got) = b.converse(1500)?;
    let r = b.finish()?;
    assert_clean(&r, &b.s.topo.log("bot"));
    assert_eq!(heard(&got, 0xff), b.speech);
    let done = &r["per_connection"][0]["bot"]["play_done_ms"];
    let ms = done[0].as_f64().context("one playDone")?;
    assert!(
        ms >= 600.0 - 20.0,
        "playDone only once the clip was played: {done}"
    );
    Ok(())
}
