//! What the daemon holds, and the per-registry state machine.
//!
//! Each registry the daemon serves has an [`Entry`]: the token it holds (if any) and a
//! [`Phase`], which says what happens next: an attempt scheduled at an instant, an attempt in
//! flight (with its generation), or, under `refresh = "on-demand"`, nothing until a request
//! asks. The transitions are pure functions of the entry and an instant ([`Entry::start`],
//! [`Entry::finish`], [`Entry::requested`], [`Entry::reload`]), unit-tested below under made-up
//! instants the way `schedule.rs` is; the tasks that drive them (`refresher`, `server`) only
//! lock, call one, and act on its answer.
//!
//! A result is matched to the attempt that produced it by generation: every attempt started
//! gets a number never used before in this process, and a reload that changes what an attempt
//! would have fetched with moves the entry on, so the old attempt's result is recognised as
//! stale and dropped.
//!
//! Everything here lives in one [`State`] behind a mutex that is never held across an
//! `.await` ([`Shared::lock`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::endpoint::HeldCredentials;
use super::notify::Notifier;
use super::peer::Policy;
use super::schedule::{Backoff, Jitter};
use crate::agent::{self, RegistryStatus, StatusReport};
use crate::aws::credentials::{Source, SourceIdentity};
use crate::aws::ecr::{Bases, FetchError, TokenSource};
use crate::config::{Config, DaemonConfig, LoopbackAddr, RefreshMode, SinkConfig};
use crate::registry::Registry;
use crate::token::{self, Token, MIN_REMAINING_SECS};

/// A token and when it stops being usable, on the monotonic clock.
#[derive(Clone)]
pub(super) struct Held {
    pub(super) token: Token,
    pub(super) expires: Instant,
}

impl Held {
    /// Whether it may still be handed out: at least [`MIN_REMAINING_SECS`] left.
    pub(super) fn usable(&self, now: Instant) -> bool {
        self.expires.saturating_duration_since(now)
            >= Duration::from_secs(MIN_REMAINING_SECS as u64)
    }

    /// The first whole second at which it is no longer usable.
    pub(super) fn unusable_at(&self) -> Instant {
        let usable_for = Duration::from_secs(MIN_REMAINING_SECS as u64 - 1);
        self.expires.checked_sub(usable_for).unwrap_or(self.expires)
    }
}

/// What happens next for one registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The scheduler starts an attempt at `at` (ahead of need, after a backoff, or now).
    Scheduled {
        /// When.
        at: Instant,
    },
    /// Under `refresh = "on-demand"`: no timer runs; a request starts an attempt once `due`
    /// (half the token's life, or the end of a backoff) has passed.
    Waiting {
        /// When a request may start the next attempt.
        due: Instant,
    },
    /// An attempt is running; only its result (same generation) is applied.
    Refreshing {
        /// The attempt's generation.
        generation: u64,
    },
}

/// One registry the daemon serves.
pub(super) struct Entry {
    pub(super) registry: Registry,
    /// The credential source this registry is fetched with (its `[[registry]]` table, else
    /// the daemon's default): a request naming another identity is refused.
    pub(super) identity: SourceIdentity,
    /// Added because a client asked (not configured); counted against the on-demand cap.
    pub(super) on_demand: bool,
    /// When a client last asked for it (on-demand entries unused for a day are dropped).
    pub(super) last_used: Instant,
    pub(super) held: Option<Held>,
    pub(super) last_refresh: Option<i64>,
    pub(super) last_error: Option<String>,
    /// The class of the last failure ([`crate::aws::Outcome`]), cleared by a success.
    pub(super) last_error_class: Option<crate::aws::Outcome>,
    pub(super) backoff: Backoff,
    pub(super) phase: Phase,
    /// Attempts completed; a waiting client watches it move.
    pub(super) attempts: u64,
    /// Attempts by outcome, for metrics and status.
    pub(super) refreshes: agent::Outcomes,
    /// The last attempt could not reach AWS (a link event may end its backoff early).
    pub(super) unreachable: bool,
}

/// What a finished attempt did to its entry ([`Entry::finish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finished {
    /// The result was applied; the next attempt is in `delay`.
    Applied {
        /// Until the next attempt (the refresh point, or the backoff).
        delay: Duration,
    },
    /// The result belongs to an attempt the entry no longer waits for (a reload moved it
    /// on): dropped.
    Stale,
}

