//! The speech-protocol validator (speech-proto/src/validator.rs) fed a connection's frames in
//! order, as the reference speech-server does. Input: [`xdpfork_fuzz::Records`]; `tag % 3`:
//! 0 a text frame (skipped unless UTF-8, which WebSocket guarantees for text), 1 a binary frame,
//! 2 the application refusing a stream (`kill_stream`, id from the first four payload bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use speech_proto::{decode_audio, Validator, Violation};
use xdpfork_fuzz::Records;

fn violation(v: &Violation) {
    let _ = (v.code(), v.stream_id(), v.is_fatal());
    let _ = v.to_error().to_json();
}

fuzz_target!(|data: &[u8]| {
    let mut validator = Validator::new();
    let mut errors = 0u64;
    for (tag, payload) in Records::new(data) {
        match tag % 3 {
            0 => {
                let Ok(text) = std::str::from_utf8(payload) else {
                    continue;
                };
                match validator.handle_text(text) {
                    Ok(_) => {}
                    Err(v) => {
                        errors += 1;
                        violation(&v);
                    }
                }
            }
            1 => {
                let _ = decode_audio(payload);
                match validator.handle_binary(payload) {
                    Ok(ev) => {
                        assert!(!ev.payload.is_empty(), "audio event without payload");
                        let _: i32 = ev
                            .payload
                            .iter()
                            .map(|b| i32::from(ev.codec.decode(*b)))
                            .sum();
                    }
                    Err(v) => {
                        errors += 1;
                        violation(&v);
                    }
                }
            }
            _ => {
                let mut id = [0u8; 4];
                for (d, s) in id.iter_mut().zip(payload) {
                    *d = *s;
                }
                validator.kill_stream(u32::from_be_bytes(id));
            }
        }
    }
    assert_eq!(
        validator.violations(),
        errors,
        "every violation is counted once"
    );
    for id in validator.stream_ids().collect::<Vec<_>>() {
        assert!(validator.stream(id).is_some());
    }
});
