//! Connection policy of the service: how pool decisions and connection outcomes become
//! speech-protocol traffic, fork failures, alarms and history.
//!
//! Role: bridge each speech server's [`WsPool`](crate::core::ws_pool::WsPool) (which decides
//! when to connect, reconnect, rehome or give up) and the forks: a call assigned to an open
//! connection gets its `start`s (with `resumed: true` after a reconnect or restart), a lost
//! connection sets its calls reconnecting, a pool that gives up fails its calls with the cause
//! the shell observed ([`ConnFailure`] mapped to [`ForkFailure`]), and a clear command fails
//! the connection's forks and closes it. Closed connections that were open go to the history.
//! A connection the shell closed because the server sent a frame it may not send
//! ([`ConnFailure::Protocol`]) raises the protocol-error alarm, not "TCP closures", is counted
//! by kind, and reports "Connection closed" to the controller (the WebSocket connection did
//! close, by our hand); the pool decides when the server is held off
//! ([`Output::ServerBackoff`]).
//! Inputs: [`ForkService::handle_connected`], [`ForkService::handle_closed`],
//! [`ForkService::handle_clear_connection`], and every pool's outputs (`drain_pool`).
//! Outputs: [`Output::Connect`], [`Output::Close`], the `Send`s of `start`, status events,
//! [`Output::Alarm`].

use std::time::Instant;

use serde::Serialize;

use super::streams::{Awaiting, Session, StartedOn};
use super::{
    ConnId, ForkFailure, ForkService, ForkStatus, Output, ServerId, SessState, SessionError,
};
use speech_proto::ServerViolation;

use crate::core::alarms::{AlarmKind, ClosedConn};
use crate::core::ws_pool::{CloseReason, ConnHandle, Disconnect, PoolOutput};

/// How a connection (attempt) ended, as the shell observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnFailure {
    /// The speech server's name did not resolve.
    Dns,
    /// The proxy's name did not resolve.
    ProxyDns,
    /// No TCP connection to any address (refused, unreachable, timeout).
    Tcp,
    /// The TLS handshake failed (certificate, name, version, cipher).
    Tls,
    /// The proxy answered CONNECT with a non-2xx status (0 when it answered garbage).
    Proxy {
        /// HTTP status of the proxy's answer.
        status: u16,
    },
    /// The upgrade got a non-101 answer (0 when the answer was not HTTP or the accept key,
    /// subprotocol or headers were wrong).
    Http {
        /// HTTP status.
        status: u16,
    },
    /// The server sent a WebSocket Close.
    RemoteClose {
        /// Close code (RFC 6455 §7.4).
        code: u16,
    },
    /// The TCP connection broke (reset, EOF without Close, write error).
    Transport,
    /// The server sent a frame the protocol does not allow it to send; the shell closed the
    /// connection (docs/speech-protocol.md §2, §4.7).
    Protocol {
        /// What it sent.
        violation: ServerViolation,
    },
    /// We closed it (after an [`Output::Close`]).
    Local,
}

impl ConnFailure {
    fn disconnect(self) -> Disconnect {
        match self {
            ConnFailure::Dns | ConnFailure::ProxyDns | ConnFailure::Tcp | ConnFailure::Tls => {
                Disconnect::ConnectFailed
            }
            ConnFailure::Proxy { status } | ConnFailure::Http { status } => {
                Disconnect::HandshakeRejected { status }
            }
            ConnFailure::RemoteClose { code } => Disconnect::RemoteClose { code },
            ConnFailure::Transport => Disconnect::TransportError,
            ConnFailure::Protocol { .. } => Disconnect::ProtocolError,
            ConnFailure::Local => Disconnect::LocalClose,
        }
    }

