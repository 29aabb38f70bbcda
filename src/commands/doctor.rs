//! `ecr-edge doctor`: find why a device cannot pull, and say it in words.
//!
//! The silent failures this targets: a helper built for the wrong CPU (Docker says only
//! "credentials not found"), a `credHelpers` key that is not exactly the registry host (anonymous
//! pulls), a clock that is off (SigV4 and TLS fail), and credentials or permissions that do not
//! work. Each check reports Pass, Warn or Fail with a line of detail; `doctor` exits 0 only when
//! nothing failed. Network checks are bounded by the overall deadline.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::aws::credentials::Source;
use crate::aws::images::Platform;
use crate::commands::elf::{self, Arch};
use crate::config::{self, Config, KeyRef};
use crate::registry::ImageRef;
use crate::registry::Registry;
use crate::settings::Settings;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Pass,
    /// Works, but worth a look.
    Warn,
    /// Broken: pulls will fail or go anonymous.
    Fail,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (`cpu`, `helper`, `credHelpers`, …).
    pub name: String,
    /// The outcome.
    pub status: Status,
    /// What was found, and for a failure what to do.
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        write!(f, "{tag}  {:<12} {}", self.name, self.detail)
    }
}

fn check(name: &str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_owned(),
        status,
        detail: detail.into(),
    }
}

/// Regions by partition, as of 2026; a region missing here is reported as unknown (Warn), a
/// near miss of one of these as a typo (Fail).
const REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ca-central-1",
    "ca-west-1",
    "eu-central-1",
    "eu-central-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-south-1",
    "eu-south-2",
    "eu-north-1",
    "il-central-1",
    "me-south-1",
    "me-central-1",
    "mx-central-1",
    "sa-east-1",
    "us-gov-east-1",
    "us-gov-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eusc-de-east-1",
    "us-iso-east-1",
    "us-iso-west-1",
    "us-isob-east-1",
    "eu-isoe-west-1",
    "us-isof-south-1",
    "us-isof-east-1",
];

/// The DNS suffixes a region's registries use (standard, dual-stack).
fn partition_suffixes(region: &str) -> &'static [&'static str] {
    if region.starts_with("cn-") {
        &["amazonaws.com.cn", "on.amazonwebservices.com.cn"]
    } else if region.starts_with("eusc-") {
        &["amazonaws.eu"]
    } else if region.starts_with("us-isob-") {
        &["sc2s.sgov.gov"]
    } else if region.starts_with("us-isof-") {
        &["csp.hci.ic.gov"]
    } else if region.starts_with("us-iso-") {
        &["c2s.ic.gov"]
    } else if region.starts_with("eu-isoe-") {
        &["cloud.adc-e.uk"]
    } else {
        &["amazonaws.com", "on.aws"]
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Judges one `credHelpers` key (whose helper is `helper`).
pub fn check_key(key: &str, helper: &str) -> Check {
    let Some(registry) = Registry::parse(key) else {
        return if helper == crate::commands::configure::HELPER_NAME
            || key.contains(".dkr.ecr")
            || key.contains(".dkr-ecr")
        {
            check(
                "credHelpers",
                Status::Fail,
                format!("{key:?} is not an Amazon ECR registry host (12-digit account, dkr.ecr form, region, AWS suffix)"),
            )
        } else {
            check(
                "credHelpers",
                Status::Pass,
                format!("{key:?} -> {helper} (not ECR; not checked)"),
            )
        };
    };
    if registry.host() != key {
        return check(
            "credHelpers",
            Status::Fail,
            format!(
                "{key:?} is not the bare registry host, so Docker never matches it and pulls \
                 anonymously; use {:?} (ecr-edge configure --registry {key} fixes it)",
                registry.host()
            ),
        );
    }
    let region = registry.region();
    if registry.is_public() {
        return check("credHelpers", Status::Pass, format!("{key} -> {helper}"));
    }
    if !REGIONS.contains(&region) {
        let near = REGIONS
            .iter()
            .map(|r| (edit_distance(region, r), *r))
            .min()
            .filter(|(d, _)| *d <= 2);
        return match near {
            Some((_, r)) => check(
                "credHelpers",
                Status::Fail,
                format!(
                    "{key}: no region {region:?}; did you mean {:?}?",
                    key.replace(region, r)
                ),
            ),
            None => check(
                "credHelpers",
                Status::Warn,
                format!("{key}: region {region:?} is not one ecr-edge knows (new region?)"),
            ),
        };
    }
    let suffix = key
        .rsplit_once(&format!(".{region}."))
        .map_or("", |(_, s)| s);
    if !partition_suffixes(region).contains(&suffix) {
        return check(
            "credHelpers",
            Status::Fail,
            format!(
                "{key}: region {region} is served under .{}, not .{suffix}",
                partition_suffixes(region)[0]
            ),
        );
    }
    check("credHelpers", Status::Pass, format!("{key} -> {helper}"))
}

/// The auth files Docker and containers tools read `credHelpers` from, that exist.
fn auth_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    out.extend(crate::commands::configure::docker_config_path());
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        out.push(Path::new(&run).join("containers/auth.json"));
    }
    out.extend(crate::commands::configure::containers_auth_path());
    out.dedup();
    out.into_iter().filter(|p| p.exists()).collect()
}

