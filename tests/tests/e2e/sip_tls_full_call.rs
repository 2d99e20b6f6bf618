//! A full SIP call with the caller on SIP over mutual TLS (RFC 3261 §26.2, sip-agent's
//! `tls.client_ca`) and the callee on UDP (sipp, `-rtp_echo`). Debian's sipp has no TLS, so the
//! caller is a small rustls client over a std TcpStream opened in the caller namespace: it trusts
//! the test CA (made with rcgen), checks sip-agent's certificate for 10.77.1.1 and presents its
//! own. Flow: INVITE with a PCMA offer, provisional and 200 OK read with Content-Length framing
//! (RFC 3261 §18.3), ACK, a fork START by INFO (200), fork-agent shows the four flows and the
//! fork active, RTP from the caller's port to the anchored port comes back echoed by the callee
//! through the relay, then BYE (200) removes every flow. Status INFOs sip-agent sends back over
//! the same TLS connection are answered 200, and STARTED must be among them. The controller is
//! named only by its certificate (`security.controller_tls_names = ["caller"]`, the caller
//! certificate's CN; no controller address), so the START is accepted only because sip-agent
//! read the name from the verified client certificate (docs/security.md).

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::sip_support::*;
use anyhow::{bail, Context, Result};
use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, IpAddr as PkiIp, PrivateKeyDer, ServerName};
use xdpfork_tests::{rtp_packet, spawn_receiver, Host};

const AGENT_TLS: &str = "10.77.1.1:5061";
const CALL_ID: &str = "tls-call-1@10.77.1.2";

/// The test PKI: a CA, sip-agent's leaf (IP SANs of both its sides, files for its `[tls]`), and
/// the caller's leaf (kept in DER for rustls).
struct Pki {
    ca_der: CertificateDer<'static>,
    caller: (CertificateDer<'static>, PrivateKeyDer<'static>),
    tls_toml: String,
}

fn make_pki(dir: &Path) -> Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "xdpfork sip test CA");
    let ca: Certificate = p.self_signed(&ca_key)?;
    let leaf = |sans: Vec<String>, cn: &str| -> Result<(Certificate, KeyPair)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        Ok((p.signed_by(&key, &ca, &ca_key)?, key))
    };
    let (agent, agent_key) = leaf(vec!["10.77.1.1".into(), "10.77.2.1".into()], "sip-agent")?;
    let (caller, caller_key) = leaf(vec![CALLER_IP.into()], "caller")?;
    let f = |n: &str| dir.join(n).to_string_lossy().into_owned();
    // Chain: leaf then its issuer, as a server sends it.
    std::fs::write(f("agent.crt"), format!("{}{}", agent.pem(), ca.pem()))?;
    std::fs::write(f("agent.key"), agent_key.serialize_pem())?;
    std::fs::write(f("ca.crt"), ca.pem())?;
    Ok(Pki {
        ca_der: ca.der().clone(),
        caller: (
            caller.der().clone(),
            PrivateKeyDer::Pkcs8(caller_key.serialize_der().into()),
        ),
        tls_toml: format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            f("agent.crt"),
            f("agent.key"),
            f("ca.crt")
        ),
    })
}

