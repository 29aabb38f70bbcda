//! Image preflight (`ecr-edge doctor --image`): with the token the helper would hand out, ask
//! the registry what a pull would ask (Registry API v2, docs/reference.md section 10): the
//! manifest the tag points to (`HEAD`, then `GET`), whether an index has this device's
//! platform, and one layer's download (`HEAD` of its blob). Each failure is named as the
//! permission or the object that is missing, so it is fixed before a rollout, not after.
//!
//! The parsers ([`parse_manifest`], [`parse_error`], [`Platform::parse`]) are pure and cannot
//! panic; the calls go through `https::request` (proxy, DNS deadline, trust as everywhere).

use std::fmt;
use std::sync::Arc;

use crate::aws::https::{self, HttpsError};
use crate::aws::traffic::Endpoint;
use crate::registry::ImageRef;

/// What the client accepts for a manifest: OCI index and image manifest, Docker manifest list
/// and image manifest (schema 2).
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest read.
const MANIFEST_LIMIT: usize = 4 * 1024 * 1024;

/// An image platform: `linux/arm64`, `linux/arm/v7`, `linux/amd64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `arm64`, `arm`, `amd64`, …
    pub architecture: String,
    /// `v7`, `v8`, … when given.
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// `os/architecture[/variant]`, each part lower-case letters, digits, `_` or `-`.
    pub fn parse(text: &str) -> Option<Platform> {
        let mut parts = text.split('/');
        let word = |p: Option<&str>| {
            p.filter(|w| {
                !w.is_empty()
                    && w.len() <= 32
                    && w.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })
            })
            .map(str::to_owned)
        };
        let os = word(parts.next())?;
        let architecture = word(parts.next())?;
        let variant = match parts.next() {
            None => None,
            some => Some(word(some)?),
        };
        parts.next().is_none().then_some(Platform {
            os,
            architecture,
            variant,
        })
    }

    /// The platform this build runs as: the package installed for the device's userland
    /// (`linux/arm64`, `linux/arm/v7`, `linux/amd64`).
    pub fn of_this_build() -> Option<Platform> {
        Platform::parse(
            match (std::env::consts::ARCH, cfg!(target_abi = "eabihf")) {
                ("x86_64", _) => "linux/amd64",
                ("aarch64", _) => "linux/arm64",
                ("arm", true) => "linux/arm/v7",
                ("arm", false) => "linux/arm/v5",
                ("x86", _) => "linux/386",
                _ => return None,
            },
        )
    }

    /// How well an image for `image` runs here: the same platform, one this CPU runs too (an
    /// older ARM variant on armv7, a variant-less arm64 or amd64), or not at all.
    pub fn runs(&self, image: &Platform) -> Fit {
        if self.os != image.os || self.architecture != image.architecture {
            return Fit::No;
        }
        match (self.variant.as_deref(), image.variant.as_deref()) {
            (a, b) if a == b => Fit::Exact,
            // Variants of 64-bit ARM and x86 are refinements the CPU almost always has.
            (_, None) | (None, _) if self.architecture != "arm" => Fit::Exact,
            (Some("v8"), None) | (None, Some("v8")) => Fit::Exact,
            // 32-bit ARM: v7 runs v6 and v5 code.
            (Some(mine), Some(theirs)) if self.architecture == "arm" => {
                let level = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u8>().ok());
                match (level(mine), level(theirs)) {
                    (Some(m), Some(t)) if t < m => Fit::Older,
                    _ => Fit::No,
                }
            }
            _ => Fit::No,
        }
    }
}

/// How an image's platform fits this device ([`Platform::runs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Built for this platform.
    Exact,
    /// Built for an older variant this CPU runs (arm/v6 on arm/v7).
    Older,
    /// Does not run here.
    No,
}

/// A manifest as far as a pull needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An OCI index or Docker manifest list: one image manifest per platform.
    Index(Vec<(String, Platform)>),
    /// An image manifest: its layers' digests, in order.
    Image {
        /// The layers.
        layers: Vec<String>,
    },
}

