//! The one call of a dialect connection: its identity and its two streams, as the service's
//! control messages describe them.
//!
//! Input: every [`Control`] message ([`Call::apply`], which says what changed) and every audio
//! frame ([`Call::audio`], which finds its party and codec). Every dialect but xdpfork carries
//! one call per connection (`Profile::multiplexes_calls`); a `start` for another call is
//! ignored and counted.

use serde_json::{Map, Value};

use crate::{decode_audio, AudioHeader, Channel, Codec, Control, Dtmf, StopReason};

/// The call as its first `start` named it.
#[derive(Debug, Clone)]
pub(super) struct CallInfo {
    /// Call GUID, shared by both streams.
    pub call_guid: String,
    /// SIP Call-ID.
    pub call_id: String,
    /// Calling party.
    pub from: String,
    /// Called party.
    pub to: String,
    /// The latest metadata (`start` or `update`).
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u32,
    paused: bool,
    stopped: bool,
    /// The server may talk back to this stream's party.
    return_audio: bool,
}

/// What a control message changed.
#[derive(Debug)]
pub(super) enum Change<'a> {
    /// The party's stream started (or was replaced by a new stream id).
    Started(Channel),
    /// The party's stream paused.
    Paused(Channel),
    /// The party's stream resumed (its codec is in the frames from now on).
    Resumed(Channel),
    /// The metadata was replaced.
    Updated(&'a Map<String, Value>),
    /// The party's stream stopped.
    Stopped(Channel),
    /// A telephone-event report of the party.
    Dtmf(Channel, &'a Dtmf),
    /// Another call's stream, an unknown or stopped stream id, or an `error`: nothing changed.
    Ignored,
}

/// One audio frame of a live stream.
#[derive(Debug)]
pub(super) struct AudioIn<'a> {
    /// Whose audio.
    pub channel: Channel,
    /// Law of the payload, from the frame's payload type.
    pub codec: Codec,
    /// The frame's header.
    pub header: AudioHeader,
    /// G.711 bytes.
    pub payload: &'a [u8],
}

/// Index of a party in per-party arrays.
pub(super) fn idx(ch: Channel) -> usize {
    match ch {
        Channel::Caller => 0,
        Channel::Callee => 1,
    }
}

/// The party of an index (inverse of [`idx`]).
pub(super) fn channel(i: usize) -> Channel {
    if i == 0 {
        Channel::Caller
    } else {
        Channel::Callee
    }
}

/// The call of one connection. See the module docs.
#[derive(Debug, Default)]
pub(super) struct Call {
    /// Set by the first `start`.
    pub info: Option<CallInfo>,
    slots: [Option<Slot>; 2],
    last_stop: Option<StopReason>,
}

