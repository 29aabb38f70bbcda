//! The daemon's state in the Prometheus text format, for node_exporter's textfile collector
//! (`[daemon] metrics_file`): the same facts as `ecr-edge status --json`, rendered from the
//! same [`StatusReport`], so the two never disagree.
//!
//! Names follow Prometheus conventions: an `ecr_edge_` prefix, base units (`_seconds`, and
//! Unix times as `_timestamp_seconds`), counters ending in `_total`, and labels of low
//! cardinality only (the registry host, an outcome from a fixed list). Rendering is pure; the
//! daemon writes the text atomically (temp file, then rename: the collector's convention).

use std::fmt::Write as _;

use crate::agent::StatusReport;

/// The exposition text for `report`.
pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    // Families are written whole, one after the other, as the format requires: the header,
    // then the samples collected in `lines`.
    let mut lines: Vec<String> = Vec::new();
    let (version, target) = split_version(&report.version);
    let n = family(
        &mut out,
        "ecr_edge_build_info",
        "gauge",
        "ecr-edge's version and target triple; always 1.",
    );
    lines.push(format!(
        "{n}{{version=\"{}\",target=\"{}\"}} 1",
        escape(version),
        escape(target)
    ));
    flush(&mut out, &mut lines);
    let n = family(
        &mut out,
        "ecr_edge_start_time_seconds",
        "gauge",
        "When the daemon started, as a Unix time.",
    );
    lines.push(format!("{n} {}", report.started_at));
    flush(&mut out, &mut lines);

    let per_registry: [(&str, &str, Field); 5] = [
        (
            "ecr_edge_token_expiry_timestamp_seconds",
            "When the registry token the daemon holds expires, as a Unix time (absent: none held).",
            |r| r.expires_at,
        ),
        (
            "ecr_edge_token_last_refresh_timestamp_seconds",
            "When the registry token was last refreshed successfully, as a Unix time.",
            |r| r.last_refresh,
        ),
        (
            "ecr_edge_token_next_attempt_timestamp_seconds",
            "When the next refresh attempt starts, as a Unix time (absent: one is in flight, or none is scheduled on demand).",
            |r| r.next_attempt,
        ),
        (
            "ecr_edge_offline_runway_seconds",
            "Seconds pulls keep working if the uplink died now: the held token's usable life, as of the file's last write (at least every 5 minutes).",
            |r| Some(r.runway_seconds),
        ),
        (
            "ecr_edge_refresh_consecutive_failures",
            "Failed refresh attempts since the last success.",
            |r| Some(i64::from(r.failures)),
        ),
    ];
    for (name, help, value) in per_registry {
        let n = family(&mut out, name, "gauge", help);
        for r in &report.registries {
            if let Some(v) = value(r) {
                lines.push(format!("{n}{{registry=\"{}\"}} {v}", escape(&r.registry)));
            }
        }
        flush(&mut out, &mut lines);
    }
    let n = family(
        &mut out,
        "ecr_edge_refreshes_total",
        "counter",
        "Refresh attempts since the daemon started, by registry and outcome.",
    );
    for r in &report.registries {
        for (outcome, count) in r.refreshes.counts() {
            lines.push(format!(
                "{n}{{registry=\"{}\",outcome=\"{outcome}\"}} {count}",
                escape(&r.registry)
            ));
        }
    }
    flush(&mut out, &mut lines);
    for (name, help, value) in [
        (
            "ecr_edge_device_certificate_expiry_timestamp_seconds",
            "notAfter of the device certificate ([iot]), as a Unix time.",
            report.device_certificate_expires_at,
        ),
        (
            "ecr_edge_iot_credentials_expiry_timestamp_seconds",
            "When the role credentials from the IoT exchange expire, as a Unix time.",
            report.iot_credentials_expire_at,
        ),
        (
            "ecr_edge_endpoint_credentials_expiry_timestamp_seconds",
            "When the credentials the local credentials endpoint serves expire, as a Unix time.",
            report.credentials_expire_at,
        ),
    ] {
        if let Some(v) = value {
            let n = family(&mut out, name, "gauge", help);
            lines.push(format!("{n} {v}"));
            flush(&mut out, &mut lines);
        }
    }
    let q = &report.requests;
    let n = family(
        &mut out,
        "ecr_edge_socket_requests_total",
        "counter",
        "Token requests on the daemon's socket since it started, by answer.",
    );
    for (answer, count) in [
        ("served", q.served),
        ("error", q.errors),
        ("declined", q.declined),
        ("peer_refused", q.peers_refused),
    ] {
        lines.push(format!("{n}{{answer=\"{answer}\"}} {count}"));
    }
    flush(&mut out, &mut lines);
    type Count = fn(&crate::agent::Upstream) -> u64;
    let upstream: [(&str, &str, Count); 5] = [
        (
            "ecr_edge_upstream_requests_total",
            "HTTP requests to AWS since the daemon started, by endpoint (each retry counts).",
            |u| u.requests,
        ),
        (
            "ecr_edge_upstream_connections_total",
            "TCP connections opened to AWS, by endpoint.",
            |u| u.connections,
        ),
        (
            "ecr_edge_upstream_tls_resumed_total",
            "TLS handshakes with AWS that resumed an earlier session (no certificate chain sent), by endpoint.",
            |u| u.tls_resumed,
        ),
        (
            "ecr_edge_upstream_sent_bytes_total",
            "Bytes sent to AWS on the wire (TLS handshakes and records, a proxy's CONNECT), by endpoint.",
            |u| u.bytes_sent,
        ),
        (
            "ecr_edge_upstream_received_bytes_total",
            "Bytes received from AWS on the wire, by endpoint.",
            |u| u.bytes_received,
        ),
    ];
    for (name, help, value) in upstream {
        let n = family(&mut out, name, "counter", help);
        for u in &report.upstream {
            lines.push(format!(
                "{n}{{endpoint=\"{}\"}} {}",
                escape(&u.endpoint),
                value(u)
            ));
        }
        flush(&mut out, &mut lines);
    }
    let n = family(
        &mut out,
        "ecr_edge_tpm_signatures_total",
        "counter",
        "Signatures the TPM made for the daemon (a device key in the TPM: IoT handshakes that did not resume a session).",
    );
    lines.push(format!("{n} {}", report.tpm_signatures));
    flush(&mut out, &mut lines);
    if !report.images.is_empty() {
        let n = family(
            &mut out,
            "ecr_edge_image_check_ok",
            "gauge",
            "Whether a pull of the image would work, as last checked ([daemon] images): the manifest, this device's platform, the permission to read it and its layers. 1 yes, 0 no.",
        );
        for i in &report.images {
            lines.push(format!(
                "{n}{{image=\"{}\"}} {}",
                escape(&i.image),
                u8::from(i.ok)
            ));
        }
        flush(&mut out, &mut lines);
        let n = family(
            &mut out,
            "ecr_edge_image_check_timestamp_seconds",
            "gauge",
            "When the image was last checked, as a Unix time.",
        );
        for i in &report.images {
            lines.push(format!(
                "{n}{{image=\"{}\"}} {}",
                escape(&i.image),
                i.checked_at
            ));
        }
        flush(&mut out, &mut lines);
    }
    if let Some(clock) = &report.clock {
        let n = family(
            &mut out,
            "ecr_edge_clock_offset_seconds",
            "gauge",
            "AWS's time minus the system clock, from verified responses (0 when within 2 s); source is where the daemon's time comes from: system, aws or floor.",
        );
        lines.push(format!(
            "{n}{{source=\"{}\"}} {}",
            escape(&clock.source),
            clock.offset_seconds
        ));
        flush(&mut out, &mut lines);
        let n = family(
            &mut out,
            "ecr_edge_clock_floor_timestamp_seconds",
            "gauge",
            "The time floor: before it the system clock is known wrong (the build time, or the last time AWS gave).",
        );
        lines.push(format!("{n} {}", clock.floor));
        flush(&mut out, &mut lines);
    }
    out
}

