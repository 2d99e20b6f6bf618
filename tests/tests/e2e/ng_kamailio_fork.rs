//! A fork started through the ng extension: the proxy script calls Kamailio's
//! `start_forwarding("destination=ws://... profile=xdpfork")` on the ACK (docs/ng-protocol.md
//! "start forwarding"), ng-agent turns it into `fork_start`, and both parties' audio reaches the
//! reference speech server under the call's Call-ID; the BYE's `delete` stops the fork.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use anyhow::Result;

use crate::ng_support::*;
use crate::sip_support::{stream_of, PCMA};

#[test]
fn start_forwarding_reaches_the_speech_server() -> Result<()> {
    let mut ng = NgTest::start()?;
    ng.t.callee("uas_proxy_answer.xml", &PCMA, &["-rtp_echo"])?;
    let mut keys = PCMA.to_vec();
    keys.push(("fork", "yes"));
    let caller =
        ng.t.caller_spawn_to(PROXY, "uac_proxy_call.xml", &keys, &["-d", "4000"])?;
    ng.wait_relayed("10.77.1.1:30000", 50)?;
    let run = ng.t.caller_wait(caller)?;
    assert!(run.ok, "caller failed\n{}", ng.diag(Some(&run)));
    ng.t.wait_callee_done()?;
    ng.t.wait_no_flows()?;

    let summary = ng.t.s.speech_summary()?;
    let call_id = run
        .messages
        .lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(!call_id.is_empty(), "{}", run.messages);
    for channel in ["caller", "callee"] {
        let s = stream_of(&summary, channel);
        assert_eq!(s["call_guid"], call_id.as_str(), "{s}");
        assert_eq!(s["codec"], "PCMA", "{s}");
        assert!(
            s["frames"].as_u64() > Some(50),
            "{s}\n{}",
            ng.diag(Some(&run))
        );
        assert_eq!(
            s["stopped"], "call_end",
            "the BYE's delete stopped the fork: {s}"
        );
    }
    Ok(())
}
