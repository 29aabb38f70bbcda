//! Fetching a token from ECR: the slow path, and the only place that starts an async runtime or
//! loads AWS configuration.
//!
//! One current-thread tokio runtime, the AWS SDK default credential chain, and one rustls (ring)
//! HTTPS client handed to the SDK, honouring `HTTPS_PROXY`/`NO_PROXY` and trusting the system
//! store (`SSL_CERT_FILE` included) plus Amazon's roots compiled in, for images with no CA bundle.
//! Every call runs under one overall deadline; retryable failures (5xx, throttling, resets,
//! timeouts) are retried by the SDK's standard strategy (exponential backoff, full jitter) inside
//! it. Failures are classified into [`FetchError`] so the user is told *why* in one line.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{self, ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_ecr::config::Region;
use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::aws::credentials::{Source, SourceIdentity};
use crate::aws::iot::{Device, IotError, IotProvider};
use crate::aws::{Failure, Outcome};
use crate::registry::Registry;
use crate::token::{self, Token};

/// Tries the helper gives each call within its deadline.
pub const HELPER_ATTEMPTS: u32 = 5;

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
                "no answer from {endpoint} within {:.1}s (set ECR_EDGE_TIMEOUT to wait longer)",
                deadline.as_secs_f64()
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

/// Fetches a fresh token for `registry` with credentials from `source`, within `deadline`.
///
/// Blocks the calling thread on a current-thread runtime created for this call. Never
/// inlined: resolution calls it from three places, and each copy would cost a device kilobytes.
///
/// # Errors
/// [`FetchError`] naming the cause when no token was obtained in time.
#[inline(never)]
pub fn fetch(
    registry: &Registry,
    source: &Source,
    deadline: Duration,
) -> Result<Token, FetchError> {
    let region = crate::aws::credentials::home_region(source, Some(registry.region()));
    Fetcher::new(source, &region, deadline)?.fetch(registry)
}

/// Fetches tokens for any number of registries with one credential source, blocking: a
/// current-thread runtime around a [`Client`].
pub struct Fetcher {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl Fetcher {
    /// Sets up the runtime and a [`Client`] for `source`.
    ///
    /// # Errors
    /// [`FetchError::Iot`] for a device identity that cannot work; [`FetchError::Runtime`].
    pub fn new(source: &Source, region: &str, deadline: Duration) -> Result<Fetcher, FetchError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FetchError::Runtime {
                detail: e.to_string(),
            })?;
        let client = runtime.block_on(Client::new(source, region, deadline, HELPER_ATTEMPTS))?;
        Ok(Fetcher { runtime, client })
    }

    /// Fetches a fresh token for `registry`, within the deadline.
    ///
    /// # Errors
    /// [`FetchError`] naming the cause when no token was obtained in time.
    pub fn fetch(&self, registry: &Registry) -> Result<Token, FetchError> {
        let result = self.runtime.block_on(self.client.fetch(registry));
        crate::aws::traffic::log_totals();
        result
    }

    /// The resolved credentials (for `ecr-edge credentials`).
    ///
    /// # Errors
    /// [`FetchError`] when the source yields none in time.
    pub fn credentials(&self) -> Result<aws_credential_types::Credentials, FetchError> {
        let result = self.runtime.block_on(self.client.credentials());
        crate::aws::traffic::log_totals();
        result
    }
}

/// Fetches tokens for any number of registries with one credential source, inside a running
/// tokio runtime (the daemon). The credentials are resolved (an IoT exchange, an STS hop) once
/// and reused until shortly before they expire.
pub struct Client {
    sdk: aws_config::SdkConfig,
    deadline: Duration,
    /// The role the source ends in and the region STS is called in, for naming STS failures.
    role: Option<String>,
    /// The `[[registry]] profile` the source starts from, for naming its failures.
    profile: Option<String>,
    /// The base credential providers this client shares with others built alike.
    bases: Bases,
    region: String,
}

