//! Return audio in inject mode, through the control API (the sip-agent call is
//! sip_bot_inject.rs): a bridged call relayed by the kernel both ways, forked to the Twilio
//! checker acting as a voice bot (`--bot-wav`) that talks to the caller. While the bot talks,
//! the callee's audio to the caller is replaced (or mixed); when it stops, the kernel relay
//! carries the callee again. What the caller receives is judged as one RTP stream: one SSRC (the
//! callee's, which the bot continues), sequence numbers +1 with no gap or repeat across every
//! switch, timestamps in whole packet times; the callee's packets before and after, the bot's
//! audio sample-exact in between. The kernel's counters show the callee's packets were forked
//! (not relayed) while the bot talked, and the playout's show the take-over and hand-back.

// A test drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use xdpfork_tests::bot::{assert_one_stream_across_turns, monotonic_ms, recv_until, Rx};
use xdpfork_tests::dialects::{compare, write_ulaw_as_wav, TWILIO};
use xdpfork_tests::{addrs, rtp_packet, Host, Scenario, Topology};

use crate::bot_support::{marks, BotCall, BotRig, CHECKER};

const GUID: &str = "0b07e5d1-5eb3-4c4e-9a57-c0ffee000171";
/// The callee's SSRC: the caller hears one stream under it, bot or not.
const CALLEE_SSRC: u32 = 0xca11_eeee;
/// Every byte of the callee's payload: a level no bot frame is made of.
const CALLEE_BYTE: u8 = 0x55;

/// Both parties of the bridged call (sockets in their namespaces), beside the bot.
struct Parties {
    caller: UdpSocket,
    callee: UdpSocket,
    /// Next packet number of each party (their RTP runs on across `converse` calls).
    k: u32,
}

type Inject = BotCall<Parties>;

fn start(mode: &str, speech_ms: usize, checker_args: &[&str]) -> Result<Inject> {
    // The bot starts talking 600 ms into the call, so the callee is heard first.
    let mut args = vec!["--bot-delay-ms", "600"];
    args.extend_from_slice(checker_args);
    let rig = BotRig::start(&TWILIO, speech_ms, &args)?;
    let s = &rig.s;
    let caller = s
        .topo
        .udp_socket(Host::Caller, addrs::CALLER_RTP.parse()?)?;
    caller.set_read_timeout(Some(Duration::from_millis(2)))?;
    let callee = s
        .topo
        .udp_socket(Host::Callee, addrs::CALLEE_RTP.parse()?)?;
    s.add_call_flows(false)?;
    // The callee's flow (B_LOCAL → caller) carries audio to the caller: the bot talks there.
    s.ctl(json!({"v":1,"op":"fork_start","fork":{
        "call_guid": GUID, "call_id": "inject-1@pbx", "from": "sip:1000@pbx",
        "to": "sip:2000@pbx", "server": "asr", "codec": "PCMU",
        "streams": [{"channel":"caller","flow":addrs::A_LOCAL},
                    {"channel":"callee","flow":addrs::B_LOCAL}],
        "return_audio": {"to": "caller", "flow": addrs::B_LOCAL, "mode": mode}}}))?;
    Ok(BotCall {
        rig,
        parties: Parties {
            caller,
            callee,
            k: 0,
        },
    })
}

impl Inject {
    /// Both parties talk (20 ms packets, paced) for `ms`; what the caller receives.
    fn converse(&mut self, ms: u64) -> Result<Vec<Rx>> {
        let (a, b): (SocketAddr, SocketAddr) = (addrs::A_LOCAL.parse()?, addrs::B_LOCAL.parse()?);
        let start = Instant::now();
        let mut got = Vec::new();
        let p = &mut self.parties;
        for n in 0..(ms / 20) as u32 {
            let k = p.k;
            p.k += 1;
            let callee_payload = [CALLEE_BYTE; 160];
            p.callee.send_to(
                &rtp_packet(0, k as u16, 160 * k, CALLEE_SSRC, &callee_payload),
                b,
            )?;
            let caller_payload = [0x2a; 160];
            p.caller.send_to(
                &rtp_packet(0, k as u16, 160 * k, 0xca11, &caller_payload),
                a,
            )?;
            recv_until(
                &p.caller,
                start + Duration::from_millis(20) * (n + 1),
                &mut got,
            )?;
        }
        // The last relayed packets are on their way.
        let mut buf = [0u8; 2048];
        let until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < until {
            if let Ok((len, from)) = p.caller.recv_from(&mut buf) {
                got.extend(Rx::parse(from, monotonic_ms()?, &buf[..len]));
            }
        }
        Ok(got)
    }

