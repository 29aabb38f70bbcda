//! Fleet metrics (issue 18): the daemon's `metrics_file` as Prometheus reads it, checked with
//! the real `promtool` (Debian's prometheus package; `scripts/install-deps metrics` takes it
//! out of the package without installing a server) and served by the real node_exporter's
//! textfile collector, and the packaged alert rules with `promtool check rules` and
//! `promtool test rules`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
use crate::support::{text, Mode, Sandbox};

const REG: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
const DOWN: &str = "210987654321.dkr.ecr.eu-west-1.amazonaws.com";

/// `promtool`: `$ECR_EDGE_PROMTOOL`, else the copy `scripts/install-deps metrics` keeps, else
/// one on `PATH`.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("ECR_EDGE_PROMTOOL").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let kept = Path::new("/var/cache/ecr-edge-test/promtool/current/promtool");
    if kept.exists() {
        return kept.to_owned();
    }
    PathBuf::from("promtool")
}

fn run_promtool(args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    let mut cmd = Command::new(promtool());
    cmd.args(args);
    let out = match stdin {
        Some(input) => {
            cmd.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            crate::support::run_with_input(cmd, input)
        }
        None => cmd.output().unwrap_or_else(|e| {
            panic!(
                "promtool ({}): {e}; run scripts/install-deps metrics",
                promtool().display()
            )
        }),
    };
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// `node_exporter`: `$ECR_EDGE_NODE_EXPORTER`, else the copy `scripts/install-deps metrics`
/// keeps (Debian's `prometheus-node-exporter`).
fn node_exporter() -> PathBuf {
    std::env::var_os("ECR_EDGE_NODE_EXPORTER")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from("/var/cache/ecr-edge-test/node-exporter/current/prometheus-node-exporter")
        })
}

