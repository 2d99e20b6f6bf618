//! The ethtool generic-netlink messages ng-agent needs to turn transmit checksum offload off and
//! GRO on on the gateway veth (docs/webrtc.md "The gateway peer"): built and read here, sent by
//! `io::gateway` on a netlink socket inside the gateway namespace. No `ethtool` binary.
//!
//! Why: the gateway's packets cross the veth into fork-agent's XDP relay, which rewrites
//! addresses and ports and updates the UDP checksum incrementally. With offload on, a veth hands
//! on a packet whose checksum field holds only the pseudo-header sum (CHECKSUM_PARTIAL), the
//! update produces a wrong checksum, and the phone drops the packet. GRO: the relay's packets
//! to the gateway are redirected into the veth (XDP_REDIRECT), which delivers them only to a
//! peer with NAPI on, i.e. with GRO on or an XDP program of its own; the gateway end has none.
//!
//! Call order: [`family_request`], read the family id with [`family_id`]; then
//! [`features_set`] with [`TX_CHECKSUM`] off and [`GRO`] on, checked with [`ack`]; then
//! [`features_get`], whose answer [`active_features`] reads to confirm the kernel did it.
//!
//! Formats: netlink(7) and genetlink headers in host byte order; constants from
//! `<linux/genetlink.h>` and `<linux/ethtool_netlink.h>` (uAPI, stable).

/// The transmit checksum features `ethtool -K <dev> tx off` turns off (NETIF_F_CSUM_MASK).
pub const TX_CHECKSUM: [&str; 3] = [
    "tx-checksum-ipv4",
    "tx-checksum-ip-generic",
    "tx-checksum-ipv6",
];

/// Generic receive offload: turned on (`ethtool -K <dev> gro on`).
pub const GRO: &str = "rx-gro";

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

/// The generic netlink controller (`GENL_ID_CTRL`) and its family lookup.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const ETHTOOL_GENL_NAME: &str = "ethtool";
const ETHTOOL_GENL_VERSION: u8 = 1;
const ETHTOOL_MSG_FEATURES_GET: u8 = 11;
const ETHTOOL_MSG_FEATURES_SET: u8 = 12;
const ETHTOOL_A_FEATURES_HEADER: u16 = 1;
const ETHTOOL_A_FEATURES_WANTED: u16 = 3;
const ETHTOOL_A_FEATURES_ACTIVE: u16 = 4;
const ETHTOOL_A_HEADER_DEV_NAME: u16 = 2;
const ETHTOOL_A_HEADER_FLAGS: u16 = 3;
/// No reply message to a set, only the acknowledgement.
const ETHTOOL_FLAG_OMIT_REPLY: u32 = 1 << 1;
/// A flag: the bitset is a list of the bits that are set, without values (no mask).
const ETHTOOL_A_BITSET_NOMASK: u16 = 1;
const ETHTOOL_A_BITSET_BITS: u16 = 3;
const ETHTOOL_A_BITSET_BITS_BIT: u16 = 1;
const ETHTOOL_A_BITSET_BIT_NAME: u16 = 2;
const ETHTOOL_A_BITSET_BIT_VALUE: u16 = 3;

/// Why an answer was not what was asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EthtoolError {
    /// The kernel refused the request (`NLMSG_ERROR` with this errno).
    #[error("the kernel refused: {}", std::io::Error::from_raw_os_error(*.0))]
    Kernel(i32),
    /// The answer was cut short or does not parse as netlink.
    #[error("a truncated or malformed netlink answer")]
    Malformed,
    /// The answer is for another request (sequence number) or of an unexpected type.
    #[error("an answer to another request")]
    Unexpected,
    /// The controller's answer named no family id.
    #[error("no ethtool generic netlink family (kernel without CONFIG_ETHTOOL_NETLINK?)")]
    NoFamily,
}

/// One netlink attribute: type (with flags) and payload, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, typ: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&typ.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

