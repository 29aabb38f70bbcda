//! `ecr-edge daemon`: keeps tokens warm and serves them to the helper over a Unix socket.
//!
//! [`main`] sets up (configuration, credential source, socket, signals) and calls [`run`] with
//! the bound listener and a shutdown future, as mini-redis's server does; tests call [`run`]
//! with their own listener, token source and shutdown, under tokio's paused clock. One
//! current-thread runtime runs: one refresh task per registry, started by the scheduler when
//! its timer fires (no polling: an idle daemon sleeps until the earliest refresh); the socket
//! server, one task per connection, at most [`MAX_CONNECTIONS`] at once; the sink writer
//! (file work on a blocking thread); the systemd watchdog; and reloads on request (SIGHUP).
//! On shutdown it stops accepting, lets the connections in progress finish (at most [`DRAIN`]),
//! then stops the rest. State lives in one `State` behind a mutex that is never held across
//! an `.await`.
//!
//! Token lifetimes are tracked on the monotonic clock from the moment a token arrives (at most
//! the 12 hours ECR grants), so a wall clock that jumps (a device without an RTC setting its
//! time from NTP after boot) neither expires nor prolongs a token. Tokens live in memory only;
//! nothing the daemon serves is written to disk except by a configured sink.

pub mod agent;
mod endpoint;
mod metrics;
mod notify;
mod peer;
pub mod schedule;
pub mod sink;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio::time::Instant;

use self::agent::{RegistryStatus, Reply, Request, StatusReport};
use self::schedule::{Backoff, SystemJitter};
use crate::aws::credentials::Source;
use crate::aws::ecr::{FetchError, TokenSource};
use crate::config::{Config, DaemonConfig, RefreshMode, SinkConfig};
use crate::registry::Registry;
use crate::settings::SettingsError;
use crate::token::{self, Token, MIN_REMAINING_SECS};

use self::notify::Notifier;
use self::peer::Policy;

/// Registries added on demand beyond the configured ones, at most.
pub const MAX_ON_DEMAND: usize = 32;

/// Client connections served at once. A connection lives one request (a few milliseconds, or
/// up to the fetch deadline while a token is fetched); a burst of pulls beyond this waits in the
/// socket's listen queue instead of growing the daemon without bound.
pub const MAX_CONNECTIONS: usize = 64;

/// How long shutdown waits for the connections in progress to get their answers.
pub const DRAIN: Duration = Duration::from_secs(2);

/// Why the daemon could not start.
#[derive(Debug)]
pub enum DaemonError {
    /// The configuration file or an `ECR_EDGE_*` variable is unusable.
    Settings(SettingsError),
    /// The credential source cannot work (device identity files, …).
    Credentials(FetchError),
    /// The socket could not be set up.
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The runtime or signal handlers could not be set up.
    Runtime(std::io::Error),
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::Settings(e) => e.fmt(f),
            DaemonError::Credentials(e) => write!(f, "credentials: {e}"),
            DaemonError::Socket { path, detail } => {
                write!(f, "socket {}: {detail}", path.display())
            }
            DaemonError::Runtime(e) => write!(f, "runtime: {e}"),
        }
    }
}

impl std::error::Error for DaemonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DaemonError::Settings(e) => Some(e),
            DaemonError::Credentials(e) => Some(e),
            DaemonError::Runtime(e) => Some(e),
            DaemonError::Socket { .. } => None,
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT; SIGHUP reloads the configuration. `config` is the
/// `--config` path, if any.
///
/// # Errors
/// [`DaemonError`] when it cannot start; once running, failures are logged and retried.
pub fn main(config: Option<&Path>) -> Result<(), DaemonError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let result = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let start = Start::from_config(config.map(Path::to_owned)).await?;
        let listener = bind(&start.socket)?;
        let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
        let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
        let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Runtime)?;
        let reload = start.reload.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                reload.notify_one();
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        run(listener, start, shutdown).await
    });
    // A sink write waiting for another program's lock must not hold the exit for long.
    runtime.shutdown_timeout(DRAIN);
    result
}

/// What [`run`] starts with.
pub struct Start {
    /// The `--config` path (re-read on reload), if any.
    pub config_path: Option<PathBuf>,
    /// The configuration as loaded.
    pub config: Config,
    /// Where tokens and role credentials come from.
    pub source: Arc<dyn TokenSource>,
    /// The socket path (removed on shutdown).
    pub socket: PathBuf,
    /// The deadline of one refresh attempt.
    pub deadline: Duration,
    /// Notified to re-read the configuration (SIGHUP in [`main`]).
    pub reload: Arc<Notify>,
}

