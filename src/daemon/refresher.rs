//! The refresher: starts each registry's attempt when its phase says it is due, runs it with
//! the client of the registry's credential source, and hands the result back to the entry
//! ([`super::state::Entry::finish`]).
//!
//! One scheduler task sleeps until the earliest due attempt, a wake-up (a new entry, a
//! finished attempt, a reload) or shutdown; the attempts it starts run as tasks of its own
//! `JoinSet`, each ending at shutdown too, and the scheduler returns only when they have.
//! On-demand registries nobody has asked for in [`ON_DEMAND_IDLE`] are dropped here, so their
//! slots (at most [`super::MAX_ON_DEMAND`]) come free.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::schedule::SystemJitter;
use super::state::{Finished, Phase, Shared};
use crate::aws::credentials::{Source, SourceIdentity};
use crate::aws::ecr::{FetchError, TokenSource};
use crate::config::{DaemonConfig, RefreshMode};
use crate::registry::Registry;
use crate::token;

/// An on-demand registry no client has asked for in this long is dropped (its token with it).
pub const ON_DEMAND_IDLE: Duration = Duration::from_secs(24 * 3600);

/// Starts a refresh for every due registry, then sleeps until the next one is due, something
/// changes, or shutdown; at shutdown, starts no more and waits for the attempts under way
/// (each given the drain to finish, then dropped).
pub(super) async fn schedule_loop(shared: Arc<Shared>) {
    let mut attempts = JoinSet::new();
    let mut stopped = std::pin::pin!(shared.stopped());
    loop {
        let now = Instant::now();
        let (due, next_due) = start_due(&shared, now);
        for (host, registry, identity, generation) in due {
            let shared = shared.clone();
            // An attempt under way at shutdown gets the drain to finish (a client may be
            // waiting for it), then its request is dropped.
            let drained = shared.drained();
            attempts.spawn(async move {
                tokio::select! {
                    _ = refresh(&shared, host, registry, identity, generation) => {}
                    _ = drained => {}
                }
            });
        }
        // Reap what finished, so the set holds only attempts under way.
        while attempts.try_join_next().is_some() {}
        let wake = shared.wake.notified();
        let sleep = async {
            match next_due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = wake => {}
            _ = &mut stopped => break,
        }
    }
    while attempts.join_next().await.is_some() {}
}

/// Moves every due entry to its attempt (returning what each attempt needs) and drops idle
/// on-demand entries; also returns the next instant a timer is due.
#[allow(clippy::type_complexity)]
fn start_due(
    shared: &Shared,
    now: Instant,
) -> (
    Vec<(String, Registry, SourceIdentity, u64)>,
    Option<Instant>,
) {
    let mut st = shared.lock();
    let before = st.entries.len();
    st.entries.retain(|host, e| {
        let idle = e.on_demand
            && now.saturating_duration_since(e.last_used) >= ON_DEMAND_IDLE
            && !matches!(e.phase, Phase::Refreshing { .. });
        if idle {
            tracing::info!(registry = %host, "dropped: not asked for in a day");
        }
        !idle
    });
    if st.entries.len() != before {
        shared.sinks_due.notify_one();
        shared.metrics_due.notify_one();
        shared.shadow_due.notify_one();
    }
    let mut due = Vec::new();
    let mut next_due: Option<Instant> = None;
    let ready: Vec<String> = st
        .entries
        .iter()
        .filter(|(_, e)| e.wake_at().is_some_and(|at| at <= now))
        .map(|(host, _)| host.clone())
        .collect();
    for host in ready {
        let generation = st.next_generation();
        if let Some(e) = st.entries.get_mut(&host) {
            if e.start(now, generation) {
                due.push((host, e.registry.clone(), e.identity.clone(), generation));
            }
        }
    }
    for at in st.entries.values().filter_map(|e| e.wake_at()) {
        next_due = Some(next_due.map_or(at, |n| n.min(at)));
    }
    // On-demand entries are looked at again when they may be dropped.
    let idle_check = st
        .entries
        .values()
        .filter(|e| e.on_demand)
        .map(|e| e.last_used + ON_DEMAND_IDLE)
        .min();
    if let Some(at) = idle_check {
        next_due = Some(next_due.map_or(at, |n| n.min(at)));
    }
    (due, next_due)
}