impl Client {
    /// Sets up the HTTP client and the credential provider for `source`. `region` is where STS
    /// is called for a role hop; `attempts` is how many tries each call gets within the
    /// deadline (the daemon makes one and schedules its own retries). With `[iot]`, the device identity is checked here, before any
    /// network call.
    ///
    /// # Errors
    /// [`FetchError::Iot`] for a device identity that cannot work.
    pub async fn new(
        source: &Source,
        region: &str,
        deadline: Duration,
        attempts: u32,
    ) -> Result<Client, FetchError> {
        Client::sharing(source, region, deadline, attempts, &Bases::default()).await
    }

    /// [`Client::new`], taking base credentials from `bases` when another client already
    /// resolves the same base (the daemon: one IoT exchange or one profile feeds every role).
    ///
    /// # Errors
    /// [`FetchError::Iot`] for a device identity that cannot work.
    pub async fn sharing(
        source: &Source,
        region: &str,
        deadline: Duration,
        attempts: u32,
        bases: &Bases,
    ) -> Result<Client, FetchError> {
        let sdk = sdk_config(
            source,
            Region::new(region.to_owned()),
            deadline,
            attempts,
            bases,
        )
        .await?;
        Ok(Client {
            sdk,
            deadline,
            role: source.role_arn().map(str::to_owned),
            profile: source.profile().map(str::to_owned),
            bases: bases.clone(),
            region: region.to_owned(),
        })
    }

    /// Fetches a fresh token for `registry`, within the deadline.
    ///
    /// # Errors
    /// [`FetchError`] naming the cause when no token was obtained in time.
    pub async fn fetch(&self, registry: &Registry) -> Result<Token, FetchError> {
        let deadline = self.deadline;
        match tokio::time::timeout(deadline, self.fetch_async(registry)).await {
            Ok(result) => result.map_err(|e| self.name_sts(e)),
            Err(_) => Err(timed_out(registry.endpoint(), deadline)),
        }
    }

    /// Names the role and region in an STS failure.
    fn name_sts(&self, e: FetchError) -> FetchError {
        match e {
            FetchError::Sts(mut e) => {
                e.role = e.role.or_else(|| self.role.clone());
                e.region = e.region.or_else(|| Some(self.region.clone()));
                FetchError::Sts(e)
            }
            FetchError::Timeout { endpoint, .. } if endpoint == "STS" => FetchError::Timeout {
                endpoint: format!("STS in {}", self.region),
                deadline: self.deadline,
            },
            FetchError::Unreachable { endpoint, detail } if endpoint == "STS" => {
                FetchError::Unreachable {
                    endpoint: format!("STS in {}", self.region),
                    detail,
                }
            }
            FetchError::NoCredentials { detail } => match &self.profile {
                // The SDK's profile provider hands its causes over as text only.
                Some(name) => FetchError::Profile {
                    name: name.clone(),
                    detail: match detail.strip_prefix("tried ").unwrap_or(&detail) {
                        "not set up" => "not defined, or it holds no credentials".to_owned(),
                        d if d.contains("was not defined") => "not defined".to_owned(),
                        d => d.to_owned(),
                    },
                },
                None => FetchError::NoCredentials { detail },
            },
            other => other,
        }
    }

    /// The resolved credentials, fresh from the provider.
    ///
    /// # Errors
    /// [`FetchError`] when the source yields none in time.
    pub async fn credentials(&self) -> Result<aws_credential_types::Credentials, FetchError> {
        use aws_credential_types::provider::ProvideCredentials;
        let provider =
            self.sdk
                .credentials_provider()
                .ok_or_else(|| FetchError::NoCredentials {
                    detail: "no credentials provider".into(),
                })?;
        let deadline = self.deadline;
        match tokio::time::timeout(deadline, provider.provide_credentials()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(self.name_sts(credentials_error(&e))),
            Err(_) => Err(timed_out("credentials provider", deadline)),
        }
    }
}

