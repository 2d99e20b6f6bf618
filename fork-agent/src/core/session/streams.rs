//! Per-stream sequencing: each fork's streams and the order of their control messages.
//!
//! Role: keep, per fork, its streams (id, party, codec, pause state, "first frame" flag and
//! counters) and its connection state, and emit the speech-protocol messages of
//! docs/speech-protocol.md in request order on the fork's connection: `start` strictly
//! before audio (re-sent with the current pause state on every (re)assignment), then
//! `pause` / `resume` / `update` / `stop`. Without a live connection nothing is sent: the
//! `start`s sent on (re)connection carry the state.
//! Inputs: [`ForkService::handle_fork_start`], [`ForkService::handle_fork_pause`],
//! [`ForkService::handle_fork_resume`], [`ForkService::handle_fork_update`],
//! [`ForkService::handle_fork_stop`].
//! Outputs: [`Output::Send`] on the fork's connection, status events, the pool's
//! `stream_wanted` / `call_released` inputs.

use std::time::Instant;

use serde_json::{Map, Value};
use speech_proto::{
    Channel, Codec, Control, Pause, PauseReason, Resume, Start, Stop, StopReason, Update,
};

use super::{ConnId, ForkFailure, ForkRequest, ForkService, ForkStatus, Output, SessionError};
use crate::core::ws_pool::CallHandle;

#[derive(Debug, Clone)]
pub(super) struct StreamRec {
    pub(super) id: u32,
    pub(super) channel: Channel,
    pub(super) codec: Codec,
    pub(super) paused: Option<PauseReason>,
    pub(super) first: bool,
    pub(super) frames: u64,
    pub(super) bytes: u64,
    pub(super) dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessState {
    /// Waiting for its first connection.
    Waiting,
    /// Its streams are announced on this open connection.
    Live(ConnId),
    /// Lost its connection; the pool reconnects or rehomes it.
    Reconnecting,
    /// The pool gave up or the connection was cleared.
    Failed(ForkFailure),
}

#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) req: ForkRequest,
    pub(super) call: CallHandle,
    pub(super) streams: Vec<StreamRec>,
    pub(super) state: SessState,
    pub(super) started_once: bool,
    /// `start` was queued and STARTED (with `reconnected`) waits for the event that makes it
    /// true.
    pub(super) awaiting: Option<Awaiting>,
}

/// What a queued `start` waits for before its fork is STARTED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartedOn {
    /// The dialect confirms sessions: [`ForkService::handle_accepted`].
    Accepted,
    /// It does not: the start was written (`handle_starts_written`).
    Written,
}

/// A STARTED still to report.
#[derive(Debug, Clone, Copy)]
pub(super) struct Awaiting {
    pub(super) on: StartedOn,
    /// The STARTED's `reconnected` flag.
    pub(super) reconnected: bool,
}

impl Session {
    pub(super) fn start_msgs(&self, resumed: bool) -> Vec<Control> {
        let mut out = Vec::new();
        for s in &self.streams {
            out.push(Control::Start(Start {
                version: speech_proto::VERSION,
                stream_id: s.id,
                call_guid: self.req.call_guid.clone(),
                call_id: self.req.call_id.clone(),
                channel: s.channel,
                from: self.req.from.clone(),
                to: self.req.to.clone(),
                codec: s.codec,
                sample_rate: speech_proto::SAMPLE_RATE,
                ptime_ms: self.req.ptime_ms,
                metadata: self.req.metadata.clone(),
                resumed,
                return_audio: self.req.return_audio == Some(s.channel),
            }));
            if let Some(reason) = s.paused {
                out.push(Control::Pause(Pause {
                    stream_id: s.id,
                    reason,
                }));
            }
        }
        out
    }

    pub(super) fn paused(&self) -> bool {
        self.streams.iter().any(|s| s.paused.is_some())
    }
}

pub(super) fn live_conn(state: SessState) -> Option<ConnId> {
    match state {
        SessState::Live(c) => Some(c),
        _ => None,
    }
}

impl ForkService {
    /// Starts forking a call. Its streams are announced once a connection is open.
    pub fn handle_fork_start(
        &mut self,
        now: Instant,
        req: ForkRequest,
    ) -> Result<(), SessionError> {
        if self.by_guid.contains_key(&req.call_guid) {
            return Err(SessionError::DuplicateCall(req.call_guid));
        }
        if req.streams.is_empty() {
            return Err(SessionError::NoStreams(req.call_guid));
        }
        let server = req.server;
        if !self.servers.contains_key(&server) {
            return Err(SessionError::UnknownServer(server));
        }
        let key = self.next_call;
        self.next_call = self.next_call.wrapping_add(1).max(1);
        let call = CallHandle(key);
        let streams: Vec<StreamRec> = req
            .streams
            .iter()
            .map(|&(id, channel)| StreamRec {
                id,
                channel,
                codec: req.codec,
                paused: None,
                first: true,
                frames: 0,
                bytes: 0,
                dropped: 0,
            })
            .collect();
        for (i, s) in streams.iter().enumerate() {
            self.by_stream.insert(s.id, (key, i));
        }
        self.by_guid.insert(req.call_guid.clone(), key);
        self.sessions.insert(
            key,
            Session {
                req,
                call,
                streams,
                state: SessState::Waiting,
                started_once: false,
                awaiting: None,
            },
        );
        self.forks_started += 1;
        let res = self.pool(server)?.handle_stream_wanted(now, call);
        self.drain_pool(now, server);
        res.map_err(SessionError::from)
    }

