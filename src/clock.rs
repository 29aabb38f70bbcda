//! Trusted time: what "now" means for a device whose clock may be wrong (no RTC battery, NTP
//! blocked).
//!
//! The system clock is used as it is unless it is known wrong:
//! - **The floor**: the latest of this binary's build time and the last time an AWS server whose
//!   certificate verified said it was ([`raise_floor`], kept on disk by `store::floor`). A clock
//!   behind the floor is wrong; until AWS says more, now is the floor.
//! - **AWS's time**: the `Date` of a response on a verified connection ([`observe_date`]) gives
//!   the offset between the system clock and AWS. It is held against the monotonic clock: if the
//!   system clock is stepped later (NTP arrives, someone runs `date -s`), the wall clock moves
//!   differently from the monotonic one, the step is noticed and the offset dropped.
//!
//! TLS certificates ([`TlsTime`]), SigV4 signatures (the SDK's time source), token expiry and the
//! refresh schedule all read [`now`]. Time comes only from servers whose certificates verified at
//! or after the floor, so a server cannot move the device's time back past it, and a certificate
//! that expired before the floor is refused whatever the clock says.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Offsets up to this (milliseconds) are within what a `Date` header can say (whole seconds, and
/// the round trip): the system clock is kept as it is.
pub const SYNCED_WITHIN_MS: i64 = 2_000;

/// How far (milliseconds) the wall clock may move apart from the monotonic clock, beyond the
/// drift below, before it counts as set: a step of the system clock drops the offset.
const STEP_MS: i64 = 2_000;

/// Drift allowed between the two clocks while NTP slews one of them: 1 ms per second (the
/// kernel slews at most 0.5 ms/s).
const DRIFT_PER_SEC_MS: i64 = 1;

/// The process's clock state.
static CLOCK: Clock = Clock::new();

/// A floor and AWS's time, held against the monotonic clock. The process has one ([`read`],
/// [`observe`]); tests make their own and pass the clocks' readings in.
#[derive(Debug)]
pub struct Clock {
    /// Seconds since the epoch before which the system clock is known wrong.
    floor: AtomicI64,
    anchor: Mutex<Option<Anchor>>,
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    /// AWS's time when it was taken, milliseconds since the epoch.
    aws_ms: i64,
    /// The system clock then, milliseconds.
    wall_ms: i64,
    /// The monotonic clock then.
    at: Instant,
}

/// The system clock, milliseconds since the epoch (negative before 1970).
pub fn system_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The system clock, seconds since the epoch (0 if it is before 1970).
pub fn system() -> i64 {
    system_ms().max(0) / 1000
}

/// The floor, seconds since the epoch.
pub fn floor() -> i64 {
    CLOCK.floor()
}

/// Raises the floor to `secs` (never lowers it): a time an authenticated server gave, or one
/// kept on disk from such a time. Returns whether it rose.
pub fn raise_floor(secs: i64) -> bool {
    CLOCK.raise_floor(secs)
}

/// Where [`now`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The system clock, not known to be wrong.
    System,
    /// The system clock corrected by AWS's time (the offset in [`Reading::offset_ms`]).
    Aws,
    /// The floor: the system clock is behind it and AWS has not been heard yet.
    Floor,
}

impl Source {
    /// As `status --json` and the metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            Source::System => "system",
            Source::Aws => "aws",
            Source::Floor => "floor",
        }
    }
}

/// One reading of trusted time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Trusted now, milliseconds since the epoch.
    pub now_ms: i64,
    /// The system clock, milliseconds.
    pub system_ms: i64,
    /// The floor, seconds.
    pub floor: i64,
    /// AWS's time minus the system clock, milliseconds, when AWS's time is held.
    pub offset_ms: Option<i64>,
    /// Where `now_ms` comes from.
    pub source: Source,
}

impl Reading {
    /// Trusted now, seconds.
    pub fn now(&self) -> i64 {
        self.now_ms.div_euclid(1000)
    }

    /// Whether the time is known: not only the floor (a clock behind the floor that AWS has not
    /// corrected yet says nothing about how much later it really is).
    pub fn known(&self) -> bool {
        self.source != Source::Floor
    }
}