/// A boxed future, as [`TokenSource`] returns them.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where the daemon gets tokens and role credentials: a [`Client`] talking to AWS, or in tests
/// a scripted source that runs under tokio's paused clock.
pub trait TokenSource: Send + Sync {
    /// A fresh token for `registry`, within the source's deadline.
    fn fetch<'a>(&'a self, registry: &'a Registry) -> BoxFuture<'a, Result<Token, FetchError>>;
    /// The role credentials, fresh from the provider (the local credentials endpoint).
    fn credentials(&self) -> BoxFuture<'_, Result<aws_credential_types::Credentials, FetchError>>;
    /// The base credential providers, for other clients to share (a [`Client`]'s).
    fn bases(&self) -> Option<Bases> {
        None
    }
}

impl TokenSource for Client {
    fn fetch<'a>(&'a self, registry: &'a Registry) -> BoxFuture<'a, Result<Token, FetchError>> {
        Box::pin(Client::fetch(self, registry))
    }

    fn credentials(&self) -> BoxFuture<'_, Result<aws_credential_types::Credentials, FetchError>> {
        Box::pin(Client::credentials(self))
    }

    fn bases(&self) -> Option<Bases> {
        Some(self.bases.clone())
    }
}

/// When `creds` expire, as RFC 3339 (`2026-11-22T06:00:00Z`), the form AWS SDKs read.
pub fn expiration_rfc3339(creds: &aws_credential_types::Credentials) -> Option<String> {
    creds.expiry().and_then(|t| {
        aws_smithy_types::DateTime::from(t)
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .ok()
    })
}

/// A call that ran out of time: blamed on DNS when a lookup of the endpoint's name (or any
/// lookup, when the endpoint is not a URL) is still unanswered, else on the endpoint.
fn timed_out(endpoint: &str, deadline: Duration) -> FetchError {
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
fn credentials_error(e: &CredentialsError) -> FetchError {
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
fn sts_error<E>(err: &SdkError<E, HttpResponse>, action: &'static str) -> FetchError
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
fn source_name(name: &str) -> &str {
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
fn not_loaded(e: &(dyn StdError + 'static)) -> String {
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
fn causes(e: &(dyn StdError + 'static)) -> String {
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

/// Base credential providers by source identity, each reusing its credentials until
/// [`crate::aws::iot::REFRESH_MARGIN`] before they expire, shared by every client built with
/// the same [`Bases`].
#[derive(Clone, Default)]
pub struct Bases(std::sync::Arc<std::sync::Mutex<Vec<BaseEntry>>>);

/// A base source's identity and its provider.
type BaseEntry = (SourceIdentity, std::sync::Arc<Reuse>);

impl Bases {
    fn get_or(
        &self,
        identity: SourceIdentity,
        make: impl FnOnce() -> SharedCredentialsProvider,
    ) -> SharedCredentialsProvider {
        // A handful at most (one per base source), so a list.
        let mut list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, p)) = list.iter().find(|(id, _)| *id == identity) {
            return SharedCredentialsProvider::new(ByRef(p.clone()));
        }
        let reuse = std::sync::Arc::new(Reuse::new(make()));
        list.push((identity, reuse.clone()));
        SharedCredentialsProvider::new(ByRef(reuse))
    }

    /// When the held credentials of the device identity's exchange expire (seconds since the
    /// epoch), if the daemon holds some.
    pub fn iot_expiry(&self) -> Option<i64> {
        let list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .filter(|(id, _)| id.is_device())
            .find_map(|(_, r)| r.expiry())
    }
}

/// Keeps the credentials of `inner` until shortly before they expire; one refresh at a time.
#[derive(Debug)]
struct Reuse {
    inner: SharedCredentialsProvider,
    held: tokio::sync::Mutex<Option<aws_credential_types::Credentials>>,
}

impl Reuse {
    fn new(inner: SharedCredentialsProvider) -> Reuse {
        Reuse {
            inner,
            held: tokio::sync::Mutex::new(None),
        }
    }

    /// When the held credentials expire, if some are held (and no refresh is running).
    fn expiry(&self) -> Option<i64> {
        let held = self.held.try_lock().ok()?;
        let at = held.as_ref()?.expiry()?;
        at.duration_since(std::time::SystemTime::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok())
    }
}

/// A shared [`Reuse`], as a provider.
#[derive(Debug)]
struct ByRef(std::sync::Arc<Reuse>);

impl ProvideCredentials for ByRef {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        self.0.provide_credentials()
    }
}

impl ProvideCredentials for Reuse {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            let mut held = self.held.lock().await;
            if let Some(c) = held.as_ref() {
                let fresh = c.expiry().is_none_or(|at| {
                    at.duration_since(std::time::SystemTime::now())
                        .is_ok_and(|left| left > crate::aws::iot::REFRESH_MARGIN)
                });
                if fresh {
                    return Ok(c.clone());
                }
            }
            let c = self.inner.provide_credentials().await?;
            *held = Some(c.clone());
            Ok(c)
        })
    }
}

/// `sts:AssumeRoleWithWebIdentity` with a token handed over by the caller (the kubelet's
/// service-account token), which the SDK's own provider can only read from a file.
#[derive(Debug)]
struct WebIdentity {
    sts: aws_sdk_sts::Client,
    role_arn: String,
    token: crate::token::Secret,
}

impl ProvideCredentials for WebIdentity {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            let out = self
                .sts
                .assume_role_with_web_identity()
                .role_arn(&self.role_arn)
                .role_session_name(crate::aws::credentials::DEFAULT_SESSION_NAME)
                .web_identity_token(self.token.expose())
                .send()
                .await
                .map_err(CredentialsError::provider_error)?;
            let c = out.credentials().ok_or_else(|| {
                CredentialsError::unhandled("AssumeRoleWithWebIdentity answered no credentials")
            })?;
            Ok(aws_credential_types::Credentials::new(
                c.access_key_id(),
                c.secret_access_key(),
                Some(c.session_token().to_owned()),
                std::time::SystemTime::try_from(*c.expiration()).ok(),
                "ecr-edge-web-identity",
            ))
        })
    }
}

