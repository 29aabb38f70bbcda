//! The daemon's local socket protocol, and the blocking client that the helper and
//! `ecr-edge status` use.
//!
//! One JSON request line; one JSON reply line, or `"wait"` first when the daemon must fetch
//! before it can answer. Enums use serde's external tagging (`{"get":{…}}`, `"status"`): the
//! internally tagged form costs ~40 KB of buffering code in the binary. The client is plain std (no async runtime), so asking the daemon
//! costs the helper one `connect` when no daemon runs, and a round trip of a few microseconds
//! when one does.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::aws::Outcome;

/// Longest request or reply line accepted.
pub const MAX_LINE: u64 = 256 * 1024;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// A token for `registry`, obtained with the credential source named `identity`.
    Get {
        /// The registry host.
        registry: String,
        /// The asking helper's credential-source identity; the daemon answers only for its own.
        identity: String,
    },
    /// The daemon's state.
    Status,
    /// Refresh these registries now (every registry the daemon holds when empty): a top-up
    /// before a planned outage. The answer comes when each attempt has ended.
    Refresh {
        /// Registry hosts.
        registries: Vec<String>,
    },
}

/// What the daemon answers.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A usable token.
    Token {
        /// The registry password.
        password: crate::token::Secret,
        /// When it expires (seconds since the epoch).
        expires_at: i64,
    },
    /// The daemon is fetching; the answer follows.
    Wait,
    /// The daemon could not get a usable token; the message names the cause.
    Error {
        /// The cause.
        message: String,
    },
    /// The daemon will not answer this client for this request (another identity, a peer not
    /// allowed, too many registries). The helper does the work itself.
    Refused {
        /// Why.
        reason: String,
    },
    /// The daemon's state.
    Status(Box<StatusReport>),
    /// What a [`Request::Refresh`] did, a line per registry.
    Refreshed(Vec<Refreshed>),
}

/// One registry's refresh, for `ecr-edge refresh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refreshed {
    /// The registry host.
    pub registry: String,
    /// Why the attempt failed, in words; `None` when it got a token.
    pub error: Option<String>,
    /// The offline runway after it (see [`RegistryStatus::runway_seconds`]).
    pub runway_seconds: i64,
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Token {
                password,
                expires_at,
            } => f
                .debug_struct("Token")
                .field("password", password)
                .field("expires_at", expires_at)
                .finish(),
            Reply::Wait => f.write_str("Wait"),
            Reply::Error { message } => f.debug_struct("Error").field("message", message).finish(),
            Reply::Refused { reason } => f.debug_struct("Refused").field("reason", reason).finish(),
            Reply::Status(s) => f.debug_tuple("Status").field(s).finish(),
            Reply::Refreshed(r) => f.debug_tuple("Refreshed").field(r).finish(),
        }
    }
}

/// The daemon's state, for `ecr-edge status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The schema of this report: [`STATUS_SCHEMA`]. Fields are only ever added; a reader of
    /// an older schema ignores the new ones (0: a daemon from before the schema was numbered).
    #[serde(default)]
    pub schema: u32,
    /// `ecr-edge <version> (<target>)`.
    pub version: String,
    /// The credential-source identity the daemon serves.
    pub identity: String,
    /// When the daemon started (seconds since the epoch).
    pub started_at: i64,
    /// When the role credentials held for the local credentials endpoint expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_expire_at: Option<i64>,
    /// One entry per registry.
    pub registries: Vec<RegistryStatus>,
    /// notAfter of the device certificate (`[iot]`), seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_certificate_expires_at: Option<i64>,
    /// When the credentials from the IoT exchange that the daemon holds expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_credentials_expire_at: Option<i64>,
    /// Helper and provider requests on the socket since the start, by answer.
    #[serde(default)]
    pub requests: Requests,
    /// What the daemon's calls to AWS moved since the start, per endpoint kind (every kind
    /// listed, zeros included).
    #[serde(default)]
    pub upstream: Vec<Upstream>,
    /// Signatures the TPM made for the daemon since the start (a device key in the TPM: one
    /// per IoT handshake that did not resume a session). Schema 3.
    #[serde(default)]
    pub tpm_signatures: u64,
    /// The daemon's time: the system clock, trusted time, the floor, AWS's offset. Schema 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockStatus>,
    /// The images the daemon checks (`[daemon] images`), each as last checked. Schema 5.
    #[serde(default)]
    pub images: Vec<ImageStatus>,
    /// The fleet-health reports to the IoT shadow, when `[iot] shadow_endpoint` is set.
    /// Schema 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStatus>,
}

