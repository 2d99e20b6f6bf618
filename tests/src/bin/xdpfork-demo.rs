//! `cargo xtask demo`: one call's audio through the real data path, end to end.
//!
//! Builds the four-namespace topology, starts the speech-server and fork-agent, anchors a call's
//! two media directions in the kernel, forks both parties, and streams a few seconds of real
//! speech (espeak-ng, converted to G.711 with sox) from the caller and the callee. Prints where
//! the WAV files landed and the counters of each stage.
//!
//! `--profile twilio|audiohook|jambonz|raw` forks to a server of that dialect instead: the
//! independent checker of tests/checkers, which judges every message and decodes the audio; the
//! demo prints what it received and matches the decoded audio with what was played.

// A driver that paces real-time audio: it reads the clock by design.
#![allow(clippy::disallowed_methods)]

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use xdpfork_tests::{addrs::*, rtp_packet, spawn_receiver, Host, Scenario};

/// xdpfork demo: one call's audio relayed in the kernel and forked to a speech server, in
/// network namespaces of its own (root). `cargo xtask demo` builds and runs it.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Where to leave the source and recorded WAV files.
    #[arg(default_value = "target/demo")]
    out_dir: PathBuf,
    /// The speech dialect: xdpfork (our own speech-server), twilio, audiohook, jambonz or raw
    /// (a strict checker of that dialect plays the server).
    #[arg(long, default_value = "xdpfork")]
    profile: String,
}

const CALLER_TEXT: &str = "Hello, this is the caller. I would like to check the status of my order, number four two seven.";
const CALLEE_TEXT: &str =
    "Thank you for calling. Your order shipped this morning and arrives on Thursday.";

