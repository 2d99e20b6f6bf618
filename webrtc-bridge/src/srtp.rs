//! SRTP and SRTCP (RFC 3711, RFC 7714) for one browser leg, through rtc-srtp.
//!
//! Role: turns the keys a DTLS handshake exported into two contexts (ours to encrypt, the
//! peer's to decrypt) and sorts every failure into the counter it belongs to: an
//! authentication failure, a replay, or a packet too broken to parse.
//!
//! Replay protection is ours, not rtc-srtp's: its window (rtc-shared 0.21
//! `WrappedSlidingWindowDetector::check`) takes its starting point from the first index it is
//! asked about, before the tag is verified, so one forged packet with a far index from the
//! browser's address made every genuine packet after it "too old". RFC 3711 §3.3.2 updates the
//! replay list only after authentication; [`Window`] is checked before decrypting and moved only
//! by packets rtc-srtp authenticated. rtc-srtp 0.21 also hands back an AES-CM SRTCP packet whose
//! E flag is clear without checking its tag, so such packets are refused here (DTLS-SRTP always
//! encrypts SRTCP; unencrypted SRTCP is never negotiated).

use rtc_shared::error::Error as SrtpError;
use rtc_srtp::context::Context;
use rtc_srtp::option::{srtcp_no_replay_protection, srtp_no_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;

use crate::dtls::{SrtpKeys, SrtpProfile};
use crate::error::BridgeError;

/// Replay window in packets (RFC 3711 §3.3.2 asks for at least 64; libsrtp uses 128).
const REPLAY_WINDOW: u64 = 128;

/// SSRCs whose windows are kept per direction of packets (RTP, RTCP); a browser sends one or
/// two. Past this the oldest is forgotten, so an authenticated peer cannot grow our memory.
const MAX_SSRCS: usize = 16;

/// The SRTCP trailer's E||index word (RFC 3711 §3.4).
const SRTCP_INDEX_LEN: usize = 4;

/// Authentication tag length of SRTCP for AES_CM_128_HMAC_SHA1_80 (RFC 3711 §5.2).
const SHA1_80_TAG_LEN: usize = 10;

/// The replay list of one SSRC (RFC 3711 §3.3.2): the highest authenticated index and a bitmap
/// of the [`REPLAY_WINDOW`] indices at and below it (bit `i` is `top - i`).
#[derive(Debug, Clone, Copy)]
struct Window {
    top: u64,
    seen: u128,
}

impl Window {
    /// Whether `index` may be decrypted: ahead of the window, or inside it and not yet seen.
    fn fresh(&self, index: u64) -> bool {
        match self.top.checked_sub(index) {
            None => true,
            Some(back) => back < REPLAY_WINDOW && self.seen & (1 << back) == 0,
        }
    }

    /// Records an authenticated `index`.
    fn accept(&mut self, index: u64) {
        match self.top.checked_sub(index) {
            None => {
                let ahead = index - self.top;
                self.seen = if ahead >= REPLAY_WINDOW {
                    0
                } else {
                    self.seen << ahead
                };
                self.seen |= 1;
                self.top = index;
            }
            Some(back) if back < REPLAY_WINDOW => self.seen |= 1 << back,
            Some(_) => {}
        }
    }
}

/// Replay windows by SSRC, for authenticated SSRCs only (a forged SSRC never gets one).
#[derive(Debug, Default)]
struct Windows(Vec<(u32, Window)>);

impl Windows {
    fn get(&self, ssrc: u32) -> Option<&Window> {
        self.0.iter().find(|(s, _)| *s == ssrc).map(|(_, w)| w)
    }

    fn fresh(&self, ssrc: u32, index: u64) -> bool {
        self.get(ssrc).is_none_or(|w| w.fresh(index))
    }

    fn accept(&mut self, ssrc: u32, index: u64) {
        if let Some((_, w)) = self.0.iter_mut().find(|(s, _)| *s == ssrc) {
            w.accept(index);
            return;
        }
        if self.0.len() == MAX_SSRCS {
            self.0.remove(0);
        }
        self.0.push((
            ssrc,
            Window {
                top: index,
                seen: 1,
            },
        ));
    }
}

/// The 48-bit SRTP index of `seq` (RFC 3711 §3.3.1, Appendix A), estimated from the highest
/// authenticated index `top` the way rtc-srtp estimates its rollover counter; the first packet
/// of an SSRC has rollover counter 0 (RFC 3711 §3.3.1).
fn srtp_index(top: Option<u64>, seq: u16) -> u64 {
    let Some(top) = top else {
        return u64::from(seq);
    };
    const HALF: i64 = 1 << 15;
    let roc = top >> 16;
    let (s_l, s) = (i64::from(top as u16), i64::from(seq));
    let v = if s_l < HALF {
        if s - s_l > HALF {
            roc.saturating_sub(1)
        } else {
            roc
        }
    } else if s_l - HALF > s {
        roc + 1
    } else {
        roc
    };
    (v << 16) | u64::from(seq)
}

/// Why a protected packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The authentication tag did not verify (HMAC-SHA1 or GCM tag).
    Auth,
    /// The index was seen before or is behind the replay window.
    Replay,
    /// Too short, or a header that does not parse.
    Malformed,
}

