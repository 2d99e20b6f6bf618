//! AudioHook dialect unit tests: messages against the protocol's published examples, sequence
//! numbers, positions, signatures, and every server-message violation.

use serde_json::json;

use super::*;
use crate::profile::call::testing::*;
use crate::profile::Dialect;
use crate::{ulaw_to_linear, Codec};

const ORG: &str = "d7934305-0972-4844-938e-9060eef73d05";
const NONCE: [u8; 16] = [7; 16];

fn config() -> ProfileConfig {
    ProfileConfig {
        profile: Profile::Audiohook,
        organization_id: Some(ORG.into()),
        client_secret: Some("TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU=".into()),
        ..ProfileConfig::default()
    }
}

fn info(token: Option<&str>) -> UpgradeInfo<'_> {
    UpgradeInfo {
        authority: "AudioHook.example.com",
        path_and_query: "/api/v1/audiohook/ws?x=1",
        token,
        unix_now: 1641013200,
        nonce: NONCE,
    }
}

fn texts(out: &[WireFrame]) -> Vec<Value> {
    out.iter()
        .filter_map(|f| match f {
            WireFrame::Text(t) => Some(serde_json::from_str(t).expect("json")),
            WireFrame::Binary(_) => None,
        })
        .collect()
}

fn binaries(out: &[WireFrame]) -> Vec<&[u8]> {
    out.iter()
        .filter_map(|f| match f {
            WireFrame::Binary(b) => Some(&b[..]),
            WireFrame::Text(_) => None,
        })
        .collect()
}

/// A server message of the session.
struct Server {
    id: String,
    seq: u64,
}

impl Server {
    fn msg(&mut self, kind: &str, clientseq: u64, parameters: Value) -> String {
        self.seq += 1;
        json!({"version":"2","type":kind,"id":self.id,"seq":self.seq,
               "clientseq":clientseq,"parameters":parameters})
        .to_string()
    }
}

/// A dialect with both streams started, `open` sent and answered with `opened` selecting
/// `media`; returns the `open` message.
fn opened(d: &mut Dialect, now: Instant, media: Value) -> (Server, Value) {
    let _ = d.upgrade(&info(Some("key")));
    let mut out = Vec::new();
    d.on_control(now, &start(Channel::Caller, Codec::Pcmu), &mut out);
    d.on_control(now, &start(Channel::Callee, Codec::Pcma), &mut out);
    d.flush(now, &mut out);
    let open = texts(&out).remove(0);
    let mut server = Server {
        id: open["id"].as_str().expect("id").to_owned(),
        seq: 0,
    };
    let m = server.msg("opened", 1, json!({ "media": media }));
    assert_eq!(
        d.on_server_text(now, &m, &mut out),
        Ok(ServerSignal::Accepted)
    );
    (server, open)
}

fn stereo() -> Value {
    json!([{"type":"audio","format":"PCMU","channels":["external","internal"],"rate":8000}])
}

