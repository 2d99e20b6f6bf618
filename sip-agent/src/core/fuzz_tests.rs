//! Bounded, deterministic fuzzing of the two parsers that take network input: the SIP message
//! parser (through `B2bua::handle_datagram`, which must answer a malformed request with a 400
//! carrying the parser's reason) and the fork request JSON parser (whose errors must be the
//! reference's JSON error strings). Normal `#[test]`s: a fixed seed, a fixed number of inputs,
//! no panics allowed anywhere on the way.

use crate::core::b2bua::Output;
use crate::core::fork_request::{ForkError, ForkRequest};
use crate::core::message::{self, ParseError};
use crate::core::testing::*;

/// xorshift64*: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Fragments that steer mutations towards the parsers' edge cases.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b":",
    b" ",
    b";",
    b"SIP/2.0",
    b"Content-Length: 99999",
    b"Content-Length: -1",
    b"CSeq: 1 FOO",
    b"Via: ",
    b"\xff\xfe",
    b"\0",
    b"{",
    b"}",
    b"\"",
    b"[",
    b",",
    b"null",
    b"1e400",
    b"\"type\"",
    b"\"START\"",
    b"\"url\":\"ws://",
    b"\\u0000",
];

/// One random edit: flip, insert, delete a range, duplicate a range, truncate, splice a token.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(16)) + 1;
                input.drain(i..i + n);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(64)) + 1;
                let piece = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, piece);
            }
            4 if len > 0 => input.truncate(rng.below(len)),
            _ => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let i = rng.below(len + 1);
                input.splice(i..i, t.iter().copied());
            }
        }
    }
}

fn sip_seeds() -> Vec<Vec<u8>> {
    let inv = invite(
        "2000",
        "z9hG4bKf1",
        &sdp("198.51.100.7", 16384, "0 8 101", ""),
    );
    let info = format!(
        "INFO sip:xdpfork@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKi1\r\n\
         From: <sip:1000@198.51.100.7>;tag=a\r\nTo: <sip:2000@192.0.2.1>;tag=b\r\nCall-ID: fz1\r\n\
         CSeq: 2 INFO\r\nMax-Forwards: 70\r\nContent-Type: application/x-cisco-record+json\r\n\
         Content-Length: {}\r\n\r\n{}",
        START.len(),
        START
    );
    let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKr1\r\n\
                From: <sip:1000@192.0.2.1>;tag=a\r\nTo: <sip:2000@203.0.113.20>;tag=b\r\n\
                Call-ID: fz2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    vec![
        message::encode(&inv),
        info.into_bytes(),
        resp.as_bytes().to_vec(),
        b"OPTIONS sip:x@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKo\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@192.0.2.1>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".to_vec(),
    ]
}

const START: &str = r#"{"type":"START","call-guid":"6F0C9A2E","url":"ws://10.64.86.215:8000/x?y=1","port":8000,"auth-token":"tok","codec":"g711ulaw","metadata":{"a":[1,2,{"b":null}]}}"#;

#[test]
fn sip_parser_never_panics_and_malformed_requests_get_400_with_reason() {
    let seeds = sip_seeds();
    let mut rng = Rng(0x5eed_51b0_0000_0001);
    let mut h = Harness::new();
    let (mut malformed_answered, mut parsed) = (0usize, 0usize);
    for i in 0..20_000 {
        let mut input = seeds[i % seeds.len()].clone();
        mutate(&mut rng, &mut input);
        let verdict = message::parse(&input);
        h.b2bua.handle_datagram(h.now, udp(A_ADDR), &input);
        let sent: Vec<Output> = std::iter::from_fn(|| h.b2bua.poll_output()).collect();
        match verdict {
            Ok(_) => parsed += 1,
            Err(ParseError::Malformed {
                reason,
                head: Some(_),
            }) => {
                assert!(!reason.is_empty());
                // A 400 goes back to the sender with the parser's reason as the phrase
                // (RFC 3261 §21.4.1), or nothing when even the head cannot be echoed.
                let answers: Vec<&[u8]> = sent
                    .iter()
                    .filter_map(|o| match o {
                        Output::Transmit(t) => Some(t.payload.as_slice()),
                        Output::Session(_) => None,
                    })
                    .collect();
                if let Some(a) = answers.first() {
                    let line = format!("SIP/2.0 400 {reason}\r\n");
                    assert!(
                        a.starts_with(line.as_bytes()),
                        "input {:?}\nanswer {:?}",
                        String::from_utf8_lossy(&input),
                        String::from_utf8_lossy(a)
                    );
                    malformed_answered += 1;
                }
            }
            Err(_) => {}
        }
    }
    // The mutations must have exercised both paths, or the test proves nothing.
    assert!(parsed > 1_000, "parsed {parsed}");
    assert!(malformed_answered > 100, "400s {malformed_answered}");
}

