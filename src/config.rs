//! The configuration file: found once, validated once, typed.
//!
//! `--config PATH`, else `$ECR_EDGE_CONFIG`, else `/etc/ecr-edge/config.toml`. The default file
//! may be absent (then every setting has its default); a file named explicitly must exist.
//! Unknown keys are errors that name the key and the line, because a misspelt key silently
//! ignored is how a device ends up on the wrong credentials.
//!
//! Parsing is pure ([`parse`]) so it can be fuzzed; [`load`] adds the file access.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::registry::Registry;

/// Where the configuration lives when nothing says otherwise.
pub const DEFAULT_PATH: &str = "/etc/ecr-edge/config.toml";

/// Largest configuration file read: a real one is a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 256 * 1024;

/// The whole configuration file.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[iot]`: take credentials from the AWS IoT credentials provider with the device
    /// certificate. Absent: the AWS default credential chain.
    pub iot: Option<IotConfig>,
    /// `[daemon]`: the refresher daemon and the socket the helper asks first.
    pub daemon: Option<DaemonConfig>,
    /// `[[registry]]`: registries that need other credentials than the default, or other
    /// names. Registries without a table use `[iot]` (or the default chain) as before.
    #[serde(default, rename = "registry")]
    pub registries: Vec<RegistryConfig>,
}