    fn wait_status(&mut self, status: &str, reconnected: bool) -> Result<()> {
        self.rig.wait_status(GUID, status, reconnected)
    }

    fn finish(&mut self) -> Result<Value> {
        self.rig.finish(GUID)
    }

    fn kernel(&self, reason: &str) -> Result<u64> {
        let c = self.s.counters()?;
        c["kernel"][reason]
            .as_u64()
            .with_context(|| format!("kernel counter {reason}: {c:#}"))
    }
}

fn is_callee(p: &Rx) -> bool {
    p.payload.iter().all(|&b| b == CALLEE_BYTE)
}

/// One stream at the caller, whoever sent each packet: from the caller's anchor, the callee's
/// SSRC (which the bot continues), sequence +1 with no gap or repeat across every switch,
/// timestamps +160 but at a talkspurt's start (forward by whole packet times).
fn assert_one_continuous_stream(got: &[Rx]) {
    assert_one_stream_across_turns(got, addrs::A_LOCAL.parse().expect("address"), 0);
    assert_eq!(got[0].ssrc, CALLEE_SSRC, "the callee's stream");
}

/// The three parts of what the caller heard: callee, then the bot's talkspurt (from its marker
/// bit), then callee again. Returns the bot's audio.
fn split(got: &[Rx]) -> (usize, Vec<u8>, usize) {
    let first_bot = got
        .iter()
        .position(|p| p.marker && !is_callee(p))
        .expect("the bot's talkspurt starts with a marker bit");
    let before = got[..first_bot].iter().filter(|p| is_callee(p)).count();
    assert_eq!(before, first_bot, "only the callee before the bot");
    let bot_len = got[first_bot..]
        .iter()
        .position(is_callee)
        .expect("the callee is heard again after the bot");
    let bot: Vec<u8> = got[first_bot..first_bot + bot_len]
        .iter()
        .flat_map(|p| p.payload.clone())
        .collect();
    let after = &got[first_bot + bot_len..];
    assert!(
        after.iter().all(is_callee),
        "only the callee after the bot stopped"
    );
    (before, bot, after.len())
}

/// The bot's utterance replaces the callee for its length; the callee is relayed by the kernel
/// before and after, and the caller never sees the stream break.
#[test]
fn bot_inject_replaces_the_callee_while_it_talks_and_hands_back_to_the_kernel() -> Result<()> {
    let mut b = start("replace", 1000, &[])?;
    b.wait_status("started", false)?;
    let forked_before = b.kernel("inject_forked")?;
    let got = b.converse(3000)?;
    let counters = b.s.counters()?;
    let r = b.finish()?;
    assert_eq!(r["violations"], json!([]), "checker: {r:#}");
    assert_one_continuous_stream(&got);
    let (before, bot, after) = split(&got);
    assert!(
        before >= 10 && after >= 10,
        "the callee is heard before ({before}) and after ({after})"
    );
    let heard = b.s.topo.dir.join("heard.wav");
    write_ulaw_as_wav(&heard, &bot)?;
    eprintln!("{}", compare(8000, &heard, &b.bot_wav)?);
    // The last frame is padded with silence if the utterance is not whole frames.
    assert_eq!(
        bot[..b.speech.len()],
        b.speech[..],
        "the bot, byte for byte"
    );
    assert!(bot[b.speech.len()..].iter().all(|&x| x == 0xff));
    // The callee's packets during the utterance were forked (the bot hears who it replaces)
    // but not relayed.
    let forked = counters["kernel"]["inject_forked"].as_u64().unwrap_or(0) - forked_before;
    assert!(
        (40..=60).contains(&forked),
        "1 s of the callee forked, not relayed: {forked}: {counters:#}"
    );
    let ra = &counters["return_audio"];
    assert_eq!(
        (ra["take_overs"].as_u64(), ra["hand_backs"].as_u64()),
        (Some(1), Some(1)),
        "{ra:#}"
    );
    // Every mark back, in order.
    let (sent, echoed) = marks(&r);
    assert!(!sent.is_empty());
    assert_eq!(echoed, sent, "{:#}", r["per_connection"][0]["bot"]);
    Ok(())
}

