//! SRTP and SRTCP (RFC 3711, RFC 7714) for one browser leg, through rtc-srtp.
//!
//! Role: turns the keys a DTLS handshake exported into two contexts (ours to encrypt, the
//! peer's to decrypt) and sorts every failure into the counter it belongs to: an
//! authentication failure, a replay, or a packet too broken to parse.

use rtc_shared::error::Error as SrtpError;
use rtc_srtp::context::Context;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;

use crate::dtls::{SrtpKeys, SrtpProfile};
use crate::error::BridgeError;

/// Replay window in packets (RFC 3711 §3.3.2 asks for at least 64; libsrtp uses 128).
const REPLAY_WINDOW: usize = 128;

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
        SrtpError::SrtpSsrcDuplicated(..) | SrtpError::SrtcpSsrcDuplicated(..) => Reject::Replay,
        _ => Reject::Malformed,
    }
}

/// Both directions' SRTP state.
pub struct Srtp {
    encrypt: Context,
    decrypt: Context,
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
                Some(srtp_replay_protection(REPLAY_WINDOW)),
                Some(srtcp_replay_protection(REPLAY_WINDOW)),
                provider.crypto(),
            )
            .map_err(|e| BridgeError::Srtp(e.to_string()))
        };
        Ok(Srtp {
            encrypt: ctx(&keys.local)?,
            decrypt: ctx(&keys.remote)?,
        })
    }

    /// Decrypts and authenticates an SRTP packet from the peer.
    pub fn unprotect_rtp(&mut self, pkt: &[u8]) -> Result<Vec<u8>, Reject> {
        self.decrypt
            .decrypt_rtp(pkt)
            .map(|b| b.to_vec())
            .map_err(|e| classify(&e))
    }

    /// Decrypts and authenticates an SRTCP packet from the peer.
    pub fn unprotect_rtcp(&mut self, pkt: &[u8]) -> Result<Vec<u8>, Reject> {
        self.decrypt
            .decrypt_rtcp(pkt)
            .map(|b| b.to_vec())
            .map_err(|e| classify(&e))
    }

    /// Protects a plain RTP packet for the peer.
    pub fn protect_rtp(&mut self, pkt: &[u8]) -> Result<Vec<u8>, Reject> {
        self.encrypt
            .encrypt_rtp(pkt)
            .map(|b| b.to_vec())
            .map_err(|e| classify(&e))
    }

    /// Protects a plain RTCP packet for the peer.
    pub fn protect_rtcp(&mut self, pkt: &[u8]) -> Result<Vec<u8>, Reject> {
        self.encrypt
            .encrypt_rtcp(pkt)
            .map(|b| b.to_vec())
            .map_err(|e| classify(&e))
    }
}