/// The daemon's reports to its IoT named shadow (src/daemon/shadow.rs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowStatus {
    /// `host[:port]` of the IoT data endpoint.
    pub endpoint: String,
    /// Updates the service accepted since the daemon started.
    pub updates: u64,
    /// Updates that did not land.
    pub failures: u64,
    /// When the last accepted update was sent (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_at: Option<i64>,
    /// The shadow's version after it.
    #[serde(default)]
    pub version: u64,
    /// Why the last update did not land, cleared by one that does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The document last accepted: the `reported` state, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<serde_json::Value>,
}

/// One image the daemon checked as a pull would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStatus {
    /// The image reference.
    pub image: String,
    /// Whether a pull would work.
    pub ok: bool,
    /// What the check found, in words (the fix, when it fails).
    pub detail: String,
    /// When it was checked (seconds since the epoch).
    pub checked_at: i64,
}

/// What the daemon believes the time is, and why (src/clock.rs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockStatus {
    /// The system clock, seconds since the epoch.
    pub system: i64,
    /// The time the daemon uses (TLS, signing, expiry), seconds since the epoch.
    pub now: i64,
    /// `system` (the system clock), `aws` (corrected by AWS's time) or `floor` (the clock is
    /// behind the floor and AWS has not answered yet).
    pub source: String,
    /// The floor: before it the clock is known wrong (the build time, or the last time AWS
    /// gave), seconds since the epoch.
    pub floor: i64,
    /// AWS's time minus the system clock, seconds, when the clock is off by more than the
    /// `Date` header can tell (2 s); 0 otherwise.
    pub offset_seconds: i64,
}

impl ClockStatus {
    /// This process's clock now.
    pub fn now() -> ClockStatus {
        let r = crate::clock::read();
        ClockStatus {
            system: r.system_ms.div_euclid(1000),
            now: r.now(),
            source: r.source.name().to_owned(),
            floor: r.floor,
            offset_seconds: r.offset_ms.map_or(0, |ms| ms / 1000),
        }
    }
}

/// One endpoint kind's traffic (see [`crate::aws::traffic`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// `ecr`, `ecr_public`, `iot`, `sts` or `other`.
    pub endpoint: String,
    /// HTTP requests sent (each retry counts).
    pub requests: u64,
    /// TCP connections opened.
    pub connections: u64,
    /// TLS handshakes that resumed an earlier session.
    pub tls_resumed: u64,
    /// Bytes written to the network (TLS records, handshakes included).
    pub bytes_sent: u64,
    /// Bytes read from the network.
    pub bytes_received: u64,
}

impl Upstream {
    /// This process's totals so far.
    pub fn now() -> Vec<Upstream> {
        crate::aws::traffic::snapshot()
            .into_iter()
            .map(|(e, t)| Upstream {
                endpoint: e.label().to_owned(),
                requests: t.requests,
                connections: t.connections,
                tls_resumed: t.tls_resumed,
                bytes_sent: t.bytes_sent,
                bytes_received: t.bytes_received,
            })
            .collect()
    }
}

/// The schema number [`StatusReport`] carries (2: counters, certificate and credential
/// expiries, per-registry refresh outcomes and source, upstream traffic; 3: TPM signatures;
/// 4: the clock; 5: each registry's offline runway, the image checks; 6: each registry's last
/// error class, the shadow reports).
pub const STATUS_SCHEMA: u32 = 6;

/// Requests on the socket since the daemon started, by answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requests {
    /// Answered with a token.
    pub served: u64,
    /// Answered with an error (no usable token, a bad request).
    pub errors: u64,
    /// Refused: another credential source, or too many on-demand registries (the helper
    /// fetches itself).
    pub declined: u64,
    /// Peers refused by `allowed_uids` / `allowed_gids`.
    pub peers_refused: u64,
}