impl Entry {
    /// A registry to serve from `now`: under `ahead`, its first attempt is due at once.
    pub(super) fn new(
        registry: Registry,
        identity: SourceIdentity,
        on_demand: bool,
        cap: Duration,
        mode: RefreshMode,
        now: Instant,
    ) -> Entry {
        Entry {
            registry,
            identity,
            on_demand,
            last_used: now,
            held: None,
            last_refresh: None,
            last_error: None,
            last_error_class: None,
            backoff: Backoff::new(cap),
            phase: park(mode, now),
            attempts: 0,
            refreshes: agent::Outcomes::default(),
            unreachable: false,
        }
    }

    /// The held token while it may be handed out.
    pub(super) fn usable(&self, now: Instant) -> Option<&Held> {
        self.held.as_ref().filter(|h| h.usable(now))
    }

    /// When the scheduler must wake for this entry, if a timer is due.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Scheduled { at } => Some(at),
            _ => None,
        }
    }

    /// Whether an attempt is running or due now (a client without a usable token waits for
    /// it).
    pub(super) fn pending(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Refreshing { .. } => true,
            Phase::Scheduled { at } => at <= now,
            Phase::Waiting { .. } => false,
        }
    }

    /// The scheduler's transition: when an attempt is due at `now`, the entry moves to
    /// [`Phase::Refreshing`] with `generation` and `true` is returned.
    pub(super) fn start(&mut self, now: Instant, generation: u64) -> bool {
        match self.phase {
            Phase::Scheduled { at } if at <= now => {
                self.phase = Phase::Refreshing { generation };
                true
            }
            _ => false,
        }
    }

    /// A request arrived at `now` (on demand): an entry waiting past its due time is
    /// scheduled at once. Returns whether it was.
    pub(super) fn requested(&mut self, now: Instant) -> bool {
        self.last_used = now;
        match self.phase {
            Phase::Waiting { due } if due <= now => {
                self.phase = Phase::Scheduled { at: now };
                true
            }
            _ => false,
        }
    }

    /// The uplink may be back at `now` (a link event, src/daemon/link.rs): an entry waiting
    /// out the backoff after an attempt that could not reach AWS may try at once (the caller
    /// spreads `now` over a few seconds across a fleet). Returns whether it moved. An attempt
    /// running, a healthy entry, one already due, or one backing off for another reason
    /// (throttled, denied: a link does not change those) is left alone, so a storm of events
    /// starts at most one attempt.
    pub(super) fn link_up(&mut self, now: Instant) -> bool {
        if !self.unreachable {
            return false;
        }
        match self.phase {
            Phase::Scheduled { at } if at > now => {
                self.phase = Phase::Scheduled { at: now };
                true
            }
            Phase::Waiting { due } if due > now => {
                self.phase = Phase::Waiting { due: now };
                true
            }
            _ => false,
        }
    }

    /// Asked to refresh now (`ecr-edge refresh`): an attempt is due at once, backoff or not,
    /// unless one is running (the asker waits for that one). Returns whether one was
    /// scheduled.
    pub(super) fn refresh_now(&mut self, now: Instant) -> bool {
        self.last_used = now;
        match self.phase {
            Phase::Refreshing { .. } => false,
            Phase::Scheduled { .. } | Phase::Waiting { .. } => {
                self.phase = Phase::Scheduled { at: now };
                true
            }
        }
    }

    /// The offline runway at `now`, seconds: the held token's usable life. 0 without a usable
    /// token. The credentials that fetched the token do not bound it: ECR's token carries its
    /// own expiry (`expiresAt`), which role credentials running out (an IoT exchange's last an
    /// hour by default) do not shorten.
    pub(super) fn runway(&self, now: Instant) -> i64 {
        self.usable(now).map_or(0, |h| {
            i64::try_from(h.unusable_at().saturating_duration_since(now).as_secs())
                .unwrap_or(i64::MAX)
        })
    }

    /// Applies the result of attempt `generation`, finished at `now` (`wall`: the wall clock
    /// then): a token is held until its life ends and refreshed past half of it; a failure
    /// keeps a token that is still usable and backs off by its class. The entry then waits
    /// for the next attempt as `mode` says.
    pub(super) fn finish(
        &mut self,
        generation: u64,
        result: Result<Token, &FetchError>,
        mode: RefreshMode,
        now: Instant,
        wall: i64,
        jitter: &mut impl Jitter,
    ) -> Finished {
        if self.phase != (Phase::Refreshing { generation }) {
            return Finished::Stale;
        }
        self.attempts += 1;
        let delay = match result {
            Ok(token) => {
                self.refreshes.count(crate::aws::Outcome::Ok);
                let life = super::schedule::token_life(token.expires_at, wall);
                let delay = super::schedule::refresh_delay(life, jitter);
                self.held = Some(Held {
                    token,
                    expires: now + life,
                });
                self.backoff.reset();
                self.last_refresh = Some(wall);
                self.last_error = None;
                self.last_error_class = None;
                self.unreachable = false;
                delay
            }
            Err(err) => {
                self.refreshes.count(err.outcome());
                self.unreachable = err.outcome() == crate::aws::Outcome::Unreachable;
                let delay = self.backoff.next(err.failure(), jitter);
                if self.usable(now).is_none() {
                    self.held = None;
                }
                self.last_error = Some(err.to_string());
                self.last_error_class = Some(err.outcome());
                delay
            }
        };
        self.phase = park(mode, now + delay);
        Finished::Applied { delay }
    }

    /// A reload at `now` under `mode` (and a new backoff cap): a changed mode applies to the
    /// next attempt, and an attempt in flight is superseded (the configuration it ran with may
    /// be gone): its result will be stale and a new attempt is due at once.
    pub(super) fn reload(&mut self, mode: RefreshMode, cap: Duration, now: Instant) {
        self.backoff = Backoff::new(cap);
        self.phase = match (self.phase, mode) {
            (Phase::Refreshing { .. }, _) => Phase::Scheduled { at: now },
            (Phase::Waiting { due }, RefreshMode::Ahead) => Phase::Scheduled { at: due },
            (Phase::Scheduled { at }, RefreshMode::OnDemand) => Phase::Waiting { due: at },
            (phase, _) => phase,
        };
    }
}

