//! Registry host names: which inputs are Amazon ECR, and which API endpoint serves each.
//!
//! Pure: a string in, a typed [`Registry`] out, no I/O, no panics on any input. Docker hands a
//! helper whatever the user typed after `docker pull`, so the input may carry a scheme, userinfo,
//! a port or a path (`https://123456789012.dkr.ecr.us-east-1.amazonaws.com:443/v2/`); only the host
//! decides. The forms and their endpoints are in docs/reference.md section 2.
//!
//! The endpoint must follow the host form: a FIPS registry host is served by the FIPS API
//! endpoint and a dual-stack host by the dual-stack one. The incumbent helper calls the standard
//! endpoint for all of them unless told otherwise by environment variables, which silently takes
//! a FIPS workload out of FIPS mode.

use std::fmt;

/// Longest input accepted as a server URL. DNS names are at most 253 bytes; the rest allows for a
/// scheme, userinfo, port and a path. Longer input is not a registry (and is not copied around).
pub const MAX_SERVER_URL_LEN: usize = 4096;

/// How a registry's API is reached: which service, which endpoint, which signing region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// A private registry, served by the `ecr` service of one account and region.
    Private {
        /// The registry's 12-digit AWS account ID.
        account: String,
        /// The region, as written in the host (`us-west-2`).
        region: String,
        /// Whether the host is a FIPS form (`dkr.ecr-fips`, `dkr-ecr-fips`).
        fips: bool,
        /// Whether the host is a dual-stack form (`dkr-ecr…on.aws`).
        dual_stack: bool,
    },
    /// ECR Public (`public.ecr.aws`): tokens come from the `ecr-public` service in us-east-1.
    Public,
}

/// An Amazon ECR registry, recognised from a Docker server URL. In the configuration file it is
/// written as its bare host ([`Registry::bare`]) and read as this type, so nothing re-parses it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Registry {
    host: String,
    service: Service,
    endpoint: String,
}

/// The region that serves ECR Public tokens, whatever region the client is in.
pub const PUBLIC_REGION: &str = "us-east-1";

/// Partition DNS suffixes of private registry hosts (docs/reference.md section 2).
const STANDARD_SUFFIXES: &[&str] = &[
    "amazonaws.com",
    "amazonaws.com.cn",
    "amazonaws.eu",
    "c2s.ic.gov",
    "sc2s.sgov.gov",
    "cloud.adc-e.uk",
    "csp.hci.ic.gov",
];

/// Dual-stack registry suffix -> dual-stack API suffix.
const DUAL_STACK_SUFFIXES: &[(&str, &str)] = &[
    ("on.aws", "api.aws"),
    (
        "on.amazonwebservices.com.cn",
        "api.amazonwebservices.com.cn",
    ),
];

/// Private registry host forms after the account: (prefix, FIPS, dual-stack); the longer FIPS
/// prefixes first. Standard forms take [`STANDARD_SUFFIXES`], dual-stack forms
/// [`DUAL_STACK_SUFFIXES`].
const FORMS: &[(&str, bool, bool)] = &[
    ("dkr.ecr-fips.", true, false),
    ("dkr.ecr.", false, false),
    ("dkr-ecr-fips.", true, true),
    ("dkr-ecr.", false, true),
];

/// Every registry host form as a kubelet `matchImages` pattern (`*` is one DNS label), derived
/// from the same tables as the parser, so the provider configuration names exactly the hosts
/// [`Registry::parse`] accepts: private, FIPS, dual-stack in every partition, and ECR Public.
pub fn host_patterns() -> Vec<String> {
    let mut out = Vec::new();
    for (prefix, _, dual_stack) in FORMS {
        let suffixes: Vec<&str> = if *dual_stack {
            DUAL_STACK_SUFFIXES.iter().map(|(s, _)| *s).collect()
        } else {
            STANDARD_SUFFIXES.to_vec()
        };
        for suffix in suffixes {
            out.push(format!("*.{prefix}*.{suffix}"));
        }
    }
    out.extend(PUBLIC_HOSTS.iter().map(|h| (*h).to_owned()));
    out
}

/// ECR Public registry hosts.
const PUBLIC_HOSTS: &[&str] = &["public.ecr.aws", "ecr-public.aws.com"];

impl Registry {
    /// Recognises an ECR registry in a Docker server URL.
    ///
    /// Returns `None` for anything that is not exactly one of the ECR host forms, look-alikes
    /// such as `….amazonaws.com.example.com` or `public.ecr.aws.example.com` included: those get
    /// Docker's "not found" answer, never a token.
    pub fn parse(server_url: &str) -> Option<Registry> {
        let host = host_of(server_url)?;
        let (service, endpoint) = classify(&host)?;
        Some(Registry {
            host,
            service,
            endpoint,
        })
    }

