//! A phone → phone call through Kamailio with ng-agent in rtpengine's place (the reference
//! document's `rtpengine_offer`/`answer`/`delete` with `replace-origin
//! replace-session-connection ICE=remove RTP/AVP`): the SDPs Kamailio forwarded carry
//! ng-agent's addresses, fork-agent relays both directions in the kernel, and the BYE's
//! `delete` removes every flow and the call.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use anyhow::Result;

use crate::ng_support::*;
use crate::sip_support::PCMA;

#[test]
fn kamailio_call_is_anchored_and_relayed_in_the_kernel() -> Result<()> {
    let mut ng = NgTest::start()?;
    ng.t.callee("uas_proxy_answer.xml", &PCMA, &["-rtp_echo"])?;
    let mut keys = PCMA.to_vec();
    keys.push(("fork", "no"));
    let caller =
        ng.t.caller_spawn_to(PROXY, "uac_proxy_call.xml", &keys, &["-d", "4000"])?;

    // While the call is up: both directions relayed by the kernel, the call known to ng-agent.
    let to_callee = ng.wait_relayed("10.77.1.1:30000", 50)?;
    let to_caller = ng.wait_relayed("10.77.2.1:30002", 50)?;
    for f in [&to_callee, &to_caller] {
        let path = f["path"].as_str().unwrap_or_default();
        assert!(path.starts_with("kernel"), "{f}");
    }
    assert_eq!(to_callee["dst"], "10.77.2.2:40000", "{to_callee}");
    assert_eq!(to_caller["dst"], "10.77.1.2:40000", "{to_caller}");
    let calls = ng.calls()?;
    assert_eq!(calls.len(), 1, "{calls:?}");

    let run = ng.t.caller_wait(caller)?;
    assert!(run.ok, "caller failed\n{}", ng.diag(Some(&run)));

    // What Kamailio forwarded: the offer to the callee points at ng-agent's callee side, the
    // answer to the caller at its caller side; the origin is ng-agent's too, no ICE.
    let callee_log = std::fs::read_to_string(ng.t.dir.join("callee.msg"))?;
    let offer = sdp_after(&callee_log, "INVITE sip:");
    assert!(
        offer.contains("c=IN IP4 10.77.2.1"),
        "offer to the callee:\n{offer}"
    );
    assert!(offer.contains("m=audio 30002 RTP/AVP 8 101"), "{offer}");
    assert!(
        offer.contains("o=caller 53655765 2353687637 IN IP4 10.77.2.1"),
        "{offer}"
    );
    assert!(
        !offer.contains("10.77.1.2"),
        "the caller's address leaked:\n{offer}"
    );
    let answer = sdp_after(&run.messages, "SIP/2.0 200 OK");
    assert!(
        answer.contains("c=IN IP4 10.77.1.1"),
        "answer to the caller:\n{answer}"
    );
    assert!(answer.contains("m=audio 30000 RTP/AVP 8 101"), "{answer}");
    assert!(
        !answer.contains("10.77.2.2"),
        "the callee's address leaked:\n{answer}"
    );

    // BYE → rtpengine_delete("delete-delay=0"): flows and call gone.
    ng.t.wait_callee_done()?;
    ng.t.wait_no_flows()?;
    assert!(ng.calls()?.is_empty(), "{}", ng.diag(Some(&run)));
    Ok(())
}
