use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::core::b2bua::EndReason;
use crate::core::fork_request::{SpeechServer, StartRequest, WsScheme};
use crate::core::sdp::{Codec, Direction};
use control_api::{ApiError, ReturnMode};

pub(super) const CALL: CallHandle = CallHandle(7);

fn codec(name: &str, pt: u8) -> Codec {
    Codec {
        pt,
        name: Some(name.into()),
        clock_rate: Some(8000),
        channels: None,
        fmtp: None,
    }
}

fn media(local_ip: &str, local_port: u16, remote: &str, c: Codec) -> NegotiatedMedia {
    NegotiatedMedia {
        remote: Some(remote.parse().expect("addr")),
        local_ip: local_ip.parse::<IpAddr>().expect("ip"),
        local_port,
        codec: Some(c),
        telephone_event: Some(101),
        direction: Direction::SendRecv,
        hold: false,
        ptime: None,
    }
}

pub(super) fn a_media() -> NegotiatedMedia {
    media("10.77.1.1", 30000, "10.77.1.2:40000", codec("PCMU", 0))
}

pub(super) fn b_media() -> NegotiatedMedia {
    media("10.77.2.1", 30002, "10.77.2.2:40000", codec("PCMU", 0))
}

pub(super) fn layer() -> MediaLayer {
    MediaLayer::new(MediaConfig {
        speech_server: "asr".into(),
    })
}

pub(super) fn drain(m: &mut MediaLayer) -> Vec<MediaOutput> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

pub(super) fn ops(out: &[MediaOutput]) -> Vec<(JobId, Op)> {
    out.iter()
        .filter_map(|o| match o {
            MediaOutput::Control { job, op } => Some((*job, op.clone())),
            MediaOutput::Status { .. } | MediaOutput::ConnectionStatus { .. } => None,
        })
        .collect()
}

/// Every status report, paced or not.
pub(super) fn statuses(out: &[MediaOutput]) -> Vec<StatusReport> {
    out.iter()
        .filter_map(|o| match o {
            MediaOutput::Status { report, .. } | MediaOutput::ConnectionStatus { report, .. } => {
                Some(report.clone())
            }
            MediaOutput::Control { .. } => None,
        })
        .collect()
}

pub(super) fn up(m: &mut MediaLayer) -> Vec<MediaOutput> {
    m.handle_session(&SessionEvent::MediaUp {
        call: CALL,
        leg: Leg::A,
        media: a_media(),
    });
    m.handle_session(&SessionEvent::MediaUp {
        call: CALL,
        leg: Leg::B,
        media: b_media(),
    });
    drain(m)
}

pub(super) fn ok_all(m: &mut MediaLayer, out: &[MediaOutput]) -> Vec<MediaOutput> {
    for (job, _) in ops(out) {
        m.handle_control_result(job, Ok(Answer::Done));
    }
    drain(m)
}

/// fork-agent's refusal with `text`.
pub(super) fn refused(text: &str) -> ClientError {
    ClientError::Api(ApiError::Refused(text.into()))
}

