//! What a media anchor needs whatever signalling drives it: [`sdp`] reads a peer's audio stream
//! and rewrites an SDP so the audio points at this host, [`port_pool`] hands out the RTP ports.
//! Both are pure (no sockets, no clock). Users: sip-agent's B2BUA (SIP) and ng-agent
//! (rtpengine's ng protocol).
#![forbid(unsafe_code)]

pub mod port_pool;
pub mod sdp;
