//! Playout of a bot's audio into one RTP stream (sans-IO).
//!
//! Role: a speech server that talks back (docs/speech-protocol.md §16) sends audio in chunks of
//! any size, usually faster than real time, plus marks and clears ([`BotCommand`]). This core
//! buffers the audio (bounded), cuts it into one G.711 frame per packet time and paces the
//! frames by the clock, writing RTP headers whose SSRC, sequence number and timestamp stay
//! continuous across utterances, silences and clears (RFC 3550 §5.1), with the marker bit on the
//! first packet of each talkspurt (RFC 3551 §4.1). When the bot is silent it either sends
//! silence frames (`Idle::Silence`: the call ends here and the caller expects a steady stream;
//! G.711 has no comfort-noise requirement, RFC 3551 §4.5.14) or sends nothing
//! (`Idle::HandBack`: someone else, the kernel relay, carries the stream meanwhile).
//!
//! Inject mode (`Idle::HandBack`): the stream is the kernel relay's between talkspurts, so a
//! talkspurt first asks for it ([`Output::TakeOver`]); the shell stops the relay (one map
//! update) and answers with [`Playout::handle_taken_over`] and where the relayed stream stood,
//! which the bot continues (same SSRC, next sequence number, timestamp advanced by the time
//! since). At the talkspurt's end, a clear, or [`Playout::release`], [`Output::HandBack`] says
//! where the relay must continue. With `mix`, the relayed party's own audio
//! ([`Playout::handle_party_audio`], from the fork) is summed into the bot's frames.
//!
//! Inputs: [`Playout::handle_command`] for each bot command in arrival order,
//! [`Playout::handle_timeout`] when [`Playout::poll_timeout`] is due. Outputs, drained with
//! [`Playout::poll_output`] after every input: [`Output::Rtp`] packets to send now, in order,
//! [`Output::Talkspurt`] when the bot starts or stops talking, [`Output::MarkPlayed`] once the
//! audio queued before a mark has been sent (a clear reports every mark it drops, as Twilio
//! does). Nothing here allocates per packet; the packet is an inline array.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use speech_proto::{BotCommand, Codec};

/// Length of the RTP fixed header we send (no CSRC, no extension; RFC 3550 §5.1).
pub const RTP_HEADER_LEN: usize = 12;

/// Longest packet time accepted (RFC 3551 §4.5.14 allows G.711 frames of any multiple of
/// 1 ms; phones use 10–60 ms).
pub const MAX_PTIME_MS: u32 = 60;

/// Samples per millisecond of G.711 (8000 Hz, RFC 3551 table 4).
const SAMPLES_PER_MS: usize = 8;

/// Largest packet: header plus [`MAX_PTIME_MS`] of G.711.
pub const MAX_PACKET: usize = RTP_HEADER_LEN + MAX_PTIME_MS as usize * SAMPLES_PER_MS;

/// Ticks a late shell may catch up on in one call; beyond it the schedule restarts from now
/// (a stalled task must not answer with a burst the receiver's jitter buffer drops anyway).
const MAX_CATCH_UP: u32 = 5;

/// What the stream carries while the bot is silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Silence frames at the packet rate (endpoint mode: nobody else sends on the stream).
    Silence,
    /// Nothing: the stream is handed back (inject mode: the kernel relay carries it).
    HandBack,
}

/// Settings of one playout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutConfig {
    /// Packet time.
    pub ptime: Duration,
    /// Most audio held; what a bot sends beyond it is dropped (newest) and counted.
    pub max_buffer: Duration,
    /// Audio held before a talkspurt starts, to ride out the bot's own jitter; a talkspurt
    /// starts earlier when the bot marked the end of what it said, or when its audio has
    /// waited this long.
    pub prebuffer: Duration,
    /// What goes out while the bot is silent.
    pub idle: Idle,
    /// Inject mode: the relayed party's audio is mixed into the bot's (else replaced).
    pub mix: bool,
}

impl Default for PlayoutConfig {
    fn default() -> Self {
        PlayoutConfig {
            ptime: Duration::from_millis(20),
            max_buffer: Duration::from_secs(60),
            prebuffer: Duration::from_millis(40),
            idle: Idle::Silence,
            mix: false,
        }
    }
}

/// Identity and starting point of the RTP stream we send (random values from the shell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpStart {
    /// Synchronization source.
    pub ssrc: u32,
    /// Sequence number of the first packet.
    pub seq: u16,
    /// Timestamp of the first packet.
    pub timestamp: u32,
    /// Payload type (the call's, from its SDP).
    pub payload_type: u8,
    /// The G.711 law of the call.
    pub codec: Codec,
}

/// Where the relayed stream stood when the bot took it over (from the kernel's `FLOW_STATS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// SSRC of the newest relayed packet, as it left.
    pub ssrc: u32,
    /// Its sequence number.
    pub seq: u16,
    /// Its timestamp.
    pub timestamp: u32,
    /// How long ago it was seen.
    pub age: Duration,
}

/// Where a handed-back stream continues: the first relayed packet leaves with these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPosition {
    /// The stream's SSRC.
    pub ssrc: u32,
    /// Next sequence number.
    pub seq: u16,
    /// Next timestamp.
    pub timestamp: u32,
}

