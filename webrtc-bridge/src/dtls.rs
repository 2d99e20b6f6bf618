//! DTLS-SRTP (RFC 5764) over OpenSSL, driven without sockets.
//!
//! Role: one DTLS endpoint per browser leg. Inputs: [`Dtls::handle_datagram`] (a DTLS record
//! from the browser), [`Dtls::start`] (begin as client or server), [`Dtls::handle_timeout`].
//! Outputs: datagrams to send ([`Dtls::poll_transmit`]) and, once the handshake is done,
//! [`SrtpKeys`] plus the peer certificate's SHA-256 fingerprint ([`Dtls::poll_event`]).
//!
//! OpenSSL reads and writes through [`Wire`], two in-memory datagram queues, so the crate never
//! owns a socket. It does read the wall clock and its own RNG for DTLS retransmission and the
//! handshake randoms: the one place this crate departs from "no clock, no ambient randomness"
//! (str0m does the same); our own timer only tells it when to look.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::srtp::SrtpProfileId;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslStream, SslVerifyMode,
};
use openssl::x509::{X509Name, X509};

use crate::error::BridgeError;

/// SRTP profiles offered in the `use_srtp` extension, most preferred first (RFC 5764 §4.1.2,
/// RFC 7714 §14.2). Every WebRTC stack has AES_CM_128_HMAC_SHA1_80.
const SRTP_PROFILES: &str = "SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80";

/// ECDSA suites only: the certificate is ECDSA P-256 (aiortc offers nothing else; browsers
/// take it too).
const CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
                       ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA";

/// Largest DTLS record we send: fits a 1280-byte IPv6 minimum MTU with IP/UDP headers.
const DTLS_MTU: u32 = 1200;

