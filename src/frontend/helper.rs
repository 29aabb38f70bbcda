//! The Docker credential helper protocol: `get`, `store`, `erase`, `list`, `version`.
//!
//! Docker (and podman, skopeo, nerdctl) run `docker-credential-ecr-edge <action>`, write the
//! input on stdin and read stdout (docs/reference.md section 1). Errors go to stdout too, with exit
//! status 1; the exact text [`CREDENTIALS_NOT_FOUND`] makes a client carry on anonymously, so
//! that text is used for one case only, a host that is not ECR, and every failure on an ECR
//! host names its cause instead. podman and skopeo show that cause; the Docker CLI drops a
//! failed `get`'s stdout, so [`run`] also writes it to stderr, which reaches the terminal.
//!
//! This module is the protocol front-end only: it reads the action's input, asks
//! [`crate::resolve`] for a token, and turns every outcome into Docker's output in one place
//! ([`run`]).

use std::fmt;
use std::io::{Read, Write};

use serde::Deserialize;

use std::path::Path;

use crate::aws::credentials::Source;
use crate::exit::Exit;
use crate::registry::Registry;
use crate::resolve::{self, ResolveError};
use crate::settings::{self, NotServed, Settings, SettingsError};
use crate::store::cache::Cache;
use crate::token::{self, USERNAME};

/// Docker's word-for-word "nothing here" answer (docker-credential-helpers `credentials/error.go`).
/// Docker matches on this exact text, then pulls anonymously.
pub const CREDENTIALS_NOT_FOUND: &str = "credentials not found in native keychain";

/// Largest stdin accepted. A server URL or a `store` payload is well under 8 KiB; anything larger
/// is refused as a whole rather than truncated.
pub const MAX_INPUT_BYTES: u64 = 64 * 1024;

/// A helper action, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Print credentials for the server URL on stdin.
    Get,
    /// Accept credentials from `docker login` (stored nowhere for ECR hosts).
    Store,
    /// Forget credentials for the server URL on stdin (`docker logout`).
    Erase,
    /// Print the registries with cached tokens.
    List,
    /// Print the program name and version.
    Version,
}

impl Action {
    /// Parses an action name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Action> {
        Some(match name {
            "get" => Action::Get,
            "store" => Action::Store,
            "erase" => Action::Erase,
            "list" => Action::List,
            "version" => Action::Version,
            _ => return None,
        })
    }
}

/// Why a helper action failed. [`fmt::Display`] is the one line the client shows.
#[derive(Debug)]
pub enum HelperError {
    /// The host is not an ECR registry: Docker's "not found", so it goes on anonymously.
    NotEcr,
    /// Empty server URL (protocol text `no credentials server URL`).
    NoServerUrl,
    /// `store` without a user name (protocol text `no credentials username`).
    NoUsername,
    /// Stdin was larger than [`MAX_INPUT_BYTES`].
    InputTooLarge,
    /// Stdin was not what the action takes.
    BadInput(String),
    /// `store` for a registry ecr-edge does not manage.
    StoreUnsupported(String),
    /// The configuration file or an `ECR_EDGE_*` variable is unusable.
    Settings(SettingsError),
    /// No usable token could be had for this ECR registry.
    Resolve {
        /// The registry host.
        registry: String,
        /// Why.
        cause: ResolveError,
    },
    /// Stdin or stdout failed.
    Io(std::io::Error),
}

impl fmt::Display for HelperError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelperError::NotEcr => f.write_str(CREDENTIALS_NOT_FOUND),
            HelperError::NoServerUrl => f.write_str("no credentials server URL"),
            HelperError::NoUsername => f.write_str("no credentials username"),
            HelperError::InputTooLarge => {
                write!(f, "ecr-edge: input larger than {MAX_INPUT_BYTES} bytes refused")
            }
            HelperError::BadInput(why) => write!(f, "ecr-edge: invalid input: {why}"),
            HelperError::StoreUnsupported(host) => write!(
                f,
                "ecr-edge: {host} is not an Amazon ECR registry; ecr-edge stores no other credentials"
            ),
            HelperError::Settings(e) => write!(f, "ecr-edge: {e}"),
            HelperError::Resolve { registry, cause } => write!(f, "ecr-edge: {registry}: {cause}"),
            HelperError::Io(e) => write!(f, "ecr-edge: {e}"),
        }
    }
}

impl std::error::Error for HelperError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HelperError::Settings(e) => Some(e),
            HelperError::Resolve { cause, .. } => Some(cause),
            HelperError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Runs `action` with the given stdin and stdout: [`Exit::Success`], or [`Exit::Failure`]