impl Start {
    /// Loads the configuration and builds the AWS client for its credential source.
    ///
    /// # Errors
    /// [`DaemonError`] for an invalid configuration or an unusable credential source.
    pub async fn from_config(config_path: Option<PathBuf>) -> Result<Start, DaemonError> {
        let settings = crate::settings::Settings::load(config_path.as_deref())
            .map_err(DaemonError::Settings)?;
        let daemon = daemon_config(&settings.config);
        let source = Source::select(&settings.config);
        let client = client_for(&source, &daemon, settings.deadline).await?;
        Ok(Start {
            config_path,
            // ECR_EDGE_SOCKET set empty means "no daemon" to a helper; the daemon itself
            // still needs a socket, so it takes the configured one.
            socket: settings
                .socket
                .unwrap_or_else(|| settings.config.socket_path()),
            config: settings.config,
            source: client,
            deadline: settings.deadline,
            reload: Arc::new(Notify::new()),
        })
    }
}

/// A token and when it stops being usable, on the monotonic clock.
#[derive(Clone)]
struct Held {
    token: Token,
    expires: Instant,
}

impl Held {
    fn usable(&self, now: Instant) -> bool {
        self.expires.saturating_duration_since(now)
            >= Duration::from_secs(MIN_REMAINING_SECS as u64)
    }
}

struct Entry {
    registry: Registry,
    /// The credential source this registry is fetched with (its `[[registry]]` table, else
    /// the daemon's default): a request naming another identity is refused.
    identity: String,
    on_demand: bool,
    held: Option<Held>,
    last_refresh: Option<i64>,
    last_error: Option<String>,
    backoff: Backoff,
    /// When the scheduler starts the next attempt ([`idle`] under `refresh = "on-demand"`
    /// until a request needs one).
    next: Instant,
    /// When an attempt is due by the schedule (after half the token's life, or the backoff):
    /// `next` itself ahead of need; under `refresh = "on-demand"`, what a request checks.
    due: Instant,
    in_flight: bool,
    /// Attempts completed; a waiting client watches it move.
    attempts: u64,
    /// Attempts by outcome, for metrics and status.
    refreshes: agent::Outcomes,
}

impl Entry {
    fn new(
        registry: Registry,
        identity: String,
        on_demand: bool,
        cap: Duration,
        mode: RefreshMode,
    ) -> Entry {
        Entry {
            registry,
            identity,
            on_demand,
            held: None,
            last_refresh: None,
            last_error: None,
            backoff: Backoff::new(cap),
            next: match mode {
                RefreshMode::Ahead => Instant::now(),
                RefreshMode::OnDemand => idle(),
            },
            due: Instant::now(),
            in_flight: false,
            attempts: 0,
            refreshes: agent::Outcomes::default(),
        }
    }

    fn usable(&self, now: Instant) -> Option<&Held> {
        self.held.as_ref().filter(|h| h.usable(now))
    }

    /// Under `refresh = "on-demand"`: a request arrived; start the attempt the schedule says
    /// is due (none while a backoff runs). Returns whether one was started.
    fn requested(&mut self, now: Instant) -> bool {
        if self.in_flight || !is_idle(self.next, now) || self.due > now {
            return false;
        }
        self.next = now;
        true
    }
}

/// "Not scheduled": far enough ahead that no timer fires (under `refresh = "on-demand"`).
fn idle() -> Instant {
    Instant::now() + Duration::from_secs(10 * 365 * 86_400)
}

fn is_idle(next: Instant, now: Instant) -> bool {
    next.saturating_duration_since(now) > Duration::from_secs(5 * 365 * 86_400)
}

struct Settings {
    /// The default source's identity (registries without a `[[registry]]` table).
    identity: String,
    /// The configuration, for each registry's own source.
    config: Config,
    policy: Policy,
    sinks: Vec<SinkConfig>,
    backoff_cap: Duration,
    configured: Vec<String>,
    metrics_file: Option<PathBuf>,
    refresh: RefreshMode,
}

/// A client per source identity (a handful at most, so a list).
#[derive(Default)]
struct Clients(Vec<(String, Arc<dyn TokenSource>)>);

impl Clients {
    fn get(&self, identity: &str) -> Option<&Arc<dyn TokenSource>> {
        self.0.iter().find(|(id, _)| id == identity).map(|(_, c)| c)
    }

