//! Unit tests of fork_request.rs: parsing and validation of each field, the sequence rules,
//! the status report JSON and the reference error strings.

use super::*;

const GUID: &str = "6F0C9A2E1D3B11EEB5D6000C29F1A2B3";

fn start_json(extra: &str) -> String {
    format!(
        r#"{{"type":"START","call-guid":"{GUID}","url":"wss://speech.example.com/fork"{extra}}}"#
    )
}

#[test]
fn error_strings_match_reference_table_verbatim() {
    let table = [
        "Codec is not supported",
        "Connection failed",
        "Internal error",
        "Connection closed",
        "Authentication token invalid",
        "JSON parse failure",
        "Unexpected format or content in JSON",
        "Mandatory parameter missing in JSON",
        "Method not supported",
        "Invalid Start Fork Request",
        "Invalid Stop Fork Request",
        "DNS lookup failed",
        "Proxy DNS lookup failed",
        "Unsupported flow",
        "Forking stopped",
        "TCP Connection closed",
        "High availability Switchover",
        "GUID Mismatch",
        "Invalid Update Fork Request",
    ];
    for (e, s) in ForkError::ALL.iter().zip(table) {
        assert_eq!(e.as_str(), s);
        assert_eq!(e.to_string(), s);
        assert_eq!(ForkError::from_wire(s), Some(*e));
    }
    assert_eq!(ForkError::from_wire("json parse failure"), None);
}

#[test]
fn full_start_parses() {
    let body = start_json(
        r#","port":8443,"auth-token":"abc.def","codec":"g711alaw","metadata":{"agent":"42"}"#,
    );
    let ForkRequest::Start(s) = ForkRequest::parse(body.as_bytes()).expect("valid") else {
        panic!("not a start");
    };
    assert_eq!(s.call_guid, GUID);
    assert_eq!(s.server.scheme, WsScheme::Wss);
    assert_eq!(s.server.host, "speech.example.com");
    assert_eq!(s.server.port, 8443);
    assert_eq!(s.server.path, "/fork");
    assert_eq!(s.auth_token.as_deref(), Some("abc.def"));
    assert_eq!(s.codec, Some(ForkCodec::G711Alaw));
    assert_eq!(s.metadata.expect("metadata")["agent"], "42");
}