impl Call {
    /// Applies one control message.
    pub fn apply<'a>(&mut self, msg: &'a Control) -> Change<'a> {
        match msg {
            Control::Start(s) => {
                match &mut self.info {
                    Some(info) if info.call_guid != s.call_guid => return Change::Ignored,
                    Some(info) => info.metadata = s.metadata.clone(),
                    None => {
                        self.info = Some(CallInfo {
                            call_guid: s.call_guid.clone(),
                            call_id: s.call_id.clone(),
                            from: s.from.clone(),
                            to: s.to.clone(),
                            metadata: s.metadata.clone(),
                        })
                    }
                }
                self.slots[idx(s.channel)] = Some(Slot {
                    id: s.stream_id,
                    paused: false,
                    stopped: false,
                    return_audio: s.return_audio,
                });
                Change::Started(s.channel)
            }
            Control::Pause(p) => match self.slot_mut(p.stream_id) {
                Some((ch, slot)) => {
                    slot.paused = true;
                    Change::Paused(ch)
                }
                None => Change::Ignored,
            },
            Control::Resume(r) => match self.slot_mut(r.stream_id) {
                Some((ch, slot)) => {
                    slot.paused = false;
                    Change::Resumed(ch)
                }
                None => Change::Ignored,
            },
            Control::Update(u) => {
                if self.slot_mut(u.stream_id).is_none() {
                    return Change::Ignored;
                }
                match &mut self.info {
                    Some(info) => {
                        info.metadata = u.metadata.clone();
                        Change::Updated(&u.metadata)
                    }
                    None => Change::Ignored,
                }
            }
            Control::Stop(s) => match self.slot_mut(s.stream_id) {
                Some((ch, slot)) => {
                    slot.stopped = true;
                    self.last_stop = Some(s.reason);
                    Change::Stopped(ch)
                }
                None => Change::Ignored,
            },
            Control::Dtmf(d) => match self.slot_mut(d.stream_id) {
                Some((ch, _)) => Change::Dtmf(ch, d),
                None => Change::Ignored,
            },
            Control::Error(_) | Control::Mark(_) | Control::Clear(_) => Change::Ignored,
        }
    }

    fn slot_mut(&mut self, stream_id: u32) -> Option<(Channel, &mut Slot)> {
        self.slots
            .iter_mut()
            .enumerate()
            .find_map(|(i, s)| match s {
                Some(s) if s.id == stream_id && !s.stopped => Some((channel(i), s)),
                _ => None,
            })
    }

    /// Whether the party's stream is started, not paused and not stopped.
    pub fn is_live(&self, ch: Channel) -> bool {
        matches!(self.slots[idx(ch)], Some(s) if !s.paused && !s.stopped)
    }

    /// The stream the server's audio is played to: the first party's stream that was started
    /// with `return_audio` and has not stopped (a pause does not stop the bot: a held caller
    /// hears music, not the bot, but the bot's queue is kept).
    pub fn talk_back(&self) -> Option<u32> {
        self.slots
            .iter()
            .flatten()
            .find(|s| s.return_audio && !s.stopped)
            .map(|s| s.id)
    }

    /// Whether a stream was started and every started stream has stopped.
    pub fn ended(&self) -> bool {
        self.slots.iter().any(Option::is_some) && self.slots.iter().flatten().all(|s| s.stopped)
    }

    /// Whether some stream is running and every running stream is paused.
    pub fn all_paused(&self) -> bool {
        let mut running = self
            .slots
            .iter()
            .flatten()
            .filter(|s| !s.stopped)
            .peekable();
        running.peek().is_some() && running.all(|s| s.paused)
    }

    /// Why the last stream stopped.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.last_stop
    }

    /// The frame's party and codec, if it is an audio frame of a live stream with a G.711
    /// payload type (0 or 8).
    pub fn audio<'f>(&self, frame: &'f [u8]) -> Option<AudioIn<'f>> {
        let (header, payload) = decode_audio(frame).ok()?;
        let codec = match header.payload_type {
            0 => Codec::Pcmu,
            8 => Codec::Pcma,
            _ => return None,
        };
        let i = self
            .slots
            .iter()
            .position(|s| matches!(s, Some(s) if s.id == header.stream_id))?;
        let ch = channel(i);
        self.is_live(ch).then_some(AudioIn {
            channel: ch,
            codec,
            header,
            payload,
        })
    }
}

#[cfg(test)]
pub(super) mod testing {
    //! Messages and frames of a test call: stream 1 is the caller, stream 2 the callee.

    use serde_json::{Map, Value};

    use crate::profile::WireFrame;
    use crate::{
        encode_audio, AudioHeader, Channel, Codec, Control, Dtmf, Pause, PauseReason, Resume,
        Start, Stop, StopReason, Update, FLAG_FIRST,
    };

