//! ecr-edge against the incumbent `docker-credential-ecr-login` (Debian's
//! amazon-ecr-credential-helper), in one run, on one machine, against the same local fake ECR
//! (tests/support: real TLS through an HTTPS proxy, SigV4 verified). Prints a table.
//!
//! `cargo bench --bench compare` (release build). `ECR_EDGE_BENCH_RUNS` sets the cached-get run
//! count (default 200). Peak RSS is read by examples/rss_probe.rs, a tiny parent whose only
//! child is the helper. Linux counts the parent's pre-exec memory in the child's peak, so the
//! probe's own footprint is a floor under both figures; it is printed (`/bin/true`) beside them.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Sandbox;

const HOST: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";
const INCUMBENT: &str = "/usr/bin/docker-credential-ecr-login";

/// One helper under test: its path and how to clear its cache.
struct Subject {
    name: &'static str,
    program: PathBuf,
    cache: PathBuf,
}

fn main() {
    if !probe_path().exists() {
        eprintln!(
            "{} is missing: cargo build --release --example rss_probe (scripts/bench does)",
            probe_path().display()
        );
        std::process::exit(1);
    }
    if !Path::new(INCUMBENT).exists() {
        eprintln!("{INCUMBENT} is missing: run scripts/install-deps bench");
        std::process::exit(1);
    }
    let runs: usize = std::env::var("ECR_EDGE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut sb = Sandbox::new();
    // The incumbent caches under $HOME/.ecr; ecr-edge under ECR_EDGE_CACHE_DIR.
    let home = sb.dir.path().join("home");
    sb.set("AWS_REGION", Some("us-west-2"));
    let incumbent_link = sb.dir.path().join("docker-credential-ecr-login");
    std::os::unix::fs::symlink(INCUMBENT, &incumbent_link).unwrap();
    let subjects = [
        Subject {
            name: "ecr-edge",
            program: sb.helper.clone(),
            cache: sb.cache_dir(),
        },
        Subject {
            name: "ecr-login (incumbent)",
            program: incumbent_link,
            cache: home.join(".ecr"),
        },
    ];

    println!("benchmark: cached/cold get against the local fake ECR, {runs} cached runs each");
    println!(
        "machine: {} cores; ecr-edge {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        support::binary().display()
    );
    let mut rows = Vec::new();
    for s in &subjects {
        // Sanity: both helpers must really work against the fake before being timed.
        let _ = std::fs::remove_dir_all(&s.cache);
        let out = run(&sb, &s.program);
        assert!(out.0, "{} failed against the fake: {}", s.name, out.1);

        let cached = time_runs(runs, || {
            run(&sb, &s.program);
        });
        let cold = time_runs(20, || {
            let _ = std::fs::remove_dir_all(&s.cache);
            run(&sb, &s.program);
        });
        let rss_cached = rss(&sb, &s.program);
        let _ = std::fs::remove_dir_all(&s.cache);
        let rss_cold = rss(&sb, &s.program);

        let _ = std::fs::remove_dir_all(&s.cache);
        let before = sb.fake.calls().len();
        sb.fake
            .set_mode(support::Mode::Slow(Duration::from_millis(200)));
        let start = Instant::now();
        let children: Vec<_> = (0..32).map(|_| spawn(&sb, &s.program)).collect();
        let ok = children
            .into_iter()
            .filter_map(|c| c.wait_with_output().ok())
            .filter(|o| o.status.success())
            .count();
        let burst = start.elapsed();
        sb.fake.set_mode(support::Mode::Ok);
        let burst_calls = sb.fake.calls().len() - before;
        rows.push(Row {
            name: s.name,
            cached,
            cold,
            rss_cached,
            rss_cold,
            burst,
            burst_calls,
            ok,
        });
    }

    println!(
        "\n{:<22} {:>11} {:>11} {:>11} {:>13} {:>11} {:>16} {:>10}",
        "helper",
        "cached p50",
        "cached p99",
        "cold p50",
        "RSS cached",
        "RSS cold",
        "32 cold: wall",
        "upstream"
    );
    for r in &rows {
        println!(
            "{:<22} {:>9.2}ms {:>9.2}ms {:>9.2}ms {:>10} KiB {:>7} KiB {:>14.0}ms {:>5} calls ({}/32 ok)",
            r.name, ms(r.cached.0), ms(r.cached.1), ms(r.cold.0), r.rss_cached, r.rss_cold, ms(r.burst), r.burst_calls, r.ok
        );
    }
    let (e, i) = (&rows[0], &rows[1]);
    println!("\nratios (incumbent / ecr-edge): cached get p50 {:.1}x faster, p99 {:.1}x; cold get {:.1}x; peak RSS (cached get) {:.1}x smaller ({:.2} of incumbent)",
        ms(i.cached.0) / ms(e.cached.0), ms(i.cached.1) / ms(e.cached.1), ms(i.cold.0) / ms(e.cold.0),
        i.rss_cached as f64 / e.rss_cached as f64, e.rss_cached as f64 / i.rss_cached as f64);
    println!(
        "upstream calls for 32 concurrent cold gets: ecr-edge {}, incumbent {}",
        e.burst_calls, i.burst_calls
    );
    daemon_section(&mut sb, runs);
    let floor = {
        let mut c = Command::new(probe_path());
        c.arg("/bin/true").stdout(Stdio::piped());
        support::text(&c.output().unwrap().stdout).trim().to_owned()
    };
    println!("RSS floor of the probe (peak RSS measured for /bin/true): {floor} KiB");
    println!("\nbinary sizes:");
    for t in [
        "aarch64-unknown-linux-musl",
        "armv7-unknown-linux-musleabihf",
        "x86_64-unknown-linux-musl",
    ] {
        let p = format!("target/{t}/release/ecr-edge");
        match std::fs::metadata(&p) {
            Ok(m) => println!("  ecr-edge {t:<32} {:>9} bytes", m.len()),
            Err(_) => println!("  ecr-edge {t:<32} (not built: scripts/cross-build {t})"),
        }
    }
    if let Ok(m) = std::fs::metadata(INCUMBENT) {
        println!("  incumbent {INCUMBENT} (Debian, amd64) {} bytes", m.len());
    }
}

/// One helper's measurements.
struct Row {
    name: &'static str,
    cached: (Duration, Duration),
    cold: (Duration, Duration),
    rss_cached: i64,
    rss_cold: i64,
    burst: Duration,
    burst_calls: usize,
    ok: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and 99th percentile wall time of `runs` calls of `f`.
fn time_runs(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    t.sort();
    let p99 = ((runs as f64 * 0.99).ceil() as usize).clamp(1, runs) - 1;
    (t[runs / 2], t[p99])
}

fn helper_cmd(sb: &Sandbox, program: &Path) -> Command {
    sb.command_for(program, "get")
}

fn spawn(sb: &Sandbox, program: &Path) -> std::process::Child {
    let mut child = helper_cmd(sb, program).spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(HOST.as_bytes())
        .unwrap();
    child
}

fn run(sb: &Sandbox, program: &Path) -> (bool, String) {
    let out = support::run_with_input(helper_cmd(sb, program), HOST.as_bytes());
    (
        out.status.success(),
        support::text(&out.stdout) + &support::text(&out.stderr),
    )
}

/// The RSS probe: a tiny process whose only child is the measured one (examples/rss_probe.rs).
fn probe_path() -> PathBuf {
    std::env::var_os("ECR_EDGE_RSS_PROBE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/examples/rss_probe"))
}

/// Peak RSS (KiB) of one `get` by `program`, through the probe.
fn rss(sb: &Sandbox, program: &Path) -> i64 {
    let mut c = Command::new(probe_path());
    c.arg(program)
        .arg("get")
        .env_clear()
        .envs(sb.vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = support::run_with_input(c, HOST.as_bytes());
    support::text(&out.stdout).trim().parse().unwrap_or(-1)
}

/// The daemon: `get` served over its socket (latency, helper peak RSS), and the daemon's own
/// idle RSS, natively and (when built) the aarch64 binary under qemu-user.
fn daemon_section(sb: &mut Sandbox, runs: usize) {
    let config = sb.dir.path().join("daemon.toml");
    std::fs::write(&config, format!("[daemon]\nregistries = [\"{HOST}\"]\n")).unwrap();
    sb.set("ECR_EDGE_CONFIG", Some(config.to_str().unwrap()));
    let _ = std::fs::remove_dir_all(sb.cache_dir());
    println!("\ndaemon (x86_64 musl, one registry, token held in memory):");
    let native = start_daemon(sb, None, &support::binary());
    let before = sb.fake.calls().len();
    let served = time_runs(runs, || {
        run(sb, &sb.helper);
    });
    assert_eq!(
        sb.fake.calls().len(),
        before,
        "gets were not served by the daemon"
    );
    let rss_served = rss(sb, &sb.helper);
    std::thread::sleep(Duration::from_secs(3));
    let (rss, hwm) = proc_rss(native.id());
    println!(
        "  get served by the daemon: p50 {:.2} ms, p99 {:.2} ms; helper peak RSS {rss_served} KiB",
        ms(served.0),
        ms(served.1)
    );
    println!("  daemon idle RSS {rss} KiB (peak {hwm} KiB), target < 6144 KiB");
    stop(native);
    let arm = PathBuf::from("target/aarch64-unknown-linux-musl/release/ecr-edge");
    if arm.exists() && Path::new("/usr/bin/qemu-aarch64-static").exists() {
        let d = start_daemon(sb, Some("/usr/bin/qemu-aarch64-static"), &arm);
        std::thread::sleep(Duration::from_secs(3));
        let (rss, hwm) = proc_rss(d.id());
        println!(
            "  aarch64 daemon under qemu-aarch64-static: RSS {rss} KiB (peak {hwm} KiB), \
             including the emulator's own memory"
        );
        stop(d);
    }
    sb.set("ECR_EDGE_CONFIG", None);
}

/// Starts the daemon and waits until a `get` is served by it.
fn start_daemon(sb: &Sandbox, runner: Option<&str>, program: &Path) -> std::process::Child {
    let mut c = match runner {
        Some(r) => {
            let mut c = Command::new(r);
            c.arg(program);
            c
        }
        None => Command::new(program),
    };
    c.arg("daemon")
        .env_clear()
        .envs(sb.vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().unwrap();
    let socket = sb.dir.path().join("agent.sock");
    let start = Instant::now();
    while !socket.exists() || !run(sb, &sb.helper).0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// VmRSS and VmHWM of a process, KiB.
fn proc_rss(pid: u32) -> (i64, i64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