fn string(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

/// A whole request: netlink header, genetlink header, attributes.
fn message(family: u16, flags: u16, seq: u32, cmd: u8, version: u8, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + GENL_HDRLEN + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&family.to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[cmd, version, 0, 0]);
    out.extend_from_slice(attrs);
    out
}

/// The attributes in `buf` as (type without flags, payload); stops at the first malformed one.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes([*buf.first()?, *buf.get(1)?]));
        let typ = u16::from_ne_bytes([*buf.get(2)?, *buf.get(3)?]) & !NLA_F_NESTED;
        let payload = buf.get(4..len)?;
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((typ, payload))
    })
}

/// The payload of the answer to `seq`: genetlink attributes of a data message, or an error.
/// An `NLMSG_ERROR` with errno 0 (the acknowledgement) gives an empty payload.
fn answer(buf: &[u8], seq: u32) -> Result<&[u8], EthtoolError> {
    let hdr = buf.get(..NLMSG_HDRLEN).ok_or(EthtoolError::Malformed)?;
    let word = |i: usize| u32::from_ne_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let len = word(0) as usize;
    let typ = u16::from_ne_bytes([hdr[4], hdr[5]]);
    let body = buf.get(NLMSG_HDRLEN..len).ok_or(EthtoolError::Malformed)?;
    if word(8) != seq {
        return Err(EthtoolError::Unexpected);
    }
    if typ == NLMSG_ERROR {
        let e = body.get(..4).ok_or(EthtoolError::Malformed)?;
        return match i32::from_ne_bytes([e[0], e[1], e[2], e[3]]) {
            0 => Ok(&[]),
            errno => Err(EthtoolError::Kernel(-errno)),
        };
    }
    body.get(GENL_HDRLEN..).ok_or(EthtoolError::Malformed)
}

/// Asks the controller for the ethtool family's id.
pub fn family_request(seq: u32) -> Vec<u8> {
    let mut a = Vec::new();
    attr(&mut a, CTRL_ATTR_FAMILY_NAME, &string(ETHTOOL_GENL_NAME));
    message(GENL_ID_CTRL, 0, seq, CTRL_CMD_GETFAMILY, 1, &a)
}

/// The ethtool family id from the controller's answer to [`family_request`].
pub fn family_id(buf: &[u8], seq: u32) -> Result<u16, EthtoolError> {
    attrs(answer(buf, seq)?)
        .find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID)
        .and_then(|(_, p)| Some(u16::from_ne_bytes([*p.first()?, *p.get(1)?])))
        .ok_or(EthtoolError::NoFamily)
}

/// The request header naming `dev`, with `ETHTOOL_FLAG_*` `flags` when not 0.
fn header(dev: &str, flags: u32) -> Vec<u8> {
    let mut h = Vec::new();
    attr(&mut h, ETHTOOL_A_HEADER_DEV_NAME, &string(dev));
    if flags != 0 {
        attr(&mut h, ETHTOOL_A_HEADER_FLAGS, &flags.to_ne_bytes());
    }
    let mut a = Vec::new();
    attr(&mut a, ETHTOOL_A_FEATURES_HEADER | NLA_F_NESTED, &h);
    a
}

/// Turns the features named in `off` off and those in `on` on, on `dev` (a bitset with a mask:
/// only those change; the kernel ignores a name the device cannot change); it acknowledges
/// ([`ack`]).
pub fn features_set(family: u16, seq: u32, dev: &str, off: &[&str], on: &[&str]) -> Vec<u8> {
    let mut bits = Vec::new();
    for (name, value) in off
        .iter()
        .map(|n| (n, false))
        .chain(on.iter().map(|n| (n, true)))
    {
        // ETHTOOL_A_BITSET_BIT_VALUE present: set; absent: cleared.
        let mut bit = Vec::new();
        attr(&mut bit, ETHTOOL_A_BITSET_BIT_NAME, &string(name));
        if value {
            attr(&mut bit, ETHTOOL_A_BITSET_BIT_VALUE, &[]);
        }
        attr(&mut bits, ETHTOOL_A_BITSET_BITS_BIT | NLA_F_NESTED, &bit);
    }
    let mut set = Vec::new();
    attr(&mut set, ETHTOOL_A_BITSET_BITS | NLA_F_NESTED, &bits);
    let mut a = header(dev, ETHTOOL_FLAG_OMIT_REPLY);
    attr(&mut a, ETHTOOL_A_FEATURES_WANTED | NLA_F_NESTED, &set);
    message(
        family,
        NLM_F_ACK,
        seq,
        ETHTOOL_MSG_FEATURES_SET,
        ETHTOOL_GENL_VERSION,
        &a,
    )
}