/// Where an entry waits for an attempt due at `due`: a timer ahead of need, or nothing until
/// a request on demand.
fn park(mode: RefreshMode, due: Instant) -> Phase {
    match mode {
        RefreshMode::Ahead => Phase::Scheduled { at: due },
        RefreshMode::OnDemand => Phase::Waiting { due },
    }
}

/// The daemon's part of the configuration, as [`State`] keeps it (rebuilt on reload).
pub(super) struct DaemonSettings {
    /// The default source's identity (registries without a `[[registry]]` table).
    pub(super) identity: SourceIdentity,
    /// The configuration, for each registry's own source.
    pub(super) config: Config,
    pub(super) policy: Policy,
    pub(super) sinks: Vec<SinkConfig>,
    pub(super) backoff_cap: Duration,
    pub(super) configured: Vec<Registry>,
    pub(super) metrics_file: Option<PathBuf>,
    pub(super) refresh: RefreshMode,
    pub(super) set_clock: crate::config::SetClock,
    /// Whether link events cut a backoff short.
    pub(super) link_events: bool,
    /// `[daemon] images`: checked as a pull would.
    pub(super) images: Vec<String>,
}

impl DaemonSettings {
    /// The daemon's settings from `config`; the socket's group is allowed by default.
    pub(super) fn new(config: &Config, socket_gid: u32) -> DaemonSettings {
        let daemon = daemon_config(config);
        let source = Source::select(config);
        let own_uid = nix::unistd::geteuid().as_raw();
        let mut uids = daemon
            .allowed_uids
            .clone()
            .unwrap_or_else(|| vec![0, own_uid]);
        uids.dedup();
        DaemonSettings {
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
            set_clock: daemon.set_clock,
            link_events: daemon.link_events,
            images: daemon.images.clone(),
        }
    }

    /// A fresh entry for each configured registry.
    pub(super) fn configured_entries(&self, now: Instant) -> BTreeMap<String, Entry> {
        let mut entries = BTreeMap::new();
        for r in &self.configured {
            let identity = Source::for_registry(&self.config, r.host()).identity();
            entries.insert(
                r.host().to_owned(),
                Entry::new(
                    r.clone(),
                    identity,
                    false,
                    self.backoff_cap,
                    self.refresh,
                    now,
                ),
            );
        }
        entries
    }
}

/// The `[daemon]` table, or its defaults.
pub(super) fn daemon_config(config: &Config) -> DaemonConfig {
    config.daemon.clone().unwrap_or_default()
}

