//! The engine driven through its datagram interface, as Kamailio's module drives it: bencoded
//! requests in, replies and control operations out, fork-agent's answers fed back. The harness
//! ([`T`]) is shared with the journal's tests.

use super::*;

const PROXY: &str = "127.0.0.1:5070";
const CALLER_SDP: &str = "v=0\r\no=alice 100 1 IN IP4 10.77.1.2\r\ns=-\r\nc=IN IP4 10.77.1.2\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=ptime:20\r\na=candidate:1 1 UDP 2130706431 10.77.1.2 40000 typ host\r\na=ice-ufrag:abcd\r\na=sendrecv\r\n";
const CALLEE_SDP: &str = "v=0\r\no=bob 200 1 IN IP4 10.77.2.2\r\ns=-\r\nc=IN IP4 10.77.2.2\r\nt=0 0\r\n\
m=audio 40002 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

fn cfg() -> EngineConfig {
    EngineConfig {
        interfaces: vec![
            Interface {
                name: "caller".into(),
                address: "10.77.1.1".parse().expect("ip"),
            },
            Interface {
                name: "callee".into(),
                address: "10.77.2.1".parse().expect("ip"),
            },
        ],
        ports: (30000, 30007),
        speech_server: "asr".into(),
        delete_delay: Duration::from_secs(30),
        max_calls: 3,
        max_message_bytes: 4096,
        reply_cache_ttl: Duration::from_secs(30),
        reply_cache_max: 64,
        rate_per_sec: 1000,
        rate_burst: 1000,
        bencode: bencode::Limits::default(),
        webrtc: None,
        seed: 1,
    }
}

pub(super) struct T {
    pub(super) e: Engine,
    pub(super) now: Instant,
    cookie: u32,
    /// fork-agent's flows as `flow_stats` answers them: the harness answers every `flow_stats`
    /// at once with the rows asked for.
    pub(super) rows: Vec<control_api::FlowRow>,
    bridge_ops: Vec<BridgeOp>,
    /// How the harness answers every `BridgeOp::Open`, as the shell would after binding: `Ok`
    /// unless a test makes the bind fail; `None` leaves the answer to the test.
    bind: Option<Result<(), String>>,
}

impl T {
    pub(super) fn new() -> T {
        T::with(cfg())
    }

    pub(super) fn with(c: EngineConfig) -> T {
        T {
            e: Engine::new(c).expect("engine"),
            now: crate::core::epoch(),
            cookie: 0,
            rows: Vec::new(),
            bridge_ops: Vec::new(),
            bind: Some(Ok(())),
        }
    }

    fn raw(&mut self, bytes: &[u8]) -> (Option<Value>, Vec<(ControlId, Op)>) {
        self.e
            .handle_datagram(self.now, 1_700_000_000, PROXY.parse().expect("addr"), bytes);
        self.drain()
    }

    pub(super) fn drain(&mut self) -> (Option<Value>, Vec<(ControlId, Op)>) {
        let (mut reply, mut ops) = (None, vec![]);
        while let Some(o) = self.e.poll_output() {
            match o {
                Output::Reply { to, bytes, error } => {
                    assert_eq!(to, PROXY.parse().expect("addr"));
                    assert!(reply.is_none(), "two replies");
                    let sp = bytes.iter().position(|b| *b == b' ').expect("cookie");
                    let v = bencode::decode(&bytes[sp + 1..], bencode::Limits::default())
                        .expect("reply decodes");
                    if let Some(e) = &error {
                        // What the shell logs is what the proxy got.
                        assert_eq!(
                            v.get("error-reason").and_then(Value::as_str),
                            Some(e.as_str())
                        );
                    }
                    reply = Some(v);
                }
                Output::Control {
                    id,
                    op: Op::FlowStats { locals },
                } => {
                    let rows = self
                        .rows
                        .iter()
                        .filter(|r| locals.contains(&r.local))
                        .cloned()
                        .collect();
                    let answer = Ok(control_api::Answer::Flows(rows));
                    self.e.handle_control_answer(self.now, id, answer);
                }
                Output::Control { id, op } => ops.push((id, op)),
                Output::Dropped { .. } => {}
                Output::Bridge(op) => {
                    if let (BridgeOp::Open { id, .. }, Some(bind)) = (&op, &self.bind) {
                        self.e.handle_bridge_opened(self.now, *id, bind.clone());
                    }
                    self.bridge_ops.push(op)
                }
            }
        }
        (reply, ops)
    }

    pub(super) fn send(
        &mut self,
        items: Vec<(&str, Value)>,
    ) -> (Option<Value>, Vec<(ControlId, Op)>) {
        self.cookie += 1;
        let mut bytes = format!("{}_{} ", 4242, self.cookie).into_bytes();
        Value::dict(items).encode(&mut bytes);
        self.raw(&bytes)
    }

    /// Answers every operation with `ok`; returns the reply that was held, if any.
    pub(super) fn ok_all(&mut self, ops: &[(ControlId, Op)]) -> Option<Value> {
        let mut reply = None;
        for (id, _) in ops {
            self.e.handle_control_result(self.now, *id, Ok(()));
            let (r, more) = self.drain();
            assert!(more.is_empty());
            reply = reply.or(r);
        }
        reply
    }

