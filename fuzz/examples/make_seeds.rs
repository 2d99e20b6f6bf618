//! Writes the seed corpora in fuzz/corpus/<target>/: real-looking inputs taken from the
//! project's tests (sip-agent's message and b2bua tests, tests/sipp/*.xml, turn-core's RFC 5769
//! vectors and server tests, speech-proto's validator tests) and from the reference documents
//! (docs/fork-request.md, docs/control-api.md, docs/speech-protocol.md, the CUBE WebSocket
//! forking guide in /work/shared/reference/). Run from fuzz/: `cargo +nightly run --example
//! make_seeds`; it rewrites the seed files it knows and leaves others alone.

use std::fs;
use std::path::Path;

use speech_proto::{encode_audio, AudioHeader, FLAG_FIRST, FLAG_MARKER};
use turn_core::stun::{
    encode_channel_data, long_term_key, Attribute, Class, Family, MessageBuilder, Method,
    TransactionId,
};
use turn_core::RustCrypto;
use xdpfork_fuzz::record;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

/// SIP text written with `\n` line ends in this file, sent with CRLF.
fn crlf(s: &str) -> Vec<u8> {
    s.replace('\n', "\r\n").into_bytes()
}

/// A message with a correct Content-Length for `body`.
fn sip(head: &str, body: &str) -> Vec<u8> {
    let body = body.replace('\n', "\r\n");
    let mut m = crlf(head);
    m.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    m.extend_from_slice(body.as_bytes());
    m
}

const GUID: &str = "6F0C9A2E1D3B11EEB5D6000C29F1A2B3";

const OFFER: &str = "v=0
o=CiscoSystemsSIP-GW-UserAgent 6143 8470 IN IP4 198.51.100.7
s=SIP Call
c=IN IP4 198.51.100.7
t=0 0
m=audio 16384 RTP/AVP 0 8 101
c=IN IP4 198.51.100.7
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
";

fn fork_start() -> String {
    format!(
        r#"{{"type":"START","call-guid":"{GUID}","url":"wss://speech.example.com/fork","port":8443,"auth-token":"e2238f3a-e43c-3f54-a05a-dd2e4bd4631f","codec":"g711ulaw","metadata":{{"agent-id":"1042","language":"en-US"}}}}"#
    )
}

