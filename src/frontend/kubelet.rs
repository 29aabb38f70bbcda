//! The kubelet image credential provider (docs/reference.md section 5): containerd under k3s or
//! Kubernetes never calls Docker helpers, the kubelet runs a provider plugin instead.
//!
//! `ecr-edge kubelet-credential-provider` (also when started as `ecr-edge-credential-provider`)
//! reads one `CredentialProviderRequest` on stdin and writes one `CredentialProviderResponse`
//! on stdout, in the API version asked (`credentialprovider.kubelet.k8s.io/v1`, or `v1beta1`
//! for kubelets before 1.26). The token comes from the same place as the Docker helper's: the
//! daemon when it answers, else the cache, IoT or default credentials
//! ([`crate::resolve`]). Every failure is one line on stderr and exit status 1, which the
//! kubelet logs and treats as "no credentials from this provider".
//!
//! Installing the provider for k3s or a plain kubelet is `ecr-edge configure --k3s` /
//! `--kubelet-config`: [`crate::commands::provider_setup`].

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::aws::credentials::Source;
use crate::exit::Exit;
use crate::registry::{self, Registry};
use crate::resolve::{self, ResolveError};
use crate::settings::{self, NotServed, Settings, SettingsError};
use crate::token::Secret;

/// The current API version (Kubernetes 1.26 and later).
pub const API_V1: &str = "credentialprovider.kubelet.k8s.io/v1";
/// The beta API version of older kubelets (1.20–1.25, still accepted by later ones).
pub const API_V1BETA1: &str = "credentialprovider.kubelet.k8s.io/v1beta1";
/// The name the kubelet runs the provider by (a link to the ecr-edge binary in its bin dir).
pub const PROVIDER_NAME: &str = "ecr-edge-credential-provider";
/// Largest request read: a real one is an image name plus, on newer kubelets, a service
/// account token (a few KiB).
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// Image patterns of the provider configuration: every ECR registry host form the host parser
/// accepts (private, FIPS, dual-stack, every partition) and ECR Public, from the parser's own
/// tables. In the kubelet's matching, `*` stands for exactly one DNS label.
pub fn match_images() -> Vec<String> {
    crate::registry::host_patterns()
}

/// The service-account annotation naming the role to assume with the pod's token, as the
/// reference AWS provider reads it.
pub const ROLE_ANNOTATION: &str = "eks.amazonaws.com/ecr-role-arn";

/// The fields of a `CredentialProviderRequest` that matter here; others are accepted and
/// ignored. `serviceAccountToken` and `serviceAccountAnnotations` come from kubelets whose
/// provider configuration has `tokenAttributes` (Kubernetes 1.33 and later).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    api_version: Option<String>,
    kind: Option<String>,
    image: Option<String>,
    service_account_token: Option<Secret>,
    service_account_annotations: Option<Annotations>,
}

/// The service-account annotations that matter here (others are ignored).
#[derive(Debug, Deserialize)]
struct Annotations {
    #[serde(rename = "eks.amazonaws.com/ecr-role-arn")]
    ecr_role_arn: Option<String>,
}

/// A well-formed request: its API version, the registry host its image names (an ECR host,
/// or possibly a configured alias), and the pod's role when it carries a service-account token.
struct Parsed {
    api_version: String,
    host: Option<String>,
    web_identity: Option<(Secret, Option<String>)>,
}

/// A `CredentialProviderResponse`, field names as in the kubelet's API types.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    api_version: &'a str,
    kind: &'static str,
    cache_key_type: &'static str,
    cache_duration: String,
    auth: std::collections::BTreeMap<&'a str, AuthConfig<'a>>,
}

#[derive(Debug, Serialize)]
struct AuthConfig<'a> {
    username: &'static str,
    /// Serialized as the plain text the kubelet reads; `Debug` redacts it.
    #[serde(serialize_with = "expose")]
    password: &'a Secret,
}

fn expose<S: serde::Serializer>(secret: &&Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose())
}

