//! fork-agent's control API request line (control-api/src/request.rs `parse_request`),
//! as the control socket hands it over: one line, UTF-8 checked first. A request that parses is
//! serialised as sip-agent would send it and must parse again.
#![no_main]

use control_api::{parse_request, Request, API_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let line = line.strip_suffix('\n').unwrap_or(line);
    if let Ok(op) = parse_request(line) {
        let _ = op.is_stream_service();
        let req = Request { v: API_VERSION, op };
        let text = serde_json::to_string(&req).expect("a request serialises");
        if let Err(e) = parse_request(&text) {
            panic!("re-serialised request {text} does not parse: {e}");
        }
    }
});
