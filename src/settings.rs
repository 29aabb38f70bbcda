//! Everything a run is told, read and validated once, at start: the configuration file and
//! every `ECR_EDGE_*` variable, into one [`Settings`] value that is passed down.
//!
//! The helper, the kubelet provider, the daemon and `doctor` all start here, so the same bad
//! value is the same clear error whichever of them meets it (before, `ECR_EDGE_TIMEOUT` was an
//! error for the helper and silently replaced by the default in the daemon, and a malformed
//! `ECR_EDGE_DAEMON_WAIT` was ignored everywhere). Reading variables costs no system call, so
//! the cached `get` pays only for the one configuration file it always opened.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{self, Config, ConfigError};
use crate::registry::Registry;

/// Default overall deadline for obtaining a token, retries included (`ECR_EDGE_TIMEOUT`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// How long the helper waits for the daemon's first reply before doing the work itself
/// (`ECR_EDGE_DAEMON_WAIT`). A healthy daemon answers in well under a millisecond; this bounds
/// the cost of a hung one without racing a daemon that is busy in a TLS handshake on a slow CPU.
pub const DEFAULT_DAEMON_WAIT: Duration = Duration::from_millis(200);

/// A run's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration file (`--config`, `$ECR_EDGE_CONFIG`, the default path).
    pub config: Config,
    /// Where it was read from (or would have been: an absent default file).
    pub config_path: PathBuf,
    /// The overall deadline of one token fetch, retries included (`ECR_EDGE_TIMEOUT`).
    pub deadline: Duration,
    /// How long to wait for the daemon's first reply (`ECR_EDGE_DAEMON_WAIT`).
    pub daemon_wait: Duration,
    /// The helper's token cache directory (`ECR_EDGE_CACHE_DIR`, else by the usual rules).
    pub cache_dir: PathBuf,
    /// The daemon's socket (`ECR_EDGE_SOCKET`, else `[daemon] socket`, else the default);
    /// `None` when `ECR_EDGE_SOCKET` is set empty (never ask a daemon).
    pub socket: Option<PathBuf>,
    /// `AWS_ECR_DISABLE_CACHE` set (the incumbent helper's variable): no token is written to
    /// or read from the disk cache; the daemon, which holds tokens in memory, is still asked.
    pub disable_cache: bool,
}

/// Why the settings are unusable.
#[derive(Debug)]
pub enum SettingsError {
    /// The configuration file is missing, unreadable or invalid.
    Config(ConfigError),
    /// An `ECR_EDGE_*` variable has a value that does not mean anything.
    Variable {
        /// The variable.
        name: &'static str,
        /// Its value, shortened for the message.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsError::Config(e) => e.fmt(f),
            SettingsError::Variable {
                name,
                value,
                expected,
            } => write!(f, "{name} must be {expected}, got {value:?}"),
        }
    }
}

impl std::error::Error for SettingsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SettingsError::Config(e) => Some(e),
            SettingsError::Variable { .. } => None,
        }
    }
}

impl Settings {
    /// Reads the variables and the configuration named by `config_flag`, `$ECR_EDGE_CONFIG` or
    /// the default path.
    ///
    /// # Errors
    /// [`SettingsError`] naming the variable or the file and what is wrong with it.
    pub fn load(config_flag: Option<&Path>) -> Result<Settings, SettingsError> {
        let deadline = seconds("ECR_EDGE_TIMEOUT", 0.0, 3600.0, false, DEFAULT_DEADLINE)?;
        let daemon_wait = seconds("ECR_EDGE_DAEMON_WAIT", 0.0, 60.0, true, DEFAULT_DAEMON_WAIT)?;
        let (config_path, _) = config::locate(config_flag);
        let config = config::load(config_flag).map_err(SettingsError::Config)?;
        let socket = match std::env::var_os("ECR_EDGE_SOCKET") {
            Some(v) => (!v.is_empty()).then(|| PathBuf::from(v)),
            None => Some(config.socket_path()),
        };
        Ok(Settings {
            config,
            config_path,
            deadline,
            daemon_wait,
            cache_dir: cache_dir(),
            socket,
            disable_cache: std::env::var_os("AWS_ECR_DISABLE_CACHE").is_some_and(|v| !v.is_empty()),
        })
    }
}

