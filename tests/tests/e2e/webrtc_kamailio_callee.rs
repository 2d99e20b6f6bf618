//! A phone calls a registered browser through Kamailio, with the reference document's flags for
//! that branch (`UDP/TLS/RTP/SAVPF ICE=force` on the offer, `RTP/AVP replace-session-connection
//! replace-origin ICE=remove` on the answer): ng-agent offers the browser ICE-lite and
//! `a=setup:actpass`, sends no ClientHello before the answer, and the browser's known audio
//! comes back to it through the phone's echo, sample-exact.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::path::Path;

use anyhow::Result;
use xdpfork_tests::Host;

use crate::sip_support::sipp_file;
use crate::webrtc_support::*;

#[test]
fn phone_calls_browser_audio_both_ways() -> Result<()> {
    let mut w = WebrtcTest::start()?;
    let source = source_wav(&w.dir(), 3)?;
    w.spawn_browser("answer", &source, "no")?;
    w.wait_browser_log("registered")?;
    let dir = w.dir();
    let msg = dir.join("phone.msg").to_string_lossy().into_owned();
    let sf = sipp_file("uac_proxy_wait_bye.xml");
    w.ng.t.s.topo.spawn(
        "phone",
        Host::Callee,
        Path::new("/usr/bin/sipp"),
        &[
            "10.77.2.1:5060",
            "-sf",
            &sf,
            "-s",
            "browser",
            "-i",
            "10.77.2.2",
            "-p",
            "5060",
            "-mi",
            "10.77.2.2",
            "-mp",
            "40000",
            "-m",
            "1",
            "-nostdin",
            "-rtp_echo",
            "-key",
            "pt",
            "0",
            "-key",
            "codec",
            "PCMU",
            "-trace_msg",
            "-message_file",
            &msg,
            "-timeout",
            "40s",
            "-timeout_error",
        ],
    )?;
    let report = w.browser_report()?;
    assert_eq!(report["ok"], true, "{report:#}\n{}", w.diag());
    let status =
        w.ng.t
            .s
            .topo
            .wait_exit("phone", std::time::Duration::from_secs(15))?;
    assert!(status.success(), "phone sipp failed:\n{}", w.diag());

    let offer = report["offer"].as_str().unwrap_or_default();
    for present in [
        "UDP/TLS/RTP/SAVPF 0",
        "a=ice-lite",
        "a=setup:actpass",
        "a=rtcp-mux",
        "a=fingerprint:sha-256 ",
    ] {
        assert!(offer.contains(present), "{present} missing:\n{offer}");
    }
    let phone_log = std::fs::read_to_string(&msg)?;
    assert!(phone_log.contains("RTP/AVP 0"), "{phone_log}");
    assert!(!phone_log.contains("a=fingerprint"), "{phone_log}");

    let heard = dir.join("browser-heard.wav");
    xdpfork_tests::dialects::compare(8000, &heard, &source)?;
    w.ng.t.wait_no_flows()?;
    Ok(())
}