async fn sdk_config(
    source: &Source,
    region: Region,
    deadline: Duration,
    attempts: u32,
    bases: &Bases,
) -> Result<aws_config::SdkConfig, FetchError> {
    let http = http_client()?;
    let provider_config = ProviderConfig::without_region()
        .with_http_client(http.clone())
        .with_region(Some(region.clone()));
    let attempt = (deadline / 3).max(Duration::from_secs(1)).min(deadline);
    let loader = || {
        aws_config::defaults(BehaviorVersion::latest())
            .http_client(http.clone())
            .region(region.clone())
            .identity_cache(
                aws_config::identity::IdentityCache::lazy()
                    .buffer_time(crate::aws::iot::REFRESH_MARGIN)
                    .build(),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(attempt.min(Duration::from_secs(3)))
                    .operation_attempt_timeout(attempt)
                    .operation_timeout(deadline)
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(2)),
            )
    };
    // The chain of sources, innermost first: a base, then at most one role.
    let (base, role) = match source {
        Source::Iot(cfg) => match &cfg.role_arn {
            // `[iot] role_arn`: the same hop as a table's role_arn, with the default session.
            Some(arn) => (
                Source::Iot(crate::config::IotConfig {
                    role_arn: None,
                    ..cfg.clone()
                }),
                Some(crate::aws::credentials::Role {
                    arn: arn.clone(),
                    external_id: None,
                    session_name: None,
                }),
            ),
            None => (source.clone(), None),
        },
        Source::Assume { base, role } => ((**base).clone(), Some(role.clone())),
        other => (other.clone(), None),
    };
    let base_provider = match &base {
        Source::Iot(cfg) => {
            let device = Device::load(cfg, token::now()).map_err(FetchError::Iot)?;
            bases.get_or(base.identity(), || {
                SharedCredentialsProvider::new(IotProvider::new(cfg.clone(), device, deadline))
            })
        }
        Source::Profile(name) => bases.get_or(base.identity(), || {
            SharedCredentialsProvider::new(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .configure(&provider_config)
                    .profile_name(name)
                    .build(),
            )
        }),
        Source::WebIdentity { role_arn, token } => {
            let sts = aws_sdk_sts::Client::new(&loader().no_credentials().load().await);
            SharedCredentialsProvider::new(WebIdentity {
                sts,
                role_arn: role_arn.clone(),
                token: token.clone(),
            })
        }
        Source::DefaultChain { .. } | Source::Assume { .. } => {
            // On a device that is not an EC2 instance, the metadata service never answers: one
            // short attempt keeps the chain from spending seconds on it.
            let imds = aws_config::imds::Client::builder()
                .configure(&provider_config)
                .connect_timeout(Duration::from_millis(500))
                .read_timeout(Duration::from_millis(1000))
                .max_attempts(1)
                .build();
            // The region is known: without it the chain looks it up (IMDS included) and warns
            // on every device that is not an EC2 instance.
            let chain = DefaultCredentialsChain::builder()
                .region(region.clone())
                .configure(provider_config.clone())
                .imds_client(imds)
                .build()
                .await;
            bases.get_or(base.identity(), || SharedCredentialsProvider::new(chain))
        }
    };
    let provider = match role {
        None => base_provider,
        Some(role) => {
            // STS AssumeRole signed with the base credentials, in the home region.
            let signed = loader()
                .credentials_provider(base_provider.clone())
                .load()
                .await;
            let mut assume = aws_config::sts::AssumeRoleProvider::builder(&role.arn)
                .session_name(
                    role.session_name
                        .as_deref()
                        .unwrap_or(crate::aws::credentials::DEFAULT_SESSION_NAME),
                )
                .configure(&signed);
            if let Some(ext) = &role.external_id {
                assume = assume.external_id(ext.expose());
            }
            SharedCredentialsProvider::new(assume.build_from_provider(base_provider).await)
        }
    };
    Ok(loader().credentials_provider(provider).load().await)
}