/// `credHelpers` (key -> helper) and `credsStore` of one auth file.
fn helpers_in(path: &Path) -> Result<(BTreeMap<String, String>, Option<String>), String> {
    let bytes = crate::store::files::read_limited(path, crate::store::authfile::MAX_FILE_BYTES)
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        // An auth file holds passwords (`auths`): never quote it.
        format!("not valid JSON: {}", crate::input::describe_json_error(&e))
    })?;
    let mut map = BTreeMap::new();
    if let Some(obj) = v.get("credHelpers").and_then(Value::as_object) {
        for (k, h) in obj {
            map.insert(k.clone(), h.as_str().unwrap_or("").to_owned());
        }
    }
    let store = v
        .get("credsStore")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((map, store))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn kernel_arch() -> (String, Option<Arch>) {
    let machine = nix::sys::utsname::uname()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_default();
    let arch = Arch::from_uname(&machine);
    (machine, arch)
}

fn read_header(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; 64];
    let mut f = std::fs::File::open(path).ok()?;
    let n = f.read(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Judges a helper program named by a config: on PATH, executable, built for a CPU this machine
/// runs: the kernel's (a static binary) or the userland's (a 32-bit userland on a 64-bit kernel).
pub fn check_helper(
    name: &str,
    kernel: Option<Arch>,
    userland: Option<Arch>,
    used_by: &str,
) -> Check {
    use std::os::unix::fs::PermissionsExt;
    let program = format!("docker-credential-{name}");
    let Some(path) = find_on_path(&program) else {
        return check(
            "helper",
            Status::Fail,
            format!("{program} (for {used_by}) is not on PATH: Docker reports \"credentials not found\" and pulls anonymously"),
        );
    };
    let executable = std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    if !executable {
        return check(
            "helper",
            Status::Fail,
            format!("{} is not executable (chmod +x)", path.display()),
        );
    }
    let runs = |built: Arch| {
        [kernel, userland]
            .iter()
            .flatten()
            .any(|h| built.runs_on(*h))
    };
    match (
        read_header(&path).as_deref().and_then(elf::arch_of),
        userland.or(kernel),
    ) {
        (Some(built), Some(host)) if !runs(built) => check(
            "helper",
            Status::Fail,
            format!(
                "{} is built for {built}, but this machine is {host}: it cannot run, and Docker \
                 shows only \"credentials not found\"; install the {host} build",
                path.display()
            ),
        ),
        (Some(built), _) => check(
            "helper",
            Status::Pass,
            format!("{} ({built})", path.display()),
        ),
        (None, _) => check(
            "helper",
            Status::Pass,
            format!("{} (script or non-ELF program)", path.display()),
        ),
    }
}

/// What `doctor` is asked besides its own checks.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// `--json`.
    pub json: bool,
    /// `--image REF`, each checked as a pull would go (src/aws/images.rs).
    pub images: Vec<String>,
    /// `--platform`: the platform the images must have (default: this device's userland).
    pub platform: Option<String>,
}

