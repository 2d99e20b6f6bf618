//! Shared pieces of the fuzz targets (fuzz_targets/*.rs, one per parser; docs/fuzzing.md).
//!
//! - [`sip_body`]: what sip-agent does with a request body (SDP, fork JSON, multipart of both),
//!   shared by the `sip_message` and `multipart` targets.
//! - [`exercise_sdp`]: parse an SDP body, then everything the B2BUA does with one.
//! - [`exercise_ng`]: ng datagrams through ng-agent's engine.
//! - [`Records`] / [`record`]: the tag-length-value framing the stateful targets (`turn_server`,
//!   `speech_validator`) cut their input into, and that examples/make_seeds.rs writes seeds in.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr};

use sip_agent::core::fork_request::{self, ForkRequest};
use sip_agent::core::multipart;
use sip_agent::core::sdp::{Direction, Sdp};

const SDP: &str = "application/sdp";

/// A request body as sip-agent's B2BUA reads it (`body_parts` in sip-agent/src/core/b2bua/mod.rs):
/// by media type of `content_type`, one SDP, one fork request, or a multipart carrying either.
pub fn sip_body(content_type: &str, body: &[u8]) {
    if body.is_empty() {
        return;
    }
    let mt = multipart::media_type(content_type);
    if mt == SDP {
        exercise_sdp(body);
    } else if mt == fork_request::CONTENT_TYPE {
        exercise_fork(body);
    } else if mt.starts_with("multipart/") {
        let Ok(parts) = multipart::split(content_type, body) else {
            return;
        };
        for p in &parts {
            let _ = p.header("Content-Disposition");
            match p.media_type().as_str() {
                SDP => exercise_sdp(&p.body),
                fork_request::CONTENT_TYPE => exercise_fork(&p.body),
                _ => {}
            }
        }
        // What we would send on: a body rebuilt from the parts. A boundary that the parts
        // happen to contain is refused (BadBoundary), never a panic.
        let _ = multipart::build("xdpfork-boundary-1", &parts);
    }
}

/// A fork request body: the strict parser, then the best-effort GUID used in error reports.
pub fn exercise_fork(body: &[u8]) {
    match ForkRequest::parse(body) {
        Ok(req) => {
            let _ = (req.kind().as_str(), req.call_guid());
        }
        Err(e) => {
            let _ = e.as_str();
            let _ = fork_request::guid_hint(body);
        }
    }
}

/// An SDP body: parse, read the audio stream, rewrite it as the B2BUA does when anchoring media,
/// and check that what we would send parses again to the same thing.
pub fn exercise_sdp(body: &[u8]) {
    let Ok(mut sdp) = Sdp::parse(body) else {
        return;
    };
    let again = Sdp::parse(&sdp.to_bytes()).expect("an SDP we parsed serialises to one we parse");
    assert_eq!(again, sdp, "SDP round trip changed the description");
    for i in 0..sdp.media_count() {
        let _ = sdp.media_type(i);
    }
    let _ = sdp.has_fax();
    if let Some(audio) = sdp.audio() {
        let _ = (audio.primary_codec(), audio.telephone_event_pt());
        let _ = (audio.is_hold(), audio.is_srtp());
    }
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    sdp.anchor_audio(ip, 30_000);
    sdp.set_origin("xdpfork", 1, 2, ip);
    sdp.set_audio_direction(Direction::SendOnly);
    let out = sdp.to_bytes();
    Sdp::parse(&out).expect("an anchored SDP parses");
}

/// Tag-length-value records: `tag: u8`, `len: u16` big-endian, `len` bytes of payload. A short
/// last record takes what is left, so every input means something.
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    /// Records of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (&tag, rest) = self.rest.split_first()?;
        let len = match rest {
            [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
            _ => 0,
        };
        let rest = rest.get(2..).unwrap_or_default();
        let (payload, tail) = rest.split_at(len.min(rest.len()));
        self.rest = tail;
        Some((tag, payload))
    }
}