    /// A registry written as the configuration file writes one: exactly its bare, lower-case
    /// host.
    ///
    /// # Errors
    /// Words for the person who wrote `host`: not an ECR host, or not bare (then the bare form).
    pub fn bare(host: &str) -> Result<Registry, String> {
        match Registry::parse(host) {
            Some(reg) if reg.host == host => Ok(reg),
            Some(reg) => Err(format!("write the bare host {:?}, not {host:?}", reg.host)),
            None => Err(format!("{host:?} is not an Amazon ECR registry host")),
        }
    }

    /// The bare registry host, lower-cased (`123456789012.dkr.ecr.us-west-2.amazonaws.com`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Which service and account this registry belongs to.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The HTTPS URL of the API endpoint that issues tokens for this registry.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        match &self.service {
            Service::Private { region, .. } => region,
            Service::Public => PUBLIC_REGION,
        }
    }

    /// Whether this is ECR Public.
    pub fn is_public(&self) -> bool {
        matches!(self.service, Service::Public)
    }
}

impl TryFrom<String> for Registry {
    type Error = String;

    fn try_from(host: String) -> Result<Registry, String> {
        Registry::bare(&host)
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)
    }
}

/// Extracts the lower-cased host from a server URL the way a URL parser would: optional
/// `scheme://`, optional `userinfo@`, then the host, ending at a port, path, query or fragment.
///
/// Returns `None` for empty, over-long or non-ASCII hosts, and for IP literals: no ECR host is
/// any of those.
pub fn host_of(server_url: &str) -> Option<String> {
    let s = server_url.trim();
    if s.is_empty() || s.len() > MAX_SERVER_URL_LEN {
        return None;
    }
    let rest = match s.find("://") {
        Some(i) if is_scheme(&s[..i]) => &s[i + 3..],
        Some(_) => return None,
        None => s,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = match authority.rfind('@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    if hostport.starts_with('[') {
        return None; // IPv6 literal
    }
    let host = match hostport.split_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some((h, "")) => h,
        Some(_) => return None,
        None => hostport,
    };
    // One trailing dot names the same (fully qualified) host.
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 || !host.bytes().all(is_host_byte) {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.'
}

/// Maps a lower-cased host to its service and API endpoint, or `None` when it is not ECR.
fn classify(host: &str) -> Option<(Service, String)> {
    if PUBLIC_HOSTS.contains(&host) {
        let endpoint = format!("https://api.ecr-public.{PUBLIC_REGION}.amazonaws.com");
        return Some((Service::Public, endpoint));
    }
    let (account, rest) = host.split_once('.')?;
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (rest, fips, dual_stack) = FORMS
        .iter()
        .find_map(|&(prefix, fips, dual)| Some((rest.strip_prefix(prefix)?, fips, dual)))?;
    let (region, suffix) = rest.split_once('.')?;
    if !is_region(region) {
        return None;
    }
    let service = if fips { "ecr-fips" } else { "ecr" };
    let endpoint = if dual_stack {
        let (_, api) = DUAL_STACK_SUFFIXES.iter().find(|(s, _)| *s == suffix)?;
        format!("https://{service}.{region}.{api}")
    } else if STANDARD_SUFFIXES.contains(&suffix) {
        let service = if fips { "ecr-fips" } else { "api.ecr" };
        format!("https://{service}.{region}.{suffix}")
    } else {
        return None;
    };
    let service = Service::Private {
        account: account.to_owned(),
        region: region.to_owned(),
        fips,
        dual_stack,
    };
    Some((service, endpoint))
}

/// Whether a label has the shape of an AWS region name: letters, then dash-separated words,
/// ending in a number (`us-west-2`, `us-gov-east-1`, `cn-north-1`, `eu-isoe-west-1`). Whether
/// the region exists in its partition is `doctor`'s question; here a typo simply fails DNS.
fn is_region(label: &str) -> bool {
    let mut parts = label.split('-');
    let first_ok = matches!(parts.next(), Some(p) if (2..=4).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_lowercase()));
    let words: Vec<&str> = parts.collect();
    let Some((last, middle)) = words.split_last() else {
        return false;
    };
    first_ok
        && !middle.is_empty()
        && middle
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
        && !last.is_empty()
        && last.len() <= 2
        && last.bytes().all(|b| b.is_ascii_digit())
}

/// The registry host of an image reference (`host[:port]/path[:tag][@digest]`), by the
/// distribution reference rule: the part before the first `/` is a host only if it contains a
/// `.` or `:` or is `localhost`; otherwise the image is on Docker Hub (`None`).
pub fn image_registry(image: &str) -> Option<String> {
    let (first, rest) = image.trim().split_once('/')?;
    if rest.is_empty() || !(first.contains(['.', ':']) || first == "localhost") {
        return None;
    }
    crate::registry::host_of(first)
}

/// An image on an ECR registry: `host/repository[:tag][@digest]` (the tag `latest` when
/// neither is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry.
    pub registry: Registry,
    /// The repository path (`edge/app`).
    pub repository: String,
    /// The tag, or the digest (`sha256:…`) when one is given.
    pub reference: String,
}