/// The HTTP client handed to the SDK ([`crate::aws::https::SdkClient`]: names resolved by
/// [`crate::aws::dns`], proxy settings from the environment, bytes counted), with
/// [`crate::aws::trust`]'s policy in the process's shared TLS configuration, so a later call
/// to an endpoint resumes the session whichever client made the first (a role hop for one
/// registry, then one for another).
///
/// # Errors
/// [`FetchError::Trust`] when the trust store cannot be built.
fn http_client() -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient, FetchError> {
    let tls = crate::aws::trust::shared_client_config().map_err(FetchError::Trust)?;
    Ok(aws_smithy_runtime_api::client::http::SharedHttpClient::new(
        crate::aws::https::SdkClient::new(tls),
    ))
}

impl Client {
    async fn fetch_async(&self, registry: &Registry) -> Result<Token, FetchError> {
        let deadline = self.deadline;
        let sdk = &self.sdk;
        let region = Region::new(registry.region().to_owned());
        let endpoint = registry.endpoint().to_owned();
        let now = token::now();
        let (encoded, expires_at) = if registry.is_public() {
            public_token(sdk, region, &endpoint, deadline).await?
        } else {
            let mut conf = aws_sdk_ecr::config::Builder::from(sdk).region(region);
            if !endpoint_from_env("ECR") {
                conf = conf.endpoint_url(&endpoint);
            }
            let client = aws_sdk_ecr::Client::from_conf(conf.build());
            let out = client
                .get_authorization_token()
                .send()
                .await
                .map_err(|e| classify(e, &endpoint, deadline, false))?;
            let data = out
                .authorization_data()
                .first()
                .ok_or_else(|| FetchError::BadResponse {
                    detail: "empty authorizationData".into(),
                })?;
            (
                data.authorization_token().map(str::to_owned),
                data.expires_at().map(|t| t.secs()),
            )
        };
        token_from(encoded.as_deref(), expires_at, now)
    }
}

