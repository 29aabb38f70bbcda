//! The AWS IoT credentials provider: trade the device's X.509 certificate for temporary role
//! credentials, so a device keeps no long-lived AWS keys (docs/reference.md section 4).
//!
//! `GET https://<endpoint>/role-aliases/<alias>/credentials` over mutual TLS, with the
//! `x-amzn-iot-thingname` header. Before any network call the device identity is checked
//! locally ([`Device::load`]): key file permissions, certificate dates, and that the key belongs
//! to the certificate, because each of those otherwise surfaces as a bare TLS alert or a 403.
//!
//! Retries follow the provider's contract: 429, 5xx and connection failures are retried with
//! jittered exponential backoff inside the caller's deadline; any other 4xx is a configuration
//! error whose server message reaches the user at once (`Role alias does not exist`, …).

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::{self, error::CredentialsError, ProvideCredentials};
use aws_credential_types::Credentials;
use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::aws::cert;
use crate::aws::https::{self, HttpsError};
use crate::config::{IotConfig, KeyRef};
use crate::token;
use crate::tpm::{tss2, KeyIn, PublicKey, Scheme, Tpm};
use rustls::sign::{Signer, SigningKey};
use rustls::SignatureScheme;

/// Largest response body accepted: a success is about 1 KB.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Largest PEM file read (certificate chain or key).
const MAX_PEM_BYTES: u64 = 256 * 1024;