    /// The client kept for `identity`: `client` unless one is already there.
    fn keep(&mut self, identity: &str, client: Arc<dyn TokenSource>) -> Arc<dyn TokenSource> {
        if let Some(c) = self.get(identity) {
            return c.clone();
        }
        self.0.push((identity.to_owned(), client.clone()));
        client
    }
}

struct State {
    entries: BTreeMap<String, Entry>,
    settings: Settings,
    /// The default source's client (registries without a table; the credentials endpoint).
    client: Arc<dyn TokenSource>,
    /// A client per source identity in use, the default's included; built when first needed.
    clients: Clients,
    /// Base credentials shared by the clients: one IoT exchange or profile feeds every role.
    bases: crate::aws::ecr::Bases,
    ready: bool,
    /// Role credentials for the local credentials endpoint, when it is on.
    credentials: Option<endpoint::HeldCredentials>,
    /// Socket requests by answer.
    requests: agent::Requests,
    /// notAfter of the device certificate, when `[iot]` is configured and loads.
    device_not_after: Option<i64>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the scheduler: a new entry, a finished attempt, a reload.
    wake: Notify,
    /// Wakes clients waiting for an attempt to finish.
    changed: Notify,
    /// Wakes the sink writer: the tokens changed.
    sinks_due: Notify,
    /// Wakes the metrics writer: something it reports changed.
    metrics_due: Notify,
    notifier: Notifier,
    started_at: i64,
    config_path: Option<PathBuf>,
    socket_gid: u32,
    /// The deadline of one refresh attempt (`ECR_EDGE_TIMEOUT`, default 10 s).
    deadline: Duration,
    /// What only a restart changes: the socket and the credentials endpoint.
    fixed: (Option<PathBuf>, Option<String>),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic aborts the process (panic = "abort"), so the lock is never poisoned in use.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn daemon_config(config: &Config) -> DaemonConfig {
    config.daemon.clone().unwrap_or_default()
}

/// The daemon's client for `source`: one SDK attempt per refresh (the daemon schedules its own
/// retries).
async fn client_for(
    source: &Source,
    daemon: &DaemonConfig,
    deadline: Duration,
) -> Result<Arc<dyn TokenSource>, DaemonError> {
    let client = crate::aws::ecr::Client::new(source, &home_region(source, daemon), deadline, 1)
        .await
        .map_err(DaemonError::Credentials)?;
    Ok(Arc::new(client))
}

/// The region the daemon's client calls STS in ([`crate::aws::credentials::home_region`], with the
/// first configured registry's region as the fallback).
fn home_region(source: &Source, daemon: &DaemonConfig) -> String {
    let first = daemon.registries.iter().find_map(|r| Registry::parse(r));
    crate::aws::credentials::home_region(source, first.as_ref().map(Registry::region))
}

fn settings(config: &Config, daemon: &DaemonConfig, socket_gid: u32) -> Settings {
    let source = Source::select(config);
    let own_uid = nix::unistd::geteuid().as_raw();
    let mut uids = daemon
        .allowed_uids
        .clone()
        .unwrap_or_else(|| vec![0, own_uid]);
    uids.dedup();
    Settings {
        identity: source.identity(),
        config: config.clone(),
        policy: Policy {
            uids,
            gids: daemon
                .allowed_gids
                .clone()
                .unwrap_or_else(|| vec![socket_gid]),
        },
        sinks: daemon.sinks.clone(),
        backoff_cap: Duration::from_secs(daemon.backoff_max),
        configured: daemon.registries.clone(),
        metrics_file: daemon.metrics_file.clone(),
        refresh: daemon.refresh,
    }
}

/// Serves `listener` until `shutdown` completes: refreshes, the socket, sinks, the watchdog
/// and, when configured, the local credentials endpoint.
///
/// # Errors
/// [`DaemonError`] when the credentials endpoint cannot be set up; once running, failures are
/// logged and retried.
pub async fn run(
    listener: UnixListener,
    start: Start,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let Start {
        config_path,
        config,
        source: client,
        socket: socket_path,
        deadline,
        reload: reload_requests,
    } = start;
    let daemon = daemon_config(&config);
    let socket_gid = std::fs::metadata(&socket_path)
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .unwrap_or(0);
    let settings = settings(&config, &daemon, socket_gid);
    let mut entries = BTreeMap::new();
    for host in &settings.configured {
        if let Some(r) = Registry::parse(host) {
            let identity = Source::for_registry(&config, host).identity();
            entries.insert(
                host.clone(),
                Entry::new(r, identity, false, settings.backoff_cap, settings.refresh),
            );
        }
    }
    let mut clients = Clients::default();
    clients.keep(&settings.identity, client.clone());
    let bases = client.bases().unwrap_or_default();
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            entries,
            settings,
            client,
            clients,
            bases,
            ready: false,
            credentials: None,
            requests: agent::Requests::default(),
            device_not_after: device_not_after(&config),
        }),
        wake: Notify::new(),
        changed: Notify::new(),
        sinks_due: Notify::new(),
        metrics_due: Notify::new(),
        notifier: Notifier::from_env(),
        started_at: token::now(),
        config_path,
        socket_gid,
        deadline,
        fixed: (
            Some(socket_path.clone()),
            daemon.credentials_endpoint.clone(),
        ),
    });
    let (registries, identity) = {
        let st = shared.lock();
        (st.entries.len(), st.settings.identity.clone())
    };
    tracing::info!(
        socket = %socket_path.display(),
        registries,
        identity = %identity,
        "{} started",
        crate::version_line()
    );
    mark_ready_if_done(&shared);

    let mut background = Vec::new();
    if let Some(addr) = &daemon.credentials_endpoint {
        let fail = |detail: String| DaemonError::Socket {
            path: PathBuf::from(addr),
            detail,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let token = endpoint::write_token(&daemon.credentials_token_file).map_err(fail)?;
        tracing::info!(
            endpoint = %addr,
            token_file = %daemon.credentials_token_file.display(),
            "credentials endpoint listening"
        );
        background.push(tokio::spawn(endpoint::refresh_loop(shared.clone())));
        background.push(tokio::spawn(endpoint::serve(
            listener,
            shared.clone(),
            Arc::from(token),
        )));
    }
    background.push(tokio::spawn(schedule_loop(shared.clone())));
    background.push(tokio::spawn(metrics_loop(shared.clone())));
    background.push(tokio::spawn(sink_loop(shared.clone())));
    if let Some(every) = notify::watchdog_interval() {
        let shared = shared.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                shared.notifier.send("WATCHDOG=1");
            }
        }));
    }
    {
        let shared = shared.clone();
        background.push(tokio::spawn(async move {
            loop {
                reload_requests.notified().await;
                reload(&shared).await;
            }
        }));
    }

    // Connections: each holds a permit (the cap) and a sender; the drain below waits until
    // every sender is gone, that is, until every connection has had its answer.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let server = tokio::spawn(accept_loop(listener, shared.clone(), done_tx));
    shutdown.await;
    shared.notifier.send("STOPPING=1");
    server.abort();
    let _ = server.await;
    if tokio::time::timeout(DRAIN, done_rx.recv()).await.is_err() {
        tracing::warn!(
            "connections still open after {}s; stopping anyway",
            DRAIN.as_secs()
        );
    }
    for task in background {
        task.abort();
    }
    if daemon.credentials_endpoint.is_some() {
        let _ = std::fs::remove_file(&daemon.credentials_token_file);
    }
    remove_socket(&socket_path);
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: re-reads the configuration. An invalid file is reported and the running
/// configuration kept. The clients are built again, so credentials renewed on disk (a rotated
/// device certificate, a profile's new keys) are what the next fetch uses; a changed credential
/// source also drops the tokens obtained with the old one.
async fn reload(shared: &Arc<Shared>) {
    shared.notifier.send("RELOADING=1");
    let result = async {
        let loaded = crate::settings::Settings::load(shared.config_path.as_deref())
            .map_err(DaemonError::Settings)?;
        let config = loaded.config;
        let daemon = daemon_config(&config);
        let source = Source::select(&config);
        let new = settings(&config, &daemon, shared.socket_gid);
        let socket = loaded.socket.unwrap_or_else(|| config.socket_path());
        if (Some(socket), daemon.credentials_endpoint.clone()) != shared.fixed {
            tracing::warn!(
                "socket and credentials_endpoint changes take effect at the next restart"
            );
        }
        let client = client_for(&source, &daemon, shared.deadline).await?;
        let mut st = shared.lock();
        if new.identity != st.settings.identity {
            // Another device identity: nothing resolved with the old one is kept.
            st.entries.clear();
        }
        // No exchanged or loaded credentials survive a reload; tokens already held do.
        st.bases = client.bases().unwrap_or_default();
        st.clients = Clients::default();
        st.clients.keep(&new.identity, client.clone());
        st.client = client;
        // A registry whose source changed starts over with the new one.
        st.entries.retain(|host, e| {
            (e.on_demand || new.configured.contains(host))
                && Source::for_registry(&config, host).identity() == e.identity
        });
        for host in &new.configured {
            match st.entries.get_mut(host) {
                Some(e) => e.on_demand = false,
                None => {
                    if let Some(r) = Registry::parse(host) {
                        let identity = Source::for_registry(&config, host).identity();
                        st.entries.insert(
                            host.clone(),
                            Entry::new(r, identity, false, new.backoff_cap, new.refresh),
                        );
                    }
                }
            }
        }
        for e in st.entries.values_mut() {
            e.backoff = Backoff::new(new.backoff_cap);
        }
        // A change of `refresh` applies to what is held now.
        let now = Instant::now();
        for e in st.entries.values_mut().filter(|e| !e.in_flight) {
            e.next = match new.refresh {
                RefreshMode::Ahead if is_idle(e.next, now) => e.due,
                RefreshMode::Ahead => e.next,
                RefreshMode::OnDemand => idle(),
            };
        }
        st.settings = new;
        st.device_not_after = device_not_after(&config);
        Ok::<usize, DaemonError>(st.entries.len())
    }
    .await;
    match result {
        Ok(n) => tracing::info!(registries = n, "configuration reloaded"),
        Err(e) => tracing::error!("reload failed, keeping the running configuration: {e}"),
    }
    shared.wake.notify_one();
    shared.metrics_due.notify_one();
    shared
        .notifier
        .send(&format!("READY=1\nSTATUS={}", status_line(shared)));
}

