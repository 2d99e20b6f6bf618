//! A voice bot brought into a bridged call (inject mode, docs/sip-agent.md "A bot in a bridged
//! call"): sipp calls sipp through sip-agent; the callee talks all the time (a looped A-law
//! sweep, sipp `rtp_stream`); the caller, also the controller, sends an INFO START with
//! `"return-audio":{"to":"caller"}` naming the Twilio checker as the bot (`--bot-wav`). While the
//! bot talks the caller hears it instead of (`replace`) or with (`mix`) the callee; when it is
//! silent the kernel relays the callee again. What reaches the caller's media port is captured
//! with tcpdump in its namespace and judged packet by packet: one RTP stream throughout (one
//! SSRC, sequence +1 at every packet, timestamp +160 except where a talkspurt starts), the
//! callee's audio in order before and after, the bot's sample-exact in between; the marks come
//! back in order; fork-agent's counters show the relay was switched in the kernel and back.
//! Before that START the controller asks for return audio from a `raw` server, which has none:
//! `Unsupported flow`. A second call has the bot `clear` mid-utterance and then leave: the
//! utterance is cut, the relay carries the callee again, the call stays up until the BYE.

// A test drives real processes against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use xdpfork_tests::bot::{assert_one_stream_across_turns, Rx};

use crate::sip_support::{
    sipp_file, start_body_to, CallerRun, SipBot, SipTest, BOT_WS, CALLER_IP, CALLER_MEDIA_PORT,
    PCMA,
};

const GUID: &str = "1A7EC7000017";
/// The START asking return audio of a server whose profile (`raw`) has none.
const REFUSED_GUID: &str = "1A7EC7000000";
/// Packets in the callee's audio loop (20 ms each).
const CALLEE_PACKETS: usize = 100;
/// A-law silence.
const SILENCE: u8 = 0xd5;

/// The callee's A-law loop: packet k is a tone of 300 + 25·k Hz (phase continuous), so every
/// packet differs from every other and from the bot's 600 Hz speech: a packet's payload tells
/// who sent it and, for the callee, where in its loop it is.
fn callee_audio() -> Vec<u8> {
    let mut phase = 0.0f64;
    let mut out = Vec::with_capacity(CALLEE_PACKETS * 160);
    for k in 0..CALLEE_PACKETS {
        let step = 2.0 * std::f64::consts::PI * (300.0 + 25.0 * k as f64) / 8000.0;
        for _ in 0..160 {
            out.push(speech_proto::linear_to_alaw((4000.0 * phase.sin()) as i16));
            phase += step;
        }
    }
    out
}

struct Inject {
    t: SipTest,
    bot: SipBot,
    /// Each callee packet's payload → its place in the loop.
    callee: HashMap<Vec<u8>, usize>,
}

/// What fork-agent showed while the call was up, read last before the BYE.
struct During {
    flows: Value,
    counters: Value,
}

/// Who sent a packet the caller received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// The callee (relayed), this packet of its loop.
    Callee(usize),
    /// Anything else: the bot (alone, mixed, or its silence).
    Bot,
}

fn start(speech_ms: usize, bot_args: &[&str]) -> Result<Inject> {
    // The fork goes to the `asr` entry's settings with the START's destination; a bot that
    // leaves is reconnected quickly.
    let mut t =
        SipTest::start_with_speech(&[], "backoff_initial_ms = 200\nbackoff_max_ms = 400\n")?;
    let dir = t.dir.clone();
    // The bot, and what reaches the caller's media port, captured where sipp is.
    let bot = SipBot::start(&mut t, speech_ms, bot_args)?;
    let audio = callee_audio();
    let callee: HashMap<Vec<u8>, usize> = audio
        .chunks(160)
        .enumerate()
        .map(|(k, c)| (c.to_vec(), k))
        .collect();
    assert_eq!(callee.len(), CALLEE_PACKETS, "every callee packet unique");
    let raw = dir.join("callee.alaw");
    std::fs::write(&raw, &audio)?;
    let scenario = dir.join("uas_stream.xml");
    std::fs::write(
        &scenario,
        std::fs::read_to_string(sipp_file("uas_stream.xml"))?
            .replace("@AUDIO@", &raw.to_string_lossy())
            .replace("@PT@", "8"),
    )?;
    t.callee_at(&scenario.to_string_lossy(), &PCMA, &[])?;
    Ok(Inject { t, bot, callee })
}

