//! Resolution: a usable token for a registry, the one path every front-end (the Docker helper,
//! the kubelet provider) takes.
//!
//! In order: the daemon, when one answers for this credential source (its tokens are printed,
//! never written to disk); the per-user cache while its token is before half-life; a fetch from
//! ECR under a per-key lock, so that concurrent helpers make one upstream call between them.
//! When a fetch fails and the cached token is still usable it is served with a warning
//! (serve-stale); an expired token is never returned from any of them. The cached path reads
//! one small file: no async runtime, no AWS configuration, no network.

use std::fmt;
use std::time::Instant;

use crate::agent;
use crate::aws::credentials::Source;
use crate::aws::ecr::{self, FetchError};
use crate::registry::Registry;
use crate::settings::Settings;
use crate::store::cache::Cache;
use crate::store::files::FilesError;
use crate::token::{self, Token};

/// Why no usable token could be had. [`fmt::Display`] is the cause, in words; the front-end
/// adds the registry host and its own framing.
#[derive(Debug)]
pub enum ResolveError {
    /// Fetching failed and nothing usable was cached.
    Fetch(FetchError),
    /// Another process held the cache lock past the deadline and nothing usable was cached.
    Busy(FilesError),
    /// The daemon answered for this registry and could not get a usable token.
    Daemon(String),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Fetch(e) => e.fmt(f),
            ResolveError::Busy(e) => e.fmt(f),
            ResolveError::Daemon(message) => write!(f, "{message} (from the ecr-edge daemon)"),
        }
    }
}

impl std::error::Error for ResolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ResolveError::Fetch(e) => Some(e),
            ResolveError::Busy(e) => Some(e),
            ResolveError::Daemon(_) => None,
        }
    }
}

/// A usable token for `registry`: from the daemon when one answers for the configured
/// credential source (its `fetched_at` is then when the daemon's answer came), else
/// [`cached_or_fetched`].
///
/// # Errors
/// [`ResolveError`] naming why no usable token could be had; never an expired token.
pub fn token(registry: &Registry, settings: &Settings) -> Result<Token, ResolveError> {
    token_from(
        registry,
        &Source::for_registry(&settings.config, registry.host()),
        settings,
    )
}

/// [`token`] with credentials from `source`. A pod's service-account identity
/// ([`Source::WebIdentity`]) is fetched every time: the kubelet caches its answer per service
/// account, and a token for one pod's role is kept nowhere else.
///
/// # Errors
/// [`ResolveError`] naming why no usable token could be had; never an expired token.
pub fn token_from(
    registry: &Registry,
    source: &Source,
    settings: &Settings,
) -> Result<Token, ResolveError> {
    if matches!(source, Source::WebIdentity { .. }) {
        return ecr::fetch(registry, source, settings.deadline).map_err(ResolveError::Fetch);
    }
    if let Some(served) = from_daemon(settings, registry, source)? {
        return Ok(served);
    }
    if settings.disable_cache {
        return ecr::fetch(registry, source, settings.deadline).map_err(ResolveError::Fetch);
    }
    cached_or_fetched(registry, source, settings)
}

/// The daemon's token, when a daemon answers for this credential source; `Ok(None)` when the
/// caller should do the work itself (no daemon, no answer within the daemon wait, refused, or
/// another identity).
fn from_daemon(
    settings: &Settings,
    registry: &Registry,
    source: &Source,
) -> Result<Option<Token>, ResolveError> {
    let Some(socket) = &settings.socket else {
        return Ok(None);
    };
    // Connect first: with no daemon this is the only cost (one failed connect).
    let stream = match agent::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("{e} at {}", socket.display());
            return Ok(None);
        }
    };
    let request = agent::Request::Get {
        registry: registry.host().to_owned(),
        identity: source.identity().to_string(),
    };
    match agent::exchange(stream, &request, settings.daemon_wait, settings.deadline) {
        Ok(agent::Reply::Token {
            password,
            expires_at,
        }) if token::usable(expires_at, token::now()) => {
            tracing::debug!(registry = registry.host(), "served by the daemon");
            Ok(Some(Token {
                password,
                expires_at,
                fetched_at: token::now(),
            }))
        }
        Ok(agent::Reply::Error { message }) => Err(ResolveError::Daemon(message)),
        Ok(agent::Reply::Refused { reason }) => {
            tracing::debug!("daemon refused: {reason}; fetching here");
            Ok(None)
        }
        Ok(_) => {
            tracing::debug!("daemon gave no usable token; fetching here");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!("daemon at {}: {e}; fetching here", socket.display());
            Ok(None)
        }
    }
}

