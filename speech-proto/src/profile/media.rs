//! The binary audio path of the AudioHook, jambonz and raw dialects: G.711 frames of the two
//! parties in, binary frames of the configured [`AudioFormat`] out.
//!
//! Input: each audio frame of a live stream ([`MediaPipe::push`], in arrival order) and each
//! change of a party's liveness ([`MediaPipe::set_live`]: start, pause, resume, stop). Output:
//! binary [`WireFrame`]s appended to the caller's vector, and how many 8 kHz samples per
//! channel they carry (AudioHook's `position`).
//!
//! Steps, each done once per frame:
//! 1. Layout `mono-*`: frames of the other party are not carried. At 8 kHz with a G.711
//!    output the payload bytes are copied (same law) or transcoded by table, never decoded.
//! 2. Otherwise the payload is decoded to linear ([`Codec::decode`]).
//! 3. Layouts `stereo` and `mixed` pair the parties' samples in an [`Aligner`].
//! 4. At 16 kHz each output channel goes through its own [`Upsampler`] (mixed: the sum does).
//! 5. Samples are encoded (µ-law, A-law, little-endian L16) into the frame, interleaved
//!    caller-first for stereo.
//!
//! Memory is bounded and allocated once: scratch buffers grow to the largest frame seen, at
//! most [`MAX_CHUNK`] samples (a longer payload is processed in chunks); the only allocation
//! per frame is the output frame itself.

use crate::pcm::{write_l16le, Upsampler};
use crate::{alaw_to_ulaw, linear_to_alaw, linear_to_ulaw, ulaw_to_alaw, Channel, Codec};

use super::call::{idx, AudioIn, Call, Change};
use super::{AudioEncoding, AudioFormat, DialectStats, Layout, WireFrame};

/// Longest run of samples processed at once (more than an AF_XDP frame can carry).
pub(super) const MAX_CHUNK: usize = 4096;

static SILENCE: [i16; MAX_CHUNK] = [0; MAX_CHUNK];

/// Pairs the two parties' samples for one stereo or mixed stream.
///
/// Rule, per frame of party P: if P still has samples waiting (its previous frame found no
/// partner), they go out now with silence for the other party; then P's frame waits for the
/// other party's next frame, and whatever both have goes out as pairs. A party that is not
/// live (not started, paused, stopped) never makes the other wait: its share is silence at
/// once. So at most one party has samples waiting, at most one frame's worth, and audio is
/// delayed by at most one frame of the other party.
#[derive(Debug, Default)]
pub(super) struct Aligner {
    fifo: [Vec<i16>; 2],
    live: [bool; 2],
}

impl Aligner {
    /// Queues `samples` of party `i` (0 = caller); `emit(caller, callee)` receives each pair
    /// of equal-length runs that can go out.
    pub fn push(&mut self, i: usize, samples: &[i16], emit: &mut impl FnMut(&[i16], &[i16])) {
        let other = 1 - i;
        if !self.fifo[i].is_empty() {
            self.flush(i, emit);
        }
        self.fifo[i].extend_from_slice(samples);
        if !self.live[other] {
            self.flush(i, emit);
            return;
        }
        let n = self.fifo[0].len().min(self.fifo[1].len());
        if n > 0 {
            emit(&self.fifo[0][..n], &self.fifo[1][..n]);
            self.fifo[0].drain(..n);
            self.fifo[1].drain(..n);
        }
    }

    /// Records whether party `i` will send audio; when it will not, nothing waits for it.
    pub fn set_live(&mut self, i: usize, live: bool, emit: &mut impl FnMut(&[i16], &[i16])) {
        self.live[i] = live;
        if !live {
            self.flush_all(emit);
        }
    }

    /// Sends every waiting sample with silence for the other party.
    pub fn flush_all(&mut self, emit: &mut impl FnMut(&[i16], &[i16])) {
        self.flush(0, emit);
        self.flush(1, emit);
    }

    /// Sends party `i`'s waiting samples with silence for the other party.
    fn flush(&mut self, i: usize, emit: &mut impl FnMut(&[i16], &[i16])) {
        let n = self.fifo[i].len();
        if n == 0 {
            return;
        }
        if i == 0 {
            emit(&self.fifo[0], &SILENCE[..n]);
        } else {
            emit(&SILENCE[..n], &self.fifo[1]);
        }
        self.fifo[i].clear();
    }
}

