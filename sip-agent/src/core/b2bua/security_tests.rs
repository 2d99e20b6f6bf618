//! The dialog-source and controller rules (docs/security.md) on the two-sided harness: a third
//! party that knows a dialog's Call-ID and both tags cannot end the call or fork it; the
//! dialog's peers, a trusted proxy and the configured controller can. Time is stepped through
//! every deadline afterwards to show nothing was released behind the test's back.

use super::tests::{established, established_in, start_json, FORK_CT, GUID};
use super::*;
use crate::core::authz::{Cidr, Policy};
use crate::core::testing::*;
use crate::core::transaction::Transport;
use rand::SeedableRng;
use std::time::Duration;

/// An address that is no party to any call.
const THIRD: &str = "198.51.100.66:5060";

fn cidr(s: &str) -> Cidr {
    s.parse().expect("test cidr")
}

/// An in-dialog request with every identifier given explicitly.
#[allow(clippy::too_many_arguments)]
fn dialog_request(
    method: &str,
    cseq: u32,
    via: &str,
    call_id: &str,
    from_tag: &str,
    to_tag: &str,
    ct: Option<&str>,
    body: &[u8],
) -> SipMessage {
    let mut text = format!(
        "{method} sip:xdpfork@{HOST} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK{method}{cseq}x\r\n\
Max-Forwards: 70\r\nFrom: <sip:someone@{via}>;tag={from_tag}\r\nTo: <sip:6777@192.0.2.10>;tag={to_tag}\r\n\
Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
    );
    if let Some(ct) = ct {
        text.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    message::parse(&bytes).expect("test request parses")
}

/// Leg A's dialog as the caller sees it (Call-ID, caller's tag, our tag).
fn leg_a(tag: &str) -> (String, String, String) {
    ("call-a@198.51.100.7".into(), "atag".into(), tag.into())
}

/// Leg B's dialog as the callee sees it: our INVITE's Call-ID, the callee's tag, our tag.
fn leg_b(b_inv: &Request) -> (String, String, String) {
    let k = message::keys(&SipMessage::Request(b_inv.clone())).expect("keys");
    (k.call_id, "btag".into(), k.from_tag.expect("our tag on B"))
}

fn codes(msgs: &[SipMessage]) -> Vec<u16> {
    msgs.iter().map(code).collect()
}

fn pause_json() -> String {
    format!(r#"{{"type":"PAUSE","call-guid":"{GUID}"}}"#)
}

fn stop_json() -> String {
    format!(r#"{{"type":"STOP","call-guid":"{GUID}"}}"#)
}

#[test]
fn third_party_with_full_dialog_ids_gets_403_for_fork_and_bye_on_both_legs() {
    let (mut h, tag, b_inv) = established();
    h.take_events();
    let mut cseq = 10;
    for (call_id, from_tag, to_tag) in [leg_a(&tag), leg_b(&b_inv)] {
        for (m, body) in [
            ("INFO", Some(start_json())),
            ("INFO", Some(pause_json())),
            ("INFO", Some(stop_json())),
            ("BYE", None),
        ] {
            cseq += 1;
            let req = dialog_request(
                m,
                cseq,
                THIRD,
                &call_id,
                &from_tag,
                &to_tag,
                body.as_ref().map(|_| FORK_CT),
                body.as_deref().unwrap_or_default().as_bytes(),
            );
            h.send_from(THIRD, &req);
            assert_eq!(codes(&h.take_for(THIRD)), vec![403], "{m} on {call_id}");
        }
    }
    assert!(h.take_events().is_empty(), "no fork request, no call end");
    assert!(h.take_for_a().is_empty() && h.take_for_b().is_empty());
    assert_eq!(
        h.b2bua.security_counters(),
        SecurityCounters {
            forbidden_dialog_source: 8,
            forbidden_fork_request: 0,
        }
    );
    // Step through every deadline: the call is still up, nobody was sent a BYE.
    h.advance(Duration::from_secs(120));
    assert_eq!(h.b2bua.call_count(), 1);
    assert!(h.take_for_a().is_empty() && h.take_for_b().is_empty());
    // The refused requests did not consume CSeq numbers: the caller's INFO with CSeq 2 (lower
    // than the attacker's) is still in order and is acted on.
    h.send_from_a(&a_in_dialog(
        "INFO",
        2,
        "z9hG4bKinfo",
        &tag,
        Some(FORK_CT),
        start_json().as_bytes(),
    ));
    assert_eq!(codes(&h.take_for_a()), vec![200]);
    assert!(matches!(
        h.take_events().as_slice(),
        [SessionEvent::ForkRequest {
            leg: Leg::A,
            request: ForkRequest::Start(_),
            ..
        }]
    ));
}

#[test]
fn wrong_from_tag_or_call_id_is_no_dialog_481() {
    let (mut h, tag, _) = established();
    // The caller's own address, but a From-tag that is not the dialog's: not this dialog.
    let bye = dialog_request(
        "BYE",
        5,
        A_ADDR,
        "call-a@198.51.100.7",
        "guess",
        &tag,
        None,
        b"",
    );
    h.send_from_a(&bye);
    assert_eq!(codes(&h.take_for_a()), vec![481]);
    let bye = dialog_request("BYE", 6, A_ADDR, "other@x", "atag", &tag, None, b"");
    h.send_from_a(&bye);
    assert_eq!(codes(&h.take_for_a()), vec![481]);
    // A third party gets 481 for a miss too: only a full match from a wrong source is a 403.
    let bye = dialog_request(
        "BYE",
        7,
        THIRD,
        "call-a@198.51.100.7",
        "guess",
        &tag,
        None,
        b"",
    );
    h.send_from(THIRD, &bye);
    assert_eq!(codes(&h.take_for(THIRD)), vec![481]);
    assert_eq!(h.b2bua.security_counters(), SecurityCounters::default());
    assert_eq!(h.b2bua.call_count(), 1);
}

#[test]
fn dialog_peers_still_end_the_call_from_either_leg() {
    // The callee's BYE: From-tag btag, To-tag ours on B, from the next hop's address.
    let (mut h, _, b_inv) = established();
    h.take_events();
    let (cid, btag, ours) = leg_b(&b_inv);
    h.send_from_b(&dialog_request(
        "BYE", 1, B_ADDR, &cid, &btag, &ours, None, b"",
    ));
    assert_eq!(codes(&h.take_for_b()), vec![200]);
    assert_eq!(
        h.take_for_a().iter().map(method).collect::<Vec<_>>(),
        vec!["BYE"]
    );
    assert_eq!(h.b2bua.call_count(), 0);
}

#[test]
fn trusted_proxy_may_send_in_dialog_requests() {
    let h = Harness::with_config(|c| c.security.trusted_proxies = vec![cidr("198.51.100.64/28")]);
    let (mut h, tag, _) = established_in(h, &[], &[]);
    h.take_events();
    let (cid, atag, ours) = leg_a(&tag);
    h.send_from(
        THIRD,
        &dialog_request("BYE", 2, THIRD, &cid, &atag, &ours, None, b""),
    );
    assert_eq!(codes(&h.take_for(THIRD)), vec![200]);
    assert_eq!(
        h.take_for_b().iter().map(method).collect::<Vec<_>>(),
        vec!["BYE"]
    );
    assert_eq!(h.b2bua.security_counters(), SecurityCounters::default());
}

#[test]
fn fork_requests_only_from_controllers() {
    // The controller is somewhere else: the caller is a dialog party but not a controller.
    let h = Harness::with_config(|c| c.security.controllers = vec![cidr("192.0.2.200")]);
    let (mut h, tag, b_inv) = established_in(h, &[], &[]);
    h.take_events();
    h.send_from_a(&a_in_dialog(
        "INFO",
        2,
        "z9hG4bKi1",
        &tag,
        Some(FORK_CT),
        start_json().as_bytes(),
    ));
    assert_eq!(codes(&h.take_for_a()), vec![403]);
    // A re-INVITE with a fork part is refused whole: not relayed, media unchanged.
    let parts = vec![
        multipart::Part::new(
            "application/sdp",
            sdp("198.51.100.7", 16400, "0 101", "").into_bytes(),
        ),
        multipart::Part::new(FORK_CT, start_json().into_bytes()),
    ];
    let (ct, body) = multipart::build("sec", &parts).expect("multipart");
    h.send_from_a(&a_in_dialog(
        "INVITE",
        3,
        "z9hG4bKr1",
        &tag,
        Some(&ct),
        &body,
    ));
    assert_eq!(
        codes(&h.take_for_a()),
        vec![100, 403],
        "100 from the transaction layer"
    );
    assert!(h.take_for_b().is_empty(), "not relayed");
    // The callee is a dialog party too, and not a controller either.
    let (cid, btag, ours) = leg_b(&b_inv);
    h.send_from_b(&dialog_request(
        "INFO",
        1,
        B_ADDR,
        &cid,
        &btag,
        &ours,
        Some(FORK_CT),
        start_json().as_bytes(),
    ));
    assert_eq!(codes(&h.take_for_b()), vec![403]);
    assert!(h.take_events().is_empty(), "{:?}", h.events);
    assert_eq!(
        h.b2bua.security_counters(),
        SecurityCounters {
            forbidden_dialog_source: 0,
            forbidden_fork_request: 3,
        }
    );
    // Requests without fork JSON from the same party are not affected: a plain INFO is relayed.
    h.send_from_a(&a_in_dialog(
        "INFO",
        4,
        "z9hG4bKi2",
        &tag,
        Some("text/plain"),
        b"hi",
    ));
    assert_eq!(
        h.take_for_b().iter().map(method).collect::<Vec<_>>(),
        vec!["INFO"]
    );
}

#[test]
fn cancel_from_a_third_party_finds_no_invite_and_the_call_goes_on() {
    let mut h = Harness::new();
    let inv = invite(
        "6777",
        "z9hG4bKc1",
        &sdp("198.51.100.7", 16384, "0 101", ""),
    );
    h.send_from_a(&inv);
    h.take_for_a();
    let b_inv = request(&h.take_for_b()[0]).clone();
    h.send_from_b(&answer(&b_inv, 180, "btag", B_ADDR, None));
    h.take_for_a();
    // Same branch, Call-ID and tags as the INVITE, from elsewhere.
    let cancel = message::parse(
        format!(
            "CANCEL sip:6777@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP {A_ADDR};branch=z9hG4bKc1\r\n\
Max-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@198.51.100.7>;tag=atag\r\nTo: <sip:6777@192.0.2.10>\r\n\
Call-ID: call-a@198.51.100.7\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("cancel");
    // The INVITE transaction is keyed by the IP it came from, so this CANCEL cancels nothing.
    h.send_from(THIRD, &cancel);
    assert_eq!(codes(&h.take_for(THIRD)), vec![481]);
    assert!(h.take_for_b().is_empty(), "no CANCEL towards the callee");
    // The caller's own CANCEL (same branch) is not absorbed as a retransmission of the
    // third party's: it works.
    h.send_from_a(&cancel);
    assert_eq!(codes(&h.take_for_a()), vec![200, 487]);
    assert_eq!(
        h.take_for_b().iter().map(method).collect::<Vec<_>>(),
        vec!["CANCEL"]
    );
}

#[test]
fn controller_named_by_tls_certificate() {
    let tls_a = Peer {
        addr: A_ADDR.parse().expect("addr"),
        transport: Transport::Tls,
    };
    let mut h = Harness::with_config(|c| {
        c.security = Policy {
            controller_tls_names: vec!["cvp.example.com".into()],
            ..Policy::default()
        }
    });
    h.b2bua
        .handle_peer_identity(tls_a, 7, vec!["CVP.example.com".into()]);
    h.send_peer(
        tls_a,
        &invite(
            "6777",
            "z9hG4bKt1",
            &sdp("198.51.100.7", 16384, "0 101", ""),
        ),
    );
    h.take_for_a();
    let b_inv = request(&h.take_for_b()[0]).clone();
    h.send_from_b(&answer(
        &b_inv,
        200,
        "btag",
        B_ADDR,
        Some(&sdp("203.0.113.20", 20000, "0 101", "")),
    ));
    let ok = h.take_for_a();
    let tag = message::keys(&ok[0])
        .and_then(|k| k.to_tag)
        .expect("our tag");
    h.take_events();
    let info = |cseq, branch: &str| {
        a_in_dialog(
            "INFO",
            cseq,
            branch,
            &tag,
            Some(FORK_CT),
            start_json().as_bytes(),
        )
    };
    // The same dialog over UDP from the same address: a TLS leg takes nothing over UDP.
    h.send_from_a(&info(2, "z9hG4bKu"));
    assert_eq!(codes(&h.take_for_a()), vec![403]);
    assert_eq!(h.b2bua.security_counters().forbidden_dialog_source, 1);
    h.send_peer(tls_a, &info(3, "z9hG4bKt2"));
    assert_eq!(codes(&h.take_for_a()), vec![200]);
    assert!(matches!(
        h.take_events().as_slice(),
        [SessionEvent::ForkRequest { .. }]
    ));
    // A new connection from the same address without that certificate is not the controller.
    h.b2bua.handle_connection_closed(tls_a, 7);
    h.send_peer(tls_a, &info(4, "z9hG4bKt3"));
    assert_eq!(codes(&h.take_for_a()), vec![403]);
    assert_eq!(h.b2bua.security_counters().forbidden_fork_request, 1);
}

#[test]
fn ids_come_from_the_injected_rng() {
    let ids = |seed: u64| {
        let mut h = Harness::new();
        h.b2bua.rng = Box::new(rand::rngs::StdRng::seed_from_u64(seed));
        h.send_from_a(&invite(
            "6777",
            "z9hG4bKr",
            &sdp("198.51.100.7", 16384, "0 101", ""),
        ));
        let b_inv = request(&h.take_for_b()[0]).clone();
        let k = message::keys(&SipMessage::Request(b_inv)).expect("keys");
        (k.call_id, k.from_tag.expect("tag"), k.branch)
    };
    let (cid, tag, branch) = ids(1);
    assert_eq!(ids(1), (cid.clone(), tag.clone(), branch.clone()), "seeded");
    assert_ne!(ids(2).0, cid);
    // 128 random bits each, as hex.
    let hex = |s: &str| s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit());
    assert!(hex(&tag), "{tag}");
    assert!(hex(cid.split('@').next().unwrap_or_default()), "{cid}");
    assert!(hex(branch.trim_start_matches("z9hG4bK")), "{branch}");
}