/// Runs every check, in the order a person would look: this binary and the CPU, the helpers
/// and keys in the auth files, the settings, the device identity, the network and clock, one
/// real token, then each image asked for. `config_flag` is `--config`.
pub fn run(config_flag: Option<&Path>, options: &Options) -> Vec<Check> {
    let mut checks = Vec::new();
    let (kernel, userland) = binary_and_cpu(&mut checks);
    // Aliases are read before the settings are checked, so that the credHelpers entries
    // naming them are judged as what they are.
    let configured = crate::config::load(config_flag).unwrap_or_default();
    let (mut registries, keys) = auth_files_and_helpers(&mut checks, kernel, userland, &configured);
    let settings = settings(&mut checks, config_flag);
    // Certificates and the clock are judged against the floor this device kept (src/clock.rs).
    crate::store::floor::raise_to_kept(&settings.cache_dir);
    missing_entries(&mut checks, &keys, &settings.config);
    for host in configured_hosts(&settings.config) {
        if let Some(r) = Registry::parse(&host) {
            if !registries.contains(&r) {
                registries.push(r);
            }
        }
    }
    iot_identity(&mut checks, &settings.config);
    network_and_clock(&mut checks, &registries, &settings);
    token_per_source(&mut checks, &registries, &settings);
    if !options.images.is_empty() {
        image_checks(&mut checks, options, userland.or(kernel), &settings);
    }
    checks
}

/// The image platform of a userland: what `docker pull` on this device picks.
fn platform_of(arch: Arch) -> Option<Platform> {
    Platform::parse(match arch {
        Arch::X86_64 => "linux/amd64",
        Arch::Aarch64 => "linux/arm64",
        Arch::Arm { hard_float: true } => "linux/arm/v7",
        Arch::Arm { hard_float: false } => "linux/arm/v5",
        Arch::X86 => "linux/386",
        Arch::Other { .. } => return None,
    })
}

/// `--image REF`: each image checked as a pull would go, with the token the helper would hand
/// out; a problem is named with its fix.
fn image_checks(
    checks: &mut Vec<Check>,
    options: &Options,
    arch: Option<Arch>,
    settings: &Settings,
) {
    let wanted = match &options.platform {
        Some(p) => match Platform::parse(p) {
            Some(p) => p,
            None => {
                checks.push(check(
                    "image",
                    Status::Fail,
                    format!("--platform {p:?} is not os/architecture[/variant] (linux/arm/v7)"),
                ));
                return;
            }
        },
        None => match arch.and_then(platform_of) {
            Some(p) => p,
            None => {
                checks.push(check(
                    "image",
                    Status::Fail,
                    "this device's platform is unknown: name it with --platform (linux/arm64)",
                ));
                return;
            }
        },
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let tls = match plain_tls(None) {
        Ok(t) => t,
        Err(e) => {
            checks.push(check("image", Status::Fail, format!("TLS: {e}")));
            return;
        }
    };
    for text in &options.images {
        let image = match ImageRef::parse(text) {
            Ok(i) => i,
            Err(e) => {
                checks.push(check("image", Status::Fail, e));
                continue;
            }
        };
        let token = match crate::resolve::token(&image.registry, settings) {
            Ok(t) => t,
            Err(e) => {
                checks.push(check(
                    "image",
                    Status::Fail,
                    format!("{image}: no token for {}: {e}", image.registry),
                ));
                continue;
            }
        };
        // Up to four requests, each under the deadline.
        let report = runtime.block_on(async {
            tokio::time::timeout(
                settings.deadline * 4,
                crate::aws::images::check(
                    tls.clone(),
                    image.registry.host(),
                    &image.repository,
                    &image.reference,
                    token.password.expose(),
                    &wanted,
                ),
            )
            .await
        });
        checks.push(match report {
            Ok(r) => image_check(&image, &wanted, &r),
            Err(_) => check(
                "image",
                Status::Fail,
                format!(
                    "{image}: the registry did not answer within {:.0}s",
                    (settings.deadline * 4).as_secs_f64()
                ),
            ),
        });
    }
}

/// One image's finding as a check (the words are `images::verdict`'s).
fn image_check(image: &ImageRef, wanted: &Platform, r: &crate::aws::images::Report) -> Check {
    let (verdict, detail) = crate::aws::images::verdict(image, wanted, r);
    let status = match verdict {
        crate::aws::images::Verdict::Pulls => Status::Pass,
        crate::aws::images::Verdict::PullsOlderVariant => Status::Warn,
        crate::aws::images::Verdict::Fails => Status::Fail,
    };
    check("image", status, detail)
}

/// Every registry host the configuration names: `[[registry]]` tables and `[daemon] registries`.
fn configured_hosts(config: &Config) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    let tables = config.registries.iter().map(|r| &r.host);
    for r in tables.chain(config.daemon.iter().flat_map(|d| d.registries.iter())) {
        if !hosts.iter().any(|h| h == r.host()) {
            hosts.push(r.host().to_owned());
        }
    }
    hosts
}