impl Clock {
    /// A clock whose floor is this binary's build time, with no AWS time yet.
    pub const fn new() -> Clock {
        Clock {
            floor: AtomicI64::new(crate::BUILD_EPOCH),
            anchor: Mutex::new(None),
        }
    }

    fn floor(&self) -> i64 {
        self.floor.load(Ordering::Relaxed)
    }

    fn raise_floor(&self, secs: i64) -> bool {
        self.floor.fetch_max(secs, Ordering::Relaxed) < secs
    }

    fn anchor(&self) -> std::sync::MutexGuard<'_, Option<Anchor>> {
        self.anchor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Trusted time when the system clock reads `system_ms` and the monotonic clock `mono`.
    pub fn read_at(&self, system_ms: i64, mono: Instant) -> Reading {
        let floor = self.floor();
        let floor_ms = floor.saturating_mul(1000);
        let mut anchor = self.anchor();
        if let Some(a) = *anchor {
            let elapsed =
                i64::try_from(mono.saturating_duration_since(a.at).as_millis()).unwrap_or(i64::MAX);
            let moved = system_ms.saturating_sub(a.wall_ms);
            let allowed = STEP_MS.saturating_add(elapsed / 1000 * DRIFT_PER_SEC_MS);
            if moved.saturating_sub(elapsed).abs() > allowed {
                *anchor = None;
                tracing::info!(
                    "the system clock was set (it moved {} s in {} s): AWS's time offset is \
                     dropped until the next response from AWS",
                    moved / 1000,
                    elapsed / 1000
                );
            } else {
                return Reading {
                    now_ms: a.aws_ms.saturating_add(elapsed).max(floor_ms),
                    system_ms,
                    floor,
                    offset_ms: Some(a.aws_ms - a.wall_ms),
                    source: Source::Aws,
                };
            }
        }
        let (now_ms, source) = if system_ms < floor_ms {
            (floor_ms, Source::Floor)
        } else {
            (system_ms, Source::System)
        };
        Reading {
            now_ms,
            system_ms,
            floor,
            offset_ms: None,
            source,
        }
    }