/// One record in the [`Records`] format (for seed files).
pub fn record(tag: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("record payload fits u16");
    let mut out = Vec::with_capacity(3 + payload.len());
    out.push(tag);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// ng datagrams through ng-agent's engine (fuzz_targets/ng_request.rs): `data` cut at `\n`, one
/// datagram per piece, one second apart; control operations answered alternately ok and refused.
/// Every reply must carry the request's cookie and a bencoded dictionary with a `result`.
pub fn exercise_ng(data: &[u8]) {
    use ng_agent::core::bencode::{decode, Limits, Value};
    use ng_agent::core::engine::{Engine, EngineConfig, Interface, Output};
    use ng_agent::core::webrtc::BridgeOp;
    use std::time::{Duration, Instant};

    let cfg = EngineConfig {
        interfaces: vec![
            Interface {
                name: "caller".into(),
                address: IpAddr::V4(Ipv4Addr::new(10, 77, 1, 1)),
            },
            Interface {
                name: "callee".into(),
                address: IpAddr::V4(Ipv4Addr::new(10, 77, 2, 1)),
            },
        ],
        ports: (30000, 30019),
        speech_server: "asr".into(),
        delete_delay: Duration::from_secs(3),
        max_calls: 4,
        max_message_bytes: 8192,
        reply_cache_ttl: Duration::from_secs(5),
        reply_cache_max: 16,
        rate_per_sec: 1000,
        rate_burst: 1000,
        bencode: Limits::default(),
        // Browser legs on, so SAVPF offers and answers take the bridging branches too.
        webrtc: Some(ng_agent::core::webrtc::WebrtcConfig {
            fingerprint: webrtc_bridge::Fingerprint::parse(&format!(
                "sha-256 {}",
                ["AB"; 32].join(":")
            ))
            .expect("a valid fingerprint"),
            kernel_address: IpAddr::V4(Ipv4Addr::new(10, 77, 9, 1)),
            gateway: IpAddr::V4(Ipv4Addr::new(10, 77, 9, 2)),
        }),
        seed: 7,
    };
    let mut engine = Engine::new(cfg).expect("a valid engine config");
    // The fuzzer's clock: one real reading, then fixed steps.
    #[allow(clippy::disallowed_methods)]
    let mut now = Instant::now();
    let from = "127.0.0.1:5060".parse().expect("address");
    let mut answer_ok = true;
    for dgram in data.split(|b| *b == b'\n') {
        now += Duration::from_secs(1);
        engine.handle_timeout(now);
        engine.handle_datagram(now, 1_700_000_000, from, dgram);
        let mut pending = Vec::new();
        loop {
            while let Some(out) = engine.poll_output() {
                match out {
                    Output::Reply { bytes, .. } => {
                        let sp = bytes
                            .iter()
                            .position(|b| *b == b' ')
                            .expect("reply has a cookie");
                        assert!(dgram.starts_with(&bytes[..=sp]), "reply cookie differs");
                        let v = decode(&bytes[sp + 1..], Limits::default()).expect("reply decodes");
                        assert!(
                            matches!(v.get("result"), Some(Value::Bytes(_))),
                            "no result"
                        );
                    }
                    Output::Control { id, .. } => pending.push((id, false)),
                    // The shell binds a browser leg's sockets and answers; the offer waits.
                    Output::Bridge(BridgeOp::Open { id, .. }) => pending.push((id, true)),
                    // The shell's sockets and tasks: nothing comes back to the engine.
                    Output::Dropped { .. } | Output::Bridge(_) => {}
                }
            }
            let Some((id, bridge)) = pending.pop() else {
                break;
            };
            let result = if answer_ok {
                Ok(())
            } else {
                Err("refused".to_string())
            };
            answer_ok = !answer_ok;
            if bridge {
                engine.handle_bridge_opened(now, id, result);
            } else {
                engine.handle_control_result(now, id, result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_truncate() {
        let mut data = record(1, b"abc");
        data.extend(record(7, b""));
        data.extend([9, 0, 10, b'x']);
        let got: Vec<_> = Records::new(&data).collect();
        assert_eq!(got, vec![(1, &b"abc"[..]), (7, &b""[..]), (9, &b"x"[..])]);
        assert_eq!(Records::new(&[5]).collect::<Vec<_>>(), vec![(5, &b""[..])]);
    }

    /// The ng seeds run clean through the harness (a stable build checks the checks).
    #[test]
    fn ng_seeds_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/ng_request");
        for seed in std::fs::read_dir(dir).expect("ng seeds") {
            exercise_ng(&std::fs::read(seed.expect("entry").path()).expect("seed"));
        }
    }
}
