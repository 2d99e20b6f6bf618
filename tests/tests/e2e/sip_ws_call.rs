//! A full SIP call flow with the caller on SIP over WebSocket (RFC 7118) and the callee on UDP:
//! INVITE/100/180/200/ACK, a fork START by INFO answered 200 with CONNECTING and STARTED status
//! INFOs back over the same WebSocket, then BYE; flows are removed afterwards. The client is a
//! minimal RFC 6455 implementation over a std TcpStream opened in the caller namespace (no media:
//! the WS leg is checked for signalling only). A message over `limits.max_message_bytes` is
//! answered with a Close frame, status 1009 (message too big, RFC 6455 §7.4.1).

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use crate::sip_support::*;
use anyhow::{bail, Context, Result};
use xdpfork_tests::Host;

struct Ws {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Ws {
    fn open(s: TcpStream) -> Result<Ws> {
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut ws = Ws { s, buf: Vec::new() };
        ws.s.write_all(
            b"GET / HTTP/1.1\r\nHost: 10.77.1.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: sip\r\n\r\n",
        )?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let end = loop {
            if let Some(p) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if Instant::now() > deadline {
                bail!("no WebSocket handshake answer");
            }
            ws.fill()?;
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 101") || !head.contains("sec-websocket-protocol: sip") {
            bail!("handshake refused: {head}");
        }
        // RFC 6455 §1.3 example key, so the accept value is known.
        if !head.contains("s3pplmbitxaq9kygzzhzrbk+xoo=") {
            bail!("wrong Sec-WebSocket-Accept: {head}");
        }
        ws.buf.drain(..end);
        Ok(ws)
    }

    fn fill(&mut self) -> Result<()> {
        let mut b = [0u8; 8192];
        match self.s.read(&mut b) {
            Ok(0) => bail!("WebSocket closed by sip-agent"),
            Ok(n) => self.buf.extend_from_slice(&b[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// One masked text frame (clients must mask, RFC 6455 §5.3).
    fn send(&mut self, text: &str) -> Result<()> {
        let p = text.as_bytes();
        let mut f = vec![0x81];
        match p.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = [0x37, 0xfa, 0x21, 0x3d];
        f.extend_from_slice(&key);
        f.extend(p.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.s.write_all(&f)?;
        Ok(())
    }

    /// Next text message, waiting up to `timeout`.
    fn recv(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0f;
                let (len, hdr) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= hdr + len {
                    let payload: Vec<u8> = self.buf.drain(..hdr + len).skip(hdr).collect();
                    match op {
                        1 | 2 => return Ok(String::from_utf8_lossy(&payload).into_owned()),
                        8 => {
                            // RFC 6455 §5.5.1: a 2-byte status code, then a UTF-8 reason.
                            let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]))
                                .into_owned();
                            bail!("WebSocket close from sip-agent: code {code:?} {reason}")
                        }
                        _ => continue, // ping/pong: tungstenite answers pings itself
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no SIP message over WebSocket within {timeout:?}");
            }
            self.fill()?;
        }
    }
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// 200 OK for a request from sip-agent (a status INFO).
fn ok_for(req: &str) -> String {
    let mut r = String::from("SIP/2.0 200 OK\r\n");
    for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
        for l in req.lines().filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(h))
        }) {
            r.push_str(l.trim_end());
            r.push_str("\r\n");
        }
    }
    r.push_str("Content-Length: 0\r\n\r\n");
    r
}

const INVALID: &str = "df7jal23ls0d.invalid";

fn request(
    method: &str,
    ruri: &str,
    to: &str,
    cseq: u32,
    branch: &str,
    body: Option<(&str, &str)>,
) -> String {
    let (ct, b) = body.unwrap_or(("", ""));
    let mut m = format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/WS {INVALID};branch=z9hG4bK{branch}\r\n\
Max-Forwards: 70\r\nFrom: <sip:1000@{INVALID}>;tag=wscaller\r\nTo: {to}\r\n\
Call-ID: ws-call-1@{INVALID}\r\nCSeq: {cseq} {method}\r\n\
Contact: <sip:1000@{INVALID};transport=ws>\r\n"
    );
    if !ct.is_empty() {
        m.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    m.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
    m
}