/// Starts a refresh for every due registry, then sleeps until the next one is due or something
/// changes.
async fn schedule_loop(shared: Arc<Shared>) {
    loop {
        let now = Instant::now();
        let mut next_due: Option<Instant> = None;
        let mut due = Vec::new();
        {
            let mut st = shared.lock();
            for (host, e) in st.entries.iter_mut() {
                if e.in_flight {
                    continue;
                }
                if e.next <= now {
                    e.in_flight = true;
                    due.push((host.clone(), e.registry.clone(), e.identity.clone()));
                } else {
                    next_due = Some(next_due.map_or(e.next, |n| n.min(e.next)));
                }
            }
        }
        for (host, registry, identity) in due {
            tokio::spawn(refresh(shared.clone(), host, registry, identity));
        }
        let wake = shared.wake.notified();
        match next_due {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake => {}
                }
            }
            None => wake.await,
        }
    }
}

/// One refresh attempt for `host`, then its next time.
/// The client for `identity`, built (and kept) the first time a registry needs it. `Ok(None)`
/// when the configuration no longer gives `host` that identity (a reload raced this refresh).
async fn client_for_identity(
    shared: &Shared,
    registry: &Registry,
    identity: &str,
) -> Result<Option<Arc<dyn TokenSource>>, FetchError> {
    let (source, bases) = {
        let st = shared.lock();
        if let Some(c) = st.clients.get(identity) {
            return Ok(Some(c.clone()));
        }
        let source = Source::for_registry(&st.settings.config, registry.host());
        if source.identity() != identity {
            return Ok(None);
        }
        (source, st.bases.clone())
    };
    let region = crate::aws::credentials::home_region(&source, Some(registry.region()));
    let client: Arc<dyn TokenSource> = Arc::new(
        crate::aws::ecr::Client::sharing(&source, &region, shared.deadline, 1, &bases).await?,
    );
    tracing::info!(source = %source.describe(), "credential source ready");
    let mut st = shared.lock();
    Ok(Some(st.clients.keep(identity, client)))
}

