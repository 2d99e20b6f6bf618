//! The media path: admission of each audio frame and DTMF report.
//!
//! Role: decide per frame whether it goes out and on which connection, so that no audio
//! precedes its stream's `start`, no audio of a paused stream is sent, and the first frame
//! after `start` or `resume` carries the "first frame" flag. Every drop is counted by reason.
//! Inputs: [`ForkService::handle_audio`] (stream id, length, the shell's queue lengths) and
//! [`ForkService::handle_dtmf`].
//! [`ForkService::handle_audio_evicted`] tells which stream lost the frame a full queue
//! dropped (the shell knows it from the dropped frame's header).
//! Outputs: an [`AudioVerdict`] returned directly (the hot path allocates nothing), a `Send`
//! of the DTMF report, an [`Output::Alarm`](super::Output::Alarm) when a connection's queue
//! starts overflowing, [`MediaCounters`].

use std::time::Instant;

use serde::Serialize;
use speech_proto::{Control, Dtmf};

use super::{live_conn, ConnId, ForkService, Output, SessState};
use crate::core::alarms::AlarmKind;

/// Why an audio frame was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No fork knows the stream id.
    UnknownStream,
    /// The stream is paused.
    Paused,
    /// The call has no open connection (connecting, reconnecting, or failed).
    NotConnected,
}

/// Media-path decision for one audio frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioVerdict {
    /// Queue it on `conn`; set the "first frame" flag when `first`.
    Send {
        /// Connection.
        conn: ConnId,
        /// First frame after `start` or `resume` (docs/speech-protocol.md §3, flags bit 1).
        first: bool,
        /// The queue is full: drop its oldest audio frame (or this one when every queued frame
        /// is already being written), then report whose it was with
        /// [`ForkService::handle_audio_evicted`].
        evict: bool,
    },
    /// Drop it (counted).
    Drop(DropReason),
}

/// Drop and traffic counters of the media path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MediaCounters {
    /// Audio frames queued to a connection.
    pub frames_queued: u64,
    /// Bytes of those frames.
    pub bytes_queued: u64,
    /// Frames dropped: unknown stream id.
    pub dropped_unknown_stream: u64,
    /// Frames dropped: stream paused.
    pub dropped_paused: u64,
    /// Frames dropped: no open connection for the call.
    pub dropped_not_connected: u64,
    /// Frames dropped: connection queue full (the oldest queued ones).
    pub dropped_queue_full: u64,
    /// DTMF reports forwarded.
    pub dtmf_sent: u64,
    /// DTMF reports dropped (paused, not connected, unknown).
    pub dtmf_dropped: u64,
}

impl ForkService {
    /// Media path: where does this audio frame of `len` bytes go? `backlog(conn)` is the
    /// shell's current queue length for a connection.
    pub fn handle_audio(
        &mut self,
        now: Instant,
        stream_id: u32,
        len: usize,
        backlog: impl Fn(ConnId) -> usize,
    ) -> AudioVerdict {
        let Some(&(key, idx)) = self.by_stream.get(&stream_id) else {
            self.media.dropped_unknown_stream += 1;
            return AudioVerdict::Drop(DropReason::UnknownStream);
        };
        let Some(s) = self.sessions.get_mut(&key) else {
            self.media.dropped_unknown_stream += 1;
            return AudioVerdict::Drop(DropReason::UnknownStream);
        };
        let state = s.state;
        let Some(st) = s.streams.get_mut(idx) else {
            self.media.dropped_unknown_stream += 1;
            return AudioVerdict::Drop(DropReason::UnknownStream);
        };
        if st.paused.is_some() {
            st.dropped += 1;
            self.media.dropped_paused += 1;
            return AudioVerdict::Drop(DropReason::Paused);
        }
        let SessState::Live(conn) = state else {
            st.dropped += 1;
            self.media.dropped_not_connected += 1;
            return AudioVerdict::Drop(DropReason::NotConnected);
        };
        let Some(rec) = self.conns.get(&conn) else {
            st.dropped += 1;
            self.media.dropped_not_connected += 1;
            return AudioVerdict::Drop(DropReason::NotConnected);
        };
        let Some(pool) = self.servers.get_mut(&rec.server).map(|s| &mut s.pool) else {
            st.dropped += 1;
            self.media.dropped_not_connected += 1;
            return AudioVerdict::Drop(DropReason::NotConnected);
        };
        let _ = pool.handle_send_backlog(now, rec.handle, backlog(conn));
        let evict = match pool.admit(now, rec.handle, crate::core::ws_pool::FrameKind::Audio) {
            crate::core::ws_pool::Admit::Send => false,
            crate::core::ws_pool::Admit::SendDropOldest { episode } => {
                if episode {
                    if let Some(a) = self.alarms.record(AlarmKind::QueueOverflow) {
                        self.outputs.push_back(Output::Alarm(a));
                    }
                }
                // A full queue may have armed the stall timer: the shell re-reads
                // poll_timeout after every input.
                true
            }
            crate::core::ws_pool::Admit::Drop => {
                st.dropped += 1;
                self.media.dropped_not_connected += 1;
                return AudioVerdict::Drop(DropReason::NotConnected);
            }
        };
        let first = std::mem::replace(&mut st.first, false);
        st.frames += 1;
        st.bytes += len as u64;
        self.media.frames_queued += 1;
        self.media.bytes_queued += len as u64;
        AudioVerdict::Send { conn, first, evict }
    }