/// One registry's value of a gauge family, if it has one.
type Field = fn(&crate::agent::RegistryStatus) -> Option<i64>;

/// Writes a family's HELP and TYPE lines; returns its name for the samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str) -> String {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    name.to_owned()
}

fn flush(out: &mut String, lines: &mut Vec<String>) {
    for l in lines.drain(..) {
        out.push_str(&l);
        out.push('\n');
    }
}

/// `ecr-edge 0.1.0 (aarch64-unknown-linux-musl)` -> (`0.1.0`, `aarch64-unknown-linux-musl`).
fn split_version(line: &str) -> (&str, &str) {
    let rest = line.strip_prefix("ecr-edge ").unwrap_or(line);
    match rest.split_once(" (") {
        Some((v, t)) => (v, t.trim_end_matches(')')),
        None => (rest, ""),
    }
}

/// A label value as the text format writes it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Outcomes, RegistryStatus, Requests};
    use crate::aws::Outcome;

    #[test]
    fn renders_every_family_once_with_its_samples() {
        let mut refreshes = Outcomes::default();
        for outcome in [
            Outcome::Ok,
            Outcome::Ok,
            Outcome::Ok,
            Outcome::Unreachable,
            Outcome::Unreachable,
        ] {
            refreshes.count(outcome);
        }
        let report = StatusReport {
            schema: 2,
            version: "ecr-edge 0.1.0 (aarch64-unknown-linux-musl)".into(),
            identity: "chain".into(),
            started_at: 1_700_000_000,
            credentials_expire_at: None,
            registries: vec![RegistryStatus {
                registry: "123456789012.dkr.ecr.us-west-2.amazonaws.com".into(),
                on_demand: false,
                expires_at: Some(1_700_043_200),
                last_refresh: Some(1_700_000_000),
                last_error: None,
                last_error_class: None,
                failures: 0,
                next_attempt: None,
                source: "the AWS default credential chain".into(),
                refreshes,
                runway_seconds: 43_000,
            }],
            device_certificate_expires_at: Some(1_800_000_000),
            iot_credentials_expire_at: None,
            upstream: vec![crate::agent::Upstream {
                endpoint: "iot".into(),
                requests: 4,
                bytes_received: 18_000,
                ..Default::default()
            }],
            requests: Requests {
                served: 7,
                ..Requests::default()
            },
            tpm_signatures: 3,
            clock: Some(crate::agent::ClockStatus {
                system: 0,
                now: 1_700_000_000,
                source: "aws".into(),
                floor: 1_699_990_000,
                offset_seconds: 1_700_000_000,
            }),
            images: Vec::new(),
            shadow: None,
        };
        let text = render(&report);
        assert!(text.contains(
            "ecr_edge_build_info{version=\"0.1.0\",target=\"aarch64-unknown-linux-musl\"} 1\n"
        ));
        assert!(text.contains("ecr_edge_refreshes_total{registry=\"123456789012.dkr.ecr.us-west-2.amazonaws.com\",outcome=\"unreachable\"} 2\n"));
        assert!(text.contains("ecr_edge_device_certificate_expiry_timestamp_seconds 1800000000\n"));
        assert!(!text.contains("ecr_edge_token_next_attempt_timestamp_seconds{"));
        assert!(!text.contains("ecr_edge_iot_credentials"));
        assert!(text.contains("ecr_edge_socket_requests_total{answer=\"served\"} 7\n"));
        assert!(text.contains("ecr_edge_upstream_received_bytes_total{endpoint=\"iot\"} 18000\n"));
        assert!(text.contains("ecr_edge_upstream_requests_total{endpoint=\"iot\"} 4\n"));
        assert!(text.contains("ecr_edge_tpm_signatures_total 3\n"));
        assert!(text.contains("ecr_edge_offline_runway_seconds{registry=\"123456789012.dkr.ecr.us-west-2.amazonaws.com\"} 43000\n"));
        assert!(text.contains("ecr_edge_clock_offset_seconds{source=\"aws\"} 1700000000\n"));
        assert!(text.contains("ecr_edge_clock_floor_timestamp_seconds 1699990000\n"));
        // Each family's TYPE line comes once, before its samples.
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).unwrap();
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
        }
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
