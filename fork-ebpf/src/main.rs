//! xdpfork's XDP programs. Each `#[xdp]` function is a shim: it calls `try_*`, and the single
//! `finish` turns the outcome into an action while counting exactly one `Reason` per packet.
//!
//! - `xdp_relay_*` (media interfaces): relays anchored RTP/RTCP flows entirely in the kernel
//!   (address/port rewrite, incremental checksums, next hop by `bpf_fib_lookup`, redirect or
//!   XDP_TX) and, for forked flows, tags the packet and clones it with one devmap broadcast
//!   (`TX_PORTS`) to the egress interface and the fork veth.
//! - `xdp_egress_*` (devmap program on the media interfaces in `TX_PORTS`): drops broadcast
//!   copies that were not meant for that interface, takes the tag off the relayed copy, and lets
//!   plain relayed frames through.
//! - `xdp_fork_*` (peer of the fork veth): hands the tagged copy to fork-agent's AF_XDP socket
//!   with the tag in front of the frame.
//!
//! Every program exists in two variants that differ only in where the tag travels between the
//! relay and the other two (docs/maps.md "Fork path"): `_meta` in XDP metadata
//! (`bpf_xdp_adjust_meta`, which some kernel builds refuse), `_head` in the frame's headroom
//! (`bpf_xdp_adjust_head` only). fork-agent loads one set, chosen by really loading it. The
//! variants are one generic function each, instantiated with `HEAD = false | true`.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's AtomicU64 lacks fetch_add; the intrinsic
// lowers to the BPF atomic add instruction (kernel >= 5.12 for the fetch form).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod csum;
mod maps;
mod parse;

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_F_BROADCAST, BPF_F_EXCLUDE_INGRESS,
    },
    helpers::{bpf_fib_lookup, bpf_ktime_get_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_meta},
    macros::xdp,
    programs::XdpContext,
    EbpfContext,
};
use aya_log_ebpf::warn;
use csum::CsumDelta;
use fork_common::{
    FlowAction, FlowKey, FlowStats, ForkTag, NeighKey, Reason, TurnChannelKey, TurnPeerKey,
    FAMILY_V4, FLOW_F_FORK, FLOW_F_INJECT, FLOW_F_RENUMBER, FLOW_F_RTCP, FLOW_F_SINK,
    FLOW_F_STRICT_SOURCE, FLOW_F_TURN_LISTENER, FLOW_F_TURN_RELAY, FORK_TAG_MAGIC, TAG_F_DTMF,
    TURN_CHANNEL_MAX, TURN_CHANNEL_MIN,
};
use maps::{
    CONFIG, COUNTERS, FLOWS, FLOW_STATS, NEIGHBOURS, TURN_CHANNELS, TURN_PEERS, TX_PORTS, XSKS,
};
use parse::{
    parse_rtp, parse_udp, ptr_at, ptr_at_mut, Rtp, RtpKind, UdpPacket, ETH_HLEN, UDP_HLEN,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// TTL / hop limit of relayed packets: the relay is an endpoint of each leg (as rtpengine's
/// kernel module), not a router, so the caller's TTL is not carried over.
const RELAY_TTL: u8 = 64;
/// Sequence jumps at least this large are a restart, not loss (RFC 3550 A.1 MAX_DROPOUT).
const MAX_DROPOUT: i16 = 3000;
/// Packets at most this far behind the highest sequence are late; further back is a restart
/// (RFC 3550 A.1 MAX_MISORDER).
const MAX_MISORDER: i16 = 100;
const TAG_LEN: i32 = core::mem::size_of::<ForkTag>() as i32;

/// The outcome of one packet: the action to return and the reason to count.
struct Verdict(u32, Reason);

#[inline(always)]
fn finish(v: Verdict) -> u32 {
    if let Some(c) = COUNTERS.get_ptr_mut(v.1 as u32) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *c += 1 };
    }
    v.0
}

#[inline(always)]
fn pass(reason: Reason) -> Verdict {
    Verdict(xdp_action::XDP_PASS, reason)
}

