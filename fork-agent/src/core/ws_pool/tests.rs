//! WsPool unit tests: every policy rule driven with a stepped fake clock.

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;

fn pool(threshold: u32) -> WsPool {
    let config = PoolConfig {
        calls_threshold: threshold,
        ..PoolConfig::default()
    };
    WsPool::new(config, Box::new(StdRng::seed_from_u64(7))).expect("valid config")
}

/// Base instant for the fake clock; tests only ever add durations to it.
#[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
fn epoch() -> Instant {
    Instant::now()
}

fn drain(p: &mut WsPool) -> Vec<PoolOutput> {
    std::iter::from_fn(|| p.poll_output()).collect()
}

const C1: ConnHandle = ConnHandle(1);
const C2: ConnHandle = ConnHandle(2);

fn call(n: u32) -> CallHandle {
    CallHandle(n)
}

#[test]
fn config_validation_names_the_field() {
    let cases: [(PoolConfig, &str); 7] = [
        (
            PoolConfig {
                calls_threshold: 0,
                ..Default::default()
            },
            "calls_threshold",
        ),
        (
            PoolConfig {
                calls_threshold: 21,
                ..Default::default()
            },
            "calls_threshold",
        ),
        (
            PoolConfig {
                idle_timeout: Duration::ZERO,
                ..Default::default()
            },
            "idle_timeout",
        ),
        (
            PoolConfig {
                backoff_max: Duration::from_millis(1),
                ..Default::default()
            },
            "backoff_max",
        ),
        (
            PoolConfig {
                send_queue_limit: 0,
                ..Default::default()
            },
            "send_queue_limit",
        ),
        (
            PoolConfig {
                max_connect_attempts: 0,
                ..Default::default()
            },
            "max_connect_attempts",
        ),
        (
            PoolConfig {
                stall_timeout: Duration::ZERO,
                ..Default::default()
            },
            "stall_timeout",
        ),
    ];
    for (cfg, field) in cases {
        match WsPool::new(cfg, Box::new(StdRng::seed_from_u64(1))) {
            Err(PoolError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(PoolConfig::default().calls_threshold, 3);
    assert_eq!(
        PoolConfig::default().idle_timeout,
        Duration::from_secs(1800)
    );
    assert!(PoolConfig {
        calls_threshold: 20,
        ..Default::default()
    }
    .validate()
    .is_ok());
}

#[test]
fn calls_wait_on_pending_connection_then_assign() {
    let now = epoch();
    let mut p = pool(3);
    p.handle_stream_wanted(now, call(1)).expect("ok");
    assert_eq!(drain(&mut p), [PoolOutput::Connect { conn: C1 }]);
    p.handle_stream_wanted(now, call(2)).expect("ok");
    p.handle_stream_wanted(now, call(3)).expect("ok");
    assert_eq!(drain(&mut p), [], "no second connect while one is pending");
    assert_eq!(p.stats().calls_waiting, 3);
    p.handle_connected(now, C1).expect("ok");
    assert_eq!(
        drain(&mut p),
        [1, 2, 3].map(|n| PoolOutput::Assign {
            call: call(n),
            conn: C1
        })
    );
    assert_eq!(p.stats().calls_waiting, 0);
}

#[test]
fn full_connections_open_a_new_one() {
    let now = epoch();
    let mut p = pool(2);
    for n in 1..=2 {
        p.handle_stream_wanted(now, call(n)).expect("ok");
    }
    p.handle_connected(now, C1).expect("ok");
    drain(&mut p);
    p.handle_stream_wanted(now, call(3)).expect("ok");
    assert_eq!(drain(&mut p), [PoolOutput::Connect { conn: C2 }]);
    p.handle_connected(now, C2).expect("ok");
    assert_eq!(
        drain(&mut p),
        [PoolOutput::Assign {
            call: call(3),
            conn: C2
        }]
    );
}

#[test]
fn new_call_goes_to_least_busy_open_connection() {
    let now = epoch();
    let mut p = pool(2);
    for n in 1..=3 {
        p.handle_stream_wanted(now, call(n)).expect("ok");
    }
    p.handle_connected(now, C1).expect("ok");
    p.handle_connected(now, C2).expect("ok");
    drain(&mut p);
    // C1 holds 1 and 2, C2 holds 3. Free one slot on C1: both have 1 call, lowest wins.
    p.handle_call_released(now, call(1)).expect("ok");
    p.handle_stream_wanted(now, call(4)).expect("ok");
    assert_eq!(p.conn_of(call(4)), Some(C1));
    // Now C1 has 2 (full), C2 has 1.
    p.handle_call_released(now, call(4)).expect("ok");
    p.handle_call_released(now, call(2)).expect("ok");
    // C1: 0 calls, C2: 1 call → least busy is C1.
    p.handle_stream_wanted(now, call(5)).expect("ok");
    assert_eq!(p.conn_of(call(5)), Some(C1));
}

#[test]
fn idle_connection_closes_after_idle_timeout() {
    let t0 = epoch();
    let mut p = pool(3);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    p.handle_connected(t0, C1).expect("ok");
    drain(&mut p);
    assert_eq!(p.poll_timeout(), None, "busy open connection has no timer");
    let t1 = t0 + Duration::from_secs(60);
    p.handle_call_released(t1, call(1)).expect("ok");
    assert_eq!(p.poll_timeout(), Some(t1 + DEFAULT_IDLE_TIMEOUT));
    assert_eq!(p.timeout_reason(), Some((C1, "idle")));
    p.handle_timeout(t1 + DEFAULT_IDLE_TIMEOUT - Duration::from_millis(1));
    assert_eq!(drain(&mut p), [], "not yet");
    p.handle_timeout(t1 + DEFAULT_IDLE_TIMEOUT);
    assert_eq!(
        drain(&mut p),
        [PoolOutput::Close {
            conn: C1,
            reason: CloseReason::IdleTimeout
        }]
    );
    p.handle_closed(t1 + DEFAULT_IDLE_TIMEOUT, C1, Disconnect::LocalClose)
        .expect("ok");
    assert_eq!(drain(&mut p), []);
    assert_eq!(p.poll_timeout(), None);
    let s = p.stats();
    assert_eq!((s.idle_closes, s.conns.len()), (1, 0));
}

#[test]
fn reuse_cancels_idle_timer() {
    let t0 = epoch();
    let mut p = pool(3);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    p.handle_connected(t0, C1).expect("ok");
    p.handle_call_released(t0, call(1)).expect("ok");
    p.handle_stream_wanted(t0 + Duration::from_secs(5), call(2))
        .expect("ok");
    drain(&mut p);
    assert_eq!(p.poll_timeout(), None);
    p.handle_timeout(t0 + DEFAULT_IDLE_TIMEOUT * 2);
    assert_eq!(drain(&mut p), [], "spurious timeout is a no-op");
    assert_eq!(p.conn_of(call(2)), Some(C1));
}

#[test]
fn connect_failure_backs_off_exponentially_with_jitter() {
    let t0 = epoch();
    let mut p = pool(3);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    drain(&mut p);
    let mut now = t0;
    let mut bases = Vec::new();
    for attempt in 1..=4u32 {
        p.handle_closed(now, C1, Disconnect::ConnectFailed)
            .expect("ok");
        let at = p.poll_timeout().expect("reconnect armed");
        let delay = at - now;
        let base = Duration::from_millis(500) * (1 << (attempt - 1));
        assert!(
            delay >= base / 2 && delay <= base,
            "attempt {attempt}: {delay:?} not in [{:?}, {base:?}]",
            base / 2
        );
        bases.push(base);
        assert_eq!(p.timeout_reason(), Some((C1, "reconnect")));
        p.handle_timeout(at - Duration::from_millis(1));
        assert_eq!(drain(&mut p), []);
        p.handle_timeout(at);
        assert_eq!(drain(&mut p), [PoolOutput::Connect { conn: C1 }]);
        now = at;
    }
    p.handle_connected(now, C1).expect("ok");
    assert_eq!(
        drain(&mut p),
        [PoolOutput::Assign {
            call: call(1),
            conn: C1
        }]
    );
    assert_eq!(p.stats().connect_failures, 4);
    assert_eq!(p.stats().connects, 5);
}

#[test]
fn backoff_is_capped() {
    let cfg = PoolConfig::default();
    let mut rng = StdRng::seed_from_u64(3);
    for level in [7, 8, 20, 40, u32::MAX] {
        let d = backoff_delay(cfg.backoff_initial, cfg.backoff_max, level, &mut rng);
        assert!(
            d <= cfg.backoff_max && d >= cfg.backoff_max / 2,
            "{level}: {d:?}"
        );
    }
}

#[test]
fn gives_up_after_max_connect_attempts() {
    let t0 = epoch();
    let mut p = pool(3);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    p.handle_stream_wanted(t0, call(2)).expect("ok");
    drain(&mut p);
    let mut now = t0;
    for _ in 1..5 {
        p.handle_closed(now, C1, Disconnect::HandshakeRejected { status: 401 })
            .expect("ok");
        now = p.poll_timeout().expect("reconnect");
        p.handle_timeout(now);
        drain(&mut p);
    }
    p.handle_closed(now, C1, Disconnect::HandshakeRejected { status: 401 })
        .expect("ok");
    let last = Disconnect::HandshakeRejected { status: 401 };
    assert_eq!(
        drain(&mut p),
        [
            PoolOutput::CallFailed {
                call: call(1),
                last
            },
            PoolOutput::CallFailed {
                call: call(2),
                last
            }
        ]
    );
    assert_eq!(p.poll_timeout(), None);
    assert_eq!(p.stats().calls_failed, 2);
    assert_eq!(
        p.handle_call_released(now, call(1)),
        Err(PoolError::UnknownCall(call(1)))
    );
}

#[test]
fn dead_connection_rehomes_calls_then_reconnects_the_rest() {
    let t0 = epoch();
    let mut p = pool(2);
    for n in 1..=3 {
        p.handle_stream_wanted(t0, call(n)).expect("ok");
    }
    p.handle_connected(t0, C1).expect("ok");
    p.handle_connected(t0, C2).expect("ok");
    drain(&mut p);
    // C1: calls 1, 2. C2: call 3 (room for one more).
    let t1 = t0 + Duration::from_secs(60);
    p.handle_closed(t1, C1, Disconnect::RemoteClose { code: 1001 })
        .expect("ok");
    assert_eq!(
        drain(&mut p),
        [PoolOutput::Resend {
            call: call(1),
            conn: C2
        }]
    );
    assert_eq!(p.conn_of(call(2)), Some(C1), "no room left: waits on C1");
    assert_eq!(p.stats().remote_closes, 1);
    // C1 was stable (60 s): backoff restarts at the first level.
    let at = p.poll_timeout().expect("reconnect");
    assert!(at - t1 <= Duration::from_millis(500));
    p.handle_timeout(at);
    assert_eq!(drain(&mut p), [PoolOutput::Connect { conn: C1 }]);
    p.handle_connected(at, C1).expect("ok");
    assert_eq!(
        drain(&mut p),
        [PoolOutput::Resend {
            call: call(2),
            conn: C1
        }]
    );
}

#[test]
fn connection_with_no_calls_left_is_not_reconnected() {
    let t0 = epoch();
    let mut p = pool(3);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    p.handle_connected(t0, C1).expect("ok");
    p.handle_call_released(t0, call(1)).expect("ok");
    drain(&mut p);
    p.handle_closed(t0, C1, Disconnect::TransportError)
        .expect("ok");
    assert_eq!(drain(&mut p), []);
    assert_eq!(p.poll_timeout(), None);
    assert_eq!(p.stats().transport_closes, 1);
}

#[test]
fn release_during_backoff_cancels_reconnect() {
    let t0 = epoch();
    let mut p = pool(3);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    drain(&mut p);
    p.handle_closed(t0, C1, Disconnect::ConnectFailed)
        .expect("ok");
    assert!(p.poll_timeout().is_some());
    p.handle_call_released(t0, call(1)).expect("ok");
    assert_eq!(p.poll_timeout(), None);
    assert!(p.stats().conns.is_empty());
}

#[test]
fn quick_drops_keep_backing_off() {
    // A server that accepts and drops at once must not reset the backoff.
    let t0 = epoch();
    let mut p = pool(3);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    let mut now = t0;
    let mut delays = Vec::new();
    for _ in 0..4 {
        p.handle_connected(now, C1).expect("ok");
        p.handle_closed(
            now + Duration::from_millis(10),
            C1,
            Disconnect::TransportError,
        )
        .expect("ok");
        let at = p.poll_timeout().expect("reconnect");
        delays.push(at - (now + Duration::from_millis(10)));
        p.handle_timeout(at);
        now = at;
    }
    drain(&mut p);
    assert!(delays[3] >= Duration::from_secs(2), "{delays:?}");
    let outs_resend = p.conn_of(call(1));
    assert_eq!(outs_resend, Some(C1));
}

#[test]
fn resend_after_reconnect_for_started_calls() {
    let t0 = epoch();
    let mut p = pool(3);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    p.handle_connected(t0, C1).expect("ok");
    drain(&mut p);
    p.handle_closed(t0, C1, Disconnect::TransportError)
        .expect("ok");
    // A new call arriving meanwhile waits on the reconnecting slot.
    p.handle_stream_wanted(t0, call(2)).expect("ok");
    assert_eq!(drain(&mut p), []);
    let at = p.poll_timeout().expect("reconnect");
    p.handle_timeout(at);
    p.handle_connected(at, C1).expect("ok");
    assert_eq!(
        drain(&mut p),
        [
            PoolOutput::Connect { conn: C1 },
            PoolOutput::Resend {
                call: call(1),
                conn: C1
            },
            PoolOutput::Assign {
                call: call(2),
                conn: C1
            }
        ]
    );
}

#[test]
fn send_queue_drops_oldest_audio_never_control() {
    let t0 = epoch();
    let config = PoolConfig {
        send_queue_limit: 3,
        ..PoolConfig::default()
    };
    let mut p = WsPool::new(config, Box::new(StdRng::seed_from_u64(1))).expect("valid");
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    p.handle_connected(t0, C1).expect("ok");
    drain(&mut p);
    for _ in 0..3 {
        assert_eq!(p.admit(t0, C1, FrameKind::Audio), Admit::Send);
    }
    // Full: each new frame replaces the oldest; one overflow episode.
    assert_eq!(
        p.admit(t0, C1, FrameKind::Audio),
        Admit::SendDropOldest { episode: true }
    );
    assert_eq!(
        p.admit(t0, C1, FrameKind::Audio),
        Admit::SendDropOldest { episode: false }
    );
    assert_eq!(p.admit(t0, C1, FrameKind::Control), Admit::Send);
    let s = p.stats();
    assert_eq!((s.audio_dropped, s.conns[0].audio_dropped), (2, 2));
    assert_eq!(
        s.conns[0].backlog, 4,
        "replacing keeps the length; control adds"
    );
    // Still at the limit after a partial drain: the same episode goes on.
    p.handle_send_backlog(t0, C1, 3).expect("ok");
    assert_eq!(
        p.admit(t0, C1, FrameKind::Audio),
        Admit::SendDropOldest { episode: false }
    );
    // The writer drained the queue: audio flows again and the stall timer is cleared.
    p.handle_send_backlog(t0, C1, 0).expect("ok");
    assert_eq!(p.poll_timeout(), None);
    assert_eq!(p.admit(t0, C1, FrameKind::Audio), Admit::Send);
    // The next overflow is a new episode.
    p.handle_send_backlog(t0, C1, 3).expect("ok");
    assert_eq!(
        p.admit(t0, C1, FrameKind::Audio),
        Admit::SendDropOldest { episode: true }
    );
    // Frames for a connection that is not open are dropped and counted.
    assert_eq!(p.admit(t0, ConnHandle(99), FrameKind::Audio), Admit::Drop);
    assert_eq!(p.stats().audio_dropped, 5);
}

#[test]
fn stalled_queue_closes_connection_and_calls_reconnect() {
    let t0 = epoch();
    let config = PoolConfig {
        send_queue_limit: 2,
        ..PoolConfig::default()
    };
    let mut p = WsPool::new(config, Box::new(StdRng::seed_from_u64(1))).expect("valid");
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    p.handle_connected(t0, C1).expect("ok");
    drain(&mut p);
    p.handle_send_backlog(t0, C1, 2).expect("ok");
    let stall_at = t0 + Duration::from_secs(10);
    assert_eq!(p.poll_timeout(), Some(stall_at));
    assert_eq!(p.timeout_reason(), Some((C1, "stall")));
    // Still full later: the deadline does not move.
    p.handle_send_backlog(t0 + Duration::from_secs(5), C1, 2)
        .expect("ok");
    assert_eq!(p.poll_timeout(), Some(stall_at));
    p.handle_timeout(stall_at);
    assert_eq!(
        drain(&mut p),
        [PoolOutput::Close {
            conn: C1,
            reason: CloseReason::Stalled
        }]
    );
    assert_eq!(p.admit(stall_at, C1, FrameKind::Audio), Admit::Drop);
    p.handle_closed(stall_at, C1, Disconnect::LocalClose)
        .expect("ok");
    assert_eq!(p.stats().stall_closes, 1);
    let at = p.poll_timeout().expect("reconnect for the call");
    p.handle_timeout(at);
    p.handle_connected(at, C1).expect("ok");
    assert_eq!(
        drain(&mut p),
        [
            PoolOutput::Connect { conn: C1 },
            PoolOutput::Resend {
                call: call(1),
                conn: C1
            }
        ]
    );
}

#[test]
fn connect_timeout_aborts_attempt() {
    let t0 = epoch();
    let mut p = pool(3);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    drain(&mut p);
    let at = t0 + Duration::from_secs(10);
    assert_eq!(p.poll_timeout(), Some(at));
    p.handle_timeout(at);
    assert_eq!(
        drain(&mut p),
        [PoolOutput::Close {
            conn: C1,
            reason: CloseReason::ConnectTimeout
        }]
    );
    // A late success report for an aborted attempt is ignored.
    p.handle_connected(at, C1).expect("ignored");
    assert_eq!(drain(&mut p), []);
    p.handle_closed(at, C1, Disconnect::LocalClose).expect("ok");
    assert_eq!(p.stats().connect_failures, 1);
    assert_eq!(p.timeout_reason(), Some((C1, "reconnect")));
}

#[test]
fn api_misuse_is_an_error() {
    let t0 = epoch();
    let mut p = pool(3);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    assert_eq!(
        p.handle_stream_wanted(t0, call(1)),
        Err(PoolError::CallAlreadyWanted(call(1)))
    );
    assert_eq!(
        p.handle_call_released(t0, call(9)),
        Err(PoolError::UnknownCall(call(9)))
    );
    assert_eq!(
        p.handle_connected(t0, ConnHandle(9)),
        Err(PoolError::UnknownConn(ConnHandle(9)))
    );
    assert_eq!(
        p.handle_closed(t0, ConnHandle(9), Disconnect::LocalClose),
        Err(PoolError::UnknownConn(ConnHandle(9)))
    );
    assert_eq!(
        p.handle_send_backlog(t0, ConnHandle(9), 1),
        Err(PoolError::UnknownConn(ConnHandle(9)))
    );
    p.handle_connected(t0, C1).expect("ok");
    assert_eq!(
        p.handle_connected(t0, C1),
        Err(PoolError::NotConnecting(C1))
    );
    assert!(PoolError::InvalidConfig {
        field: "calls_threshold",
        reason: "must be between 1 and 20"
    }
    .to_string()
    .contains("calls_threshold"));
}

#[test]
fn twenty_calls_per_connection_at_max_threshold() {
    let t0 = epoch();
    let mut p = pool(20);
    for n in 0..41 {
        p.handle_stream_wanted(t0, call(n)).expect("ok");
    }
    let connects = drain(&mut p)
        .into_iter()
        .filter(|o| matches!(o, PoolOutput::Connect { .. }))
        .count();
    assert_eq!(connects, 3, "41 calls need 3 connections of 20");
    let per: Vec<usize> = p.stats().conns.iter().map(|c| c.calls).collect();
    assert_eq!(per, [20, 20, 1]);
}

/// A pool whose server answers every upgrade and then sends garbage (protocol errors).
fn garbage_pool(limit: u32) -> WsPool {
    let config = PoolConfig {
        protocol_error_limit: limit,
        ..PoolConfig::default()
    };
    WsPool::new(config, Box::new(StdRng::seed_from_u64(11))).expect("valid")
}

/// Steps `p` through timers until `end`, answering every `Connect` with a connection that
/// breaks the protocol `after` later. Returns the instants of the connection attempts.
fn run_garbage_server(
    p: &mut WsPool,
    from: Instant,
    end: Instant,
    after: Duration,
) -> Vec<Instant> {
    let mut attempts = Vec::new();
    let mut now = from;
    let mut pending: Vec<(Instant, ConnHandle)> = Vec::new();
    for _ in 0..100_000 {
        for out in drain(p) {
            if let PoolOutput::Connect { conn } = out {
                attempts.push(now);
                p.handle_connected(now, conn).expect("connected");
                pending.push((now + after, conn));
            }
        }
        let next_close = pending.iter().map(|&(at, _)| at).min();
        let next = [p.poll_timeout(), next_close].into_iter().flatten().min();
        let Some(at) = next.filter(|&at| at <= end) else {
            break;
        };
        now = at;
        if let Some(i) = pending.iter().position(|&(t, _)| t == at) {
            let (_, conn) = pending.remove(i);
            p.handle_closed(now, conn, Disconnect::ProtocolError)
                .expect("closed");
        } else {
            p.handle_timeout(now);
        }
    }
    attempts
}

#[test]
fn protocol_errors_are_counted_apart_from_tcp_closures() {
    let t0 = epoch();
    let mut p = garbage_pool(3);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    p.handle_connected(t0, C1).expect("ok");
    drain(&mut p);
    p.handle_closed(t0, C1, Disconnect::ProtocolError)
        .expect("ok");
    let s = p.stats();
    assert_eq!(
        (
            s.protocol_errors,
            s.transport_closes,
            s.remote_closes,
            s.connect_failures
        ),
        (1, 0, 0, 0)
    );
    assert_eq!(s.protocol_error_streak, 1);
    // Below the limit: the slot reconnects with the ordinary backoff, no hold-off.
    assert_eq!(drain(&mut p), []);
    let at = p.poll_timeout().expect("reconnect");
    assert!(at - t0 <= Duration::from_millis(500), "{:?}", at - t0);
    assert_eq!(p.timeout_reason(), Some((C1, "reconnect")));
    p.clear_stats();
    let s = p.stats();
    assert_eq!(
        (s.protocol_errors, s.protocol_error_streak),
        (0, 1),
        "the streak is state"
    );
}

#[test]
fn limit_of_protocol_errors_holds_the_server_off_with_growing_capped_delays() {
    let t0 = epoch();
    let mut p = garbage_pool(3);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    drain(&mut p);
    let mut now = t0;
    let mut holds = Vec::new();
    for n in 1..=12u32 {
        p.handle_connected(now, C1).expect("ok");
        drain(&mut p);
        let close_at = now + Duration::from_millis(20);
        p.handle_closed(close_at, C1, Disconnect::ProtocolError)
            .expect("ok");
        let outs = drain(&mut p);
        let at = p
            .poll_timeout()
            .expect("the call still waits: reconnect armed");
        match outs.as_slice() {
            [] => assert!(n < 3, "error {n} must hold off: {outs:?}"),
            [PoolOutput::ProtocolBackoff { delay, errors }] => {
                assert!(n >= 3, "error {n} is below the limit");
                assert_eq!(*errors, n);
                assert_eq!(
                    at,
                    close_at + *delay,
                    "the reconnect waits for the hold-off"
                );
                holds.push(*delay);
            }
            other => panic!("error {n}: {other:?}"),
        }
        p.handle_timeout(at);
        assert_eq!(drain(&mut p), [PoolOutput::Connect { conn: C1 }]);
        now = at;
    }
    // Equal jitter around 10 s, 20 s, 40 s, ... capped at 5 min.
    let cfg = PoolConfig::default();
    for (i, d) in holds.iter().enumerate() {
        let base = cfg
            .protocol_backoff_initial
            .saturating_mul(1 << i.min(20))
            .min(cfg.protocol_backoff_max);
        assert!(*d >= base / 2 && *d <= base, "hold {i}: {d:?} vs {base:?}");
    }
    assert!(holds[9] >= cfg.protocol_backoff_max / 2, "{holds:?}");
    let s = p.stats();
    assert_eq!((s.protocol_errors, s.protocol_backoffs), (12, 10));
    assert_eq!(p.conn_of(call(1)), Some(C1), "the call is kept, not failed");
    assert_eq!(s.calls_failed, 0);
}

#[test]
fn new_call_during_hold_off_waits_for_its_end() {
    let t0 = epoch();
    let mut p = garbage_pool(1);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    p.handle_connected(t0, C1).expect("ok");
    p.handle_call_released(t0, call(1)).expect("ok");
    drain(&mut p);
    // The idle connection breaks the protocol: nothing to reconnect, but the hold-off stays.
    p.handle_closed(t0, C1, Disconnect::ProtocolError)
        .expect("ok");
    let delay = match drain(&mut p).as_slice() {
        [PoolOutput::ProtocolBackoff { delay, errors: 1 }] => *delay,
        other => panic!("{other:?}"),
    };
    assert_eq!(p.poll_timeout(), None, "no slot is waiting");
    let t1 = t0 + Duration::from_secs(1);
    p.handle_stream_wanted(t1, call(2)).expect("ok");
    assert_eq!(drain(&mut p), [], "no connection attempt while held off");
    assert_eq!(p.stats().connects, 1);
    assert_eq!(p.stats().calls_waiting, 1);
    assert_eq!(p.poll_timeout(), Some(t0 + delay));
    p.handle_timeout(t0 + delay);
    let outs = drain(&mut p);
    assert_eq!(outs.len(), 1);
    let PoolOutput::Connect { conn } = outs[0] else {
        panic!("{outs:?}");
    };
    p.handle_connected(t0 + delay, conn).expect("ok");
    assert_eq!(
        drain(&mut p),
        [PoolOutput::Assign {
            call: call(2),
            conn
        }]
    );
    // After the hold-off, a new call connects at once again.
    p.handle_stream_wanted(t0 + delay, call(3)).expect("ok");
    assert_eq!(p.conn_of(call(3)), Some(conn));
}

#[test]
fn a_healthy_period_clears_the_count_and_the_hold_off_level() {
    let t0 = epoch();
    let mut p = garbage_pool(2);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    drain(&mut p);
    let mut now = t0;
    // Two errors: held off once (level 1).
    for _ in 0..2 {
        p.handle_connected(now, C1).expect("ok");
        p.handle_closed(now, C1, Disconnect::ProtocolError)
            .expect("ok");
        now = p.poll_timeout().expect("reconnect");
        p.handle_timeout(now);
    }
    assert_eq!(p.stats().protocol_backoffs, 1);
    p.handle_connected(now, C1).expect("ok");
    drain(&mut p);
    let healthy_at = now + Duration::from_secs(60);
    assert_eq!(p.poll_timeout(), Some(healthy_at));
    assert_eq!(p.timeout_reason(), Some((C1, "healthy")));
    p.handle_timeout(healthy_at - Duration::from_millis(1));
    assert_eq!(p.stats().protocol_error_streak, 2, "not yet");
    p.handle_timeout(healthy_at);
    assert_eq!(p.stats().protocol_error_streak, 0);
    assert_eq!(
        p.poll_timeout(),
        None,
        "a busy healthy connection has no timer"
    );
    // One more error is the first of a new count: no hold-off.
    now = healthy_at + Duration::from_secs(5);
    p.handle_closed(now, C1, Disconnect::ProtocolError)
        .expect("ok");
    assert_eq!(drain(&mut p), []);
    let at = p.poll_timeout().expect("reconnect");
    assert!(
        at - now <= Duration::from_millis(500),
        "ordinary backoff only"
    );
    // A second one holds off again, at the first level (the level was cleared too).
    p.handle_timeout(at);
    p.handle_connected(at, C1).expect("ok");
    p.handle_closed(at, C1, Disconnect::ProtocolError)
        .expect("ok");
    let outs = drain(&mut p);
    let holds: Vec<(Duration, u32)> = outs
        .iter()
        .filter_map(|o| match o {
            PoolOutput::ProtocolBackoff { delay, errors } => Some((*delay, *errors)),
            _ => None,
        })
        .collect();
    assert_eq!(holds.len(), 1, "{outs:?}");
    assert_eq!(holds[0].1, 2);
    assert!(holds[0].0 <= Duration::from_secs(10), "{holds:?}");
}

#[test]
fn a_later_error_restarts_the_healthy_period() {
    let t0 = epoch();
    let mut p = garbage_pool(3);
    p.handle_stream_wanted(t0, call(1)).expect("ok");
    p.handle_connected(t0, C1).expect("ok");
    drain(&mut p);
    // C1 breaks the protocol; its call waits for the reconnect.
    p.handle_closed(t0, C1, Disconnect::ProtocolError)
        .expect("ok");
    let t1 = t0 + Duration::from_secs(30);
    let at = p.poll_timeout().expect("reconnect");
    p.handle_timeout(at);
    p.handle_connected(at, C1).expect("ok");
    drain(&mut p);
    assert_eq!(
        p.poll_timeout(),
        Some(at + Duration::from_secs(60)),
        "C1's healthy period"
    );
    // 30 s later C1 breaks the protocol again: the period restarts from there.
    p.handle_closed(t1, C1, Disconnect::ProtocolError)
        .expect("ok");
    let at2 = p.poll_timeout().expect("reconnect");
    p.handle_timeout(at2);
    p.handle_connected(at2, C1).expect("ok");
    drain(&mut p);
    p.handle_timeout(at + Duration::from_secs(60));
    assert_eq!(
        p.stats().protocol_error_streak,
        2,
        "the old period does not count"
    );
    p.handle_timeout(at2 + Duration::from_secs(60));
    assert_eq!(p.stats().protocol_error_streak, 0);
}

#[test]
fn garbage_server_is_reconnected_to_far_less_often_than_without_the_hold_off() {
    let t0 = epoch();
    let window = Duration::from_secs(6 * 3600);
    let garbage_after = Duration::from_millis(10);
    let mut held = garbage_pool(DEFAULT_PROTOCOL_ERROR_LIMIT);
    held.handle_stream_wanted(t0, call(1)).expect("ok");
    let with = run_garbage_server(&mut held, t0, t0 + window, garbage_after);
    // Without the hold-off (a limit no server reaches) the ordinary backoff (capped at
    // 30 s) is all that spaces the attempts.
    let mut plain = garbage_pool(MAX_PROTOCOL_ERROR_LIMIT);
    plain.handle_stream_wanted(t0, call(1)).expect("ok");
    let without = run_garbage_server(&mut plain, t0, t0 + window, garbage_after);
    // Without: every gap is at most 30 s. With: 3 errors, then hold-offs of at least 5 s,
    // 10 s, ... and from the sixth on at least 150 s (half the 5 min cap).
    assert!(without.len() >= 6 * 3600 / 30, "{} attempts", without.len());
    assert!(
        with.len() <= 3 + 6 + 6 * 3600 / 150,
        "{} attempts in 6 h",
        with.len()
    );
    assert!(
        without.len() >= 4 * with.len(),
        "with {} / without {}",
        with.len(),
        without.len()
    );
    // Spacing never below the hold-off floor once held off.
    let gaps: Vec<Duration> = with.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[DEFAULT_PROTOCOL_ERROR_LIMIT as usize..]
            .iter()
            .all(|g| *g >= Duration::from_secs(5)),
        "{gaps:?}"
    );
    assert_eq!(held.stats().calls_failed, 0);
}

#[test]
fn protocol_settings_are_validated() {
    for (cfg, field) in [
        (
            PoolConfig {
                protocol_error_limit: 0,
                ..Default::default()
            },
            "protocol_error_limit",
        ),
        (
            PoolConfig {
                protocol_error_limit: MAX_PROTOCOL_ERROR_LIMIT + 1,
                ..Default::default()
            },
            "protocol_error_limit",
        ),
        (
            PoolConfig {
                protocol_backoff_initial: Duration::ZERO,
                ..Default::default()
            },
            "protocol_backoff_initial",
        ),
        (
            PoolConfig {
                protocol_backoff_max: Duration::from_secs(1),
                ..Default::default()
            },
            "protocol_backoff_max",
        ),
        (
            PoolConfig {
                healthy_after: Duration::ZERO,
                ..Default::default()
            },
            "healthy_after",
        ),
    ] {
        match cfg.validate() {
            Err(PoolError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn single_use_connections_close_with_their_call_and_are_never_reused() {
    let config = PoolConfig {
        calls_threshold: 1,
        single_use: true,
        ..PoolConfig::default()
    };
    let mut p = WsPool::new(config, Box::new(StdRng::seed_from_u64(7))).expect("valid config");
    let t0 = epoch();
    p.handle_stream_wanted(t0, call(1)).expect("want");
    assert_eq!(drain(&mut p), vec![PoolOutput::Connect { conn: C1 }]);
    p.handle_connected(t0, C1).expect("connected");
    assert_eq!(
        drain(&mut p),
        vec![PoolOutput::Assign {
            call: call(1),
            conn: C1
        }]
    );
    p.handle_call_released(t0, call(1)).expect("release");
    assert_eq!(
        drain(&mut p),
        vec![PoolOutput::Close {
            conn: C1,
            reason: CloseReason::CallEnded
        }]
    );
    // A call arriving while C1 is closing gets a connection of its own.
    p.handle_stream_wanted(t0, call(2)).expect("want");
    assert_eq!(drain(&mut p), vec![PoolOutput::Connect { conn: C2 }]);
    p.handle_closed(t0, C1, Disconnect::LocalClose)
        .expect("closed");
    assert_eq!(drain(&mut p), vec![]);
    // A call released before its connection opened aborts the attempt; the pool is empty.
    p.handle_call_released(t0, call(2)).expect("release");
    assert_eq!(
        drain(&mut p),
        vec![PoolOutput::Close {
            conn: C2,
            reason: CloseReason::CallEnded
        }]
    );
    assert!(!p.is_empty(), "C2 is still closing");
    p.handle_closed(t0, C2, Disconnect::LocalClose)
        .expect("closed");
    assert!(p.is_empty());
}