    fn failure(self) -> ForkFailure {
        match self {
            ConnFailure::Dns => ForkFailure::DnsLookupFailed,
            ConnFailure::ProxyDns => ForkFailure::ProxyDnsLookupFailed,
            ConnFailure::Http { status: 401 | 403 } => ForkFailure::AuthenticationTokenInvalid,
            ConnFailure::Tcp
            | ConnFailure::Tls
            | ConnFailure::Proxy { .. }
            | ConnFailure::Http { .. } => ForkFailure::ConnectionFailed,
            // We closed it because of what the server sent: the connection closed, but not the
            // TCP connection on its own ("TCP Connection closed" would send operators to the
            // network).
            ConnFailure::RemoteClose { .. } | ConnFailure::Protocol { .. } | ConnFailure::Local => {
                ForkFailure::ConnectionClosed
            }
            ConnFailure::Transport => ForkFailure::TcpConnectionClosed,
        }
    }

    fn alarm(self) -> Option<AlarmKind> {
        match self {
            ConnFailure::Dns | ConnFailure::ProxyDns | ConnFailure::Tcp | ConnFailure::Tls => {
                Some(AlarmKind::TcpFailure)
            }
            ConnFailure::Proxy { .. } | ConnFailure::Http { .. } => Some(AlarmKind::HttpFailure),
            ConnFailure::RemoteClose { .. } => Some(AlarmKind::RemoteWsClosure),
            ConnFailure::Transport => Some(AlarmKind::TcpClosure),
            ConnFailure::Protocol { .. } => Some(AlarmKind::ProtocolError),
            ConnFailure::Local => None,
        }
    }
}

/// Why the service asks the shell to close a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseWhy {
    /// No call for the idle timeout.
    IdleTimeout,
    /// The send queue stayed full.
    Stalled,
    /// The connection attempt took too long.
    ConnectTimeout,
    /// `clear stream-service connection-id N forced`.
    Cleared,
    /// Its one call ended (a dialect with one call per connection).
    CallEnded,
}

impl CloseWhy {
    /// The reference's event-trace wording.
    pub fn describe(self) -> &'static str {
        match self {
            CloseWhy::IdleTimeout => "closed locally due to idle-timeout expiry",
            CloseWhy::Stalled => "closed locally: send queue stalled",
            CloseWhy::ConnectTimeout => "connection attempt timed out",
            CloseWhy::Cleared => "closed locally using clear command",
            CloseWhy::CallEnded => "closed locally: its call ended (one call per connection)",
        }
    }
}

/// What the shell learned when a connection opened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConnInfo {
    /// Local address of the TCP connection.
    pub local: Option<String>,
    /// Address connected to (the proxy's when one is used).
    pub peer: Option<String>,
    /// TLS version, when secure.
    pub tls_version: Option<String>,
    /// Negotiated cipher suite, when secure.
    pub cipher_suite: Option<String>,
    /// Unix seconds of the upgrade.
    pub connected_at: u64,
}

#[derive(Debug, Clone)]
pub(super) struct ConnRec {
    pub(super) server: ServerId,
    pub(super) handle: ConnHandle,
    pub(super) info: Option<ConnInfo>,
    pub(super) calls_total: u64,
    pub(super) asked: Option<CloseWhy>,
}

impl ForkService {
    /// The upgrade of `conn` succeeded.
    pub fn handle_connected(
        &mut self,
        now: Instant,
        conn: ConnId,
        info: ConnInfo,
    ) -> Result<(), SessionError> {
        let rec = self
            .conns
            .get_mut(&conn)
            .ok_or(SessionError::UnknownConn(conn.0))?;
        rec.info = Some(info);
        let (server, handle) = (rec.server, rec.handle);
        let res = self.pool(server)?.handle_connected(now, handle);
        self.drain_pool(now, server);
        res.map_err(SessionError::from)
    }

    /// The server on `conn` accepted the session its dialect announced (AudioHook `opened`):
    /// the forks carried there are STARTED now.
    pub fn handle_accepted(&mut self, _now: Instant, conn: ConnId) -> Result<(), SessionError> {
        if !self.conns.contains_key(&conn) {
            return Err(SessionError::UnknownConn(conn.0));
        }
        self.report_started(conn, StartedOn::Accepted, |_| true);
        Ok(())
    }