/// Most of the relayed party's audio held for mixing: its frames arrive by the fork's clock,
/// the bot's leave by ours; beyond a few frames the oldest are dropped.
const MIX_HOLD_FRAMES: usize = 3;

/// One RTP packet to send at once.
#[derive(Clone, Copy)]
pub struct RtpPacket {
    bytes: [u8; MAX_PACKET],
    len: usize,
}

impl RtpPacket {
    /// The datagram.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Debug for RtpPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.as_bytes();
        f.debug_struct("RtpPacket")
            .field("seq", &u16::from_be_bytes([b[2], b[3]]))
            .field("marker", &(b[1] >> 7))
            .field("len", &self.len)
            .finish()
    }
}

/// What the shell must do.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // inline on purpose: boxing would allocate per packet
pub enum Output {
    /// Send this packet now.
    Rtp(RtpPacket),
    /// The bot started (`true`) or stopped (`false`) talking; comes before the talkspurt's first
    /// packet and after its last one.
    Talkspurt(bool),
    /// Everything before the bot's mark has been played (or cleared).
    MarkPlayed(String),
    /// Inject mode: a talkspurt is ready; stop the relay and answer with
    /// [`Playout::handle_taken_over`] (nothing is sent before).
    TakeOver,
    /// Inject mode: the bot let go; the relay continues the stream from here.
    HandBack(StreamPosition),
}

/// Counters of one playout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlayoutStats {
    /// Packets sent.
    pub packets: u64,
    /// Of them, silence frames while the bot was silent.
    pub silence_packets: u64,
    /// Talkspurts started.
    pub talkspurts: u64,
    /// Marks reported.
    pub marks: u64,
    /// Clears received.
    pub clears: u64,
    /// Server marks forgotten unreported (`ClearMarks`).
    pub marks_forgotten: u64,
    /// Samples dropped because the buffer was full.
    pub samples_dropped: u64,
    /// Samples dropped by a clear.
    pub samples_cleared: u64,
    /// Ticks skipped because the shell came back too late to catch up.
    pub ticks_skipped: u64,
    /// Inject mode: streams taken over from the relay, and handed back.
    pub take_overs: u64,
    pub hand_backs: u64,
}

#[derive(Debug)]
enum Item {
    Audio(VecDeque<i16>),
    Mark(String),
}

/// The playout of one stream. See the module docs.
#[derive(Debug)]
pub struct Playout {
    cfg: PlayoutConfig,
    rtp: RtpStart,
    frame: usize,
    queue: VecDeque<Item>,
    buffered: usize,
    /// Arrival of the oldest audio not yet playing and of the newest audio.
    waiting_since: Option<Instant>,
    last_audio: Option<Instant>,
    talking: bool,
    /// The next packet starts a talkspurt (marker bit).
    marker_next: bool,
    seq: u16,
    timestamp: u32,
    next_tick: Option<Instant>,
    out: VecDeque<Output>,
    stats: PlayoutStats,
    /// Inject mode: the bot holds the stream (the relay is stopped).
    holds: bool,
    /// Inject mode: [`Output::TakeOver`] is out, unanswered.
    awaiting: bool,
    /// When the last packet went out (the media clock across a hand-back).
    last_sent: Option<Instant>,
    /// Mix: the relayed party's samples not yet mixed.
    party: VecDeque<i16>,
}

impl Playout {
    /// A playout starting at `now`. With [`Idle::Silence`] the stream runs from the first tick.
    ///
    /// Panics (config validation's job, not an input's) if `ptime` is not 1..=60 whole ms.
    pub fn new(now: Instant, cfg: PlayoutConfig, rtp: RtpStart) -> Playout {
        let ms = cfg.ptime.as_millis();
        assert!(
            (1..=u128::from(MAX_PTIME_MS)).contains(&ms)
                && cfg.ptime.subsec_micros().is_multiple_of(1000),
            "invariant: ptime validated as 1..=60 whole ms"
        );
        Playout {
            cfg,
            rtp,
            frame: ms as usize * SAMPLES_PER_MS,
            queue: VecDeque::new(),
            buffered: 0,
            waiting_since: None,
            last_audio: None,
            talking: false,
            marker_next: true,
            seq: rtp.seq,
            timestamp: rtp.timestamp,
            next_tick: (cfg.idle == Idle::Silence).then_some(now),
            out: VecDeque::new(),
            stats: PlayoutStats::default(),
            holds: false,
            awaiting: false,
            last_sent: None,
            party: VecDeque::new(),
        }
    }

    fn max_samples(&self) -> usize {
        self.cfg.max_buffer.as_millis() as usize * SAMPLES_PER_MS
    }

