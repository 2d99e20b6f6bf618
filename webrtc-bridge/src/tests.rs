//! The bridge against [`crate::testing::Peer`], a browser stand-in built from the libraries
//! directly (none of the bridge's state machine runs on that side).

use std::time::{Duration, Instant};

use turn_core::stun::Class;
use turn_core::RustCrypto;

use super::*;
use crate::testing::{peer as new_peer, peer_with, Peer, PeerProfile};

const BROWSER: &str = "192.0.2.10:50000";

/// Tests step time from an arbitrary origin; only differences are compared, so this is the
/// one clock read.
#[allow(clippy::disallowed_methods)]
fn origin() -> Instant {
    Instant::now()
}

fn rtp(seq: u16, payload: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0x11, 0x22, 0x33, 0x44];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p.extend(std::iter::repeat_n(payload, 160));
    p
}

fn rtcp_rr() -> Vec<u8> {
    // Receiver report, no blocks (RFC 3550 §6.4.2).
    vec![0x80, 201, 0, 1, 0x11, 0x22, 0x33, 0x44]
}

struct Run {
    bridge: Bridge,
    peer: Peer,
    now: Instant,
    to_plain: Vec<(PlainKind, Vec<u8>)>,
    to_browser: Vec<Vec<u8>>,
    events: Vec<Event>,
}

