//! Why a fetch failed, in words: [`FetchError`] and the one mapping from the SDK's, STS's and
//! the IoT exchange's errors to it (the class decides retries and the daemon's backoff).

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::aws::iot::IotError;
use crate::aws::{Failure, Outcome};

/// STS's refusal to hand out a role's credentials (boxed in [`FetchError::Sts`]: it is rare
/// and large).
#[derive(Debug)]
pub struct StsError {
    /// The action (`sts:AssumeRole`, `sts:AssumeRoleWithWebIdentity`).
    pub action: &'static str,
    /// The role, once the client has named it.
    pub role: Option<String>,
    /// The region STS was called in.
    pub region: Option<String>,
    /// The error code (`AccessDenied`, `RegionDisabledException`, …).
    pub code: String,
    /// The API's message.
    pub message: String,
}

impl fmt::Display for StsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let StsError {
            action,
            role,
            region,
            code,
            message,
        } = self;
        let role = role.as_deref().unwrap_or("the configured role");
        let region = region.as_deref().unwrap_or("this region");
        match code.as_str() {
            "AccessDenied" => write!(
                f,
                "{action} on {role} was denied: {message}; the role's trust policy must allow \
                 the base identity (and, with external_id, its sts:ExternalId condition must \
                 match)"
            ),
            "RegionDisabledException" => write!(
                f,
                "{action} on {role}: STS is not activated in {region} for this account: \
                 activate the region in the IAM account settings, or set AWS_REGION to one \
                 where it is"
            ),
            "InvalidIdentityToken" | "ExpiredTokenException" | "IDPRejectedClaim" => write!(
                f,
                "{action} on {role}: the identity token was refused ({code}): {message}; check \
                 the role's OIDC trust (audience, issuer, subject)"
            ),
            _ => write!(f, "{action} on {role}: STS error {code}: {message}"),
        }
    }
}