async fn refresh(shared: Arc<Shared>, host: String, registry: Registry, identity: String) {
    tracing::debug!(registry = %host, "refreshing");
    let (client, result) = match client_for_identity(&shared, &registry, &identity).await {
        Ok(Some(client)) => {
            let result = client.fetch(&registry).await;
            (Some(client), result)
        }
        Ok(None) => (
            None,
            Err(FetchError::BadResponse {
                detail: "the configuration changed during the refresh".into(),
            }),
        ),
        Err(e) => (None, Err(e)),
    };
    let now = Instant::now();
    let wall = token::now();
    let mut jitter = SystemJitter;
    {
        let mut st = shared.lock();
        let current = st.clients.get(&identity);
        let stale = match (&client, current) {
            (Some(mine), Some(now_used)) => !Arc::ptr_eq(mine, now_used),
            (Some(_), None) => true,
            (None, _) => st.entries.get(&host).is_none_or(|e| e.identity != identity),
        };
        if stale {
            // The credential source changed while this ran; its result is for the old one.
            if let Some(e) = st.entries.get_mut(&host) {
                e.in_flight = false;
            }
            drop(st);
            shared.wake.notify_one();
            return;
        }
        let mode = st.settings.refresh;
        let Some(e) = st.entries.get_mut(&host) else {
            return;
        };
        e.in_flight = false;
        e.attempts += 1;
        *e.refreshes.get_mut(match &result {
            Ok(_) => "ok",
            Err(err) => err.outcome(),
        }) += 1;
        match result {
            Ok(token) => {
                let life = schedule::token_life(token.expires_at, wall);
                let delay = schedule::refresh_delay(life, &mut jitter);
                tracing::info!(
                    registry = %host,
                    expires_at = token.expires_at,
                    next_refresh_in_s = delay.as_secs(),
                    "token refreshed"
                );
                e.held = Some(Held {
                    token,
                    expires: now + life,
                });
                e.backoff.reset();
                e.last_refresh = Some(wall);
                e.last_error = None;
                e.due = now + delay;
            }
            Err(err) => {
                let delay = e.backoff.next(err.failure(), &mut jitter);
                let still = e.usable(now).map(|h| h.expires - now);
                tracing::warn!(
                    registry = %host,
                    outcome = err.outcome(),
                    failures = e.backoff.failures(),
                    retry_in_s = delay.as_secs_f32(),
                    token_valid_for_s = still.map(|d| d.as_secs()),
                    "refresh failed: {err}"
                );
                if still.is_none() {
                    e.held = None;
                }
                e.last_error = Some(err.to_string());
                e.due = now + delay;
            }
        }
        e.next = match mode {
            RefreshMode::Ahead => e.due,
            RefreshMode::OnDemand => idle(),
        };
    }
    shared.sinks_due.notify_one();
    shared.metrics_due.notify_one();
    mark_ready_if_done(&shared);
    shared.changed.notify_waiters();
    shared.wake.notify_one();
}

