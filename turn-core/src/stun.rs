//! STUN message codec (RFC 8489) with the TURN attributes (RFC 8656) and ChannelData framing.
//!
//! Role: turn bytes into a borrowed [`Message`] and back, never panicking on any input.
//! Inputs: one datagram, or one frame cut from a TCP stream with [`frame_len`].
//! Outputs: [`Message`] (header plus raw attributes, decoded on demand with typed getters) or
//! [`ChannelData`]; for sending, [`MessageBuilder`] and [`encode_channel_data`].
//! Call order for a receiver: [`classify`] or [`frame_len`], then [`Message::parse`] (checks
//! FINGERPRINT when present), then typed getters, then [`Message::check_integrity`] with the key
//! from [`long_term_key`]. For a sender: [`MessageBuilder::new`], `add` attributes, then
//! `add_integrity` / `add_integrity_sha256`, then `add_fingerprint`, then `finish`.
//!
//! Size: about 1,100 lines before the tests, kept in one file on purpose. Parsing and building
//! are the two halves of one wire format and share the attribute codec ([`Attribute`], the
//! address XOR, padding and text limits); split apart, each attribute's decoding and encoding
//! would live in different files and drift.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::crypto::{ct_eq, Crypto};
use crate::TurnError;

/// Fixed value in every STUN header (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN header length (RFC 8489 §5).
pub const HEADER_LEN: usize = 20;
/// XORed into the CRC-32 of FINGERPRINT (RFC 8489 §14.7).
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// ChannelData header length (RFC 8656 §12.4).
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;
/// Lowest channel number a client may bind (RFC 8656 §12).
pub const CHANNEL_MIN: u16 = 0x4000;
/// Highest channel number a client may bind (RFC 8656 §12; RFC 5766 allowed up to 0x7FFF).
pub const CHANNEL_MAX: u16 = 0x4FFF;
/// Highest channel number of RFC 5766 §11, still used by deployed clients (coturn's
/// turnutils_uclient, restund, libre pick from 0x4000-0x7FFF). It is also the largest value
/// whose first two bits are 01, i.e. that ChannelData framing can carry (RFC 8656 §12.4).
pub const CHANNEL_MAX_RFC5766: u16 = 0x7FFF;
/// Longest USERNAME value (RFC 8489 §14.3).
const MAX_USERNAME: usize = 513;
/// Longest REALM, NONCE, SOFTWARE and reason phrase value: 763 bytes (RFC 8489 §14.9, §14.10,
/// §14.14, §14.8).
const MAX_TEXT: usize = 763;

/// Attribute type codes (RFC 8489 §18.3, RFC 8656 §18).
pub mod attr {
    /// MAPPED-ADDRESS (RFC 8489 §14.1).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME (RFC 8489 §14.3).
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (RFC 8489 §14.5).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE (RFC 8489 §14.8).
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.13).
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// CHANNEL-NUMBER (RFC 8656 §18.1).
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME (RFC 8656 §18.2).
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS (RFC 8656 §18.3).
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA (RFC 8656 §18.4).
    pub const DATA: u16 = 0x0013;
    /// REALM (RFC 8489 §14.9).
    pub const REALM: u16 = 0x0014;
    /// NONCE (RFC 8489 §14.10).
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// EVEN-PORT (RFC 8656 §18.7).
    pub const EVEN_PORT: u16 = 0x0018;
    /// REQUESTED-TRANSPORT (RFC 8656 §18.8).
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// DONT-FRAGMENT (RFC 8656 §18.9).
    pub const DONT_FRAGMENT: u16 = 0x001A;
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6).
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// PASSWORD-ALGORITHM (RFC 8489 §14.12).
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    /// USERHASH (RFC 8489 §14.4).
    pub const USERHASH: u16 = 0x001E;
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RESERVATION-TOKEN (RFC 8656 §18.10).
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// PASSWORD-ALGORITHMS (RFC 8489 §14.11).
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    /// SOFTWARE (RFC 8489 §14.14).
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT (RFC 8489 §14.7).
    pub const FINGERPRINT: u16 = 0x8028;
}

/// The 96-bit transaction ID (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId(pub [u8; 12]);

/// Message class (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Request (C1 C0 = 00).
    Request,
    /// Indication (01).
    Indication,
    /// Success response (10).
    Success,
    /// Error response (11).
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }

    fn from_bits(bits: u16) -> Self {
        match bits & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        }
    }
}

/// 12-bit STUN method (RFC 8489 §18.2, RFC 8656 §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    /// Binding (RFC 8489).
    pub const BINDING: Method = Method(0x001);
    /// Allocate (RFC 8656 §7).
    pub const ALLOCATE: Method = Method(0x003);
    /// Refresh (RFC 8656 §7.3).
    pub const REFRESH: Method = Method(0x004);
    /// Send (indication only, RFC 8656 §10).
    pub const SEND: Method = Method(0x006);
    /// Data (indication only, RFC 8656 §10).
    pub const DATA: Method = Method(0x007);
    /// CreatePermission (RFC 8656 §9).
    pub const CREATE_PERMISSION: Method = Method(0x008);
    /// ChannelBind (RFC 8656 §11).
    pub const CHANNEL_BIND: Method = Method(0x009);
}

