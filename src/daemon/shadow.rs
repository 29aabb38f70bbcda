//! Fleet health in AWS IoT (`[iot] shadow_endpoint`): the daemon reports a small document to
//! the thing's named shadow `ecr-edge`, so an operator asks Fleet Indexing "which devices have
//! under 2 hours of runway" (`shadow.name.ecr-edge.reported.runway_min_h < 2`) instead of
//! scraping each device. src/aws/shadow.rs sends; this module says what and when.
//!
//! Every value is put in a bucket and reported as the bucket's lower bound, so what the shadow
//! says is never more than the truth at the time it was sent, and it changes rarely: an update
//! goes out only when a value changes bucket, never sooner than `[iot] shadow_min_interval`
//! after the last one (ten minutes by default). Arrays are sent whole (a shadow update
//! replaces an array; objects would merge and keep registries that left).
//!
//! The first update waits until every configured registry has had its first attempt and the
//! images their first check (at most two minutes), so a start is one update, not three. A
//! failed update is tried again after the interval, doubled per failure up to six hours.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use super::schedule::Jitter;
use super::state::Shared;
use crate::agent::{ShadowStatus, StatusReport};
use crate::aws::iot::{Device, FileStamps};
use crate::aws::shadow::{self, ShadowError};
use crate::config::IotConfig;

/// Runway buckets, hours (lower bounds). A healthy device's runway stays between about 6
/// and 12 hours (a token is refreshed at 40-50 % of its life), all in the top bucket, so it
/// sends nothing; the finer buckets below tell an outage's progress.
const RUNWAY_FLOORS_H: [f64; 5] = [4.0, 2.0, 1.0, 0.5, 0.0];
/// Certificate buckets, days left (lower bounds).
const CERT_FLOORS_DAYS: [i64; 6] = [365, 90, 30, 7, 1, 0];
/// Clock offset buckets, seconds (lower bounds of the magnitude; under a minute is 0, as the
/// daemon does not set the clock for less).
const OFFSET_FLOORS_S: [i64; 5] = [31_536_000, 2_592_000, 86_400, 3_600, 60];
/// The longest wait before trying a failed update again.
const RETRY_CAP: Duration = Duration::from_secs(6 * 3600);
/// The least wait after a refusal that needs a person (a policy, a certificate).
const NEEDS_PERSON: Duration = Duration::from_secs(3600);
/// How long the first update waits for the first image checks.
const FIRST_WAIT: Duration = Duration::from_secs(120);
/// The first update is spread over this much after the first round (a fleet powered on
/// together does not report together).
const FIRST_SPREAD: Duration = Duration::from_secs(5);

/// The `reported` document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reported {
    /// ecr-edge's version.
    pub version: &'static str,
    /// The least runway over the registries, hours (bucketed); 0 without any.
    pub runway_min_h: f64,
    /// Each registry's runway, hours (bucketed), with its last error class while failing.
    pub runway: Vec<Runway>,
    /// The last error class of the registry with the least runway among those failing
    /// (`unreachable`, `denied`, …), `none` when none is.
    pub last_error: &'static str,
    /// AWS's time minus the system clock, seconds (bucketed, sign kept); 0 under a minute.
    pub clock_offset_s: i64,
    /// Days until the device certificate expires (bucketed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_days: Option<i64>,
    /// Images checked (`[daemon] images`).
    pub images_checked: usize,
    /// The images whose check fails.
    pub images_failing: Vec<String>,
}

/// One registry's runway in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Runway {
    /// The registry host.
    pub registry: String,
    /// Hours (bucketed).
    pub h: f64,
    /// Its last error class, while its last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

fn runway_floor_h(seconds: i64) -> f64 {
    let hours = seconds as f64 / 3600.0;
    RUNWAY_FLOORS_H
        .into_iter()
        .find(|f| hours >= *f)
        .unwrap_or(0.0)
}

fn cert_floor_days(seconds_left: i64) -> i64 {
    let days = seconds_left.div_euclid(86_400);
    CERT_FLOORS_DAYS
        .into_iter()
        .find(|f| days >= *f)
        .unwrap_or(0)
}

fn offset_floor(seconds: i64) -> i64 {
    let floor = OFFSET_FLOORS_S
        .into_iter()
        .find(|f| seconds.unsigned_abs() >= f.unsigned_abs())
        .unwrap_or(0);
    floor * seconds.signum()
}

