//! rtnetlink neighbour dumps (RTM_GETNEIGH, rtnetlink(7)), built and parsed without IO.
//!
//! Role: fork-agent follows the MAC of every next hop in use once a second. Asking `ip neigh`
//! per hop started a process per hop per second; one dump of the whole neighbour table is one
//! request and a few datagrams, whatever the number of hops.
//! Inputs: [`request`] for the message to send, [`parse`] for each datagram received.
//! Outputs: [`Parsed`]: the entries of that datagram and whether the dump is done.
//! Layouts (linux/netlink.h, linux/neighbour.h): nlmsghdr (16 bytes), ndmsg (12 bytes), then
//! rtattrs (4-byte header, 4-byte aligned); NDA_DST (1) is the address, NDA_LLADDR (2) the MAC.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const NLMSG_HDRLEN: usize = 16;
const NDMSG_LEN: usize = 12;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// NUD_INCOMPLETE | NUD_FAILED: resolution pending or failed, no usable MAC.
const NUD_UNUSABLE: u16 = 0x01 | 0x20;

/// One neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub addr: IpAddr,
    /// The MAC, when the entry has one and is not incomplete or failed.
    pub mac: Option<[u8; 6]>,
}

/// What one received datagram held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub entries: Vec<Neighbour>,
    /// NLMSG_DONE seen: the dump is complete.
    pub done: bool,
}

/// Why a datagram could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DumpError {
    /// The kernel answered with an error (a negative errno).
    #[error("the kernel refused the neighbour dump: errno {0}")]
    Kernel(i32),
    /// A length field points outside the datagram.
    #[error("truncated netlink message at offset {0}")]
    Truncated(usize),
}

/// A dump request for every neighbour of every family, with sequence number `seq`.
pub fn request(seq: u32) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + NDMSG_LEN) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&RTM_GETNEIGH.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // ndmsg with family AF_UNSPEC: all families.
    m.extend_from_slice(&[0u8; NDMSG_LEN]);
    m
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parse one datagram of the dump answering `seq`; messages of other sequences are skipped.
pub fn parse(buf: &[u8], seq: u32) -> Result<Parsed, DumpError> {
    let mut out = Parsed::default();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, off).ok_or(DumpError::Truncated(off))? as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return Err(DumpError::Truncated(off));
        }
        let ty = u16_at(buf, off + 4).ok_or(DumpError::Truncated(off))?;
        let msg_seq = u32_at(buf, off + 8).ok_or(DumpError::Truncated(off))?;
        let body = &buf[off + NLMSG_HDRLEN..off + len];
        if msg_seq == seq {
            match ty {
                NLMSG_DONE => out.done = true,
                NLMSG_ERROR => {
                    let errno = u32_at(body, 0).ok_or(DumpError::Truncated(off))? as i32;
                    if errno != 0 {
                        return Err(DumpError::Kernel(-errno));
                    }
                }
                RTM_NEWNEIGH => {
                    if let Some(n) = neighbour(body) {
                        out.entries.push(n);
                    }
                }
                _ => {}
            }
        }
        off += align4(len);
    }
    Ok(out)
}