/// After the first round (every configured registry tried once): `READY=1`. Always refreshes
/// `STATUS=`.
fn mark_ready_if_done(shared: &Shared) {
    let became_ready = {
        let mut st = shared.lock();
        // On demand, nothing is fetched before it is asked for: ready at once.
        let done = st.settings.refresh == RefreshMode::OnDemand
            || st
                .entries
                .values()
                .filter(|e| !e.on_demand)
                .all(|e| e.attempts > 0);
        let became = done && !st.ready;
        st.ready |= done;
        became
    };
    let status = status_line(shared);
    if became_ready {
        shared.notifier.send(&format!("READY=1\nSTATUS={status}"));
    } else {
        shared.notifier.send(&format!("STATUS={status}"));
    }
}

fn status_line(shared: &Shared) -> String {
    let st = shared.lock();
    let now = Instant::now();
    let total = st.entries.len();
    let good = st
        .entries
        .values()
        .filter(|e| e.usable(now).is_some())
        .count();
    let failing = st
        .entries
        .values()
        .filter(|e| e.last_error.is_some())
        .count();
    let next = st
        .entries
        .values()
        .filter(|e| !is_idle(e.next, now))
        .map(|e| e.next.saturating_duration_since(now))
        .min();
    let mut s = format!("{good}/{total} registries have a token");
    if failing > 0 {
        s.push_str(&format!(", {failing} failing"));
    }
    if let Some(n) = next {
        s.push_str(&format!(", next refresh in {}s", n.as_secs()));
    }
    s
}

/// The sink writer: after each change of tokens, brings every sink file up to date on a
/// blocking thread. File work (a directory lock another program may hold for seconds, two
/// fsyncs) never runs on the runtime's thread, which serves the socket, the timers and the
/// watchdog; changes that arrive while a write is under way are coalesced into one more write
/// of the latest tokens.
/// notAfter of the `[iot]` device certificate, when it loads.
fn device_not_after(config: &Config) -> Option<i64> {
    let iot = config.iot.as_ref()?;
    crate::aws::iot::Device::load(iot, token::now())
        .ok()
        .map(|d| d.not_after)
}