/// A re-INVITE replaces the callee's flow after the bot handed the stream back: the
/// replacement's relay continues the renumbered stream where it stood (not from the hand-back's
/// numbers, which would step back), one stream throughout.
#[test]
fn bot_inject_a_replaced_flow_continues_the_renumbered_stream() -> Result<()> {
    let mut b = start("replace", 600, &[])?;
    b.wait_status("started", false)?;
    // The bot talks from 600 ms for 600 ms; the relay then carries the callee for a while.
    let mut got = b.converse(2400)?;
    let relayed_after = b.kernel("inject_forked")?;
    assert!(relayed_after > 0, "the bot talked");
    // What sip-agent does for a re-INVITE: the flow goes and comes back (here, unchanged).
    b.s.ctl(json!({"v":1,"op":"flow_del","local":addrs::B_LOCAL}))?;
    b.s.ctl(json!({"v":1,"op":"flow_add","flow":{"local":addrs::B_LOCAL,
        "src":addrs::A_LOCAL,"dst":addrs::CALLER_RTP}}))?;
    got.extend(b.converse(1000)?);
    let r = b.finish()?;
    assert_eq!(r["violations"], json!([]), "checker: {r:#}");
    // Packets the callee sent between the delete and the add may be missing (no flow then);
    // judged are the numbers: never a repeat or a step back, and nothing but the callee after.
    let (_, bot, after) = split(&got);
    assert_eq!(
        bot[..b.speech.len()],
        b.speech[..],
        "the bot, byte for byte"
    );
    assert!(
        after >= 50,
        "the callee relayed after the replacement: {after}"
    );
    for w in got.windows(2) {
        assert_eq!(w[1].ssrc, CALLEE_SSRC, "one stream: {w:?}");
        let step = w[1].seq.wrapping_sub(w[0].seq);
        assert!((1..=5).contains(&step), "sequence steps forward: {w:?}");
        // Forward by whole packet times, no more than the time between the two arrivals
        // (across the replacement the media clock runs on while no packet is relayed).
        let ts = w[1].ts.wrapping_sub(w[0].ts);
        let gap = ((w[1].mono_ms - w[0].mono_ms) / 20.0).ceil().max(1.0) as u32 + 1;
        assert!(
            ts % 160 == 0 && (160..=160 * gap).contains(&ts),
            "timestamp steps forward by packet times: {w:?}"
        );
    }
    Ok(())
}

