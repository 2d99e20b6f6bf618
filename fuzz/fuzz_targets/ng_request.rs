//! ng datagrams (ng-agent/src/core): the whole engine as a proxy drives it. The input is cut at
//! each `\n` into datagrams, fed in order from one source with the clock stepping a second
//! between them; every control operation is answered, alternately accepted and refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xdpfork_fuzz::exercise_ng(data));
