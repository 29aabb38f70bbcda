//! ecr-edge: Amazon ECR credentials for edge devices.
//!
//! Data flows one way: a front-end (the Docker helper, the kubelet provider, the daemon's
//! socket) asks resolution for a token; resolution asks the daemon, the cache, or the AWS
//! clients. Every module is private; [`cli`] is the binary's entry, and [`internal`] re-exports
//! what the integration tests, fuzz targets, benchmarks and examples call (nothing else), so
//! unused code is reported.
//!
//! # Map
//! Top to bottom: a module uses only those below it (`tests/layers.rs` checks the source).
//! - [`cli`]: argument parsing, logging set-up, dispatch to the parts below; each part returns
//!   an `Exit`, which `cli::main` alone turns into the process status.
//! - `commands/`: `doctor` (with `elf`), `configure` (the command, and `entries`: the auth-file
//!   edit), `provider_setup` (k3s/kubelet), `status`, `refresh` (a top-up now), `credentials`
//!   (`credential_process`), `iot` (keygen, csr).
//! - `daemon/`: the refresher: `mod` (`run(listener, start, shutdown)`, reload), `state` (each
//!   registry's phase and its pure transitions, the shared state, the shutdown signal),
//!   `refresher` (the schedule loop), `server` (one accept helper with cap, idle eviction and
//!   drain; the socket's requests), `writers` (sinks and the metrics file), `link` (refresh on
//!   link-up: the kernel's routing netlink), `images` (`[daemon] images` checked), timing rules
//!   (`schedule`, pure), `sink`, `endpoint` (local role credentials), `metrics`, `notify`
//!   (systemd), `peer` (socket peer checks).
//! - `frontend/`: the protocol front-ends, each turning outcomes into its client's output in
//!   one place: `helper` (Docker credential helper), `kubelet` (image credential provider).
//! - `resolve`: a usable token for a registry: the daemon, else the cache, else a fetch;
//!   serve-stale; never an expired token.
//! - `agent`: the daemon's socket protocol and the std-only client (shared vocabulary of the
//!   daemon, resolution and `status`).
//! - `aws/`: `ecr` (the token call, its error classes, the token-source trait), `iot` (the
//!   certificate exchange), `credentials` (naming the source; the one region rule), `trust`
//!   (the one TLS trust policy), `dns` (resolution bounded by the caller's deadline), `https`
//!   (the SDK's HTTP client, and plain requests for what the SDK does not do), `traffic` (the
//!   bytes every call moves, per endpoint kind), `outcome` (retry classes and refresh
//!   outcomes), `images` (image preflight: the registry API's manifests and refusals).
//! - `store/`: `files` (atomic, private, symlink-refusing; locks), `cache` (per-user tokens),
//!   `authfile` (Docker/containers auth files edited in place, for `configure` and sinks),
//!   `floor` (the time floor kept across reboots).
//! - `settings`: the configuration file and every `ECR_EDGE_*` variable, read once, and the
//!   alias rule; `config`: the file's schema and its pure parser.
//! - `oracles`: what tests and fuzz targets check errors against (never used by the binary).
//! - `registry` (host and image-reference forms, pure), `token` (tokens, the `Secret` type),
//!   `tpm` (a TPM 2.0 spoken to directly: a device key's public half and signatures),
//!   `input` (bounded reads, errors that never repeat input), `journal` (native systemd journal
//!   entries, never blocking), `exit` (how a command ended; the one mapping to a status).
//! - `clock`: trusted time for a device whose clock may be wrong: the floor, AWS's time from
//!   verified responses, what TLS, signing and expiry read; `set_clock`.
//!
//! Protocol facts the code relies on are in `docs/reference.md`.

#![forbid(unsafe_code)]
// Input never panics the helper: library code handles every `Result` (tests may unwrap).
#![warn(clippy::unwrap_used)]

mod agent;
mod aws;
pub mod cli;
mod clock;
mod commands;
mod config;
mod daemon;
mod exit;
mod frontend;
mod input;
mod journal;
mod oracles;
mod registry;
mod resolve;
mod settings;
mod store;
mod token;
mod tpm;