/// SIP over a rustls client stream, framed by Content-Length (RFC 3261 §18.3).
struct TlsSip {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsSip {
    fn open(tcp: TcpStream, pki: &Pki) -> Result<TlsSip> {
        tcp.set_read_timeout(Some(Duration::from_millis(200)))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone())?;
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![pki.caller.0.clone()], pki.caller.1.clone_key())?;
        let name = ServerName::IpAddress(PkiIp::from(std::net::IpAddr::from([10, 77, 1, 1])));
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name)?;
        // Finish the handshake here (bounded) so a refused certificate fails loudly.
        let mut tcp = tcp;
        let deadline = Instant::now() + Duration::from_secs(5);
        while conn.is_handshaking() {
            if Instant::now() > deadline {
                bail!("TLS handshake with sip-agent did not finish within 5 s");
            }
            match conn.complete_io(&mut tcp) {
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e).context("TLS handshake with sip-agent"),
            }
        }
        Ok(TlsSip {
            s: rustls::StreamOwned::new(conn, tcp),
            buf: Vec::new(),
        })
    }

    fn send(&mut self, msg: &str) -> Result<()> {
        self.s.write_all(msg.as_bytes())?;
        self.s.flush()?;
        Ok(())
    }

    /// Next SIP message, waiting up to `timeout`.
    fn recv(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            // RFC 5626 §3.5.1 keep-alive CRLFs between messages are skipped.
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..p]).into_owned();
                let len = header(&head, "Content-Length")
                    .or_else(|| header(&head, "l"))
                    .context("a stream message needs Content-Length (RFC 3261 §18.3)")?
                    .parse::<usize>()?;
                if self.buf.len() >= p + 4 + len {
                    let m: Vec<u8> = self.buf.drain(..p + 4 + len).collect();
                    return Ok(String::from_utf8_lossy(&m).into_owned());
                }
            }
            if Instant::now() > deadline {
                bail!("no SIP message over TLS within {timeout:?}");
            }
            let mut b = [0u8; 8192];
            match self.s.read(&mut b) {
                Ok(0) => bail!("TLS connection closed by sip-agent"),
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// 200 OK for a request from sip-agent (a status INFO).
fn ok_for(req: &str) -> String {
    let mut r = String::from("SIP/2.0 200 OK\r\n");
    for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
        for l in req.lines().take_while(|l| !l.is_empty()).filter(|l| {
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
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/TLS {CALLER_IP}:5061;branch=z9hG4bK{branch}\r\n\
Max-Forwards: 70\r\nFrom: <sip:1000@{CALLER_IP}>;tag=tlscaller\r\nTo: {to}\r\n\
Call-ID: {CALL_ID}\r\nCSeq: {cseq} {method}\r\n\
Contact: <sip:1000@{CALLER_IP}:5061;transport=tls>\r\n"
    );
    if !ct.is_empty() {
        m.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    m.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
    m
}

/// Answers a status INFO from sip-agent and keeps its body.
fn answer_info(c: &mut TlsSip, m: &str, statuses: &mut Vec<String>) -> Result<()> {
    if let Some(p) = m.find("\r\n\r\n") {
        statuses.push(m[p + 4..].to_string());
    }
    c.send(&ok_for(m))
}

/// Reads until the final response for `cseq`; answers status INFOs meanwhile. Returns the
/// provisional statuses seen and the final response.
fn final_response(
    c: &mut TlsSip,
    cseq: &str,
    statuses: &mut Vec<String>,
) -> Result<(Vec<u16>, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut provisional = Vec::new();
    while Instant::now() < deadline {
        let m = c.recv(Duration::from_secs(10))?;
        if m.starts_with("INFO ") {
            answer_info(c, &m, statuses)?;
            continue;
        }
        if header(&m, "CSeq") != Some(cseq) {
            bail!("unexpected message waiting for {cseq}:\n{m}");
        }
        let code: u16 = m.get(8..11).unwrap_or("").parse()?;
        if code < 200 {
            provisional.push(code);
            continue;
        }
        return Ok((provisional, m));
    }
    bail!("no final response for {cseq}")
}

/// `(ip, port)` of the first audio stream of an SDP body.
fn sdp_audio(msg: &str) -> Option<(String, u16)> {
    let ip = msg
        .lines()
        .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))?
        .trim()
        .to_string();
    let port = msg
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((ip, port))
}

#[test]
fn call_flow_over_mutual_tls() -> Result<()> {
    let pki_dir = std::env::temp_dir().join(format!("xdpfork-sip-tls-full-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let pki = make_pki(&pki_dir)?;
        let mut t = SipTest::start_full(
            r#"udp = ["10.77.1.1:5060", "10.77.2.1:5060"]
tls = ["10.77.1.1:5061"]"#,
            "10.77.2.2:5060:udp",
            &pki.tls_toml,
            r#"controller_tls_names = ["caller"]"#,
            &[],
        )?;
        t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
        // The caller's media socket exists before the offer names it.
        let media =
            t.s.topo
                .udp_socket(Host::Caller, format!("{CALLER_IP}:40000").parse()?)?;
        let tcp =
            t.s.topo
                .tcp_connect(Host::Caller, AGENT_TLS.parse()?)
                .context("connecting to sip-agent's TLS listener")?;
        let mut c = TlsSip::open(tcp, &pki)?;

        let sdp = format!(
            "v=0\r\no=tls 1 1 IN IP4 {CALLER_IP}\r\ns=-\r\nc=IN IP4 {CALLER_IP}\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n"
        );
        c.send(&request(
            "INVITE",
            "sip:2000@10.77.1.1:5061;transport=tls",
            "<sip:2000@10.77.1.1>",
            1,
            "inv1",
            Some(("application/sdp", &sdp)),
        ))?;
        let mut statuses = Vec::new();
        let (prov, ok) = final_response(&mut c, "1 INVITE", &mut statuses)?;
        assert!(ok.starts_with("SIP/2.0 200"), "{ok}\n{}", t.diag(None));
        assert!(
            !prov.is_empty(),
            "no provisional before 200: {prov:?}\n{}",
            t.diag(None)
        );
        let (ip, port) = sdp_audio(&ok).context("no audio in the 200 OK answer")?;
        assert_eq!(ip, "10.77.1.1", "answer not anchored: {ok}");
        let to = header(&ok, "To").context("To")?.to_string();
        let contact = header(&ok, "Contact").context("Contact")?;
        assert!(
            contact.to_ascii_lowercase().contains("transport=tls"),
            "{contact}"
        );
        let ruri = contact
            .trim_matches(|ch| ch == '<' || ch == '>')
            .to_string();
        c.send(&request("ACK", &ruri, &to, 1, "ack1", None))?;

        let guid = "7A1C5E3B9D2F11EE";
        let body = start_body(guid);
        c.send(&request(
            "INFO",
            &ruri,
            &to,
            2,
            "info2",
            Some(("application/x-cisco-record+json", &body)),
        ))?;
        let (_, ok) = final_response(&mut c, "2 INFO", &mut statuses)?;
        assert!(ok.starts_with("SIP/2.0 200"), "{ok}\n{}", t.diag(None));
        t.s.wait_fork_state(guid, "active")
            .with_context(|| t.diag(None))?;

        // Media: PCMA from the offered port to the anchored one; the callee echoes it back
        // through the relay to the same port (RFC 3550 §5.1 header, 20 ms of silence each).
        let rx = spawn_receiver(media.try_clone()?, 40, Duration::from_millis(800));
        let dst: std::net::SocketAddr = format!("{ip}:{port}").parse()?;
        for i in 0..40u16 {
            let pkt = rtp_packet(8, 100 + i, 160 * u32::from(i), 0x7157_0001, &[0xd5; 160]);
            media.send_to(&pkt, dst)?;
            std::thread::sleep(Duration::from_millis(20));
            // Status INFOs keep arriving on the signalling connection meanwhile.
            if let Ok(m) = c.recv(Duration::from_millis(1)) {
                if m.starts_with("INFO ") {
                    answer_info(&mut c, &m, &mut statuses)?;
                }
            }
        }
        let echoed = rx
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        assert!(
            echoed.len() >= 20,
            "only {} of 40 RTP packets came back through the callee\n{}",
            echoed.len(),
            t.diag(None)
        );
        assert!(
            echoed.iter().all(|p| p.len() == 172 && p[1] & 0x7f == 8),
            "echoed packets are not the caller's PCMA"
        );

        let flows = t.s.flows()?;
        let list = flows.as_array().cloned().unwrap_or_default();
        assert_eq!(
            list.len(),
            4,
            "flows mid-call (RTP and RTCP both ways): {flows}\n{}",
            t.diag(None)
        );
        let anchored = format!("10.77.1.1:{port}");
        let a = list
            .iter()
            .find(|f| f["local"] == anchored.as_str())
            .with_context(|| format!("no flow on the anchored port {anchored}: {flows}"))?;
        assert!(a["packets"].as_u64() >= Some(20), "anchored flow {a}");
        let forks = t.s.ctl(serde_json::json!({"v":1,"op":"show_forks"}))?;
        assert!(forks.to_string().contains(guid), "show_forks: {forks}");
        // STARTED comes back to the controller over the same TLS connection (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !statuses.iter().any(|s| s.contains("\"STARTED\"")) && Instant::now() < deadline {
            if let Ok(m) = c.recv(Duration::from_millis(300)) {
                if m.starts_with("INFO ") {
                    answer_info(&mut c, &m, &mut statuses)?;
                }
            }
        }
        assert!(
            statuses.iter().any(|s| s.contains("\"STARTED\"")),
            "statuses over TLS: {statuses:?}\n{}",
            t.diag(None)
        );

        c.send(&request("BYE", &ruri, &to, 3, "bye3", None))?;
        let (_, ok) = final_response(&mut c, "3 BYE", &mut statuses)?;
        assert!(ok.starts_with("SIP/2.0 200"), "{ok}\n{}", t.diag(None));
        t.wait_callee_done()?;
        t.wait_no_flows()?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&pki_dir);
    result
}