/// GetAuthorizationToken from the `ecr-public` service: the encoded token and its expiry.
#[cfg(feature = "ecr-public")]
async fn public_token(
    sdk: &aws_config::SdkConfig,
    region: Region,
    endpoint: &str,
    deadline: Duration,
) -> Result<(Option<String>, Option<i64>), FetchError> {
    let mut conf = aws_sdk_ecrpublic::config::Builder::from(sdk).region(region);
    if !endpoint_from_env("ECR_PUBLIC") {
        conf = conf.endpoint_url(endpoint);
    }
    let client = aws_sdk_ecrpublic::Client::from_conf(conf.build());
    let out = client
        .get_authorization_token()
        .send()
        .await
        .map_err(|e| classify(e, endpoint, deadline, true))?;
    let data = out
        .authorization_data()
        .ok_or_else(|| FetchError::BadResponse {
            detail: "no authorizationData".into(),
        })?;
    Ok((
        data.authorization_token().map(str::to_owned),
        data.expires_at().map(|t| t.secs()),
    ))
}

/// Built without ECR Public: say so rather than fail as anything else.
#[cfg(not(feature = "ecr-public"))]
async fn public_token(
    _: &aws_config::SdkConfig,
    _: Region,
    _: &str,
    _: Duration,
) -> Result<(Option<String>, Option<i64>), FetchError> {
    Err(FetchError::NotBuilt {
        what: "ECR Public",
        feature: "ecr-public",
    })
}

/// Whether the user pointed the SDK at an endpoint through the standard variables
/// (`AWS_ENDPOINT_URL_<SERVICE>` or `AWS_ENDPOINT_URL`); then the SDK's own choice stands.
fn endpoint_from_env(service: &str) -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    set(&format!("AWS_ENDPOINT_URL_{service}")) || set("AWS_ENDPOINT_URL")
}

