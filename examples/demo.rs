//! Shows the helper's main job against the built-in local fake ECR (no AWS account needed):
//! a cold `get` fetched through a proxy over TLS and verified by SigV4, a cached `get`, `list`,
//! a look-alike host, and a failure that names its cause. Run with `scripts/demo`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use support::{text, Mode, Sandbox};

fn show(sb: &Sandbox, label: &str, action: &str, input: &str) {
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
}

fn main() {
    let sb = Sandbox::new();
    let host = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
    println!(
        "fake ECR behind HTTPS proxy {}; test CA in SSL_CERT_FILE\n",
        sb.fake.proxy_url
    );
    show(&sb, "cold: fetched from the fake ECR", "get", host);
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
}