/// A client per source identity (a handful at most, so a list).
#[derive(Default)]
pub(super) struct Clients(Vec<(SourceIdentity, Arc<dyn TokenSource>)>);

impl Clients {
    pub(super) fn get(&self, identity: &SourceIdentity) -> Option<&Arc<dyn TokenSource>> {
        self.0.iter().find(|(id, _)| id == identity).map(|(_, c)| c)
    }

    /// The client kept for `identity`: `client` unless one is already there.
    pub(super) fn keep(
        &mut self,
        identity: &SourceIdentity,
        client: Arc<dyn TokenSource>,
    ) -> Arc<dyn TokenSource> {
        if let Some(c) = self.get(identity) {
            return c.clone();
        }
        self.0.push((identity.clone(), client.clone()));
        client
    }
}

/// Everything the daemon's tasks share, behind [`Shared::lock`].
pub(super) struct State {
    pub(super) entries: BTreeMap<String, Entry>,
    pub(super) settings: DaemonSettings,
    /// The default source's client (registries without a table; the credentials endpoint).
    pub(super) client: Arc<dyn TokenSource>,
    /// A client per source identity in use, the default's included; built when first needed.
    pub(super) clients: Clients,
    /// Base credentials shared by the clients: one IoT exchange or profile feeds every role.
    pub(super) bases: Bases,
    pub(super) ready: bool,
    /// Role credentials for the local credentials endpoint, when it is on.
    pub(super) credentials: Option<HeldCredentials>,
    /// Socket requests by answer.
    pub(super) requests: agent::Requests,
    /// notAfter of the device certificate, when `[iot]` is configured and loads.
    pub(super) device_not_after: Option<i64>,
    /// The last generation handed to an attempt.
    generation: u64,
    /// `[daemon] images`, each as last checked, by reference.
    pub(super) image_checks: BTreeMap<String, agent::ImageStatus>,
    /// The shadow reports, while `[iot] shadow_endpoint` is set.
    pub(super) shadow: Option<agent::ShadowStatus>,
}

impl State {
    /// The state at start-up.
    pub(super) fn new(
        settings: DaemonSettings,
        client: Arc<dyn TokenSource>,
        device_not_after: Option<i64>,
        now: Instant,
    ) -> State {
        let mut clients = Clients::default();
        clients.keep(&settings.identity, client.clone());
        State {
            entries: settings.configured_entries(now),
            bases: client.bases().unwrap_or_default(),
            settings,
            client,
            clients,
            ready: false,
            credentials: None,
            requests: agent::Requests::default(),
            device_not_after,
            generation: 0,
            image_checks: BTreeMap::new(),
            shadow: None,
        }
    }

    /// A link event at `now`: each entry in backoff may try at once ([`Entry::link_up`]).
    /// Returns how many moved (none when `[daemon] link_events = false`).
    pub(super) fn link_up(&mut self, now: Instant) -> usize {
        if !self.settings.link_events {
            return 0;
        }
        self.entries
            .values_mut()
            .filter_map(|e| e.link_up(now).then_some(()))
            .count()
    }

    /// A generation no attempt has had.
    pub(super) fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }
}

/// The state and the signals between the daemon's tasks.
pub(super) struct Shared {
    state: Mutex<State>,
    /// Wakes the scheduler: a new entry, a finished attempt, a reload.
    pub(super) wake: Notify,
    /// Wakes clients waiting for an attempt to finish.
    pub(super) changed: Notify,
    /// Wakes the sink writer: the tokens changed.
    pub(super) sinks_due: Notify,
    /// Wakes the metrics writer: something it reports changed.
    pub(super) metrics_due: Notify,
    /// Wakes the shadow reporter: something it reports may have changed.
    pub(super) shadow_due: Notify,
    /// The one shutdown signal: every loop selects on [`Shared::stopped`].
    /// When shutdown was announced (none while running).
    stop: watch::Sender<Option<Instant>>,
    pub(super) notifier: Notifier,
    pub(super) started_at: i64,
    pub(super) config_path: Option<PathBuf>,
    pub(super) socket_gid: u32,
    /// The deadline of one refresh attempt (`ECR_EDGE_TIMEOUT`, default 10 s).
    pub(super) deadline: Duration,
    /// What only a restart changes: the socket and the credentials endpoint.
    pub(super) fixed: (Option<PathBuf>, Option<LoopbackAddr>),
    /// Where the time floor is kept across reboots (`$STATE_DIRECTORY/time-floor`), if
    /// anywhere.
    pub(super) floor: Option<crate::store::floor::FloorFile>,
}

