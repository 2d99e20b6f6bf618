//! A browser stand-in assembled from the libraries directly, for tests of the bridge (this
//! crate's and the e2e tests'): its STUN check is turn-core's builder, its DTLS a plain OpenSSL
//! session with its own ECDSA key, its SRTP rtc-srtp fed by its own key export. None of the
//! bridge's state machine runs on this side (only the two in-memory datagram queues, `Wire`,
//! are shared). Test support only: it panics on misuse.

use std::net::SocketAddr;

use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{ErrorCode, Ssl, SslContext, SslMethod, SslStream, SslVerifyMode};
use openssl::x509::{X509Name, X509};
use rtc_srtp::context::Context;
use rtc_srtp::protection_profile::ProtectionProfile;
use turn_core::stun::{Attribute, Class, MessageBuilder, Method, TransactionId};
use turn_core::RustCrypto;

use crate::dtls::Wire;
use crate::IceCredentials;

/// The SRTP profile a [`Peer`] offers (the only one it offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerProfile {
    /// SRTP_AES128_CM_SHA1_80.
    Sha1_80,
    /// SRTP_AEAD_AES_128_GCM.
    Gcm,
}

impl PeerProfile {
    fn name(self) -> &'static str {
        match self {
            PeerProfile::Sha1_80 => "SRTP_AES128_CM_SHA1_80",
            PeerProfile::Gcm => "SRTP_AEAD_AES_128_GCM",
        }
    }
    fn salt_len(self) -> usize {
        match self {
            PeerProfile::Sha1_80 => 14,
            PeerProfile::Gcm => 12,
        }
    }
    fn srtp(self) -> ProtectionProfile {
        match self {
            PeerProfile::Sha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            PeerProfile::Gcm => ProtectionProfile::AeadAes128Gcm,
        }
    }
}

/// The browser stand-in.
pub struct Peer {
    profile: PeerProfile,
    /// Its address (what the bridge sees as the source).
    pub addr: SocketAddr,
    ssl: SslStream<Wire>,
    /// Its `a=fingerprint` value.
    pub fingerprint: String,
    srtp: Option<(Context, Context)>,
    /// The handshake finished.
    pub connected: bool,
}

/// A peer at `addr`, DTLS client (`client`) or server, offering AES_CM_128_HMAC_SHA1_80.
pub fn peer(addr: SocketAddr, client: bool) -> Peer {
    peer_with(addr, client, PeerProfile::Sha1_80)
}

/// [`peer`] offering `profile` only.
pub fn peer_with(addr: SocketAddr, client: bool, profile: PeerProfile) -> Peer {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, "browser")
        .unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    let digest = cert.digest(MessageDigest::sha256()).unwrap();
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    let mut ctx = SslContext::builder(SslMethod::dtls()).unwrap();
    ctx.set_certificate(&cert).unwrap();
    ctx.set_private_key(&key).unwrap();
    ctx.set_tlsext_use_srtp(profile.name()).unwrap();
    ctx.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
    let mut ssl = Ssl::new(&ctx.build()).unwrap();
    if client {
        ssl.set_connect_state();
    } else {
        ssl.set_accept_state();
    }
    Peer {
        profile,
        addr,
        ssl: SslStream::new(ssl, Wire::default()).unwrap(),
        fingerprint: format!("sha-256 {}", hex.join(":")),
        srtp: None,
        connected: false,
    }
}

impl Peer {
    /// A Binding request for `bridge`'s credentials (USE-CANDIDATE when asked).
    pub fn check(&self, bridge: &IceCredentials, use_candidate: bool) -> Vec<u8> {
        let mut b = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([7; 12]));
        let user = format!("{}:brws", bridge.ufrag);
        b.add(&Attribute::Username(&user)).unwrap();
        b.add(&Attribute::Other {
            typ: 0x0024,
            value: &[0x6e, 0, 0x1e, 0xff],
        })
        .unwrap();
        if use_candidate {
            b.add(&Attribute::Other {
                typ: 0x0025,
                value: &[],
            })
            .unwrap();
        }
        b.add_integrity(bridge.pwd.as_bytes(), &RustCrypto).unwrap();
        b.add_fingerprint().unwrap();
        b.finish()
    }

    /// Runs the handshake one step; returns the datagrams to send.
    pub fn step(&mut self, incoming: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        self.ssl.get_mut().incoming.extend(incoming);
        if !self.connected {
            match self.ssl.do_handshake() {
                Ok(()) => {
                    self.connected = true;
                    let sl = self.profile.salt_len();
                    let mut m = vec![0u8; 2 * (16 + sl)];
                    self.ssl
                        .ssl()
                        .export_keying_material(&mut m, "EXTRACTOR-dtls_srtp", None)
                        .unwrap();
                    let (ck, sk) = (&m[..16], &m[16..32]);
                    let (cs, ss) = (&m[32..32 + sl], &m[32 + sl..]);
                    let client = !self.ssl.ssl().is_server();
                    let (lk, ls, rk, rs) = if client {
                        (ck, cs, sk, ss)
                    } else {
                        (sk, ss, ck, cs)
                    };
                    let provider = rtc_srtp::crypto::default_provider().unwrap();
                    let p = self.profile.srtp();
                    let enc = Context::new(lk, ls, p, None, None, provider.crypto()).unwrap();
                    let dec = Context::new(rk, rs, p, None, None, provider.crypto()).unwrap();
                    self.srtp = Some((enc, dec));
                }
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(e) => panic!("peer handshake: {e}"),
            }
        }
        self.ssl.get_mut().outgoing.drain(..).collect()
    }

    /// Protects an RTP or RTCP packet (by its payload type byte).
    pub fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        let (enc, _) = self.srtp.as_mut().unwrap();
        if plain[1] >= 192 && plain[1] <= 223 {
            enc.encrypt_rtcp(plain).unwrap().to_vec()
        } else {
            enc.encrypt_rtp(plain).unwrap().to_vec()
        }
    }

    /// Unprotects an SRTP packet from the bridge.
    pub fn open(&mut self, sealed: &[u8]) -> Vec<u8> {
        let (_, dec) = self.srtp.as_mut().unwrap();
        dec.decrypt_rtp(sealed).unwrap().to_vec()
    }
}
