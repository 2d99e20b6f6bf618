//! Read-only snapshots of the service for `show stream-service ...` and its statistics.
//!
//! Role: render forks, streams, live connections, closed-connection history and counters
//! (the reference's `show stream-service callid / connection / statistics`) without changing
//! any state; `clear_statistics` resets the counters.
//! Inputs: the service's state and each pool's [`PoolStats`].
//! Outputs: [`SessionView`], [`ConnView`], [`StatsView`], the history ([`ClosedConn`]), the
//! media and alarm counters.

use std::collections::BTreeMap;

use serde::Serialize;
use speech_proto::{Channel, Codec, PauseReason};

use super::{live_conn, ConnId, ConnInfo, ForkService, MediaCounters, ServerId, SessState};
use crate::core::alarms::{AlarmKind, Alarms, ClosedConn};
use crate::core::ws_pool::{ConnState, PoolStats};

/// Snapshot of one stream for `show stream-service callid`.
#[derive(Debug, Clone, Serialize)]
pub struct StreamView {
    /// Stream id.
    pub stream_id: u32,
    /// Party.
    pub channel: Channel,
    /// Current codec.
    pub codec: Codec,
    /// `active` or `paused`.
    pub state: &'static str,
    /// Pause reason while paused.
    pub pause_reason: Option<PauseReason>,
    /// Frames queued.
    pub frames: u64,
    /// Bytes queued.
    pub bytes: u64,
    /// Frames dropped (paused, not connected, queue full).
    pub dropped: u64,
}

/// Snapshot of one fork.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// Call GUID.
    pub call_guid: String,
    /// SIP Call-ID.
    pub call_id: String,
    /// Server name.
    pub server: String,
    /// Connection id while connected.
    pub connection: Option<u32>,
    /// `waiting`, `active`, `paused`, `reconnecting`, `failed`.
    pub state: &'static str,
    /// The failure, when failed.
    pub error: Option<&'static str>,
    /// Streams.
    pub streams: Vec<StreamView>,
}

/// Snapshot of one live connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnView {
    /// Connection id.
    pub id: u32,
    /// Server name.
    pub server: String,
    /// Server `host:port`.
    pub server_address: String,
    /// `connecting`, `active`, `closing`, `backoff`.
    pub state: &'static str,
    /// Calls on it (waiting ones included).
    pub calls: usize,
    /// Calls carried since it was created.
    pub calls_total: u64,
    /// Frames queued and not yet written.
    pub backlog: usize,
    /// Audio dropped on it (queue full).
    pub audio_dropped: u64,
    /// What the shell reported at the last upgrade.
    pub info: Option<ConnInfo>,
    /// Call GUIDs it carries.
    pub call_guids: Vec<String>,
}

/// Global statistics for `show stream-service statistics`.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    /// Forks live.
    pub forks: usize,
    /// Streams live.
    pub streams: usize,
    /// Connections in any state.
    pub connections: usize,
    /// Open connections.
    pub connections_open: usize,
    /// Alarm counters by kind name.
    pub alarms: BTreeMap<&'static str, u64>,
    /// Alarm lines raised.
    pub alarms_raised: u64,
    /// Connections closed for a speech protocol error, by what the server sent
    /// (`speech_proto::ServerViolation::name`); every kind is listed.
    pub protocol_errors: BTreeMap<&'static str, u64>,
    /// Media counters.
    pub media: MediaCounters,
    /// Forks started, stopped, failed.
    pub forks_started: u64,
    /// Forks stopped.
    pub forks_stopped: u64,
    /// Forks failed.
    pub forks_failed: u64,
    /// Pool counters per server name.
    pub servers: BTreeMap<String, PoolCounters>,
    /// History records pushed out by newer ones.
    pub history_dropped: u64,
}

/// Pool counters of one server.
#[derive(Debug, Clone, Serialize)]
pub struct PoolCounters {
    /// `host:port`.
    pub address: String,
    /// Connection attempts.
    pub connects: u64,
    /// Attempts that failed before the upgrade.
    pub connect_failures: u64,
    /// Remote closes.
    pub remote_closes: u64,
    /// TCP closures.
    pub transport_closes: u64,
    /// Idle closes.
    pub idle_closes: u64,
    /// Stall closes.
    pub stall_closes: u64,
    /// Connections closed because the server broke the protocol.
    pub protocol_errors: u64,
    /// Times the server was held off for protocol errors.
    pub protocol_backoffs: u64,
    /// Protocol errors since the server was last healthy (the pool holds it off at
    /// `protocol_error_limit`).
    pub protocol_error_streak: u32,
    /// Calls failed.
    pub calls_failed: u64,
    /// Audio dropped by the pool (queue full or not open).
    pub audio_dropped: u64,
    /// Calls held.
    pub calls: usize,
    /// Calls waiting for a connection.
    pub calls_waiting: usize,
}

impl ForkService {
    /// `clear stream-service statistics`.
    pub fn clear_statistics(&mut self) {
        self.alarms.clear();
        self.protocol_violations.clear();
        self.media = MediaCounters::default();
        self.forks_started = 0;
        self.forks_stopped = 0;
        self.forks_failed = 0;
        for s in self.servers.values_mut() {
            s.pool.clear_stats();
        }
    }

    /// Media counters.
    pub fn media_counters(&self) -> MediaCounters {
        self.media
    }

    /// Alarm counters.
    pub fn alarms(&self) -> &Alarms {
        &self.alarms
    }

