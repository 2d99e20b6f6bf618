//! SIP messages as sip-agent receives them: one UDP datagram, and the same bytes as a TCP/TLS
//! stream cut into messages by the RFC 3261 §18.3 framer. Each message goes through
//! `message::parse` and then what the B2BUA does next: read the transaction keys, build a
//! response (or the raw 400/501 for what rsip cannot represent), and read the body (SDP, fork
//! JSON, multipart).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rsip::SipMessage;
use sip_agent::core::framing::{Frame, StreamFramer};
use sip_agent::core::message::{self, ParseError};
use sip_agent::core::multipart;

fn one_message(bytes: &[u8]) {
    match message::parse(bytes) {
        Ok(msg) => {
            let keys = message::keys(&msg);
            let _ = message::encode(&msg);
            let (headers, body) = match &msg {
                SipMessage::Request(r) => {
                    // parse checks a request's Via, CSeq, From and To, so the keys the
                    // transaction and dialog layers need are there (responses are only
                    // checked for Via and CSeq; the transaction layer drops the rest).
                    assert!(keys.is_some(), "keys of a parsed request");
                    let resp = message::response_to(r, 200, None, Some("f00d"));
                    let _ = message::encode(&SipMessage::Response(resp));
                    (&r.headers, &r.body)
                }
                SipMessage::Response(r) => (&r.headers, &r.body),
            };
            let ct = message::header_value(headers, "Content-Type").unwrap_or_default();
            let _ = multipart::boundary(&ct);
            xdpfork_fuzz::sip_body(&ct, body);
        }
        Err(ParseError::UnknownMethod { head, .. }) => {
            let _ = message::raw_response(&head, 501, "Not Implemented", &[("Allow", "INVITE")]);
        }
        Err(ParseError::Malformed {
            reason,
            head: Some(head),
        }) => {
            let _ = message::raw_response(&head, 400, reason, &[]);
        }
        Err(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    one_message(data);
    // As a stream, delivered in two reads split where the first byte says.
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let mut framer = StreamFramer::new();
    for chunk in [&data[..cut], &data[cut..]] {
        framer.push(chunk);
        while let Ok(Some(frame)) = framer.next_message() {
            if let Frame::Message(m) = frame {
                one_message(&m);
            }
        }
    }
});
