//! Fork status that tells the truth (docs/fork-request.md "Status sequences"): what the
//! controller hears from a START on, driven by fork-agent's `fork_start` answer and its
//! `fork_status` events in either order, failures with their exact reference strings, lost
//! and regained connections, STOP while connecting, and a restart in between.

use super::status::EARLY_EVENTS;
use super::tests::{
    a_media, b_media, drain, layer, ok_all, ops, refused, sa, start, statuses, stop, up, CALL,
};
use super::*;
use crate::core::fork_request::{Party, SpeechServer, StartRequest, WsScheme};
use control_api::{ForkStarted, ForkStatus};

fn event(guid: &str, status: ForkStatus, error: Option<&str>, reconnected: bool) -> ForkEvent {
    ForkEvent {
        call_guid: guid.into(),
        status,
        error: error.map(str::to_owned),
        reconnected,
        snapshot: false,
        fork_id: None,
    }
}

/// `ev` as fork-agent names fork `id` (its first stream).
fn of_fork(ev: ForkEvent, id: u32) -> ForkEvent {
    ForkEvent {
        fork_id: Some(id),
        ..ev
    }
}

/// `ev` as a post-subscription snapshot line.
fn snapshot(ev: ForkEvent) -> ForkEvent {
    ForkEvent {
        snapshot: true,
        ..ev
    }
}

fn started(guid: &str) -> ForkEvent {
    event(guid, ForkStatus::Started, None, false)
}

fn reconnected(guid: &str) -> ForkEvent {
    event(guid, ForkStatus::Started, None, true)
}

fn error(guid: &str, text: &str) -> ForkEvent {
    event(guid, ForkStatus::Error, Some(text), false)
}

/// fork-agent's answer to `fork_start`: stream 4 for the caller, 5 for the callee.
fn fork_started() -> Answer {
    Answer::ForkStarted(ForkStarted {
        streams: vec![
            control_api::StartedStream {
                stream_id: 4,
                channel: Channel::Caller,
            },
            control_api::StartedStream {
                stream_id: 5,
                channel: Channel::Callee,
            },
        ],
    })
}

fn streams() -> Vec<StreamStatus> {
    vec![
        StreamStatus {
            channel_id: 4,
            party: Party::Calling,
        },
        StreamStatus {
            channel_id: 5,
            party: Party::Called,
        },
    ]
}

/// (state, request, status) of each report, and whether it is a paced connection status.
fn seen(out: &[MediaOutput]) -> Vec<(ForkState, Option<ForkKind>, Option<ForkError>, bool)> {
    out.iter()
        .filter_map(|o| match o {
            MediaOutput::Status { report, .. } => {
                Some((report.state, report.request, report.status, false))
            }
            MediaOutput::ConnectionStatus { report, .. } => {
                Some((report.state, report.request, report.status, true))
            }
            MediaOutput::Control { .. } => None,
        })
        .collect()
}

/// A layer with the call's flows up and START `guid` sent; returns the `fork_start` job.
fn requested(guid: &str) -> (MediaLayer, JobId) {
    let mut m = layer();
    let out = up(&mut m);
    ok_all(&mut m, &out);
    m.handle_session(&start(guid));
    let out = drain(&mut m);
    assert!(
        statuses(&out).is_empty(),
        "nothing before the answer: {out:?}"
    );
    let [(job, Op::ForkStart { .. })] = ops(&out)[..] else {
        panic!("{out:?}")
    };
    (m, job)
}

/// [`requested`], answered: CONNECTING reported.
fn connecting(guid: &str) -> MediaLayer {
    let (mut m, job) = requested(guid);
    m.handle_control_result(job, Ok(fork_started()));
    let st = statuses(&drain(&mut m));
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].state, ForkState::Connecting);
    m
}

/// [`connecting`], then `started`: STARTED reported.
fn up_and_started(guid: &str) -> MediaLayer {
    let mut m = connecting(guid);
    m.handle_fork_event(&started(guid));
    assert_eq!(
        seen(&drain(&mut m)),
        vec![(ForkState::Started, Some(ForkKind::Start), None, false)]
    );
    m
}

