//! Identifiers the dialects derive instead of drawing: UUIDs (RFC 9562) and Twilio-style SIDs.
//!
//! Randomness comes only from the shell's per-connection nonce ([`super::UpgradeInfo::nonce`]);
//! identifiers that must stay the same across reconnects (Twilio's `streamSid`, AudioHook's
//! `conversationId`) are hashed from the call GUID.

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Namespace of the name-based (v5) UUIDs we derive: itself
/// `uuidv5(NameSpace_URL, "urn:xdpfork:speech-proto")` = `8ac15127-be1e-536f-81ae-aa3dc989a2ed`.
pub(super) const NAMESPACE: [u8; 16] = [
    0x8a, 0xc1, 0x51, 0x27, 0xbe, 0x1e, 0x53, 0x6f, 0x81, 0xae, 0xaa, 0x3d, 0xc9, 0x89, 0xa2, 0xed,
];

/// Text form (8-4-4-4-12, lowercase) of a UUID.
pub(super) fn fmt_uuid(b: &[u8; 16]) -> String {
    let h = hex(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Lowercase hex of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn with_version(mut b: [u8; 16], version: u8) -> [u8; 16] {
    b[6] = (b[6] & 0x0F) | (version << 4);
    b[8] = (b[8] & 0x3F) | 0x80; // RFC 9562 variant 10xx
    b
}

/// A version-4 UUID from 16 random bytes (RFC 9562 §5.4).
pub(super) fn uuid_v4(random: [u8; 16]) -> String {
    fmt_uuid(&with_version(random, 4))
}

/// A name-based version-5 UUID (RFC 9562 §5.5: SHA-1 of namespace then name).
pub(super) fn uuid_v5(namespace: &[u8; 16], name: &str) -> String {
    let digest = Sha1::new()
        .chain_update(namespace)
        .chain_update(name)
        .finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    fmt_uuid(&with_version(b, 5))
}

/// 16 bytes of `SHA-256(label ‖ input)`: independent values from one nonce.
pub(super) fn derive16(label: &str, input: &[u8]) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(label)
        .chain_update(input)
        .finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b
}

/// A Twilio-style SID: `prefix` + 32 lowercase hex digits of `SHA-256(label ‖ input)`.
pub(super) fn sid(prefix: &str, label: &str, input: &str) -> String {
    format!("{prefix}{}", hex(&derive16(label, input.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_matches_rfc_9562_and_our_namespace_is_what_the_docs_say() {
        // NameSpace_URL (RFC 9562 §6.6); the expected values come from Python's uuid.uuid5.
        let url_ns = [
            0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4,
            0x30, 0xc8,
        ];
        assert_eq!(
            uuid_v5(&url_ns, "urn:xdpfork:speech-proto"),
            fmt_uuid(&NAMESPACE)
        );
        assert_eq!(fmt_uuid(&NAMESPACE), "8ac15127-be1e-536f-81ae-aa3dc989a2ed");
        // RFC 9562 appendix A.4 test vector: DNS namespace, "www.example.com".
        let dns_ns = [
            0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4,
            0x30, 0xc8,
        ];
        assert_eq!(
            uuid_v5(&dns_ns, "www.example.com"),
            "2ed6657d-e927-568b-95e1-2665a8aea6a2"
        );
    }

    #[test]
    fn v4_sets_version_and_variant() {
        assert_eq!(uuid_v4([0xFF; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn sids_are_stable_and_shaped() {
        let a = sid("MZ", "twilio-stream:", "guid-1");
        assert_eq!(a, sid("MZ", "twilio-stream:", "guid-1"));
        assert_ne!(a, sid("MZ", "twilio-stream:", "guid-2"));
        assert_eq!(a.len(), 34);
        assert!(a[2..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
    }
}