/// Interleaves method and class bits into the 14-bit message type (RFC 8489 §5, figure 3).
fn encode_type(class: Class, method: Method) -> u16 {
    let m = method.0 & 0x0FFF;
    let c = class.bits();
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

fn decode_type(t: u16) -> (Class, Method) {
    let m = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let c = ((t >> 4) & 1) | ((t >> 7) & 2);
    (Class::from_bits(c), Method(m))
}

/// Address family of an address attribute (RFC 8489 §14.1) or REQUESTED-ADDRESS-FAMILY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// 0x01.
    V4,
    /// 0x02.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn code(self) -> u8 {
        match self {
            Family::V4 => 1,
            Family::V6 => 2,
        }
    }
}

/// One decoded attribute. MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are not
/// here: [`Message::parse`] and [`MessageBuilder`] handle them because they cover the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute<'a> {
    /// MAPPED-ADDRESS (RFC 8489 §14.1), only for RFC 3489 clients.
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS: the client's reflexive address (RFC 8489 §14.2).
    XorMappedAddress(SocketAddr),
    /// XOR-PEER-ADDRESS (RFC 8656 §18.3).
    XorPeerAddress(SocketAddr),
    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    XorRelayedAddress(SocketAddr),
    /// USERNAME, UTF-8, at most 513 bytes (RFC 8489 §14.3).
    Username(&'a str),
    /// REALM (RFC 8489 §14.9).
    Realm(&'a str),
    /// NONCE (RFC 8489 §14.10).
    Nonce(&'a str),
    /// SOFTWARE (RFC 8489 §14.14).
    Software(&'a str),
    /// ERROR-CODE, code 300-699 and reason phrase (RFC 8489 §14.8).
    ErrorCode {
        /// Class * 100 + number.
        code: u16,
        /// Reason phrase.
        reason: &'a str,
    },
    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.13).
    UnknownAttributes(Vec<u16>),
    /// LIFETIME in seconds (RFC 8656 §18.2).
    Lifetime(u32),
    /// REQUESTED-TRANSPORT protocol number, 17 = UDP (RFC 8656 §18.8).
    RequestedTransport(u8),
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
    RequestedAddressFamily(Family),
    /// DATA (RFC 8656 §18.4).
    Data(&'a [u8]),
    /// CHANNEL-NUMBER (RFC 8656 §18.1); the RFFU half is written as zero.
    ChannelNumber(u16),
    /// EVEN-PORT with its R bit (RFC 8656 §18.7).
    EvenPort(bool),
    /// RESERVATION-TOKEN (RFC 8656 §18.10).
    ReservationToken([u8; 8]),
    /// DONT-FRAGMENT (RFC 8656 §18.9).
    DontFragment,
    /// PASSWORD-ALGORITHMS: algorithm numbers, parameters dropped (none are defined;
    /// RFC 8489 §14.11).
    PasswordAlgorithms(Vec<u16>),
    /// PASSWORD-ALGORITHM: 1 = MD5, 2 = SHA-256 (RFC 8489 §14.12).
    PasswordAlgorithm(u16),
    /// USERHASH (RFC 8489 §14.4).
    Userhash([u8; 32]),
    /// Any other attribute, value uninterpreted.
    Other {
        /// Attribute type.
        typ: u16,
        /// Value without padding.
        value: &'a [u8],
    },
}

impl<'a> Attribute<'a> {
    /// The attribute type code.
    pub fn typ(&self) -> u16 {
        match self {
            Attribute::MappedAddress(_) => attr::MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => attr::XOR_MAPPED_ADDRESS,
            Attribute::XorPeerAddress(_) => attr::XOR_PEER_ADDRESS,
            Attribute::XorRelayedAddress(_) => attr::XOR_RELAYED_ADDRESS,
            Attribute::Username(_) => attr::USERNAME,
            Attribute::Realm(_) => attr::REALM,
            Attribute::Nonce(_) => attr::NONCE,
            Attribute::Software(_) => attr::SOFTWARE,
            Attribute::ErrorCode { .. } => attr::ERROR_CODE,
            Attribute::UnknownAttributes(_) => attr::UNKNOWN_ATTRIBUTES,
            Attribute::Lifetime(_) => attr::LIFETIME,
            Attribute::RequestedTransport(_) => attr::REQUESTED_TRANSPORT,
            Attribute::RequestedAddressFamily(_) => attr::REQUESTED_ADDRESS_FAMILY,
            Attribute::Data(_) => attr::DATA,
            Attribute::ChannelNumber(_) => attr::CHANNEL_NUMBER,
            Attribute::EvenPort(_) => attr::EVEN_PORT,
            Attribute::ReservationToken(_) => attr::RESERVATION_TOKEN,
            Attribute::DontFragment => attr::DONT_FRAGMENT,
            Attribute::PasswordAlgorithms(_) => attr::PASSWORD_ALGORITHMS,
            Attribute::PasswordAlgorithm(_) => attr::PASSWORD_ALGORITHM,
            Attribute::Userhash(_) => attr::USERHASH,
            Attribute::Other { typ, .. } => *typ,
        }
    }

    /// Decodes one attribute value; `txid` is needed by the XOR address attributes.
    pub fn decode(typ: u16, value: &'a [u8], txid: &TransactionId) -> Result<Self, TurnError> {
        let bad = |reason| TurnError::BadAttribute { typ, reason };
        Ok(match typ {
            attr::MAPPED_ADDRESS => Attribute::MappedAddress(decode_address(typ, value, None)?),
            attr::XOR_MAPPED_ADDRESS => {
                Attribute::XorMappedAddress(decode_address(typ, value, Some(txid))?)
            }
            attr::XOR_PEER_ADDRESS => {
                Attribute::XorPeerAddress(decode_address(typ, value, Some(txid))?)
            }
            attr::XOR_RELAYED_ADDRESS => {
                Attribute::XorRelayedAddress(decode_address(typ, value, Some(txid))?)
            }
            attr::USERNAME => Attribute::Username(decode_text(typ, value, MAX_USERNAME)?),
            attr::REALM => Attribute::Realm(decode_text(typ, value, MAX_TEXT)?),
            attr::NONCE => Attribute::Nonce(decode_text(typ, value, MAX_TEXT)?),
            attr::SOFTWARE => Attribute::Software(decode_text(typ, value, MAX_TEXT)?),
            attr::ERROR_CODE => {
                let [_, _, class, number, reason @ ..] = value else {
                    return Err(bad("shorter than 4 bytes"));
                };
                let class = u16::from(class & 0x07);
                let number = u16::from(*number);
                if !(3..=6).contains(&class) || number > 99 {
                    return Err(bad("code outside 300-699"));
                }
                Attribute::ErrorCode {
                    code: class * 100 + number,
                    reason: decode_text(typ, reason, MAX_TEXT)?,
                }
            }
            attr::UNKNOWN_ATTRIBUTES => {
                if !value.len().is_multiple_of(2) {
                    return Err(bad("odd length"));
                }
                Attribute::UnknownAttributes(
                    value
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect(),
                )
            }
            attr::LIFETIME => Attribute::Lifetime(u32::from_be_bytes(fixed(typ, value)?)),
            attr::REQUESTED_TRANSPORT => {
                let [proto, _, _, _] = fixed::<4>(typ, value)?;
                Attribute::RequestedTransport(proto)
            }
            attr::REQUESTED_ADDRESS_FAMILY => {
                let [family, _, _, _] = fixed::<4>(typ, value)?;
                Attribute::RequestedAddressFamily(match family {
                    1 => Family::V4,
                    2 => Family::V6,
                    _ => return Err(bad("unknown address family")),
                })
            }
            attr::DATA => Attribute::Data(value),
            attr::CHANNEL_NUMBER => {
                let [hi, lo, _, _] = fixed::<4>(typ, value)?;
                Attribute::ChannelNumber(u16::from_be_bytes([hi, lo]))
            }
            attr::EVEN_PORT => {
                let [flags] = fixed::<1>(typ, value)?;
                Attribute::EvenPort(flags & 0x80 != 0)
            }
            attr::RESERVATION_TOKEN => Attribute::ReservationToken(fixed(typ, value)?),
            attr::DONT_FRAGMENT => {
                if !value.is_empty() {
                    return Err(bad("DONT-FRAGMENT has a value"));
                }
                Attribute::DontFragment
            }
            attr::PASSWORD_ALGORITHMS => {
                let mut ids = Vec::new();
                let mut rest = value;
                while !rest.is_empty() {
                    let [a, b, c, d, tail @ ..] = rest else {
                        return Err(bad("truncated algorithm entry"));
                    };
                    let params = usize::from(u16::from_be_bytes([*c, *d]));
                    let skip = pad4(params);
                    if tail.len() < skip {
                        return Err(bad("truncated algorithm parameters"));
                    }
                    ids.push(u16::from_be_bytes([*a, *b]));
                    rest = &tail[skip..];
                }
                Attribute::PasswordAlgorithms(ids)
            }
            attr::PASSWORD_ALGORITHM => {
                let [a, b, c, d, tail @ ..] = value else {
                    return Err(bad("shorter than 4 bytes"));
                };
                if tail.len() != pad4(usize::from(u16::from_be_bytes([*c, *d]))) {
                    return Err(bad("parameter length mismatch"));
                }
                Attribute::PasswordAlgorithm(u16::from_be_bytes([*a, *b]))
            }
            attr::USERHASH => Attribute::Userhash(fixed(typ, value)?),
            _ => Attribute::Other { typ, value },
        })
    }

    /// Appends the value (without header or padding) to `out`.
    fn encode_value(&self, txid: &TransactionId, out: &mut Vec<u8>) {
        match self {
            Attribute::MappedAddress(a) => encode_address(*a, None, out),
            Attribute::XorMappedAddress(a)
            | Attribute::XorPeerAddress(a)
            | Attribute::XorRelayedAddress(a) => encode_address(*a, Some(txid), out),
            Attribute::Username(s)
            | Attribute::Realm(s)
            | Attribute::Nonce(s)
            | Attribute::Software(s) => out.extend_from_slice(s.as_bytes()),
            Attribute::ErrorCode { code, reason } => {
                let class = (code / 100) as u8;
                let number = (code % 100) as u8;
                out.extend_from_slice(&[0, 0, class & 0x07, number]);
                out.extend_from_slice(reason.as_bytes());
            }
            Attribute::UnknownAttributes(types) => {
                for t in types {
                    out.extend_from_slice(&t.to_be_bytes());
                }
            }
            Attribute::Lifetime(secs) => out.extend_from_slice(&secs.to_be_bytes()),
            Attribute::RequestedTransport(p) => out.extend_from_slice(&[*p, 0, 0, 0]),
            Attribute::RequestedAddressFamily(f) => out.extend_from_slice(&[f.code(), 0, 0, 0]),
            Attribute::Data(d) => out.extend_from_slice(d),
            Attribute::ChannelNumber(c) => {
                out.extend_from_slice(&c.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            Attribute::EvenPort(r) => out.push(if *r { 0x80 } else { 0 }),
            Attribute::ReservationToken(t) => out.extend_from_slice(t),
            Attribute::DontFragment => {}
            Attribute::PasswordAlgorithms(ids) => {
                for id in ids {
                    out.extend_from_slice(&id.to_be_bytes());
                    out.extend_from_slice(&[0, 0]);
                }
            }
            Attribute::PasswordAlgorithm(id) => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            Attribute::Userhash(h) => out.extend_from_slice(h),
            Attribute::Other { value, .. } => out.extend_from_slice(value),
        }
    }
}

/// Rounds up to the 4-byte attribute boundary (RFC 8489 §14).
fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

fn fixed<const N: usize>(typ: u16, value: &[u8]) -> Result<[u8; N], TurnError> {
    value.try_into().map_err(|_| TurnError::BadAttribute {
        typ,
        reason: "wrong length",
    })
}

fn decode_text(typ: u16, value: &[u8], max: usize) -> Result<&str, TurnError> {
    if value.len() > max {
        return Err(TurnError::BadAttribute {
            typ,
            reason: "too long",
        });
    }
    std::str::from_utf8(value).map_err(|_| TurnError::BadAttribute {
        typ,
        reason: "not UTF-8",
    })
}

/// XOR mask for an address: cookie for IPv4, cookie || transaction ID for IPv6
/// (RFC 8489 §14.2).
fn xor_mask(txid: &TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(&txid.0);
    mask
}

fn decode_address(
    typ: u16,
    value: &[u8],
    xor: Option<&TransactionId>,
) -> Result<SocketAddr, TurnError> {
    let bad = |reason| TurnError::BadAttribute { typ, reason };
    let [_, family, p0, p1, addr @ ..] = value else {
        return Err(bad("shorter than 4 bytes"));
    };
    let mask = xor.map(xor_mask).unwrap_or([0; 16]);
    let port = u16::from_be_bytes([p0 ^ mask[0], p1 ^ mask[1]]);
    let ip = match (*family, addr.len()) {
        (1, 4) => {
            let mut b = [0u8; 4];
            for (i, byte) in b.iter_mut().enumerate() {
                *byte = addr[i] ^ mask[i];
            }
            IpAddr::V4(Ipv4Addr::from(b))
        }
        (2, 16) => {
            let mut b = [0u8; 16];
            for (i, byte) in b.iter_mut().enumerate() {
                *byte = addr[i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        (1 | 2, _) => return Err(bad("address length does not match family")),
        _ => return Err(bad("unknown address family")),
    };
    Ok(SocketAddr::new(ip, port))
}

fn encode_address(a: SocketAddr, xor: Option<&TransactionId>, out: &mut Vec<u8>) {
    let mask = xor.map(xor_mask).unwrap_or([0; 16]);
    let port = a.port().to_be_bytes();
    out.push(0);
    out.push(Family::of(a.ip()).code());
    out.push(port[0] ^ mask[0]);
    out.push(port[1] ^ mask[1]);
    match a.ip() {
        IpAddr::V4(ip) => out.extend(ip.octets().iter().zip(mask).map(|(b, m)| b ^ m)),
        IpAddr::V6(ip) => out.extend(ip.octets().iter().zip(mask).map(|(b, m)| b ^ m)),
    }
}

/// An attribute as found in the message, value not yet decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// Attribute type.
    pub typ: u16,
    /// Value without padding.
    pub value: &'a [u8],
}

/// Which MESSAGE-INTEGRITY variant protected a message (RFC 8489 §14.5, §14.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityKind {
    /// HMAC-SHA1, 20 bytes.
    Sha1,
    /// HMAC-SHA256, 16 to 32 bytes.
    Sha256,
}

/// Result of [`Message::check_integrity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityCheck {
    /// No MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 attribute.
    Missing,
    /// The HMAC matches the key.
    Valid(IntegrityKind),
    /// The HMAC does not match the key.
    Invalid(IntegrityKind),
}

/// Where an integrity attribute sits: offset of its header and its value.
#[derive(Debug, Clone, Copy)]
struct IntegrityAt<'a> {
    offset: usize,
    value: &'a [u8],
}

/// A parsed STUN message borrowing the input bytes.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    class: Class,
    method: Method,
    txid: TransactionId,
    raw: &'a [u8],
    /// Attributes before MESSAGE-INTEGRITY, in order (later ones are ignored, RFC 8489 §14.5).
    attrs: Vec<RawAttribute<'a>>,
    integrity: Option<IntegrityAt<'a>>,
    integrity_sha256: Option<IntegrityAt<'a>>,
    fingerprint: bool,
}

impl<'a> Message<'a> {
    /// Parses and validates one whole STUN message: header rules of RFC 8489 §5, attribute
    /// bounds, and FINGERPRINT if present. `bytes` must be exactly one message.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, TurnError> {
        let have = bytes.len();
        let Some(header) = bytes.get(..HEADER_LEN) else {
            return Err(TurnError::Truncated {
                need: HEADER_LEN,
                have,
            });
        };
        if header[0] & 0xC0 != 0 {
            return Err(TurnError::NotStun);
        }
        let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if cookie != MAGIC_COOKIE {
            return Err(TurnError::BadMagicCookie(cookie));
        }
        let len = u16::from_be_bytes([header[2], header[3]]);
        if !len.is_multiple_of(4) {
            return Err(TurnError::UnalignedLength(len));
        }
        let end = HEADER_LEN + usize::from(len);
        if have < end {
            return Err(TurnError::Truncated { need: end, have });
        }
        if have > end {
            return Err(TurnError::TrailingBytes {
                declared: end,
                actual: have,
            });
        }
        let (class, method) = decode_type(u16::from_be_bytes([header[0], header[1]]));
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&header[8..20]);

        let mut msg = Message {
            class,
            method,
            txid: TransactionId(txid),
            raw: bytes,
            attrs: Vec::new(),
            integrity: None,
            integrity_sha256: None,
            fingerprint: false,
        };
        let mut off = HEADER_LEN;
        while off < end {
            let Some(&[t0, t1, l0, l1]) = bytes.get(off..off + 4) else {
                return Err(TurnError::Truncated {
                    need: off + 4,
                    have,
                });
            };
            let typ = u16::from_be_bytes([t0, t1]);
            let alen = usize::from(u16::from_be_bytes([l0, l1]));
            let vstart = off + 4;
            let next = vstart + pad4(alen);
            if next > end {
                return Err(TurnError::Truncated { need: next, have });
            }
            let value = &bytes[vstart..vstart + alen];
            if msg.fingerprint {
                // RFC 8489 §14.7: FINGERPRINT MUST be the last attribute.
                return Err(TurnError::BadAttribute {
                    typ,
                    reason: "attribute after FINGERPRINT",
                });
            }
            match typ {
                attr::FINGERPRINT => {
                    let expect: [u8; 4] = fixed(typ, value)?;
                    if fingerprint_over(bytes, off) != u32::from_be_bytes(expect) {
                        return Err(TurnError::BadFingerprint);
                    }
                    msg.fingerprint = true;
                }
                attr::MESSAGE_INTEGRITY_SHA256 if msg.integrity_sha256.is_none() => {
                    // RFC 8489 §14.6: 16 to 32 bytes, a multiple of 4.
                    if !(16..=32).contains(&alen) || !alen.is_multiple_of(4) {
                        return Err(TurnError::BadAttribute {
                            typ,
                            reason: "length not 16..=32 in steps of 4",
                        });
                    }
                    msg.integrity_sha256 = Some(IntegrityAt { offset: off, value });
                }
                attr::MESSAGE_INTEGRITY
                    if msg.integrity.is_none() && msg.integrity_sha256.is_none() =>
                {
                    if alen != 20 {
                        return Err(TurnError::BadAttribute {
                            typ,
                            reason: "length not 20",
                        });
                    }
                    msg.integrity = Some(IntegrityAt { offset: off, value });
                }
                _ => {
                    // RFC 8489 §14.5/§14.6: attributes after an integrity attribute (other
                    // than the ones matched above) are ignored.
                    if msg.integrity.is_none() && msg.integrity_sha256.is_none() {
                        msg.attrs.push(RawAttribute { typ, value });
                    }
                }
            }
            off = next;
        }
        Ok(msg)
    }

    /// Message class.
    pub fn class(&self) -> Class {
        self.class
    }

    /// Message method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Transaction ID.
    pub fn transaction_id(&self) -> TransactionId {
        self.txid
    }

    /// Whether a valid FINGERPRINT was present.
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint
    }

    /// Whether MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 is present.
    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some() || self.integrity_sha256.is_some()
    }

    /// The attributes covered by integrity, in wire order.
    pub fn raw_attributes(&self) -> &[RawAttribute<'a>] {
        &self.attrs
    }

    /// Value of the first attribute of type `typ` (RFC 8489 §14: only the first counts).
    pub fn get(&self, typ: u16) -> Option<&'a [u8]> {
        self.attrs.iter().find(|a| a.typ == typ).map(|a| a.value)
    }

    /// Decodes the first attribute of type `typ`: `Ok(None)` if absent.
    pub fn attribute(&self, typ: u16) -> Result<Option<Attribute<'a>>, TurnError> {
        self.get(typ)
            .map(|v| Attribute::decode(typ, v, &self.txid))
            .transpose()
    }

    /// Decodes every attribute in order.
    pub fn attributes(&self) -> impl Iterator<Item = Result<Attribute<'a>, TurnError>> + '_ {
        self.attrs
            .iter()
            .map(|a| Attribute::decode(a.typ, a.value, &self.txid))
    }

    fn text(&self, typ: u16) -> Result<Option<&'a str>, TurnError> {
        match self.get(typ) {
            None => Ok(None),
            Some(v) => decode_text(
                typ,
                v,
                if typ == attr::USERNAME {
                    MAX_USERNAME
                } else {
                    MAX_TEXT
                },
            )
            .map(Some),
        }
    }

    /// USERNAME.
    pub fn username(&self) -> Result<Option<&'a str>, TurnError> {
        self.text(attr::USERNAME)
    }

    /// REALM.
    pub fn realm(&self) -> Result<Option<&'a str>, TurnError> {
        self.text(attr::REALM)
    }

    /// NONCE.
    pub fn nonce(&self) -> Result<Option<&'a str>, TurnError> {
        self.text(attr::NONCE)
    }

    /// SOFTWARE.
    pub fn software(&self) -> Result<Option<&'a str>, TurnError> {
        self.text(attr::SOFTWARE)
    }

    /// LIFETIME in seconds.
    pub fn lifetime(&self) -> Result<Option<u32>, TurnError> {
        Ok(match self.attribute(attr::LIFETIME)? {
            Some(Attribute::Lifetime(l)) => Some(l),
            _ => None,
        })
    }

    /// REQUESTED-TRANSPORT protocol number.
    pub fn requested_transport(&self) -> Result<Option<u8>, TurnError> {
        Ok(match self.attribute(attr::REQUESTED_TRANSPORT)? {
            Some(Attribute::RequestedTransport(p)) => Some(p),
            _ => None,
        })
    }

    /// REQUESTED-ADDRESS-FAMILY.
    pub fn requested_address_family(&self) -> Result<Option<Family>, TurnError> {
        Ok(match self.attribute(attr::REQUESTED_ADDRESS_FAMILY)? {
            Some(Attribute::RequestedAddressFamily(f)) => Some(f),
            _ => None,
        })
    }

    /// CHANNEL-NUMBER.
    pub fn channel_number(&self) -> Result<Option<u16>, TurnError> {
        Ok(match self.attribute(attr::CHANNEL_NUMBER)? {
            Some(Attribute::ChannelNumber(c)) => Some(c),
            _ => None,
        })
    }

    /// DATA.
    pub fn data(&self) -> Option<&'a [u8]> {
        self.get(attr::DATA)
    }

    /// ERROR-CODE as (code, reason).
    pub fn error_code(&self) -> Result<Option<(u16, &'a str)>, TurnError> {
        Ok(match self.attribute(attr::ERROR_CODE)? {
            Some(Attribute::ErrorCode { code, reason }) => Some((code, reason)),
            _ => None,
        })
    }

    /// Every XOR-PEER-ADDRESS (CreatePermission may carry several, RFC 8656 §9.1).
    pub fn xor_peer_addresses(&self) -> Result<Vec<SocketAddr>, TurnError> {
        self.attrs
            .iter()
            .filter(|a| a.typ == attr::XOR_PEER_ADDRESS)
            .map(|a| decode_address(a.typ, a.value, Some(&self.txid)))
            .collect()
    }

    /// The first XOR-PEER-ADDRESS.
    pub fn xor_peer_address(&self) -> Result<Option<SocketAddr>, TurnError> {
        self.address(attr::XOR_PEER_ADDRESS)
    }

    /// XOR-MAPPED-ADDRESS.
    pub fn xor_mapped_address(&self) -> Result<Option<SocketAddr>, TurnError> {
        self.address(attr::XOR_MAPPED_ADDRESS)
    }

    /// XOR-RELAYED-ADDRESS.
    pub fn xor_relayed_address(&self) -> Result<Option<SocketAddr>, TurnError> {
        self.address(attr::XOR_RELAYED_ADDRESS)
    }

    /// MAPPED-ADDRESS.
    pub fn mapped_address(&self) -> Result<Option<SocketAddr>, TurnError> {
        self.address(attr::MAPPED_ADDRESS)
    }

    fn address(&self, typ: u16) -> Result<Option<SocketAddr>, TurnError> {
        let xor = (typ != attr::MAPPED_ADDRESS).then_some(&self.txid);
        self.get(typ)
            .map(|v| decode_address(typ, v, xor))
            .transpose()
    }

    /// Comprehension-required attribute types (0x0000-0x7FFF) not in `known`, deduplicated, for
    /// a 420 response's UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1.1).
    pub fn unknown_comprehension_required(&self, known: &[u16]) -> Vec<u16> {
        let mut unknown: Vec<u16> = Vec::new();
        for a in &self.attrs {
            if a.typ < 0x8000 && !known.contains(&a.typ) && !unknown.contains(&a.typ) {
                unknown.push(a.typ);
            }
        }
        unknown
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, against `key`
    /// (RFC 8489 §14.5, §14.6: HMAC over the message up to the attribute, with the header
    /// length rewritten to end just after it).
    pub fn check_integrity(&self, key: &[u8], crypto: &dyn Crypto) -> IntegrityCheck {
        if let Some(at) = self.integrity_sha256 {
            // The length counts the attribute as sent: a truncated one at its own size.
            let data = self.prefix_with_length(at.offset, at.value.len());
            let mac = crypto.hmac_sha256(key, &data);
            // A truncated MI-SHA256 carries the leftmost bytes of the HMAC.
            let ok = ct_eq(at.value, &mac[..at.value.len()]);
            return verdict(ok, IntegrityKind::Sha256);
        }
        if let Some(at) = self.integrity {
            let data = self.prefix_with_length(at.offset, 20);
            let mac = crypto.hmac_sha1(key, &data);
            return verdict(ct_eq(at.value, &mac), IntegrityKind::Sha1);
        }
        IntegrityCheck::Missing
    }

    /// Copies the message up to `offset` with the header length set to include an attribute
    /// of `value_len` bytes at `offset`.
    fn prefix_with_length(&self, offset: usize, value_len: usize) -> Vec<u8> {
        let mut data = self.raw[..offset].to_vec();
        let len = (offset - HEADER_LEN + 4 + value_len) as u16;
        data[2..4].copy_from_slice(&len.to_be_bytes());
        data
    }
}

