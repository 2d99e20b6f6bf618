//! Packets a browser leg must never pass on: a DTLS peer whose certificate does not match its
//! `a=fingerprint`, SRTP whose authentication tag is wrong, and SRTP replayed. The browser is
//! webrtc-bridge's test peer (OpenSSL DTLS, rtc-srtp, turn-core STUN; none of the bridge's
//! code) on a socket in the caller namespace, so it can send what aiortc never would; ng-agent
//! is driven over the ng protocol directly and the phone is a socket in the callee namespace.
//! Each bad packet is dropped, counted in `query`'s `webrtc` dictionary, and absent at the phone,
//! while the good ones arrive unchanged. Forged SRTCP from the browser's address (one re-stamped
//! with a far index, one claiming to be unencrypted) comes before the first genuine RTCP: it
//! never reaches the phone and moves no replay window, so every genuine RTCP after it does.
//! The same rig measures early audio: what the phone sends
//! before DTLS is up reaches the browser, from the first packet.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ng_agent::core::bencode::Value;
use webrtc_bridge::testing::{peer, Peer};
use webrtc_bridge::IceCredentials;
use xdpfork_tests::Host;

use crate::webrtc_support::*;

const BROWSER: &str = "10.77.1.2:50000";
const PHONE: &str = "10.77.2.2:40000";
const PHONE_RTCP: &str = "10.77.2.2:40001";

/// A receiver report with no blocks (RFC 3550 §6.4.2) from the browser's SSRC.
const RR: [u8; 8] = [0x80, 201, 0, 1, 0xA1, 0xB2, 0xC3, 0xD4];

fn browser_offer(port: u16, fingerprint: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 10.77.1.2\r\ns=-\r\nt=0 0\r\nm=audio {port} UDP/TLS/RTP/SAVPF 0\r\n\
c=IN IP4 10.77.1.2\r\na=mid:0\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\n\
a=ice-ufrag:brws\r\na=ice-pwd:browserpasswordbrowserpw\r\na=fingerprint:{fingerprint}\r\n\
a=setup:actpass\r\na=sendrecv\r\n"
    )
}

const PHONE_ANSWER: &str = "v=0\r\no=phone 1 1 IN IP4 10.77.2.2\r\ns=-\r\nc=IN IP4 10.77.2.2\r\n\
t=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0xA1, 0xB2, 0xC3, 0xD4];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p.extend((0..160).map(|i| (i as u8) ^ (seq as u8)));
    p
}

/// Offer (browser, `fingerprint`) and answer (phone) for `call_id`; our ICE credentials from
/// the SDP the browser got.
fn set_up(w: &WebrtcTest, call_id: &str, fingerprint: &str) -> Result<IceCredentials> {
    let offer = w.ng.ng(Value::dict([
        ("command", Value::str("offer")),
        ("call-id", Value::str(call_id)),
        ("from-tag", Value::str("browser")),
        ("sdp", Value::str(&browser_offer(50000, fingerprint))),
        ("transport-protocol", Value::str("RTP/AVP")),
        ("ICE", Value::str("remove")),
        (
            "direction",
            Value::List(vec![Value::str("caller"), Value::str("callee")]),
        ),
    ]))?;
    if offer.get("result").and_then(Value::as_str) != Some("ok") {
        bail!("offer refused: {offer:?}");
    }
    let answer = w.ng.ng(Value::dict([
        ("command", Value::str("answer")),
        ("call-id", Value::str(call_id)),
        ("from-tag", Value::str("browser")),
        ("to-tag", Value::str("phone")),
        ("sdp", Value::str(PHONE_ANSWER)),
        ("transport-protocol", Value::str("UDP/TLS/RTP/SAVPF")),
        ("ICE", Value::str("force")),
    ]))?;
    let sdp = match answer.get("sdp") {
        Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => bail!("answer refused: {answer:?}"),
    };
    let attr = |name: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix(&format!("a={name}:")))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("no a={name} in {sdp}"))
    };
    Ok(IceCredentials {
        ufrag: attr("ice-ufrag")?,
        pwd: attr("ice-pwd")?,
    })
}

/// ICE check and DTLS handshake against ng-agent's browser port (bounded).
fn connect(p: &mut Peer, sock: &UdpSocket, to: SocketAddr, ice: &IceCredentials) -> Result<()> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 2048];
    sock.send_to(&p.check(ice, true), to)?;
    let (n, _) = sock.recv_from(&mut buf).context("no STUN answer")?;
    if buf[..n].first() > Some(&3) {
        bail!("not a STUN answer: {:?}", &buf[..n]);
    }
    let mut incoming = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.connected {
        for d in p.step(std::mem::take(&mut incoming)) {
            sock.send_to(&d, to)?;
        }
        if p.connected {
            break;
        }
        if Instant::now() > deadline {
            bail!("DTLS handshake with ng-agent did not finish in 10 s");
        }
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            incoming.push(buf[..n].to_vec());
        }
    }
    Ok(())
}

