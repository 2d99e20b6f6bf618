//! ng-agent SIGKILLed and restarted in the middle of a call through Kamailio: the kernel relays
//! on meanwhile, the restarted ng-agent takes the call back from its journal
//! (docs/ng-agent.md "Restart journal"), and the BYE's `delete` removes every flow.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use anyhow::Result;
use ng_agent::core::bencode::Value;

use crate::ng_support::*;
use crate::sip_support::PCMA;

const PROBE_SDP: &str = "v=0\r\no=p 1 1 IN IP4 10.77.1.2\r\ns=-\r\nc=IN IP4 10.77.1.2\r\nt=0 0\r\n\
m=audio 41000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";

#[test]
fn restarted_ng_agent_deletes_the_flows_of_a_call_it_had() -> Result<()> {
    let mut ng = NgTest::start()?;
    ng.t.callee("uas_proxy_answer.xml", &PCMA, &["-rtp_echo"])?;
    let mut keys = PCMA.to_vec();
    keys.push(("fork", "no"));
    let caller =
        ng.t.caller_spawn_to(PROXY, "uac_proxy_call.xml", &keys, &["-d", "5000"])?;
    let before = ng.wait_relayed("10.77.1.1:30000", 20)?;

    ng.kill_and_restart_ng_agent()?;
    let log = ng.t.s.topo.log("ng-agent");
    assert!(log.contains("restored=1"), "{log}");
    assert_eq!(
        ng.calls()?.len(),
        1,
        "the restarted ng-agent knows the call"
    );
    // The kernel kept relaying; the counters go on from where they were.
    let after = ng.wait_relayed(
        "10.77.1.1:30000",
        before["packets"].as_u64().unwrap_or(0) + 20,
    )?;
    assert_eq!(after["path"], "kernel", "{after}");
    // A new call gets none of the restored call's ports (30000 and 30002).
    let probe = ng.ng(Value::dict([
        ("command", Value::str("offer")),
        ("call-id", Value::str("probe")),
        ("from-tag", Value::str("p")),
        ("sdp", Value::str(PROBE_SDP)),
    ]))?;
    let sdp = probe.get("sdp").and_then(Value::as_str).unwrap_or_default();
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|m| m.split(' ').next())
        .unwrap_or_default();
    assert!(
        !port.is_empty() && port != "30000" && port != "30002",
        "probe offer: {probe:?}"
    );
    ng.ng(Value::dict([
        ("command", Value::str("delete")),
        ("call-id", Value::str("probe")),
        ("from-tag", Value::str("p")),
        ("delete-delay", Value::Int(0)),
    ]))?;

    let run = ng.t.caller_wait(caller)?;
    assert!(run.ok, "caller failed\n{}", ng.diag(Some(&run)));
    // BYE → rtpengine_delete("delete-delay=0") → the restarted ng-agent removes the flows.
    ng.t.wait_callee_done()?;
    ng.t.wait_no_flows()?;
    assert!(ng.calls()?.is_empty(), "{}", ng.diag(Some(&run)));
    Ok(())
}