fn classify(e: &SrtpError) -> Reject {
    match e {
        SrtpError::ErrFailedToVerifyAuthTag
        | SrtpError::RtpFailedToVerifyAuthTag
        | SrtpError::RtcpFailedToVerifyAuthTag => Reject::Auth,
        _ => Reject::Malformed,
    }
}

/// Both directions' SRTP state. Each packet comes back in the buffer rtc-srtp filled: its
/// `BytesMut` becomes the `Vec` without a second allocation and copy.
pub struct Srtp {
    profile: SrtpProfile,
    encrypt: Context,
    decrypt: Context,
    rtp_windows: Windows,
    rtcp_windows: Windows,
}

impl std::fmt::Debug for Srtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Srtp")
    }
}

impl Srtp {
    /// Contexts from the exported keys.
    pub fn new(keys: &SrtpKeys) -> Result<Srtp, BridgeError> {
        let profile = match keys.profile {
            SrtpProfile::Aes128CmSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        };
        let provider =
            rtc_srtp::crypto::default_provider().map_err(|e| BridgeError::Srtp(e.to_string()))?;
        let ctx = |(key, salt): &(Vec<u8>, Vec<u8>)| {
            Context::new(
                key,
                salt,
                profile,
                // Ours instead (module doc): rtc-srtp's would be seeded by forged packets.
                Some(srtp_no_replay_protection()),
                Some(srtcp_no_replay_protection()),
                provider.crypto(),
            )
            .map_err(|e| BridgeError::Srtp(e.to_string()))
        };
        Ok(Srtp {
            profile: keys.profile,
            encrypt: ctx(&keys.local)?,
            decrypt: ctx(&keys.remote)?,
            rtp_windows: Windows::default(),
            rtcp_windows: Windows::default(),
        })
    }

    /// Decrypts and authenticates an SRTP packet from the peer; a replay is refused before
    /// decryption, and only an authenticated packet moves its SSRC's window.
    pub fn unprotect_rtp(&mut self, pkt: &[u8]) -> Result<Vec<u8>, Reject> {
        let (Some(seq), Some(ssrc)) = (pkt.get(2..4), pkt.get(8..12)) else {
            return Err(Reject::Malformed);
        };
        let seq = u16::from_be_bytes([seq[0], seq[1]]);
        let ssrc = u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]);
        let index = srtp_index(self.rtp_windows.get(ssrc).map(|w| w.top), seq);
        if !self.rtp_windows.fresh(ssrc, index) {
            return Err(Reject::Replay);
        }
        let plain = self.decrypt.decrypt_rtp(pkt).map_err(|e| classify(&e))?;
        self.rtp_windows.accept(ssrc, index);
        Ok(plain.into())
    }

    /// Decrypts and authenticates an SRTCP packet from the peer; a replay is refused before
    /// decryption, and only an authenticated packet moves its SSRC's window.
    pub fn unprotect_rtcp(&mut self, pkt: &[u8]) -> Result<Vec<u8>, Reject> {
        // E||index sits before the HMAC tag (RFC 3711 §3.4) or last (RFC 7714 §9.1).
        let tag = match self.profile {
            SrtpProfile::Aes128CmSha1_80 => SHA1_80_TAG_LEN,
            SrtpProfile::AeadAes128Gcm => 0,
        };
        let Some(at) = pkt
            .len()
            .checked_sub(tag + SRTCP_INDEX_LEN)
            .filter(|at| *at >= 8)
        else {
            return Err(Reject::Malformed);
        };
        let word = u32::from_be_bytes([pkt[at], pkt[at + 1], pkt[at + 2], pkt[at + 3]]);
        if word & (1 << 31) == 0 {
            // Unencrypted SRTCP: rtc-srtp would return it unauthenticated (module doc).
            return Err(Reject::Auth);
        }
        let index = u64::from(word & !(1 << 31));
        let ssrc = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        if !self.rtcp_windows.fresh(ssrc, index) {
            return Err(Reject::Replay);
        }
        let plain = self.decrypt.decrypt_rtcp(pkt).map_err(|e| classify(&e))?;
        self.rtcp_windows.accept(ssrc, index);
        Ok(plain.into())
    }

    /// Protects a plain RTP packet for the peer.
    pub fn protect_rtp(&mut self, pkt: &[u8]) -> Result<Vec<u8>, Reject> {
        self.encrypt
            .encrypt_rtp(pkt)
            .map(Vec::from)
            .map_err(|e| classify(&e))
    }

    /// Protects a plain RTCP packet for the peer.
    pub fn protect_rtcp(&mut self, pkt: &[u8]) -> Result<Vec<u8>, Reject> {
        self.encrypt
            .encrypt_rtcp(pkt)
            .map(Vec::from)
            .map_err(|e| classify(&e))
    }
}