/// RFC 5764 §4.2 exporter label.
const EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// This host's DTLS identity: an ECDSA P-256 key, a self-signed certificate and the context
/// every leg's handshake starts from. One per process; cheap to clone.
#[derive(Clone)]
pub struct Certificate {
    ctx: SslContext,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl Certificate {
    /// A fresh ECDSA P-256 key and self-signed certificate (valid from now for 30 days:
    /// WebRTC peers check the fingerprint, not the dates).
    pub fn generate() -> Result<Certificate, BridgeError> {
        let build = || -> Result<(PKey<Private>, X509), openssl::error::ErrorStack> {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
            let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
            let mut name = X509Name::builder()?;
            name.append_entry_by_nid(Nid::COMMONNAME, "xdpfork")?;
            let name = name.build();
            let mut serial = BigNum::new()?;
            serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
            let mut b = X509::builder()?;
            b.set_version(2)?;
            let serial = serial.to_asn1_integer()?;
            b.set_serial_number(&serial)?;
            b.set_subject_name(&name)?;
            b.set_issuer_name(&name)?;
            b.set_pubkey(&key)?;
            b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
            b.set_not_after(&*Asn1Time::days_from_now(30)?)?;
            b.sign(&key, MessageDigest::sha256())?;
            Ok((key, b.build()))
        };
        let (key, cert) = build().map_err(|e| BridgeError::Certificate(e.to_string()))?;
        Certificate::from_parts(&key, &cert)
    }

    fn from_parts(key: &PKey<Private>, cert: &X509) -> Result<Certificate, BridgeError> {
        let make = || -> Result<SslContext, openssl::error::ErrorStack> {
            let mut b = SslContextBuilder::new(SslMethod::dtls())?;
            b.set_certificate(cert)?;
            b.set_private_key(key)?;
            b.check_private_key()?;
            b.set_cipher_list(CIPHERS)?;
            b.set_tlsext_use_srtp(SRTP_PROFILES)?;
            // The MTU is ours to set: the in-memory wire cannot be asked.
            b.set_options(SslOptions::NO_QUERY_MTU);
            // The peer must present a certificate; it is self-signed, so trust comes from the
            // SDP fingerprint, checked once the handshake is done (RFC 8122 §5).
            b.set_verify_callback(
                SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
                |_, _| true,
            );
            Ok(b.build())
        };
        let ctx = make().map_err(|e| BridgeError::Certificate(e.to_string()))?;
        let digest = cert
            .digest(MessageDigest::sha256())
            .map_err(|e| BridgeError::Certificate(e.to_string()))?;
        Ok(Certificate {
            ctx,
            fingerprint: Fingerprint(digest.to_vec()),
        })
    }

    /// SHA-256 fingerprint of the certificate, for `a=fingerprint:sha-256 ...`.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }
}

/// A SHA-256 certificate fingerprint (RFC 8122 §5).
#[derive(Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<u8>);

impl Fingerprint {
    /// Parses the value of `a=fingerprint:` (`sha-256 AB:CD:...`); other hash functions are
    /// refused, WebRTC peers all offer sha-256.
    pub fn parse(attr: &str) -> Result<Fingerprint, BridgeError> {
        let bad = || BridgeError::Fingerprint(attr.to_owned());
        let (hash, hex) = attr.trim().split_once(' ').ok_or_else(bad)?;
        if !hash.eq_ignore_ascii_case("sha-256") {
            return Err(bad());
        }
        let bytes = hex
            .trim()
            .split(':')
            .map(|h| u8::from_str_radix(h, 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad())?;
        if bytes.len() != 32 {
            return Err(bad());
        }
        Ok(Fingerprint(bytes))
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Display for Fingerprint {
    /// `sha-256 AB:CD:...` as SDP carries it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha-256 ")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The negotiated SRTP protection profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpProfile {
    /// SRTP_AES128_CM_HMAC_SHA1_80 (RFC 5764 §4.1.2).
    Aes128CmSha1_80,
    /// SRTP_AEAD_AES_128_GCM (RFC 7714 §14.2).
    AeadAes128Gcm,
}

impl SrtpProfile {
    /// Master key length in bytes.
    pub fn key_len(self) -> usize {
        16
    }
    /// Master salt length in bytes (RFC 3711 §8.2; RFC 7714 §12).
    pub fn salt_len(self) -> usize {
        match self {
            SrtpProfile::Aes128CmSha1_80 => 14,
            SrtpProfile::AeadAes128Gcm => 12,
        }
    }
}

/// Keys exported from the handshake (RFC 5764 §4.2), already split into ours and theirs.
#[derive(Clone)]
pub struct SrtpKeys {
    /// The profile the server picked.
    pub profile: SrtpProfile,
    /// Key and salt we encrypt with.
    pub local: (Vec<u8>, Vec<u8>),
    /// Key and salt the peer encrypts with.
    pub remote: (Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKeys")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// DTLS role of this end (RFC 5763 §5: `a=setup:active` is the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We send the ClientHello (`a=setup:active`).
    Client,
    /// We wait for the ClientHello (`a=setup:passive`).
    Server,
}

/// What a handshake step produced.
#[derive(Debug)]
pub enum DtlsEvent {
    /// Handshake done: keys plus the digest of the certificate the peer presented.
    Connected {
        /// SRTP keys.
        keys: SrtpKeys,
        /// SHA-256 of the peer's certificate.
        peer: Fingerprint,
    },
    /// The handshake failed or the peer closed; the text is OpenSSL's.
    Failed(String),
    /// The peer sent close_notify.
    Closed,
}

/// Two datagram queues OpenSSL reads from and writes to.
#[derive(Debug, Default)]
pub(crate) struct Wire {
    pub(crate) incoming: VecDeque<Vec<u8>>,
    pub(crate) outgoing: VecDeque<Vec<u8>>,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.incoming.pop_front() {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Wire {
    /// OpenSSL writes one whole DTLS datagram per call (its MTU is set, QUERY_MTU is off).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.push_back(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
enum State {
    Handshaking,
    Connected,
    Done,
}

/// One DTLS endpoint.
pub struct Dtls {
    stream: SslStream<Wire>,
    state: State,
    events: VecDeque<DtlsEvent>,
}

impl std::fmt::Debug for Dtls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dtls").field("state", &self.state).finish()
    }
}

impl Dtls {
    /// Starts a handshake in `role`; a client's ClientHello is queued at once.
    pub fn start(cert: &Certificate, role: Role) -> Result<Dtls, BridgeError> {
        let mut ssl = Ssl::new(&cert.ctx).map_err(|e| BridgeError::Dtls(e.to_string()))?;
        ssl.set_mtu(DTLS_MTU)
            .map_err(|e| BridgeError::Dtls(e.to_string()))?;
        match role {
            Role::Client => ssl.set_connect_state(),
            Role::Server => ssl.set_accept_state(),
        }
        let stream =
            SslStream::new(ssl, Wire::default()).map_err(|e| BridgeError::Dtls(e.to_string()))?;
        let mut d = Dtls {
            stream,
            state: State::Handshaking,
            events: VecDeque::new(),
        };
        if role == Role::Client {
            d.step();
        }
        Ok(d)
    }

    /// True while the handshake runs.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Handshaking)
    }

    /// One DTLS datagram from the peer.
    pub fn handle_datagram(&mut self, bytes: &[u8]) {
        self.stream.get_mut().incoming.push_back(bytes.to_vec());
        self.step();
    }

    /// Lets OpenSSL retransmit a flight whose timer ran out (it keeps its own clock).
    pub fn handle_timeout(&mut self) {
        if self.is_handshaking() {
            self.step();
        }
    }

    /// The next datagram to send to the peer.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.stream.get_mut().outgoing.pop_front()
    }

    /// The next event; drain after every `handle_*` and after `start`.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<DtlsEvent> {
        self.events.pop_front()
    }

    fn step(&mut self) {
        match self.state {
            State::Handshaking => match self.stream.do_handshake() {
                Ok(()) => {
                    self.state = State::Connected;
                    let ev = match self.connected() {
                        Ok((keys, peer)) => DtlsEvent::Connected { keys, peer },
                        Err(e) => {
                            self.state = State::Done;
                            DtlsEvent::Failed(e)
                        }
                    };
                    self.events.push_back(ev);
                    // Records that came with the last flight (none expected) are read next.
                    self.read_app();
                }
                Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {
                }
                Err(e) => {
                    self.state = State::Done;
                    self.events.push_back(DtlsEvent::Failed(e.to_string()));
                }
            },
            State::Connected => self.read_app(),
            State::Done => self.stream.get_mut().incoming.clear(),
        }
    }

    /// Reads past the handshake: WebRTC audio sends no DTLS application data (no data
    /// channel), so anything read is discarded; close_notify ends the session.
    fn read_app(&mut self) {
        let mut buf = [0u8; 2048];
        for _ in 0..64 {
            match self.stream.ssl_read(&mut buf) {
                Ok(_) => continue,
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    self.state = State::Done;
                    self.events.push_back(DtlsEvent::Closed);
                    return;
                }
                Err(e) if e.code() == ErrorCode::WANT_READ => return,
                Err(e) => {
                    self.state = State::Done;
                    self.events.push_back(DtlsEvent::Failed(e.to_string()));
                    return;
                }
            }
        }
    }

    fn connected(&mut self) -> Result<(SrtpKeys, Fingerprint), String> {
        let ssl = self.stream.ssl();
        let profile = match ssl.selected_srtp_profile().map(|p| p.id()) {
            Some(SrtpProfileId::SRTP_AES128_CM_SHA1_80) => SrtpProfile::Aes128CmSha1_80,
            Some(SrtpProfileId::SRTP_AEAD_AES_128_GCM) => SrtpProfile::AeadAes128Gcm,
            Some(other) => return Err(format!("unexpected SRTP profile {}", other.as_raw())),
            None => return Err("the peer negotiated no SRTP profile (use_srtp)".into()),
        };
        let peer = ssl
            .peer_certificate()
            .ok_or("the peer presented no certificate")?
            .digest(MessageDigest::sha256())
            .map_err(|e| e.to_string())?;
        let (kl, sl) = (profile.key_len(), profile.salt_len());
        let mut material = vec![0u8; 2 * (kl + sl)];
        ssl.export_keying_material(&mut material, EXPORTER_LABEL, None)
            .map_err(|e| e.to_string())?;
        // client key, server key, client salt, server salt (RFC 5764 §4.2).
        let client = (
            material[..kl].to_vec(),
            material[2 * kl..2 * kl + sl].to_vec(),
        );
        let server = (
            material[kl..2 * kl].to_vec(),
            material[2 * kl + sl..].to_vec(),
        );
        let (local, remote) = if ssl.is_server() {
            (server, client)
        } else {
            (client, server)
        };
        Ok((
            SrtpKeys {
                profile,
                local,
                remote,
            },
            Fingerprint(peer.to_vec()),
        ))
    }
}