/// The `fork_stop` the layer sends for a failed fork; its answer reports nothing.
fn cleanup_stop(m: &mut MediaLayer, out: &[MediaOutput], guid: &str) {
    let stops: Vec<JobId> = ops(out)
        .into_iter()
        .filter_map(|(job, op)| match op {
            Op::ForkStop {
                call_guid,
                reason: StopReason::Request,
            } if call_guid == guid => Some(job),
            _ => None,
        })
        .collect();
    assert_eq!(stops.len(), 1, "one fork_stop for the failed fork: {out:?}");
    m.handle_control_result(stops[0], Ok(Answer::Done));
    assert!(drain(m).is_empty(), "the clean-up is not reported");
}

#[test]
fn start_carries_the_destination_and_parties_and_started_waits_for_the_event() {
    let mut m = layer();
    let out = up(&mut m);
    ok_all(&mut m, &out);
    let parties = CallParties {
        call_id: "call-a@198.51.100.7".into(),
        from: "sip:alice@198.51.100.7".into(),
        to: "sip:6777@192.0.2.10".into(),
    };
    m.handle_session(&SessionEvent::ForkRequest {
        call: CALL,
        leg: Leg::A,
        request: ForkRequest::Start(StartRequest {
            call_guid: "abc".into(),
            server: SpeechServer {
                scheme: WsScheme::Wss,
                host: "asr.example.com".into(),
                port: 8443,
                path: "/fork?lang=en".into(),
            },
            auth_token: Some("t0k3n".into()),
            profile: Some(speech_proto::Profile::Twilio),
            codec: None,
            metadata: None,
            return_audio: None,
        }),
        parties: parties.clone(),
    });
    let out = drain(&mut m);
    let [(job, Op::ForkStart { fork })] = &ops(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        fork.destination,
        Some(Destination {
            url: "wss://asr.example.com:8443/fork?lang=en".into(),
            auth_token: Some("t0k3n".into()),
            profile: Some(speech_proto::Profile::Twilio),
        })
    );
    assert_eq!(
        (&fork.call_id, &fork.from, &fork.to),
        (&parties.call_id, &parties.from, &parties.to)
    );
    assert_eq!(fork.server, "asr");
    assert_eq!(fork.codec, control_api::Codec::Pcmu);
    assert_eq!(fork.ptime_ms, 20);
    assert_eq!(fork.streams[0].channel, Channel::Caller);
    assert_eq!(fork.streams[0].flow, sa("10.77.1.1:30000"));
    assert_eq!(fork.streams[1].flow, sa("10.77.2.1:30002"));
    assert!(statuses(&out).is_empty(), "{out:?}");

    // fork-agent accepted: CONNECTING with the channel ids, not STARTED.
    m.handle_control_result(*job, Ok(fork_started()));
    let st = statuses(&drain(&mut m));
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(
        (st[0].state, st[0].request, &st[0].streams),
        (ForkState::Connecting, Some(ForkKind::Start), &streams())
    );
    // The speech server has the streams: STARTED, once.
    m.handle_fork_event(&started("abc"));
    let st = statuses(&drain(&mut m));
    assert_eq!(
        (st[0].state, st[0].request, &st[0].streams),
        (ForkState::Started, Some(ForkKind::Start), &streams())
    );
    assert_eq!(st.len(), 1);
    m.handle_fork_event(&started("abc"));
    assert!(drain(&mut m).is_empty());
}

#[test]
fn started_before_the_answer_is_kept_until_connecting_went_out() {
    let (mut m, job) = requested("abc");
    m.handle_fork_event(&started("abc"));
    assert!(drain(&mut m).is_empty(), "no STARTED before CONNECTING");
    m.handle_control_result(job, Ok(fork_started()));
    let out = drain(&mut m);
    assert_eq!(
        seen(&out),
        vec![
            (ForkState::Connecting, Some(ForkKind::Start), None, false),
            (ForkState::Started, Some(ForkKind::Start), None, false),
        ]
    );
    assert_eq!(statuses(&out)[1].streams, streams());
}

