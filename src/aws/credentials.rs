//! Where AWS credentials come from, and the stable name of that source used as a cache key.
//!
//! The helper names the source without loading it (no file parsing, no network), so a cache hit
//! costs nothing: the AWS profile, the web-identity role, and for long-term access keys in the
//! environment the access key ID (a name, not a secret; it separates two users of one account).
//! Temporary keys (`AWS_SESSION_TOKEN` set) rotate, so their key ID is deliberately left out:
//! keying on it, as the incumbent does, makes every rotation a cache miss. With `[iot]`
//! configured, the source is the device's IoT identity (endpoint, role alias, thing, role).

use crate::config::{Config, IotConfig};

/// A credential source, as much as can be named without resolving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The AWS SDK default chain: environment, profiles (SSO, `credential_process`, roles), web
    /// identity, container credentials, instance metadata.
    DefaultChain {
        /// `AWS_PROFILE`, if set.
        profile: Option<String>,
        /// `AWS_ROLE_ARN` (web identity), if set.
        role_arn: Option<String>,
        /// `AWS_ACCESS_KEY_ID` when it is a long-term key (no session token alongside).
        static_key_id: Option<String>,
    },
    /// The AWS IoT credentials provider, with the device certificate (`[iot]`).
    Iot(IotConfig),
}

impl Source {
    /// The source the configuration selects: `[iot]` when present, else the default chain.
    pub fn select(config: &Config) -> Source {
        match &config.iot {
            Some(iot) => Source::Iot(iot.clone()),
            None => Source::from_env(),
        }
    }

    /// Names the source that the process environment selects.
    pub fn from_env() -> Source {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let static_key_id = match var("AWS_SESSION_TOKEN") {
            Some(_) => None,
            None => var("AWS_ACCESS_KEY_ID"),
        };
        Source::DefaultChain {
            profile: var("AWS_PROFILE"),
            role_arn: var("AWS_ROLE_ARN"),
            static_key_id,
        }
    }

    /// The cache-key identity: a stable, non-secret string naming this source.
    pub fn identity(&self) -> String {
        match self {
            Source::DefaultChain {
                profile,
                role_arn,
                static_key_id,
            } => format!(
                "chain;profile={};role={};key={}",
                profile.as_deref().unwrap_or("default"),
                role_arn.as_deref().unwrap_or(""),
                static_key_id.as_deref().unwrap_or("")
            ),
            Source::Iot(iot) => format!(
                "iot;endpoint={};alias={};thing={};role={}",
                iot.endpoint,
                iot.role_alias,
                iot.thing_name,
                iot.role_arn.as_deref().unwrap_or("")
            ),
        }
    }
}

/// The region a credential source's own calls go to (STS for a role hop, the IoT exchange's
/// `credentials` command): the IoT endpoint's region, else `AWS_REGION`, else `fallback` (the
/// registry being served), else `us-east-1`. The one rule for the helper, the daemon and
/// `ecr-edge credentials`.
pub fn home_region(source: &Source, fallback: Option<&str>) -> String {
    if let Source::Iot(iot) = source {
        if let Some(r) = crate::aws::iot::endpoint_region(&iot.endpoint) {
            return r.to_owned();
        }
    }
    std::env::var("AWS_REGION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| fallback.map(str::to_owned))
        .unwrap_or_else(|| "us-east-1".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_names_the_source_not_the_secret() {
        let s = Source::DefaultChain {
            profile: Some("edge".into()),
            role_arn: None,
            static_key_id: Some("AKIAEXAMPLE".into()),
        };
        assert_eq!(s.identity(), "chain;profile=edge;role=;key=AKIAEXAMPLE");
        let rotating = Source::DefaultChain {
            profile: None,
            role_arn: Some("arn:aws:iam::1:role/r".into()),
            static_key_id: None,
        };
        assert_eq!(
            rotating.identity(),
            "chain;profile=default;role=arn:aws:iam::1:role/r;key="
        );
    }
}