#[test]
fn upgrade_headers_and_signature() {
    let d = Dialect::new(&config()).expect("dialect");
    let up = d.upgrade(&info(Some("SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh")));
    assert_eq!(up.subprotocol, None);
    let names: Vec<&str> = up.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Audiohook-Organization-Id",
            "Audiohook-Session-Id",
            "Audiohook-Correlation-Id",
            "X-API-KEY",
            "Signature-Input",
            "Signature"
        ],
        "the token is the API key: no Authorization header"
    );
    let h = |n: &str| {
        up.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .expect(n)
    };
    let session = ids::uuid_v4(NONCE);
    assert_eq!(h("Audiohook-Session-Id"), session);
    assert!(is_audiohook_uuid(h("Audiohook-Correlation-Id")));
    assert_ne!(h("Audiohook-Correlation-Id"), session);
    let nonce = base64::engine::general_purpose::STANDARD
        .encode(ids::derive16("audiohook-signature-nonce:", &NONCE));
    assert_eq!(
        h("Signature-Input"),
        format!(
            "sig1=(\"@request-target\" \"@authority\" \"audiohook-organization-id\" \
             \"audiohook-session-id\" \"audiohook-correlation-id\" \"x-api-key\");\
             keyid=\"SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh\";nonce=\"{nonce}\";\
             alg=\"hmac-sha256\";created=1641013200;expires=1641013230"
        )
    );
    // The signature covers the lowercased authority and the path with its query.
    let key = base64::engine::general_purpose::STANDARD
        .decode("TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU=")
        .expect("b64");
    let corr = h("Audiohook-Correlation-Id");
    let components = [
        ("@request-target", "/api/v1/audiohook/ws?x=1"),
        ("@authority", "audiohook.example.com"),
        ("audiohook-organization-id", ORG),
        ("audiohook-session-id", session.as_str()),
        ("audiohook-correlation-id", corr),
        ("x-api-key", "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"),
    ];
    let (_, want) = sign(
        &Covered {
            components: &components,
            keyid: "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh",
            nonce: &nonce,
            created: 1641013200,
            expires: 1641013230,
        },
        &key,
    );
    assert_eq!(h("Signature"), want);

    // A configured API key: the token goes in the auth scheme; no secret, no signature.
    let d = Dialect::new(&ProfileConfig {
        api_key: Some("configured".into()),
        client_secret: None,
        ..config()
    })
    .expect("dialect");
    let up = d.upgrade(&info(Some("tok")));
    assert!(up
        .headers
        .contains(&("X-API-KEY".into(), "configured".into())));
    assert!(up
        .headers
        .contains(&("Authorization".into(), "Bearer tok".into())));
    assert!(!up.headers.iter().any(|(n, _)| n == "Signature"));
}