/// What the integration tests, fuzz targets, benchmarks and examples reach, by the module
/// names they have always used. Not an API: hidden from the documentation.
#[doc(hidden)]
pub mod internal {
    /// The daemon's socket protocol.
    pub mod agent {
        pub use crate::agent::{Reply, Request};
    }
    /// Reading certificates (the fake IoT provider checks client chains with it).
    pub mod cert {
        pub use crate::aws::cert::{parse, spki_parts, Certificate};
    }
    /// The token cache.
    pub mod cache {
        pub use crate::store::cache::Cache;
    }
    /// The configuration file's parser.
    pub mod config {
        pub use crate::config::{parse, Config, IotConfig};
    }
    /// The `credHelpers` edit.
    pub mod configure {
        pub use crate::commands::configure::edit;
    }
    /// Naming the credential source.
    pub mod credentials {
        pub use crate::aws::credentials::Source;
    }
    /// The daemon, for in-process tests under a paused clock.
    pub mod daemon {
        pub use crate::daemon::{run, DaemonError, Start, MAX_CONNECTIONS};
    }
    /// The token call.
    pub mod ecr {
        pub use crate::aws::ecr::{token_from, BoxFuture, FetchError, Fetcher, TokenSource};
    }
    /// File locks.
    pub mod files {
        pub use crate::store::files::{lock_exclusive, lock_exclusive_dir};
    }
    /// The Docker credential helper.
    pub mod helper {
        pub use crate::frontend::helper::{run, Action};
    }
    /// Checks that errors never repeat input.
    pub mod input {
        pub use crate::oracles::{echoed_run, named_host, REFUSAL_WORDS};
    }
    /// The IoT provider's answer parser, and the device identity.
    pub mod iot {
        pub use crate::aws::iot::{parse_response, Device};
    }
    /// Fleet health in an IoT shadow: one update, and a simulated day of them.
    pub mod shadow {
        pub use crate::aws::shadow::{parse_answer, tls, update};
        pub use crate::daemon::shadow::{simulate_day, Day, Trouble};
    }
    /// The kubelet credential provider and its installed configuration.
    pub mod kubelet {
        pub use crate::commands::provider_setup::provider_config;
        pub use crate::frontend::kubelet::{
            go_duration, parse_request, response, run, API_V1, API_V1BETA1,
        };
    }
    /// Registry host forms.
    pub mod registry {
        pub use crate::registry::{host_of, ImageRef, Registry, Service};
    }
    /// Image preflight: the registry API's manifests, errors and platforms.
    pub mod images {
        pub use crate::aws::images::{parse_error, parse_manifest, parse_tags, Manifest, Platform};
    }
    /// Link events from the kernel's routing netlink (the daemon's refresh on link-up).
    pub mod link {
        pub use crate::daemon::link::says_link_may_be_back;
    }
    /// The daemon's timing rules (also the fleet simulation's).
    pub mod schedule {
        pub use crate::aws::Failure;
        pub use crate::daemon::schedule::*;
    }
    /// Tokens.
    pub mod token {
        pub use crate::token::{now, Secret, Token, MIN_REMAINING_SECS};
    }
}

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The target triple this binary was built for (`aarch64-unknown-linux-musl`, …).
pub const TARGET: &str = env!("ECR_EDGE_TARGET");

/// When this binary was built, seconds since the epoch (`SOURCE_DATE_EPOCH` if set).
pub const BUILD_EPOCH: i64 = match i64::from_str_radix(env!("ECR_EDGE_BUILD_EPOCH"), 10) {
    Ok(v) => v,
    Err(_) => 0,
};

/// The commit this binary was built from (`unknown` outside a git clone without
/// `ECR_EDGE_COMMIT`).
pub const COMMIT: &str = env!("ECR_EDGE_COMMIT");

/// The compiler that built it (`rustc --version`).
pub const RUSTC: &str = env!("ECR_EDGE_RUSTC");

/// `--version --verbose`: the version line, then the commit, the build date (the commit's time
/// in a release build: `SOURCE_DATE_EPOCH`), the target, the compiler, the cargo features and
/// where the dependency list lives.
pub fn version_verbose() -> String {
    let features: Vec<&str> = [
        ("ecr-public", cfg!(feature = "ecr-public")),
        ("sso", cfg!(feature = "sso")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    format!(
        "{}\ncommit: {COMMIT}\nbuild date: {}\ntarget: {TARGET}\ncompiler: {RUSTC}\n\
         features: {}\ndependencies: embedded in the .dep-v0 section when built with cargo \
         auditable (`cargo audit bin`, Trivy, Grype and Syft read it); the SBOM is \
         /usr/share/doc/ecr-edge/sbom.cdx.json\n",
        version_line(),
        crate::clock::rfc3339(BUILD_EPOCH),
        if features.is_empty() {
            "none".to_owned()
        } else {
            features.join(", ")
        }
    )
}

/// `ecr-edge <version> (<target triple>)`, as `--version` and the helper's `version` print it.
pub fn version_line() -> String {
    format!("ecr-edge {VERSION} ({TARGET})")
}
