//! A SIP request over TCP larger than `limits.max_message_bytes` gets `413 Request Entity Too
//! Large` (RFC 3261 §21.4.11) with the request's Via, From, To, Call-ID and CSeq, then the
//! connection is closed; whether the size shows in Content-Length or in a header block that
//! never ends. sip-agent's RSS stays bounded meanwhile.
#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use crate::limits_support::*;
use crate::sip_support::*;
use anyhow::Result;
use xdpfork_tests::Host;

fn answer(mut c: TcpStream, send: Vec<u8>) -> Result<String> {
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = c.try_clone()?;
    // The agent may close before everything is sent: stop at the first failed write.
    let writer = std::thread::spawn(move || {
        for chunk in send.chunks(16 * 1024) {
            if w.write_all(chunk).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    // Until the agent closes (the 413 comes first).
    let _ = c.read_to_end(&mut out);
    let _ = writer.join();
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn oversize_request_gets_413_and_close() -> Result<()> {
    let t = SipTest::start_custom(
        r#"udp = ["10.77.1.1:5060"]
tcp = ["10.77.1.1:5060"]"#,
        "10.77.2.2:5060:udp",
        "[limits]\nmax_message_bytes = 4096\n",
        &[],
    )?;
    let pid = pid_of(&t.dir.join("sip-agent.toml").to_string_lossy())?;
    let rss0 = vm_rss_kib(pid)?;
    let agent = AGENT_A.parse()?;
    let head = |call: &str, extra: &str| {
        format!(
            "INVITE sip:2000@10.77.1.1 SIP/2.0\r\n\
             Via: SIP/2.0/TCP 10.77.1.2:5099;branch=z9hG4bK-{call}\r\n\
             From: <sip:1000@10.77.1.2>;tag=a1\r\nTo: <sip:2000@10.77.1.1>\r\n\
             Call-ID: {call}@10.77.1.2\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{extra}"
        )
    };
    for round in 0..20 {
        // Content-Length announces 1 MB.
        let call = format!("big-body-{round}");
        let mut msg = head(
            &call,
            "Content-Type: application/sdp\r\nContent-Length: 1000000\r\n\r\n",
        )
        .into_bytes();
        msg.extend(vec![b'v'; 1_000_000]);
        let c = tcp_connect_many(&t.s.topo, Host::Caller, CALLER_IP.parse()?, agent, 1)?.remove(0);
        let r = answer(c, msg)?;
        assert!(
            r.starts_with("SIP/2.0 413 Request Entity Too Large\r\n"),
            "round {round}: {r:?}"
        );
        assert!(r.contains(&format!("Call-ID: {call}@10.77.1.2\r\n")), "{r}");
        assert!(
            r.contains("CSeq: 1 INVITE\r\n") && r.contains("branch=z9hG4bK-"),
            "{r}"
        );
        // A header block that never ends.
        let call = format!("endless-head-{round}");
        let mut msg = head(&call, "X-Filler: ").into_bytes();
        msg.extend(vec![b'x'; 200_000]);
        let c = tcp_connect_many(&t.s.topo, Host::Caller, CALLER_IP.parse()?, agent, 1)?.remove(0);
        let r = answer(c, msg)?;
        assert!(r.starts_with("SIP/2.0 413 "), "round {round}: {r:?}");
        assert!(
            r.contains(&format!("Call-ID: {call}@10.77.1.2\r\n")) && !r.contains("X-Filler"),
            "{r}"
        );
    }
    let rss1 = vm_rss_kib(pid)?;
    eprintln!("sip-agent VmRSS {rss0} KiB -> {rss1} KiB after 40 oversize requests (24 MB sent)");
    assert!(rss1 < rss0 + 16 * 1024, "RSS grew by {} KiB", rss1 - rss0);
    Ok(())
}
