//! G.711 expansion (ITU-T G.711 (11/88) tables 1a/2a): one 8-bit code to 16-bit linear PCM.
//!
//! Input: one µ-law or A-law byte as carried in RTP payload types 0 and 8. Output: the decoder
//! output value of the ITU tables, scaled to 16-bit (µ-law 14-bit × 4, A-law 13-bit × 8).
//! The tables are computed at compile time; lookups never allocate.

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
