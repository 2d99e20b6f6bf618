//! What a voice bot's caller receives (return audio, docs/speech-protocol.md §16): RTP packets
//! read from a socket or a tcpdump capture, the checks a phone's jitter buffer makes of them,
//! and the bot's test speech.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// One RTP packet the caller received.
#[derive(Debug, Clone)]
pub struct Rx {
    /// Source address.
    pub from: SocketAddr,
    /// CLOCK_MONOTONIC at receipt in ms (comparable with the checkers' `time.monotonic()`), or
    /// 0 when unknown.
    pub mono_ms: f64,
    pub marker: bool,
    pub pt: u8,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

impl Rx {
    /// An RTP datagram (fixed header only, as the playout sends); `None` if shorter.
    pub fn parse(from: SocketAddr, mono_ms: f64, d: &[u8]) -> Option<Rx> {
        if d.len() < 12 {
            return None;
        }
        Some(Rx {
            from,
            mono_ms,
            marker: d[1] & 0x80 != 0,
            pt: d[1] & 0x7f,
            seq: u16::from_be_bytes([d[2], d[3]]),
            ts: u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
            ssrc: u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
            payload: d[12..].to_vec(),
        })
    }
}

/// Keeps reading RTP from `sock` (set with a short read timeout) into `got` until `due`.
pub fn recv_until(sock: &UdpSocket, due: Instant, got: &mut Vec<Rx>) -> Result<()> {
    let mut buf = [0u8; 2048];
    while Instant::now() < due {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => got.extend(Rx::parse(from, monotonic_ms()?, &buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// CLOCK_MONOTONIC now, in ms.
pub fn monotonic_ms() -> Result<f64> {
    clock_ms(nix::time::ClockId::CLOCK_MONOTONIC)
}

/// How far CLOCK_REALTIME is ahead of CLOCK_MONOTONIC now, in ms: subtract it from a capture
/// time ([`pcap_udp_at`]) to compare it with [`monotonic_ms`] and the checkers' clocks.
pub fn realtime_ahead_ms() -> Result<f64> {
    let mono = monotonic_ms()?;
    Ok(clock_ms(nix::time::ClockId::CLOCK_REALTIME)? - mono)
}

fn clock_ms(clock: nix::time::ClockId) -> Result<f64> {
    let t = nix::time::clock_gettime(clock)?;
    Ok(t.tv_sec() as f64 * 1000.0 + t.tv_nsec() as f64 / 1e6)
}

/// One RTP stream as a phone accepts it: from `from`, one SSRC, payload type `pt`, sequence
/// +1 and timestamp +160 per 20 ms packet throughout (no gap, no restart).
pub fn assert_one_stream(got: &[Rx], from: SocketAddr, pt: u8) {
    assert_continuous(got, from, pt, false);
}

/// [`assert_one_stream`] for a stream with two senders taking turns (inject mode: the kernel
/// relay, then a bot, then the relay again): the same, except that a packet with the marker
/// bit (a talkspurt start, RFC 3551 §4.1) may move the timestamp forward by more than one
/// packet time (whole ones): the new sender continues the media clock, not the packet count.
/// Returns those steps (in timestamp units) for the caller to report.
pub fn assert_one_stream_across_turns(got: &[Rx], from: SocketAddr, pt: u8) -> Vec<u32> {
    assert_continuous(got, from, pt, true)
}

fn assert_continuous(got: &[Rx], from: SocketAddr, pt: u8, turns: bool) -> Vec<u32> {
    assert!(got.len() > 20, "the caller received {} packets", got.len());
    let mut steps = Vec::new();
    for w in got.windows(2) {
        assert_eq!(w[1].from, from, "sent from the anchored address");
        assert_eq!((w[1].ssrc, w[1].pt), (got[0].ssrc, pt), "one stream");
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "sequence: {w:?}");
        let step = w[1].ts.wrapping_sub(w[0].ts);
        if turns && w[1].marker {
            // Forward by whole packet times: the new sender continues the media clock.
            assert!(
                step % 160 == 0 && (160..1 << 31).contains(&step),
                "talkspurt timestamp: {w:?}"
            );
            steps.push(step);
        } else {
            assert_eq!(step, 160, "timestamp: {w:?}");
        }
        assert_eq!(w[1].payload.len(), 160);
    }
    steps
}

/// The bot's first talkspurt as heard: from the first marker bit to the next silence frame
/// (`silence` is the law's silence byte: 0xff µ-law, 0xd5 A-law).
pub fn heard(got: &[Rx], silence: u8) -> Vec<u8> {
    got.iter()
        .skip_while(|p| !p.marker)
        .take_while(|p| p.payload.iter().any(|&b| b != silence))
        .flat_map(|p| p.payload.clone())
        .collect()
}

/// µ-law test speech: a 600 Hz tone whose loudness moves, so every alignment but one differs.
pub fn bot_speech(ms: usize) -> Vec<u8> {
    (0..ms * 8)
        .map(|i| {
            let env = 4000.0 + 3000.0 * (i as f64 / 700.0).sin();
            let x = env * (2.0 * std::f64::consts::PI * 600.0 * i as f64 / 8000.0).sin();
            speech_proto::linear_to_ulaw(x as i16)
        })
        .collect()
}

/// The UDP datagrams of an Ethernet (linktype 1) pcap file, IPv4 only: (source, destination,
/// payload), in order.
pub fn pcap_udp(path: &Path) -> Result<Vec<(SocketAddr, SocketAddr, Vec<u8>)>> {
    Ok(pcap_udp_at(path)?
        .into_iter()
        .map(|(_, from, to, d)| (from, to, d))
        .collect())
}

/// A captured UDP datagram: capture time (CLOCK_REALTIME, ms since the epoch), source,
/// destination, payload.
pub type Captured = (f64, SocketAddr, SocketAddr, Vec<u8>);

/// [`pcap_udp`] with each datagram's capture time.
pub fn pcap_udp_at(path: &Path) -> Result<Vec<Captured>> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if b.len() < 24 {
        bail!("{}: no pcap header", path.display());
    }
    let le = match b[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => bail!("{}: not a pcap file", path.display()),
    };
    let u32_at = |o: usize| {
        let w = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    if u32_at(20) != 1 {
        bail!(
            "{}: linktype {} is not Ethernet",
            path.display(),
            u32_at(20)
        );
    }
    // Microseconds in the record header, or nanoseconds with the 0xa1b23c4d magic.
    let sub_ms = if matches!(b[..4], [0x4d, 0x3c, 0xb2, 0xa1] | [0xa1, 0xb2, 0x3c, 0x4d]) {
        1e-6
    } else {
        1e-3
    };
    let mut out = Vec::new();
    let mut o = 24;
    while o + 16 <= b.len() {
        let at = f64::from(u32_at(o)) * 1000.0 + f64::from(u32_at(o + 4)) * sub_ms;
        let caplen = u32_at(o + 8) as usize;
        let frame = b.get(o + 16..o + 16 + caplen).context("truncated record")?;
        o += 16 + caplen;
        // Ethernet, IPv4 (any IHL), UDP.
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
            continue;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let ip = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
        let udp = 14 + ihl;
        let Some(h) = frame.get(udp..udp + 8) else {
            continue;
        };
        let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
        let Some(data) = frame.get(udp + 8..udp + len.max(8)) else {
            continue;
        };
        out.push((
            at,
            SocketAddr::V4(SocketAddrV4::new(ip(26), u16::from_be_bytes([h[0], h[1]]))),
            SocketAddr::V4(SocketAddrV4::new(ip(30), u16::from_be_bytes([h[2], h[3]]))),
            data.to_vec(),
        ));
    }
    Ok(out)
}
