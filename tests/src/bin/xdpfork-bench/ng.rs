//! rtpengine's NG control protocol, just enough to anchor one call: bencoded dictionaries over
//! UDP, each request prefixed by a unique cookie and a space, the reply echoing the cookie
//! (rtpengine's docs/ng_control_protocol.md). `offer` with the caller's SDP allocates the
//! callee-facing port; `answer` with the callee's SDP allocates the caller-facing one.
//!
//! Input: a UDP socket in the namespace of rtpengine's `--listen-ng`, the two endpoints.
//! Output: the address the caller must send to ([`anchor_call`]). Call order: start rtpengine,
//! then [`anchor_call`] once per call; [`delete_call`] tears one down. The messages themselves
//! ([`offer`], [`answer`], [`delete`]) are shared with `bench ng` (ngctl.rs), which pipelines
//! them against both rtpengine and ng-agent.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{bail, Context, Result};
// The ng codec is ng-agent's (strict, bounded), the same one its server side decodes with.
use ng_agent::core::bencode::{self, Value};

fn dict(items: &[(&str, Value)]) -> Value {
    Value::dict(items.iter().cloned())
}

/// One request/reply exchange; fails on a reply other than `result: ok`.
fn request(sock: &UdpSocket, ng: SocketAddr, cookie: &str, msg: &Value) -> Result<Value> {
    let mut out = format!("{cookie} ").into_bytes();
    msg.encode(&mut out);
    sock.set_read_timeout(Some(Duration::from_secs(3)))?;
    sock.send_to(&out, ng)?;
    let mut buf = vec![0u8; 65536];
    let (n, _) = sock
        .recv_from(&mut buf)
        .context("no reply from rtpengine's NG port within 3 s")?;
    let reply = &buf[..n];
    let body = reply
        .strip_prefix(format!("{cookie} ").as_bytes())
        .context("NG reply does not echo the cookie")?;
    let v = bencode::decode(body, bencode::Limits::default())?;
    if v.get("result").and_then(Value::as_str) != Some("ok") {
        bail!("rtpengine refused: {}", String::from_utf8_lossy(body));
    }
    Ok(v)
}

/// An audio-only PCMU offer/answer body (RFC 4566) for `endpoint`.
pub fn sdp(endpoint: SocketAddr) -> String {
    let ip = endpoint.ip();
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        endpoint.port()
    )
}

/// The `c=` address and `m=audio` port of an SDP body.
pub fn media_address(sdp: &str) -> Result<SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for line in sdp.lines() {
        if let Some(c) = line.strip_prefix("c=IN IP4 ") {
            ip = Some(c.trim().parse::<std::net::IpAddr>()?);
        }
        if let Some(m) = line.strip_prefix("m=audio ") {
            port = m
                .split_whitespace()
                .next()
                .map(str::parse::<u16>)
                .transpose()?;
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) => Ok(SocketAddr::new(ip, port)),
        _ => bail!("SDP without c= or m=audio: {sdp}"),
    }
}

/// `offer` of call `call_id` from `caller`, direction [`a`, `b`] (caller side on logical
/// interface `a`, callee side on `b`).
pub fn offer(call_id: &str, caller: SocketAddr) -> Value {
    dict(&[
        ("command", Value::str("offer")),
        ("call-id", Value::str(call_id)),
        ("from-tag", Value::str("caller")),
        ("sdp", Value::str(&sdp(caller))),
        (
            "direction",
            Value::List(vec![Value::str("a"), Value::str("b")]),
        ),
        ("ICE", Value::str("remove")),
    ])
}

/// `answer` of call `call_id` from `callee`.
pub fn answer(call_id: &str, callee: SocketAddr) -> Value {
    dict(&[
        ("command", Value::str("answer")),
        ("call-id", Value::str(call_id)),
        ("from-tag", Value::str("caller")),
        ("to-tag", Value::str("callee")),
        ("sdp", Value::str(&sdp(callee))),
        ("ICE", Value::str("remove")),
    ])
}

/// `delete` of call `call_id`.
pub fn delete(call_id: &str) -> Value {
    dict(&[
        ("command", Value::str("delete")),
        ("call-id", Value::str(call_id)),
        ("from-tag", Value::str("caller")),
    ])
}

/// Anchor one call in rtpengine: [`offer`] from `caller`, then [`answer`] from `callee`. Returns
/// (where the caller sends, where the callee sends).
pub fn anchor_call(
    sock: &UdpSocket,
    ng: SocketAddr,
    call_id: &str,
    caller: SocketAddr,
    callee: SocketAddr,
) -> Result<(SocketAddr, SocketAddr)> {
    let offer = request(
        sock,
        ng,
        &format!("{call_id}-offer"),
        &offer(call_id, caller),
    )?;
    let to_callee = offer
        .get("sdp")
        .and_then(Value::as_str)
        .context("offer reply without sdp")?;
    let callee_sends_to = media_address(to_callee)?;
    let answer = request(
        sock,
        ng,
        &format!("{call_id}-answer"),
        &answer(call_id, callee),
    )?;
    let to_caller = answer
        .get("sdp")
        .and_then(Value::as_str)
        .context("answer reply without sdp")?;
    Ok((media_address(to_caller)?, callee_sends_to))
}

/// Tear call `call_id` down (`delete`): rtpengine closes its sockets (at once with
/// `--delete-delay=0`) and frees its ports.
pub fn delete_call(sock: &UdpSocket, ng: SocketAddr, call_id: &str) -> Result<()> {
    request(sock, ng, &format!("{call_id}-delete"), &delete(call_id))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_address_of_rtpengine_reply() {
        let s = "v=0\r\no=- 1 1 IN IP4 10.77.1.2\r\ns=-\r\nc=IN IP4 10.77.2.1\r\nt=0 0\r\nm=audio 33020 RTP/AVP 0\r\na=rtcp:33021\r\n";
        assert_eq!(
            media_address(s).expect("parses"),
            "10.77.2.1:33020".parse().expect("addr")
        );
        assert!(media_address("v=0\r\n").is_err());
    }
}
