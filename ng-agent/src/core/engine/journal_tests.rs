//! The restart journal: what an engine writes, replayed into a fresh engine, answers for the
//! same calls (tests.rs's harness drives both).

use super::journal::{self, Entry, RestoreError};
use super::tests::{result, T};
use super::*;

/// Every journal line the engine owes now, as the file's text.
fn journal_text(t: &mut T, unix_now: u64) -> String {
    let mut text = String::new();
    while let Some(e) = t.e.poll_journal(t.now, unix_now) {
        text.push_str(std::str::from_utf8(&journal::encode(&e).expect("encode")).expect("utf8"));
    }
    text
}

fn delete(t: &mut T, delay: Option<i64>) -> (Option<Value>, Vec<(ControlId, Op)>) {
    let mut items = vec![
        ("command", Value::str("delete")),
        ("call-id", Value::str("call-1")),
        ("from-tag", Value::str("tag-a")),
    ];
    if let Some(d) = delay {
        items.push(("delete-delay", Value::Int(d)));
    }
    t.send(items)
}

#[test]
fn a_restored_engine_answers_for_its_calls_and_keeps_their_ports() {
    let mut t = T::new();
    let added = t.established();
    let text = journal_text(&mut t, 1_700_000_000);
    assert!(journal_text(&mut t, 1_700_000_000).is_empty(), "drained");
    let replayed = journal::replay(&text);
    assert_eq!(replayed.calls.len(), 1, "{text}");
    assert_eq!(replayed.bad_lines, 0);

    let mut r = T::new();
    let problems = r.e.restore(r.now, 1_700_000_010, replayed.calls);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(r.e.call_count(), 1);
    assert!(
        r.e.poll_output().is_none(),
        "restoring sends nothing to fork-agent"
    );
    // query knows both tags; the pool hands out none of the call's ports.
    let (q, _) = r.send(vec![
        ("command", Value::str("query")),
        ("call-id", Value::str("call-1")),
    ]);
    assert_eq!(result(&q), "ok");
    let tags = q.as_ref().and_then(|v| v.get("tags"));
    for tag in ["tag-a", "tag-b"] {
        assert!(tags.and_then(|t| t.get(tag)).is_some(), "{q:?}");
    }
    assert_eq!(r.e.ports.in_use(), 2);
    let fresh = r.e.ports.allocate().expect("a free port");
    let used: Vec<u16> = t.e.calls["call-1"]
        .legs
        .iter()
        .map(|l| l.local.port())
        .collect();
    assert!(
        !used.contains(&fresh),
        "{fresh} is still in use by {used:?}"
    );
    r.e.ports.release(fresh);

    // The proxy's BYE: delete removes exactly the flows the first engine installed.
    let (d, ops) = delete(&mut r, Some(0));
    assert_eq!(result(&d), "ok");
    let mut deleted: Vec<SocketAddr> = ops
        .iter()
        .filter_map(|(_, o)| match o {
            Op::FlowDel { local } => Some(*local),
            _ => None,
        })
        .collect();
    let mut installed: Vec<SocketAddr> = added
        .iter()
        .filter_map(|o| match o {
            Op::FlowAdd { flow } => Some(flow.local),
            _ => None,
        })
        .collect();
    deleted.sort();
    installed.sort();
    assert_eq!(deleted, installed);
    assert_eq!(r.e.ports.in_use(), 0);
    // ... and the journal says the call ended.
    let end = journal_text(&mut r, 1_700_000_011);
    assert!(journal::replay(&(text + &end)).calls.is_empty(), "{end}");
}

#[test]
fn a_pending_delete_delay_survives_the_restart() {
    let mut t = T::new();
    t.established();
    let (d, ops) = delete(&mut t, Some(30));
    assert_eq!(result(&d), "ok");
    assert!(ops.is_empty());
    let text = journal_text(&mut t, 1_700_000_000);
    let calls = journal::replay(&text).calls;
    assert_eq!(calls[0].delete_at, Some(1_700_000_030), "{text}");

    // Restarted 10 s later: 20 s of the delay are left.
    let mut r = T::new();
    assert!(r.e.restore(r.now, 1_700_000_010, calls).is_empty());
    assert_eq!(r.e.poll_timeout(), Some(r.now + Duration::from_secs(20)));
    r.now += Duration::from_secs(20);
    r.e.handle_timeout(r.now);
    let (_, ops) = r.drain();
    assert_eq!(ops.len(), 4, "every flow goes: {ops:?}");
    assert_eq!(r.e.call_count(), 0);
    assert!(matches!(
        r.e.poll_journal(r.now, 1_700_000_030),
        Some(Entry::End { .. })
    ));
}

#[test]
fn a_call_whose_ports_are_not_free_is_reported_not_restored() {
    let mut t = T::new();
    t.established();
    let calls = journal::replay(&journal_text(&mut t, 1)).calls;
    let mut r = T::new();
    let port = calls[0].legs[0].local.port();
    assert!(r.e.ports.reserve(port));
    let problems = r.e.restore(r.now, 1, calls);
    assert_eq!(
        problems,
        vec![RestoreError::Port {
            call_id: "call-1".into(),
            port
        }]
    );
    assert_eq!(r.e.call_count(), 0);
    assert_eq!(r.e.ports.in_use(), 1, "nothing of the skipped call is held");
}

#[test]
fn a_browser_leg_is_restored_plain_and_reported() {
    let mut t = T::new();
    t.established();
    let mut calls = journal::replay(&journal_text(&mut t, 1)).calls;
    calls[0].legs[0].browser = true;
    let mut r = T::new();
    let problems = r.e.restore(r.now, 1, calls);
    assert_eq!(
        problems,
        vec![RestoreError::BrowserLegLost {
            call_id: "call-1".into()
        }]
    );
    assert_eq!(
        r.e.call_count(),
        1,
        "kept, so that delete removes its flows"
    );
}

#[test]
fn a_cut_last_line_is_skipped() {
    let mut t = T::new();
    t.established();
    let text = journal_text(&mut t, 1);
    let cut = format!("{text}{}", &text[..text.len() / 2]);
    let r = journal::replay(&cut);
    assert_eq!((r.calls.len(), r.lines, r.bad_lines), (1, 1, 1));
}