#[test]
fn a_start_that_never_started_reports_the_events_reference_string() {
    for text in [
        "Connection failed",
        "Authentication token invalid",
        "DNS lookup failed",
        "Proxy DNS lookup failed",
        "Connection closed",
        "TCP Connection closed",
        "Internal error",
    ] {
        let mut m = connecting("abc");
        m.handle_fork_event(&error("abc", text));
        let out = drain(&mut m);
        assert_eq!(
            seen(&out),
            vec![(
                ForkState::Error,
                Some(ForkKind::Start),
                ForkError::from_wire(text),
                false
            )],
            "{text}"
        );
        assert_eq!(statuses(&out)[0].status.map(ForkError::as_str), Some(text));
        cleanup_stop(&mut m, &out, "abc");
        // Forgotten: a later event is not for any fork, a new START goes out.
        m.handle_fork_event(&started("abc"));
        assert!(drain(&mut m).is_empty());
        m.handle_session(&start("abd"));
        assert!(matches!(
            &ops(&drain(&mut m))[..],
            [(_, Op::ForkStart { .. })]
        ));
    }
    // A string this version does not know is still a failure, reported as "Internal error".
    let mut m = connecting("abc");
    m.handle_fork_event(&error("abc", "Gremlins"));
    assert_eq!(
        seen(&drain(&mut m)),
        vec![(
            ForkState::Error,
            Some(ForkKind::Start),
            Some(ForkError::InternalError),
            false
        )]
    );
}

#[test]
fn an_error_before_the_answer_follows_connecting() {
    let (mut m, job) = requested("abc");
    m.handle_fork_event(&error("abc", "DNS lookup failed"));
    assert!(drain(&mut m).is_empty());
    m.handle_control_result(job, Ok(fork_started()));
    let out = drain(&mut m);
    assert_eq!(
        seen(&out),
        vec![
            (ForkState::Connecting, Some(ForkKind::Start), None, false),
            (
                ForkState::Error,
                Some(ForkKind::Start),
                Some(ForkError::DnsLookupFailed),
                false
            ),
        ]
    );
    cleanup_stop(&mut m, &out, "abc");
}

#[test]
fn refused_fork_start_reports_error_and_drops_early_events() {
    let (mut m, job) = requested("abc");
    m.handle_fork_event(&started("abc"));
    m.handle_control_result(
        job,
        Err(refused("destination not allowed: host asr.evil.example")),
    );
    let out = drain(&mut m);
    assert_eq!(
        seen(&out),
        vec![(
            ForkState::Error,
            Some(ForkKind::Start),
            Some(ForkError::ConnectionFailed),
            false
        )]
    );
    assert!(ops(&out).is_empty(), "a refused fork needs no fork_stop");
}

#[test]
fn lost_connection_reconnects_then_gives_up() {
    let mut m = up_and_started("abc");
    m.handle_fork_event(&error("abc", "Connection closed"));
    let out = drain(&mut m);
    assert_eq!(
        seen(&out),
        vec![(
            ForkState::Reconnecting,
            None,
            Some(ForkError::ConnectionClosed),
            true
        )]
    );
    assert!(ops(&out).is_empty(), "the fork is kept: {out:?}");
    // Resumed after reconnect: STARTED again, with the streams, as a connection status.
    m.handle_fork_event(&reconnected("abc"));
    let out = drain(&mut m);
    assert_eq!(seen(&out), vec![(ForkState::Started, None, None, true)]);
    assert_eq!(statuses(&out)[0].streams, streams());
    m.handle_fork_event(&error("abc", "TCP Connection closed"));
    assert_eq!(
        seen(&drain(&mut m)),
        vec![(
            ForkState::Reconnecting,
            None,
            Some(ForkError::TcpConnectionClosed),
            true
        )]
    );
    // fork-agent gave up: ERROR, the fork is over and stopped in fork-agent.
    m.handle_fork_event(&error("abc", "Connection failed"));
    let out = drain(&mut m);
    assert_eq!(
        seen(&out),
        vec![(
            ForkState::Error,
            None,
            Some(ForkError::ConnectionFailed),
            true
        )]
    );
    cleanup_stop(&mut m, &out, "abc");
    assert_eq!(m.snapshot(CALL).forks, vec![]);
}