impl Shared {
    pub(super) fn new(
        state: State,
        config_path: Option<PathBuf>,
        socket_gid: u32,
        deadline: Duration,
        fixed: (Option<PathBuf>, Option<LoopbackAddr>),
        floor: Option<crate::store::floor::FloorFile>,
    ) -> Shared {
        Shared {
            state: Mutex::new(state),
            wake: Notify::new(),
            changed: Notify::new(),
            sinks_due: Notify::new(),
            metrics_due: Notify::new(),
            shadow_due: Notify::new(),
            stop: watch::Sender::new(None),
            notifier: Notifier::from_env(),
            started_at: token::now(),
            config_path,
            socket_gid,
            deadline,
            fixed,
            floor,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic aborts the process (panic = "abort"), so the lock is never poisoned in use.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announces shutdown to every task.
    pub(super) fn stop(&self) {
        self.stop.send_if_modified(|at| {
            let first = at.is_none();
            if first {
                *at = Some(Instant::now());
            }
            first
        });
    }

    /// Whether shutdown has been announced.
    pub(super) fn is_stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Completes once shutdown is announced (at once if it already was), with its instant.
    fn stopped_at(&self) -> impl std::future::Future<Output = Option<Instant>> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            // An error means the sender is gone: the daemon is over either way.
            rx.wait_for(Option::is_some).await.ok().and_then(|at| *at)
        }
    }