/// Why no credentials were given to the kubelet. [`fmt::Display`] is the line on stderr.
#[derive(Debug)]
pub enum KubeletError {
    /// Stdin was not a JSON object of the request's shape.
    Malformed(String),
    /// Stdin was larger than [`MAX_REQUEST_BYTES`].
    TooLarge,
    /// An `apiVersion` this provider does not speak (not repeated: request text stays out of
    /// the kubelet's log).
    UnknownApiVersion,
    /// A `kind` other than `CredentialProviderRequest`.
    WrongKind,
    /// No `image`, or an empty one.
    NoImage,
    /// The image's registry is not an Amazon ECR registry (the configuration's `matchImages`
    /// should not have sent it here): its registry host, `None` for Docker Hub.
    NotEcr(Option<String>),
    /// The request carries a service-account token but its role (the annotation, else
    /// `AWS_ECR_ROLE_ARN`) is not a role ARN.
    BadRole,
    /// The configuration file or an `ECR_EDGE_*` variable is unusable.
    Settings(SettingsError),
    /// No usable token could be had for the image's registry.
    Resolve {
        /// The registry host.
        registry: String,
        /// Why.
        cause: ResolveError,
    },
    /// Reading stdin or writing stdout failed.
    Io(std::io::Error),
}

impl fmt::Display for KubeletError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeletError::Malformed(why) => {
                write!(f, "ecr-edge: not a CredentialProviderRequest: {why}")
            }
            KubeletError::TooLarge => {
                write!(
                    f,
                    "ecr-edge: request larger than {MAX_REQUEST_BYTES} bytes refused"
                )
            }
            KubeletError::UnknownApiVersion => write!(
                f,
                "ecr-edge: unsupported apiVersion: this provider speaks {API_V1} and \
                 {API_V1BETA1}"
            ),
            KubeletError::WrongKind => {
                f.write_str("ecr-edge: the request's kind is not CredentialProviderRequest")
            }
            KubeletError::NoImage => f.write_str("ecr-edge: the request names no image"),
            KubeletError::NotEcr(host) => write!(
                f,
                "ecr-edge: the image is {}, not in an Amazon ECR registry; narrow matchImages \
                 in the kubelet's CredentialProviderConfig to ECR hosts",
                match host {
                    Some(host) => format!("on {host}"),
                    None => "on Docker Hub".to_owned(),
                }
            ),
            KubeletError::BadRole => write!(
                f,
                "ecr-edge: the pod's role (service account annotation {ROLE_ANNOTATION}, else \
                 AWS_ECR_ROLE_ARN) is not a role ARN such as \
                 arn:aws:iam::210987654321:role/name"
            ),
            KubeletError::Settings(e) => write!(f, "ecr-edge: {e}"),
            KubeletError::Resolve { registry, cause } => {
                write!(f, "ecr-edge: {registry}: {cause}")
            }
            KubeletError::Io(e) => write!(f, "ecr-edge: {e}"),
        }
    }
}

impl std::error::Error for KubeletError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KubeletError::Settings(e) => Some(e),
            KubeletError::Resolve { cause, .. } => Some(cause),
            KubeletError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Runs the provider: request on `stdin`, response on `stdout`, the error line on `stderr`.