/// An outcome name as a `'static` (the report keeps no borrowed status).
fn class(name: &str) -> &'static str {
    crate::aws::Outcome::ALL
        .into_iter()
        .map(crate::aws::Outcome::name)
        .find(|n| *n == name)
        .unwrap_or("other")
}

impl Reported {
    /// The report of `status`.
    pub fn of(status: &StatusReport) -> Reported {
        let runway: Vec<Runway> = status
            .registries
            .iter()
            .map(|r| Runway {
                registry: r.registry.clone(),
                h: runway_floor_h(r.runway_seconds),
                error: r.last_error_class.as_deref().map(class),
            })
            .collect();
        let runway_min_h = runway.iter().map(|r| r.h).reduce(f64::min).unwrap_or(0.0);
        let last_error = status
            .registries
            .iter()
            .filter_map(|r| Some((r.runway_seconds, r.last_error_class.as_deref()?)))
            .min_by_key(|(secs, _)| *secs)
            .map_or("none", |(_, c)| class(c));
        let clock = status.clock.clone().unwrap_or_default();
        Reported {
            version: env!("CARGO_PKG_VERSION"),
            runway_min_h,
            runway,
            last_error,
            clock_offset_s: offset_floor(clock.offset_seconds),
            cert_days: status
                .device_certificate_expires_at
                .map(|at| cert_floor_days(at.saturating_sub(clock.now))),
            images_checked: status.images.len(),
            images_failing: status
                .images
                .iter()
                .filter(|i| !i.ok)
                .map(|i| i.image.clone())
                .collect(),
        }
    }

    /// The body of `POST /things/<thing>/shadow?name=ecr-edge`.
    pub fn document(&self) -> Bytes {
        #[derive(Serialize)]
        struct State<'a> {
            reported: &'a Reported,
        }
        #[derive(Serialize)]
        struct Document<'a> {
            state: State<'a>,
        }
        serde_json::to_vec(&Document {
            state: State { reported: self },
        })
        .map(Bytes::from)
        .unwrap_or_default()
    }
}

/// How long until the report of `status` changes by time alone (a runway or the certificate's
/// days crossing into a lower bucket); `None` when nothing will.
pub fn next_change(status: &StatusReport) -> Option<Duration> {
    let runways = status.registries.iter().filter_map(|r| {
        let floor = (runway_floor_h(r.runway_seconds) * 3600.0) as i64;
        (floor > 0).then(|| r.runway_seconds - floor + 1)
    });
    let now = status.clock.as_ref().map_or(0, |c| c.now);
    let cert = status.device_certificate_expires_at.and_then(|at| {
        let left = at.saturating_sub(now);
        let floor = cert_floor_days(left) * 86_400;
        (floor > 0).then(|| left - floor + 1)
    });
    runways
        .chain(cert)
        .filter(|s| *s > 0)
        .min()
        .map(|s| Duration::from_secs(s.unsigned_abs()))
}

/// When to send: the last report that landed, the floor between updates, the backoff after
/// failures. Pure: the daemon and the simulated day in the tests drive it alike.
#[derive(Debug)]
pub struct Reporter {
    sent: Option<Reported>,
    /// When the last update was tried, and not before when the next may go.
    not_before: Option<Instant>,
    min_gap: Duration,
    failures: u32,
}

/// What [`Reporter::next`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send the current report now.
    Send,
    /// The report changed; send it at this instant.
    At(Instant),
    /// Nothing to send.
    Idle,
}

impl Reporter {
    /// A reporter that has sent nothing, with `min_gap` between updates.
    pub fn new(min_gap: Duration) -> Reporter {
        Reporter {
            sent: None,
            not_before: None,
            min_gap,
            failures: 0,
        }
    }

    /// What to do at `now` with the `current` report.
    pub fn next(&self, now: Instant, current: &Reported) -> Next {
        if self.sent.as_ref() == Some(current) {
            return Next::Idle;
        }
        match self.not_before {
            Some(t) if now < t => Next::At(t),
            _ => Next::Send,
        }
    }

    /// `report`, tried at `now`, landed: the next waits the interval.
    pub fn landed(&mut self, now: Instant, report: Reported) {
        self.sent = Some(report);
        self.failures = 0;
        self.not_before = Some(now + self.min_gap);
    }

