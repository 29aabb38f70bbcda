//! Which servers ecr-edge trusts: one policy for every TLS connection it makes (ECR, ECR
//! Public, STS, the IoT credentials provider, `doctor`'s probes).
//!
//! The system store (`SSL_CERT_FILE`, else the first CA bundle at the usual paths) plus the
//! Amazon Trust Services roots compiled in, so an image with no CA bundle still reaches AWS and
//! a private CA in the system store (a TLS-inspecting proxy) is trusted everywhere alike.
//! Before this module, `doctor` probed ECR with the IoT exchange's policy and could report a
//! network failure for a registry that worked. An `[iot] ca` file replaces the policy for the
//! IoT endpoint only (the operator named exactly whom to trust there). A store that cannot be
//! built is an error, never a silently empty store.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Amazon Trust Services root certificates (Amazon Root CA 1-4, Starfield Services Root CA G2),
/// copied from Debian's ca-certificates.
const AMAZON_ROOTS_PEM: &str = include_str!("amazon_roots.pem");

/// The usual places of the system CA bundle (Debian and derivatives, Fedora and RHEL, Alpine
/// and the BSD-style layout), tried in order when `SSL_CERT_FILE` is not set.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A bundle larger than this is refused rather than read (Debian's is about 200 KiB).
const MAX_BUNDLE_BYTES: u64 = 4 * 1024 * 1024;

/// Why no trust store could be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustError {
    /// A named CA file (`SSL_CERT_FILE`, `[iot] ca`) could not be read.
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the system said.
        detail: String,
    },
    /// A CA file holds no usable certificate.
    NoCertificates {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the configuration (it cannot with ring's defaults; kept as an error,
    /// never a panic).
    Tls(String),
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::Unreadable { path, detail } => {
                write!(
                    f,
                    "cannot read CA certificates from {}: {detail}",
                    path.display()
                )
            }
            TrustError::Tls(detail) => write!(f, "cannot set up TLS: {detail}"),
            TrustError::NoCertificates { path } => write!(
                f,
                "{} holds no PEM CA certificate (expected -----BEGIN CERTIFICATE----- blocks)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TrustError {}

/// The certificates of the policy: `ca` alone when given, else the system store and Amazon's
/// roots.
///
/// # Errors
/// [`TrustError`] when a named file (`ca`, `SSL_CERT_FILE`) is unreadable or holds no
/// certificate, or a system bundle that exists holds none.
pub fn certificates(ca: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    if let Some(path) = ca {
        return read_bundle(path);
    }
    let mut certs = match std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()) {
        Some(path) => read_bundle(Path::new(&path))?,
        None => match SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.exists()) {
            Some(path) => read_bundle(path)?,
            None => Vec::new(),
        },
    };
    certs.extend(parse(AMAZON_ROOTS_PEM.as_bytes()));
    Ok(certs)
}

/// The policy as a rustls root store (IoT exchange, `doctor`'s probes).
///
/// # Errors
/// As [`certificates`].
pub fn root_store(ca: Option<&Path>) -> Result<rustls::RootCertStore, TrustError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates(ca)?);
    match (added, ca) {
        (0, Some(path)) => Err(TrustError::NoCertificates {
            path: path.to_owned(),
        }),
        _ => Ok(roots),
    }
}

/// The policy as a TLS client configuration without a client certificate (ECR, ECR Public,
/// STS through the SDK; `doctor`'s probes). Its session cache is what lets a later handshake
/// with the same endpoint resume, so a long-lived caller keeps one.
///
/// # Errors
/// As [`root_store`].
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TrustError> {
    config_with(root_store(ca)?)
}

/// [`client_config`] for the policy without `ca`, one per process while the certificates stay
/// the same: rustls resumes a session only with the configuration (the verifier) that made it,
/// so every client of the AWS SDK shares this one and its session cache. The certificates are
/// read again on each call (a daemon's reload, a new registry); when they change (an updated
/// system bundle) a new configuration replaces the old, and no session made under the old
/// trust is resumed under the new.
///
/// # Errors
/// As [`root_store`].
pub fn shared_client_config() -> Result<Arc<rustls::ClientConfig>, TrustError> {
    static LAST: std::sync::Mutex<Option<(ring::digest::Digest, Arc<rustls::ClientConfig>)>> =
        std::sync::Mutex::new(None);
    let certs = certificates(None)?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    for c in &certs {
        digest.update(&(c.len() as u64).to_le_bytes());
        digest.update(c.as_ref());
    }
    let digest = digest.finish();
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((seen, config)) = last.as_ref() {
        if seen.as_ref() == digest.as_ref() {
            return Ok(config.clone());
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs);
    let config = config_with(roots)?;
    *last = Some((digest, config.clone()));
    Ok(config)
}

fn config_with(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, TrustError> {
    // Certificates are judged at trusted time (src/clock.rs): never before the floor.
    let tls = rustls::ClientConfig::builder_with_details(
        Arc::new(rustls::crypto::ring::default_provider()),
        Arc::new(crate::clock::TlsTime),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| TrustError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(tls))
}

fn read_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let bytes = crate::store::files::read_limited(path, MAX_BUNDLE_BYTES).map_err(|e| {
        TrustError::Unreadable {
            path: path.to_owned(),
            detail: e.to_string(),
        }
    })?;
    let certs = parse(&bytes);
    if certs.is_empty() {
        return Err(TrustError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The `CERTIFICATE` blocks of a PEM bundle; other blocks and damaged ones are skipped.
fn parse(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem).flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amazon_roots_are_all_there() {
        assert_eq!(parse(AMAZON_ROOTS_PEM.as_bytes()).len(), 5);
    }

    #[test]
    fn a_named_file_without_certificates_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert_eq!(
            root_store(Some(&empty)).unwrap_err(),
            TrustError::NoCertificates {
                path: empty.clone()
            }
        );
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            root_store(Some(&missing)),
            Err(TrustError::Unreadable { .. })
        ));
    }

    #[test]
    fn the_client_configuration_holds_the_policy() {
        // Built without a panic, whatever the process's default crypto provider.
        assert!(client_config(None).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            client_config(Some(&missing)),
            Err(TrustError::Unreadable { .. })
        ));
    }
}