/// with the error line on `stdout`.
/// `config` is the `--config` path, if any (else `$ECR_EDGE_CONFIG` or the default path).
///
/// This is the protocol boundary: every error becomes exactly one line on `stdout` here. A
/// failed `get` for an ECR host also goes, as the same line, to `echo` when the caller passes
/// one: the Docker CLI drops a failed `get`'s stdout and pulls anonymously, but shows the
/// helper's stderr (docs/reference.md section 1), so that is the only place a Docker user can
/// learn the cause. The line carries no secret (no error of this module holds one).
pub fn run(
    action: Action,
    config: Option<&Path>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    echo: Option<&mut dyn Write>,
) -> Exit {
    let result = (|| -> Result<Vec<u8>, HelperError> {
        match action {
            Action::Version => Ok(format!("{}\n", crate::version_line()).into_bytes()),
            Action::List => Ok(list(
                &Cache::open(crate::settings::cache_dir()).ok(),
                token::now(),
            )),
            Action::Get => get(&read_input(stdin)?, config),
            Action::Store => store(&read_input(stdin)?).map(|()| Vec::new()),
            Action::Erase => erase(&read_input(stdin)?, config).map(|()| Vec::new()),
        }
    })();
    let (bytes, exit) = match result {
        Ok(bytes) => (bytes, Exit::Success),
        Err(e) => {
            let line = format!("{e}\n");
            match echo {
                Some(echo) if action == Action::Get && !matches!(e, HelperError::NotEcr) => {
                    let _ = echo.write_all(line.as_bytes()).and_then(|()| echo.flush());
                }
                _ if !matches!(e, HelperError::NotEcr) => tracing::debug!("{e}"),
                _ => {}
            }
            (line.into_bytes(), Exit::Failure)
        }
    };
    match stdout.write_all(&bytes).and_then(|()| stdout.flush()) {
        Ok(()) => exit,
        Err(_) => Exit::Failure,
    }
}

/// The helper as a process, as Docker runs it: `action` is the command line's only argument
/// (`argc` counts the program name too), the request comes on this process's stdin and the
/// answer goes to stdout; a failed `get`'s cause also goes to stderr unless someone already
/// shows it ([`CauseOnStderr`]). `logging_off`: `ECR_EDGE_LOG=off`.
pub fn main(
    program: &str,
    action: Option<&str>,
    argc: usize,
    config: Option<&Path>,
    logging_off: bool,
) -> Exit {
    let mut echo = CauseOnStderr { off: logging_off };
    match action.and_then(Action::parse) {
        Some(action) if argc == 2 => run(
            action,
            config,
            &mut std::io::stdin().lock(),
            &mut std::io::stdout().lock(),
            Some(&mut echo),
        ),
        _ => {
            // Same place and shape as docker-credential-helpers' usage message.
            println!("Usage: {program} <store|get|erase|list|version>");
            Exit::Failure
        }
    }
}

/// Where a failed `get`'s cause goes besides stdout ([`run`] says why): stderr, unless
/// someone already sees it there: a person reading stdout on a terminal, a client that shows
/// the stdout text itself, or nobody wants it (`ECR_EDGE_LOG=off`). Decided on the first write,
/// so a `get` that succeeds never looks.
struct CauseOnStderr {
    off: bool,
}

impl Write for CauseOnStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::io::IsTerminal;
        if self.off || std::io::stdout().is_terminal() || parent_shows_helper_errors() {
            self.off = true;
            return Ok(buf.len());
        }
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Whether the program that started this helper puts a failed `get`'s stdout text in its own
/// error: the containers/image clients (podman, skopeo, buildah) do; the Docker CLI does not.
fn parent_shows_helper_errors() -> bool {
    let parent = std::os::unix::process::parent_id();
    std::fs::read_to_string(format!("/proc/{parent}/comm"))
        .is_ok_and(|comm| matches!(comm.trim_end(), "podman" | "skopeo" | "buildah"))
}

/// Reads all of stdin up to [`MAX_INPUT_BYTES`] as UTF-8.
fn read_input(stdin: &mut dyn Read) -> Result<String, HelperError> {
    let buf = crate::input::read_capped(stdin, MAX_INPUT_BYTES)
        .map_err(HelperError::Io)?
        .ok_or(HelperError::InputTooLarge)?;
    String::from_utf8(buf).map_err(|_| HelperError::BadInput("not UTF-8".into()))
}

/// `get`: a token for the registry named on stdin, as Docker's JSON answer.
fn get(input: &str, config: Option<&Path>) -> Result<Vec<u8>, HelperError> {
    let server_url = input.trim();
    if server_url.is_empty() {
        return Err(HelperError::NoServerUrl);
    }
    let (registry, settings) = registry_of(server_url, config)?;
    let token = resolve::token(&registry, &settings).map_err(|cause| HelperError::Resolve {
        registry: registry.host().to_owned(),
        cause,
    })?;
    Ok(get_response(server_url, &token.password))
}

/// The ECR registry `server_url` names, and the settings ([`settings::registry_for`]).
fn registry_of(
    server_url: &str,
    config: Option<&Path>,
) -> Result<(Registry, Settings), HelperError> {
    settings::registry_for(server_url, config).map_err(|e| match e {
        NotServed::NotEcr => HelperError::NotEcr,
        NotServed::Settings(e) => HelperError::Settings(e),
    })
}