    /// One bot command, in arrival order.
    pub fn handle_command(&mut self, now: Instant, cmd: BotCommand) {
        match cmd {
            BotCommand::Play(samples) => {
                let room = self.max_samples().saturating_sub(self.buffered);
                let take = samples.len().min(room);
                self.stats.samples_dropped += (samples.len() - take) as u64;
                if take == 0 {
                    return;
                }
                self.buffered += take;
                self.last_audio = Some(now);
                self.waiting_since.get_or_insert(now);
                match self.queue.back_mut() {
                    Some(Item::Audio(a)) => a.extend(&samples[..take]),
                    _ => self
                        .queue
                        .push_back(Item::Audio(samples[..take].iter().copied().collect())),
                }
            }
            BotCommand::Mark(name) => {
                self.queue.push_back(Item::Mark(name));
                self.report_marks();
            }
            BotCommand::Clear => {
                self.stats.clears += 1;
                self.clear();
            }
            BotCommand::ClearMarks => {
                let before = self.queue.len();
                self.queue
                    .retain(|i| !matches!(i, Item::Mark(n) if !speech_proto::is_own_mark(n)));
                self.stats.marks_forgotten += (before - self.queue.len()) as u64;
            }
        }
        self.schedule(now);
    }

    /// Drops everything queued at once, reporting its marks.
    fn clear(&mut self) {
        self.buffered = 0;
        self.end_talkspurt();
        for item in self.queue.drain(..) {
            match item {
                Item::Audio(a) => self.stats.samples_cleared += a.len() as u64,
                Item::Mark(name) => {
                    self.stats.marks += 1;
                    self.out.push_back(Output::MarkPlayed(name));
                }
            }
        }
        self.waiting_since = None;
    }

    /// Marks with no audio before them are played.
    fn report_marks(&mut self) {
        while let Some(Item::Mark(_)) = self.queue.front() {
            if let Some(Item::Mark(name)) = self.queue.pop_front() {
                self.stats.marks += 1;
                self.out.push_back(Output::MarkPlayed(name));
            }
        }
    }

    fn end_talkspurt(&mut self) {
        if self.talking {
            self.talking = false;
            self.marker_next = true;
            self.out.push_back(Output::Talkspurt(false));
        }
        if self.cfg.idle == Idle::HandBack {
            if self.holds {
                self.holds = false;
                self.party.clear();
                self.stats.hand_backs += 1;
                self.out.push_back(Output::HandBack(self.position()));
            }
            if self.buffered == 0 {
                self.next_tick = None;
            }
        }
    }

