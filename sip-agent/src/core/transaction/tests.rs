//! Transaction tests: timers are stepped with a fake `now`, never slept.

use super::*;
use crate::core::message;
use crate::core::testing::epoch;

fn peer(transport: Transport) -> Peer {
    Peer {
        addr: "198.51.100.7:5060".parse().expect("addr"),
        transport,
    }
}

fn req(method: &str, branch: &str, extra: &str) -> Request {
    let text = format!(
        "{method} sip:6777@192.0.2.10 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch={branch}\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@198.51.100.7>;tag=f1\r\n\
To: <sip:6777@192.0.2.10>{extra}\r\n\
Call-ID: call-1@198.51.100.7\r\n\
CSeq: 1 {method}\r\n\
Content-Length: 0\r\n\r\n"
    );
    match message::parse(text.as_bytes()).expect("test request parses") {
        SipMessage::Request(r) => r,
        SipMessage::Response(_) => unreachable!("request text"),
    }
}

fn resp_for(r: &Request, code: u16, to_tag: Option<&str>) -> Response {
    message::response_to(r, code, None, to_tag)
}

/// Drains outputs into (transmits, events).
fn drain(l: &mut TransactionLayer) -> (Vec<Transmit>, Vec<TxEvent>) {
    let (mut t, mut e) = (Vec::new(), Vec::new());
    while let Some(o) = l.poll_output() {
        match o {
            Output::Transmit(x) => t.push(x),
            Output::Event(x) => e.push(x),
        }
    }
    (t, e)
}

fn status_of(t: &Transmit) -> u16 {
    match message::parse(&t.payload).expect("we emit parseable messages") {
        SipMessage::Response(r) => r.status_code.code(),
        SipMessage::Request(_) => 0,
    }
}

