//! TLS for the data channel without a CA: the server makes a self-signed certificate at first
//! start (kept under `--state`), and sends its SHA-256 fingerprint over the authenticated
//! control channel; the client accepts exactly that certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::DataError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's certificate and key.
pub struct ServerIdentity {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl ServerIdentity {
    /// Loads `tls-cert.der`/`tls-key.der` from `state_dir`, making them on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, DataError> {
        let cert_path = state_dir.join("tls-cert.der");
        let key_path = state_dir.join("tls-key.der");
        if cert_path.exists() && key_path.exists() {
            return Ok(Self {
                cert: CertificateDer::from(std::fs::read(&cert_path)?),
                key: std::fs::read(&key_path)?,
            });
        }
        let made = rcgen::generate_simple_self_signed(vec!["handoff".to_string()])
            .map_err(|e| DataError::Certificate(e.to_string()))?;
        let key = made.key_pair.serialize_der();
        write_private(&key_path, &key)?;
        write_private(&cert_path, made.cert.der())?;
        Ok(Self {
            cert: made.cert.der().clone(),
            key,
        })
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.cert.as_ref()).into()
    }

    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, DataError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], key)?;
        Ok(Arc::new(cfg))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Accepts exactly the certificate whose SHA-256 is `fingerprint`; signatures are still
/// checked, so the peer must hold the certificate's key.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that pins the server certificate by fingerprint.
pub fn client_config(fingerprint: [u8; 32]) -> Result<Arc<rustls::ClientConfig>, DataError> {
    let provider = provider();
    let verifier = PinnedCertificate {
        fingerprint,
        provider: provider.clone(),
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}