/// Credentials are refreshed this long before they expire (as Greengrass does).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Why the device could not obtain role credentials.
#[derive(Debug, Clone)]
pub enum IotError {
    /// A certificate, key or CA file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The private key can be read by group or others.
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The certificate or key file holds no usable PEM object.
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        detail: String,
    },
    /// The private key does not belong to the certificate: their public keys differ.
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// Where the key lives (`[iot] key`).
        key: String,
        /// SHA-256 of the certificate's public key (SubjectPublicKeyInfo DER).
        cert_key: String,
        /// SHA-256 of the private key's public half.
        key_key: String,
    },
    /// The key belongs to a certificate further down the chain file: the device certificate
    /// must come first.
    ChainOrder {
        /// The certificate file.
        cert: PathBuf,
        /// Which certificate (1-based) the key belongs to.
        position: usize,
    },
    /// The private key is encrypted; ecr-edge runs unattended and takes no passphrase.
    EncryptedKey {
        /// The key file.
        path: PathBuf,
    },
    /// The key is of a type or curve the TLS library cannot sign with.
    UnusableKey {
        /// The key file.
        path: PathBuf,
        /// What it is (`EC P-521`, `RSA 1024`, …).
        kind: String,
    },
    /// `[iot] key = "credential:NAME"`, but the service was given no credentials.
    NoCredentialsDirectory {
        /// The credential's name.
        name: String,
    },
    /// The TPM holding the key could not be used.
    Tpm {
        /// Where the key lives (`handle:0x81000001`).
        key: String,
        /// What the TPM (or the way to it) said.
        error: crate::tpm::TpmError,
    },
    /// The TPM holds a key that cannot be the device key.
    TpmKey {
        /// Where the key lives.
        key: String,
        /// Why not, in words.
        problem: String,
    },
    /// The certificate is not valid yet (or the clock is wrong).
    NotYetValid {
        /// notBefore, seconds since the epoch.
        not_before: i64,
    },
    /// The certificate has expired.
    Expired {
        /// notAfter, seconds since the epoch.
        not_after: i64,
    },
    /// TLS could not be set up with this identity.
    Tls(String),
    /// The trust store for the endpoint could not be built (`ca`, `SSL_CERT_FILE`).
    Trust(crate::aws::trust::TrustError),
    /// The endpoint refused our certificate during the handshake (not registered, inactive, or
    /// signed by a CA the account does not know), or we refused its certificate. Not retried.
    Handshake {
        /// The endpoint.
        endpoint: String,
        /// The TLS error.
        detail: String,
    },
    /// The endpoint could not be reached or the connection failed.
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        detail: String,
    },
    /// No answer within the deadline.
    Timeout {
        /// The endpoint.
        endpoint: String,
    },
    /// The provider refused with a 4xx: a configuration error, not retried.
    Rejected {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The provider kept failing with 429 or 5xx until the deadline.
    Unavailable {
        /// HTTP status of the last attempt.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The answer could not be parsed.
    BadResponse(String),
}

impl fmt::Display for IotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IotError::Read { path, detail } => {
                write!(f, "cannot read {}: {detail}", path.display())
            }
            IotError::KeyPermissions { path, mode } => write!(
                f,
                "private key {} is readable by others (mode {mode:03o}); run `chmod 600 {}` \
                 (or set allow_insecure_key_permissions = true in [iot])",
                path.display(),
                path.display()
            ),
            IotError::BadPem { path, detail } => write!(f, "{}: {detail}", path.display()),
            IotError::KeyMismatch {
                cert,
                key,
                cert_key,
                key_key,
            } => write!(
                f,
                "private key {key} does not belong to certificate {}: the certificate's public \
                 key has SHA-256 {cert_key}, the private key's {key_key} (compare with `openssl \
                 x509 -in CERT -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum` \
                 and, for a key file, `openssl pkey -in KEY -pubout -outform DER | sha256sum`; \
                 for a TPM key, `ecr-edge doctor` shows its fingerprint)",
                cert.display()
            ),
            IotError::ChainOrder { cert, position } => write!(
                f,
                "{}: the private key belongs to certificate {position} in the file, not the \
                 first; put the device certificate first, then its intermediates",
                cert.display()
            ),
            IotError::EncryptedKey { path } => write!(
                f,
                "private key {} is encrypted, and ecr-edge runs unattended without a \
                 passphrase; decrypt it once with `openssl pkey -in {} -out KEY.new` (it asks \
                 for the passphrase), then replace the file and keep it mode 0600",
                path.display(),
                path.display()
            ),
            IotError::UnusableKey { path, kind } => write!(
                f,
                "private key {} is {kind}, which TLS here cannot sign with; use RSA (2048 to \
                 8192 bits) or EC P-256 or P-384, as AWS IoT accepts",
                path.display()
            ),
            IotError::NoCredentialsDirectory { name } => write!(
                f,
                "[iot] key is the systemd credential {name:?}, but $CREDENTIALS_DIRECTORY is \
                 unset: run ecr-edge as the service whose unit has \
                 LoadCredentialEncrypted={name}:... (see the README's device key section)"
            ),
            IotError::Tpm { key, error } => write!(f, "device key {key}: {error}"),
            IotError::TpmKey { key, problem } => write!(f, "device key {key}: {problem}"),
            IotError::NotYetValid { not_before } => {
                let now = token::now();
                write!(
                    f,
                    "device certificate is not valid until {} (the device clock says {}",
                    crate::clock::rfc3339(*not_before),
                    crate::clock::rfc3339(now)
                )?;
                if now < crate::BUILD_EPOCH {
                    write!(
                        f,
                        ", before this ecr-edge was built on {}: the clock is not set; start \
                         NTP or set it",
                        crate::clock::rfc3339(crate::BUILD_EPOCH)
                    )?;
                }
                f.write_str(")")
            }
            IotError::Expired { not_after } => {
                write!(
                    f,
                    "device certificate expired at {}",
                    crate::clock::rfc3339(*not_after)
                )
            }
            IotError::Tls(detail) => write!(f, "TLS setup failed: {detail}"),
            IotError::Trust(e) => e.fmt(f),
            IotError::Handshake { endpoint, detail } => write!(
                f,
                "TLS with {endpoint} failed: {detail} (an alert from the endpoint means it \
                 rejected our certificate: is it registered and active in AWS IoT?)"
            ),
            IotError::Unreachable { endpoint, detail } => {
                write!(
                    f,
                    "cannot reach IoT credentials endpoint {endpoint}: {detail}"
                )
            }
            IotError::Timeout { endpoint } => {
                write!(
                    f,
                    "no answer from IoT credentials endpoint {endpoint} in time"
                )
            }
            IotError::Rejected { status, message } => {
                write!(f, "IoT credentials provider refused ({status}): {message}")
            }
            IotError::Unavailable { status, message } => {
                write!(
                    f,
                    "IoT credentials provider unavailable ({status}): {message}"
                )
            }
            IotError::BadResponse(detail) => {
                write!(f, "unusable answer from IoT credentials provider: {detail}")
            }
        }
    }
}

impl std::error::Error for IotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IotError::Trust(e) => Some(e),
            _ => None,
        }
    }
}

/// Temporary role credentials from the provider. `Debug` redacts the secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct RoleCredentials {
    /// `ASIA…` access key ID.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token.
    pub session_token: String,
    /// Expiry, seconds since the epoch.
    pub expiration: i64,
}