/// Barge-in: a `clear` 400 ms into a 3 s utterance hands the stream back to the kernel relay at
/// once; the caller hears the utterance's beginning, then the callee, on one stream.
#[test]
fn bot_inject_clear_hands_back_at_once() -> Result<()> {
    let mut b = start("replace", 3000, &["--bot-clear-after-ms", "400"])?;
    b.wait_status("started", false)?;
    let got = b.converse(2500)?;
    let r = b.finish()?;
    assert_eq!(r["violations"], json!([]), "checker: {r:#}");
    assert_one_continuous_stream(&got);
    let (_, bot, after) = split(&got);
    assert!(
        !bot.is_empty() && bot.len() < 1000 * 8,
        "cut well before its 3 s: {} ms played",
        bot.len() / 8
    );
    assert_eq!(bot[..], b.speech[..bot.len()], "the utterance's beginning");
    assert!(after >= 40, "the callee is relayed again: {after} packets");
    // Measured, not asserted (speed lives in benchmarks): the clear on the checker's clock to
    // the first callee packet after the bot at the caller, same clock.
    let cleared = r["per_connection"][0]["bot"]["cleared_monotonic_ms"]
        .as_f64()
        .context("cleared_monotonic_ms")?;
    let first_bot = got.iter().position(|p| p.marker && !is_callee(p));
    if let Some(back) = got
        .iter()
        .skip(first_bot.unwrap_or(0))
        .find(|p| is_callee(p))
    {
        eprintln!(
            "clear: {} ms of the utterance played; the callee relayed again {:.1} ms after the clear was sent",
            bot.len() / 8,
            back.mono_ms - cleared
        );
    }
    Ok(())
}

/// The bot leaves mid-utterance: the relay is restored at once and the call goes on, one
/// stream throughout; the fork reconnects.
#[test]
fn bot_inject_bot_leaving_mid_utterance_restores_the_relay() -> Result<()> {
    let mut b = start("replace", 3000, &["--bot-close-after-ms", "500"])?;
    b.wait_status("started", false)?;
    let mut got = b.converse(1800)?;
    b.wait_status("started", true)?;
    got.extend(b.converse(600)?);
    let r = b.finish()?;
    assert_eq!(r["violations"], json!([]), "checker: {r:#}");
    assert_one_continuous_stream(&got);
    let (_, bot, after) = split(&got);
    assert!(
        !bot.is_empty() && bot.len() < 3000 * 8,
        "cut when the bot left: {} ms played",
        bot.len() / 8
    );
    assert_eq!(bot[..], b.speech[..bot.len()]);
    assert!(after >= 40, "the callee is relayed again: {after} packets");
    assert_eq!(r["connections"], 2, "reconnected: {r:#}");
    Ok(())
}

/// Mix: while the bot talks the caller hears the bot and the callee summed (the callee's audio
/// taken from the fork); before and after, the callee alone through the kernel.
#[test]
fn bot_inject_mix_sums_the_callee_into_the_bot() -> Result<()> {
    let mut b = start("mix", 1000, &[])?;
    b.wait_status("started", false)?;
    let got = b.converse(3000)?;
    let r = b.finish()?;
    assert_eq!(r["violations"], json!([]), "checker: {r:#}");
    assert_one_continuous_stream(&got);
    let (_, bot, after) = split(&got);
    assert!(after >= 10, "the callee is relayed again: {after} packets");
    let callee = i32::from(speech_proto::ulaw_to_linear(CALLEE_BYTE));
    let mixed = |s: u8| {
        let v = (i32::from(speech_proto::ulaw_to_linear(s)) + callee)
            .clamp(i32::from(i16::MIN), i32::from(i16::MAX));
        speech_proto::linear_to_ulaw(v as i16)
    };
    // Frame by frame: mixed with the callee, or (while the first callee frame is on its way,
    // or at a scheduling hiccup) the bot alone. Most must be mixed.
    let frames = b.speech.len() / 160;
    let mut n_mixed = 0;
    for f in 0..frames {
        let got_f = &bot[f * 160..(f + 1) * 160];
        let want = &b.speech[f * 160..(f + 1) * 160];
        let want_mixed: Vec<u8> = want.iter().map(|&s| mixed(s)).collect();
        if got_f == &want_mixed[..] {
            n_mixed += 1;
        } else {
            assert_eq!(got_f, want, "frame {f}: neither mixed nor the bot alone");
        }
    }
    assert!(
        n_mixed * 10 >= frames * 8,
        "{n_mixed} of {frames} frames mixed"
    );
    Ok(())
}