#[inline(always)]
fn add(counter: &mut u64, n: u64) {
    // Several CPUs can receive the same flow (RSS changes, both NIC queues): atomic add.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

#[xdp]
pub fn xdp_relay_meta(ctx: XdpContext) -> u32 {
    media_relay::<false>(&ctx)
}

#[xdp]
pub fn xdp_relay_head(ctx: XdpContext) -> u32 {
    media_relay::<true>(&ctx)
}

#[inline(always)]
fn media_relay<const HEAD: bool>(ctx: &XdpContext) -> u32 {
    finish(match try_media_relay::<HEAD>(ctx) {
        Ok(v) => v,
        Err(reason) => pass(reason),
    })
}

#[inline(always)]
fn try_media_relay<const HEAD: bool>(ctx: &XdpContext) -> Result<Verdict, Reason> {
    let pkt = parse_udp(ctx)?;
    let key = flow_key(&pkt);
    // References into the maps, not copies: the actions are large and the BPF stack is 512 bytes.
    let action = match unsafe { FLOWS.get(&key) } {
        Some(a) => a,
        None => return Err(Reason::PassNoFlow),
    };
    if action.flags & FLOW_F_TURN_LISTENER != 0 {
        return turn_from_client::<HEAD>(ctx, &pkt);
    }
    if action.flags & FLOW_F_TURN_RELAY != 0 {
        return turn_from_peer::<HEAD>(ctx, &pkt);
    }
    let stats = Slot(FLOW_STATS.get_ptr_mut(action.stats_index));

    if action.family != pkt.family {
        return Err(Reason::PassFamilyMismatch);
    }
    if action.flags & FLOW_F_STRICT_SOURCE != 0 && !source_matches(&pkt, action) {
        stats.with(|s| add(&mut s.strict_drops, 1));
        return Ok(Verdict(xdp_action::XDP_DROP, Reason::DropStrictSource));
    }
    if action.flags & FLOW_F_SINK != 0 {
        return sink::<HEAD>(
            ctx,
            &pkt,
            action,
            &stats,
            Reason::SinkForked,
            Reason::SinkDropped,
        );
    }
    if action.flags & FLOW_F_INJECT != 0 {
        // The bot talks in this direction: its RTP is the only sender to the receiver.
        return sink::<HEAD>(
            ctx,
            &pkt,
            action,
            &stats,
            Reason::InjectForked,
            Reason::InjectDropped,
        );
    }
    let hop = resolve_hop(ctx, &pkt, action, &stats)?;
    relay::<HEAD>(
        ctx,
        &pkt,
        action,
        &stats,
        hop,
        pkt.l4_off + UDP_HLEN,
        Reason::Relayed,
    )
}

/// Where a relayed packet goes: (egress ifindex, source MAC, destination MAC, ingress ifindex).
type Hop = (u32, [u8; 6], [u8; 6], u32);

/// Next hop and egress check, before the packet is touched: a PASS after a rewrite would hand
/// the stack garbage.
#[inline(always)]
fn resolve_hop(
    ctx: &XdpContext,
    pkt: &UdpPacket,
    action: &FlowAction,
    stats: &Slot,
) -> Result<Hop, Reason> {
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let (egress, smac, dmac) = match next_hop(ctx, pkt, action, ingress) {
        Ok(hop) => hop,
        Err(reason) => {
            stats.with(|s| add(&mut s.passed, 1));
            return Err(reason);
        }
    };
    if egress != ingress && TX_PORTS.get(egress).is_none() {
        stats.with(|s| add(&mut s.passed, 1));
        return Err(Reason::PassEgressUnknown);
    }
    // A frame relayed to a group MAC could be taken for a headroom tag (whose first byte has the
    // group bit) by the devmap egress program; no host has one, so leave it to user space.
    if dmac[0] & 1 != 0 {
        stats.with(|s| add(&mut s.passed, 1));
        return Err(Reason::PassGroupMac);
    }
    Ok((egress, smac, dmac, ingress))
}

/// Classify the RTP at `rtp_off`, rewrite, count, and send (cloning to the fork veth when the
/// flow forks this packet). `ok` is the verdict of an unforked relay.
#[inline(always)]
fn relay<const HEAD: bool>(
    ctx: &XdpContext,
    pkt: &UdpPacket,
    action: &FlowAction,
    stats: &Slot,
    hop: Hop,
    rtp_off: usize,
    ok: Reason,
) -> Result<Verdict, Reason> {
    let (egress, smac, dmac, ingress) = hop;
    let payload_len = (pkt.l4_off + pkt.udp_len).saturating_sub(rtp_off);
    let mut tag = fork_tag(action);
    let (fork, rtp) = classify(ctx, action, stats, rtp_off, payload_len, &mut tag);
    if let Some(rtp) = rtp {
        renumber(ctx, pkt, action, stats, rtp_off, &rtp)?;
    }

    rewrite(ctx, pkt, action, smac, dmac)?;

    // A fork without a fork interface, or without room for the tag, relays only: nothing is
    // cloned, so nothing is counted as forked.
    // CONFIG is read only for packets to fork: the plain relay path does no extra lookup.
    let unavailable = fork
        && (CONFIG.get(0).map_or(0, |c| c.fork_ifindex) == 0 || {
            tag.egress_ifindex = egress;
            !push_tag::<HEAD>(ctx, &tag)
        });
    let fork = fork && !unavailable;
    count_packet(stats, payload_len, fork);

    if unavailable {
        return send(egress, ingress, Reason::RelayedForkUnavailable);
    }
    if fork {
        // One frame to every port in TX_PORTS: the egress interface and the fork veth; the
        // devmap egress program drops copies to any other media interface and untags the one
        // that leaves. Hairpin (egress == ingress) must not exclude the ingress interface.
        let flags = if egress == ingress {
            BPF_F_BROADCAST
        } else {
            BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS
        };
        return Ok(redirect(0, flags as u64, Reason::RelayedForked));
    }
    send(egress, ingress, ok)
}

/// Classify the RTP at `rtp_off` and count what it is in the flow's stats; when the flow forks
/// this packet (audio of an allowed payload type, or DTMF), fill the tag and say so. The RTP
/// header, when the packet is RTP.
#[inline(always)]
fn classify(
    ctx: &XdpContext,
    action: &FlowAction,
    stats: &Slot,
    rtp_off: usize,
    payload_len: usize,
    tag: &mut ForkTag,
) -> (bool, Option<Rtp>) {
    if action.flags & FLOW_F_RTCP != 0 {
        stats.with(|s| add(&mut s.rtcp, 1));
        return (false, None);
    }
    match parse_rtp(ctx, rtp_off, payload_len) {
        Ok(RtpKind::Rtp(rtp)) => {
            let dtmf = rtp.pt == action.dtmf_pt;
            let audio = action.pt_allowed(rtp.pt);
            stats.with(|s| {
                track_sequence(s, rtp.ssrc, rtp.seq);
                if dtmf {
                    add(&mut s.dtmf, 1);
                } else if !audio {
                    add(&mut s.wrong_pt, 1);
                }
            });
            let fork = action.flags & FLOW_F_FORK != 0 && (dtmf || audio);
            if fork {
                tag.rtp_off = rtp_off as u16;
                tag.payload_off = rtp.payload_off as u16;
                tag.payload_len = rtp.payload_len as u16;
                tag.flags = if dtmf { TAG_F_DTMF } else { 0 };
            }
            (fork, Some(rtp))
        }
        Ok(RtpKind::Rtcp) => {
            stats.with(|s| add(&mut s.rtcp, 1));
            (false, None)
        }
        Err(()) => {
            stats.with(|s| add(&mut s.errors, 1));
            (false, None)
        }
    }
}

/// A relayed RTP packet: continue the stream a voice bot sent when the flow renumbers
/// (`FLOW_F_RENUMBER`, after a hand-back from inject mode: SSRC, sequence number and timestamp
/// rewritten, the UDP checksum fixed incrementally), and remember how it left in `out_*`, where
/// the bot's next talkspurt continues. The RTP header starts at an even offset from the UDP
/// header, so its 16-bit words are checksum words.
#[inline(always)]
fn renumber(
    ctx: &XdpContext,
    pkt: &UdpPacket,
    action: &FlowAction,
    stats: &Slot,
    rtp_off: usize,
    rtp: &Rtp,
) -> Result<(), Reason> {
    // Words 1 (sequence), 2-3 (timestamp), 4-5 (SSRC), in memory order.
    let hdr = ptr_at_mut::<[u16; 6]>(ctx, rtp_off)?;
    let old = unsafe { *hdr };
    let (hi, lo) = (old[2].to_ne_bytes(), old[3].to_ne_bytes());
    let ts = u32::from_be_bytes([hi[0], hi[1], lo[0], lo[1]]);
    let (mut seq, mut ts, mut ssrc) = (rtp.seq, ts, rtp.ssrc);
    if action.flags & FLOW_F_RENUMBER != 0 {
        let r = &action.renumber;
        let mut deltas = (0u16, 0u32);
        stats.with(|s| {
            if s.rn_epoch != r.epoch {
                // The epoch's first packet: it leaves as `r.seq`/`r.ts`, the rest follow it.
                s.rn_seq_delta = r.seq.wrapping_sub(seq);
                s.rn_ts_delta = r.ts.wrapping_sub(ts);
                s.rn_epoch = r.epoch;
            }
            deltas = (s.rn_seq_delta, s.rn_ts_delta);
        });
        seq = seq.wrapping_add(deltas.0);
        ts = ts.wrapping_add(deltas.1);
        ssrc = r.ssrc;
        let new = [
            old[0],
            seq.to_be(),
            ((ts >> 16) as u16).to_be(),
            (ts as u16).to_be(),
            ((ssrc >> 16) as u16).to_be(),
            (ssrc as u16).to_be(),
        ];
        let udp = ptr_at_mut::<[u16; 4]>(ctx, pkt.l4_off)?;
        let csum = unsafe { (*udp)[3] };
        // A zero IPv4 UDP checksum means "none" (RFC 768): keep it so.
        if csum != 0 || pkt.family != FAMILY_V4 {
            let mut c = CsumDelta::new(csum);
            for i in 1..6 {
                c.replace16(old[i], new[i]);
            }
            unsafe { (*udp)[3] = nonzero_csum(c.finish()) };
        }
        unsafe { *hdr = new };
    }
    stats.with(|s| {
        if s.out_valid == 0 || s.out_ssrc != ssrc || seq.wrapping_sub(s.out_seq) as i16 > 0 {
            s.out_ssrc = ssrc;
            s.out_seq = seq;
            s.out_ts = ts;
            s.out_valid = 1;
        }
    });
    Ok(())
}

/// A flow whose call ends on this host (`FLOW_F_SINK`, a voice bot's caller) or whose receiver
/// hears a voice bot instead for now (`FLOW_F_INJECT`): nothing is relayed; forked audio goes to
/// the fork veth alone (one plain redirect, tag attached as on the relay path, counted as
/// `forked`), anything else is dropped (`dropped`).
#[inline(always)]
fn sink<const HEAD: bool>(
    ctx: &XdpContext,
    pkt: &UdpPacket,
    action: &FlowAction,
    stats: &Slot,
    forked_reason: Reason,
    dropped: Reason,
) -> Result<Verdict, Reason> {
    let rtp_off = pkt.l4_off + UDP_HLEN;
    let payload_len = (pkt.l4_off + pkt.udp_len).saturating_sub(rtp_off);
    let mut tag = fork_tag(action);
    let fork_ifindex = if classify(ctx, action, stats, rtp_off, payload_len, &mut tag).0 {
        CONFIG.get(0).map_or(0, |c| c.fork_ifindex)
    } else {
        0
    };
    let forked = fork_ifindex != 0 && {
        tag.egress_ifindex = fork_ifindex;
        push_tag::<HEAD>(ctx, &tag)
    };
    count_packet(stats, payload_len, forked);
    if !forked {
        return Ok(Verdict(xdp_action::XDP_DROP, dropped));
    }
    Ok(redirect(fork_ifindex, 0, forked_reason))
}

/// Only plain layouts are rewritten in the kernel: no VLAN tag, no IPv4 options (the headers are
/// moved with fixed-size copies the verifier can follow).
#[inline(always)]
fn turn_layout_ok(pkt: &UdpPacket) -> bool {
    pkt.l3_off == ETH_HLEN
        && (pkt.family != FAMILY_V4 || pkt.l4_off == ETH_HLEN + 20)
        && (pkt.family == FAMILY_V4 || pkt.l4_off == ETH_HLEN + 40)
}

/// ChannelData from a TURN client (RFC 8656 §12.4): strip the 4-byte header and send the data
/// from the relayed address to the peer.
#[inline(always)]
fn turn_from_client<const HEAD: bool>(
    ctx: &XdpContext,
    pkt: &UdpPacket,
) -> Result<Verdict, Reason> {
    let hdr = unsafe {
        *ptr_at::<[u8; 4]>(ctx, pkt.l4_off + UDP_HLEN).map_err(|_| Reason::PassTurnMalformed)?
    };
    let channel = u16::from_be_bytes([hdr[0], hdr[1]]);
    let len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
    if !(TURN_CHANNEL_MIN..=TURN_CHANNEL_MAX).contains(&channel) || len + 4 > pkt.udp_len - UDP_HLEN
    {
        return Err(Reason::PassTurnMalformed);
    }
    // Padding after the data (optional over UDP) would have to be trimmed: leave it to user space.
    if len + 4 != pkt.udp_len - UDP_HLEN || !turn_layout_ok(pkt) {
        return Err(Reason::PassTurnLayout);
    }
    let key = TurnChannelKey {
        client_addr_be: pkt.saddr_be,
        server_addr_be: pkt.daddr_be,
        client_port_be: pkt.sport_be,
        server_port_be: pkt.dport_be,
        channel_be: channel.to_be(),
        family: pkt.family,
        _pad: 0,
    };
    let ta = match unsafe { TURN_CHANNELS.get(&key) } {
        Some(t) => t,
        None => return Err(Reason::PassTurnNoChannel),
    };
    let stats = Slot(FLOW_STATS.get_ptr_mut(ta.flow.stats_index));
    let hop = resolve_hop(ctx, pkt, &ta.flow, &stats)?;
    resize_channel_data(ctx, pkt, 4, [hdr[0], hdr[1], hdr[2], hdr[3]])?;
    let mut p = *pkt;
    p.udp_len -= 4;
    relay::<HEAD>(
        ctx,
        &p,
        &ta.flow,
        &stats,
        hop,
        p.l4_off + UDP_HLEN,
        Reason::TurnToPeer,
    )
}

/// Data from a peer to a relayed address: push a ChannelData header and send it from the
/// server's listening address to the client.
#[inline(always)]
fn turn_from_peer<const HEAD: bool>(ctx: &XdpContext, pkt: &UdpPacket) -> Result<Verdict, Reason> {
    if !turn_layout_ok(pkt) {
        return Err(Reason::PassTurnLayout);
    }
    let key = TurnPeerKey {
        relay_addr_be: pkt.daddr_be,
        peer_addr_be: pkt.saddr_be,
        relay_port_be: pkt.dport_be,
        peer_port_be: pkt.sport_be,
        family: pkt.family,
        _pad: [0; 3],
    };
    let ta = match unsafe { TURN_PEERS.get(&key) } {
        Some(t) => t,
        None => return Err(Reason::PassTurnNoChannel),
    };
    let stats = Slot(FLOW_STATS.get_ptr_mut(ta.flow.stats_index));
    let hop = resolve_hop(ctx, pkt, &ta.flow, &stats)?;
    let data_len = ((pkt.udp_len - UDP_HLEN) as u16).to_be_bytes();
    let ch = ta.channel_be.to_ne_bytes();
    resize_channel_data(ctx, pkt, -4, [ch[0], ch[1], data_len[0], data_len[1]])?;
    let mut p = *pkt;
    p.udp_len += 4;
    relay::<HEAD>(
        ctx,
        &p,
        &ta.flow,
        &stats,
        hop,
        p.l4_off + UDP_HLEN + 4,
        Reason::TurnToClient,
    )
}

/// Strip (`delta` = 4) or push (`delta` = -4) the ChannelData header `chd` right after the UDP
/// header: move the Ethernet/IP/UDP headers, then fix the IP and UDP lengths and checksums
/// incrementally (the header's two words leave or join the UDP sum; the data after it keeps its
/// word alignment).
#[inline(always)]
fn resize_channel_data(
    ctx: &XdpContext,
    pkt: &UdpPacket,
    delta: i32,
    chd: [u8; 4],
) -> Result<(), Reason> {
    if pkt.family == FAMILY_V4 {
        move_headers::<{ ETH_HLEN + 20 + UDP_HLEN }>(ctx, delta)?;
    } else {
        move_headers::<{ ETH_HLEN + 40 + UDP_HLEN }>(ctx, delta)?;
    }
    let grow = delta < 0;
    let w0 = u16::from_ne_bytes([chd[0], chd[1]]);
    let w1 = u16::from_ne_bytes([chd[2], chd[3]]);
    let udp = ptr_at_mut::<[u16; 4]>(ctx, pkt.l4_off)?;
    let old_len = unsafe { (*udp)[2] };
    let new_len = if grow {
        (u16::from_be(old_len) + 4).to_be()
    } else {
        (u16::from_be(old_len) - 4).to_be()
    };
    let old_csum = unsafe { (*udp)[3] };
    if old_csum != 0 || pkt.family != FAMILY_V4 {
        let mut c = CsumDelta::new(old_csum);
        // The length is in the UDP header and in the pseudo-header.
        c.replace16(old_len, new_len);
        c.replace16(old_len, new_len);
        if grow {
            c.replace16(0, w0);
            c.replace16(0, w1);
        } else {
            c.replace16(w0, 0);
            c.replace16(w1, 0);
        }
        unsafe { (*udp)[3] = nonzero_csum(c.finish()) };
    }
    unsafe { (*udp)[2] = new_len };
    if grow {
        let d = ptr_at_mut::<[u8; 4]>(ctx, pkt.l4_off + UDP_HLEN)?;
        unsafe { *d = chd };
    }
    if pkt.family == FAMILY_V4 {
        let ip = ptr_at_mut::<[u16; 10]>(ctx, pkt.l3_off)?;
        let old = unsafe { (*ip)[1] };
        let new = if grow {
            (u16::from_be(old) + 4).to_be()
        } else {
            (u16::from_be(old) - 4).to_be()
        };
        let mut c = CsumDelta::new(unsafe { (*ip)[5] });
        c.replace16(old, new);
        unsafe {
            (*ip)[1] = new;
            (*ip)[5] = c.finish();
        }
    } else {
        let ip = ptr_at_mut::<[u16; 20]>(ctx, pkt.l3_off)?;
        let old = unsafe { (*ip)[2] };
        let new = if grow {
            (u16::from_be(old) + 4).to_be()
        } else {
            (u16::from_be(old) - 4).to_be()
        };
        unsafe { (*ip)[2] = new };
    }
    Ok(())
}

/// Move the first `N` bytes (all headers) by `delta` and adjust the frame start to match.
#[inline(always)]
fn move_headers<const N: usize>(ctx: &XdpContext, delta: i32) -> Result<(), Reason> {
    let saved = unsafe { *ptr_at::<[u8; N]>(ctx, 0).map_err(|_| Reason::PassTurnLayout)? };
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, delta) } != 0 {
        return Err(Reason::PassTurnLayout);
    }
    let dst = ptr_at_mut::<[u8; N]>(ctx, 0)?;
    unsafe { *dst = saved };
    Ok(())
}