fn verdict(ok: bool, kind: IntegrityKind) -> IntegrityCheck {
    if ok {
        IntegrityCheck::Valid(kind)
    } else {
        IntegrityCheck::Invalid(kind)
    }
}

/// CRC-32 of `bytes[..offset]` with the header length covering an 8-byte FINGERPRINT at
/// `offset`, XOR 0x5354554e (RFC 8489 §14.7). `offset` must be at least the header length.
fn fingerprint_over(bytes: &[u8], offset: usize) -> u32 {
    let len = (offset - HEADER_LEN + 8) as u16;
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..2]);
    h.update(&len.to_be_bytes());
    h.update(&bytes[4..offset]);
    h.finalize() ^ FINGERPRINT_XOR
}

/// Builds one STUN message.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    buf: Vec<u8>,
    txid: TransactionId,
}

impl MessageBuilder {
    /// Starts a message with an empty attribute list.
    pub fn new(class: Class, method: Method, txid: TransactionId) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&encode_type(class, method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&txid.0);
        MessageBuilder { buf, txid }
    }

    /// Appends an attribute. Fails if the value or the message would exceed 65535 bytes.
    pub fn add(&mut self, attribute: &Attribute<'_>) -> Result<&mut Self, TurnError> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&attribute.typ().to_be_bytes());
        self.buf.extend_from_slice(&[0, 0]);
        attribute.encode_value(&self.txid, &mut self.buf);
        let vlen = self.buf.len() - start - 4;
        let Ok(vlen16) = u16::try_from(vlen) else {
            self.buf.truncate(start);
            return Err(TurnError::TooLarge {
                what: "attribute",
                len: vlen,
            });
        };
        self.buf[start + 2..start + 4].copy_from_slice(&vlen16.to_be_bytes());
        self.buf.resize(start + 4 + pad4(vlen), 0);
        if let Err(e) = self.set_length(0) {
            self.buf.truncate(start);
            return Err(e);
        }
        Ok(self)
    }

    /// Writes the header length as the body plus `extra` bytes.
    fn set_length(&mut self, extra: usize) -> Result<(), TurnError> {
        let body = self.buf.len() - HEADER_LEN + extra;
        let len = u16::try_from(body).map_err(|_| TurnError::TooLarge {
            what: "message",
            len: body,
        })?;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5).
    pub fn add_integrity(
        &mut self,
        key: &[u8],
        crypto: &dyn Crypto,
    ) -> Result<&mut Self, TurnError> {
        self.set_length(24)?;
        let mac = crypto.hmac_sha1(key, &self.buf);
        self.push_raw(attr::MESSAGE_INTEGRITY, &mac);
        Ok(self)
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (full 32 bytes, RFC 8489 §14.6).
    pub fn add_integrity_sha256(
        &mut self,
        key: &[u8],
        crypto: &dyn Crypto,
    ) -> Result<&mut Self, TurnError> {
        self.set_length(36)?;
        let mac = crypto.hmac_sha256(key, &self.buf);
        self.push_raw(attr::MESSAGE_INTEGRITY_SHA256, &mac);
        Ok(self)
    }

    /// Appends the integrity attribute of `kind`.
    pub fn add_integrity_kind(
        &mut self,
        kind: IntegrityKind,
        key: &[u8],
        crypto: &dyn Crypto,
    ) -> Result<&mut Self, TurnError> {
        match kind {
            IntegrityKind::Sha1 => self.add_integrity(key, crypto),
            IntegrityKind::Sha256 => self.add_integrity_sha256(key, crypto),
        }
    }

    /// Appends FINGERPRINT; must be the last attribute (RFC 8489 §14.7).
    pub fn add_fingerprint(&mut self) -> Result<&mut Self, TurnError> {
        self.set_length(8)?;
        let offset = self.buf.len();
        let crc = fingerprint_over(&self.buf, offset);
        self.push_raw(attr::FINGERPRINT, &crc.to_be_bytes());
        Ok(self)
    }

    /// Appends a fixed-size attribute whose length was already accounted for by `set_length`.
    fn push_raw(&mut self, typ: u16, value: &[u8]) {
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
    }

    /// The encoded message.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Long-term credential key = MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).
/// The strings are used as given: SASLprep/OpaqueString is not applied.
pub fn long_term_key(crypto: &dyn Crypto, username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut s = Vec::with_capacity(username.len() + realm.len() + password.len() + 2);
    s.extend_from_slice(username.as_bytes());
    s.push(b':');
    s.extend_from_slice(realm.as_bytes());
    s.push(b':');
    s.extend_from_slice(password.as_bytes());
    crypto.md5(&s)
}

/// A ChannelData message (RFC 8656 §12.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// Channel number, 0x4000-0x4FFF.
    pub channel: u16,
    /// Application data without padding.
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message at the start of `bytes`. Bytes after the declared length
    /// are allowed (UDP padding, RFC 8656 §12.5) and ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, TurnError> {
        let have = bytes.len();
        let Some(&[c0, c1, l0, l1]) = bytes.get(..CHANNEL_DATA_HEADER_LEN) else {
            return Err(TurnError::Truncated {
                need: CHANNEL_DATA_HEADER_LEN,
                have,
            });
        };
        let channel = u16::from_be_bytes([c0, c1]);
        // Accept the whole RFC 5766 range on the wire; whether a number may be bound is the
        // server's policy (`ServerConfig::rfc5766_channels`), and unbound numbers are dropped.
        if !(CHANNEL_MIN..=CHANNEL_MAX_RFC5766).contains(&channel) {
            return Err(TurnError::BadChannelNumber(channel));
        }
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let end = CHANNEL_DATA_HEADER_LEN + len;
        let data = bytes
            .get(CHANNEL_DATA_HEADER_LEN..end)
            .ok_or(TurnError::Truncated { need: end, have })?;
        Ok(ChannelData { channel, data })
    }
}