#[test]
fn a_started_fork_failing_otherwise_is_over_at_once() {
    let mut m = up_and_started("abc");
    m.handle_fork_event(&error("abc", "Internal error"));
    let out = drain(&mut m);
    assert_eq!(
        seen(&out),
        vec![(ForkState::Error, None, Some(ForkError::InternalError), true)]
    );
    cleanup_stop(&mut m, &out, "abc");
}

#[test]
fn a_reconnect_whose_loss_was_not_seen_is_still_reported() {
    let mut m = up_and_started("abc");
    m.handle_fork_event(&reconnected("abc"));
    assert_eq!(
        seen(&drain(&mut m)),
        vec![(ForkState::Started, None, None, true)]
    );
}

#[test]
fn pause_resume_and_stop_events_are_reported_from_the_answers_only() {
    let mut m = up_and_started("abc");
    for s in [ForkStatus::Paused, ForkStatus::Resumed, ForkStatus::Stopped] {
        m.handle_fork_event(&event("abc", s, None, false));
    }
    assert!(drain(&mut m).is_empty());
}

#[test]
fn stop_while_connecting_reports_stopped_and_nothing_of_the_old_fork() {
    // STOP before fork-agent answered the fork_start.
    let (mut m, job) = requested("abc");
    m.handle_session(&stop("abc"));
    let out = drain(&mut m);
    let [(stop_job, Op::ForkStop { .. })] = ops(&out)[..] else {
        panic!("{out:?}")
    };
    m.handle_fork_event(&started("abc"));
    m.handle_control_result(job, Ok(fork_started()));
    assert!(
        drain(&mut m).is_empty(),
        "no CONNECTING or STARTED after STOP"
    );
    m.handle_control_result(stop_job, Ok(Answer::Done));
    assert_eq!(
        seen(&drain(&mut m)),
        vec![(
            ForkState::Stopped,
            Some(ForkKind::Stop),
            Some(ForkError::ForkingStopped),
            false
        )]
    );

    // STOP after CONNECTING, before `started`.
    let mut m = connecting("abd");
    m.handle_session(&stop("abd"));
    let out = drain(&mut m);
    m.handle_fork_event(&started("abd"));
    m.handle_fork_event(&error("abd", "Connection failed"));
    assert!(drain(&mut m).is_empty());
    let st = statuses(&ok_all(&mut m, &out));
    assert_eq!(
        st.iter().map(|s| s.state).collect::<Vec<_>>(),
        vec![ForkState::Stopped]
    );
}

#[test]
fn a_late_event_of_an_earlier_fork_under_the_same_guid_is_not_taken_for_the_new_one() {
    // The first fork (streams from 1) is stopped; START again with the same GUID. Its late
    // `started` overtakes the new answer (streams 4, 5): it must not answer the new START.
    let (mut m, job) = requested("abc");
    m.handle_fork_event(&of_fork(started("abc"), 1));
    m.handle_control_result(job, Ok(fork_started()));
    assert_eq!(
        seen(&drain(&mut m)),
        vec![(ForkState::Connecting, Some(ForkKind::Start), None, false)],
        "the earlier fork's event was dropped"
    );
    // After the answer too: an earlier fork's failure changes nothing; this fork's start counts.
    m.handle_fork_event(&of_fork(error("abc", "Connection failed"), 1));
    assert!(drain(&mut m).is_empty());
    m.handle_fork_event(&of_fork(started("abc"), 4));
    assert_eq!(
        seen(&drain(&mut m)),
        vec![(ForkState::Started, Some(ForkKind::Start), None, false)]
    );
}

