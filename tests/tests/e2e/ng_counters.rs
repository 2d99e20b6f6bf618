//! Kernel counters in ng replies: the test plays the proxy (offer, answer, query, delete on
//! ng-agent's socket) for a call between its own media sockets, sends known audio both ways
//! through fork-agent's kernel relay, and finds exactly those packets and bytes in `query`'s
//! per-stream `stats` and `totals`, and in the `delete` reply (docs/ng-protocol.md "Counters").

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::time::Duration;

use anyhow::{bail, Context, Result};
use ng_agent::core::bencode::Value;
use xdpfork_tests::{send_rtp_in_background, spawn_receiver, Host};

use crate::ng_support::*;

const CALLER: &str = "10.77.1.2:41000";
const CALLEE: &str = "10.77.2.2:41002";
/// RTP header (12) plus the 160-byte payload send_rtp_in_background sends.
const PACKET: i64 = 172;
const TO_CALLEE: u16 = 60;
const TO_CALLER: u16 = 40;

fn sdp(addr: &str) -> String {
    let (ip, port) = addr.split_once(':').unwrap_or_default();
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n"
    )
}

/// `ip:port` a rewritten SDP points at.
fn anchored(reply: &Value) -> Result<String> {
    let sdp = reply
        .get("sdp")
        .and_then(Value::as_str)
        .with_context(|| format!("no sdp in {reply:?}"))?;
    let ip = sdp.lines().find_map(|l| l.strip_prefix("c=IN IP4 "));
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|m| m.split(' ').next());
    match (ip, port) {
        (Some(ip), Some(port)) => Ok(format!("{}:{port}", ip.trim())),
        _ => bail!("no address in {sdp}"),
    }
}

fn triple(v: Option<&Value>) -> [i64; 3] {
    let n = |k| match v.and_then(|s| s.get(k)) {
        Some(Value::Int(n)) => *n,
        _ => -1,
    };
    [n("packets"), n("bytes"), n("errors")]
}

/// The `stats` of `tag`'s RTP stream in a `query`/`delete` reply.
fn stream_stats(reply: &Value, tag: &str) -> [i64; 3] {
    let stream = match reply
        .get("tags")
        .and_then(|t| t.get(tag))
        .and_then(|t| t.get("medias"))
    {
        Some(Value::List(m)) => match m.first().and_then(|m| m.get("streams")) {
            Some(Value::List(s)) => s.first().cloned(),
            _ => None,
        },
        _ => None,
    };
    triple(stream.as_ref().and_then(|s| s.get("stats")))
}

fn rtp_totals(reply: &Value) -> [i64; 3] {
    triple(reply.get("totals").and_then(|t| t.get("RTP")))
}

#[test]
fn query_and_delete_replies_count_the_packets_relayed() -> Result<()> {
    let ng = NgTest::start()?;
    let topo = &ng.t.s.topo;
    let caller = topo.udp_socket(Host::Caller, CALLER.parse()?)?;
    let callee = topo.udp_socket(Host::Callee, CALLEE.parse()?)?;
    let key = |k: &'static str, v: &str| (k, Value::str(v));
    let directions = (
        "direction",
        Value::List(vec![Value::str("caller"), Value::str("callee")]),
    );
    let offer = ng.ng(Value::dict([
        key("command", "offer"),
        key("call-id", "counted"),
        key("from-tag", "a"),
        key("sdp", &sdp(CALLER)),
        directions,
    ]))?;
    // The offer the callee gets points it at side b's local, the answer the caller at side a's.
    let b_local = anchored(&offer)?;
    let answer = ng.ng(Value::dict([
        key("command", "answer"),
        key("call-id", "counted"),
        key("from-tag", "a"),
        key("to-tag", "b"),
        key("sdp", &sdp(CALLEE)),
    ]))?;
    let a_local = anchored(&answer)?;

    // Known audio both ways, every packet through the kernel.
    let gap = Duration::from_millis(5);
    let to_callee = spawn_receiver(
        callee.try_clone()?,
        TO_CALLEE.into(),
        Duration::from_secs(3),
    );
    send_rtp_in_background(caller.try_clone()?, a_local.parse()?, TO_CALLEE, 8, 1, gap)
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let got = to_callee
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    assert_eq!(got.len(), usize::from(TO_CALLEE), "{}", ng.diag(None));
    let to_caller = spawn_receiver(caller, TO_CALLER.into(), Duration::from_secs(3));
    send_rtp_in_background(callee, b_local.parse()?, TO_CALLER, 8, 2, gap)
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let got = to_caller
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    assert_eq!(got.len(), usize::from(TO_CALLER), "{}", ng.diag(None));

    let (n_a, n_b) = (i64::from(TO_CALLEE), i64::from(TO_CALLER));
    let query = ng.ng(Value::dict([
        key("command", "query"),
        key("call-id", "counted"),
    ]))?;
    // Side a's stream counts what arrived from the caller, side b's what came from the callee.
    assert_eq!(
        stream_stats(&query, "a"),
        [n_a, n_a * PACKET, 0],
        "{query:?}"
    );
    assert_eq!(
        stream_stats(&query, "b"),
        [n_b, n_b * PACKET, 0],
        "{query:?}"
    );
    assert_eq!(
        rtp_totals(&query),
        [n_a + n_b, (n_a + n_b) * PACKET, 0],
        "{query:?}"
    );
    assert!(query.get("warning").is_none(), "{query:?}");

    let delete = ng.ng(Value::dict([
        key("command", "delete"),
        key("call-id", "counted"),
        key("from-tag", "a"),
        ("delete-delay", Value::Int(0)),
    ]))?;
    assert_eq!(
        rtp_totals(&delete),
        [n_a + n_b, (n_a + n_b) * PACKET, 0],
        "the final counters come with the delete: {delete:?}"
    );
    ng.t.wait_no_flows()?;
    Ok(())
}
