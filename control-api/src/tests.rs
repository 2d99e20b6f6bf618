//! Round trips of every message (encode → parse → equal), the documented example lines of
//! docs/control-api.md, the version check, and both clients against a scripted agent.

use std::net::SocketAddr;

use serde_json::{json, Value};
use speech_proto::{Channel, Codec, PauseReason, StopReason};

use crate::codec::{decode_request_line, encode_response, ClientDecoder, Incoming};
use crate::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn flow() -> FlowSpec {
    FlowSpec {
        local: sa("10.77.1.1:30000"),
        src: sa("10.77.2.1:30002"),
        dst: sa("10.77.2.2:40000"),
        expect: Some(sa("10.77.1.2:40000")),
        rtcp: false,
        payload_types: vec![0, 8],
        dtmf_pt: Some(101),
        sink: false,
    }
}

fn fork() -> ForkSpec {
    let mut metadata = serde_json::Map::new();
    metadata.insert("any".into(), json!("object"));
    ForkSpec {
        destination: None,
        call_guid: "8ee2e6b0-1".into(),
        call_id: "a84b4c76e66710@pc33".into(),
        from: "1000".into(),
        to: "2000".into(),
        server: "asr".into(),
        codec: Codec::Pcmu,
        ptime_ms: 20,
        metadata,
        streams: vec![
            StreamSpec {
                channel: Channel::Caller,
                flow: sa("10.77.1.1:30000"),
            },
            StreamSpec {
                channel: Channel::Callee,
                flow: sa("10.77.2.1:30002"),
            },
        ],
        return_audio: None,
    }
}

fn channel() -> ChannelSpec {
    ChannelSpec {
        client: sa("10.77.1.2:50000"),
        server: sa("10.77.1.1:3478"),
        number: 16385,
        relay: sa("10.77.2.1:24000"),
        peer: sa("10.77.2.2:60000"),
    }
}

/// One of every operation, with optional fields both set and left out.
fn every_op() -> Vec<Op> {
    let mut bare_flow = flow();
    bare_flow.expect = None;
    bare_flow.dtmf_pt = None;
    bare_flow.rtcp = true;
    let mut bare_fork = fork();
    bare_fork.call_id.clear();
    bare_fork.from.clear();
    bare_fork.to.clear();
    bare_fork.metadata.clear();
    let mut ops = vec![
        Op::FlowAdd { flow: flow() },
        Op::FlowAdd { flow: bare_flow },
        Op::FlowDel {
            local: sa("[2001:db8::1]:30000"),
        },
        Op::ForkStart { fork: fork() },
        Op::ForkStart { fork: bare_fork },
        Op::ForkStart {
            fork: ForkSpec {
                destination: Some(Destination {
                    url: "wss://asr.example.com:8443/fork?lang=en".into(),
                    auth_token: Some("e2238f3a".into()),
                    profile: Some(speech_proto::Profile::Twilio),
                }),
                ..fork()
            },
        },
        Op::ForkStart {
            fork: ForkSpec {
                destination: Some(Destination {
                    url: "ws://10.64.86.215:8000".into(),
                    auth_token: None,
                    profile: None,
                }),
                ..fork()
            },
        },
        Op::ForkStart {
            fork: ForkSpec {
                return_audio: Some(ReturnAudio {
                    to: Channel::Caller,
                    flow: sa("10.77.2.1:30002"),
                    payload_type: Some(8),
                    mode: ReturnMode::Mix,
                }),
                ..fork()
            },
        },
        Op::ForkStop {
            call_guid: "g".into(),
            reason: StopReason::CallEnd,
        },
        Op::ForkPause {
            call_guid: "g".into(),
            reason: PauseReason::CodecChange,
        },
        Op::ForkResume {
            call_guid: "g".into(),
            codec: Some(Codec::Pcma),
        },
        Op::ForkResume {
            call_guid: "g".into(),
            codec: None,
        },
        Op::ForkUpdate {
            call_guid: "g".into(),
            metadata: fork().metadata,
        },
        Op::Subscribe,
        Op::ShowStreamService {
            what: StreamServiceShow::Callid,
            arg: None,
        },
        Op::ClearStreamConnection {
            id: 3,
            forced: true,
        },
        Op::ClearStreamStatistics,
        Op::ShowFlows,
        Op::FlowStats {
            locals: vec![sa("10.77.1.1:30000"), sa("[fd77:1::1]:30002")],
        },
        Op::ShowCounters,
        Op::ShowForks,
        Op::TurnChannelAdd { channel: channel() },
        channel().key().del_op(),
        Op::ShowTurn,
    ];
    for what in [
        StreamServiceShow::Connection,
        StreamServiceShow::ConnectionHistory,
        StreamServiceShow::ConnectionId,
        StreamServiceShow::Server,
        StreamServiceShow::Statistics,
    ] {
        ops.push(Op::ShowStreamService {
            what,
            arg: Some("3".into()),
        });
    }
    ops
}