/// Why no token could be fetched. Each variant is a cause the user can act on.
#[derive(Debug)]
pub enum FetchError {
    /// The credential chain found no credentials, or could not load the ones configured.
    NoCredentials {
        /// What the chain reported: each source tried and why it gave nothing, in words.
        detail: String,
    },
    /// The endpoint could not be reached (DNS, refused, reset, TLS).
    Unreachable {
        /// The API endpoint.
        endpoint: String,
        /// What the connection reported.
        detail: String,
    },
    /// No answer within the deadline.
    Timeout {
        /// The API endpoint.
        endpoint: String,
        /// The overall deadline that passed.
        deadline: Duration,
    },
    /// ECR refused: the identity lacks the permission.
    AccessDenied {
        /// The API's message (names the principal and action).
        message: String,
        /// The IAM actions the identity needs.
        needs: &'static str,
    },
    /// The credentials were rejected as invalid or expired.
    InvalidCredentials {
        /// The API's message.
        message: String,
    },
    /// ECR throttled every attempt.
    Throttled {
        /// The API endpoint.
        endpoint: String,
    },
    /// The signature was rejected for the time it carries: the device clock is off.
    ClockSkew {
        /// The API's message.
        message: String,
    },
    /// Any other error answer from the service.
    Service {
        /// The error code (`ServerException`, …).
        code: String,
        /// The API's message.
        message: String,
    },
    /// The answer could not be used (no token, undecodable, already expired).
    BadResponse {
        /// What was wrong with it.
        detail: String,
    },
    /// A `[[registry]] profile` could not give credentials.
    Profile {
        /// The profile.
        name: String,
        /// Why, in words.
        detail: String,
    },
    /// STS refused to hand out a role's credentials.
    Sts(Box<StsError>),
    /// The device's IoT identity could not be exchanged for credentials.
    Iot(IotError),
    /// The TLS trust store could not be built (`SSL_CERT_FILE`, the system CA bundle).
    Trust(crate::aws::trust::TrustError),
    /// A name could not be resolved: the resolver said no, or did not answer in time.
    Dns(crate::aws::dns::DnsError),
    /// The async runtime could not be started.
    Runtime {
        /// What the system said.
        detail: String,
    },
    /// This build leaves out what the registry needs (a Cargo feature, e.g. for a small
    /// Yocto image).
    NotBuilt {
        /// What is missing.
        what: &'static str,
        /// The Cargo feature (Yocto PACKAGECONFIG) that adds it.
        feature: &'static str,
    },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::NoCredentials { detail } => write!(
                f,
                "no AWS credentials: {detail}; configure one of them, or the device's IoT \
                 identity ([iot] in the configuration file)"
            ),
            FetchError::Unreachable { endpoint, detail } => {
                write!(f, "cannot reach {endpoint}: {detail}")
            }
            FetchError::Timeout { endpoint, deadline } => write!(
                f,
                "no answer from {endpoint} within {}s (set ECR_EDGE_TIMEOUT to wait longer)",
                crate::clock::Seconds::<1>(*deadline)
            ),
            FetchError::AccessDenied { message, needs } => {
                write!(f, "access denied: {message} (the identity needs {needs})")
            }
            FetchError::InvalidCredentials { message } => {
                write!(f, "AWS rejected the credentials: {message}")
            }
            FetchError::Throttled { endpoint } => write!(
                f,
                "throttled by {endpoint}: GetAuthorizationToken rate exceeded; try again later"
            ),
            FetchError::ClockSkew { message } => write!(
                f,
                "request rejected for clock skew: {message}; set the system clock (NTP)"
            ),
            FetchError::Service { code, message } => write!(f, "ECR error {code}: {message}"),
            FetchError::BadResponse { detail } => write!(f, "unusable answer from ECR: {detail}"),
            FetchError::Sts(e) => e.fmt(f),
            FetchError::Profile { name, detail } => write!(
                f,
                "AWS profile {name:?}: {detail}; define it in ~/.aws/config or \
                 ~/.aws/credentials of the user that runs ecr-edge (or AWS_CONFIG_FILE, \
                 AWS_SHARED_CREDENTIALS_FILE), or fix `profile` in its [[registry]] table"
            ),
            FetchError::Iot(e) => write!(f, "IoT credentials: {e}"),
            FetchError::Dns(e) => e.fmt(f),
            FetchError::Trust(e) => e.fmt(f),
            FetchError::Runtime { detail } => write!(f, "cannot start async runtime: {detail}"),
            FetchError::NotBuilt { what, feature } => write!(
                f,
                "this ecr-edge was built without {what} support (Cargo feature {feature:?}); \
                 remove the registry's credHelpers entry to pull anonymously"
            ),
        }
    }
}

impl StdError for FetchError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            FetchError::Iot(e) => Some(e),
            FetchError::Dns(e) => Some(e),
            FetchError::Trust(e) => Some(e),
            _ => None,
        }
    }
}

impl FetchError {
    /// The outcome this failure counts as in metrics and status.
    pub fn outcome(&self) -> Outcome {
        match self {
            FetchError::Throttled { .. } => Outcome::Throttled,
            FetchError::Unreachable { .. } | FetchError::Timeout { .. } | FetchError::Dns(_) => {
                Outcome::Unreachable
            }
            FetchError::AccessDenied { .. } => Outcome::Denied,
            FetchError::Sts(e) if e.code == "AccessDenied" => Outcome::Denied,
            FetchError::NoCredentials { .. }
            | FetchError::InvalidCredentials { .. }
            | FetchError::Profile { .. }
            | FetchError::Sts(_) => Outcome::Credentials,
            FetchError::ClockSkew { .. } | FetchError::Iot(IotError::NotYetValid { .. }) => {
                Outcome::ClockSkew
            }
            FetchError::Iot(IotError::Unavailable { status: 429, .. }) => Outcome::Throttled,
            FetchError::Iot(IotError::Unreachable { .. } | IotError::Timeout { .. }) => {
                Outcome::Unreachable
            }
            FetchError::Iot(_) => Outcome::Iot,
            _ => Outcome::Other,
        }
    }