    /// Completes once shutdown is announced (at once if it already was).
    pub(super) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let at = self.stopped_at();
        async move {
            at.await;
        }
    }

    /// Completes [`super::DRAIN`] after shutdown was announced (the same instant for every
    /// caller, however late): what a refresh under way, and a client waiting for it, are
    /// given to finish.
    pub(super) fn drained(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let at = self.stopped_at();
        async move {
            if let Some(at) = at.await {
                tokio::time::sleep_until(at + super::DRAIN).await;
            }
        }
    }

    /// `STATUS=` for systemd: "2/3 registries have a token, 1 failing, next refresh in 40s".
    pub(super) fn status_line(&self) -> String {
        let st = self.lock();
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
            .filter_map(Entry::wake_at)
            .map(|at| at.saturating_duration_since(now))
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

    /// The status report (`ecr-edge status`, the metrics file).
    pub(super) fn report(&self) -> StatusReport {
        let st = self.lock();
        let now = Instant::now();
        let wall = token::now();
        let at = |i: Instant| {
            let d = i.saturating_duration_since(now).as_secs();
            wall.saturating_add(i64::try_from(d).unwrap_or(i64::MAX))
        };
        StatusReport {
            schema: agent::STATUS_SCHEMA,
            device_certificate_expires_at: st.device_not_after,
            iot_credentials_expire_at: st.bases.iot_expiry(),
            requests: st.requests,
            upstream: agent::Upstream::now(),
            tpm_signatures: crate::tpm::signatures(),
            clock: Some(agent::ClockStatus::now()),
            shadow: st.shadow.clone(),
            images: st
                .settings
                .images
                .iter()
                .filter_map(|i| st.image_checks.get(i).cloned())
                .collect(),
            version: crate::version_line(),
            identity: st.settings.identity.to_string(),
            started_at: self.started_at,
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
                    last_error_class: e.last_error_class.map(|o| o.name().to_owned()),
                    failures: e.backoff.failures(),
                    next_attempt: e.wake_at().map(at),
                    source: Source::for_registry(&st.settings.config, host).describe(),
                    refreshes: e.refreshes,
                    runway_seconds: e.runway(now),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::schedule::Jitter;

    /// The middle of every range, so delays are exact.
    struct Middle;
    impl Jitter for Middle {
        fn unit(&mut self) -> f64 {
            0.5
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);
    const WALL: i64 = 1_800_000_000;

    fn entry(mode: RefreshMode, now: Instant) -> Entry {
        let registry = Registry::parse("123456789012.dkr.ecr.us-east-1.amazonaws.com").unwrap();
        Entry::new(
            registry,
            Source::Profile("p".into()).identity(),
            false,
            HOUR,
            mode,
            now,
        )
    }

    fn token(life: i64) -> Token {
        Token {
            password: token::Secret::new("pw"),
            expires_at: WALL + life,
            fetched_at: WALL,
        }
    }

    fn denied() -> FetchError {
        FetchError::AccessDenied {
            message: "no".into(),
            needs: "ecr:GetAuthorizationToken",
        }
    }

    #[test]
    fn ahead_starts_at_once_and_refreshes_ahead_of_need() {
        let t0 = Instant::now();
        let mut e = entry(RefreshMode::Ahead, t0);
        assert_eq!(e.wake_at(), Some(t0));
        assert!(e.pending(t0));
        assert!(e.start(t0, 1));
        assert!(!e.start(t0, 2), "one attempt at a time");
        assert_eq!(e.phase, Phase::Refreshing { generation: 1 });
        let done = e.finish(
            1,
            Ok(token(12 * 3600)),
            RefreshMode::Ahead,
            t0,
            WALL,
            &mut Middle,
        );
        let Finished::Applied { delay } = done else {
            panic!("{done:?}")
        };
        // 40–50 % of the usable life (the middle here): well before the token runs out.
        let usable = 12 * HOUR - Duration::from_secs(MIN_REMAINING_SECS as u64);
        assert_eq!(delay, usable.mul_f64(0.45));
        assert_eq!(e.phase, Phase::Scheduled { at: t0 + delay });
        assert!(!e.pending(t0));
        assert!(e.usable(t0 + 11 * HOUR).is_some());
        assert!(e.usable(t0 + 12 * HOUR).is_none(), "never past its life");
        assert_eq!((e.attempts, e.refreshes.ok), (1, 1));
    }

    #[test]
    fn a_failure_keeps_a_usable_token_and_backs_off() {
        let t0 = Instant::now();
        let mut e = entry(RefreshMode::Ahead, t0);
        e.start(t0, 1);
        e.finish(
            1,
            Ok(token(3600)),
            RefreshMode::Ahead,
            t0,
            WALL,
            &mut Middle,
        );
        let t1 = t0 + Duration::from_secs(1800);
        e.phase = Phase::Scheduled { at: t1 };
        assert!(e.start(t1, 2));
        let err = denied();
        let done = e.finish(2, Err(&err), RefreshMode::Ahead, t1, WALL, &mut Middle);
        assert!(matches!(done, Finished::Applied { .. }));
        assert!(e.usable(t1).is_some(), "still 30 minutes left: kept");
        assert!(e.last_error.is_some());
        assert_eq!(e.backoff.failures(), 1);
        // A failure once the token is past use drops it.
        let t2 = t0 + Duration::from_secs(3500);
        e.phase = Phase::Refreshing { generation: 3 };
        e.finish(3, Err(&err), RefreshMode::Ahead, t2, WALL, &mut Middle);
        assert!(e.held.is_none());
        assert_eq!(e.refreshes.denied, 2);
    }

    #[test]
    fn refresh_now_starts_an_attempt_at_once_or_joins_the_running_one() {
        let t0 = Instant::now();
        let mut e = entry(RefreshMode::Ahead, t0);
        e.start(t0, 1);
        assert!(!e.refresh_now(t0), "an attempt is running: joined");
        assert_eq!(e.phase, Phase::Refreshing { generation: 1 });
        let err = denied();
        e.finish(1, Err(&err), RefreshMode::Ahead, t0, WALL, &mut Middle);
        let Phase::Scheduled { at } = e.phase else {
            panic!("{:?}", e.phase)
        };
        assert!(at > t0, "backing off");
        let t1 = t0 + Duration::from_secs(1);
        assert!(e.refresh_now(t1), "asked: no backoff");
        assert!(e.pending(t1) && e.start(t1, 2));
        // On demand too: a request to refresh does not wait for the due time.
        let mut e = entry(RefreshMode::OnDemand, t0);
        assert_eq!(e.phase, Phase::Waiting { due: t0 });
        e.phase = Phase::Waiting { due: t0 + HOUR };
        assert!(e.refresh_now(t1));
        assert!(e.start(t1, 3));
    }

    #[test]
    fn a_link_event_ends_only_a_backoff_for_an_unreachable_endpoint_once() {
        let t0 = Instant::now();
        let mut e = entry(RefreshMode::Ahead, t0);
        assert!(e.start(t0, 1));
        assert!(!e.link_up(t0), "refreshing: left alone");
        let down = FetchError::Timeout {
            endpoint: "api.ecr.us-east-1.amazonaws.com".into(),
            deadline: Duration::from_secs(10),
        };
        e.finish(1, Err(&down), RefreshMode::Ahead, t0, WALL, &mut Middle);
        let t1 = t0 + Duration::from_millis(500);
        assert!(e.link_up(t1));
        assert_eq!(e.phase, Phase::Scheduled { at: t1 });
        assert!(!e.link_up(t1), "already due: a storm moves it once");
        assert!(e.start(t1, 2));
        // Denied: a link does not fix it, the backoff holds.
        let err = denied();
        e.finish(2, Err(&err), RefreshMode::Ahead, t1, WALL, &mut Middle);
        assert!(!e.link_up(t1 + Duration::from_secs(1)));
        // Healthy: never touched.
        let mut ok = entry(RefreshMode::Ahead, t0);
        ok.start(t0, 1);
        ok.finish(
            1,
            Ok(token(3600)),
            RefreshMode::Ahead,
            t0,
            WALL,
            &mut Middle,
        );
        assert!(!ok.link_up(t0));
        // On demand: the next request may start the attempt at once.
        let mut od = entry(RefreshMode::OnDemand, t0);
        od.phase = Phase::Refreshing { generation: 1 };
        od.finish(1, Err(&down), RefreshMode::OnDemand, t0, WALL, &mut Middle);
        assert!(od.link_up(t1));
        assert_eq!(od.phase, Phase::Waiting { due: t1 });
    }

    #[test]
    fn runway_is_the_usable_life_of_the_held_token() {
        let t0 = Instant::now();
        let mut e = entry(RefreshMode::Ahead, t0);
        assert_eq!(e.runway(t0), 0, "no token: no runway");
        e.start(t0, 1);
        e.finish(
            1,
            Ok(token(12 * 3600)),
            RefreshMode::Ahead,
            t0,
            WALL,
            &mut Middle,
        );
        let usable = 12 * 3600 - MIN_REMAINING_SECS + 1;
        assert_eq!(e.runway(t0), usable);
        assert_eq!(e.runway(t0 + HOUR), usable - 3600);
        assert_eq!(e.runway(t0 + 12 * HOUR), 0, "never negative");
    }

    #[test]
    fn a_result_of_a_superseded_attempt_is_stale() {
        let t0 = Instant::now();
        let mut e = entry(RefreshMode::Ahead, t0);
        assert!(e.start(t0, 7));
        e.reload(RefreshMode::Ahead, HOUR, t0);
        assert_eq!(
            e.phase,
            Phase::Scheduled { at: t0 },
            "attempt again at once"
        );
        assert!(e.start(t0, 8));
        let old = e.finish(
            7,
            Ok(token(3600)),
            RefreshMode::Ahead,
            t0,
            WALL,
            &mut Middle,
        );
        assert_eq!(old, Finished::Stale);
        assert!(e.held.is_none());
        assert_eq!(e.attempts, 0);
        assert!(matches!(
            e.finish(
                8,
                Ok(token(3600)),
                RefreshMode::Ahead,
                t0,
                WALL,
                &mut Middle
            ),
            Finished::Applied { .. }
        ));
    }

    #[test]
    fn on_demand_waits_for_a_request_and_honours_the_backoff() {
        let t0 = Instant::now();
        let mut e = entry(RefreshMode::OnDemand, t0);
        assert_eq!(e.wake_at(), None, "no timer");
        assert!(!e.pending(t0));
        assert!(e.requested(t0));
        assert!(e.start(t0, 1));
        let err = denied();
        let Finished::Applied { delay } =
            e.finish(1, Err(&err), RefreshMode::OnDemand, t0, WALL, &mut Middle)
        else {
            panic!("applied")
        };
        assert_eq!(e.phase, Phase::Waiting { due: t0 + delay });
        assert!(!e.requested(t0 + delay / 2), "inside the backoff");
        assert!(e.requested(t0 + delay));
        assert_eq!(e.last_used, t0 + delay);
    }

    #[test]
    fn a_reload_carries_the_due_time_across_modes() {
        let t0 = Instant::now();
        let due = t0 + HOUR;
        let mut e = entry(RefreshMode::Ahead, t0);
        e.phase = Phase::Scheduled { at: due };
        e.reload(RefreshMode::OnDemand, HOUR, t0);
        assert_eq!(e.phase, Phase::Waiting { due });
        e.reload(RefreshMode::Ahead, HOUR, t0);
        assert_eq!(e.phase, Phase::Scheduled { at: due });
    }
}