/// Transmit the rewritten frame: XDP_TX on the ingress interface, else a devmap redirect.
#[inline(always)]
fn send(egress: u32, ingress: u32, reason: Reason) -> Result<Verdict, Reason> {
    if egress == ingress {
        let reason = if reason == Reason::Relayed {
            Reason::RelayedTx
        } else {
            reason
        };
        return Ok(Verdict(xdp_action::XDP_TX, reason));
    }
    Ok(redirect(egress, 0, reason))
}

/// A `TX_PORTS` redirect counted as `reason`; a refused one aborts (`AbortedRedirect`).
#[inline(always)]
fn redirect(port: u32, flags: u64, reason: Reason) -> Verdict {
    match TX_PORTS.redirect(port, flags) {
        Ok(act) => Verdict(act, reason),
        Err(_) => Verdict(xdp_action::XDP_ABORTED, Reason::AbortedRedirect),
    }
}

/// The tag of a packet of `action`'s flow, before the RTP fields are known.
#[inline(always)]
fn fork_tag(action: &FlowAction) -> ForkTag {
    ForkTag {
        magic: FORK_TAG_MAGIC,
        stream_id: action.stream_id,
        ..ForkTag::default()
    }
}

/// One packet of the flow taken (relayed or sunk), and whether it was forked.
#[inline(always)]
fn count_packet(stats: &Slot, payload_len: usize, forked: bool) {
    stats.with(|s| {
        add(&mut s.packets, 1);
        add(&mut s.bytes, payload_len as u64);
        s.last_seen_ns = unsafe { bpf_ktime_get_ns() };
        if forked {
            add(&mut s.forked, 1);
        }
    });
}

