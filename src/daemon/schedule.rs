//! When the daemon acts: refresh times and retry delays, as pure functions of durations and a
//! source of jitter, so they run unchanged in real time (the daemon), in virtual time (tests)
//! and for a simulated fleet of 100,000 devices (`examples/fleet.rs`).
//!
//! - A token is refreshed at 40–50 % of its usable life (the time until it has
//!   [`MIN_REMAINING_SECS`] left), uniformly: about half-life, spread so a fleet does not
//!   synchronise.
//! - IoT role credentials are refreshed [`CREDENTIALS_MARGIN`] before they expire, minus up to
//!   a minute of jitter.
//! - Failures back off with decorrelated jitter (each delay uniform between the base and three
//!   times the previous one, capped): 1 s up to a 5-minute cap by default. Throttling starts the
//!   series at 10 s. Configuration errors (access denied, no credentials, a missing registry)
//!   will not fix themselves: they are retried every 3 to 6 caps (15–30 minutes by default).
//! - One change to textbook decorrelated jitter: once a delay reaches the cap, later ones stay
//!   in the top fifth of it (0.8–1.0 × cap). Left alone, the series keeps falling back toward
//!   the base after low draws and averages about half the cap; for 100,000 devices waiting out
//!   an outage that is ~700 calls per second when the links return, over ECR's 500/s quota
//!   (`examples/fleet.rs` measures both).

use std::time::Duration;

use crate::aws::Failure;
use crate::token::MIN_REMAINING_SECS;

/// First retry delay after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Default ceiling of the retry delay (`[daemon] backoff_max`).
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(300);

/// Smallest delay after a throttling answer.
pub const THROTTLE_BASE: Duration = Duration::from_secs(10);

/// How long before expiry IoT role credentials are replaced.
pub const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);

/// ECR authorization tokens are valid for 12 hours; a token is never trusted for longer, even
/// if a wrong device clock makes the expiry look further away.
pub const MAX_TOKEN_LIFE: Duration = Duration::from_secs(12 * 3600);

/// Uniform random numbers in `[0, 1)`.
pub trait Jitter {
    /// The next number.
    fn unit(&mut self) -> f64;

    /// Uniform in `[lo, hi]` (returns `lo` when `hi <= lo`).
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        lo + (hi - lo).mul_f64(self.unit())
    }
}

/// Jitter from the operating system's random source (the daemon).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemJitter;