/// Builds a [`Token`] from the API's base64 `AWS:<password>` and expiry.
///
/// # Errors
/// [`FetchError::BadResponse`] when the token is missing or malformed, has no expiry, or is
/// already (nearly) expired: an unusable token is never cached or handed out.
pub fn token_from(
    encoded: Option<&str>,
    expires_at: Option<i64>,
    now: i64,
) -> Result<Token, FetchError> {
    let bad = |detail: &str| FetchError::BadResponse {
        detail: detail.to_owned(),
    };
    let encoded = encoded.ok_or_else(|| bad("no authorizationToken"))?;
    let decoded = aws_smithy_types::base64::decode(encoded)
        .map_err(|_| bad("authorizationToken is not base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad("authorizationToken is not UTF-8"))?;
    let password = decoded
        .strip_prefix("AWS:")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("authorizationToken is not AWS:<password>"))?;
    let expires_at = expires_at.ok_or_else(|| bad("no expiresAt"))?;
    let token = Token {
        password: token::Secret::new(password),
        expires_at,
        fetched_at: now,
    };
    if !token.is_usable(now) {
        return Err(bad("token already expired (check the system clock)"));
    }
    Ok(token)
}

/// Maps an SDK error to the cause the user can act on.
fn classify<E>(
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

fn service_error(
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

fn find_source<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build without ECR Public (Yocto PACKAGECONFIG off) names what is missing and is not
    /// retried as if the network were at fault.
    #[cfg(not(feature = "ecr-public"))]
    #[test]
    fn public_registry_without_the_feature_says_so() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let sdk = aws_config::SdkConfig::builder().build();
        let err = rt
            .block_on(public_token(
                &sdk,
                Region::new("us-east-1"),
                "https://api.ecr-public.us-east-1.amazonaws.com",
                Duration::from_secs(1),
            ))
            .unwrap_err();
        assert!(
            err.to_string().contains("built without ECR Public"),
            "{err}"
        );
        assert_eq!(err.failure(), Failure::Config);
    }

    /// A clock behind (no real-time clock, NTP not yet synced) is retried on the short backoff:
    /// NTP sets it without a person, and the daemon must recover by itself.
    #[test]
    fn a_wrong_clock_is_retried_soon() {
        let skew = FetchError::ClockSkew {
            message: "Signature expired".into(),
        };
        assert_eq!(skew.failure(), Failure::Transient);
        let early = FetchError::Iot(IotError::NotYetValid {
            not_before: 1_800_000_000,
        });
        assert_eq!(early.failure(), Failure::Transient);
    }

    /// STS failures name the action, the role and what to check, and are retried by class.
    #[test]
    fn sts_failures_are_named_and_classed() {
        let sts = |code: &str| {
            FetchError::Sts(Box::new(StsError {
                action: "sts:AssumeRole",
                role: Some("arn:aws:iam::210987654321:role/edge-pull".into()),
                region: Some("eu-west-1".into()),
                code: code.into(),
                message: "not authorized".into(),
            }))
        };
        let denied = sts("AccessDenied").to_string();
        assert!(
            denied.starts_with(
                "sts:AssumeRole on arn:aws:iam::210987654321:role/edge-pull was denied"
            ) && denied.contains("sts:ExternalId"),
            "{denied}"
        );
        let region = sts("RegionDisabledException").to_string();
        assert!(region.contains("not activated in eu-west-1"), "{region}");
        assert_eq!(sts("AccessDenied").failure(), Failure::Config);
        assert_eq!(sts("Throttling").failure(), Failure::Throttled);
        assert_eq!(sts("IDPCommunicationError").failure(), Failure::Transient);
    }

    #[test]
    fn token_parsing() {
        let enc = aws_smithy_types::base64::encode("AWS:pass:with:colons");
        let t = token_from(Some(&enc), Some(50_000), 1000).unwrap();
        assert_eq!(t.password.expose(), "pass:with:colons");
        assert_eq!((t.fetched_at, t.expires_at), (1000, 50_000));
        for (enc, exp) in [
            (None, Some(50_000)),
            (Some("!!!".to_string()), Some(50_000)),
            (
                Some(aws_smithy_types::base64::encode("bob:pw")),
                Some(50_000),
            ),
            (Some(aws_smithy_types::base64::encode("AWS:")), Some(50_000)),
            (Some(enc.clone()), None),
            (Some(enc.clone()), Some(1000)),
        ] {
            assert!(matches!(
                token_from(enc.as_deref(), exp, 1000),
                Err(FetchError::BadResponse { .. })
            ));
        }
    }

    #[test]
    fn service_errors_name_their_cause() {
        let e = |code: &str, msg: &str, status| {
            service_error(code.into(), msg.into(), status, "e".into(), false)
        };
        assert!(matches!(
            e("AccessDeniedException", "not authorized", 400),
            FetchError::AccessDenied { .. }
        ));
        assert!(matches!(
            e("ThrottlingException", "slow down", 400),
            FetchError::Throttled { .. }
        ));
        assert!(matches!(
            e("Whatever", "", 429),
            FetchError::Throttled { .. }
        ));
        assert!(matches!(
            e(
                "InvalidSignatureException",
                "Signature expired: 20260101T000000Z is now earlier than ...",
                400
            ),
            FetchError::ClockSkew { .. }
        ));
        assert!(matches!(
            e("UnrecognizedClientException", "bad token", 400),
            FetchError::InvalidCredentials { .. }
        ));
        assert!(matches!(
            e("ServerException", "boom", 500),
            FetchError::Service { .. }
        ));
        let denied = e("AccessDeniedException", "User x is not authorized", 400).to_string();
        assert!(denied.contains("ecr:GetAuthorizationToken"), "{denied}");
    }
}