/// A warning naming the configured hosts and aliases no `credHelpers` entry sends to ecr-edge
/// (Docker would pull them anonymously).
fn missing_entries(checks: &mut Vec<Check>, keys: &[String], config: &Config) {
    let mut wanted = configured_hosts(config);
    wanted.extend(
        config
            .registries
            .iter()
            .flat_map(|r| r.aliases.iter().cloned()),
    );
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|h| !keys.contains(h))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        checks.push(check(
            "credHelpers",
            Status::Warn,
            format!(
                "configured but no credHelpers entry names ecr-edge for: {}; Docker pulls \
                 them anonymously (run `ecr-edge configure` to add them all)",
                missing.join(", ")
            ),
        ));
    }
}

/// What the running file was built for, and whether the kernel and userland can run it;
/// returns the kernel's and the userland's architectures.
fn binary_and_cpu(checks: &mut Vec<Check>) -> (Option<Arch>, Option<Arch>) {
    let this = elf::this_binary();
    let (machine, kernel) = kernel_arch();
    let userland = read_header(Path::new("/bin/sh"))
        .as_deref()
        .and_then(elf::arch_of);
    // What the running file really is, not only what it was compiled as.
    match read_header(Path::new("/proc/self/exe"))
        .as_deref()
        .and_then(elf::arch_of)
    {
        Some(exe) if exe == this => checks.push(check(
            "binary",
            Status::Pass,
            format!("{} for {this}", crate::version_line()),
        )),
        other => checks.push(check(
            "binary",
            Status::Warn,
            format!(
                "{}: compiled for {this}, /proc/self/exe reads as {}",
                crate::version_line(),
                other.map_or_else(|| "unknown".to_owned(), |a| a.to_string())
            ),
        )),
    }
    match kernel {
        Some(k) if this.runs_on(k) => {
            let mut detail = format!("kernel {machine}");
            if let Some(u) = userland {
                detail.push_str(&format!(", userland {u}"));
                if u != k {
                    detail.push_str(&format!(
                        " ({}-bit userland on a {k} kernel: helpers must be built for {u} or static)",
                        if matches!(u, Arch::Arm { .. } | Arch::X86) { 32 } else { 64 }
                    ));
                }
            }
            let status = if userland.is_some_and(|u| u != k) {
                Status::Warn
            } else {
                Status::Pass
            };
            checks.push(check("cpu", status, detail));
        }
        Some(k) => checks.push(check(
            "cpu",
            Status::Fail,
            format!("this binary is for {this}, the kernel is {k}"),
        )),
        None => checks.push(check(
            "cpu",
            Status::Warn,
            format!("unknown machine {machine:?}"),
        )),
    }
    (kernel, userland)
}