/// Appends a ChannelData message to `out`; `pad` adds the zero padding to a multiple of 4
/// that stream transports need (RFC 8656 §12.5).
pub fn encode_channel_data(
    channel: u16,
    data: &[u8],
    pad: bool,
    out: &mut Vec<u8>,
) -> Result<(), TurnError> {
    if !(CHANNEL_MIN..=CHANNEL_MAX_RFC5766).contains(&channel) {
        return Err(TurnError::BadChannelNumber(channel));
    }
    let len = u16::try_from(data.len()).map_err(|_| TurnError::TooLarge {
        what: "ChannelData",
        len: data.len(),
    })?;
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    if pad {
        out.resize(out.len() + (pad4(data.len()) - data.len()), 0);
    }
    Ok(())
}

/// What the first byte of a packet on a TURN port says it is (RFC 8656 §12: the first two
/// bits tell STUN (00) from ChannelData (01)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// Starts with 0b00: a STUN message.
    Stun,
    /// Starts with 0b01: ChannelData.
    ChannelData,
    /// Empty, or a first byte that is neither.
    Other,
}

/// Classifies a packet by its first byte.
pub fn classify(bytes: &[u8]) -> PacketKind {
    match bytes.first().map(|b| b >> 6) {
        Some(0) => PacketKind::Stun,
        Some(1) => PacketKind::ChannelData,
        _ => PacketKind::Other,
    }
}

/// Result of [`frame_len`] on the front of a TCP/TLS byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes to know the frame length yet.
    Incomplete,
    /// A STUN message of this many bytes.
    Stun(usize),
    /// A ChannelData message of this many bytes including padding to 4 (RFC 8656 §12.5).
    ChannelData(usize),
    /// Neither; a stream in this state cannot be resynchronised and should be closed.
    Invalid,
}

/// Length of the first frame in a stream buffer, without requiring all of it to be present.
pub fn frame_len(buf: &[u8]) -> Frame {
    let Some(&[b0, _, l0, l1]) = buf.get(..4) else {
        return if buf.first().is_some_and(|b| b >> 6 > 1) {
            Frame::Invalid
        } else {
            Frame::Incomplete
        };
    };
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    match b0 >> 6 {
        0 if len.is_multiple_of(4) => Frame::Stun(HEADER_LEN + len),
        1 => Frame::ChannelData(CHANNEL_DATA_HEADER_LEN + pad4(len)),
        _ => Frame::Invalid,
    }
}

#[cfg(test)]
mod tests;