#[test]
fn events_of_another_fork_change_nothing() {
    let mut m = connecting("abc");
    m.handle_fork_event(&started("other"));
    m.handle_fork_event(&error("other", "Connection failed"));
    assert!(drain(&mut m).is_empty());
    m.handle_fork_event(&started("abc"));
    assert_eq!(statuses(&drain(&mut m))[0].state, ForkState::Started);
}

#[test]
fn many_events_before_the_answer_keep_the_first_and_the_newest() {
    let (mut m, job) = requested("abc");
    m.handle_fork_event(&started("abc"));
    for _ in 0..EARLY_EVENTS {
        m.handle_fork_event(&error("abc", "Connection closed"));
        m.handle_fork_event(&reconnected("abc"));
    }
    m.handle_control_result(job, Ok(fork_started()));
    let s = seen(&drain(&mut m));
    assert_eq!(
        s[..2],
        [
            (ForkState::Connecting, Some(ForkKind::Start), None, false),
            (ForkState::Started, Some(ForkKind::Start), None, false),
        ]
    );
    // Then the newest connection statuses, ending where fork-agent is: carried again.
    assert_eq!(s.len(), 2 + EARLY_EVENTS - 1, "{s:?}");
    assert_eq!(s.last(), Some(&(ForkState::Started, None, None, true)));
    assert!(s[2..].iter().all(|r| r.3), "{s:?}");
}

#[test]
fn a_restored_fork_reports_its_streams_after_a_reconnect() {
    let m = up_and_started("abc");
    let snap = m.snapshot(CALL);
    assert_eq!(
        snap.forks.first().map(|f| f.channel_ids),
        Some([Some(4), Some(5)])
    );
    let json = serde_json::to_string(&snap).expect("json");
    let back: MediaSnapshot = serde_json::from_str(&json).expect("parse");
    let mut restored = layer();
    restored.restore(CALL, [Some(a_media()), Some(b_media())], back);
    restored.handle_fork_event(&error("abc", "TCP Connection closed"));
    restored.handle_fork_event(&reconnected("abc"));
    let out = drain(&mut restored);
    assert_eq!(
        seen(&out),
        vec![
            (
                ForkState::Reconnecting,
                None,
                Some(ForkError::TcpConnectionClosed),
                true
            ),
            (ForkState::Started, None, None, true),
        ]
    );
    assert_eq!(statuses(&out)[1].streams, streams());
    // A journal written before channel ids existed still reads.
    let old = r#"{"flows":[],"fork":{"call_guid":"abc","codec":"PCMU","paused":false,"streams":[null,null]}}"#;
    let old: MediaSnapshot = serde_json::from_str(old).expect("old journal line");
    assert_eq!(
        old.forks.iter().map(|f| f.channel_ids).collect::<Vec<_>>(),
        vec![[None, None]]
    );
    // A single fork is written as before (`fork`), so an older agent reads it back.
    assert!(
        json.contains(r#""fork":{"#) && !json.contains("more_forks"),
        "{json}"
    );
}

#[test]
fn events_of_one_fork_of_a_call_report_on_that_fork_only() {
    let mut m = up_and_started("aaa");
    m.handle_session(&start("bbb"));
    let out = drain(&mut m);
    let job = ops(&out)[0].0;
    m.handle_control_result(job, Ok(fork_started()));
    drain(&mut m);
    m.handle_fork_event(&started("bbb"));
    let out = drain(&mut m);
    assert_eq!(statuses(&out)[0].call_guid.as_deref(), Some("bbb"));
    // bbb fails: ERROR for bbb, its cleanup stop, aaa untouched.
    m.handle_fork_event(&error("bbb", "Connection failed"));
    let out = drain(&mut m);
    let st = statuses(&out);
    assert_eq!(
        (st[0].call_guid.as_deref(), st[0].state),
        (Some("bbb"), ForkState::Error)
    );
    cleanup_stop(&mut m, &out, "bbb");
    let snap = m.snapshot(CALL);
    assert_eq!(
        snap.forks
            .iter()
            .map(|f| f.call_guid.as_str())
            .collect::<Vec<_>>(),
        ["aaa"]
    );
    // aaa's connection events still report on aaa.
    m.handle_fork_event(&error("aaa", "TCP Connection closed"));
    let st = statuses(&drain(&mut m));
    assert_eq!(
        (st[0].call_guid.as_deref(), st[0].state),
        (Some("aaa"), ForkState::Reconnecting)
    );
}

#[test]
fn a_journal_with_two_forks_reads_back_both() {
    let mut m = up_and_started("aaa");
    m.handle_session(&start("bbb"));
    let out = drain(&mut m);
    ok_all(&mut m, &out);
    let snap = m.snapshot(CALL);
    let json = serde_json::to_string(&snap).expect("json");
    assert!(json.contains("more_forks"), "{json}");
    let back: MediaSnapshot = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, snap);
    let mut restored = layer();
    restored.restore(CALL, [Some(a_media()), Some(b_media())], back);
    let k = restored.known();
    assert!(k.forks.contains("aaa") && k.forks.contains("bbb"));
}