#[test]
fn every_request_round_trips() {
    for op in every_op() {
        let line = op.to_line();
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(parse_request(&line), Ok(op.clone()), "{line}");
        // The line names the op as `name()` does.
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["op"], op.name());
        assert_eq!(v["v"], API_VERSION);
    }
}

/// The request lines of docs/control-api.md, as shown there (the `//` comments of the
/// `flow_add` and `fork_start` examples left out: they are not JSON).
#[test]
fn documented_requests_parse() {
    let doc = [
        r#"{"v":1,"op":"flow_add","flow":{"local":"10.77.1.1:30000","src":"10.77.2.1:30002","dst":"10.77.2.2:40000","expect":"10.77.1.2:40000","rtcp":false,"payload_types":[0,8],"dtmf_pt":101}}"#,
        r#"{"v":1,"op":"flow_del","local":"10.77.1.1:30000"}"#,
        r#"{"v":1,"op":"fork_start","fork":{"call_guid":"8ee2e6b0-1","call_id":"a84b4c76e66710@pc33","from":"1000","to":"2000","server":"asr","codec":"PCMU","ptime_ms":20,"metadata":{"any":"object"},"streams":[{"channel":"caller","flow":"10.77.1.1:30000"},{"channel":"callee","flow":"10.77.2.1:30002"}]}}"#,
        r#"{"v":1,"op":"fork_stop","call_guid":"8ee2e6b0-...","reason":"request"}"#,
        r#"{"v":1,"op":"fork_pause","call_guid":"8ee2e6b0-...","reason":"hold"}"#,
        r#"{"v":1,"op":"fork_resume","call_guid":"8ee2e6b0-...","codec":"PCMA"}"#,
        r#"{"v":1,"op":"fork_update","call_guid":"8ee2e6b0-...","metadata":{"agent":"1042"}}"#,
        r#"{"v":1,"op":"subscribe"}"#,
        r#"{"v":1,"op":"show_stream_service","what":"callid","arg":"8ee2e6b0-..."}"#,
        r#"{"v":1,"op":"show_stream_service","what":"connection"}"#,
        r#"{"v":1,"op":"show_stream_service","what":"connection_history"}"#,
        r#"{"v":1,"op":"show_stream_service","what":"connection_id","arg":"3"}"#,
        r#"{"v":1,"op":"show_stream_service","what":"server","arg":"10.77.3.2:9000"}"#,
        r#"{"v":1,"op":"show_stream_service","what":"statistics"}"#,
        r#"{"v":1,"op":"clear_stream_connection","id":3,"forced":true}"#,
        r#"{"v":1,"op":"clear_stream_statistics"}"#,
        r#"{"v":1,"op":"show_flows"}"#,
        r#"{"v":1,"op":"turn_channel_add","channel":{"client":"10.77.1.2:50000","server":"10.77.1.1:3478","number":16385,"relay":"10.77.2.1:24000","peer":"10.77.2.2:60000"}}"#,
        r#"{"v":1,"op":"turn_channel_del","client":"10.77.1.2:50000","server":"10.77.1.1:3478","number":16385}"#,
    ];
    for line in doc {
        let op = parse_request(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        // Parsed and encoded again, the line means the same.
        assert_eq!(parse_request(&op.to_line()), Ok(op));
    }
    // The full examples are these values.
    assert_eq!(parse_request(doc[0]), Ok(Op::FlowAdd { flow: flow() }));
    assert_eq!(parse_request(doc[2]), Ok(Op::ForkStart { fork: fork() }));
    assert_eq!(
        parse_request(doc[17]),
        Ok(Op::TurnChannelAdd { channel: channel() })
    );
    assert_eq!(parse_request(doc[18]), Ok(channel().key().del_op()));
}

#[test]
fn defaults_are_the_documented_ones() {
    let line = r#"{"v":1,"op":"flow_add","flow":{"local":"10.0.0.1:4000","src":"10.0.1.1:4002","dst":"10.0.1.2:5000"}}"#;
    let Ok(Op::FlowAdd { flow }) = parse_request(line) else {
        panic!("flow_add expected")
    };
    assert_eq!(flow.payload_types, vec![0, 8]);
    assert_eq!((flow.expect, flow.rtcp, flow.dtmf_pt), (None, false, None));
    // Encoding leaves the absent optional fields out, as sip-agent always sent them.
    assert_eq!(
        Op::FlowAdd { flow }.to_line(),
        r#"{"v":1,"op":"flow_add","flow":{"local":"10.0.0.1:4000","src":"10.0.1.1:4002","dst":"10.0.1.2:5000","rtcp":false,"payload_types":[0,8]}}"#
    );
    assert_eq!(
        parse_request(r#"{"v":1,"op":"fork_pause","call_guid":"g"}"#),
        Ok(Op::ForkPause {
            call_guid: "g".into(),
            reason: PauseReason::Request
        })
    );
    assert_eq!(
        parse_request(r#"{"v":1,"op":"fork_stop","call_guid":"g"}"#),
        Ok(Op::ForkStop {
            call_guid: "g".into(),
            reason: StopReason::Request
        })
    );
    let Ok(Op::ForkStart { fork }) = parse_request(
        r#"{"v":1,"op":"fork_start","fork":{"call_guid":"g","server":"asr","codec":"PCMA","streams":[]}}"#,
    ) else {
        panic!("fork_start expected")
    };
    assert_eq!((fork.ptime_ms, fork.call_id.as_str()), (20, ""));
    // Return audio: the bot talks to the caller and replaces its peer unless told to mix.
    let Ok(Op::ForkStart { fork }) = parse_request(
        r#"{"v":1,"op":"fork_start","fork":{"call_guid":"g","server":"bot","codec":"PCMU","streams":[],"return_audio":{"flow":"10.0.0.1:4000"}}}"#,
    ) else {
        panic!("fork_start expected")
    };
    let ra = fork.return_audio.expect("return_audio parsed");
    assert_eq!(
        (ra.to, ra.mode, ra.payload_type),
        (Channel::Caller, ReturnMode::Replace, None)
    );
    assert!(
        parse_request(r#"{"v":1,"op":"fork_start","fork":{"call_guid":"g","server":"bot","codec":"PCMU","streams":[],"return_audio":{"flow":"10.0.0.1:4000","mode":"blend"}}}"#).is_err(),
        "an unknown return mode is refused"
    );
}

#[test]
fn refusals_are_typed() {
    assert_eq!(
        parse_request(r#"{"v":2,"op":"show_flows"}"#),
        Err(ApiError::VersionMismatch {
            client: 2,
            agent: 1
        })
    );
    assert_eq!(
        parse_request(r#"{"op":"show_flows"}"#),
        Err(ApiError::MissingVersion)
    );
    assert!(matches!(
        parse_request("{nope"),
        Err(ApiError::MalformedJson(_))
    ));
    assert!(matches!(
        parse_request(r#"{"v":1,"op":"launch_rockets"}"#),
        Err(ApiError::BadRequest(_))
    ));
    let Err(ApiError::BadRequest(m)) =
        parse_request(r#"{"v":1,"op":"fork_update","call_guid":"g"}"#)
    else {
        panic!("bad request expected")
    };
    assert!(m.contains("metadata"), "{m}");
    assert!(parse_request(r#"{"v":1,"op":"fork_resume","call_guid":"g","codec":"G729"}"#).is_err());
    assert!(
        parse_request(r#"{"v":1,"op":"flow_add","flow":{"local":"10.0.0.1:4000","src":"10.0.1.1:4002","dst":"10.0.1.2:5000","typo":1}}"#).is_err(),
        "unknown fields of a flow are refused"
    );
    assert_eq!(
        decode_request_line(conn_limits::Line::TooLong, 65536),
        Err(ApiError::LineTooLong { max: 65536 })
    );
    assert_eq!(
        decode_request_line(conn_limits::Line::NotUtf8, 1),
        Err(ApiError::NotUtf8)
    );
}

#[test]
fn every_error_reads_back_from_its_text() {
    let all = [
        ApiError::NotReady {
            stage: "loading the XDP programs".into(),
        },
        ApiError::VersionMismatch {
            client: 1,
            agent: 2,
        },
        ApiError::MissingVersion,
        ApiError::MalformedJson("expected value at line 1 column 1".into()),
        ApiError::BadRequest("unknown variant `x`".into()),
        ApiError::NotUtf8,
        ApiError::LineTooLong { max: 65536 },
        ApiError::ShuttingDown,
        ApiError::Refused("flow 10.0.0.1:30000 already exists".into()),
        ApiError::Refused("Codec is not supported".into()),
    ];
    for e in all {
        let resp = Response::error(&e);
        let line = String::from_utf8(encode_response(&resp)).expect("utf-8");
        let Ok(Incoming::Response(back)) = Incoming::decode(line.trim_end()) else {
            panic!("{line}")
        };
        assert_eq!(back.into_result(), Err(e.clone()), "{line}");
    }
    // The documented lines.
    assert_eq!(
        Response::err("flow 10.0.0.1:30000 already exists").into_result(),
        Err(ApiError::Refused(
            "flow 10.0.0.1:30000 already exists".into()
        ))
    );
    let e = ApiError::from_wire("not ready: fork-agent is attaching the XDP programs");
    assert!(e.is_not_ready());
    assert!(e.to_string().starts_with(NOT_READY));
    // An old client against a newer agent: the error names both versions.
    let text = ApiError::VersionMismatch {
        client: 1,
        agent: 2,
    }
    .to_string();
    assert!(
        text.contains("version 1") && text.contains("speaks 2"),
        "{text}"
    );
}

#[test]
fn typed_answers_round_trip_and_read_the_documented_shapes() {
    let row = FlowRow {
        local: sa("10.77.1.1:30000"),
        src: sa("10.77.2.1:30002"),
        dst: sa("10.77.2.2:40000"),
        stream_id: Some(7),
        stats_index: 3,
        path: FlowPath::KernelAndUserSpace,
        packets: 10,
        bytes: 1720,
        forked: 9,
        lost: 1,
        out_of_order: 0,
        wrong_pt: 0,
        errors: 0,
        strict_drops: 0,
        passed: 1,
        dtmf: 0,
        rtcp: 0,
        ssrc: 0x1234,
        last_seq: 99,
        idle_ms: None,
        userspace_packets: 1,
        userspace_bytes: 172,
        userspace_forked: 1,
        userspace_fork_drops: 0,
        fallback: "bound".into(),
    };
    let cases: Vec<(Op, Answer)> = vec![
        (
            Op::FlowAdd { flow: flow() },
            Answer::FlowAdded(FlowAdded {
                stats_index: 4,
                fallback: "bound".into(),
            }),
        ),
        (
            Op::ForkStart { fork: fork() },
            Answer::ForkStarted(ForkStarted {
                streams: vec![
                    StartedStream {
                        stream_id: 1,
                        channel: Channel::Caller,
                    },
                    StartedStream {
                        stream_id: 2,
                        channel: Channel::Callee,
                    },
                ],
            }),
        ),
        (
            Op::TurnChannelAdd { channel: channel() },
            Answer::ChannelAdded(ChannelAdded {
                to_peer_stats: 5,
                to_client_stats: 6,
            }),
        ),
        (Op::ShowFlows, Answer::Flows(vec![row.clone()])),
        (
            Op::FlowStats {
                locals: vec![row.local],
            },
            Answer::Flows(vec![row.clone()]),
        ),
        (
            Op::ShowForks,
            Answer::Forks(vec![Fork {
                spec: fork(),
                streams: vec![(17, sa("10.77.1.1:30000"))],
            }]),
        ),
        (
            Op::ShowTurn,
            Answer::Turn(vec![TurnRow {
                client: sa("10.77.1.2:50000"),
                server: sa("10.77.1.1:3478"),
                channel: 16385,
                relay: sa("10.77.2.1:24000"),
                peer: sa("10.77.2.2:60000"),
                to_peer: TurnDirection {
                    packets: 1,
                    bytes: 2,
                    passed: 0,
                },
                to_client: TurnDirection::default(),
            }]),
        ),
        (Op::ShowCounters, Answer::Json(json!({"kernel": {}}))),
        (
            Op::FlowDel {
                local: sa("10.0.0.1:1"),
            },
            Answer::Done,
        ),
    ];
    for (op, answer) in cases {
        let data = answer.to_value();
        assert_eq!(data.is_null(), answer == Answer::Done);
        let line = String::from_utf8(encode_response(&Response::ok(data))).expect("utf-8");
        let Ok(Incoming::Response(resp)) = Incoming::decode(line.trim_end()) else {
            panic!("{line}")
        };
        assert_eq!(codec::finish(&op, resp).expect(&line), answer, "{line}");
    }
    // The documented answers.
    let started = Answer::decode(
        &Op::ForkStart { fork: fork() },
        json!({"streams":[{"stream_id":1,"channel":"caller"},{"stream_id":2,"channel":"callee"}]}),
    )
    .expect("fork_start answer");
    assert!(matches!(started, Answer::ForkStarted(s) if s.streams[1].stream_id == 2));
    // A show_forks entry is a fork journal `start` line's object.
    let forks = Answer::decode(
        &Op::ShowForks,
        json!([{"spec":{"call_guid":"7d3c","call_id":"c","from":"1000","to":"2000","server":"asr","codec":"PCMU","ptime_ms":20,"metadata":{},"streams":[{"channel":"caller","flow":"10.77.1.1:30000"}]},"streams":[[17,"10.77.1.1:30000"]]}]),
    )
    .expect("show_forks answer");
    assert!(matches!(forks, Answer::Forks(f) if f[0].streams == vec![(17, sa("10.77.1.1:30000"))]));
    let paths = [
        "kernel",
        "kernel+user-space",
        "user-space",
        "idle",
        "missing",
    ];
    for p in paths {
        let back: FlowPath = serde_json::from_value(json!(p)).expect(p);
        assert_eq!(serde_json::to_value(back).expect("json"), json!(p));
    }
    // An answer of another shape is a typed error naming the op, not a panic or a default.
    let err = codec::finish(&Op::ShowFlows, Response::ok(json!({"flows": 1})))
        .expect_err("shape mismatch");
    assert!(matches!(
        err,
        ClientError::UnexpectedAnswer {
            op: "show_flows",
            ..
        }
    ));
    assert!(!err.is_broken());
}

#[test]
fn every_event_round_trips_and_the_documented_lines_parse() {
    let all = [
        Event::ForkStatus {
            call_guid: "g".into(),
            status: ForkStatus::Started,
            error: None,
            reconnected: true,
            snapshot: false,
            fork_id: Some(5),
        },
        Event::ForkStatus {
            call_guid: "g".into(),
            status: ForkStatus::Error,
            error: Some("TCP Connection closed".into()),
            reconnected: false,
            snapshot: true,
            fork_id: None,
        },
        Event::FlowRemoved {
            local: sa("10.77.1.1:30000"),
            reason: FlowRemovedReason::Idle,
        },
        Event::Lagged { missed: 12 },
    ];
    for ev in all {
        let line = String::from_utf8(codec::encode_event(&ev)).expect("utf-8");
        assert_eq!(
            Incoming::decode(line.trim_end()).expect(&line),
            Incoming::Event(ev)
        );
    }
    let doc = [
        r#"{"event":"fork_status","call_guid":"8ee2e6b0-...","status":"started"}"#,
        r#"{"event":"fork_status","call_guid":"8ee2e6b0-...","status":"started","fork_id":1}"#,
        r#"{"event":"fork_status","call_guid":"8ee2e6b0-...","status":"error","error":"TCP Connection closed"}"#,
        r#"{"event":"fork_status","call_guid":"8ee2e6b0-...","status":"started","reconnected":true}"#,
        r#"{"event":"fork_status","call_guid":"8ee2e6b0-...","status":"stopped","error":"Forking stopped"}"#,
        r#"{"event":"fork_status","call_guid":"8ee2e6b0-...","status":"error","error":"TCP Connection closed","snapshot":true}"#,
        r#"{"event":"lagged","missed":12}"#,
        r#"{"event":"flow_removed","local":"10.77.1.1:30000","reason":"idle"}"#,
    ];
    for line in doc {
        let Ok(Incoming::Event(ev)) = Incoming::decode(line) else {
            panic!("{line}")
        };
        // Encoded again, it is the documented line.
        assert_eq!(ev.to_line(), line);
    }
    // A newer agent's events are skipped, not fatal.
    assert_eq!(
        Incoming::decode(r#"{"event":"flow_moved","local":"10.77.1.1:30000"}"#).expect("unknown"),
        Incoming::Event(Event::Unknown)
    );
    assert!(Incoming::decode(r#"{"event":"flow_removed","local":"x"}"#).is_err());
    assert!(Incoming::decode("not json").is_err());
}

#[test]
fn the_client_decoder_splits_answers_and_events_across_reads() {
    let mut d = ClientDecoder::new(64);
    d.handle_bytes(br#"{"event":"lagged","mis"#);
    assert!(d.poll_incoming().is_none());
    d.handle_bytes(b"sed\":3}\n{\"ok\":true}\n{\"ok\":false,\"error\":\"x\"}");
    assert_eq!(
        d.poll_incoming().map(|r| r.expect("event")),
        Some(Incoming::Event(Event::Lagged { missed: 3 }))
    );
    assert_eq!(
        d.poll_incoming().map(|r| r.expect("answer")),
        Some(Incoming::Response(Response::ok(Value::Null)))
    );
    assert!(
        d.poll_incoming().is_none(),
        "the last line is not complete yet"
    );
    d.handle_bytes(b"\n");
    assert!(matches!(d.poll_incoming(), Some(Ok(Incoming::Response(r))) if !r.ok));
    d.handle_bytes(&[b'x'; 100]);
    assert!(matches!(
        d.poll_incoming(),
        Some(Err(ClientError::AnswerTooLong { max: 64 }))
    ));
}

/// A scripted agent on a temporary socket: reads one request line per entry of `answers`,
/// checks it parses, and writes the entry's lines. Returns the requests it read.
fn scripted_agent(
    name: &str,
    answers: Vec<Vec<String>>,
) -> (
    std::path::PathBuf,
    std::thread::JoinHandle<Vec<Result<Op, ApiError>>>,
) {
    use std::io::{BufRead, BufReader, Write};
    let path = std::env::temp_dir().join(format!("control-api-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let handle = std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut w = s;
        let mut got = Vec::new();
        for lines in answers {
            let mut req = String::new();
            if r.read_line(&mut req).unwrap_or(0) == 0 {
                break;
            }
            got.push(parse_request(req.trim_end()));
            for l in lines {
                w.write_all(format!("{l}\n").as_bytes()).expect("write");
            }
        }
        got
    });
    (path, handle)
}

#[test]
fn the_blocking_client_reads_typed_answers_keeps_events_and_names_both_versions() {
    let (path, agent) = scripted_agent(
        "blocking",
        vec![
            vec![r#"{"ok":true}"#.into()],
            vec![
                r#"{"event":"fork_status","call_guid":"g","status":"started"}"#.into(),
                r#"{"ok":true,"data":{"streams":[{"stream_id":1,"channel":"caller"}]}}"#.into(),
            ],
            vec![r#"{"ok":false,"error":"control API version 1 not supported (this agent speaks 2)"}"#.into()],
            vec![r#"{"ok":false,"error":"not ready: fork-agent is loading the XDP programs"}"#.into()],
        ],
    );
    let mut c = BlockingClient::connect(&path).expect("connect");
    c.subscribe().expect("subscribe");
    let Answer::ForkStarted(s) = c.call(&Op::ForkStart { fork: fork() }).expect("fork_start")
    else {
        panic!("typed fork_start answer expected")
    };
    assert_eq!(s.streams[0].stream_id, 1);
    // The event that came before the answer is kept.
    assert!(matches!(
        c.next_event(std::time::Duration::from_millis(1)),
        Ok(Some(Event::ForkStatus {
            status: ForkStatus::Started,
            ..
        }))
    ));
    let err = c.call(&Op::ShowFlows).expect_err("version mismatch");
    assert!(matches!(
        err,
        ClientError::Api(ApiError::VersionMismatch {
            client: 1,
            agent: 2
        })
    ));
    let text = err.to_string();
    assert!(text.contains('1') && text.contains('2'), "{text}");
    let err = c.call(&Op::ShowFlows).expect_err("not ready");
    assert!(err.api().is_some_and(ApiError::is_not_ready));
    // Nothing more comes: a bounded wait, then the agent is gone.
    let got = agent.join().expect("agent");
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(Result::is_ok), "{got:?}");
    assert!(matches!(
        c.call(&Op::ShowFlows),
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    let _ = std::fs::remove_file(&path);
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn the_tokio_client_reads_typed_answers_and_events() {
    let (path, agent) = scripted_agent(
        "tokio",
        vec![
            vec![
                r#"{"ok":true}"#.into(),
                r#"{"event":"flow_removed","local":"10.77.1.1:30000","reason":"idle"}"#.into(),
            ],
            vec![r#"{"ok":true,"data":[]}"#.into()],
            vec![r#"{"ok":false,"error":"flow 10.0.0.1:30000 already exists"}"#.into()],
        ],
    );
    let mut c = AsyncClient::connect(&path).await.expect("connect");
    c.subscribe().await.expect("subscribe");
    assert_eq!(
        c.call(&Op::ShowForks).await.expect("show_forks"),
        Answer::Forks(vec![])
    );
    let err = c
        .call(&Op::FlowAdd { flow: flow() })
        .await
        .expect_err("refused");
    assert_eq!(
        err.api(),
        Some(&ApiError::Refused(
            "flow 10.0.0.1:30000 already exists".into()
        ))
    );
    assert!(!err.is_broken());
    assert_eq!(
        c.next_event().await.expect("event"),
        Event::FlowRemoved {
            local: sa("10.77.1.1:30000"),
            reason: FlowRemovedReason::Idle
        }
    );
    let got = tokio::task::spawn_blocking(move || agent.join().expect("agent"))
        .await
        .expect("join");
    assert_eq!(got.len(), 3);
    let _ = std::fs::remove_file(&path);
}
