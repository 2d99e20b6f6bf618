//! Status INFOs of a fork's speech-server connection on the two-sided harness with a stepped
//! clock: at most one per fork per second, the newest state winning, the last one never lost,
//! statuses that answer the controller going out at once and after a held one, the fork's end
//! taking effect before its INFO goes out.

use super::tests::{established, start_json, FORK_CT, GUID};
use super::*;
use crate::core::fork_request::{ForkError, ForkKind, ForkState, StatusReport};
use crate::core::status_pacer::STATUS_INTERVAL;
use crate::core::testing::*;

fn report(request: Option<ForkKind>, state: ForkState, status: Option<ForkError>) -> StatusReport {
    StatusReport {
        call_guid: Some(GUID.into()),
        request,
        state,
        status,
        streams: vec![],
    }
}

/// (state, status) of each status INFO sent to the controller (leg A) since the last call; each
/// is answered 200, so none is retransmitted while the clock steps on.
fn infos(h: &mut Harness) -> Vec<(String, Option<String>)> {
    let mut seen = vec![];
    for m in h.take_for_a() {
        let SipMessage::Request(req) = &m else {
            continue;
        };
        if req.method != Method::Info {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&req.body).expect("status JSON");
        seen.push((
            v["state"].as_str().unwrap_or_default().to_owned(),
            v["status"].as_str().map(str::to_owned),
        ));
        h.send_from_a(&answer(req, 200, "atag", A_ADDR, None));
    }
    seen
}

fn state(s: &str, status: Option<&str>) -> (String, Option<String>) {
    (s.to_owned(), status.map(str::to_owned))
}

/// An established call whose controller (leg A) started fork [`GUID`], CONNECTING and STARTED
/// reported; returns the harness, our tag on leg A and the call.
fn started() -> (Harness, String, CallHandle) {
    let (mut h, tag, _) = established();
    h.take_events();
    h.send_from_a(&a_in_dialog(
        "INFO",
        2,
        "z9hG4bKstart",
        &tag,
        Some(FORK_CT),
        start_json().as_bytes(),
    ));
    let ev = h.take_events();
    let [SessionEvent::ForkRequest { call, .. }] = ev[..] else {
        panic!("{ev:?}")
    };
    h.take_for_a();
    let start = Some(ForkKind::Start);
    h.fork_status(call, report(start, ForkState::Connecting, None));
    h.fork_status(call, report(start, ForkState::Started, None));
    assert_eq!(
        infos(&mut h),
        vec![state("CONNECTING", None), state("STARTED", None)],
        "answers to the controller are not held"
    );
    (h, tag, call)
}

#[test]
fn a_flapping_connection_sends_one_status_per_second_ending_with_the_newest() {
    let (mut h, _, call) = started();
    let lost = |e| report(None, ForkState::Reconnecting, Some(e));
    let back = report(None, ForkState::Started, None);
    // Lost right after STARTED: held for the rest of the second.
    h.connection_status(call, lost(ForkError::ConnectionClosed));
    assert_eq!(infos(&mut h), vec![]);
    assert_eq!(h.b2bua.pacer.poll_timeout(), Some(h.now + STATUS_INTERVAL));
    h.advance(STATUS_INTERVAL);
    assert_eq!(
        infos(&mut h),
        vec![state("RECONNECTING", Some("Connection closed"))]
    );
    // Back, lost, back again within the next second: only the newest goes out, a second on.
    let t = h.now;
    for step in [
        back.clone(),
        lost(ForkError::TcpConnectionClosed),
        back.clone(),
    ] {
        h.advance(Duration::from_millis(200));
        h.connection_status(call, step);
        assert_eq!(infos(&mut h), vec![]);
    }
    h.advance(t + STATUS_INTERVAL - h.now - Duration::from_millis(1));
    assert_eq!(infos(&mut h), vec![], "not before the second is over");
    h.advance(Duration::from_millis(1));
    assert_eq!(infos(&mut h), vec![state("STARTED", None)]);
    // Quiet for longer than the interval: the next one goes out at once.
    h.advance(Duration::from_secs(5));
    h.connection_status(call, lost(ForkError::TcpConnectionClosed));
    assert_eq!(
        infos(&mut h),
        vec![state("RECONNECTING", Some("TCP Connection closed"))]
    );
}

#[test]
fn giving_up_ends_the_fork_at_once_and_its_held_error_goes_out_before_the_next_answer() {
    let (mut h, tag, call) = started();
    h.connection_status(
        call,
        report(
            None,
            ForkState::Reconnecting,
            Some(ForkError::ConnectionClosed),
        ),
    );
    h.advance(STATUS_INTERVAL);
    infos(&mut h);
    h.connection_status(
        call,
        report(None, ForkState::Error, Some(ForkError::ConnectionFailed)),
    );
    assert_eq!(infos(&mut h), vec![], "held for the rest of the second");
    // The fork is over already: a new START is accepted, not "Invalid Start Fork Request".
    h.send_from_a(&a_in_dialog(
        "INFO",
        3,
        "z9hG4bKrestart",
        &tag,
        Some(FORK_CT),
        start_json().as_bytes(),
    ));
    assert!(
        matches!(
            h.take_events()[..],
            [SessionEvent::ForkRequest {
                request: ForkRequest::Start(_),
                ..
            }]
        ),
        "START allowed again"
    );
    assert_eq!(infos(&mut h), vec![]);
    // The new fork's CONNECTING answers the controller: the held ERROR goes out first.
    h.fork_status(
        call,
        report(Some(ForkKind::Start), ForkState::Connecting, None),
    );
    assert_eq!(
        infos(&mut h),
        vec![
            state("ERROR", Some("Connection failed")),
            state("CONNECTING", None)
        ]
    );
    h.advance(Duration::from_secs(5));
    assert_eq!(infos(&mut h), vec![], "nothing sent twice");
}

#[test]
fn a_status_held_when_the_call_ends_is_dropped() {
    let (mut h, tag, call) = started();
    h.connection_status(
        call,
        report(
            None,
            ForkState::Reconnecting,
            Some(ForkError::ConnectionClosed),
        ),
    );
    h.send_from_a(&a_in_dialog("BYE", 3, "z9hG4bKbye", &tag, None, b""));
    assert_eq!(h.b2bua.call_count(), 0);
    h.advance(Duration::from_secs(5));
    assert_eq!(infos(&mut h), vec![]);
    assert!(h.b2bua.pacer.is_empty(), "no pacing state left");
}