    /// Media path: the reader → service queue dropped `dropped` packets (oldest first) since
    /// the last batch; the first batch with drops after one without starts an overflow episode,
    /// alarmed once like a connection's (the packets are counted by the shell:
    /// `media_queue_drops`).
    pub fn handle_media_queue(&mut self, dropped: u64) {
        let was = std::mem::replace(&mut self.media_queue_overflowing, dropped > 0);
        if dropped > 0 && !was {
            if let Some(a) = self.alarms.record(AlarmKind::QueueOverflow) {
                self.outputs.push_back(Output::Alarm(a));
            }
        }
    }

    /// Media path: a full queue dropped a frame of `stream_id` (the oldest queued one, after
    /// a [`AudioVerdict::Send`] with `evict`). Counted for the stream and in
    /// `dropped_queue_full`.
    pub fn handle_audio_evicted(&mut self, stream_id: u32) {
        self.media.dropped_queue_full += 1;
        let Some(&(key, idx)) = self.by_stream.get(&stream_id) else {
            return;
        };
        if let Some(st) = self
            .sessions
            .get_mut(&key)
            .and_then(|s| s.streams.get_mut(idx))
        {
            st.dropped += 1;
        }
    }

    /// Media path: a telephone-event report; emits a `Send` when the stream is live.
    pub fn handle_dtmf(&mut self, _now: Instant, d: Dtmf) {
        let live = self
            .by_stream
            .get(&d.stream_id)
            .and_then(|&(key, idx)| self.sessions.get(&key).map(|s| (s, idx)))
            .filter(|(s, idx)| s.streams.get(*idx).is_some_and(|st| st.paused.is_none()))
            .and_then(|(s, _)| live_conn(s.state));
        match live {
            Some(conn) => {
                self.media.dtmf_sent += 1;
                self.send_all(Some(conn), vec![Control::Dtmf(d)]);
            }
            None => self.media.dtmf_dropped += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn start_precedes_audio_and_first_flag_is_set_once() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
        let c = connect_id(&drain(&mut s));
        // Audio before the connection is open is dropped and counted, never sent.
        assert_eq!(
            s.handle_audio(t0, 1, 176, |_| 0),
            AudioVerdict::Drop(DropReason::NotConnected)
        );
        s.handle_connected(t0, c, ConnInfo::default()).expect("ok");
        let outs = drain(&mut s);
        assert_eq!(sent(&outs), ["start:1", "start:2"]);
        s.handle_starts_written(t0, c, &[1, 2]).expect("ok");
        assert_eq!(statuses(&drain(&mut s)), [(ForkStatus::Started, None)]);
        assert_eq!(
            s.handle_audio(t0, 1, 176, |_| 0),
            AudioVerdict::Send {
                conn: c,
                first: true,
                evict: false
            }
        );
        assert_eq!(
            s.handle_audio(t0, 1, 176, |_| 1),
            AudioVerdict::Send {
                conn: c,
                first: false,
                evict: false
            }
        );
        assert_eq!(
            s.handle_audio(t0, 99, 176, |_| 0),
            AudioVerdict::Drop(DropReason::UnknownStream)
        );
        let m = s.media_counters();
        assert_eq!(
            (
                m.frames_queued,
                m.dropped_not_connected,
                m.dropped_unknown_stream
            ),
            (2, 1, 1)
        );
    }

    #[test]
    fn full_queue_sends_the_new_frame_counts_the_evicted_one_and_alarms_once() {
        let t0 = epoch();
        let (mut s, srv) = service(5);
        s.handle_fork_start(t0, req("g1", srv, 1)).expect("ok");
        let c = connect_id(&drain(&mut s));
        s.handle_connected(t0, c, ConnInfo::default()).expect("ok");
        drain(&mut s);
        let full = |_| usize::MAX;
        for first in [true, false] {
            assert_eq!(
                s.handle_audio(t0, 1, 176, full),
                AudioVerdict::Send {
                    conn: c,
                    first,
                    evict: true
                }
            );
            // The shell dropped the oldest queued frame, one of stream 2's.
            s.handle_audio_evicted(2);
        }
        let alarms: Vec<Output> = drain(&mut s)
            .into_iter()
            .filter(|o| matches!(o, Output::Alarm(_)))
            .collect();
        assert_eq!(
            alarms,
            [Output::Alarm(crate::core::alarms::Alarm {
                kind: crate::core::alarms::AlarmKind::QueueOverflow,
                count: 1
            })],
            "one alarm per overflow episode"
        );
        let m = s.media_counters();
        assert_eq!((m.frames_queued, m.dropped_queue_full), (2, 2));
        let dropped: Vec<(u32, u64)> = s
            .sessions_view(None)
            .iter()
            .flat_map(|v| v.streams.iter().map(|st| (st.stream_id, st.dropped)))
            .collect();
        assert!(dropped.contains(&(2, 2)), "{dropped:?}");
    }

    #[test]
    fn reader_queue_overflow_is_alarmed_once_per_episode() {
        let (mut s, _) = service(5);
        let kind = crate::core::alarms::AlarmKind::QueueOverflow;
        s.handle_media_queue(0);
        s.handle_media_queue(7);
        s.handle_media_queue(3);
        assert_eq!(s.alarms.count(kind), 1, "one episode");
        assert_eq!(
            drain(&mut s),
            [Output::Alarm(crate::core::alarms::Alarm { kind, count: 1 })]
        );
        s.handle_media_queue(0);
        s.handle_media_queue(1);
        assert_eq!(s.alarms.count(kind), 2, "a second episode");
    }
}