impl Inject {
    /// The caller calls the callee, asks return audio of a `raw` server (refused), then brings
    /// the bot in with `mode`, and hangs up `hold_ms` later; the BYE must get 200.
    fn call(&mut self, mode: &str, hold_ms: u32) -> Result<(CallerRun, During)> {
        let url = format!("ws://{BOT_WS}/media");
        let refused = start_body_to(REFUSED_GUID, &url, r#","profile":"raw","return-audio":{}"#);
        let body = start_body_to(
            GUID,
            &url,
            &format!(r#","profile":"twilio","return-audio":{{"to":"caller","mode":"{mode}"}}"#),
        );
        let mut keys = PCMA.to_vec();
        keys.extend([
            ("first_body", refused.as_str()),
            ("fork_body", body.as_str()),
        ]);
        let d = hold_ms.to_string();
        let mut child = self
            .t
            .caller_spawn("uac_bot_inject.xml", &keys, &["-d", &d])?;
        let during = self.watch(&mut child)?;
        let run = self.t.caller_wait(child)?;
        assert!(
            run.ok,
            "the caller's call (INVITE 200, INFOs 200, BYE 200) failed:\n{}",
            self.t.diag(Some(&run))
        );
        let unexpected = sipp_events(&run.errors)
            .filter(|e| !e.starts_with("Automatic response mode for an unexpected INFO"))
            .count();
        assert_eq!(
            unexpected, 0,
            "the caller's sipp logged events besides answering status INFOs:\n{}",
            run.errors
        );
        Ok((run, during))
    }

    /// Reads fork-agent's flows and counters every 100 ms while the caller runs (bounded by
    /// sipp's own timeout); keeps the last reading that still had the call's flows.
    fn watch(&self, child: &mut Child) -> Result<During> {
        let deadline = Instant::now() + Duration::from_secs(45);
        let mut last = None;
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            let flows = self.t.s.flows()?;
            if flows.as_array().is_some_and(|f| !f.is_empty()) {
                last = Some(During {
                    flows,
                    counters: self.t.s.counters()?,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        last.context("fork-agent never showed the call's flows")
    }

    /// After the call: the callee's sipp ended well, nothing is left in fork-agent; the bot's
    /// report and what the caller received.
    fn finish(&mut self) -> Result<(Value, Vec<Rx>)> {
        self.t.wait_callee_done()?;
        let callee = self.t.s.topo.wait_exit("callee", Duration::from_secs(1))?;
        let errors = std::fs::read_to_string(self.t.dir.join("callee.err")).unwrap_or_default();
        assert!(
            callee.success() && sipp_events(&errors).next().is_none(),
            "the callee's sipp: {callee}\n{errors}\n{}",
            self.t.diag(None)
        );
        self.t.wait_no_flows()?;
        self.bot.finish(&mut self.t)
    }

    fn who(&self, p: &Rx) -> Who {
        self.callee
            .get(&p.payload)
            .map_or(Who::Bot, |&k| Who::Callee(k))
    }

    /// The capture as turns: runs of packets from one sender, as ranges of `got`.
    fn turns(&self, got: &[Rx]) -> Vec<(Who, Range<usize>)> {
        let mut turns: Vec<(Who, Range<usize>)> = Vec::new();
        for (i, p) in got.iter().enumerate() {
            let who = self.who(p);
            match turns.last_mut() {
                Some((w, r)) if (*w == Who::Bot) == (who == Who::Bot) => r.end = i + 1,
                _ => turns.push((who, i..i + 1)),
            }
        }
        turns
    }

    /// The call as the caller heard it: callee, bot, callee, one RTP stream from the anchored
    /// address; the callee's turns each in its loop's order (nothing lost or repeated by the
    /// relay), the bot's turn starting a talkspurt. Returns where the bot's turn is in `got`.
    fn judge_turns(&self, got: &[Rx], during: &During) -> Result<Range<usize>> {
        let anchor = to_caller(during)?;
        let src: SocketAddr = anchor["src"]
            .as_str()
            .context("flow src")?
            .parse()
            .context("flow src")?;
        let steps = assert_one_stream_across_turns(got, src, 8);
        let turns = self.turns(got);
        let shape: Vec<bool> = turns.iter().map(|(w, _)| *w == Who::Bot).collect();
        assert_eq!(
            shape,
            [false, true, false],
            "callee, bot, callee: {:?}",
            turns
        );
        for (w, r) in [&turns[0], &turns[2]] {
            let Who::Callee(first) = w else {
                unreachable!("a callee turn")
            };
            for (n, p) in got[r.clone()].iter().enumerate() {
                assert_eq!(
                    self.who(p),
                    Who::Callee((first + n) % CALLEE_PACKETS),
                    "the callee's audio in order, packet {} of the capture",
                    r.start + n
                );
            }
        }
        let (before, bot, after) = (turns[0].1.len(), turns[1].1.clone(), turns[2].1.len());
        assert!(before >= 10, "the callee before the bot: {before} packets");
        assert!(after >= 50, "the callee after the bot: {after} packets");
        assert!(got[bot.start].marker, "the bot's turn starts a talkspurt");
        // Where each turn began: its timestamp step against the capture clock (reported; the
        // hand-back is +160 exactly, asserted above).
        let starts: Vec<String> = got
            .windows(2)
            .filter(|w| w[1].marker)
            .map(|w| {
                format!(
                    "ts +{} ({:.1} ms) after {:.1} ms",
                    w[1].ts.wrapping_sub(w[0].ts),
                    f64::from(w[1].ts.wrapping_sub(w[0].ts)) / 8.0,
                    w[1].mono_ms - w[0].mono_ms
                )
            })
            .collect();
        eprintln!(
            "turns: callee {before}, bot {}, callee {after} packets; talkspurt starts: {starts:?} \
             (steps {steps:?})",
            bot.len()
        );
        // The kernel switched the relay off while the bot talked and on again: the callee's
        // packets meanwhile were forked only, and nothing went through the user-space relay.
        let kernel = &during.counters["kernel"];
        assert!(
            kernel["inject_forked"].as_u64() > Some(0),
            "inject_forked: {:#}",
            during.counters
        );
        assert_eq!(
            during.counters["user"]["userspace_relayed"].as_u64(),
            Some(0),
            "{:#}",
            during.counters
        );
        assert_eq!(anchor["path"], "kernel", "{anchor:#}");
        assert_eq!(anchor["userspace_packets"], 0, "{anchor:#}");
        Ok(bot)
    }
}

/// The messages of the events in a sipp error file (`-trace_err`): each is written as
/// `date<TAB>time<TAB>epoch: message`, one after the other.
fn sipp_events(errors: &str) -> impl Iterator<Item = &str> {
    errors.split('\t').filter_map(|piece| {
        let (epoch, message) = piece.split_once(": ")?;
        epoch.parse::<f64>().is_ok().then_some(message)
    })
}

/// The flow whose packets go to the caller's media port (from the callee's anchor).
fn to_caller(during: &During) -> Result<&Value> {
    let dst = format!("{CALLER_IP}:{CALLER_MEDIA_PORT}");
    during
        .flows
        .as_array()
        .and_then(|f| f.iter().find(|f| f["dst"] == dst.as_str()))
        .with_context(|| format!("no flow to {dst}: {:#}", during.flows))
}

/// The bot's turn without the silence it may end with.
fn bot_audio(bot: &[Rx]) -> Vec<u8> {
    let talk = bot
        .iter()
        .rposition(|p| p.payload.iter().any(|&b| b != SILENCE))
        .map_or(0, |i| i + 1);
    bot[..talk].iter().flat_map(|p| p.payload.clone()).collect()
}

/// The controller's statuses: first the START asking return audio of a `raw` server, refused
/// as `Unsupported flow`; then the bot's fork's states, returned.
fn statuses(run: &CallerRun) -> Vec<String> {
    let st: Vec<(String, String, String)> = run
        .timed_statuses()
        .into_iter()
        .map(|(_, v)| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (s("call-guid"), s("state"), s("status"))
        })
        .collect();
    assert_eq!(
        st.first()
            .map(|(g, s, e)| (g.as_str(), s.as_str(), e.as_str())),
        Some((REFUSED_GUID, "ERROR", "Unsupported flow")),
        "{st:?}"
    );
    st.into_iter()
        .filter(|(g, ..)| g == GUID)
        .map(|(_, s, _)| s)
        .collect()
}

#[test]
fn sip_bot_inject_replace_hands_back_to_the_relay() -> Result<()> {
    let mut b = start(1500, &[])?;
    let (run, during) = b.call("replace", 4000)?;
    assert_eq!(statuses(&run), ["CONNECTING", "STARTED"]);
    let (r, got) = b.finish()?;
    let turn = b.judge_turns(&got, &during)?;
    let heard = bot_audio(&got[turn]);
    assert_eq!(heard.len(), b.bot.speech.len(), "the whole utterance");
    eprintln!("{}", b.bot.compare_heard(&b.t.dir, &heard)?);
    let (sent, echoed) = SipBot::marks(&r);
    assert_eq!(echoed, sent, "marks back in order");
    assert_eq!(sent.len(), 15);
    // Both parties reached the bot (Twilio's inbound and outbound tracks).
    for track in ["inbound", "outbound"] {
        assert!(
            r["tracks"][track]["samples"].as_u64() >= Some(8000),
            "{track} at the bot: {r:#}"
        );
    }
    Ok(())
}

#[test]
fn sip_bot_inject_clear_then_the_bot_leaves_and_the_relay_goes_on() -> Result<()> {
    let mut b = start(
        3000,
        &["--bot-clear-after-ms", "400", "--bot-close-after-ms", "800"],
    )?;
    let (run, during) = b.call("replace", 4000)?;
    // The bot's leaving is a lost connection the fork survives: RECONNECTING, then STARTED
    // again (connection statuses are paced at one a second, so the STARTED may stand in for
    // both).
    let st = statuses(&run);
    assert!(
        st.starts_with(&["CONNECTING".into(), "STARTED".into()])
            && st.len() >= 3
            && st.last().is_some_and(|s| s == "STARTED")
            && st[2..]
                .iter()
                .all(|s| s == "RECONNECTING" || s == "STARTED"),
        "{st:?}"
    );
    let (r, got) = b.finish()?;
    let turn = b.judge_turns(&got, &during)?;
    let bot = &got[turn.clone()];
    let heard = bot_audio(bot);
    assert!(
        !heard.is_empty() && heard.len() < 1000 * 8,
        "cut by the clear: {} ms played",
        heard.len() / 8
    );
    b.bot.compare_heard(&b.t.dir, &heard)?;
    let (sent, echoed) = SipBot::marks(&r);
    assert_eq!(echoed, sent, "the clear reports the pending marks");
    assert_eq!(r["connections"], 2, "reconnected after the bot left: {r:#}");
    // Measured, not asserted (speed lives in benchmarks): from the bot's `clear` on the
    // checker's clock to its last audio packet at the caller and to the relay's first packet
    // again, same clock.
    let cleared = r["per_connection"][0]["bot"]["cleared_monotonic_ms"]
        .as_f64()
        .context("cleared_monotonic_ms")?;
    let last_talk = &bot[heard.len() / 160 - 1];
    eprintln!(
        "clear: {} ms of the utterance played; its last packet {:.1} ms, the relay's first \
         again {:.1} ms after the clear was sent",
        heard.len() / 8,
        last_talk.mono_ms - cleared,
        got[turn.end].mono_ms - cleared
    );
    Ok(())
}

/// How one mixed packet is made of the bot's frame and the callee's audio: the least-squares
/// fit `mixed ≈ bot_gain · bot + callee_gain · callee[offset..offset + 160]`.
#[derive(Debug, Clone, Copy)]
struct Fit {
    /// Where in the callee's loop (samples) its part starts.
    offset: usize,
    bot_gain: f64,
    callee_gain: f64,
    /// Share of the packet's energy the fit explains (1: all of it).
    r2: f64,
}

/// The best [`Fit`] of `mixed` over the callee offsets `offsets` (`callee` is its loop, linear,
/// with 160 samples of the start repeated at the end so every window is contiguous).
fn fit(mixed: &[f64], bot: &[f64], callee: &[f64], offsets: impl Iterator<Item = usize>) -> Fit {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (mm, mb, bb) = (dot(mixed, mixed), dot(mixed, bot), dot(bot, bot));
    let mut best = Fit {
        offset: 0,
        bot_gain: 0.0,
        callee_gain: 0.0,
        r2: f64::NEG_INFINITY,
    };
    for offset in offsets {
        let c = &callee[offset..offset + 160];
        let (mc, cc, bc) = (dot(mixed, c), dot(c, c), dot(bot, c));
        let det = bb * cc - bc * bc;
        if det.abs() < 1e-9 {
            continue;
        }
        let bot_gain = (mb * cc - mc * bc) / det;
        let callee_gain = (mc * bb - mb * bc) / det;
        let r2 = (bot_gain * mb + callee_gain * mc) / mm;
        if r2 > best.r2 {
            best = Fit {
                offset,
                bot_gain,
                callee_gain,
                r2,
            };
        }
    }
    best
}

#[test]
fn sip_bot_inject_mix_the_caller_hears_both() -> Result<()> {
    let mut b = start(1500, &[])?;
    let (run, during) = b.call("mix", 4000)?;
    assert_eq!(statuses(&run), ["CONNECTING", "STARTED"]);
    let (r, got) = b.finish()?;
    let turn = b.judge_turns(&got, &during)?;
    let mixed = &got[turn.clone()];
    let frames = b.bot.speech.len() / 160;
    assert!(
        mixed.len() >= frames,
        "{} mixed packets for a {frames}-packet utterance",
        mixed.len()
    );
    let callee: Vec<f64> = {
        let mut loop_ = callee_audio();
        loop_.extend_from_within(..160);
        loop_
            .iter()
            .map(|&a| f64::from(speech_proto::alaw_to_linear(a)))
            .collect()
    };
    let span = CALLEE_PACKETS * 160;
    let mut fits = Vec::new();
    let mut prev: Option<usize> = None;
    for (i, p) in mixed[..frames].iter().enumerate() {
        let m: Vec<f64> = p
            .payload
            .iter()
            .map(|&a| f64::from(speech_proto::alaw_to_linear(a)))
            .collect();
        let bot: Vec<f64> = b.bot.speech[i * 160..(i + 1) * 160]
            .iter()
            .map(|&u| f64::from(speech_proto::ulaw_to_linear(u)))
            .collect();
        // Near where the previous packet's callee part was (three packets either way), else
        // anywhere in the loop.
        let near = prev.map(|o| {
            fit(
                &m,
                &bot,
                &callee,
                (0..=960).map(move |d| (o + 160 + span - 480 + d) % span),
            )
        });
        let f = match near {
            Some(f) if f.r2 > 0.99 => f,
            _ => fit(&m, &bot, &callee, 0..span),
        };
        let both = (0.2..2.0).contains(&f.bot_gain) && (0.2..2.0).contains(&f.callee_gain);
        // The mixer sums the callee's packets as they are forked to it: one that is not there
        // yet at a packet time (the two 20 ms clocks drift against each other, the fork path
        // has jitter) leaves the bot alone in that packet.
        let bot_alone = (0.2..2.0).contains(&f.bot_gain) && f.callee_gain.abs() < 0.05;
        assert!(
            f.r2 > 0.99 && (both || bot_alone),
            "packet {i} of the mixed turn is neither bot + callee nor the bot: {f:?}"
        );
        if both {
            prev = Some(f.offset);
            fits.push(f);
        }
    }
    assert!(
        fits.len() * 10 >= frames * 9,
        "the callee is in only {} of {frames} mixed packets",
        fits.len()
    );
    // The callee's audio goes on in the mix where the relay left it, and the relay goes on
    // where the mix left it (in packets of its loop; a packet may be late into the mix).
    let in_mix: Vec<usize> = fits
        .iter()
        .map(|f| (f.offset + 80) / 160 % CALLEE_PACKETS)
        .collect();
    let median = |g: fn(&Fit) -> f64| {
        let mut v: Vec<f64> = fits.iter().map(g).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let callee_at = |p: &Rx| match b.who(p) {
        Who::Callee(k) => Some(k),
        Who::Bot => None,
    };
    let (last_before, first_after) = (callee_at(&got[turn.start - 1]), callee_at(&got[turn.end]));
    eprintln!(
        "mix: {frames} packets ({} with the callee), gains bot {:.3} callee {:.3} (medians), \
         worst r² {:.5}; callee packets: relayed up to {last_before:?}, mixed {:?}..{:?}, \
         relayed from {first_after:?}",
        fits.len(),
        median(|f| f.bot_gain),
        median(|f| f.callee_gain),
        fits.iter().map(|f| f.r2).fold(f64::INFINITY, f64::min),
        in_mix.first(),
        in_mix.last(),
    );
    let (sent, echoed) = SipBot::marks(&r);
    assert_eq!(echoed, sent, "marks back in order");
    Ok(())
}