/// One RTM_NEWNEIGH body; `None` for families other than IPv4/IPv6 or without NDA_DST.
fn neighbour(body: &[u8]) -> Option<Neighbour> {
    let family = *body.first()?;
    let ifindex = u32_at(body, 4)?;
    let state = u16_at(body, 8)?;
    let mut addr = None;
    let mut mac = None;
    let mut off = NDMSG_LEN;
    while off + 4 <= body.len() {
        let alen = usize::from(u16_at(body, off)?);
        let aty = u16_at(body, off + 2)? & 0x3fff;
        if alen < 4 || off + alen > body.len() {
            return None;
        }
        let data = &body[off + 4..off + alen];
        match (aty, family, data.len()) {
            (NDA_DST, AF_INET, 4) => {
                addr = Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?)))
            }
            (NDA_DST, AF_INET6, 16) => {
                addr = Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?)))
            }
            (NDA_LLADDR, _, 6) => mac = <[u8; 6]>::try_from(data).ok(),
            _ => {}
        }
        off += align4(alen);
    }
    Some(Neighbour {
        ifindex,
        addr: addr?,
        mac: mac.filter(|_| state & NUD_UNUSABLE == 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(data);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn msg(ty: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    fn ndmsg(family: u8, ifindex: u32, state: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![family, 0, 0, 0];
        b.extend_from_slice(&ifindex.to_ne_bytes());
        b.extend_from_slice(&state.to_ne_bytes());
        b.extend_from_slice(&[0, 1]);
        for a in attrs {
            b.extend_from_slice(a);
        }
        b
    }

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x2a];

    #[test]
    fn the_request_is_a_dump_of_all_families() {
        let r = request(7);
        assert_eq!(r.len(), 28);
        assert_eq!(u32_at(&r, 0), Some(28));
        assert_eq!(u16_at(&r, 4), Some(RTM_GETNEIGH));
        assert_eq!(u16_at(&r, 6), Some(0x301));
        assert_eq!(u32_at(&r, 8), Some(7));
        assert_eq!(r[16], 0, "AF_UNSPEC");
    }

    #[test]
    fn entries_of_both_families_are_read_and_unusable_states_have_no_mac() {
        let v6: Ipv6Addr = "fd00:77:2::2".parse().unwrap();
        let mut d = msg(
            RTM_NEWNEIGH,
            5,
            &ndmsg(
                AF_INET,
                4,
                0x02,
                &[attr(NDA_DST, &[10, 77, 2, 2]), attr(NDA_LLADDR, &MAC)],
            ),
        );
        d.extend(msg(
            RTM_NEWNEIGH,
            5,
            &ndmsg(
                AF_INET6,
                4,
                0x04,
                &[attr(NDA_DST, &v6.octets()), attr(NDA_LLADDR, &MAC)],
            ),
        ));
        // Failed resolution: the stale MAC must not be used.
        d.extend(msg(
            RTM_NEWNEIGH,
            5,
            &ndmsg(
                AF_INET,
                5,
                0x20,
                &[attr(NDA_DST, &[10, 77, 1, 9]), attr(NDA_LLADDR, &MAC)],
            ),
        ));
        // Another request's answer is not ours.
        d.extend(msg(
            RTM_NEWNEIGH,
            6,
            &ndmsg(AF_INET, 4, 0x02, &[attr(NDA_DST, &[1, 1, 1, 1])]),
        ));
        let p = parse(&d, 5).unwrap();
        assert!(!p.done);
        assert_eq!(
            p.entries,
            vec![
                Neighbour {
                    ifindex: 4,
                    addr: "10.77.2.2".parse().unwrap(),
                    mac: Some(MAC)
                },
                Neighbour {
                    ifindex: 4,
                    addr: IpAddr::V6(v6),
                    mac: Some(MAC)
                },
                Neighbour {
                    ifindex: 5,
                    addr: "10.77.1.9".parse().unwrap(),
                    mac: None
                },
            ]
        );
        assert!(parse(&msg(NLMSG_DONE, 5, &[0; 4]), 5).unwrap().done);
    }

    #[test]
    fn errors_and_truncation_are_reported_not_guessed() {
        let mut err = msg(NLMSG_ERROR, 1, &(-1i32).to_ne_bytes());
        err.extend_from_slice(&[0; 16]);
        assert_eq!(parse(&err, 1), Err(DumpError::Kernel(1)));
        let ok = msg(
            RTM_NEWNEIGH,
            1,
            &ndmsg(AF_INET, 4, 2, &[attr(NDA_DST, &[10, 0, 0, 1])]),
        );
        for cut in NLMSG_HDRLEN..ok.len() {
            assert_eq!(
                parse(&ok[..cut], 1),
                Err(DumpError::Truncated(0)),
                "cut {cut}"
            );
        }
        // An attribute whose length runs past the message: the entry is skipped.
        let mut bad = ndmsg(AF_INET, 4, 2, &[]);
        bad.extend_from_slice(&[40, 0, 1, 0, 10, 0, 0, 1]);
        assert_eq!(
            parse(&msg(RTM_NEWNEIGH, 1, &bad), 1).unwrap().entries,
            vec![]
        );
        // Bridge (AF_BRIDGE) entries have no IP address: skipped.
        let fdb = ndmsg(7, 4, 2, &[attr(NDA_LLADDR, &MAC)]);
        assert_eq!(
            parse(&msg(RTM_NEWNEIGH, 1, &fdb), 1).unwrap().entries,
            vec![]
        );
    }
}