/// Docker's `get` answer, byte for byte as the Go helpers print it (`json.Encoder`, which escapes
/// `<`, `>`, `&`, U+2028 and U+2029, and ends with a newline).
pub fn get_response(server_url: &str, secret: &token::Secret) -> Vec<u8> {
    let mut out = String::from("{\"ServerURL\":");
    push_go_json_string(&mut out, server_url);
    out.push_str(",\"Username\":");
    push_go_json_string(&mut out, USERNAME);
    out.push_str(",\"Secret\":");
    push_go_json_string(&mut out, secret.expose());
    out.push_str("}\n");
    out.into_bytes()
}

fn push_go_json_string(out: &mut String, s: &str) {
    let json = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
}

/// `list`: `{"https://<host>":"AWS",…}` for registries with a usable cached token, sorted as Go
/// sorts map keys. Never touches the network.
fn list(cache: &Option<Cache>, now: i64) -> Vec<u8> {
    let mut out = String::from("{");
    if let Some(cache) = cache {
        let mut first = true;
        for host in cache.registries(now).into_keys() {
            if !first {
                out.push(',');
            }
            first = false;
            push_go_json_string(&mut out, &format!("https://{host}"));
            out.push(':');
            push_go_json_string(&mut out, USERNAME);
        }
    }
    out.push_str("}\n");
    out.into_bytes()
}

/// The `store` payload (docker-credential-helpers `credentials.Credentials`).
#[derive(Deserialize)]
struct StoreInput {
    #[serde(rename = "ServerURL", default)]
    server_url: String,
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    _secret: String,
}

/// `store`: accepted and dropped for ECR hosts, so `docker login` to a managed registry works;
/// refused for others, which ecr-edge does not manage.
fn store(input: &str) -> Result<(), HelperError> {
    let creds: StoreInput = serde_json::from_str(input).map_err(|e| {
        // The input holds a password: say where it went wrong, never what it held.
        HelperError::BadInput(format!(
            "store expects {{\"ServerURL\",\"Username\",\"Secret\"}}: {}",
            crate::input::describe_json_error(&e)
        ))
    })?;
    if creds.server_url.trim().is_empty() {
        return Err(HelperError::NoServerUrl);
    }
    if creds.username.trim().is_empty() {
        return Err(HelperError::NoUsername);
    }
    match Registry::parse(&creds.server_url) {
        Some(_) => Ok(()),
        None => Err(HelperError::StoreUnsupported(
            crate::registry::host_of(&creds.server_url).unwrap_or_else(|| "the server".into()),
        )),
    }
}

/// `erase`: for an ECR host, drops this identity's cached token (the next `get` fetches a fresh
/// one); for other hosts, Docker's "not found".
fn erase(input: &str, config: Option<&Path>) -> Result<(), HelperError> {
    let server_url = input.trim();
    if server_url.is_empty() {
        return Err(HelperError::NoServerUrl);
    }
    let (registry, settings) = registry_of(server_url, config)?;
    if let Ok(cache) = Cache::open(settings.cache_dir) {
        cache.remove(
            registry.host(),
            Source::for_registry(&settings.config, registry.host())
                .identity()
                .as_str(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_response_matches_go_encoder() {
        assert_eq!(
            get_response("https://1.dkr/x?a=<b>&c", &token::Secret::new("pw")),
            b"{\"ServerURL\":\"https://1.dkr/x?a=\\u003cb\\u003e\\u0026c\",\"Username\":\"AWS\",\"Secret\":\"pw\"}\n".to_vec()
        );
    }

    #[test]
    fn actions() {
        assert_eq!(Action::parse("get"), Some(Action::Get));
        assert_eq!(Action::parse("GET"), None);
        assert_eq!(Action::parse(""), None);
    }

    #[test]
    fn store_validation() {
        assert!(matches!(store("nope"), Err(HelperError::BadInput(_))));
        assert!(matches!(store("{}"), Err(HelperError::NoServerUrl)));
        assert!(matches!(
            store(r#"{"ServerURL":"123456789012.dkr.ecr.us-east-1.amazonaws.com"}"#),
            Err(HelperError::NoUsername)
        ));
        assert!(store(r#"{"ServerURL":"123456789012.dkr.ecr.us-east-1.amazonaws.com","Username":"AWS","Secret":"x"}"#).is_ok());
        let err =
            store(r#"{"ServerURL":"https://docker.io/v1","Username":"u","Secret":"topsecret"}"#)
                .unwrap_err();
        assert!(matches!(err, HelperError::StoreUnsupported(_)));
        assert!(!err.to_string().contains("topsecret"));
    }

    #[test]
    fn oversized_input_is_refused_whole() {
        let big = vec![b'a'; MAX_INPUT_BYTES as usize + 1];
        assert!(matches!(
            read_input(&mut &big[..]),
            Err(HelperError::InputTooLarge)
        ));
        let ok = vec![b'a'; MAX_INPUT_BYTES as usize];
        assert_eq!(
            read_input(&mut &ok[..]).unwrap().len(),
            MAX_INPUT_BYTES as usize
        );
        assert!(matches!(
            read_input(&mut &b"\xff"[..]),
            Err(HelperError::BadInput(_))
        ));
    }
}
