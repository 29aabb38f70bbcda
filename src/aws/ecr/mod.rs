//! Fetching a token from ECR: the slow path, and the only place that starts an async runtime or
//! loads AWS configuration.
//!
//! One current-thread tokio runtime, the AWS SDK default credential chain, and one rustls (ring)
//! HTTPS client handed to the SDK, honouring `HTTPS_PROXY`/`NO_PROXY` and trusting the system
//! store (`SSL_CERT_FILE` included) plus Amazon's roots compiled in, for images with no CA bundle.
//! Every call runs under one overall deadline; retryable failures (5xx, throttling, resets,
//! timeouts) are retried by the SDK's standard strategy (exponential backoff, full jitter) inside
//! it. Failures are classified into [`FetchError`] so the user is told *why* in one line.
//!
//! Here: the clients ([`Fetcher`], [`Client`], the [`TokenSource`] the daemon holds) and the
//! token answer; `error`: the error type and the one mapping onto it; `providers`: the
//! credential providers and the SDK configuration behind a client.

use std::time::Duration;

use aws_sdk_ecr::config::Region;

use crate::aws::credentials::Source;
use crate::registry::Registry;
use crate::token::{self, Token};

mod error;
mod providers;

pub use error::FetchError;
use error::*;
pub use providers::Bases;
use providers::*;

/// Tries the helper gives each call within its deadline.
pub const HELPER_ATTEMPTS: u32 = 5;

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

/// The HTTP client handed to the SDK ([`crate::aws::https::SdkClient`]: names resolved by
/// [`crate::aws::dns`], proxy settings from the environment, bytes counted), with
/// [`crate::aws::trust`]'s policy in the process's shared TLS configuration, so a later call
/// to an endpoint resumes the session whichever client made the first (a role hop for one
/// registry, then one for another).
///
/// # Errors
/// [`FetchError::Trust`] when the trust store cannot be built.
pub(super) fn http_client(
) -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient, FetchError> {
    let tls = crate::aws::trust::shared_client_config().map_err(FetchError::Trust)?;
    Ok(aws_smithy_runtime_api::client::http::SharedHttpClient::new(
        crate::aws::https::SdkClient::new(tls),
    ))
}

impl Client {
    /// One GetAuthorizationToken; once more when it was refused for clock skew and the refusal
    /// itself taught AWS's time (its `Date`, on a verified connection: src/clock.rs), so the
    /// second is signed at AWS's time.
    async fn fetch_async(&self, registry: &Registry) -> Result<Token, FetchError> {
        let before = crate::clock::read().offset_ms;
        match self.fetch_once(registry).await {
            Err(FetchError::ClockSkew { message }) if crate::clock::read().offset_ms != before => {
                tracing::info!("refused for clock skew ({message}); signing again at AWS's time");
                self.fetch_once(registry).await
            }
            other => other,
        }
    }

    async fn fetch_once(&self, registry: &Registry) -> Result<Token, FetchError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::iot::IotError;
    use crate::aws::Failure;

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