    /// Field names of an object, in the order sent.
    pub fn keys(text: &WireFrame) -> Vec<String> {
        let WireFrame::Text(t) = text else {
            panic!("binary")
        };
        let mut keys = Vec::new();
        let mut de = serde_json::Deserializer::from_str(t);
        struct Keys<'a>(&'a mut Vec<String>);
        impl<'de> serde::de::Visitor<'de> for Keys<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
                while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                    self.0.push(k);
                }
                Ok(())
            }
        }
        serde::Deserializer::deserialize_map(&mut de, Keys(&mut keys)).expect("object");
        keys
    }

    /// Call GUID of the test call.
    pub const GUID: &str = "8F3C21A0-1DD2-11B2-8001-A2D2D9E0E3C4";

    /// The stream id of a party.
    pub fn sid(ch: Channel) -> u32 {
        match ch {
            Channel::Caller => 1,
            Channel::Callee => 2,
        }
    }

    /// `start` of a party's stream, metadata `{"campaign":"support","language":"en-US"}`.
    pub fn start(ch: Channel, codec: Codec) -> Control {
        let metadata: Map<String, Value> =
            serde_json::from_str(r#"{"campaign":"support","language":"en-US","priority":2}"#)
                .expect("object");
        Control::Start(Start {
            version: 1,
            stream_id: sid(ch),
            call_guid: GUID.into(),
            call_id: "a84b4c76e66710@10.0.0.1".into(),
            channel: ch,
            from: "sip:+15551230001@pbx.example.com".into(),
            to: "sip:6777@cube.example.com".into(),
            codec,
            sample_rate: 8000,
            ptime_ms: 20,
            metadata,
            resumed: false,
            return_audio: false,
        })
    }

    /// `pause` (hold) of a party.
    pub fn pause(ch: Channel) -> Control {
        Control::Pause(Pause {
            stream_id: sid(ch),
            reason: PauseReason::Hold,
        })
    }

    /// `resume` of a party.
    pub fn resume(ch: Channel, codec: Codec) -> Control {
        Control::Resume(Resume {
            stream_id: sid(ch),
            codec,
        })
    }

    /// `stop` of a party.
    pub fn stop(ch: Channel, reason: StopReason) -> Control {
        Control::Stop(Stop {
            stream_id: sid(ch),
            reason,
        })
    }

    /// `update` of a party's stream.
    pub fn update(ch: Channel, metadata: Value) -> Control {
        Control::Update(Update {
            stream_id: sid(ch),
            metadata: metadata.as_object().cloned().expect("object"),
        })
    }

    /// A final (`end`) report of `event`.
    pub fn dtmf(ch: Channel, event: u8, timestamp: u32) -> Control {
        Control::Dtmf(Dtmf {
            stream_id: sid(ch),
            event,
            end: true,
            duration: 800,
            timestamp,
        })
    }

    /// An audio frame of a party: `payload` in `codec`, RTP seq/timestamp as given.
    pub fn frame(
        ch: Channel,
        codec: Codec,
        seq: u16,
        ts: u32,
        first: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let hdr = AudioHeader {
            stream_id: sid(ch),
            seq,
            payload_type: codec.payload_type(),
            flags: if first { FLAG_FIRST } else { 0 },
            timestamp: ts,
        };
        encode_audio(&mut out, &hdr, payload);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn follows_the_streams() {
        let mut call = Call::default();
        assert!(!call.ended());
        assert!(matches!(
            call.apply(&start(Channel::Caller, Codec::Pcmu)),
            Change::Started(Channel::Caller)
        ));
        assert!(call.is_live(Channel::Caller) && !call.is_live(Channel::Callee));
        call.apply(&start(Channel::Callee, Codec::Pcma));
        assert!(matches!(
            call.apply(&pause(Channel::Caller)),
            Change::Paused(Channel::Caller)
        ));
        assert!(!call.all_paused());
        call.apply(&pause(Channel::Callee));
        assert!(call.all_paused());
        call.apply(&resume(Channel::Callee, Codec::Pcmu));
        call.apply(&stop(Channel::Caller, StopReason::CallEnd));
        assert!(!call.ended() && !call.all_paused());
        // A stopped id is dead.
        assert!(matches!(
            call.apply(&resume(Channel::Caller, Codec::Pcmu)),
            Change::Ignored
        ));
        call.apply(&stop(Channel::Callee, StopReason::Error));
        assert!(call.ended());
        assert_eq!(call.stop_reason(), Some(StopReason::Error));
    }

    #[test]
    fn another_calls_start_is_ignored() {
        let mut call = Call::default();
        call.apply(&start(Channel::Caller, Codec::Pcmu));
        let Control::Start(mut other) = start(Channel::Callee, Codec::Pcmu) else {
            unreachable!()
        };
        other.call_guid = "other".into();
        assert!(matches!(
            call.apply(&Control::Start(other)),
            Change::Ignored
        ));
        assert!(!call.is_live(Channel::Callee));
    }

    #[test]
    fn audio_of_live_streams_only() {
        let mut call = Call::default();
        let f = frame(Channel::Caller, Codec::Pcma, 7, 160, true, &[0xD5; 160]);
        assert!(call.audio(&f).is_none(), "not started");
        call.apply(&start(Channel::Caller, Codec::Pcmu));
        let a = call.audio(&f).expect("live");
        assert_eq!(
            (a.channel, a.codec, a.header.seq, a.payload.len()),
            (Channel::Caller, Codec::Pcma, 7, 160)
        );
        call.apply(&pause(Channel::Caller));
        assert!(call.audio(&f).is_none(), "paused");
        call.apply(&resume(Channel::Caller, Codec::Pcma));
        let mut g729 = f.clone();
        g729[10] = 18;
        assert!(call.audio(&g729).is_none(), "not G.711");
        assert!(call.audio(&f[..10]).is_none(), "not a frame");
    }
}