/// A flow's slot in `FLOW_STATS` (absent only if user space gave an out-of-range index).
struct Slot(Option<*mut FlowStats>);

impl Slot {
    #[inline(always)]
    fn with(&self, f: impl FnOnce(&mut FlowStats)) {
        if let Some(p) = self.0 {
            f(unsafe { &mut *p })
        }
    }
}

#[inline(always)]
fn track_sequence(s: &mut FlowStats, ssrc: u32, seq: u16) {
    if s.seq_valid == 0 || s.ssrc != ssrc {
        s.ssrc = ssrc;
        s.last_seq = seq;
        s.seq_valid = 1;
        return;
    }
    let delta = seq.wrapping_sub(s.last_seq) as i16;
    if delta > 0 {
        if delta > 1 && delta < MAX_DROPOUT {
            add(&mut s.lost, (delta - 1) as u64);
        }
        s.last_seq = seq;
    } else if delta > -MAX_MISORDER {
        add(&mut s.out_of_order, 1);
    } else {
        // The sender restarted its sequence (or jumped far back): track from here.
        s.last_seq = seq;
    }
}

#[inline(always)]
fn flow_key(pkt: &UdpPacket) -> FlowKey {
    FlowKey {
        addr_be: pkt.daddr_be,
        port_be: pkt.dport_be,
        family: pkt.family,
        _pad: 0,
    }
}