/// The daemon's client for `source`: one SDK attempt per refresh (the daemon schedules its own
/// retries).
pub(super) async fn client_for(
    source: &Source,
    daemon: &DaemonConfig,
    deadline: Duration,
) -> Result<Arc<dyn TokenSource>, FetchError> {
    let client =
        crate::aws::ecr::Client::new(source, &home_region(source, daemon), deadline, 1).await?;
    Ok(Arc::new(client))
}

/// The region the daemon's client calls STS in ([`crate::aws::credentials::home_region`], with
/// the first configured registry's region as the fallback).
fn home_region(source: &Source, daemon: &DaemonConfig) -> String {
    let first = daemon.registries.first();
    crate::aws::credentials::home_region(source, first.map(Registry::region))
}

/// The client for `identity`, built (and kept) the first time a registry needs it. `Ok(None)`
/// when the configuration no longer gives `registry` that identity (a reload raced this
/// refresh).
async fn client_for_identity(
    shared: &Shared,
    registry: &Registry,
    identity: &SourceIdentity,
) -> Result<Option<Arc<dyn TokenSource>>, FetchError> {
    let (source, bases) = {
        let st = shared.lock();
        if let Some(c) = st.clients.get(identity) {
            return Ok(Some(c.clone()));
        }
        let source = Source::for_registry(&st.settings.config, registry.host());
        if source.identity() != *identity {
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

/// One attempt for `host` (generation `generation`), its result applied to the entry.
async fn refresh(
    shared: &Shared,
    host: String,
    registry: Registry,
    identity: SourceIdentity,
    generation: u64,
) {
    tracing::debug!(registry = %host, "refreshing");
    let result = match client_for_identity(shared, &registry, &identity).await {
        Ok(Some(client)) => client.fetch(&registry).await,
        Ok(None) => Err(FetchError::BadResponse {
            detail: "the configuration changed during the refresh".into(),
        }),
        Err(e) => Err(e),
    };
    let now = Instant::now();
    let wall = token::now();
    {
        let mut st = shared.lock();
        let mode = st.settings.refresh;
        let Some(e) = st.entries.get_mut(&host) else {
            return;
        };
        let applied = e.finish(
            generation,
            result.as_ref().map(Clone::clone),
            mode,
            now,
            wall,
            &mut SystemJitter,
        );
        let Finished::Applied { delay } = applied else {
            // A reload superseded this attempt; the entry has a new one due.
            drop(st);
            shared.wake.notify_one();
            return;
        };
        match &result {
            Ok(token) => {
                tracing::info!(
                    registry = %host,
                    expires_at = token.expires_at,
                    next_refresh_in_s = delay.as_secs(),
                    "token refreshed"
                );
                if let Some(floor) = &shared.floor {
                    if let Err(e) = floor.save() {
                        tracing::warn!("the time floor could not be kept: {e}");
                    }
                }
                if st.settings.set_clock == crate::config::SetClock::WhenUnsynchronized {
                    if let Err(crate::clock::NotSet::Refused(why)) =
                        crate::clock::set_system_clock()
                    {
                        tracing::warn!("set_clock: the system clock was not set: {why}");
                    }
                }
            }
            Err(err) => tracing::warn!(
                registry = %host,
                outcome = err.outcome().name(),
                failures = e.backoff.failures(),
                retry_in_s = %crate::clock::Seconds::<1>(delay),
                token_valid_for_s = e.usable(now).map(|h| (h.expires - now).as_secs()),
                "refresh failed: {err}"
            ),
        }
    }
    shared.sinks_due.notify_one();
    shared.metrics_due.notify_one();
    shared.shadow_due.notify_one();
    mark_ready_if_done(shared);
    shared.changed.notify_waiters();
    shared.wake.notify_one();
}

/// After the first round (every configured registry tried once): `READY=1`. Always refreshes
/// `STATUS=`.
pub(super) fn mark_ready_if_done(shared: &Shared) {
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
    let status = shared.status_line();
    if became_ready {
        shared.notifier.send(&format!("READY=1\nSTATUS={status}"));
    } else {
        shared.notifier.send(&format!("STATUS={status}"));
    }
}