#[test]
#[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
fn open_opened_audio_ping_close() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut d = Dialect::new(&config()).expect("dialect");
    let _ = d.upgrade(&info(Some("key")));
    let mut out = Vec::new();
    d.on_control(t0, &start(Channel::Caller, Codec::Pcmu), &mut out);
    d.on_control(t0, &start(Channel::Callee, Codec::Pcma), &mut out);
    d.flush(t0, &mut out);
    let session = ids::uuid_v4(NONCE);
    let participant = ids::uuid_v5(&ids::NAMESPACE, &format!("participant:{GUID}"));
    assert_eq!(
        texts(&out),
        vec![
            json!({"version":"2","type":"open","id":session,"seq":1,"serverseq":0,
            "position":"PT0S","parameters":{
                "organizationId":ORG,
                // The Cisco GUID of the test call is a version-1 UUID: used as it is.
                "conversationId":GUID,
                "participant":{"id":participant,"ani":"sip:+15551230001@pbx.example.com",
                               "aniName":"","dnis":"sip:6777@cube.example.com"},
                "media":[
                    {"type":"audio","format":"PCMU","channels":["external","internal"],"rate":8000},
                    {"type":"audio","format":"PCMU","channels":["external"],"rate":8000}],
                "customConfig":{"campaign":"support","language":"en-US","priority":2},
                "language":"en-US"}})
        ]
    );
    // Field order as the reference client's buildMessage writes it.
    assert_eq!(
        keys(&out[0]),
        [
            "version",
            "type",
            "id",
            "seq",
            "serverseq",
            "position",
            "parameters"
        ]
    );
    out.clear();
    assert_eq!(d.poll_timeout(), None);

    // Audio before `opened` is dropped and counted.
    d.on_audio(
        at(5),
        frame(Channel::Caller, Codec::Pcmu, 1, 0, true, &[0x80; 160]),
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(d.stats().audio_before_accept, 1);
    assert_eq!(d.dropped_audio(), 1);

    let mut server = Server {
        id: session.clone(),
        seq: 0,
    };
    let opened = server.msg("opened", 1, json!({"media": stereo()}));
    assert_eq!(
        d.on_server_text(at(10), &opened, &mut out),
        Ok(ServerSignal::Accepted)
    );
    assert!(out.is_empty());
    assert_eq!(d.poll_timeout(), Some(at(10) + INITIAL_PING_DELAY));

    // Stereo: caller (PCMU) external first, callee (PCMA → PCMU) internal second.
    let callee: Vec<u8> = (0..160).map(|i| 0x80 | i as u8).collect();
    d.on_audio(
        at(20),
        frame(Channel::Caller, Codec::Pcmu, 2, 160, false, &[0x85; 160]),
        &mut out,
    );
    assert!(out.is_empty(), "waits for the callee");
    d.on_audio(
        at(21),
        frame(Channel::Callee, Codec::Pcma, 1, 0, true, &callee),
        &mut out,
    );
    let frames = binaries(&out);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].len(), 320);
    for i in 0..160 {
        assert_eq!(frames[0][2 * i], 0x85);
        let want = crate::linear_to_ulaw(crate::alaw_to_linear(callee[i]));
        assert_eq!(frames[0][2 * i + 1], want, "sample {i}");
        assert_eq!(
            ulaw_to_linear(want).signum(),
            crate::alaw_to_linear(callee[i]).signum()
        );
    }
    out.clear();

    // Ping after a second; the position counts the 160 samples sent.
    d.on_timeout(at(500), &mut out);
    assert!(out.is_empty(), "not due yet");
    d.on_timeout(at(1010), &mut out);
    assert_eq!(
        texts(&out),
        vec![
            json!({"version":"2","type":"ping","id":session,"seq":2,"serverseq":1,
                    "position":"PT0.02S","parameters":{}})
        ]
    );
    out.clear();
    assert_eq!(
        d.poll_timeout(),
        Some(at(1010) + Duration::from_millis(DEFAULT_PING_INTERVAL_MS))
    );
    let pong = server.msg("pong", 2, json!({}));
    assert_eq!(
        d.on_server_text(at(1022), &pong, &mut out),
        Ok(ServerSignal::Nothing)
    );
    d.on_timeout(at(6010), &mut out);
    assert_eq!(texts(&out)[0]["parameters"], json!({"rtt":"PT0.012S"}));
    out.clear();
    // No pong for that one: the next interval sends none and counts it.
    d.on_timeout(at(11010), &mut out);
    assert!(out.is_empty());
    assert_eq!(d.stats().pongs_missed, 1);

    // Both streams stop: `close` at flush, `closed` allowed once.
    d.on_control(
        at(12000),
        &stop(Channel::Caller, StopReason::CallEnd),
        &mut out,
    );
    d.on_control(
        at(12000),
        &stop(Channel::Callee, StopReason::CallEnd),
        &mut out,
    );
    d.flush(at(12000), &mut out);
    let msgs = texts(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        (&msgs[0]["type"], &msgs[0]["seq"], &msgs[0]["parameters"]),
        (&json!("close"), &json!(4), &json!({"reason":"end"}))
    );
    assert_eq!(d.poll_timeout(), None);
    out.clear();
    d.on_local_close(at(12001), &mut out);
    assert!(out.is_empty(), "close is sent once");
    let closed = server.msg("closed", 4, json!({}));
    assert_eq!(
        d.on_server_text(at(12010), &closed, &mut out),
        Ok(ServerSignal::Nothing)
    );
    let again = server.msg("closed", 4, json!({}));
    assert_eq!(
        d.on_server_text(at(12011), &again, &mut out),
        Err(ServerViolation::UnexpectedState)
    );
}

