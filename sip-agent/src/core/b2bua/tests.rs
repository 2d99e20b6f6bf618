//! Full call flows through the B2BUA on the two-sided harness (core/testing.rs).

use super::*;
use crate::core::fork_request::{ForkKind, ForkState, Party, StatusReport, StreamStatus};
use crate::core::sdp::Sdp;
use crate::core::testing::*;
use std::time::Duration;

pub(super) const FORK_CT: &str = "application/x-cisco-record+json";
pub(super) const GUID: &str = "6F0C9A2E1D3B11EEB5D6000C29F1A2B3";

pub(super) fn start_json() -> String {
    format!(
        r#"{{"type":"START","call-guid":"{GUID}","url":"ws://10.64.86.215:8000","codec":"g711ulaw"}}"#
    )
}

fn json_of(m: &SipMessage) -> serde_json::Value {
    serde_json::from_slice(m.body()).expect("status body is JSON")
}

/// Sets up A→B2BUA→B up to an established call; returns the harness, the B2BUA's tag on leg A
/// and B's view of the INVITE.
pub(super) fn established() -> (Harness, String, Request) {
    established_in(Harness::new(), &[], &[])
}

/// [`established`] on a given harness, with extra headers on A's INVITE and on B's 200.
pub(super) fn established_in(
    mut h: Harness,
    invite_extra: &[(&str, &str)],
    answer_extra: &[(&str, &str)],
) -> (Harness, String, Request) {
    h.send_from_a(&with_headers(
        invite(
            "6777",
            "z9hG4bKa1",
            &sdp("198.51.100.7", 16384, "0 8 101", ""),
        ),
        invite_extra,
    ));
    let to_a = h.take_for_a();
    assert_eq!(to_a.iter().map(code).collect::<Vec<_>>(), vec![100]);
    let to_b = h.take_for_b();
    assert_eq!(to_b.len(), 1);
    let b_inv = request(&to_b[0]).clone();
    h.send_from_b(&answer(&b_inv, 180, "btag", B_ADDR, None));
    let ringing = h.take_for_a();
    assert_eq!(ringing.iter().map(code).collect::<Vec<_>>(), vec![180]);
    h.send_from_b(&with_headers(
        answer(
            &b_inv,
            200,
            "btag",
            B_ADDR,
            Some(&sdp("203.0.113.20", 20000, "0 101", "")),
        ),
        answer_extra,
    ));
    let to_b = h.take_for_b();
    assert_eq!(
        to_b.iter().map(method).collect::<Vec<_>>(),
        vec!["ACK"],
        "B2BUA ACKs B's 2xx"
    );
    let to_a = h.take_for_a();
    assert_eq!(to_a.iter().map(code).collect::<Vec<_>>(), vec![200]);
    let tag = message::keys(&to_a[0])
        .and_then(|k| k.to_tag)
        .expect("200 carries our tag");
    // A ACKs (new branch).
    h.send_from_a(&a_in_dialog("ACK", 1, "z9hG4bKa1ack", &tag, None, b""));
    assert!(
        h.take_for_b().is_empty(),
        "A's ACK is absorbed, B was ACKed already"
    );
    (h, tag, b_inv)
}