    /// Takes AWS's time `aws_ms` (milliseconds), received when the system clock read
    /// `received_ms` and the monotonic clock `mono`: raises the floor; holds the offset when it
    /// is beyond [`SYNCED_WITHIN_MS`], else drops any held one (the system clock is right).
    /// Returns the offset, milliseconds.
    pub fn observe_at(&self, aws_ms: i64, received_ms: i64, mono: Instant) -> i64 {
        self.raise_floor(aws_ms.div_euclid(1000));
        let offset = aws_ms - received_ms;
        let mut anchor = self.anchor();
        let had = anchor.is_some();
        *anchor = (offset.abs() > SYNCED_WITHIN_MS).then_some(Anchor {
            aws_ms,
            wall_ms: received_ms,
            at: mono,
        });
        if anchor.is_some() && !had {
            tracing::warn!(
                "the system clock is {} s {} AWS's time: ecr-edge uses AWS's time (from a server \
                 whose certificate verified) until the clock is set",
                offset.abs() / 1000,
                if offset > 0 { "behind" } else { "ahead of" }
            );
        }
        offset
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

/// Trusted time now, with where it comes from.
pub fn read() -> Reading {
    CLOCK.read_at(system_ms(), Instant::now())
}

/// Trusted now, seconds since the epoch.
pub fn now() -> i64 {
    read().now()
}

/// Trusted now as a `SystemTime`.
pub fn now_system_time() -> SystemTime {
    let ms = read().now_ms.max(0);
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// AWS's time from the `Date` header (`Thu, 03 Dec 2026 13:30:00 GMT`) of a response on a
/// connection whose server certificate verified, received when the system clock read
/// `received_ms`. The header has whole seconds: the middle of that second is taken. See
/// [`Clock::observe_at`]; returns the offset, milliseconds.
pub fn observe_date(date: &str, received_ms: i64) -> Option<i64> {
    let secs = parse_http_date(date)?;
    Some(CLOCK.observe_at(secs.saturating_mul(1000) + 500, received_ms, Instant::now()))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 5.6.7), seconds since the epoch.
pub fn parse_http_date(date: &str) -> Option<i64> {
    aws_smithy_types::DateTime::from_str(date.trim(), aws_smithy_types::date_time::Format::HttpDate)
        .ok()
        .map(|t| t.secs())
}

/// systemd-timesyncd's mark that it synchronized the clock (it exists until the next boot).
pub const SYNCHRONIZED_MARK: &str = "/run/systemd/timesync/synchronized";

/// Least offset from AWS's time (milliseconds) for which `set_clock` sets the system clock.
pub const SET_CLOCK_BEYOND_MS: i64 = 60_000;

/// Why the system clock was not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotSet {
    /// It is within [`SET_CLOCK_BEYOND_MS`] of AWS's time, or AWS's time is not held.
    CloseEnough,
    /// An NTP client synchronized it ([`SYNCHRONIZED_MARK`]): it is left to that client.
    Synchronized,
    /// The system refused (without CAP_SYS_TIME: EPERM), in words.
    Refused(String),
}

/// `[daemon] set_clock = "when-unsynchronized"`: steps the system clock to AWS's time when it
/// is off by more than a minute and no NTP client has synchronized it. Never earlier than the
/// floor. Returns the old and new time, milliseconds, when it was set; logged at warning.
///
/// # Errors
/// [`NotSet`] saying why not.
pub fn set_system_clock() -> Result<(i64, i64), NotSet> {
    let r = read();
    let offset = r.offset_ms.unwrap_or(0);
    if r.source != Source::Aws || offset.abs() <= SET_CLOCK_BEYOND_MS {
        return Err(NotSet::CloseEnough);
    }
    if std::path::Path::new(SYNCHRONIZED_MARK).exists() {
        return Err(NotSet::Synchronized);
    }
    let target = r.now_ms.max(r.floor.saturating_mul(1000));
    // Whole milliseconds since the epoch (the floor keeps it positive); the C type's width
    // differs between targets, which `from_duration` takes care of.
    let spec = nix::sys::time::TimeSpec::from_duration(Duration::from_millis(
        u64::try_from(target).unwrap_or(0),
    ));
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, spec).map_err(|e| {
        NotSet::Refused(match e {
            nix::errno::Errno::EPERM => "the daemon may not set the clock (it needs \
                CAP_SYS_TIME and ProtectClock=no: the README's set_clock drop-in)"
                .to_owned(),
            other => other.desc().to_owned(),
        })
    })?;
    tracing::warn!(
        old = %rfc3339_ms(r.system_ms),
        new = %rfc3339_ms(target),
        "set the system clock to AWS's time (set_clock = \"when-unsynchronized\"; no NTP client \
         had synchronized it)"
    );
    Ok((r.system_ms, target))
}

/// `2026-12-03T13:30:00Z` for seconds since the epoch, for people and logs.
pub fn rfc3339(secs: i64) -> String {
    aws_smithy_types::DateTime::from_secs(secs)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| secs.to_string())
}

fn rfc3339_ms(ms: i64) -> String {
    rfc3339(ms.div_euclid(1000))
}

/// A duration for people, in seconds with `D` decimals (`2.5`), rounded to the nearest: written
/// with integers, so a message or log field about a wait does not bring in float formatting,
/// whose code a daemon would otherwise keep resident for one line (BENCHMARKS.md, issue 30).
pub struct Seconds<const D: u32>(pub Duration);

impl<const D: u32> std::fmt::Display for Seconds<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scale = 10u64.pow(D);
        // Rounding can carry into the whole seconds (0.96 s is "1.0").
        let units = self.0.as_secs().saturating_mul(scale).saturating_add(
            (u64::from(self.0.subsec_nanos()) * scale + 500_000_000) / 1_000_000_000,
        );
        let (whole, fraction) = (units / scale, units % scale);
        if D == 0 {
            write!(f, "{whole}")
        } else {
            write!(f, "{whole}.{fraction:0width$}", width = D as usize)
        }
    }
}

/// What rustls judges certificates at: trusted now, so a device behind its floor checks AWS's
/// certificates at the floor (never earlier) instead of refusing them all as "not yet valid".
#[derive(Debug, Default)]
pub struct TlsTime;

impl rustls::time_provider::TimeProvider for TlsTime {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        let ms = u64::try_from(read().now_ms).ok()?;
        Some(rustls::pki_types::UnixTime::since_unix_epoch(
            Duration::from_millis(ms),
        ))
    }
}