#[test]
#[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
fn hold_and_server_pause() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut d = Dialect::new(&config()).expect("dialect");
    let (mut server, _) = opened(&mut d, t0, stereo());
    let mut out = Vec::new();
    let p = [0xFF; 160];
    d.on_audio(
        at(0),
        frame(Channel::Caller, Codec::Pcmu, 1, 0, true, &p),
        &mut out,
    );
    d.on_audio(
        at(0),
        frame(Channel::Callee, Codec::Pcma, 1, 0, true, &[0xD5; 160]),
        &mut out,
    );
    // The caller goes on hold: the callee continues alone (caller silent), no `paused`.
    d.on_control(at(20), &pause(Channel::Caller), &mut out);
    d.on_audio(
        at(20),
        frame(Channel::Callee, Codec::Pcma, 2, 160, false, &[0xD5; 160]),
        &mut out,
    );
    assert_eq!(binaries(&out).len(), 2);
    assert!(texts(&out).is_empty());
    out.clear();
    // Both on hold: `paused` at position 320 samples.
    d.on_control(at(40), &pause(Channel::Callee), &mut out);
    let m = texts(&out);
    assert_eq!(
        (&m[0]["type"], &m[0]["position"]),
        (&json!("paused"), &json!("PT0.04S"))
    );
    out.clear();
    // Back after 2.5 s: `resumed` says where the pause began and how long it lasted.
    d.on_control(at(2540), &resume(Channel::Callee, Codec::Pcmu), &mut out);
    let m = texts(&out);
    assert_eq!(m[0]["type"], "resumed");
    assert_eq!(
        m[0]["parameters"],
        json!({"start":"PT0.04S","discarded":"PT2.5S"})
    );
    assert_eq!(m[0]["position"], "PT2.54S");
    out.clear();

    // Server pause: answered with `paused`; audio withheld; positions keep counting.
    let pause_msg = server.msg("pause", 3, json!({}));
    assert_eq!(
        d.on_server_text(at(3000), &pause_msg, &mut out),
        Ok(ServerSignal::Nothing)
    );
    assert_eq!(texts(&out)[0]["type"], "paused");
    out.clear();
    d.on_audio(
        at(3000),
        frame(Channel::Callee, Codec::Pcmu, 3, 320, false, &p),
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(d.stats().audio_withheld, 1);
    // The caller's hold ends during the server pause: nothing to say yet.
    d.on_control(at(3500), &resume(Channel::Caller, Codec::Pcmu), &mut out);
    assert!(out.is_empty());
    let resume_msg = server.msg("resume", 4, json!({}));
    assert_eq!(
        d.on_server_text(at(4000), &resume_msg, &mut out),
        Ok(ServerSignal::Nothing)
    );
    let m = texts(&out);
    assert_eq!(m[0]["type"], "resumed");
    assert_eq!(
        m[0]["parameters"],
        json!({"start":"PT2.54S","discarded":"PT1S"})
    );
    out.clear();
    // A server resume while the call is on hold is answered with `paused`.
    d.on_control(at(4100), &pause(Channel::Caller), &mut out);
    d.on_control(at(4100), &pause(Channel::Callee), &mut out);
    out.clear();
    let resume_msg = server.msg("resume", 6, json!({}));
    assert_eq!(
        d.on_server_text(at(4200), &resume_msg, &mut out),
        Ok(ServerSignal::Nothing)
    );
    assert_eq!(texts(&out)[0]["type"], "paused");
}

