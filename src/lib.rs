//! ecr-edge: Amazon ECR credentials for edge devices.
//!
//! # Map
//! - [`registry`]: which hosts are ECR, and the API endpoint of each (pure).
//! - [`helper`]: the Docker credential helper protocol, and the cached `get` hot path.
//! - [`cache`]: the per-user token cache, keyed by registry and credential-source identity.
//! - [`config`]: the configuration file (`[iot]`), validated once.
//! - [`configure`]: exact `credHelpers` entries in Docker and containers auth files.
//! - [`credentials`]: naming the credential source without loading it.
//! - [`dns`]: name resolution bounded by the caller's deadline, on detached threads.
//! - [`trust`]: the one TLS trust policy (system store plus Amazon roots).
//! - [`https`]: one HTTPS GET over rustls through the proxy (IoT exchange, doctor probes).
//! - [`elf`]: which CPU an executable was built for.
//! - [`iot`]: the AWS IoT certificate-for-credentials exchange (mutual TLS).
//! - [`doctor`]: diagnose a device that cannot pull.
//! - [`kubelet`]: the kubelet image credential provider, and its k3s/kubelet configuration.
//! - [`ecr`]: fetching a token (the only async and AWS SDK code on the helper path).
//! - [`token`]: a token, its half-life and its expiry margin.
//! - [`files`]: atomic, private, symlink-refusing file access and the cross-process lock.
//! - [`daemon`]: the refresher daemon (timers, backoff, socket server, sinks, systemd).
//! - [`schedule`]: when to refresh and when to retry (pure; shared with the fleet simulation).
//! - [`agent`]: the daemon's socket protocol and the blocking client the helper uses.
//! - [`status`]: `ecr-edge status`, the daemon's state for people and scripts.
//! - [`cli`]: argument parsing and dispatch for the binary.

#![forbid(unsafe_code)]
// Input never panics the helper: library code handles every `Result` (tests may unwrap).
#![warn(clippy::unwrap_used)]

pub mod agent;
pub mod cache;
pub mod cli;
pub mod config;
pub mod configure;
pub mod credentials;
pub mod daemon;
pub mod dns;
pub mod doctor;
pub mod ecr;
pub mod elf;
pub mod files;
pub mod helper;
pub mod https;
pub mod input;
pub mod iot;
pub mod kubelet;
pub mod registry;
pub mod resolve;
pub mod schedule;
pub mod settings;
pub mod status;
pub mod token;
pub mod trust;

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The target triple this binary was built for (`aarch64-unknown-linux-musl`, …).
pub const TARGET: &str = env!("ECR_EDGE_TARGET");

/// When this binary was built, seconds since the epoch (`SOURCE_DATE_EPOCH` if set).
pub const BUILD_EPOCH: i64 = match i64::from_str_radix(env!("ECR_EDGE_BUILD_EPOCH"), 10) {
    Ok(v) => v,
    Err(_) => 0,
};

/// `ecr-edge <version> (<target triple>)`, as `--version` and the helper's `version` print it.
pub fn version_line() -> String {
    format!("ecr-edge {VERSION} ({TARGET})")
}
