//! How an AWS call ended, in the two shapes callers act on: the retry class ([`Failure`]: how
//! soon to try again) and the outcome counted in metrics and status ([`Outcome`]). Owned here,
//! beside the errors they classify ([`crate::aws::ecr::FetchError::failure`] and
//! [`crate::aws::ecr::FetchError::outcome`]), so the AWS clients know nothing of the daemon
//! that schedules their retries.

/// What kind of failure an attempt ended in, for the retry delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Network, timeout, server error: may clear any moment.
    Transient,
    /// The service asked us to slow down.
    Throttled,
    /// Permissions, credentials, configuration: needs a person, so retry rarely.
    Config,
}

/// How one refresh attempt ended, as metrics and `status` count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A token was obtained.
    Ok,
    /// Throttled by ECR, STS or the IoT provider.
    Throttled,
    /// The endpoint could not be reached or did not answer in time (DNS included).
    Unreachable,
    /// Access denied (ECR or an STS role hop).
    Denied,
    /// No credentials, or credentials rejected (profile, keys, identity token).
    Credentials,
    /// The clock was off (signature or certificate not yet valid).
    ClockSkew,
    /// The device identity could not be exchanged (other than the above).
    Iot,
    /// Anything else (a server error, an unusable answer, this build).
    Other,
}

impl Outcome {
    /// Every outcome, in exposition order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::Throttled,
        Outcome::Unreachable,
        Outcome::Denied,
        Outcome::Credentials,
        Outcome::ClockSkew,
        Outcome::Iot,
        Outcome::Other,
    ];

    /// Its name in metrics labels and the status JSON.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Throttled => "throttled",
            Outcome::Unreachable => "unreachable",
            Outcome::Denied => "denied",
            Outcome::Credentials => "credentials",
            Outcome::ClockSkew => "clock_skew",
            Outcome::Iot => "iot",
            Outcome::Other => "other",
        }
    }
}
