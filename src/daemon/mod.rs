//! `ecr-edge daemon`: keeps tokens warm and serves them to the helper over a Unix socket.
//!
//! [`main`] sets up (configuration, credential source, socket, signals) and calls [`run`] with
//! the bound listener and a shutdown future, as mini-redis's server does; tests call [`run`]
//! with their own listener, token source and shutdown, under tokio's paused clock. One
//! current-thread runtime runs these tasks, each in a folder-level module:
//! - `refresher`: starts each registry's attempt when its phase (`state`) says it is due
//!   (no polling: an idle daemon sleeps until the earliest refresh);
//! - `server`: the Unix socket, one task per connection, at most [`MAX_CONNECTIONS`]; the
//!   same accept helper serves the local credentials endpoint (`endpoint`);
//! - `writers`: sink files and the metrics file (file work on a blocking thread);
//! - `images` and `shadow`: the image checks and the fleet-health report to AWS IoT;
//! - the systemd watchdog, and reloads on request (SIGHUP: [`reload`]).
//!
//! Shutdown is one signal every task selects on ([`state::Shared::stopped`]); `run` returns
//! when every task has finished: the socket refuses newcomers in words and lets the
//! connections under way finish (at most [`DRAIN`]), attempts in flight are dropped, each
//! writer finishes the atomic write under way. State lives in one `State` behind a mutex that
//! is never held across an `.await`.
//!
//! Token lifetimes are tracked on the monotonic clock from the moment a token arrives (at most
//! the 12 hours ECR grants), so a wall clock that jumps (a device without an RTC setting its
//! time from NTP after boot) neither expires nor prolongs a token. Tokens live in memory only;
//! nothing the daemon serves is written to disk except by a configured sink.

mod endpoint;
mod images;
pub mod link;
mod metrics;
mod notify;
mod peer;
mod refresher;
pub mod schedule;
mod server;
pub mod shadow;
pub mod sink;
mod state;
mod writers;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::state::{daemon_config, DaemonSettings, Shared, State};
use crate::aws::credentials::Source;
use crate::aws::ecr::{FetchError, TokenSource};
use crate::config::Config;
use crate::exit::Exit;
use crate::settings::SettingsError;
use crate::token;

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

/// `ecr-edge daemon --check`, for systemd's `ExecCondition=`: whether the service should
/// start. [`Exit::Success`] with a `[daemon]` section; [`Exit::Failure`] without one (the
/// packaged file sets nothing, so a fresh install stays stopped, not failed, until it is
/// configured); [`Exit::StartFails`] when the file is invalid. The reason goes to `err`.
pub fn check(config: Option<&Path>, err: &mut dyn std::io::Write) -> Exit {
    match crate::config::load(config) {
        Ok(c) if c.daemon.is_some() => Exit::Success,
        Ok(_) => {
            let (path, _) = crate::config::locate(config);
            let _ = writeln!(
                err,
                "ecr-edge daemon: not configured: {} has no [daemon] section; the service \
                 starts once it has one",
                path.display()
            );
            Exit::Failure
        }
        Err(e) => {
            let _ = writeln!(err, "ecr-edge daemon: {e}");
            Exit::StartFails
        }
    }
}