/// Appends G.711 `payload` (in `codec`) to `out` in the law of `target` (copy or transcode).
pub(super) fn g711_bytes(codec: Codec, target: AudioEncoding, payload: &[u8], out: &mut Vec<u8>) {
    match (codec, target) {
        (Codec::Pcma, AudioEncoding::Ulaw) => out.extend(payload.iter().map(|&b| alaw_to_ulaw(b))),
        (Codec::Pcmu, AudioEncoding::Alaw) => out.extend(payload.iter().map(|&b| ulaw_to_alaw(b))),
        _ => out.extend_from_slice(payload),
    }
}

fn encode(enc: AudioEncoding, samples: &[i16], out: &mut Vec<u8>) {
    match enc {
        AudioEncoding::Ulaw => out.extend(samples.iter().map(|&s| linear_to_ulaw(s))),
        AudioEncoding::Alaw => out.extend(samples.iter().map(|&s| linear_to_alaw(s))),
        AudioEncoding::L16 => write_l16le(samples, out),
    }
}

fn encode_interleaved(enc: AudioEncoding, left: &[i16], right: &[i16], out: &mut Vec<u8>) {
    for (&l, &r) in left.iter().zip(right) {
        match enc {
            AudioEncoding::Ulaw => out.extend_from_slice(&[linear_to_ulaw(l), linear_to_ulaw(r)]),
            AudioEncoding::Alaw => out.extend_from_slice(&[linear_to_alaw(l), linear_to_alaw(r)]),
            AudioEncoding::L16 => {
                out.extend_from_slice(&l.to_le_bytes());
                out.extend_from_slice(&r.to_le_bytes());
            }
        }
    }
}

/// The samples at the output rate: `input` itself at 8 kHz, else upsampled into `scratch`.
fn at_rate<'a>(
    rate: u32,
    up: &mut Upsampler,
    input: &'a [i16],
    scratch: &'a mut Vec<i16>,
) -> &'a [i16] {
    if rate == 8000 {
        return input;
    }
    scratch.clear();
    up.process(input, scratch);
    scratch
}

/// Per-output-channel state and scratch space (split from the aligner so both can be
/// borrowed at once).
#[derive(Debug)]
struct Output {
    format: AudioFormat,
    up: [Upsampler; 2],
    mix: Vec<i16>,
    resampled: [Vec<i16>; 2],
}

impl Output {
    fn frame(&self, samples: usize) -> Vec<u8> {
        let per = if self.format.rate == 16000 { 2 } else { 1 };
        Vec::with_capacity(
            samples * per * self.format.layout.channels() * self.format.encoding.sample_bytes(),
        )
    }

    fn mono(&mut self, samples: &[i16], out: &mut Vec<WireFrame>) {
        let mut frame = self.frame(samples.len());
        let s = at_rate(
            self.format.rate,
            &mut self.up[0],
            samples,
            &mut self.resampled[0],
        );
        encode(self.format.encoding, s, &mut frame);
        out.push(WireFrame::Binary(frame));
    }

    fn pair(&mut self, caller: &[i16], callee: &[i16], out: &mut Vec<WireFrame>) {
        if self.format.layout == Layout::Mixed {
            let mut mix = std::mem::take(&mut self.mix);
            mix.clear();
            mix.extend(caller.iter().zip(callee).map(|(a, b)| a.saturating_add(*b)));
            self.mono(&mix, out);
            self.mix = mix;
            return;
        }
        let mut frame = self.frame(caller.len());
        let [up0, up1] = &mut self.up;
        let [res0, res1] = &mut self.resampled;
        let l = at_rate(self.format.rate, up0, caller, res0);
        let r = at_rate(self.format.rate, up1, callee, res1);
        encode_interleaved(self.format.encoding, l, r, &mut frame);
        out.push(WireFrame::Binary(frame));
    }
}

/// The binary audio path of one connection. See the module docs.
#[derive(Debug)]
pub(super) struct MediaPipe {
    aligner: Aligner,
    output: Output,
    linear: Vec<i16>,
}

impl MediaPipe {
    /// A path producing `format` (any layout but `per-track`).
    pub fn new(format: AudioFormat) -> Self {
        MediaPipe {
            aligner: Aligner::default(),
            output: Output {
                format,
                up: [Upsampler::new(), Upsampler::new()],
                mix: Vec::new(),
                resampled: [Vec::new(), Vec::new()],
            },
            linear: Vec::new(),
        }
    }

