//! Issue 13's hijack, run against the real agent: a call through sip-agent (sipp on both sides,
//! G.711 audio), then a third party on another address in the caller's network that knows the
//! Call-ID and both tags of each leg (read from the sipp logs, as an eavesdropper would) tries a
//! fork START, PAUSE, STOP and a BYE on both legs. Each gets 403, no fork is installed or
//! changed, the call stays up with audio. The callee, a dialog party but not a controller, gets
//! 403 for a START too. The configured controller (the caller's address, the CVP role) starts a
//! fork: 200 and the fork is active. `sip-agent ctl show security` counts every refusal.

#![allow(clippy::disallowed_methods)] // wall clock drives real processes

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::sip_support::*;
use anyhow::{bail, Context, Result};
use xdpfork_tests::{ns_run, send_rtp_in_background, Host};

/// The third party: another address on the caller's link, no party to the call.
const THIRD_IP: &str = "10.77.1.3";
/// The controller sends from the caller's address (it is the calling UA's side), another port.
const CONTROLLER: &str = "10.77.1.2:5070";
const GUID: &str = "0D1A106A11AC4ED5";

/// Call-ID, the sender's tag (From) and the receiver's tag (To) of one leg, as a request on it
/// from the far end carries them.
#[derive(Debug, Clone)]
struct DialogIds {
    call_id: String,
    from_tag: String,
    to_tag: String,
}

/// Value of the first `name:` header line in a sipp message log (with a tag, if asked).
fn header<'a>(log: &'a str, name: &str, with_tag: bool) -> Option<&'a str> {
    log.lines()
        .map(str::trim)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .find(|v| !with_tag || v.contains("tag="))
}

fn tag_of(value: &str) -> Option<String> {
    let t = value.split(";tag=").nth(1)?;
    Some(t.split(';').next()?.trim().to_string())
}

/// Reads one leg's ids from a sipp log that holds the INVITE (Call-ID, From tag) and its 200
/// (To tag). `caller_view`: the log is the caller's, whose in-dialog requests carry From = its
/// tag and To = ours; for the callee's log, the callee sends with From = its tag (the To tag of
/// its 200) and To = ours (the INVITE's From tag).
fn ids_from_log(log: &str, caller_view: bool) -> Option<DialogIds> {
    let call_id = header(log, "Call-ID", false)?.to_string();
    let inv_from = tag_of(header(log, "From", true)?)?;
    let ok_to = tag_of(header(log, "To", true)?)?;
    Some(if caller_view {
        DialogIds {
            call_id,
            from_tag: inv_from,
            to_tag: ok_to,
        }
    } else {
        DialogIds {
            call_id,
            from_tag: ok_to,
            to_tag: inv_from,
        }
    })
}

/// A UDP user agent in a test namespace that sends one request and reads its final response.
struct Ua {
    sock: UdpSocket,
    branch: u32,
}

impl Ua {
    fn new(sock: UdpSocket) -> Result<Ua> {
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(Ua { sock, branch: 0 })
    }

    /// `method` in the dialog `ids`, addressed to `to`, with a fresh branch.
    fn build(
        &mut self,
        to: &str,
        method: &str,
        cseq: u32,
        ids: &DialogIds,
        json: Option<&str>,
    ) -> Result<String> {
        self.branch += 1;
        let me = self.sock.local_addr()?;
        let body = json.unwrap_or_default();
        let ct = if json.is_some() {
            "Content-Type: application/x-cisco-record+json\r\n"
        } else {
            ""
        };
        let msg = format!(
            "{method} sip:xdpfork@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-e2e-{}-{}\r\n\
Max-Forwards: 70\r\nFrom: <sip:party@{ip}>;tag={from}\r\nTo: <sip:peer@{to}>;tag={totag}\r\n\
Call-ID: {cid}\r\nCSeq: {cseq} {method}\r\n{ct}Content-Length: {len}\r\n\r\n{body}",
            me.port(),
            self.branch,
            ip = me.ip(),
            from = ids.from_tag,
            totag = ids.to_tag,
            cid = ids.call_id,
            len = body.len(),
        );
        Ok(msg)
    }