/// Steps time to each deadline up to `until`, recording the offset of every transmit.
fn run_until(
    l: &mut TransactionLayer,
    t0: Instant,
    until: Duration,
) -> (Vec<Duration>, Vec<TxEvent>) {
    let (mut sends, mut events) = (Vec::new(), Vec::new());
    while let Some(at) = l.poll_timeout() {
        if at > t0 + until {
            break;
        }
        l.handle_timeout(at);
        let (t, e) = drain(l);
        sends.extend(t.iter().map(|_| at - t0));
        events.extend(e);
    }
    (sends, events)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[test]
fn non_invite_server_answers_retransmissions_without_redelivering() {
    let mut l = TransactionLayer::new();
    let t0 = epoch();
    let info = req("INFO", "z9hG4bKinfo1", ";tag=t1");
    l.handle_message(t0, peer(Transport::Udp), SipMessage::Request(info.clone()));
    let (t, e) = drain(&mut l);
    assert!(t.is_empty());
    let [TxEvent::Request { tx, .. }] = e.as_slice() else {
        panic!("{e:?}")
    };
    let tx = *tx;
    // Retransmission while Trying: absorbed silently (§17.2.2).
    l.handle_message(
        t0 + ms(100),
        peer(Transport::Udp),
        SipMessage::Request(info.clone()),
    );
    assert_eq!(drain(&mut l), (vec![], vec![]));
    l.send_response(t0 + ms(200), tx, resp_for(&info, 200, None))
        .expect("respond");
    let (t, _) = drain(&mut l);
    assert_eq!(t.iter().map(status_of).collect::<Vec<_>>(), vec![200]);
    // Retransmission while Completed: the 200 again, no new event.
    l.handle_message(
        t0 + ms(700),
        peer(Transport::Udp),
        SipMessage::Request(info.clone()),
    );
    let (t, e) = drain(&mut l);
    assert_eq!(t.iter().map(status_of).collect::<Vec<_>>(), vec![200]);
    assert!(e.is_empty());
    assert_eq!(
        l.send_response(t0, tx, resp_for(&info, 200, None)),
        Err(TxError::InvalidState)
    );
    // Timer J = 64*T1 after the final response.
    assert_eq!(l.poll_timeout(), Some(t0 + ms(200) + T1 * 64));
    assert_eq!(l.timeout_reason().map(|r| r.1), Some(Timer::J));
    l.handle_timeout(t0 + ms(200) + T1 * 64 - ms(1));
    assert_eq!(
        drain(&mut l),
        (vec![], vec![]),
        "spurious timeout is a no-op"
    );
    l.handle_timeout(t0 + ms(200) + T1 * 64);
    assert_eq!(drain(&mut l).1, vec![TxEvent::Terminated { tx }]);
    assert!(l.is_empty());
}

#[test]
fn non_invite_server_over_tcp_terminates_at_once() {
    let mut l = TransactionLayer::new();
    let t0 = epoch();
    let info = req("INFO", "z9hG4bKtcp", ";tag=t1");
    l.handle_message(t0, peer(Transport::Tcp), SipMessage::Request(info.clone()));
    let Some(TxEvent::Request { tx, .. }) = drain(&mut l).1.pop() else {
        panic!("request")
    };
    l.send_response(t0, tx, resp_for(&info, 200, None))
        .expect("respond");
    let (t, e) = drain(&mut l);
    assert_eq!(t.len(), 1);
    assert_eq!(e, vec![TxEvent::Terminated { tx }]);
    assert_eq!(l.poll_timeout(), None);
}

#[test]
fn invite_server_failure_retransmits_with_timer_g_until_ack() {
    let mut l = TransactionLayer::new();
    let t0 = epoch();
    let inv = req("INVITE", "z9hG4bKinv", "");
    l.handle_message(t0, peer(Transport::Udp), SipMessage::Request(inv.clone()));
    let (t, e) = drain(&mut l);
    assert_eq!(t.iter().map(status_of).collect::<Vec<_>>(), vec![100]);
    let Some(TxEvent::Request { tx, .. }) = e.first().cloned() else {
        panic!("request")
    };
    // Retransmitted INVITE in Proceeding gets the last provisional.
    l.handle_message(
        t0 + ms(10),
        peer(Transport::Udp),
        SipMessage::Request(inv.clone()),
    );
    assert_eq!(
        drain(&mut l).0.iter().map(status_of).collect::<Vec<_>>(),
        vec![100]
    );
    l.send_response(t0, tx, resp_for(&inv, 486, Some("uas1")))
        .expect("486");
    assert_eq!(drain(&mut l).0.len(), 1);
    // G: T1, 2T1, 4T1, then capped at T2 (§17.2.1).
    let (sends, events) = run_until(&mut l, t0, ms(12_000));
    assert_eq!(
        sends,
        vec![ms(500), ms(1500), ms(3500), ms(7500), ms(11_500)]
    );
    assert!(events.is_empty());
    // ACK (same branch, §17.1.1.3) → Confirmed; Timer I = T4.
    let mut ack = req("ACK", "z9hG4bKinv", ";tag=uas1");
    ack.uri = inv.uri.clone();
    let at = t0 + ms(12_000);
    l.handle_message(at, peer(Transport::Udp), SipMessage::Request(ack.clone()));
    assert_eq!(
        drain(&mut l),
        (vec![], vec![]),
        "ACK to non-2xx is absorbed"
    );
    assert_eq!(l.poll_timeout(), Some(at + T4));
    l.handle_message(at + ms(1), peer(Transport::Udp), SipMessage::Request(ack));
    assert_eq!(drain(&mut l), (vec![], vec![]));
    l.handle_timeout(at + T4);
    assert_eq!(drain(&mut l).1, vec![TxEvent::Terminated { tx }]);
}

#[test]
fn invite_server_timer_h_without_ack() {
    let mut l = TransactionLayer::new();
    let t0 = epoch();
    let inv = req("INVITE", "z9hG4bKinvH", "");
    l.handle_message(t0, peer(Transport::Tcp), SipMessage::Request(inv.clone()));
    let Some(TxEvent::Request { tx, .. }) = drain(&mut l).1.pop() else {
        panic!("request")
    };
    l.send_response(t0, tx, resp_for(&inv, 503, Some("x")))
        .expect("503");
    drain(&mut l);
    // Reliable: no G retransmissions, only H.
    let (sends, events) = run_until(&mut l, t0, ms(40_000));
    assert!(sends.is_empty(), "{sends:?}");
    assert_eq!(
        events,
        vec![
            TxEvent::Timeout {
                tx,
                timer: Timer::H
            },
            TxEvent::Terminated { tx }
        ]
    );
}

#[test]
fn invite_server_2xx_retransmits_until_ack_and_delivers_ack_once() {
    let mut l = TransactionLayer::new();
    let t0 = epoch();
    let inv = req("INVITE", "z9hG4bKok", "");
    l.handle_message(t0, peer(Transport::Udp), SipMessage::Request(inv.clone()));
    let Some(TxEvent::Request { tx, .. }) = drain(&mut l).1.pop() else {
        panic!("request")
    };
    l.send_response(t0, tx, resp_for(&inv, 200, Some("uas2")))
        .expect("200");
    drain(&mut l);
    let (sends, _) = run_until(&mut l, t0, ms(2000));
    assert_eq!(sends, vec![ms(500), ms(1500)]);
    // Retransmitted INVITE gets the 2xx again.
    l.handle_message(
        t0 + ms(2000),
        peer(Transport::Udp),
        SipMessage::Request(inv.clone()),
    );
    assert_eq!(
        drain(&mut l).0.iter().map(status_of).collect::<Vec<_>>(),
        vec![200]
    );
    // The 2xx ACK has its own branch; matched by Call-ID, CSeq and tags.
    let ack = req("ACK", "z9hG4bKack2", ";tag=uas2");
    l.handle_message(
        t0 + ms(2100),
        peer(Transport::Udp),
        SipMessage::Request(ack.clone()),
    );
    let (_, e) = drain(&mut l);
    assert!(
        matches!(e.as_slice(), [TxEvent::Ack { tx: Some(h), .. }] if *h == tx),
        "{e:?}"
    );
    l.handle_message(
        t0 + ms(2200),
        peer(Transport::Udp),
        SipMessage::Request(ack.clone()),
    );
    assert_eq!(
        drain(&mut l),
        (vec![], vec![]),
        "ACK retransmission absorbed"
    );
    // No more 2xx retransmissions; L ends it quietly.
    let (sends, events) = run_until(&mut l, t0, ms(40_000));
    assert!(sends.is_empty());
    assert_eq!(events, vec![TxEvent::Terminated { tx }]);
    // An ACK nobody waits for still reaches the TU.
    l.handle_message(
        t0 + ms(40_000),
        peer(Transport::Udp),
        SipMessage::Request(ack),
    );
    assert!(matches!(
        drain(&mut l).1.as_slice(),
        [TxEvent::Ack { tx: None, .. }]
    ));
}

#[test]
fn invite_server_2xx_without_ack_times_out_with_l() {
    let mut l = TransactionLayer::new();
    let t0 = epoch();
    let inv = req("INVITE", "z9hG4bKnoack", "");
    l.handle_message(t0, peer(Transport::Tcp), SipMessage::Request(inv.clone()));
    let Some(TxEvent::Request { tx, .. }) = drain(&mut l).1.pop() else {
        panic!("request")
    };
    l.send_response(t0, tx, resp_for(&inv, 200, Some("u")))
        .expect("200");
    drain(&mut l);
    let (sends, events) = run_until(&mut l, t0, ms(40_000));
    // 2xx goes out again even over TCP (§13.3.1.4), capped at T2.
    assert_eq!(sends.first(), Some(&ms(500)));
    assert!(sends.windows(2).all(|w| w[1] - w[0] <= T2));
    assert_eq!(
        events,
        vec![
            TxEvent::Timeout {
                tx,
                timer: Timer::L
            },
            TxEvent::Terminated { tx }
        ]
    );
}

#[test]
fn invite_client_timer_a_and_b() {
    let mut l = TransactionLayer::new();
    let t0 = epoch();
    let tx = l
        .send_request(t0, peer(Transport::Udp), req("INVITE", "z9hG4bKcli", ""))
        .expect("send");
    assert_eq!(drain(&mut l).0.len(), 1);
    let (sends, events) = run_until(&mut l, t0, ms(40_000));
    // A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; B at 32 s (§17.1.1.2).
    assert_eq!(
        sends,
        vec![
            ms(500),
            ms(1500),
            ms(3500),
            ms(7500),
            ms(15_500),
            ms(31_500)
        ]
    );
    assert_eq!(
        events,
        vec![
            TxEvent::Timeout {
                tx,
                timer: Timer::B
            },
            TxEvent::Terminated { tx }
        ]
    );
}

#[test]
fn invite_client_non_2xx_sends_ack_and_reacks_retransmissions() {
    let mut l = TransactionLayer::new();
    let t0 = epoch();
    let inv = req("INVITE", "z9hG4bKcli2", "");
    let tx = l
        .send_request(t0, peer(Transport::Udp), inv.clone())
        .expect("send");
    drain(&mut l);
    l.handle_message(
        t0 + ms(100),
        peer(Transport::Udp),
        SipMessage::Response(resp_for(&inv, 180, Some("b"))),
    );
    let (t, e) = drain(&mut l);
    assert!(t.is_empty());
    assert!(matches!(e.as_slice(), [TxEvent::Response { .. }]));
    assert_eq!(l.poll_timeout(), None, "no A/B in Proceeding");
    let busy = resp_for(&inv, 486, Some("b"));
    l.handle_message(
        t0 + ms(200),
        peer(Transport::Udp),
        SipMessage::Response(busy.clone()),
    );
    let (t, e) = drain(&mut l);
    let SipMessage::Request(ack) = message::parse(&t[0].payload).expect("ack parses") else {
        panic!("ack")
    };
    assert_eq!(ack.method, Method::Ack);
    let k = message::keys(&SipMessage::Request(ack)).expect("keys");
    assert_eq!(
        (k.branch.as_str(), k.cseq, k.to_tag.as_deref()),
        ("z9hG4bKcli2", 1, Some("b"))
    );
    assert_eq!(e.len(), 1);
    l.handle_message(
        t0 + ms(300),
        peer(Transport::Udp),
        SipMessage::Response(busy),
    );
    let (t, e) = drain(&mut l);
    assert_eq!(
        (t.len(), e.len()),
        (1, 0),
        "retransmitted final re-ACKed, not re-delivered"
    );
    l.handle_timeout(t0 + ms(200) + timer::TIMER_D);
    assert_eq!(drain(&mut l).1, vec![TxEvent::Terminated { tx }]);
}

#[test]
fn invite_client_2xx_retransmissions_reach_tu_until_m() {
    let mut l = TransactionLayer::new();
    let t0 = epoch();
    let inv = req("INVITE", "z9hG4bKcli3", "");
    let tx = l
        .send_request(t0, peer(Transport::Udp), inv.clone())
        .expect("send");
    drain(&mut l);
    let ok = resp_for(&inv, 200, Some("b"));
    for i in 0..2 {
        l.handle_message(
            t0 + ms(100 * (i + 1)),
            peer(Transport::Udp),
            SipMessage::Response(ok.clone()),
        );
        assert!(matches!(
            drain(&mut l).1.as_slice(),
            [TxEvent::Response { .. }]
        ));
    }
    l.handle_timeout(t0 + ms(100) + T1 * 64);
    assert_eq!(drain(&mut l).1, vec![TxEvent::Terminated { tx }]);
}

#[test]
fn non_invite_client_timer_e_f_k() {
    let mut l = TransactionLayer::new();
    let t0 = epoch();
    let bye = req("BYE", "z9hG4bKbye", ";tag=b");
    let tx = l
        .send_request(t0, peer(Transport::Udp), bye.clone())
        .expect("send");
    drain(&mut l);
    let (sends, _) = run_until(&mut l, t0, ms(12_000));
    // E: 0.5, 1.5, 3.5, 7.5, 11.5 (capped at T2, §17.1.2.2).
    assert_eq!(
        sends,
        vec![ms(500), ms(1500), ms(3500), ms(7500), ms(11_500)]
    );
    l.handle_message(
        t0 + ms(12_000),
        peer(Transport::Udp),
        SipMessage::Response(resp_for(&bye, 200, None)),
    );
    assert!(matches!(
        drain(&mut l).1.as_slice(),
        [TxEvent::Response { .. }]
    ));
    assert_eq!(l.poll_timeout(), Some(t0 + ms(12_000) + T4));
    l.handle_timeout(t0 + ms(12_000) + T4);
    assert_eq!(drain(&mut l).1, vec![TxEvent::Terminated { tx }]);

    let tx = l
        .send_request(t0, peer(Transport::Udp), req("OPTIONS", "z9hG4bKopt", ""))
        .expect("send");
    drain(&mut l);
    let (_, events) = run_until(&mut l, t0, ms(40_000));
    assert_eq!(
        events,
        vec![
            TxEvent::Timeout {
                tx,
                timer: Timer::F
            },
            TxEvent::Terminated { tx }
        ]
    );
}

#[test]
fn non_invite_client_proceeding_retransmits_every_t2() {
    let mut l = TransactionLayer::new();
    let t0 = epoch();
    let info = req("INFO", "z9hG4bKprov", ";tag=b");
    l.send_request(t0, peer(Transport::Udp), info.clone())
        .expect("send");
    drain(&mut l);
    l.handle_message(
        t0 + ms(100),
        peer(Transport::Udp),
        SipMessage::Response(resp_for(&info, 100, None)),
    );
    drain(&mut l);
    let (sends, _) = run_until(&mut l, t0, ms(9000));
    assert_eq!(sends, vec![ms(500), ms(4500), ms(8500)]);
}

#[test]
fn api_misuse_and_cancel_matching() {
    let mut l = TransactionLayer::new();
    let t0 = epoch();
    assert_eq!(
        l.send_request(t0, peer(Transport::Udp), req("ACK", "z9hG4bKa", "")),
        Err(TxError::AckNotATransaction)
    );
    l.send_request(t0, peer(Transport::Udp), req("BYE", "z9hG4bKd", ""))
        .expect("send");
    assert_eq!(
        l.send_request(t0, peer(Transport::Udp), req("BYE", "z9hG4bKd", "")),
        Err(TxError::DuplicateKey)
    );
    assert_eq!(
        l.send_response(
            t0,
            TxHandle(999),
            resp_for(&req("BYE", "z9hG4bKd", ""), 200, None)
        ),
        Err(TxError::UnknownTransaction)
    );
    let inv = req("INVITE", "z9hG4bKc1", "");
    l.handle_message(t0, peer(Transport::Udp), SipMessage::Request(inv));
    drain(&mut l);
    let cancel = req("CANCEL", "z9hG4bKc1", "");
    let target = l
        .invite_for_cancel(&cancel, peer(Transport::Udp))
        .expect("matches INVITE");
    // The same CANCEL from another IP does not find the INVITE.
    let elsewhere = Peer {
        addr: "192.0.2.99:5060".parse().expect("addr"),
        transport: Transport::Udp,
    };
    assert_eq!(l.invite_for_cancel(&cancel, elsewhere), None);
    assert!(l.can_respond(target));
    // The CANCEL is its own server transaction.
    l.handle_message(t0, peer(Transport::Udp), SipMessage::Request(cancel));
    let (_, e) = drain(&mut l);
    assert!(matches!(e.as_slice(), [TxEvent::Request { tx, .. }] if *tx != target));
    assert_eq!(
        l.invite_for_cancel(&req("CANCEL", "z9hG4bKother", ""), peer(Transport::Udp)),
        None
    );
}

#[test]
fn a_third_party_cannot_preempt_a_peers_request() {
    // A request from another IP with the same branch and sent-by is a transaction of its own,
    // so the peer's real request is delivered rather than absorbed as a retransmission.
    let t0 = epoch();
    let mut l = TransactionLayer::new();
    let other = Peer {
        addr: "192.0.2.99:5060".parse().expect("addr"),
        transport: Transport::Udp,
    };
    let bye = req("BYE", "z9hG4bKsame", "");
    l.handle_message(t0, other, SipMessage::Request(bye.clone()));
    let (_, e) = drain(&mut l);
    assert!(matches!(e.as_slice(), [TxEvent::Request { from, .. }] if *from == other));
    l.handle_message(t0, peer(Transport::Udp), SipMessage::Request(bye));
    let (_, e) = drain(&mut l);
    assert!(
        matches!(e.as_slice(), [TxEvent::Request { from, .. }] if *from == peer(Transport::Udp)),
        "{e:?}"
    );
}

#[test]
fn transport_error_terminates() {
    let mut l = TransactionLayer::new();
    let t0 = epoch();
    let tx = l
        .send_request(t0, peer(Transport::Tcp), req("INFO", "z9hG4bKte", ""))
        .expect("send");
    drain(&mut l);
    l.handle_transport_error(t0, tx);
    assert_eq!(
        drain(&mut l).1,
        vec![TxEvent::TransportError { tx }, TxEvent::Terminated { tx }]
    );
    l.handle_transport_error(t0, tx);
    assert_eq!(drain(&mut l), (vec![], vec![]));
}
