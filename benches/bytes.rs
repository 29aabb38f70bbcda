//! Bytes on the uplink (issue 18): what each kind of call to AWS moves on the wire, TLS
//! handshakes included, for ecr-edge (a helper process, the daemon with and without TLS session
//! reuse) and for the incumbent ways (Debian's `docker-credential-ecr-login` per `get`, and the
//! `aws ecr get-login-password | docker login` cron job every 11 hours), side by side; then a
//! device's day under the default schedule.
//!
//! Counted by the fakes themselves (tests/support `Wire`: every byte read from or written to a
//! client connection under TLS), so ecr-edge and the incumbents are measured by the same
//! meter; the daemon's own counters agree byte for byte (tests/accounts.rs). Through the
//! fakes' proxy the figures are the tunnel's contents: what a direct connection moves, without
//! TCP/IP headers. A day is computed from the measured calls and the daemon's schedule
//! (`schedule::refresh_delay`, the same function the daemon runs), simulated over a year.
//!
//! `cargo bench --bench bytes` (scripts/bench; `scripts/test` runs it in the dev profile, the
//! numbers do not depend on it). `ECR_EDGE_AWSCLI` names the AWS CLI (else the copy
//! `scripts/install-deps bench` keeps, else `aws` on `PATH`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ecr_edge::internal::{schedule, shadow};
use support::iot::FakeIot;
use support::Sandbox;

const HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
/// More registries behind the same API endpoint (same account, then two roles).
const SECOND: &str = "123456789013.dkr.ecr.us-west-2.amazonaws.com";
const APP: &str = "210987654321.dkr.ecr.us-west-2.amazonaws.com";
const VENDOR: &str = "345678901234.dkr.ecr.us-west-2.amazonaws.com";
const APP_ROLE: &str = "arn:aws:iam::210987654321:role/edge-pull";
const VENDOR_ROLE: &str = "arn:aws:iam::345678901234:role/vendor-pull";
const INCUMBENT: &str = "/usr/bin/docker-credential-ecr-login";
/// AWS IoT role credentials last an hour by default (the role alias's
/// credentialDurationSeconds); ecr-edge replaces them 5 minutes before they end.
const IOT_LIFE_SECS: f64 = 3600.0;
const IOT_MARGIN_SECS: f64 = 300.0;

/// Bytes (sent by the client, received by it).
#[derive(Clone, Copy, Debug, Default)]
struct Bytes {
    sent: u64,
    received: u64,
}

impl Bytes {
    fn total(self) -> u64 {
        self.sent + self.received
    }
    fn minus(self, before: Bytes) -> Bytes {
        Bytes {
            sent: self.sent - before.sent,
            received: self.received - before.received,
        }
    }
}

/// The fakes' wire totals for hosts starting with `prefix` (from the client's side).
fn wire(sb: &Sandbox, prefix: &str) -> Bytes {
    sb.fake
        .wires()
        .iter()
        .filter(|(h, _)| h.starts_with(prefix))
        .fold(Bytes::default(), |a, (_, w)| Bytes {
            sent: a.sent + w.0,
            received: a.received + w.1,
        })
}

fn iot_wire(iot: &FakeIot) -> Bytes {
    let (from, to, _) = iot.wire.totals();
    Bytes {
        sent: from,
        received: to,
    }
}

/// What running `f` moved to hosts starting with `prefix`.
fn measure(sb: &Sandbox, prefix: &str, f: impl FnOnce()) -> Bytes {
    let before = wire(sb, prefix);
    f();
    // The last close_notify records arrive just after the answer.
    std::thread::sleep(Duration::from_millis(300));
    wire(sb, prefix).minus(before)
}

fn get(sb: &Sandbox, program: &Path, host: &str) {
    let out = support::run_with_input(sb.command_for(program, "get"), host.as_bytes());
    assert!(
        out.status.success(),
        "{} get {host}: {}",
        program.display(),
        support::text(&out.stderr)
    );
}