/// Reads until a response with `cseq` and a final status; answers status INFOs meanwhile and
/// collects their bodies.
fn final_response(ws: &mut Ws, cseq: &str, statuses: &mut Vec<String>) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let m = ws.recv(Duration::from_secs(10))?;
        if m.starts_with("INFO ") {
            if let Some(p) = m.find("\r\n\r\n") {
                statuses.push(m[p + 4..].to_string());
            }
            ws.send(&ok_for(&m))?;
            continue;
        }
        if m.starts_with("SIP/2.0 1") {
            continue;
        }
        if header(&m, "CSeq") == Some(cseq) {
            return Ok(m);
        }
        bail!("unexpected message waiting for {cseq}:\n{m}");
    }
    bail!("no final response for {cseq}")
}

#[test]
fn call_flow_over_websocket() -> Result<()> {
    let mut t = SipTest::start_with(
        r#"udp = ["10.77.1.1:5060", "10.77.2.1:5060"]
ws = ["10.77.1.1:8080"]"#,
        "10.77.2.2:5060:udp",
        "",
    )?;
    t.callee("uas_answer.xml", &PCMA, &[])?;
    let tcp =
        t.s.topo
            .tcp_connect(Host::Caller, "10.77.1.1:8080".parse()?)
            .context("connecting to sip-agent's WS listener")?;
    let mut ws = Ws::open(tcp)?;
    let sdp = "v=0\r\no=ws 1 1 IN IP4 10.77.1.2\r\ns=-\r\nc=IN IP4 10.77.1.2\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";
    let to0 = "<sip:2000@10.77.1.1>";
    ws.send(&request(
        "INVITE",
        "sip:2000@10.77.1.1",
        to0,
        1,
        "inv1",
        Some(("application/sdp", sdp)),
    ))?;
    let mut statuses = Vec::new();
    let ok = final_response(&mut ws, "1 INVITE", &mut statuses)?;
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}\n{}", t.diag(None));
    assert!(
        ok.contains("c=IN IP4 10.77.1.1"),
        "answer not anchored: {ok}"
    );
    let to = header(&ok, "To").context("To")?.to_string();
    let contact = header(&ok, "Contact").context("Contact")?;
    assert!(contact.contains(";transport=ws"), "{contact}");
    let ruri = contact.trim_matches(|c| c == '<' || c == '>').to_string();
    ws.send(&request("ACK", &ruri, &to, 1, "ack1", None))?;
    let body = start_body("0EB5");
    ws.send(&request(
        "INFO",
        &ruri,
        &to,
        2,
        "info2",
        Some(("application/x-cisco-record+json", &body)),
    ))?;
    let ok = final_response(&mut ws, "2 INFO", &mut statuses)?;
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    // Wait (bounded) for STARTED to come back over the WebSocket.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !statuses.iter().any(|s| s.contains("\"STARTED\"")) && Instant::now() < deadline {
        if let Ok(m) = ws.recv(Duration::from_millis(300)) {
            if m.starts_with("INFO ") {
                if let Some(p) = m.find("\r\n\r\n") {
                    statuses.push(m[p + 4..].to_string());
                }
                ws.send(&ok_for(&m))?;
            }
        }
    }
    assert!(
        statuses.iter().any(|s| s.contains("\"STARTED\"")),
        "statuses {statuses:?}\n{}",
        t.diag(None)
    );
    ws.send(&request("BYE", &ruri, &to, 3, "bye3", None))?;
    let ok = final_response(&mut ws, "3 BYE", &mut statuses)?;
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    Ok(())
}

#[test]
fn oversize_message_over_websocket_is_closed_with_1009() -> Result<()> {
    let t = SipTest::start_with(
        r#"udp = ["10.77.1.1:5060", "10.77.2.1:5060"]
ws = ["10.77.1.1:8080"]"#,
        "10.77.2.2:5060:udp",
        "[limits]\nmax_message_bytes = 4096\n",
    )?;
    let tcp =
        t.s.topo
            .tcp_connect(Host::Caller, "10.77.1.1:8080".parse()?)
            .context("connecting to sip-agent's WS listener")?;
    let mut ws = Ws::open(tcp)?;
    let big = format!(
        "OPTIONS sip:2000@10.77.1.1 SIP/2.0\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(8192)
    );
    // sip-agent may close before all of it is read: a failed write is fine.
    let _ = ws.send(&big);
    let e = ws
        .recv(Duration::from_secs(5))
        .expect_err("no SIP answer to an oversize message");
    let e = format!("{e:#}");
    assert!(e.contains("code Some(1009)"), "{e}");
    assert!(e.contains("larger than"), "{e}");
    Ok(())
}
