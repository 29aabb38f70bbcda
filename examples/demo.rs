//! Shows the helper's main job against the built-in local fake ECR (no AWS account needed):
//! a cold `get` fetched through a proxy over TLS and verified by SigV4, a cached `get`, `list`,
//! a look-alike host, and a failure that names its cause; then what sets ecr-edge apart: the
//! daemon serving a registry through an uplink outage, and a token obtained with an AWS IoT
//! device certificate and no AWS keys on the machine. Run with `scripts/demo`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use support::{text, Mode, Sandbox};

/// Runs the helper as Docker would and prints what it said; returns whether it succeeded.
fn show(sb: &Sandbox, label: &str, action: &str, input: &str) -> bool {
    let start = Instant::now();
    let out = sb.helper(action, input.as_bytes());
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    println!("$ echo {input} | docker-credential-ecr-edge {action}    # {label}");
    print!("{}", text(&out.stdout));
    println!(
        "  (exit {}, {ms:.1} ms, upstream calls so far: {})\n",
        out.status.code().unwrap_or(-1),
        sb.fake.calls().len()
    );
    out.status.success()
}

fn heading(text: &str) {
    println!("\n=== {text}\n");
}

fn main() {
    let mut sb = Sandbox::new();
    let host = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
    println!(
        "fake ECR behind HTTPS proxy {}; test CA in SSL_CERT_FILE\n",
        sb.fake.proxy_url
    );
    assert!(show(&sb, "cold: fetched from the fake ECR", "get", host));
    show(&sb, "cached: no network, no async runtime", "get", host);
    show(&sb, "ECR Public", "get", "public.ecr.aws");
    show(&sb, "no network call", "list", "unused");
    show(
        &sb,
        "look-alike: Docker's exact not-found text",
        "get",
        "123456789012.dkr.ecr.us-west-2.amazonaws.com.example.com",
    );
    sb.fake.set_mode(Mode::AccessDenied);
    show(
        &sb,
        "a failure names its cause",
        "get",
        "123456789012.dkr-ecr-fips.us-east-2.on.aws",
    );
    for call in sb.fake.calls() {
        println!(
            "fake ECR saw: CONNECT {} target={} scope={}/{} signature_ok={}",
            call.connect_host, call.target, call.region, call.service, call.authentic
        );
    }

    heading("the refresher daemon: a registry served through an uplink outage");
    sb.fake.set_mode(Mode::Ok);
    // Tokens of 5 minutes 10 seconds instead of 12 hours, so that a refresh falls due within
    // the demo's outage (ecr-edge stops using a token 5 minutes before it expires).
    sb.fake.set_lifetime(310.0);
    let warm = "210987654321.dkr.ecr.us-west-2.amazonaws.com";
    let daemon = support::RunningDaemon::start(
        &mut sb,
        &format!("[daemon]\nregistries = [\"{warm}\"]\nbackoff_max = 2\n"),
    );
    println!(
        "$ ecr-edge daemon    # registries = [\"{warm}\"]; this demo's fake issues 310 s tokens\n"
    );
    show(&sb, "served from the daemon's memory", "get", warm);
    sb.fake.set_mode(Mode::Reset);
    println!(
        "(the uplink goes down: every connection to AWS is reset; 6 s pass, a refresh fails)\n"
    );
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert!(show(
        &sb,
        "still served: the token it holds is still valid",
        "get",
        warm
    ));
    let status = || {
        let out = support::run_with_input(sb.command_for(&support::binary(), "status"), b"");
        println!("$ ecr-edge status\n{}", text(&out.stdout));
    };
    status();
    sb.fake.set_mode(Mode::Ok);
    println!("(the uplink comes back; the next retry, within backoff_max, succeeds)\n");
    std::thread::sleep(std::time::Duration::from_secs(3));
    status();
    drop(daemon);
    sb.fake.set_lifetime(43_200.0);

    heading("a device with an AWS IoT certificate and no AWS keys");
    sb.fake.set_mode(Mode::Ok);
    let (iot, iot_config) = support::iot::device(&mut sb);
    let config = sb.dir.path().join("device.toml");
    std::fs::write(&config, &iot_config).unwrap();
    sb.set("ECR_EDGE_CONFIG", Some(config.to_str().unwrap()));
    sb.set("ECR_EDGE_SOCKET", Some(""));
    println!(
        "AWS_ACCESS_KEY_ID is {}; /etc/ecr-edge/config.toml [iot] names the device certificate\n",
        if sb.vars.iter().any(|(k, _)| k == "AWS_ACCESS_KEY_ID") {
            "set"
        } else {
            "not set"
        }
    );
    assert!(show(
        &sb,
        "certificate exchanged for role credentials (mutual TLS), then the token call",
        "get",
        "345678901234.dkr.ecr.us-west-2.amazonaws.com",
    ));
    assert_eq!(iot.calls().len(), 1, "one exchange");
    for call in iot.calls() {
        println!(
            "fake IoT credentials provider saw: GET {} thing={} with a client certificate: {}",
            call.path,
            call.thing.as_deref().unwrap_or("-"),
            call.client_cert.is_some()
        );
    }
    if let Some(call) = sb.fake.calls().last() {
        println!(
            "fake ECR saw the token call signed with the exchanged key {}: signature_ok={}",
            call.access_key, call.authentic
        );
    }
}