#[test]
fn a_snapshot_of_what_was_already_reported_reports_nothing() {
    // Up: a snapshot `started` (also one with `reconnected`) is no news.
    let mut m = up_and_started("g");
    m.handle_fork_event(&snapshot(started("g")));
    m.handle_fork_event(&snapshot(reconnected("g")));
    assert!(seen(&drain(&mut m)).is_empty());
    // Reconnecting: the snapshot repeats the loss; fork-agent has not given up.
    m.handle_fork_event(&error("g", "TCP Connection closed"));
    assert_eq!(
        seen(&drain(&mut m)),
        vec![(
            ForkState::Reconnecting,
            None,
            Some(ForkError::TcpConnectionClosed),
            true
        )]
    );
    m.handle_fork_event(&snapshot(error("g", "TCP Connection closed")));
    let out = drain(&mut m);
    assert!(seen(&out).is_empty(), "{out:?}");
    assert!(ops(&out).is_empty(), "the fork is not stopped: {out:?}");
    // The same line as a live event would mean fork-agent gave up.
    m.handle_fork_event(&error("g", "TCP Connection closed"));
    let out = drain(&mut m);
    assert_eq!(
        seen(&out),
        vec![(
            ForkState::Error,
            None,
            Some(ForkError::TcpConnectionClosed),
            true
        )]
    );
}

#[test]
fn a_snapshot_catches_up_on_changes_missed_while_away() {
    // Connecting, and `started` was missed: the snapshot answers the START.
    let mut m = connecting("a");
    m.handle_fork_event(&snapshot(started("a")));
    assert_eq!(
        seen(&drain(&mut m)),
        vec![(ForkState::Started, Some(ForkKind::Start), None, false)]
    );
    // Reconnecting, and the reconnect was missed: STARTED again as a connection status.
    m.handle_fork_event(&error("a", "Connection closed"));
    drain(&mut m);
    m.handle_fork_event(&snapshot(reconnected("a")));
    assert_eq!(
        seen(&drain(&mut m)),
        vec![(ForkState::Started, None, None, true)]
    );
    // Connecting, and both the start and a later loss were missed: STARTED, then RECONNECTING.
    let mut m = connecting("b");
    m.handle_fork_event(&snapshot(error("b", "TCP Connection closed")));
    assert_eq!(
        seen(&drain(&mut m)),
        vec![
            (ForkState::Started, Some(ForkKind::Start), None, false),
            (
                ForkState::Reconnecting,
                None,
                Some(ForkError::TcpConnectionClosed),
                true
            )
        ]
    );
    // A final failure in a snapshot fails the fork as the event would.
    let mut m = up_and_started("c");
    m.handle_fork_event(&snapshot(error("c", "Connection failed")));
    let out = drain(&mut m);
    assert_eq!(
        seen(&out),
        vec![(
            ForkState::Error,
            None,
            Some(ForkError::ConnectionFailed),
            true
        )]
    );
    cleanup_stop(&mut m, &out, "c");
}
