//! G.711 (ITU-T G.711 (11/88) tables 1a/2a): expansion of one 8-bit code to 16-bit linear PCM,
//! compression of 16-bit linear PCM to a code, and µ-law ↔ A-law transcoding.
//!
//! Input: one µ-law or A-law byte as carried in RTP payload types 0 and 8, or one 16-bit
//! linear sample. Output: the decoder output value of the ITU tables, scaled to 16-bit (µ-law
//! 14-bit × 4, A-law 13-bit × 8), or the code of the quantisation interval holding the sample.
//! The encoders are the ITU-T G.191 Software Tool Library reference (`ulaw_compress`,
//! `alaw_compress`). Transcoding goes through linear (decode, then encode), as Asterisk and
//! FreeSWITCH do, so a transcoded sample lands in the target law's interval that holds the
//! source law's decoded value. Every table is computed at compile time; no call allocates.

/// µ-law bias added before the segment shift (G.711 §2, 33 in 14-bit units, ×4 = 0x84).
const ULAW_BIAS: i32 = 0x84;

const fn ulaw_decode(code: u8) -> i16 {
    // Codes are transmitted with all bits inverted (G.711 table 2a, "character signal").
    let u = !code as i32;
    let mantissa = u & 0x0F;
    let exponent = (u >> 4) & 0x07;
    let magnitude = ((mantissa << 3) + ULAW_BIAS) << exponent;
    let value = magnitude - ULAW_BIAS;
    if u & 0x80 != 0 {
        -value as i16
    } else {
        value as i16
    }
}

const fn alaw_decode(code: u8) -> i16 {
    // Even bits are inverted on the line (G.711 table 1a note: "alternate digit inversion").
    let a = (code ^ 0x55) as i32;
    let mantissa = (a & 0x0F) << 4;
    let segment = (a >> 4) & 0x07;
    let magnitude = match segment {
        0 => mantissa + 8,
        1 => mantissa + 0x108,
        s => (mantissa + 0x108) << (s - 1),
    };
    // A-law sign bit 1 means positive.
    if a & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

const fn table(alaw: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if alaw {
            alaw_decode(i as u8)
        } else {
            ulaw_decode(i as u8)
        };
        i += 1;
    }
    t
}

static ULAW: [i16; 256] = table(false);
static ALAW: [i16; 256] = table(true);

/// ITU-T G.191 `ulaw_compress`: the 14 most significant bits of a 16-bit sample to µ-law.
const fn ulaw_encode(x: i16) -> u8 {
    let x = x as i32;
    // One's complement for negatives, as G.191 does, so -1 and 0 land in the same interval.
    let mut absno = if x < 0 { (!x) >> 2 } else { x >> 2 };
    absno += ULAW_BIAS >> 2;
    if absno > 0x1FFF {
        absno = 0x1FFF;
    }
    let mut i = absno >> 6;
    let mut segno = 1;
    while i != 0 {
        segno += 1;
        i >>= 1;
    }
    let high_nibble = 0x08 - segno;
    let low_nibble = 0x0F - ((absno >> segno) & 0x0F);
    let y = (high_nibble << 4) | low_nibble;
    if x >= 0 {
        (y | 0x80) as u8
    } else {
        y as u8
    }
}

/// ITU-T G.191 `alaw_compress`: the 13 most significant bits of a 16-bit sample to A-law.
const fn alaw_encode(x: i16) -> u8 {
    let x = x as i32;
    let mut ix = if x < 0 { (!x) >> 4 } else { x >> 4 };
    if ix > 15 {
        let mut iexp = 1;
        while ix > 16 + 15 {
            ix >>= 1;
            iexp += 1;
        }
        ix -= 16;
        ix += iexp << 4;
    }
    if x >= 0 {
        ix |= 0x80;
    }
    (ix ^ 0x55) as u8
}

const fn transcode_table(from_alaw: bool) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if from_alaw {
            ulaw_encode(alaw_decode(i as u8))
        } else {
            alaw_encode(ulaw_decode(i as u8))
        };
        i += 1;
    }
    t
}

static ALAW_TO_ULAW: [u8; 256] = transcode_table(true);
static ULAW_TO_ALAW: [u8; 256] = transcode_table(false);

/// Encodes one 16-bit linear sample to G.711 µ-law (PCMU).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    ulaw_encode(sample)
}

/// Encodes one 16-bit linear sample to G.711 A-law (PCMA).
pub fn linear_to_alaw(sample: i16) -> u8 {
    alaw_encode(sample)
}

/// Transcodes one A-law byte to µ-law (through linear, see the module docs).
pub fn alaw_to_ulaw(code: u8) -> u8 {
    ALAW_TO_ULAW[code as usize]
}

/// Transcodes one µ-law byte to A-law (through linear, see the module docs).
pub fn ulaw_to_alaw(code: u8) -> u8 {
    ULAW_TO_ALAW[code as usize]
}

/// Decodes one G.711 µ-law byte (PCMU) to 16-bit linear PCM.
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW[code as usize]
}

