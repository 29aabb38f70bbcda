//! Where AWS credentials come from, and the stable name of that source used as a cache key.
//!
//! The helper names the source without loading it (no file parsing, no network), so a cache hit
//! costs nothing: the AWS profile, the web-identity role, and for long-term access keys in the
//! environment the access key ID (a name, not a secret; it separates two users of one account).
//! Temporary keys in the environment (`AWS_SESSION_TOKEN` set) are named by a digest of their
//! key ID: two sessions may be two principals, so a token fetched with one session's keys is
//! never served to another's (each new session costs one cache miss, which is the price of
//! never handing one role's token to another). Container credentials
//! (`AWS_CONTAINER_CREDENTIALS_*`) are named by a digest of their endpoint and authorization
//! settings, so two tasks' endpoints are two identities. Instance metadata and a profile's
//! `credential_process` or SSO are named by the profile: finding their principal means loading
//! them, which a cache hit never does (see README "Isolation"). With `[iot]` configured, the
//! source is the device's IoT identity (endpoint, role alias, thing, role).
//!
//! A `[[registry]]` table chooses another source for one registry ([`Source::for_registry`]): a
//! named profile, and optionally a role assumed on top of the base ([`Source::Assume`]). Every
//! source has its own identity, so a token obtained with one role is never handed to a request
//! that resolves to another.

use crate::config::{Config, IotConfig, RoleArn};
use crate::token::Secret;

/// Role session name when none is configured (shown in CloudTrail).
pub const DEFAULT_SESSION_NAME: &str = "ecr-edge";

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
        /// `AWS_ACCESS_KEY_ID` when it is a temporary key (`AWS_SESSION_TOKEN` alongside); the
        /// identity carries a digest of it.
        session_key_id: Option<String>,
        /// A digest of the container credentials settings (`AWS_CONTAINER_CREDENTIALS_FULL_URI`
        /// or `_RELATIVE_URI`, and the authorization token or its file), when set.
        container: Option<String>,
    },
    /// The AWS IoT credentials provider, with the device certificate (`[iot]`).
    Iot(IotConfig),
    /// A named profile of the AWS configuration files, whatever the environment says
    /// (`[[registry]] profile`).
    Profile(String),
    /// A role assumed with the credentials of `base` (`[[registry]] role_arn`).
    Assume {
        /// Where the credentials that call `sts:AssumeRole` come from.
        base: Box<Source>,
        /// The role.
        role: Role,
    },
    /// `sts:AssumeRoleWithWebIdentity` with a Kubernetes service-account token the kubelet
    /// handed over (never cached, never sent to the daemon).
    WebIdentity {
        /// The role.
        role_arn: RoleArn,
        /// The service-account token.
        token: Secret,
    },
}

/// A role to assume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The role's ARN.
    pub arn: RoleArn,
    /// The `sts:ExternalId` its trust policy asks for.
    pub external_id: Option<Secret>,
    /// The session name ([`DEFAULT_SESSION_NAME`] when unset).
    pub session_name: Option<String>,
}

impl Source {
    /// The source the configuration selects for registries without a `[[registry]]` table:
    /// `[iot]` when present, else the default chain.
    pub fn select(config: &Config) -> Source {
        match &config.iot {
            Some(iot) => Source::Iot(iot.clone()),
            None => Source::from_env(),
        }
    }

    /// The source for `host` (a registry host, lower-case): its `[[registry]]` table's profile
    /// and role when it has one, else [`Source::select`]. A table's role is assumed with the
    /// table's profile, else the device identity (the role alias's own credentials, not
    /// `[iot] role_arn`), else the default chain.
    pub fn for_registry(config: &Config, host: &str) -> Source {
        let Some(table) = config.registry(host) else {
            return Source::select(config);
        };
        if table.profile.is_none() && table.role_arn.is_none() {
            return Source::select(config);
        }
        let base = match (&table.profile, &config.iot) {
            (Some(p), _) => Source::Profile(p.clone()),
            (None, Some(iot)) => Source::Iot(IotConfig {
                role_arn: None,
                ..iot.clone()
            }),
            (None, None) => Source::from_env(),
        };
        match &table.role_arn {
            None => base,
            Some(arn) => Source::Assume {
                base: Box::new(base),
                role: Role {
                    arn: arn.clone(),
                    external_id: table.external_id.as_ref().map(|e| Secret::new(e.as_str())),
                    session_name: table.session_name.clone(),
                },
            },
        }
    }

    /// Names the source that the process environment selects.
    pub fn from_env() -> Source {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (static_key_id, session_key_id) = match var("AWS_SESSION_TOKEN") {
            Some(_) => (None, var("AWS_ACCESS_KEY_ID")),
            None => (var("AWS_ACCESS_KEY_ID"), None),
        };
        let container = [
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        ]
        .iter()
        .map(|name| var(name))
        .collect::<Vec<_>>();
        let container = container.iter().any(Option::is_some).then(|| {
            let joined: Vec<&str> = container
                .iter()
                .map(|v| v.as_deref().unwrap_or(""))
                .collect();
            digest(&joined.join("\n"))
        });
        Source::DefaultChain {
            profile: var("AWS_PROFILE"),
            role_arn: var("AWS_ROLE_ARN"),
            static_key_id,
            session_key_id,
            container,
        }
    }

    /// The device identity this source starts from, if any.
    pub fn iot(&self) -> Option<&IotConfig> {
        match self {
            Source::Iot(cfg) => Some(cfg),
            Source::Assume { base, .. } => base.iot(),
            _ => None,
        }
    }

    /// The cache-key identity: a stable, non-secret string naming this source.
    pub fn identity(&self) -> SourceIdentity {
        SourceIdentity(self.identity_text())
    }

