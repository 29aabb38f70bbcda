//! The AWS IoT Device Shadow service's HTTPS API, as the daemon's fleet-health report uses it
//! (docs/reference.md section 11): `POST /things/<thing>/shadow?name=ecr-edge` on the IoT
//! data endpoint, authenticated by the device certificate (mutual TLS, the `[iot]` identity).
//! On port 443 the connection asks for the ALPN protocol `x-amzn-http-ca`, which AWS IoT
//! requires there for HTTPS with a client certificate; port 8443 needs none.
//!
//! What is reported, and when, is the daemon's business (src/daemon/shadow.rs); this module
//! sends one update and says in words why one was refused.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use crate::aws::https::{self, HttpsError};
use crate::aws::iot::Device;
use crate::aws::traffic::Endpoint;

/// The named shadow the daemon reports to.
pub const SHADOW_NAME: &str = "ecr-edge";

/// The ALPN protocol AWS IoT wants on port 443 for HTTPS with a client certificate.
pub const ALPN: &[u8] = b"x-amzn-http-ca";

/// Largest answer read: the service echoes the document with its metadata (a few KiB).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why an update did not land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowError {
    /// The endpoint could not be reached, or did not answer in time.
    Unreachable(String),
    /// The TLS handshake failed: the endpoint refused the device certificate (not registered,
    /// inactive) or its own certificate was not trusted.
    Handshake(String),
    /// The device key did not sign (a TPM's refusal, in words).
    Signer(String),
    /// The device identity (`[iot]` certificate and key) did not load.
    Identity(String),
    /// The service refused the update (`4xx`, not throttling): needs a person.
    Refused {
        /// HTTP status.
        status: u16,
        /// The service's message.
        message: String,
        /// What to do, in words.
        fix: String,
    },
    /// Throttled or a server error: worth trying again later.
    Unavailable {
        /// HTTP status.
        status: u16,
        /// The service's message.
        message: String,
    },
}

impl ShadowError {
    /// Whether trying again later may help (the network, the service's load); the others
    /// need a person (a policy, a certificate), so the daemon tries them rarely.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ShadowError::Unreachable(_) | ShadowError::Unavailable { .. }
        )
    }
}

impl fmt::Display for ShadowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShadowError::Unreachable(d) => write!(f, "the IoT data endpoint is unreachable: {d}"),
            ShadowError::Handshake(d) => write!(
                f,
                "the IoT data endpoint refused the TLS handshake ({d}): check that the device \
                 certificate is registered and active in this account and region, and that \
                 [iot] shadow_endpoint is this account's iot:Data-ATS endpoint"
            ),
            ShadowError::Signer(d) => write!(f, "the device key did not sign: {d}"),
            ShadowError::Identity(e) => write!(f, "the device identity: {e}"),
            ShadowError::Refused {
                status,
                message,
                fix,
            } => write!(
                f,
                "the shadow update was refused ({status} {message}): {fix}"
            ),
            ShadowError::Unavailable { status, message } => write!(
                f,
                "the IoT data endpoint is busy or failing ({status} {message}); trying again later"
            ),
        }
    }
}

impl std::error::Error for ShadowError {}

/// The TLS configuration for the data endpoint: the device's, asking for [`ALPN`]. Its
/// session cache is the device's, so an update after the first resumes (no signature by the
/// device key, no certificate chain on the uplink).
pub fn tls(device: &Device) -> Arc<rustls::ClientConfig> {
    let mut config = (*device.tls()).clone();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Arc::new(config)
}

/// Sends `document` (`{"state":{"reported":{…}}}`) to `thing`'s shadow [`SHADOW_NAME`] at
/// `endpoint` with `tls` ([`tls`]). Returns the shadow's new version. Not bounded here: the
/// caller's timeout bounds the whole call, DNS included.
///
/// # Errors
/// [`ShadowError`], the service's refusals with what to do.
pub async fn update(
    tls: Arc<rustls::ClientConfig>,
    endpoint: &str,
    thing: &str,
    document: Bytes,
) -> Result<u64, ShadowError> {
    let (host, port) = crate::aws::iot::host_port(endpoint);
    let path = format!("/things/{thing}/shadow?name={SHADOW_NAME}");
    let headers = [("content-type", "application/json")];
    let answer = https::request(
        tls,
        Endpoint::IotData,
        hyper::Method::POST,
        host,
        port,
        &path,
        &headers,
        document,
        MAX_RESPONSE_BYTES,
    )
    .await
    .map_err(|e| match e {
        HttpsError::Handshake(d) => ShadowError::Handshake(d),
        HttpsError::Signer(d) => ShadowError::Signer(d),
        HttpsError::Unreachable(d) | HttpsError::Invalid(d) => ShadowError::Unreachable(d),
    })?;
    parse_answer(answer.status, &answer.body, host, thing)
}