/// `ecr-edge daemon`: runs until stopped; a failure to start is one line on `err` (the
/// journal) and [`Exit::Failure`].
pub fn run_until_stopped(config: Option<&Path>, err: &mut dyn std::io::Write) -> Exit {
    match main(config) {
        Ok(()) => Exit::Success,
        Err(e) => {
            let _ = writeln!(err, "ecr-edge daemon: {e}");
            Exit::Failure
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
        let listener = server::bind(&start.socket)?;
        let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
        let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
        let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Runtime)?;
        let reload = start.reload.clone();
        // The shutdown future also forwards SIGHUP to a reload: `run` polls it until it ends,
        // so no task of its own outlives the daemon.
        let shutdown = async move {
            loop {
                tokio::select! {
                    _ = term.recv() => return,
                    _ = int.recv() => return,
                    Some(()) = hup.recv() => reload.notify_one(),
                }
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
        let client = refresher::client_for(&source, &daemon, settings.deadline)
            .await
            .map_err(DaemonError::Credentials)?;
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

/// Serves `listener` until `shutdown` completes: refreshes, the socket, sinks, the watchdog
/// and, when configured, the local credentials endpoint. Returns when every task has finished.
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
    // The floor kept from the last run, before any certificate is judged (src/clock.rs).
    let floor = std::env::var_os("STATE_DIRECTORY")
        .and_then(|dirs| {
            std::env::split_paths(&dirs)
                .next()
                .filter(|d| !d.as_os_str().is_empty())
        })
        // Helpers read it too: it is not secret.
        .map(|dir| crate::store::floor::FloorFile::open(&dir, 0o644));
    let daemon = daemon_config(&config);
    let socket_gid = std::fs::metadata(&socket_path)
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .unwrap_or(0);
    let settings = DaemonSettings::new(&config, socket_gid);
    let identity = settings.identity.clone();
    let state = State::new(settings, client, device_not_after(&config), Instant::now());
    let registries = state.entries.len();
    let shared = Arc::new(Shared::new(
        state,
        config_path,
        socket_gid,
        deadline,
        (Some(socket_path.clone()), daemon.credentials_endpoint),
        floor,
    ));
    tracing::info!(
        socket = %socket_path.display(),
        registries,
        identity = %identity,
        time_floor = %crate::clock::rfc3339(crate::clock::floor()),
        "{} started",
        crate::version_line()
    );
    refresher::mark_ready_if_done(&shared);

    let mut tasks = JoinSet::new();
    if let Some(addr) = &daemon.credentials_endpoint {
        let fail = |detail: String| DaemonError::Socket {
            path: PathBuf::from(addr.to_string()),
            detail,
        };
        let listener = tokio::net::TcpListener::bind(addr.0)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let token = endpoint::write_token(&daemon.credentials_token_file).map_err(fail)?;
        tracing::info!(
            endpoint = %addr,
            token_file = %daemon.credentials_token_file.display(),
            "credentials endpoint listening"
        );
        tasks.spawn(endpoint::refresh_loop(shared.clone()));
        tasks.spawn(endpoint::serve(listener, shared.clone(), Arc::from(token)));
    }
    tasks.spawn(refresher::schedule_loop(shared.clone()));
    tasks.spawn(link::link_loop(shared.clone()));
    tasks.spawn(images::images_loop(shared.clone()));
    tasks.spawn(shadow::shadow_loop(shared.clone()));
    tasks.spawn(writers::metrics_loop(shared.clone()));
    tasks.spawn(writers::sink_loop(shared.clone()));
    if let Some(every) = notify::watchdog_interval() {
        let shared = shared.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut stopped = std::pin::pin!(shared.stopped());
            loop {
                tokio::select! {
                    _ = tick.tick() => shared.notifier.send("WATCHDOG=1"),
                    _ = &mut stopped => return,
                }
            }
        });
    }
    {
        let shared = shared.clone();
        tasks.spawn(async move {
            let mut stopped = std::pin::pin!(shared.stopped());
            loop {
                tokio::select! {
                    _ = reload_requests.notified() => reload(&shared).await,
                    _ = &mut stopped => return,
                }
            }
        });
    }
    {
        let for_handlers = shared.clone();
        tasks.spawn(server::serve(
            listener,
            MAX_CONNECTIONS,
            shared.clone(),
            move |stream, slot| server::connection(stream, for_handlers.clone(), slot),
            server::refuse,
        ));
    }

    shutdown.await;
    shared.notifier.send("STOPPING=1");
    shared.stop();
    // Every task ends on the signal; the socket's drain is the longest (DRAIN), and a sink
    // write waiting for another program's lock is given as long again.
    let finished = tokio::time::timeout(2 * DRAIN + Duration::from_secs(1), async {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::warn!("a daemon task ended abnormally: {e}");
            }
        }
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            tasks = tasks.len(),
            "tasks still running after the drain; stopping anyway"
        );
    }
    if daemon.credentials_endpoint.is_some() {
        let _ = std::fs::remove_file(&daemon.credentials_token_file);
    }
    server::remove_socket(&socket_path);
    tracing::info!("stopped");
    Ok(())
}

/// notAfter of the `[iot]` device certificate, when it loads.
fn device_not_after(config: &Config) -> Option<i64> {
    let iot = config.iot.as_ref()?;
    crate::aws::iot::Device::load(iot, token::now())
        .ok()
        .map(|d| d.not_after)
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
        let new = DaemonSettings::new(&config, shared.socket_gid);
        let socket = loaded.socket.unwrap_or_else(|| config.socket_path());
        if (Some(socket), daemon.credentials_endpoint) != shared.fixed {
            tracing::warn!(
                "socket and credentials_endpoint changes take effect at the next restart"
            );
        }
        let client: Arc<dyn TokenSource> = refresher::client_for(&source, &daemon, shared.deadline)
            .await
            .map_err(DaemonError::Credentials)?;
        let now = Instant::now();
        let mut st = shared.lock();
        if new.identity != st.settings.identity {
            // Another device identity: nothing resolved with the old one is kept.
            st.entries.clear();
        }
        // No exchanged or loaded credentials survive a reload; tokens already held do.
        st.bases = client.bases().unwrap_or_default();
        st.clients = state::Clients::default();
        st.clients.keep(&new.identity, client.clone());
        st.client = client;
        // A registry whose source changed starts over with the new one.
        st.entries.retain(|host, e| {
            (e.on_demand || new.configured.iter().any(|r| r.host() == host))
                && Source::for_registry(&config, host).identity() == e.identity
        });
        let mut fresh = new.configured_entries(now);
        for (host, e) in st.entries.iter_mut() {
            if fresh.remove(host).is_some() {
                e.on_demand = false;
            }
            // Attempts under way ran with the old clients: superseded.
            e.reload(new.refresh, new.backoff_cap, now);
        }
        st.entries.append(&mut fresh);
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
    shared.sinks_due.notify_one();
    shared.metrics_due.notify_one();
    shared.shadow_due.notify_one();
    shared
        .notifier
        .send(&format!("READY=1\nSTATUS={}", shared.status_line()));
}
