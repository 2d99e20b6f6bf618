//! HTTP Message Signatures as AudioHook profiles them (draft-ietf-httpbis-message-signatures,
//! now RFC 9421): one signature `sig1`, HMAC-SHA256 over the signature base of the upgrade
//! request's components.
//!
//! The signature base (RFC 9421 §2.5) is one line `"<component>": <value>` per covered
//! component, in order, then `"@signature-params": <inner list with parameters>`, joined by
//! LF with no trailing LF. AudioHook covers `@request-target` (path and query), `@authority`,
//! `audiohook-organization-id`, `audiohook-session-id`, `audiohook-correlation-id` and
//! `x-api-key`, with parameters `keyid` (the API key), `nonce`, `alg="hmac-sha256"`,
//! `created` and `expires` (Unix seconds).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What one signature covers.
pub(super) struct Covered<'a> {
    /// Component identifiers (lowercase) and their values, in signing order.
    pub components: &'a [(&'a str, &'a str)],
    /// `keyid` parameter.
    pub keyid: &'a str,
    /// `nonce` parameter.
    pub nonce: &'a str,
    /// `created` parameter.
    pub created: u64,
    /// `expires` parameter.
    pub expires: u64,
}

/// An RFC 8941 §3.3.3 sf-string: quoted, `"` and `\` escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The `Signature-Input` and `Signature` header values of label `sig1`.
pub(super) fn sign(covered: &Covered<'_>, key: &[u8]) -> (String, String) {
    let names: Vec<String> = covered
        .components
        .iter()
        .map(|(n, _)| sf_string(n))
        .collect();
    let params = format!(
        "({});keyid={};nonce={};alg=\"hmac-sha256\";created={};expires={}",
        names.join(" "),
        sf_string(covered.keyid),
        sf_string(covered.nonce),
        covered.created,
        covered.expires
    );
    let mut base = String::new();
    for ((_, value), name) in covered.components.iter().zip(&names) {
        base.push_str(&format!("{name}: {}\n", value.trim()));
    }
    base.push_str(&format!("\"@signature-params\": {params}"));
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key).expect("invariant: HMAC accepts keys of any length");
    mac.update(base.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (format!("sig1={params}"), format!("sig1=:{sig}:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_B64: &str = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU=";
    const API_KEY: &str = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";

    fn example(authority_name: &str) -> (String, String) {
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY_B64)
            .expect("base64");
        let components = [
            ("@request-target", "/api/v1/voicebiometrics/ws"),
            (authority_name, "audiohook.example.com"),
            (
                "audiohook-organization-id",
                "d7934305-0972-4844-938e-9060eef73d05",
            ),
            (
                "audiohook-session-id",
                "30b0e395-84d3-4570-ac13-9a62d8f514c0",
            ),
            (
                "audiohook-correlation-id",
                "e160e428-53e2-487c-977d-96989bf5c99d",
            ),
            ("x-api-key", API_KEY),
        ];
        sign(
            &Covered {
                components: &components,
                keyid: API_KEY,
                nonce: "VGhpc0lzQVVuaXF1ZU5vbmNl",
                created: 1641013200,
                expires: 3282026430,
            },
            &key,
        )
    }

    /// The example of the AudioHook protocol documentation, as the reference implementation's
    /// verifier test carries it (purecloudlabs/audiohook-reference-implementation,
    /// app/audiohook/test/httpsignature/signature-verifier.test.ts, "Example 1").
    #[test]
    fn audiohook_documentation_example() {
        let (input, signature) = example("@authority");
        assert_eq!(
            input,
            "sig1=(\"@request-target\" \"@authority\" \"audiohook-organization-id\" \
             \"audiohook-session-id\" \"audiohook-correlation-id\" \"x-api-key\");\
             keyid=\"SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh\";nonce=\"VGhpc0lzQVVuaXF1ZU5vbmNl\";\
             alg=\"hmac-sha256\";created=1641013200;expires=3282026430"
        );
        assert_eq!(
            signature,
            "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:"
        );
    }

    /// The reference implementation's signature-builder test (same request, `host` covered
    /// instead of `@authority`).
    #[test]
    fn reference_builder_vector() {
        let (_, signature) = example("host");
        assert_eq!(
            signature,
            "sig1=:zupMJUMfd/kMuvKc5zhRyfJPE3jTROuz1S1hn8SCTpE=:"
        );
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(sf_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