#[inline(always)]
fn source_matches(pkt: &UdpPacket, a: &FlowAction) -> bool {
    pkt.sport_be == a.expect_port_be && pkt.saddr_be == a.expect_addr_be
}

/// Next hop of the rewritten packet: egress ifindex and the MACs to use. Flows carry the egress
/// interface and next hop user space picked; their MACs come from `NEIGHBOURS`. Flows without one
/// fall back to `bpf_fib_lookup` (which needs IP forwarding on the interface).
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    pkt: &UdpPacket,
    a: &FlowAction,
    ingress: u32,
) -> Result<(u32, [u8; 6], [u8; 6]), Reason> {
    if a.egress_ifindex != 0 {
        let key = NeighKey {
            addr_be: a.nexthop_be,
            ifindex: a.egress_ifindex,
            family: a.family,
            _pad: [0; 3],
        };
        return match unsafe { NEIGHBOURS.get(&key) } {
            Some(n) => Ok((a.egress_ifindex, n.smac, n.dmac)),
            None => Err(Reason::PassFibNoNeigh),
        };
    }
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.l4_protocol = 17;
    p.sport = a.src_port_be;
    p.dport = a.dst_port_be;
    p.ifindex = ingress;
    let l3_len = (pkt.l4_off - pkt.l3_off + pkt.udp_len) as u16;
    p.__bindgen_anon_1.tot_len = l3_len;
    if pkt.family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = a.src_addr_be[0];
        p.__bindgen_anon_4.ipv4_dst = a.dst_addr_be[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = a.src_addr_be;
        p.__bindgen_anon_4.ipv6_dst = a.dst_addr_be;
    }
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Ok((p.ifindex, p.smac, p.dmac)),
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Reason::PassFibNoNeigh),
        _ => Err(Reason::PassFibFailed),
    }
}