#[test]
fn port_must_be_a_json_integer() {
    assert!(ForkRequest::parse(start_json(r#","port":8080"#).as_bytes()).is_ok());
    for bad in [
        r#","port":"8080""#,
        r#","port":8080.0"#,
        r#","port":0"#,
        r#","port":65536"#,
        r#","port":-1"#,
        r#","port":null"#,
    ] {
        assert_eq!(
            ForkRequest::parse(start_json(bad).as_bytes()),
            Err(ForkError::UnexpectedFormat),
            "{bad}"
        );
    }
}

#[test]
fn url_rules() {
    let parse = |u: &str| {
        let j = format!(r#"{{"type":"START","call-guid":"{GUID}","url":"{u}"}}"#);
        ForkRequest::parse(j.as_bytes()).map(|r| match r {
            ForkRequest::Start(s) => s.server,
            _ => unreachable!("START parses to Start"),
        })
    };
    let s = parse("ws://10.64.86.215:8000").expect("ipv4 url");
    assert_eq!(
        (s.scheme, s.host.as_str(), s.port, s.path.as_str()),
        (WsScheme::Ws, "10.64.86.215", 8000, "/")
    );
    assert_eq!(
        parse("wss://Speech.Example.com?x=1").expect("query").path,
        "/?x=1"
    );
    assert_eq!(parse("ws://a.example").expect("default").port, 80);
    for bad in [
        "http://a.example/",
        "ws://[::1]:80/",
        "ws://user@a.example/",
        "ws://a.example:0/",
        "ws://a.example:080/",
        "ws://a.example:x/",
        "ws://300.1.1.1/",
        "ws:///path",
        "ws://-bad.example/",
        "ws://a.example/p#frag",
        "ws://a b/",
    ] {
        assert_eq!(parse(bad), Err(ForkError::UnexpectedFormat), "{bad}");
    }
    // The port field and the URL's port must agree.
    let j =
        format!(r#"{{"type":"START","call-guid":"{GUID}","url":"ws://a.example:81","port":82}}"#);
    assert_eq!(
        ForkRequest::parse(j.as_bytes()),
        Err(ForkError::UnexpectedFormat)
    );
}

#[test]
fn destination_url_folds_the_port_in() {
    let url = |u: &str, port: &str| {
        let j = format!(r#"{{"type":"START","call-guid":"{GUID}","url":"{u}"{port}}}"#);
        match ForkRequest::parse(j.as_bytes()).expect(u) {
            ForkRequest::Start(s) => s.server.url(),
            _ => unreachable!("START parses to Start"),
        }
    };
    assert_eq!(url("ws://10.77.3.2/stream", ""), "ws://10.77.3.2/stream");
    assert_eq!(
        url("ws://10.77.3.2/stream", r#","port":9000"#),
        "ws://10.77.3.2:9000/stream"
    );
    assert_eq!(
        url("ws://10.77.3.2:9000/s?a=1", r#","port":9000"#),
        "ws://10.77.3.2:9000/s?a=1"
    );
    // The scheme's default port is left out (RFC 3986 §6.2.3), whoever named it.
    assert_eq!(url("ws://a.example:80/x", ""), "ws://a.example/x");
    assert_eq!(
        url("wss://a.example/x", r#","port":443"#),
        "wss://a.example/x"
    );
    assert_eq!(
        url("wss://a.example", r#","port":80"#),
        "wss://a.example:80/"
    );
    assert_eq!(
        url("wss://ASR.Example.com:8443?k=v", ""),
        "wss://asr.example.com:8443/?k=v"
    );
}

#[test]
fn profile_values() {
    let profile = |extra: &str| {
        ForkRequest::parse(start_json(extra).as_bytes()).map(|r| match r {
            ForkRequest::Start(s) => s.profile,
            _ => unreachable!("START parses to Start"),
        })
    };
    assert_eq!(profile(""), Ok(None));
    for p in speech_proto::Profile::ALL {
        assert_eq!(
            profile(&format!(r#","profile":"{}""#, p.as_str())),
            Ok(Some(p))
        );
    }
    for bad in [
        r#""Twilio""#,
        r#""""#,
        r#""websocket""#,
        "3",
        "null",
        r#"["raw"]"#,
    ] {
        assert_eq!(
            profile(&format!(r#","profile":{bad}"#)),
            Err(ForkError::UnexpectedFormat),
            "{bad}"
        );
    }
    // Only START names a destination.
    let stop = format!(r#"{{"type":"STOP","call-guid":"{GUID}","profile":"raw"}}"#);
    assert_eq!(
        ForkRequest::parse(stop.as_bytes()),
        Err(ForkError::UnexpectedFormat)
    );
}

#[test]
fn return_audio_values() {
    let ra = |extra: &str| {
        ForkRequest::parse(start_json(extra).as_bytes()).map(|r| match r {
            ForkRequest::Start(s) => s.return_audio,
            _ => unreachable!("START parses to Start"),
        })
    };
    let want = |to, mode| Ok(Some(ReturnAudioRequest { to, mode }));
    assert_eq!(ra(""), Ok(None));
    // Both keys default: the caller hears the bot alone.
    assert_eq!(
        ra(r#","return-audio":{}"#),
        want(Channel::Caller, ReturnMode::Replace)
    );
    assert_eq!(
        ra(r#","return-audio":{"to":"callee"}"#),
        want(Channel::Callee, ReturnMode::Replace)
    );
    assert_eq!(
        ra(r#","return-audio":{"mode":"mix"}"#),
        want(Channel::Caller, ReturnMode::Mix)
    );
    assert_eq!(
        ra(r#","return-audio":{"to":"caller","mode":"replace"}"#),
        want(Channel::Caller, ReturnMode::Replace)
    );
    for bad in [
        "true",
        r#""caller""#,
        "null",
        r#"{"to":"Caller"}"#,
        r#"{"to":"calling"}"#,
        r#"{"to":1}"#,
        r#"{"mode":"MIX"}"#,
        r#"{"mode":"duck"}"#,
        r#"{"mode":null}"#,
        r#"{"to":"caller","volume":3}"#,
        r#"{"To":"caller"}"#,
    ] {
        assert_eq!(
            ra(&format!(r#","return-audio":{bad}"#)),
            Err(ForkError::UnexpectedFormat),
            "{bad}"
        );
    }
    // Only START asks for it.
    let stop = format!(r#"{{"type":"STOP","call-guid":"{GUID}","return-audio":{{}}}}"#);
    assert_eq!(
        ForkRequest::parse(stop.as_bytes()),
        Err(ForkError::UnexpectedFormat)
    );
}

#[test]
fn codec_values() {
    assert!(ForkRequest::parse(start_json(r#","codec":"g711ulaw""#).as_bytes()).is_ok());
    for bad in [
        r#","codec":"g729""#,
        r#","codec":"G711ULAW""#,
        r#","codec":0"#,
    ] {
        assert_eq!(
            ForkRequest::parse(start_json(bad).as_bytes()),
            Err(ForkError::UnexpectedFormat),
            "{bad}"
        );
    }
}

#[test]
fn json_syntax_and_shape_errors() {
    assert_eq!(ForkRequest::parse(b"{"), Err(ForkError::JsonParseFailure));
    assert_eq!(ForkRequest::parse(b""), Err(ForkError::JsonParseFailure));
    assert_eq!(
        ForkRequest::parse(&vec![b' '; MAX_BODY_LEN + 1]),
        Err(ForkError::JsonParseFailure)
    );
    assert_eq!(
        ForkRequest::parse(b"[1,2]"),
        Err(ForkError::UnexpectedFormat)
    );
    assert_eq!(
        ForkRequest::parse(b"{}"),
        Err(ForkError::MandatoryParameterMissing)
    );
    assert_eq!(
        ForkRequest::parse(br#"{"type":1,"call-guid":"AB"}"#),
        Err(ForkError::UnexpectedFormat)
    );
    assert_eq!(
        ForkRequest::parse(br#"{"type":"PAUSE","call-guid":"AB"}"#),
        Err(ForkError::MethodNotSupported)
    );
    assert_eq!(
        ForkRequest::parse(br#"{"type":"start","call-guid":"AB"}"#),
        Err(ForkError::MethodNotSupported)
    );
}

#[test]
fn mandatory_parameters() {
    assert_eq!(
        ForkRequest::parse(br#"{"type":"STOP"}"#),
        Err(ForkError::MandatoryParameterMissing)
    );
    assert_eq!(
        ForkRequest::parse(br#"{"type":"START","call-guid":"AB"}"#),
        Err(ForkError::MandatoryParameterMissing)
    );
    assert_eq!(
        ForkRequest::parse(br#"{"type":"UPDATE","call-guid":"AB"}"#),
        Err(ForkError::MandatoryParameterMissing)
    );
    for guid in [r#""""#, r#""not-hex!""#, "12345"] {
        let j = format!(r#"{{"type":"STOP","call-guid":{guid}}}"#);
        assert_eq!(
            ForkRequest::parse(j.as_bytes()),
            Err(ForkError::UnexpectedFormat),
            "{guid}"
        );
    }
}

#[test]
fn unknown_or_misplaced_keys_are_rejected() {
    assert_eq!(
        ForkRequest::parse(start_json(r#","Port":8080"#).as_bytes()),
        Err(ForkError::UnexpectedFormat)
    );
    let j = format!(r#"{{"type":"STOP","call-guid":"{GUID}","url":"ws://a"}}"#);
    assert_eq!(
        ForkRequest::parse(j.as_bytes()),
        Err(ForkError::UnexpectedFormat)
    );
    // UPDATE may not change the connection (reference "UPDATE Message" note).
    let j = format!(r#"{{"type":"UPDATE","call-guid":"{GUID}","metadata":{{}},"url":"ws://a"}}"#);
    assert_eq!(
        ForkRequest::parse(j.as_bytes()),
        Err(ForkError::UnexpectedFormat)
    );
    let j = format!(r#"{{"type":"UPDATE","call-guid":"{GUID}","metadata":"x"}}"#);
    assert_eq!(
        ForkRequest::parse(j.as_bytes()),
        Err(ForkError::UnexpectedFormat)
    );
}

fn stop(g: &str) -> ForkRequest {
    ForkRequest::Stop {
        call_guid: g.into(),
    }
}
fn update(g: &str) -> ForkRequest {
    ForkRequest::Update {
        call_guid: g.into(),
        metadata: Map::new(),
    }
}
fn start() -> ForkRequest {
    ForkRequest::parse(start_json("").as_bytes()).expect("valid start")
}

#[test]
fn sequence_rules() {
    let mut seq = ForkSequence::new();
    assert_eq!(
        seq.apply(stop(GUID), Carrier::Info, 1),
        Err(ForkError::InvalidStopForkRequest)
    );
    assert_eq!(
        seq.apply(update(GUID), Carrier::Info, 1),
        Err(ForkError::InvalidUpdateForkRequest)
    );
    assert!(matches!(
        seq.apply(start(), Carrier::Info, 1),
        Ok(ForkRequest::Start(_))
    ));
    assert!(seq.is_active());
    assert_eq!(
        seq.apply(start(), Carrier::Info, 1),
        Err(ForkError::InvalidStartForkRequest)
    );
    assert_eq!(
        seq.apply(update("ABCD"), Carrier::Info, 1),
        Err(ForkError::GuidMismatch)
    );
    assert_eq!(
        seq.apply(stop("ABCD"), Carrier::Info, 1),
        Err(ForkError::GuidMismatch)
    );
    assert!(matches!(
        seq.apply(update(GUID), Carrier::Info, 1),
        Ok(ForkRequest::Update { .. })
    ));
    assert!(matches!(
        seq.apply(stop(GUID), Carrier::Info, 1),
        Ok(ForkRequest::Stop { .. })
    ));
    assert!(!seq.is_active());
    // Restart after stop is allowed.
    assert!(seq.apply(start(), Carrier::Info, 1).is_ok());
    seq.end(GUID);
    assert!(seq.apply(start(), Carrier::Info, 1).is_ok());
}

fn start_guid(guid: &str) -> ForkRequest {
    let body = start_json("").replace(GUID, guid);
    ForkRequest::parse(body.as_bytes()).expect("valid start")
}

#[test]
fn several_forks_per_call_are_named_by_guid() {
    let mut seq = ForkSequence::new();
    let (a, b, c) = (GUID, "BBBB", "CCCC");
    assert!(seq.apply(start_guid(a), Carrier::Info, 2).is_ok());
    // The same GUID twice is refused; another one is accepted up to the limit.
    assert_eq!(
        seq.apply(start_guid(a), Carrier::Info, 2),
        Err(ForkError::InvalidStartForkRequest)
    );
    assert!(seq.apply(start_guid(b), Carrier::Info, 2).is_ok());
    assert_eq!(
        seq.apply(start_guid(c), Carrier::Info, 2),
        Err(ForkError::InvalidStartForkRequest)
    );
    // STOP and UPDATE name their fork; a GUID of no active fork is still a mismatch.
    assert_eq!(
        seq.apply(stop(c), Carrier::Info, 2),
        Err(ForkError::GuidMismatch)
    );
    assert!(matches!(
        seq.apply(update(b), Carrier::Info, 2),
        Ok(ForkRequest::Update { call_guid, .. }) if call_guid == b
    ));
    assert!(seq.apply(stop(a), Carrier::Info, 2).is_ok());
    assert!(seq.is_active_guid(b) && !seq.is_active_guid(a));
    assert_eq!(
        seq.apply(update(a), Carrier::Info, 2),
        Err(ForkError::GuidMismatch)
    );
    // A failed fork frees its place.
    assert!(seq.apply(start_guid(c), Carrier::Info, 2).is_ok());
    seq.end(b);
    assert!(seq.apply(start_guid(a), Carrier::Info, 2).is_ok());
    assert!(seq.is_active_guid(a) && seq.is_active_guid(c));
}

#[test]
fn the_journal_reads_one_guid_or_a_list() {
    let mut seq = ForkSequence::new();
    let none = serde_json::to_value(&seq).expect("json");
    assert_eq!(none["active"], serde_json::Value::Null);
    seq.apply(start_guid("AAAA"), Carrier::Info, 2)
        .expect("start");
    let one = serde_json::to_value(&seq).expect("json");
    assert_eq!(one["active"], "AAAA", "as journals held it before");
    seq.apply(start_guid("BBBB"), Carrier::Info, 2)
        .expect("start");
    let two = serde_json::to_value(&seq).expect("json");
    assert_eq!(two["active"], serde_json::json!(["AAAA", "BBBB"]));
    for v in [none, one, two] {
        let back: ForkSequence = serde_json::from_value(v.clone()).expect("reads back");
        assert_eq!(serde_json::to_value(&back).expect("json"), v);
    }
}

#[test]
fn carriers_cannot_be_mixed_and_update_is_info_only() {
    let mut seq = ForkSequence::new();
    assert!(seq.apply(start(), Carrier::ReInvite, 1).is_ok());
    assert_eq!(
        seq.apply(update(GUID), Carrier::ReInvite, 1),
        Err(ForkError::MethodNotSupported)
    );
    assert_eq!(
        seq.apply(stop(GUID), Carrier::Info, 1),
        Err(ForkError::UnsupportedFlow)
    );
    assert!(seq.is_active(), "rejected request must not change state");
    assert!(seq.apply(stop(GUID), Carrier::ReInvite, 1).is_ok());
}

#[test]
fn status_report_json() {
    let r = StatusReport {
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
    let v: Value = serde_json::from_slice(&r.to_json()).expect("json");
    assert_eq!(v["type"], "STATUS");
    assert_eq!(v["call-guid"], GUID);
    assert_eq!(v["request"], "START");
    assert_eq!(v["state"], "STARTED");
    assert!(v.get("status").is_none());
    assert_eq!(v["streams"][1]["channel-id"], 2);
    assert_eq!(v["streams"][1]["party"], "called");

    let e = StatusReport::rejected(None, None, ForkError::JsonParseFailure);
    assert_eq!(
        String::from_utf8(e.to_json()).expect("utf8"),
        r#"{"type":"STATUS","state":"ERROR","status":"JSON parse failure"}"#
    );
    // A lost connection: no request, the reference string in `status` (docs/fork-request.md).
    let lost = StatusReport {
        call_guid: Some(GUID.into()),
        request: None,
        state: ForkState::Reconnecting,
        status: Some(ForkError::TcpConnectionClosed),
        streams: vec![],
    };
    assert_eq!(
        String::from_utf8(lost.to_json()).expect("utf8"),
        format!(
            r#"{{"type":"STATUS","call-guid":"{GUID}","state":"RECONNECTING","status":"TCP Connection closed"}}"#
        )
    );
}

#[test]
fn guid_hint_reads_broken_requests() {
    let j = format!(r#"{{"type":"START","call-guid":"{GUID}","port":"8080"}}"#);
    assert_eq!(guid_hint(j.as_bytes()).as_deref(), Some(GUID));
    assert_eq!(guid_hint(b"{"), None);
}