/// Every `credHelpers` key and every helper named in the auth files; returns the ECR
/// registries that name ecr-edge.
fn auth_files_and_helpers(
    checks: &mut Vec<Check>,
    kernel: Option<Arch>,
    userland: Option<Arch>,
    configured: &Config,
) -> (Vec<Registry>, Vec<String>) {
    let mut registries: Vec<Registry> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    let files = auth_files();
    if files.is_empty() {
        checks.push(check(
            "credHelpers",
            Status::Warn,
            "no Docker config or containers auth file: run `ecr-edge configure --registry HOST`",
        ));
    }
    let mut helpers: BTreeMap<String, String> = BTreeMap::new();
    for file in &files {
        match helpers_in(file) {
            Err(e) => checks.push(check(
                "credHelpers",
                Status::Fail,
                format!("{}: {e}", file.display()),
            )),
            Ok((map, store)) => {
                for (key, helper) in &map {
                    let ours = helper == crate::commands::configure::HELPER_NAME;
                    if ours {
                        keys.push(key.clone());
                    }
                    match configured.alias_target(key).cloned() {
                        Some(r) if ours => {
                            checks.push(check(
                                "credHelpers",
                                Status::Pass,
                                format!("{key} -> {helper} (alias of {r})"),
                            ));
                            if !registries.contains(&r) {
                                registries.push(r);
                            }
                            continue;
                        }
                        _ => checks.push(check_key(key, helper)),
                    }
                    helpers
                        .entry(helper.clone())
                        .or_insert_with(|| format!("{key} in {}", file.display()));
                    if helper == crate::commands::configure::HELPER_NAME {
                        if let Some(r) = Registry::parse(key).filter(|r| r.host() == key) {
                            if !registries.contains(&r) {
                                registries.push(r);
                            }
                        }
                    }
                }
                if let Some(store) = store {
                    helpers
                        .entry(store)
                        .or_insert_with(|| format!("credsStore in {}", file.display()));
                }
            }
        }
    }
    for (name, used_by) in &helpers {
        if !name.is_empty() {
            checks.push(check_helper(name, kernel, userland, used_by));
        }
    }
    (registries, keys)
}

/// The configuration file and the `ECR_EDGE_*` variables, read as every other command reads
/// them; on failure the checks go on with the defaults.
fn settings(checks: &mut Vec<Check>, config_flag: Option<&Path>) -> Settings {
    match Settings::load(config_flag) {
        Ok(s) => {
            let what = match &s.config.iot {
                Some(iot) => format!("[iot] thing {} via {}", iot.thing_name, iot.endpoint),
                None => "AWS default credential chain".into(),
            };
            checks.push(check(
                "config",
                Status::Pass,
                format!("{}: {what}", s.config_path.display()),
            ));
            s
        }
        Err(e) => {
            checks.push(check("config", Status::Fail, e.to_string()));
            Settings {
                config: config::load(config_flag).unwrap_or_default(),
                config_path: config::locate(config_flag).0,
                deadline: crate::settings::DEFAULT_DEADLINE,
                daemon_wait: crate::settings::DEFAULT_DAEMON_WAIT,
                cache_dir: crate::settings::cache_dir(),
                socket: None,
                disable_cache: false,
            }
        }
    }
}