    /// An update tried at `now` did not land: the next try waits the interval, doubled per
    /// failure up to [`RETRY_CAP`], at least [`NEEDS_PERSON`] when `transient` is false (a
    /// policy or a certificate to fix), the last fifth of it jittered.
    pub fn failed(&mut self, now: Instant, transient: bool, jitter: &mut impl Jitter) {
        self.failures = self.failures.saturating_add(1);
        let wait = self
            .min_gap
            .saturating_mul(1 << self.failures.saturating_sub(1).min(10))
            .max(if transient {
                Duration::ZERO
            } else {
                NEEDS_PERSON
            })
            .min(RETRY_CAP);
        self.not_before = Some(now + jitter.between(wait.mul_f64(0.8), wait));
    }
}

/// Reports to the shadow until shutdown, while `[iot] shadow_endpoint` is set (read each
/// round: a reload turns it on, off, or to another endpoint).
pub(super) async fn shadow_loop(shared: Arc<Shared>) {
    let mut stopped = std::pin::pin!(shared.stopped());
    let started = Instant::now();
    let first_spread = crate::aws::iot::jitter(FIRST_SPREAD);
    let mut reporter: Option<(String, Reporter)> = None;
    let mut identity: Option<(Option<FileStamps>, IotConfig, Arc<rustls::ClientConfig>)> = None;
    let mut jitter = super::schedule::SystemJitter;
    loop {
        let (iot, waiting) = {
            let st = shared.lock();
            let images_pending = st
                .settings
                .images
                .iter()
                .any(|i| !st.image_checks.contains_key(i));
            let waiting = !st.ready
                || (images_pending && started.elapsed() < FIRST_WAIT)
                || started.elapsed() < first_spread;
            (st.settings.config.iot.clone(), waiting)
        };
        let configured = iot.and_then(|i| Some((i.shadow_endpoint.clone()?, i)));
        let mut wake_at = None;
        match configured {
            None => {
                reporter = None;
                identity = None;
                shared.lock().shadow = None;
            }
            Some((endpoint, iot)) => {
                if reporter.as_ref().is_none_or(|(e, _)| *e != endpoint) {
                    let gap = Duration::from_secs(iot.shadow_min_interval);
                    reporter = Some((endpoint.clone(), Reporter::new(gap)));
                    shared.lock().shadow = Some(ShadowStatus {
                        endpoint: endpoint.clone(),
                        ..ShadowStatus::default()
                    });
                }
                let Some((_, rep)) = reporter.as_mut() else {
                    continue;
                };
                if waiting {
                    wake_at = Some(Instant::now() + Duration::from_secs(1));
                } else {
                    let status = shared.report();
                    let current = Reported::of(&status);
                    let now = Instant::now();
                    let by_time = next_change(&status).map(|d| now + d);
                    match rep.next(now, &current) {
                        Next::Send => {
                            let tls = match device_tls(&iot, &mut identity) {
                                Ok(t) => t,
                                Err(e) => {
                                    rep.failed(now, false, &mut jitter);
                                    record(&shared, Err(e), &current);
                                    continue;
                                }
                            };
                            let sent = tokio::select! {
                                r = send(tls, &endpoint, &iot.thing_name, current.document()) => r,
                                _ = &mut stopped => return,
                            };
                            match &sent {
                                Ok(_) => rep.landed(now, current.clone()),
                                Err(e) => {
                                    if matches!(e, ShadowError::Handshake(_)) {
                                        // A rotated or re-registered certificate: load again.
                                        identity = None;
                                    }
                                    rep.failed(now, e.is_transient(), &mut jitter);
                                }
                            }
                            record(&shared, sent, &current);
                            continue;
                        }
                        Next::At(t) => wake_at = Some(by_time.map_or(t, |b| b.min(t))),
                        Next::Idle => wake_at = by_time,
                    }
                }
            }
        }
        let sleep = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            _ = shared.shadow_due.notified() => {}
            _ = &mut stopped => return,
        }
    }
}

/// The device's TLS configuration for the data endpoint, loaded again when `[iot]` or the
/// identity's files changed (a rotation), else the one held (its sessions resume).
fn device_tls(
    iot: &IotConfig,
    held: &mut Option<(Option<FileStamps>, IotConfig, Arc<rustls::ClientConfig>)>,
) -> Result<Arc<rustls::ClientConfig>, ShadowError> {
    let stamps = FileStamps::of(iot);
    if let Some((s, c, tls)) = held {
        if *s == stamps && c == iot {
            return Ok(tls.clone());
        }
    }
    let device =
        Device::load(iot, crate::token::now()).map_err(|e| ShadowError::Identity(e.to_string()))?;
    let tls = shadow::tls(&device);
    *held = Some((stamps, iot.clone(), tls.clone()));
    Ok(tls)
}

