//! `ecr-edge status`: asks the daemon for its state and prints it, a line per registry (or
//! the daemon's JSON with `--json`). Exit 0 when every registry holds a usable token, 1 when
//! one does not, 2 when no daemon answers.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::agent::{self, Reply, Request, StatusReport};
use crate::exit::Exit;

/// Runs `ecr-edge status`: the report on `out`, problems on `err`. [`Exit::Usage`] when no
/// daemon answers.
pub fn run(
    config: Option<&Path>,
    json: bool,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> Exit {
    let socket = match crate::settings::Settings::load(config) {
        Ok(s) => s.socket,
        Err(e) => {
            let _ = writeln!(err, "ecr-edge status: {e}");
            return Exit::Usage;
        }
    };
    let Some(socket) = socket else {
        let _ = writeln!(
            err,
            "ecr-edge status: ECR_EDGE_SOCKET is empty: no daemon to ask"
        );
        return Exit::Usage;
    };
    let wait = Duration::from_secs(2);
    let report = match agent::ask(&socket, &Request::Status, wait, wait) {
        Ok(Reply::Status(r)) => *r,
        Ok(Reply::Error { message } | Reply::Refused { reason: message }) => {
            let _ = writeln!(
                err,
                "ecr-edge status: the daemon at {} answered: {message}",
                socket.display()
            );
            return Exit::Usage;
        }
        Ok(_) => {
            let _ = writeln!(
                err,
                "ecr-edge status: the daemon at {} gave no status (a different version?)",
                socket.display()
            );
            return Exit::Usage;
        }
        Err(e) => {
            let _ = writeln!(err, "ecr-edge status: {} : {e}", socket.display());
            return Exit::Usage;
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => {
                let _ = writeln!(out, "{s}");
            }
            Err(e) => {
                let _ = writeln!(err, "ecr-edge status: {e}");
                return Exit::Usage;
            }
        }
    } else {
        let _ = write!(out, "{}", render(&report, crate::token::now()));
    }
    Exit::from_ok(report.registries.iter().all(|r| r.expires_at.is_some()))
}

/// The report as text, times relative to `now`.
pub fn render(r: &StatusReport, now: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} up {}, serving {}",
        r.version,
        span(now.saturating_sub(r.started_at)),
        r.identity
    );
    if let Some(t) = r.credentials_expire_at {
        let _ = writeln!(
            out,
            "role credentials (local endpoint) expire in {}",
            span(t.saturating_sub(now))
        );
    }
    if let Some(t) = r.device_certificate_expires_at {
        let _ = writeln!(
            out,
            "device certificate expires in {}",
            span(t.saturating_sub(now))
        );
    }
    if let Some(c) = &r.clock {
        match c.source.as_str() {
            "aws" => {
                let _ = writeln!(
                    out,
                    "clock: the system clock is {} {} AWS's time; the daemon uses AWS's time",
                    span(c.offset_seconds.abs()),
                    if c.offset_seconds > 0 {
                        "behind"
                    } else {
                        "ahead of"
                    }
                );
            }
            "floor" => {
                let _ = writeln!(
                    out,
                    "clock: the system clock is behind the floor (the build time, or the last \
                     time AWS gave); waiting for AWS's time"
                );
            }
            _ => {}
        }
    }
    let traffic: Vec<String> = r
        .upstream
        .iter()
        .filter(|u| u.requests > 0)
        .map(|u| {
            format!(
                "{} {} requests, {} sent, {} received",
                u.endpoint,
                u.requests,
                bytes(u.bytes_sent),
                bytes(u.bytes_received)
            )
        })
        .collect();
    if !traffic.is_empty() {
        let _ = writeln!(out, "traffic to AWS since start: {}", traffic.join("; "));
    }
    for i in &r.images {
        let _ = writeln!(
            out,
            "image check ({} ago): {}{}",
            span(now.saturating_sub(i.checked_at)),
            if i.ok { "" } else { "FAILS: " },
            i.detail
        );
    }
    if let Some(s) = &r.shadow {
        let last = s.last_update_at.map_or(String::new(), |t| {
            format!(
                ", the last {} ago (version {})",
                span(now.saturating_sub(t)),
                s.version
            )
        });
        let _ = writeln!(
            out,
            "fleet health: {} updates to the IoT shadow ecr-edge at {}{last}",
            s.updates, s.endpoint
        );
        if let Some(e) = &s.last_error {
            let _ = writeln!(out, "fleet health: the last update did not land: {e}");
        }
    }
    if r.registries.is_empty() {
        out.push_str("no registries yet (none configured, none asked for)\n");
    }
    for reg in &r.registries {
        let _ = writeln!(
            out,
            "{}{}",
            reg.registry,
            if reg.on_demand { " (on demand)" } else { "" }
        );
        let expiry = match reg.expires_at {
            Some(t) => format!(
                "expires in {} (offline runway {})",
                span(t.saturating_sub(now)),
                span(reg.runway_seconds)
            ),
            None => "no usable token".into(),
        };
        let refreshed = match reg.last_refresh {
            Some(t) => format!("refreshed {} ago", span(now.saturating_sub(t))),
            None => "never refreshed".into(),
        };
        let next = match reg.next_attempt {
            Some(t) => format!("next attempt in {}", span(t.saturating_sub(now))),
            None => "refreshing now".into(),
        };
        let _ = writeln!(out, "  {expiry}; {refreshed}; {next}");
        if let Some(e) = &reg.last_error {
            let _ = writeln!(out, "  last error ({} in a row): {e}", reg.failures);
        }
    }
    out
}

