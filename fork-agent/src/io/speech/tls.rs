//! rustls client configuration for `wss://` speech servers.
//!
//! Built once per `[[speech_server]]` at start (config errors surface at `check-config` time):
//! minimum TLS version (1.2 or 1.3; the reference supports only 1.2, we allow both), an
//! optional cipher-suite allow list (rustls names, or the reference's `ecdhe-rsa-aes-gcm-sha2`
//! / `ecdhe-ecdsa-aes-gcm-sha2` groups), trust roots from a CA bundle file or the system bundle,
//! and an optional client certificate. Server names: rustls sends SNI only for DNS names and
//! checks the certificate's SAN against the name (or against an IP SAN for an IP literal:
//! stricter than the reference, which skips the check for IPs).

use std::{path::Path, sync::Arc};

use anyhow::{bail, Context, Result};
use rustls::{
    crypto::{ring, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    RootCertStore, SupportedCipherSuite,
};

use tracing::warn;

use crate::config::{TlsConfig, TlsMinVersion};

/// Builds the client configuration for one server.
pub fn client_config(cfg: &TlsConfig) -> Result<Arc<rustls::ClientConfig>> {
    let mut provider = ring::default_provider();
    if !cfg.cipher_suites.is_empty() {
        provider.cipher_suites = select_suites(&provider, &cfg.cipher_suites)?;
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsMinVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsMinVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let roots = match &cfg.ca_file {
        Some(p) => load_roots(p)?,
        None => system_roots()?,
    };
    // The provider is explicit: with several rustls providers in one build the process
    // default is ambiguous (speech-server does the same).
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .context("the selected cipher suites do not cover the allowed TLS versions")?
        .with_root_certificates(roots);
    let config = match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read a PEM private key from {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("client certificate and key do not match or are unsupported")?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Maps configured names to the provider's suites. Accepts rustls names
/// (`TLS13_AES_256_GCM_SHA384`, `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`) and the reference's
/// GCM groups.
fn select_suites(provider: &CryptoProvider, names: &[String]) -> Result<Vec<SupportedCipherSuite>> {
    let mut out: Vec<SupportedCipherSuite> = Vec::new();
    for name in names {
        let wanted: Vec<String> = match name.to_ascii_lowercase().as_str() {
            "ecdhe-rsa-aes-gcm-sha2" => vec![
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".into(),
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into(),
            ],
            "ecdhe-ecdsa-aes-gcm-sha2" => vec![
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".into(),
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(),
            ],
            _ => vec![name.to_ascii_uppercase()],
        };
        for w in wanted {
            let Some(suite) = provider
                .cipher_suites
                .iter()
                .find(|s| format!("{:?}", s.suite()) == w)
            else {
                let known: Vec<String> = provider
                    .cipher_suites
                    .iter()
                    .map(|s| format!("{:?}", s.suite()))
                    .collect();
                bail!("cipher suite `{name}` is not supported (CBC suites are not); supported: {known:?}");
            };
            if !out.iter().any(|s| s.suite() == suite.suite()) {
                out.push(*suite);
            }
        }
    }
    Ok(out)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(load_certs(path)?);
    if added == 0 {
        bail!("{} holds no usable CA certificate", path.display());
    }
    Ok(roots)
}

/// The system trust store as rustls-native-certs finds it: `SSL_CERT_FILE`/`SSL_CERT_DIR` when
/// set, else the distribution's bundle and directory (openssl-probe). A file it cannot read is
/// logged and skipped; finding no usable CA at all is an error.
fn system_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        warn!(error = %e, "system CA store: skipped a file");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        bail!("no usable CA certificate in the system store (SSL_CERT_FILE, SSL_CERT_DIR or the distribution's bundle); install ca-certificates or set tls.ca_file")
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_gcm_groups_and_rustls_names_resolve() {
        let p = ring::default_provider();
        let s = select_suites(&p, &["ecdhe-rsa-aes-gcm-sha2".into()]).expect("known");
        assert_eq!(s.len(), 2);
        let s = select_suites(
            &p,
            &[
                "TLS13_AES_256_GCM_SHA384".into(),
                "tls13_aes_256_gcm_sha384".into(),
            ],
        )
        .expect("known");
        assert_eq!(s.len(), 1, "duplicates are merged");
        let e = select_suites(&p, &["aes-128-cbc-sha".into()]).expect_err("CBC");
        assert!(e.to_string().contains("aes-128-cbc-sha"));
    }
}