/// A duration in seconds from `name` (`10`, `2.5`): `default` when unset, an error when it is
/// not a number in range (`zero_ok`: whether 0 itself is allowed).
fn seconds(
    name: &'static str,
    min: f64,
    max: f64,
    zero_ok: bool,
    default: Duration,
) -> Result<Duration, SettingsError> {
    let Some(raw) = std::env::var_os(name) else {
        return Ok(default);
    };
    let text = raw.to_string_lossy();
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= min && *s <= max && (zero_ok || *s > 0.0))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| SettingsError::Variable {
            name,
            value: text.chars().take(40).collect(),
            expected: match name {
                "ECR_EDGE_TIMEOUT" => "a number of seconds above 0 and at most 3600",
                _ => "a number of seconds from 0 to 60",
            },
        })
}

/// Why a name has no ECR registry to fetch for.
#[derive(Debug)]
pub enum NotServed {
    /// Neither an ECR host nor a configured alias: another registry's business. Also when the
    /// configuration is unusable, so a pull from another registry never fails because of
    /// ecr-edge.
    NotEcr,
    /// An ECR host, but the settings cannot be loaded.
    Settings(SettingsError),
}

/// The ECR registry `name` (a host, or a server URL as Docker hands it over) stands for,
/// directly or as a `[[registry]] aliases` entry, with the settings to fetch it with: the one
/// alias rule, for every front-end.
///
/// # Errors
/// [`NotServed`]: not an ECR registry, or an ECR registry whose settings are unusable.
pub fn registry_for(name: &str, config: Option<&Path>) -> Result<(Registry, Settings), NotServed> {
    if let Some(registry) = Registry::parse(name) {
        return Settings::load(config)
            .map(|settings| (registry, settings))
            .map_err(NotServed::Settings);
    }
    let host = crate::registry::host_of(name).ok_or(NotServed::NotEcr)?;
    let settings = Settings::load(config).map_err(|_| NotServed::NotEcr)?;
    match settings.config.alias_target(&host).cloned() {
        Some(registry) => Ok((registry, settings)),
        None => Err(NotServed::NotEcr),
    }
}

/// Where the token cache lives, by precedence: `$ECR_EDGE_CACHE_DIR`;
/// `$XDG_RUNTIME_DIR/ecr-edge` (tmpfs: no flash wear, gone at logout); `$HOME/.cache/ecr-edge`;
/// `/tmp/ecr-edge-<uid>` (so the helper works with `HOME` unset, as under systemd).
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("ECR_EDGE_CACHE_DIR") {
        PathBuf::from(dir)
    } else if let Some(run) = var("XDG_RUNTIME_DIR") {
        Path::new(&run).join("ecr-edge")
    } else if let Some(home) = var("HOME") {
        Path::new(&home).join(".cache/ecr-edge")
    } else {
        PathBuf::from(format!("/tmp/ecr-edge-{}", nix::unistd::geteuid()))
    }
}

/// The log level `ECR_EDGE_LOG` asks for (`off`, `error`, `warn`, `info`, `debug`, `trace`),
/// `None` when unset.
///
/// # Errors
/// [`SettingsError::Variable`] for any other value.
pub fn log_level() -> Result<Option<tracing_subscriber::filter::LevelFilter>, SettingsError> {
    let Some(raw) = std::env::var_os("ECR_EDGE_LOG") else {
        return Ok(None);
    };
    let text = raw.to_string_lossy();
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| SettingsError::Variable {
            name: "ECR_EDGE_LOG",
            value: text.chars().take(40).collect(),
            expected: "one of off, error, warn, info, debug, trace",
        })
}