    /// The `start`s of `streams` were written to `conn`: their forks, on dialects that do not
    /// confirm sessions, are STARTED now.
    pub fn handle_starts_written(
        &mut self,
        _now: Instant,
        conn: ConnId,
        streams: &[u32],
    ) -> Result<(), SessionError> {
        if !self.conns.contains_key(&conn) {
            return Err(SessionError::UnknownConn(conn.0));
        }
        self.report_started(conn, StartedOn::Written, |s| {
            s.streams.iter().any(|st| streams.contains(&st.id))
        });
        Ok(())
    }

    /// The forks live on `conn` (and chosen by `which`) whose STARTED waited `on` this: STARTED.
    fn report_started(&mut self, conn: ConnId, on: StartedOn, which: impl Fn(&Session) -> bool) {
        let started: Vec<(String, bool)> = self
            .sessions
            .values_mut()
            .filter(|s| s.state == SessState::Live(conn) && which(s))
            .filter_map(|s| {
                let a = s.awaiting.take_if(|a| a.on == on)?;
                Some((s.req.call_guid.clone(), a.reconnected))
            })
            .collect();
        for (guid, reconnected) in started {
            self.status(&guid, ForkStatus::Started, None, reconnected);
        }
    }

    /// `conn` (or its attempt) ended. `wall` is the Unix time, for the history.
    pub fn handle_closed(
        &mut self,
        now: Instant,
        wall: u64,
        conn: ConnId,
        failure: ConnFailure,
    ) -> Result<(), SessionError> {
        let rec = self
            .conns
            .get_mut(&conn)
            .ok_or(SessionError::UnknownConn(conn.0))?;
        let asked = rec.asked.take();
        let (server, handle) = (rec.server, rec.handle);
        // The upgrade completed (info is set by handle_connected). Not the pool state: a
        // connection we asked to close (idle timeout, stall) is already Closing here.
        let was_open = rec.info.is_some();
        // What to report: our own closes say why we asked; a connect timeout is a TCP failure.
        let (alarm, fork_failure) = match (asked, failure) {
            (Some(CloseWhy::ConnectTimeout), _) => {
                (Some(AlarmKind::TcpFailure), ForkFailure::ConnectionFailed)
            }
            (Some(_), _) => (None, ForkFailure::ConnectionClosed),
            (None, f) => (f.alarm(), f.failure()),
        };
        if let Some(kind) = alarm {
            if let Some(a) = self.alarms.record(kind) {
                self.outputs.push_back(Output::Alarm(a));
            }
        }
        let violation = match (asked, failure) {
            (None, ConnFailure::Protocol { violation }) => Some(violation),
            _ => None,
        };
        if let Some(v) = violation {
            *self.protocol_violations.entry(v).or_default() += 1;
        }
        let server_name = self.server_name(server);
        if let Some(rec) = self.conns.get_mut(&conn) {
            if was_open {
                let reason = match (asked, violation) {
                    (Some(why), _) => why.describe().to_owned(),
                    (None, Some(v)) => format!("closed locally: speech protocol error ({v})"),
                    (None, None) => fork_failure.as_str().to_owned(),
                };
                self.history.push(ClosedConn {
                    id: conn.0,
                    server: server_name,
                    connected_at: rec.info.as_ref().map(|i| i.connected_at),
                    closed_at: wall,
                    reason,
                    calls: rec.calls_total,
                });
            }
            rec.info = None;
        }
        // Calls that were live here lost their streams until Resend.
        let lost: Vec<String> = self
            .sessions
            .values_mut()
            .filter(|s| s.state == SessState::Live(conn))
            .map(|s| {
                s.state = SessState::Reconnecting;
                s.req.call_guid.clone()
            })
            .collect();
        for guid in lost {
            self.status(&guid, ForkStatus::Error, Some(fork_failure), false);
        }
        let disconnect = if asked.is_some() {
            Disconnect::LocalClose
        } else {
            failure.disconnect()
        };
        let res = self.pool(server)?.handle_closed(now, handle, disconnect);
        // A failed attempt fails its waiting calls with this cause, if the pool gives up now.
        self.closing_failure = Some(fork_failure);
        self.drain_pool(now, server);
        self.closing_failure = None;
        self.forget_removed_conns(server);
        res.map_err(SessionError::from)
    }

