//! Names in a TLS peer's certificate, for `security.controller_tls_names`.
//!
//! rustls has already verified the chain (against `tls.client_ca` for clients, `tls.ca` for next
//! hops) when these are read; this only pulls the subject common names and DNS subject
//! alternative names out of the leaf certificate. A certificate that does not parse yields no
//! names, so it can never match.

use rustls::CommonState;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Subject CNs and DNS SANs of the certificate `conn`'s peer presented (empty without one).
pub fn of_peer(conn: &CommonState) -> Vec<String> {
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| names(leaf.as_ref()))
        .unwrap_or_default()
}

/// Subject CNs and DNS SANs of a DER certificate.
pub fn names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut out: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                out.push((*d).to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    #[test]
    fn common_name_and_dns_sans_are_read() {
        let mut p = CertificateParams::new(vec!["cvp-b.example.com".to_string()]).expect("params");
        p.distinguished_name
            .push(DnType::CommonName, "cvp.example.com");
        p.subject_alt_names
            .push(SanType::IpAddress("10.77.1.2".parse().expect("ip")));
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("cert");
        assert_eq!(
            names(cert.der()),
            vec![
                "cvp.example.com".to_string(),
                "cvp-b.example.com".to_string()
            ]
        );
    }

    #[test]
    fn garbage_has_no_names() {
        assert!(names(b"not a certificate").is_empty());
    }
}