impl ImageRef {
    /// Parses an image reference by the distribution reference rules.
    ///
    /// # Errors
    /// What is wrong, in words.
    pub fn parse(image: &str) -> Result<ImageRef, String> {
        let image = image.trim();
        let host = image_registry(image).ok_or_else(|| {
            format!("{image:?} names no registry host (expected host/repository[:tag])")
        })?;
        let registry = Registry::parse(&host)
            .ok_or_else(|| format!("{host} is not an Amazon ECR registry host"))?;
        let rest = image.split_once('/').map_or("", |(_, r)| r);
        let (named, reference) = match rest.split_once('@') {
            Some((named, digest)) => {
                let hex = digest.strip_prefix("sha256:").unwrap_or_default();
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(format!("{digest:?} is not a sha256 digest"));
                }
                // A tag beside a digest is ignored, as clients do.
                let name = named.rsplit_once(':').map_or(named, |(n, _)| n);
                (name, digest.to_owned())
            }
            None => match rest.rsplit_once(':') {
                Some((name, tag)) => {
                    let ok = tag.len() <= 128
                        && tag
                            .bytes()
                            .next()
                            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                        && tag
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
                    if !ok {
                        return Err(format!("{tag:?} is not a valid tag"));
                    }
                    (name, tag.to_owned())
                }
                None => (rest, "latest".to_owned()),
            },
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        };
        if named.len() > 256 || !named.split('/').all(component_ok) {
            return Err(format!(
                "{named:?} is not a repository name (lower-case letters, digits, '.', '_', '-',                  '/')"
            ));
        }
        Ok(ImageRef {
            registry,
            repository: named.to_owned(),
            reference,
        })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        write!(
            f,
            "{}/{}{sep}{}",
            self.registry.host(),
            self.repository,
            self.reference
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_parse() {
        let host = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
        let r = ImageRef::parse(&format!("{host}/edge/app:v1")).unwrap();
        assert_eq!(
            (r.repository.as_str(), r.reference.as_str()),
            ("edge/app", "v1")
        );
        assert_eq!(r.to_string(), format!("{host}/edge/app:v1"));
        let r = ImageRef::parse(&format!("{host}/app")).unwrap();
        assert_eq!(r.reference, "latest");
        let digest = format!("sha256:{}", "ab".repeat(32));
        let r = ImageRef::parse(&format!("{host}/app:v2@{digest}")).unwrap();
        assert_eq!(
            (r.repository.as_str(), r.reference.as_str()),
            ("app", digest.as_str())
        );
        assert_eq!(r.to_string(), format!("{host}/app@{digest}"));
        for bad in [
            "app:v1".to_owned(),
            "docker.io/library/nginx".to_owned(),
            format!("{host}/App:v1"),
            format!("{host}/app:-v1"),
            format!("{host}/app@sha256:abc"),
            format!("{host}//app"),
            format!("{host}/"),
        ] {
            assert!(ImageRef::parse(&bad).is_err(), "{bad}");
        }
    }

    fn endpoint(input: &str) -> Option<String> {
        Registry::parse(input).map(|r| r.endpoint().to_owned())
    }

    #[test]
    fn every_host_form_maps_to_its_endpoint() {
        let cases = [
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com",
                "https://api.ecr.us-east-1.amazonaws.com",
            ),
            (
                "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com",
                "https://ecr-fips.us-gov-west-1.amazonaws.com",
            ),
            (
                "123456789012.dkr-ecr.eu-west-1.on.aws",
                "https://ecr.eu-west-1.api.aws",
            ),
            (
                "123456789012.dkr-ecr-fips.us-east-2.on.aws",
                "https://ecr-fips.us-east-2.api.aws",
            ),
            (
                "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
                "https://api.ecr.cn-north-1.amazonaws.com.cn",
            ),
            (
                "123456789012.dkr-ecr.cn-northwest-1.on.amazonwebservices.com.cn",
                "https://ecr.cn-northwest-1.api.amazonwebservices.com.cn",
            ),
            (
                "123456789012.dkr.ecr.eusc-de-east-1.amazonaws.eu",
                "https://api.ecr.eusc-de-east-1.amazonaws.eu",
            ),
            (
                "123456789012.dkr.ecr.us-iso-east-1.c2s.ic.gov",
                "https://api.ecr.us-iso-east-1.c2s.ic.gov",
            ),
            (
                "123456789012.dkr.ecr.us-isob-east-1.sc2s.sgov.gov",
                "https://api.ecr.us-isob-east-1.sc2s.sgov.gov",
            ),
            (
                "123456789012.dkr.ecr.eu-isoe-west-1.cloud.adc-e.uk",
                "https://api.ecr.eu-isoe-west-1.cloud.adc-e.uk",
            ),
            (
                "123456789012.dkr.ecr.us-isof-south-1.csp.hci.ic.gov",
                "https://api.ecr.us-isof-south-1.csp.hci.ic.gov",
            ),
            (
                "public.ecr.aws",
                "https://api.ecr-public.us-east-1.amazonaws.com",
            ),
            (
                "ecr-public.aws.com",
                "https://api.ecr-public.us-east-1.amazonaws.com",
            ),
        ];
        for (host, want) in cases {
            assert_eq!(endpoint(host).as_deref(), Some(want), "{host}");
        }
    }

