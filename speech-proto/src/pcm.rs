//! 8 kHz → 16 kHz resampling of 16-bit linear PCM, once per frame, without allocating.
//!
//! [`Upsampler`] is a half-band interpolator with per-stream state carried across frames: feed
//! it each frame of one stream in order ([`Upsampler::process`]) and it appends exactly two
//! output samples per input sample to the caller's buffer. A half-band filter passes every
//! even output sample straight through (its centre tap is the only non-zero even tap), so only
//! the odd outputs cost a multiply-accumulate over [`HALF_BAND`].
//!
//! Response (computed in the tests from the coefficients): DC gain exactly 1 (the odd-phase
//! taps sum to 32768 in Q15, so a constant input comes out unchanged), passband within
//! ±0.02 dB up to 3.4 kHz, −6 dB at 4 kHz (the half-band point), images at or above 4.6 kHz
//! attenuated by at least 52 dB. Group delay: [`UPSAMPLER_DELAY`] input samples (1.5 ms); the
//! first output samples of a stream carry the zero history.

/// Odd-phase taps in Q15 (sum 16384, applied to each symmetric pair of inputs): a windowed
/// sinc, `c[k] = sinc(k + ½) · I0(β·√(1 − ((k + ½)/12)²)) / I0(β)` with β = 5, normalised so
/// that Σc = ½, rounded, `c[0]` adjusted so the sum is exact. The test
/// `coefficients_are_the_documented_design` recomputes them.
pub const HALF_BAND: [i32; 12] = [
    20798, -6720, 3787, -2458, 1677, -1159, 795, -531, 341, -206, 113, -53,
];

const K: usize = HALF_BAND.len();

/// Delay of [`Upsampler`] in input (8 kHz) samples: output `2n` is input `n - 12`.
pub const UPSAMPLER_DELAY: usize = K;

/// Half-band 2× interpolator for one stream. See the module docs.
#[derive(Debug, Clone)]
pub struct Upsampler {
    /// The last `2K` inputs, stored twice so the window is always one contiguous slice.
    ring: [i16; 4 * K],
    /// Index of the newest input in the first copy.
    pos: usize,
}

impl Default for Upsampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Upsampler {
    /// An upsampler whose history is silence.
    pub fn new() -> Self {
        Upsampler {
            ring: [0; 4 * K],
            pos: 2 * K - 1,
        }
    }

    /// Forgets the history (a new segment of the stream that does not continue the last one).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Appends `2 × input.len()` samples at 16 kHz to `out`. Allocates only if `out` lacks the
    /// capacity; reuse one buffer per stream to avoid allocating per frame.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        out.reserve(2 * input.len());
        for &x in input {
            self.pos = (self.pos + 1) % (2 * K);
            self.ring[self.pos] = x;
            self.ring[self.pos + 2 * K] = x;
            // Oldest first: w[K - 1] is the centre input x[n - K]; w[K - 1 - k] and w[K + k]
            // are the pair weighted by c[k].
            let w = &self.ring[self.pos + 1..=self.pos + 2 * K];
            let mut acc: i64 = 1 << 14;
            for (k, c) in HALF_BAND.iter().enumerate() {
                acc += i64::from(*c) * (i64::from(w[K - 1 - k]) + i64::from(w[K + k]));
            }
            out.push(w[K - 1]);
            // The taps' absolute sum exceeds 1, so a full-scale input can overshoot: saturate.
            out.push((acc >> 15).clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16);
        }
    }
}

/// Half-band 2:1 decimator (16 kHz → 8 kHz) for one stream: the same filter as [`Upsampler`]
/// at half its gain (centre tap ½, the odd taps halved), so the response is the one documented
/// above: flat to 3.4 kHz, what lies above 4.6 kHz attenuated by at least 52 dB before it could
/// alias. State is carried across frames (an odd sample waits for its pair). Used for a voice
/// bot's 16 kHz audio (docs/speech-protocol.md §16). Delay: [`UPSAMPLER_DELAY`] output samples.
#[derive(Debug, Clone)]
pub struct Downsampler {
    /// The last `4K` inputs, oldest first.
    hist: [i16; 4 * K],
    /// Inputs taken since the last output (0 or 1).
    odd: bool,
}