    /// Pauses both streams (hold, codec change, request): `pause` goes out now if connected,
    /// else right after the `start`s; audio is dropped until resumed.
    pub fn handle_fork_pause(
        &mut self,
        _now: Instant,
        call_guid: &str,
        reason: PauseReason,
    ) -> Result<(), SessionError> {
        let s = self.session_mut(call_guid)?;
        if s.paused() {
            return Err(SessionError::AlreadyPaused(call_guid.to_owned()));
        }
        let mut msgs = Vec::new();
        for st in &mut s.streams {
            st.paused = Some(reason);
            msgs.push(Control::Pause(Pause {
                stream_id: st.id,
                reason,
            }));
        }
        let live = live_conn(s.state);
        self.send_all(live, msgs);
        self.status(call_guid, ForkStatus::Paused, None, false);
        Ok(())
    }

    /// Resumes both streams in `codec` (which may be the other G.711 law; `None` keeps each
    /// stream's codec).
    pub fn handle_fork_resume(
        &mut self,
        _now: Instant,
        call_guid: &str,
        codec: Option<Codec>,
    ) -> Result<(), SessionError> {
        let s = self.session_mut(call_guid)?;
        if !s.paused() {
            return Err(SessionError::NotPaused(call_guid.to_owned()));
        }
        let mut msgs = Vec::new();
        for st in &mut s.streams {
            st.paused = None;
            st.codec = codec.unwrap_or(st.codec);
            st.first = true;
            msgs.push(Control::Resume(Resume {
                stream_id: st.id,
                codec: st.codec,
            }));
        }
        let live = live_conn(s.state);
        self.send_all(live, msgs);
        self.status(call_guid, ForkStatus::Resumed, None, false);
        Ok(())
    }

    /// Replaces the metadata (CUBE UPDATE: metadata only; the connection never changes).
    pub fn handle_fork_update(
        &mut self,
        _now: Instant,
        call_guid: &str,
        metadata: Map<String, Value>,
    ) -> Result<(), SessionError> {
        let s = self.session_mut(call_guid)?;
        s.req.metadata = metadata.clone();
        let msgs = s
            .streams
            .iter()
            .map(|st| {
                Control::Update(Update {
                    stream_id: st.id,
                    metadata: metadata.clone(),
                })
            })
            .collect();
        let live = live_conn(s.state);
        self.send_all(live, msgs);
        Ok(())
    }

    /// Ends the fork: `stop` for each announced stream, the call leaves its connection.
    /// Accepted for failed forks too (they only need forgetting).
    pub fn handle_fork_stop(
        &mut self,
        now: Instant,
        call_guid: &str,
        reason: StopReason,
    ) -> Result<(), SessionError> {
        let key = *self
            .by_guid
            .get(call_guid)
            .ok_or_else(|| SessionError::UnknownCall(call_guid.to_owned()))?;
        let Some(s) = self.sessions.remove(&key) else {
            return Err(SessionError::UnknownCall(call_guid.to_owned()));
        };
        self.by_guid.remove(call_guid);
        for st in &s.streams {
            self.by_stream.remove(&st.id);
        }
        let msgs = s
            .streams
            .iter()
            .map(|st| {
                Control::Stop(Stop {
                    stream_id: st.id,
                    reason,
                })
            })
            .collect();
        self.send_all(live_conn(s.state), msgs);
        if !matches!(s.state, SessState::Failed(_)) {
            let server = s.req.server;
            // The pool forgot calls it failed; anything else is released.
            if let Some(srv) = self.servers.get_mut(&server) {
                let _ = srv.pool.handle_call_released(now, s.call);
            }
            self.drain_pool(now, server);
        }
        self.forks_stopped += 1;
        let error = (reason == StopReason::Request).then_some(ForkFailure::ForkingStopped);
        self.status(call_guid, ForkStatus::Stopped, error, false);
        Ok(())
    }

