//! An ECR authorization token: the password Docker sends, and when it stops working.
//!
//! The password is a secret: [`Token`]'s `Debug` redacts it, and nothing in this crate formats it
//! except the protocol writers that must hand it to a client.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Tokens with less than this much life left are treated as expired and never handed out: a
/// client may take minutes to pull a large image with the password it was given.
pub const MIN_REMAINING_SECS: i64 = 300;

/// The user name ECR expects with every token.
pub const USERNAME: &str = "AWS";

/// A registry password and its validity window, in whole seconds since the Unix epoch.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The password half of the decoded `AWS:<password>` authorization token.
    pub password: String,
    /// When ECR said the token expires.
    pub expires_at: i64,
    /// When ecr-edge obtained it; with `expires_at`, gives the token's total lifetime.
    pub fetched_at: i64,
}

impl Token {
    /// Whether the token should be replaced: it is past half its life. Refreshing at half-life
    /// leaves hours of slack for a flaky link on ECR's 12-hour tokens.
    pub fn needs_refresh(&self, now: i64) -> bool {
        let half = (self.expires_at - self.fetched_at) / 2;
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

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("password", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("fetched_at", &self.fetched_at)
            .finish()
    }
}

/// Whether a token expiring at `expires_at` may be handed out at `now`: at least
/// [`MIN_REMAINING_SECS`] left.
pub fn usable(expires_at: i64, now: i64) -> bool {
    expires_at.saturating_sub(now) >= MIN_REMAINING_SECS
}

/// Seconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(fetched_at: i64, expires_at: i64) -> Token {
        Token {
            password: "pw".into(),
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
            password: "s3cr3t-password".into(),
            expires_at: 1,
            fetched_at: 0,
        };
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }
}