fn aws_cli() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ECR_EDGE_AWSCLI").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let kept = Path::new("/var/cache/ecr-edge-test/awscli/current/aws");
    if kept.exists() {
        return Some(kept.to_owned());
    }
    Command::new("aws")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("aws"))
}

fn row(what: &str, b: Bytes) {
    println!(
        "  {what:<68} {:>7} {:>9} {:>7}",
        b.sent,
        b.received,
        b.total()
    );
}

fn main() {
    let mut sb = Sandbox::new();
    sb.set("AWS_REGION", Some("us-west-2"));
    println!("bytes on the uplink, against the local fakes (TLS and HTTP, handshakes included)");
    println!("ecr-edge: {}", support::binary().display());
    println!(
        "\n  {:<68} {:>7} {:>9} {:>7}",
        "one call", "sent", "received", "total"
    );

    // A helper process: nothing to resume, a full handshake every time.
    let _ = std::fs::remove_dir_all(sb.cache_dir());
    let helper = measure(&sb, "api.ecr.", || get(&sb, &sb.helper.clone(), HOST));
    row(
        "ecr-edge helper get, new process (full TLS handshake)",
        helper,
    );

    // The incumbent helper, its cache emptied: one token call per get.
    let incumbent = if Path::new(INCUMBENT).exists() {
        let home = sb.dir.path().join("home");
        let link = sb.dir.path().join("docker-credential-ecr-login");
        let _ = std::os::unix::fs::symlink(INCUMBENT, &link);
        let _ = std::fs::remove_dir_all(home.join(".ecr"));
        let b = measure(&sb, "", || get(&sb, &link, HOST));
        row("docker-credential-ecr-login get, cache empty", b);
        Some(b)
    } else {
        println!("  (docker-credential-ecr-login not installed: scripts/install-deps bench)");
        None
    };

    // The cron job: `aws ecr get-login-password` (then `docker login`, which talks to the
    // registry, not to AWS, and is not counted here).
    let cli = match aws_cli() {
        Some(aws) => {
            let ca = sb.dir.path().join("ca.pem");
            let b = measure(&sb, "", || {
                let out = Command::new(&aws)
                    .args(["ecr", "get-login-password", "--region", "us-west-2"])
                    .env_clear()
                    .envs(sb.vars.iter().map(|(k, v)| (k, v)))
                    .env("AWS_CA_BUNDLE", &ca)
                    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                    .env("HOME", sb.dir.path())
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "aws ecr get-login-password: {}",
                    support::text(&out.stderr)
                );
            });
            row("aws ecr get-login-password (the cron job's AWS call)", b);
            Some(b)
        }
        None => {
            println!("  (aws CLI not installed: scripts/install-deps bench)");
            None
        }
    };

    // The daemon with static keys: its first call, then a second over the resumed session.
    let config = format!("[daemon]\nregistries = [\"{HOST}\"]\n");
    let before = wire(&sb, "api.ecr.");
    let d = support::RunningDaemon::start(&mut sb, &config);
    let daemon_first = wire(&sb, "api.ecr.").minus(before);
    let resumed = measure(&sb, "api.ecr.", || get(&sb, &sb.helper.clone(), SECOND));
    drop(d);
    row(
        "ecr-edge daemon, first ECR call (full handshake)",
        daemon_first,
    );
    row(
        "ecr-edge daemon, later ECR call (TLS session resumed)",
        resumed,
    );
    // The same second call to an endpoint that offers no resumption (it sends no tickets
    // either). "Before session reuse" below is a full handshake on every call against an
    // endpoint that does offer it: the daemon's first call.
    sb.ca.set_resumption(false);
    let d = support::RunningDaemon::start(&mut sb, &config);
    let unresumed = measure(&sb, "api.ecr.", || get(&sb, &sb.helper.clone(), SECOND));
    drop(d);
    sb.ca.set_resumption(true);
    row(
        "ecr-edge daemon, later ECR call, endpoint offering no resumption",
        unresumed,
    );

    // A device identity: IoT exchanges and role hops, full and resumed.
    let (iot, iot_config) = support::iot::device(&mut sb);
    sb.fake.add_role(APP_ROLE, None, &[support::ACCESS_KEY_ID]);
    sb.fake
        .add_role(VENDOR_ROLE, None, &[support::ACCESS_KEY_ID]);
    // Credentials usable for 2 seconds (the exchange is repeated 300 s before they end), so
    // the next call exchanges again over the same daemon's session.
    iot.set_credentials_life(302);
    let config = format!(
        "{iot_config}[daemon]\nregistries = [\"{HOST}\"]\n\n\
         [[registry]]\nhost = \"{APP}\"\nrole_arn = \"{APP_ROLE}\"\n\n\
         [[registry]]\nhost = \"{VENDOR}\"\nrole_arn = \"{VENDOR_ROLE}\"\n"
    );
    let iot0 = iot_wire(&iot);
    let d = support::RunningDaemon::start(&mut sb, &config);
    let iot_full = iot_wire(&iot).minus(iot0);
    std::thread::sleep(Duration::from_secs(3));
    let (iot1, sts1) = (iot_wire(&iot), wire(&sb, "sts."));
    get(&sb, &sb.helper.clone(), APP);
    std::thread::sleep(Duration::from_millis(300));
    let iot_resumed = iot_wire(&iot).minus(iot1);
    let sts_full = wire(&sb, "sts.").minus(sts1);
    let sts2 = wire(&sb, "sts.");
    get(&sb, &sb.helper.clone(), VENDOR);
    std::thread::sleep(Duration::from_millis(300));
    let sts_resumed = wire(&sb, "sts.").minus(sts2);
    drop(d);
    row(
        "IoT credentials exchange, first (full mutual-TLS handshake)",
        iot_full,
    );
    row(
        "IoT credentials exchange, later (session resumed)",
        iot_resumed,
    );
    row("role hop (sts:AssumeRole), first", sts_full);
    row(
        "role hop (sts:AssumeRole), later (session resumed)",
        sts_resumed,
    );

    // Fleet health: updates to the IoT shadow, with the daemon's own client (the fake IoT
    // endpoint plays the data endpoint too), full then resumed; their count from a simulated
    // day with the daemon's buckets, interval and backoff.
    let gap = Duration::from_secs(600);
    let hour = Duration::from_secs(3600);
    let mut jitter = schedule::SeededJitter::new(28);
    let healthy = shadow::simulate_day(shadow::Trouble::None, gap, &mut jitter);
    let refused = shadow::simulate_day(
        shadow::Trouble::Refused(2 * hour, 12 * hour),
        gap,
        &mut jitter,
    );
    let down = shadow::simulate_day(
        shadow::Trouble::UplinkDown(2 * hour, 6 * hour),
        gap,
        &mut jitter,
    );
    let mut cfg = ecr_edge::internal::config::parse(&iot_config)
        .unwrap()
        .iot
        .unwrap();
    // The fakes' CA, which the sandbox's programs trust through SSL_CERT_FILE.
    cfg.ca = sb
        .vars
        .iter()
        .find(|(k, _)| k == "SSL_CERT_FILE")
        .map(|(_, v)| PathBuf::from(v));
    let device =
        ecr_edge::internal::iot::Device::load(&cfg, ecr_edge::internal::token::now()).unwrap();
    let tls = shadow::tls(&device);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let update = || {
        let before = iot_wire(&iot);
        let version = runtime
            .block_on(shadow::update(
                tls.clone(),
                &iot.endpoint,
                support::iot::THING_NAME,
                refused.document.clone(),
            ))
            .unwrap();
        assert!(version > 0);
        // The fake counts the connection's close after the answer.
        std::thread::sleep(Duration::from_millis(200));
        iot_wire(&iot).minus(before)
    };
    let shadow_full = update();
    let shadow_resumed = update();
    row(
        &format!(
            "IoT shadow update, first (full mutual-TLS handshake, {}-byte body)",
            refused.document.len()
        ),
        shadow_full,
    );
    row("IoT shadow update, later (session resumed)", shadow_resumed);

    // A day: the default schedule's refreshes, simulated over a year.
    let mut jitter = schedule::SeededJitter::new(18);
    let life = schedule::usable_life(schedule::MAX_TOKEN_LIFE);
    let days = 365.0;
    let horizon = days * 86_400.0;
    let simulate = |registries: usize, jitter: &mut schedule::SeededJitter| {
        let mut next: Vec<f64> = vec![0.0; registries];
        let (mut refreshes, mut exchanges) = (0u64, 0u64);
        let mut creds_until = f64::NEG_INFINITY;
        loop {
            let (i, &t) = next
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .unwrap();
            if t >= horizon {
                break;
            }
            refreshes += 1;
            if t >= creds_until {
                exchanges += 1;
                creds_until = t + IOT_LIFE_SECS - IOT_MARGIN_SECS;
            }
            next[i] = t + schedule::refresh_delay(life, jitter).as_secs_f64();
        }
        (refreshes as f64 / days, exchanges as f64 / days)
    };
    let (r1, x1) = simulate(1, &mut jitter);
    let (r3, x3) = simulate(3, &mut jitter);
    let per_day = |refreshes: f64, ecr: Bytes, exchanges: f64, iot: Bytes| {
        refreshes * ecr.total() as f64 + exchanges * iot.total() as f64
    };
    println!(
        "\n  a device-day, default schedule (\"ahead\": each token refreshed at 40-50 % of its \
         life; {r1:.2} refreshes a day per registry; IoT credentials last {IOT_LIFE_SECS} s)"
    );
    println!("  {:<68} {:>9}", "", "bytes/day");
    let day = |what: &str, v: f64| println!("  {what:<68} {:>9.0}", v);
    day(
        "ecr-edge, static keys, 1 registry",
        per_day(r1, resumed, 0.0, iot_resumed),
    );
    day(
        "ecr-edge, IoT identity, 1 registry",
        per_day(r1, resumed, x1, iot_resumed),
    );
    day(
        &format!("ecr-edge, IoT identity, 3 registries ({x3:.2} exchanges)"),
        per_day(r3, resumed, x3, iot_resumed),
    );
    day(
        "ecr-edge, IoT identity, 3 registries, 2 through roles",
        per_day(r3, resumed, x3, iot_resumed) + 2.0 * r1 * sts_resumed.total() as f64,
    );
    let with_shadow = |what: &str, d: &shadow::Day| {
        let n = d.updates - 1;
        day(
            &format!("  + shadow report, {what} ({n} updates after the start)"),
            f64::from(n) * shadow_resumed.total() as f64,
        );
    };
    with_shadow("healthy day", &healthy);
    with_shadow("6-hour uplink outage", &down);
    with_shadow("ECR refusing for 12 h", &refused);
    day(
        "  + shadow report, a daemon start (full handshake)",
        shadow_full.total() as f64,
    );
    day(
        "before session reuse: static keys, 1 registry",
        per_day(r1, daemon_first, 0.0, iot_full),
    );
    day(
        "before session reuse: IoT identity, 1 registry",
        per_day(r1, daemon_first, x1, iot_full),
    );
    day(
        "before session reuse: IoT identity, 3 registries",
        per_day(r3, daemon_first, x3, iot_full),
    );
    day(
        "before session reuse: IoT identity, 3 registries, 2 through roles",
        per_day(r3, daemon_first, x3, iot_full) + 2.0 * r1 * sts_full.total() as f64,
    );
    day(
        "ecr-edge on-demand, IoT identity, 1 registry, one pull a day",
        per_day(1.0, helper, 1.0, iot_full),
    );
    day("ecr-edge on-demand, no pull that day", 0.0);
    if let Some(b) = incumbent {
        day(
            "docker-credential-ecr-login, per get with an empty cache",
            b.total() as f64,
        );
        day(
            "docker-credential-ecr-login, 2 gets a day (its 12 h cache)",
            2.0 * b.total() as f64,
        );
    }
    if let Some(b) = cli {
        day(
            "cron `aws ecr get-login-password | docker login` every 11 h",
            86_400.0 / 39_600.0 * b.total() as f64,
        );
    }
}