#[test]
fn fork_json_parser_never_panics_and_reports_json_error_strings() {
    let seeds = [
        START,
        r#"{"type":"STOP","call-guid":"6F0C9A2E"}"#,
        r#"{"type":"UPDATE","call-guid":"6F0C9A2E","metadata":{"agent-id":"2077"}}"#,
    ];
    let allowed = [
        ForkError::JsonParseFailure,
        ForkError::UnexpectedFormat,
        ForkError::MandatoryParameterMissing,
        ForkError::MethodNotSupported,
    ];
    let mut rng = Rng(0x5eed_0f0f_2026_1123);
    let (mut ok, mut errors) = (0usize, [0usize; 4]);
    for i in 0..20_000 {
        let mut input = seeds[i % seeds.len()].as_bytes().to_vec();
        mutate(&mut rng, &mut input);
        match ForkRequest::parse(&input) {
            Ok(_) => ok += 1,
            Err(e) => {
                let k = allowed.iter().position(|a| *a == e).unwrap_or_else(|| {
                    panic!(
                        "{e:?} for {:?}: not a request parsing error",
                        String::from_utf8_lossy(&input)
                    )
                });
                assert!(ForkError::from_wire(e.as_str()) == Some(e));
                errors[k] += 1;
            }
        }
    }
    assert!(ok > 100, "ok {ok}");
    assert!(errors.iter().all(|n| *n > 0), "errors by kind {errors:?}");
}

/// The input the `sip_message` fuzz target crashed on (docs/fuzzing.md), byte for byte: an
/// INVITE whose SDP body starts with an empty line and has no `v=` line at all. It used to
/// parse, and its re-serialisation (empty line dropped) did not.
#[test]
fn fuzz_crash_body_starting_with_empty_line_needs_version() {
    const CRASH: &[u8] = b"INVITE sip:6777@192.0.2.10 SIP/2.0\r\nv: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK776asdhds, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKold\r\nMax-Forwards: 70\r\nt: <sip:6777@192.0.2.10>\r\nf: \"Alice\" <sip:alice@1\nrd51.100.7>;tag=1928301774\r\ni: a84b4c76e66710@pc33\r\nCSeq: 314159 INVITE\r\nm: <si6710@pc33\r\nCSeq: 314159 INVITE\r\nm: <sip:alice@198.51.100.7>\r\nSubject: a folded\r\n header line\r\nc: application/sdp\r\nrd+jent-Length: 283\r\n\r\n\na=rtpmap:8 PCMA/8000\r\na=rt101 0-16\r\na=ptime:2)\r\na=sendrecv\r\n";
    let msg = message::parse(CRASH).expect("the INVITE itself parses");
    let body = match msg {
        rsip::SipMessage::Request(r) => r.body,
        other => panic!("not a request: {other:?}"),
    };
    assert_eq!(
        crate::core::sdp::Sdp::parse(&body),
        Err(crate::core::sdp::SdpError::NoVersion)
    );
    // A leading empty line before `v=0` is still tolerated, and round-trips.
    let lead = "\r\nv=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let sdp = crate::core::sdp::Sdp::parse(lead.as_bytes()).expect("leading empty line");
    assert_eq!(crate::core::sdp::Sdp::parse(&sdp.to_bytes()), Ok(sdp));
}