    fn offer(&mut self, extra: Vec<(&str, Value)>) -> (Option<Value>, Vec<(ControlId, Op)>) {
        let mut items = vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str("call-1")),
            ("from-tag", Value::str("tag-a")),
            ("sdp", Value::str(CALLER_SDP)),
            ("ICE", Value::str("remove")),
            (
                "replace",
                Value::List(vec![Value::str("origin"), Value::str("session-connection")]),
            ),
            ("transport-protocol", Value::str("RTP/AVP")),
            (
                "direction",
                Value::List(vec![Value::str("caller"), Value::str("callee")]),
            ),
            (
                "received-from",
                Value::List(vec![Value::str("IP4"), Value::str("10.77.1.2")]),
            ),
        ];
        items.extend(extra);
        self.send(items)
    }

    fn answer(&mut self) -> (Option<Value>, Vec<(ControlId, Op)>) {
        self.send(vec![
            ("command", Value::str("answer")),
            ("call-id", Value::str("call-1")),
            ("from-tag", Value::str("tag-a")),
            ("to-tag", Value::str("tag-b")),
            ("sdp", Value::str(CALLEE_SDP)),
            ("ICE", Value::str("remove")),
            ("replace", Value::List(vec![Value::str("origin")])),
        ])
    }

    /// Offer and answer with every control operation accepted.
    pub(super) fn established(&mut self) -> Vec<Op> {
        let (r, ops) = self.offer(vec![]);
        assert_eq!(result(&r), "ok");
        assert!(ops.is_empty(), "no flows before the answer: {ops:?}");
        let (r, ops) = self.answer();
        assert!(r.is_none(), "answer is held until the flows are in");
        let held = self.ok_all(&ops);
        assert_eq!(result(&held), "ok");
        ops.into_iter().map(|(_, o)| o).collect()
    }
}

pub(super) fn result(v: &Option<Value>) -> String {
    v.as_ref()
        .and_then(|v| v.get("result"))
        .and_then(Value::as_str)
        .unwrap_or("<none>")
        .to_owned()
}

fn reason(v: &Option<Value>) -> String {
    v.as_ref()
        .and_then(|v| v.get("error-reason"))
        .and_then(Value::as_str)
        .unwrap_or("<none>")
        .to_owned()
}