/// Rewrite MACs, addresses, ports and TTL; update the IPv4 and UDP checksums incrementally.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    pkt: &UdpPacket,
    a: &FlowAction,
    smac: [u8; 6],
    dmac: [u8; 6],
) -> Result<(), Reason> {
    let eth = ptr_at_mut::<[[u8; 6]; 2]>(ctx, 0)?;
    unsafe { *eth = [dmac, smac] };

    let udp = ptr_at_mut::<[u16; 4]>(ctx, pkt.l4_off)?;
    let udp_csum = unsafe { (*udp)[3] };
    let mut uc = CsumDelta::new(udp_csum);
    uc.replace16(pkt.sport_be, a.src_port_be);
    uc.replace16(pkt.dport_be, a.dst_port_be);

    if pkt.family == FAMILY_V4 {
        let ip = ptr_at_mut::<[u16; 10]>(ctx, pkt.l3_off)?;
        let (old_src, old_dst) = (pkt.saddr_be[0], pkt.daddr_be[0]);
        let old_ttl_proto = unsafe { (*ip)[4] };
        // TTL is the first byte of word 4 in memory order, the protocol the second.
        let new_ttl_proto = u16::from_ne_bytes([RELAY_TTL, old_ttl_proto.to_ne_bytes()[1]]);
        let mut ic = CsumDelta::new(unsafe { (*ip)[5] });
        ic.replace16(old_ttl_proto, new_ttl_proto);
        ic.replace32(old_src, a.src_addr_be[0]);
        ic.replace32(old_dst, a.dst_addr_be[0]);
        let (src, dst) = (a.src_addr_be[0], a.dst_addr_be[0]);
        unsafe {
            (*ip)[4] = new_ttl_proto;
            (*ip)[5] = ic.finish();
            (*ip)[6] = src as u16;
            (*ip)[7] = (src >> 16) as u16;
            (*ip)[8] = dst as u16;
            (*ip)[9] = (dst >> 16) as u16;
        }
        uc.replace32(old_src, src);
        uc.replace32(old_dst, dst);
        unsafe {
            (*udp)[0] = a.src_port_be;
            (*udp)[1] = a.dst_port_be;
            // A zero IPv4 UDP checksum means "none" (RFC 768): keep it so.
            if udp_csum != 0 {
                (*udp)[3] = nonzero_csum(uc.finish());
            }
        }
    } else {
        let ip = ptr_at_mut::<[u32; 10]>(ctx, pkt.l3_off)?;
        for i in 0..4 {
            uc.replace32(pkt.saddr_be[i], a.src_addr_be[i]);
            uc.replace32(pkt.daddr_be[i], a.dst_addr_be[i]);
        }
        unsafe {
            // Word 1 is payload length (2 bytes), next header, hop limit.
            let w = (*ip)[1].to_ne_bytes();
            (*ip)[1] = u32::from_ne_bytes([w[0], w[1], w[2], RELAY_TTL]);
            for i in 0..4 {
                (*ip)[2 + i] = a.src_addr_be[i];
                (*ip)[6 + i] = a.dst_addr_be[i];
            }
            (*udp)[0] = a.src_port_be;
            (*udp)[1] = a.dst_port_be;
            (*udp)[3] = nonzero_csum(uc.finish());
        }
    }
    Ok(())
}

