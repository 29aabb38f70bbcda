//! The images the daemon checks as a pull would (`[daemon] images`): at start (once the
//! registry's token is held) and hourly, with the token the daemon holds, for the platform this
//! build runs as (src/aws/images.rs does the asking and says what it found). Each result goes
//! to `status` and the metrics (`ecr_edge_image_check_ok`), so an alert fires before a
//! rollout pulls, not after.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::state::Shared;
use crate::agent::ImageStatus;
use crate::aws::images::{self, Platform, Verdict};
use crate::registry::ImageRef;

/// Between rounds of checks.
pub(super) const EVERY: Duration = Duration::from_secs(3600);
/// Before the first round, and between tries while a registry's token is not held yet.
const SOON: Duration = Duration::from_secs(2);
/// How long to keep trying for a token before saying there is none.
const TOKEN_WAIT: Duration = Duration::from_secs(120);

/// Checks `[daemon] images` until shutdown (the list is read each round: a reload applies).
pub(super) async fn images_loop(shared: Arc<Shared>) {
    let mut stopped = std::pin::pin!(shared.stopped());
    let started = Instant::now();
    // One TLS configuration for every check: its session cache lets the later connections
    // resume (no certificate chain on the uplink again).
    let tls = crate::aws::trust::client_config(None);
    let mut wait = SOON;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = &mut stopped => return,
        }
        let list = shared.lock().settings.images.clone();
        let mut waiting_for_tokens = false;
        for text in list {
            let checked = tokio::select! {
                c = check(&shared, &text, &tls) => c,
                _ = &mut stopped => return,
            };
            let Some(status) = checked else {
                waiting_for_tokens = true;
                if started.elapsed() < TOKEN_WAIT {
                    continue;
                }
                let status = ImageStatus {
                    image: text.clone(),
                    ok: false,
                    detail: format!(
                        "{text}: the daemon holds no token for its registry (list the registry \
                         in [daemon] registries; `ecr-edge status` says why it has none)"
                    ),
                    checked_at: crate::token::now(),
                };
                shared.lock().image_checks.insert(text, status);
                shared.metrics_due.notify_one();
                shared.shadow_due.notify_one();
                continue;
            };
            if !status.ok {
                tracing::warn!(image = %text, "image check: {}", status.detail);
            }
            shared.lock().image_checks.insert(text, status);
            shared.metrics_due.notify_one();
            shared.shadow_due.notify_one();
        }
        wait = if waiting_for_tokens && started.elapsed() < TOKEN_WAIT {
            SOON
        } else {
            EVERY
        };
    }
}

/// One image checked with the token held for its registry; `None` while none is held.
async fn check(
    shared: &Shared,
    text: &str,
    tls: &Result<Arc<rustls::ClientConfig>, crate::aws::trust::TrustError>,
) -> Option<ImageStatus> {
    let now = crate::token::now();
    let failed = |detail: String| ImageStatus {
        image: text.to_owned(),
        ok: false,
        detail,
        checked_at: now,
    };
    // Checked when the configuration loaded; a reload could not have let a bad one in.
    let image = match ImageRef::parse(text) {
        Ok(i) => i,
        Err(e) => return Some(failed(e)),
    };
    let password = {
        let st = shared.lock();
        let held = st
            .entries
            .get(image.registry.host())?
            .usable(Instant::now())?;
        held.token.password.clone()
    };
    let Some(wanted) = Platform::of_this_build() else {
        return Some(failed(format!(
            "{text}: this build's platform has no image name"
        )));
    };
    let tls = match tls {
        Ok(t) => t.clone(),
        Err(e) => return Some(failed(format!("{text}: TLS: {e}"))),
    };
    let limit = shared.deadline * 4;
    let asked = images::check(
        tls,
        image.registry.host(),
        &image.repository,
        &image.reference,
        password.expose(),
        &wanted,
    );
    Some(match tokio::time::timeout(limit, asked).await {
        Ok(report) => {
            let (verdict, detail) = images::verdict(&image, &wanted, &report);
            ImageStatus {
                image: text.to_owned(),
                ok: verdict != Verdict::Fails,
                detail,
                checked_at: now,
            }
        }
        Err(_) => failed(format!(
            "{text}: the registry did not answer within {}s",
            crate::clock::Seconds::<0>(limit)
        )),
    })
}
