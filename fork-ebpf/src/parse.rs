//! Small bounds-checked parsers: Ethernet (+ up to two VLAN tags) → IPv4/IPv6 → UDP → RTP.
//! Each returns offsets from the start of the frame; callers re-derive pointers from those offsets
//! after any `bpf_xdp_adjust_*` call. Every offset is bounded by a constant before use so the
//! verifier can prove each access.

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_xdp_load_bytes, programs::XdpContext};
use fork_common::{Reason, FAMILY_V4, FAMILY_V6};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
const IPV6_FRAGMENT: u8 = 44;
pub const UDP_HLEN: usize = 8;
pub const RTP_HLEN: usize = 12;
/// Largest frame we inspect: bounds the variable offsets below for the verifier.
pub const MAX_FRAME: usize = 9216;

/// Pointer to a `T` at `off`, or `Err` if it would end past `data_end`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*const T, Reason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(Reason::PassTruncated);
    }
    Ok((start + off) as *const T)
}

#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, Reason> {
    Ok(ptr_at::<T>(ctx, off)? as *mut T)
}

/// One byte at a variable offset, copied by the kernel (bounds checked there).
#[inline(always)]
pub fn load_u8(ctx: &XdpContext, off: usize) -> Option<u8> {
    let mut b = 0u8;
    let rc =
        unsafe { bpf_xdp_load_bytes(ctx.ctx, off as u32, &mut b as *mut u8 as *mut c_void, 1) };
    (rc == 0).then_some(b)
}

/// Big-endian u16 at `off`.
#[inline(always)]
pub fn read_be16(ctx: &XdpContext, off: usize) -> Result<u16, Reason> {
    let p = ptr_at::<[u8; 2]>(ctx, off)?;
    Ok(u16::from_be_bytes(unsafe { *p }))
}

/// Where the layers of a UDP packet start, and the header fields the relay needs. Fields are read
/// through one checked pointer per header: LLVM drops bounds checks it can prove redundant, and
/// the verifier only accepts accesses through a pointer it has seen checked.
#[derive(Clone, Copy)]
pub struct UdpPacket {
    pub l3_off: usize,
    pub l4_off: usize,
    pub family: u8,
    /// UDP length field (header + payload), not checked against the frame: every later access is
    /// bounds-checked on its own.
    pub udp_len: usize,
    pub saddr_be: [u32; 4],
    pub daddr_be: [u32; 4],
    pub sport_be: u16,
    pub dport_be: u16,
}

/// Parse Ethernet, VLAN tags, IPv4 (with options) or IPv6 and UDP.
#[inline(always)]
pub fn parse_udp(ctx: &XdpContext) -> Result<UdpPacket, Reason> {
    let mut proto = read_be16(ctx, 12)?;
    let mut l3_off = ETH_HLEN;
    // 802.1ad outer tag then 802.1Q, or a single 802.1Q tag.
    if proto == ETH_P_8021AD || proto == ETH_P_8021Q {
        proto = read_be16(ctx, l3_off + 2)?;
        l3_off += 4;
        if proto == ETH_P_8021Q {
            proto = read_be16(ctx, l3_off + 2)?;
            l3_off += 4;
        }
    }
    let mut saddr_be = [0u32; 4];
    // Bytes after the IP header as the IP header says (IPv4 total length minus header, IPv6
    // payload length): a UDP length beyond it is a lie, whatever the frame holds.
    let mut ip_payload = 0usize;
    let mut daddr_be = [0u32; 4];
    let (family, l4_off) = match proto {
        ETH_P_IP => {
            let ip = unsafe { &*ptr_at::<[u8; 20]>(ctx, l3_off)? };
            if ip[0] >> 4 != 4 {
                return Err(Reason::PassNotIp);
            }
            let ihl = ((ip[0] & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Err(Reason::PassTruncated);
            }
            // More-fragments flag or a non-zero offset.
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return Err(Reason::PassFragment);
            }
            if ip[9] != IPPROTO_UDP {
                return Err(Reason::PassNotUdp);
            }
            saddr_be[0] = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
            daddr_be[0] = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
            ip_payload = (u16::from_be_bytes([ip[2], ip[3]]) as usize).saturating_sub(ihl);
            (FAMILY_V4, l3_off + ihl)
        }
        ETH_P_IPV6 => {
            let ip = unsafe { &*ptr_at::<[u32; 10]>(ctx, l3_off)? };
            if (ip[0].to_ne_bytes()[0]) >> 4 != 6 {
                return Err(Reason::PassNotIp);
            }
            match ip[1].to_ne_bytes()[2] {
                IPPROTO_UDP => {}
                IPV6_FRAGMENT => return Err(Reason::PassFragment),
                _ => return Err(Reason::PassNotUdp),
            }
            ip_payload =
                u16::from_be_bytes([ip[1].to_ne_bytes()[0], ip[1].to_ne_bytes()[1]]) as usize;
            saddr_be = [ip[2], ip[3], ip[4], ip[5]];
            daddr_be = [ip[6], ip[7], ip[8], ip[9]];
            (FAMILY_V6, l3_off + 40)
        }
        _ => return Err(Reason::PassNotIp),
    };
    let udp = unsafe { &*ptr_at::<[u16; 4]>(ctx, l4_off)? };
    let udp_len = u16::from_be(udp[2]) as usize;
    // The frame must hold the whole IP packet (hence the datagram). The length goes through a volatile stack slot so
    // LLVM cannot turn this check into a reason to drop the per-access pointer checks the
    // verifier needs.
    let frame_len = ctx.data_end() - ctx.data();
    let frame_len = unsafe { core::ptr::read_volatile(&frame_len) };
    if udp_len < UDP_HLEN
        || udp_len > MAX_FRAME
        || udp_len > ip_payload
        || l4_off + ip_payload > frame_len
    {
        return Err(Reason::PassTruncated);
    }
    Ok(UdpPacket {
        l3_off,
        l4_off,
        family,
        udp_len,
        saddr_be,
        daddr_be,
        sport_be: udp[0],
        dport_be: udp[1],
    })
}