    /// How this failure should be retried: soon (network, server, and a wrong clock, which
    /// NTP sets without a person: a device without a real-time clock boots in the past),
    /// slower (throttled), or rarely (needs a person: permissions, credentials, device
    /// identity, configuration).
    pub fn failure(&self) -> Failure {
        match self {
            FetchError::Unreachable { .. }
            | FetchError::Timeout { .. }
            | FetchError::Service { .. }
            | FetchError::BadResponse { .. }
            | FetchError::Dns(_)
            | FetchError::ClockSkew { .. }
            | FetchError::Runtime { .. } => Failure::Transient,
            FetchError::Throttled { .. } => Failure::Throttled,
            FetchError::Sts(e) => match e.code.as_str() {
                "Throttling" | "ThrottlingException" => Failure::Throttled,
                "InternalFailure" | "ServiceUnavailable" | "IDPCommunicationError" => {
                    Failure::Transient
                }
                _ => Failure::Config,
            },
            FetchError::NoCredentials { .. }
            | FetchError::Profile { .. }
            | FetchError::AccessDenied { .. }
            | FetchError::InvalidCredentials { .. }
            | FetchError::Trust(_)
            | FetchError::NotBuilt { .. } => Failure::Config,
            FetchError::Iot(e) => match e {
                IotError::Unavailable { status: 429, .. } => Failure::Throttled,
                IotError::Unreachable { .. }
                | IotError::Timeout { .. }
                | IotError::Unavailable { .. }
                | IotError::NotYetValid { .. }
                | IotError::BadResponse(_) => Failure::Transient,
                _ => Failure::Config,
            },
        }
    }
}

/// A call that ran out of time: blamed on DNS when a lookup of the endpoint's name (or any
/// lookup, when the endpoint is not a URL) is still unanswered, else on the endpoint.
pub(super) fn timed_out(endpoint: &str, deadline: Duration) -> FetchError {
    let host = endpoint
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', ':']).next().unwrap_or(rest));
    match host.and_then(crate::aws::dns::unanswered) {
        Some(dns) => FetchError::Dns(dns),
        None => FetchError::Timeout {
            endpoint: endpoint.to_owned(),
            deadline,
        },
    }
}

/// Maps a credentials failure: the IoT exchange's own error when that is the cause.
pub(super) fn credentials_error(e: &CredentialsError) -> FetchError {
    if let Some(iot) = find_source::<IotError>(e) {
        return FetchError::Iot(iot.clone());
    }
    if let Some(dns) = find_source::<crate::aws::dns::DnsError>(e) {
        return FetchError::Dns(dns.clone());
    }
    use aws_sdk_sts::operation::assume_role::AssumeRoleError;
    use aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityError;
    if let Some(err) = find_source::<SdkError<AssumeRoleError, HttpResponse>>(e) {
        return sts_error(err, "sts:AssumeRole");
    }
    if let Some(err) = find_source::<SdkError<AssumeRoleWithWebIdentityError, HttpResponse>>(e) {
        return sts_error(err, "sts:AssumeRoleWithWebIdentity");
    }
    let detail = match find_source::<aws_config::meta::ProviderChainError<CredentialsError>>(e) {
        Some(chain) => chain
            .attempts()
            .iter()
            .map(|a| format!("{} ({})", source_name(a.name()), not_loaded(a.error())))
            .collect::<Vec<_>>()
            .join(", "),
        None => not_loaded(e),
    };
    FetchError::NoCredentials {
        detail: format!("tried {detail}"),
    }
}

