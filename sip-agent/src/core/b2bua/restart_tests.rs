//! Restart (docs/sip-state.md): an established call's [`CallSnapshot`] goes through the journal
//! encoding, is restored into a fresh B2BUA, and the restored call answers a BYE like the
//! original would: 200 to the peer, BYE on the other leg with the next CSeq, teardown events;
//! the same BYE from a third party gets 403 and with a wrong tag 481.

use super::tests::{established, start_json, FORK_CT};
use super::*;
use crate::core::call_journal::{self, CallRecord, Entry};
use crate::core::media::MediaSnapshot;
use crate::core::testing::*;

const THIRD: &str = "198.51.100.66:5060";

/// The call of `established()`, journalled and restored into a new harness.
fn restored() -> (Harness, String, Request, CallHandle) {
    let (mut h, tag, b_inv) = established();
    let calls = h.b2bua.take_changed();
    assert_eq!(
        calls.len(),
        1,
        "the answered call is marked for the journal"
    );
    let call = calls[0];
    let snap = h
        .b2bua
        .snapshot(call)
        .expect("established calls are journalled");
    // Through the file format, as a restart would read it.
    let line = call_journal::encode(&Entry::Call(Box::new(CallRecord {
        call: snap,
        media_layer: MediaSnapshot::default(),
    })))
    .expect("encode");
    let mut back = call_journal::replay(std::str::from_utf8(&line).expect("utf-8")).calls;
    let rec = back.pop().expect("one call");
    let mut fresh = Harness::new();
    fresh.now = h.now;
    fresh
        .b2bua
        .restore(fresh.now, rec.call.clone())
        .expect("restore");
    assert_eq!(fresh.b2bua.call_count(), 1);
    assert_eq!(fresh.b2bua.counts().aggregate, 1);
    assert!(
        fresh.b2bua.restore(fresh.now, rec.call).is_err(),
        "a second restore of the same call is refused"
    );
    (fresh, tag, b_inv, call)
}

#[test]
fn a_restored_call_answers_the_callers_bye_and_hangs_up_the_callee() {
    let (mut h, tag, b_inv, call) = restored();
    h.send_from_a(&a_in_dialog("BYE", 5, "z9hG4bKbye", &tag, None, b""));
    assert_eq!(
        h.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![200]
    );
    let to_b = h.take_for_b();
    assert_eq!(to_b.len(), 1, "{to_b:?}");
    let bye = request(&to_b[0]);
    assert_eq!(bye.method, Method::Bye);
    let k = message::keys(&to_b[0]).expect("keys");
    let orig = message::keys(&SipMessage::Request(b_inv.clone())).expect("keys");
    assert_eq!(k.call_id, orig.call_id, "leg B's Call-ID");
    assert_eq!(k.from_tag, orig.from_tag, "our leg B tag");
    assert_eq!(k.to_tag.as_deref(), Some("btag"), "the callee's tag");
    assert!(k.cseq > orig.cseq, "CSeq moves on from the INVITE's");
    assert_eq!(
        bye.uri.to_string(),
        format!("sip:peer@{B_ADDR}"),
        "remote target"
    );
    let ev = h.take_events();
    assert!(ev.contains(&SessionEvent::MediaDown { call }), "{ev:?}");
    assert!(ev.contains(&SessionEvent::CallEnded {
        call,
        reason: EndReason::Bye(Leg::A)
    }));
    assert_eq!(h.b2bua.call_count(), 0);
    assert_eq!(h.b2bua.take_changed(), vec![call], "the end is journalled");
    assert!(h.b2bua.snapshot(call).is_none());
}

#[test]
fn a_restored_call_keeps_the_dialog_and_source_rules() {
    let (mut h, tag, _, _) = restored();
    // Right identifiers, wrong source: 403 (the peer address was journalled).
    let bye = a_in_dialog("BYE", 5, "z9hG4bKbye3", &tag, None, b"");
    h.send_from(THIRD, &bye);
    assert_eq!(
        h.take_for(THIRD).iter().map(code).collect::<Vec<_>>(),
        vec![403]
    );
    // A wrong To-tag matches no dialog: 481.
    h.send_from_a(&a_in_dialog(
        "BYE",
        6,
        "z9hG4bKbye4",
        "nottheirs",
        None,
        b"",
    ));
    assert_eq!(
        h.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![481]
    );
    assert_eq!(h.b2bua.call_count(), 1, "still up");
    assert!(h.take_for_b().is_empty());
    // The controller's fork START on the restored call is acted on.
    h.take_events();
    h.send_from_a(&a_in_dialog(
        "INFO",
        7,
        "z9hG4bKinfo",
        &tag,
        Some(FORK_CT),
        start_json().as_bytes(),
    ));
    assert_eq!(
        h.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![200]
    );
    assert!(h
        .take_events()
        .iter()
        .any(|e| matches!(e, SessionEvent::ForkRequest { .. })));
}

#[test]
fn release_sends_bye_with_the_media_timeout_reason_on_both_legs() {
    let (mut h, _, _, call) = restored();
    h.b2bua
        .release(h.now, call, EndReason::MediaTimeout)
        .expect("established");
    h.drain_for_test();
    for (leg, addr) in [("A", A_ADDR), ("B", B_ADDR)] {
        let byes: Vec<_> = h
            .wire
            .iter()
            .filter(|(a, b)| a.to_string() == addr && b.starts_with(b"BYE "))
            .collect();
        assert_eq!(byes.len(), 1, "leg {leg}");
        let text = String::from_utf8_lossy(&byes[0].1);
        assert!(text.contains(REASON_MEDIA_TIMEOUT), "leg {leg}: {text}");
    }
    assert_eq!(h.b2bua.call_count(), 0);
    assert_eq!(
        h.b2bua.release(h.now, call, EndReason::MediaTimeout),
        Err(B2buaError::UnknownCall)
    );
}

/// A voice bot's call is journalled too: restored into a fresh B2BUA, it answers the caller's
/// BYE (200, no leg B to hang up) and its port is held meanwhile.
#[test]
fn a_restored_bot_call_answers_the_callers_bye() {
    let mut h = bot_harness();
    let (tag, _, _) = answered_bot_call(&mut h, "z9hG4bKbotr");
    let call = h.b2bua.take_changed()[0];
    let snap = h.b2bua.snapshot(call).expect("a bot call is journalled");
    assert!(snap.bot);
    let line = call_journal::encode(&Entry::Call(Box::new(CallRecord {
        call: snap,
        media_layer: MediaSnapshot::default(),
    })))
    .expect("encode");
    let rec = call_journal::replay(std::str::from_utf8(&line).expect("utf-8"))
        .calls
        .pop()
        .expect("one call");
    let mut fresh = bot_harness();
    fresh.now = h.now;
    fresh.b2bua.restore(fresh.now, rec.call).expect("restore");
    assert_eq!(fresh.b2bua.counts().aggregate, 1);
    fresh.send_from_a(&a_in_dialog("BYE", 2, "z9hG4bKbotrbye", &tag, None, b""));
    assert_eq!(
        fresh.take_for_a().iter().map(code).collect::<Vec<_>>(),
        vec![200]
    );
    assert!(fresh.take_for_b().is_empty(), "nobody to hang up on leg B");
    let ev = fresh.take_events();
    assert!(ev.contains(&SessionEvent::CallEnded {
        call,
        reason: EndReason::Bye(Leg::A)
    }));
    assert_eq!(fresh.b2bua.counts().aggregate, 0);
}
