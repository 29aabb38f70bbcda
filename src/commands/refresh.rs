//! `ecr-edge refresh [REGISTRY...]`: asks the daemon to refresh now (a top-up before a planned
//! outage) and prints, a line per registry, what the attempt did and the offline runway after
//! it. Exit 0 when every attempt got a token, 1 when one did not, 2 when no daemon answers.

use std::path::Path;
use std::time::Duration;

use crate::agent::{self, Reply, Request};
use crate::exit::Exit;

/// Runs `ecr-edge refresh`: a line per registry on `out`, problems on `err`.
pub fn run(
    config: Option<&Path>,
    registries: Vec<String>,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> Exit {
    let settings = match crate::settings::Settings::load(config) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "ecr-edge refresh: {e}");
            return Exit::Usage;
        }
    };
    let Some(socket) = settings.socket else {
        let _ = writeln!(
            err,
            "ecr-edge refresh: ECR_EDGE_SOCKET is empty: no daemon to ask"
        );
        return Exit::Usage;
    };
    // The daemon answers within its own refresh deadline and a second (its ECR_EDGE_TIMEOUT,
    // which may be longer than this shell's).
    let deadline = settings.deadline.max(Duration::from_secs(60)) + Duration::from_secs(3);
    let request = Request::Refresh { registries };
    let results = match agent::ask(&socket, &request, Duration::from_secs(2), deadline) {
        Ok(Reply::Refreshed(r)) => r,
        Ok(Reply::Error { message } | Reply::Refused { reason: message }) => {
            let _ = writeln!(err, "ecr-edge refresh: the daemon answered: {message}");
            return Exit::Failure;
        }
        Ok(_) => {
            let _ = writeln!(
                err,
                "ecr-edge refresh: the daemon at {} does not know this request (an older \
                 version? restart it after an upgrade)",
                socket.display()
            );
            return Exit::Usage;
        }
        Err(e) => {
            let _ = writeln!(err, "ecr-edge refresh: {}: {e}", socket.display());
            return Exit::Usage;
        }
    };
    let runway = |secs: i64| crate::commands::status::span(secs);
    for r in &results {
        let _ = match &r.error {
            None => writeln!(
                out,
                "{}: refreshed; offline runway {}",
                r.registry,
                runway(r.runway_seconds)
            ),
            Some(e) => writeln!(
                out,
                "{}: refresh failed: {e}; offline runway {}",
                r.registry,
                runway(r.runway_seconds)
            ),
        };
    }
    Exit::from_ok(results.iter().all(|r| r.error.is_none()))
}
