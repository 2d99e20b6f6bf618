//! Bencode (BEP 3), the encoding of rtpengine's ng protocol: a strict, bounded decoder for
//! untrusted datagrams and an encoder for replies.
//!
//! Inputs: a byte slice ([`decode`]) and the [`Limits`] it must respect. Output: a [`Value`] or
//! a [`BencodeError`] naming the offset and what is wrong; [`Value::encode`] writes a value.
//!
//! Strict: integers without leading zeros or `-0`, string lengths without leading zeros, every
//! dictionary key a byte string and none twice, nothing after the top-level value. Not strict
//! about key order: rtpengine documents that it does not honour BEP 3's sorted keys, and
//! Kamailio's module sends them in insertion order. Bounded: nesting depth, item count and the
//! whole input (the caller passes at most the datagram), so no input can make the decoder
//! recurse or allocate without limit. Never panics on any input (the unit tests feed it
//! truncations and mutations of real messages).

use std::collections::BTreeMap;

/// Decoder limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of lists and dictionaries (the top-level dictionary is depth 1).
    pub max_depth: usize,
    /// Most values (of any kind, at any depth) in one document.
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // An ng offer from Kamailio nests three deep (dict → list → string) and holds a few dozen
        // items; these leave ample room and still bound the work per datagram.
        Self {
            max_depth: 8,
            max_items: 4096,
        }
    }
}

/// A bencode value. Dictionaries are kept sorted by key (encoding then follows BEP 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `i<n>e`.
    Int(i64),
    /// `<len>:<bytes>`.
    Bytes(Vec<u8>),
    /// `l...e`.
    List(Vec<Value>),
    /// `d...e`.
    Dict(BTreeMap<Vec<u8>, Value>),
}