    /// Sends `method` in the dialog `ids` to `to` and returns the final status code (bounded:
    /// 5 s, UDP retransmitted every 500 ms).
    fn request(
        &mut self,
        to: &str,
        method: &str,
        cseq: u32,
        ids: &DialogIds,
        json: Option<&str>,
    ) -> Result<u16> {
        let msg = self.build(to, method, cseq, ids, json)?;
        let want = format!("CSeq: {cseq} {method}");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut next_send = Instant::now();
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline {
            if Instant::now() >= next_send {
                self.sock.send_to(msg.as_bytes(), to)?;
                next_send = Instant::now() + Duration::from_millis(500);
            }
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            let Some(code) = text
                .strip_prefix("SIP/2.0 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse::<u16>().ok())
            else {
                continue; // a request (none expected here)
            };
            if code >= 200 && text.contains(&want) {
                return Ok(code);
            }
        }
        bail!("no final response to {method} (CSeq {cseq}) within 5 s")
    }
}

fn json(kind: &str) -> String {
    match kind {
        "START" => start_body(GUID),
        k => format!(r#"{{"type":"{k}","call-guid":"{GUID}"}}"#),
    }
}

/// The RTP flow at sip-agent's anchor on `net` (10.77.`net`.1, even port) and its packets.
fn anchor_packets(t: &SipTest, net: u8) -> Result<(String, u64)> {
    let flows = t.s.flows()?;
    let prefix = format!("10.77.{net}.1:");
    flows
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            let local = f["local"].as_str()?;
            let port: u16 = local.strip_prefix(&prefix)?.parse().ok()?;
            port.is_multiple_of(2)
                .then(|| (local.to_string(), f["packets"].as_u64().unwrap_or(0)))
        })
        .next()
        .with_context(|| format!("no RTP flow at 10.77.{net}.1 in {flows}"))
}