/// Decodes one G.711 A-law byte (PCMA) to 16-bit linear PCM.
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW[code as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_values() {
        // Reference values of the ITU-T G.711 decoder (as in the G.191 STL `ulaw2linear`).
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0x7E), -8);
        assert_eq!(ulaw_to_linear(0xF0), 120);
        assert_eq!(ulaw_to_linear(0xEF), 132);
        assert_eq!(ulaw_to_linear(0x8F), 16764);
    }

    #[test]
    fn alaw_known_values() {
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(alaw_to_linear(0xD4), 24);
        assert_eq!(alaw_to_linear(0xC5), 264);
        assert_eq!(alaw_to_linear(0xF5), 528);
        assert_eq!(alaw_to_linear(0xE5), 1056);
    }

    #[test]
    fn sign_symmetry() {
        for c in 0..=0x7Fu8 {
            assert_eq!(ulaw_to_linear(c), -ulaw_to_linear(c | 0x80), "ulaw {c:#x}");
            assert_eq!(alaw_to_linear(c), -alaw_to_linear(c | 0x80), "alaw {c:#x}");
        }
    }

    /// Width of the quantisation interval of a µ-law code, in 16-bit units (G.711 table 2a:
    /// segment e has steps of 2^(e+1) in 14-bit units).
    fn ulaw_step(code: u8) -> i32 {
        8 << ((!code >> 4) & 0x07)
    }

    /// Width of the quantisation interval of an A-law code, in 16-bit units (G.711 table 1a:
    /// segments 0 and 1 have steps of 2 in 13-bit units, segment s >= 2 of 2^s).
    fn alaw_step(code: u8) -> i32 {
        let seg = ((code ^ 0x55) >> 4) & 0x07;
        16 << seg.saturating_sub(1)
    }

    #[test]
    fn encoders_match_g191_reference_values() {
        // Values of the G.191 STL encoders for these inputs.
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(8), 0xFE);
        assert_eq!(linear_to_ulaw(-8), 0x7E);
        assert_eq!(linear_to_ulaw(32767), 0x80);
        assert_eq!(linear_to_ulaw(-32768), 0x00);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(32767), 0xAA);
        assert_eq!(linear_to_alaw(-32768), 0x2A);
    }

    #[test]
    fn encode_inverts_decode() {
        for c in 0..=255u8 {
            // µ-law 0x7F is "negative zero"; it decodes to 0, which encodes as 0xFF.
            if c != 0x7F {
                assert_eq!(linear_to_ulaw(ulaw_to_linear(c)), c, "ulaw {c:#x}");
            }
            assert_eq!(linear_to_alaw(alaw_to_linear(c)), c, "alaw {c:#x}");
        }
        assert_eq!(linear_to_ulaw(ulaw_to_linear(0x7F)), 0xFF);
    }

    #[test]
    fn every_sample_lands_in_the_interval_around_its_decoded_value() {
        for x in (i16::MIN..=i16::MAX).step_by(7) {
            let u = linear_to_ulaw(x);
            let err = (i32::from(ulaw_to_linear(u)) - i32::from(x)).abs();
            // Half a step, plus the clipping of the top µ-law segment (G.711 max 8031 × 4).
            assert!(
                err <= ulaw_step(u) / 2 + 4 || x.unsigned_abs() > 32124,
                "ulaw {x}: {err}"
            );
            let a = linear_to_alaw(x);
            let err = (i32::from(alaw_to_linear(a)) - i32::from(x)).abs();
            assert!(err <= alaw_step(a) / 2, "alaw {x}: {err}");
        }
    }

    #[test]
    fn transcoding_keeps_the_value_within_half_a_target_step() {
        for c in 0..=255u8 {
            let u = alaw_to_ulaw(c);
            let (from, to) = (alaw_to_linear(c), ulaw_to_linear(u));
            assert_eq!(from.signum(), to.signum(), "a {c:#x}");
            let err = (i32::from(to) - i32::from(from)).abs();
            assert!(err <= ulaw_step(u) / 2, "a {c:#x}: {from} -> {to}");
            let a = ulaw_to_alaw(c);
            let (from, to) = (ulaw_to_linear(c), alaw_to_linear(a));
            let err = (i32::from(to) - i32::from(from)).abs();
            assert!(err <= alaw_step(a) / 2, "u {c:#x}: {from} -> {to}");
        }
        // Spot values: A-law ±8 (the smallest level) becomes µ-law ±8; full scale A-law
        // (±32256) clips to full scale µ-law (±32124).
        assert_eq!(alaw_to_ulaw(0xD5), 0xFE);
        assert_eq!(alaw_to_ulaw(0x55), 0x7E);
        assert_eq!(alaw_to_ulaw(0xAA), 0x80);
        assert_eq!(alaw_to_ulaw(0x2A), 0x00);
        assert_eq!(ulaw_to_alaw(0xFF), 0xD5);
    }

    #[test]
    fn magnitudes_are_monotonic() {
        // Positive µ-law codes 0xFF down to 0x80 rise strictly (one step per code).
        let pos: Vec<i16> = (0x80..=0xFFu8).rev().map(ulaw_to_linear).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
        // Positive A-law magnitudes rise with the de-inverted code 0x80..=0xFF.
        let pos: Vec<i16> = (0x80..=0xFFu8).map(|c| alaw_to_linear(c ^ 0x55)).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
    }
}