/// How refresh attempts ended, by cause: each field counts one outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    /// A token was obtained.
    pub ok: u64,
    /// Throttled by ECR, STS or the IoT provider.
    pub throttled: u64,
    /// The endpoint could not be reached or did not answer in time (DNS included).
    pub unreachable: u64,
    /// Access denied (ECR or an STS role hop).
    pub denied: u64,
    /// No credentials, or credentials rejected (profile, keys, identity token).
    pub credentials: u64,
    /// The clock was off (signature or certificate not yet valid).
    pub clock_skew: u64,
    /// The device identity could not be exchanged (other than the above).
    pub iot: u64,
    /// Anything else (a server error, an unusable answer, this build).
    pub other: u64,
}

impl Outcomes {
    /// Counts one attempt that ended in `outcome`.
    pub fn count(&mut self, outcome: Outcome) {
        *self.slot(outcome) += 1;
    }

    fn slot(&mut self, outcome: Outcome) -> &mut u64 {
        match outcome {
            Outcome::Ok => &mut self.ok,
            Outcome::Throttled => &mut self.throttled,
            Outcome::Unreachable => &mut self.unreachable,
            Outcome::Denied => &mut self.denied,
            Outcome::Credentials => &mut self.credentials,
            Outcome::ClockSkew => &mut self.clock_skew,
            Outcome::Iot => &mut self.iot,
            Outcome::Other => &mut self.other,
        }
    }

    /// Each outcome's name with its count, in [`Outcome::ALL`] order.
    pub fn counts(&self) -> [(&'static str, u64); 8] {
        let mut copy = *self;
        Outcome::ALL.map(|o| (o.name(), *copy.slot(o)))
    }
}

/// One registry's state in the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStatus {
    /// The registry host.
    pub registry: String,
    /// Whether it was added on demand (not in the configuration).
    pub on_demand: bool,
    /// When the held token expires.
    pub expires_at: Option<i64>,
    /// When the last successful refresh happened.
    pub last_refresh: Option<i64>,
    /// The last failure's message, cleared by a success.
    pub last_error: Option<String>,
    /// The last failure's class (an outcome name: `unreachable`, `denied`, …), cleared by a
    /// success. Schema 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_class: Option<String>,
    /// Failures since the last success.
    pub failures: u32,
    /// When the next refresh attempt is due.
    pub next_attempt: Option<i64>,
    /// The credential source it is fetched with, in words.
    #[serde(default)]
    pub source: String,
    /// Refresh attempts since the daemon started, by outcome.
    #[serde(default)]
    pub refreshes: Outcomes,
    /// The offline runway: seconds that pulls keep working if the uplink died now. The held
    /// token's usable life (ECR's `expiresAt`, which the role credentials that fetched it do
    /// not shorten). 0 without a usable token.
    #[serde(default)]
    pub runway_seconds: i64,
}

/// Why asking the daemon gave no answer to use.
#[derive(Debug)]
pub enum AskError {
    /// No daemon listens (no socket, connection refused, not allowed by the socket's mode).
    NoDaemon(std::io::Error),
    /// The daemon did not answer in time.
    Timeout,
    /// The answer was not this protocol.
    Protocol(String),
}

impl fmt::Display for AskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AskError::NoDaemon(e) => write!(f, "no daemon: {e}"),
            AskError::Timeout => f.write_str("the daemon did not answer in time"),
            AskError::Protocol(m) => write!(f, "unexpected answer from the daemon: {m}"),
        }
    }
}

impl std::error::Error for AskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AskError::NoDaemon(e) => Some(e),
            _ => None,
        }
    }
}

/// Sends `request` to the daemon at `socket` and returns its final reply. The first reply must
/// come within `first`; after a [`Reply::Wait`], the final one within `deadline` of the start.
///
/// # Errors
/// [`AskError`] when no daemon answers usefully.
pub fn ask(
    socket: &Path,
    request: &Request,
    first: Duration,
    deadline: Duration,
) -> Result<Reply, AskError> {
    exchange(connect(socket)?, request, first, deadline)
}