/// Reads a manifest (index or image); `None` when it is neither.
pub fn parse_manifest(body: &[u8]) -> Option<Manifest> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if let Some(list) = v.get("manifests").and_then(|m| m.as_array()) {
        let entries = list
            .iter()
            .filter_map(|m| {
                let digest = m.get("digest")?.as_str()?.to_owned();
                let p = m.get("platform")?;
                let platform = Platform {
                    os: p.get("os")?.as_str()?.to_owned(),
                    architecture: p.get("architecture")?.as_str()?.to_owned(),
                    variant: p.get("variant").and_then(|v| v.as_str()).map(str::to_owned),
                };
                Some((digest, platform))
            })
            .collect();
        return Some(Manifest::Index(entries));
    }
    let layers = v.get("layers")?.as_array()?;
    Some(Manifest::Image {
        layers: layers
            .iter()
            .filter_map(|l| l.get("digest")?.as_str().map(str::to_owned))
            .collect(),
    })
}

/// The tags of a tag list (`{"name": …, "tags": [...]}`), at most 20.
pub fn parse_tags(body: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let tags = v.get("tags")?.as_array()?;
    Some(
        tags.iter()
            .filter_map(|t| t.as_str())
            .take(20)
            .map(|t| t.chars().take(128).collect())
            .collect(),
    )
}

/// The registry's error (`{"errors":[{"code": …, "message": …}]}`): the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError {
    /// `DENIED`, `NAME_UNKNOWN`, `MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, `UNAUTHORIZED`, …
    pub code: String,
    /// The registry's words (ECR names the principal, the action and the resource).
    pub message: String,
}

/// The first error of an error body; `None` when the body is not one.
pub fn parse_error(body: &[u8]) -> Option<RegistryError> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("errors")?.as_array()?.first()?;
    Some(RegistryError {
        code: e.get("code")?.as_str()?.to_owned(),
        message: e
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .chars()
            .take(1024)
            .collect(),
    })
}

/// What a preflight found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The digest the reference points to (`Docker-Content-Digest`).
    pub digest: Option<String>,
    /// The platforms of an index (empty for a single image manifest).
    pub platforms: Vec<Platform>,
    /// The platform chosen for this device and how it fits.
    pub chosen: Option<(Platform, Fit)>,
    /// What stops a pull, if anything.
    pub problem: Option<Problem>,
}

/// What stops a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The registry refused the token (401).
    TokenRefused,
    /// 403: the identity lacks `action` on the repository.
    Denied {
        /// The IAM action: `ecr:BatchGetImage` (manifests), `ecr:GetDownloadUrlForLayer`
        /// (layers), or the one the registry names (`ecr:BatchImportUpstreamImage`).
        action: String,
        /// The registry's words.
        message: String,
    },
    /// No such repository (`NAME_UNKNOWN`).
    NoRepository(String),
    /// No such tag or digest (`MANIFEST_UNKNOWN`); the repository's tags when the registry
    /// lists them.
    NoManifest {
        /// Some of the tags it has (at most 20), if listed.
        tags: Option<Vec<String>>,
    },
    /// The index has no image this device runs.
    NoPlatform,
    /// The layer named by the manifest is missing (`BLOB_UNKNOWN`).
    NoLayer(String),
    /// Any other answer, in words.
    Unexpected(String),
    /// The registry could not be reached.
    Network(String),
}

/// Which request a refusal answered.
#[derive(Clone, Copy)]
enum Stage {
    Manifest,
    Layer,
}