/// A failed STS call: the service's answer by code, or the network's failure.
pub(super) fn sts_error<E>(err: &SdkError<E, HttpResponse>, action: &'static str) -> FetchError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(service) => FetchError::Sts(Box::new(StsError {
            action,
            role: None,
            region: None,
            code: service.err().code().unwrap_or("Unknown").to_owned(),
            message: one_line(service.err().message().unwrap_or("")),
        })),
        SdkError::TimeoutError(_) => FetchError::Timeout {
            endpoint: "STS".into(),
            deadline: Duration::ZERO,
        },
        _ => FetchError::Unreachable {
            endpoint: "STS".into(),
            detail: causes(err),
        },
    }
}

/// A credential source of the SDK's default chain, as people call it.
pub(super) fn source_name(name: &str) -> &str {
    match name {
        "Environment" => "environment",
        "Profile" => "profile",
        "WebIdentityToken" => "web identity",
        "EcsContainer" => "container",
        "Ec2InstanceMetadata" => "instance metadata",
        other => other,
    }
}

/// Why one credential source gave nothing, in words: the SDK's messages, without its
/// "not enabled" preamble.
pub(super) fn not_loaded(e: &(dyn StdError + 'static)) -> String {
    let text = causes(e);
    let text = text
        .strip_prefix("the credential provider was not enabled")
        .map(|rest| rest.trim_start_matches([':', ' ']))
        .unwrap_or(&text);
    if text.is_empty() {
        "not set up".to_owned()
    } else {
        text.to_owned()
    }
}

/// An error and its causes, each by its `Display`, on one line (never `Debug`): the SDK's
/// errors repeat their source's text, so a cause already said is not said again.
pub(super) fn causes(e: &(dyn StdError + 'static)) -> String {
    let mut out = String::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = one_line(&err.to_string());
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cur = err.source();
    }
    out
}

/// Maps an SDK error to the cause the user can act on.
pub(super) fn classify<E>(
    err: SdkError<E, HttpResponse>,
    endpoint: &str,
    deadline: Duration,
    public: bool,
) -> FetchError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    if let Some(c) = find_source::<CredentialsError>(&err) {
        return credentials_error(c);
    }
    if let Some(dns) = find_source::<crate::aws::dns::DnsError>(&err) {
        return FetchError::Dns(dns.clone());
    }
    match &err {
        SdkError::TimeoutError(_) => timed_out(endpoint, deadline),
        SdkError::DispatchFailure(d) if d.is_timeout() => timed_out(endpoint, deadline),
        SdkError::DispatchFailure(_) => FetchError::Unreachable {
            endpoint: endpoint.to_owned(),
            detail: causes(&err),
        },
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("Unknown").to_owned();
            let message = e.message().unwrap_or("").to_owned();
            let status = service.raw().status().as_u16();
            service_error(code, message, status, endpoint.to_owned(), public)
        }
        _ => FetchError::BadResponse {
            detail: causes(&err),
        },
    }
}

pub(super) fn service_error(
    code: String,
    message: String,
    status: u16,
    endpoint: String,
    public: bool,
) -> FetchError {
    let lower = message.to_ascii_lowercase();
    match code.as_str() {
        "AccessDeniedException" | "AccessDenied" => FetchError::AccessDenied {
            message,
            needs: if public {
                "ecr-public:GetAuthorizationToken and sts:GetServiceBearerToken"
            } else {
                "ecr:GetAuthorizationToken on Resource \"*\""
            },
        },
        "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => {
            FetchError::Throttled { endpoint }
        }
        _ if status == 429 => FetchError::Throttled { endpoint },
        "InvalidSignatureException" | "SignatureDoesNotMatch"
            if lower.contains("expired") || lower.contains("not yet current") =>
        {
            FetchError::ClockSkew { message }
        }
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "ExpiredTokenException"
        | "InvalidSignatureException" => FetchError::InvalidCredentials { message },
        _ => FetchError::Service { code, message },
    }
}

pub(super) fn find_source<'a, T: StdError + 'static>(
    err: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