    #[test]
    fn url_decorations_are_stripped() {
        for input in [
            "https://123456789012.dkr.ecr.us-west-2.amazonaws.com",
            "https://123456789012.dkr.ecr.us-west-2.amazonaws.com/",
            "https://123456789012.dkr.ecr.us-west-2.amazonaws.com:443/v2/app/manifests/1",
            "123456789012.dkr.ecr.us-west-2.amazonaws.com:5000",
            "https://AWS:pw@123456789012.DKR.ECR.US-WEST-2.AMAZONAWS.COM/v2/",
            "  123456789012.dkr.ecr.us-west-2.amazonaws.com\n",
            "123456789012.dkr.ecr.us-west-2.amazonaws.com.",
            "http://123456789012.dkr.ecr.us-west-2.amazonaws.com?x#y",
        ] {
            let r = Registry::parse(input).unwrap_or_else(|| panic!("{input:?}"));
            assert_eq!(r.host(), "123456789012.dkr.ecr.us-west-2.amazonaws.com");
            assert_eq!(r.region(), "us-west-2");
        }
    }

    #[test]
    fn service_fields() {
        let r = Registry::parse("123456789012.dkr-ecr-fips.us-east-2.on.aws").unwrap();
        assert_eq!(
            r.service(),
            &Service::Private {
                account: "123456789012".into(),
                region: "us-east-2".into(),
                fips: true,
                dual_stack: true
            }
        );
        let p = Registry::parse("https://public.ecr.aws/v2/").unwrap();
        assert!(p.is_public());
        assert_eq!(p.region(), "us-east-1");
    }

    #[test]
    fn look_alikes_and_garbage_are_not_ecr() {
        for input in [
            "",
            "   ",
            "docker.io",
            "index.docker.io/v1/",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com.fake.example.com",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com.evil",
            "public.ecr.aws.example.com",
            "evilpublic.ecr.aws",
            "x.public.ecr.aws",
            "12345678901.dkr.ecr.us-east-1.amazonaws.com",
            "1234567890123.dkr.ecr.us-east-1.amazonaws.com",
            "12345678901a.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.amazonaws.com",
            "123456789012.dkr.ecr.us-east.amazonaws.com",
            "123456789012.dkr.ecr.US_EAST_1.amazonaws.com",
            "123456789012.dkr.ecr-fips.us-east-1.on.aws",
            "123456789012.dkr-ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecrx.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.on.aws",
            "123456789012.api.ecr.us-east-1.amazonaws.com",
            "ftp//123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "1ab://123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com:44x3",
            "[::1]:443",
            "127.0.0.1",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com..",
            "héllo.dkr.ecr.us-east-1.amazonaws.com",
        ] {
            assert_eq!(Registry::parse(input), None, "{input:?}");
        }
        assert_eq!(Registry::parse(&"a".repeat(MAX_SERVER_URL_LEN + 1)), None);
    }

    #[test]
    fn image_registry_follows_the_reference_grammar() {
        const HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
        for (image, host) in [
            (
                "123456789012.dkr.ecr.us-west-2.amazonaws.com/app:1.2",
                Some(HOST),
            ),
            (
                "123456789012.dkr.ecr.us-west-2.amazonaws.com/team/app@sha256:abcd",
                Some(HOST),
            ),
            (
                "123456789012.dkr.ecr.us-west-2.amazonaws.com:443/app",
                Some(HOST),
            ),
            ("public.ecr.aws/nginx/nginx:latest", Some("public.ecr.aws")),
            ("localhost/app", Some("localhost")),
            ("nginx:latest", None),
            ("library/nginx", None),
            ("123456789012.dkr.ecr.us-west-2.amazonaws.com", None),
            ("123456789012.dkr.ecr.us-west-2.amazonaws.com/", None),
            ("", None),
        ] {
            assert_eq!(image_registry(image).as_deref(), host, "{image}");
        }
    }
}