/// A computed UDP checksum of zero is sent as all ones (RFC 768, RFC 8200 §8.1).
#[inline(always)]
fn nonzero_csum(c: u16) -> u16 {
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// Attach the fork tag to the frame for the broadcast: in XDP metadata, or pushed in front of
/// the frame into its headroom (`HEAD`). Both travel with every broadcast copy; neither reaches the
/// wire, because the devmap egress program takes the tag off (headroom) or the driver ignores it
/// (metadata). False when there is no room: then no broadcast may happen, since the devmap egress
/// program could not tell the copies apart.
#[inline(always)]
fn push_tag<const HEAD: bool>(ctx: &XdpContext, tag: &ForkTag) -> bool {
    if HEAD {
        if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -TAG_LEN) } != 0 {
            return false;
        }
        match ptr_at_mut::<ForkTag>(ctx, 0) {
            Ok(p) => {
                unsafe { core::ptr::write_unaligned(p, *tag) };
                true
            }
            Err(_) => {
                // Never leave bytes in front of a frame that is relayed untagged.
                unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, TAG_LEN) };
                false
            }
        }
    } else {
        if unsafe { bpf_xdp_adjust_meta(ctx.as_ptr() as *mut _, -TAG_LEN) } != 0 {
            return false;
        }
        let meta = ctx.metadata();
        if meta + TAG_LEN as usize > ctx.data() {
            return false;
        }
        unsafe { core::ptr::write_unaligned(meta as *mut ForkTag, *tag) };
        true
    }
}