/// fork-agent is killed while the bot talks: the kernel keeps the callee's relay stopped (it
/// cannot tell the bot is gone), and the restarted agent hands it back at once, on a fresh SSRC
/// since where the bot's stream ended is unknown; the caller then hears the callee, one
/// continuous stream.
#[test]
fn bot_inject_restarted_agent_restores_a_relay_the_bot_held() -> Result<()> {
    // The bot talks on its first connection only: the resumed one stays silent.
    let mut b = start("replace", 4000, &["--bot-connections", "1"])?;
    b.wait_status("started", false)?;
    let before = b.converse(1200)?;
    assert!(
        before.iter().any(|p| !is_callee(p)),
        "the bot was talking when the agent died"
    );
    b.s.topo
        .signal("fork-agent", nix::sys::signal::Signal::SIGKILL)?;
    let during = b.converse(400)?;
    b.s.start_agent()?;
    let after = b.converse(1000)?;
    assert!(
        b.s.topo
            .log("fork-agent")
            .contains("bot was talking when the previous agent stopped: relay restored"),
        "{}",
        b.s.topo.log_tail("fork-agent", 30)
    );
    let callee: Vec<Rx> = after.into_iter().filter(is_callee).collect();
    assert!(
        callee.len() >= 40,
        "the callee is relayed again: {} packets",
        callee.len()
    );
    let ssrc = callee[0].ssrc;
    assert_ne!(ssrc, CALLEE_SSRC, "a new SSRC after the unknown end");
    for w in callee.windows(2) {
        assert_eq!(w[1].ssrc, ssrc, "one stream: {w:?}");
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "sequence: {w:?}");
        assert_eq!(w[1].ts, w[0].ts.wrapping_add(160), "timestamp: {w:?}");
    }
    eprintln!(
        "agent down for 400 ms mid-utterance: the caller received {} packets meanwhile",
        during.len()
    );
    Ok(())
}

/// Refusals name the field: mix without a stream on the flow, mix on a sink flow, an unknown
/// flow, a hearer without a stream; nothing is forked.
#[test]
fn bot_inject_refusals_name_the_field() -> Result<()> {
    let topo = Topology::new()?;
    let s = Scenario::start_agent_in(topo, CHECKER, "")?;
    s.add_call_flows(false)?;
    const SINK: &str = "10.77.1.1:30010";
    s.ctl(
        json!({"v":1,"op":"flow_add","flow":{"local":SINK,"src":SINK,
        "dst":addrs::CALLER_RTP,"sink":true}}),
    )?;
    let fork = |ra: Value, streams: Value| {
        json!({"v":1,"op":"fork_start","fork":{
            "call_guid": GUID, "server": "asr", "codec": "PCMU",
            "streams": streams, "return_audio": ra}})
    };
    let both = json!([{"channel":"caller","flow":addrs::A_LOCAL},
                      {"channel":"callee","flow":addrs::B_LOCAL}]);
    let caller_only = json!([{"channel":"caller","flow":addrs::A_LOCAL}]);
    let callee_only = json!([{"channel":"callee","flow":addrs::B_LOCAL}]);
    for (req, want) in [
        (
            fork(
                json!({"flow": addrs::B_LOCAL, "mode": "mix"}),
                caller_only.clone(),
            ),
            "mix needs a stream of the fork on",
        ),
        (
            fork(
                json!({"flow": SINK, "mode": "mix"}),
                json!([{"channel":"caller","flow":SINK}]),
            ),
            "is a sink flow (endpoint mode): there is no party to mix",
        ),
        (
            fork(json!({"flow": "10.77.2.1:39998"}), both.clone()),
            "return_audio.flow: no flow",
        ),
        (
            fork(json!({"flow": addrs::B_LOCAL}), callee_only),
            "return_audio.to: the fork has no caller stream",
        ),
    ] {
        let err = s.ctl(req).expect_err("refused");
        assert!(format!("{err:#}").contains(want), "{err:#}");
    }
    assert_eq!(s.ctl(json!({"v":1,"op":"show_forks"}))?, json!([]));
    Ok(())
}