/// Rewrites `[daemon] metrics_file` after each change, at most once a second (a burst of
/// pulls is one write). The path is read each time, so a reload can turn it on or off.
async fn metrics_loop(shared: Arc<Shared>) {
    loop {
        let path = shared.lock().settings.metrics_file.clone();
        if let Some(path) = path {
            let text = metrics::render(&report(&shared));
            let written = tokio::task::spawn_blocking(move || {
                crate::store::files::write_atomic(&path, text.as_bytes(), 0o644)
                    .map_err(|e| e.to_string())
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("metrics not written: {e}"),
                Err(e) => tracing::warn!("metrics writer stopped unexpectedly: {e}"),
            }
        }
        shared.metrics_due.notified().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn sink_loop(shared: Arc<Shared>) {
    loop {
        shared.sinks_due.notified().await;
        let snapshot = {
            let st = shared.lock();
            let now = Instant::now();
            // Each registry under its own name and its aliases: a consumer reading the file
            // looks the image's host up as it is written.
            let tokens: Vec<(String, Option<crate::token::Secret>)> = st
                .entries
                .iter()
                .flat_map(|(h, e)| {
                    let password = e.usable(now).map(|h| h.token.password.clone());
                    let aliases = st
                        .settings
                        .config
                        .registry(h)
                        .map(|r| r.aliases.as_slice())
                        .unwrap_or_default();
                    std::iter::once(h.clone())
                        .chain(aliases.iter().cloned())
                        .map(move |name| (name, password.clone()))
                })
                .collect();
            (st.settings.sinks.clone(), tokens)
        };
        if snapshot.0.is_empty() {
            continue;
        }
        if let Err(e) =
            tokio::task::spawn_blocking(move || write_sinks(&snapshot.0, &snapshot.1)).await
        {
            tracing::warn!("sink writer stopped unexpectedly: {e}");
        }
    }
}

/// Brings every sink file up to date with the usable tokens (and removes entries whose token
/// is gone). Blocking. Failures are logged; the next change tries again.
fn write_sinks(sinks: &[SinkConfig], tokens: &[(String, Option<crate::token::Secret>)]) {
    let entries: Vec<sink::SinkEntry<'_>> = tokens
        .iter()
        .map(|(h, p)| (h.as_str(), p.as_ref()))
        .collect();
    for s in sinks {
        match sink::write(&s.path, &entries) {
            Ok(changed) if !changed.is_empty() => {
                tracing::info!(sink = %s.path.display(), registries = changed.len(), "sink updated")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("sink {} not updated: {e}", s.path.display()),
        }
    }
}

/// Binds the socket: refuses a path that is something other than a stale socket, refuses to
/// start beside a running daemon, creates the directory if missing, and makes the socket 0660.
fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    let fail = |detail: String| DaemonError::Socket {
        path: path.to_owned(),
        detail,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                return Err(fail(
                    "exists and is not a socket; refusing to replace it".into(),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail("another daemon is answering on it".into()));
            }
            std::fs::remove_file(path)
                .map_err(|e| fail(format!("cannot remove stale socket: {e}")))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| fail(format!("cannot create its directory: {e}")))?;
        }
    }
    // The socket is created with the umask applied; keep it from ever being wider than 0660.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|e| fail(e.to_string()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| fail(e.to_string()))?;
    Ok(listener)
}

fn remove_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    done: tokio::sync::mpsc::Sender<()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Wait for a free slot before accepting: over the cap, clients queue in the kernel.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let (shared, done) = (shared.clone(), done.clone());
                tokio::spawn(async move {
                    connection(stream, shared).await;
                    drop((permit, done));
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One client: peer check, one request, its reply (after a `wait` line if the daemon has to
/// fetch first).
async fn connection(stream: UnixStream, shared: Arc<Shared>) {
    let peer = match peer::peer_of(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("cannot identify socket peer: {e}");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let allowed = shared.lock().settings.policy.allows(&peer);
    if !allowed {
        tracing::warn!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            "refused a client not in allowed_uids/allowed_gids"
        );
        shared.lock().requests.peers_refused += 1;
        shared.metrics_due.notify_one();
        let reply = Reply::Refused {
            reason: format!("uid {} is not allowed to use this daemon", peer.uid),
        };
        let _ = send(&mut write, &reply).await;
        return;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(agent::MAX_LINE));
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => Reply::Error {
            message: format!("bad request: {}", crate::input::describe_json_error(&e)),
        },
        Ok(Request::Status) => Reply::Status(report(&shared)),
        Ok(Request::Get { registry, identity }) => {
            let reply = get(&shared, &registry, &identity, &mut write).await;
            {
                let mut st = shared.lock();
                match &reply {
                    Reply::Token { .. } => st.requests.served += 1,
                    Reply::Refused { .. } => st.requests.declined += 1,
                    _ => st.requests.errors += 1,
                }
            }
            shared.metrics_due.notify_one();
            reply
        }
    };
    let _ = send(&mut write, &reply).await;
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// Answers a `get`: the held token while usable; otherwise waits for the attempt in flight
/// (or due now), telling the client to wait; otherwise the last error.
async fn get(
    shared: &Shared,
    host: &str,
    identity: &str,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> Reply {
    let Some(registry) = Registry::parse(host).filter(|r| r.host() == host) else {
        return Reply::Error {
            message: format!("{host:?} is not an Amazon ECR registry host"),
        };
    };
    let deadline = Instant::now() + shared.deadline + Duration::from_secs(1);
    let mut told_to_wait = false;
    let mut seen_attempts = None;
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            let mut st = shared.lock();
            let expected = Source::for_registry(&st.settings.config, host).identity();
            if expected != identity {
                return Reply::Refused {
                    reason: "the daemon serves another credential source".into(),
                };
            }
            let on_demand = st.entries.values().filter(|e| e.on_demand).count();
            let cap = st.settings.backoff_cap;
            let mode = st.settings.refresh;
            if !st.entries.contains_key(host) {
                if on_demand >= MAX_ON_DEMAND {
                    return Reply::Refused {
                        reason: format!(
                            "the daemon already holds {MAX_ON_DEMAND} on-demand registries"
                        ),
                    };
                }
                tracing::info!(registry = host, "added on demand");
                st.entries.insert(
                    host.to_owned(),
                    Entry::new(registry.clone(), expected, true, cap, mode),
                );
                shared.wake.notify_one();
            }
            let now = Instant::now();
            let Some(e) = st.entries.get_mut(host) else {
                continue;
            };
            // On demand: this request starts the attempt the schedule says is due (a token
            // past its refresh point is still served below while the refresh runs).
            if mode == RefreshMode::OnDemand && e.requested(now) {
                shared.wake.notify_one();
            }
            if let Some(h) = e.usable(now) {
                return Reply::Token {
                    password: h.token.password.clone(),
                    expires_at: h.token.expires_at,
                };
            }
            let attempts = *seen_attempts.get_or_insert(e.attempts);
            let finished_one = e.attempts > attempts;
            let pending = e.in_flight || e.next <= now;
            if finished_one || !pending {
                return Reply::Error {
                    message: e
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "no token yet".into()),
                };
            }
        }
        if !told_to_wait {
            told_to_wait = true;
            if send(write, &Reply::Wait).await.is_err() {
                return Reply::Wait;
            }
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return Reply::Error {
                message: "timed out waiting for the refresh".into(),
            };
        }
    }
}

fn report(shared: &Shared) -> StatusReport {
    let st = shared.lock();
    let now = Instant::now();
    let wall = token::now();
    let at = |i: Instant| {
        let d = i.saturating_duration_since(now).as_secs();
        wall.saturating_add(i64::try_from(d).unwrap_or(i64::MAX))
    };
    let iot_credentials_expire_at = st.bases.iot_expiry();
    StatusReport {
        schema: agent::STATUS_SCHEMA,
        device_certificate_expires_at: st.device_not_after,
        iot_credentials_expire_at,
        requests: st.requests,
        upstream: agent::Upstream::now(),
        version: crate::version_line(),
        identity: st.settings.identity.clone(),
        started_at: shared.started_at,
        credentials_expire_at: st.credentials.as_ref().map(|c| at(c.expires)),
        registries: st
            .entries
            .iter()
            .map(|(host, e)| RegistryStatus {
                registry: host.clone(),
                on_demand: e.on_demand,
                expires_at: e.usable(now).map(|h| h.token.expires_at),
                last_refresh: e.last_refresh,
                last_error: e.last_error.clone(),
                failures: e.backoff.failures(),
                next_attempt: (!e.in_flight && !is_idle(e.next, now)).then(|| at(e.next)),
                source: Source::for_registry(&st.settings.config, host).describe(),
                refreshes: e.refreshes,
            })
            .collect(),
    }
}