/// One update, on a thread of its own (a TPM key signs synchronously), bounded as a whole.
async fn send(
    tls: Arc<rustls::ClientConfig>,
    endpoint: &str,
    thing: &str,
    document: Bytes,
) -> Result<u64, ShadowError> {
    let left = shadow::UPDATE_DEADLINE;
    let (e, t) = (endpoint.to_owned(), thing.to_owned());
    let work = crate::aws::iot::on_own_thread(left, move || async move {
        shadow::update(tls, &e, &t, document).await
    });
    match tokio::time::timeout(left, work).await {
        Ok(Ok(result)) => result,
        Ok(Err(detail)) => Err(ShadowError::Unreachable(detail)),
        Err(_) => Err(ShadowError::Unreachable(
            crate::aws::https::timed_out(crate::aws::iot::host_port(endpoint).0)
                .unwrap_or_else(|| format!("no answer within {}s", left.as_secs())),
        )),
    }
}

/// Puts an update's result into the status (and the journal when it failed).
fn record(shared: &Shared, result: Result<u64, ShadowError>, report: &Reported) {
    let mut st = shared.lock();
    let Some(s) = st.shadow.as_mut() else {
        return;
    };
    match result {
        Ok(version) => {
            s.updates += 1;
            s.version = version;
            s.last_update_at = Some(crate::token::now());
            s.last_error = None;
            s.reported = serde_json::to_value(report).ok();
            tracing::debug!(version, "shadow updated");
        }
        Err(e) => {
            s.failures += 1;
            tracing::warn!("shadow {}: {e}", shadow::SHADOW_NAME);
            s.last_error = Some(e.to_string());
        }
    }
    drop(st);
    shared.metrics_due.notify_one();
}

/// What goes wrong in a [`simulate_day`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// Nothing.
    None,
    /// The uplink is down from `.0` for `.1`: refreshes fail (`unreachable`) and updates do
    /// not land either.
    UplinkDown(Duration, Duration),
    /// ECR refuses the refreshes (`denied`: a policy changed) from `.0` for `.1`, while AWS
    /// IoT is reachable: the shadow tells the runway falling.
    Refused(Duration, Duration),
}

/// A simulated day of one registry's reports, for the tests and `benches/bytes.rs`: the
/// daemon's refresh schedule (a 12-hour token refreshed at 40-50 % of its life; failed
/// refreshes retried every 5 minutes), `trouble`, and this module's buckets, interval and
/// backoff, minute by minute from a start (whose update counts).
pub fn simulate_day(trouble: Trouble, min_gap: Duration, jitter: &mut impl Jitter) -> Day {
    use super::schedule::{refresh_delay, usable_life, MAX_TOKEN_LIFE};
    let t0 = Instant::now();
    let life = usable_life(MAX_TOKEN_LIFE);
    let within = |at: Duration, start: Duration, len: Duration| at >= start && at < start + len;
    let refused = |at: Duration| match trouble {
        Trouble::UplinkDown(s, l) | Trouble::Refused(s, l) => within(at, s, l),
        Trouble::None => false,
    };
    let down = |at: Duration| matches!(trouble, Trouble::UplinkDown(s, l) if within(at, s, l));
    let class = match trouble {
        Trouble::Refused(..) => "denied",
        _ => "unreachable",
    };
    let mut expires = t0 + life;
    let mut next_refresh = t0 + refresh_delay(life, jitter);
    let mut failing = false;
    let mut reporter = Reporter::new(min_gap);
    let mut day = Day {
        lowest_runway_h: f64::MAX,
        ..Day::default()
    };
    for minute in 0..=1440u32 {
        let at = Duration::from_secs(60) * minute;
        let now = t0 + at;
        if now >= next_refresh {
            failing = refused(at);
            if failing {
                next_refresh = now + Duration::from_secs(300);
            } else {
                expires = now + life;
                next_refresh = now + refresh_delay(life, jitter);
            }
        }
        let runway = i64::try_from(expires.saturating_duration_since(now).as_secs()).unwrap_or(0);
        let status = StatusReport {
            registries: vec![crate::agent::RegistryStatus {
                registry: "123456789012.dkr.ecr.us-west-2.amazonaws.com".into(),
                on_demand: false,
                expires_at: None,
                last_refresh: None,
                last_error: None,
                last_error_class: failing.then(|| class.to_owned()),
                failures: 0,
                next_attempt: None,
                source: String::new(),
                refreshes: crate::agent::Outcomes::default(),
                runway_seconds: runway,
            }],
            device_certificate_expires_at: Some(200 * 86_400),
            clock: Some(crate::agent::ClockStatus::default()),
            ..StatusReport::default()
        };
        let current = Reported::of(&status);
        if let Some(h) = day.lowest_runway_h.partial_cmp(&current.runway_min_h) {
            if h.is_gt() {
                day.lowest_runway_h = current.runway_min_h;
            }
        }
        if reporter.next(now, &current) == Next::Send {
            if down(at) {
                reporter.failed(now, true, jitter);
                day.failed += 1;
            } else {
                day.updates += 1;
                day.document = current.document();
                day.document_bytes += day.document.len() as u64;
                reporter.landed(now, current);
            }
        }
    }
    day
}

