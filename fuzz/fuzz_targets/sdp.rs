//! SDP bodies (sip-agent/src/core/sdp.rs): parse, read the audio stream, anchor it on this host,
//! and check that the SDP we would send parses back to what we meant.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xdpfork_fuzz::exercise_sdp(data));
