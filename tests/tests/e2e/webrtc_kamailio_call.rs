//! A browser calls a phone through Kamailio, with the reference document's flags for that
//! branch (`RTP/AVP replace-session-connection replace-origin ICE=remove` on the offer,
//! `UDP/TLS/RTP/SAVPF ICE=force` on the answer) and ng-agent bridging: aiortc (ICE, DTLS-SRTP,
//! rtcp-mux) on one side, sipp (plain RTP, `-rtp_echo`) on the other. The browser's known audio
//! goes to the phone decrypted, through the kernel relay, comes back echoed and encrypted, and
//! the browser hears exactly what it played; the fork of the browser's leg (started on the ACK)
//! carries the decrypted audio, equal to what was played.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use anyhow::Result;

use crate::webrtc_support::*;

#[test]
fn browser_calls_phone_audio_both_ways_and_forked() -> Result<()> {
    let mut w = WebrtcTest::start()?;
    let source = source_wav(&w.dir(), 3)?;
    w.ng.t
        .callee("uas_proxy_answer.xml", &PCMU, &["-rtp_echo"])?;
    w.spawn_browser("call", &source, "yes")?;
    // While the call is up: the gateway's flow (browser audio, decrypted) and the phone's flow
    // are ordinary kernel flows.
    let from_gateway = w.ng.wait_relayed(&format!("{KERNEL}:30004"), 50)?;
    assert_eq!(from_gateway["dst"], "10.77.2.2:40000", "{from_gateway}");
    let to_gateway = w.ng.wait_relayed("10.77.2.1:30002", 50)?;
    assert_eq!(
        to_gateway["dst"],
        format!("{GATEWAY}:30000"),
        "{to_gateway}"
    );
    let report = w.browser_report()?;
    assert_eq!(report["ok"], true, "{report:#}\n{}", w.diag());

    // What each side was told: the phone plain RTP at ng-agent's callee side without browser
    // attributes, the browser an ICE-lite, passive DTLS answer with rtcp-mux.
    let callee_log = std::fs::read_to_string(w.dir().join("callee.msg"))?;
    assert!(
        callee_log.contains("m=audio 30002 RTP/AVP 0"),
        "{callee_log}"
    );
    for absent in [
        "a=fingerprint",
        "a=ice-",
        "a=rtcp-mux",
        "a=setup",
        "a=candidate",
    ] {
        assert!(
            !callee_log.contains(absent),
            "{absent} reached the phone:\n{callee_log}"
        );
    }
    let answer = report["answer"].as_str().unwrap_or_default();
    for present in [
        "m=audio 30000 UDP/TLS/RTP/SAVPF 0",
        "c=IN IP4 10.77.1.1",
        "a=ice-lite",
        "a=setup:passive",
        "a=rtcp-mux",
        "a=fingerprint:sha-256 ",
        "a=candidate:1 1 udp 2130706431 10.77.1.1 30000 typ host",
    ] {
        assert!(answer.contains(present), "{present} missing:\n{answer}");
    }

    // Both ways: the echo the browser heard is what it played (sample-exact through PCMU).
    let heard = w.dir().join("browser-heard.wav");
    xdpfork_tests::dialects::compare(8000, &heard, &source)?;

    w.ng.t.wait_callee_done()?;
    w.ng.t.wait_no_flows()?;
    w.assert_bridged_cleanly()?;

    // The fork of the browser's leg: decrypted audio, what was played.
    w.assert_fork_matches(&source)?;
    Ok(())
}
