//! TLS for the update path, with rustls (and its `ring` provider): what the agent and the admin
//! client trust when they speak `https://`, and the certificate the server answers with.
//!
//! A client trusts either the certificate authorities of one PEM file (a pinned CA: the image's,
//! or one the cloud-config wrote) or, without one, the Mozilla root set built into the program
//! (the same authorities Debian's `ca-certificates` holds), so that a machine whose `/etc` is
//! damaged still checks its server the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS setting cannot be used. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the certificate authorities in {path}: {reason}; give a PEM file of CA certificates")]
    CaFile { path: PathBuf, reason: String },
    #[error("{path} holds no certificate (no -----BEGIN CERTIFICATE----- block); give a PEM file of CA certificates")]
    NoCertificate { path: PathBuf },
    #[error("reading the server certificate chain in {path}: {reason}; give the PEM chain, the server's certificate first")]
    CertFile { path: PathBuf, reason: String },
    #[error("reading the server's private key in {path}: {reason}; give a PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    KeyFile { path: PathBuf, reason: String },
    #[error("the certificate in {cert} and the key in {key} cannot be used together: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// rustls's `ring` provider: what ureq's TLS is built on, and what builds into a static device
/// binary with no more than a C compiler. (rustls now prefers aws-lc-rs, for post-quantum key
/// exchange, which needs CMake and NASM to build.)
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a client checks a server's certificate against: the CAs in `ca_file`, or the built-in
/// Mozilla roots when there is none.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = read_certificates(path).map_err(|reason| TlsError::CaFile {
                path: path.to_owned(),
                reason,
            })?;
            if certs.is_empty() {
                return Err(TlsError::NoCertificate {
                    path: path.to_owned(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| TlsError::CaFile {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The server's side: the certificate chain in `cert` (PEM, its own certificate first) and
/// its private key in `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certificates(cert).map_err(|reason| TlsError::CertFile {
        path: cert.to_owned(),
        reason,
    })?;
    if chain.is_empty() {
        return Err(TlsError::CertFile {
            path: cert.to_owned(),
            reason: "no -----BEGIN CERTIFICATE----- block".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::KeyFile {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