/// The service's answer: the shadow's version on 200, else the refusal in words.
///
/// # Errors
/// [`ShadowError::Refused`] or [`ShadowError::Unavailable`].
pub fn parse_answer(status: u16, body: &[u8], host: &str, thing: &str) -> Result<u64, ShadowError> {
    #[derive(Deserialize)]
    struct Accepted {
        version: Option<u64>,
    }
    #[derive(Deserialize)]
    struct Refusal {
        message: Option<String>,
    }
    if status == 200 {
        return Ok(serde_json::from_slice::<Accepted>(body)
            .ok()
            .and_then(|a| a.version)
            .unwrap_or(0));
    }
    let message = serde_json::from_slice::<Refusal>(body)
        .ok()
        .and_then(|r| r.message)
        .map(|m| m.chars().filter(|c| !c.is_control()).take(200).collect())
        .unwrap_or_else(|| format!("HTTP {status}"));
    if status == 429 || status >= 500 {
        return Err(ShadowError::Unavailable { status, message });
    }
    let region = host
        .split_once(".iot.")
        .and_then(|(_, rest)| rest.split('.').next())
        .filter(|r| !r.is_empty())
        .unwrap_or("REGION");
    let arn = format!("arn:aws:iot:{region}:ACCOUNT:thing/{thing}/{SHADOW_NAME}");
    let fix = match status {
        401 | 403 => format!(
            "the device certificate's IoT policy must allow iot:UpdateThingShadow on {arn}: add \
             {{\"Effect\": \"Allow\", \"Action\": \"iot:UpdateThingShadow\", \"Resource\": \
             \"{arn}\"}} to it"
        ),
        404 => format!(
            "the endpoint knows no thing {thing}: register it in this account and region, or \
             set [iot] shadow_endpoint to the account's iot:Data-ATS endpoint"
        ),
        413 => "the report is larger than a shadow may be (8 KiB of state): list fewer images \
                in [daemon] images"
            .to_owned(),
        _ => "the report was not accepted; this is a bug in ecr-edge if it persists".to_owned(),
    };
    Err(ShadowError::Refused {
        status,
        message,
        fix,
    })
}

/// How long one update may take in all (DNS, connection, handshake, answer).
pub const UPDATE_DEADLINE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "a1b2c3example-ats.iot.eu-west-1.amazonaws.com";

    #[test]
    fn an_accepted_update_gives_the_version() {
        let body =
            br#"{"state":{"reported":{"version":"1"}},"metadata":{},"version":7,"timestamp":1}"#;
        assert_eq!(parse_answer(200, body, HOST, "t"), Ok(7));
        assert_eq!(parse_answer(200, b"not json", HOST, "t"), Ok(0));
    }

    #[test]
    fn refusals_say_what_to_do() {
        let e =
            parse_answer(403, br#"{"code":403,"message":"Forbidden"}"#, HOST, "pi-7").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("403 Forbidden"), "{text}");
        assert!(
            text.contains(
                "iot:UpdateThingShadow on arn:aws:iot:eu-west-1:ACCOUNT:thing/pi-7/ecr-edge"
            ),
            "{text}"
        );
        assert!(!e.is_transient());
        let e = parse_answer(404, b"{}", HOST, "pi-7").unwrap_err();
        assert!(e.to_string().contains("knows no thing pi-7"), "{e}");
        let e = parse_answer(429, br#"{"message":"Rate exceeded"}"#, HOST, "t").unwrap_err();
        assert!(e.is_transient());
        assert!(e.to_string().contains("429 Rate exceeded"), "{e}");
        // A server's words are shown printable and short.
        let e = parse_answer(400, "{\"message\":\"a\\u001bb\"}".as_bytes(), HOST, "t").unwrap_err();
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
    }
}