impl Config {
    /// The daemon's socket as the file says: `[daemon] socket`, else [`DEFAULT_SOCKET`]
    /// (`$ECR_EDGE_SOCKET` overrides it: [`crate::settings::Settings::socket`]).
    pub fn socket_path(&self) -> PathBuf {
        match &self.daemon {
            Some(d) => d.socket.clone(),
            None => PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

impl Config {
    /// The `[[registry]]` table for `host` (a registry host or one of its aliases, lower-case).
    pub fn registry(&self, host: &str) -> Option<&RegistryConfig> {
        self.registries
            .iter()
            .find(|r| r.host.host() == host || r.aliases.iter().any(|a| a == host))
    }

    /// The registry an alias stands for; `None` when `host` is no configured alias.
    pub fn alias_target(&self, host: &str) -> Option<&Registry> {
        self.registries
            .iter()
            .find(|r| r.aliases.iter().any(|a| a == host))
            .map(|r| &r.host)
    }
}

/// A loopback address and port (`[daemon] credentials_endpoint`): checked when the file is read
/// (the error names the line), used as parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LoopbackAddr(pub std::net::SocketAddr);

impl TryFrom<String> for LoopbackAddr {
    type Error = String;

    fn try_from(text: String) -> Result<LoopbackAddr, String> {
        match text.parse::<std::net::SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => Ok(LoopbackAddr(addr)),
            _ => Err(format!(
                "credentials_endpoint must be a loopback address and port such as \
                 127.0.0.1:9911, got {text:?}"
            )),
        }
    }
}

impl fmt::Display for LoopbackAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An IAM role ARN, `arn:<partition>:iam::<12 digits>:role/<path/name>`: checked when the file
/// (or the kubelet's environment) is read, used as parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct RoleArn(String);

impl RoleArn {
    /// The ARN when `arn` is an IAM role ARN.
    pub fn parse(arn: &str) -> Option<RoleArn> {
        is_role_arn(arn).then(|| RoleArn(arn.to_owned()))
    }

    /// The ARN as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RoleArn {
    type Error = String;

    fn try_from(text: String) -> Result<RoleArn, String> {
        if is_role_arn(&text) {
            Ok(RoleArn(text))
        } else {
            Err(format!(
                "must be an IAM role ARN such as arn:aws:iam::210987654321:role/name, got {text:?}"
            ))
        }
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[[registry]]`: one registry's credential source and other names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The registry, any ECR form (written as its bare host, as `docker pull` names it).
    pub host: Registry,
    /// Other host names that mean this registry (a company DNS name, a proxy name).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// A named AWS profile (`~/.aws/config`, `~/.aws/credentials`) as the base credentials,
    /// instead of `[iot]` or the default chain.
    pub profile: Option<String>,
    /// A role to assume with the base credentials.
    pub role_arn: Option<RoleArn>,
    /// The `sts:ExternalId` the role's trust policy asks for.
    pub external_id: Option<String>,
    /// The role session name (default `ecr-edge`), seen in CloudTrail.
    pub session_name: Option<String>,
}

/// Where the daemon listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ecr-edge/agent.sock";

/// `[daemon]`: what the refresher keeps warm, who may ask it, and where it writes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Registry hosts refreshed from start-up (others are added when first asked for).
    #[serde(default)]
    pub registries: Vec<Registry>,
    /// The Unix socket the helper asks (mode 0660).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// User IDs allowed to ask. Unset: root and the daemon's own user.
    pub allowed_uids: Option<Vec<u32>>,
    /// Group IDs allowed to ask (primary or supplementary). Unset: the socket's group.
    pub allowed_gids: Option<Vec<u32>>,
    /// Longest wait between retries after failures, in seconds (default 300).
    #[serde(default = "default_backoff_max")]
    pub backoff_max: u64,
    /// Files written for consumers that cannot run a credential helper.
    #[serde(default, rename = "sink")]
    pub sinks: Vec<SinkConfig>,
    /// `127.0.0.1:PORT`: serve the `[iot]` role credentials to local AWS SDK programs in the
    /// container-credentials format. Off when unset.
    pub credentials_endpoint: Option<LoopbackAddr>,
    /// The endpoint's authorization token, written 0600 at start-up.
    #[serde(default = "default_token_file")]
    pub credentials_token_file: PathBuf,
    /// A Prometheus text file (node_exporter's textfile collector), rewritten atomically after
    /// every change, mode 0644. Off when unset.
    pub metrics_file: Option<PathBuf>,
    /// When tokens are refreshed: ahead of need (the default) or only when asked for.
    #[serde(default)]
    pub refresh: RefreshMode,
    /// Whether the daemon sets the system clock to AWS's time (src/clock.rs).
    #[serde(default)]
    pub set_clock: SetClock,
    /// Whether a link coming back (the kernel's routing netlink: a link up, a new address or
    /// default route) cuts a backoff short (src/daemon/link.rs). On by default.
    #[serde(default = "default_link_events")]
    pub link_events: bool,
    /// Images to check as a pull would (`host/repository:tag`), at start and hourly, with the
    /// token the daemon holds for their registry: status and the metrics carry each result
    /// (src/daemon/images.rs).
    #[serde(default)]
    pub images: Vec<String>,
}

/// `[daemon] set_clock`: whether the daemon sets the system clock from AWS's time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetClock {
    /// Never (the default): ecr-edge uses AWS's time itself and leaves the clock alone.
    #[default]
    Never,
    /// When the clock is off from AWS's time by more than a minute and no NTP client has
    /// synchronized it: the container engine's own TLS then works too. Needs CAP_SYS_TIME
    /// (the README's drop-in).
    WhenUnsynchronized,
}

/// `[daemon] refresh`: when the daemon talks to AWS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefreshMode {
    /// Keep every token warm: refresh at 40-50 % of its life, whether or not anyone asks.
    #[default]
    Ahead,
    /// For metered links: no traffic while nothing asks. A request for a token past that point
    /// is served the still-valid token and starts a refresh; a request with none waits for one.
    OnDemand,
}

impl Default for DaemonConfig {
    fn default() -> DaemonConfig {
        DaemonConfig {
            registries: Vec::new(),
            socket: default_socket(),
            allowed_uids: None,
            allowed_gids: None,
            backoff_max: default_backoff_max(),
            sinks: Vec::new(),
            credentials_endpoint: None,
            credentials_token_file: default_token_file(),
            metrics_file: None,
            refresh: RefreshMode::Ahead,
            set_clock: SetClock::Never,
            link_events: true,
            images: Vec::new(),
        }
    }
}

fn default_token_file() -> PathBuf {
    PathBuf::from("/run/ecr-edge/credentials-token")
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

fn default_link_events() -> bool {
    true
}

fn default_backoff_max() -> u64 {
    300
}

/// `[[daemon.sink]]`: an auth file kept up to date with the daemon's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The file's format.
    pub kind: SinkKind,
    /// The file (other entries in it are kept).
    pub path: PathBuf,
}

/// Auth file formats a sink can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// Docker's `config.json` (`auths.<host>.auth`), also read by k3s and nerdctl.
    DockerAuths,
    /// The containers auth file (`auth.json`: podman, skopeo, buildah, CRI-O).
    ContainersAuth,
}

/// `[iot]`: the device's AWS IoT identity and how to exchange it for role credentials.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IotConfig {
    /// The credentials provider endpoint (`<prefix>.credentials.iot.<region>.amazonaws.com`),
    /// optionally with `:port`; no scheme, no path.
    pub endpoint: String,
    /// The IoT role alias whose role is assumed.
    pub role_alias: String,
    /// The IoT thing name, sent as `x-amzn-iot-thingname`.
    pub thing_name: String,
    /// The device certificate chain (PEM).
    pub cert: PathBuf,
    /// Where the device private key lives: a PEM file (PKCS#8, SEC1 or PKCS#1, not readable by
    /// others), a TPM key (`handle:0x81000001`), or a systemd credential (`credential:NAME`).
    pub key: KeyRef,
    /// The TPM holding a `handle:` key, in the tpm2-tss form (default `device:/dev/tpmrm0`).
    pub tpm: Option<crate::tpm::TpmName>,
    /// CA certificates (PEM) to trust for the endpoint instead of the system store.
    pub ca: Option<PathBuf>,
    /// A role to assume with the exchanged credentials (cross-account registries).
    pub role_arn: Option<RoleArn>,
    /// Accept a private key that group or others can read. Off: such a key is refused.
    #[serde(default)]
    pub allow_insecure_key_permissions: bool,
    /// The IoT data endpoint (`<prefix>-ats.iot.<region>.amazonaws.com`, `iot:Data-ATS`),
    /// optionally with `:port`: when set, the daemon reports its health to the thing's named
    /// shadow `ecr-edge` (src/daemon/shadow.rs). Off when unset.
    pub shadow_endpoint: Option<String>,
    /// The least time between two shadow updates, in seconds (60 to 86400).
    #[serde(default = "default_shadow_min_interval")]
    pub shadow_min_interval: u64,
}

/// `[iot] shadow_min_interval` when unset: ten minutes.
pub const DEFAULT_SHADOW_MIN_INTERVAL: u64 = 600;

fn default_shadow_min_interval() -> u64 {
    DEFAULT_SHADOW_MIN_INTERVAL
}

/// Where the device's private key lives (`[iot] key`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum KeyRef {
    /// A PEM file.
    File(PathBuf),
    /// A persistent key in the TPM (`handle:0x81000001`): it never leaves the TPM.
    TpmHandle(u32),
    /// A systemd credential (`credential:NAME`): the service's `LoadCredentialEncrypted=`
    /// decrypts it into `$CREDENTIALS_DIRECTORY/NAME`, readable only by the service.
    Credential(String),
}

impl TryFrom<String> for KeyRef {
    type Error = String;

    fn try_from(text: String) -> Result<KeyRef, String> {
        if let Some(h) = text.strip_prefix("handle:") {
            let handle = h
                .strip_prefix("0x")
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .filter(|&n| crate::tpm::is_persistent(n));
            return handle.map(KeyRef::TpmHandle).ok_or_else(|| {
                format!(
                    "a TPM key is a persistent handle from handle:0x81000000 to                      handle:0x81ffffff, got {text:?}"
                )
            });
        }
        if let Some(name) = text.strip_prefix("credential:") {
            let ok = !name.is_empty()
                && name.len() <= 255
                && name != "."
                && name != ".."
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-@:".contains(&b));
            return if ok {
                Ok(KeyRef::Credential(name.to_owned()))
            } else {
                Err(format!(
                    "a systemd credential name is letters, digits and _.-@: (the name in \
                     LoadCredentialEncrypted=NAME:...), got {text:?}"
                ))
            };
        }
        if text.is_empty() {
            return Err("key is empty: name the private key file".into());
        }
        Ok(KeyRef::File(PathBuf::from(text)))
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::File(p) => p.display().fmt(f),
            KeyRef::TpmHandle(h) => write!(f, "handle:{h:#010x}"),
            KeyRef::Credential(name) => write!(f, "credential:{name}"),
        }
    }
}

/// Why the configuration could not be used.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, …), or a value
    /// is not usable.
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and where.
        invalid: Invalid,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config {}: {source}", path.display())
            }
            ConfigError::TooLarge { path } => write!(
                f,
                "config {} is larger than {MAX_CONFIG_BYTES} bytes",
                path.display()
            ),
            ConfigError::Invalid { path, invalid } => {
                write!(f, "invalid config {}: {invalid}", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The configuration file to use and whether it was named explicitly.
pub fn locate(flag: Option<&Path>) -> (PathBuf, bool) {
    if let Some(p) = flag {
        return (p.to_owned(), true);
    }
    match std::env::var_os("ECR_EDGE_CONFIG").filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    }
}

/// Loads the configuration named by `flag`, `$ECR_EDGE_CONFIG` or the default path.
///
/// # Errors
/// [`ConfigError`] when a named file is missing, any file cannot be read or is invalid.
pub fn load(flag: Option<&Path>) -> Result<Config, ConfigError> {
    let (path, explicit) = locate(flag);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(Config::default())
        }
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let mut text = String::new();
    if let Err(source) = file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text) {
        return Err(ConfigError::Read { path, source });
    }
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge { path });
    }
    parse(&text).map_err(|invalid| ConfigError::Invalid { path, invalid })
}

/// What is wrong with configuration text, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not TOML, or not this schema (an unknown key, a value of the wrong type or form, a
    /// registry host or role ARN that is not one).
    Toml {
        /// Where (1-based; 0 when the parser names no place).
        line: usize,
        /// The parser's words, which also name the line and column.
        message: String,
    },
    /// A `[[registry]]` table's value, at `line` (the key's line, else the table's; 1-based).
    Registry {
        /// Where.
        line: usize,
        /// What is wrong, starting with the key.
        problem: String,
    },
    /// A `[daemon]` value.
    Daemon(String),
    /// An `[iot]` value.
    Iot(String),
    /// Sections that do not go together.
    Combination(&'static str),
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Toml { message, .. } => f.write_str(message),
            Invalid::Registry { line, problem } => write!(f, "[[registry]] line {line}: {problem}"),
            Invalid::Daemon(m) | Invalid::Iot(m) => f.write_str(m),
            Invalid::Combination(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Invalid {}

/// Parses and validates configuration text.
///
/// # Errors
/// [`Invalid`]: the problem and, for TOML and schema errors and `[[registry]]` tables, its line.
pub fn parse(text: &str) -> Result<Config, Invalid> {
    let config: Config = toml::from_str(text).map_err(|e: toml::de::Error| Invalid::Toml {
        line: e.span().map_or(0, |at| line_of(text, at.start)),
        message: one_line(&e.to_string()),
    })?;
    if let Some(iot) = &config.iot {
        validate_iot(iot).map_err(Invalid::Iot)?;
    }
    validate_registries(text, &config)?;
    if let Some(daemon) = &config.daemon {
        validate_daemon(daemon).map_err(Invalid::Daemon)?;
        if daemon.credentials_endpoint.is_some() && config.iot.is_none() {
            return Err(Invalid::Combination(
                "[daemon] credentials_endpoint serves the [iot] role credentials: add [iot]",
            ));
        }
    }
    Ok(config)
}

/// The line (1-based) of byte `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(at)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line (1-based) where the `index`-th `[[registry]]` table sets `key`, else the table's
/// own line. Found by reading the lines as written: the parser keeps no positions (they cost a
/// device 20 KB), and tables are written one key per line.
fn registry_at(text: &str, index: usize, key: &str) -> usize {
    let header = |l: &str| {
        let inner = l
            .trim()
            .strip_prefix("[[")
            .and_then(|l| l.strip_suffix("]]"));
        inner.is_some_and(|name| name.trim() == "registry")
    };
    let mut lines = text.lines().enumerate();
    let Some((table_line, _)) = lines.by_ref().filter(|(_, l)| header(l)).nth(index) else {
        return 0;
    };
    let key_line = lines
        .take_while(|(_, l)| !l.trim_start().starts_with('['))
        .find(|(_, l)| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|(n, _)| n);
    key_line.unwrap_or(table_line) + 1
}

/// Whether `arn` is an IAM role ARN: `arn:<partition>:iam::<12 digits>:role/<path/name>`.
fn is_role_arn(arn: &str) -> bool {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let name = resource.strip_prefix("role/").unwrap_or("");
    partition.starts_with("aws")
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && !name.ends_with('/')
        && name.len() <= 512
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
}

/// STS's rule for role session names: 2 to 64 of `[\w+=,.@-]`.
fn is_session_name(s: &str) -> bool {
    (2..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

fn validate_registries(text: &str, config: &Config) -> Result<(), Invalid> {
    // Each host and alias with where it was named first.
    let mut names: Vec<(&str, usize)> = Vec::new();
    for (i, r) in config.registries.iter().enumerate() {
        let at = |key: &str| registry_at(text, i, key);
        let bad = |key: &str, problem: String| Invalid::Registry {
            line: at(key),
            problem,
        };
        let host = r.host.host();
        for alias in &r.aliases {
            if crate::registry::host_of(alias).as_deref() != Some(alias.as_str())
                || !alias.contains('.')
            {
                return Err(bad(
                    "aliases",
                    format!(
                        "alias {alias:?} must be a bare lower-case host name such as \
                     registry.corp.example (no scheme, port or path)"
                    ),
                ));
            }
            if crate::registry::Registry::parse(alias).is_some() {
                return Err(bad(
                    "aliases",
                    format!(
                        "alias {alias:?} is itself an Amazon ECR host; give it its own \
                     [[registry]] table instead"
                    ),
                ));
            }
        }
        let named = std::iter::once((host, "host"))
            .chain(r.aliases.iter().map(|a| (a.as_str(), "aliases")));
        for (name, key) in named {
            if let Some((_, first)) = names.iter().find(|(n, _)| *n == name) {
                return Err(bad(key, format!("{name:?} is already named ([[registry]] line {first}); each host and alias may appear \
                     once")));
            }
            names.push((name, at(key)));
        }
        if let Some(p) = &r.profile {
            let ok = !p.is_empty()
                && p.len() <= 128
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'[' && b != b']');
            if !ok {
                return Err(bad(
                    "profile",
                    format!("profile {p:?} is not a profile name"),
                ));
            }
        }
        if let Some(e) = &r.external_id {
            let ok = (2..=1224).contains(&e.len())
                && e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@:/_-".contains(&b));
            if !ok {
                // Never repeat it: some treat it as a secret.
                return Err(bad(
                    "external_id",
                    "external_id must be 2 to 1224 letters, digits or +=,.@:/_-".into(),
                ));
            }
        }
        if let Some(name) = &r.session_name {
            if !is_session_name(name) {
                return Err(bad(
                    "session_name",
                    format!(
                        "session_name must be 2 to 64 letters, digits or _+=,.@-, got {name:?}"
                    ),
                ));
            }
        }
        for (key, value) in [
            ("external_id", &r.external_id),
            ("session_name", &r.session_name),
        ] {
            if value.is_some() && r.role_arn.is_none() {
                return Err(bad(key, format!("{key} needs role_arn")));
            }
        }
    }
    Ok(())
}

fn validate_daemon(d: &DaemonConfig) -> Result<(), String> {
    if !d.socket.is_absolute() {
        return Err(format!(
            "[daemon] socket must be an absolute path, got {:?}",
            d.socket
        ));
    }
    if d.backoff_max == 0 || d.backoff_max > 86_400 {
        return Err(format!(
            "[daemon] backoff_max is in seconds, 1 to 86400, got {}",
            d.backoff_max
        ));
    }
    if !d.credentials_token_file.is_absolute() {
        return Err("[daemon] credentials_token_file must be an absolute path".into());
    }
    if let Some(m) = &d.metrics_file {
        if !m.is_absolute() || m.extension().is_none_or(|e| e != "prom") {
            return Err(format!(
                "[daemon] metrics_file must be an absolute path ending in .prom (the textfile \
                 collector reads only those), got {m:?}"
            ));
        }
    }
    for image in &d.images {
        crate::registry::ImageRef::parse(image).map_err(|e| format!("[daemon] images: {e}"))?;
    }
    for sink in &d.sinks {
        if !sink.path.is_absolute() {
            return Err(format!(
                "[daemon.sink] path must be absolute, got {:?}",
                sink.path
            ));
        }
    }
    Ok(())
}

/// Whether `endpoint` is `host[:port]`: a DNS name, no scheme, no path.
fn is_host_port(endpoint: &str) -> bool {
    let (host, port) = match endpoint.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (endpoint, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n != 0))
}

fn validate_iot(iot: &IotConfig) -> Result<(), String> {
    if !is_host_port(&iot.endpoint) {
        return Err(format!(
            "[iot] endpoint must be a host name such as \
             c1a2b3example.credentials.iot.us-west-2.amazonaws.com (no https://, no path), got {:?}",
            iot.endpoint
        ));
    }
    if let Some(shadow) = &iot.shadow_endpoint {
        if !is_host_port(shadow) {
            return Err(format!(
                "[iot] shadow_endpoint must be a host name such as \
                 c1a2b3example-ats.iot.us-west-2.amazonaws.com (`aws iot describe-endpoint \
                 --endpoint-type iot:Data-ATS`; no https://, no path), got {shadow:?}"
            ));
        }
    }
    if !(60..=86_400).contains(&iot.shadow_min_interval) {
        return Err(format!(
            "[iot] shadow_min_interval must be 60 to 86400 seconds, got {}",
            iot.shadow_min_interval
        ));
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=,@-_.:".contains(&b))
    };
    if !name_ok(&iot.role_alias) {
        return Err(format!(
            "[iot] role_alias is not a valid role alias name: {:?}",
            iot.role_alias
        ));
    }
    if !name_ok(&iot.thing_name) {
        return Err(format!(
            "[iot] thing_name is not a valid thing name: {:?}",
            iot.thing_name
        ));
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "|")
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[iot]
endpoint   = "c1a2b3example.credentials.iot.us-west-2.amazonaws.com"
role_alias = "edge-role-alias"
thing_name = "edge-thing-0001"
cert = "/etc/ecr-edge/device.pem.crt"
key  = "/etc/ecr-edge/private.pem.key"
"#;

    #[test]
    fn empty_and_good() {
        assert_eq!(parse("").unwrap(), Config::default());
        let c = parse(GOOD).unwrap();
        let iot = c.iot.unwrap();
        assert_eq!(iot.thing_name, "edge-thing-0001");
        assert_eq!(iot.ca, None);
        assert!(!iot.allow_insecure_key_permissions);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replace("thing_name", "thing_nme");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("thing_nme"), "{err}");
        assert!(err.contains("line 5"), "{err}");
        let err = parse("[iott]\n").unwrap_err().to_string();
        assert!(err.contains("iott") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let err = parse(&GOOD.replace("\"c1a2b3example", "\"https://c1a2b3example"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no https://"), "{err}");
        let err = parse(&format!("{GOOD}role_arn = \"role/x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("role_arn"), "{err}");
        assert!(parse(&GOOD.replace("edge-role-alias", "")).is_err());
        assert!(parse("[iot]\nendpoint = 3\n").is_err());
        assert!(parse("not toml at all [").is_err());
    }

    #[test]
    fn daemon_section() {
        let c = parse(
            r#"
[daemon]
registries = ["123456789012.dkr.ecr.us-west-2.amazonaws.com", "public.ecr.aws"]
allowed_uids = [0, 1000]
backoff_max = 60
[[daemon.sink]]
kind = "docker-auths"
path = "/root/.docker/config.json"
[[daemon.sink]]
kind = "containers-auth"
path = "/run/containers/0/auth.json"
"#,
        )
        .unwrap();
        let d = c.daemon.unwrap();
        assert_eq!(d.registries.len(), 2);
        assert_eq!(d.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(d.allowed_uids, Some(vec![0, 1000]));
        assert_eq!(d.allowed_gids, None);
        assert_eq!(d.sinks[1].kind, SinkKind::ContainersAuth);
        for (bad, says) in [
            ("registries = [\"docker.io\"]", "not an Amazon ECR"),
            (
                "registries = [\"https://123456789012.dkr.ecr.us-east-1.amazonaws.com\"]",
                "bare host",
            ),
            ("socket = \"agent.sock\"", "absolute"),
            ("backoff_max = 0", "backoff_max"),
            (
                "[[daemon.sink]]\nkind = \"docker\"\npath = \"/x\"",
                "docker",
            ),
            (
                "[[daemon.sink]]\nkind = \"docker-auths\"\npath = \"x\"",
                "absolute",
            ),
            ("registry = []", "registry"),
            ("credentials_endpoint = \"0.0.0.0:9911\"", "loopback"),
            ("credentials_endpoint = \"127.0.0.1:9911\"", "add [iot]"),
        ] {
            let err = parse(&format!("[daemon]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn device_keys_are_files_tpm_handles_or_systemd_credentials() {
        let key = |k: &str| KeyRef::try_from(k.to_owned());
        assert_eq!(key("handle:0x81000001"), Ok(KeyRef::TpmHandle(0x8100_0001)));
        assert_eq!(
            key("credential:device-key"),
            Ok(KeyRef::Credential("device-key".into()))
        );
        assert_eq!(key("/etc/k.pem"), Ok(KeyRef::File("/etc/k.pem".into())));
        for bad in [
            "handle:0x80000001",
            "handle:81000001",
            "handle:0x1ffffffff",
            "credential:../k",
            "credential:",
            "",
        ] {
            assert!(key(bad).is_err(), "{bad}");
        }
        for form in ["handle:0x81000001", "credential:device-key", "/etc/k.pem"] {
            assert_eq!(key(form).unwrap().to_string(), form);
        }
        let err = parse("[iot]\nendpoint = \"e.example\"\nrole_alias = \"a\"\nthing_name = \"t\"\ncert = \"/c\"\nkey = \"handle:0x1\"\n")
            .unwrap_err();
        assert!(matches!(&err, Invalid::Toml { line: 6, .. }), "{err:?}");
    }

    #[test]
    fn registry_tables_are_checked_with_their_line() {
        const TWO: &str = r#"
[[registry]]
host = "210987654321.dkr.ecr.eu-west-1.amazonaws.com"
aliases = ["registry.corp.example", "mirror.corp.example"]
role_arn = "arn:aws:iam::210987654321:role/edge-pull"
external_id = "edge-fleet-7"

[[registry]]
host = "123456789012.dkr.ecr.us-west-2.amazonaws.com"
profile = "vendor"
"#;
        let c = parse(TWO).unwrap();
        assert_eq!(c.registries.len(), 2);
        let host = "210987654321.dkr.ecr.eu-west-1.amazonaws.com";
        assert_eq!(
            c.alias_target("mirror.corp.example").map(Registry::host),
            Some(host)
        );
        assert_eq!(c.alias_target(host), None, "a host is no alias");
        assert_eq!(
            c.registry("registry.corp.example").map(|r| r.host.host()),
            Some(host)
        );
        assert!(c.registry("other.example").is_none());
        // The line is part of the error, not only of its words.
        let bad = parse(&TWO.replace("role/edge-pull", "user/edge-pull")).unwrap_err();
        assert!(
            matches!(&bad, Invalid::Toml { line: 5, message } if message.contains("role_arn = ")
                && message.contains("must be an IAM role ARN")),
            "{bad:?}"
        );
        let bad = parse(&TWO.replace("eu-west-1.amazonaws.com\"", "eu-west-1.amazonaws.com/x\""))
            .unwrap_err();
        assert!(
            matches!(&bad, Invalid::Toml { line: 3, message } if message.contains("write the bare host")),
            "{bad:?}"
        );
        for (from, to, says) in [
            (
                "\"mirror.corp.example\"]",
                "\"123456789012.dkr.ecr.us-west-2.amazonaws.com\"]",
                "line 4",
            ),
            (
                "profile = \"vendor\"",
                "aliases = [\"registry.corp.example\"]",
                "already named ([[registry]] line 4)",
            ),
            (
                "123456789012.dkr.ecr.us-west-2",
                "210987654321.dkr.ecr.eu-west-1",
                "already named ([[registry]] line 3)",
            ),
            ("role/edge-pull", "user/edge-pull", "line 5"),
            (
                ":210987654321:role",
                ":2109876543:role",
                "must be an IAM role ARN",
            ),
            (
                "\"registry.corp.example\"",
                "\"https://registry.corp.example\"",
                "bare lower-case host",
            ),
            (
                "\"registry.corp.example\"",
                "\"Registry.corp.example\"",
                "bare lower-case host",
            ),
            ("\"edge-fleet-7\"", "\"bad id!\"", "line 6"),
            ("profile = \"vendor\"", "profile = \"\"", "line 10"),
            (
                "profile = \"vendor\"",
                "session_name = \"x1\"",
                "needs role_arn",
            ),
            ("profile = \"vendor\"", "profil = \"vendor\"", "profil"),
            (
                "\"123456789012.dkr.ecr.us-west-2.amazonaws.com\"",
                "\"docker.io\"",
                "not an Amazon ECR",
            ),
        ] {
            assert!(TWO.contains(from), "{from}");
            let err = parse(&TWO.replacen(from, to, 1)).unwrap_err().to_string();
            assert!(err.contains(says), "{from} -> {to}: {err}");
        }
        // An external ID is never repeated in an error.
        let err = parse(&TWO.replace("edge-fleet-7", "s3cret id"))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn role_arns() {
        for good in [
            "arn:aws:iam::210987654321:role/edge-pull",
            "arn:aws-cn:iam::210987654321:role/path/to/r_1+=,.@-",
            "arn:aws-us-gov:iam::210987654321:role/r",
        ] {
            assert!(is_role_arn(good), "{good}");
        }
        for bad in [
            "",
            "role/x",
            "arn:aws:iam::210987654321:role/",
            "arn:aws:iam::210987654321:user/x",
            "arn:aws:sts::210987654321:role/x",
            "arn:aws:iam:us-east-1:210987654321:role/x",
            "arn:aws:iam::21098765432:role/x",
            "arn:aws:iam::210987654321:role/x y",
        ] {
            assert!(!is_role_arn(bad), "{bad}");
        }
    }

    #[test]
    fn missing_default_file_is_defaults_but_named_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        assert!(matches!(
            load(Some(&missing)),
            Err(ConfigError::Read { .. })
        ));
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            load(Some(&big)),
            Err(ConfigError::TooLarge { .. })
        ));
    }

    /// The packaged `/etc/ecr-edge/config.toml` sets nothing as shipped, and with every option
    /// uncommented it parses, sets every field (the exhaustive patterns stop compiling when a
    /// field is added and not documented there), and shows the real defaults.
    #[test]
    fn packaged_config_documents_every_option() {
        const SHIPPED: &str = include_str!("../packaging/config.toml");
        assert_eq!(parse(SHIPPED).unwrap(), Config::default());
        let uncommented: String = SHIPPED
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => {
                    rest
                }
                _ => l,
            })
            .flat_map(|l| [l, "\n"])
            .collect();
        let Config {
            iot,
            daemon,
            registries,
        } = parse(&uncommented).unwrap();
        let RegistryConfig {
            host,
            aliases,
            profile,
            role_arn,
            external_id,
            session_name,
        } = &registries[0];
        assert!(!host.host().is_empty());
        assert!(!aliases.is_empty());
        assert!(profile.is_some() && role_arn.is_some());
        assert!(external_id.is_some() && session_name.is_some());
        let IotConfig {
            endpoint,
            role_alias,
            thing_name,
            cert,
            key,
            tpm,
            ca,
            role_arn,
            allow_insecure_key_permissions,
            shadow_endpoint,
            shadow_min_interval,
        } = iot.unwrap();
        assert!(shadow_endpoint.is_some());
        assert_eq!(shadow_min_interval, DEFAULT_SHADOW_MIN_INTERVAL);
        for s in [&endpoint, &role_alias, &thing_name] {
            assert!(!s.is_empty());
        }
        assert!(cert.is_absolute() && matches!(key, KeyRef::File(k) if k.is_absolute()));
        assert_eq!(tpm, Some(crate::tpm::TpmName::default()));
        assert!(ca.is_some() && role_arn.is_some());
        assert!(!allow_insecure_key_permissions, "the safe default is shown");
        let DaemonConfig {
            registries,
            socket,
            allowed_uids,
            allowed_gids,
            backoff_max,
            sinks,
            credentials_endpoint,
            credentials_token_file,
            metrics_file,
            refresh,
            set_clock,
            link_events,
            images,
        } = daemon.unwrap();
        assert!(!images.is_empty(), "an example shown");
        assert!(!link_events, "the non-default shown");
        assert_eq!(refresh, RefreshMode::OnDemand, "the non-default shown");
        assert_eq!(
            set_clock,
            SetClock::WhenUnsynchronized,
            "the non-default shown"
        );
        assert!(metrics_file.is_some_and(|m| m.is_absolute()));
        let defaults = DaemonConfig::default();
        assert!(!registries.is_empty());
        assert_eq!(socket, defaults.socket);
        assert!(allowed_uids.is_some() && allowed_gids.is_some());
        assert_eq!(backoff_max, defaults.backoff_max);
        let SinkConfig { kind: _, path } = &sinks[0];
        assert!(path.is_absolute());
        assert!(credentials_endpoint.is_some());
        assert_eq!(credentials_token_file, defaults.credentials_token_file);
    }
}
