//! The credential providers behind a [`super::Client`]: base sources shared by identity and
//! reused until shortly before they expire ([`Bases`]), the kubelet's web-identity hop, and the
//! SDK configuration built around them.

use std::time::Duration;

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{self, ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_ecr::config::Region;

use crate::aws::credentials::{Source, SourceIdentity};
use crate::aws::iot::{Device, IotProvider};
use crate::token::{self};

use super::error::*;
use super::http_client;

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
pub(super) struct Reuse {
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
pub(super) struct ByRef(std::sync::Arc<Reuse>);

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
pub(super) struct WebIdentity {
    sts: aws_sdk_sts::Client,
    role_arn: crate::config::RoleArn,
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
                .role_arn(self.role_arn.as_str())
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

pub(super) async fn sdk_config(
    source: &Source,
    region: Region,
    deadline: Duration,
    attempts: u32,
    bases: &Bases,
) -> Result<aws_config::SdkConfig, FetchError> {
    let http = http_client()?;
    let provider_config = ProviderConfig::without_region()
        .with_http_client(http.clone())
        .with_time_source(crate::clock::SdkTime)
        .with_region(Some(region.clone()));
    let attempt = (deadline / 3).max(Duration::from_secs(1)).min(deadline);
    let loader = || {
        aws_config::defaults(BehaviorVersion::latest())
            .http_client(http.clone())
            // SigV4 and credential expiry at trusted time (src/clock.rs).
            .time_source(crate::clock::SdkTime)
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
            let mut assume = aws_config::sts::AssumeRoleProvider::builder(role.arn.as_str())
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