/// Runs the preflight of `repository:reference` on registry `host` with the registry password
/// `password` (user `AWS`) for a device of platform `wanted`. The caller bounds it in time.
pub async fn check(
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    repository: &str,
    reference: &str,
    password: &str,
    wanted: &Platform,
) -> Report {
    let mut report = Report {
        digest: None,
        platforms: Vec::new(),
        chosen: None,
        problem: None,
    };
    let auth = format!(
        "Basic {}",
        aws_smithy_types::base64::encode(format!("AWS:{password}"))
    );
    let headers = [("authorization", auth.as_str()), ("accept", ACCEPT)];
    let ask = |method: hyper::Method, path: String| {
        let tls = tls.clone();
        async move {
            https::request(
                tls,
                Endpoint::Other,
                method,
                host,
                443,
                &path,
                &headers,
                bytes::Bytes::new(),
                MANIFEST_LIMIT,
            )
            .await
        }
    };
    let manifest_path = |r: &str| format!("/v2/{repository}/manifests/{r}");
    // HEAD as a pull starts; a refusal's words come with the GET that follows.
    let head = ask(hyper::Method::HEAD, manifest_path(reference)).await;
    let got = match head {
        Err(e) => return with(report, Problem::Network(words(&e))),
        Ok(h) => {
            report.digest = header(&h.headers, "docker-content-digest");
            ask(hyper::Method::GET, manifest_path(reference)).await
        }
    };
    let body = match refusal(got, Stage::Manifest) {
        Ok(r) => {
            if report.digest.is_none() {
                report.digest = header(&r.headers, "docker-content-digest");
            }
            r.body
        }
        // Some registries answer MANIFEST_UNKNOWN for a repository they do not have too:
        // the tag list tells the two apart (and shows the tags there are).
        Err(Problem::NoManifest { .. }) => {
            let listed = ask(hyper::Method::GET, format!("/v2/{repository}/tags/list")).await;
            let problem = match listed {
                Ok(r) if r.status == 200 => Problem::NoManifest {
                    tags: parse_tags(&r.body),
                },
                Ok(r) if parse_error(&r.body).is_some_and(|e| e.code == "NAME_UNKNOWN") => {
                    Problem::NoRepository(String::new())
                }
                _ => Problem::NoManifest { tags: None },
            };
            return with(report, problem);
        }
        Err(p) => return with(report, p),
    };
    let layers = match parse_manifest(&body) {
        None => {
            return with(
                report,
                Problem::Unexpected(
                    "the manifest is neither an index nor an image manifest".into(),
                ),
            )
        }
        Some(Manifest::Image { layers }) => layers,
        Some(Manifest::Index(entries)) => {
            report.platforms = entries.iter().map(|(_, p)| p.clone()).collect();
            let best = entries
                .iter()
                .map(|(d, p)| (d, p, wanted.runs(p)))
                .filter(|(_, _, fit)| *fit != Fit::No)
                .min_by_key(|(_, _, fit)| *fit != Fit::Exact);
            let Some((digest, platform, fit)) = best else {
                return with(report, Problem::NoPlatform);
            };
            report.chosen = Some((platform.clone(), fit));
            let got = ask(hyper::Method::GET, manifest_path(digest)).await;
            match refusal(got, Stage::Manifest) {
                Ok(r) => match parse_manifest(&r.body) {
                    Some(Manifest::Image { layers }) => layers,
                    _ => {
                        return with(
                            report,
                            Problem::Unexpected(format!(
                                "the index's entry for {platform} is not an image manifest"
                            )),
                        )
                    }
                },
                Err(p) => return with(report, p),
            }
        }
    };
    let Some(layer) = layers.first() else {
        return report;
    };
    let got = ask(
        hyper::Method::HEAD,
        format!("/v2/{repository}/blobs/{layer}"),
    )
    .await;
    match got {
        // ECR answers a blob with a redirect to its storage: the permission was granted.
        Ok(r) if matches!(r.status, 200 | 302 | 307) => report,
        Ok(r) if r.status == 404 => with(report, Problem::NoLayer(layer.clone())),
        other => match refusal(other, Stage::Layer) {
            Ok(_) => report,
            Err(p) => with(report, p),
        },
    }
}

/// What an image check concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A pull works.
    Pulls,
    /// A pull works, with an image for an older variant of this CPU.
    PullsOlderVariant,
    /// A pull fails.
    Fails,
}