/// [`Exit::Failure`] on any failure.
pub fn run(
    config: Option<&Path>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Exit {
    let result = read_request(stdin).and_then(|req| {
        let (registry, settings) = registry_of(req.host, config)?;
        // The pod's own role when the kubelet sent its service-account token and a role is
        // named; else the device's source for this registry, as for every other client.
        let source = match req.web_identity {
            Some((token, role)) => {
                let role_arn = role
                    .or_else(|| std::env::var("AWS_ECR_ROLE_ARN").ok())
                    .filter(|r| !r.is_empty());
                match role_arn.map(|arn| crate::config::RoleArn::parse(&arn)) {
                    Some(Some(role_arn)) => Some(Source::WebIdentity { role_arn, token }),
                    Some(None) => return Err(KubeletError::BadRole),
                    None => None,
                }
            }
            None => None,
        };
        let source =
            source.unwrap_or_else(|| Source::for_registry(&settings.config, registry.ecr.host()));
        let token = resolve::token_from(&registry.ecr, &source, &settings).map_err(|cause| {
            KubeletError::Resolve {
                registry: registry.ecr.host().to_owned(),
                cause,
            }
        })?;
        Ok(response(
            &req.api_version,
            &registry.named,
            &token.password,
            token.expires_at,
            crate::token::now(),
        ))
    });
    let written = result.and_then(|bytes| {
        stdout
            .write_all(&bytes)
            .and_then(|()| stdout.flush())
            .map_err(KubeletError::Io)
    });
    match written {
        Ok(()) => Exit::Success,
        Err(e) => {
            let _ = writeln!(stderr, "{e}");
            Exit::Failure
        }
    }
}

/// The provider as a process: the request on this process's stdin, the response on stdout,
/// the error line on stderr.
pub fn main(config: Option<&Path>) -> Exit {
    run(
        config,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

fn read_request(stdin: &mut dyn Read) -> Result<Parsed, KubeletError> {
    let buf = crate::input::read_capped(stdin, MAX_REQUEST_BYTES)
        .map_err(KubeletError::Io)?
        .ok_or(KubeletError::TooLarge)?;
    parse(&buf)
}

/// The image's registry as the image names it, and the ECR registry that is.
struct Named {
    named: String,
    ecr: Registry,
}

/// The ECR registry `host` names, with the settings ([`settings::registry_for`]).
fn registry_of(
    host: Option<String>,
    config: Option<&Path>,
) -> Result<(Named, Settings), KubeletError> {
    let Some(host) = host else {
        return Err(KubeletError::NotEcr(None));
    };
    match settings::registry_for(&host, config) {
        Ok((ecr, settings)) => Ok((Named { named: host, ecr }, settings)),
        Err(NotServed::NotEcr) => Err(KubeletError::NotEcr(Some(host))),
        Err(NotServed::Settings(e)) => Err(KubeletError::Settings(e)),
    }
}

/// The request's API version and the registry of its image.
///
/// # Errors
/// [`KubeletError`] for anything but a well-formed request for an ECR image.
pub fn parse_request(bytes: &[u8]) -> Result<(String, Registry), KubeletError> {
    let req = parse(bytes)?;
    let registry = req
        .host
        .as_deref()
        .and_then(Registry::parse)
        .ok_or(KubeletError::NotEcr(req.host))?;
    Ok((req.api_version, registry))
}

/// A well-formed request, its image's registry host not yet checked.
fn parse(bytes: &[u8]) -> Result<Parsed, KubeletError> {
    // A service account token must not reach the kubelet's log: the error says where the
    // request went wrong, never what it held.
    let req: Request = serde_json::from_slice(bytes)
        .map_err(|e| KubeletError::Malformed(crate::input::describe_json_error(&e)))?;
    let api_version = req.api_version.unwrap_or_default();
    if api_version != API_V1 && api_version != API_V1BETA1 {
        return Err(KubeletError::UnknownApiVersion);
    }
    match req.kind.as_deref() {
        Some("CredentialProviderRequest") => {}
        _ => return Err(KubeletError::WrongKind),
    }
    let image = req
        .image
        .filter(|i| !i.trim().is_empty())
        .ok_or(KubeletError::NoImage)?;
    let web_identity = req
        .service_account_token
        .filter(|t| !t.expose().is_empty())
        .map(|token| {
            let role = req.service_account_annotations.and_then(|a| a.ecr_role_arn);
            (token, role)
        });
    Ok(Parsed {
        api_version,
        host: registry::image_registry(&image),
        web_identity,
    })
}

/// The response JSON for a token, in `api_version`, cached for half the token's remaining life.
pub fn response(
    api_version: &str,
    host: &str,
    password: &Secret,
    expires_at: i64,
    now: i64,
) -> Vec<u8> {
    let mut auth = std::collections::BTreeMap::new();
    auth.insert(
        host,
        AuthConfig {
            username: "AWS",
            password,
        },
    );
    let response = Response {
        api_version,
        kind: "CredentialProviderResponse",
        cache_key_type: "Registry",
        cache_duration: go_duration(cache_seconds(expires_at, now)),
        auth,
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    out
}

/// How long the kubelet may keep a token: half of its remaining life, as the reference AWS
/// provider does, so it asks again well before expiry. Whole seconds, never negative.
pub fn cache_seconds(expires_at: i64, now: i64) -> u64 {
    u64::try_from(expires_at.saturating_sub(now) / 2).unwrap_or(0)
}

/// `seconds` as Go's `time.Duration.String` writes whole seconds (`6h0m0s`, `30m0s`, `45s`,
/// `0s`), the form the kubelet's `metav1.Duration` parses.
pub fn go_duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";

    #[test]
    fn cache_duration_is_half_the_remaining_life_in_go_form() {
        for (secs, text) in [
            (0, "0s"),
            (45, "45s"),
            (60, "1m0s"),
            (3599, "59m59s"),
            (3600, "1h0m0s"),
            (6 * 3600, "6h0m0s"),
            (12 * 3600 - 1, "11h59m59s"),
            (100 * 3600 + 61, "100h1m1s"),
        ] {
            assert_eq!(go_duration(secs), text);
        }
        let now = 1_700_000_000;
        assert_eq!(cache_seconds(now + 12 * 3600, now), 6 * 3600);
        assert_eq!(
            cache_seconds(now + 7, now),
            3,
            "whole seconds, rounded down"
        );
        assert_eq!(cache_seconds(now - 5, now), 0, "never negative");
        assert_eq!(cache_seconds(i64::MIN, i64::MAX), 0);
        assert_eq!(
            cache_seconds(i64::MAX, i64::MIN),
            i64::MAX as u64 / 2,
            "saturates"
        );
    }

    #[test]
    fn requests_of_both_versions_parse_and_extra_fields_are_ignored() {
        for api in [API_V1, API_V1BETA1] {
            let body = format!(
                r#"{{"apiVersion":"{api}","kind":"CredentialProviderRequest","image":"{HOST}/app:1","serviceAccountToken":"eyJ...","serviceAccountAnnotations":{{"a":"b"}},"futureField":[1]}}"#
            );
            let (version, registry) = parse_request(body.as_bytes()).unwrap();
            assert_eq!(version, api);
            assert_eq!(registry.host(), HOST);
        }
    }

    /// The response types never show the password in `Debug` (logs, panics).
    #[test]
    fn debug_never_shows_the_password() {
        let secret = Secret::new("s3cr3t-password");
        let auth = AuthConfig {
            username: "AWS",
            password: &secret,
        };
        let mut map = std::collections::BTreeMap::new();
        map.insert(HOST, auth);
        let response = Response {
            api_version: API_V1,
            kind: "CredentialProviderResponse",
            cache_key_type: "Registry",
            cache_duration: "1h0m0s".into(),
            auth: map,
        };
        let debug = format!("{response:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn every_bad_request_is_a_named_error() {
        let cases: &[(&str, &str)] = &[
            ("", "not a CredentialProviderRequest"),
            ("[]", "not a CredentialProviderRequest"),
            ("{\"apiVersion\": 3}", "not a CredentialProviderRequest"),
            (
                r#"{"kind":"CredentialProviderRequest","image":"x"}"#,
                "unsupported apiVersion: this provider speaks",
            ),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v2","kind":"CredentialProviderRequest","image":"x"}"#,
                "unsupported apiVersion: this provider speaks",
            ),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","image":"x"}"#,
                "the request's kind is not CredentialProviderRequest",
            ),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest"}"#,
                "names no image",
            ),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":" "}"#,
                "names no image",
            ),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"docker.io/library/nginx"}"#,
                "the image is on docker.io, not in an Amazon ECR registry",
            ),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"123456789012.dkr.ecr.us-west-2.amazonaws.com.evil.example/app"}"#,
                "the image is on 123456789012.dkr.ecr.us-west-2.amazonaws.com.evil.example, not in",
            ),
        ];
        for (input, says) in cases {
            let err = parse_request(input.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(says), "{input}: {err}");
        }
        // The error never repeats a service account token from the input.
        let err = parse_request(br#"{"serviceAccountToken":"SECRET-TOKEN","apiVersion":1}"#)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("SECRET-TOKEN"), "{err}");
    }

    #[test]
    fn response_bytes() {
        let now = 1_700_000_000;
        let out = response(
            API_V1BETA1,
            HOST,
            &Secret::new("pw\"1"),
            now + 3 * 3600 + 1,
            now,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "{{\"apiVersion\":\"{API_V1BETA1}\",\"kind\":\"CredentialProviderResponse\",\
                 \"cacheKeyType\":\"Registry\",\"cacheDuration\":\"1h30m0s\",\
                 \"auth\":{{\"{HOST}\":{{\"username\":\"AWS\",\"password\":\"pw\\\"1\"}}}}}}\n"
            )
        );
    }

    /// The kubelet's matching: a pattern and a host match when they have the same number of
    /// labels and each pattern label (with `*` globbing) matches its host label.
    fn kubelet_matches(pattern: &str, host: &str) -> bool {
        fn glob(p: &[u8], s: &[u8]) -> bool {
            match (p.first(), s.first()) {
                (None, None) => true,
                (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
                (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
                _ => false,
            }
        }
        let (p, h): (Vec<_>, Vec<_>) = (pattern.split('.').collect(), host.split('.').collect());
        p.len() == h.len()
            && p.iter()
                .zip(&h)
                .all(|(p, h)| glob(p.as_bytes(), h.as_bytes()))
    }

    /// Every combination of account form, region and partition suffix that the host parser
    /// accepts is matched by a pattern, and every combination it refuses is matched by none.
    #[test]
    fn match_images_cover_every_ecr_host_form_and_nothing_else() {
        let patterns = match_images();
        let matched = |host: &str| patterns.iter().any(|p| kubelet_matches(p, host));
        let prefixes = [
            "dkr.ecr",
            "dkr.ecr-fips",
            "dkr-ecr",
            "dkr-ecr-fips",
            "dkr.ecr-public",
            "dkr",
        ];
        let suffixes = [
            "amazonaws.com",
            "amazonaws.com.cn",
            "amazonaws.eu",
            "c2s.ic.gov",
            "sc2s.sgov.gov",
            "cloud.adc-e.uk",
            "csp.hci.ic.gov",
            "on.aws",
            "on.amazonwebservices.com.cn",
            "api.aws",
            "example.com",
            "amazonaws.com.evil",
        ];
        let mut accepted = 0;
        for prefix in prefixes {
            for suffix in suffixes {
                for region in ["us-west-2", "us-iso-east-1", "eusc-de-east-1"] {
                    let host = format!("123456789012.{prefix}.{region}.{suffix}");
                    let ecr = Registry::parse(&host).is_some();
                    accepted += usize::from(ecr);
                    assert_eq!(matched(&host), ecr, "{host}: parser says ECR = {ecr}");
                }
            }
        }
        // 7 standard suffixes x 2 forms + 2 dual-stack suffixes x 2 forms, in 3 regions.
        assert_eq!(accepted, (7 * 2 + 2 * 2) * 3);
        for host in ["public.ecr.aws", "ecr-public.aws.com"] {
            assert!(Registry::parse(host).is_some() && matched(host), "{host}");
        }
        for host in [
            "docker.io",
            "123456789012.dkr.ecr.us-west-2.amazonaws.com.evil.example",
            "public.ecr.aws.example.com",
            "ghcr.io",
        ] {
            assert!(!matched(host), "{host} matched");
        }
    }
}