fn sip_seeds() {
    // A CVP-style initial INVITE through CUBE (Cisco-Guid, Session-ID, Allow, Supported).
    let invite = sip(
        "INVITE sip:6777@192.0.2.10:5060 SIP/2.0
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK2A1B3C
Via: SIP/2.0/UDP 10.10.10.5:5060;branch=z9hG4bKcvp1;received=10.10.10.5
From: \"+15551230001\" <sip:+15551230001@198.51.100.7>;tag=8A7B6C5D-1F2E
To: <sip:6777@192.0.2.10>
Call-ID: 4F2B1C3A-1DD211B2-8001A2D2-D9E0E3C4@198.51.100.7
CSeq: 101 INVITE
Max-Forwards: 69
Contact: <sip:+15551230001@198.51.100.7:5060;transport=udp>
Cisco-Guid: 1326389530-0000065536-0000000001-3355447306
Session-ID: 8ee2e6b0c5b2500f8c1f5e7d3a9b0c11;remote=00000000000000000000000000000000
Allow: INVITE, OPTIONS, BYE, CANCEL, ACK, PRACK, UPDATE, REFER, NOTIFY, INFO, REGISTER
Supported: timer,resource-priority,replaces,sdp-anat
Session-Expires: 1800;refresher=uac
Min-SE: 90
User-Agent: Cisco-SIPGateway/IOS-17.6.1a
Content-Type: application/sdp
",
        OFFER,
    );
    write("sip_message", "invite-cvp.sip", &invite);
    // Compact header names, folded line, two Vias on one line (sip-agent message.rs tests).
    write(
        "sip_message",
        "invite-compact.sip",
        &sip(
            "INVITE sip:6777@192.0.2.10 SIP/2.0
v: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK776asdhds, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKold
Max-Forwards: 70
t: <sip:6777@192.0.2.10>
f: \"Alice\" <sip:alice@198.51.100.7>;tag=1928301774
i: a84b4c76e66710@pc33
CSeq: 314159 INVITE
m: <sip:alice@198.51.100.7>
Subject: a folded
 header line
c: application/sdp
",
            OFFER,
        ),
    );
    let dialog = "Via: SIP/2.0/UDP 10.10.10.5:5060;branch=z9hG4bKcvp7
From: <sip:cvp@10.10.10.5>;tag=cvp-41
To: <sip:6777@192.0.2.10>;tag=xf-9c1e
Call-ID: 4F2B1C3A-1DD211B2-8001A2D2-D9E0E3C4@198.51.100.7
Max-Forwards: 70
Contact: <sip:cvp@10.10.10.5:5060>
";
    // INFO with the fork request (docs/fork-request.md, CUBE guide "Forking Based on SIP INFO").
    write(
        "sip_message",
        "info-fork-start.sip",
        &sip(
            &format!(
                "INFO sip:cube@192.0.2.10;transport=udp SIP/2.0\n{dialog}CSeq: 2 INFO\nContent-Type: application/x-cisco-record+json\n"
            ),
            &fork_start(),
        ),
    );
    write(
        "sip_message",
        "info-fork-stop.sip",
        &sip(
            &format!("INFO sip:cube@192.0.2.10 SIP/2.0\n{dialog}CSeq: 3 INFO\nContent-Type: application/x-cisco-record+json\n"),
            &format!(r#"{{"type":"STOP","call-guid":"{GUID}"}}"#),
        ),
    );
    // Re-INVITE with multipart/mixed SDP + JSON (tests/sipp/uac_reinvite_fork.xml).
    write(
        "sip_message",
        "reinvite-multipart.sip",
        &sip(
            &format!("INVITE sip:cube@192.0.2.10 SIP/2.0\n{dialog}CSeq: 4 INVITE\nMIME-Version: 1.0\nContent-Type: multipart/mixed;boundary=fork-boundary\n"),
            &multipart_body(),
        ),
    );
    write(
        "sip_message",
        "bye.sip",
        &sip(
            &format!("BYE sip:cube@192.0.2.10 SIP/2.0\n{dialog}CSeq: 5 BYE\n"),
            "",
        ),
    );
    write(
        "sip_message",
        "ok-invite.sip",
        &sip(
            "SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKxf1;rport=5060
From: <sip:+15551230001@192.0.2.10>;tag=xf-1
To: <sip:6777@203.0.113.20>;tag=as-77
Call-ID: xf-b1c2d3@192.0.2.10
CSeq: 1 INVITE
Contact: <sip:6777@203.0.113.20:5060>
Require: timer
Session-Expires: 1800;refresher=uas
Content-Type: application/sdp
",
            OFFER,
        ),
    );
    write(
        "sip_message",
        "options-unknown-method.sip",
        &sip(
            "PUBLISH sip:192.0.2.10 SIP/2.0
Via: SIP/2.0/TCP 198.51.100.7:5060;branch=z9hG4bKping
From: <sip:ping@198.51.100.7>;tag=p1
To: <sip:192.0.2.10>
Call-ID: ping-1
CSeq: 1 PUBLISH
",
            "",
        ),
    );
    // TCP stream: a keep-alive ping, then two messages back to back.
    let mut stream = b"\r\n\r\n".to_vec();
    stream.extend(sip(
        "OPTIONS sip:192.0.2.10 SIP/2.0
Via: SIP/2.0/TCP 198.51.100.7:5060;branch=z9hG4bKopt1
From: <sip:ping@198.51.100.7>;tag=p1
To: <sip:192.0.2.10>
Call-ID: ping-1
CSeq: 1 OPTIONS
",
        "",
    ));
    stream.extend(&invite);
    write("sip_message", "tcp-stream.sip", &stream);
}

fn multipart_body() -> String {
    format!(
        "--fork-boundary\nContent-Type: application/sdp\n\n{OFFER}--fork-boundary\nContent-Type: application/x-cisco-record+json\nContent-Disposition: render;handling=optional\n\n{}\n--fork-boundary--\n",
        fork_start()
    )
}

fn sdp_seeds() {
    write("sdp", "offer-cube.sdp", &crlf(OFFER));
    write(
        "sdp",
        "hold-sendonly.sdp",
        &crlf(
            "v=0
o=- 53655765 2353687638 IN IP4 198.51.100.7
s=-
c=IN IP4 0.0.0.0
t=0 0
m=audio 16384 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=sendonly
",
        ),
    );
    write(
        "sdp",
        "srtp-and-video.sdp",
        &crlf(
            "v=0
o=alice 2890844526 2890844526 IN IP6 2001:db8::7
s=-
c=IN IP6 2001:db8::7
t=0 0
m=audio 49170 RTP/SAVP 0
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32
m=video 51372 RTP/AVP 99
a=rtpmap:99 h263-1998/90000
",
        ),
    );
    write(
        "sdp",
        "t38-fax.sdp",
        b"v=0\no=- 1 2 IN IP4 198.51.100.7\ns=-\nc=IN IP4 198.51.100.7\nt=0 0\nm=image 16386 udptl t38\na=T38FaxVersion:0\na=T38MaxBitRate:14400\n",
    );
}

fn multipart_seeds() {
    let mut m = b"multipart/mixed;boundary=fork-boundary\r\n".to_vec();
    m.extend(crlf(&multipart_body()));
    write("multipart", "reinvite-sdp-json.txt", &m);
    let mut q = b"multipart/mixed; boundary=\"simple boundary\"\n".to_vec();
    q.extend_from_slice(
        b"preamble\n--simple boundary\n\nimplicit text/plain part\n--simple boundary\nContent-type: text/plain; charset=us-ascii\n  folded: yes\n\nexplicit\n--simple boundary--\nepilogue\n",
    );
    write("multipart", "rfc2046-example.txt", &q);
    let mut s = b"application/sdp\n".to_vec();
    s.extend(crlf(OFFER));
    write("multipart", "plain-sdp.txt", &s);
    let mut j = b"application/x-cisco-record+json\n".to_vec();
    j.extend(fork_start().as_bytes());
    write("multipart", "plain-json.txt", &j);
}

fn fork_json_seeds() {
    write("fork_json", "start-full.json", fork_start().as_bytes());
    write(
        "fork_json",
        "start-minimal.json",
        format!(r#"{{"type":"START","call-guid":"{GUID}","url":"ws://10.64.86.215:8000"}}"#)
            .as_bytes(),
    );
    write(
        "fork_json",
        "update.json",
        format!(r#"{{"type":"UPDATE","call-guid":"{GUID}","metadata":{{"agent-id":"2077"}}}}"#)
            .as_bytes(),
    );
    write(
        "fork_json",
        "stop.json",
        format!(r#"{{"type":"STOP","call-guid":"{GUID}"}}"#).as_bytes(),
    );
    // The reference's "Unexpected format" examples: a string port and an unsupported codec.
    write(
        "fork_json",
        "bad-port-codec.json",
        format!(r#"{{"type":"START","call-guid":"{GUID}","url":"ws://speech:8080/x?y=1","port":"8080","codec":"g729"}}"#)
            .as_bytes(),
    );
}

fn control_api_seeds() {
    let lines = [
        (
            "flow-add",
            r#"{"v":1,"op":"flow_add","flow":{"local":"10.77.1.1:30000","src":"10.77.2.1:30002","dst":"10.77.2.2:40000","expect":"10.77.1.2:40000","rtcp":false,"payload_types":[0,8],"dtmf_pt":101}}"#,
        ),
        (
            "flow-del",
            r#"{"v":1,"op":"flow_del","local":"10.77.1.1:30000"}"#,
        ),
        (
            "fork-start",
            r#"{"v":1,"op":"fork_start","fork":{"call_guid":"8ee2e6b0-c5b2","call_id":"a84b4c76e66710@pc33","from":"1000","to":"2000","server":"asr","codec":"PCMU","ptime_ms":20,"metadata":{"any":"object"},"streams":[{"channel":"caller","flow":"10.77.1.1:30000"},{"channel":"callee","flow":"10.77.2.1:30002"}]}}"#,
        ),
        (
            "fork-stop",
            r#"{"v":1,"op":"fork_stop","call_guid":"8ee2e6b0-c5b2","reason":"request"}"#,
        ),
        (
            "fork-pause",
            r#"{"v":1,"op":"fork_pause","call_guid":"8ee2e6b0-c5b2","reason":"hold"}"#,
        ),
        (
            "fork-resume",
            r#"{"v":1,"op":"fork_resume","call_guid":"8ee2e6b0-c5b2","codec":"PCMA"}"#,
        ),
        (
            "fork-update",
            r#"{"v":1,"op":"fork_update","call_guid":"8ee2e6b0-c5b2","metadata":{"agent":"1042"}}"#,
        ),
        ("subscribe", r#"{"v":1,"op":"subscribe"}"#),
        (
            "show-stream-service",
            r#"{"v":1,"op":"show_stream_service","what":"server","arg":"10.77.3.2:9000"}"#,
        ),
        (
            "clear-stream-connection",
            r#"{"v":1,"op":"clear_stream_connection","id":3,"forced":true}"#,
        ),
        ("show-flows", r#"{"v":1,"op":"show_flows"}"#),
        (
            "turn-channel-add",
            r#"{"v":1,"op":"turn_channel_add","channel":{"client":"10.77.1.2:50000","server":"10.77.1.1:3478","number":16385,"relay":"10.77.2.1:24000","peer":"10.77.2.2:60000"}}"#,
        ),
        (
            "turn-channel-del",
            r#"{"v":1,"op":"turn_channel_del","client":"10.77.1.2:50000","server":"10.77.1.1:3478","number":16385}"#,
        ),
        ("wrong-version", r#"{"v":2,"op":"show_flows"}"#),
    ];
    for (name, line) in lines {
        write(
            "control_api",
            &format!("{name}.json"),
            format!("{line}\n").as_bytes(),
        );
    }
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

const PROTO_UDP: u8 = 17;

/// A TURN request as turnutils_uclient sends one, optionally signed (turn-core server tests).
fn turn_request(method: Method, txid: u8, attrs: &[Attribute<'_>], nonce: Option<&str>) -> Vec<u8> {
    let mut b = MessageBuilder::new(Class::Request, method, TransactionId([txid; 12]));
    for a in attrs {
        b.add(a).expect("fits");
    }
    if let Some(nonce) = nonce {
        b.add(&Attribute::Username("turnuser")).expect("fits");
        b.add(&Attribute::Realm("example.org")).expect("fits");
        b.add(&Attribute::Nonce(nonce)).expect("fits");
        let key = long_term_key(&RustCrypto, "turnuser", "example.org", "cisco");
        b.add_integrity(&key, &RustCrypto).expect("fits");
    }
    b.add_fingerprint().expect("fits");
    b.finish()
}

fn peer() -> std::net::SocketAddr {
    "203.0.113.80:5000".parse().expect("peer")
}

fn stun_seeds() {
    // RFC 5769 test vectors (turn-core/src/stun.rs tests).
    write("stun", "rfc5769-request.bin", &unhex("000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf"));
    write("stun", "rfc5769-response-v4.bin", &unhex("0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96"));
    write("stun", "rfc5769-response-v6.bin", &unhex("010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c"));
    write("stun", "rfc5769-long-term.bin", &unhex("000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe382b900000015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b6578616d706c652e6f72670000080014f67024656dd64a3e02b8e0712e85c9a28ca89666"));
    let nonce = "0123456789abcdef0123456789abcdef01234567";
    write(
        "stun",
        "allocate-auth.bin",
        &turn_request(
            Method::ALLOCATE,
            1,
            &[
                Attribute::RequestedTransport(PROTO_UDP),
                Attribute::Lifetime(600),
                Attribute::RequestedAddressFamily(Family::V4),
                Attribute::EvenPort(true),
                Attribute::DontFragment,
                Attribute::Software("Coturn-4.6.1 'Gorst'"),
            ],
            Some(nonce),
        ),
    );
    write(
        "stun",
        "channel-bind.bin",
        &turn_request(
            Method::CHANNEL_BIND,
            2,
            &[
                Attribute::ChannelNumber(0x4000),
                Attribute::XorPeerAddress(peer()),
            ],
            Some(nonce),
        ),
    );
    let mut b = MessageBuilder::new(Class::Error, Method::ALLOCATE, TransactionId([3; 12]));
    b.add(&Attribute::ErrorCode {
        code: 401,
        reason: "Unauthorized",
    })
    .expect("fits");
    b.add(&Attribute::Realm("example.org")).expect("fits");
    b.add(&Attribute::Nonce(nonce)).expect("fits");
    b.add(&Attribute::PasswordAlgorithms(vec![1, 2]))
        .expect("fits");
    b.add(&Attribute::UnknownAttributes(vec![0x0024, 0x7fff]))
        .expect("fits");
    b.add_fingerprint().expect("fits");
    write("stun", "error-401.bin", &b.finish());
    let mut b = MessageBuilder::new(Class::Indication, Method::SEND, TransactionId([4; 12]));
    b.add(&Attribute::XorPeerAddress(
        "[2001:db8::80]:5000".parse().expect("v6"),
    ))
    .expect("fits");
    b.add(&Attribute::Data(b"\x80\x00\x00\x01rtp"))
        .expect("fits");
    write("stun", "send-indication-v6.bin", &b.finish());
    let mut cd = Vec::new();
    encode_channel_data(
        0x4000,
        b"\x80\x00\x12\x34\x00\x00\x00\xa0\xde\xad\xbe\xefaudio",
        true,
        &mut cd,
    )
    .expect("fits");
    write("stun", "channel-data.bin", &cd);
}

fn turn_server_seeds() {
    // Records: tag 1 = signed request (the harness adds credentials and the last nonce).
    let mut s = vec![0u8];
    s.extend(record(
        0,
        &turn_request(
            Method::ALLOCATE,
            1,
            &[Attribute::RequestedTransport(PROTO_UDP)],
            None,
        ),
    ));
    s.extend(record(
        1,
        &turn_request(
            Method::ALLOCATE,
            2,
            &[Attribute::RequestedTransport(PROTO_UDP)],
            None,
        ),
    ));
    s.extend(record(
        1,
        &turn_request(
            Method::CREATE_PERMISSION,
            3,
            &[Attribute::XorPeerAddress(peer())],
            None,
        ),
    ));
    s.extend(record(
        1,
        &turn_request(
            Method::CHANNEL_BIND,
            4,
            &[
                Attribute::ChannelNumber(0x4001),
                Attribute::XorPeerAddress(peer()),
            ],
            None,
        ),
    ));
    let mut cd = Vec::new();
    encode_channel_data(0x4001, b"\x80\x00\x00\x01rtp-payload", false, &mut cd).expect("fits");
    s.extend(record(2, &cd));
    s.extend(record(3, b"\x00\x00\x80\x00\x00\x02from-peer"));
    let mut send = MessageBuilder::new(Class::Indication, Method::SEND, TransactionId([5; 12]));
    send.add(&Attribute::XorPeerAddress(peer())).expect("fits");
    send.add(&Attribute::Data(b"via-send")).expect("fits");
    s.extend(record(0, &send.finish()));
    s.extend(record(4, &[0x01, 0x2c])); // 300 s: the permission expires
    s.extend(record(
        1,
        &turn_request(Method::REFRESH, 6, &[Attribute::Lifetime(0)], None),
    ));
    s.extend(record(5, &[]));
    write("turn_server", "udp-allocate-permission-channel.bin", &s);

    // TCP client (tag bits 3-4 = client 1), REST credentials (bit 7), SHA-256 integrity (bit 6).
    let mut t = vec![3u8];
    let tcp = 1 << 3;
    t.extend(record(
        tcp,
        &turn_request(
            Method::ALLOCATE,
            1,
            &[Attribute::RequestedTransport(PROTO_UDP)],
            None,
        ),
    ));
    t.extend(record(
        tcp | 0x80 | 0x40 | 1,
        &turn_request(
            Method::ALLOCATE,
            2,
            &[
                Attribute::RequestedTransport(PROTO_UDP),
                Attribute::Lifetime(3600),
            ],
            None,
        ),
    ));
    let mut stream = turn_request(Method::BINDING, 3, &[], None);
    stream.extend(turn_request(
        Method::CREATE_PERMISSION,
        4,
        &[Attribute::XorPeerAddress(peer())],
        None,
    ));
    t.extend(record(tcp | 7, &stream));
    t.extend(record(tcp | 6, &[]));
    write("turn_server", "tcp-rest-sha256-close.bin", &t);
}

fn speech_seeds() {
    let start = r#"{"type":"start","version":1,"stream_id":42,"call_guid":"8F3C21A0-1DD2-11B2-8001-A2D2D9E0E3C4","call_id":"a84b4c76e66710@10.0.0.1","channel":"caller","from":"sip:+15551230001@pbx.example.com","to":"sip:6777@cube.example.com","codec":"PCMU","sample_rate":8000,"ptime_ms":20,"metadata":{"campaign":"support","language":"en-US"}}"#;
    let audio = |seq: u16, flags: u8, pt: u8| {
        let mut out = Vec::new();
        let hdr = AudioHeader {
            stream_id: 42,
            seq,
            payload_type: pt,
            flags,
            timestamp: u32::from(seq) * 160,
        };
        encode_audio(&mut out, &hdr, &[0xff; 160]);
        out
    };
    let mut s = Vec::new();
    s.extend(record(0, start.as_bytes()));
    s.extend(record(1, &audio(1000, FLAG_FIRST | FLAG_MARKER, 0)));
    s.extend(record(1, &audio(1001, 0, 0)));
    s.extend(record(1, &audio(1003, 0, 0)));
    s.extend(record(1, &audio(1002, 0, 0)));
    s.extend(record(0, br#"{"type":"dtmf","stream_id":42,"event":5,"end":true,"duration":1600,"timestamp":124096}"#));
    s.extend(record(
        0,
        br#"{"type":"pause","stream_id":42,"reason":"hold"}"#,
    ));
    s.extend(record(
        0,
        br#"{"type":"resume","stream_id":42,"codec":"PCMA"}"#,
    ));
    s.extend(record(1, &audio(1004, 0, 8)));
    s.extend(record(
        0,
        br#"{"type":"update","stream_id":42,"metadata":{"campaign":"support","agent":"1042"}}"#,
    ));
    s.extend(record(
        0,
        br#"{"type":"stop","stream_id":42,"reason":"call_end"}"#,
    ));
    write("speech_validator", "stream-life.bin", &s);

    // Violations: audio before start, while paused, after stop; bad sample rate; killed stream.
    let mut v = Vec::new();
    v.extend(record(1, &audio(1, 0, 0)));
    v.extend(record(0, start.as_bytes()));
    v.extend(record(
        0,
        br#"{"type":"pause","stream_id":42,"reason":"request"}"#,
    ));
    v.extend(record(1, &audio(2, 0, 0)));
    v.extend(record(0, br#"{"type":"start","version":1,"stream_id":7,"call_guid":"g","call_id":"c","channel":"callee","from":"a","to":"b","codec":"PCMA","sample_rate":16000,"ptime_ms":20,"metadata":{}}"#));
    v.extend(record(2, &42u32.to_be_bytes()));
    v.extend(record(1, &audio(3, 0, 0)));
    v.extend(record(
        0,
        br#"{"type":"error","stream_id":42,"code":"audio_while_paused","message":"x"}"#,
    ));
    write("speech_validator", "violations.bin", &v);
}

fn main() {
    sip_seeds();
    sdp_seeds();
    multipart_seeds();
    fork_json_seeds();
    control_api_seeds();
    stun_seeds();
    turn_server_seeds();
    speech_seeds();
    println!("seeds written under {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