/// Reads `dev`'s features ([`active_features`] reads the answer).
pub fn features_get(family: u16, seq: u32, dev: &str) -> Vec<u8> {
    message(
        family,
        0,
        seq,
        ETHTOOL_MSG_FEATURES_GET,
        ETHTOOL_GENL_VERSION,
        &header(dev, 0),
    )
}

/// The kernel's answer to [`features_set`] (which asks for no reply message, only the
/// acknowledgement).
pub fn ack(buf: &[u8], seq: u32) -> Result<(), EthtoolError> {
    answer(buf, seq).map(|_| ())
}

/// The names of the features that are on, from the answer to [`features_get`]. The kernel
/// sends `ACTIVE` as a verbose bitset without a mask (`NOMASK`: the bits listed are the ones
/// set, with no `VALUE`); a bitset with a mask lists every bit, `VALUE` present when on. Both
/// are read.
pub fn active_features(buf: &[u8], seq: u32) -> Result<Vec<String>, EthtoolError> {
    let active = attrs(answer(buf, seq)?)
        .find(|(t, _)| *t == ETHTOOL_A_FEATURES_ACTIVE)
        .ok_or(EthtoolError::Malformed)?
        .1;
    let Some((_, bits)) = attrs(active).find(|(t, _)| *t == ETHTOOL_A_BITSET_BITS) else {
        return Ok(Vec::new());
    };
    let list = attrs(active).any(|(t, _)| t == ETHTOOL_A_BITSET_NOMASK);
    Ok(attrs(bits)
        .filter(|(t, _)| *t == ETHTOOL_A_BITSET_BITS_BIT)
        .filter(|(_, bit)| list || attrs(bit).any(|(t, _)| t == ETHTOOL_A_BITSET_BIT_VALUE))
        .filter_map(|(_, bit)| {
            let (_, name) = attrs(bit).find(|(t, _)| *t == ETHTOOL_A_BITSET_BIT_NAME)?;
            let name = name.strip_suffix(&[0]).unwrap_or(name);
            Some(String::from_utf8_lossy(name).into_owned())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel answer: netlink header, and a genetlink header unless it is `NLMSG_ERROR`.
    fn reply(typ: u16, seq: u32, attrs: &[u8]) -> Vec<u8> {
        let mut m = message(typ, 0, seq, 1, 1, attrs);
        if typ == NLMSG_ERROR {
            m.drain(NLMSG_HDRLEN..NLMSG_HDRLEN + GENL_HDRLEN);
            let len = m.len() as u32;
            m[..4].copy_from_slice(&len.to_ne_bytes());
        }
        m
    }

    fn bit(name: &str, on: bool) -> Vec<u8> {
        let mut b = Vec::new();
        attr(&mut b, ETHTOOL_A_BITSET_BIT_NAME, &string(name));
        if on {
            attr(&mut b, ETHTOOL_A_BITSET_BIT_VALUE, &[]);
        }
        let mut out = Vec::new();
        attr(&mut out, ETHTOOL_A_BITSET_BITS_BIT | NLA_F_NESTED, &b);
        out
    }

    #[test]
    fn the_set_request_names_the_device_and_clears_each_bit() {
        let m = features_set(27, 9, "gw0", &TX_CHECKSUM, &[GRO]);
        assert_eq!(
            m.len(),
            u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 27);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(m[16], ETHTOOL_MSG_FEATURES_SET);
        let top: Vec<(u16, &[u8])> = attrs(&m[20..]).collect();
        assert_eq!(top.len(), 2);
        let hdr: Vec<(u16, &[u8])> = attrs(top[0].1).collect();
        assert_eq!(
            hdr,
            vec![
                (ETHTOOL_A_HEADER_DEV_NAME, b"gw0\0".as_slice()),
                (
                    ETHTOOL_A_HEADER_FLAGS,
                    &ETHTOOL_FLAG_OMIT_REPLY.to_ne_bytes()[..]
                ),
            ]
        );
        let (t, set) = attrs(top[1].1).next().expect("bits");
        assert_eq!(t, ETHTOOL_A_BITSET_BITS);
        let names: Vec<(Vec<u8>, bool)> = attrs(set)
            .map(|(_, b)| {
                let inner: Vec<(u16, &[u8])> = attrs(b).collect();
                assert_eq!(inner[0].0, ETHTOOL_A_BITSET_BIT_NAME);
                // A name alone: off; with an empty VALUE: on.
                let on = inner.get(1) == Some(&(ETHTOOL_A_BITSET_BIT_VALUE, &[][..]));
                assert_eq!(inner.len(), 1 + usize::from(on));
                (inner[0].1.to_vec(), on)
            })
            .collect();
        let want: Vec<(Vec<u8>, bool)> = TX_CHECKSUM
            .iter()
            .map(|n| (string(n), false))
            .chain([(string(GRO), true)])
            .collect();
        assert_eq!(names, want);
    }

    #[test]
    fn answers_are_read_or_refused_by_sequence_and_errno() {
        let mut a = Vec::new();
        attr(&mut a, CTRL_ATTR_FAMILY_NAME, &string("ethtool"));
        attr(&mut a, CTRL_ATTR_FAMILY_ID, &27u16.to_ne_bytes());
        let fam = reply(GENL_ID_CTRL, 5, &a);
        assert_eq!(family_id(&fam, 5), Ok(27));
        assert_eq!(family_id(&fam, 6), Err(EthtoolError::Unexpected));
        assert_eq!(family_id(&fam[..10], 5), Err(EthtoolError::Malformed));
        assert_eq!(ack(&reply(NLMSG_ERROR, 7, &0i32.to_ne_bytes()), 7), Ok(()));
        assert_eq!(
            ack(&reply(NLMSG_ERROR, 7, &(-1i32).to_ne_bytes()), 7),
            Err(EthtoolError::Kernel(1))
        );

        let bits = [bit("tx-checksum-ip-generic", false), bit("rx-gro", true)].concat();
        let mut set = Vec::new();
        attr(&mut set, ETHTOOL_A_BITSET_BITS | NLA_F_NESTED, &bits);
        let mut a = header("gw0", 0);
        attr(&mut a, ETHTOOL_A_FEATURES_ACTIVE | NLA_F_NESTED, &set);
        let got = active_features(&reply(27, 8, &a), 8).expect("features");
        assert_eq!(got, vec!["rx-gro".to_owned()]);
        // What the kernel sends for ACTIVE: a list without mask, every bit named is on.
        let mut list = Vec::new();
        attr(&mut list, ETHTOOL_A_BITSET_NOMASK, &[]);
        let bits = [bit("tx-checksum-ipv4", false), bit("rx-gro", false)].concat();
        attr(&mut list, ETHTOOL_A_BITSET_BITS | NLA_F_NESTED, &bits);
        let mut a = header("gw0", 0);
        attr(&mut a, ETHTOOL_A_FEATURES_ACTIVE | NLA_F_NESTED, &list);
        let got = active_features(&reply(27, 9, &a), 9).expect("features");
        assert_eq!(
            got,
            vec!["tx-checksum-ipv4".to_owned(), "rx-gro".to_owned()]
        );
    }
}