#[test]
fn invite_is_routed_and_media_anchored_both_ways() {
    let mut h = Harness::new();
    h.send_from_a(&invite(
        "6777",
        "z9hG4bKa1",
        &sdp("198.51.100.7", 16384, "0 8 101", "a=ptime:20\r\n"),
    ));
    h.take_for_a();
    let to_b = h.take_for_b();
    let b_inv = request(&to_b[0]).clone();
    assert_eq!(b_inv.uri.to_string(), "sip:6777@203.0.113.20:5060");
    assert_eq!(header_values(&b_inv.headers, "Max-Forwards"), vec!["69"]);
    let offer = Sdp::parse(&b_inv.body)
        .expect("sdp")
        .audio()
        .expect("audio");
    assert_eq!(offer.addr.to_string(), "192.0.2.10");
    let port_b = offer.port;
    assert_eq!(offer.ptime, Some(20), "attributes pass through");
    h.send_from_b(&answer(
        &b_inv,
        200,
        "btag",
        B_ADDR,
        Some(&sdp("203.0.113.20", 20000, "0 101", "")),
    ));
    let to_a = h.take_for_a();
    let ans = Sdp::parse(to_a[0].body())
        .expect("sdp")
        .audio()
        .expect("audio");
    assert_eq!(ans.addr.to_string(), "192.0.2.10");
    assert_ne!(ans.port, port_b);
    let ev = h.take_events();
    let ups: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            SessionEvent::MediaUp { leg, media, .. } => Some((*leg, media.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(ups.len(), 2);
    let (leg_a, media_a) = &ups[0];
    assert_eq!(*leg_a, Leg::A);
    assert_eq!(
        media_a.remote,
        Some("198.51.100.7:16384".parse().expect("addr"))
    );
    assert_eq!(media_a.local_port, ans.port);
    assert_eq!(
        media_a.codec.as_ref().and_then(|c| c.name.as_deref()),
        Some("PCMU")
    );
    assert_eq!(
        ups[1].1.remote,
        Some("203.0.113.20:20000".parse().expect("addr"))
    );
    assert_eq!(ups[1].1.local_port, port_b);
    assert_eq!(h.b2bua.counts().aggregate, 1);
}

#[test]
fn full_flow_with_info_fork_retransmission_and_bye() {
    let (mut h, tag, _) = established();
    h.take_events();
    let info = a_in_dialog(
        "INFO",
        2,
        "z9hG4bKinfo1",
        &tag,
        Some(FORK_CT),
        start_json().as_bytes(),
    );
    // The network duplicates the INFO: answered twice, acted on once (reference: a retransmitted
    // fork request is ignored).
    h.duplicate_next_in = true;
    h.send_from_a(&info);
    let to_a = h.take_for_a();
    assert_eq!(to_a.iter().map(code).collect::<Vec<_>>(), vec![200, 200]);
    let ev = h.take_events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    let SessionEvent::ForkRequest {
        call,
        leg: Leg::A,
        request: ForkRequest::Start(s),
        parties,
    } = &ev[0]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(s.call_guid, GUID);
    // The fork names the caller's leg: its Call-ID and the URIs of its From and To.
    assert_eq!(
        parties,
        &CallParties {
            call_id: "call-a@198.51.100.7".into(),
            from: "sip:alice@198.51.100.7".into(),
            to: "sip:6777@192.0.2.10".into(),
        }
    );
    assert!(h.take_for_b().is_empty(), "fork INFO is not relayed");
    let call = *call;
    // Fork layer reports START reached the speech server.
    let report = StatusReport {
        call_guid: Some(GUID.into()),
        request: Some(ForkKind::Start),
        state: ForkState::Started,
        status: None,
        streams: vec![
            StreamStatus {
                channel_id: 1,
                party: Party::Calling,
            },
            StreamStatus {
                channel_id: 2,
                party: Party::Called,
            },
        ],
    };
    h.fork_status(call, report);
    let to_a = h.take_for_a();
    assert_eq!(to_a.iter().map(method).collect::<Vec<_>>(), vec!["INFO"]);
    let v = json_of(&to_a[0]);
    assert_eq!(v["state"], "STARTED");
    assert_eq!(
        header_values(&request(&to_a[0]).headers, "Content-Type"),
        vec![FORK_CT]
    );
    let counts = h.b2bua.counts();
    assert_eq!(
        (counts.aggregate, counts.enhanced, counts.standard()),
        (1, 1, 0)
    );
    // Controller acknowledges the status INFO.
    h.send_from_a(&answer(request(&to_a[0]), 200, "atag", A_ADDR, None));
    // A hangs up.
    h.send_from_a(&a_in_dialog("BYE", 3, "z9hG4bKbye", &tag, None, b""));
    assert_eq!(
        h.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![200]
    );
    let to_b = h.take_for_b();
    assert_eq!(to_b.iter().map(method).collect::<Vec<_>>(), vec!["BYE"]);
    let ev = h.take_events();
    assert_eq!(
        ev,
        vec![
            SessionEvent::MediaDown { call },
            SessionEvent::CallEnded {
                call,
                reason: EndReason::Bye(Leg::A)
            }
        ]
    );
    assert!(h.b2bua.ports().live.is_empty(), "ports released");
    let report = h.b2bua.take_license_report();
    assert_eq!(
        (
            report.aggregate,
            report.peak_aggregate,
            report.peak_enhanced,
            report.standard_peak()
        ),
        (0, 1, 1, 0)
    );
    assert_eq!(
        h.b2bua.take_license_report().peak_aggregate,
        0,
        "peaks reset per interval"
    );
    h.send_from_b(&answer(request(&to_b[0]), 200, "btag", B_ADDR, None));
    assert_eq!(h.b2bua.call_count(), 0);
}

#[test]
fn fork_request_errors_go_back_as_status_info() {
    let (mut h, tag, _) = established();
    h.take_events();
    let cases: [(&[u8], &str); 3] = [
        (b"{not json", "JSON parse failure"),
        (
            br#"{"type":"STOP","call-guid":"6F0C9A2E1D3B11EEB5D6000C29F1A2B3"}"#,
            "Invalid Stop Fork Request",
        ),
        (
            br#"{"type":"START","call-guid":"AB","url":"ws://a.example","port":"8080"}"#,
            "Unexpected format or content in JSON",
        ),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let cseq = 10 + i as u32;
        h.send_from_a(&a_in_dialog(
            "INFO",
            cseq,
            &format!("z9hG4bKe{i}"),
            &tag,
            Some(FORK_CT),
            body,
        ));
        let to_a = h.take_for_a();
        assert_eq!(
            to_a.iter()
                .map(|m| (code(m), method(m)))
                .collect::<Vec<_>>(),
            vec![(200, "INFO".into()), (0, "INFO".into())]
        );
        let v = json_of(&to_a[1]);
        assert_eq!(
            (v["state"].as_str(), v["status"].as_str()),
            (Some("ERROR"), Some(*want))
        );
    }
    assert!(h.take_events().is_empty());
    assert_eq!(h.b2bua.counts().enhanced, 0);
}

#[test]
fn fork_start_rejected_for_non_g711_call() {
    let mut h = Harness::new();
    h.send_from_a(&invite(
        "6777",
        "z9hG4bKg7",
        &sdp("198.51.100.7", 16384, "18 0", ""),
    ));
    let b_inv = request(&h.take_for_b()[0]).clone();
    h.send_from_b(&answer(
        &b_inv,
        200,
        "btag",
        B_ADDR,
        Some(&sdp("203.0.113.20", 20000, "18", "")),
    ));
    let tag = message::keys(&h.take_for_a()[1])
        .and_then(|k| k.to_tag)
        .expect("tag");
    h.send_from_a(&a_in_dialog(
        "INFO",
        2,
        "z9hG4bKi",
        &tag,
        Some(FORK_CT),
        start_json().as_bytes(),
    ));
    let to_a = h.take_for_a();
    assert_eq!(json_of(&to_a[1])["status"], "Codec is not supported");
}

#[test]
fn reinvite_hold_and_codec_change_are_reported_and_reanchored() {
    let (mut h, tag, _) = established();
    h.take_events();
    let hold = sdp("198.51.100.7", 16384, "0 101", "a=sendonly\r\n");
    h.send_from_a(&a_in_dialog(
        "INVITE",
        2,
        "z9hG4bKre1",
        &tag,
        Some("application/sdp"),
        hold.as_bytes(),
    ));
    assert_eq!(
        h.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![100]
    );
    let to_b = h.take_for_b();
    let re = request(&to_b[0]).clone();
    assert_eq!(re.method, Method::Invite);
    let off = Sdp::parse(&re.body).expect("sdp").audio().expect("audio");
    assert_eq!(off.addr.to_string(), "192.0.2.10");
    assert_eq!(off.direction, Direction::SendOnly);
    h.send_from_b(&answer(
        &re,
        200,
        "btag",
        B_ADDR,
        Some(&sdp("203.0.113.20", 20000, "0 101", "a=recvonly\r\n")),
    ));
    assert_eq!(
        h.take_for_b().iter().map(method).collect::<Vec<_>>(),
        vec!["ACK"]
    );
    assert_eq!(
        h.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![200]
    );
    let ev = h.take_events();
    let holds: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            SessionEvent::MediaChanged { leg, media, .. } => Some((*leg, media.hold)),
            _ => None,
        })
        .collect();
    assert_eq!(holds, vec![(Leg::A, true), (Leg::B, true)]);
    // Resume with A-law: codec change shows up.
    let resume = sdp("198.51.100.7", 16384, "8 101", "");
    h.send_from_a(&a_in_dialog(
        "INVITE",
        3,
        "z9hG4bKre2",
        &tag,
        Some("application/sdp"),
        resume.as_bytes(),
    ));
    let re = request(&h.take_for_b()[0]).clone();
    h.send_from_b(&answer(
        &re,
        200,
        "btag",
        B_ADDR,
        Some(&sdp("203.0.113.20", 20000, "8 101", "")),
    ));
    let ev = h.take_events();
    let SessionEvent::MediaChanged { media, .. } = &ev[0] else {
        panic!("{ev:?}")
    };
    assert!(!media.hold);
    assert_eq!(
        media.codec.as_ref().and_then(|c| c.name.as_deref()),
        Some("PCMA")
    );
}

