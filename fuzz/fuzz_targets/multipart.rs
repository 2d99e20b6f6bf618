//! multipart/mixed bodies (sip-agent/src/core/multipart.rs), e.g. a re-INVITE carrying SDP and
//! the fork request JSON. Input: the Content-Type value on the first line, the body after it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (ct, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    // Header values reach the splitter as text; rsip reads headers as UTF-8.
    let Ok(ct) = std::str::from_utf8(ct) else {
        return;
    };
    let ct = ct.strip_suffix('\r').unwrap_or(ct);
    xdpfork_fuzz::sip_body(ct, body);
});