/// The device certificate and key, checked locally, and shown in one block as an operator
/// compares them with the AWS IoT console: names, version, key, validity with days left (a
/// warning under [`ROTATE_WARN_DAYS`]: fleets need time to rotate), the key file's mode and
/// owner, the intermediates, and the fingerprints.
fn iot_identity(checks: &mut Vec<Check>, config: &Config) {
    let Some(iot) = &config.iot else {
        return;
    };
    let d = match crate::aws::iot::Device::load(iot, crate::token::now()) {
        Ok(d) => d,
        Err(e) => {
            checks.push(check("iot-identity", Status::Fail, e.to_string()));
            return;
        }
    };
    let id = &d.identity;
    let days_left = d.not_after.saturating_sub(crate::token::now()) / 86_400;
    let key_place = match &iot.key {
        KeyRef::File(path) => {
            let meta = std::fs::metadata(path).map_or_else(
                |e| format!("unreadable: {e}"),
                |m| {
                    use std::os::unix::fs::MetadataExt;
                    format!(
                        "mode {:04o}, owner uid {} gid {}",
                        m.mode() & 0o7777,
                        m.uid(),
                        m.gid()
                    )
                },
            );
            match crate::aws::iot::tpm_wrapped(path) {
                Some(wrapped) => format!(
                    "wrapped by the TPM {} under parent {:#010x}{}, in file {} ({meta}); the \
                     file is useless without that TPM",
                    iot.tpm.clone().unwrap_or_default(),
                    wrapped.parent,
                    if wrapped.parent == crate::tpm::RH_OWNER {
                        " (the owner hierarchy's storage key)"
                    } else {
                        ""
                    },
                    path.display()
                ),
                None => format!("file {} ({meta})", path.display()),
            }
        }
        KeyRef::TpmHandle(_) => format!(
            "in the TPM {} at {}; it never leaves the TPM",
            iot.tpm.clone().unwrap_or_default(),
            iot.key
        ),
        KeyRef::Credential(name) => format!(
            "systemd credential {name} (decrypted by systemd into $CREDENTIALS_DIRECTORY, \
             readable by this service only)"
        ),
    };
    let detail = format!(
        "certificate and key match\n      subject       {}\n      issuer        {}{}\n      \
         version       X.509 v{}\n      key           {}\n      valid         {} to {} \
         ({days_left} days left)\n      key lives     {key_place}\n      chain         \
         {} intermediate certificate(s) after the device certificate\n      certificate ID \
         {}\n      public key    SHA-256 {}",
        id.subject,
        id.issuer,
        if id.issuer == id.subject {
            " (self-signed)"
        } else {
            ""
        },
        id.version,
        id.key,
        crate::clock::rfc3339(id.not_before),
        crate::clock::rfc3339(d.not_after),
        id.intermediates,
        id.certificate_id,
        id.public_key_sha256,
    );
    let status = if days_left < ROTATE_WARN_DAYS {
        Status::Warn
    } else {
        Status::Pass
    };
    checks.push(check("iot-identity", status, detail));
}

/// Days of certificate life left under which `doctor` warns.
pub const ROTATE_WARN_DAYS: i64 = 30;

/// Each endpoint's reachability and, from its `Date` header, the clock.
///
/// The IoT credentials endpoint is probed as the exchange reaches it: trusting `[iot] ca` when
/// set, and presenting the device certificate (the endpoint wants one).
fn network_and_clock(checks: &mut Vec<Check>, registries: &[Registry], settings: &Settings) {
    // One trust store for every registry endpoint (it reads the system bundle).
    let system = plain_tls(None);
    let mut endpoints: Vec<(String, Result<Arc<rustls::ClientConfig>, String>)> = registries
        .iter()
        .map(|r| {
            let endpoint = r.endpoint().trim_start_matches("https://").to_owned();
            (endpoint, system.clone())
        })
        .collect();
    endpoints.dedup_by(|a, b| a.0 == b.0);
    if let Some(iot) = &settings.config.iot {
        let tls = match crate::aws::iot::Device::load(iot, crate::token::now()) {
            Ok(device) => Ok(device.tls()),
            Err(_) => plain_tls(iot.ca.as_deref()),
        };
        endpoints.push((iot.endpoint.clone(), tls));
    }
    let mut skews = Vec::new();
    if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        for (endpoint, tls) in &endpoints {
            let (host_name, port) = crate::aws::iot::host_port(endpoint);
            let via = crate::aws::https::proxy_for(host_name, port)
                .map_or_else(|| "direct".to_owned(), |p| format!("via proxy {p}"));
            let probed = match tls {
                Ok(tls) => runtime.block_on(probe(tls.clone(), host_name, port, settings.deadline)),
                Err(e) => Err(e.clone()),
            };
            match probed {
                Ok((status, date)) => {
                    checks.push(check(
                        "network",
                        Status::Pass,
                        format!("{endpoint} reachable {via} (HTTP {status})"),
                    ));
                    if let Some(server) = date {
                        // The system clock itself: trusted time has taken this Date in already.
                        skews.push((
                            endpoint.clone(),
                            crate::clock::system().saturating_sub(server),
                        ));
                    }
                }
                Err(e) => checks.push(check(
                    "network",
                    Status::Fail,
                    format!("{endpoint} not reachable {via}: {e}"),
                )),
            }
        }
    }
    checks.push(clock_check(&skews));
}