    /// Where the stream continues after the last packet sent.
    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            ssrc: self.rtp.ssrc,
            seq: self.seq,
            timestamp: self.timestamp,
        }
    }

    /// Inject mode: the relay is stopped ([`Output::TakeOver`] answered). `relayed`: where
    /// the relayed stream stood (`None`: nothing relayed yet). The bot continues whichever of
    /// the relay and its own last talkspurt is further on, so the stream never steps back.
    pub fn handle_taken_over(&mut self, now: Instant, relayed: Option<Relayed>) {
        if !std::mem::replace(&mut self.awaiting, false) {
            return;
        }
        self.holds = true;
        self.stats.take_overs += 1;
        let frames_since = |age: Duration| -> u32 {
            // Whole packet times, at least one: the next packet is one frame on at the least.
            let p = self.cfg.ptime.as_micros().max(1);
            (age.as_micros().div_ceil(p) as u32).max(1)
        };
        let relay_ahead = |r: &Relayed| {
            r.ssrc == self.rtp.ssrc && (r.seq.wrapping_add(1).wrapping_sub(self.seq) as i16) > 0
        };
        match relayed {
            Some(r) if self.stats.packets == 0 || relay_ahead(&r) => {
                self.rtp.ssrc = r.ssrc;
                self.seq = r.seq.wrapping_add(1);
                self.timestamp = r
                    .timestamp
                    .wrapping_add(frames_since(r.age).wrapping_mul(self.frame as u32));
            }
            _ => {
                // Our own stream goes on; its clock ran while the relay had it.
                if let Some(t) = self.last_sent {
                    let extra = frames_since(now.saturating_duration_since(t)) - 1;
                    self.timestamp = self
                        .timestamp
                        .wrapping_add(extra.wrapping_mul(self.frame as u32));
                }
            }
        }
        if self.buffered == 0 {
            // Cleared while waiting: give it straight back.
            self.end_talkspurt();
            return;
        }
        self.next_tick = Some(now);
        self.handle_timeout(now);
    }

    /// Inject mode: the relay could not be stopped. The talkspurt is dropped (counted as
    /// cleared, its marks reported) rather than sent over the relay.
    pub fn handle_take_over_failed(&mut self, now: Instant) {
        if !std::mem::replace(&mut self.awaiting, false) {
            return;
        }
        self.clear();
        self.schedule(now);
    }

    /// Inject mode: the relayed party's audio, as forked (mixed while the bot talks with `mix`,
    /// else ignored: the kernel relays it).
    pub fn handle_party_audio(&mut self, samples: &[i16]) {
        // From the take-over request on: the relay may have stopped already.
        if !(self.cfg.mix && (self.holds || self.awaiting)) {
            return;
        }
        self.party.extend(samples);
        let max = self.frame * MIX_HOLD_FRAMES;
        if self.party.len() > max {
            let extra = self.party.len() - max;
            self.party.drain(..extra);
        }
    }

    /// The playout ends (fork stopped, bot gone): where the relay must continue if the bot
    /// held the stream. Nothing is sent after it.
    pub fn release(&mut self) -> Option<StreamPosition> {
        self.next_tick = None;
        self.awaiting = false;
        self.talking = false;
        std::mem::replace(&mut self.holds, false).then(|| {
            self.stats.hand_backs += 1;
            self.position()
        })
    }

    /// Whether a talkspurt may start: enough audio, or the bot said where it ends (a mark
    /// behind the audio), or the audio waited long enough.
    fn ready(&self, now: Instant) -> bool {
        self.buffered > 0
            && (self.buffered >= self.cfg.prebuffer.as_millis() as usize * SAMPLES_PER_MS
                || self.queue.iter().any(|i| matches!(i, Item::Mark(_)))
                || self
                    .waiting_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.prebuffer))
    }

    fn schedule(&mut self, now: Instant) {
        if self.next_tick.is_none() && self.buffered > 0 {
            // Hand-back mode is idle: the first tick is when the talkspurt may start.
            let at = if self.ready(now) {
                now
            } else {
                self.waiting_since.unwrap_or(now) + self.cfg.prebuffer
            };
            self.next_tick = Some(at);
        }
    }

    /// When [`Playout::handle_timeout`] must run next; `None` while handed back with nothing
    /// queued. Re-read after every input.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.awaiting {
            return None;
        }
        self.next_tick
    }

    /// Sends the frames that are due. A call before the deadline does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut ticks = 0;
        while let Some(at) = self.next_tick {
            if at > now || self.awaiting {
                break;
            }
            if ticks == MAX_CATCH_UP {
                // Too far behind: restart the schedule from now, counting what was skipped.
                let behind = now.saturating_duration_since(at);
                let skipped = (behind.as_micros() / self.cfg.ptime.as_micros()) as u64 + 1;
                self.stats.ticks_skipped += skipped;
                self.timestamp = self
                    .timestamp
                    .wrapping_add((skipped as usize * self.frame) as u32);
                self.next_tick = Some(now);
                ticks = 0;
                continue;
            }
            ticks += 1;
            self.tick(at);
        }
    }

    /// One packet time at `at`.
    fn tick(&mut self, at: Instant) {
        if !self.talking && self.ready(at) {
            if self.cfg.idle == Idle::HandBack && !self.holds {
                // The relay still sends on this stream: ask for it first; this tick runs again
                // once the shell answered.
                self.awaiting = true;
                self.out.push_back(Output::TakeOver);
                return;
            }
            self.talking = true;
            self.stats.talkspurts += 1;
            self.out.push_back(Output::Talkspurt(true));
        }
        let whole_frame = self.buffered >= self.frame;
        // A partial frame is the end of an utterance when the bot said so (a mark behind it) or
        // sent nothing more for a prebuffer's time; otherwise wait for the rest.
        let tail = self.buffered > 0
            && (self.queue.iter().any(|i| matches!(i, Item::Mark(_)))
                || self
                    .last_audio
                    .is_some_and(|t| at.saturating_duration_since(t) >= self.cfg.prebuffer));
        if self.talking && (whole_frame || tail) {
            let mut pkt = self.header();
            let silence = self.silence();
            let mut n = 0;
            while n < self.frame {
                match self.queue.front_mut() {
                    Some(Item::Audio(a)) => match a.pop_front() {
                        Some(s) => {
                            let s = s.saturating_add(self.party.pop_front().unwrap_or(0));
                            pkt.bytes[RTP_HEADER_LEN + n] = self.encode(s);
                            n += 1;
                        }
                        None => {
                            self.queue.pop_front();
                        }
                    },
                    Some(Item::Mark(_)) if n == 0 => self.report_marks(),
                    _ => break,
                }
            }
            if matches!(self.queue.front(), Some(Item::Audio(a)) if a.is_empty()) {
                self.queue.pop_front();
            }
            self.buffered -= n;
            if self.party.is_empty() {
                pkt.bytes[RTP_HEADER_LEN + n..RTP_HEADER_LEN + self.frame].fill(silence);
            } else {
                for i in n..self.frame {
                    let s = self.party.pop_front().unwrap_or(0);
                    pkt.bytes[RTP_HEADER_LEN + i] = self.encode(s);
                }
            }
            self.send(pkt);
            self.report_marks();
            if self.buffered == 0 {
                self.waiting_since = None;
            }
        } else {
            if self.talking {
                // Underrun: the bot is slower than real time. The talkspurt ends; its next
                // audio starts a new one (with the marker bit the receiver re-syncs on).
                self.end_talkspurt();
            }
            if self.cfg.idle == Idle::Silence {
                let mut pkt = self.header();
                let silence = self.silence();
                pkt.bytes[RTP_HEADER_LEN..pkt.len].fill(silence);
                self.stats.silence_packets += 1;
                self.send(pkt);
            } else {
                // Nothing goes out, but the media clock runs on (RFC 3550 §5.1: the timestamp
                // counts sampling instants, so the receiver sees the gap).
                self.timestamp = self.timestamp.wrapping_add(self.frame as u32);
            }
        }
        // Ticks stay on the grid of the first one (no drift); handed back and silent, none.
        self.next_tick = if self.cfg.idle == Idle::HandBack && !self.talking && self.buffered == 0 {
            None
        } else {
            Some(at + self.cfg.ptime)
        };
    }

    fn silence(&self) -> u8 {
        self.encode(0)
    }

    fn encode(&self, s: i16) -> u8 {
        match self.rtp.codec {
            Codec::Pcmu => speech_proto::linear_to_ulaw(s),
            Codec::Pcma => speech_proto::linear_to_alaw(s),
        }
    }

    fn header(&mut self) -> RtpPacket {
        let mut bytes = [0u8; MAX_PACKET];
        bytes[0] = 0x80;
        bytes[1] = self.rtp.payload_type & 0x7f;
        if std::mem::replace(&mut self.marker_next, false) && self.talking {
            bytes[1] |= 0x80;
        } else if !self.talking {
            // Silence between talkspurts: the next talkspurt still gets the marker.
            self.marker_next = true;
        }
        bytes[2..4].copy_from_slice(&self.seq.to_be_bytes());
        bytes[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        bytes[8..12].copy_from_slice(&self.rtp.ssrc.to_be_bytes());
        RtpPacket {
            bytes,
            len: RTP_HEADER_LEN + self.frame,
        }
    }

    fn send(&mut self, pkt: RtpPacket) {
        self.last_sent = self.next_tick;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(self.frame as u32);
        self.stats.packets += 1;
        self.out.push_back(Output::Rtp(pkt));
    }

    /// The next thing to do; drain to `None` after every `handle_*` call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Whether the bot is talking (a talkspurt is running).
    pub fn is_talking(&self) -> bool {
        self.talking
    }

    /// Milliseconds of audio queued.
    pub fn buffered_ms(&self) -> u64 {
        (self.buffered / SAMPLES_PER_MS) as u64
    }

    /// Counters.
    pub fn stats(&self) -> PlayoutStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[allow(clippy::disallowed_methods)] // any fixed Instant will do; there is no constructor
    fn t0() -> Instant {
        Instant::now()
    }

    fn start() -> RtpStart {
        RtpStart {
            ssrc: 0xdead_beef,
            seq: 65534,
            timestamp: u32::MAX - 200,
            payload_type: 0,
            codec: Codec::Pcmu,
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Pkt {
        seq: u16,
        ts: u32,
        ssrc: u32,
        marker: bool,
        payload: Vec<u8>,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Out {
        Rtp(Pkt),
        Talk(bool),
        Mark(String),
        TakeOver,
        HandBack(StreamPosition),
    }

    fn drain(p: &mut Playout) -> Vec<Out> {
        std::iter::from_fn(|| p.poll_output())
            .map(|o| match o {
                Output::Rtp(pkt) => {
                    let b = pkt.as_bytes();
                    assert_eq!(b[0], 0x80, "RTP v2, no padding, extension or CSRC");
                    Out::Rtp(Pkt {
                        seq: u16::from_be_bytes([b[2], b[3]]),
                        ts: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                        ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
                        marker: b[1] & 0x80 != 0,
                        payload: b[RTP_HEADER_LEN..].to_vec(),
                    })
                }
                Output::Talkspurt(on) => Out::Talk(on),
                Output::MarkPlayed(m) => Out::Mark(m),
                Output::TakeOver => Out::TakeOver,
                Output::HandBack(at) => Out::HandBack(at),
            })
            .collect()
    }

    /// Runs the clock from `*now` to `until`, firing every deadline on time; a take-over is
    /// answered at once with `relayed`.
    fn run_relayed(
        p: &mut Playout,
        now: &mut Instant,
        until: Instant,
        relayed: Option<Relayed>,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match p.poll_timeout() {
                Some(t) if t <= until => {
                    *now = t.max(*now);
                    p.handle_timeout(*now);
                    let got = drain(p);
                    let asked = got.contains(&Out::TakeOver);
                    out.extend(got);
                    if asked {
                        p.handle_taken_over(*now, relayed);
                        out.extend(drain(p));
                    }
                }
                _ => break,
            }
        }
        *now = until;
        out
    }

    fn run(p: &mut Playout, now: &mut Instant, until: Instant) -> Vec<Out> {
        run_relayed(p, now, until, None)
    }

    fn inject_cfg() -> PlayoutConfig {
        PlayoutConfig {
            idle: Idle::HandBack,
            ..PlayoutConfig::default()
        }
    }

    fn rtp(out: &[Out]) -> Vec<&Pkt> {
        out.iter()
            .filter_map(|o| match o {
                Out::Rtp(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// A ramp of distinct µ-law-exact samples, so order and cuts are visible.
    fn speech(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| speech_proto::ulaw_to_linear((i % 200) as u8))
            .collect()
    }

    #[test]
    fn endpoint_streams_silence_then_paces_an_utterance_with_one_marker() {
        let mut now = t0();
        let mut p = Playout::new(now, PlayoutConfig::default(), start());
        let out = run(&mut p, &mut now, t0() + 50 * MS);
        let pk = rtp(&out);
        assert_eq!(pk.len(), 3, "ticks at 0, 20 and 40 ms");
        assert!(pk.iter().all(|k| !k.marker && k.payload == vec![0xff; 160]));
        assert_eq!(p.stats().silence_packets, 3);

        // 100 ms of speech arrives at once, faster than real time.
        let audio = speech(800);
        p.handle_command(now, BotCommand::Play(audio.clone()));
        assert!(drain(&mut p).is_empty());
        let out = run(&mut p, &mut now, t0() + 200 * MS);
        let pk = rtp(&out);
        // Ticks at 60..=200 ms: 8 packets, 5 of speech then silence.
        assert_eq!(pk.len(), 8);
        let sent: Vec<u8> = pk[..5].iter().flat_map(|k| k.payload.clone()).collect();
        let want: Vec<u8> = audio
            .iter()
            .map(|&s| speech_proto::linear_to_ulaw(s))
            .collect();
        assert_eq!(sent, want, "played in order, unchanged");
        assert_eq!(
            pk.iter().map(|k| k.marker).collect::<Vec<_>>(),
            [true, false, false, false, false, false, false, false],
            "marker on the talkspurt's first packet only"
        );
        assert_eq!(out.first(), Some(&Out::Talk(true)));
        assert!(out.contains(&Out::Talk(false)));
        // One stream throughout: same SSRC, sequence +1 and timestamp +160 per packet, wrapping.
        let all: Vec<&Pkt> = pk.clone();
        for w in all.windows(2) {
            assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
            assert_eq!(w[1].ts, w[0].ts.wrapping_add(160));
            assert_eq!(w[1].ssrc, 0xdead_beef);
        }
        assert_eq!(pk[0].seq, 65534u16.wrapping_add(3));
    }

    #[test]
    fn a_short_clip_plays_after_the_prebuffer_and_its_tail_is_padded() {
        let mut now = t0();
        let cfg = PlayoutConfig {
            idle: Idle::HandBack,
            ..PlayoutConfig::default()
        };
        let mut p = Playout::new(now, cfg, start());
        assert_eq!(p.poll_timeout(), None, "handed back: nothing to do");
        p.handle_command(now, BotCommand::Play(speech(200)));
        assert_eq!(
            p.poll_timeout(),
            Some(now + 40 * MS),
            "waits for the prebuffer"
        );
        let out = run(&mut p, &mut now, t0() + 200 * MS);
        let pk = rtp(&out);
        assert_eq!(pk.len(), 2);
        assert!(pk[0].marker && !pk[1].marker);
        assert_eq!(
            &pk[1].payload[40..],
            &[0xff; 120][..],
            "tail padded with silence"
        );
        assert!(out.contains(&Out::Talk(false)));
        assert!(matches!(out.last(), Some(Out::HandBack(_))));
        assert_eq!(p.poll_timeout(), None, "handed back again");
        assert_eq!(p.stats().silence_packets, 0);

        // The next utterance continues the same stream, the timestamp counting the gap.
        let before = pk[1].clone();
        let idle_until = now;
        p.handle_command(now, BotCommand::Play(speech(320)));
        let out = run(&mut p, &mut now, idle_until + 100 * MS);
        let pk = rtp(&out);
        assert_eq!(pk.len(), 2);
        assert!(pk[0].marker);
        assert_eq!(pk[0].seq, before.seq.wrapping_add(1));
        assert!(pk[0].ts.wrapping_sub(before.ts) >= 160);
    }

    #[test]
    fn marks_come_back_in_order_once_their_audio_was_sent() {
        let mut now = t0();
        let mut p = Playout::new(now, PlayoutConfig::default(), start());
        p.handle_command(now, BotCommand::Mark("m0".into()));
        assert_eq!(drain(&mut p), [Out::Mark("m0".into())], "nothing before it");
        p.handle_command(now, BotCommand::Play(speech(320)));
        p.handle_command(now, BotCommand::Mark("m1".into()));
        p.handle_command(now, BotCommand::Play(speech(100)));
        p.handle_command(now, BotCommand::Mark("m2".into()));
        assert!(drain(&mut p).is_empty());
        let out = run(&mut p, &mut now, t0() + 100 * MS);
        let order: Vec<String> = out
            .iter()
            .map(|o| match o {
                Out::Rtp(k) if k.payload[0] == 0xff => "silence".into(),
                Out::Rtp(_) => "audio".into(),
                Out::Talk(on) => format!("talk {on}"),
                Out::Mark(m) => m.clone(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            order,
            [
                "talk true",
                "audio",
                "audio",
                "m1",
                "audio",
                "m2",
                "talk false",
                "silence",
                "silence",
                "silence"
            ]
        );
    }

    #[test]
    fn clear_cuts_the_utterance_at_the_next_tick_and_reports_pending_marks() {
        let mut now = t0();
        let mut p = Playout::new(now, PlayoutConfig::default(), start());
        p.handle_command(now, BotCommand::Play(speech(8000)));
        p.handle_command(now, BotCommand::Mark("end".into()));
        let out = run(&mut p, &mut now, t0() + 105 * MS);
        assert_eq!(rtp(&out).len(), 6);
        p.handle_command(now, BotCommand::Clear);
        assert_eq!(
            drain(&mut p),
            [Out::Talk(false), Out::Mark("end".into())],
            "at once"
        );
        let out = run(&mut p, &mut now, t0() + 125 * MS);
        let pk = rtp(&out);
        assert_eq!(pk.len(), 1);
        assert_eq!(pk[0].payload, vec![0xff; 160], "the next frame is silence");
        assert_eq!(p.stats().samples_cleared, 8000 - 6 * 160);
        assert_eq!(p.buffered_ms(), 0);
    }

    #[test]
    fn the_buffer_is_bounded_and_overflow_is_counted() {
        let now = t0();
        let cfg = PlayoutConfig {
            max_buffer: Duration::from_millis(100),
            ..PlayoutConfig::default()
        };
        let mut p = Playout::new(now, cfg, start());
        p.handle_command(now, BotCommand::Play(speech(600)));
        p.handle_command(now, BotCommand::Play(speech(600)));
        assert_eq!(p.buffered_ms(), 100);
        assert_eq!(p.stats().samples_dropped, 400);
    }

    #[test]
    fn a_late_shell_catches_up_a_little_then_restarts_the_grid() {
        let mut now = t0();
        let mut p = Playout::new(now, PlayoutConfig::default(), start());
        p.handle_timeout(now);
        let first = rtp(&drain(&mut p))[0].clone();
        now += 30 * MS;
        p.handle_timeout(now);
        assert_eq!(rtp(&drain(&mut p)).len(), 1, "20 ms due, 40 ms not yet");
        now += 1000 * MS;
        p.handle_timeout(now);
        let out = drain(&mut p);
        let pk = rtp(&out);
        assert_eq!(pk.len(), MAX_CATCH_UP as usize + 1);
        assert!(p.stats().ticks_skipped > 0);
        let last = pk.last().expect("sent");
        assert_eq!(last.seq, first.seq.wrapping_add(pk.len() as u16 + 1));
        // Timestamps still follow the media clock: about 1030 ms after the first packet.
        let elapsed = last.ts.wrapping_sub(first.ts);
        assert!((8160..=8480).contains(&elapsed), "{elapsed}");
        assert_eq!(p.poll_timeout(), Some(now + 20 * MS));
        p.handle_timeout(now + 5 * MS);
        assert!(drain(&mut p).is_empty(), "a spurious call does nothing");
    }

    #[test]
    fn a_law_calls_get_a_law_frames() {
        let now = t0();
        let mut p = Playout::new(
            now,
            PlayoutConfig::default(),
            RtpStart {
                payload_type: 8,
                codec: Codec::Pcma,
                ..start()
            },
        );
        p.handle_timeout(now);
        let out = drain(&mut p);
        let k = rtp(&out)[0];
        assert_eq!(k.payload, vec![0xd5; 160]);
    }

    #[test]
    fn inject_takes_the_relayed_stream_over_and_hands_it_back_where_it_ends() {
        let mut now = t0();
        let mut p = Playout::new(now, inject_cfg(), start());
        p.handle_command(now, BotCommand::Play(speech(480)));
        p.handle_command(now, BotCommand::Mark("end".into()));
        // The relay's newest packet left 30 ms ago: the bot is two packet times on.
        let relayed = Relayed {
            ssrc: 0x1234_5678,
            seq: 1000,
            timestamp: 50_000,
            age: 30 * MS,
        };
        let out = run_relayed(&mut p, &mut now, t0() + 200 * MS, Some(relayed));
        assert_eq!(
            out.first(),
            Some(&Out::TakeOver),
            "nothing is sent before it"
        );
        let pk = rtp(&out);
        assert_eq!(pk.len(), 3);
        assert_eq!(
            (pk[0].ssrc, pk[0].seq, pk[0].ts, pk[0].marker),
            (0x1234_5678, 1001, 50_320, true)
        );
        assert_eq!((pk[2].seq, pk[2].ts), (1003, 50_640));
        let back = StreamPosition {
            ssrc: 0x1234_5678,
            seq: 1004,
            timestamp: 50_800,
        };
        let end = out.iter().position(|o| *o == Out::HandBack(back));
        let mark = out.iter().position(|o| *o == Out::Mark("end".into()));
        assert!(
            end.is_some() && mark.is_some(),
            "handed back where the bot stopped: {out:?}"
        );
        assert_eq!(p.poll_timeout(), None, "idle while the relay has it");
        assert_eq!((p.stats().take_overs, p.stats().hand_backs), (1, 1));

        // The relay carried the stream on, renumbered from there: the next talkspurt continues
        // after its newest packet.
        let relayed = Relayed {
            ssrc: 0x1234_5678,
            seq: 1054,
            timestamp: 58_800,
            age: 5 * MS,
        };
        p.handle_command(now, BotCommand::Play(speech(160)));
        p.handle_command(now, BotCommand::Mark("m".into()));
        let until = now + 100 * MS;
        let out = run_relayed(&mut p, &mut now, until, Some(relayed));
        let pk = rtp(&out);
        assert_eq!((pk[0].seq, pk[0].ts, pk[0].marker), (1055, 58_960, true));
    }

    #[test]
    fn inject_never_steps_the_stream_back_when_the_relay_sent_nothing_since() {
        let mut now = t0();
        let mut p = Playout::new(now, inject_cfg(), start());
        let old = Relayed {
            ssrc: 9,
            seq: 500,
            timestamp: 1_000,
            age: 20 * MS,
        };
        p.handle_command(now, BotCommand::Play(speech(320)));
        p.handle_command(now, BotCommand::Mark("a".into()));
        let out = run_relayed(&mut p, &mut now, t0() + 100 * MS, Some(old));
        let last = rtp(&out).last().map(|k| (k.seq, k.ts)).expect("sent");
        assert_eq!(last, (502, 1_320));
        // 200 ms later the relay still shows its packet from before the first talkspurt.
        now += 200 * MS;
        p.handle_command(now, BotCommand::Play(speech(160)));
        p.handle_command(now, BotCommand::Mark("b".into()));
        let until = now + 100 * MS;
        let out = run_relayed(&mut p, &mut now, until, Some(old));
        let pk = rtp(&out);
        assert_eq!(pk[0].seq, 503, "own numbering goes on");
        assert!(
            pk[0].ts.wrapping_sub(last.1) >= 160 * 10,
            "the timestamp counts the time the relay had the stream"
        );
    }

    #[test]
    fn inject_clear_and_release_hand_the_stream_back_at_once() {
        let mut now = t0();
        let mut p = Playout::new(now, inject_cfg(), start());
        p.handle_command(now, BotCommand::Play(speech(8000)));
        let out = run(&mut p, &mut now, t0() + 100 * MS);
        let sent = rtp(&out).len() as u16;
        assert!(sent >= 3);
        p.handle_command(now, BotCommand::Clear);
        let out = drain(&mut p);
        assert_eq!(
            out.last(),
            Some(&Out::HandBack(StreamPosition {
                ssrc: 0xdead_beef,
                seq: 65534u16.wrapping_add(sent),
                timestamp: (u32::MAX - 200).wrapping_add(160 * u32::from(sent)),
            }))
        );
        assert_eq!(p.release(), None, "already handed back");
        // A bot leaving mid-utterance: the shell releases the stream.
        p.handle_command(now, BotCommand::Play(speech(8000)));
        let until = now + 100 * MS;
        run(&mut p, &mut now, until);
        let at = p.release().expect("held");
        assert_eq!(at.ssrc, 0xdead_beef);
        assert_eq!(p.poll_timeout(), None, "nothing more is sent");
    }

    #[test]
    fn inject_take_over_refused_drops_the_talkspurt_and_sends_nothing() {
        let now = t0();
        let mut p = Playout::new(now, inject_cfg(), start());
        p.handle_command(now, BotCommand::Play(speech(800)));
        p.handle_command(now, BotCommand::Mark("m".into()));
        p.handle_timeout(now + 40 * MS);
        assert_eq!(drain(&mut p), [Out::TakeOver]);
        assert_eq!(p.poll_timeout(), None, "waits for the answer");
        p.handle_take_over_failed(now + 41 * MS);
        assert_eq!(drain(&mut p), [Out::Mark("m".into())]);
        assert_eq!(p.stats().samples_cleared, 800);
        assert_eq!((p.stats().packets, p.release()), (0, None));
    }

    #[test]
    fn mix_sums_the_party_into_the_bot_while_it_talks_only() {
        let mut now = t0();
        let cfg = PlayoutConfig {
            mix: true,
            ..inject_cfg()
        };
        let mut p = Playout::new(now, cfg, start());
        // Before the bot holds the stream, the relay carries the party: nothing is kept.
        p.handle_party_audio(&[1000; 160]);
        p.handle_command(now, BotCommand::Play(vec![2000; 320]));
        p.handle_command(now, BotCommand::Mark("m".into()));
        p.handle_timeout(now + 40 * MS);
        assert_eq!(drain(&mut p), [Out::TakeOver]);
        now += 40 * MS;
        p.handle_party_audio(&[1000; 160]);
        p.handle_taken_over(now, None);
        let out = drain(&mut p);
        let pk = rtp(&out);
        assert_eq!(pk.len(), 1);
        assert!(pk[0]
            .payload
            .iter()
            .all(|&b| b == speech_proto::linear_to_ulaw(3000)));
        // The party fell silent (no frame): the bot alone, then its tail with nothing to mix.
        let until = now + 20 * MS;
        let out = run(&mut p, &mut now, until);
        assert!(rtp(&out)[0]
            .payload
            .iter()
            .all(|&b| b == speech_proto::linear_to_ulaw(2000)));
    }

    #[test]
    fn clear_marks_forgets_the_servers_marks_and_keeps_the_audio_and_the_dialects_own() {
        let mut now = t0();
        let mut p = Playout::new(now, PlayoutConfig::default(), start());
        p.handle_command(now, BotCommand::Play(speech(160)));
        p.handle_command(now, BotCommand::Mark("a".into()));
        p.handle_command(now, BotCommand::Play(speech(160)));
        p.handle_command(now, BotCommand::Mark("\u{1}own".into()));
        p.handle_command(now, BotCommand::Mark("b".into()));
        p.handle_command(now, BotCommand::ClearMarks);
        p.handle_command(now, BotCommand::Play(speech(160)));
        p.handle_command(now, BotCommand::Mark("c".into()));
        let out = run(&mut p, &mut now, t0() + 200 * MS);
        let marks: Vec<&Out> = out.iter().filter(|o| matches!(o, Out::Mark(_))).collect();
        assert_eq!(
            marks,
            [&Out::Mark("\u{1}own".into()), &Out::Mark("c".into())],
            "a and b forgotten, the dialect's own and a later one reported"
        );
        let audio = rtp(&out)
            .iter()
            .filter(|k| k.payload != vec![0xff; 160])
            .count();
        assert_eq!(audio, 3, "every frame of audio still played");
        assert_eq!(p.stats().marks_forgotten, 2);
    }
}