/// Why a document was refused; `at` is the byte offset where the problem was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BencodeError {
    /// The input ended inside a value.
    #[error("bencode: input ends inside a value (offset {at})")]
    Truncated {
        /// Offset of the end of input.
        at: usize,
    },
    /// A byte that cannot start a value (`i`, `l`, `d` or a digit).
    #[error("bencode: unexpected byte 0x{byte:02x} at offset {at}")]
    UnexpectedByte {
        /// Offset.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// An integer that is empty, has a leading zero, is `-0`, or does not fit in 64 bits.
    #[error("bencode: malformed integer at offset {at}")]
    BadInteger {
        /// Offset of the `i`.
        at: usize,
    },
    /// A string length with a leading zero or too many digits, or longer than the input.
    #[error("bencode: malformed string length at offset {at}")]
    BadLength {
        /// Offset of the first digit.
        at: usize,
    },
    /// A dictionary key that is not a byte string.
    #[error("bencode: dictionary key at offset {at} is not a string")]
    KeyNotString {
        /// Offset of the key.
        at: usize,
    },
    /// The same dictionary key twice.
    #[error("bencode: duplicate dictionary key at offset {at}")]
    DuplicateKey {
        /// Offset of the second occurrence.
        at: usize,
    },
    /// Nesting deeper than [`Limits::max_depth`].
    #[error("bencode: nesting deeper than {max} at offset {at}")]
    TooDeep {
        /// Offset.
        at: usize,
        /// The limit.
        max: usize,
    },
    /// More values than [`Limits::max_items`].
    #[error("bencode: more than {max} values")]
    TooManyItems {
        /// The limit.
        max: usize,
    },
    /// Bytes after the top-level value.
    #[error("bencode: {extra} bytes after the value")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

/// Decodes exactly one value from `input`.
pub fn decode(input: &[u8], limits: Limits) -> Result<Value, BencodeError> {
    let mut d = Decoder {
        input,
        pos: 0,
        items: 0,
        limits,
    };
    let v = d.value(1)?;
    if d.pos != input.len() {
        return Err(BencodeError::TrailingBytes {
            extra: input.len() - d.pos,
        });
    }
    Ok(v)
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    items: usize,
    limits: Limits,
}

impl Decoder<'_> {
    fn peek(&self) -> Result<u8, BencodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(BencodeError::Truncated { at: self.pos })
    }

    fn value(&mut self, depth: usize) -> Result<Value, BencodeError> {
        self.items += 1;
        if self.items > self.limits.max_items {
            return Err(BencodeError::TooManyItems {
                max: self.limits.max_items,
            });
        }
        let at = self.pos;
        match self.peek()? {
            b'i' => self.int().map(Value::Int),
            b'0'..=b'9' => self.bytes().map(Value::Bytes),
            b'l' | b'd' if depth > self.limits.max_depth => Err(BencodeError::TooDeep {
                at,
                max: self.limits.max_depth,
            }),
            b'l' => {
                self.pos += 1;
                let mut list = Vec::new();
                while self.peek()? != b'e' {
                    list.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(list))
            }
            b'd' => {
                self.pos += 1;
                let mut dict = BTreeMap::new();
                while self.peek()? != b'e' {
                    let key_at = self.pos;
                    if !self.peek()?.is_ascii_digit() {
                        return Err(BencodeError::KeyNotString { at: key_at });
                    }
                    self.items += 1;
                    let key = self.bytes()?;
                    let v = self.value(depth + 1)?;
                    if dict.insert(key, v).is_some() {
                        return Err(BencodeError::DuplicateKey { at: key_at });
                    }
                }
                self.pos += 1;
                Ok(Value::Dict(dict))
            }
            byte => Err(BencodeError::UnexpectedByte { at, byte }),
        }
    }

    /// `i<digits>e` with an optional `-`; no leading zeros, no `-0`.
    fn int(&mut self) -> Result<i64, BencodeError> {
        let at = self.pos;
        let rest = &self.input[at + 1..];
        let end = rest
            .iter()
            .position(|&b| b == b'e')
            .ok_or(BencodeError::Truncated {
                at: self.input.len(),
            })?;
        let text = &rest[..end];
        let digits = text.strip_prefix(b"-").unwrap_or(text);
        let canonical = !digits.is_empty()
            && digits.iter().all(u8::is_ascii_digit)
            && !(digits.len() > 1 && digits[0] == b'0')
            && text != b"-0";
        if !canonical {
            return Err(BencodeError::BadInteger { at });
        }
        let n = std::str::from_utf8(text)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or(BencodeError::BadInteger { at })?;
        self.pos = at + 1 + end + 1;
        Ok(n)
    }

    /// `<len>:<bytes>`; the length has no leading zeros and fits in the input.
    fn bytes(&mut self) -> Result<Vec<u8>, BencodeError> {
        let at = self.pos;
        let rest = &self.input[at..];
        // A length has at most 20 digits (u64::MAX); without a colon by then it is not one.
        let short_input = rest.len() < 21;
        let colon = rest
            .iter()
            .take(21)
            .position(|&b| b == b':')
            .ok_or(if short_input {
                BencodeError::Truncated {
                    at: self.input.len(),
                }
            } else {
                BencodeError::BadLength { at }
            })?;
        let digits = &rest[..colon];
        if digits.is_empty()
            || !digits.iter().all(u8::is_ascii_digit)
            || (digits.len() > 1 && digits[0] == b'0')
        {
            return Err(BencodeError::BadLength { at });
        }
        let len = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or(BencodeError::BadLength { at })?;
        let start = at + colon + 1;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.input.len())
            .ok_or(BencodeError::BadLength { at })?;
        self.pos = end;
        Ok(self.input[start..end].to_vec())
    }
}