    fn identity_text(&self) -> String {
        match self {
            Source::DefaultChain {
                profile,
                role_arn,
                static_key_id,
                session_key_id,
                container,
            } => {
                let mut id = format!(
                    "chain;profile={};role={};key={}",
                    profile.as_deref().unwrap_or("default"),
                    role_arn.as_deref().unwrap_or(""),
                    static_key_id.as_deref().unwrap_or("")
                );
                if let Some(key) = session_key_id {
                    id.push_str(";session=");
                    id.push_str(&digest(key));
                }
                if let Some(c) = container {
                    id.push_str(";container=");
                    id.push_str(c);
                }
                id
            }
            Source::Iot(iot) => format!(
                "iot;endpoint={};alias={};thing={};role={}",
                iot.endpoint,
                iot.role_alias,
                iot.thing_name,
                iot.role_arn.as_ref().map_or("", RoleArn::as_str)
            ),
            Source::Profile(name) => format!("profile={name}"),
            Source::Assume { base, role } => {
                let mut id = format!("{};assume={}", base.identity_text(), role.arn);
                if let Some(ext) = &role.external_id {
                    // A digest: the ID is not meant to be secret, but it is not ours to show.
                    id.push_str(";ext=");
                    id.push_str(&digest(ext.expose()));
                }
                if let Some(name) = &role.session_name {
                    id.push_str(";session=");
                    id.push_str(name);
                }
                id
            }
            Source::WebIdentity { role_arn, .. } => format!("web-identity;role={role_arn}"),
        }
    }

    /// The named profile this source starts from, if any (for messages).
    pub fn profile(&self) -> Option<&str> {
        match self {
            Source::Profile(name) => Some(name),
            Source::Assume { base, .. } => base.profile(),
            _ => None,
        }
    }

    /// The role this source ends in, when it assumes one (for messages).
    pub fn role_arn(&self) -> Option<&str> {
        match self {
            Source::Assume { role, .. } => Some(role.arn.as_str()),
            Source::WebIdentity { role_arn, .. } => Some(role_arn.as_str()),
            Source::Iot(iot) => iot.role_arn.as_ref().map(RoleArn::as_str),
            _ => None,
        }
    }

    /// In words, for people (`doctor`, errors): "the device identity (role alias edge)", ….
    pub fn describe(&self) -> String {
        match self {
            Source::DefaultChain { profile, .. } => match profile {
                Some(p) => format!("the AWS default credential chain (AWS_PROFILE={p})"),
                None => "the AWS default credential chain".into(),
            },
            Source::Iot(iot) => match &iot.role_arn {
                Some(arn) => format!(
                    "the device identity (role alias {}), then role {arn}",
                    iot.role_alias
                ),
                None => format!("the device identity (role alias {})", iot.role_alias),
            },
            Source::Profile(p) => format!("AWS profile {p:?}"),
            Source::Assume { base, role } => format!("role {} via {}", role.arn, base.describe()),
            Source::WebIdentity { role_arn, .. } => {
                format!("role {role_arn} via the pod's service-account token")
            }
        }
    }
}

/// The first 8 bytes of SHA-256 of `value`, in hex: names a value in an identity without
/// showing it (collisions between two sources of one user are not a practical concern at 64
/// bits).
fn digest(value: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The region a credential source's own calls go to (STS for a role hop, the IoT exchange's
/// `credentials` command): the IoT endpoint's region, else `AWS_REGION`, else `fallback` (the
/// registry being served), else `us-east-1`. The one rule for the helper, the daemon and
/// `ecr-edge credentials`.
pub fn home_region(source: &Source, fallback: Option<&str>) -> String {
    if let Some(iot) = source.iot() {
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

/// A credential source's identity: a stable, non-secret string naming it. It keys the token
/// cache and the daemon's sources, and the daemon serves a client only a token fetched with the
/// identity the client names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceIdentity(String);

impl SourceIdentity {
    /// The identity as text (the cache key, the socket protocol's field).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this names the device identity's own exchange (`[iot]`, no role hop on top).
    pub fn is_device(&self) -> bool {
        self.0.starts_with("iot;")
    }
}

impl std::fmt::Display for SourceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for SourceIdentity {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SourceIdentity {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
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
            session_key_id: None,
            container: None,
        };
        assert_eq!(s.identity(), "chain;profile=edge;role=;key=AKIAEXAMPLE");
        let rotating = Source::DefaultChain {
            profile: None,
            role_arn: Some("arn:aws:iam::1:role/r".into()),
            static_key_id: None,
            session_key_id: None,
            container: None,
        };
        assert_eq!(
            rotating.identity(),
            "chain;profile=default;role=arn:aws:iam::1:role/r;key="
        );
    }

    /// Two sessions (or two containers' endpoints) are two identities: a token fetched with
    /// one is never found under the other's key. Before this, both were `key=`.
    #[test]
    fn temporary_keys_and_container_endpoints_are_told_apart() {
        let chain = |session: Option<&str>, container: Option<&str>| Source::DefaultChain {
            profile: None,
            role_arn: None,
            static_key_id: None,
            session_key_id: session.map(str::to_owned),
            container: container.map(str::to_owned),
        };
        let a = chain(Some("ASIAROLEA"), None).identity();
        let b = chain(Some("ASIAROLEB"), None).identity();
        assert_ne!(a, b);
        assert_eq!(a, chain(Some("ASIAROLEA"), None).identity());
        assert!(!a.as_str().contains("ASIAROLEA"), "{a}");
        assert_ne!(a, chain(None, None).identity());
        assert_ne!(
            chain(None, Some(&digest("http://127.0.0.1:1/a"))).identity(),
            chain(None, Some(&digest("http://127.0.0.1:1/b"))).identity()
        );
    }
}
