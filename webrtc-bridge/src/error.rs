//! Errors from misusing the bridge API or from local setup (never from peer input: a bad
//! packet is dropped and counted, a failed handshake is an event).

/// Bridge setup errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    /// Generating the key or certificate, or building the DTLS context, failed (OpenSSL's text).
    #[error("DTLS certificate: {0}")]
    Certificate(String),
    /// Creating a DTLS session failed (OpenSSL's text).
    #[error("DTLS session: {0}")]
    Dtls(String),
    /// An `a=fingerprint` value that is not `sha-256` followed by 32 hex bytes.
    #[error("bad fingerprint '{0}': expected sha-256 and 32 colon-separated hex bytes")]
    Fingerprint(String),
    /// The SRTP library refused the exported keys (its text).
    #[error("SRTP context: {0}")]
    Srtp(String),
}