    /// The format produced.
    pub fn format(&self) -> AudioFormat {
        self.output.format
    }

    /// Whether the layout carries this party's audio.
    pub fn carries(&self, ch: Channel) -> bool {
        match self.output.format.layout {
            Layout::MonoCaller => ch == Channel::Caller,
            Layout::MonoCallee => ch == Channel::Callee,
            _ => true,
        }
    }

    /// One frame of a live, carried party. Returns the 8 kHz samples per channel sent.
    pub fn push(&mut self, audio: &AudioIn<'_>, out: &mut Vec<WireFrame>) -> u64 {
        audio
            .payload
            .chunks(MAX_CHUNK)
            .map(|chunk| self.push_chunk(audio.channel, audio.codec, chunk, out))
            .sum()
    }

    fn push_chunk(
        &mut self,
        ch: Channel,
        codec: Codec,
        payload: &[u8],
        out: &mut Vec<WireFrame>,
    ) -> u64 {
        let format = self.output.format;
        if format.layout.channels() == 1 && format.layout != Layout::Mixed {
            if format.rate == 8000 && format.encoding != AudioEncoding::L16 {
                let mut frame = Vec::with_capacity(payload.len());
                g711_bytes(codec, format.encoding, payload, &mut frame);
                out.push(WireFrame::Binary(frame));
            } else {
                self.linear.clear();
                self.linear.extend(payload.iter().map(|&b| codec.decode(b)));
                self.output.mono(&self.linear, out);
            }
            return payload.len() as u64;
        }
        self.linear.clear();
        self.linear.extend(payload.iter().map(|&b| codec.decode(b)));
        let Self {
            aligner,
            output,
            linear,
        } = self;
        let mut sent = 0;
        aligner.push(idx(ch), linear, &mut |a, b| {
            sent += a.len() as u64;
            output.pair(a, b, out);
        });
        sent
    }

    /// Follows a change of the call: parties starting, resuming, pausing, stopping (the other
    /// changes do not concern the audio). Returns the 8 kHz samples per channel sent.
    pub fn follow(&mut self, change: &Change<'_>, out: &mut Vec<WireFrame>) -> u64 {
        match change {
            Change::Started(ch) | Change::Resumed(ch) => self.set_live(*ch, true, out),
            Change::Paused(ch) | Change::Stopped(ch) => self.set_live(*ch, false, out),
            Change::Updated(_) | Change::Dtmf(..) | Change::Ignored => 0,
        }
    }

    /// One audio frame of the service for `call`: sent, or counted in `stats` as invalid or
    /// not carried. Returns the 8 kHz samples per channel sent.
    pub fn route(
        &mut self,
        call: &Call,
        frame: &[u8],
        stats: &mut DialectStats,
        out: &mut Vec<WireFrame>,
    ) -> u64 {
        stats.audio_in += 1;
        match call.audio(frame) {
            None => {
                stats.audio_invalid += 1;
                0
            }
            Some(a) if !self.carries(a.channel) => {
                stats.audio_not_carried += 1;
                0
            }
            Some(a) => self.push(&a, out),
        }
    }

    /// Sends every waiting sample, with silence for the party it waited for (before a pause or
    /// the end). Returns the 8 kHz samples per channel sent.
    pub fn flush(&mut self, out: &mut Vec<WireFrame>) -> u64 {
        let Self {
            aligner, output, ..
        } = self;
        let mut sent = 0;
        aligner.flush_all(&mut |a, b| {
            sent += a.len() as u64;
            output.pair(a, b, out);
        });
        sent
    }