/// One real `GetAuthorizationToken` call (after any IoT exchange and role hop) per distinct
/// credential source, for the first registry that uses it; each check names every registry
/// that uses the source.
fn token_per_source(checks: &mut Vec<Check>, registries: &[Registry], settings: &Settings) {
    if registries.is_empty() {
        checks.push(check(
            "credentials",
            Status::Warn,
            "no credHelpers entry names ecr-edge and none is configured, so no registry to \
             test against",
        ));
        return;
    }
    let mut groups: Vec<(Source, Vec<&Registry>)> = Vec::new();
    for r in registries {
        let source = Source::for_registry(&settings.config, r.host());
        match groups
            .iter_mut()
            .find(|(s, _)| s.identity() == source.identity())
        {
            Some((_, members)) => members.push(r),
            None => groups.push((source, vec![r])),
        }
    }
    for (source, members) in groups {
        let registry = members[0];
        let region = crate::aws::credentials::home_region(&source, Some(registry.region()));
        let result = crate::aws::ecr::Fetcher::new(&source, &region, settings.deadline)
            .and_then(|f| f.fetch(registry));
        let users = if members.len() > 1 {
            format!(
                "; also used by {}",
                members[1..]
                    .iter()
                    .map(|r| r.host())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        };
        checks.push(match result {
            Ok(t) => check(
                "credentials",
                Status::Pass,
                format!(
                    "ecr:GetAuthorizationToken allowed for {registry} with {}; token valid \
                     until {}{users}",
                    source.describe(),
                    crate::clock::rfc3339(t.expires_at)
                ),
            ),
            Err(e) => check(
                "credentials",
                Status::Fail,
                format!("{registry} with {}: {e}{users}", source.describe()),
            ),
        });
    }
}

/// TLS trusting the system store and Amazon's roots, or only `ca`; no client certificate.
fn plain_tls(ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    crate::aws::trust::client_config(ca).map_err(|e| e.to_string())
}

/// `GET /` on an endpoint: proves DNS, TCP, proxy and TLS, and returns the server's clock.
async fn probe(
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
    deadline: Duration,
) -> Result<(u16, Option<i64>), String> {
    let endpoint = crate::aws::traffic::Endpoint::of(host, None);
    let get = crate::aws::https::get(tls, endpoint, host, port, "/", &[], 16 * 1024);
    match tokio::time::timeout(deadline, get).await {
        Err(_) => Err(crate::aws::https::timed_out(host)
            .unwrap_or_else(|| format!("no answer within {:.1}s", deadline.as_secs_f64()))),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(r)) => {
            let date = r.date.as_deref().and_then(crate::clock::parse_http_date);
            Ok((r.status, date))
        }
    }
}