/// Waits (bounded) until the RTP flows at both anchors counted more packets than `before`.
fn audio_flows(t: &SipTest, before: (u64, u64)) -> Result<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = (anchor_packets(t, 1)?.1, anchor_packets(t, 2)?.1);
        if now.0 > before.0 + 10 && now.1 > before.1 + 10 {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!(
                "audio stopped: packets {before:?} then {now:?}\n{}",
                t.diag(None)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The caller sipp, killed if an assertion panics before the test waits for it (it is not one of
/// the topology's children, which are cleaned up on drop).
struct Reap(Option<std::process::Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn forks(t: &SipTest) -> Result<Vec<serde_json::Value>> {
    let f = t.s.ctl(serde_json::json!({"v":1,"op":"show_forks"}))?;
    Ok(f.as_array().cloned().unwrap_or_default())
}

fn security(t: &SipTest) -> Result<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(&t.admin_ctl(&["show", "security"])?)?;
    Ok((
        v["forbidden_dialog_source"].as_u64().unwrap_or(u64::MAX),
        v["forbidden_fork_request"].as_u64().unwrap_or(u64::MAX),
    ))
}

#[test]
fn third_party_cannot_fork_or_end_a_call_the_controller_can() -> Result<()> {
    let mut t = SipTest::start_with_security(
        CALLER_IS_CONTROLLER,
        &["--admin-socket", "{dir}/admin.sock"],
    )?;
    ns_run(
        &t.s.topo.ns(Host::Caller),
        "ip",
        &["addr", "add", &format!("{THIRD_IP}/24"), "dev", "ca0"],
    )?;
    t.callee("uas_answer.xml", &PCMA, &["-rtp_echo"])?;
    let mut caller = Reap(Some(t.caller_spawn("uac_until_message.xml", &PCMA, &[])?));
    let result = (|| -> Result<()> {
        // The call is up once both logs hold the 200 (To tag) and flows are installed.
        let deadline = Instant::now() + Duration::from_secs(15);
        let read = |n: &str| std::fs::read_to_string(t.dir.join(n)).unwrap_or_default();
        let (leg_a, leg_b) = loop {
            let a = ids_from_log(&read("caller.msg"), true);
            let b = ids_from_log(&read("callee.msg"), false);
            let flows = t.s.flows()?.as_array().map_or(0, Vec::len);
            if let (Some(a), Some(b), 4) = (a.clone(), b.clone(), flows) {
                break (a, b);
            }
            if Instant::now() > deadline {
                bail!("call not up: {a:?} {b:?} flows={flows}\n{}", t.diag(None));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // Our own audio on top of sipp's short recording, so "the call still has audio" does
        // not depend on how long the test takes: 10 s at 50 packets/s into the caller's anchor.
        let (anchor_a, _) = anchor_packets(&t, 1)?;
        let rtp = t.s.topo.udp_socket(Host::Caller, "10.77.1.2:0".parse()?)?;
        let sender = send_rtp_in_background(
            rtp,
            anchor_a.parse()?,
            500,
            8,
            0x5EC0_0001,
            Duration::from_millis(20),
        );
        let mut third = Ua::new(
            t.s.topo
                .udp_socket(Host::Caller, format!("{THIRD_IP}:5060").parse()?)?,
        )?;
        let agent_a = AGENT_A;
        let mut cseq = 1000;
        let mut attempt = |ua: &mut Ua, method: &str, kind: Option<&str>, ids: &DialogIds| {
            cseq += 1;
            let body = kind.map(json);
            ua.request(agent_a, method, cseq, ids, body.as_deref())
        };

        // 1. Before any fork: START from the third party on either leg.
        for ids in [&leg_a, &leg_b] {
            let code = attempt(&mut third, "INFO", Some("START"), ids)?;
            assert_eq!(code, 403, "third-party START on {ids:?}\n{}", t.diag(None));
        }
        // The callee is a party to leg B but not a controller.
        let mut callee_ua = Ua::new(
            t.s.topo
                .udp_socket(Host::Callee, "10.77.2.2:5070".parse()?)?,
        )?;
        let code = callee_ua.request("10.77.2.1:5060", "INFO", 1, &leg_b, Some(&json("START")))?;
        assert_eq!(code, 403, "callee START\n{}", t.diag(None));
        assert!(
            forks(&t)?.is_empty(),
            "no fork may be installed: {:?}",
            forks(&t)?
        );
        assert_eq!(security(&t)?, (2, 1));

        // 2. The controller starts a fork: 200 and the fork runs.
        let mut controller = Ua::new(t.s.topo.udp_socket(Host::Caller, CONTROLLER.parse()?)?)?;
        let code = controller.request(agent_a, "INFO", 10, &leg_a, Some(&json("START")))?;
        assert_eq!(code, 200, "controller START\n{}", t.diag(None));
        t.s.wait_fork_state(GUID, "active")
            .with_context(|| t.diag(None))?;

        // 3. The third party tries to pause and stop it and to hang up, on both legs.
        let before = (anchor_packets(&t, 1)?.1, anchor_packets(&t, 2)?.1);
        for ids in [&leg_a, &leg_b] {
            for (method, kind) in [
                ("INFO", Some("PAUSE")),
                ("INFO", Some("STOP")),
                ("BYE", None),
            ] {
                let code = attempt(&mut third, method, kind, ids)?;
                assert_eq!(
                    code,
                    403,
                    "third-party {method} {kind:?} on {ids:?}\n{}",
                    t.diag(None)
                );
            }
        }
        assert_eq!(security(&t)?, (8, 1));
        // The fork is still there and active (not paused, not stopped); the call has audio both
        // ways; the callee is still in the call.
        let f = forks(&t)?;
        assert_eq!(f.len(), 1, "forks: {f:?}");
        t.s.wait_fork_state(GUID, "active")
            .with_context(|| t.diag(None))?;
        audio_flows(&t, before)?;
        assert!(t.s.topo.is_running("callee"), "{}", t.diag(None));
        assert_eq!(t.s.flows()?.as_array().map_or(0, Vec::len), 4);

        // 4. The caller ends the call itself (the MESSAGE releases its scenario).
        let trigger = DialogIds {
            call_id: leg_a.call_id.clone(),
            from_tag: "e2e-trigger".into(),
            to_tag: leg_a.from_tag.clone(),
        };
        // sipp (a client) answers towards sip-agent, not to us, so the proof it got the
        // MESSAGE is its BYE in its log; resent a few times in case a datagram is lost.
        let msg = controller.build("10.77.1.2:5060", "MESSAGE", 1, &trigger, None)?;
        for _ in 0..10 {
            controller.sock.send_to(msg.as_bytes(), "10.77.1.2:5060")?;
            std::thread::sleep(Duration::from_millis(300));
            if read("caller.msg").contains("CSeq: 100 BYE") {
                break;
            }
        }
        let _ = sender.join();
        Ok(())
    })();
    let run = t.caller_wait(caller.0.take().context("caller sipp")?)?;
    result?;
    assert!(run.ok, "caller failed\n{}", t.diag(Some(&run)));
    let statuses = run.statuses();
    assert!(
        statuses.iter().any(|s| s.contains("\"STARTED\"")),
        "the controller's fork reported STARTED: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| !s.contains("\"PAUSED\"")),
        "no pause reached the fork: {statuses:?}"
    );
    t.wait_callee_done()?;
    t.wait_no_flows()?;
    assert!(forks(&t)?.is_empty(), "fork left after BYE");
    Ok(())
}