    fn session_mut(&mut self, call_guid: &str) -> Result<&mut Session, SessionError> {
        let key = self
            .by_guid
            .get(call_guid)
            .ok_or_else(|| SessionError::UnknownCall(call_guid.to_owned()))?;
        let s = self
            .sessions
            .get_mut(key)
            .ok_or_else(|| SessionError::UnknownCall(call_guid.to_owned()))?;
        if let SessState::Failed(f) = s.state {
            return Err(SessionError::Failed(call_guid.to_owned(), f.as_str()));
        }
        Ok(s)
    }

    /// Queues control messages on a live connection (accounted in its backlog). Without a
    /// live connection nothing is sent: the `start`s sent on (re)connection carry the state.
    pub(super) fn send_all(&mut self, conn: Option<ConnId>, msgs: Vec<Control>) {
        let Some(conn) = conn else { return };
        let Some(rec) = self.conns.get(&conn) else {
            return;
        };
        // Control is never dropped (ws_pool: losing one desynchronizes the server); the pool
        // learns the real queue length before the next audio admission.
        let _ = rec;
        for msg in msgs {
            self.outputs.push_back(Output::Send { conn, msg });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use speech_proto::{PauseReason, StopReason};
    use std::time::Duration;

    #[test]
    fn pause_resume_update_stop_in_order_and_paused_audio_dropped() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
        let c = connect_id(&drain(&mut s));
        s.handle_connected(t0, c, ConnInfo::default()).expect("ok");
        drain(&mut s);
        s.handle_fork_pause(t0, "g1", PauseReason::Hold)
            .expect("ok");
        assert_eq!(
            s.handle_fork_pause(t0, "g1", PauseReason::Hold),
            Err(SessionError::AlreadyPaused("g1".into()))
        );
        assert_eq!(
            s.handle_audio(t0, 2, 176, |_| 0),
            AudioVerdict::Drop(DropReason::Paused)
        );
        s.handle_fork_resume(t0, "g1", Some(Codec::Pcma))
            .expect("ok");
        assert_eq!(
            s.handle_fork_resume(t0, "g1", Some(Codec::Pcma)),
            Err(SessionError::NotPaused("g1".into()))
        );
        assert_eq!(
            s.handle_audio(t0, 2, 176, |_| 0),
            AudioVerdict::Send {
                conn: c,
                first: true,
                evict: false
            },
            "first frame after resume is flagged"
        );
        let mut md = Map::new();
        md.insert("agent".into(), Value::from("1042"));
        s.handle_fork_update(t0, "g1", md).expect("ok");
        s.handle_fork_stop(t0, "g1", StopReason::Request)
            .expect("ok");
        let outs = drain(&mut s);
        assert_eq!(
            sent(&outs),
            [
                "pause:1", "pause:2", "resume:1", "resume:2", "update:1", "update:2", "stop:1",
                "stop:2"
            ]
        );
        assert_eq!(
            statuses(&outs),
            [
                (ForkStatus::Paused, None),
                (ForkStatus::Resumed, None),
                (ForkStatus::Stopped, Some("Forking stopped"))
            ]
        );
        assert_eq!(s.media_counters().dropped_paused, 1);
        assert_eq!(
            s.handle_fork_stop(t0, "g1", StopReason::Request),
            Err(SessionError::UnknownCall("g1".into()))
        );
        // The idle connection closes after the idle timeout.
        s.handle_timeout(t0 + Duration::from_secs(1800));
        assert_eq!(
            drain(&mut s),
            [Output::Close {
                conn: c,
                why: CloseWhy::IdleTimeout
            }]
        );
        // ...and the history says why, although the pool already marked it Closing.
        s.handle_closed(t0 + Duration::from_secs(1800), 99, c, ConnFailure::Local)
            .expect("ok");
        let h = s.history();
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].reason, "closed locally due to idle-timeout expiry");
        assert!(s.conns_view(None).is_empty());
    }

    #[test]
    fn pause_before_connect_is_sent_after_start() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
        let c = connect_id(&drain(&mut s));
        s.handle_fork_pause(t0, "g1", PauseReason::CodecChange)
            .expect("ok");
        assert_eq!(sent(&drain(&mut s)), Vec::<String>::new());
        s.handle_connected(t0, c, ConnInfo::default()).expect("ok");
        assert_eq!(
            sent(&drain(&mut s)),
            ["start:1", "pause:1", "start:2", "pause:2"]
        );
    }

    #[test]
    fn restored_fork_announces_resumed_start() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        let mut r = req("g1", srv, 1);
        r.resumed = true;
        s.handle_fork_start(t0, r).expect("ok");
        let c = connect_id(&drain(&mut s));
        s.handle_connected(t0, c, ConnInfo::default()).expect("ok");
        let outs = drain(&mut s);
        assert!(outs.iter().any(|o| matches!(o,
            Output::Send { msg: Control::Start(st), .. } if st.resumed)));
    }
}
