//! Injected cryptography: HMAC-SHA1, HMAC-SHA256 and MD5 behind the [`Crypto`] trait.
//!
//! The server and codec never call a hash library directly, so a shell can plug in an
//! accelerated or FIPS implementation and tests can count or fake calls (the same idea as the
//! injected SHA1-HMAC provider of str0m's ICE agent). [`RustCrypto`] is the default provider,
//! built on the RustCrypto crates. Randomness is injected separately as a `rand::RngCore`.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};

/// Hash primitives STUN and TURN need.
pub trait Crypto {
    /// HMAC-SHA1 of `data` under `key` (MESSAGE-INTEGRITY, RFC 8489 §14.5; TURN REST passwords).
    fn hmac_sha1(&self, key: &[u8], data: &[u8]) -> [u8; 20];
    /// HMAC-SHA256 of `data` under `key` (MESSAGE-INTEGRITY-SHA256, RFC 8489 §14.6).
    fn hmac_sha256(&self, key: &[u8], data: &[u8]) -> [u8; 32];
    /// MD5 digest (long-term credential key, RFC 8489 §9.2.2).
    fn md5(&self, data: &[u8]) -> [u8; 16];
}

/// [`Crypto`] implemented with the `hmac`, `sha1`, `sha2` and `md-5` crates.
#[derive(Debug, Clone, Copy, Default)]
pub struct RustCrypto;

impl Crypto for RustCrypto {
    fn hmac_sha1(&self, key: &[u8], data: &[u8]) -> [u8; 20] {
        // HMAC accepts keys of any length, so new_from_slice cannot fail.
        let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key)
            .expect("invariant: HMAC takes keys of any length");
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    fn hmac_sha256(&self, key: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
            .expect("invariant: HMAC takes keys of any length");
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    fn md5(&self, data: &[u8]) -> [u8; 16] {
        Md5::digest(data).into()
    }
}

/// Compares two MACs without an early exit, so timing does not reveal the matching prefix
/// (subtle's `ConstantTimeEq`; a length mismatch is unequal, and lengths are public).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn rfc2202_hmac_sha1_case_2() {
        let mac = RustCrypto.hmac_sha1(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }

    #[test]
    fn rfc4231_hmac_sha256_case_2() {
        let mac = RustCrypto.hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn rfc1321_md5_abc() {
        assert_eq!(
            hex(&RustCrypto.md5(b"abc")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn ct_eq_compares_length_and_content() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