/// What the AWS SDK signs with (SigV4) and judges credentials' expiry by.
#[derive(Debug, Default)]
pub struct SdkTime;

impl aws_smithy_async::time::TimeSource for SdkTime {
    fn now(&self) -> SystemTime {
        now_system_time()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    /// Real time for these tests: a year after the build.
    fn aws() -> i64 {
        (crate::BUILD_EPOCH + 365 * 86_400) * 1000
    }

    #[test]
    fn a_clock_at_1970_is_at_the_floor_until_aws_answers() {
        let (c, t0) = (Clock::new(), Instant::now());
        let r = c.read_at(0, t0);
        assert_eq!(
            (r.now(), r.source, r.known()),
            (crate::BUILD_EPOCH, Source::Floor, false)
        );
        assert_eq!(c.observe_at(aws(), 0, t0), aws());
        let r = c.read_at(5_000, t0 + Duration::from_secs(5));
        assert_eq!((r.source, r.now_ms), (Source::Aws, aws() + 5_000));
        assert_eq!(c.floor(), aws() / 1000);
    }

    #[test]
    fn clocks_behind_and_ahead_are_corrected_and_a_synced_one_is_kept() {
        let t0 = Instant::now();
        for wall in [
            crate::BUILD_EPOCH * 1000, // at the build date
            aws() - DAY_MS,            // a day behind
            aws() - 730 * DAY_MS,      // two years behind
            aws() + DAY_MS,            // a day ahead
        ] {
            let c = Clock::new();
            c.observe_at(aws(), wall, t0);
            let r = c.read_at(wall + 60_000, t0 + Duration::from_secs(60));
            assert_eq!(
                (r.source, r.now_ms, r.offset_ms),
                (Source::Aws, aws() + 60_000, Some(aws() - wall)),
                "{wall}"
            );
        }
        // Within the Date header's resolution: the system clock is right.
        let c = Clock::new();
        c.observe_at(aws(), aws() + 800, t0);
        assert_eq!(c.read_at(aws() + 900, t0).source, Source::System);
    }

    #[test]
    fn a_clock_step_drops_the_offset_but_slewing_does_not() {
        let (c, t0) = (Clock::new(), Instant::now());
        c.observe_at(aws(), 0, t0);
        // An hour later with 0.5 ms/s of slew: still AWS's time.
        let hour = Duration::from_secs(3600);
        assert_eq!(c.read_at(3_600_000 + 1_800, t0 + hour).source, Source::Aws);
        // NTP arrives: the wall clock jumps to the right time.
        let r = c.read_at(aws() + 3_600_000, t0 + hour);
        assert_eq!((r.source, r.offset_ms), (Source::System, None));
        // Someone sets it back to 1970: behind the floor (AWS's time raised it): the floor.
        let r = c.read_at(0, t0 + hour);
        assert_eq!((r.source, r.now()), (Source::Floor, aws() / 1000));
    }

    #[test]
    fn the_floor_never_falls() {
        let c = Clock::new();
        assert!(!c.raise_floor(crate::BUILD_EPOCH - 10));
        assert!(c.raise_floor(aws() / 1000));
        assert!(!c.raise_floor(aws() / 1000 - 1), "never lowered");
    }

    #[test]
    fn http_dates_are_read() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn seconds_are_written_rounded_to_their_decimals() {
        let ms = Duration::from_millis;
        assert_eq!(Seconds::<1>(ms(2_000)).to_string(), "2.0");
        assert_eq!(Seconds::<1>(ms(2_449)).to_string(), "2.4");
        assert_eq!(Seconds::<1>(ms(2_450)).to_string(), "2.5");
        assert_eq!(Seconds::<1>(ms(960)).to_string(), "1.0");
        assert_eq!(Seconds::<1>(ms(0)).to_string(), "0.0");
        assert_eq!(Seconds::<0>(ms(29_500)).to_string(), "30");
        assert_eq!(Seconds::<0>(ms(29_499)).to_string(), "29");
        assert_eq!(
            Seconds::<3>(Duration::from_nanos(1_234_500_000)).to_string(),
            "1.235"
        );
        // No overflow, whatever the duration.
        assert_eq!(
            Seconds::<1>(Duration::MAX).to_string(),
            (u64::MAX / 10).to_string() + ".5"
        );
    }
}