pub(super) fn sa(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

pub(super) fn start(guid: &str) -> SessionEvent {
    start_with(guid, None)
}

/// A START, with `return-audio` if given.
pub(super) fn start_with(guid: &str, return_audio: Option<ReturnAudioRequest>) -> SessionEvent {
    SessionEvent::ForkRequest {
        call: CALL,
        leg: Leg::A,
        request: ForkRequest::Start(StartRequest {
            call_guid: guid.into(),
            server: SpeechServer {
                scheme: WsScheme::Ws,
                host: "10.77.3.2".into(),
                port: 9000,
                path: "/".into(),
            },
            auth_token: None,
            profile: None,
            codec: None,
            metadata: None,
            return_audio,
        }),
        parties: CallParties::default(),
    }
}

pub(super) fn stop(guid: &str) -> SessionEvent {
    SessionEvent::ForkRequest {
        call: CALL,
        leg: Leg::A,
        request: ForkRequest::Stop {
            call_guid: guid.into(),
        },
        parties: CallParties::default(),
    }
}

#[test]
fn media_up_installs_both_directions_and_rtcp() {
    let mut m = layer();
    let out = up(&mut m);
    let adds: Vec<FlowSpec> = ops(&out)
        .into_iter()
        .filter_map(|(_, op)| match op {
            Op::FlowAdd { flow } => Some(flow),
            _ => None,
        })
        .collect();
    assert_eq!(adds.len(), 4, "{out:?}");
    let a = adds
        .iter()
        .find(|f| f.local == sa("10.77.1.1:30000"))
        .expect("caller flow");
    assert_eq!(a.src, sa("10.77.2.1:30002"));
    assert_eq!(a.dst, sa("10.77.2.2:40000"));
    assert_eq!(a.payload_types, vec![0, 8]);
    assert_eq!(a.dtmf_pt, Some(101));
    let b = adds
        .iter()
        .find(|f| f.local == sa("10.77.2.1:30002"))
        .expect("callee flow");
    assert_eq!(
        (b.src, b.dst),
        (sa("10.77.1.1:30000"), sa("10.77.1.2:40000"))
    );
    let rtcp = adds
        .iter()
        .find(|f| f.local == sa("10.77.1.1:30001"))
        .expect("rtcp flow");
    assert!(rtcp.rtcp);
    assert_eq!(rtcp.dst, sa("10.77.2.2:40001"));
    assert_eq!(m.flow_count(), 4);
}

#[test]
fn wire_format_matches_control_api_doc() {
    let op = Op::FlowDel {
        local: sa("10.77.1.1:30000"),
    };
    assert_eq!(
        op.to_line(),
        r#"{"v":1,"op":"flow_del","local":"10.77.1.1:30000"}"#
    );
    let op = Op::ForkStop {
        call_guid: "g".into(),
        reason: StopReason::CallEnd,
    };
    assert_eq!(
        op.to_line(),
        r#"{"v":1,"op":"fork_stop","call_guid":"g","reason":"call_end"}"#
    );
    let op = Op::ForkPause {
        call_guid: "g".into(),
        reason: PauseReason::CodecChange,
    };
    assert_eq!(
        op.to_line(),
        r#"{"v":1,"op":"fork_pause","call_guid":"g","reason":"codec_change"}"#
    );
}

#[test]
fn address_change_replaces_only_the_affected_flows() {
    let mut m = layer();
    let out = up(&mut m);
    ok_all(&mut m, &out);
    let mut moved = b_media();
    moved.remote = Some(sa("10.77.2.2:41000"));
    m.handle_session(&SessionEvent::MediaChanged {
        call: CALL,
        leg: Leg::B,
        media: moved,
    });
    let out = drain(&mut m);
    let ops = ops(&out);
    // The caller → callee RTP and RTCP flows change destination; the reverse ones stay.
    assert_eq!(ops.len(), 4, "{ops:?}");
    assert!(matches!(&ops[0].1, Op::FlowDel { .. }));
    assert!(matches!(&ops[1].1, Op::FlowDel { .. }));
    assert!(ops.iter().any(|(_, op)| matches!(op,
        Op::FlowAdd { flow } if flow.dst == sa("10.77.2.2:41000"))));
}

#[test]
fn start_refused_reports_the_agents_error_string() {
    let mut m = layer();
    let out = up(&mut m);
    ok_all(&mut m, &out);
    m.handle_session(&start("abc"));
    let out = drain(&mut m);
    let (job, _) = ops(&out)[0].clone();
    m.handle_control_result(job, Err(refused("Codec is not supported")));
    let st = statuses(&drain(&mut m));
    assert_eq!(st[0].state, ForkState::Error);
    assert_eq!(st[0].status, Some(ForkError::CodecNotSupported));
    m.handle_session(&start("abd"));
    let out = drain(&mut m);
    let (job, _) = ops(&out)[0].clone();
    m.handle_control_result(job, Err(refused("no such speech server")));
    let st = statuses(&drain(&mut m));
    assert_eq!(st[0].status, Some(ForkError::InternalError));
}

#[test]
fn return_audio_names_the_flow_towards_the_hearer() {
    // Distinct payload types per leg show whose is used: the hearer's.
    let mut a = a_media();
    a.codec = Some(codec("PCMU", 96));
    let mut m = layer();
    for (leg, media) in [(Leg::A, a), (Leg::B, b_media())] {
        m.handle_session(&SessionEvent::MediaUp {
            call: CALL,
            leg,
            media,
        });
    }
    let flows: Vec<FlowSpec> = ops(&drain(&mut m))
        .into_iter()
        .filter_map(|(_, op)| match op {
            Op::FlowAdd { flow } if !flow.rtcp => Some(flow),
            _ => None,
        })
        .collect();
    let towards = |party: SocketAddr| {
        flows
            .iter()
            .find(|f| f.dst == party)
            .map(|f| f.local)
            .expect("a flow towards each party")
    };
    for (to, mode, hearer, pt) in [
        (
            Channel::Caller,
            ReturnMode::Replace,
            sa("10.77.1.2:40000"),
            96,
        ),
        (Channel::Callee, ReturnMode::Mix, sa("10.77.2.2:40000"), 0),
    ] {
        m.handle_session(&start_with("abc", Some(ReturnAudioRequest { to, mode })));
        let out = drain(&mut m);
        let [(job, Op::ForkStart { fork })] = &ops(&out)[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            fork.return_audio,
            Some(ReturnAudio {
                to,
                flow: towards(hearer),
                payload_type: Some(pt),
                mode,
            }),
            "{to:?}"
        );
        // The callee's packets arrive at leg B's anchor and go to the caller, and back.
        let expected = match to {
            Channel::Caller => sa("10.77.2.1:30002"),
            Channel::Callee => sa("10.77.1.1:30000"),
        };
        assert_eq!(towards(hearer), expected);
        // The streams are those of any fork: both parties are heard by the bot.
        assert_eq!(fork.streams.len(), 2);
        m.handle_control_result(*job, Err(refused("Internal error")));
        drain(&mut m);
    }
    // Without `return-audio` the bot only listens.
    m.handle_session(&start("abc"));
    let out = drain(&mut m);
    let [(_, Op::ForkStart { fork })] = &ops(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!(fork.return_audio, None);
}

#[test]
fn return_audio_refused_by_the_profile_is_unsupported_flow() {
    let mut m = layer();
    let out = up(&mut m);
    ok_all(&mut m, &out);
    let ra = ReturnAudioRequest {
        to: Channel::Caller,
        mode: ReturnMode::Replace,
    };
    for (i, p) in [speech_proto::Profile::Audiohook, speech_proto::Profile::Raw]
        .into_iter()
        .enumerate()
    {
        let guid = format!("ab{i}");
        m.handle_session(&start_with(&guid, Some(ra)));
        let out = drain(&mut m);
        let (job, _) = ops(&out)[0].clone();
        // fork-agent passes the speech protocol's error on as its refusal text.
        let text = speech_proto::ReturnAudioError::NotInProfile(p).to_string();
        m.handle_control_result(job, Err(refused(&text)));
        let st = statuses(&drain(&mut m));
        assert_eq!(
            (st[0].state, st[0].status, st[0].call_guid.as_deref()),
            (
                ForkState::Error,
                Some(ForkError::UnsupportedFlow),
                Some(&*guid)
            ),
            "{text}"
        );
    }
}

#[test]
fn stop_and_call_end() {
    let mut m = layer();
    let out = up(&mut m);
    ok_all(&mut m, &out);
    m.handle_session(&start("abc"));
    let out = drain(&mut m);
    ok_all(&mut m, &out);
    m.handle_session(&stop("abc"));
    let out = drain(&mut m);
    assert!(matches!(&ops(&out)[0].1,
        Op::ForkStop { call_guid, reason: StopReason::Request } if call_guid == "abc"));
    let st = statuses(&ok_all(&mut m, &out));
    assert_eq!(st[0].state, ForkState::Stopped);
    assert_eq!(st[0].status, Some(ForkError::ForkingStopped));

    // A new fork, then the call ends: fork_stop first, then every flow removed, no status.
    m.handle_session(&start("abe"));
    let out = drain(&mut m);
    ok_all(&mut m, &out);
    m.handle_session(&SessionEvent::MediaDown { call: CALL });
    m.handle_session(&SessionEvent::CallEnded {
        call: CALL,
        reason: EndReason::Bye(Leg::A),
    });
    let out = drain(&mut m);
    let ops = ops(&out);
    assert!(matches!(
        &ops[0].1,
        Op::ForkStop {
            reason: StopReason::CallEnd,
            ..
        }
    ));
    assert_eq!(
        ops.iter()
            .filter(|(_, o)| matches!(o, Op::FlowDel { .. }))
            .count(),
        4
    );
    assert!(statuses(&ok_all(&mut m, &out)).is_empty());
    assert_eq!(m.call_count(), 0);
    assert_eq!(m.flow_count(), 0);
}

#[test]
fn hold_pauses_and_unhold_resumes() {
    let mut m = layer();
    let out = up(&mut m);
    ok_all(&mut m, &out);
    m.handle_session(&start("abc"));
    let out = drain(&mut m);
    ok_all(&mut m, &out);
    let mut held = a_media();
    held.hold = true;
    held.direction = Direction::SendOnly;
    m.handle_session(&SessionEvent::MediaChanged {
        call: CALL,
        leg: Leg::A,
        media: held,
    });
    let out = drain(&mut m);
    assert!(ops(&out)
        .iter()
        .any(|(_, o)| matches!(o, Op::ForkPause { .. })));
    let st = statuses(&ok_all(&mut m, &out));
    assert_eq!(st[0].state, ForkState::Paused);
    m.handle_session(&SessionEvent::MediaChanged {
        call: CALL,
        leg: Leg::A,
        media: a_media(),
    });
    let out = drain(&mut m);
    assert!(ops(&out)
        .iter()
        .any(|(_, o)| matches!(o, Op::ForkResume { .. })));
    let st = statuses(&ok_all(&mut m, &out));
    assert_eq!(st[0].state, ForkState::Resumed);
}

#[test]
fn codec_change_pauses_and_refusal_is_not_reported() {
    let mut m = layer();
    let out = up(&mut m);
    ok_all(&mut m, &out);
    m.handle_session(&start("abc"));
    let out = drain(&mut m);
    ok_all(&mut m, &out);
    let mut g729 = b_media();
    g729.codec = Some(codec("G729", 18));
    m.handle_session(&SessionEvent::MediaChanged {
        call: CALL,
        leg: Leg::B,
        media: g729,
    });
    let out = drain(&mut m);
    let pause = ops(&out)
        .into_iter()
        .find(|(_, o)| matches!(o, Op::ForkPause { .. }))
        .expect("pause");
    m.handle_control_result(pause.0, Err(refused("unknown op fork_pause")));
    assert!(statuses(&drain(&mut m)).is_empty());
}

#[test]
fn held_side_with_zero_address_gets_no_flow() {
    let mut m = layer();
    m.handle_session(&SessionEvent::MediaUp {
        call: CALL,
        leg: Leg::A,
        media: NegotiatedMedia {
            remote: None,
            ..a_media()
        },
    });
    m.handle_session(&SessionEvent::MediaUp {
        call: CALL,
        leg: Leg::B,
        media: b_media(),
    });
    let out = drain(&mut m);
    let locals: Vec<SocketAddr> = ops(&out)
        .into_iter()
        .filter_map(|(_, o)| match o {
            Op::FlowAdd { flow } => Some(flow.local),
            _ => None,
        })
        .collect();
    assert_eq!(locals.len(), 2);
    assert!(locals.contains(&sa("10.77.1.1:30000")));
}

#[test]
fn failed_flow_add_is_retried_on_next_event() {
    let mut m = layer();
    let out = up(&mut m);
    for (job, _) in ops(&out) {
        m.handle_control_result(job, Err(refused("neighbour unresolved")));
    }
    assert_eq!(m.flow_count(), 0);
    m.handle_session(&SessionEvent::MediaChanged {
        call: CALL,
        leg: Leg::A,
        media: a_media(),
    });
    assert_eq!(ops(&drain(&mut m)).len(), 4);
}

#[test]
fn resume_names_the_new_law_after_a_codec_round_trip() {
    let mut m = layer();
    let out = up(&mut m);
    ok_all(&mut m, &out);
    m.handle_session(&start("abc"));
    let out = drain(&mut m);
    ok_all(&mut m, &out);
    let mut g729 = b_media();
    g729.codec = Some(codec("G729", 18));
    m.handle_session(&SessionEvent::MediaChanged {
        call: CALL,
        leg: Leg::B,
        media: g729,
    });
    let out = drain(&mut m);
    assert!(ops(&out).iter().any(|(_, o)| matches!(
        o,
        Op::ForkPause {
            reason: PauseReason::CodecChange,
            ..
        }
    )));
    ok_all(&mut m, &out);
    let mut pcma = b_media();
    pcma.codec = Some(codec("PCMA", 8));
    m.handle_session(&SessionEvent::MediaChanged {
        call: CALL,
        leg: Leg::B,
        media: pcma,
    });
    let out = drain(&mut m);
    assert!(ops(&out).iter().any(|(_, o)| matches!(
        o,
        Op::ForkResume {
            codec: Some(control_api::Codec::Pcma),
            ..
        }
    )));
}

fn start_with_codec(
    guid: &str,
    codec: Option<crate::core::fork_request::ForkCodec>,
) -> SessionEvent {
    match start(guid) {
        SessionEvent::ForkRequest {
            call,
            leg,
            request: ForkRequest::Start(mut s),
            parties,
        } => {
            s.codec = codec;
            SessionEvent::ForkRequest {
                call,
                leg,
                request: ForkRequest::Start(s),
                parties,
            }
        }
        other => other,
    }
}

/// Moves both legs to PCMA (a re-INVITE answered with A-law).
fn to_pcma(m: &mut MediaLayer) -> Vec<MediaOutput> {
    for (leg, base) in [(Leg::A, a_media()), (Leg::B, b_media())] {
        m.handle_session(&SessionEvent::MediaChanged {
            call: CALL,
            leg,
            media: NegotiatedMedia {
                codec: Some(codec("PCMA", 8)),
                ..base
            },
        });
    }
    drain(m)
}

#[test]
fn law_change_without_requested_codec_pauses_then_resumes_on_the_new_law() {
    let mut m = layer();
    let out = up(&mut m);
    ok_all(&mut m, &out);
    m.handle_session(&start("abc"));
    let out = drain(&mut m);
    ok_all(&mut m, &out);
    let out = to_pcma(&mut m);
    assert!(ops(&out).iter().any(|(_, o)| matches!(
        o,
        Op::ForkPause {
            reason: PauseReason::CodecChange,
            ..
        }
    )));
    // The pause's answer makes the layer resume at once, naming the new law.
    let out = ok_all(&mut m, &out);
    assert_eq!(statuses(&out)[0].state, ForkState::Paused);
    assert!(ops(&out).iter().any(|(_, o)| matches!(
        o,
        Op::ForkResume {
            codec: Some(control_api::Codec::Pcma),
            ..
        }
    )));
    let st = statuses(&ok_all(&mut m, &out));
    assert_eq!(st[0].state, ForkState::Resumed);
    // A further re-INVITE on the same law changes nothing.
    let out = to_pcma(&mut m);
    assert!(ops(&out).is_empty(), "{out:?}");
}

#[test]
fn law_change_away_from_requested_codec_stays_paused() {
    let mut m = layer();
    let out = up(&mut m);
    ok_all(&mut m, &out);
    m.handle_session(&start_with_codec(
        "abc",
        Some(crate::core::fork_request::ForkCodec::G711Ulaw),
    ));
    let out = drain(&mut m);
    ok_all(&mut m, &out);
    let out = to_pcma(&mut m);
    let after = ok_all(&mut m, &out);
    assert_eq!(statuses(&after)[0].state, ForkState::Paused);
    assert!(
        !ops(&after)
            .iter()
            .any(|(_, o)| matches!(o, Op::ForkResume { .. })),
        "{after:?}"
    );
    // Back on the requested µ-law: resumed without a codec change.
    for (leg, media) in [(Leg::A, a_media()), (Leg::B, b_media())] {
        m.handle_session(&SessionEvent::MediaChanged {
            call: CALL,
            leg,
            media,
        });
    }
    let out = drain(&mut m);
    assert!(ops(&out)
        .iter()
        .any(|(_, o)| matches!(o, Op::ForkResume { codec: None, .. })));
}

#[test]
fn forked_flow_survives_a_zero_address_hold() {
    let mut m = layer();
    let out = up(&mut m);
    ok_all(&mut m, &out);
    m.handle_session(&start("abc"));
    let out = drain(&mut m);
    ok_all(&mut m, &out);
    // A holds with c=0.0.0.0: nothing may go to A, but the B-anchor flow (callee stream,
    // relayed towards A) stays installed so it is still forked after the resume.
    let mut held = a_media();
    held.remote = None;
    held.hold = true;
    m.handle_session(&SessionEvent::MediaChanged {
        call: CALL,
        leg: Leg::A,
        media: held,
    });
    let out = drain(&mut m);
    let dels: Vec<SocketAddr> = ops(&out)
        .into_iter()
        .filter_map(|(_, o)| match o {
            Op::FlowDel { local } => Some(local),
            _ => None,
        })
        .collect();
    // Only the RTCP flow towards A goes; the forked RTP flow stays.
    assert_eq!(dels, vec![sa("10.77.2.1:30003")], "{out:?}");
    ok_all(&mut m, &out);
    m.handle_session(&SessionEvent::MediaChanged {
        call: CALL,
        leg: Leg::A,
        media: a_media(),
    });
    let out = drain(&mut m);
    assert!(
        !ops(&out)
            .iter()
            .any(|(_, o)| matches!(o, Op::FlowDel { .. })
                || matches!(o, Op::FlowAdd { flow } if !flow.rtcp)),
        "{out:?}"
    );
}

fn guids_of(out: &[MediaOutput], pick: fn(&Op) -> Option<&String>) -> Vec<String> {
    ops(out)
        .iter()
        .filter_map(|(_, o)| pick(o).cloned())
        .collect()
}

fn stopped(o: &Op) -> Option<&String> {
    match o {
        Op::ForkStop { call_guid, .. } => Some(call_guid),
        _ => None,
    }
}

#[test]
fn two_forks_of_a_call_pause_together_stop_alone_and_end_with_the_call() {
    let mut m = layer();
    let out = up(&mut m);
    ok_all(&mut m, &out);
    // The B2BUA's sequence admitted both (max_per_call 2): each is its own fork_start.
    for guid in ["aaa", "bbb"] {
        m.handle_session(&start(guid));
        let out = drain(&mut m);
        assert!(matches!(&ops(&out)[..], [(_, Op::ForkStart { fork })] if fork.call_guid == guid));
        let st = statuses(&ok_all(&mut m, &out));
        assert_eq!(st[0].call_guid.as_deref(), Some(guid));
    }
    let snap = m.snapshot(CALL);
    assert_eq!(snap.forks.len(), 2);
    // Hold pauses every fork, and each gets its PAUSED.
    let mut held = a_media();
    held.hold = true;
    m.handle_session(&SessionEvent::MediaChanged {
        call: CALL,
        leg: Leg::A,
        media: held,
    });
    let out = drain(&mut m);
    let paused = guids_of(&out, |o| match o {
        Op::ForkPause { call_guid, .. } => Some(call_guid),
        _ => None,
    });
    assert_eq!(paused, ["aaa", "bbb"]);
    let st = statuses(&ok_all(&mut m, &out));
    assert_eq!(
        st.iter()
            .map(|r| (r.call_guid.clone().unwrap_or_default(), r.state))
            .collect::<Vec<_>>(),
        [
            ("aaa".to_owned(), ForkState::Paused),
            ("bbb".to_owned(), ForkState::Paused)
        ]
    );
    m.handle_session(&SessionEvent::MediaChanged {
        call: CALL,
        leg: Leg::A,
        media: a_media(),
    });
    let out = drain(&mut m);
    assert_eq!(
        ops(&out)
            .iter()
            .filter(|(_, o)| matches!(o, Op::ForkResume { .. }))
            .count(),
        2
    );
    ok_all(&mut m, &out);
    // STOP names one fork: only that one stops.
    m.handle_session(&stop("aaa"));
    let out = drain(&mut m);
    assert_eq!(guids_of(&out, stopped), ["aaa"]);
    let st = statuses(&ok_all(&mut m, &out));
    assert_eq!(
        (st[0].call_guid.as_deref(), st[0].state),
        (Some("aaa"), ForkState::Stopped)
    );
    assert_eq!(m.snapshot(CALL).forks.len(), 1);
    // The flows of the remaining fork stay while its party holds with c=0.0.0.0.
    assert!(m.known().forks.contains("bbb") && !m.known().forks.contains("aaa"));
    // The call ends: the remaining fork stops with it.
    m.handle_session(&start("ccc"));
    let out = drain(&mut m);
    ok_all(&mut m, &out);
    m.handle_session(&SessionEvent::CallEnded {
        call: CALL,
        reason: EndReason::Bye(Leg::A),
    });
    let out = drain(&mut m);
    assert_eq!(guids_of(&out, stopped), ["bbb", "ccc"]);
    assert!(statuses(&ok_all(&mut m, &out)).is_empty());
}