impl Jitter for SystemJitter {
    fn unit(&mut self) -> f64 {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 8];
        // getrandom does not fail on Linux after boot; 0.5 is a harmless fallback.
        if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
            return 0.5;
        }
        (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Reproducible jitter (SplitMix64) for tests and simulations.
#[derive(Debug, Clone)]
pub struct SeededJitter(u64);

impl SeededJitter {
    /// A sequence determined by `seed`.
    pub fn new(seed: u64) -> SeededJitter {
        SeededJitter(seed)
    }
}

impl Jitter for SeededJitter {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How long a token obtained now stays valid: `expires_at - now` by the clocks involved, never
/// more than [`MAX_TOKEN_LIFE`], zero if already past.
pub fn token_life(expires_at: i64, now: i64) -> Duration {
    let secs = u64::try_from(expires_at.saturating_sub(now)).unwrap_or(0);
    Duration::from_secs(secs).min(MAX_TOKEN_LIFE)
}

/// The usable part of a token's life: until it has [`MIN_REMAINING_SECS`] left.
pub fn usable_life(life: Duration) -> Duration {
    life.saturating_sub(Duration::from_secs(MIN_REMAINING_SECS as u64))
}

/// When to refresh a token that has `life` left: 40–50 % of its usable life from now.
pub fn refresh_delay(life: Duration, jitter: &mut dyn Jitter) -> Duration {
    usable_life(life).mul_f64(0.40 + 0.10 * jitter.unit())
}

/// When to refresh credentials that expire in `life`: [`CREDENTIALS_MARGIN`] before, minus up
/// to a minute of jitter; at once if that is already past.
pub fn credentials_delay(life: Duration, jitter: &mut dyn Jitter) -> Duration {
    life.saturating_sub(CREDENTIALS_MARGIN)
        .saturating_sub(Duration::from_secs(60).mul_f64(jitter.unit()))
}

/// How long credentials expiring at `expiry` stay valid after `now`: `None` when they have
/// already expired (or expire this second), so they are never held or served. Credentials
/// without an expiry (long-term keys) are treated as valid for an hour and fetched again; no
/// life counts for more than [`MAX_TOKEN_LIFE`] (role sessions last at most 12 hours), which
/// also keeps `Instant + life` from overflowing on a far-future answer.
pub fn credentials_life(
    expiry: Option<std::time::SystemTime>,
    now: std::time::SystemTime,
) -> Option<Duration> {
    match expiry {
        None => Some(Duration::from_secs(3600)),
        Some(at) => at
            .duration_since(now)
            .ok()
            .filter(|d| !d.is_zero())
            .map(|d| d.min(MAX_TOKEN_LIFE)),
    }
}

/// Decorrelated-jitter backoff state for one thing being refreshed.
#[derive(Debug, Clone)]
pub struct Backoff {
    cap: Duration,
    prev: Option<Duration>,
    failures: u32,
    at_cap: bool,
}

impl Backoff {
    /// A backoff whose delays never exceed `cap` (except for [`Failure::Config`]).
    pub fn new(cap: Duration) -> Backoff {
        Backoff {
            cap: cap.max(BACKOFF_BASE),
            prev: None,
            failures: 0,
            at_cap: false,
        }
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets the failures (after a success).
    pub fn reset(&mut self) {
        self.prev = None;
        self.failures = 0;
        self.at_cap = false;
    }

    /// The delay before the next attempt after a failure of `kind`.
    pub fn next(&mut self, kind: Failure, jitter: &mut dyn Jitter) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = match kind {
            Failure::Config => {
                // Not part of the transient series: the next transient failure starts again at 1 s.
                self.prev = None;
                self.at_cap = false;
                return jitter.between(self.cap * 3, self.cap * 6);
            }
            _ if self.at_cap => jitter.between(self.cap.mul_f64(0.8), self.cap),
            Failure::Throttled => {
                let prev = self.prev.unwrap_or(THROTTLE_BASE).max(THROTTLE_BASE);
                jitter.between(THROTTLE_BASE, prev * 3)
            }
            Failure::Transient => {
                let prev = self.prev.unwrap_or(BACKOFF_BASE);
                jitter.between(BACKOFF_BASE, prev * 3)
            }
        };
        if delay >= self.cap {
            self.at_cap = true;
        }
        let delay = delay.min(self.cap);
        self.prev = Some(delay);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_credentials_have_no_life() {
        use std::time::UNIX_EPOCH;
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let at = |s: u64| Some(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(credentials_life(at(1_999_999_000), now), None);
        assert_eq!(credentials_life(at(2_000_000_000), now), None);
        assert_eq!(
            credentials_life(at(2_000_000_900), now),
            Some(Duration::from_secs(900))
        );
        assert_eq!(credentials_life(None, now), Some(Duration::from_secs(3600)));
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn seeded_jitter_is_uniform_enough() {
        let mut j = SeededJitter::new(7);
        let xs: Vec<f64> = (0..10_000).map(|_| j.unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        let low = xs.iter().filter(|x| **x < 0.1).count();
        assert!((800..1200).contains(&low), "{low} in the lowest tenth");
    }

    #[test]
    fn twelve_hour_token_refreshes_between_40_and_50_percent() {
        let mut j = SeededJitter::new(1);
        let usable = 12 * HOUR - Duration::from_secs(300);
        let delays: Vec<Duration> = (0..1000)
            .map(|_| refresh_delay(12 * HOUR, &mut j))
            .collect();
        let (min, max) = (
            delays.iter().min().copied().unwrap(),
            delays.iter().max().copied().unwrap(),
        );
        assert!(min >= usable.mul_f64(0.40) && max <= usable.mul_f64(0.50));
        // Spread over most of the window, so a fleet does not refresh in step.
        assert!(max - min > usable.mul_f64(0.09), "{min:?}..{max:?}");
    }

    #[test]
    fn a_token_is_refreshed_before_it_becomes_unusable() {
        let mut j = SeededJitter::new(2);
        for life_s in [0, 1, 299, 300, 301, 330, 900, 43_200] {
            let life = Duration::from_secs(life_s);
            let d = refresh_delay(life, &mut j);
            assert!(d <= usable_life(life), "life {life_s}s refresh {d:?}");
        }
    }

    #[test]
    fn token_life_is_capped_and_never_negative() {
        assert_eq!(token_life(1000, 400), Duration::from_secs(600));
        assert_eq!(token_life(400, 1000), Duration::ZERO);
        assert_eq!(token_life(i64::MAX, i64::MIN), MAX_TOKEN_LIFE);
        assert_eq!(token_life(10 * 43_200, 0), MAX_TOKEN_LIFE);
    }

    #[test]
    fn credentials_refresh_five_minutes_before_expiry() {
        let mut j = SeededJitter::new(3);
        for _ in 0..100 {
            let d = credentials_delay(HOUR, &mut j);
            assert!(d <= HOUR - CREDENTIALS_MARGIN);
            assert!(d >= HOUR - CREDENTIALS_MARGIN - Duration::from_secs(60));
        }
        assert_eq!(
            credentials_delay(Duration::from_secs(100), &mut j),
            Duration::ZERO
        );
    }

    #[test]
    fn transient_backoff_grows_from_one_second_to_the_cap() {
        let mut j = SeededJitter::new(4);
        let mut b = Backoff::new(DEFAULT_BACKOFF_CAP);
        let delays: Vec<Duration> = (0..40)
            .map(|_| b.next(Failure::Transient, &mut j))
            .collect();
        assert!(delays[0] >= BACKOFF_BASE && delays[0] <= 3 * BACKOFF_BASE);
        assert!(delays
            .iter()
            .all(|d| *d >= BACKOFF_BASE && *d <= DEFAULT_BACKOFF_CAP));
        // Each delay is at most three times the one before.
        assert!(delays.windows(2).all(|w| w[1] <= w[0] * 3));
        // Within 40 failures the series reaches the cap, and then stays near it.
        let first = delays
            .iter()
            .position(|d| *d == DEFAULT_BACKOFF_CAP)
            .unwrap();
        assert!(delays[first..]
            .iter()
            .all(|d| *d >= DEFAULT_BACKOFF_CAP.mul_f64(0.8)));
        assert_eq!(b.failures(), 40);
        b.reset();
        assert!(b.next(Failure::Transient, &mut j) <= 3 * BACKOFF_BASE);
    }

    #[test]
    fn at_the_cap_the_mean_delay_stays_near_the_cap() {
        // What keeps a fleet's retry rate under ECR's quota after an outage: 100,000 devices
        // over a mean delay of at least 0.85 x 300 s is under 400 calls per second.
        let mut j = SeededJitter::new(9);
        let mut b = Backoff::new(DEFAULT_BACKOFF_CAP);
        for _ in 0..50 {
            b.next(Failure::Transient, &mut j);
        }
        let n = 10_000;
        let total: Duration = (0..n).map(|_| b.next(Failure::Transient, &mut j)).sum();
        let mean = total / n;
        assert!(mean >= DEFAULT_BACKOFF_CAP.mul_f64(0.85), "{mean:?}");
    }

    #[test]
    fn throttling_starts_at_ten_seconds() {
        let mut j = SeededJitter::new(5);
        let mut b = Backoff::new(DEFAULT_BACKOFF_CAP);
        for _ in 0..20 {
            let d = b.next(Failure::Throttled, &mut j);
            assert!(d >= THROTTLE_BASE && d <= DEFAULT_BACKOFF_CAP, "{d:?}");
        }
    }

    #[test]
    fn configuration_errors_wait_three_to_six_caps() {
        let mut j = SeededJitter::new(6);
        let cap = Duration::from_secs(60);
        let mut b = Backoff::new(cap);
        for _ in 0..20 {
            let d = b.next(Failure::Config, &mut j);
            assert!(d >= cap * 3 && d <= cap * 6, "{d:?}");
        }
        // A transient failure after a configuration error starts the fast series again.
        assert!(b.next(Failure::Transient, &mut j) <= 3 * BACKOFF_BASE);
    }

    #[test]
    fn a_tiny_cap_is_raised_to_the_base() {
        let mut j = SeededJitter::new(8);
        let mut b = Backoff::new(Duration::ZERO);
        assert_eq!(b.next(Failure::Transient, &mut j), BACKOFF_BASE);
    }
}
