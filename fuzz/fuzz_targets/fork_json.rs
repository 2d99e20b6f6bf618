//! The fork request JSON (application/x-cisco-record+json, sip-agent/src/core/fork_request.rs):
//! the strict parser with its reference error strings, and the GUID hint for error reports.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xdpfork_fuzz::exercise_fork(data));