/// A usable token for `registry` from `source`: from the cache while it is before half-life,
/// else fetched (and cached).
///
/// When fetching fails but the cached token is still usable, the cached one is served and a
/// warning logged; an expired token is never returned.
///
/// # Errors
/// [`ResolveError::Fetch`] or [`ResolveError::Busy`] when nothing usable could be had.
pub fn cached_or_fetched(
    registry: &Registry,
    source: &Source,
    settings: &Settings,
) -> Result<Token, ResolveError> {
    let identity = source.identity();
    let host = registry.host();
    let cache = match Cache::open(settings.cache_dir.clone()) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("token cache disabled: {e}");
            None
        }
    };
    let cached = cache.as_ref().and_then(|c| c.get(host, identity.as_str()));
    if let Some(t) = &cached {
        if fresh_by_a_known_clock(t) {
            tracing::debug!(registry = host, expires_at = t.expires_at, "cache hit");
            return Ok(t.clone());
        }
    }

    // Slow path.
    tracing::debug!(
        registry = host,
        cached = cached.is_some(),
        "cache miss or past half-life"
    );
    let deadline = settings.deadline;
    let start = Instant::now();
    let _lock = match &cache {
        Some(c) => match c.lock(host, identity.as_str(), start + deadline) {
            Ok(lock) => Some(lock),
            Err(cause) => {
                return serve_stale(cache.as_ref(), host, identity.as_str(), cached)
                    .ok_or(ResolveError::Busy(cause))
            }
        },
        None => None,
    };
    // Another helper may have refreshed while we waited for the lock.
    let cached = cache
        .as_ref()
        .and_then(|c| c.get(host, identity.as_str()))
        .or(cached);
    if let Some(t) = &cached {
        if fresh_by_a_known_clock(t) {
            return Ok(t.clone());
        }
    }
    // Before talking to AWS: the latest floor this device kept (src/clock.rs), so that a clock
    // without a battery judges certificates no earlier than the last time AWS gave.
    let floor = crate::store::floor::FloorFile::open(&settings.cache_dir, 0o600);
    if let Some(kept) =
        crate::store::floor::read_floor(std::path::Path::new(crate::store::floor::DAEMON_FLOOR))
    {
        crate::clock::raise_floor(kept);
    }
    let remaining = deadline.saturating_sub(start.elapsed());
    tracing::debug!(
        registry = host,
        endpoint = registry.endpoint(),
        "fetching token"
    );
    match ecr::fetch(registry, source, remaining) {
        Ok(token) => {
            tracing::debug!(
                registry = host,
                expires_at = token.expires_at,
                "token fetched"
            );
            if let Some(c) = &cache {
                if let Err(e) = c.put(host, identity.as_str(), &token) {
                    tracing::warn!("token not cached: {e}");
                }
                if let Err(e) = floor.save() {
                    tracing::debug!("time floor not kept: {e}");
                }
            }
            Ok(token)
        }
        Err(cause) => serve_stale(cache.as_ref(), host, identity.as_str(), cached)
            .ok_or(ResolveError::Fetch(cause)),
    }
}

/// Whether a cached token may be served as it is: before half-life by a clock not known to be
/// wrong. A clock behind the floor, or behind the moment the token was fetched, is wrong, and
/// then how old the token really is cannot be told without asking AWS.
fn fresh_by_a_known_clock(t: &Token) -> bool {
    let clock = crate::clock::read();
    clock.known() && clock.now() >= t.fetched_at && t.is_fresh(clock.now())
}

/// The cached token when it is still usable after a failed refresh, with a warning.
fn serve_stale(
    cache: Option<&Cache>,
    host: &str,
    identity: &str,
    cached: Option<Token>,
) -> Option<Token> {
    let latest = cache.and_then(|c| c.get(host, identity)).or(cached)?;
    let clock = crate::clock::read();
    let now = clock.now();
    // A clock known to be wrong cannot tell whether the token has expired: never served then.
    if clock.known() && now >= latest.fetched_at && latest.is_usable(now) {
        tracing::warn!(
            "refresh failed; serving cached token for {host} valid for {} more seconds",
            latest.expires_at.saturating_sub(now)
        );
        Some(latest)
    } else {
        None
    }
}