#[test]
#[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
fn opened_variants() {
    let t0 = Instant::now();
    // No media: accepted, every frame withheld.
    let mut d = Dialect::new(&config()).expect("dialect");
    opened(&mut d, t0, json!([]));
    let mut out = Vec::new();
    d.on_audio(
        t0,
        frame(Channel::Caller, Codec::Pcmu, 1, 0, true, &[0xFF; 160]),
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(d.stats().audio_withheld, 1);

    // Mono external: caller frames as they are, the callee not carried.
    let mut d = Dialect::new(&config()).expect("dialect");
    opened(
        &mut d,
        t0,
        json!([{"type":"audio","format":"PCMU","channels":["external"],"rate":8000}]),
    );
    d.on_audio(
        t0,
        frame(Channel::Caller, Codec::Pcmu, 1, 0, true, &[0x12; 160]),
        &mut out,
    );
    d.on_audio(
        t0,
        frame(Channel::Callee, Codec::Pcma, 1, 0, true, &[0x12; 160]),
        &mut out,
    );
    assert_eq!(binaries(&out), vec![&[0x12; 160][..]]);
    assert_eq!(d.stats().audio_not_carried, 1);
    out.clear();

    // startPaused and discardTo: `discarded` then `paused`.
    let mut d = Dialect::new(&config()).expect("dialect");
    let _ = d.upgrade(&info(None));
    d.on_control(t0, &start(Channel::Caller, Codec::Pcmu), &mut out);
    d.flush(t0, &mut out);
    let id = texts(&out)[0]["id"].as_str().expect("id").to_owned();
    out.clear();
    let mut server = Server { id, seq: 0 };
    let m = server.msg(
        "opened",
        1,
        json!({"media":stereo(),"startPaused":true,"discardTo":"PT1.5S"}),
    );
    assert_eq!(
        d.on_server_text(t0, &m, &mut out),
        Ok(ServerSignal::Accepted)
    );
    let m = texts(&out);
    assert_eq!(m[0]["type"], "discarded");
    assert_eq!(
        m[0]["parameters"],
        json!({"start":"PT0S","discarded":"PT1.5S"})
    );
    assert_eq!(
        (&m[1]["type"], &m[1]["position"]),
        (&json!("paused"), &json!("PT1.5S"))
    );
}

#[test]
#[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
fn language_update_and_disconnect() {
    let t0 = Instant::now();
    let mut d = Dialect::new(&config()).expect("dialect");
    let (mut server, _) = opened(&mut d, t0, stereo());
    let mut out = Vec::new();
    d.on_control(
        t0,
        &update(Channel::Caller, json!({"language":"de-DE"})),
        &mut out,
    );
    d.on_control(
        t0,
        &update(Channel::Caller, json!({"language":"de-DE","x":1})),
        &mut out,
    );
    d.on_control(
        t0,
        &update(Channel::Caller, json!({"language":"German"})),
        &mut out,
    );
    d.on_control(t0, &dtmf(Channel::Caller, 1, 0), &mut out);
    let m = texts(&out);
    assert_eq!(m.len(), 1);
    assert_eq!(
        (&m[0]["type"], &m[0]["parameters"]),
        (&json!("update"), &json!({"language":"de-DE"}))
    );
    assert_eq!(d.stats().controls_not_sent, 3);
    out.clear();
    let m = server.msg("disconnect", 2, json!({"reason":"completed","info":"bye"}));
    assert_eq!(
        d.on_server_text(t0, &m, &mut out),
        Ok(ServerSignal::Refused("disconnect (completed) bye".into()))
    );
    d.on_local_close(t0, &mut out);
    let m = texts(&out);
    assert_eq!(
        (&m[0]["type"], &m[0]["parameters"]),
        (&json!("close"), &json!({"reason":"disconnect"}))
    );
}

#[test]
#[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
fn server_violations() {
    let t0 = Instant::now();
    use ServerViolation::*;
    let offered_not =
        json!([{"type":"audio","format":"PCMU","channels":["internal","external"],"rate":8000}]);
    type MakeMessage = Box<dyn Fn(&mut Server) -> String>;
    let cases: Vec<(MakeMessage, ServerViolation)> = vec![
        (Box::new(|s| s.msg("pong", 1, json!({}))), UnexpectedState),
        (Box::new(|s| s.msg("closed", 1, json!({}))), UnexpectedState),
        (
            Box::new(|s| s.msg("opened", 1, json!({"media": stereo()}))),
            UnexpectedState,
        ),
        (Box::new(|s| s.msg("ping", 1, json!({}))), UnexpectedMessage),
        (Box::new(|s| s.msg("open", 1, json!({}))), UnexpectedMessage),
        (Box::new(|s| s.msg("hello", 1, json!({}))), MalformedText),
        (Box::new(|s| s.msg("event", 1, json!({}))), BadParameters),
        (
            Box::new(|s| s.msg("disconnect", 1, json!({"reason":"bored"}))),
            BadParameters,
        ),
        (
            Box::new(|s| {
                s.seq += 1;
                s.msg("updated", 1, json!({}))
            }),
            SequenceError,
        ),
        (Box::new(|s| s.msg("updated", 9, json!({}))), SequenceError),
        (
            Box::new(|s| {
                s.id = ids::uuid_v4([1; 16]);
                s.msg("updated", 1, json!({}))
            }),
            WrongSession,
        ),
        (
            Box::new(|s| {
                s.msg("updated", 1, json!({}))
                    .replace(r#""version":"2""#, r#""version":2"#)
            }),
            MalformedText,
        ),
        (Box::new(|s| s.msg("updated", 1, json!([]))), MalformedText),
        (Box::new(|_| "[]".into()), MalformedText),
        (Box::new(|_| "x".repeat(70_000)), TooLarge),
    ];
    for (i, (make, want)) in cases.into_iter().enumerate() {
        let mut d = Dialect::new(&config()).expect("dialect");
        let (mut server, _) = opened(&mut d, t0, stereo());
        let text = make(&mut server);
        assert_eq!(
            d.on_server_text(t0, &text, &mut Vec::new()),
            Err(want),
            "case {i}: {text:.100}"
        );
    }
    // `opened` with media that was not offered (channel order matters), or two of them.
    for media in [offered_not, json!([stereo()[0], stereo()[0]])] {
        let mut d = Dialect::new(&config()).expect("dialect");
        let _ = d.upgrade(&info(None));
        let mut out = Vec::new();
        d.on_control(t0, &start(Channel::Caller, Codec::Pcmu), &mut out);
        d.flush(t0, &mut out);
        let mut server = Server {
            id: ids::uuid_v4(NONCE),
            seq: 0,
        };
        let m = server.msg("opened", 1, json!({ "media": media }));
        assert_eq!(d.on_server_text(t0, &m, &mut out), Err(BadParameters));
    }
    // Anything before `open`, and binary frames.
    let mut d = Dialect::new(&config()).expect("dialect");
    let mut server = Server {
        id: ids::uuid_v4(NONCE),
        seq: 0,
    };
    let m = server.msg("pong", 0, json!({}));
    assert_eq!(
        d.on_server_text(t0, &m, &mut Vec::new()),
        Err(UnexpectedState)
    );
    assert_eq!(
        d.on_server_binary(t0, &[0], &mut Vec::new()),
        Err(BinaryFrame)
    );
}

#[test]
fn durations() {
    assert_eq!(samples_duration(0), "PT0S");
    assert_eq!(samples_duration(160), "PT0.02S");
    assert_eq!(samples_duration(1), "PT0.000125S");
    assert_eq!(samples_duration(8000 * 3600), "PT3600S");
    assert_eq!(iso_duration(12_345_678), "PT0.012345678S");
    assert_eq!(parse_duration("PT1.5S"), Some(1_500_000_000));
    assert_eq!(parse_duration("PT.5S"), Some(500_000_000));
    assert_eq!(parse_duration("PT2S"), Some(2_000_000_000));
    for bad in ["PT1.S", "1.5S", "PTS", "PT-1S", "PT1.5", "PT1e3S"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[test]
fn ids_and_languages() {
    assert!(is_audiohook_uuid(GUID));
    assert!(is_audiohook_uuid(NIL_UUID));
    assert!(
        !is_audiohook_uuid("8F3C21A0-1DD2-71B2-8001-A2D2D9E0E3C4"),
        "version 7"
    );
    let m = |v: Value| v.as_object().cloned().expect("object");
    assert_eq!(language_of(&m(json!({"language":"en-US"}))), Some("en-US"));
    assert_eq!(
        language_of(&m(json!({"language":"fil-PH"}))),
        Some("fil-PH")
    );
    assert_eq!(language_of(&m(json!({"language":"EN-us"}))), None);
    assert_eq!(language_of(&m(json!({"language":"en"}))), None);
}