impl Default for Downsampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Downsampler {
    /// A decimator whose history is silence.
    pub fn new() -> Self {
        Downsampler {
            hist: [0; 4 * K],
            odd: false,
        }
    }

    /// Appends one 8 kHz sample per two 16 kHz inputs to `out` (an odd last input waits for
    /// the next call).
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        out.reserve(input.len() / 2 + 1);
        for &x in input {
            self.hist.copy_within(1.., 0);
            self.hist[4 * K - 1] = x;
            self.odd = !self.odd;
            if self.odd {
                continue;
            }
            // Centre: hist[2K - 1]; the pair weighted by c[k] is (2k + 1) either side of it.
            let c0 = 2 * K - 1;
            let mut acc: i64 = i64::from(self.hist[c0]) * 32768 + (1 << 15);
            for (k, c) in HALF_BAND.iter().enumerate() {
                let d = 2 * k + 1;
                acc +=
                    i64::from(*c) * (i64::from(self.hist[c0 - d]) + i64::from(self.hist[c0 + d]));
            }
            out.push((acc >> 16).clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16);
        }
    }
}

/// Appends 16-bit little-endian PCM (L16 as jambonz and most ASR services take it).
pub fn write_l16le(samples: &[i16], out: &mut Vec<u8>) {
    out.reserve(2 * samples.len());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    /// Modified Bessel function of the first kind, order 0 (power series).
    fn bessel_i0(x: f64) -> f64 {
        let (mut sum, mut term) = (1.0, 1.0);
        for k in 1..50 {
            term *= (x / 2.0) * (x / 2.0) / f64::from(k * k);
            sum += term;
        }
        sum
    }

    #[test]
    fn coefficients_are_the_documented_design() {
        let beta = 5.0;
        let raw: Vec<f64> = (0..K)
            .map(|k| {
                let t = k as f64 + 0.5;
                let sinc = (PI * t).sin() / (PI * t);
                let w = bessel_i0(beta * (1.0 - (t / K as f64).powi(2)).sqrt()) / bessel_i0(beta);
                sinc * w
            })
            .collect();
        let sum: f64 = raw.iter().sum();
        let mut q: Vec<i32> = raw
            .iter()
            .map(|c| (c / (2.0 * sum) * 32768.0).round() as i32)
            .collect();
        q[0] += 16384 - q.iter().sum::<i32>();
        assert_eq!(q, HALF_BAND);
        assert_eq!(HALF_BAND.iter().sum::<i32>(), 16384);
    }

    /// Gain of the interpolator at frequency `f` (Hz, output rate 16 kHz), 1.0 = unity.
    fn gain(f: f64) -> f64 {
        let w = 2.0 * PI * f / 16000.0;
        let odd: f64 = HALF_BAND
            .iter()
            .enumerate()
            .map(|(k, c)| 2.0 * f64::from(*c) * (w * (2 * k + 1) as f64).cos())
            .sum();
        // Zero-stuffing halves the level; the centre tap (1.0) and the odd taps restore it.
        (1.0 + odd / 32768.0) / 2.0
    }

    #[test]
    fn documented_response() {
        let db = |f: f64| 20.0 * gain(f).abs().log10();
        for f in (0..=3400).step_by(50) {
            assert!(
                db(f64::from(f)).abs() < 0.02,
                "{f} Hz: {} dB",
                db(f64::from(f))
            );
        }
        assert!((db(4000.0) + 6.02).abs() < 0.01);
        for f in (4600..=8000).step_by(50) {
            assert!(db(f64::from(f)) < -52.0, "{f} Hz: {} dB", db(f64::from(f)));
        }
    }

    #[test]
    fn the_decimator_passes_dc_and_speech_band_and_stops_what_would_alias() {
        let mut down = Downsampler::new();
        let mut out = Vec::new();
        // Frames of odd length: the pairing survives the frame boundaries.
        for _ in 0..20 {
            down.process(&[5000; 161], &mut out);
        }
        assert_eq!(out.len(), 20 * 161 / 2);
        assert!(
            out[50..].iter().all(|&v| v == 5000),
            "DC exact after the delay"
        );
        let level = |hz: f64| {
            let x: Vec<i16> = (0..16000)
                .map(|i| (10000.0 * (2.0 * PI * hz * f64::from(i) / 16000.0).sin()) as i16)
                .collect();
            let mut d = Downsampler::new();
            let mut y = Vec::new();
            d.process(&x, &mut y);
            let rms = (y[100..].iter().map(|&v| f64::from(v).powi(2)).sum::<f64>()
                / (y.len() - 100) as f64)
                .sqrt();
            20.0 * (rms / (10000.0 / 2f64.sqrt())).log10()
        };
        assert!(level(1000.0).abs() < 0.1, "1 kHz: {} dB", level(1000.0));
        assert!(level(3000.0).abs() < 0.1, "3 kHz: {} dB", level(3000.0));
        assert!(
            level(6000.0) < -50.0,
            "6 kHz would alias to 2 kHz: {} dB",
            level(6000.0)
        );
    }

    #[test]
    fn passes_dc_exactly_across_frames() {
        for v in [i16::MIN, -12345, -1, 0, 1, 777, i16::MAX] {
            let mut up = Upsampler::new();
            let mut out = Vec::new();
            for _ in 0..3 {
                up.process(&[v; 160], &mut out);
            }
            assert_eq!(out.len(), 960);
            // After the history of zeros has left the window, every sample is exactly v.
            assert!(out[4 * K..].iter().all(|&s| s == v), "{v}");
        }
    }

    #[test]
    fn sine_1khz_matches_the_ideal_16khz_sine() {
        let amp = 12000.0;
        let input: Vec<i16> = (0..8000)
            .map(|n| (amp * (2.0 * PI * 1000.0 * f64::from(n) / 8000.0).sin()).round() as i16)
            .collect();
        let mut up = Upsampler::new();
        let mut out = Vec::with_capacity(16000);
        for frame in input.chunks(160) {
            up.process(frame, &mut out);
        }
        assert_eq!(out.len(), 16000);
        // Output o is input time o/2 - K (8 kHz samples): compare after the warm-up.
        let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
        for (o, &y) in out.iter().enumerate().skip(4 * K) {
            let t = (o as f64 / 2.0 - K as f64) / 8000.0;
            let ideal = amp * (2.0 * PI * 1000.0 * t).sin();
            sxy += ideal * f64::from(y);
            sxx += ideal * ideal;
            syy += f64::from(y) * f64::from(y);
        }
        let corr = sxy / (sxx * syy).sqrt();
        assert!(corr >= 0.999, "correlation {corr}");
    }

    #[test]
    fn frame_boundaries_do_not_matter() {
        let input: Vec<i16> = (0..480)
            .map(|n| ((n * 7919) % 20000 - 10000) as i16)
            .collect();
        let (mut a, mut b) = (Upsampler::new(), Upsampler::new());
        let (mut whole, mut split) = (Vec::new(), Vec::new());
        a.process(&input, &mut whole);
        for chunk in input.chunks(37) {
            b.process(chunk, &mut split);
        }
        assert_eq!(whole, split);
    }

    #[test]
    fn full_scale_square_wave_saturates_instead_of_wrapping() {
        let input: Vec<i16> = (0..320)
            .map(|n| if (n / 4) % 2 == 0 { i16::MAX } else { i16::MIN })
            .collect();
        let mut up = Upsampler::new();
        let mut out = Vec::new();
        up.process(&input, &mut out);
        // Overshoot of the odd phase is clamped, never wrapped to the opposite sign.
        for pair in out[4 * K..].windows(3).step_by(2) {
            if pair[0] == i16::MAX && pair[2] == i16::MAX {
                assert!(pair[1] > 0, "{pair:?}");
            }
        }
    }

    #[test]
    fn l16_is_little_endian() {
        let mut out = vec![9];
        write_l16le(&[1, -2, 0x1234], &mut out);
        assert_eq!(out, [9, 0x01, 0x00, 0xFE, 0xFF, 0x34, 0x12]);
    }
}
