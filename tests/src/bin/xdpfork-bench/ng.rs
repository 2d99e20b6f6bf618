//! rtpengine's NG control protocol, just enough to anchor one call: bencoded dictionaries over
//! UDP, each request prefixed by a unique cookie and a space, the reply echoing the cookie
//! (rtpengine's docs/ng_control_protocol.md). `offer` with the caller's SDP allocates the
//! callee-facing port; `answer` with the callee's SDP allocates the caller-facing one.
//!
//! Input: a UDP socket in the namespace of rtpengine's `--listen-ng`, the two endpoints.
//! Output: the address the caller must send to ([`anchor_call`]). Call order: start rtpengine,
//! then [`anchor_call`] once per call; [`delete_call`] tears one down.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// A bencode value (BEP 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Value::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Value::List(l) => {
                out.push(b'l');
                l.iter().for_each(|v| v.encode(out));
                out.push(b'e');
            }
            Value::Dict(d) => {
                // Keys in sorted order, as BEP 3 requires (BTreeMap iterates sorted).
                out.push(b'd');
                for (k, v) in d {
                    Value::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decode one value from the front of `b`; the rest is returned.
    pub fn decode(b: &[u8]) -> Result<(Value, &[u8])> {
        match b.first() {
            Some(b'i') => {
                let end = b
                    .iter()
                    .position(|c| *c == b'e')
                    .context("bencode: unterminated int")?;
                let i = std::str::from_utf8(&b[1..end])?.parse()?;
                Ok((Value::Int(i), &b[end + 1..]))
            }
            Some(b'l') => {
                let (mut rest, mut l) = (&b[1..], Vec::new());
                while rest.first() != Some(&b'e') {
                    let (v, r) = Value::decode(rest)?;
                    l.push(v);
                    rest = r;
                }
                Ok((Value::List(l), &rest[1..]))
            }
            Some(b'd') => {
                let (mut rest, mut d) = (&b[1..], BTreeMap::new());
                while rest.first() != Some(&b'e') {
                    let (k, r) = Value::decode(rest)?;
                    let Value::Bytes(k) = k else {
                        bail!("bencode: dictionary key is not a string");
                    };
                    let (v, r) = Value::decode(r)?;
                    d.insert(k, v);
                    rest = r;
                }
                Ok((Value::Dict(d), &rest[1..]))
            }
            Some(c) if c.is_ascii_digit() => {
                let colon = b
                    .iter()
                    .position(|c| *c == b':')
                    .context("bencode: no colon")?;
                let n: usize = std::str::from_utf8(&b[..colon])?.parse()?;
                let body = b
                    .get(colon + 1..colon + 1 + n)
                    .context("bencode: string runs past the end")?;
                Ok((Value::Bytes(body.to_vec()), &b[colon + 1 + n..]))
            }
            _ => bail!("bencode: unexpected byte"),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

fn dict(items: &[(&str, Value)]) -> Value {
    Value::Dict(
        items
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
            .collect(),
    )
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
    let (v, _) = Value::decode(body)?;
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

/// Anchor one call in rtpengine: `offer` from `caller` with direction [`a`, `b`] (caller side on
/// logical interface `a`, callee side on `b`), then `answer` from `callee`. Returns
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
        &dict(&[
            ("command", Value::str("offer")),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str("caller")),
            ("sdp", Value::str(&sdp(caller))),
            (
                "direction",
                Value::List(vec![Value::str("a"), Value::str("b")]),
            ),
            ("ICE", Value::str("remove")),
        ]),
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
        &dict(&[
            ("command", Value::str("answer")),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str("caller")),
            ("to-tag", Value::str("callee")),
            ("sdp", Value::str(&sdp(callee))),
            ("ICE", Value::str("remove")),
        ]),
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
    request(
        sock,
        ng,
        &format!("{call_id}-delete"),
        &dict(&[
            ("command", Value::str("delete")),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str("caller")),
        ]),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencode_round_trip() {
        let v = dict(&[
            ("command", Value::str("offer")),
            (
                "direction",
                Value::List(vec![Value::str("a"), Value::Int(-3)]),
            ),
        ]);
        let mut b = Vec::new();
        v.encode(&mut b);
        assert_eq!(
            b,
            b"d7:command5:offer9:directionl1:ai-3eee".to_vec(),
            "keys sorted"
        );
        assert_eq!(Value::decode(&b).expect("decodes").0, v);
        assert!(Value::decode(b"5:ab").is_err());
        assert!(Value::decode(b"x").is_err());
    }

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