/// Everything the phone socket receives until it is quiet for 500 ms (bounded).
fn drain(phone: &UdpSocket) -> Result<Vec<Vec<u8>>> {
    phone.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = phone.recv(&mut buf) {
        got.push(buf[..n].to_vec());
        if got.len() > 1000 {
            break;
        }
    }
    Ok(got)
}

/// The browser leg's `webrtc` counter `key`, waiting (bounded) until it reaches `want`.
fn wait_counter(w: &WebrtcTest, call_id: &str, key: &str, want: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let q = w.ng.ng(Value::dict([
            ("command", Value::str("query")),
            ("call-id", Value::str(call_id)),
        ]))?;
        let got = q
            .get("tags")
            .and_then(|t| t.get("browser"))
            .and_then(|l| match l.get("medias") {
                Some(Value::List(m)) => m.first().cloned(),
                _ => None,
            })
            .and_then(|m| m.get("webrtc").and_then(|c| c.get(key)).cloned());
        if got == Some(Value::Int(want)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{key} is {got:?}, not {want}: {q:?}\n{}", w.diag());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rig: ng-agent and friends, the phone's socket, the browser's socket and peer, and the
/// call `call_id` offered and answered (our ICE credentials).
struct Rig {
    w: WebrtcTest,
    phone: UdpSocket,
    sock: UdpSocket,
    p: Peer,
    ice: IceCredentials,
}

fn rig(call_id: &str) -> Result<Rig> {
    let w = WebrtcTest::start()?;
    let topo = &w.ng.t.s.topo;
    let phone = topo.udp_socket(Host::Callee, PHONE.parse()?)?;
    let sock = topo.udp_socket(Host::Caller, BROWSER.parse()?)?;
    let p = peer(BROWSER.parse()?, true);
    let ice = set_up(&w, call_id, &p.fingerprint)?;
    Ok(Rig {
        w,
        phone,
        sock,
        p,
        ice,
    })
}

#[test]
fn tampered_replayed_and_unverified_media_never_reach_the_phone() -> Result<()> {
    // Good fingerprint: 20 good packets, 10 with a flipped payload bit, 10 replays.
    let Rig {
        w,
        phone,
        sock,
        mut p,
        ice,
    } = rig("good")?;
    let topo = &w.ng.t.s.topo;
    let to: SocketAddr = "10.77.1.1:30000".parse()?;
    connect(&mut p, &sock, to, &ice)?;
    let mut sent = Vec::new();
    for seq in 0..20u16 {
        let pkt = p.seal(&rtp(seq));
        sock.send_to(&pkt, to)?;
        sent.push(pkt);
        std::thread::sleep(Duration::from_millis(5));
    }
    for seq in 20..30u16 {
        let mut pkt = p.seal(&rtp(seq));
        pkt[40] ^= 0x01;
        sock.send_to(&pkt, to)?;
    }
    for pkt in &sent[..10] {
        sock.send_to(pkt, to)?;
    }
    let got = drain(&phone)?;
    let want: Vec<Vec<u8>> = (0..20).map(rtp).collect();
    assert_eq!(
        got.len(),
        20,
        "the phone got {} packets\n{}",
        got.len(),
        w.diag()
    );
    assert!(
        got == want,
        "the phone got other packets than the 20 good ones"
    );
    wait_counter(&w, "good", "srtp-auth-failed", 10)?;
    wait_counter(&w, "good", "srtp-replayed", 10)?;
    wait_counter(&w, "good", "to-plain", 20)?;

    // Forged SRTCP first: a genuine RR re-stamped with index 1,000,000 (its HMAC no longer
    // verifies), and an RR with the E flag clear and a junk tag. Then 5 genuine RRs: all reach
    // the phone's RTCP port through the kernel relay.
    let phone_rtcp = topo.udp_socket(Host::Callee, PHONE_RTCP.parse()?)?;
    let mut forged = p.seal(&RR);
    let at = forged.len() - 10 - 4;
    forged[at..at + 4].copy_from_slice(&(1_000_000u32 | 1 << 31).to_be_bytes());
    sock.send_to(&forged, to)?;
    let mut clear = RR.to_vec();
    clear.extend_from_slice(&1u32.to_be_bytes());
    clear.extend_from_slice(&[0xAA; 10]);
    sock.send_to(&clear, to)?;
    for _ in 0..5 {
        sock.send_to(&p.seal(&RR), to)?;
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = drain(&phone_rtcp)?;
    assert_eq!(got, vec![RR.to_vec(); 5], "{}", w.diag());
    wait_counter(&w, "good", "srtp-auth-failed", 12)?;
    wait_counter(&w, "good", "srtp-replayed", 10)?;
    wait_counter(&w, "good", "to-plain", 25)?;

    // A certificate that is not the one the SDP named: handshake done, media refused.
    let sock2 = topo.udp_socket(Host::Caller, "10.77.1.2:50002".parse()?)?;
    let mut liar = peer("10.77.1.2:50002".parse()?, true);
    let other = peer(BROWSER.parse()?, true).fingerprint;
    let ice = set_up(&w, "bad-fingerprint", &other)?;
    let to2: SocketAddr = "10.77.1.1:30006".parse()?;
    connect(&mut liar, &sock2, to2, &ice)?;
    for seq in 0..10u16 {
        sock2.send_to(&liar.seal(&rtp(seq)), to2)?;
    }
    let got = drain(&phone)?;
    assert!(got.is_empty(), "{} packets reached the phone", got.len());
    wait_counter(&w, "bad-fingerprint", "fingerprint-mismatch", 1)?;
    wait_counter(&w, "bad-fingerprint", "not-ready", 10)?;
    wait_counter(&w, "bad-fingerprint", "to-plain", 0)?;

    // The same drops in ng-agent's Prometheus metrics (both calls summed).
    for (sample, want) in [
        (
            "xdpfork_ng_webrtc_dropped_total{reason=\"srtp_auth_failed\"} ",
            12.0,
        ),
        (
            "xdpfork_ng_webrtc_dropped_total{reason=\"srtp_replayed\"} ",
            10.0,
        ),
        (
            "xdpfork_ng_webrtc_handshakes_failed_total{reason=\"fingerprint_mismatch\"} ",
            1.0,
        ),
        (
            "xdpfork_ng_webrtc_packets_total{direction=\"to_plain\"} ",
            25.0,
        ),
    ] {
        assert_eq!(w.metric(sample)?, want, "{sample}");
    }
    Ok(())
}

/// A browser offer whose browser-facing port is already taken (a socket bound on it before the
/// offer) is refused: `result: error` with an `error-reason` naming the address, never `ok` with
/// SDP pointing at a port nobody serves. Nothing stays behind: no call in `list`, its ports
/// free, and once the port is free again the same offer goes through.
#[test]
fn an_offer_whose_browser_port_is_taken_is_refused_naming_it() -> Result<()> {
    let w = WebrtcTest::start()?;
    let topo = &w.ng.t.s.topo;
    // The first browser leg of a fresh ng-agent gets the pool's first port.
    let squatter = topo.udp_socket(Host::Forker, "10.77.1.1:30000".parse()?)?;
    let p = peer(BROWSER.parse()?, true);
    let offer = Value::dict([
        ("command", Value::str("offer")),
        ("call-id", Value::str("taken")),
        ("from-tag", Value::str("browser")),
        ("sdp", Value::str(&browser_offer(50000, &p.fingerprint))),
        ("transport-protocol", Value::str("RTP/AVP")),
        ("ICE", Value::str("remove")),
    ]);
    let r = w.ng.ng(offer)?;
    assert_eq!(
        r.get("result").and_then(Value::as_str),
        Some("error"),
        "{r:?}"
    );
    let reason = r
        .get("error-reason")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let want = "cannot bridge the browser leg on 10.77.1.1:30000: binding the browser-facing \
                socket 10.77.1.1:30000: ";
    assert!(reason.starts_with(want), "{reason}");
    let list = w.ng.ng(Value::dict([("command", Value::str("list"))]))?;
    assert_eq!(list.get("calls"), Some(&Value::List(vec![])), "{list:?}");
    drop(squatter);
    set_up(&w, "after", &p.fingerprint)?;
    let list = w.ng.ng(Value::dict([("command", Value::str("list"))]))?;
    assert_eq!(
        list.get("calls"),
        Some(&Value::List(vec![Value::str("after")])),
        "{list:?}"
    );
    Ok(())
}

/// Early audio: the phone starts sending as soon as the answer is through, 300 ms before the
/// browser's DTLS is up. The bridge holds it and sends it, in order, the moment SRTP keys exist:
/// the browser gets every packet from the first (rtpengine loses the first 20-120 ms).
#[test]
fn early_audio_from_the_phone_reaches_the_browser_from_its_first_packet() -> Result<()> {
    let Rig {
        w,
        phone,
        sock,
        mut p,
        ice,
    } = rig("early")?;
    let to: SocketAddr = "10.77.1.1:30000".parse()?;
    // 15 packets at 20 ms before the browser does anything.
    let anchor: SocketAddr = "10.77.2.1:30002".parse()?;
    for seq in 0..15u16 {
        phone.send_to(&rtp(seq), anchor)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    connect(&mut p, &sock, to, &ice)?;
    for seq in 15..25u16 {
        phone.send_to(&rtp(seq), anchor)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut seqs = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        // DTLS retransmissions or STUN may still come; only SRTP counts.
        if (128..=191).contains(&buf[0]) {
            let plain = p.open(&buf[..n]);
            seqs.push(u16::from_be_bytes([plain[2], plain[3]]));
        }
        if seqs.len() > 100 {
            break;
        }
    }
    assert_eq!(seqs, (0..25).collect::<Vec<u16>>(), "{}", w.diag());
    wait_counter(&w, "early", "early-sent", 15)?;
    wait_counter(&w, "early", "early-dropped", 0)?;
    Ok(())
}