#[test]
fn reinvite_with_multipart_fork_start() {
    let (mut h, tag, _) = established();
    h.take_events();
    let parts = vec![
        multipart::Part::new(
            "application/sdp",
            sdp("198.51.100.7", 16384, "0 101", "").into_bytes(),
        ),
        multipart::Part::new(FORK_CT, start_json().into_bytes()),
    ];
    let (ct, body) = multipart::build("xdpfork-test", &parts).expect("build");
    h.send_from_a(&a_in_dialog(
        "INVITE",
        2,
        "z9hG4bKmp",
        &tag,
        Some(&ct),
        &body,
    ));
    let ev = h.take_events();
    assert!(
        matches!(
            ev.as_slice(),
            [SessionEvent::ForkRequest {
                request: ForkRequest::Start(_),
                ..
            }]
        ),
        "{ev:?}"
    );
    let re = request(&h.take_for_b()[0]).clone();
    assert_eq!(
        header_values(&re.headers, "Content-Type"),
        vec!["application/sdp"],
        "only SDP goes to B"
    );
    // Mixing carriers in one call is refused: STOP by INFO after START by re-INVITE.
    let stop = format!(r#"{{"type":"STOP","call-guid":"{GUID}"}}"#);
    h.send_from_a(&a_in_dialog(
        "INFO",
        3,
        "z9hG4bKst",
        &tag,
        Some(FORK_CT),
        stop.as_bytes(),
    ));
    let to_a = h.take_for_a();
    let info = to_a
        .iter()
        .find(|m| method(m) == "INFO" && code(m) == 0)
        .expect("status INFO");
    assert_eq!(json_of(info)["status"], "Unsupported flow");
}

#[test]
fn cancel_race_b_answers_after_cancel() {
    let mut h = Harness::new();
    h.send_from_a(&invite(
        "6777",
        "z9hG4bKc1",
        &sdp("198.51.100.7", 16384, "0", ""),
    ));
    h.take_for_a();
    let b_inv = request(&h.take_for_b()[0]).clone();
    h.send_from_b(&answer(&b_inv, 180, "btag", B_ADDR, None));
    h.take_for_a();
    let cancel = {
        let SipMessage::Request(inv) = invite("6777", "z9hG4bKc1", "") else {
            unreachable!("request")
        };
        let text = message::encode(&SipMessage::Request(inv))
            .split(|b| *b == b'\n')
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
            .replacen("INVITE sip:", "CANCEL sip:", 1)
            .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
        message::parse(text.as_bytes()).expect("cancel parses")
    };
    h.send_from_a(&cancel);
    let to_a = h.take_for_a();
    let mut got: Vec<(u16, String)> = to_a.iter().map(|m| (code(m), method(m))).collect();
    got.sort();
    assert_eq!(got, vec![(200, "CANCEL".into()), (487, "INVITE".into())]);
    let to_b = h.take_for_b();
    assert_eq!(to_b.iter().map(method).collect::<Vec<_>>(), vec!["CANCEL"]);
    let k_inv = message::keys(&SipMessage::Request(b_inv.clone())).expect("keys");
    let k_can = message::keys(&to_b[0]).expect("keys");
    assert_eq!(
        k_inv.branch, k_can.branch,
        "CANCEL reuses the INVITE branch (§9.1)"
    );
    // B's 200 crosses the CANCEL: ACK it and BYE.
    h.send_from_b(&answer(
        &b_inv,
        200,
        "btag",
        B_ADDR,
        Some(&sdp("203.0.113.20", 20000, "0", "")),
    ));
    let to_b = h.take_for_b();
    assert_eq!(
        to_b.iter().map(method).collect::<Vec<_>>(),
        vec!["ACK", "BYE"]
    );
    let ev = h.take_events();
    assert!(
        matches!(
            ev.last(),
            Some(SessionEvent::CallEnded {
                reason: EndReason::Cancelled,
                ..
            })
        ),
        "{ev:?}"
    );
    assert!(h.take_for_a().is_empty(), "A already has its 487");
    assert!(h.b2bua.ports().live.is_empty());
}

#[test]
fn cancel_before_provisional_waits_for_it() {
    let mut h = Harness::new();
    h.send_from_a(&invite(
        "6777",
        "z9hG4bKc2",
        &sdp("198.51.100.7", 16384, "0", ""),
    ));
    let b_inv = request(&h.take_for_b()[0]).clone();
    let text = String::from_utf8(message::encode(&invite("6777", "z9hG4bKc2", "")))
        .expect("utf8")
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    h.send_from_a(&message::parse(text.as_bytes()).expect("cancel"));
    assert!(
        h.take_for_b().is_empty(),
        "no CANCEL before a provisional (§9.1)"
    );
    h.send_from_b(&answer(&b_inv, 180, "btag", B_ADDR, None));
    assert_eq!(
        h.take_for_b().iter().map(method).collect::<Vec<_>>(),
        vec!["CANCEL"]
    );
    h.send_from_b(&answer(&b_inv, 487, "btag", B_ADDR, None));
    let ev = h.take_events();
    assert!(
        matches!(
            ev.as_slice(),
            [SessionEvent::CallEnded {
                reason: EndReason::Cancelled,
                ..
            }]
        ),
        "{ev:?}"
    );
}

#[test]
fn out_of_dialog_and_malformed_requests() {
    let mut h = Harness::new();
    // INFO outside any dialog → 481 (reference: INFO outside a call gets 4xx).
    let info = a_in_dialog(
        "INFO",
        1,
        "z9hG4bKo1",
        "nosuchtag",
        Some(FORK_CT),
        start_json().as_bytes(),
    );
    h.send_from_a(&info);
    assert_eq!(
        h.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![481]
    );
    let text = String::from_utf8(message::encode(&info))
        .expect("utf8")
        .replace(";tag=nosuchtag", "");
    h.send_raw(A_ADDR, text.as_bytes());
    assert_eq!(
        h.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![481]
    );
    // Malformed: 400 with the reason.
    h.send_raw(A_ADDR, b"INVITE sip:6777@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKm\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:6777@x>\r\nCall-ID: m\r\nCSeq: 1 BYE\r\n\r\n");
    let r = h.take_for_a();
    assert_eq!(r.iter().map(code).collect::<Vec<_>>(), vec![400]);
    let raw = &h.wire.last().expect("sent").1;
    assert!(raw.starts_with(b"SIP/2.0 400 CSeq Method Mismatch\r\n"));
    // Unknown method: 501 with Allow.
    h.send_raw(A_ADDR, b"FOO sip:x@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKf\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: f\r\nCSeq: 1 FOO\r\n\r\n");
    let raw = String::from_utf8(h.wire.last().expect("sent").1.clone()).expect("utf8");
    assert!(raw.starts_with("SIP/2.0 501 Not Implemented\r\n"), "{raw}");
    assert!(raw.contains(&format!("Allow: {ALLOW}\r\n")));
    assert!(h.take_for_a().is_empty());
    // Known but unsupported method: 405 with Allow.
    let reg = String::from_utf8(message::encode(&invite("6777", "z9hG4bKr", "")))
        .expect("utf8")
        .replace("INVITE", "REGISTER");
    h.send_raw(A_ADDR, reg.as_bytes());
    let r = h.take_for_a();
    assert_eq!(r.iter().map(code).collect::<Vec<_>>(), vec![405]);
    let SipMessage::Response(resp) = &r[0] else {
        panic!("response")
    };
    assert_eq!(header_values(&resp.headers, "Allow"), vec![ALLOW]);
    // Max-Forwards 0 → 483; no route → 404.
    let mf0 = String::from_utf8(message::encode(&invite(
        "6777",
        "z9hG4bKmf",
        &sdp("198.51.100.7", 1, "0", ""),
    )))
    .expect("utf8")
    .replace("Max-Forwards: 70", "Max-Forwards: 0");
    h.send_raw(A_ADDR, mf0.as_bytes());
    assert_eq!(
        h.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![100, 483]
    );
    h.send_from_a(&invite(
        "7777",
        "z9hG4bKnr",
        &sdp("198.51.100.7", 1, "0", ""),
    ));
    assert_eq!(
        h.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![100, 404]
    );
    assert!(h.take_for_b().is_empty());
    assert_eq!(h.b2bua.call_count(), 0);
}

#[test]
fn lost_invite_to_b_is_retransmitted_and_silent_b_times_out() {
    let mut h = Harness::new();
    h.drop = Some((crate::core::testing::Dir::Out, 2)); // the 100 to A and the INVITE to B
    h.send_from_a(&invite(
        "6777",
        "z9hG4bKl1",
        &sdp("198.51.100.7", 16384, "0", ""),
    ));
    assert!(h.take_for_b().is_empty());
    h.advance(Duration::from_millis(500));
    assert_eq!(
        h.take_for_b().iter().map(method).collect::<Vec<_>>(),
        vec!["INVITE"],
        "Timer A"
    );
    h.advance(Duration::from_secs(40));
    let to_a = h.take_for_a();
    assert!(
        to_a.iter().any(|m| code(m) == 408),
        "Timer B → 408 to A: {to_a:?}"
    );
    let ev = h.take_events();
    assert!(
        matches!(
            ev.as_slice(),
            [SessionEvent::CallEnded {
                reason: EndReason::Timeout,
                ..
            }]
        ),
        "{ev:?}"
    );
    assert!(h.b2bua.ports().live.is_empty());
}

#[test]
fn route_patterns() {
    let p = RoutePattern::Pattern("6X.7".into());
    assert_eq!(p.score("6127"), Some(2));
    assert_eq!(p.score("612"), None);
    assert_eq!(p.score("7127"), None);
    assert_eq!(
        RoutePattern::Prefix("+1".into()).score("+14155550100"),
        Some(2)
    );
    assert_eq!(RoutePattern::Prefix("+1".into()).score("+44"), None);
}

// RFC 4028 session timers and the maximum call duration.

/// The Reason headers of the BYEs in `msgs` (one entry per BYE).
fn bye_reasons(msgs: &[SipMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter(|m| code(m) == 0 && method(m) == "BYE")
        .map(|m| header_values(&request(m).headers, "Reason"))
        .collect()
}

/// Answers every BYE in `msgs` with 200 from `peer`.
fn ok_byes(h: &mut Harness, msgs: &[SipMessage], from_b: bool) {
    for m in msgs.iter().filter(|m| code(m) == 0 && method(m) == "BYE") {
        let ok = answer(
            request(m),
            200,
            "x",
            if from_b { B_ADDR } else { A_ADDR },
            None,
        );
        if from_b {
            h.send_from_b(&ok);
        } else {
            h.send_from_a(&ok);
        }
    }
}

/// Checks a release by timer: one BYE per leg with `reason`, media down, call ended with
/// `why`, counts and ports back, no call timer left.
fn assert_released(h: &mut Harness, reason: &str, why: EndReason) {
    let to_a = h.take_for_a();
    let to_b = h.take_for_b();
    assert_eq!(
        bye_reasons(&to_a),
        vec![vec![reason.to_string()]],
        "{to_a:?}"
    );
    assert_eq!(
        bye_reasons(&to_b),
        vec![vec![reason.to_string()]],
        "{to_b:?}"
    );
    let ev = h.take_events();
    assert!(
        matches!(
            ev.as_slice(),
            [
                SessionEvent::MediaDown { .. },
                SessionEvent::CallEnded { reason, .. }
            ] if *reason == why
        ),
        "{ev:?}"
    );
    assert_eq!(h.b2bua.call_count(), 0);
    assert_eq!(h.b2bua.counts().aggregate, 0);
    assert!(h.b2bua.ports().live.is_empty(), "ports released");
    assert_eq!(h.b2bua.timeout_reason(), None);
    ok_byes(h, &to_a, false);
    ok_byes(h, &to_b, true);
}

const SE_REASON: &str = "SIP;cause=408;text=\"Session expired\"";
const MAX_REASON: &str = "Q.850;cause=102;text=\"Maximum call duration\"";

#[test]
fn session_expires_without_refresh_releases_both_legs() {
    let (mut h, _, b_inv) = established_in(
        Harness::new(),
        &[
            ("Session-Expires", "90;refresher=uac"),
            ("Supported", "100rel, timer"),
        ],
        &[
            ("Session-Expires", "90;refresher=uac"),
            ("Require", "timer"),
        ],
    );
    // The negotiation passes through: only the timer tag, our Min-SE added.
    assert_eq!(
        header_values(&b_inv.headers, "Session-Expires"),
        vec!["90;refresher=uac"]
    );
    assert_eq!(header_values(&b_inv.headers, "Min-SE"), vec!["90"]);
    assert_eq!(header_values(&b_inv.headers, "Supported"), vec!["timer"]);
    let start = h.now;
    h.take_events();
    // §10: BYE at 90 - min(32, 30) = 60 s after the 2xx, not before.
    h.advance(Duration::from_secs(59));
    assert!(bye_reasons(&h.take_for_a()).is_empty());
    assert!(bye_reasons(&h.take_for_b()).is_empty());
    assert_eq!(
        h.b2bua.timeout_reason().map(|(_, t, at)| (t, at)),
        Some((CallTimer::SessionExpires, start + Duration::from_secs(60)))
    );
    h.advance(Duration::from_secs(1));
    assert_released(&mut h, SE_REASON, EndReason::SessionExpired);
}

#[test]
fn session_timer_headers_reach_the_caller_in_the_2xx() {
    let mut h = Harness::new();
    h.send_from_a(&with_headers(
        invite("6777", "z9hG4bKs2", &sdp("198.51.100.7", 16384, "0", "")),
        &[("Supported", "timer")],
    ));
    h.take_for_a();
    let b_inv = request(&h.take_for_b()[0]).clone();
    h.send_from_b(&with_headers(
        answer(
            &b_inv,
            200,
            "btag",
            B_ADDR,
            Some(&sdp("203.0.113.20", 20000, "0", "")),
        ),
        &[
            ("Session-Expires", "1800;refresher=uas"),
            ("Require", "timer"),
        ],
    ));
    let to_a = h.take_for_a();
    let SipMessage::Response(ok) = &to_a[0] else {
        panic!("{to_a:?}")
    };
    assert_eq!(
        header_values(&ok.headers, "Session-Expires"),
        vec!["1800;refresher=uas"]
    );
    assert_eq!(header_values(&ok.headers, "Require"), vec!["timer"]);
    // 1800 s interval: BYE at 1800 - 32 s.
    let (_, t, at) = h.b2bua.timeout_reason().expect("armed");
    assert_eq!(
        (t, at),
        (CallTimer::SessionExpires, h.now + Duration::from_secs(1768))
    );
}

#[test]
fn refresh_rearms_the_session_timer() {
    let (mut h, tag, _) = established_in(
        Harness::new(),
        &[
            ("Session-Expires", "120;refresher=uac"),
            ("Supported", "timer"),
        ],
        &[
            ("Session-Expires", "120;refresher=uac"),
            ("Require", "timer"),
        ],
    );
    h.take_events();
    // First deadline: 120 - 32 = 88 s. The caller refreshes at 80 s with a re-INVITE.
    h.advance(Duration::from_secs(80));
    let refresh_at = h.now;
    h.send_from_a(&with_headers(
        a_in_dialog(
            "INVITE",
            2,
            "z9hG4bKref1",
            &tag,
            Some("application/sdp"),
            sdp("198.51.100.7", 16384, "0 101", "").as_bytes(),
        ),
        &[
            ("Session-Expires", "150;refresher=uac"),
            ("Supported", "timer"),
        ],
    ));
    let re = request(&h.take_for_b()[0]).clone();
    assert_eq!(
        header_values(&re.headers, "Session-Expires"),
        vec!["150;refresher=uac"],
        "the refresh passes through"
    );
    h.send_from_b(&with_headers(
        answer(
            &re,
            200,
            "btag",
            B_ADDR,
            Some(&sdp("203.0.113.20", 20000, "0 101", "")),
        ),
        &[
            ("Session-Expires", "150;refresher=uac"),
            ("Require", "timer"),
        ],
    ));
    let to_a = h.take_for_a();
    let ok = to_a.iter().find(|m| code(m) == 200).expect("200 to A");
    let SipMessage::Response(ok) = ok else {
        unreachable!("a code")
    };
    assert_eq!(
        header_values(&ok.headers, "Session-Expires"),
        vec!["150;refresher=uac"]
    );
    h.take_events(); // the refresh's offer differs from the first one: MediaChanged
                     // New interval 150 s: BYE at refresh + 150 - 32 = 118 s, so nothing at the old 88 s.
    h.advance(Duration::from_secs(30));
    assert!(bye_reasons(&h.take_for_b()).is_empty(), "old deadline gone");
    assert_eq!(
        h.b2bua.timeout_reason().map(|(_, _, at)| at),
        Some(refresh_at + Duration::from_secs(118))
    );
    h.advance(refresh_at + Duration::from_secs(118) - h.now);
    assert_released(&mut h, SE_REASON, EndReason::SessionExpired);
}

#[test]
fn a_refresh_without_session_expires_ends_the_timer() {
    let (mut h, tag, _) = established_in(
        Harness::new(),
        &[("Session-Expires", "90"), ("Supported", "timer")],
        &[("Session-Expires", "90;refresher=uac")],
    );
    h.send_from_a(&a_in_dialog(
        "INVITE",
        2,
        "z9hG4bKref2",
        &tag,
        Some("application/sdp"),
        sdp("198.51.100.7", 16384, "0 101", "").as_bytes(),
    ));
    let re = request(&h.take_for_b()[0]).clone();
    assert!(header_values(&re.headers, "Session-Expires").is_empty());
    h.send_from_b(&answer(
        &re,
        200,
        "btag",
        B_ADDR,
        Some(&sdp("203.0.113.20", 20000, "0 101", "")),
    ));
    assert_eq!(
        h.b2bua.timeout_reason(),
        None,
        "§7.2: no Session-Expires, no expiry"
    );
    h.advance(Duration::from_secs(3600));
    assert!(bye_reasons(&h.take_for_a()).is_empty());
    assert_eq!(h.b2bua.call_count(), 1);
}

#[test]
fn session_expires_below_min_se_gets_422() {
    let mut h = Harness::with_config(|c| c.min_se = Duration::from_secs(1800));
    h.send_from_a(&with_headers(
        invite("6777", "z9hG4bKs4", &sdp("198.51.100.7", 16384, "0", "")),
        &[("Session-Expires", "90"), ("Supported", "timer")],
    ));
    let to_a = h.take_for_a();
    assert_eq!(to_a.iter().map(code).collect::<Vec<_>>(), vec![100, 422]);
    let SipMessage::Response(r) = &to_a[1] else {
        unreachable!("a code")
    };
    assert_eq!(header_values(&r.headers, "Min-SE"), vec!["1800"]);
    let raw = String::from_utf8(h.wire.last().expect("sent").1.clone()).expect("utf8");
    assert!(
        raw.starts_with("SIP/2.0 422 Session Interval Too Small\r\n"),
        "{raw}"
    );
    assert!(h.take_for_b().is_empty());
    assert_eq!(h.b2bua.call_count(), 0);
    assert!(h.b2bua.ports().live.is_empty());

    // A caller without Supported: timer cannot act on a 422 (§8.1): raised on the way through.
    h.send_from_a(&with_headers(
        invite("6777", "z9hG4bKs5", &sdp("198.51.100.7", 16384, "0", "")),
        &[("Session-Expires", "90")],
    ));
    let b_inv = request(&h.take_for_b()[0]).clone();
    assert_eq!(
        header_values(&b_inv.headers, "Session-Expires"),
        vec!["1800"]
    );
    assert_eq!(header_values(&b_inv.headers, "Min-SE"), vec!["1800"]);
    // B answering 422 itself: relayed with its Min-SE.
    h.take_for_a();
    h.send_from_b(&with_headers(
        answer(&b_inv, 422, "btag", B_ADDR, None),
        &[("Min-SE", "3600")],
    ));
    let to_a = h.take_for_a();
    let r = to_a.iter().find(|m| code(m) == 422).expect("422 relayed");
    let SipMessage::Response(r) = r else {
        unreachable!("a code")
    };
    assert_eq!(header_values(&r.headers, "Min-SE"), vec!["3600"]);
}

#[test]
fn reinvite_below_min_se_gets_422_and_is_not_relayed() {
    let (mut h, tag, _) = established_in(
        Harness::with_config(|c| c.min_se = Duration::from_secs(600)),
        &[("Session-Expires", "900"), ("Supported", "timer")],
        &[("Session-Expires", "900;refresher=uac")],
    );
    let armed = h.b2bua.timeout_reason();
    h.send_from_a(&with_headers(
        a_in_dialog(
            "INVITE",
            2,
            "z9hG4bKs6",
            &tag,
            Some("application/sdp"),
            sdp("198.51.100.7", 16384, "0 101", "").as_bytes(),
        ),
        &[("Session-Expires", "300"), ("Supported", "timer")],
    ));
    let to_a = h.take_for_a();
    assert!(to_a.iter().any(|m| code(m) == 422), "{to_a:?}");
    assert!(h.take_for_b().is_empty());
    assert_eq!(
        h.b2bua.timeout_reason(),
        armed,
        "a refused refresh re-arms nothing"
    );
}

#[test]
fn max_duration_releases_the_call() {
    let h = Harness::with_config(|c| c.max_call_duration = Some(Duration::from_secs(3)));
    let (mut h, _, _) = established_in(h, &[], &[]);
    h.take_events();
    h.advance(Duration::from_millis(2999));
    assert!(bye_reasons(&h.take_for_a()).is_empty());
    assert_eq!(h.b2bua.call_count(), 1);
    h.advance(Duration::from_millis(1));
    assert_released(&mut h, MAX_REASON, EndReason::MaxDuration);
    // The BYEs were answered: every transaction drains, nothing else is sent.
    h.advance(Duration::from_secs(120));
    assert!(h.take_for_a().is_empty());
    assert!(h.take_for_b().is_empty());
    assert_eq!(h.b2bua.poll_timeout(), None);
}

#[test]
fn the_sooner_of_session_expiry_and_max_duration_wins() {
    let h = Harness::with_config(|c| c.max_call_duration = Some(Duration::from_secs(30)));
    let (mut h, _, _) = established_in(
        h,
        &[("Session-Expires", "90"), ("Supported", "timer")],
        &[("Session-Expires", "90;refresher=uas")],
    );
    h.take_events();
    h.advance(Duration::from_secs(30));
    assert_released(&mut h, MAX_REASON, EndReason::MaxDuration);
    h.advance(Duration::from_secs(60));
    assert!(
        bye_reasons(&h.take_for_a()).is_empty(),
        "session timer went with the call"
    );
}

#[test]
fn nothing_fires_after_a_normal_bye() {
    let h = Harness::with_config(|c| c.max_call_duration = Some(Duration::from_secs(10)));
    let (mut h, tag, _) = established_in(
        h,
        &[("Session-Expires", "90"), ("Supported", "timer")],
        &[("Session-Expires", "90;refresher=uac")],
    );
    h.take_events();
    h.advance(Duration::from_secs(5));
    h.send_from_a(&a_in_dialog("BYE", 2, "z9hG4bKbye2", &tag, None, b""));
    let to_b = h.take_for_b();
    assert_eq!(
        bye_reasons(&to_b),
        vec![Vec::<String>::new()],
        "relayed BYE, no Reason"
    );
    ok_byes(&mut h, &to_b, true);
    assert_eq!(h.b2bua.timeout_reason(), None);
    h.take_for_a();
    h.take_events();
    h.advance(Duration::from_secs(600));
    assert!(h.take_for_a().is_empty());
    assert!(h.take_for_b().is_empty());
    assert!(h.take_events().is_empty());
}

#[test]
fn a_bot_number_is_answered_here_and_its_bye_ends_the_call_without_a_leg_b() {
    let mut h = Harness::with_config(|c| {
        c.bots.push(super::BotRoute {
            pattern: RoutePattern::Pattern("7000".into()),
            speech_server: "bot".into(),
        })
    });
    h.send_from_a(&invite(
        "7000",
        "z9hG4bKbot1",
        &sdp("198.51.100.7", 16384, "18 8 0 101", "a=ptime:20\r\n"),
    ));
    assert!(h.take_for_b().is_empty(), "no callee");
    let to_a = h.take_for_a();
    let ok = to_a.iter().find(|m| code(m) == 200).expect("answered");
    let ans = Sdp::parse(ok.body()).expect("sdp").audio().expect("audio");
    assert_eq!(ans.addr.to_string(), "192.0.2.10");
    let pts: Vec<u8> = ans.codecs.iter().map(|c| c.pt).collect();
    assert_eq!(
        pts,
        [8, 101],
        "the offer's first G.711 and its telephone-event"
    );
    let tag = message::keys(ok).and_then(|k| k.to_tag).expect("our tag");
    let ev = h.take_events();
    let [SessionEvent::BotUp { bot, .. }] = &ev[..] else {
        panic!("one BotUp: {ev:?}");
    };
    let media = &bot.media;
    assert_eq!(bot.route.speech_server, "bot");
    assert_eq!(
        media.remote,
        Some("198.51.100.7:16384".parse().expect("addr"))
    );
    assert_eq!(media.local_port, ans.port);
    assert_eq!(media.codec.as_ref().map(|c| c.pt), Some(8));
    assert_eq!(h.b2bua.counts().aggregate, 1);

    h.send_from_a(&a_in_dialog("ACK", 1, "z9hG4bKbotack", &tag, None, b""));
    // A re-INVITE is refused: the bot call keeps its first media.
    let reinvite = a_in_dialog(
        "INVITE",
        2,
        "z9hG4bKbotre",
        &tag,
        Some("application/sdp"),
        sdp("198.51.100.7", 16386, "0", "").as_bytes(),
    );
    h.send_from_a(&reinvite);
    assert_eq!(
        h.take_for_a()
            .iter()
            .map(code)
            .filter(|c| *c >= 200)
            .collect::<Vec<_>>(),
        vec![488]
    );
    h.send_from_a(&a_in_dialog("BYE", 3, "z9hG4bKbotbye", &tag, None, b""));
    assert_eq!(
        h.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![200]
    );
    assert!(h.take_for_b().is_empty(), "nobody else to say BYE to");
    let ev = h.take_events();
    assert!(
        ev.iter()
            .any(|e| matches!(e, SessionEvent::MediaDown { .. }))
            && ev
                .iter()
                .any(|e| matches!(e, SessionEvent::CallEnded { .. })),
        "{ev:?}"
    );
    assert_eq!(h.b2bua.counts().aggregate, 0);

    // No G.711 in the offer: refused.
    h.send_from_a(&invite(
        "7000",
        "z9hG4bKbot2",
        &sdp("198.51.100.7", 16390, "18", ""),
    ));
    assert_eq!(
        h.take_for_a()
            .iter()
            .map(code)
            .filter(|c| *c >= 200)
            .collect::<Vec<_>>(),
        vec![488]
    );
}

#[test]
fn a_bot_call_ends_when_its_fork_fails_for_good_not_when_it_reconnects() {
    let mut h = bot_harness();
    let (tag, call, guid) = answered_bot_call(&mut h, "z9hG4bKbotf");
    h.send_from_a(&a_in_dialog("ACK", 1, "z9hG4bKbotfack", &tag, None, b""));
    let status = |state, status| StatusReport {
        call_guid: Some(guid.clone()),
        request: None,
        state,
        status,
        streams: vec![],
    };
    // The bot's connection drops: fork-agent reconnects, the call waits (no controller to tell).
    h.connection_status(
        call,
        status(
            ForkState::Reconnecting,
            Some(crate::core::fork_request::ForkError::ConnectionClosed),
        ),
    );
    h.connection_status(call, status(ForkState::Started, None));
    assert!(h.take_for_a().is_empty(), "nothing to the caller");
    assert_eq!(h.b2bua.counts().aggregate, 1);
    // fork-agent gives up: the caller would hear nothing more, so the call ends.
    h.connection_status(
        call,
        status(
            ForkState::Error,
            Some(crate::core::fork_request::ForkError::ConnectionFailed),
        ),
    );
    let to_a = h.take_for_a();
    assert_eq!(
        bye_reasons(&to_a),
        vec![vec![REASON_BOT_FAILED.to_owned()]],
        "BYE to the caller with the reason"
    );
    assert!(h.take_for_b().is_empty(), "no leg B");
    let ev = h.take_events();
    assert!(
        ev.iter()
            .any(|e| matches!(e, SessionEvent::CallEnded { .. })),
        "{ev:?}"
    );
    assert_eq!(h.b2bua.counts().aggregate, 0);
}

#[test]
fn a_bot_that_fails_before_the_callers_ack_ends_the_call_once_the_ack_is_in() {
    let mut h = bot_harness();
    let (tag, call, guid) = answered_bot_call(&mut h, "z9hG4bKbotg");
    h.fork_status(
        call,
        StatusReport {
            call_guid: Some(guid),
            request: Some(ForkKind::Start),
            state: ForkState::Error,
            status: Some(crate::core::fork_request::ForkError::ConnectionFailed),
            streams: vec![],
        },
    );
    assert!(
        bye_reasons(&h.take_for_a()).is_empty(),
        "RFC 3261 §15: no BYE before the ACK"
    );
    h.send_from_a(&a_in_dialog("ACK", 1, "z9hG4bKbotgack", &tag, None, b""));
    assert_eq!(
        bye_reasons(&h.take_for_a()),
        vec![vec![REASON_BOT_FAILED.to_owned()]]
    );
}

#[test]
fn a_fork_request_on_a_bot_call_is_refused_not_left_waiting() {
    let mut h = bot_harness();
    let (tag, _, _) = answered_bot_call(&mut h, "z9hG4bKbotj");
    h.send_from_a(&a_in_dialog("ACK", 1, "z9hG4bKbotjack", &tag, None, b""));
    let info = |cseq, branch| {
        a_in_dialog(
            "INFO",
            cseq,
            branch,
            &tag,
            Some(FORK_CT),
            start_json().as_bytes(),
        )
    };
    // The controller (the harness's caller) hears at once that nothing will act on it.
    h.send_from_a(&info(2, "z9hG4bKbotj2"));
    assert_eq!(
        h.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![488]
    );
    // A plain INFO is still answered 200.
    h.send_from_a(&a_in_dialog("INFO", 3, "z9hG4bKbotj3", &tag, None, b""));
    assert_eq!(
        h.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![200]
    );
    assert!(
        h.take_events().is_empty(),
        "no fork request reaches anybody"
    );
}