impl Value {
    /// A byte string from text.
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    /// A dictionary from `(key, value)` pairs.
    pub fn dict<'a>(items: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
        Value::Dict(
            items
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// Appends the encoding of `self` to `out` (dictionary keys sorted, BEP 3).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => encode_bytes(b, out),
            Value::List(l) => {
                out.push(b'l');
                l.iter().for_each(|v| v.encode(out));
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    encode_bytes(k, out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The entry `key` of a dictionary.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    /// A byte string as UTF-8 text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(b: &[u8]) -> Result<Value, BencodeError> {
        decode(b, Limits::default())
    }

    /// A ping and an offer as Kamailio 5.6 sends them (keys in insertion order, not sorted).
    const OFFER: &[u8] = b"d8:supportsl10:load limite3:sdp26:v=0\r\nm=audio 1 RTP/AVP 0\r\n3:ICE6:remove7:replacel6:origin18:session-connectione18:transport-protocol7:RTP/AVP7:call-id5:c1@h110:via-branch2:z913:received-froml3:IP49:10.77.1.2e8:from-tag2:ft7:command5:offere";

    #[test]
    fn decodes_kamailio_offer_in_insertion_order() {
        let v = dec(OFFER).expect("offer");
        assert_eq!(v.get("command").and_then(Value::as_str), Some("offer"));
        assert_eq!(v.get("ICE").and_then(Value::as_str), Some("remove"));
        assert_eq!(
            v.get("received-from"),
            Some(&Value::List(vec![
                Value::str("IP4"),
                Value::str("10.77.1.2")
            ]))
        );
        assert_eq!(
            dec(b"d7:command4:pinge"),
            Ok(Value::dict([("command", Value::str("ping"))]))
        );
    }

    #[test]
    fn encode_round_trips_and_sorts_keys() {
        let v = Value::dict([
            ("result", Value::str("ok")),
            ("created", Value::Int(-17)),
            ("calls", Value::List(vec![Value::str("a"), Value::Int(0)])),
        ]);
        let mut out = Vec::new();
        v.encode(&mut out);
        assert_eq!(out, b"d5:callsl1:ai0ee7:createdi-17e6:result2:oke".to_vec());
        assert_eq!(dec(&out), Ok(v));
        let back = dec(OFFER).expect("offer");
        let mut again = Vec::new();
        back.encode(&mut again);
        assert_eq!(dec(&again), Ok(back));
    }

    #[test]
    fn refuses_malformed_documents_with_their_reason() {
        use BencodeError::*;
        let cases: &[(&[u8], BencodeError)] = &[
            (b"", Truncated { at: 0 }),
            (b"d", Truncated { at: 1 }),
            (b"d3:abc", Truncated { at: 6 }),
            (b"i12", Truncated { at: 3 }),
            (b"5:abc", BadLength { at: 0 }),
            (b"05:abcde", BadLength { at: 0 }),
            (b"-1:a", UnexpectedByte { at: 0, byte: b'-' }),
            (b"99999999999999999999999:a", BadLength { at: 0 }),
            (b"ie", BadInteger { at: 0 }),
            (b"i-0e", BadInteger { at: 0 }),
            (b"i03e", BadInteger { at: 0 }),
            (b"i1x2e", BadInteger { at: 0 }),
            (b"i99999999999999999999e", BadInteger { at: 0 }),
            (b"di1e1:ae", KeyNotString { at: 1 }),
            (b"d1:ai1e1:ai2ee", DuplicateKey { at: 7 }),
            (b"x", UnexpectedByte { at: 0, byte: b'x' }),
            (b"i1ei2e", TrailingBytes { extra: 3 }),
            (b"d7:command4:pingee", TrailingBytes { extra: 1 }),
        ];
        for (input, want) in cases {
            assert_eq!(
                dec(input).as_ref(),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(dec(b"i-5e"), Ok(Value::Int(-5)));
        assert_eq!(dec(b"0:"), Ok(Value::Bytes(vec![])));
    }

    #[test]
    fn depth_and_item_limits_hold() {
        let deep = [&[b'l'; 9][..], &[b'e'; 9][..]].concat();
        assert_eq!(dec(&deep), Err(BencodeError::TooDeep { at: 8, max: 8 }));
        let ok = [&[b'l'; 8][..], &[b'e'; 8][..]].concat();
        assert!(dec(&ok).is_ok());
        // A million nested lists never recurse past the limit.
        let huge = vec![b'l'; 1_000_000];
        assert!(matches!(dec(&huge), Err(BencodeError::TooDeep { .. })));
        let many = [b"l".as_slice(), &b"i1e".repeat(5000), b"e"].concat();
        assert_eq!(dec(&many), Err(BencodeError::TooManyItems { max: 4096 }));
    }

    /// Every truncation and a deterministic set of byte mutations of a real offer: never a
    /// panic, and whatever decodes re-encodes to something that decodes to the same value.
    #[test]
    fn truncations_and_mutations_never_panic() {
        for n in 0..OFFER.len() {
            assert!(dec(&OFFER[..n]).is_err(), "prefix {n} decoded");
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut decoded = 0;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut m = OFFER.to_vec();
            let at = (seed % m.len() as u64) as usize;
            m[at] = b"ie:ld0123456789-x"[(seed >> 32) as usize % 17];
            if let Ok(v) = dec(&m) {
                decoded += 1;
                let mut out = Vec::new();
                v.encode(&mut out);
                assert_eq!(dec(&out), Ok(v));
            }
        }
        assert!(
            decoded > 0,
            "no mutation decoded: the test would prove nothing"
        );
    }
}
