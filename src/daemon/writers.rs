//! The two writers: sink files (auth files kept current for consumers without a credential
//! helper) and the metrics file. File work (a lock another program may hold, two fsyncs) runs
//! on a blocking thread, never on the runtime's thread that serves the socket, the timers and
//! the watchdog; changes that arrive while a write is under way are coalesced into one more
//! write of the latest state. Both stop at shutdown after the write under way (each write is
//! atomic: a file is never left half-written).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::sink;
use super::state::Shared;
use crate::config::SinkConfig;
use crate::token::Secret;

/// How old the metrics file's durations (the offline runway) may get: about 290 writes of a
/// few KiB a day.
pub(super) const METRICS_FRESH: Duration = Duration::from_secs(300);

/// Rewrites `[daemon] metrics_file` after each change, at most once a second (a burst of
/// pulls is one write), and every [`METRICS_FRESH`] so the runway it reports stays current.
/// The path is read each time, so a reload can turn it on or off.
pub(super) async fn metrics_loop(shared: Arc<Shared>) {
    let mut stopped = std::pin::pin!(shared.stopped());
    loop {
        let path = shared.lock().settings.metrics_file.clone();
        if let Some(path) = path {
            let text = super::metrics::render(&shared.report());
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
        tokio::select! {
            _ = shared.metrics_due.notified() => {}
            _ = tokio::time::sleep(METRICS_FRESH) => {}
            _ = &mut stopped => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut stopped => return,
        }
    }
}

/// Keeps every sink file equal to the tokens the daemon would serve: written after each
/// change of tokens, and also when a held token stops being usable (on demand, or after a
/// failure that needs a person, no refresh comes to replace it), so no consumer is handed a
/// token past its use. A registry that leaves the daemon (a reload without it, an on-demand
/// registry dropped) has its entries removed too.
pub(super) async fn sink_loop(shared: Arc<Shared>) {
    let mut stopped = std::pin::pin!(shared.stopped());
    // The names this daemon has written a token under, so a registry that leaves is removed.
    let mut written: BTreeSet<String> = BTreeSet::new();
    loop {
        let expiry = next_expiry(&shared);
        let sleep = async {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.sinks_due.notified() => {}
            _ = sleep => {}
            _ = &mut stopped => return,
        }
        let (sinks, mut tokens) = snapshot(&shared);
        if sinks.is_empty() {
            written.clear();
            continue;
        }
        let present: BTreeSet<String> = tokens.iter().map(|(name, _)| name.clone()).collect();
        tokens.extend(
            written
                .difference(&present)
                .map(|gone| (gone.clone(), None)),
        );
        written = tokens
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        if let Err(e) = tokio::task::spawn_blocking(move || write_sinks(&sinks, &tokens)).await {
            tracing::warn!("sink writer stopped unexpectedly: {e}");
        }
    }
}

/// When the first held token stops being usable.
fn next_expiry(shared: &Shared) -> Option<Instant> {
    let st = shared.lock();
    let now = Instant::now();
    st.entries
        .values()
        .filter_map(|e| e.usable(now))
        .map(|h| h.unusable_at())
        .min()
}

/// The sinks, and each registry's name and aliases with its usable token (`None`: remove).
#[allow(clippy::type_complexity)]
fn snapshot(shared: &Shared) -> (Vec<SinkConfig>, Vec<(String, Option<Secret>)>) {
    let st = shared.lock();
    let now = Instant::now();
    // Each registry under its own name and its aliases: a consumer reading the file looks the
    // image's host up as it is written.
    let tokens = st
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
}

/// Brings every sink file up to date with the usable tokens (and removes entries whose token
/// is gone). Blocking. Failures are logged; the next change tries again.
fn write_sinks(sinks: &[SinkConfig], tokens: &[(String, Option<Secret>)]) {
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