impl Run {
    fn new(peer_is_client: bool) -> Run {
        let cert = Certificate::generate().unwrap();
        let ice = IceCredentials {
            ufrag: "brdg".into(),
            pwd: "bridgepasswordbridgepwd1".into(),
        };
        Run {
            bridge: Bridge::new(cert, ice, EarlyAudio::default()),
            peer: new_peer(BROWSER.parse().unwrap(), peer_is_client),
            now: origin(),
            to_plain: Vec::new(),
            to_browser: Vec::new(),
            events: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.bridge.poll_output() {
            match o {
                Output::ToBrowser { to, bytes } => {
                    assert_eq!(to, self.peer.addr);
                    self.to_browser.push(bytes)
                }
                Output::ToPlain { kind, bytes } => self.to_plain.push((kind, bytes)),
                Output::Event(e) => self.events.push(e),
            }
        }
    }

    fn browser_sends(&mut self, bytes: &[u8]) {
        let from = self.peer.addr;
        self.bridge.handle_browser(self.now, from, bytes);
        self.drain();
    }

    fn ice(&mut self) {
        let check = self.peer.check(self.bridge.ice_credentials(), true);
        self.browser_sends(&check);
        let resp = self.to_browser.pop().expect("a binding response");
        let msg = turn_core::stun::Message::parse(&resp).unwrap();
        assert_eq!(msg.class(), Class::Success);
        assert_eq!(msg.xor_mapped_address().unwrap(), Some(self.peer.addr));
        assert_eq!(
            msg.check_integrity(self.bridge.ice_credentials().pwd.as_bytes(), &RustCrypto),
            turn_core::stun::IntegrityCheck::Valid(turn_core::stun::IntegrityKind::Sha1)
        );
    }

    /// Exchanges DTLS flights until both sides are quiet (bounded).
    fn handshake(&mut self) {
        let mut to_peer = self.take_dtls();
        for _ in 0..20 {
            let from_peer = self.peer.step(std::mem::take(&mut to_peer));
            if from_peer.is_empty() && self.peer.connected {
                break;
            }
            for d in from_peer {
                self.browser_sends(&d);
            }
            to_peer = self.take_dtls();
            self.now += Duration::from_millis(1);
        }
    }

    /// Takes the DTLS datagrams sent to the browser, leaving media in `to_browser`.
    fn take_dtls(&mut self) -> Vec<Vec<u8>> {
        let (dtls, rest) = std::mem::take(&mut self.to_browser)
            .into_iter()
            .partition(|d| (20..=63).contains(&d[0]));
        self.to_browser = rest;
        dtls
    }

    /// Passive answer to the peer's offer, ICE check, handshake: SRTP flows both ways.
    fn connect(&mut self) {
        let fp = self.peer.fingerprint.clone();
        self.remote(&fp, Some(Role::Server));
        self.ice();
        self.handshake();
        assert_eq!(self.events.last(), Some(&Event::Connected));
    }

    fn remote(&mut self, fingerprint: &str, role: Option<Role>) {
        let fp = Fingerprint::parse(fingerprint).unwrap();
        self.bridge.set_remote(
            self.now,
            RemoteParams {
                fingerprint: fp,
                role,
            },
        );
        self.drain();
    }
}

#[test]
fn browser_offers_bridge_answers_passive_audio_both_ways() {
    let mut r = Run::new(true);
    let fp = r.peer.fingerprint.clone();
    r.remote(&fp, Some(Role::Server));
    r.ice();
    assert_eq!(r.events, vec![Event::Selected(r.peer.addr)]);
    r.handshake();
    assert!(r.peer.connected);
    assert_eq!(r.events.last(), Some(&Event::Connected));

    // Browser to phone: RTP and muxed RTCP come apart.
    let sealed = r.peer.seal(&rtp(1, 0x55));
    r.browser_sends(&sealed);
    let rr = r.peer.seal(&rtcp_rr());
    r.browser_sends(&rr);
    assert_eq!(
        r.to_plain,
        vec![(PlainKind::Rtp, rtp(1, 0x55)), (PlainKind::Rtcp, rtcp_rr())]
    );

    // Phone to browser.
    r.bridge.handle_plain(r.now, PlainKind::Rtp, &rtp(9, 0x66));
    r.drain();
    let out = r.to_browser.pop().unwrap();
    assert_ne!(out, rtp(9, 0x66));
    assert_eq!(r.peer.open(&out), rtp(9, 0x66));
    let c = r.bridge.counters();
    assert_eq!((c.to_plain, c.to_browser, c.stun_answered), (2, 1, 1));
}

#[test]
fn aead_aes_128_gcm_is_negotiated_when_the_browser_offers_it() {
    let mut r = Run::new(true);
    r.peer = peer_with(BROWSER.parse().unwrap(), true, PeerProfile::Gcm);
    let fp = r.peer.fingerprint.clone();
    r.remote(&fp, Some(Role::Server));
    r.ice();
    r.handshake();
    assert_eq!(r.events.last(), Some(&Event::Connected));
    let sealed = r.peer.seal(&rtp(3, 7));
    r.browser_sends(&sealed);
    assert_eq!(r.to_plain, vec![(PlainKind::Rtp, rtp(3, 7))]);
    r.bridge.handle_plain(r.now, PlainKind::Rtp, &rtp(4, 8));
    r.drain();
    let out = r.to_browser.pop().unwrap();
    assert_eq!(r.peer.open(&out), rtp(4, 8));
}

#[test]
fn early_audio_is_held_until_srtp_then_sent_in_order() {
    let mut r = Run::new(true);
    let fp = r.peer.fingerprint.clone();
    r.remote(&fp, Some(Role::Server));
    for seq in 0..3 {
        r.bridge.handle_plain(r.now, PlainKind::Rtp, &rtp(seq, 1));
    }
    r.bridge.handle_plain(r.now, PlainKind::Rtcp, &rtcp_rr());
    r.drain();
    assert!(r.to_browser.is_empty());
    r.ice();
    r.handshake();
    let got: Vec<Vec<u8>> = std::mem::take(&mut r.to_browser)
        .into_iter()
        .filter(|d| d[0] >= 128)
        .map(|d| r.peer.open(&d))
        .collect();
    assert_eq!(got, vec![rtp(0, 1), rtp(1, 1), rtp(2, 1)]);
    let c = r.bridge.counters();
    assert_eq!((c.early_sent, c.early_dropped), (3, 1));
}

#[test]
fn early_audio_older_than_the_limit_is_dropped_and_counted() {
    let mut r = Run::new(true);
    let fp = r.peer.fingerprint.clone();
    r.remote(&fp, Some(Role::Server));
    r.bridge.handle_plain(r.now, PlainKind::Rtp, &rtp(0, 1));
    let deadline = r.bridge.poll_timeout().unwrap();
    assert_eq!(r.bridge.timeout_reason(), Some("early audio expiry"));
    r.now = deadline;
    r.bridge.handle_timeout(r.now);
    assert_eq!(r.bridge.counters().early_dropped, 1);
    assert_eq!(r.bridge.poll_timeout(), None);
}

#[test]
fn actpass_offer_sends_no_client_hello_before_the_answer_then_connects_as_client() {
    let mut r = Run::new(false);
    r.ice();
    r.drain();
    assert!(r.to_browser.is_empty(), "nothing before the answer");
    let fp = r.peer.fingerprint.clone();
    // The browser answered a=setup:passive: we are the client.
    r.remote(&fp, Some(Role::Client));
    assert!(
        !r.to_browser.is_empty(),
        "ClientHello once the answer is in"
    );
    r.handshake();
    assert_eq!(r.events.last(), Some(&Event::Connected));
    let sealed = r.peer.seal(&rtp(5, 2));
    r.browser_sends(&sealed);
    assert_eq!(r.to_plain, vec![(PlainKind::Rtp, rtp(5, 2))]);
}

#[test]
fn a_client_hello_before_the_answer_makes_us_the_server_and_waits_for_the_fingerprint() {
    let mut r = Run::new(true);
    r.ice();
    r.handshake();
    assert!(r.peer.connected);
    assert!(
        !r.events.contains(&Event::Connected),
        "not before a=fingerprint"
    );
    let sealed = r.peer.seal(&rtp(1, 3));
    r.browser_sends(&sealed);
    assert!(r.to_plain.is_empty());
    assert_eq!(r.bridge.counters().not_ready, 1);
    let fp = r.peer.fingerprint.clone();
    r.remote(&fp, None);
    assert_eq!(r.events.last(), Some(&Event::Connected));
    let sealed = r.peer.seal(&rtp(2, 3));
    r.browser_sends(&sealed);
    assert_eq!(r.to_plain, vec![(PlainKind::Rtp, rtp(2, 3))]);
}

#[test]
fn a_certificate_that_does_not_match_the_fingerprint_carries_no_media() {
    let mut r = Run::new(true);
    let other = new_peer(BROWSER.parse().unwrap(), true).fingerprint;
    r.remote(&other, Some(Role::Server));
    r.ice();
    r.handshake();
    assert!(matches!(r.events.last(), Some(Event::Failed(_))));
    assert_eq!(r.bridge.counters().fingerprint_mismatch, 1);
    let sealed = r.peer.seal(&rtp(1, 4));
    r.browser_sends(&sealed);
    r.bridge.handle_plain(r.now, PlainKind::Rtp, &rtp(1, 4));
    r.drain();
    assert!(r.to_plain.is_empty());
    assert!(r.to_browser.is_empty());
    assert_eq!(r.bridge.counters().not_ready, 1);
}

#[test]
fn tampered_and_replayed_srtp_are_dropped_and_counted() {
    let mut r = Run::new(true);
    r.connect();
    let good = r.peer.seal(&rtp(1, 5));
    let mut bad = r.peer.seal(&rtp(2, 5));
    bad[20] ^= 0x01;
    r.browser_sends(&bad);
    r.browser_sends(&good);
    r.browser_sends(&good);
    let rr = r.peer.seal(&rtcp_rr());
    let mut bad_rr = rr.clone();
    let last = bad_rr.len() - 1;
    bad_rr[last] ^= 0x01;
    r.browser_sends(&bad_rr);
    r.browser_sends(&rr);
    r.browser_sends(&rr);
    let c = r.bridge.counters();
    assert_eq!(
        r.to_plain,
        vec![(PlainKind::Rtp, rtp(1, 5)), (PlainKind::Rtcp, rtcp_rr())],
        "{c:?}"
    );
    assert_eq!((c.srtp_auth_failed, c.srtp_replayed), (2, 2));
}

/// `rtp` under another SSRC.
fn rtp_ssrc(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = rtp(seq, 9);
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

/// Forged packets from the browser's checked address (an attacker spoofing it) with a far index,
/// sent before any genuine one of their SSRC: they fail authentication and move no replay
/// window, so the genuine packets that follow all pass (RFC 3711 §3.3.2). With rtc-srtp's own
/// windows the forged index seeded them and every genuine packet counted as a replay.
#[test]
fn forged_packets_with_a_far_index_do_not_move_the_replay_window() {
    for profile in [PeerProfile::Sha1_80, PeerProfile::Gcm] {
        let mut r = Run::new(true);
        r.peer = peer_with(BROWSER.parse().unwrap(), true, profile);
        r.connect();

        // SRTCP: a genuine RR re-stamped with index 1,000,000 (E flag kept): its tag no longer
        // verifies.
        let mut forged = r.peer.seal(&rtcp_rr());
        let tag = if profile == PeerProfile::Sha1_80 {
            10
        } else {
            0
        };
        let at = forged.len() - tag - 4;
        forged[at..at + 4].copy_from_slice(&(1_000_000u32 | 1 << 31).to_be_bytes());
        r.browser_sends(&forged);
        // SRTP: sequence 30000 of a new SSRC with a junk tag.
        let mut forged = r.peer.seal(&rtp_ssrc(30000, 0x0BAD_F00D));
        let last = forged.len() - 1;
        forged[last] ^= 0x01;
        r.browser_sends(&forged);

        let mut want = Vec::new();
        for seq in 1..=5u16 {
            let rr = r.peer.seal(&rtcp_rr());
            r.browser_sends(&rr);
            want.push((PlainKind::Rtcp, rtcp_rr()));
            let pkt = r.peer.seal(&rtp_ssrc(seq, 0x0BAD_F00D));
            r.browser_sends(&pkt);
            want.push((PlainKind::Rtp, rtp_ssrc(seq, 0x0BAD_F00D)));
        }
        let c = r.bridge.counters();
        assert_eq!(r.to_plain, want, "{profile:?} {c:?}");
        assert_eq!((c.srtp_auth_failed, c.srtp_replayed), (2, 0), "{profile:?}");
    }
}

/// An SRTCP packet with the E flag clear and a junk tag: rtc-srtp 0.21 returns such a packet
/// under AES-CM without checking its tag; the bridge refuses it as unauthenticated.
#[test]
fn unencrypted_srtcp_is_refused_as_unauthenticated() {
    let mut r = Run::new(true);
    r.connect();
    let mut forged = rtcp_rr();
    forged.extend_from_slice(&7u32.to_be_bytes());
    forged.extend_from_slice(&[0xAA; 10]);
    r.browser_sends(&forged);
    let rr = r.peer.seal(&rtcp_rr());
    r.browser_sends(&rr);
    assert_eq!(r.to_plain, vec![(PlainKind::Rtcp, rtcp_rr())]);
    assert_eq!(r.bridge.counters().srtp_auth_failed, 1);
}

/// Replays are judged on the 48-bit SRTP index: a packet from before a sequence number wrap is
/// a replay after it, one just past the wrap is new.
#[test]
fn srtp_replays_are_judged_across_a_sequence_number_wrap() {
    let mut r = Run::new(true);
    r.connect();
    let mut sent = Vec::new();
    for seq in (65530..=65535).chain(0..5) {
        let pkt = r.peer.seal(&rtp(seq, 1));
        r.browser_sends(&pkt);
        sent.push(pkt);
    }
    assert_eq!(r.to_plain.len(), 11);
    r.browser_sends(&sent[2]);
    r.browser_sends(&sent[8]);
    let c = r.bridge.counters();
    assert_eq!((c.to_plain, c.srtp_replayed), (11, 2));
}

#[test]
fn checks_with_a_wrong_password_and_media_from_unchecked_addresses_are_dropped() {
    let mut r = Run::new(true);
    let wrong = IceCredentials {
        ufrag: "brdg".into(),
        pwd: "not-the-password-at-all!".into(),
    };
    let check = r.peer.check(&wrong, true);
    r.browser_sends(&check);
    assert!(r.to_browser.is_empty());
    let hello = r.peer.step(Vec::new());
    for d in hello {
        r.browser_sends(&d);
    }
    assert!(r.to_browser.is_empty());
    let c = r.bridge.counters();
    assert_eq!((c.stun_rejected, c.unverified_source), (1, 1));
    assert!(r.events.is_empty());
}

#[test]
fn fingerprints_parse_and_print_as_sdp_carries_them() {
    let cert = Certificate::generate().unwrap();
    let text = cert.fingerprint().to_string();
    assert!(text.starts_with("sha-256 "));
    assert_eq!(Fingerprint::parse(&text).unwrap(), *cert.fingerprint());
    assert!(Fingerprint::parse("sha-1 AB:CD").is_err());
    assert!(Fingerprint::parse("sha-256 AB:CD").is_err());
    assert!(Fingerprint::parse("sha-256 zz").is_err());
}
