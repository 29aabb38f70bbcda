//! An ECR authorization token: the password Docker sends, and when it stops working.
//!
//! The password is a secret: [`Token`]'s `Debug` redacts it, and nothing in this crate formats it
//! except the protocol writers that must hand it to a client.

use std::fmt;

/// Tokens with less than this much life left are treated as expired and never handed out: a
/// client may take minutes to pull a large image with the password it was given.
pub const MIN_REMAINING_SECS: i64 = 300;

/// The user name ECR expects with every token.
pub const USERNAME: &str = "AWS";

/// A secret string (a registry password): `Debug` shows `<redacted>`, and the text is read
/// only through [`Secret::expose`], by the protocol writers that must hand it to a client.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The secret text, for writing it where a client reads it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A registry password and its validity window, in whole seconds since the Unix epoch.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Token {
    /// The password half of the decoded `AWS:<password>` authorization token.
    pub password: Secret,
    /// When ECR said the token expires.
    pub expires_at: i64,
    /// When ecr-edge obtained it; with `expires_at`, gives the token's total lifetime.
    pub fetched_at: i64,
}

impl Token {
    /// Whether the token should be replaced: it is past half its life. Refreshing at half-life
    /// leaves hours of slack for a flaky link on ECR's 12-hour tokens.
    pub fn needs_refresh(&self, now: i64) -> bool {
        // Both times come from files and the daemon's socket: saturate, never overflow.
        let half = self.expires_at.saturating_sub(self.fetched_at) / 2;
        now >= self.fetched_at.saturating_add(half) || now < self.fetched_at
    }

    /// Whether the token can be served as it is: before half-life and usable.
    pub fn is_fresh(&self, now: i64) -> bool {
        !self.needs_refresh(now) && self.is_usable(now)
    }

    /// Whether the token may still be handed to a client: at least [`MIN_REMAINING_SECS`] left.
    pub fn is_usable(&self, now: i64) -> bool {
        usable(self.expires_at, now)
    }
}

/// Whether a token expiring at `expires_at` may be handed out at `now`: at least
/// [`MIN_REMAINING_SECS`] left.
pub fn usable(expires_at: i64, now: i64) -> bool {
    expires_at.saturating_sub(now) >= MIN_REMAINING_SECS
}

/// Trusted now, seconds since the Unix epoch: the system clock unless it is known wrong
/// (src/clock.rs).
pub fn now() -> i64 {
    crate::clock::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(fetched_at: i64, expires_at: i64) -> Token {
        Token {
            password: Secret::new("pw"),
            expires_at,
            fetched_at,
        }
    }

    #[test]
    fn refresh_at_half_life() {
        let t = token(1000, 1000 + 43_200);
        assert!(!t.needs_refresh(1000));
        assert!(!t.needs_refresh(1000 + 21_599));
        assert!(t.needs_refresh(1000 + 21_600));
        // A clock that went backwards past the fetch time cannot vouch for the token's age.
        assert!(t.needs_refresh(999));
    }

    /// Times read from a cache file or the socket may be anything: no overflow, and a token
    /// whose window makes no sense is refreshed, not served.
    #[test]
    fn extreme_times_never_overflow() {
        for (fetched, expires, now) in [
            (i64::MIN, i64::MAX, 0),
            (i64::MAX, i64::MIN, 0),
            (i64::MIN, i64::MIN, i64::MAX),
            (i64::MAX, i64::MAX, i64::MIN),
            (0, i64::MAX, i64::MAX),
        ] {
            let t = token(fetched, expires);
            let _ = (t.needs_refresh(now), t.is_usable(now), t.is_fresh(now));
        }
        assert!(token(i64::MAX, i64::MIN).needs_refresh(0));
        assert!(!token(0, i64::MIN).is_usable(0));
    }

    #[test]
    fn usable_until_margin() {
        let t = token(0, 10_000);
        assert!(t.is_usable(10_000 - MIN_REMAINING_SECS));
        assert!(!t.is_usable(10_000 - MIN_REMAINING_SECS + 1));
        assert!(!t.is_usable(20_000));
    }

    #[test]
    fn debug_redacts_password() {
        let t = Token {
            password: Secret::new("s3cr3t-password"),
            expires_at: 1,
            fetched_at: 0,
        };
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }
}