/// `812 B`, `14.2 KiB`, `3.1 MiB`.
fn bytes(n: u64) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// `3h05m`, `4m10s`, `12s`.
pub fn span(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::RegistryStatus;

    #[test]
    fn renders_each_registry() {
        let r = StatusReport {
            schema: 2,
            version: "ecr-edge 0.1.0 (x86_64-unknown-linux-musl)".into(),
            identity: "chain;profile=default;role=;key=".into(),
            started_at: 1000,
            credentials_expire_at: None,
            registries: vec![
                RegistryStatus {
                    registry: "123456789012.dkr.ecr.us-west-2.amazonaws.com".into(),
                    on_demand: false,
                    expires_at: Some(1000 + 43_200),
                    last_refresh: Some(1000),
                    last_error: None,
                    last_error_class: None,
                    failures: 0,
                    next_attempt: Some(1000 + 20_000),
                    source: "the AWS default credential chain".into(),
                    refreshes: Default::default(),
                    runway_seconds: 42_750,
                },
                RegistryStatus {
                    registry: "public.ecr.aws".into(),
                    on_demand: true,
                    expires_at: None,
                    last_refresh: None,
                    last_error: Some("cannot reach api.ecr-public.us-east-1.amazonaws.com".into()),
                    last_error_class: None,
                    failures: 3,
                    next_attempt: None,
                    source: "the AWS default credential chain".into(),
                    refreshes: Default::default(),
                    runway_seconds: 0,
                },
            ],
            device_certificate_expires_at: None,
            iot_credentials_expire_at: None,
            upstream: vec![crate::agent::Upstream {
                endpoint: "ecr".into(),
                requests: 2,
                connections: 2,
                tls_resumed: 1,
                bytes_sent: 3000,
                bytes_received: 900,
            }],
            requests: Default::default(),
            tpm_signatures: 0,
            clock: None,
            images: Vec::new(),
            shadow: None,
        };
        let text = render(&r, 1130);
        assert_eq!(
            text,
            "ecr-edge 0.1.0 (x86_64-unknown-linux-musl) up 2m10s, serving chain;profile=default;role=;key=\n\
             traffic to AWS since start: ecr 2 requests, 2.9 KiB sent, 900 B received\n\
             123456789012.dkr.ecr.us-west-2.amazonaws.com\n  expires in 11h57m (offline runway 11h52m); refreshed 2m10s ago; next attempt in 5h31m\n\
             public.ecr.aws (on demand)\n  no usable token; never refreshed; refreshing now\n  last error (3 in a row): cannot reach api.ecr-public.us-east-1.amazonaws.com\n"
        );
    }
}