/// The fork tag the relay attached, if this frame carries one: from XDP metadata, or from the
/// first bytes of the frame (`HEAD`).
#[inline(always)]
fn read_tag<const HEAD: bool>(ctx: &XdpContext) -> Option<ForkTag> {
    let tag = if HEAD {
        let p = ptr_at::<ForkTag>(ctx, 0).ok()?;
        unsafe { core::ptr::read_unaligned(p) }
    } else {
        let meta = ctx.metadata();
        if meta + TAG_LEN as usize > ctx.data() {
            return None;
        }
        unsafe { core::ptr::read_unaligned(meta as *const ForkTag) }
    };
    (tag.magic == FORK_TAG_MAGIC).then_some(tag)
}

#[xdp(map = "devmap")]
pub fn xdp_egress_meta(ctx: XdpContext) -> u32 {
    finish(devmap_egress::<false>(&ctx))
}

#[xdp(map = "devmap")]
pub fn xdp_egress_head(ctx: XdpContext) -> u32 {
    finish(devmap_egress::<true>(&ctx))
}

/// Runs on every frame redirected to a media interface: plain relayed frames and the fork
/// broadcast's copies alike (one program per device: see maps.rs `TX_PORTS`).
#[inline(always)]
fn devmap_egress<const HEAD: bool>(ctx: &XdpContext) -> Verdict {
    let egress = unsafe { (*ctx.ctx).egress_ifindex };
    let Some(tag) = read_tag::<HEAD>(ctx) else {
        return Verdict(xdp_action::XDP_PASS, Reason::EgressPlain);
    };
    if tag.egress_ifindex != egress {
        return Verdict(xdp_action::XDP_DROP, Reason::EgressFiltered);
    }
    if HEAD && unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, TAG_LEN) } != 0 {
        return Verdict(xdp_action::XDP_DROP, Reason::EgressUntagFailed);
    }
    Verdict(xdp_action::XDP_PASS, Reason::EgressSent)
}

#[xdp]
pub fn xdp_fork_meta(ctx: XdpContext) -> u32 {
    finish(try_fork_capture::<false>(&ctx))
}

#[xdp]
pub fn xdp_fork_head(ctx: XdpContext) -> u32 {
    finish(try_fork_capture::<true>(&ctx))
}

/// Hand a tagged copy to fork-agent with the tag in front of the frame, where it finds it
/// whatever the AF_XDP copy mode does with metadata.
#[inline(always)]
fn try_fork_capture<const HEAD: bool>(ctx: &XdpContext) -> Verdict {
    let Some(tag) = read_tag::<HEAD>(ctx) else {
        return pass(Reason::ForkUntagged);
    };
    if !HEAD {
        // Move the tag from metadata into the frame.
        if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -TAG_LEN) } != 0 {
            warn!(ctx, "fork capture: no headroom for the tag, clone dropped");
            return Verdict(xdp_action::XDP_DROP, Reason::ForkNoHeadroom);
        }
        match ptr_at_mut::<ForkTag>(ctx, 0) {
            Ok(p) => unsafe { core::ptr::write_unaligned(p, tag) },
            Err(_) => return Verdict(xdp_action::XDP_DROP, Reason::ForkNoHeadroom),
        }
    }
    match XSKS.redirect(ctx.rx_queue_index(), 0) {
        Ok(act) => Verdict(act, Reason::ForkCaptured),
        Err(_) => Verdict(xdp_action::XDP_DROP, Reason::ForkNoSocket),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
