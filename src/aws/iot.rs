//! The AWS IoT credentials provider: trade the device's X.509 certificate for temporary role
//! credentials, so a device keeps no long-lived AWS keys (REFERENCE.md section 4).
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

use crate::aws::https::{self, HttpsError};
use crate::config::IotConfig;
use crate::token;

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
    /// The private key does not belong to the certificate.
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
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
            IotError::KeyMismatch { cert, key } => write!(
                f,
                "private key {} does not belong to certificate {}",
                key.display(),
                cert.display()
            ),
            IotError::NotYetValid { not_before } => write!(
                f,
                "device certificate is not valid until {} (is the clock set? now {})",
                rfc3339(*not_before),
                rfc3339(token::now())
            ),
            IotError::Expired { not_after } => {
                write!(f, "device certificate expired at {}", rfc3339(*not_after))
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

fn rfc3339(secs: i64) -> String {
    aws_smithy_types::DateTime::from_secs(secs)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| secs.to_string())
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

/// Reads the validity window (notBefore, notAfter) of a DER certificate, in epoch seconds.
///
/// Walks `Certificate -> tbsCertificate -> [version] serial signature issuer validity` with
/// webpki's `untrusted` reader, which cannot read out of bounds.
pub fn validity(cert_der: &[u8]) -> Option<(i64, i64)> {
    untrusted::Input::from(cert_der)
        .read_all((), |r| {
            let cert = der(r, 0x30)?;
            // Ignore the signature that follows tbsCertificate.
            let _ = r.read_bytes_to_end();
            cert.read_all((), |r| {
                let tbs = der(r, 0x30)?;
                let _ = r.read_bytes_to_end();
                tbs.read_all((), |r| {
                    if r.peek(0xa0) {
                        der(r, 0xa0)?;
                    }
                    der(r, 0x02)?; // serialNumber
                    der(r, 0x30)?; // signature AlgorithmIdentifier
                    der(r, 0x30)?; // issuer
                    let validity = der(r, 0x30)?;
                    let _ = r.read_bytes_to_end();
                    validity.read_all((), |r| Ok((time(r)?, time(r)?)))
                })
            })
        })
        .ok()
}

/// Reads one DER element with the given tag; returns its contents.
fn der<'a>(r: &mut untrusted::Reader<'a>, tag: u8) -> Result<untrusted::Input<'a>, ()> {
    if r.read_byte().map_err(|_| ())? != tag {
        return Err(());
    }
    let first = r.read_byte().map_err(|_| ())?;
    let len = match first {
        n if n < 0x80 => usize::from(n),
        0x81 => usize::from(r.read_byte().map_err(|_| ())?),
        0x82 => {
            let hi = usize::from(r.read_byte().map_err(|_| ())?);
            let lo = usize::from(r.read_byte().map_err(|_| ())?);
            (hi << 8) | lo
        }
        _ => return Err(()), // certificates are far below 64 KiB
    };
    r.read_bytes(len).map_err(|_| ())
}

/// Reads a UTCTime or GeneralizedTime as epoch seconds.
fn time(r: &mut untrusted::Reader<'_>) -> Result<i64, ()> {
    let (digits, text) = if r.peek(0x17) {
        (2, der(r, 0x17)?)
    } else {
        (4, der(r, 0x18)?)
    };
    let s = std::str::from_utf8(text.as_slice_less_safe()).map_err(|_| ())?;
    let s = s.strip_suffix('Z').ok_or(())?;
    if s.len() != digits + 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    let num = |a: usize, b: usize| s.get(a..b).and_then(|x| x.parse::<i64>().ok()).ok_or(());
    let mut year = num(0, digits)?;
    if digits == 2 {
        year += if year >= 50 { 1900 } else { 2000 };
    }
    let rest = &s[digits..];
    let n = |a: usize| {
        rest.get(a..a + 2)
            .and_then(|x| x.parse::<i64>().ok())
            .ok_or(())
    };
    let stamp = format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        n(0)?,
        n(2)?,
        n(4)?,
        n(6)?,
        n(8)?
    );
    aws_smithy_types::DateTime::from_str(&stamp, aws_smithy_types::date_time::Format::DateTime)
        .map(|t| t.secs())
        .map_err(|_| ())
}

/// The device identity, loaded and checked: certificate chain, private key, TLS configuration.
pub struct Device {
    tls: Arc<rustls::ClientConfig>,
    /// notAfter of the leaf certificate.
    pub not_after: i64,
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
    /// Loads and checks the identity in `cfg` at time `now`: key permissions, PEM contents,
    /// certificate dates, key/certificate match, and the trust store for the endpoint.
    ///
    /// # Errors
    /// The [`IotError`] naming the first problem found; no network is touched.
    pub fn load(cfg: &IotConfig, now: i64) -> Result<Device, IotError> {
        let meta = std::fs::metadata(&cfg.key).map_err(|e| IotError::Read {
            path: cfg.key.clone(),
            detail: e.to_string(),
        })?;
        if meta.mode() & 0o077 != 0 && !cfg.allow_insecure_key_permissions {
            return Err(IotError::KeyPermissions {
                path: cfg.key.clone(),
                mode: meta.mode() & 0o777,
            });
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
            detail: "no CERTIFICATE in file".into(),
        })?;
        let (not_before, not_after) = validity(leaf).ok_or_else(|| IotError::BadPem {
            path: cfg.cert.clone(),
            detail: "certificate validity dates unreadable".into(),
        })?;
        if now < not_before {
            return Err(IotError::NotYetValid { not_before });
        }
        if now > not_after {
            return Err(IotError::Expired { not_after });
        }
        let key_pem = read_file(&cfg.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| IotError::BadPem {
            path: cfg.key.clone(),
            detail: "no PKCS#8, SEC1 (EC) or PKCS#1 (RSA) private key in file".into(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signing_key = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| IotError::BadPem {
                path: cfg.key.clone(),
                detail: format!("unusable private key: {e}"),
            })?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing_key);
        if certified.keys_match().is_err() {
            return Err(IotError::KeyMismatch {
                cert: cfg.cert.clone(),
                key: cfg.key.clone(),
            });
        }
        let roots = crate::aws::trust::root_store(cfg.ca.as_deref()).map_err(IotError::Trust)?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| IotError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| IotError::Tls(e.to_string()))?;
        Ok(Device {
            tls: Arc::new(tls),
            not_after,
        })
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
        Err(HttpsError::Unreachable(detail)) => Err(IotError::Unreachable {
            endpoint: cfg.endpoint.clone(),
            detail,
        }),
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
        let result = match tokio::time::timeout(left, attempt(cfg, device)).await {
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
    device: Arc<Device>,
    /// How long one exchange (retries included) may take.
    timeout: Duration,
}

impl IotProvider {
    /// A provider for `cfg` with the checked `device`; each exchange gives up after `timeout`.
    pub fn new(cfg: IotConfig, device: Device, timeout: Duration) -> IotProvider {
        IotProvider {
            cfg,
            device: Arc::new(device),
            timeout,
        }
    }
}

impl ProvideCredentials for IotProvider {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            let c = exchange(&self.cfg, &self.device, Instant::now() + self.timeout)
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
    fn validity_of_garbage_is_none() {
        for junk in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01\x00",
            &[0x30; 100],
        ] {
            assert_eq!(validity(junk), None);
        }
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
