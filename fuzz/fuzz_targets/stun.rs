//! STUN/TURN messages and ChannelData (turn-core/src/stun.rs), as turn-server reads a datagram
//! or a stream frame: classify, cut a frame, parse, decode every attribute, check integrity.
//! A decoded message re-encoded with `MessageBuilder` must decode to the same attributes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turn_core::stun::{self, ChannelData, Message, MessageBuilder, PacketKind};
use turn_core::{Crypto, RustCrypto};

fn message(bytes: &[u8]) {
    let Ok(msg) = Message::parse(bytes) else {
        return;
    };
    let _ = (msg.class(), msg.method(), msg.transaction_id());
    let _ = (
        msg.has_fingerprint(),
        msg.has_integrity(),
        msg.raw_attributes().len(),
    );
    let _ = (msg.username(), msg.realm(), msg.nonce(), msg.software());
    let _ = (
        msg.lifetime(),
        msg.requested_transport(),
        msg.requested_address_family(),
    );
    let _ = (msg.channel_number(), msg.data(), msg.error_code());
    let _ = (
        msg.xor_peer_addresses(),
        msg.xor_peer_address(),
        msg.xor_mapped_address(),
    );
    let _ = (msg.xor_relayed_address(), msg.mapped_address());
    let _ = msg.unknown_comprehension_required(&[stun::attr::USERNAME, stun::attr::LIFETIME]);
    let key = stun::long_term_key(&RustCrypto, "turnuser", "example.org", "cisco");
    let _ = msg.check_integrity(&key, &RustCrypto);
    let _ = RustCrypto.md5(bytes);

    let decoded: Vec<_> = msg.attributes().filter_map(Result::ok).collect();
    let mut b = MessageBuilder::new(msg.class(), msg.method(), msg.transaction_id());
    for a in &decoded {
        b.add(a)
            .expect("a decoded attribute of a message that fit re-encodes");
    }
    let bytes = b.finish();
    let again = Message::parse(&bytes).expect("a built message parses");
    let redecoded: Vec<_> = again.attributes().filter_map(Result::ok).collect();
    assert_eq!(decoded, redecoded, "attribute decode/encode round trip");
}

fuzz_target!(|data: &[u8]| {
    match stun::classify(data) {
        PacketKind::Stun => message(data),
        PacketKind::ChannelData => {
            if let Ok(cd) = ChannelData::parse(data) {
                let mut out = Vec::new();
                stun::encode_channel_data(cd.channel, cd.data, true, &mut out)
                    .expect("a parsed ChannelData re-encodes");
                assert_eq!(ChannelData::parse(&out).ok(), Some(cd));
            }
        }
        PacketKind::Other => {}
    }
    // The same bytes as a TCP/TLS stream: cut frames until the stream is invalid or short.
    let mut rest = data;
    while let stun::Frame::Stun(n) | stun::Frame::ChannelData(n) = stun::frame_len(rest) {
        let Some(frame) = rest.get(..n) else { break };
        match stun::classify(frame) {
            PacketKind::Stun => message(frame),
            _ => {
                let _ = ChannelData::parse(frame);
            }
        }
        rest = &rest[n..];
    }
});