    /// A party became live or stopped being live. Returns the 8 kHz samples per channel sent
    /// (samples that were waiting for this party go out with silence in its place).
    pub fn set_live(&mut self, ch: Channel, live: bool, out: &mut Vec<WireFrame>) -> u64 {
        let Self {
            aligner, output, ..
        } = self;
        let mut sent = 0;
        aligner.set_live(idx(ch), live, &mut |a, b| {
            sent += a.len() as u64;
            output.pair(a, b, out);
        });
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::call::testing::frame;
    use crate::profile::call::testing::start;
    use crate::profile::call::Call;
    use crate::ulaw_to_linear;

    fn pipe(encoding: AudioEncoding, rate: u32, layout: Layout) -> MediaPipe {
        MediaPipe::new(AudioFormat {
            encoding,
            rate,
            layout,
        })
    }

    fn binary(f: &WireFrame) -> &[u8] {
        match f {
            WireFrame::Binary(b) => b,
            WireFrame::Text(t) => panic!("text {t}"),
        }
    }

    /// Feeds one frame of `ch` (payload bytes in `codec`) through a call with both parties.
    fn feed(
        p: &mut MediaPipe,
        ch: Channel,
        codec: Codec,
        payload: &[u8],
        out: &mut Vec<WireFrame>,
    ) -> u64 {
        let mut call = Call::default();
        call.apply(&start(Channel::Caller, codec));
        call.apply(&start(Channel::Callee, codec));
        let f = frame(ch, codec, 1, 0, false, payload);
        let a = call.audio(&f).expect("live");
        p.push(&a, out)
    }

    fn both_live(p: &mut MediaPipe) {
        let mut out = Vec::new();
        p.set_live(Channel::Caller, true, &mut out);
        p.set_live(Channel::Callee, true, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn stereo_pairs_caller_first() {
        let mut p = pipe(AudioEncoding::Ulaw, 8000, Layout::Stereo);
        both_live(&mut p);
        let mut out = Vec::new();
        let caller: Vec<u8> = (0..160).map(|i| 0x80 + (i % 100) as u8).collect();
        let callee: Vec<u8> = (0..160).map(|i| (i % 100) as u8).collect();
        assert_eq!(
            feed(&mut p, Channel::Callee, Codec::Pcmu, &callee, &mut out),
            0
        );
        assert!(out.is_empty(), "waits for the caller");
        assert_eq!(
            feed(&mut p, Channel::Caller, Codec::Pcmu, &caller, &mut out),
            160
        );
        assert_eq!(out.len(), 1);
        let b = binary(&out[0]);
        assert_eq!(b.len(), 320);
        for i in 0..160 {
            assert_eq!(
                [b[2 * i], b[2 * i + 1]],
                [caller[i], callee[i]],
                "sample {i}"
            );
        }
    }

    #[test]
    fn a_party_that_falls_behind_gets_silence() {
        let mut p = pipe(AudioEncoding::L16, 8000, Layout::Stereo);
        both_live(&mut p);
        let mut out = Vec::new();
        feed(&mut p, Channel::Caller, Codec::Pcmu, &[0x80; 160], &mut out);
        assert!(out.is_empty());
        // The caller's next frame comes before any callee frame: the first goes out alone.
        feed(&mut p, Channel::Caller, Codec::Pcmu, &[0x81; 160], &mut out);
        assert_eq!(out.len(), 1);
        let b = binary(&out[0]);
        assert_eq!(b.len(), 640);
        let full = ulaw_to_linear(0x80).to_le_bytes();
        assert_eq!(&b[..4], &[full[0], full[1], 0, 0]);
        // The callee arrives and pairs with the second caller frame.
        feed(&mut p, Channel::Callee, Codec::Pcmu, &[0xFE; 160], &mut out);
        assert_eq!(out.len(), 2);
        let b = binary(&out[1]);
        let (l, r) = (
            ulaw_to_linear(0x81).to_le_bytes(),
            ulaw_to_linear(0xFE).to_le_bytes(),
        );
        assert_eq!(&b[..4], &[l[0], l[1], r[0], r[1]]);
    }

    #[test]
    fn a_party_that_is_not_live_never_makes_the_other_wait() {
        let mut p = pipe(AudioEncoding::Ulaw, 8000, Layout::Stereo);
        let mut out = Vec::new();
        p.set_live(Channel::Caller, true, &mut out);
        // Callee never started: caller frames go out at once, callee silent (µ-law 0 = 0xFF).
        feed(&mut p, Channel::Caller, Codec::Pcmu, &[0x90; 160], &mut out);
        assert_eq!(out.len(), 1);
        assert!(binary(&out[0]).chunks(2).all(|s| s == [0x90, 0xFF]));
        // Callee starts; a caller frame now waits, and the callee's hold flushes it.
        p.set_live(Channel::Callee, true, &mut out);
        feed(&mut p, Channel::Caller, Codec::Pcmu, &[0x91; 160], &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(p.set_live(Channel::Callee, false, &mut out), 160);
        assert_eq!(out.len(), 2);
        assert!(binary(&out[1]).chunks(2).all(|s| s == [0x91, 0xFF]));
    }

    #[test]
    fn unequal_frame_sizes_pair_sample_by_sample() {
        let mut p = pipe(AudioEncoding::Ulaw, 8000, Layout::Stereo);
        both_live(&mut p);
        let mut out = Vec::new();
        let mut sent = 0;
        // Caller 20 ms frames at 0, 20, .. 100 ms; callee 30 ms frames at 0, 30, 60, 90 ms; in
        // arrival order (the caller first on ties).
        for t in (0..120).step_by(10) {
            if t % 20 == 0 {
                sent += feed(&mut p, Channel::Caller, Codec::Pcmu, &[0x80; 160], &mut out);
            }
            if t % 30 == 0 {
                sent += feed(&mut p, Channel::Callee, Codec::Pcmu, &[0x00; 240], &mut out);
            }
        }
        // 6 × 160 caller samples = 4 × 240 callee samples, all paired, none silenced.
        assert_eq!(sent, 960);
        let all: Vec<u8> = out.iter().flat_map(|f| binary(f).to_vec()).collect();
        assert_eq!(all.len(), 1920);
        assert!(all.chunks(2).all(|s| s == [0x80, 0x00]));
    }

    #[test]
    fn mixed_sums_and_saturates() {
        let mut p = pipe(AudioEncoding::L16, 8000, Layout::Mixed);
        both_live(&mut p);
        let mut out = Vec::new();
        feed(
            &mut p,
            Channel::Caller,
            Codec::Pcmu,
            &[0x80, 0xFE],
            &mut out,
        );
        feed(
            &mut p,
            Channel::Callee,
            Codec::Pcmu,
            &[0x80, 0xFE],
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let b = binary(&out[0]);
        // 32124 + 32124 saturates; 8 + 8 = 16.
        assert_eq!(b, [0xFF, 0x7F, 16, 0]);
    }

    #[test]
    fn mono_g711_is_copied_or_transcoded_bit_exactly() {
        let payload: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        let mut p = pipe(AudioEncoding::Ulaw, 8000, Layout::MonoCaller);
        feed(&mut p, Channel::Caller, Codec::Pcmu, &payload, &mut out);
        assert_eq!(binary(&out[0]), &payload[..]);
        feed(&mut p, Channel::Caller, Codec::Pcma, &payload, &mut out);
        let want: Vec<u8> = payload.iter().map(|&b| alaw_to_ulaw(b)).collect();
        assert_eq!(binary(&out[1]), &want[..]);
        assert!(p.carries(Channel::Caller) && !p.carries(Channel::Callee));
        let mut p = pipe(AudioEncoding::Alaw, 8000, Layout::MonoCallee);
        feed(&mut p, Channel::Callee, Codec::Pcmu, &payload, &mut out);
        let want: Vec<u8> = payload.iter().map(|&b| ulaw_to_alaw(b)).collect();
        assert_eq!(binary(&out[2]), &want[..]);
    }

    #[test]
    fn sixteen_khz_doubles_every_channel() {
        let mut p = pipe(AudioEncoding::L16, 16000, Layout::Stereo);
        both_live(&mut p);
        let mut out = Vec::new();
        feed(&mut p, Channel::Caller, Codec::Pcmu, &[0x80; 160], &mut out);
        feed(&mut p, Channel::Callee, Codec::Pcma, &[0xD5; 160], &mut out);
        assert_eq!(binary(&out[0]).len(), 160 * 2 * 2 * 2);
        let mut p = pipe(AudioEncoding::Ulaw, 16000, Layout::MonoCaller);
        feed(&mut p, Channel::Caller, Codec::Pcmu, &[0x80; 160], &mut out);
        assert_eq!(binary(&out[1]).len(), 320);
    }

    #[test]
    fn long_payloads_are_chunked_not_dropped() {
        let mut p = pipe(AudioEncoding::L16, 8000, Layout::MonoCaller);
        let mut out = Vec::new();
        let sent = feed(
            &mut p,
            Channel::Caller,
            Codec::Pcmu,
            &vec![0xFF; MAX_CHUNK + 10],
            &mut out,
        );
        assert_eq!(sent, MAX_CHUNK as u64 + 10);
        assert_eq!(out.len(), 2);
    }
}