    /// `clear stream-service connection-id N forced`: its forks fail with "Connection closed"
    /// and the connection is closed.
    pub fn handle_clear_connection(&mut self, now: Instant, id: u32) -> Result<(), SessionError> {
        let conn = ConnId(id);
        let rec = self
            .conns
            .get_mut(&conn)
            .ok_or(SessionError::UnknownConn(id))?;
        rec.asked = Some(CloseWhy::Cleared);
        let (server, handle) = (rec.server, rec.handle);
        let pool = &mut self
            .servers
            .get_mut(&server)
            .ok_or(SessionError::UnknownServer(server))?
            .pool;
        let victims: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.req.server == server && pool.conn_of(s.call) == Some(handle))
            .map(|(&k, _)| k)
            .collect();
        let mut guids = Vec::new();
        for key in victims {
            if let Some(s) = self.sessions.get_mut(&key) {
                let _ = pool.handle_call_released(now, s.call);
                s.state = SessState::Failed(ForkFailure::ConnectionClosed);
                guids.push(s.req.call_guid.clone());
            }
        }
        self.forks_failed += guids.len() as u64;
        for g in guids {
            self.status(
                &g,
                ForkStatus::Error,
                Some(ForkFailure::ConnectionClosed),
                false,
            );
        }
        self.drain_pool(now, server);
        self.outputs.push_back(Output::Close {
            conn,
            why: CloseWhy::Cleared,
        });
        Ok(())
    }

    fn conn_id(&mut self, server: ServerId, handle: ConnHandle) -> ConnId {
        let Some(srv) = self.servers.get_mut(&server) else {
            // Never: pools are dropped only when empty. A fresh id keeps the shell going.
            let id = ConnId(self.next_conn);
            self.next_conn = self.next_conn.wrapping_add(1).max(1);
            return id;
        };
        if let Some(&id) = srv.conns.get(&handle) {
            return id;
        }
        let id = ConnId(self.next_conn);
        self.next_conn = self.next_conn.wrapping_add(1).max(1);
        srv.conns.insert(handle, id);
        self.conns.insert(
            id,
            ConnRec {
                server,
                handle,
                info: None,
                calls_total: 0,
                asked: None,
            },
        );
        id
    }

    /// Turns pool outputs into service outputs.
    pub(super) fn drain_pool(&mut self, _now: Instant, server: ServerId) {
        while let Some(out) = self
            .servers
            .get_mut(&server)
            .and_then(|s| s.pool.poll_output())
        {
            match out {
                PoolOutput::Connect { conn } => {
                    let id = self.conn_id(server, conn);
                    self.outputs.push_back(Output::Connect { conn: id, server });
                }
                PoolOutput::Assign { call, conn } | PoolOutput::Resend { call, conn } => {
                    let resend = matches!(out, PoolOutput::Resend { .. });
                    let id = self.conn_id(server, conn);
                    let Some(s) = self.sessions.get_mut(&call.0) else {
                        continue;
                    };
                    let resumed = resend || s.started_once || s.req.resumed;
                    let reconnected = s.started_once;
                    s.started_once = true;
                    s.state = SessState::Live(id);
                    for st in &mut s.streams {
                        st.first = true;
                    }
                    let msgs = s.start_msgs(resumed);
                    let awaits = self
                        .servers
                        .get(&server)
                        .is_some_and(|v| v.awaits_acceptance);
                    // STARTED only once true: the start was written to the open connection
                    // (handle_starts_written), and where the dialect confirms sessions, the
                    // server confirmed it (handle_accepted).
                    s.awaiting = Some(Awaiting {
                        on: if awaits {
                            StartedOn::Accepted
                        } else {
                            StartedOn::Written
                        },
                        reconnected,
                    });
                    if let Some(rec) = self.conns.get_mut(&id) {
                        rec.calls_total += 1;
                    }
                    self.send_all(Some(id), msgs);
                }
                PoolOutput::Close { conn, reason } => {
                    let id = self.conn_id(server, conn);
                    let why = match reason {
                        CloseReason::IdleTimeout => CloseWhy::IdleTimeout,
                        CloseReason::Stalled => CloseWhy::Stalled,
                        CloseReason::ConnectTimeout => CloseWhy::ConnectTimeout,
                        CloseReason::CallEnded => CloseWhy::CallEnded,
                    };
                    if let Some(rec) = self.conns.get_mut(&id) {
                        rec.asked = Some(why);
                    }
                    self.outputs.push_back(Output::Close { conn: id, why });
                }
                PoolOutput::ProtocolBackoff { delay, errors } => {
                    self.outputs.push_back(Output::ServerBackoff {
                        server,
                        delay,
                        errors,
                    });
                }
                PoolOutput::CallFailed { call, last } => {
                    let Some(s) = self.sessions.get_mut(&call.0) else {
                        continue;
                    };
                    // The detailed cause (DNS, proxy DNS, token) of the attempt that just
                    // failed; the pool's own summary only knows TCP versus HTTP.
                    let failure = self.closing_failure.unwrap_or(match last {
                        Disconnect::HandshakeRejected { status: 401 | 403 } => {
                            ForkFailure::AuthenticationTokenInvalid
                        }
                        _ => ForkFailure::ConnectionFailed,
                    });
                    s.state = SessState::Failed(failure);
                    let guid = s.req.call_guid.clone();
                    self.forks_failed += 1;
                    self.status(&guid, ForkStatus::Error, Some(failure), false);
                }
            }
        }
    }

    /// Drops bookkeeping of connections the pool removed.
    fn forget_removed_conns(&mut self, server: ServerId) {
        let Some(srv) = self.servers.get_mut(&server) else {
            return;
        };
        let live: Vec<ConnHandle> = srv.pool.stats().conns.iter().map(|c| c.conn).collect();
        let gone: Vec<(ConnHandle, ConnId)> = srv
            .conns
            .iter()
            .filter(|(h, _)| !live.contains(h))
            .map(|(&h, &id)| (h, id))
            .collect();
        for (h, id) in gone {
            srv.conns.remove(&h);
            self.conns.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use speech_proto::{PauseReason, StopReason};
    use std::time::Duration;

    use crate::core::alarms::AlarmKind;

    #[test]
    fn connect_failures_map_to_reference_strings_and_alarms() {
        let cases = [
            (ConnFailure::Dns, "DNS lookup failed", AlarmKind::TcpFailure),
            (
                ConnFailure::ProxyDns,
                "Proxy DNS lookup failed",
                AlarmKind::TcpFailure,
            ),
            (ConnFailure::Tcp, "Connection failed", AlarmKind::TcpFailure),
            (ConnFailure::Tls, "Connection failed", AlarmKind::TcpFailure),
            (
                ConnFailure::Http { status: 401 },
                "Authentication token invalid",
                AlarmKind::HttpFailure,
            ),
            (
                ConnFailure::Http { status: 403 },
                "Authentication token invalid",
                AlarmKind::HttpFailure,
            ),
            (
                ConnFailure::Http { status: 503 },
                "Connection failed",
                AlarmKind::HttpFailure,
            ),
            (
                ConnFailure::Proxy { status: 407 },
                "Connection failed",
                AlarmKind::HttpFailure,
            ),
        ];
        for (failure, text, kind) in cases {
            let t0 = epoch();
            let (mut s, srv) = service(1);
            s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
            let c = connect_id(&drain(&mut s));
            s.handle_closed(t0, 0, c, failure).expect("ok");
            let outs = drain(&mut s);
            assert_eq!(
                statuses(&outs),
                [(ForkStatus::Error, Some(text))],
                "{failure:?}"
            );
            assert!(outs.contains(&Output::Alarm(Alarm { kind, count: 1 })));
            assert_eq!(s.alarms().count(kind), 1);
            assert_eq!(
                s.handle_fork_pause(t0, "g1", PauseReason::Hold),
                Err(SessionError::Failed("g1".into(), text))
            );
            // A failed fork can still be stopped (and is then forgotten).
            s.handle_fork_stop(t0, "g1", StopReason::CallEnd)
                .expect("ok");
            assert_eq!(s.poll_timeout(), None, "{failure:?}");
        }
    }

    #[test]
    fn lost_connection_reports_and_resends_start_resumed_with_pause() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
        let c = connect_id(&drain(&mut s));
        s.handle_connected(t0, c, ConnInfo::default()).expect("ok");
        s.handle_fork_pause(t0, "g1", PauseReason::Hold)
            .expect("ok");
        drain(&mut s);
        let t1 = t0 + Duration::from_secs(60);
        s.handle_closed(t1, 100, c, ConnFailure::RemoteClose { code: 1001 })
            .expect("ok");
        let outs = drain(&mut s);
        assert_eq!(
            statuses(&outs),
            [(ForkStatus::Error, Some("Connection closed"))]
        );
        assert!(outs.contains(&Output::Alarm(Alarm {
            kind: AlarmKind::RemoteWsClosure,
            count: 1
        })));
        assert_eq!(s.history().len(), 1);
        assert_eq!(s.history()[0].reason, "Connection closed");
        let at = s.poll_timeout().expect("reconnect timer");
        s.handle_timeout(at);
        assert_eq!(connect_id(&drain(&mut s)), c, "same slot reconnects");
        s.handle_connected(at, c, ConnInfo::default()).expect("ok");
        let outs = drain(&mut s);
        assert_eq!(sent(&outs), ["start:1", "pause:1", "start:2", "pause:2"]);
        assert!(outs.iter().all(|o| match o {
            Output::Send {
                msg: Control::Start(st),
                ..
            } => st.resumed,
            _ => true,
        }));
        s.handle_starts_written(at, c, &[1, 2]).expect("ok");
        let outs = drain(&mut s);
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::Status(StatusEvent {
                status: ForkStatus::Started,
                reconnected: true,
                ..
            })
        )));
        // A TCP closure is reported with its own string.
        s.handle_closed(at, 200, c, ConnFailure::Transport)
            .expect("ok");
        assert_eq!(
            statuses(&drain(&mut s)),
            [(ForkStatus::Error, Some("TCP Connection closed"))]
        );
        assert_eq!(s.alarms().count(AlarmKind::TcpClosure), 1);
    }

    #[test]
    fn started_is_reported_once_the_start_was_written_not_when_queued() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
        s.handle_fork_start(t0, req("g2", srv, 3)).expect("ok");
        let c = connect_id(&drain(&mut s));
        s.handle_connected(t0, c, ConnInfo::default()).expect("ok");
        let outs = drain(&mut s);
        assert_eq!(sent(&outs), ["start:1", "start:2", "start:3", "start:4"]);
        assert_eq!(statuses(&outs), [], "queued, not yet on the wire");
        // The writer flushed g1's starts only: g1 is started, g2 still connecting.
        s.handle_starts_written(t0, c, &[1, 2]).expect("ok");
        let outs = drain(&mut s);
        assert_eq!(statuses(&outs), [(ForkStatus::Started, None)]);
        assert!(matches!(&outs[..], [Output::Status(e)] if e.call_guid == "g1"));
        s.handle_starts_written(t0, c, &[1, 2]).expect("ok");
        assert_eq!(statuses(&drain(&mut s)), [], "started once");
        // A connection lost before the write: its starts never count.
        s.handle_closed(t0, 1, c, ConnFailure::Transport)
            .expect("ok");
        drain(&mut s);
        assert!(s.handle_starts_written(t0, c, &[3, 4]).is_ok());
        assert!(
            statuses(&drain(&mut s)).is_empty(),
            "g2's start went down with the connection"
        );
    }

    #[test]
    fn a_confirming_dialect_reports_started_only_when_the_server_accepted() {
        let t0 = epoch();
        let (mut s, srv) = service_with(5, true);
        s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
        let c = connect_id(&drain(&mut s));
        s.handle_connected(t0, c, ConnInfo::default()).expect("ok");
        let outs = drain(&mut s);
        assert_eq!(sent(&outs), ["start:1", "start:2"]);
        assert_eq!(statuses(&outs), [], "start sent, not yet accepted");
        s.handle_accepted(t0, c).expect("ok");
        assert_eq!(statuses(&drain(&mut s)), [(ForkStatus::Started, None)]);
        s.handle_accepted(t0, c).expect("ok");
        assert_eq!(statuses(&drain(&mut s)), [], "accepted once");
        // Lost before the new connection's server accepted: no STARTED, then STARTED
        // (reconnected) on acceptance.
        s.handle_closed(t0, 1, c, ConnFailure::Transport)
            .expect("ok");
        drain(&mut s);
        let at = s.poll_timeout().expect("reconnect timer");
        s.handle_timeout(at);
        drain(&mut s);
        s.handle_connected(at, c, ConnInfo::default()).expect("ok");
        assert_eq!(statuses(&drain(&mut s)), []);
        s.handle_accepted(at, c).expect("ok");
        assert!(drain(&mut s).iter().any(|o| matches!(
            o,
            Output::Status(StatusEvent {
                status: ForkStatus::Started,
                reconnected: true,
                ..
            })
        )));
        assert_eq!(
            s.handle_accepted(at, ConnId(999)),
            Err(SessionError::UnknownConn(999))
        );
    }

    #[test]
    fn an_unused_pool_can_be_dropped_and_a_used_one_cannot() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        assert!(!s.remove_server_if_idle(ServerId(77)));
        s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
        assert!(!s.remove_server_if_idle(srv), "a fork uses it");
        let c = connect_id(&drain(&mut s));
        s.handle_fork_stop(t0, "g1", StopReason::Request)
            .expect("ok");
        drain(&mut s);
        assert!(
            !s.remove_server_if_idle(srv),
            "its connection attempt is still going"
        );
        s.handle_timeout(t0 + Duration::from_secs(3600));
        drain(&mut s);
        s.handle_closed(t0 + Duration::from_secs(3600), 1, c, ConnFailure::Local)
            .expect("ok");
        drain(&mut s);
        assert!(s.remove_server_if_idle(srv));
        assert_eq!(
            s.handle_fork_start(t0, req("g2", srv, 3)),
            Err(SessionError::UnknownServer(srv))
        );
    }

    #[test]
    fn calls_threshold_opens_a_second_connection() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
        let c1 = connect_id(&drain(&mut s));
        s.handle_connected(t0, c1, ConnInfo::default()).expect("ok");
        s.handle_fork_start(t0, req("g2", srv, 3)).expect("ok");
        assert!(drain(&mut s)
            .iter()
            .all(|o| !matches!(o, Output::Connect { .. })));
        s.handle_fork_start(t0, req("g3", srv, 5)).expect("ok");
        let c2 = connect_id(&drain(&mut s));
        assert_ne!(c1, c2);
        let views = s.conns_view(Some("10.0.0.1:9000"));
        assert_eq!(views.iter().map(|v| v.calls).collect::<Vec<_>>(), [2, 1]);
        assert!(s.conns_view(Some("10.9.9.9:1")).is_empty());
        assert_eq!(s.stats_view().forks, 3);
        assert_eq!(
            s.handle_fork_start(t0, req("g3", srv, 7)),
            Err(SessionError::DuplicateCall("g3".into()))
        );
    }

    #[test]
    fn clear_connection_fails_its_forks_and_records_history() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
        let c = connect_id(&drain(&mut s));
        s.handle_connected(
            t0,
            c,
            ConnInfo {
                connected_at: 10,
                ..ConnInfo::default()
            },
        )
        .expect("ok");
        drain(&mut s);
        s.handle_clear_connection(t0, c.0).expect("ok");
        let outs = drain(&mut s);
        assert_eq!(
            statuses(&outs),
            [(ForkStatus::Error, Some("Connection closed"))]
        );
        assert!(outs.contains(&Output::Close {
            conn: c,
            why: CloseWhy::Cleared
        }));
        s.handle_closed(t0, 20, c, ConnFailure::Local).expect("ok");
        assert_eq!(drain(&mut s), [], "no alarm and no reconnect for a clear");
        assert_eq!(s.poll_timeout(), None);
        let h = s.history();
        assert_eq!(
            (
                h[0].id,
                h[0].connected_at,
                h[0].closed_at,
                h[0].reason.as_str()
            ),
            (c.0, Some(10), 20, "closed locally using clear command")
        );
        assert!(s.conns_view(None).is_empty());
        assert_eq!(
            s.handle_clear_connection(t0, c.0),
            Err(SessionError::UnknownConn(c.0))
        );
        s.clear_statistics();
        assert_eq!(s.stats_view().forks_failed, 0);
    }

    #[test]
    fn garbage_from_the_server_is_a_protocol_error_and_holds_the_server_off() {
        use speech_proto::ServerViolation;
        let t0 = epoch();
        let (mut s, srv) = service(5);
        s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
        let c = connect_id(&drain(&mut s));
        let mut now = t0;
        let kinds = [
            ServerViolation::BinaryFrame,
            ServerViolation::MalformedText,
            ServerViolation::BadClose,
        ];
        let mut backoff = None;
        for (n, violation) in kinds.into_iter().enumerate() {
            s.handle_connected(now, c, ConnInfo::default()).expect("ok");
            drain(&mut s);
            s.handle_closed(now, 100, c, ConnFailure::Protocol { violation })
                .expect("ok");
            let outs = drain(&mut s);
            assert_eq!(
                statuses(&outs),
                [(ForkStatus::Error, Some("Connection closed"))],
                "{violation:?}"
            );
            if n == 0 {
                assert!(outs.contains(&Output::Alarm(Alarm {
                    kind: AlarmKind::ProtocolError,
                    count: 1
                })));
            }
            backoff = outs.iter().find_map(|o| match o {
                Output::ServerBackoff {
                    server,
                    delay,
                    errors,
                } => Some((*server, *delay, *errors)),
                _ => None,
            });
            assert_eq!(
                backoff.is_some(),
                n == 2,
                "held off at the third error: {outs:?}"
            );
            now = s.poll_timeout().expect("the fork waits for a reconnect");
            s.handle_timeout(now);
            assert_eq!(connect_id(&drain(&mut s)), c);
        }
        let (server, delay, errors) = backoff.expect("held off");
        assert_eq!((server, errors), (srv, 3));
        assert!(delay >= Duration::from_secs(5), "{delay:?}");
        assert_eq!(s.alarms().count(AlarmKind::ProtocolError), 3);
        assert_eq!(s.alarms().count(AlarmKind::TcpClosure), 0);
        let st = s.stats_view();
        assert_eq!(st.alarms["protocol_errors"], 3);
        assert_eq!(st.alarms["tcp_closures"], 0);
        assert_eq!(
            (
                st.protocol_errors["binary_frame"],
                st.protocol_errors["malformed_text"],
                st.protocol_errors["bad_close"],
                st.protocol_errors["too_large"]
            ),
            (1, 1, 1, 0)
        );
        let pc = &st.servers["asr"];
        assert_eq!(
            (
                pc.protocol_errors,
                pc.protocol_backoffs,
                pc.transport_closes
            ),
            (3, 1, 0)
        );
        assert_eq!(st.forks_failed, 0, "the fork waits, it is not failed");
        assert_eq!(
            s.history()[0].reason,
            "closed locally: speech protocol error (binary frame from the server)"
        );
        // The server behaves again: the fork is carried again and, after a healthy minute,
        // the count is gone.
        s.handle_connected(now, c, ConnInfo::default()).expect("ok");
        let mut outs = drain(&mut s);
        s.handle_starts_written(now, c, &[1, 2]).expect("ok");
        outs.extend(drain(&mut s));
        assert!(outs.iter().any(|o| matches!(
            o,
            Output::Status(StatusEvent {
                status: ForkStatus::Started,
                reconnected: true,
                ..
            })
        )));
        let healthy = s.poll_timeout().expect("healthy timer");
        assert_eq!(healthy, now + Duration::from_secs(60));
        s.handle_timeout(healthy);
        assert_eq!(s.stats_view().servers["asr"].protocol_error_streak, 0);
        s.clear_statistics();
        assert_eq!(s.stats_view().protocol_errors["binary_frame"], 0);
    }
}
