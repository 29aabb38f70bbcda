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

/// The policy as PEM text, for the AWS SDK's HTTP client (it takes PEM, not parsed roots).
///
/// # Errors
/// As [`certificates`].
pub fn pem() -> Result<Vec<u8>, TrustError> {
    let mut out = String::new();
    for cert in certificates(None)? {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = aws_smithy_types::base64::encode(cert.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    Ok(out.into_bytes())
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
    fn pem_round_trips() {
        let text = pem().unwrap();
        let again = parse(&text);
        assert!(again.len() >= 5, "{}", again.len());
        for amazon in parse(AMAZON_ROOTS_PEM.as_bytes()) {
            assert!(again.contains(&amazon));
        }
    }
}