/// What [`simulate_day`] counted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Day {
    /// Updates that landed.
    pub updates: u32,
    /// Updates tried while the uplink was down.
    pub failed: u32,
    /// The JSON bodies of the updates that landed, bytes.
    pub document_bytes: u64,
    /// The least runway reported (hours, bucketed).
    pub lowest_runway_h: f64,
    /// The last document that landed.
    pub document: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{ClockStatus, ImageStatus, RegistryStatus};

    const HOUR: i64 = 3600;
    const NOW: i64 = 1_800_000_000;

    struct Middle;
    impl Jitter for Middle {
        fn unit(&mut self) -> f64 {
            0.5
        }
    }

    fn registry(host: &str, runway: i64, error: Option<&str>) -> RegistryStatus {
        RegistryStatus {
            registry: host.into(),
            on_demand: false,
            expires_at: None,
            last_refresh: None,
            last_error: error.map(str::to_owned),
            last_error_class: error.map(str::to_owned),
            failures: 0,
            next_attempt: None,
            source: String::new(),
            refreshes: Default::default(),
            runway_seconds: runway,
        }
    }

    fn status(registries: Vec<RegistryStatus>) -> StatusReport {
        StatusReport {
            schema: crate::agent::STATUS_SCHEMA,
            version: String::new(),
            identity: String::new(),
            started_at: NOW,
            credentials_expire_at: None,
            registries,
            device_certificate_expires_at: Some(NOW + 200 * 86_400),
            iot_credentials_expire_at: None,
            requests: Default::default(),
            upstream: Vec::new(),
            tpm_signatures: 0,
            clock: Some(ClockStatus {
                system: NOW,
                now: NOW,
                source: "system".into(),
                floor: NOW - 86_400,
                offset_seconds: 0,
            }),
            images: Vec::new(),
            shadow: None,
        }
    }

    #[test]
    fn values_are_reported_as_their_bucket_floor() {
        assert_eq!(runway_floor_h(11 * HOUR), 4.0);
        assert_eq!(runway_floor_h(4 * HOUR), 4.0);
        assert_eq!(runway_floor_h(4 * HOUR - 1), 2.0);
        assert_eq!(runway_floor_h(HOUR + 1), 1.0);
        assert_eq!(runway_floor_h(1799), 0.0);
        assert_eq!(runway_floor_h(0), 0.0);
        assert_eq!(cert_floor_days(400 * 86_400), 365);
        assert_eq!(cert_floor_days(29 * 86_400), 7);
        assert_eq!(cert_floor_days(-5), 0, "expired");
        assert_eq!(offset_floor(30), 0);
        assert_eq!(offset_floor(-19_000_786), -2_592_000);
        assert_eq!(offset_floor(4000), 3600);
    }

    #[test]
    fn the_report_names_the_worst_registry_and_failing_images() {
        let mut s = status(vec![
            registry("a.example", 11 * HOUR, None),
            registry("b.example", 3 * HOUR, Some("unreachable")),
            registry("c.example", 5 * HOUR, Some("denied")),
        ]);
        s.images = vec![
            ImageStatus {
                image: "a.example/app:1".into(),
                ok: true,
                detail: String::new(),
                checked_at: NOW,
            },
            ImageStatus {
                image: "a.example/app:2".into(),
                ok: false,
                detail: String::new(),
                checked_at: NOW,
            },
        ];
        let r = Reported::of(&s);
        assert_eq!(r.runway_min_h, 2.0);
        assert_eq!(
            r.last_error, "unreachable",
            "the failing one with least runway"
        );
        assert_eq!(r.cert_days, Some(90));
        assert_eq!(r.images_checked, 2);
        assert_eq!(r.images_failing, vec!["a.example/app:2".to_owned()]);
        let doc: serde_json::Value = serde_json::from_slice(&r.document()).unwrap();
        assert_eq!(
            doc["state"]["reported"]["runway"][1]["error"],
            "unreachable"
        );
        assert!(doc["state"]["reported"]["runway"][0].get("error").is_none());
        // Nothing failing: "none"; no registries: 0 hours.
        assert_eq!(Reported::of(&status(vec![])).last_error, "none");
        assert_eq!(Reported::of(&status(vec![])).runway_min_h, 0.0);
    }

    #[test]
    fn the_next_change_is_the_next_bucket_crossing() {
        let s = status(vec![registry("a.example", 5 * HOUR, None)]);
        assert_eq!(next_change(&s), Some(Duration::from_secs(3601)));
        let mut s = status(vec![registry("a.example", 1000, None)]);
        s.device_certificate_expires_at = Some(NOW + 7 * 86_400 + 50);
        assert_eq!(
            next_change(&s),
            Some(Duration::from_secs(51)),
            "the certificate"
        );
        s.device_certificate_expires_at = None;
        assert_eq!(
            next_change(&s),
            None,
            "under half an hour, no certificate: nothing"
        );
    }

    #[test]
    fn updates_wait_the_interval_and_back_off_after_failures() {
        let t0 = Instant::now();
        let gap = Duration::from_secs(600);
        let mut rep = Reporter::new(gap);
        let a = Reported::of(&status(vec![registry("a.example", 11 * HOUR, None)]));
        let b = Reported::of(&status(vec![registry("a.example", 3 * HOUR, None)]));
        assert_eq!(rep.next(t0, &a), Next::Send);
        rep.landed(t0, a.clone());
        assert_eq!(rep.next(t0 + gap * 2, &a), Next::Idle, "unchanged: nothing");
        assert_eq!(rep.next(t0 + gap / 2, &b), Next::At(t0 + gap), "the floor");
        assert_eq!(rep.next(t0 + gap, &b), Next::Send);
        let t1 = t0 + gap;
        rep.failed(t1, true, &mut Middle);
        assert_eq!(rep.next(t1, &b), Next::At(t1 + gap.mul_f64(0.9)));
        rep.failed(t1, true, &mut Middle);
        assert_eq!(rep.next(t1, &b), Next::At(t1 + (gap * 2).mul_f64(0.9)));
        rep.failed(t1, false, &mut Middle);
        assert_eq!(
            rep.next(t1, &b),
            Next::At(t1 + NEEDS_PERSON.mul_f64(0.9)),
            "a refusal waits for a person"
        );
        for _ in 0..20 {
            rep.failed(t1, true, &mut Middle);
        }
        assert_eq!(rep.next(t1, &b), Next::At(t1 + RETRY_CAP.mul_f64(0.9)));
        rep.landed(t1, b.clone());
        assert_eq!(rep.next(t1 + gap, &b), Next::Idle);
    }

    /// A simulated day: a healthy device reports once (its start) and then nothing, its
    /// runway never leaving the top bucket. An uplink outage cannot be reported while it lasts
    /// (the tries fail); after it, at most the state the link came back to and the recovery. ECR
    /// refusing refreshes for 12 hours while AWS IoT is reachable shows the error at once and
    /// the runway falling bucket by bucket to 0, then the recovery: a handful of updates.
    #[test]
    fn a_simulated_day_sends_a_handful_of_updates() {
        let gap = Duration::from_secs(crate::config::DEFAULT_SHADOW_MIN_INTERVAL);
        let hour = Duration::from_secs(3600);
        for seed in 1..50 {
            let mut jitter = crate::daemon::schedule::SeededJitter::new(seed);
            let healthy = simulate_day(Trouble::None, gap, &mut jitter);
            assert_eq!(healthy.updates, 1, "{healthy:?}");
            assert_eq!(healthy.lowest_runway_h, 4.0);
            let down = simulate_day(Trouble::UplinkDown(2 * hour, 6 * hour), gap, &mut jitter);
            // The start; then, when a retry lands before the next refresh, the state the
            // link came back to (failing, runway down) and the recovery.
            assert!(matches!(down.updates, 1 | 3), "{down:?}");
            let refused = simulate_day(Trouble::Refused(2 * hour, 12 * hour), gap, &mut jitter);
            assert_eq!(refused.lowest_runway_h, 0.0, "{refused:?}");
            assert!((6..=8).contains(&refused.updates), "{refused:?}");
        }
    }
}