/// Judges the system clock from the servers' `Date` headers (seconds the clock is ahead) and
/// the floor, and says what ecr-edge does about a wrong one (src/clock.rs).
fn clock_check(skews: &[(String, i64)]) -> Check {
    let system = crate::clock::system();
    let floor = crate::clock::floor();
    let floor_is = if floor > crate::BUILD_EPOCH {
        "the last time AWS gave this device"
    } else {
        "when this binary was built"
    };
    let engine = "the container engine's own TLS to the registry uses the system clock: set it \
                  (NTP, or [daemon] set_clock = \"when-unsynchronized\")";
    let Some((endpoint, skew)) = skews.iter().max_by_key(|(_, s)| s.abs()) else {
        if system < floor {
            return check(
                "clock",
                Status::Fail,
                format!(
                    "the clock ({}) is before {} ({floor_is}), and no AWS endpoint answered to \
                     give the time: ecr-edge judges certificates at that floor and takes AWS's \
                     time from the first verified answer; {engine}",
                    crate::clock::rfc3339(system),
                    crate::clock::rfc3339(floor)
                ),
            );
        }
        return check(
            "clock",
            Status::Warn,
            "no endpoint answered, so the clock was not compared",
        );
    };
    let ahead = if *skew >= 0 { "ahead of" } else { "behind" };
    let detail = format!("{}s {ahead} {endpoint}", skew.abs());
    let behind_floor = if system < floor {
        format!(
            "; it is before {} ({floor_is})",
            crate::clock::rfc3339(floor)
        )
    } else {
        String::new()
    };
    match skew.abs() {
        s if s > 60 || system < floor => check(
            "clock",
            Status::Warn,
            format!(
                "{detail}{behind_floor}: ecr-edge uses AWS's time (from that server, whose \
                 certificate verified) for TLS, request signing and token expiry until the clock \
                 is set; {engine}"
            ),
        ),
        _ => check("clock", Status::Pass, detail),
    }
}

/// Whether every check passed (warnings allowed).
pub fn ok(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

/// Runs `ecr-edge doctor`: each check on `out` (one JSON object with `json`);
/// [`Exit::Success`] only when none failed.
pub fn report(
    config: Option<&Path>,
    options: &Options,
    out: &mut dyn std::io::Write,
) -> crate::exit::Exit {
    let checks = run(config, options);
    let ok = ok(&checks);
    if options.json {
        let _ = writeln!(out, "{}", serde_json::json!({ "ok": ok, "checks": checks }));
    } else {
        for c in &checks {
            let _ = writeln!(out, "{c}");
        }
        let verdict = if ok {
            "all checks passed"
        } else {
            "some checks failed"
        };
        let _ = writeln!(out, "{verdict}");
    }
    crate::exit::Exit::from_ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let host = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
        assert_eq!(check_key(host, "ecr-edge").status, Status::Pass);
        let c = check_key(&format!("https://{host}/"), "ecr-edge");
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail.contains(&format!("use \"{host}\"")),
            "{}",
            c.detail
        );
        let c = check_key("123456789012.dkr.ecr.us-wset-2.amazonaws.com", "ecr-edge");
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail
                .contains("did you mean \"123456789012.dkr.ecr.us-west-2.amazonaws.com\""),
            "{}",
            c.detail
        );
        let c = check_key("123456789012.dkr.ecr.cn-north-1.amazonaws.com", "ecr-edge");
        assert!(
            c.status == Status::Fail && c.detail.contains(".amazonaws.com.cn"),
            "{}",
            c.detail
        );
        assert_eq!(
            check_key(
                "123456789012.dkr.ecr.xx-newzone-9.amazonaws.com",
                "ecr-edge"
            )
            .status,
            Status::Warn
        );
        assert_eq!(check_key("ghcr.io", "gh").status, Status::Pass);
        assert_eq!(check_key("ghcr.io", "ecr-edge").status, Status::Fail);
        assert_eq!(
            check_key("12345.dkr.ecr.us-west-2.amazonaws.com", "ecr-login").status,
            Status::Fail
        );
        assert_eq!(check_key("public.ecr.aws", "ecr-edge").status, Status::Pass);
    }

    #[test]
    fn clock() {
        let e = |s| vec![("api".to_string(), s)];
        assert_eq!(clock_check(&e(3)).status, Status::Pass);
        assert_eq!(clock_check(&e(-90)).status, Status::Warn);
        // Far off: ecr-edge takes AWS's time and says so, and what the engine still needs.
        let far = clock_check(&e(400));
        assert_eq!(far.status, Status::Warn);
        assert!(far.detail.contains("uses AWS's time"), "{}", far.detail);
        assert_eq!(clock_check(&[]).status, Status::Warn);
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("us-wset-2", "us-west-2"), 2);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}