fn sdp_of(v: &Option<Value>) -> String {
    v.as_ref()
        .and_then(|v| v.get("sdp"))
        .and_then(Value::as_str)
        .expect("sdp in reply")
        .to_owned()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

#[test]
fn ping_pongs() {
    let mut t = T::new();
    let (r, ops) = t.raw(b"5323_1 d7:command4:pinge");
    assert_eq!(result(&r), "pong");
    assert!(ops.is_empty());
}

#[test]
fn offer_rewrites_towards_the_callee_and_answer_installs_both_directions() {
    let mut t = T::new();
    let (r, _) = t.offer(vec![]);
    let sdp = sdp_of(&r);
    // The offer goes to the callee: it must send to our callee-side address and port.
    assert!(sdp.contains("o=alice 100 1 IN IP4 10.77.2.1\r\n"), "{sdp}");
    assert!(sdp.contains("c=IN IP4 10.77.2.1\r\n"), "{sdp}");
    assert!(sdp.contains("m=audio 30002 RTP/AVP 8 101\r\n"), "{sdp}");
    assert!(
        !sdp.contains("candidate") && !sdp.contains("ice-ufrag"),
        "{sdp}"
    );
    assert!(!sdp.contains("10.77.1.2"), "{sdp}");

    let (r, ops) = t.answer();
    assert!(r.is_none());
    let flows: Vec<&FlowSpec> = ops
        .iter()
        .filter_map(|(_, o)| match o {
            Op::FlowAdd { flow } => Some(flow),
            _ => None,
        })
        .collect();
    assert_eq!(flows.len(), 4, "RTP and RTCP both ways: {ops:?}");
    let rtp = |local: &str| flows.iter().find(|f| f.local == addr(local)).expect(local);
    let to_callee = rtp("10.77.1.1:30000");
    assert_eq!(
        (to_callee.src, to_callee.dst),
        (addr("10.77.2.1:30002"), addr("10.77.2.2:40002"))
    );
    assert_eq!(to_callee.payload_types, vec![0, 8]);
    assert_eq!(to_callee.dtmf_pt, Some(101));
    let to_caller = rtp("10.77.2.1:30002");
    assert_eq!(
        (to_caller.src, to_caller.dst),
        (addr("10.77.1.1:30000"), addr("10.77.1.2:40000"))
    );
    let rtcp = rtp("10.77.1.1:30001");
    assert!(rtcp.rtcp && rtcp.dst == addr("10.77.2.2:40003"));
    let held = t.ok_all(&ops);
    let sdp = sdp_of(&held);
    // The answer goes to the caller: our caller-side address.
    assert!(
        sdp.contains("c=IN IP4 10.77.1.1\r\n") && sdp.contains("m=audio 30000 "),
        "{sdp}"
    );
    assert!(sdp.contains("o=bob 200 1 IN IP4 10.77.1.1\r\n"), "{sdp}");
}

#[test]
fn retransmissions_get_the_same_reply_and_allocate_nothing() {
    let mut t = T::new();
    let mut bytes = b"77_1 ".to_vec();
    Value::dict([
        ("command", Value::str("offer")),
        ("call-id", Value::str("c")),
        ("from-tag", Value::str("f")),
        ("sdp", Value::str(CALLER_SDP)),
    ])
    .encode(&mut bytes);
    let (first, _) = t.raw(&bytes);
    let (again, ops) = t.raw(&bytes);
    assert_eq!(first, again);
    assert!(ops.is_empty());
    assert_eq!(t.e.stats().retransmissions, 1);
    assert_eq!(t.e.ports.in_use(), 2);
    // After the cache's lifetime the cookie is forgotten.
    t.now += Duration::from_secs(31);
    t.e.handle_timeout(t.now);
    assert!(t.e.replies.is_empty());
}

#[test]
fn a_held_reply_is_not_answered_twice_while_pending() {
    let mut t = T::new();
    t.offer(vec![]);
    t.cookie += 1;
    let mut bytes = format!("h_{} ", t.cookie).into_bytes();
    Value::dict([
        ("command", Value::str("answer")),
        ("call-id", Value::str("call-1")),
        ("from-tag", Value::str("tag-a")),
        ("to-tag", Value::str("tag-b")),
        ("sdp", Value::str(CALLEE_SDP)),
    ])
    .encode(&mut bytes);
    let (r, ops) = t.raw(&bytes);
    assert!(r.is_none() && ops.len() == 4);
    let (r2, ops2) = t.raw(&bytes);
    assert!(
        r2.is_none() && ops2.is_empty(),
        "a retransmission while held is ignored"
    );
    assert_eq!(result(&t.ok_all(&ops)), "ok");
    let (r3, _) = t.raw(&bytes);
    assert_eq!(result(&r3), "ok", "and answered from the cache once sent");
}

#[test]
fn refused_flow_is_reported_in_the_answer() {
    let mut t = T::new();
    t.offer(vec![]);
    let (_, ops) = t.answer();
    t.e.handle_control_result(t.now, ops[0].0, Err("no route to 10.77.2.2".into()));
    let _ = t.drain();
    let held = t.ok_all(&ops[1..]);
    assert_eq!(result(&held), "error");
    assert!(reason(&held).contains("no route to 10.77.2.2"), "{held:?}");
    assert_eq!(t.e.stats().control_errors, 1);
    // The refused flow is not deleted later; the others are.
    let (_, ops) = t.send(vec![
        ("command", Value::str("delete")),
        ("call-id", Value::str("call-1")),
        ("from-tag", Value::str("tag-a")),
        ("delete-delay", Value::Int(0)),
    ]);
    assert_eq!(ops.len(), 3, "{ops:?}");
}

#[test]
fn refused_flags_and_sdp_protocols_are_errors_naming_them() {
    for (k, v, named) in [
        ("ICE", Value::str("force"), "ICE=force"),
        ("DTLS", Value::str("passive"), "DTLS=passive"),
        (
            "transport-protocol",
            Value::str("UDP/TLS/RTP/SAVPF"),
            "UDP/TLS/RTP/SAVPF",
        ),
        ("transport-protocol", Value::str("RTP/SAVP"), "RTP/SAVP"),
    ] {
        let mut t = T::new();
        let (r, ops) = t.offer(vec![(k, v)]);
        assert_eq!(result(&r), "error");
        assert!(reason(&r).contains(named), "{k}: {r:?}");
        assert!(ops.is_empty());
        assert_eq!(t.e.call_count(), 0, "a refused offer leaves no call");
    }
    let mut t = T::new();
    let (r, _) = t.send(vec![
        ("command", Value::str("offer")),
        ("call-id", Value::str("c")),
        ("from-tag", Value::str("f")),
        (
            "sdp",
            Value::str(&CALLER_SDP.replace("RTP/AVP", "UDP/TLS/RTP/SAVPF")),
        ),
    ]);
    assert!(
        reason(&r).contains("SDP media protocol UDP/TLS/RTP/SAVPF"),
        "{r:?}"
    );
    let (r, _) = t.offer(vec![(
        "direction",
        Value::List(vec![Value::str("nowhere")]),
    )]);
    assert!(reason(&r).contains("unknown interface 'nowhere'"), "{r:?}");
}

#[test]
fn ignored_keys_come_back_as_a_warning() {
    let mut t = T::new();
    let (r, _) = t.offer(vec![
        ("label", Value::str("caller")),
        ("via-branch", Value::str("z9")),
    ]);
    assert_eq!(result(&r), "ok");
    let w = r
        .as_ref()
        .and_then(|v| v.get("warning"))
        .and_then(Value::as_str);
    assert_eq!(w, Some("ignored: label, via-branch"));
}

#[test]
fn malformed_datagrams_get_errors_or_nothing() {
    let mut t = T::new();
    let (r, _) = t.raw(b"no-dict-here");
    assert!(r.is_none(), "no cookie: nothing to answer");
    let (r, _) = t.raw(b"c1 d7:command4:ping");
    assert!(reason(&r).contains("bencode: input ends"), "{r:?}");
    let (r, _) = t.raw(b"c2 l4:pinge");
    assert_eq!(reason(&r), "the message is not a bencoded dictionary");
    let (r, _) = t.raw(b"c3 d7:command10:play mediae");
    assert!(
        reason(&r).contains("unknown or unsupported command 'play media'"),
        "{r:?}"
    );
    let big = [b"c4 d3:sdp5000:".as_slice(), &[b'x'; 5000], b"e"].concat();
    let (r, _) = t.raw(&big);
    assert!(reason(&r).contains("longer than 4096 bytes"), "{r:?}");
    assert_eq!(t.e.stats().unanswerable, 1);
    assert_eq!(t.e.stats().errors, 4);
    // Nothing disturbed: a call still works.
    t.established();
}

#[test]
fn delete_waits_for_the_delay_then_tears_down() {
    let mut t = T::new();
    let added = t.established();
    let (r, ops) = t.send(vec![
        ("command", Value::str("delete")),
        ("call-id", Value::str("call-1")),
        ("from-tag", Value::str("tag-b")),
        ("to-tag", Value::str("tag-a")),
    ]);
    assert_eq!(result(&r), "ok");
    assert!(
        r.as_ref().and_then(|v| v.get("tags")).is_some(),
        "delete returns the call's state"
    );
    assert!(ops.is_empty(), "flows stay for the delete delay");
    assert_eq!(t.e.poll_timeout(), Some(t.now + Duration::from_secs(30)));
    t.now += Duration::from_secs(30);
    t.e.handle_timeout(t.now);
    let (_, ops) = t.drain();
    let mut deleted: Vec<SocketAddr> = ops
        .iter()
        .map(|(_, o)| match o {
            Op::FlowDel { local } => *local,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let mut locals: Vec<SocketAddr> = added
        .iter()
        .filter_map(|o| match o {
            Op::FlowAdd { flow } => Some(flow.local),
            _ => None,
        })
        .collect();
    deleted.sort();
    locals.sort();
    assert_eq!(deleted, locals);
    assert_eq!(t.e.call_count(), 0);
    assert_eq!(t.e.ports.in_use(), 0);
    // A spurious timeout is a no-op.
    t.e.handle_timeout(t.now);
    assert!(t.drain().1.is_empty());
}

#[test]
fn reoffer_during_the_delete_delay_revives_the_call() {
    let mut t = T::new();
    t.established();
    t.send(vec![
        ("command", Value::str("delete")),
        ("call-id", Value::str("call-1")),
        ("from-tag", Value::str("tag-a")),
    ]);
    let (r, ops) = t.offer(vec![]);
    assert_eq!(result(&r), "ok");
    assert!(ops.is_empty(), "same media, same flows");
    assert_eq!(
        t.e.poll_timeout(),
        Some(t.now + Duration::from_secs(30)),
        "only the reply cache"
    );
    t.now += Duration::from_secs(31);
    t.e.handle_timeout(t.now);
    assert_eq!(t.e.call_count(), 1);
}

#[test]
fn delete_of_an_unknown_call_warns_unless_fatal() {
    let mut t = T::new();
    let base = vec![
        ("command", Value::str("delete")),
        ("call-id", Value::str("nope")),
        ("from-tag", Value::str("x")),
    ];
    let (r, _) = t.send(base.clone());
    assert_eq!(result(&r), "ok");
    assert!(r.as_ref().and_then(|v| v.get("warning")).is_some());
    let mut fatal = base;
    fatal.push(("flags", Value::List(vec![Value::str("fatal")])));
    let (r, _) = t.send(fatal);
    assert_eq!(result(&r), "error");
}

#[test]
fn query_list_and_statistics() {
    let mut t = T::new();
    t.established();
    let (r, _) = t.send(vec![
        ("command", Value::str("query")),
        ("call-id", Value::str("call-1")),
    ]);
    let tags = r.as_ref().and_then(|v| v.get("tags")).expect("tags");
    let a = tags.get("tag-a").expect("tag-a");
    assert_eq!(
        a.get("in dialogue with").and_then(Value::as_str),
        Some("tag-b")
    );
    let stream = match a.get("medias") {
        Some(Value::List(m)) => match m[0].get("streams") {
            Some(Value::List(s)) => s[0].clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    assert_eq!(stream.get("local port"), Some(&Value::Int(30000)));
    assert_eq!(
        stream
            .get("endpoint")
            .and_then(|e| e.get("address"))
            .and_then(Value::as_str),
        Some("10.77.1.2")
    );
    let (r, _) = t.send(vec![
        ("command", Value::str("query")),
        ("call-id", Value::str("x")),
    ]);
    assert_eq!(result(&r), "error");
    let (r, _) = t.send(vec![("command", Value::str("list"))]);
    assert_eq!(
        r.as_ref().and_then(|v| v.get("calls")),
        Some(&Value::List(vec![Value::str("call-1")]))
    );
    let (r, _) = t.send(vec![("command", Value::str("statistics"))]);
    let total = r
        .as_ref()
        .and_then(|v| v.get("statistics"))
        .and_then(|s| s.get("totalstatistics"))
        .expect("totals");
    assert_eq!(total.get("managedsessions"), Some(&Value::Int(1)));
    let cur = r
        .as_ref()
        .and_then(|v| v.get("statistics"))
        .and_then(|s| s.get("currentstatistics"))
        .expect("current");
    assert_eq!(cur.get("sessionsown"), Some(&Value::Int(1)));
}

#[test]
fn call_and_port_limits() {
    let mut t = T::new();
    for i in 0..3 {
        let (r, _) = t.send(vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str(&format!("c{i}"))),
            ("from-tag", Value::str("f")),
            ("sdp", Value::str(CALLER_SDP)),
        ]);
        let want = if i < 2 { "ok" } else { "error" };
        assert_eq!(result(&r), want, "call {i}: {r:?}");
    }
    // Four even ports, two per call: the third call finds none.
    assert_eq!(t.e.stats().rejected_sessions, 1);
}

#[test]
fn start_and_stop_forwarding_map_to_fork_start_and_stop() {
    let mut t = T::new();
    let (r, _) = t.send(vec![
        ("command", Value::str("start forwarding")),
        ("call-id", Value::str("call-1")),
    ]);
    assert!(reason(&r).contains("Unknown call-id"), "{r:?}");
    t.established();
    let (r, ops) = t.send(vec![
        ("command", Value::str("start forwarding")),
        ("call-id", Value::str("call-1")),
        ("destination", Value::str("ws://10.77.3.2:9000/stream")),
        ("auth-token", Value::str("s3cret")),
        ("profile", Value::str("xdpfork")),
    ]);
    assert!(r.is_none(), "held until fork-agent answers");
    let [(id, Op::ForkStart { fork })] = ops.as_slice() else {
        panic!("{ops:?}");
    };
    assert_eq!(fork.call_guid, "call-1");
    assert_eq!(fork.server, "asr");
    assert_eq!(fork.codec, Codec::Pcma);
    assert_eq!(fork.from, "tag-a");
    let d = fork.destination.as_ref().expect("destination");
    assert_eq!(
        (d.url.as_str(), d.auth_token.as_deref()),
        ("ws://10.77.3.2:9000/stream", Some("s3cret"))
    );
    assert_eq!(
        fork.streams,
        vec![
            StreamSpec {
                channel: Channel::Caller,
                flow: addr("10.77.1.1:30000")
            },
            StreamSpec {
                channel: Channel::Callee,
                flow: addr("10.77.2.1:30002")
            },
        ]
    );
    t.e.handle_control_result(t.now, *id, Ok(()));
    assert_eq!(result(&t.drain().0), "ok");
    let (r, _) = t.send(vec![
        ("command", Value::str("start forwarding")),
        ("call-id", Value::str("call-1")),
    ]);
    assert!(reason(&r).contains("already running"), "{r:?}");

    let (r, ops) = t.send(vec![
        ("command", Value::str("stop forwarding")),
        ("call-id", Value::str("call-1")),
    ]);
    assert!(r.is_none());
    assert!(matches!(
        ops.as_slice(),
        [(
            _,
            Op::ForkStop {
                reason: StopReason::Request,
                ..
            }
        )]
    ));
    assert_eq!(result(&t.ok_all(&ops)), "ok");
    let (r, _) = t.send(vec![
        ("command", Value::str("stop forwarding")),
        ("call-id", Value::str("call-1")),
    ]);
    assert!(reason(&r).contains("no forwarding"), "{r:?}");
}

#[test]
fn refused_destination_is_the_error_reason_and_delete_stops_a_fork() {
    let mut t = T::new();
    t.established();
    let (_, ops) = t.send(vec![
        ("command", Value::str("start forwarding")),
        ("call-id", Value::str("call-1")),
        ("from-tag", Value::str("tag-b")),
        ("destination", Value::str("ws://198.51.100.1/x")),
    ]);
    let [(id, Op::ForkStart { fork })] = ops.as_slice() else {
        panic!("{ops:?}");
    };
    assert_eq!(fork.streams.len(), 1, "directional: only the callee");
    assert_eq!(fork.streams[0].channel, Channel::Callee);
    t.e.handle_control_result(
        t.now,
        *id,
        Err("destination not allowed: ws://198.51.100.1/x".into()),
    );
    let (r, _) = t.drain();
    assert!(reason(&r).contains("destination not allowed"), "{r:?}");
    // Refused: not running, so a new start is possible, and delete stops nothing.
    let (_, ops) = t.send(vec![
        ("command", Value::str("start forwarding")),
        ("call-id", Value::str("call-1")),
    ]);
    assert_eq!(result(&t.ok_all(&ops)), "ok");
    let (_, ops) = t.send(vec![
        ("command", Value::str("delete")),
        ("call-id", Value::str("call-1")),
        ("from-tag", Value::str("tag-a")),
        ("delete delay", Value::Int(0)),
    ]);
    assert!(
        matches!(&ops[0].1, Op::ForkStop { reason: StopReason::CallEnd, call_guid } if call_guid == "call-1"),
        "fork stops before the flows go: {ops:?}"
    );
    assert!(ops[1..]
        .iter()
        .all(|(_, o)| matches!(o, Op::FlowDel { .. })));
}

#[test]
fn forwarding_needs_g711() {
    let mut t = T::new();
    t.send(vec![
        ("command", Value::str("offer")),
        ("call-id", Value::str("g")),
        ("from-tag", Value::str("a")),
        (
            "sdp",
            Value::str(
                &CALLER_SDP
                    .replace("RTP/AVP 8 101", "RTP/AVP 18 101")
                    .replace("a=rtpmap:8 PCMA/8000\r\n", ""),
            ),
        ),
    ]);
    let (_, ops) = t.send(vec![
        ("command", Value::str("answer")),
        ("call-id", Value::str("g")),
        ("from-tag", Value::str("a")),
        ("to-tag", Value::str("b")),
        (
            "sdp",
            Value::str(
                &CALLEE_SDP
                    .replace("RTP/AVP 8 101", "RTP/AVP 18 101")
                    .replace("a=rtpmap:8 PCMA/8000\r\n", ""),
            ),
        ),
    ]);
    t.ok_all(&ops);
    let (r, _) = t.send(vec![
        ("command", Value::str("start forwarding")),
        ("call-id", Value::str("g")),
    ]);
    assert_eq!(reason(&r), "Codec is not supported");
}

#[test]
fn reinvite_from_the_callee_moves_only_its_flows() {
    let mut t = T::new();
    t.established();
    let moved = CALLEE_SDP.replace("40002", "40010");
    let (r, ops) = t.send(vec![
        ("command", Value::str("offer")),
        ("call-id", Value::str("call-1")),
        ("from-tag", Value::str("tag-b")),
        ("to-tag", Value::str("tag-a")),
        ("sdp", Value::str(&moved)),
    ]);
    assert!(r.is_none(), "held for the flow change");
    let dels = ops
        .iter()
        .filter(|(_, o)| matches!(o, Op::FlowDel { .. }))
        .count();
    let adds: Vec<&FlowSpec> = ops
        .iter()
        .filter_map(|(_, o)| match o {
            Op::FlowAdd { flow } => Some(flow),
            _ => None,
        })
        .collect();
    assert_eq!((dels, adds.len()), (2, 2), "{ops:?}");
    assert!(adds.iter().any(|f| f.dst == addr("10.77.2.2:40010")));
    let sdp = sdp_of(&t.ok_all(&ops));
    assert!(sdp.contains("m=audio 30000 "), "towards the caller: {sdp}");
}

#[test]
fn strict_source_and_sip_source_address() {
    let mut t = T::new();
    t.offer(vec![
        (
            "flags",
            Value::List(vec![
                Value::str("strict-source"),
                Value::str("SIP-source-address"),
            ]),
        ),
        (
            "received-from",
            Value::List(vec![Value::str("IP4"), Value::str("10.77.1.9")]),
        ),
    ]);
    let (_, ops) = t.answer();
    let to_caller = ops
        .iter()
        .find_map(|(_, o)| match o {
            Op::FlowAdd { flow } if flow.local == addr("10.77.2.1:30002") => Some(flow.clone()),
            _ => None,
        })
        .expect("flow");
    assert_eq!(
        to_caller.dst,
        addr("10.77.1.9:40000"),
        "the SIP source, not the SDP address"
    );
    assert_eq!(to_caller.expect, Some(addr("10.77.2.2:40002")));
}

#[test]
fn rate_limit_drops_and_counts() {
    let mut c = cfg();
    c.rate_burst = 2;
    c.rate_per_sec = 1;
    let mut t = T::with(c);
    assert_eq!(result(&t.raw(b"a d7:command4:pinge").0), "pong");
    assert_eq!(result(&t.raw(b"b d7:command4:pinge").0), "pong");
    t.e.handle_datagram(t.now, 0, addr(PROXY), b"c d7:command4:pinge");
    assert_eq!(
        t.e.poll_output(),
        Some(Output::Dropped {
            from: addr(PROXY),
            cause: DROP_RATE_LIMIT
        })
    );
    assert_eq!(t.e.poll_output(), None);
    assert_eq!(t.e.stats().rate_limited, 1);
}

#[test]
fn forwarding_uses_the_answers_codec() {
    let mut t = T::new();
    t.send(vec![
        ("command", Value::str("offer")),
        ("call-id", Value::str("law")),
        ("from-tag", Value::str("a")),
        (
            "sdp",
            Value::str(&CALLER_SDP.replace("RTP/AVP 8 101", "RTP/AVP 0 8 101")),
        ),
    ]);
    let (_, ops) = t.send(vec![
        ("command", Value::str("answer")),
        ("call-id", Value::str("law")),
        ("from-tag", Value::str("a")),
        ("to-tag", Value::str("b")),
        ("sdp", Value::str(CALLEE_SDP)),
    ]);
    t.ok_all(&ops);
    let (_, ops) = t.send(vec![
        ("command", Value::str("start forwarding")),
        ("call-id", Value::str("law")),
    ]);
    let [(_, Op::ForkStart { fork })] = ops.as_slice() else {
        panic!("{ops:?}");
    };
    assert_eq!(
        fork.codec,
        Codec::Pcma,
        "the offer led with PCMU, the answer chose PCMA"
    );
}

/// Browser legs (docs/webrtc.md): the reference document's two call directions.
mod webrtc {
    use super::*;
    use crate::core::webrtc::{LegReport, Setup};
    use webrtc_bridge::{Fingerprint, Role};

    const FP: &str = "sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";
    const OURS: &str = "sha-256 AA:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";

    fn browser_sdp(setup: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=audio 50000 UDP/TLS/RTP/SAVPF 0 8\r\nc=IN IP4 10.77.1.2\r\na=mid:0\r\na=rtcp-mux\r\n\
a=rtpmap:0 PCMU/8000\r\na=ice-ufrag:brws\r\na=ice-pwd:browserpasswordbrowserpw\r\n\
a=candidate:a 1 udp 2130706431 10.77.1.2 50000 typ host\r\n\
a=fingerprint:{FP}\r\na=setup:{setup}\r\n"
        )
    }

    fn wt() -> T {
        let mut c = cfg();
        c.webrtc = Some(WebrtcConfig {
            fingerprint: Fingerprint::parse(OURS).expect("fp"),
            kernel_address: "10.99.0.1".parse().expect("ip"),
            gateway: "10.99.0.2".parse().expect("ip"),
        });
        T::with(c)
    }

    fn sdp_of(r: &Option<Value>) -> Sdp {
        let v = r.as_ref().and_then(|v| v.get("sdp")).expect("sdp");
        let Value::Bytes(b) = v else {
            panic!("sdp bytes")
        };
        Sdp::parse(b).expect("parse")
    }

    fn flows(ops: &[(ControlId, Op)]) -> Vec<FlowSpec> {
        ops.iter()
            .filter_map(|(_, op)| match op {
                Op::FlowAdd { flow } => Some(flow.clone()),
                _ => None,
            })
            .collect()
    }

    fn browser_offer(t: &mut T, call_id: &str) -> (Option<Value>, Vec<(ControlId, Op)>) {
        t.send(vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str("tag-a")),
            ("sdp", Value::str(&browser_sdp("actpass"))),
            ("transport-protocol", Value::str("RTP/AVP")),
            ("ICE", Value::str("remove")),
        ])
    }

    /// The offer's reply waits until the shell has bound the browser leg's sockets; a failed
    /// bind refuses the offer naming the address and leaves nothing: no call, no journal line,
    /// no flows, the ports free again (the pool has 4, a browser call takes 3).
    #[test]
    fn an_offer_is_answered_only_once_the_browser_sockets_are_bound() {
        let mut t = wt();
        t.bind = None;
        let (r, ops) = browser_offer(&mut t, "call-1");
        assert!(r.is_none(), "no reply before the bind: {r:?}");
        assert!(ops.is_empty());
        let [BridgeOp::Open { id, browser, .. }] = t.bridge_ops[..] else {
            panic!("{:?}", t.bridge_ops)
        };
        assert_eq!(browser, "10.77.1.1:30000".parse().expect("addr"));
        t.bridge_ops.clear();
        t.e.handle_bridge_opened(
            t.now,
            id,
            Err("binding the browser-facing socket 10.77.1.1:30000: Address in use".into()),
        );
        let (r, ops) = t.drain();
        assert_eq!(result(&r), "error");
        assert_eq!(
            r.as_ref()
                .and_then(|v| v.get("error-reason"))
                .and_then(Value::as_str),
            Some(
                "cannot bridge the browser leg on 10.77.1.1:30000: binding the browser-facing \
                 socket 10.77.1.1:30000: Address in use"
            )
        );
        assert!(ops.is_empty(), "no flows to remove: {ops:?}");
        assert_eq!(t.bridge_ops, vec![BridgeOp::Close { browser }]);
        assert_eq!(t.e.call_count(), 0);
        let mut journal = Vec::new();
        while let Some(e) = t.e.poll_journal(t.now, 1_700_000_000) {
            journal.push(e);
        }
        assert_eq!(
            journal,
            vec![journal::Entry::End {
                call_id: "call-1".into()
            }]
        );
        let st = t.e.stats();
        assert_eq!((st.managed_sessions, st.rejected_sessions), (0, 1));

        // A new offer gets all three ports back.
        t.bind = Some(Ok(()));
        let (r, _) = browser_offer(&mut t, "call-2");
        assert_eq!(result(&r), "ok", "{r:?}");
        assert_eq!(t.e.call_count(), 1);
    }

    #[test]
    fn browser_calls_phone_with_the_reference_flags() {
        let mut t = wt();
        // OpenSIPS/Kamailio: SRC_WS, !DST_WS.
        let (r, ops) = t.send(vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str("call-1")),
            ("from-tag", Value::str("tag-a")),
            ("sdp", Value::str(&browser_sdp("actpass"))),
            ("transport-protocol", Value::str("RTP/AVP")),
            (
                "replace",
                Value::List(vec![Value::str("origin"), Value::str("session-connection")]),
            ),
            ("ICE", Value::str("remove")),
            (
                "direction",
                Value::List(vec![Value::str("caller"), Value::str("callee")]),
            ),
        ]);
        assert_eq!(result(&r), "ok", "{r:?}");
        assert!(ops.is_empty());
        let to_phone = sdp_of(&r);
        let audio = to_phone.audio().expect("audio");
        assert_eq!((audio.proto.as_str(), audio.port), ("RTP/AVP", 30002));
        assert_eq!(audio.addr, "10.77.2.1".parse::<IpAddr>().expect("ip"));
        assert_eq!(to_phone.attribute("fingerprint"), None);
        assert_eq!(to_phone.attribute("rtcp-mux"), None);
        let [BridgeOp::Open {
            id: _,
            browser,
            gateway,
            kernel,
            ice,
            remote,
        }] = t.bridge_ops.as_slice()
        else {
            panic!("one bridge: {:?}", t.bridge_ops)
        };
        assert_eq!(*browser, "10.77.1.1:30000".parse().expect("addr"));
        assert_eq!(*gateway, "10.99.0.2:30000".parse().expect("addr"));
        assert_eq!(*kernel, "10.99.0.1:30004".parse().expect("addr"));
        let remote = remote.clone().expect("the offer's fingerprint");
        assert_eq!(remote.role, Some(Role::Server), "DTLS passive by default");
        assert_eq!(remote.fingerprint, Fingerprint::parse(FP).expect("fp"));
        let ice = ice.clone();

        let (r, ops) = t.send(vec![
            ("command", Value::str("answer")),
            ("call-id", Value::str("call-1")),
            ("from-tag", Value::str("tag-a")),
            ("to-tag", Value::str("tag-b")),
            ("sdp", Value::str(CALLEE_SDP)),
            ("transport-protocol", Value::str("UDP/TLS/RTP/SAVPF")),
            ("ICE", Value::str("force")),
        ]);
        // Kernel flows: phone <-> gateway, exactly a plain call's four.
        let f = flows(&ops);
        assert_eq!(f.len(), 4, "{f:?}");
        let from_gw = f
            .iter()
            .find(|f| f.local == "10.99.0.1:30004".parse().expect("a"))
            .expect("gw->phone");
        assert_eq!(from_gw.dst, "10.77.2.2:40002".parse().expect("a"));
        assert_eq!(from_gw.src, "10.77.2.1:30002".parse().expect("a"));
        let to_gw = f
            .iter()
            .find(|f| f.local == "10.77.2.1:30002".parse().expect("a"))
            .expect("phone->gw");
        assert_eq!(to_gw.dst, "10.99.0.2:30000".parse().expect("a"));
        assert_eq!(to_gw.src, "10.99.0.1:30004".parse().expect("a"));
        let r = t.ok_all(&ops).or(r);
        let to_browser = sdp_of(&r);
        let audio = to_browser.audio().expect("audio");
        assert_eq!(
            (audio.proto.as_str(), audio.port),
            ("UDP/TLS/RTP/SAVPF", 30000)
        );
        assert_eq!(to_browser.attribute("setup"), Some("passive"));
        assert_eq!(to_browser.attribute("ice-ufrag"), Some(ice.ufrag.as_str()));
        assert_eq!(to_browser.attribute("ice-lite"), Some(""));
        assert_eq!(to_browser.attribute("mid"), Some("0"));
        assert_eq!(
            Fingerprint::parse(to_browser.attribute("fingerprint").expect("fp")).expect("fp"),
            Fingerprint::parse(OURS).expect("fp")
        );

        // Counters and the selected address from the shell show up in query (counters also in
        // statistics); delete closes the bridge.
        let counters = Counters {
            srtp_auth_failed: 3,
            to_plain: 50,
            ..Counters::default()
        };
        t.e.handle_bridge_report(LegReport {
            browser: "10.77.1.1:30000".parse().expect("a"),
            counters,
            selected: Some("10.77.1.3:24007".parse().expect("relay")),
        });
        let (q, _) = t.send(vec![
            ("command", Value::str("query")),
            ("call-id", Value::str("call-1")),
        ]);
        let leg = q
            .as_ref()
            .and_then(|v| v.get("tags"))
            .and_then(|t| t.get("tag-a"))
            .expect("tag");
        let Some(Value::List(m)) = leg.get("medias") else {
            panic!("medias")
        };
        assert_eq!(
            m[0].get("protocol").and_then(Value::as_str),
            Some("UDP/TLS/RTP/SAVPF")
        );
        assert_eq!(
            m[0].get("webrtc").and_then(|w| w.get("srtp-auth-failed")),
            Some(&Value::Int(3))
        );
        let selected = m[0]
            .get("webrtc")
            .and_then(|w| w.get("selected"))
            .expect("selected");
        assert_eq!(
            (
                selected.get("address").and_then(Value::as_str),
                selected.get("port")
            ),
            (Some("10.77.1.3"), Some(&Value::Int(24007)))
        );
        t.bridge_ops.clear();
        let _ = t.send(vec![
            ("command", Value::str("delete")),
            ("call-id", Value::str("call-1")),
            ("from-tag", Value::str("tag-a")),
            ("delete-delay", Value::Int(0)),
        ]);
        assert_eq!(
            t.bridge_ops,
            vec![BridgeOp::Close {
                browser: "10.77.1.1:30000".parse().expect("a")
            }]
        );
        let (s, _) = t.send(vec![("command", Value::str("statistics"))]);
        let w = s
            .as_ref()
            .and_then(|v| v.get("statistics"))
            .and_then(|v| v.get("webrtc"))
            .expect("webrtc");
        assert_eq!(w.get("srtp-auth-failed"), Some(&Value::Int(3)));
        // All ports back: a new call gets the same ones.
        assert_eq!(t.e.call_count(), 0);
    }

    #[test]
    fn phone_calls_browser_with_the_reference_flags() {
        let mut t = wt();
        let (r, ops) = t.offer(vec![
            ("transport-protocol", Value::str("UDP/TLS/RTP/SAVPF")),
            ("ICE", Value::str("force")),
        ]);
        // The phone's audio may flow to the gateway at once: early audio is held there.
        assert_eq!(flows(&ops).len(), 2);
        let r = t.ok_all(&ops).or(r);
        assert_eq!(result(&r), "ok", "{r:?}");
        let to_browser = sdp_of(&r);
        assert_eq!(
            to_browser.audio().expect("audio").proto,
            "UDP/TLS/RTP/SAVPF"
        );
        assert_eq!(to_browser.attribute("setup"), Some("actpass"));
        assert_eq!(to_browser.attribute("rtcp-mux"), Some(""));
        let [BridgeOp::Open {
            id: _,
            browser,
            remote: None,
            ..
        }] = t.bridge_ops.clone()[..]
        else {
            panic!("{:?}", t.bridge_ops)
        };
        assert_eq!(browser, "10.77.2.1:30002".parse().expect("a"));
        t.bridge_ops.clear();
        // The browser answers active: we are the DTLS server and never send a ClientHello.
        let (r, ops) = t.send(vec![
            ("command", Value::str("answer")),
            ("call-id", Value::str("call-1")),
            ("from-tag", Value::str("tag-a")),
            ("to-tag", Value::str("tag-b")),
            ("sdp", Value::str(&browser_sdp("active"))),
            ("transport-protocol", Value::str("RTP/AVP")),
            ("ICE", Value::str("remove")),
            ("replace", Value::List(vec![Value::str("origin")])),
        ]);
        let [BridgeOp::Remote { remote, .. }] = t.bridge_ops.as_slice() else {
            panic!("{:?}", t.bridge_ops)
        };
        assert_eq!(remote.role, Some(Role::Server));
        assert_eq!(flows(&ops).len(), 2);
        let r = t.ok_all(&ops).or(r);
        let to_phone = sdp_of(&r);
        let audio = to_phone.audio().expect("audio");
        assert_eq!((audio.proto.as_str(), audio.port), ("RTP/AVP", 30000));
        assert_eq!(to_phone.attribute("setup"), None);
        assert_eq!(
            crate::core::webrtc::role_after_answer(Setup::ActPass, Some(Setup::Passive)),
            Ok(Role::Client)
        );
    }

    #[test]
    fn webrtc_refusals_name_their_reason() {
        let mut t = wt();
        let (r, _) = t.offer(vec![("ICE", Value::str("force"))]);
        assert!(
            reason(&r).contains("ICE=force toward a plain RTP/AVP side"),
            "{r:?}"
        );
        let (r, _) = t.send(vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str("c2")),
            ("from-tag", Value::str("f")),
            ("sdp", Value::str(&browser_sdp("actpass"))),
        ]);
        assert!(reason(&r).contains("browser to browser"), "{r:?}");
        let (r, _) = t.send(vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str("c3")),
            ("from-tag", Value::str("f")),
            (
                "sdp",
                Value::str(&browser_sdp("actpass").replace("a=rtcp-mux\r\n", "")),
            ),
            ("transport-protocol", Value::str("RTP/AVP")),
        ]);
        assert!(reason(&r).contains("rtcp-mux"), "{r:?}");
        let (r, _) = t.offer(vec![
            ("transport-protocol", Value::str("UDP/TLS/RTP/SAVPF")),
            ("DTLS", Value::str("off")),
        ]);
        assert!(reason(&r).contains("DTLS=off toward a browser"), "{r:?}");
        assert_eq!(t.e.call_count(), 0);
        assert!(t.bridge_ops.is_empty(), "{:?}", t.bridge_ops);
    }
}