impl fmt::Debug for RoleCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoleCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expiration", &self.expiration)
            .finish()
    }
}

#[derive(Deserialize)]
struct SuccessBody {
    credentials: SuccessCredentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SuccessCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
}

/// Parses the provider's answer: credentials on 200, the classified error otherwise.
///
/// # Errors
/// [`IotError::Rejected`] for 4xx other than 429, [`IotError::Unavailable`] for 429 and 5xx
/// (the caller retries those), [`IotError::BadResponse`] for a body that cannot be used.
pub fn parse_response(status: u16, body: &[u8]) -> Result<RoleCredentials, IotError> {
    if status != 200 {
        let message = serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .and_then(|b| b.message)
            .unwrap_or_else(|| format!("HTTP {status}"));
        let message: String = message
            .chars()
            .filter(|c| !c.is_control())
            .take(512)
            .collect();
        return Err(if status == 429 || status >= 500 {
            IotError::Unavailable { status, message }
        } else {
            IotError::Rejected { status, message }
        });
    }
    let parsed: SuccessBody = serde_json::from_slice(body)
        .map_err(|e| IotError::BadResponse(format!("not the credentials JSON: {e}")))?;
    let c = parsed.credentials;
    let expiration = aws_smithy_types::DateTime::from_str(
        &c.expiration,
        aws_smithy_types::date_time::Format::DateTime,
    )
    .map_err(|_| IotError::BadResponse("expiration is not an RFC 3339 time".into()))?
    .secs();
    if c.access_key_id.is_empty() || c.secret_access_key.is_empty() || c.session_token.is_empty() {
        return Err(IotError::BadResponse("empty credential field".into()));
    }
    Ok(RoleCredentials {
        access_key_id: c.access_key_id,
        secret_access_key: c.secret_access_key,
        session_token: c.session_token,
        expiration,
    })
}