/// An RTP packet's layout (RFC 3550 §5.1).
#[derive(Clone, Copy)]
pub struct Rtp {
    pub pt: u8,
    pub seq: u16,
    pub ssrc: u32,
    pub payload_off: usize,
    pub payload_len: usize,
}

/// What a datagram on an RTP flow turned out to be.
pub enum RtpKind {
    Rtp(Rtp),
    /// RTCP multiplexed on the RTP port (RFC 5761 §4: PT 72–76 with the marker bit).
    Rtcp,
}

/// Parse the RTP header at `rtp_off` with `len` bytes of UDP payload. `Err(())` = not valid RTP.
#[inline(always)]
pub fn parse_rtp(ctx: &XdpContext, rtp_off: usize, len: usize) -> Result<RtpKind, ()> {
    if len < RTP_HLEN || len > MAX_FRAME {
        return Err(());
    }
    let h = unsafe { &*ptr_at::<[u8; RTP_HLEN]>(ctx, rtp_off).map_err(|_| ())? };
    let b0 = h[0];
    if b0 >> 6 != 2 {
        return Err(());
    }
    let pt = h[1] & 0x7f;
    if (72..=76).contains(&pt) {
        return Ok(RtpKind::Rtcp);
    }
    let seq = u16::from_be_bytes([h[2], h[3]]);
    let ssrc = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    let mut hdr = RTP_HLEN + ((b0 & 0x0f) as usize) * 4;
    if b0 & 0x10 != 0 {
        // Header extension: 16-bit profile, 16-bit length in 32-bit words (RFC 3550 §5.3.1).
        if hdr + 4 > len {
            return Err(());
        }
        let w = [
            load_u8(ctx, rtp_off + hdr + 2).ok_or(())?,
            load_u8(ctx, rtp_off + hdr + 3).ok_or(())?,
        ];
        let words = u16::from_be_bytes(w) as usize;
        hdr += 4 + words * 4;
    }
    let mut pad = 0usize;
    if b0 & 0x20 != 0 {
        // The last octet of the payload counts the padding octets, itself included.
        // bpf_xdp_load_bytes, not a packet pointer: the offset is data-dependent twice over
        // (headers and UDP length), which LLVM folds into shapes the verifier rejects.
        pad = load_u8(ctx, rtp_off + len - 1).ok_or(())? as usize;
        if pad == 0 {
            return Err(());
        }
    }
    if hdr + pad > len {
        return Err(());
    }
    Ok(RtpKind::Rtp(Rtp {
        pt,
        seq,
        ssrc,
        payload_off: rtp_off + hdr,
        payload_len: len - hdr - pad,
    }))
}