/// What node_exporter, with only its textfile collector reading `dir`, serves on `/metrics`.
fn scrape_with_node_exporter(sb: &Sandbox, dir: &Path) -> String {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = sb.dir.path().join("node_exporter.log");
    let mut child = Command::new(node_exporter())
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!("--collector.textfile.directory={}", dir.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "node_exporter ({}): {e}; run scripts/install-deps metrics",
                node_exporter().display()
            )
        });
    let start = Instant::now();
    let body = loop {
        let scraped = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut c| {
            c.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut body = String::new();
            c.read_to_string(&mut body)?;
            Ok(body)
        });
        match scraped {
            Ok(body) if body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200") => {
                break body
            }
            _ if start.elapsed() > Duration::from_secs(20) => {
                let _ = child.kill();
                panic!(
                    "node_exporter never served /metrics: {scraped:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    body
}

/// The value of the sample `name{labels}` (labels as written, `""` for none).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

/// A running daemon's metrics file, one registry served and one whose refresh is refused:
/// promtool accepts it, node_exporter serves it, it is 0644, and it says what `status --json`
/// says.
#[test]
#[ignore = "needs promtool and node_exporter (scripts/install-deps metrics, as scripts/test runs it)"]
fn promtool_accepts_the_metrics_of_a_running_daemon() {
    let mut sb = Sandbox::new();
    let file = sb.dir.path().join("textfile/ecr_edge.prom");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let config = format!(
        "[daemon]\nregistries = [\"{REG}\"]\nbackoff_max = 60\nmetrics_file = \"{}\"\n",
        file.display()
    );
    let d = Daemon::start(&mut sb, &config);
    d.wait_notify("READY=1", Duration::from_secs(20));
    // One served request, then a registry whose refreshes fail.
    assert!(sb.helper("get", REG.as_bytes()).status.success());
    // A refusal, not an outage: its retry waits minutes (a configuration-class failure), so
    // the file and `status --json` read below describe the same moment. (An outage is retried
    // within seconds; a retry between the two reads made them differ on a loaded machine.)
    sb.fake.set_mode(Mode::AccessDenied);
    let _ = sb.helper("get", DOWN.as_bytes());
    let start = Instant::now();
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    let down = format!("registry=\"{DOWN}\",outcome=\"denied\"");
    while !(read().contains(&format!("ecr_edge_refreshes_total{{{down}}} 1"))
        && sample(
            &read(),
            "ecr_edge_socket_requests_total",
            "answer=\"served\"",
        ) == Some(1.0))
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "metrics never showed the failure:\n{}\nlog:\n{}",
            read(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = read();
    if std::env::var_os("ECR_EDGE_SHOW_METRICS").is_some() {
        eprintln!("{metrics}");
    }
    let (ok, said) = run_promtool(&["check", "metrics"], Some(metrics.as_bytes()));
    assert!(ok, "promtool check metrics:\n{said}\n{metrics}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let leftovers: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");

    // node_exporter's textfile collector, started with the README's flag, serves the samples
    // and reports no scrape error for the file.
    let scraped = scrape_with_node_exporter(&sb, file.parent().unwrap());
    assert!(
        scraped.contains("node_textfile_scrape_error 0"),
        "node_exporter did not read the file cleanly:\n{scraped}"
    );
    assert_eq!(
        sample(
            &scraped,
            "ecr_edge_socket_requests_total",
            "answer=\"served\""
        ),
        Some(1.0),
        "{scraped}"
    );

    let reg = format!("registry=\"{REG}\"");
    let status = crate::daemon::status_json(&sb);
    let entry = |host: &str| {
        status["registries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["registry"] == host)
            .unwrap()
            .clone()
    };
    assert_eq!(status["schema"], 6);
    // The clock: this machine's is right, so the daemon uses it; the floor is the same in both.
    assert_eq!(status["clock"]["source"], "system");
    assert_eq!(
        sample(
            &metrics,
            "ecr_edge_clock_offset_seconds",
            "source=\"system\""
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "ecr_edge_clock_floor_timestamp_seconds", ""),
        status["clock"]["floor"].as_f64()
    );
    assert_eq!(
        sample(&metrics, "ecr_edge_token_expiry_timestamp_seconds", &reg),
        entry(REG)["expires_at"].as_f64()
    );
    assert_eq!(
        sample(
            &metrics,
            "ecr_edge_token_last_refresh_timestamp_seconds",
            &reg
        ),
        entry(REG)["last_refresh"].as_f64()
    );
    assert_eq!(
        sample(
            &metrics,
            "ecr_edge_refreshes_total",
            &format!("{reg},outcome=\"ok\"")
        ),
        Some(1.0)
    );
    assert_eq!(entry(DOWN)["refreshes"]["denied"], 1);
    assert_eq!(
        sample(
            &metrics,
            "ecr_edge_refresh_consecutive_failures",
            &format!("registry=\"{DOWN}\"")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "ecr_edge_token_expiry_timestamp_seconds",
            &format!("registry=\"{DOWN}\"")
        ),
        None,
        "no token held, no expiry"
    );
    assert!(
        metrics.contains("ecr_edge_build_info{version=\"0.1.0\",target=\""),
        "{metrics}"
    );
    // Upstream traffic: what status says, and the fake's wire agrees on the bytes received.
    let ecr = status["upstream"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["endpoint"] == "ecr")
        .unwrap()
        .clone();
    assert_eq!(
        sample(
            &metrics,
            "ecr_edge_upstream_requests_total",
            "endpoint=\"ecr\""
        ),
        ecr["requests"].as_f64()
    );
    assert!(ecr["requests"].as_u64().unwrap() >= 2, "{ecr}");
    assert!(
        sample(
            &metrics,
            "ecr_edge_upstream_received_bytes_total",
            "endpoint=\"ecr\""
        )
        .unwrap()
            > 500.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains(&sb.fake.password()),
        "no secret in metrics"
    );
}

/// The packaged alert rules load, and each alert fires when it should and not before.
#[test]
#[ignore = "needs promtool (scripts/install-deps metrics, as scripts/test runs it)"]
fn promtool_checks_and_tests_the_packaged_alert_rules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus");
    let rules = dir.join("ecr-edge-alerts.yml");
    let (ok, said) = run_promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok && said.contains("SUCCESS: 5 rules found"), "{said}");
    let tests = dir.join("ecr-edge-alerts.test.yml");
    let (ok, said) = run_promtool(&["test", "rules", tests.to_str().unwrap()], None);
    assert!(ok && said.contains("SUCCESS"), "{said}");
}