/// Presents the device certificate whenever the endpoint asks for one.
#[derive(Debug)]
struct ClientIdentity(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        // Only when the key can sign with a scheme the endpoint offered.
        self.0.key.choose_scheme(schemes).map(|_| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Whether a PEM key file holds an encrypted key (PKCS#8 `ENCRYPTED PRIVATE KEY`, or the
/// traditional `Proc-Type: 4,ENCRYPTED` header).
fn is_encrypted(pem: &[u8]) -> bool {
    let text = String::from_utf8_lossy(pem);
    text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.contains("Proc-Type: 4,ENCRYPTED")
}

/// What kind of key a private key is, for a refusal: from its public half when it can be had.
fn private_key_kind(key: &PrivateKeyDer<'_>) -> String {
    match key {
        PrivateKeyDer::Pkcs1(_) => "an RSA key of a size TLS refuses (under 2048 bits?)".into(),
        PrivateKeyDer::Sec1(k) => curve_name(k.secret_sec1_der()),
        PrivateKeyDer::Pkcs8(k) => pkcs8_kind(k.secret_pkcs8_der()),
        _ => "a key of an unknown type".into(),
    }
}

fn pkcs8_kind(der: &[u8]) -> String {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    if der.windows(RSA.len()).any(|w| w == RSA) {
        return "an RSA key of a size TLS refuses (under 2048 bits?)".into();
    }
    curve_name(der)
}

/// The named curve an EC key's DER mentions, in words.
fn curve_name(der: &[u8]) -> String {
    const P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
    const SECP256K1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x0a];
    if der.windows(P521.len()).any(|w| w == P521) {
        "EC P-521".into()
    } else if der.windows(SECP256K1.len()).any(|w| w == SECP256K1) {
        "EC secp256k1".into()
    } else {
        "a key of a type or curve TLS here does not support".into()
    }
}

/// The device identity, loaded and checked: certificate chain, private key, TLS configuration.
#[derive(Clone)]
pub struct Device {
    tls: Arc<rustls::ClientConfig>,
    /// notAfter of the leaf certificate.
    pub not_after: i64,
    /// What the identity is, for people (`doctor`).
    pub identity: Identity,
}

/// A device identity as an operator checks it against the AWS IoT console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The certificate's subject (`CN=…`).
    pub subject: String,
    /// Its issuer (the registered CA, or the subject again when self-signed).
    pub issuer: String,
    /// X.509 version (1 or 3).
    pub version: u8,
    /// Key type and size (`EC P-256`, `RSA 2048`).
    pub key: String,
    /// notBefore, seconds since the epoch.
    pub not_before: i64,
    /// How many intermediate certificates follow the device certificate in its file.
    pub intermediates: usize,
    /// SHA-256 of the certificate: the certificate ID the AWS IoT console shows.
    pub certificate_id: String,
    /// SHA-256 of the public key (SubjectPublicKeyInfo DER).
    pub public_key_sha256: String,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, IotError> {
    use std::io::Read;
    let err = |detail: String| IotError::Read {
        path: path.to_owned(),
        detail,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(err(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(buf)
}

impl Device {
    /// The TLS client configuration that presents this identity and trusts the endpoint's CAs.
    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// Loads and checks the identity in `cfg` at time `now`: key permissions, PEM contents,
    /// certificate dates, key/certificate match, and the trust store for the endpoint.
    ///
    /// # Errors
    /// The [`IotError`] naming the first problem found; no network is touched.
    pub fn load(cfg: &IotConfig, now: i64) -> Result<Device, IotError> {
        if let KeyRef::File(path) = &cfg.key {
            let meta = std::fs::metadata(path).map_err(|e| IotError::Read {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            if meta.mode() & 0o077 != 0
                && !cfg.allow_insecure_key_permissions
                && tpm_wrapped(path).is_none()
            {
                return Err(IotError::KeyPermissions {
                    path: path.clone(),
                    mode: meta.mode() & 0o777,
                });
            }
        }
        let cert_pem = read_file(&cfg.cert)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| IotError::BadPem {
                path: cfg.cert.clone(),
                detail: format!("not a PEM certificate chain: {e}"),
            })?;
        let leaf = chain.first().ok_or_else(|| IotError::BadPem {
            path: cfg.cert.clone(),
            detail: "no CERTIFICATE block in the file (expected -----BEGIN CERTIFICATE-----)"
                .into(),
        })?;
        let parsed = cert::parse(leaf).ok_or_else(|| IotError::BadPem {
            path: cfg.cert.clone(),
            detail: "the first CERTIFICATE block is not an X.509 certificate".into(),
        })?;
        // A clock known to be wrong (behind the floor, AWS not heard yet) cannot tell that a
        // certificate is not valid yet: the endpoint judges it by its own time, and its answer
        // gives AWS's time (src/clock.rs). One that expired before the floor is refused.
        if now < parsed.not_before && crate::clock::read().known() {
            return Err(IotError::NotYetValid {
                not_before: parsed.not_before,
            });
        }
        if now > parsed.not_after {
            return Err(IotError::Expired {
                not_after: parsed.not_after,
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (signing_key, key_spki) = device_key(&cfg.key, cfg.tpm.as_ref(), &provider)?;
        if key_spki.as_slice() != parsed.spki {
            let position = chain
                .iter()
                .skip(1)
                .position(|c| cert::parse(c).is_some_and(|c| c.spki == key_spki.as_slice()));
            return Err(match position {
                Some(i) => IotError::ChainOrder {
                    cert: cfg.cert.clone(),
                    position: i + 2,
                },
                None => IotError::KeyMismatch {
                    cert: cfg.cert.clone(),
                    key: cfg.key.to_string(),
                    cert_key: cert::sha256_hex(parsed.spki),
                    key_key: cert::sha256_hex(key_spki.as_ref()),
                },
            });
        }
        let not_after = parsed.not_after;
        let identity = Identity {
            subject: parsed.subject.clone(),
            issuer: parsed.issuer.clone(),
            version: parsed.version,
            key: cert::key_kind(parsed.spki).to_string(),
            not_before: parsed.not_before,
            intermediates: chain.len() - 1,
            certificate_id: cert::sha256_hex(leaf),
            public_key_sha256: cert::sha256_hex(parsed.spki),
        };
        let roots = crate::aws::trust::root_store(cfg.ca.as_deref()).map_err(IotError::Trust)?;
        // The endpoint's certificate is judged at trusted time (src/clock.rs).
        let tls =
            rustls::ClientConfig::builder_with_details(provider, Arc::new(crate::clock::TlsTime))
                .with_safe_default_protocol_versions()
                .map_err(|e| IotError::Tls(e.to_string()))?
                .with_root_certificates(roots)
                // Not with_client_auth_cert: it re-checks the pair with webpki, which refuses v1
                // certificates; the pair was matched above, by the public keys themselves.
                .with_client_cert_resolver(Arc::new(ClientIdentity(Arc::new(
                    rustls::sign::CertifiedKey::new(chain.clone(), signing_key),
                ))));
        Ok(Device {
            tls: Arc::new(tls),
            not_after,
            identity,
        })
    }
}

/// The device key named by `key` (`[iot] key`; a `handle:` key in `tpm`, by default the
/// kernel's), ready to sign TLS handshakes (and certificate requests), and its public half
/// (SubjectPublicKeyInfo DER).
///
/// # Errors
/// [`IotError`] naming why the key cannot be used.
pub fn device_key(
    key: &KeyRef,
    tpm: Option<&crate::tpm::TpmName>,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<dyn SigningKey>, Vec<u8>), IotError> {
    match key {
        KeyRef::File(path) => pem_key(path, tpm, provider),
        KeyRef::Credential(name) => {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                .filter(|d| !d.is_empty())
                .ok_or_else(|| IotError::NoCredentialsDirectory { name: name.clone() })?;
            // systemd made the folder and file readable by this service alone.
            pem_key(&Path::new(&dir).join(name), tpm, provider)
        }
        KeyRef::TpmHandle(handle) => tpm_key(key, tpm, KeyIn::Persistent(*handle)),
    }
}

fn tpm_key(
    key: &KeyRef,
    tpm: Option<&crate::tpm::TpmName>,
    place: KeyIn,
) -> Result<(Arc<dyn SigningKey>, Vec<u8>), IotError> {
    let key = TpmKey::open(key, tpm, place)?;
    let spki = key.spki.clone();
    Ok((Arc::new(key), spki))
}

/// The TPM-wrapped key (`-----BEGIN TSS2 PRIVATE KEY-----`) a key file holds, if it is one:
/// useless without its TPM, so its file mode is not the key's protection.
pub fn tpm_wrapped(path: &Path) -> Option<tss2::WrappedKey> {
    let pem = read_file(path).ok()?;
    tss2::pem_der(&pem)?
        .ok()
        .and_then(|der| tss2::parse(&der).ok())
}

/// A PEM private key file: refused when encrypted or of a kind TLS cannot sign with. A
/// TPM-wrapped key (`TSS2 PRIVATE KEY`) is loaded in `tpm`.
fn pem_key(
    path: &Path,
    tpm: Option<&crate::tpm::TpmName>,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<dyn SigningKey>, Vec<u8>), IotError> {
    let key_pem = read_file(path)?;
    if let Some(der) = tss2::pem_der(&key_pem) {
        let wrapped = der
            .and_then(|d| tss2::parse(&d))
            .map_err(|e| IotError::BadPem {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        return tpm_key(&KeyRef::File(path.to_owned()), tpm, KeyIn::Wrapped(wrapped));
    }
    if is_encrypted(&key_pem) {
        return Err(IotError::EncryptedKey {
            path: path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| IotError::BadPem {
        path: path.to_owned(),
        detail: "no private key in the file (expected a PKCS#8 -----BEGIN PRIVATE KEY-----, EC \
                 or RSA PRIVATE KEY block)"
            .into(),
    })?;
    let unusable = || IotError::UnusableKey {
        path: path.to_owned(),
        kind: private_key_kind(&key),
    };
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|_| unusable())?;
    // The public keys themselves, whatever the certificate's version or extensions (v1
    // certificates from `openssl x509 -req` included, which webpki would not parse).
    let spki = signing_key.public_key().ok_or_else(unusable)?.to_vec();
    Ok((signing_key, spki))
}

/// An EC P-256 or RSA key in a TPM (persistent, or wrapped in a file): every TLS handshake
/// that is not resumed is signed there.
#[derive(Debug)]
struct TpmKey {
    tpm: Tpm,
    place: Arc<KeyIn>,
    spki: Vec<u8>,
    /// An RSA key (else EC P-256).
    rsa: bool,
}

impl TpmKey {
    /// Reads the key's public half and checks that it can sign TLS handshakes.
    fn open(
        key: &KeyRef,
        tpm: Option<&crate::tpm::TpmName>,
        place: KeyIn,
    ) -> Result<TpmKey, IotError> {
        let tpm = Tpm::new(tpm.cloned().unwrap_or_default());
        let key = key.to_string();
        let public = tpm.public_of(&place).map_err(|error| IotError::Tpm {
            key: key.clone(),
            error,
        })?;
        let problem = |problem: String| IotError::TpmKey {
            key: key.clone(),
            problem,
        };
        if public.restricted {
            return Err(problem(
                "the key is a restricted key, which signs only what the TPM made itself \
                 (an attestation or storage key); make a signing key with `ecr-edge iot keygen \
                 --tpm` or `tpm2_create -G ecc256`"
                    .into(),
            ));
        }
        if !public.sign {
            return Err(problem(
                "the key cannot sign (a decryption or storage key); make a \
                 signing key with `ecr-edge iot keygen --tpm` or `tpm2_create -G ecc256`"
                    .into(),
            ));
        }
        let rsa = match &public.key {
            PublicKey::EcP256 { .. } => false,
            // What webpki and AWS accept: 2048 bits or more.
            PublicKey::Rsa { modulus, .. }
                if modulus.iter().skip_while(|&&b| b == 0).count() >= 256 =>
            {
                true
            }
            other => {
                return Err(problem(format!(
                    "the key is {}; ecr-edge signs with EC P-256 and RSA (2048 bits or more) \
                     keys in a TPM (make one with `ecr-edge iot keygen --tpm`, or \
                     `tpm2_create -G ecc256` or `-G rsa2048`)",
                    other.kind()
                )))
            }
        };
        let spki = public
            .key
            .spki()
            .ok_or_else(|| problem("the key cannot be read".into()))?;
        Ok(TpmKey {
            tpm,
            place: Arc::new(place),
            spki,
            rsa,
        })
    }
}

impl SigningKey for TpmKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        // RSA: PSS where offered (TLS 1.3 offers nothing else), PKCS#1 v1.5 otherwise.
        let choices: &[(SignatureScheme, Scheme)] = if self.rsa {
            &[
                (SignatureScheme::RSA_PSS_SHA256, Scheme::RsaPss),
                (SignatureScheme::RSA_PKCS1_SHA256, Scheme::RsaPkcs1),
            ]
        } else {
            &[(SignatureScheme::ECDSA_NISTP256_SHA256, Scheme::Ecdsa)]
        };
        let &(tls, scheme) = choices.iter().find(|(tls, _)| offered.contains(tls))?;
        Some(Box::new(TpmSigner {
            tpm: self.tpm.clone(),
            place: self.place.clone(),
            tls,
            scheme,
        }))
    }

    fn public_key(&self) -> Option<rustls::pki_types::SubjectPublicKeyInfoDer<'_>> {
        Some(self.spki.as_slice().into())
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        if self.rsa {
            rustls::SignatureAlgorithm::RSA
        } else {
            rustls::SignatureAlgorithm::ECDSA
        }
    }
}

/// One handshake's signature, made in the TPM.
#[derive(Debug)]
struct TpmSigner {
    tpm: Tpm,
    place: Arc<KeyIn>,
    tls: SignatureScheme,
    scheme: Scheme,
}

impl Signer for TpmSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        self.tpm
            .sign(&self.place, self.scheme, &sha256)
            .map_err(|e| rustls::Error::Other(rustls::OtherError(Arc::new(e))))
    }

    fn scheme(&self) -> SignatureScheme {
        self.tls
    }
}

/// The region in a credentials endpoint name (`….credentials.iot.<region>.amazonaws.com`).
pub fn endpoint_region(endpoint: &str) -> Option<&str> {
    let (host, _) = host_port(endpoint);
    let (_, rest) = host.split_once(".credentials.iot.")?;
    rest.split('.').next().filter(|r| !r.is_empty())
}

/// Splits `host[:port]` (port 443 by default).
pub fn host_port(endpoint: &str) -> (&str, u16) {
    match endpoint.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().unwrap_or(443)),
        None => (endpoint, 443),
    }
}

/// One exchange attempt: connect (through `HTTPS_PROXY` when set), mutual TLS, GET.
async fn attempt(cfg: &IotConfig, device: &Device) -> Result<(u16, Bytes), IotError> {
    let (host, port) = host_port(&cfg.endpoint);
    let path = format!("/role-aliases/{}/credentials", cfg.role_alias);
    let headers = [("x-amzn-iot-thingname", cfg.thing_name.as_str())];
    match https::get(
        device.tls.clone(),
        crate::aws::traffic::Endpoint::Iot,
        host,
        port,
        &path,
        &headers,
        MAX_RESPONSE_BYTES,
    )
    .await
    {
        Ok(r) => Ok((r.status, r.body)),
        Err(HttpsError::Handshake(detail)) => Err(IotError::Handshake {
            endpoint: cfg.endpoint.clone(),
            detail,
        }),
        Err(HttpsError::Invalid(detail)) => Err(IotError::Tls(detail)),
        Err(HttpsError::Signer(problem)) => Err(IotError::TpmKey {
            key: cfg.key.to_string(),
            problem,
        }),
        Err(HttpsError::Unreachable(detail)) => Err(IotError::Unreachable {
            endpoint: cfg.endpoint.clone(),
            detail,
        }),
    }
}

/// [`attempt`] on a thread and runtime of its own ([`on_own_thread`]).
async fn attempt_on_own_thread(
    cfg: &IotConfig,
    device: &Device,
    left: Duration,
) -> Result<(u16, Bytes), IotError> {
    let (cfg, device) = (cfg.clone(), device.clone());
    let endpoint = cfg.endpoint.clone();
    on_own_thread(left, move || async move { attempt(&cfg, &device).await })
        .await
        .unwrap_or_else(|detail| Err(IotError::Unreachable { endpoint, detail }))
}

/// Runs `work` on a thread and runtime of its own, bounded by `left` there too: a TPM signs a
/// handshake synchronously (as long as its driver lets it take), and the caller's runtime (the
/// daemon's, serving tokens) must not stop meanwhile. Calls with the device key are rare (a
/// few a day), so the thread and runtime cost nothing that matters. The answer is handed over
/// at once; the thread then lets the connection close the TLS way (its task, bounded by
/// [`crate::aws::https::CLOSE_WAIT`]), as it would on the caller's runtime. Never completes
/// when `left` runs out first: the caller's own timeout says what ran out.
///
/// # Errors
/// Why the thread could not run `work`, in words.
pub(crate) async fn on_own_thread<T, F>(
    left: Duration,
    work: impl FnOnce() -> F + Send + 'static,
) -> Result<T, String>
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    let (answer, answered) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime for the device key could not start: {e}"))?;
    tokio::task::spawn_blocking(move || {
        runtime.block_on(async {
            let _ = answer.send(tokio::time::timeout(left, work()).await);
            let until = tokio::time::Instant::now() + crate::aws::https::CLOSE_WAIT;
            while tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                > 0
                && tokio::time::Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    });
    match answered.await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(_elapsed)) => std::future::pending().await,
        Err(_) => Err("the device key's thread stopped".into()),
    }
}

/// Exchanges the device certificate for role credentials, retrying retryable failures with
/// jittered exponential backoff until `deadline`.
///
/// # Errors
/// The last [`IotError`]; 4xx answers (but 429) return at once.
pub async fn exchange(
    cfg: &IotConfig,
    device: &Device,
    deadline: Instant,
) -> Result<RoleCredentials, IotError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let result =
            match tokio::time::timeout(left, attempt_on_own_thread(cfg, device, left)).await {
                Ok(Ok((status, body))) => parse_response(status, &body),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(
                    match crate::aws::https::timed_out(host_port(&cfg.endpoint).0) {
                        Some(dns) => IotError::Unreachable {
                            endpoint: cfg.endpoint.clone(),
                            detail: dns,
                        },
                        None => IotError::Timeout {
                            endpoint: cfg.endpoint.clone(),
                        },
                    },
                ),
            };
        let err = match result {
            Ok(creds) => return Ok(creds),
            Err(e @ (IotError::Unavailable { .. } | IotError::Unreachable { .. })) => e,
            Err(e) => return Err(e),
        };
        let pause = jitter(backoff);
        if Instant::now() + pause >= deadline {
            return Err(err);
        }
        tracing::debug!("IoT exchange failed, retrying in {pause:?}: {err}");
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A uniformly random duration in `[0, max]` ("full jitter"), so a fleet that failed together
/// does not retry together.
pub fn jitter(max: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    let fraction = match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    };
    max.mul_f64(fraction)
}

/// An AWS SDK credentials provider backed by the IoT exchange. The SDK's identity cache keeps the
/// credentials until [`REFRESH_MARGIN`] before expiry and lets one refresh run at a time.
#[derive(Debug)]
pub struct IotProvider {
    cfg: IotConfig,
    /// The identity in use, and the state of its files when it was loaded.
    device: std::sync::Mutex<(Option<FileStamps>, Arc<Device>)>,
    /// How long one exchange (retries included) may take.
    timeout: Duration,
}

/// What identifies the contents of the certificate and key files without reading them:
/// device, inode, size and modification time of each (a rotation renames new files into
/// place, which changes the inode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamps(Vec<(u64, u64, u64, i64, i64)>);

impl FileStamps {
    /// The stamps of `cfg`'s certificate and key files; `None` when one cannot be read.
    pub fn of(cfg: &IotConfig) -> Option<FileStamps> {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
        };
        let mut stamps = vec![stamp(&cfg.cert)?];
        if let KeyRef::File(key) = &cfg.key {
            stamps.push(stamp(key)?);
        }
        Some(FileStamps(stamps))
    }
}

impl IotProvider {
    /// A provider for `cfg` with the checked `device`; each exchange gives up after `timeout`.
    pub fn new(cfg: IotConfig, device: Device, timeout: Duration) -> IotProvider {
        let stamps = FileStamps::of(&cfg);
        IotProvider {
            cfg,
            device: std::sync::Mutex::new((stamps, Arc::new(device))),
            timeout,
        }
    }

    /// The identity to present: reloaded when the certificate or key file changed since the
    /// last load (certificate rotation without a restart). A new pair that does not load
    /// (one of the two files replaced but not yet the other, a key that does not match) is
    /// not used: the previous identity stays until the files form a valid pair.
    fn current(&self) -> Arc<Device> {
        let mut slot = self.device.lock().unwrap_or_else(|p| p.into_inner());
        let stamps = FileStamps::of(&self.cfg);
        if stamps.is_some() && stamps != slot.0 {
            match Device::load(&self.cfg, token::now()) {
                Ok(device) => {
                    tracing::info!(
                        certificate_id = %device.identity.certificate_id,
                        "device identity reloaded from {}",
                        self.cfg.cert.display()
                    );
                    *slot = (stamps, Arc::new(device));
                }
                Err(e) => tracing::warn!(
                    "the device identity files changed but do not form a usable pair yet \
                     ({e}); keeping the previous identity"
                ),
            }
        }
        slot.1.clone()
    }
}

impl ProvideCredentials for IotProvider {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            let device = self.current();
            let c = exchange(&self.cfg, &device, Instant::now() + self.timeout)
                .await
                .map_err(CredentialsError::provider_error)?;
            // The provider's number: checked, never an overflowing addition.
            let expiry = u64::try_from(c.expiration)
                .ok()
                .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            Ok(Credentials::new(
                c.access_key_id,
                c.secret_access_key,
                Some(c.session_token),
                Some(expiry),
                "ecr-edge-iot",
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_body() {
        let body = br#"{"credentials":{"accessKeyId":"ASIAX","secretAccessKey":"s3cr3tXYZ","sessionToken":"t0kenQRS","expiration":"2026-01-18T09:18:06Z"}}"#;
        let c = parse_response(200, body).unwrap();
        assert_eq!(c.access_key_id, "ASIAX");
        assert_eq!(c.expiration, 1_768_727_886);
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("s3cr3tXYZ") && !dbg.contains("t0kenQRS"),
            "{dbg}"
        );
    }

    #[test]
    fn error_bodies_are_classified() {
        let r = parse_response(404, br#"{"message":"Role alias does not exist"}"#);
        assert!(
            matches!(r, Err(IotError::Rejected { status: 404, ref message }) if message == "Role alias does not exist")
        );
        assert!(matches!(
            parse_response(403, b"junk"),
            Err(IotError::Rejected { status: 403, .. })
        ));
        assert!(matches!(
            parse_response(429, b"{}"),
            Err(IotError::Unavailable { status: 429, .. })
        ));
        assert!(matches!(
            parse_response(503, b""),
            Err(IotError::Unavailable { .. })
        ));
        assert!(matches!(
            parse_response(200, b"{}"),
            Err(IotError::BadResponse(_))
        ));
        let bad_time = br#"{"credentials":{"accessKeyId":"a","secretAccessKey":"b","sessionToken":"c","expiration":"tomorrow"}}"#;
        assert!(matches!(
            parse_response(200, bad_time),
            Err(IotError::BadResponse(_))
        ));
    }

    #[test]
    fn region_from_endpoint() {
        assert_eq!(
            endpoint_region("abc.credentials.iot.eu-west-1.amazonaws.com"),
            Some("eu-west-1")
        );
        assert_eq!(
            endpoint_region("abc.credentials.iot.eu-west-1.amazonaws.com:8443"),
            Some("eu-west-1")
        );
        assert_eq!(endpoint_region("localhost:8443"), None);
    }

    #[test]
    fn jitter_is_bounded() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(10)) <= Duration::from_millis(10));
        }
    }
}
