//! The reference document's WebRTC flag sets, refused through the real proxy when ng-agent has
//! no `[webrtc]` section (and `ICE=force-relay` always: no TURN of its own): Kamailio's `rtpengine_offer` gets `result: error` with an
//! `error-reason` naming the flag (Kamailio logs it, and so does ng-agent), the script answers
//! 503, and nothing is left behind: no call in ng-agent, no flow in fork-agent.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use anyhow::Result;

use crate::ng_support::*;

#[test]
fn webrtc_flags_are_refused_naming_the_flag() -> Result<()> {
    let ng = NgTest::start()?;
    for (flags, proto, named) in [
        // Caller on a phone, callee a browser (the reference's third branch).
        (
            "UDP/TLS/RTP/SAVPF ICE=force",
            "RTP/AVP",
            "unsupported: ICE=force",
        ),
        // Browser to browser (its first branch).
        (
            "ICE=force-relay DTLS=passive",
            "UDP/TLS/RTP/SAVPF",
            "unsupported: ICE=force-relay",
        ),
        // The reference's phone flags, but the offer itself is SRTP.
        (
            "RTP/AVP replace-origin ICE=remove",
            "RTP/SAVP",
            "unsupported: SDP media protocol RTP/SAVP",
        ),
    ] {
        let keys = [
            ("pt", "8"),
            ("codec", "PCMA"),
            ("proto", proto),
            ("ng_flags", flags),
        ];
        let caller =
            ng.t.caller_spawn_to(PROXY, "uac_proxy_refused.xml", &keys, &[])?;
        let run = ng.t.caller_wait(caller)?;
        assert!(run.ok, "{flags}: no 503\n{}", ng.diag(Some(&run)));
        let log = ng.t.s.topo.log("kamailio");
        assert!(
            log.contains(&format!("proxy replied with error: {named}")),
            "{flags}: Kamailio did not get the reason naming it\n{}",
            ng.diag(Some(&run))
        );
    }
    // ng-agent's own log names the refusal too (the first one; the rest are rate-limited).
    let own = ng.t.s.topo.log("ng-agent");
    assert!(
        own.contains("ng request refused") && own.contains("unsupported: ICE=force"),
        "{own}"
    );
    assert!(ng.calls()?.is_empty());
    assert!(ng.t.s.flows()?.as_array().is_some_and(Vec::is_empty));
    Ok(())
}