    /// Server of a connection (for the shell's connect target).
    pub fn conn_server(&self, conn: ConnId) -> Option<ServerId> {
        self.conns.get(&conn).map(|c| c.server)
    }

    /// Server (pool) of a fork.
    pub fn server_of(&self, call_guid: &str) -> Option<ServerId> {
        let key = self.by_guid.get(call_guid)?;
        self.sessions.get(key).map(|s| s.req.server)
    }

    /// Forks whose call GUID or SIP Call-ID equals `id` (all forks when `id` is None).
    pub fn sessions_view(&self, id: Option<&str>) -> Vec<SessionView> {
        let mut v: Vec<SessionView> = self
            .sessions
            .values()
            .filter(|s| id.is_none_or(|id| s.req.call_guid == id || s.req.call_id == id))
            .map(|s| {
                let (state, error) = match s.state {
                    SessState::Waiting => ("waiting", None),
                    SessState::Live(_) if s.paused() => ("paused", None),
                    SessState::Live(_) => ("active", None),
                    SessState::Reconnecting => ("reconnecting", None),
                    SessState::Failed(f) => ("failed", Some(f.as_str())),
                };
                SessionView {
                    call_guid: s.req.call_guid.clone(),
                    call_id: s.req.call_id.clone(),
                    server: self.server_name(s.req.server),
                    connection: live_conn(s.state).map(|c| c.0),
                    state,
                    error,
                    streams: s
                        .streams
                        .iter()
                        .map(|st| StreamView {
                            stream_id: st.id,
                            channel: st.channel,
                            codec: st.codec,
                            state: if st.paused.is_some() {
                                "paused"
                            } else {
                                "active"
                            },
                            pause_reason: st.paused,
                            frames: st.frames,
                            bytes: st.bytes,
                            dropped: st.dropped,
                        })
                        .collect(),
                }
            })
            .collect();
        v.sort_by(|a, b| a.call_guid.cmp(&b.call_guid));
        v
    }

    /// Live connections, optionally only those of servers at `host_port`.
    pub fn conns_view(&self, host_port: Option<&str>) -> Vec<ConnView> {
        let mut out = Vec::new();
        for (&sid, server) in &self.servers {
            if host_port.is_some_and(|hp| hp != server.host_port) {
                continue;
            }
            let stats = server.pool.stats();
            for c in &stats.conns {
                let Some(&id) = server.conns.get(&c.conn) else {
                    continue;
                };
                let rec = self.conns.get(&id);
                let call_guids = self
                    .sessions
                    .values()
                    .filter(|s| s.req.server == sid && server.pool.conn_of(s.call) == Some(c.conn))
                    .map(|s| s.req.call_guid.clone())
                    .collect();
                out.push(ConnView {
                    id: id.0,
                    server: server.name.clone(),
                    server_address: server.host_port.clone(),
                    state: match c.state {
                        ConnState::Connecting => "connecting",
                        ConnState::Open => "active",
                        ConnState::Closing => "closing",
                        ConnState::Backoff => "backoff",
                    },
                    calls: c.calls,
                    calls_total: rec.map_or(0, |r| r.calls_total),
                    backlog: c.backlog,
                    audio_dropped: c.audio_dropped,
                    info: rec.and_then(|r| r.info.clone()),
                    call_guids,
                });
            }
        }
        out.sort_by_key(|c| c.id);
        out
    }

    /// Closed connections, oldest first.
    pub fn history(&self) -> Vec<ClosedConn> {
        self.history.iter().cloned().collect()
    }

    /// Global statistics.
    pub fn stats_view(&self) -> StatsView {
        let mut servers = BTreeMap::new();
        let mut connections = 0;
        let mut open = 0;
        for s in self.servers.values() {
            let p: PoolStats = s.pool.stats();
            connections += p.conns.len();
            open += p
                .conns
                .iter()
                .filter(|c| c.state == ConnState::Open)
                .count();
            servers.insert(
                s.name.clone(),
                PoolCounters {
                    address: s.host_port.clone(),
                    connects: p.connects,
                    connect_failures: p.connect_failures,
                    remote_closes: p.remote_closes,
                    transport_closes: p.transport_closes,
                    idle_closes: p.idle_closes,
                    stall_closes: p.stall_closes,
                    protocol_errors: p.protocol_errors,
                    protocol_backoffs: p.protocol_backoffs,
                    protocol_error_streak: p.protocol_error_streak,
                    calls_failed: p.calls_failed,
                    audio_dropped: p.audio_dropped,
                    calls: p.calls,
                    calls_waiting: p.calls_waiting,
                },
            );
        }
        StatsView {
            forks: self.sessions.len(),
            streams: self.by_stream.len(),
            connections,
            connections_open: open,
            alarms: AlarmKind::ALL
                .iter()
                .map(|&k| (k.name(), self.alarms.count(k)))
                .collect(),
            alarms_raised: self.alarms.raised(),
            protocol_errors: speech_proto::ServerViolation::ALL
                .iter()
                .map(|&v| {
                    (
                        v.name(),
                        self.protocol_violations.get(&v).copied().unwrap_or(0),
                    )
                })
                .collect(),
            media: self.media,
            forks_started: self.forks_started,
            forks_stopped: self.forks_stopped,
            forks_failed: self.forks_failed,
            servers,
            history_dropped: self.history.dropped(),
        }
    }
}