/// One image's finding in words, with the fix.
pub fn verdict(image: &ImageRef, wanted: &Platform, r: &Report) -> (Verdict, String) {
    let digest = r
        .digest
        .as_deref()
        .map_or_else(String::new, |d| format!(" ({d})"));
    let has = r
        .platforms
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let arn = |message: &str| repository_arn(image.registry.host(), &image.repository, message);
    let Some(problem) = &r.problem else {
        let platform = match &r.chosen {
            Some((p, Fit::Exact)) => format!("the index has {p} for this device ({wanted})"),
            Some((p, _)) => format!(
                "the index has no {wanted} image; {p}, which this CPU runs, would be pulled"
            ),
            None => format!(
                "a single-platform image (its platform is in its configuration, not checked; \
                 this device is {wanted})"
            ),
        };
        let verdict = match &r.chosen {
            Some((_, Fit::Older)) => Verdict::PullsOlderVariant,
            _ => Verdict::Pulls,
        };
        return (
            verdict,
            format!("{image}{digest}: {platform}; a layer's download is allowed"),
        );
    };
    let detail = match problem {
        Problem::TokenRefused => format!(
            "{image}: the registry refused the token (HTTP 401): the token is for another \
             registry or has expired; run `ecr-edge erase` and try again"
        ),
        Problem::Denied { action, message } => {
            let arn = arn(message);
            let what = match action.as_str() {
                "ecr:BatchGetImage" => "read the image's manifest",
                "ecr:GetDownloadUrlForLayer" => "download its layers",
                "ecr:BatchImportUpstreamImage" => {
                    "pull it through the cache (the first pull of a pull-through cache \
                     repository imports it)"
                }
                _ => "pull it",
            };
            format!(
                "{image}: this identity may log in but not {what}: it lacks {action} on {arn}. \
                 Add to its IAM policy (or the repository policy): {{\"Effect\": \"Allow\", \
                 \"Action\": \"{action}\", \"Resource\": \"{arn}\"}}. The registry said: {message}"
            )
        }
        Problem::NoRepository(_) => format!(
            "{image}: repository {} does not exist in {} (NAME_UNKNOWN): check the name; if \
             its first part is a pull-through cache prefix, the first pull creates it and \
             needs ecr:BatchImportUpstreamImage and ecr:CreateRepository",
            image.repository, image.registry
        ),
        Problem::NoManifest { tags } => format!(
            "{image}: {} {} is not in repository {} (MANIFEST_UNKNOWN): push it, or check the \
             tag{}",
            if image.reference.starts_with("sha256:") {
                "digest"
            } else {
                "tag"
            },
            image.reference,
            image.repository,
            match tags {
                Some(t) if !t.is_empty() => format!(" (it has {})", t.join(", ")),
                _ => String::new(),
            }
        ),
        Problem::NoPlatform => format!(
            "{image}{digest}: no image for this device ({wanted}); the index has {has}: \
             build and push one for {wanted} (docker buildx build --platform {wanted})"
        ),
        Problem::NoLayer(layer) => format!(
            "{image}{digest}: the manifest names layer {layer}, which the registry does not \
             have (BLOB_UNKNOWN): push the image again"
        ),
        Problem::Unexpected(what) => format!("{image}: unexpected answer: {what}"),
        Problem::Network(what) => format!("{image}: {} not reachable: {what}", image.registry),
    };
    (Verdict::Fails, detail)
}

fn with(mut report: Report, problem: Problem) -> Report {
    report.problem = Some(problem);
    report
}

fn header(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn words(e: &HttpsError) -> String {
    e.to_string()
}

/// A 200 answer, or the problem another answer names.
fn refusal(
    got: Result<https::Response, HttpsError>,
    stage: Stage,
) -> Result<https::Response, Problem> {
    let r = got.map_err(|e| Problem::Network(words(&e)))?;
    if r.status == 200 {
        return Ok(r);
    }
    let error = parse_error(&r.body);
    let (code, message) = error
        .map(|e| (e.code, e.message))
        .unwrap_or_else(|| (String::new(), String::new()));
    Err(match (r.status, code.as_str()) {
        (401, _) => Problem::TokenRefused,
        (403, _) | (_, "DENIED") => Problem::Denied {
            action: named_action(&message).unwrap_or(match stage {
                Stage::Manifest => "ecr:BatchGetImage".into(),
                Stage::Layer => "ecr:GetDownloadUrlForLayer".into(),
            }),
            message,
        },
        (_, "NAME_UNKNOWN") => Problem::NoRepository(message),
        (_, "MANIFEST_UNKNOWN") | (404, _) => Problem::NoManifest { tags: None },
        (status, _) => Problem::Unexpected(format!(
            "HTTP {status}{}",
            if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            }
        )),
    })
}

/// The IAM action a refusal names (`… not authorized to perform: ecr:BatchGetImage on …`).
fn named_action(message: &str) -> Option<String> {
    let at = message.find("perform: ")? + "perform: ".len();
    let action: String = message
        .get(at..)?
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == ':')
        .collect();
    action.starts_with("ecr:").then_some(action)
}