/// Connects to the daemon's socket.
///
/// # Errors
/// [`AskError::NoDaemon`] when nothing listens there (or the socket's mode refuses us).
pub fn connect(socket: &Path) -> Result<UnixStream, AskError> {
    UnixStream::connect(socket).map_err(AskError::NoDaemon)
}

/// [`ask`] over an already connected `stream` (the helper connects first, so that with no
/// daemon it builds no request and reads no settings).
///
/// # Errors
/// [`AskError`] when the daemon does not answer usefully.
pub fn exchange(
    mut stream: UnixStream,
    request: &Request,
    first: Duration,
    deadline: Duration,
) -> Result<Reply, AskError> {
    let start = Instant::now();
    let mut line = serde_json::to_vec(request).map_err(|e| AskError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream
        .set_write_timeout(Some(first))
        .and_then(|()| stream.write_all(&line))
        .map_err(|e| timeout_or(e, AskError::NoDaemon))?;
    let mut reader = BufReader::new(std::io::Read::take(stream, MAX_LINE));
    let mut wait = first;
    loop {
        reader
            .get_ref()
            .get_ref()
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(AskError::NoDaemon)?;
        let mut buf = String::new();
        let n = reader
            .read_line(&mut buf)
            .map_err(|e| timeout_or(e, |e| AskError::Protocol(e.to_string())))?;
        if n == 0 || !buf.ends_with('\n') {
            return Err(AskError::Protocol("connection closed".into()));
        }
        let reply: Reply =
            serde_json::from_str(&buf).map_err(|e| AskError::Protocol(e.to_string()))?;
        if reply != Reply::Wait {
            return Ok(reply);
        }
        wait = deadline.saturating_sub(start.elapsed());
        if wait.is_zero() {
            return Err(AskError::Timeout);
        }
    }
}

fn timeout_or(e: std::io::Error, other: impl FnOnce(std::io::Error) -> AskError) -> AskError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => AskError::Timeout,
        _ => other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r = Request::Get {
            registry: "public.ecr.aws".into(),
            identity: "chain;profile=default;role=;key=".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"get":{"registry":"public.ecr.aws","identity":"chain;profile=default;role=;key="}}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#""status""#
        );
        let t: Reply =
            serde_json::from_str(r#"{"token":{"password":"pw","expires_at":5}}"#).unwrap();
        assert_eq!(
            t,
            Reply::Token {
                password: crate::token::Secret::new("pw"),
                expires_at: 5
            }
        );
        assert!(!format!("{t:?}").contains("pw"));
        assert_eq!(serde_json::to_string(&Reply::Wait).unwrap(), r#""wait""#);
        assert!(serde_json::from_str::<Reply>(r#""nope""#).is_err());
    }

    #[test]
    fn no_daemon_is_reported_fast() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let err = ask(
            &dir.path().join("none.sock"),
            &Request::Status,
            crate::settings::DEFAULT_DAEMON_WAIT,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(err, AskError::NoDaemon(_)), "{err}");
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn silent_daemon_times_out_and_wait_then_answer_is_followed() {
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            // First client: never answers. Second: waits, then answers.
            let (silent, _) = listener.accept().unwrap();
            let (mut s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            s.write_all(b"\"wait\"\n").unwrap();
            std::thread::sleep(Duration::from_millis(200));
            s.write_all(b"{\"error\":{\"message\":\"down\"}}\n")
                .unwrap();
            drop(silent);
            line
        });
        let start = Instant::now();
        let err = ask(
            &path,
            &Request::Status,
            crate::settings::DEFAULT_DAEMON_WAIT,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(err, AskError::Timeout), "{err}");
        assert!(start.elapsed() < Duration::from_secs(1));
        let reply = ask(
            &path,
            &Request::Status,
            crate::settings::DEFAULT_DAEMON_WAIT,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(
            reply,
            Reply::Error {
                message: "down".into()
            }
        );
        assert_eq!(server.join().unwrap(), "\"status\"\n");
    }
}