fn tts(text: &str, voice: &str, dir: &Path, name: &str, encoding: &str) -> Result<Vec<u8>> {
    let wav = dir.join(format!("{name}.wav"));
    let raw = dir.join(format!("{name}.g711"));
    let st = Command::new("espeak-ng")
        .args(["-v", voice, "-s", "150", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .context("running espeak-ng (install it with `cargo xtask setup`)")?;
    if !st.success() {
        bail!("espeak-ng failed");
    }
    // 8 kHz mono G.711: the codec a contact center's SIP trunk carries.
    let st = Command::new("sox")
        .arg(&wav)
        .args(["-r", "8000", "-c", "1", "-e", encoding, "-t", "raw"])
        .arg(&raw)
        .status()
        .context("running sox (install it with `cargo xtask setup`)")?;
    if !st.success() {
        bail!("sox failed");
    }
    Ok(std::fs::read(&raw)?)
}

/// Send `audio` as 20 ms RTP packets in real time; returns packets sent.
fn stream(tx: UdpSocket, to: SocketAddr, pt: u8, ssrc: u32, audio: Vec<u8>) -> Result<usize> {
    let start = Instant::now();
    let mut n = 0;
    for (i, chunk) in audio.chunks(160).enumerate() {
        let due = start + Duration::from_millis(20 * i as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        tx.send_to(&rtp_packet(pt, i as u16, (160 * i) as u32, ssrc, chunk), to)?;
        n += 1;
    }
    Ok(n)
}

/// Both parties speak at once, each in real time to its anchor; packets sent by each.
fn play_call(
    caller_tx: UdpSocket,
    callee_tx: UdpSocket,
    caller_audio: Vec<u8>,
    callee_audio: Vec<u8>,
) -> Result<(usize, usize)> {
    let (a, b): (SocketAddr, SocketAddr) = (A_LOCAL.parse()?, B_LOCAL.parse()?);
    let t1 = std::thread::spawn(move || stream(caller_tx, a, 0, 0x1111, caller_audio));
    let t2 = std::thread::spawn(move || stream(callee_tx, b, 0, 0x2222, callee_audio));
    let sent_a = t1
        .join()
        .map_err(|_| anyhow::anyhow!("caller thread panicked"))??;
    let sent_b = t2
        .join()
        .map_err(|_| anyhow::anyhow!("callee thread panicked"))??;
    Ok((sent_a, sent_b))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = if args.profile == "xdpfork" {
        run(&args.out_dir)
    } else {
        match xdpfork_tests::dialects::by_name(&args.profile) {
            Some(d) => run_dialect(&args.out_dir, d),
            None => Err(anyhow::anyhow!(
                "--profile {:?}: expected xdpfork, twilio, audiohook, jambonz or raw",
                args.profile
            )),
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The daemons' log tails are part of the error chain (docs/operations.md).
            eprintln!("xdpfork demo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Decode a 16-bit PCM WAV as hound writes it (RIFF, `fmt `, `data`).
fn wav_samples(path: &Path) -> Result<Vec<i16>> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WAVE",
        "{} is not a WAV file",
        path.display()
    );
    let mut at = 12;
    while at + 8 <= b.len() {
        let len = u32::from_le_bytes([b[at + 4], b[at + 5], b[at + 6], b[at + 7]]) as usize;
        let body = b.get(at + 8..at + 8 + len).context("truncated WAV chunk")?;
        if &b[at..at + 4] == b"data" {
            return Ok(body
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect());
        }
        at += 8 + len + (len & 1);
    }
    bail!("{} has no data chunk", path.display())
}

/// Whether the recording holds exactly the µ-law audio that was sent (the last packet is padded
/// to 160 bytes by nobody: it is sent short, so compare what was sent).
fn matches_source(recorded: &[i16], source: &[u8]) -> bool {
    recorded.len() == source.len()
        && recorded
            .iter()
            .zip(source)
            .all(|(r, s)| *r == speech_proto::ulaw_to_linear(*s))
}

fn run(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let out = out.canonicalize()?;
    println!("xdpfork demo: caller ⇄ [XDP relay + fork on the forker host] ⇄ callee, forked to a speech server");

    let caller_audio = tts(CALLER_TEXT, "en-us", &out, "caller-source", "u-law")?;
    let callee_audio = tts(CALLEE_TEXT, "en-gb", &out, "callee-source", "u-law")?;
    println!(
        "  generated speech: caller {:.1} s, callee {:.1} s (G.711 µ-law, 8 kHz)",
        caller_audio.len() as f64 / 8000.0,
        callee_audio.len() as f64 / 8000.0
    );

    let mut s = Scenario::start()?;
    s.add_call_flows(false)?;
    s.start_fork("demo-call-0001", A_LOCAL, B_LOCAL)?;
    println!("  fork-agent up: flows {A_LOCAL} and {B_LOCAL} relayed in the kernel and forked");

    let caller_tx = s.topo.udp_socket(Host::Caller, CALLER_RTP.parse()?)?;
    let callee_tx = s.topo.udp_socket(Host::Callee, CALLEE_RTP.parse()?)?;
    // The far ends also listen: what the kernel relays must arrive.
    let caller_rx = spawn_receiver(
        caller_tx.try_clone()?,
        callee_audio.len() / 160 + 1,
        Duration::from_secs(3),
    );
    let callee_rx = spawn_receiver(
        callee_tx.try_clone()?,
        caller_audio.len() / 160 + 1,
        Duration::from_secs(3),
    );
    let (caller_src, callee_src) = (caller_audio.clone(), callee_audio.clone());
    let (sent_a, sent_b) = play_call(caller_tx, callee_tx, caller_audio, callee_audio)?;
    let got_b = callee_rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??
        .len();
    let got_a = caller_rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??
        .len();

    s.wait_frames_sent("asr", (sent_a + sent_b) as u64)?;
    let counters = s.counters()?;
    s.ctl(serde_json::json!({"v":1,"op":"fork_stop","call_guid":"demo-call-0001"}))?;
    std::thread::sleep(Duration::from_millis(300));
    let summary = s.speech_summary()?;

    println!("\n  caller → callee: sent {sent_a}, callee received {got_b}");
    println!("  callee → caller: sent {sent_b}, caller received {got_a}");
    let k = &counters["kernel"];
    println!(
        "  kernel: relayed+forked {}  relayed {}  passed to stack (no flow) {}",
        k["relayed_forked"], k["relayed"], k["pass_no_flow"]
    );
    println!(
        "  fork-agent: AF_XDP frames {}  frames sent to speech server {}  dropped {}  user-space relayed {}",
        counters["user"]["xsk_frames"],
        counters["servers"]["asr"]["frames_sent"],
        counters["servers"]["asr"]["frames_dropped"],
        counters["user"]["userspace_relayed"]
    );
    println!("\n  speech server recorded:");
    let mut faithful = Vec::new();
    for st in summary["streams"].as_array().cloned().unwrap_or_default() {
        let wav = PathBuf::from(st["wav"].as_str().unwrap_or_default());
        let dest = out.join(wav.file_name().unwrap_or_default());
        std::fs::copy(&wav, &dest).with_context(|| format!("copying {}", wav.display()))?;
        let channel = st["channel"].as_str().unwrap_or("?").to_owned();
        let source = if channel == "caller" {
            &caller_src
        } else {
            &callee_src
        };
        let same = matches_source(&wav_samples(&dest)?, source);
        println!(
            "    {:<6} stream {}: {} frames, {} lost, {}, {}  → {}",
            channel,
            st["stream_id"],
            st["frames"],
            st["lost"],
            st["stopped"].as_str().unwrap_or("open"),
            if same {
                "sample for sample the audio played"
            } else {
                "DIFFERS from the audio played"
            },
            dest.display()
        );
        faithful.push((channel, same));
    }
    if got_b != sent_a || got_a != sent_b {
        bail!("the kernel relay lost packets");
    }
    ensure!(
        faithful.len() == 2 && faithful.iter().all(|(_, same)| *same),
        "the forked recordings do not match the audio played: {faithful:?}; speech-server log:\n{}",
        s.topo.log_tail("speech-server", 20)
    );
    println!("\nxdpfork demo: ok");
    Ok(())
}

/// The demo call forked to a checker of dialect `d`.
fn run_dialect(out: &Path, d: xdpfork_tests::dialects::Dialect) -> Result<()> {
    use xdpfork_tests::dialects::{compare, write_ulaw_as_wav};
    std::fs::create_dir_all(out)?;
    let out = out.canonicalize()?;
    println!(
        "xdpfork demo: caller ⇄ [XDP relay + fork] ⇄ callee, forked to a server speaking {} (tests/checkers/{}_checker.py)",
        d.profile, d.profile
    );
    let caller_audio = tts(CALLER_TEXT, "en-us", &out, "caller-source", "u-law")?;
    let callee_audio = tts(CALLEE_TEXT, "en-gb", &out, "callee-source", "u-law")?;

    let mut topo = xdpfork_tests::Topology::new()?;
    let checker = d.spawn_checker(&mut topo, "checker", SPEECH_WS, &out, &[])?;
    let mut s = Scenario::start_agent_in(topo, SPEECH_WS, &d.server_toml())?;
    s.add_call_flows(false)?;
    s.start_fork("demo-call-0001", A_LOCAL, B_LOCAL)?;
    println!("  fork-agent up, speaking {} to {SPEECH_WS}", d.profile);

    let caller_tx = s.topo.udp_socket(Host::Caller, CALLER_RTP.parse()?)?;
    let callee_tx = s.topo.udp_socket(Host::Callee, CALLEE_RTP.parse()?)?;
    let (caller_src, callee_src) = (caller_audio.clone(), callee_audio.clone());
    let (sent_a, sent_b) = play_call(caller_tx, callee_tx, caller_audio, callee_audio)?;
    std::thread::sleep(Duration::from_millis(300));
    s.ctl(serde_json::json!({"v":1,"op":"fork_stop","call_guid":"demo-call-0001"}))?;
    checker.wait_closed(Duration::from_secs(10))?;
    s.topo
        .signal("checker", nix::sys::signal::Signal::SIGTERM)?;
    let r = checker.read_report();

    println!("\n  parties sent {sent_a} + {sent_b} packets of 20 ms");
    println!("  the {} server received:", d.profile);
    println!("    upgrade:  {}", r["upgrade"]);
    println!("    messages: {}", r["messages"]);
    println!("    tracks:   {}", r["tracks"]);
    let violations = r["violations"].as_array().cloned().unwrap_or_default();
    for v in &violations {
        println!("    VIOLATION {v}");
    }
    let mut faithful = true;
    for (track, sent, name) in [
        (d.tracks[0], &caller_src, "caller"),
        (d.tracks[1], &callee_src, "callee"),
    ] {
        let source = out.join(format!("{name}-source-pcm.wav"));
        write_ulaw_as_wav(&source, sent)?;
        let decoded = checker.wav(1, track);
        match compare(d.rate, &decoded, &source) {
            Ok(how) => println!("    {track:<9} {} → {how}", decoded.display()),
            Err(e) => {
                faithful = false;
                println!("    {track:<9} {e:#}");
            }
        }
    }
    ensure!(
        violations.is_empty() && r["ok"] == true,
        "the {} checker found violations; its log:\n{}",
        d.profile,
        s.topo.log_tail("checker", 20)
    );
    ensure!(
        faithful,
        "the decoded audio does not match the audio played"
    );
    println!("\nxdpfork demo ({}): ok", d.profile);
    Ok(())
}