/// The repository's ARN, from a refusal's words when it names one, else from the host.
pub fn repository_arn(host: &str, repository: &str, message: &str) -> String {
    if let Some(at) = message.find("arn:aws") {
        let arn: String = message
            .get(at..)
            .unwrap_or_default()
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        if arn.contains(":repository/") {
            return arn;
        }
    }
    let mut labels = host.split('.');
    let account = labels.next().unwrap_or("ACCOUNT");
    let region = host
        .split('.')
        .nth(3)
        .filter(|r| r.contains('-'))
        .unwrap_or("REGION");
    format!("arn:aws:ecr:{region}:{account}:repository/{repository}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn platforms_parse_and_fit() {
        assert_eq!(p("linux/arm/v7").to_string(), "linux/arm/v7");
        for bad in [
            "",
            "linux",
            "linux/",
            "Linux/arm64",
            "linux/arm/v7/x",
            "linux//v7",
        ] {
            assert_eq!(Platform::parse(bad), None, "{bad}");
        }
        assert_eq!(p("linux/arm64").runs(&p("linux/arm64/v8")), Fit::Exact);
        assert_eq!(p("linux/amd64").runs(&p("linux/amd64")), Fit::Exact);
        assert_eq!(p("linux/arm/v7").runs(&p("linux/arm/v7")), Fit::Exact);
        assert_eq!(p("linux/arm/v7").runs(&p("linux/arm/v6")), Fit::Older);
        assert_eq!(p("linux/arm/v6").runs(&p("linux/arm/v7")), Fit::No);
        assert_eq!(p("linux/arm/v7").runs(&p("linux/arm64")), Fit::No);
        assert_eq!(p("linux/arm64").runs(&p("windows/arm64")), Fit::No);
    }

    #[test]
    fn manifests_and_errors_are_read() {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"digest":"sha256:a","platform":{"os":"linux","architecture":"amd64"}},
            {"digest":"sha256:b","platform":{"os":"linux","architecture":"arm","variant":"v7"}},
            {"digest":"sha256:c"}]}"#;
        let Some(Manifest::Index(e)) = parse_manifest(index) else {
            panic!()
        };
        assert_eq!(e.len(), 2, "an entry without a platform is skipped");
        assert_eq!(e[1], ("sha256:b".to_owned(), p("linux/arm/v7")));
        let image = br#"{"schemaVersion":2,"config":{"digest":"sha256:c"},"layers":[{"digest":"sha256:l1"},{"digest":"sha256:l2"}]}"#;
        assert_eq!(
            parse_manifest(image),
            Some(Manifest::Image {
                layers: vec!["sha256:l1".into(), "sha256:l2".into()]
            })
        );
        assert_eq!(parse_manifest(b"[]"), None);
        assert_eq!(parse_manifest(b"\xff"), None);
        let denied = br#"{"errors":[{"code":"DENIED","message":"User: arn:aws:sts::123456789012:assumed-role/edge/pi-7 is not authorized to perform: ecr:BatchGetImage on resource: arn:aws:ecr:us-west-2:123456789012:repository/edge/app because no identity-based policy allows the ecr:BatchGetImage action"}]}"#;
        let e = parse_error(denied).unwrap();
        assert_eq!(e.code, "DENIED");
        assert_eq!(
            named_action(&e.message).as_deref(),
            Some("ecr:BatchGetImage")
        );
        assert_eq!(
            repository_arn(
                "123456789012.dkr.ecr.us-west-2.amazonaws.com",
                "edge/app",
                &e.message
            ),
            "arn:aws:ecr:us-west-2:123456789012:repository/edge/app"
        );
        assert_eq!(
            repository_arn("123456789012.dkr.ecr.eu-central-1.amazonaws.com", "x", ""),
            "arn:aws:ecr:eu-central-1:123456789012:repository/x"
        );
        assert_eq!(parse_error(b"{}"), None);
        assert_eq!(
            parse_tags(br#"{"name":"edge/app","tags":["v1","v2"]}"#),
            Some(vec!["v1".to_owned(), "v2".to_owned()])
        );
        assert_eq!(parse_tags(br#"{"name":"edge/app","tags":null}"#), None);
    }
}
